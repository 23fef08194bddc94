"""Crash-recovery benchmark (``-r/--resilience-dir``), baselines measured in the same run.

1. Overhead: the star-leaders-shaped pipeline (``star_pipeline.py`` on the
   events of ``events.py``) as a whole ``python -m wallaroo`` command, with
   resilience on (``-r DIR --snapshot-interval 1``, a fresh DIR each run)
   against resilience off, runs alternating, best of ``--repeat`` each.
   Target: under 10% more wall time.

2. Recovery: ``tests/apps/resilient_count.py`` (one state per key) on a file
   of N distinct keys and a short tail. A first run with ``--max-records N``
   stops after exactly N records and writes a final snapshot of N keys; the
   same command started again (same DIR, a new output file) recovers it and
   goes on after record N. Recovery time is the wall time from the restart's
   process start to its first output line (the first tail record); the
   baseline is the same command started on an empty DIR (nothing to
   recover). Each restart runs on its own copy of the store, best of
   ``--repeat``.

Sizes: ``--events`` / env BENCH_EVENTS (default 1,000,000), ``--keys`` / env
BENCH_KEYS (comma-separated, default 100000,1000000), ``--repeat`` / env
BENCH_REPEAT (default 3).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
COUNT_APP = os.path.join(os.path.dirname(HERE), "tests", "apps", "resilient_count.py")
#: Records after the N keys: what a restart reads (its first output is the first of them).
TAIL = 2_000
#: How often the output file is looked at while waiting for the first line.
POLL_SECONDS = 0.002
TARGET_OVERHEAD = 0.10

SNAPSHOTS_RE = re.compile(r"(\d+) snapshots written")
RECOVERED_RE = re.compile(r"^(\S+ \S+) .*recovered snapshot (\d+) .*: (\d+) keys", re.M)


def _env() -> dict:
    path = os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path)


def _wallaroo(*args: str) -> list:
    return [sys.executable, "-m", "wallaroo", *args, "--log-level", "info"]


def _store_bytes(directory: str) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory) if entry.is_file())


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list, log_path: str) -> tuple:
    """Run ``command`` to its end: (wall seconds, CPU seconds, its log)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        start = time.perf_counter()
        code = subprocess.run(command, env=_env(), stdout=subprocess.DEVNULL, stderr=log).returncode
        seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    with open(log_path) as f:
        text = f.read()
    if code != 0:
        sys.exit(f"{' '.join(command)} failed ({code}):\n{text}")
    return seconds, cpu, text


# -- 1. overhead --------------------------------------------------------------


def pipeline_run(workdir: str, source: str, run: int, resilient: bool) -> dict:
    tag = f"{'on' if resilient else 'off'}-{run}"
    output = os.path.join(workdir, f"out-{tag}.jsonl")
    command = _wallaroo("star_pipeline", "--bench-input", source, "--bench-output", output)
    store = os.path.join(workdir, f"store-{tag}")
    if resilient:
        command += ["-r", store, "--snapshot-interval", "1"]
    seconds, cpu, log = _run(command, os.path.join(workdir, f"log-{tag}.txt"))
    stats = {"seconds": seconds, "cpu": cpu, "digest": _digest(output)}
    os.unlink(output)
    if resilient:
        found = SNAPSHOTS_RE.search(log)
        stats["snapshots"] = int(found.group(1)) if found else 0
        stats["store_bytes"] = _store_bytes(store)
        shutil.rmtree(store)
    return stats


def overhead(workdir: str, events: int, repeat: int) -> bool:
    from events import write_events

    source = os.path.join(workdir, "events.jsonl")
    write_events(source, events)
    off, on = [], []
    for run in range(repeat):
        off.append(pipeline_run(workdir, source, run, resilient=False))
        on.append(pipeline_run(workdir, source, run, resilient=True))
    os.unlink(source)
    if {r["digest"] for r in off + on} != {off[0]["digest"]}:
        sys.exit("the output with resilience on differs from the output with it off")
    best_off = min(off, key=lambda r: r["seconds"])
    best_on = min(on, key=lambda r: r["seconds"])
    time_overhead = best_on["seconds"] / best_off["seconds"] - 1
    cpu_overhead = min(r["cpu"] for r in on) / min(r["cpu"] for r in off) - 1
    met = time_overhead < TARGET_OVERHEAD
    print(
        f"resilience overhead: star-leaders-shaped pipeline, {events:,} events, 1 worker, "
        f"best of {repeat} alternating runs; wall time of the whole command"
    )
    print(f"  resilience off    : {events / best_off['seconds']:>10,.0f} events/s "
          f"({best_off['seconds']:.2f} s)")
    print(
        f"  -r, snapshots 1 s : {events / best_on['seconds']:>10,.0f} events/s "
        f"({best_on['seconds']:.2f} s, {best_on['snapshots']} snapshots, store "
        f"{best_on['store_bytes'] / 2**20:.1f} MiB)"
    )
    print(
        f"  ratio on/off: {best_off['seconds'] / best_on['seconds']:.2f}x; overhead "
        f"{time_overhead * 100:+.1f}% time, {cpu_overhead * 100:+.1f}% CPU "
        f"(target < {TARGET_OVERHEAD:.0%}: {'met' if met else 'NOT met'})"
    )
    return met


