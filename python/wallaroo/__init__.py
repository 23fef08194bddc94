"""The Wallaroo 0.4.2, 0.5 and 0.6 Python APIs, run by a Rust engine on Python 3.

An application module defines ``application_setup(args)`` and returns
``ApplicationBuilder(...)....build()`` (0.4.2, 0.5) or
``wallaroo.build_application(name, pipeline)`` (0.6; see :mod:`wallaroo.api06`).
Which version an app is written for is told from the calls it makes
(:mod:`wallaroo.versions`). Steps are plain functions turned into
objects by the decorators below; the engine only calls their methods, so
hand-written classes with the same methods work as well.

Run an application with ``python -m wallaroo APP [flags]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import pickle
import struct
import sys
import types
from collections.abc import Iterable
from typing import Any, Callable

from wallaroo.versions import BUILDER, ONLY_042, ONLY_06, Mark

__all__ = [
    "Aggregation",
    "ApplicationBuilder",
    "BaseWrapped",
    "Computation",
    "ComputationMulti",
    "ConnectorDecoder",
    "ConnectorEncoder",
    "Decoder",
    "Encoder",
    "OctetDecoder",
    "OctetEncoder",
    "Partition",
    "StateBuilder",
    "StateComputation",
    "StateComputationMulti",
    "CountWindows",
    "CountWindowsBuilder",
    "CustomKafkaSinkCLIParser",
    "CustomKafkaSourceCLIParser",
    "DefaultKafkaSinkCLIParser",
    "DefaultKafkaSourceCLIParser",
    "GenSourceConfig",
    "KeyExtractor",
    "Pipeline",
    "RangeWindows",
    "RangeWindowsBuilder",
    "TimestampExtractor",
    "build_application",
    "count_windows",
    "hours",
    "key_extractor",
    "microseconds",
    "milliseconds",
    "minutes",
    "nanoseconds",
    "range_windows",
    "seconds",
    "source",
    "timestamp_extractor",
    "FileSinkConfig",
    "FileSourceConfig",
    "KafkaSinkConfig",
    "KafkaSourceConfig",
    "StdoutSinkConfig",
    "TCPSinkConfig",
    "TCPSourceConfig",
    "WallarooParameterError",
    "computation",
    "computation_multi",
    "decoder",
    "deserialize",
    "encoder",
    "kafka_parse_sink_options",
    "kafka_parse_source_options",
    "partition",
    "serialize",
    "state_computation",
    "state_computation_multi",
    "tcp_parse_input_addrs",
    "tcp_parse_output_addrs",
]

__version__ = "0.1.0"


class WallarooParameterError(Exception):
    """A builder or config was given a value it cannot use."""


def serialize(obj: Any) -> bytes:
    """Serialize ``obj`` for crossing workers or going to disk (pickle)."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def deserialize(data: bytes) -> Any:
    """Inverse of :func:`serialize`."""
    return pickle.loads(data)


# ---------------------------------------------------------------------------
# Decorated objects
# ---------------------------------------------------------------------------


