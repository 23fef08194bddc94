"""Kafka benchmark: the engine's passthrough app (decode JSON -> identity ->
encode) against a bare Python confluent-kafka loop doing the same, on the same
broker (tansu, a real Kafka-protocol broker on loopback) and the same input
topic, in the same run. Each side is a whole command, start-up included,
reading exactly N messages and exiting once every output is acknowledged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")

BARE = r"""
import json, sys
from confluent_kafka import Consumer, Producer, TopicPartition
bootstrap, source, sink, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bare-" + sink,
                     "enable.auto.commit": False})
consumer.assign([TopicPartition(source, 0, 0)])
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                     "linger.ms": 5})
done = 0
while done < count:
    for message in consumer.consume(1000, 1.0):
        if message.error() or done >= count:
            continue
        value = json.dumps(json.loads(message.value()))
        while True:
            try:
                producer.produce(sink, value)
                break
            except BufferError:
                producer.poll(0.05)
        done += 1
    producer.poll(0)
assert producer.flush(60) == 0
"""


def _count(bootstrap: str, topic: str, expected: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "count-" + topic})
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen, deadline = 0, time.monotonic() + 30
    while seen < expected and time.monotonic() < deadline:
        seen += sum(1 for m in consumer.consume(1000, 0.5) if not m.error())
    consumer.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    sys.path.insert(0, TESTS)
    sys.path.insert(0, HERE)
    from events import write_events
    from kafka_broker import TansuBroker

    events_path = os.path.join(HERE, ".kafka-bench-events.jsonl")
    write_events(events_path, opts.messages)
    with open(events_path, "rb") as f:
        values = [line.rstrip(b"\n") for line in f]
    os.unlink(events_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    results: dict = {"bare": [], "engine": []}
    with TansuBroker() as broker:
        broker.create_topic("events", partitions=1)
        broker.produce("events", values)
        for run in range(opts.repeat):
            for side in ("bare", "engine"):
                sink = f"out-{side}-{run}"
                broker.create_topic(sink, partitions=1)
                if side == "bare":
                    command = [
                        sys.executable,
                        "-c",
                        BARE,
                        broker.bootstrap,
                        "events",
                        sink,
                        str(opts.messages),
                    ]
                else:
                    command = [
                        sys.executable,
                        "-m",
                        "wallaroo",
                        "kafka_app",
                        "--kafka_source_topic",
                        "events",
                        "--kafka_source_brokers",
                        broker.bootstrap,
                        "--kafka_sink_topic",
                        sink,
                        "--kafka_sink_brokers",
                        broker.bootstrap,
                        "--kafka_sink_max_produce_buffer_ms",
                        "5",
                        "--kafka-group-id",
                        sink,
                        "--max-records",
                        str(opts.messages),
                        "--log-level",
                        "warning",
                    ]
                start = time.perf_counter()
                subprocess.run(command, env=env, check=True)
                results[side].append(time.perf_counter() - start)
                seen = _count(broker.bootstrap, sink, opts.messages)
                if seen != opts.messages:
                    sys.exit(f"{side}: {seen} of {opts.messages} messages in {sink}")
    bare, engine = min(results["bare"]), min(results["engine"])
    print(
        f"kafka passthrough (decode JSON -> identity -> encode), {opts.messages:,} messages, "
        f"tansu on loopback, best of {opts.repeat}"
    )
    print(f"  bare confluent-kafka loop: {opts.messages / bare:>10,.0f} msg/s ({bare:.2f} s)")
    print(f"  engine, 1 worker         : {opts.messages / engine:>10,.0f} msg/s ({engine:.2f} s)")
    print(f"  ratio engine/bare: {bare / engine:.2f}x  (target >= 1.00x)")


if __name__ == "__main__":
    main()
