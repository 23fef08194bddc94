"""Lines of a file to a Kafka topic: a bounded run (it ends at the end of the
file) whose sink must deliver every record before the process exits.

    python -m wallaroo kafka_file_to_topic.py --input lines.txt \
        --kafka_sink_topic lines --kafka_sink_brokers 127.0.0.1:9092
"""

import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("file to topic")
    parser.add_argument("--input", required=True)
    opts, _ = parser.parse_known_args(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("File to Kafka")
    ab.new_pipeline("lines", wallaroo.FileSourceConfig(opts.input, decoder))
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.encoder
def encoder(line):
    return line
