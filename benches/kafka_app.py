"""Kafka passthrough application: decode JSON -> identity -> encode JSON."""

from __future__ import annotations

import json

import wallaroo


def decode(data: bytes) -> dict:
    return json.loads(data)


def identity(record: dict) -> dict:
    return record


def encode(record: dict) -> str:
    return json.dumps(record)


def application_setup(args: list) -> list:
    topic, brokers, log_level = wallaroo.kafka_parse_source_options(args)
    out = wallaroo.kafka_parse_sink_options(args)
    builder = wallaroo.ApplicationBuilder("kafka passthrough")
    builder.new_pipeline(
        "passthrough",
        wallaroo.KafkaSourceConfig(topic, brokers, log_level, wallaroo.decoder()(decode)),
    )
    builder.to(wallaroo.computation(name="identity")(identity))
    builder.to_sink(wallaroo.KafkaSinkConfig(*out, wallaroo.encoder(encode)))
    return builder.build()
