"""Kafka settings of a run: brokers (or the embedded broker), group ids,
librdkafka settings from the command line, start offsets, topic creation."""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

log = logging.getLogger("wallaroo.kafka")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's Kafka flags."""
    group = parser.add_argument_group("Kafka")
    group.add_argument(
        "--kafka-source-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for Kafka sources (repeatable; e.g. security.protocol=SSL)",
    )
    group.add_argument(
        "--kafka-sink-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for Kafka sinks (repeatable; e.g. sasl.mechanism=PLAIN)",
    )
    group.add_argument(
        "--kafka-start-offset",
        choices=("committed", "earliest", "latest"),
        default="committed",
        help="where sources start: the group's committed offsets (else the beginning; "
        "default), the beginning, or only new messages",
    )
    group.add_argument(
        "--kafka-group-id",
        metavar="ID",
        help="consumer group for offsets (default wallaroo.APP.PIPELINE)",
    )
    group.add_argument(
        "--kafka-create-topics",
        action="store_true",
        help="create missing topics instead of failing at start-up",
    )
    group.add_argument(
        "--kafka-sink-transactions",
        action="store_true",
        help="with -r/--resilience-dir: Kafka sinks write the output between two snapshots "
        "as one transaction, committed at the snapshot (for read_committed consumers)",
    )
    group.add_argument(
        "--kafka-partitions",
        type=int,
        default=1,
        metavar="N",
        help="partitions of topics the runner creates (embedded broker or "
        "--kafka-create-topics; default 1)",
    )


def _settings(pairs: list, flag: str) -> list:
    settings = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        settings.append((key.strip(), value))
    return settings


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "app"


def _configured(brokers: list) -> bool:
    return any(host for host, _port in brokers)


class KafkaSetup:
    """Fills in the Kafka parts of a plan; owns the embedded broker if one is needed."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.source_config = _settings(opts.kafka_source_config, "--kafka-source-config")
        self.sink_config = _settings(opts.kafka_sink_config, "--kafka-sink-config")
        self.embedded: Any | None = None

    def _embedded_bootstrap(self, topic: str) -> str:
        if self.embedded is None:
            from wallaroo._engine import EmbeddedKafka

            self.embedded = EmbeddedKafka()
            log.info(
                "no Kafka broker given: started an embedded broker at %s "
                "(in this process; it keeps about 5 MiB per partition)",
                self.embedded.bootstrap_servers,
            )
            if getattr(self.opts, "resilience_dir", None):
                log.warning(
                    "-r/--resilience-dir with the embedded broker: its topics live in this "
                    "process and do not survive a crash; give --kafka_source_brokers / "
                    "--kafka_sink_brokers for recovery that keeps Kafka data"
                )
        self.embedded.create_topic(topic, self.opts.kafka_partitions)
        log.info("embedded broker: topic %r ready", topic)
        return self.embedded.bootstrap_servers

    def _connection(self, spec: dict, config: list, embedded_bootstrap: str | None) -> None:
        brokers = spec.pop("brokers")
        if _configured(brokers):
            spec["bootstrap"] = ",".join(f"{host}:{port}" for host, port in brokers if host)
            create = self.opts.kafka_create_topics
        elif embedded_bootstrap:
            # Another process (the cluster's initializer) runs the embedded broker.
            spec["bootstrap"] = embedded_bootstrap
            create = False
        else:
            spec["bootstrap"] = self._embedded_bootstrap(spec["topic"])
            create = True
        spec["config"] = config
        spec["create_partitions"] = self.opts.kafka_partitions if create else None

    def prepare(self, plan: dict, embedded_bootstrap: str | None = None) -> None:
        """Complete every Kafka source and sink of ``plan`` in place.

        ``embedded_bootstrap``: the address of an embedded broker another
        process of the cluster runs, used instead of starting one here.
        """
        for pipeline in plan["pipelines"]:
            source = pipeline["source"]
            if source["kind"] == "kafka":
                self._connection(source, self.source_config, embedded_bootstrap)
                source["group_id"] = self.opts.kafka_group_id or (
                    f"wallaroo.{_slug(plan['name'])}.{_slug(pipeline['name'])}"
                )
                source["start_offset"] = self.opts.kafka_start_offset
            sink = pipeline["sink"]
            sinks = [] if sink is None else sink.get("sinks", [sink])  # "many": to_sinks
            for sink in sinks:
                if sink["kind"] == "kafka":
                    self._connection(sink, self.sink_config, embedded_bootstrap)
                    sink["transactions"] = bool(self.opts.kafka_sink_transactions)

    @property
    def bootstrap_servers(self) -> str | None:
        """The embedded broker's address, when one was started."""
        return self.embedded.bootstrap_servers if self.embedded is not None else None
