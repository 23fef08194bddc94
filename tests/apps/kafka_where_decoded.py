"""Tags every record with the process that decoded it and the process that
applied its state step: which worker of a cluster did what.

Input messages: ``pN-SEQ`` (text; ``pN`` names the Kafka partition it was
written to, and is the state partition key). Output: ``pN-SEQ decoder-pid
state-pid count`` where ``count`` is the key's running count (per-key order).

    python -m wallaroo kafka_where_decoded.py \
        --kafka_source_topic in --kafka_source_brokers 127.0.0.1:9092 \
        --kafka_sink_topic out --kafka_sink_brokers 127.0.0.1:9092 --workers 2
"""

import os

import wallaroo

#: The state partition keys, declared: with 2 workers "p0" lives on worker 0
#: and "p1" on worker 1 (declared keys go round-robin).
KEYS = ["p0", "p1"]


class Count:
    def __init__(self):
        self.n = 0


def application_setup(args):
    (in_topic, in_brokers,
     in_log_level) = wallaroo.kafka_parse_source_options(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Where decoded")
    ab.new_pipeline("where",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))
    ab.to_state_partition(count, Count, "counts", partition, KEYS)
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return (bs.decode("utf-8"), os.getpid())


@wallaroo.partition
def partition(record):
    return record[0].split("-")[0]


@wallaroo.state_computation(name="count")
def count(record, state):
    state.n += 1
    text, decoded_by = record
    return (f"{text} {decoded_by} {os.getpid()} {state.n}", True)


@wallaroo.encoder
def encoder(data):
    return data.encode("utf-8")
