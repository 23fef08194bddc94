"""Windowed benchmark: keyed sliding-window sums on event time over generated
records (default 1M records, 100k keys), the engine (1 worker) against a bare
Python loop doing the same windowing with dicts, measured in the same run
(each in its own process, best of ``--repeat``). Both outputs must be the same
lines. Target (issue 19): engine/bare >= 0.9x."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {here!r})
mode, input_path, output_path = sys.argv[1:4]
start = time.perf_counter()
if mode == "bare":
    import windows_app
    outputs = windows_app.bare_loop(input_path, output_path)
else:
    from wallaroo import runner
    code = runner.main(["windows_app", "--bench-input", input_path,
                        "--bench-output", output_path, "--log-level", "warning"])
    assert code == 0, code
    with open(output_path, "rb") as f:
        outputs = sum(1 for _ in f)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": seconds, "outputs": outputs,
                  "cpu": usage.ru_utime + usage.ru_stime}}))
"""


def write_records(path: str, count: int, keys: int, seed: int = 19) -> None:
    """``count`` lines ``key event_time_ms value``, event time 1 ms apart."""
    rng = random.Random(seed)
    start = 1_500_000_000_000
    with open(path, "w") as out:
        for i in range(count):
            out.write(f"k{rng.randrange(keys)} {start + i} {rng.randrange(1000)}\n")


def measure(mode: str, input_path: str, workdir: str) -> dict:
    output_path = os.path.join(workdir, f"out-{mode}.txt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(here=HERE), mode, input_path, output_path],
        capture_output=True,
        text=True,
        env=env,
    )
    if child.returncode != 0:
        sys.exit(f"{mode} run failed:\n{child.stderr}")
    stats = json.loads(child.stdout.strip().splitlines()[-1])
    with open(output_path) as f:
        stats["lines"] = sorted(f)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wallaroo-bench-windows-") as workdir:
        input_path = os.path.join(workdir, "records.txt")
        write_records(input_path, opts.records, opts.keys)
        bare_runs, engine_runs = [], []
        for _ in range(opts.repeat):  # alternating, so load changes hit both
            bare_runs.append(measure("bare", input_path, workdir))
            engine_runs.append(measure("engine", input_path, workdir))
    bare = min(bare_runs, key=lambda r: r["seconds"])
    engine = min(engine_runs, key=lambda r: r["seconds"])
    if bare["lines"] != engine["lines"]:
        sys.exit("the engine's windows differ from the bare loop's")
    print(
        f"windows: keyed sliding-window sum on event time (10 s range, 5 s slide), "
        f"{opts.records:,} records, {opts.keys:,} keys, {bare['outputs']:,} windows"
    )
    for label, run in (("bare Python loop", bare), ("engine, 1 worker", engine)):
        rate = opts.records / run["seconds"]
        times = f"{run['seconds']:.2f} s, {run['cpu']:.2f} s CPU"
        print(f"  {label:18} {rate:>10,.0f} records/s  ({times})")
    ratio = bare["seconds"] / engine["seconds"]
    print(f"  ratio engine/bare: {ratio:.2f}x  (target >= 0.90x; best of {opts.repeat})")


if __name__ == "__main__":
    main()