class _Decorated:
    """Base of the objects the decorators return.

    Pickles by reference to the module attribute the decorator replaced (the
    usual case), else by value of the wrapped function's reference.
    """

    #: Methods that only forward to the wrapped function; the engine calls
    #: the function directly for these (one Python frame less per record).
    _forwarding_methods: tuple = ()

    def __init__(self, func: Callable[..., Any] | None = None) -> None:
        self._func = func
        self.__module__ = getattr(func, "__module__", None) or __name__
        self.__qualname__ = getattr(func, "__qualname__", type(self).__name__)
        self.__name__ = getattr(func, "__name__", type(self).__name__)
        self.__doc__ = getattr(func, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> _Decorated:
        return self

    def _ctor_args(self) -> tuple:
        return (self._func,)

    def __reduce__(self) -> Any:
        if type(self).__module__ != __name__:
            # A hand-written subclass (0.6 style): pickled like any object.
            return object.__reduce_ex__(self, pickle.HIGHEST_PROTOCOL)
        module = sys.modules.get(self.__module__)
        target: Any = module
        for part in self.__qualname__.split("."):
            target = getattr(target, part, None)
        if target is self:
            return self.__qualname__
        return (type(self), self._ctor_args())

    def __repr__(self) -> str:
        return f"<wallaroo.{type(self).__name__} {self.__qualname__}>"


class _Named(_Decorated):
    def __init__(self, func: Callable[..., Any] | None = None, name: str | None = None) -> None:
        super().__init__(func)
        self._name = name

    def name(self) -> str:
        """The step name shown in logs, errors and metrics."""
        return self._name

    def _ctor_args(self) -> tuple:
        return (self._func, self._name)


class Computation(_Named):
    """A stateless step: ``compute(data)`` returns the output or None to drop."""

    _forwarding_methods = ("compute",)

    def compute(self, data: Any) -> Any:
        return self._func(data)


class ComputationMulti(_Named):
    """A stateless fan-out step: ``compute_multi(data)`` returns a list or None."""

    _forwarding_methods = ("compute_multi",)

    def compute_multi(self, data: Any) -> list | None:
        return self._func(data)


class StateComputation(_Named):
    """A state step: ``compute(data, state)`` returns ``(output, state_changed)``."""

    _forwarding_methods = ("compute",)

    def compute(self, data: Any, state: Any) -> tuple:
        return self._func(data, state)


class StateComputationMulti(_Named):
    """A state fan-out step: ``compute_multi(data, state)`` returns ``(list_or_None, changed)``."""

    _forwarding_methods = ("compute_multi",)

    def compute_multi(self, data: Any, state: Any) -> tuple:
        return self._func(data, state)


class PartitionFunction(_Decorated):
    """Maps a record to its partition key: ``partition(data)``."""

    _forwarding_methods = ("partition",)

    def partition(self, data: Any) -> Any:
        return self._func(data)


class Decoder(_Decorated):
    """Turns input bytes into a record; framing described by a struct header."""

    _forwarding_methods = ("decode",)

    def __init__(self, func: Callable[[bytes], Any], header_length: int, length_fmt: str) -> None:
        super().__init__(func)
        try:
            fmt_size = struct.calcsize(length_fmt)
        except (struct.error, TypeError) as err:
            raise WallarooParameterError(
                f"decoder {self.__qualname__}: bad length_fmt {length_fmt!r}: {err}"
            ) from None
        if fmt_size != header_length:
            raise WallarooParameterError(
                f"decoder {self.__qualname__}: length_fmt {length_fmt!r} is "
                f"{fmt_size} bytes, header_length is {header_length}"
            )
        self._header_length = header_length
        self._length_fmt = length_fmt

    def header_length(self) -> int:
        return self._header_length

    def payload_length(self, header: bytes) -> int:
        return struct.unpack(self._length_fmt, header)[0]

    def decode(self, data: bytes) -> Any:
        return self._func(data)

    def length_fmt(self) -> str:
        """The struct format of the header (lets the engine frame natively)."""
        return self._length_fmt

    def _ctor_args(self) -> tuple:
        return (self._func, self._header_length, self._length_fmt)


class Encoder(_Decorated):
    """Turns a record into output bytes (``str`` is sent UTF-8 encoded)."""

    _forwarding_methods = ("encode",)

    def encode(self, data: Any) -> Any:
        return self._func(data)


#: The names 0.5 and 0.6 gave these base classes.
BaseWrapped = _Decorated
Partition = PartitionFunction
OctetDecoder = Decoder
OctetEncoder = Encoder


class StateBuilder:
    """Makes a named state's object (0.4.2/0.5 put one in their ``to_stateful``
    actions; kept for code that names it)."""

    def __init__(self, name: str, state_cls: Callable[[], Any]) -> None:
        self.name = name
        self.state_cls = state_cls

    def ____wallaroo_build____(self) -> Any:
        return self.state_cls()


def _where(func: Any) -> str:
    """``name()`` with its file and line, for messages about a decorated function."""
    code = getattr(func, "__code__", None)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if name is None:
        return f"{func!r:.100}"
    if code is None:
        return f"{name}()"
    return f"{name}() ({code.co_filename}, line {code.co_firstlineno})"


#: ``co_flags`` bit of a function taking ``*args``.
_CO_VARARGS = 0x04


def _accepts(func: Any, count: int) -> bool:
    """Whether ``func`` can be called with ``count`` positional arguments."""
    if isinstance(func, types.FunctionType):
        code = func.__code__
        required_kwonly = code.co_kwonlyargcount - len(func.__kwdefaults__ or {})
        required = code.co_argcount - len(func.__defaults__ or ())
        varargs = bool(code.co_flags & _CO_VARARGS)
        return required_kwonly == 0 and required <= count and (count <= code.co_argcount or varargs)
    import inspect  # other callables (classes, partials, instances): rare, checked slowly

    try:
        inspect.signature(func).bind(*range(count))
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): it is checked when called
        return True
    return True


