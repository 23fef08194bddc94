"""Cluster benchmark: the star-leaders-shaped pipeline on one file, with 1 and
2 worker processes, against the bare Python loop, measured in the same run.

Each engine run is a whole ``python -m wallaroo ... --workers N`` command
(start-up included); the bare loop runs in its own process too. The share of
records that cross workers is varied through the filter: with 2 workers half
of the records that reach the state step are owned by the other worker.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
#: (label, event types kept) -> share of records reaching the state step.
FILTERS = (
    ("forks only", "ForkEvent"),
    ("watch events", "WatchEvent"),
    ("all events", "*"),
)


def _env(keep: str) -> dict:
    path = os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, BENCH_KEEP=keep)


class Run:
    """Wall time and CPU time (user + system, every process of the run) of one command."""

    def __init__(self, command: list, env: dict) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        self.wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(runs: list) -> Run:
    """The fastest run (its CPU time goes with it)."""
    return min(runs, key=lambda run: run.wall)


def bare(input_path: str, output_path: str, keep: str) -> Run:
    code = f"import bare_loop; bare_loop.run({input_path!r}, {output_path!r})"
    return Run([sys.executable, "-c", code], _env(keep))


def engine(input_path: str, output_path: str, keep: str, workers: int) -> Run:
    command = [
        sys.executable,
        "-m",
        "wallaroo",
        "star_pipeline",
        "--bench-input",
        input_path,
        "--bench-output",
        output_path,
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    ]
    return Run(command, _env(keep))


def _sorted_lines(path: str) -> list:
    with open(path) as f:
        return sorted(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    opts = parser.parse_args()
    sys.path.insert(0, HERE)
    from events import TYPES, write_events

    with tempfile.TemporaryDirectory(prefix="wallaroo-cluster-bench-") as tmp:
        source = os.path.join(tmp, "events.jsonl")
        write_events(source, opts.events)
        print(
            f"cluster: star-leaders-shaped pipeline, {opts.events:,} events, best of "
            f"{opts.repeat}; wall time of the whole command"
        )
        for label, keep in FILTERS:
            kept = 1.0 if keep == "*" else TYPES.count(keep) / len(TYPES)
            out = {name: os.path.join(tmp, f"{name}.jsonl") for name in ("bare", "w1", "w2")}
            t_bare = best([bare(source, out["bare"], keep) for _ in range(opts.repeat)])
            t1 = best([engine(source, out["w1"], keep, 1) for _ in range(opts.repeat)])
            t2 = best([engine(source, out["w2"], keep, 2) for _ in range(opts.repeat)])
            reference = _sorted_lines(out["bare"])
            if _sorted_lines(out["w1"]) != reference or _sorted_lines(out["w2"]) != reference:
                sys.exit(f"{label}: engine output differs from the bare loop's")
            rate = opts.events
            print(f"  {label:<12} ({kept:4.0%} reach the state, ~{kept / 2:4.0%} cross workers)")
            print(f"    bare loop  {rate / t_bare.wall:>10,.0f} ev/s  cpu {t_bare.cpu:5.2f} s")
            print(
                f"    1 worker   {rate / t1.wall:>10,.0f} ev/s  cpu {t1.cpu:5.2f} s  "
                f"{t_bare.wall / t1.wall:4.2f}x bare"
            )
            print(
                f"    2 workers  {rate / t2.wall:>10,.0f} ev/s  cpu {t2.cpu:5.2f} s  "
                f"{t_bare.wall / t2.wall:4.2f}x bare (target >= 1.60x), "
                f"{t1.wall / t2.wall:4.2f}x 1 worker"
            )
            print(
                f"    cost per record, 2 workers vs 1 (CPU, start-up included): "
                f"{t2.cpu / t1.cpu - 1:+.0%} (target < +10%)"
            )

if __name__ == "__main__":
    main()
