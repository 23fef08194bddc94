"""Turn the application description from ``build()`` into a checked plan.

Every problem is reported as :class:`ApplicationError` naming the pipeline,
the step and what is wrong, before anything runs. The plan is a plain dict
read by the Rust engine (``src/plan.rs``): bound methods are looked up once
here so the engine calls them without attribute look-ups per record.
"""

from __future__ import annotations

import pickle
import types
from typing import Any, Callable

from wallaroo import contract, versions


class ApplicationError(Exception):
    """The application description cannot run; the message says why."""


def _method(obj: Any, name: str, where: str, decorator: str = "") -> Callable[..., Any]:
    """``obj.name`` (a bound method). ``decorator`` names what turns a plain
    function into such an object, for the message when ``obj`` is one."""
    if name in getattr(type(obj), "_forwarding_methods", ()) and type(obj).__module__ == "wallaroo":
        return obj._func
    method = getattr(obj, name, None)
    if not callable(method):
        if decorator and isinstance(obj, types.FunctionType):
            raise ApplicationError(
                f"{where}: the function {obj.__qualname__}() is not decorated: put "
                f"{decorator} on the line above its def"
            )
        raise ApplicationError(f"{where}: {obj!r} has no {name}() method")
    return method


def _step_name(obj: Any, where: str, decorator: str) -> str:
    name = _method(obj, "name", where, decorator)()
    if not isinstance(name, str):
        raise ApplicationError(f"{where}: name() must return a str, got {name!r}")
    return name


def _decoder_plan(decoder: Any, where: str, framed: bool) -> dict:
    """The decoder's part of a source: a :class:`contract.Decoder`, or with
    ``framed`` a :class:`contract.FramedDecoder`."""
    decorator = "@wallaroo.decoder(header_length=4, length_fmt='>I')"
    decode = _method(decoder, "decode", where, decorator)
    if not framed:
        return contract.Decoder(decode=decode)
    header_length = _method(decoder, "header_length", where)()
    if not isinstance(header_length, int) or header_length <= 0:
        raise ApplicationError(
            f"{where}: header_length() must return a positive int, got {header_length!r}"
        )
    length_fmt = getattr(decoder, "length_fmt", None)
    return contract.FramedDecoder(
        decode=decode,
        header_length=header_length,
        payload_length=_method(decoder, "payload_length", where),
        length_fmt=length_fmt() if callable(length_fmt) else None,
    )


def _resolve_spec(config: Any, where: str, app_args: list, sink: bool) -> tuple:
    """The spec tuple of a source or sink ``config``: its ``to_tuple()``, a
    0.5 ``kafka-internal`` config resolved from the application's arguments
    ``app_args`` (the Kafka flags its default CLI parser leaves to the
    engine), and a 0.6 connector as the TCP address it is: a listener for
    connector scripts with the decoder (a source), or a connection with the
    encoder (a sink)."""
    spec = config.to_tuple() if hasattr(config, "to_tuple") else config
    if not isinstance(spec, tuple) or not spec:
        raise ApplicationError(f"{where}: unknown {'sink' if sink else 'source'} config {config!r}")
    if spec[0] == "kafka-internal":
        from wallaroo.api05 import resolve_internal_kafka

        spec = resolve_internal_kafka(spec, app_args, sink=sink)
    if spec[0] == ("sink_connector" if sink else "source_connector"):
        _, _name, host, port, encoder, decoder = spec
        spec = ("tcp", host, port, encoder if sink else decoder)
    elif spec[0] == "connector":
        # 0.5: the same, with the one codec of its side; its "localhost" is
        # 127.0.0.1, where the 0.5 connector scripts dial and listen.
        _, host, port, codec = spec
        spec = ("tcp", "127.0.0.1" if host in ("localhost", "", None) else host, port, codec)
    return spec