def _check_arity(func: Any, count: int, call: str, called_with: str) -> None:
    """Wallaroo 0.5+ checked a decorated function's arity when decorating: a
    function that cannot take ``count`` positional arguments fails the start
    naming ``call`` (the decorator as written), the function and what it gets."""
    if not callable(func):
        raise WallarooParameterError(f"{call}: expected a function, got {func!r:.100}")
    if not _accepts(func, count):
        plural = "argument" if count == 1 else "arguments"
        raise WallarooParameterError(
            f"{call} on {_where(func)}: the function must accept {count} positional "
            f"{plural} ({called_with}); Wallaroo calls it as f({called_with})"
        )


def _named_decorator(cls: type, name: str | None, call: str) -> Callable[[Callable[..., Any]], Any]:
    def wrap(func: Callable[..., Any]) -> Any:
        _check_arity(func, 1, f"@wallaroo.{call}", "data")
        return cls(func, name if name is not None else func.__name__)

    return wrap


def computation(name: str | None = None) -> Callable[[Callable[[Any], Any]], Computation]:
    """``@computation(name=...)`` on ``f(data)``: a stateless step."""
    return _named_decorator(Computation, name, f"computation(name={name!r})")


def computation_multi(
    name: str | None = None,
) -> Callable[[Callable[[Any], Any]], ComputationMulti]:
    """``@computation_multi(name=...)`` on ``f(data)`` returning a list: fan-out."""
    return _named_decorator(ComputationMulti, name, f"computation_multi(name={name!r})")


class _State06:
    """A 0.6 state computation: ``compute(data, state)`` returns the output only;
    ``initial_state()`` makes a key's state from the ``state`` class."""

    is_stateful = True
    _api_mark = Mark("state_computation(name, state)", ONLY_06)

    def __init__(self, func: Callable[..., Any], name: str, state: Any) -> None:
        super().__init__(func, name)  # type: ignore[call-arg]
        self._state_class = state

    def initial_state(self) -> Any:
        """A new state object for a key."""
        return self._state_class()

    def _ctor_args(self) -> tuple:
        return (self._func, self._name, self._state_class)


class StateComputation06(_State06, StateComputation):
    """``@state_computation(name, state)`` (0.6): ``compute(data, state)`` -> output."""

    _forwarding_methods = ("compute",)


class StateComputationMulti06(_State06, StateComputationMulti):
    """``@state_computation_multi(name, state)`` (0.6): ``compute_multi`` -> list or None."""

    _forwarding_methods = ("compute_multi",)


_STATE_042_MARK = Mark("state_computation(name)", BUILDER)


def _state_decorator(
    cls: type, cls06: type, name: str | None, state: Any, decorator: str
) -> Callable:
    call = f"@wallaroo.{decorator}(name={name!r}" + (", state=...)" if state else ")")

    def wrap(func: Callable[..., Any]) -> Any:
        _check_arity(func, 2, call, "data, state")
        step_name = name if name is not None else func.__name__
        if state is not None:
            return cls06(func, step_name, state)
        obj = cls(func, step_name)
        obj._api_mark = _STATE_042_MARK
        return obj

    return wrap


