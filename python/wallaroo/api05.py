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
