"""The star leaders app's own functions called by a plain Python loop, no engine.

The app is imported as the runner imports it (:func:`wallaroo.loader.load_app`,
with the same Python 2 translation), and each event goes through its decoder,
filter, partitioner, state computation (one state object per partition key)
and encoder, in order.

``python star_leaders_direct.py APP file EVENTS`` writes what the app's
file sink would for the events of EVENTS (one JSON event per line): the
output of its ``line_encoder`` (the encoder of its ``--output`` file) when it
has one, else of its ``encoder`` and a newline, one line per leaderboard.
``python star_leaders_direct.py APP kafka BOOTSTRAP SOURCE SINK COUNT``
reads COUNT events of SOURCE (every partition), writes the leaderboards to SINK,
as the engine does, and prints how many: the bare loop of
``benches/star_leaders.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any


class StarLeaders:
    """One pass of the app's functions over a stream of raw events."""

    def __init__(self, app: Any, encoder: str = "encoder") -> None:
        self.decode = app.decoder.decode
        self.keep = app.filter_interesting_events.compute
        self.partition = app.PARTITIONER.partition
        self.update = app.annotate_repos.compute
        self.encode = getattr(app, encoder).encode
        self.state_class = app.RepoMetadata
        self.states: dict = {}

    def outputs(self, values: Iterable[bytes]) -> Iterator[Any]:
        """The encoder's output for each leaderboard ``values`` make, in order."""
        decode, keep, partition, update, encode = (
            self.decode, self.keep, self.partition, self.update, self.encode
        )
        states = self.states
        for value in values:
            event = keep(decode(value))
            if event is None:
                continue
            key = partition(event)
            state = states.get(key)
            if state is None:
                state = states[key] = self.state_class()
            leaders, _changed = update(event, state)
            if leaders is not None:
                yield encode(leaders)


def load(app: str, file_sink: bool = False) -> StarLeaders:
    """The app ``app`` (its ``.py`` file or directory), imported as
    ``python -m wallaroo APP`` would; with ``file_sink``, its outputs are
    encoded as its file sink encodes them (see the module docs)."""
    from wallaroo.loader import load_app

    module = load_app(app)
    if file_sink and hasattr(module, "line_encoder"):
        return StarLeaders(module, "line_encoder")
    return StarLeaders(module)


def _kafka_values(bootstrap: str, topic: str, count: int) -> Iterator[bytes]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"direct-{topic}", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
    read = 0
    try:
        while read < count:
            for message in consumer.consume(1000, 1.0):
                if message.error() or read >= count:
                    continue
                read += 1
                yield message.value()
    finally:
        consumer.close()


def run_kafka(loop: StarLeaders, bootstrap: str, source: str, sink: str, count: int) -> int:
    """Read ``count`` events of ``source``, write the leaderboards to ``sink``;
    return how many were written once all are acknowledged."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 10})
    written = 0
    for output in loop.outputs(_kafka_values(bootstrap, source, count)):
        while True:
            try:
                producer.produce(sink, output)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        written += 1
    if producer.flush(60) != 0:
        raise RuntimeError(f"{sink}: not every leaderboard was acknowledged")
    return written


def main(argv: list) -> None:
    """The command line of the module docstring."""
    app, mode, *rest = argv
    loop = load(app, file_sink=mode == "file")
    if mode == "file":
        write = sys.stdout.write
        with open(rest[0], "rb") as events:
            for output in loop.outputs(line.rstrip(b"\n") for line in events):
                write(output if output.endswith("\n") else output + "\n")
    else:
        bootstrap, source, sink, count = rest
        print(run_kafka(loop, bootstrap, source, sink, int(count)))


if __name__ == "__main__":
    main(sys.argv[1:])