def state_computation(
    name: str | None = None, state: Any = None
) -> Callable[[Callable[[Any, Any], Any]], StateComputation]:
    """``@state_computation(name)`` on ``f(data, state)`` -> ``(output, changed)`` (0.4.2, 0.5);
    ``@state_computation(name, state)`` on ``f(data, state)`` -> output (0.6)."""
    return _state_decorator(
        StateComputation, StateComputation06, name, state, "state_computation"
    )


def state_computation_multi(
    name: str | None = None, state: Any = None
) -> Callable[[Callable[[Any, Any], Any]], StateComputationMulti]:
    """``@state_computation_multi(name)`` -> ``(list, changed)`` (0.4.2, 0.5);
    ``@state_computation_multi(name, state)`` -> list or None (0.6)."""
    return _state_decorator(
        StateComputationMulti, StateComputationMulti06, name, state, "state_computation_multi"
    )


def partition(func: Callable[[Any], Any]) -> PartitionFunction:
    """``@partition`` on ``f(data)`` returning the record's partition key."""
    _check_arity(func, 1, "@wallaroo.partition", "data")
    obj = PartitionFunction(func)
    obj._api_mark = Mark("partition", BUILDER)  # type: ignore[attr-defined]
    return obj


def decoder(header_length: int = 4, length_fmt: str = ">I") -> Callable[[Callable], Decoder]:
    """``@decoder(header_length=4, length_fmt=">I")`` on ``f(payload_bytes)``."""
    if isinstance(header_length, bool) or not isinstance(header_length, int) or header_length <= 0:
        raise WallarooParameterError(
            f"decoder header_length must be a positive int, got {header_length!r}"
        )

    def wrap(func: Callable[[bytes], Any]) -> Decoder:
        call = f"@wallaroo.decoder(header_length={header_length!r}, length_fmt={length_fmt!r})"
        _check_arity(func, 1, call, "payload bytes")
        return Decoder(func, header_length, length_fmt)

    return wrap


def encoder(func: Callable[[Any], Any]) -> Encoder:
    """``@encoder`` on ``f(data)`` returning bytes or str (or None to write nothing)."""
    _check_arity(func, 1, "@wallaroo.encoder", "data")
    return Encoder(func)


# ---------------------------------------------------------------------------
# Source and sink configs
# ---------------------------------------------------------------------------


def _port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise WallarooParameterError(f"{what}: port must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise WallarooParameterError(f"{what}: port out of range: {port}")
    return port


def _brokers(brokers: Iterable[Any], what: str) -> list:
    if isinstance(brokers, str):
        brokers = brokers.split(",")
    out = []
    for item in brokers:
        if isinstance(item, str):
            host, _, port = item.partition(":")
            item = (host, port or "9092")
        try:
            host, port = item
        except (TypeError, ValueError):
            raise WallarooParameterError(
                f"{what}: brokers must be (host, port) pairs, got {item!r}"
            ) from None
        out.append((str(host), str(port)))
    return out


_LOG_LEVELS = ("Fine", "Info", "Warn", "Error")


def _log_level(level: Any, what: str) -> str:
    if level not in _LOG_LEVELS:
        raise WallarooParameterError(
            f"{what}: log_level must be one of {_LOG_LEVELS}, got {level!r}"
        )
    return level


class TCPSourceConfig:
    """Listen on ``host:port``; frames are split by the decoder's header."""

    kind = "tcp"

    def __init__(self, host: str, port: Any, decoder: Any, parallelism: int | None = None) -> None:
        self.host = host
        self.port = _port(port, "TCPSourceConfig")
        self.decoder = decoder
        #: 0.6.1: the most connections read at once (None: no limit; the
        #: others wait to be accepted).
        self.parallelism = parallelism
        if parallelism is not None:
            self._api_mark = Mark("TCPSourceConfig(..., parallelism)", ONLY_06)

    def to_tuple(self) -> tuple:
        if self.parallelism is not None:
            return ("tcp", self.host, str(self.port), self.decoder, self.parallelism)
        return ("tcp", self.host, str(self.port), self.decoder)


class TCPSinkConfig:
    """Connect to ``host:port`` and write each encoded record as-is."""

    kind = "tcp"

    def __init__(self, host: str, port: Any, encoder: Any) -> None:
        self.host = host
        self.port = _port(port, "TCPSinkConfig")
        self.encoder = encoder

    def to_tuple(self) -> tuple:
        return ("tcp", self.host, str(self.port), self.encoder)


class KafkaSourceConfig:
    """Consume ``topic``; each message value goes to ``decoder.decode``."""

    kind = "kafka"
    _api_mark = Mark("KafkaSourceConfig(...)", ONLY_042)

    def __init__(self, topic: str, brokers: Iterable[Any], log_level: str, decoder: Any) -> None:
        self.topic = topic
        self.brokers = _brokers(brokers, "KafkaSourceConfig")
        self.log_level = _log_level(log_level, "KafkaSourceConfig")
        self.decoder = decoder

    def to_tuple(self) -> tuple:
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)