def _source_plan(config: Any, where: str, app_args: list) -> dict:
    """The :data:`contract.Source` of a source config (``app_args``: see
    :func:`_resolve_spec`)."""
    spec = _resolve_spec(config, where, app_args, sink=False)
    kind = spec[0]
    if kind == "tcp":
        # 0.6.1 adds the parallelism (connections read at once) as a 5th item.
        _, host, port, decoder = spec[:4]
        plan = {"kind": "tcp", "host": host or "127.0.0.1", "port": int(port)}
        parallelism = spec[4] if len(spec) > 4 else None
        plan["max_connections"] = parallelism
        if parallelism is not None:
            if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
                raise ApplicationError(
                    f"{where}: TCPSourceConfig parallelism must be a positive int, "
                    f"got {parallelism!r}"
                )
        plan.update(_decoder_plan(decoder, f"{where}, decoder", framed=True))
    elif kind == "gen":
        _, generator = spec
        plan = {"kind": "gen", "generator": generator, "decode": pickle.loads}
    elif kind == "file":
        _, path, framing, decoder = spec
        plan = {"kind": "file", "path": path, "framing": framing}
        plan.update(_decoder_plan(decoder, f"{where}, decoder", framed=framing == "length"))
    elif kind == "kafka":
        _, topic, brokers, log_level, decoder = spec
        if not topic:
            raise ApplicationError(f"{where}: the Kafka source has no topic (--kafka_source_topic)")
        # brokers: wallaroo.kafka.KafkaSetup.prepare completes the contract.KafkaSource.
        plan = {"kind": "kafka", "topic": topic, "brokers": brokers, "log_level": log_level}
        plan.update(_decoder_plan(decoder, f"{where}, decoder", framed=False))
    else:
        raise ApplicationError(f"{where}: unknown source kind {kind!r}")
    return plan


def _sink_plan(config: Any, where: str, app_args: list) -> dict:
    """The :data:`contract.Sink` of a sink config (``app_args``: see
    :func:`_resolve_spec`)."""
    spec = _resolve_spec(config, where, app_args, sink=True)
    kind = spec[0]
    if kind == "tcp":
        _, host, port, encoder = spec
        plan = {"kind": "tcp", "host": host or "127.0.0.1", "port": int(port)}
    elif kind == "file":
        _, path, encoder = spec
        plan = {"kind": "file", "path": path}
    elif kind == "stdout":
        _, encoder = spec
        plan = {"kind": "stdout"}
    elif kind == "kafka":
        _, topic, brokers, log_level, buffer_ms, max_size, encoder = spec
        if not topic:
            raise ApplicationError(f"{where}: the Kafka sink has no topic (--kafka_sink_topic)")
        plan = {
            "kind": "kafka",
            "topic": topic,
            "brokers": brokers,
            "log_level": log_level,
            "max_produce_buffer_ms": int(buffer_ms),
            "max_message_size": int(max_size),
        }
    else:
        raise ApplicationError(f"{where}: unknown sink kind {kind!r}")
    plan["encode"] = _method(encoder, "encode", f"{where}, encoder", "@wallaroo.encoder")
    plan["group"] = None
    return plan


def _fan_out(encoders: list) -> Callable[[Any], list]:
    """One encoder for several sinks: item ``i`` of its list goes to sink ``i``."""

    def encode(data: Any) -> list:
        return [encode_one(data) for encode_one in encoders]

    return encode


def _sinks_plan(configs: Any, where: str, app_args: list) -> dict:
    """The sink of ``to_sinks(configs)``: one sink, or a ``many`` sink."""
    configs = list(configs)
    if not configs:
        raise ApplicationError(f"{where}: to_sinks() needs at least one sink")
    if len(configs) == 1:
        return _sink_plan(configs[0], where, app_args)
    sinks = [_sink_plan(config, f"{where} {i + 1}", app_args) for i, config in enumerate(configs)]
    encode = _fan_out([s["encode"] for s in sinks])
    return contract.ManySink(kind="many", sinks=sinks, encode=encode, group=None)


def _compute_step(computation: Any, where: str, stateful: bool) -> contract.Step:
    """The step of ``computation`` (``map``, or ``multi`` for a
    ``compute_multi``); ``stateful`` names the state decorators in messages
    (:func:`contract.state_step` makes it a state step)."""
    multi = hasattr(computation, "compute_multi") and not hasattr(computation, "compute")
    decorator = (
        "@wallaroo.state_computation(name=...) (or state_computation_multi)"
        if stateful
        else "@wallaroo.computation(name=...) (or computation_multi)"
    )
    name = _step_name(computation, where, decorator)
    func = _method(computation, "compute_multi" if multi else "compute", f"{where} {name!r}")
    return contract.Step(kind="multi" if multi else "map", name=name, func=func)


