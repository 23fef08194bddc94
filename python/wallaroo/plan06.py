"""Compile a 0.6 application (``build_application``'s tree) into the engine's plan.

Each source (leaf of the tree) becomes one engine pipeline whose steps are
the stages on its way to the root. Stages after a ``merge`` appear in the
pipeline of every source that feeds them; their state is shared by name, so
a merged stage keeps one state per key whatever source a record came from,
and the pipelines share one sink.

Keys: ``key_by(ke)`` keys every later stage by ``ke.extract_key(data)``;
``collect()`` by one constant key; without either, a state stage or a window
gets a fresh state per record (0.6 TCP and generator sources gave every
record its own random key).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable

from wallaroo import contract
from wallaroo.plan import (
    ApplicationError,
    _compute_step,
    _sink_plan,
    _sinks_plan,
    _source_plan,
    _step_name,
)


def _output_only(func: Callable[[Any, Any], Any]) -> Callable[[Any, Any], tuple]:
    """A 0.6 state function (output only) in the engine's ``(output, changed)`` form."""

    def call(data: Any, state: Any) -> tuple:
        return (func(data, state), True)

    return call


def _fresh_state(func: Callable[[Any, Any], Any], initial_state: Callable[[], Any]) -> Callable:
    """An un-keyed state stage: every record gets a new state."""

    def call(data: Any) -> Any:
        return func(data, initial_state())

    return call


def _constant(key: str) -> Callable[[Any], str]:
    def call(data: Any) -> str:
        return key

    return call


def _per_record_key() -> Callable[[Any], str]:
    counter = itertools.count(1)

    def call(data: Any) -> str:
        return str(next(counter))

    return call


