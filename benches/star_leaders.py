"""Star leaders benchmark: the original example through a real broker, against
a bare Python loop of the same functions on the same events, in the same run.

Both sides read the same N events from one topic of tansu (a real
Kafka-protocol broker on loopback), produced before either starts, and write
their leaderboards to a topic of their own; each side is a whole command,
start-up included, that exits once every leaderboard is acknowledged.

* engine: ``python -m wallaroo star_leaders`` (the bundled example, with
  ``--workers N`` for each N of ``--workers``) with the brokers given, from
  an empty directory: no demo companions start.
* bare: ``tests/star_leaders_direct.py``, the app's own decoder, filter,
  partitioner, state computation and encoder called in a plain loop between a
  confluent-kafka consumer and producer (one process).

``--partitions P`` makes the source topic P partitions, each event in the
partition of its state partition key modulo P (so each key's events keep
their order whichever partition is read first, and every state partition's
leaderboards are the same on both sides); the engine's workers then read
their own partitions. Two figures per side: the whole command, and the
steady state, from the first to the last leaderboard's broker timestamp
(start-up and the final flush left out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

#: The event types the app keeps (its filter step).
INTERESTING = ("WatchEvent", "ForkEvent", "PullRequestEvent")
HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
EXAMPLE = os.path.join(os.path.dirname(HERE), "python", "wallaroo", "examples", "star_leaders")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` used so far (0 when gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _read(bootstrap: str, topic: str, expected: int) -> tuple:
    """The leaderboards in ``topic`` by state partition, in order (each
    partition's own order is the app's guarantee), and the seconds from the
    first to the last one's broker timestamp."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read-" + topic})
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages: list = []
    deadline = time.monotonic() + 60
    while len(messages) < expected and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(1000, 0.5) if not m.error()]
    consumer.close()
    boards: dict = {}
    for message in messages:
        boards.setdefault(json.loads(message.value())["partition"], []).append(message.value())
    stamps = [m.timestamp()[1] for m in messages]
    return boards, (max(stamps) - min(stamps)) / 1000 if stamps else 0.0


def main() -> None:
    """Run every side ``--repeat`` times, alternating; print the best of each."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", default="1", help="engine worker counts, e.g. 1,2")
    parser.add_argument("--partitions", type=int, default=1, help="source topic partitions")
    opts = parser.parse_args()
    sys.path.insert(0, TESTS)
    sys.path.insert(0, HERE)
    sys.path.insert(0, EXAMPLE)
    from kafka_broker import TansuBroker
    from repo_partitioner import RepoPartitioner
    from wallaroo.demo.generator import generate_events

    partition_of = RepoPartitioner(10).partition
    parts: list = [[] for _ in range(opts.partitions)]
    for event in generate_events(seed=5, count=opts.events):
        if event["type"] in INTERESTING:
            parts[partition_of(event) % opts.partitions].append(json.dumps(event).encode())
        else:  # no state key: wherever it keeps the partitions even
            min(parts, key=len).append(json.dumps(event).encode())
    # Every partition as long as the longest (the app filters the padding
    # out), so each source's --max-records is its share.
    share = max(len(part) for part in parts)
    filler = json.dumps({"type": "PushEvent", "repo": {"name": "padding/padding"}}).encode()
    for part in parts:
        part += [filler] * (share - len(part))
    total = share * opts.partitions
    sides = ["bare", *(f"engine, {n} worker{'s' if int(n) > 1 else ''}"
                       for n in opts.workers.split(","))]
    results: dict = {side: [] for side in sides}
    empty = tempfile.mkdtemp(prefix="star-leaders-bench-")
    with TansuBroker() as broker:
        broker.create_topic("gharchive", partitions=opts.partitions)
        for partition, values in enumerate(parts):
            broker.produce("gharchive", values, partition=partition, timeout=120)
        del parts
        for run in range(opts.repeat):
            bare_count, bare_boards = 0, {}
            for index, side in enumerate(sides):
                sink = f"leaderboard-{index}-{run}"
                broker.create_topic(sink, partitions=1)
                if side == "bare":
                    command = [sys.executable, os.path.join(TESTS, "star_leaders_direct.py"),
                               EXAMPLE, "kafka", broker.bootstrap, "gharchive", sink,
                               str(total)]
                else:
                    workers = int(side.split()[1])
                    # Each source ends after its partitions' share of the events.
                    command = [sys.executable, "-m", "wallaroo", "star_leaders",
                               "--kafka_source_brokers", broker.bootstrap,
                               "--kafka_sink_brokers", broker.bootstrap,
                               "--kafka_sink_topic", sink, "--kafka-group-id", sink,
                               "--max-records", str(share * max(1, opts.partitions // workers)),
                               "--log-level", "warning"]
                    if workers > 1:
                        command += ["--workers", str(workers)]
                cpu, broker_cpu = _children_cpu(), _process_cpu(broker.proc.pid)
                start = time.perf_counter()
                done = subprocess.run(command, cwd=empty, check=True, stdout=subprocess.PIPE,
                                      text=True)
                whole, used = time.perf_counter() - start, _children_cpu() - cpu
                broker_cpu = _process_cpu(broker.proc.pid) - broker_cpu
                if side == "bare":
                    bare_count = int(done.stdout.split()[-1])
                boards, steady = _read(broker.bootstrap, sink, bare_count)
                if side == "bare":
                    bare_boards = boards
                elif boards != bare_boards:
                    sys.exit(f"{side}: leaderboards differ from the bare loop's")
                results[side].append((whole, steady, used, broker_cpu))
    os.rmdir(empty)
    print(f"star leaders (original app), {total:,} events, {bare_count:,} leaderboards, "
          f"tansu on loopback, {opts.partitions}-partition source topic, best of {opts.repeat} "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    bare_whole = min(r[0] for r in results["bare"])
    bare_steady = min(r[1] for r in results["bare"])
    for side in sides:
        whole, steady = min(r[0] for r in results[side]), min(r[1] for r in results[side])
        cpu = min(r[2] for r in results[side])
        broker_cpu = min(r[3] for r in results[side])
        print(f"  {side:<18}: whole {whole:6.2f} s ({bare_whole / whole:4.2f}x bare), "
              f"first to last output {steady:6.2f} s ({bare_steady / steady:4.2f}x bare), "
              f"CPU {cpu:.2f} s, the broker's CPU meanwhile {broker_cpu:.2f} s "
              f"({broker_cpu / whole:.2f} of a core)")


if __name__ == "__main__":
    main()