def _state_class(state_class: Any, where: str) -> Any:
    if not callable(state_class):
        raise ApplicationError(f"{where}: state class {state_class!r} is not callable")
    return state_class


class _PipelineBuilder:
    def __init__(self, name: str, source: Any) -> None:
        self.name = name
        self.source = source
        self.steps: list[contract.AnyStep] = []
        self.sink: Any = None

    def plan(self) -> contract.PipelinePlan:
        return contract.pipeline_plan(self.name, self.source, self.steps, self.sink)


def _marks(actions: Any) -> list:
    """The version marks of a 0.4.2/0.5 action list (its calls and objects)."""
    marks = [versions.Mark("ApplicationBuilder", versions.BUILDER)]
    verb_marks = {
        "to_state_partition_u64": versions.Mark("to_state_partition_u64", versions.ONLY_042),
        "to_sinks": versions.Mark("to_sinks", versions.ONLY_05),
        "source_connector": versions.Mark("source_connector", versions.ONLY_05),
        "sink_connector": versions.Mark("sink_connector", versions.ONLY_05),
    }
    for action in actions if isinstance(actions, (list, tuple)) else ():
        if not isinstance(action, tuple) or not action:
            continue
        marks.append(verb_marks.get(action[0]))
        for arg in action[1:]:
            for obj in arg if isinstance(arg, list) else [arg]:
                marks.append(versions.mark_of(obj))
    return marks


def _tree_marks(app: Any) -> list:
    """The version marks of a 0.6 ``build_application`` result."""
    default = [versions.Mark("build_application", versions.ONLY_06)]
    marks = list(getattr(app, "api_marks", None) or default)
    for stages in app[2] if len(app) > 2 and isinstance(app[2], list) else []:
        for stage in stages:
            for item in stage[1:] if isinstance(stage, tuple) else ():
                marks.append(versions.mark_of(item))
    return marks


def _is_pipeline_app(actions: Any) -> bool:
    return (
        isinstance(actions, tuple)
        and len(actions) == 4
        and isinstance(actions[0], str)
        and isinstance(actions[2], list)
    )


def _none_guard(func: Callable[..., Any], result: Any) -> Callable[..., Any]:
    """``func`` returning ``result`` for None data; unchanged when it does so
    itself (marked ``none_safe``: one Python call less per record)."""
    if getattr(func, "none_safe", False):
        return func

    def guarded(data: Any, *rest: Any) -> Any:
        return result if data is None else func(data, *rest)

    return guarded


def _drop_none_decoded(pipeline: dict) -> None:
    """0.5.1+: a decoder's None drops the record (0.4.2 passed it on)."""
    steps = pipeline["steps"]
    if not steps:
        if pipeline["sink"] is not None:
            pipeline["sink"]["encode"] = _none_guard(pipeline["sink"]["encode"], None)
        return
    first = steps[0]
    if first["kind"].startswith("state"):
        if first["partition"] is not None:
            first["partition"] = _none_guard(first["partition"], None)
        first["func"] = _none_guard(first["func"], (None, False))
    else:
        first["func"] = _none_guard(first["func"], None)


