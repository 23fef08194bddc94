# Our own application in the style of Wallaroo 0.4.2's examples/python/celsius-kafka
# (Python 2 era: no f-strings, tuples from the option parsers).
"""Celsius to Fahrenheit over Kafka.

Input messages: a big-endian float32 (Celsius) per Kafka message.
Output messages: the Fahrenheit value as a big-endian float32.

    python -m wallaroo celsius_kafka.py \
        --kafka_source_topic celsius --kafka_source_brokers 127.0.0.1:9092 \
        --kafka_sink_topic fahrenheit --kafka_sink_brokers 127.0.0.1:9092 \
        --kafka_sink_max_message_size 100000 --kafka_sink_max_produce_buffer_ms 10
"""

import struct

import wallaroo


def application_setup(args):
    (in_topic, in_brokers,
     in_log_level) = wallaroo.kafka_parse_source_options(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit with Kafka")

    ab.new_pipeline("convert",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))

    ab.to(multiply)
    ab.to(add)

    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return struct.unpack('>f', bs)[0]


@wallaroo.computation(name="multiply by 1.8")
def multiply(data):
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data):
    return data + 32


@wallaroo.encoder
def encoder(data):
    # data is a float
    return struct.pack('>f', data)