class KafkaSinkConfig:
    """Produce to ``topic``; ``encoder.encode`` returns ``(value, key)`` or a value."""

    kind = "kafka"
    _api_mark = Mark("KafkaSinkConfig(...)", ONLY_042)

    def __init__(
        self,
        topic: str,
        brokers: Iterable[Any],
        log_level: str,
        max_produce_buffer_ms: Any,
        max_message_size: Any,
        encoder: Any,
    ) -> None:
        self.topic = topic
        self.brokers = _brokers(brokers, "KafkaSinkConfig")
        self.log_level = _log_level(log_level, "KafkaSinkConfig")
        try:
            self.max_produce_buffer_ms = int(max_produce_buffer_ms)
            self.max_message_size = int(max_message_size)
        except (TypeError, ValueError):
            raise WallarooParameterError(
                "KafkaSinkConfig: max_produce_buffer_ms and max_message_size must be numbers"
            ) from None
        self.encoder = encoder

    def to_tuple(self) -> tuple:
        return (
            "kafka",
            self.topic,
            self.brokers,
            self.log_level,
            self.max_produce_buffer_ms,
            self.max_message_size,
            self.encoder,
        )


class FileSourceConfig:
    """Read records from a file (extension of this project).

    ``framing="lines"``: one record per line (without the line ending).
    ``framing="length"``: records framed like TCP input, by the decoder's header.
    Files ending in ``.gz`` are decompressed. The run ends at end of file.
    """

    kind = "file"

    def __init__(self, path: str, decoder: Any, framing: str = "lines") -> None:
        if framing not in ("lines", "length"):
            raise WallarooParameterError(
                f"FileSourceConfig: framing must be 'lines' or 'length', got {framing!r}"
            )
        self.path = str(path)
        self.decoder = decoder
        self.framing = framing

    def to_tuple(self) -> tuple:
        return ("file", self.path, self.framing, self.decoder)


class FileSinkConfig:
    """Write each encoded record as-is to a file (extension of this project)."""

    kind = "file"

    def __init__(self, path: str, encoder: Any) -> None:
        self.path = str(path)
        self.encoder = encoder

    def to_tuple(self) -> tuple:
        return ("file", self.path, self.encoder)


class StdoutSinkConfig:
    """Write each encoded record as-is to standard output (extension)."""

    kind = "stdout"

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def to_tuple(self) -> tuple:
        return ("stdout", self.encoder)


# ---------------------------------------------------------------------------
# Application builder
# ---------------------------------------------------------------------------