def _chr_of_int(partition: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def key(data: Any) -> Any:
        result = partition(data)
        if isinstance(result, int) and not isinstance(result, bool):
            return chr(result)
        return result

    return key


def _int_keys_as_chr(pipeline: dict) -> None:
    """0.5.4: an int from a partition function is the key ``chr(int)``."""
    for step in pipeline["steps"]:
        if step.get("partition") is not None and not step.get("u64"):
            step["partition"] = _chr_of_int(step["partition"])


def compile_plan(actions: Any, origin: str = "application", args: list | None = None) -> dict:
    """Check ``actions`` (what ``application_setup`` returned: a 0.4.2/0.5
    ``build()`` list or a 0.6 ``build_application`` tuple) and return the plan.

    ``origin`` names the application (its file) in error messages; ``args`` are
    its arguments (read for the Kafka flags of the 0.5/0.6 default parsers).
    """
    pipeline_app = _is_pipeline_app(actions)
    try:
        version = versions.decide(_tree_marks(actions) if pipeline_app else _marks(actions))
    except versions.VersionMixError as err:
        raise ApplicationError(f"{origin}: {err}") from None
    if pipeline_app:
        from wallaroo.plan06 import compile_application

        plan = compile_application(actions, origin, args)
    else:
        plan = _compile_builder(actions, origin, list(args or []))
    for pipeline in plan["pipelines"] if version == versions.V05 else ():
        _int_keys_as_chr(pipeline)
    for pipeline in plan["pipelines"] if version != versions.V042 else ():
        _drop_none_decoded(pipeline)
    plan["api_version"] = version
    return plan


def _compile_builder(actions: Any, origin: str, app_args: list) -> contract.Plan:
    """The plan of a 0.4.2/0.5 ``build()`` list (``app_args``: see :func:`_resolve_spec`)."""
    if not isinstance(actions, (list, tuple)) or not actions:
        raise ApplicationError(
            f"{origin}: application_setup() must return ApplicationBuilder(...).build(), "
            f"got {actions!r:.200}"
        )
    app_name = None
    pipelines: list = []
    current: _PipelineBuilder | None = None
    states: dict = {}
    for index, action in enumerate(actions):
        if not isinstance(action, tuple) or not action:
            raise ApplicationError(f"{origin}: action {index} is not a tuple: {action!r:.200}")
        verb, args = action[0], action[1:]
        if verb == "name":
            app_name = args[0]
            continue
        if verb in ("source_connector", "sink_connector"):
            continue  # for the connector scripts; pipelines name them by their configs
        if verb == "new_pipeline":
            name, source_config = args
            current = _PipelineBuilder(
                name, _source_plan(source_config, f"{origin}: pipeline {name!r} source", app_args)
            )
            pipelines.append(current)
            continue
        if current is None or current.sink is not None:
            if verb == "done":
                current = None
                continue
            raise ApplicationError(
                f"{origin}: {verb}() comes after "
                + ("to_sink() of its pipeline" if current else "no new_pipeline()")
            )
        where = f"{origin}: pipeline {current.name!r} step {len(current.steps) + 1}"
        where_sink = f"{origin}: pipeline {current.name!r} sink"
        if verb in ("to", "to_parallel"):
            current.steps.append(_compute_step(args[0], where, stateful=False))
        elif verb == "to_stateful":
            computation, state_class, state_name = args
            step = _compute_step(computation, where, stateful=True)
            states.setdefault(state_name, _state_class(state_class, where))
            current.steps.append(contract.state_step(step, state_name, None))
        elif verb in ("to_state_partition", "to_state_partition_u64"):
            computation, state_class, state_name, partition_function, keys = args
            partition = _method(
                partition_function,
                "partition",
                f"{where} partition function",
                "@wallaroo.partition",
            )
            step = contract.state_step(
                _compute_step(computation, where, stateful=True),
                state_name,
                partition,
                keys,
                u64=verb == "to_state_partition_u64",
            )
            if step["u64"]:
                for key in step["keys"]:
                    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                        raise ApplicationError(
                            f"{where} {step['name']!r}: to_state_partition_u64 keys must be "
                            f"non-negative ints, got {key!r}"
                        )
            states.setdefault(state_name, _state_class(state_class, where))
            current.steps.append(step)
        elif verb == "to_sink":
            current.sink = _sink_plan(args[0], where_sink, app_args)
        elif verb == "to_sinks":
            current.sink = _sinks_plan(args[0], where_sink, app_args)
        elif verb == "done":
            current = None
        else:
            raise ApplicationError(f"{origin}: unknown builder action {verb!r}")
    if not pipelines:
        raise ApplicationError(f"{origin}: the application has no pipeline (call new_pipeline())")
    for pipeline in pipelines:
        if pipeline.sink is None and not pipeline.steps:
            raise ApplicationError(f"{origin}: pipeline {pipeline.name!r} has no step and no sink")
    return contract.app_plan(app_name or "application", [p.plan() for p in pipelines], states)
