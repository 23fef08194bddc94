"""Count records per key, for the crash-recovery tests.

    python -m wallaroo resilient_count.py --input keys.txt --output counts.txt
    python -m wallaroo resilient_count.py --kafka_source_topic keys \
        --kafka_source_brokers HOST:PORT --output counts.txt

Input records are keys (one per line in a file, one per Kafka message).
Each key's count lives in its own state (dynamic keys); every record emits
``key count`` (the key's count so far). With at-least-once output a key's
line may repeat after a recovery, but its highest count is its exact number
of records when state counted each record once.
"""

import argparse

import wallaroo


def application_setup(args):
    parser = argparse.ArgumentParser("resilient count")
    parser.add_argument("--input")
    parser.add_argument("--output", required=True)
    parser.add_argument("--kafka_source_topic")
    opts, _ = parser.parse_known_args(args)

    ab = wallaroo.ApplicationBuilder("Resilient Count")
    if opts.kafka_source_topic:
        topic, brokers, log_level = wallaroo.kafka_parse_source_options(args)
        source = wallaroo.KafkaSourceConfig(topic, brokers, log_level, kafka_decoder)
    else:
        source = wallaroo.FileSourceConfig(opts.input, line_decoder)
    ab.new_pipeline("count", source)
    ab.to_state_partition(count, Counter, "counts", by_key)
    ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


class Counter:
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def line_decoder(bs):
    return bs.decode("utf-8")


@wallaroo.decoder(header_length=4, length_fmt=">I")
def kafka_decoder(bs):
    return bs.decode("utf-8")


@wallaroo.partition
def by_key(key):
    return key


@wallaroo.state_computation(name="count")
def count(key, counter):
    counter.count += 1
    return ((key, counter.count), True)


@wallaroo.encoder
def encoder(pair):
    key, n = pair
    return f"{key} {n}\n"