# -- 2. recovery --------------------------------------------------------------


def write_keys(path: str, keys: int) -> None:
    with open(path, "w") as out:
        out.writelines(f"k{i}\n" for i in range(keys))
        out.writelines(f"tail{i}\n" for i in range(TAIL))


def first_output(command: list, output: str, log_path: str, finish: bool) -> dict:
    """Start ``command``; the wall time until ``output`` has a whole line,
    then let it finish (or kill it). Its log says when (and what) it recovered."""
    with open(log_path, "w") as log:
        wall_start = time.time()
        start = time.perf_counter()
        child = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=log)
        first = None
        while first is None:
            try:
                with open(output, "rb") as f:
                    if b"\n" in f.read(4096):
                        first = time.perf_counter() - start
            except FileNotFoundError:
                pass
            if first is None:
                if child.poll() is not None:
                    break
                time.sleep(POLL_SECONDS)
        if first is not None and not finish:
            child.kill()
            child.wait()
            code = 0
        else:
            code = child.wait()
    with open(log_path) as f:
        text = f.read()
    if code != 0 or first is None:
        sys.exit(f"{' '.join(command)} failed ({code}, first output {first}):\n{text}")
    with open(output) as f:
        lines = f.read().splitlines()
    result = {"first": first, "lines": lines, "recovered": None}
    found = RECOVERED_RE.search(text)
    if found:
        stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        result["recovered"] = int(found.group(3))
        result["loaded_at"] = stamp - wall_start
    return result


def recovery(workdir: str, keys: int, repeat: int) -> None:
    source = os.path.join(workdir, f"keys-{keys}.txt")
    write_keys(source, keys)
    store = os.path.join(workdir, f"store-{keys}")

    def command(output: str, directory: str, *extra: str) -> list:
        return _wallaroo(COUNT_APP, "--input", source, "--output", output, "-r", directory,
                         "--snapshot-interval", "1", *extra)

    def timed(kind: str, run: int, directory: str, finish: bool) -> dict:
        """A run on the store in ``directory`` timed to its first output."""
        output = os.path.join(workdir, f"{kind}-{keys}-{run}.txt")
        log = os.path.join(workdir, f"log-{kind}-{keys}-{run}.txt")
        return first_output(command(output, directory), output, log, finish=finish)

    first_run, _, _ = _run(
        command(os.path.join(workdir, f"first-{keys}.txt"), store, "--max-records", str(keys)),
        os.path.join(workdir, f"log-first-{keys}.txt"),
    )
    store_bytes = _store_bytes(store)
    cold, restarts = [], []
    for run in range(repeat):
        empty = os.path.join(workdir, f"empty-{keys}-{run}")
        cold.append(timed("cold", run, empty, finish=False))
        shutil.rmtree(empty)
        copy = os.path.join(workdir, f"restart-{keys}-{run}")
        shutil.copytree(store, copy)
        restarts.append(timed("restart", run, copy, finish=True))
        shutil.rmtree(copy)
    for result in restarts:
        if result["recovered"] != keys:
            sys.exit(f"{keys:,} keys: the restart recovered {result['recovered']} keys")
        if result["lines"] != [f"tail{i} 1" for i in range(TAIL)]:
            sys.exit(f"{keys:,} keys: the restart did not go on right after record {keys:,}")
    for result in cold:
        if result["recovered"] is not None or result["lines"][:1] != ["k0 1"]:
            sys.exit(f"{keys:,} keys: the run on an empty store did not start from scratch")
    os.unlink(source)
    shutil.rmtree(store)
    best = min(restarts, key=lambda r: r["first"])
    base = min(r["first"] for r in cold)
    print(
        f"  {keys:>9,} keys: restart to first output {best['first']:6.2f} s "
        f"(snapshot loaded {best['loaded_at']:5.2f} s after start); empty store "
        f"{base:.2f} s; recovery adds {best['first'] - base:5.2f} s "
        f"({(best['first'] - base) / keys * 1e6:.1f} us/key)"
    )
    print(
        f"  {'':>9}       store {store_bytes / 2**20:6.1f} MiB ({store_bytes / keys:.0f} B/key); "
        f"first run (N records, then the final snapshot) {first_run:.2f} s"
    )


def _positive(text: str) -> int:
    value = int(text.replace("_", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=_positive,
                        default=_positive(os.environ.get("BENCH_EVENTS", "1000000")))
    parser.add_argument("--keys", default=os.environ.get("BENCH_KEYS", "100000,1000000"),
                        help="comma-separated key counts for the recovery runs")
    parser.add_argument("--repeat", type=_positive,
                        default=_positive(os.environ.get("BENCH_REPEAT", "3")))
    opts = parser.parse_args()
    keys = [_positive(k) for k in opts.keys.split(",") if k.strip()]
    sys.path.insert(0, HERE)
    with tempfile.TemporaryDirectory(prefix="wallaroo-resilience-bench-") as workdir:
        overhead(workdir, opts.events, opts.repeat)
        print(
            f"recovery: resilient_count (one state per key), restart of a run stopped after "
            f"N records, to its first output; best of {opts.repeat}"
        )
        for count in keys:
            recovery(workdir, count, opts.repeat)


if __name__ == "__main__":
    main()