class ApplicationBuilder:
    """Describes an application: pipelines of steps from a source to a sink."""

    def __init__(self, name: str) -> None:
        self._actions: list = [("name", name)]
        #: 0.5 connectors by name: (source, sink) -> {name: config}.
        self._connectors: dict = {"source": {}, "sink": {}}
        self._next_port = {"source": 7100, "sink": 7200}

    def _connector(self, role: str, name: str, encoder: Any, decoder: Any, port: Any) -> None:
        from wallaroo.api05 import declare_connector

        self._actions.append(
            declare_connector(self._connectors, self._next_port, role, name, encoder, decoder, port)
        )

    def source_connector(
        self, name: str, encoder: Any, decoder: Any, port: Any = None
    ) -> ApplicationBuilder:
        """Declare a source connector (0.5): a pipeline whose source is ``name``
        listens on ``port`` (default 7100, 7101, ... in declaration order) for
        connector scripts' frames, read by ``decoder``."""
        self._connector("source", name, encoder, decoder, port)
        return self

    def sink_connector(
        self, name: str, encoder: Any, decoder: Any, port: Any = None
    ) -> ApplicationBuilder:
        """Declare a sink connector (0.5): a pipeline whose sink is ``name``
        connects to ``port`` (default 7200, 7201, ...) and writes ``encoder``'s frames."""
        self._connector("sink", name, encoder, decoder, port)
        return self

    def _config(self, role: str, config: Any, call: str) -> Any:
        if not isinstance(config, str):
            return config
        from wallaroo.api05 import connector_config

        return connector_config(self._connectors, role, config, call)

    def new_pipeline(self, name: str, source_config: Any) -> ApplicationBuilder:
        """Start a pipeline reading ``source_config`` (or the source connector
        of that name, 0.5); closes the one before."""
        config = self._config("source", source_config, f"new_pipeline({name!r}, ...)")
        self._actions.append(("new_pipeline", name, config))
        return self

    def to(self, computation: Any) -> ApplicationBuilder:
        """Add a stateless step (``compute`` or ``compute_multi``)."""
        self._actions.append(("to", computation))
        return self

    def to_parallel(self, computation: Any) -> ApplicationBuilder:
        """Add a stateless step that may run on any worker."""
        self._actions.append(("to_parallel", computation))
        return self

    def to_stateful(
        self, computation: Any, state_class: Any, state_name: str
    ) -> ApplicationBuilder:
        """Add a step over one state object named ``state_name``."""
        self._actions.append(("to_stateful", computation, state_class, state_name))
        return self

    def to_state_partition(
        self,
        computation: Any,
        state_class: Any,
        state_name: str,
        partition_function: Any,
        partition_keys: Iterable[Any] | None = None,
    ) -> ApplicationBuilder:
        """Add a step over state partitioned by ``partition_function``'s key.

        Without ``partition_keys`` (0.5; accepted for 0.4.2 apps too) every key
        gets its state on first use.
        """
        keys = list(partition_keys) if partition_keys is not None else []
        self._actions.append(
            ("to_state_partition", computation, state_class, state_name, partition_function, keys)
        )
        return self

    def to_state_partition_u64(
        self,
        computation: Any,
        state_class: Any,
        state_name: str,
        partition_function: Any,
        partition_keys: Iterable[Any] | None = None,
    ) -> ApplicationBuilder:
        """Like :meth:`to_state_partition` with non-negative integer keys."""
        keys = list(partition_keys) if partition_keys is not None else []
        self._actions.append(
            (
                "to_state_partition_u64",
                computation,
                state_class,
                state_name,
                partition_function,
                keys,
            )
        )
        return self

    def to_sink(self, sink_config: Any) -> ApplicationBuilder:
        """End the pipeline at ``sink_config`` (or the sink connector of that name, 0.5)."""
        self._actions.append(("to_sink", self._config("sink", sink_config, "to_sink(...)")))
        return self

    def to_sinks(self, sink_configs: Iterable[Any]) -> ApplicationBuilder:
        """End the pipeline at every sink of ``sink_configs`` (0.5)."""
        configs = [self._config("sink", c, "to_sinks([...])") for c in sink_configs]
        self._actions.append(("to_sinks", configs))
        return self

    def done(self) -> ApplicationBuilder:
        """End the pipeline (nothing more after ``to_sink``)."""
        self._actions.append(("done",))
        return self

    def build(self) -> list:
        """The application description: a list of action tuples.

        An application written for 0.5 (told from its calls) is checked as
        0.5's ``build()`` checked it (:func:`wallaroo.api05.check_build`).
        """
        from wallaroo.api05 import check_build

        check_build(self._actions)
        return list(self._actions)


