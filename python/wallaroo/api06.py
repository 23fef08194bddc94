"""The Wallaroo 0.6 pipeline API: ``wallaroo.source(...)`` pipelines.

A :class:`Pipeline` is a tree of stage lists (a leaf starts with its source,
an inner node holds the stages after a ``merge``); every method returns a new
pipeline and leaves the receiver as it was. ``build_application`` returns the
tree as 0.6 did: ``(app_name, root_idx, vs, es)``. :mod:`wallaroo.plan06`
compiles it into the engine's plan.
"""

from __future__ import annotations

from typing import Any, Callable

from wallaroo.versions import ONLY_06, Mark

_PIPELINE_MARK = Mark("wallaroo.source(...)", ONLY_06)


def _error(message: str) -> Exception:
    from wallaroo import WallarooParameterError

    return WallarooParameterError(message)


def _config_tuple(config: Any) -> Any:
    return config.to_tuple() if hasattr(config, "to_tuple") else config


class _Tree:
    """``vs``: stage lists; ``es[i]``: the children (0 or 2) of node ``i``."""

    def __init__(self, source_stage: tuple) -> None:
        self.root = 0
        self.vs: list = [[source_stage]]
        self.es: list = [[]]
        self.closed = False
        self.marks: list = [_PIPELINE_MARK]

    def add(self, stage: tuple) -> None:
        if self.closed:
            raise _error(f"{stage[0]}(): no stage can come after to_sink()/to_sinks()")
        self.vs[self.root].append(stage)
        self.closed = stage[0] in ("to_sink", "to_sinks")

    def copy(self) -> _Tree:
        new = _Tree.__new__(_Tree)
        new.root = self.root
        new.vs = [list(v) for v in self.vs]
        new.es = [list(e) for e in self.es]
        new.closed = self.closed
        new.marks = list(self.marks)
        return new

    def merge(self, other: _Tree) -> None:
        if self.closed or other.closed:
            raise _error("merge(): a pipeline that ends in to_sink()/to_sinks() cannot be merged")
        node = len(self.vs)
        self.vs.append([])
        self.es.append([self.root])
        offset = len(self.vs)
        self.vs.extend(list(v) for v in other.vs)
        self.es.extend([e + offset for e in es] for es in other.es)
        self.es[node].append(other.root + offset)
        self.root = node
        self.marks.extend(other.marks)


class Pipeline:
    """A stream of records from one or more sources through stages to a sink."""

    _api_mark = _PIPELINE_MARK

    def __init__(self, tree: _Tree) -> None:
        self._tree = tree

    @classmethod
    def from_source(cls, name: str, source_config: Any) -> Pipeline:
        """A pipeline reading ``source_config``."""
        tree = _Tree(("source", name, _config_tuple(source_config)))
        tree.marks.append(getattr(source_config, "_api_mark", None))
        return cls(tree)

    def clone(self) -> Pipeline:
        """An independent copy."""
        return Pipeline(self._tree.copy())

    def _with(self, stage: tuple, *marked: Any) -> Pipeline:
        new = self.clone()
        new._tree.add(stage)
        new._tree.marks.extend(getattr(obj, "_api_mark", None) for obj in marked)
        return new

    def to(self, stage: Any) -> Pipeline:
        """Add a computation, a state computation or windows (from ``over``)."""
        from wallaroo import StateComputation, StateComputationMulti
        from wallaroo.windows import CountWindows, RangeWindows

        if isinstance(stage, (StateComputation, StateComputationMulti)):
            return self._with(("to_state", stage), stage)
        if isinstance(stage, RangeWindows):
            spec: tuple = ("to_range_windows", stage.range, stage.slide, stage.delay)
            spec += (stage.aggregation,)
            if stage.options:
                # Beyond 0.6 (event time, epoch alignment): a sixth item.
                spec += (dict(stage.options),)
            return self._with(spec, stage)
        if isinstance(stage, CountWindows):
            return self._with(("to_count_windows", stage.count, stage.aggregation), stage)
        return self._with(("to", stage), stage)

    def key_by(self, key_extractor: Any) -> Pipeline:
        """Key the records by ``key_extractor.extract_key(data)`` from here on."""
        return self._with(("key_by", key_extractor), key_extractor)

    def collect(self) -> Pipeline:
        """Send every record to one place (one key) from here on."""
        return self._with(("collect", ""))

    def merge(self, other: Pipeline) -> Pipeline:
        """Interleave ``other``'s records with this pipeline's."""
        new = self.clone()
        new._tree.merge(other.clone()._tree)
        return new

    def to_sink(self, sink_config: Any) -> Pipeline:
        """End at ``sink_config``."""
        return self._with(("to_sink", _config_tuple(sink_config)), sink_config)

    def to_sinks(self, sink_configs: list) -> Pipeline:
        """End at every sink of ``sink_configs`` (each output goes to all)."""
        return self._with(
            ("to_sinks", [_config_tuple(c) for c in sink_configs]), *list(sink_configs)
        )

    def _is_closed(self) -> bool:
        return self._tree.closed

    def __to_tuple__(self, app_name: str) -> tuple:
        tree = self.clone()._tree
        return _Application((app_name, tree.root, tree.vs, tree.es), tree.marks)


