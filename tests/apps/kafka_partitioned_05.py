"""Orders routed to Kafka partitions by the app (Wallaroo 0.5 style: the
Custom Kafka CLI parsers, an encoder returning ``(value, key, partition)``).

Input messages: ``ORDER_ID,REGION`` (text). Output: ``ORDER_ID,REGION``,
keyed by the region, to partition ``ORDER_ID % 3``; region ``any`` has no key
and no partition (the producer chooses); other regions are dropped.

    python -m wallaroo kafka_partitioned_05.py \\
        --kafka_source_topic orders --kafka_source_brokers 127.0.0.1:9092 \\
        --kafka_sink_topic by_region --kafka_sink_brokers 127.0.0.1:9092
"""

import wallaroo

REGIONS = ["north", "south", "east"]


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Orders by region")
    ab.new_pipeline("orders", wallaroo.CustomKafkaSourceCLIParser(args, decode))
    ab.to(check)
    ab.to_sink(wallaroo.CustomKafkaSinkCLIParser(args, encode))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(data):
    order_id, region = data.decode().split(",")
    return (int(order_id), region)


@wallaroo.computation(name="check region")
def check(order):
    return order if order[1] in REGIONS + ["any"] else None


@wallaroo.encoder
def encode(order):
    order_id, region = order
    value = f"{order_id},{region}"
    if region == "any":
        return (value, None, None)
    return (value, region.encode(), order_id % 3)