# ---------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(allow_abbrev=False, add_help=False)


def _split_addrs(value: str, flag: str) -> list:
    addrs = []
    for item in value.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port:
            raise WallarooParameterError(f"{flag}: expected host:port, got {item!r}")
        addrs.append((host, port))
    return addrs


def tcp_parse_input_addrs(args: list) -> list:
    """``-i/--in H1:P1,H2:P2`` -> ``[(H1, P1), ...]`` (ports as strings)."""
    parser = _parser()
    parser.add_argument("-i", "--in", dest="input_addrs", required=True)
    return _split_addrs(parser.parse_known_args(args)[0].input_addrs, "--in")


def tcp_parse_output_addrs(args: list) -> list:
    """``-o/--out H1:P1,...`` -> ``[(H1, P1), ...]`` (ports as strings)."""
    parser = _parser()
    parser.add_argument("-o", "--out", dest="output_addrs", required=True)
    return _split_addrs(parser.parse_known_args(args)[0].output_addrs, "--out")


def _parse_brokers(value: str) -> list:
    brokers = []
    for item in value.split(","):
        host, _, port = item.strip().partition(":")
        brokers.append((host, port or "9092"))
    return brokers


def kafka_parse_source_options(args: list) -> tuple:
    """``--kafka_source_*`` flags -> ``(topic, brokers, log_level)``."""
    parser = _parser()
    parser.add_argument("--kafka_source_topic", default="")
    parser.add_argument("--kafka_source_brokers", default="")
    parser.add_argument("--kafka_source_log_level", default="Warn", choices=_LOG_LEVELS)
    opts = parser.parse_known_args(args)[0]
    return (
        opts.kafka_source_topic,
        _parse_brokers(opts.kafka_source_brokers),
        opts.kafka_source_log_level,
    )


def kafka_parse_sink_options(args: list) -> tuple:
    """``--kafka_sink_*`` flags.

    Returns ``(topic, brokers, log_level, max_produce_buffer_ms, max_message_size)``.
    """
    parser = _parser()
    parser.add_argument("--kafka_sink_topic", default="")
    parser.add_argument("--kafka_sink_brokers", default="")
    parser.add_argument("--kafka_sink_log_level", default="Warn", choices=_LOG_LEVELS)
    parser.add_argument("--kafka_sink_max_produce_buffer_ms", type=int, default=0)
    parser.add_argument("--kafka_sink_max_message_size", type=int, default=100000)
    opts = parser.parse_known_args(args)[0]
    return (
        opts.kafka_sink_topic,
        _parse_brokers(opts.kafka_sink_brokers),
        opts.kafka_sink_log_level,
        opts.kafka_sink_max_produce_buffer_ms,
        opts.kafka_sink_max_message_size,
    )


from wallaroo import experimental  # noqa: E402, F401  (0.5 and 0.6 imported it with the package)
from wallaroo.api05 import (  # noqa: E402  (they use the names above)
    CustomKafkaSinkCLIParser,
    CustomKafkaSourceCLIParser,
    DefaultKafkaSinkCLIParser,
    DefaultKafkaSourceCLIParser,
    GenSourceConfig,
)
from wallaroo.api06 import (  # noqa: E402
    KeyExtractor,
    Pipeline,
    build_application,
    key_extractor,
    source,
)
from wallaroo.experimental import ConnectorDecoder, ConnectorEncoder  # noqa: E402
from wallaroo.windows import (  # noqa: E402
    Aggregation,
    CountWindows,
    CountWindowsBuilder,
    RangeWindows,
    RangeWindowsBuilder,
    TimestampExtractor,
    count_windows,
    hours,
    microseconds,
    milliseconds,
    minutes,
    nanoseconds,
    range_windows,
    seconds,
    timestamp_extractor,
)
