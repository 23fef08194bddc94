"""Sources and sinks added by Wallaroo 0.5 (and kept by 0.6).

``GenSourceConfig`` feeds a pipeline from a generator object; the four Kafka
CLI-parser classes replace 0.4.2's ``KafkaSourceConfig``/``KafkaSinkConfig``.
The ``Default*`` parsers name their flags after the connector
(``--kafka_source_topic`` ...); :func:`resolve_internal_kafka` reads them from
the worker's command line when the plan is compiled.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from wallaroo import (
    KafkaSinkConfig,
    KafkaSourceConfig,
    WallarooParameterError,
    kafka_parse_sink_options,
    kafka_parse_source_options,
)
from wallaroo.versions import SINCE_05, Mark


class GenSourceConfig:
    """Records from ``gen``: ``gen.initial_value()`` first, then ``gen.apply(previous)``.

    ``None`` from either ends the source.
    """

    kind = "gen"
    _api_mark = Mark("GenSourceConfig(...)", SINCE_05)

    def __init__(self, gen_instance: Any) -> None:
        for method in ("initial_value", "apply"):
            if not callable(getattr(gen_instance, method, None)):
                raise WallarooParameterError(
                    f"GenSourceConfig: {gen_instance!r} has no {method}() method"
                )
        self.gen = gen_instance

    def to_tuple(self) -> tuple:
        return ("gen", self.gen)


class CustomKafkaSourceCLIParser(KafkaSourceConfig):
    """``--kafka_source_topic/_brokers/_log_level`` read from ``args`` now."""

    _api_mark = Mark("CustomKafkaSourceCLIParser(...)", SINCE_05)

    def __init__(self, args: list, decoder: Any) -> None:
        super().__init__(*kafka_parse_source_options(args), decoder)


class CustomKafkaSinkCLIParser(KafkaSinkConfig):
    """``--kafka_sink_*`` flags read from ``args`` now."""

    _api_mark = Mark("CustomKafkaSinkCLIParser(...)", SINCE_05)

    def __init__(self, args: list, encoder: Any) -> None:
        super().__init__(*kafka_parse_sink_options(args), encoder)


class DefaultKafkaSourceCLIParser:
    """A Kafka source whose flags (``--NAME_topic`` ...) the engine reads."""

    _api_mark = Mark("DefaultKafkaSourceCLIParser(...)", SINCE_05)

    def __init__(self, decoder: Any, name: str = "kafka_source") -> None:
        self.decoder = decoder
        self.name = name

    def to_tuple(self) -> tuple:
        return ("kafka-internal", self.name, self.decoder)


class DefaultKafkaSinkCLIParser:
    """A Kafka sink whose flags (``--NAME_topic`` ...) the engine reads."""

    _api_mark = Mark("DefaultKafkaSinkCLIParser(...)", SINCE_05)

    def __init__(self, encoder: Any, name: str = "kafka_sink") -> None:
        self.encoder = encoder
        self.name = name

    def to_tuple(self) -> tuple:
        return ("kafka-internal", self.name, self.encoder)


def flush_every_line() -> None:
    """0.5.4 and 0.6 flushed the app's standard output and error at every
    write when they were not a terminal (a pipe, a file), so what an app
    prints shows at once there: here at every line (``print`` ends one)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if callable(reconfigure) and not stream.isatty():
            reconfigure(line_buffering=True)


def _flag_prefix(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "", str(name).lower()) + "_"


def _brokers(value: str) -> list:
    out = []
    for item in value.split(","):
        item = item.strip()
        if item:
            host, _, port = item.partition(":")
            out.append((host, port or "9092"))
    return out


def resolve_internal_kafka(spec: tuple, args: list, sink: bool) -> tuple:
    """``("kafka-internal", name, codec)`` as the 0.4.2 Kafka tuple, its flags read
    from ``args`` with the prefix ``--<clean name>_`` (unknown flags ignored)."""
    _, name, codec = spec
    prefix = "--" + _flag_prefix(name)
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument(prefix + "topic", dest="topic", default="")
    parser.add_argument(prefix + "brokers", dest="brokers", default="")
    parser.add_argument(prefix + "log_level", dest="log_level", default="Warn")
    parser.add_argument(prefix + "max_produce_buffer_ms", dest="buffer_ms", type=int, default=0)
    parser.add_argument(
        prefix + "max_produce_message_size", dest="max_size", type=int, default=1000000
    )
    opts = parser.parse_known_args(list(args or []))[0]
    brokers = _brokers(opts.brokers)
    if sink:
        return ("kafka", opts.topic, brokers, opts.log_level, opts.buffer_ms, opts.max_size, codec)
    return ("kafka", opts.topic, brokers, opts.log_level, codec)


# ---------------------------------------------------------------------------
# 0.5 connectors declared on the ApplicationBuilder
# ---------------------------------------------------------------------------


