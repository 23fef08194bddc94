"""Benchmarks: the engine against a bare Python loop, measured in the same run.

Each variant runs in its own process (so peak memory is its own) on the same
generated input, best of ``--repeat`` runs; prints events/s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {here!r})
mode, input_path, output_path = sys.argv[1:4]
if mode == "bare":
    import bare_loop
    start = time.perf_counter()
    outputs = bare_loop.run(input_path, output_path)
    seconds = time.perf_counter() - start
else:
    import logging
    from wallaroo import runner
    start = time.perf_counter()
    code = runner.main(["star_pipeline", "--bench-input", input_path,
                        "--bench-output", output_path, "--log-level", "warning"])
    seconds = time.perf_counter() - start
    assert code == 0, code
    with open(output_path, "rb") as f:
        outputs = sum(1 for _ in f)
rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "outputs": outputs, "rss_mib": rss_mib}}))
"""


def measure(mode: str, input_path: str, workdir: str) -> dict:
    output_path = os.path.join(workdir, f"out-{mode}.jsonl")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(here=HERE), mode, input_path, output_path],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"{mode} run failed:\n{result.stderr}")
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    with open(output_path, "rb") as f:
        stats["digest"] = hash(f.read())
    return stats


def best(mode: str, input_path: str, workdir: str, repeat: int) -> dict:
    runs = [measure(mode, input_path, workdir) for _ in range(repeat)]
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    sys.path.insert(0, HERE)
    from events import write_events

    with tempfile.TemporaryDirectory(prefix="wallaroo-bench-") as workdir:
        input_path = os.path.join(workdir, "events.jsonl")
        write_events(input_path, opts.events)
        small_path = os.path.join(workdir, "events-small.jsonl")
        write_events(small_path, max(opts.events // 5, 1))
        bare = best("bare", input_path, workdir, opts.repeat)
        engine = best("engine", input_path, workdir, opts.repeat)
        engine_small = measure("engine", small_path, workdir)
    if bare["digest"] != engine["digest"] or bare["outputs"] != engine["outputs"]:
        sys.exit("engine output differs from the bare loop's output")
    bare_rate = opts.events / bare["seconds"]
    engine_rate = opts.events / engine["seconds"]
    small = max(opts.events // 5, 1)
    print(f"pipeline: json decode -> filter -> partitioned state -> json encode, {opts.events:,}")
    print(_row("bare Python loop", bare_rate, bare))
    print(_row("engine, 1 worker", engine_rate, engine))
    print(f"  ratio engine/bare: {engine_rate / bare_rate:.2f}x  (target >= 0.90x)")
    print(
        f"  memory: peak RSS {engine_small['rss_mib']:.0f} MiB at {small:,} events, "
        f"{engine['rss_mib']:.0f} MiB at {opts.events:,} (state grows with keys, not events)"
    )


def _row(label: str, rate: float, stats: dict) -> str:
    return (
        f"  {label:<17}: {rate:>12,.0f} events/s  "
        f"({stats['seconds']:.2f} s, peak RSS {stats['rss_mib']:.0f} MiB)"
    )

if __name__ == "__main__":
    main()