class _Compiler:
    def __init__(self, origin: str, app: tuple, args: list | None) -> None:
        self.origin = origin
        self.app_name, self.root, self.vs, self.es = app
        self.args = list(args or [])
        self.parent: dict = {}
        for node, children in enumerate(self.es):
            for child in children:
                self.parent[child] = node
        self.leaves = [i for i, v in enumerate(self.vs) if v and v[0][0] == "source"]
        self.states: dict = {}
        #: (node, position) -> the compiled step shared by the pipelines through it.
        self.window_stages: dict = {}
        #: Engine pipeline name -> the name given to ``wallaroo.source``.
        self.source_names: dict = {}

    def feeders(self, node: int) -> int:
        """The sources whose records reach ``node``."""
        return sum(1 for leaf in self.leaves if node in self.path(leaf))

    def path(self, leaf: int) -> list:
        nodes = [leaf]
        while nodes[-1] in self.parent:
            nodes.append(self.parent[nodes[-1]])
        return nodes

    def compile(self) -> dict:
        if not self.leaves:
            raise ApplicationError(f"{self.origin}: the application has no source")
        pipelines = [self.pipeline(leaf, name) for leaf, name in self.engine_names()]
        self.check_listeners(pipelines)
        return contract.app_plan(self.app_name, pipelines, self.states)

    def engine_names(self) -> list:
        """``(leaf, engine pipeline name)`` of every leaf. A source in the tree
        twice (a pipeline merged with a clone of itself, or two pipelines from
        one ``wallaroo.source``) is, as in 0.6.1 (machida made one
        ``Wallaroo.source`` per leaf), two sources reading the same input, so
        each record goes down both ways: the later copies run as pipelines
        ``NAME (2)``, ``NAME (3)``..., named for the engine only."""
        seen: dict = {}
        taken = {self.vs[leaf][0][1] for leaf in self.leaves}
        names = []
        for leaf in self.leaves:
            name = self.vs[leaf][0][1]
            seen[name] = seen.get(name, 0) + 1
            engine_name = name
            if seen[name] > 1:
                copy = seen[name]
                while f"{name} ({copy})" in taken:
                    copy += 1
                engine_name = f"{name} ({copy})"
                taken.add(engine_name)
            names.append((leaf, engine_name))
            self.source_names[engine_name] = name
        return names

    def check_listeners(self, pipelines: list) -> None:
        """Two TCP sources cannot listen on one address: with the same source
        in the tree twice, say which call made the second (0.6.1 failed at
        start-up here too: its second listener was "unable to listen")."""
        listening: dict = {}
        for plan in pipelines:
            source = plan["source"]
            if source.get("kind") != "tcp" or not source.get("port"):
                continue
            address = (source["host"], source["port"])
            first = listening.setdefault(address, plan["name"])
            if first == plan["name"]:
                continue
            if self.source_names.get(first) != self.source_names.get(plan["name"]):
                raise ApplicationError(
                    f"{self.origin}: pipelines {first!r} and {plan['name']!r} both listen on "
                    f"{address[0]}:{address[1]}: two TCP sources cannot listen on one address"
                )
            raise ApplicationError(
                f"{self.origin}: pipelines {first!r} and {plan['name']!r} both listen on "
                f"{address[0]}:{address[1]}: a pipeline merged with a clone of itself "
                "(Pipeline.clone() or two pipelines from one wallaroo.source(...), then "
                "merge()) reads its source twice, as in Wallaroo 0.6.1, and a TCP source "
                "cannot listen twice (0.6.1 failed here too). Do both branches' work "
                "in one computation_multi, or give each branch a source of its own"
            )

    def pipeline(self, leaf: int, name: str) -> contract.PipelinePlan:
        source_tuple = self.vs[leaf][0][2]
        where = f"{self.origin}: pipeline {name!r}"
        source = _source_plan(source_tuple, f"{where} source", self.args)
        steps: list = []
        sink = None
        key_of: Callable[[Any], Any] | None = None
        for node in self.path(leaf):
            stages = self.vs[node][1:] if node == leaf else self.vs[node]
            for position, stage in enumerate(stages):
                step_where = f"{where} stage {len(steps) + 1} ({stage[0]})"
                verb = stage[0]
                if verb == "key_by":
                    key_function = getattr(stage[1], "key_function", None)
                    if callable(key_function):
                        key_of = key_function()
                    else:
                        key_of = self.method(stage[1], "extract_key", step_where)
                elif verb == "collect":
                    key_of = _constant(f"collect-key-{node}-{position}")
                elif verb == "to":
                    steps.append(self.stateless(stage[1], step_where))
                elif verb == "to_state":
                    steps.append(self.state(stage[1], key_of, (node, position), step_where))
                elif verb in ("to_range_windows", "to_count_windows"):
                    place = (node, position)
                    steps.append(self.windows(stage, key_of, place, step_where, name))
                elif verb == "to_sink":
                    sink = self.sink(stage[1], where)
                elif verb == "to_sinks":
                    sink = self.sink(stage[1], where, many=True)
                else:
                    raise ApplicationError(f"{step_where}: unknown stage {verb!r}")
        if sink is None:
            raise ApplicationError(f"{where}: the pipeline ends without a sink")
        if len(self.leaves) > 1:
            sink["group"] = f"root-{self.root}"
        return contract.pipeline_plan(name, source, steps, sink)

    def sink(self, spec: Any, where: str, many: bool = False) -> dict:
        if many:
            return _sinks_plan(spec, f"{where} sink", self.args)
        return _sink_plan(spec, f"{where} sink", self.args)

    def method(self, obj: Any, name: str, where: str) -> Callable[..., Any]:
        method = getattr(obj, name, None)
        if not callable(method):
            raise ApplicationError(f"{where}: {obj!r:.100} has no {name}() method")
        return method

    def stateless(self, computation: Any, where: str) -> contract.Step:
        if getattr(computation, "is_stateful", False) or hasattr(computation, "initial_state"):
            raise ApplicationError(
                f"{where}: {computation!r:.100} is a state computation; a hand-written one "
                "must subclass wallaroo.StateComputation"
            )
        return _compute_step(computation, where, stateful=False)

    def state(self, computation: Any, key_of: Any, place: tuple, where: str) -> contract.AnyStep:
        initial_state = getattr(computation, "initial_state", None)
        if not callable(initial_state):
            raise ApplicationError(
                f"{where}: {computation!r:.100} has no initial_state(): a 0.6 state "
                "computation is made by @state_computation(name, state)"
            )
        step = _compute_step(computation, where, stateful=True)
        if key_of is None:
            step["func"] = _fresh_state(step["func"], initial_state)
            return step
        state_name = f"{self.app_name}/{place[0]}.{place[1]}/{step['name']}"
        self.states[state_name] = initial_state
        step["func"] = _output_only(step["func"])
        return contract.state_step(step, state_name, key_of)

    def windows(
        self, stage: tuple, key_of: Any, place: tuple, where: str, source: str
    ) -> contract.StateStep:
        from wallaroo.windows import CountStage, CountWindows, RangeStage, RangeWindows
        from wallaroo.windows_event import EventRangeStage

        if key_of is None:
            key_of = _per_record_key()
        runner = self.window_stages.get(place)
        if runner is None:
            feeders = self.feeders(place[0])
            if stage[0] == "to_range_windows":
                _, wrange, slide, delay, agg, *options = stage
                spec = RangeWindows(wrange, slide, delay, agg, options[0] if options else None)
                if spec.event_time is not None:
                    name = _step_name(spec.aggregation, where, "")
                    stage_id = f"{self.app_name}/{place[0]}.{place[1]}/{name}"
                    runner = EventRangeStage(spec, key_of, feeders, stage_id)
                else:
                    runner = RangeStage(spec, key_of, feeders)
            else:
                _, count, agg = stage
                runner = CountStage(CountWindows(count, agg), key_of, feeders)
            self.window_stages[place] = runner
        name = _step_name(runner.agg, where, "")
        state_name = f"{self.app_name}/{place[0]}.{place[1]}/{name}"
        self.states[state_name] = runner.new_state
        # Event-time windows keep watermarks per source partition: the engine
        # passes the record's (reader, stream) as `origin`.
        origin = isinstance(runner, EventRangeStage)
        if origin:
            func = runner.step_for(source, key_of)
        else:
            func = functools.partial(runner.process, key_of=key_of)
        step = contract.Step(kind="multi", name=name, func=func)
        runner.label(state_name, source, name)
        share = runner.share if origin else None
        return contract.state_step(
            step, state_name, key_of, tick=runner.timer, share=share, origin=origin
        )


def compile_application(app: tuple, origin: str, args: list | None = None) -> contract.Plan:
    """The plan of a 0.6 application ``(app_name, root_idx, vs, es)``."""
    try:
        app_name, root, vs, es = app
    except (TypeError, ValueError):
        raise ApplicationError(f"{origin}: not a build_application() result") from None
    if not (isinstance(vs, list) and isinstance(es, list) and len(vs) == len(es)):
        raise ApplicationError(f"{origin}: not a build_application() result")
    return _Compiler(origin, (app_name, root, vs, es), args).compile()