def declare_connector(
    connectors: dict, next_port: dict, role: str, name: str, encoder: Any, decoder: Any, port: Any
) -> tuple:
    """The ``(role_connector, name, port, encoder, decoder)`` action of
    ``ApplicationBuilder.source_connector``/``sink_connector``, its connector
    recorded in ``connectors[role]``. A falsy port takes the role's next port
    (7100, ... for sources, 7200, ... for sinks); the count moves on either
    way, as in 0.5. The codecs are the 0.5-frame views of stream codecs."""
    from wallaroo.experimental import SinkConnectorConfig, SourceConnectorConfig, frames05

    call = f"{role}_connector({name!r}, ...)"
    if not isinstance(name, str):
        raise WallarooParameterError(f"{call}: the connector name must be a str")
    port_num = port or next_port[role]
    next_port[role] += 1
    encoder, decoder = frames05(encoder), frames05(decoder)
    if role == "source":
        config: Any = SourceConnectorConfig("localhost", port_num, decoder)
    else:
        config = SinkConnectorConfig("localhost", port_num, encoder)
    connectors[role][name] = config
    return (f"{role}_connector", name, port_num, encoder, decoder)


def connector_config(connectors: dict, role: str, name: str, call: str) -> Any:
    """The config of the 0.5 connector ``name`` named in ``call``."""
    config = connectors[role].get(name)
    if config is None:
        declared = ", ".join(repr(n) for n in connectors[role]) or "none"
        raise WallarooParameterError(
            f"{call}: no {role} connector named {name!r} (declared before it: {declared}); "
            f"declare it with ApplicationBuilder.{role}_connector({name!r}, encoder, decoder) "
            "first"
        )
    return config


# ---------------------------------------------------------------------------
# The checks of 0.5's build()
# ---------------------------------------------------------------------------


def _state_class_name(cls: Any) -> str:
    return getattr(cls, "__qualname__", None) or repr(cls)


def _check_keys(keys: list, call: str) -> None:
    seen: set = set()
    for key in keys:
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            raise WallarooParameterError(
                f"{call}: partition key {key!r:.100} cannot be hashed (a {type(key).__name__})"
            ) from None
        if duplicate:
            raise WallarooParameterError(f"{call}: partition key {key!r:.100} is listed twice")


def check_build(actions: list) -> None:
    """What 0.5's ``ApplicationBuilder.build()`` checked, for an app that is
    0.5 by its calls (0.4.2's ``build()`` checked nothing; a mix of versions
    is reported when the plan is compiled). Raises ``WallarooParameterError``
    naming the call: a pipeline name used twice, a state name used with
    another state class or other partition keys (``to_stateful`` has none),
    partition keys that are not distinct hashable values, an application
    without a sink.

    Two checks are relaxed: the partition keys may be any iterable (0.5
    wanted a ``list``; the builder makes one, as for 0.4.2 apps), and a
    pipeline ending in ``to_sinks`` counts as having a sink (0.5 wanted a
    ``to_sink`` somewhere, which rejected apps whose only sinks were
    ``to_sinks``)."""
    from wallaroo import versions
    from wallaroo.plan import _marks

    marks = _marks(actions)
    try:
        if versions.decide(marks) != versions.V05:
            return
    except versions.VersionMixError:
        return
    why = next(m.call for m in marks if m is not None and versions.V042 not in m.versions)
    try:
        _check_05(actions)
    except WallarooParameterError as err:
        raise WallarooParameterError(
            f"ApplicationBuilder.build(): {err} (Wallaroo 0.5 checks this; the app is "
            f"0.5 because it calls {why})"
        ) from None


def _check_05(actions: list) -> None:
    pipelines: set = set()
    states: dict = {}
    has_sink = False
    for action in actions:
        verb = action[0]
        if verb == "new_pipeline":
            name = action[1]
            if name in pipelines:
                raise WallarooParameterError(
                    f"new_pipeline({name!r}, ...): a pipeline named {name!r} exists already; "
                    "pipeline names must be unique"
                )
            pipelines.add(name)
        elif verb in ("to_stateful", "to_state_partition"):
            computation, state_class, state_name = action[1:4]
            step = getattr(computation, "__qualname__", None) or repr(computation)
            call = f"{verb}({step}, {_state_class_name(state_class)}, {state_name!r}, ...)"
            keys = action[5] if verb == "to_state_partition" else None
            if keys is not None:
                _check_keys(keys, call)
            earlier = states.setdefault(state_name, (state_class, keys, call))
            if earlier[0] is not state_class:
                raise WallarooParameterError(
                    f"{call}: state {state_name!r} is made by "
                    f"{_state_class_name(earlier[0])} in {earlier[2]}; one state name, "
                    "one state class"
                )
            if earlier[1] != keys:
                raise WallarooParameterError(
                    f"{call}: state {state_name!r} is partitioned by keys {earlier[1]!r:.200} "
                    f"in {earlier[2]}, here by {keys!r:.200}; one state name, one partitioning"
                )
        elif verb in ("to_sink", "to_sinks"):
            has_sink = True
    if not has_sink:
        raise WallarooParameterError(
            "the application has no sink: end at least one pipeline with to_sink() or to_sinks()"
        )
