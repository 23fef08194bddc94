"""Star leaders benchmark: the original example through a real broker, against
a bare Python loop of the same functions on the same events, in the same run.

Both sides read the same N events from one 1-partition topic of tansu (a real
Kafka-protocol broker on loopback), produced before either starts, and write
their leaderboards to a topic of their own; each side is a whole command,
start-up included, that exits once every leaderboard is acknowledged.

* engine: ``python -m wallaroo star_leaders`` (the bundled example, 1 worker)
  with the brokers given, from an empty directory: no demo companions start.
* bare: ``tests/star_leaders_direct.py``, the app's own decoder, filter,
  partitioner, state computation and encoder called in a plain loop between a
  confluent-kafka consumer and producer.
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

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
EXAMPLE = os.path.join(os.path.dirname(HERE), "python", "wallaroo", "examples", "star_leaders")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    """Run both sides ``--repeat`` times, alternating; print the best of each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    sys.path.insert(0, TESTS)
    sys.path.insert(0, HERE)
    from kafka import _count
    from kafka_broker import TansuBroker
    from wallaroo.demo.generator import generate_events

    values = [
        json.dumps(event).encode()
        for event in generate_events(seed=5, count=opts.events)
    ]
    results: dict = {"bare": [], "engine": []}
    empty = tempfile.mkdtemp(prefix="star-leaders-bench-")
    with TansuBroker() as broker:
        broker.create_topic("gharchive", partitions=1)
        broker.produce("gharchive", values, timeout=120)
        del values
        for run in range(opts.repeat):
            outputs: dict = {}
            for side in ("bare", "engine"):
                sink = f"leaderboard-{side}-{run}"
                broker.create_topic(sink, partitions=1)
                if side == "bare":
                    command = [sys.executable, os.path.join(TESTS, "star_leaders_direct.py"),
                               EXAMPLE, "kafka", broker.bootstrap, "gharchive", sink,
                               str(opts.events)]
                else:
                    command = [sys.executable, "-m", "wallaroo", "star_leaders",
                               "--kafka_source_brokers", broker.bootstrap,
                               "--kafka_sink_brokers", broker.bootstrap,
                               "--kafka_sink_topic", sink, "--kafka-group-id", sink,
                               "--max-records", str(opts.events), "--log-level", "warning"]
                cpu = _children_cpu()
                start = time.perf_counter()
                done = subprocess.run(command, cwd=empty, check=True, stdout=subprocess.PIPE,
                                      text=True)
                results[side].append((time.perf_counter() - start, _children_cpu() - cpu))
                if side == "bare":
                    outputs["bare"] = int(done.stdout.split()[-1])
                outputs[side] = _count(broker.bootstrap, sink, outputs["bare"])
            if outputs["engine"] != outputs["bare"]:
                sys.exit(f"leaderboards: engine {outputs['engine']}, bare {outputs['bare']}")
    os.rmdir(empty)
    (bare, bare_cpu), (engine, engine_cpu) = min(results["bare"]), min(results["engine"])
    print(
        f"star leaders (original app), {opts.events:,} events, {outputs['bare']:,} "
        f"leaderboards, tansu on loopback, 1-partition topics, best of {opts.repeat}"
    )
    for label, seconds, cpu in (("bare Python loop (confluent-kafka)", bare, bare_cpu),
                                ("engine, 1 worker, no companions", engine, engine_cpu)):
        print(f"  {label:<35}: {opts.events / seconds:>9,.0f} ev/s ({seconds:.2f} s, "
              f"CPU {cpu:.2f} s)")
    print(f"  ratio engine/bare: {bare / engine:.2f}x  (target >= 0.95x)")


if __name__ == "__main__":
    main()