class _Application(tuple):
    """``build_application``'s 4-tuple, carrying the API marks of its calls."""

    api_marks: list

    def __new__(cls, items: tuple, marks: list) -> _Application:
        self = super().__new__(cls, items)
        self.api_marks = marks
        return self

    def __reduce__(self) -> Any:
        return (tuple, (tuple(self),))


def source(name: str, source_config: Any) -> Pipeline:
    """``wallaroo.source(name, config)``: a pipeline reading ``config``."""
    return Pipeline.from_source(name, source_config)


def build_application(app_name: str, pipeline: Pipeline) -> tuple:
    """The application made of ``pipeline`` (which must end in a sink)."""
    if not isinstance(pipeline, Pipeline):
        raise _error(f"build_application(): expected a Pipeline, got {pipeline!r:.100}")
    if not pipeline._is_closed():
        raise _error("build_application(): an application must end with to_sink()/to_sinks()")
    return pipeline.__to_tuple__(app_name)


def _int_key(func: Any, key: int) -> str:
    """The key of an int, as 0.6 made it: ``chr(key)``; a key ``chr`` cannot
    take is a ValueError naming the key extractor and the way out."""
    try:
        return chr(key)
    except (ValueError, OverflowError):
        name = getattr(func, "__qualname__", repr(func))
        raise ValueError(
            f"key_extractor {name} returned the int {key}: Wallaroo 0.6 turns an int key "
            "into chr(key), which takes 0 to 1114111 (0x10FFFF); return str(...) of it "
            "(or another str) to key by a larger number"
        ) from None


class KeyExtractor:
    """Maps a record to its key: ``extract_key(data)`` (an int becomes ``chr(int)``)."""

    _api_mark = Mark("key_extractor", ONLY_06)

    def __init__(self, func: Callable[[Any], Any] | None = None) -> None:
        self._func = func
        if func is not None:
            self.__name__ = getattr(func, "__name__", "key_extractor")
            self.__qualname__ = getattr(func, "__qualname__", self.__name__)
            self.__module__ = getattr(func, "__module__", __name__)

    def __call__(self, *args: Any) -> KeyExtractor:
        return self

    def extract_key(self, data: Any) -> Any:
        key = self._func(data) if self._func is not None else None
        if isinstance(key, int) and not isinstance(key, bool):
            return _int_key(self._func, key)
        return key

    def key_function(self) -> Callable[[Any], Any]:
        """``extract_key`` as one function, None for None data (a dropped
        record: see ``plan._none_guard``)."""
        func = self._func
        if func is None or type(self).extract_key is not KeyExtractor.extract_key:
            return self.extract_key

        def key(data: Any) -> Any:
            if data is None:
                return None
            key = func(data)
            if isinstance(key, int) and not isinstance(key, bool):
                return _int_key(func, key)
            return key

        key.none_safe = True  # type: ignore[attr-defined]
        return key

    def __reduce__(self) -> Any:
        import sys

        module = sys.modules.get(self.__module__)
        if module is not None and getattr(module, self.__qualname__, None) is self:
            return self.__qualname__
        return (type(self), (self._func,))


def key_extractor(func: Callable[[Any], Any]) -> KeyExtractor:
    """``@key_extractor`` on ``f(data)`` returning the record's key."""
    from wallaroo import _check_arity

    _check_arity(func, 1, "@wallaroo.key_extractor", "data")
    return KeyExtractor(func)
