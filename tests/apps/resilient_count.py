"""Count records per key, for the crash-recovery tests.

    python -m wallaroo resilient_count.py --input keys.txt --output counts.txt
    python -m wallaroo resilient_count.py --kafka_source_topic keys \
        --kafka_source_brokers HOST:PORT --output counts.txt
    python -m wallaroo resilient_count.py --in 127.0.0.1:7000 --output counts.txt

Input records are keys (one per line in a file, one per Kafka message, one
per length-framed TCP message).
Each key's count lives in its own state (dynamic keys); every record emits
``key count`` (the key's count so far). With at-least-once output a key's
line may repeat after a recovery, but its highest count is its exact number
of records when state counted each record once.

``--pause-every N --pause-ms MS [--hold-file PATH]`` paces the run (see
pacing.py), so a test can kill it at many moments.
``--fail-on KEY`` makes the count step raise on key KEY (the run fails).
"""

import argparse

import wallaroo
from pacing import Pacer

PACER = Pacer()
FAIL_ON = {"key": None}


def application_setup(args):
    parser = argparse.ArgumentParser("resilient count")
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--kafka_sink_topic")
    parser.add_argument("--kafka_source_topic")
    parser.add_argument("--in", dest="tcp_in", help="host:port of a TCP source")
    Pacer.add_arguments(parser)
    parser.add_argument("--fail-on")
    opts, _ = parser.parse_known_args(args)
    PACER.configure(opts)
    FAIL_ON["key"] = opts.fail_on

    ab = wallaroo.ApplicationBuilder("Resilient Count")
    if opts.tcp_in:
        host, port = opts.tcp_in.rsplit(":", 1)
        source = wallaroo.TCPSourceConfig(host, port, decoder)
    elif opts.kafka_source_topic:
        topic, brokers, log_level = wallaroo.kafka_parse_source_options(args)
        source = wallaroo.KafkaSourceConfig(topic, brokers, log_level, decoder)
    else:
        source = wallaroo.FileSourceConfig(opts.input, decoder)
    ab.new_pipeline("count", source)
    ab.to_state_partition(count, Counter, "counts", by_key)
    if opts.kafka_sink_topic:
        (topic, brokers, log_level, buffer_ms,
         max_size) = wallaroo.kafka_parse_sink_options(args)
        ab.to_sink(wallaroo.KafkaSinkConfig(topic, brokers, log_level, buffer_ms, max_size,
                                            encoder))
    else:
        ab.to_sink(wallaroo.FileSinkConfig(opts.output, encoder))
    return ab.build()


class Counter:
    def __init__(self):
        self.count = 0


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.partition
def by_key(key):
    return key


@wallaroo.state_computation(name="count")
def count(key, counter):
    if key == FAIL_ON["key"]:
        raise RuntimeError(f"failing on key {key}, as asked")
    PACER.tick()
    counter.count += 1
    return ((key, counter.count), True)


@wallaroo.encoder
def encoder(pair):
    key, n = pair
    return f"{key} {n}\n"
