"""Start-up of the original star leaders app, against ``python -c "import simplejson"``
measured in the same run (median of ``--runs`` each).

* to first output: from just before the process is spawned to the moment the
  first leaderboard line is in the output file (polled every millisecond), on
  a file of generated events; that includes reading, the steps of the events
  before the first leaderboard and the file sink's write of it.
* to exit, empty input: from spawn to exit of the whole command (every worker
  process) on an empty file.

Bytecode caching is on (a first, uncounted run writes it), as in an installed
package. Then the imports of a 1-worker run, by cumulative time
(``python -X importtime``), the largest first: what start-up could leave out.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
#: Targets of issue 20, seconds to the first record: 1 worker, 2 workers.
TARGETS = {1: 0.25, 2: 0.6}


def to_exit(command: list, env: dict) -> tuple:
    """Seconds from spawn to exit of ``command``, and its CPU seconds (user +
    system of all its processes: what the machine's load does not inflate)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def to_first_line(command: list, output_path: str, env: dict, deadline: float = 120.0) -> float:
    """Seconds from spawn of ``command`` to the first whole line in ``output_path``
    (the command then runs to its end)."""
    if os.path.exists(output_path):
        os.unlink(output_path)
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    seen = None
    try:
        while seen is None and time.perf_counter() - start < deadline:
            try:
                with open(output_path, "rb") as out:
                    if b"\n" in out.read(1 << 16):
                        seen = time.perf_counter() - start
                        break
            except FileNotFoundError:
                pass
            if child.poll() is not None and child.returncode != 0:
                sys.exit(f"{command}: exit {child.returncode}")
            time.sleep(0.001)
    finally:
        if child.wait(timeout=deadline) != 0:
            sys.exit(f"{command}: exit {child.returncode}")
    if seen is None:
        sys.exit(f"{command}: no output line within {deadline} s")
    return seen


def imports(command: list, env: dict, top: int) -> list:
    """The ``top`` imports of ``command`` with the largest cumulative time:
    (seconds, module indented by its depth), the top level and the one below."""
    env = dict(env, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
    found = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line[len("import time:"):].split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth <= 1:
            found.append((int(cumulative) / 1e6, "  " * depth + name.strip()))
    return sorted(found, reverse=True)[:top]


def main() -> None:
    """Measure and print; ``--full`` takes the issue's sizes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--events", type=int, default=2000, help="events in the input file")
    parser.add_argument("--top", type=int, default=12, help="imports listed")
    parser.add_argument("--full", action="store_true", help="issue 20's size: 7 runs")
    opts = parser.parse_args()
    if opts.full:
        opts.runs = max(opts.runs, 7)
    sys.path.insert(0, HERE)
    import star_file

    with tempfile.TemporaryDirectory(prefix="wallaroo-startup-") as tmp:
        events, empty = os.path.join(tmp, "events.jsonl"), os.path.join(tmp, "empty.jsonl")
        out = os.path.join(tmp, "out.txt")
        star_file.write_events(events, opts.events)
        open(empty, "w").close()
        baseline = [sys.executable, "-c", "import simplejson"]
        env = star_file.bytecode_env(os.path.join(tmp, "pycache"))
        for workers in (1, 2):  # a first run of each writes the bytecode cache
            to_exit(star_file.engine(empty, out, workers), env)
        rows: dict = {"baseline": [], 1: [], 2: []}
        exits: dict = {1: [], 2: []}
        for _ in range(opts.runs):  # interleaved, so the machine's load hits all alike
            rows["baseline"].append(to_exit(baseline, env))
            for workers in (1, 2):
                rows[workers].append(
                    to_first_line(star_file.engine(events, out, workers), out, env))
                exits[workers].append(to_exit(star_file.engine(empty, out, workers), env))
        load = os.getloadavg()[0]
        print(f"start-up, original star leaders app from a file, median of {opts.runs} "
              f"(load average {load:.1f} on {os.cpu_count()} cores)")
        base = statistics.median(wall for wall, _cpu in rows["baseline"])
        base_cpu = statistics.median(cpu for _wall, cpu in rows["baseline"])
        print(f"  python -c 'import simplejson' (baseline): {base:.3f} s (CPU {base_cpu:.3f} s)")
        for workers in (1, 2):
            first = statistics.median(rows[workers])
            print(f"  {workers} worker{'s' if workers > 1 else ' '}: to first output "
                  f"{first:.3f} s (target {TARGETS[workers]:.2f}, {first / base:.1f}x baseline),"
                  f" to exit on empty input {statistics.median(w for w, _c in exits[workers]):.3f}"
                  f" s (CPU {statistics.median(c for _w, c in exits[workers]):.3f} s)")
        print("  imports of a 1-worker run on empty input (python -X importtime, one run), "
              "largest cumulative, 2 levels:")
        for seconds, name in imports(star_file.engine(empty, out, 1), env, opts.top):
            print(f"    {seconds:6.3f} s  {name}")


if __name__ == "__main__":
    main()
