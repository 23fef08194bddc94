"""Readings keyed by sensor: the encoder returns ``(value, key)`` so every output
message carries the sensor name as its Kafka key.

Input messages: ``SENSOR,SEQ,VALUE`` (text). Output: ``SENSOR,SEQ,VALUE*10`` with
key ``SENSOR``.

    python -m wallaroo kafka_keyed.py \
        --kafka_source_topic readings --kafka_source_brokers 127.0.0.1:9092 \
        --kafka_sink_topic scaled --kafka_sink_brokers 127.0.0.1:9092
"""

import wallaroo


def application_setup(args):
    (in_topic, in_brokers,
     in_log_level) = wallaroo.kafka_parse_source_options(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Kafka keyed readings")
    ab.new_pipeline("readings",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))
    ab.to(scale)
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    sensor, seq, value = bs.decode("utf-8").split(",")
    return (sensor, int(seq), int(value))


@wallaroo.computation(name="scale")
def scale(reading):
    sensor, seq, value = reading
    return (sensor, seq, value * 10)


@wallaroo.encoder
def encoder(reading):
    sensor, seq, value = reading
    return (f"{sensor},{seq},{value}", sensor.encode("utf-8"))
