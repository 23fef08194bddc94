"""Copy every message of one Kafka topic to another, upper-cased.

    python -m wallaroo kafka_echo.py \
        --kafka_source_topic in --kafka_source_brokers 127.0.0.1:9092 \
        --kafka_sink_topic out --kafka_sink_brokers 127.0.0.1:9092

With no ``--kafka_*_brokers`` the runner starts an embedded broker.
"""

import wallaroo


def application_setup(args):
    (in_topic, in_brokers,
     in_log_level) = wallaroo.kafka_parse_source_options(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Kafka echo")
    ab.new_pipeline("echo",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))
    ab.to(upper)
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs


@wallaroo.computation(name="upper")
def upper(data):
    return data.upper()


@wallaroo.encoder
def encoder(data):
    return data
