"""Orders in, invoices out: a JSON application from one Kafka topic to another.

Input messages: JSON objects ``{"id": int, "customer": str, "items": [{"sku": str,
"qty": int, "price": float}, ...], "discount": float}``. Output: one JSON object per
order with the customer upper-cased, the item count, the total and the total after
discount (rounded to cents).

    python -m wallaroo kafka_json.py \
        --kafka_source_topic orders --kafka_source_brokers 127.0.0.1:9092 \
        --kafka_sink_topic invoices --kafka_sink_brokers 127.0.0.1:9092
"""

import json

import wallaroo


def application_setup(args):
    (in_topic, in_brokers,
     in_log_level) = wallaroo.kafka_parse_source_options(args)

    (out_topic, out_brokers, out_log_level, out_max_produce_buffer_ms,
     out_max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Kafka JSON invoices")
    ab.new_pipeline("invoices",
                    wallaroo.KafkaSourceConfig(in_topic, in_brokers, in_log_level,
                                               decoder))
    ab.to(total)
    ab.to(apply_discount)
    ab.to_sink(wallaroo.KafkaSinkConfig(out_topic, out_brokers, out_log_level,
                                        out_max_produce_buffer_ms,
                                        out_max_message_size,
                                        encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return json.loads(bs.decode("utf-8"))


@wallaroo.computation(name="total")
def total(order):
    amount = sum(item["qty"] * item["price"] for item in order["items"])
    return {
        "id": order["id"],
        "customer": order["customer"].upper(),
        "items": sum(item["qty"] for item in order["items"]),
        "total": round(amount, 2),
        "discount": order["discount"],
    }


@wallaroo.computation(name="apply discount")
def apply_discount(invoice):
    invoice["due"] = round(invoice["total"] * (1.0 - invoice.pop("discount")), 2)
    return invoice


@wallaroo.encoder
def encoder(invoice):
    return (json.dumps(invoice, sort_keys=True), None)
