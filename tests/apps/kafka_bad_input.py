"""Kafka application for bad input: the decoder raises on messages that are not
JSON objects with an integer ``n``; the encoder pads its output to ``pad`` bytes
when the input asks for it (to exceed ``--kafka_sink_max_message_size``).

Input: ``{"n": 1}`` or ``{"n": 2, "pad": 5000}``. Output: ``n=1`` (padded with
``.`` up to ``pad`` bytes).
"""

import json

import wallaroo


def application_setup(args):
    (in_topic, in_brokers,
     in_log_level) = wallaroo.kafka_parse_source_options(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Kafka bad input")
    ab.new_pipeline("checked",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))
    ab.to(describe)
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    record = json.loads(bs.decode("utf-8"))
    if not isinstance(record.get("n"), int):
        raise ValueError(f"no integer n in {record!r}")
    return record


@wallaroo.computation(name="describe")
def describe(record):
    text = "n={}".format(record["n"])
    return text.ljust(record.get("pad", 0), ".")


@wallaroo.encoder
def encoder(text):
    return text
