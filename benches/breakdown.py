"""Cost breakdown per event, by component, of the original star leaders app read
from a file: the bare loop (``tests/star_leaders_direct.py``), the engine with
1 worker and with ``--workers 2``.

Instructions: each command runs under ``valgrind --tool=callgrind`` (every
process of it, every thread) on ``--events`` events and on an empty file; the
self cost of each function (instructions executed in it, not in its callees)
is put in a component by its object file and name, and the per-event figure
is (run on N events - run on the empty file) / N, so start-up is left out and
shown apart. Instruction counts do not change with the machine's load; they
do not see cache misses, waits or the kernel. Functions inlined by the
compiler count in the function they were inlined into.

Bytecode caching is on (as in an installed package; a first uncounted run
writes it). Time: the same commands natively on ``--wall-events`` events, wall time of the
whole command and CPU time (user + system of all its processes, getrusage of
the children), median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = (("bare loop", 0), ("1 worker", 1), ("2 workers", 2))
MARSHAL = re.compile(r"^(w_|r_|marshal_|PyMarshal_)")
PY_MEMORY = re.compile(r"(_PyObject_Malloc|_PyObject_Free|_PyObject_Realloc|pymalloc|"
                       r"^gc_|^visit_|_PyObject_GC_|deduce_unreachable|move_unreachable|"
                       r"subtract_refs|update_refs|_PyMem_)")
PY_COMPILE = re.compile(r"(_PyPegen|^tok_|_rule$|_rule'|^assemble|^compiler_|_PyAST_|symtable)")
SERIAL = "serialization (marshal, pickle, codec.rs, bincode)"
#: Functions whose inclusive cost (their callees' included) is shown apart:
#: the records crossing workers, objects built by marshal included.
CROSSING = {
    "_engine::codec::Codec::encode": "crossing: encode (marshal.dumps, plain-data check)",
    "_engine::codec::Codec::decode": "crossing: decode (marshal.loads, objects built)",
}
#: Engine components by a part of the (demangled) Rust symbol; the first match wins.
ENGINE = (
    ("::sinks::", "sinks"),
    ("::sources::", "source thread, framing"),
    ("::framing::", "source thread, framing"),
    ("::metrics::", "metrics"),
    ("hdrhistogram", "metrics"),
    ("::http::", "metrics"),
    ("hyper", "metrics"),
    ("::cluster::", SERIAL),
    ("::peers::", SERIAL),
    ("::codec::", SERIAL),
    ("bincode", SERIAL),
    ("crossbeam", "engine: channels (crossbeam)"),
    ("timely", "engine: timely dataflow"),
    ("pyo3", "engine: PyO3 calls, conversions"),
    ("tokio", "engine: tokio runtime"),
)


def component(function: str, obj: str) -> str:
    """The component of a function (its name) in object file ``obj``."""
    name = os.path.basename(obj)
    if "_speedups" in name:
        return "json decode/encode (simplejson C)"
    if "_pickle" in name:
        return SERIAL
    if name.startswith("libpython") or name.startswith("python"):
        if MARSHAL.search(function):
            return SERIAL
        if PY_MEMORY.search(function):
            return "Python: memory (pymalloc, GC)"
        if PY_COMPILE.search(function):
            return "Python: compiling modules (0 with the cache warm)"
        return "Python interpreter (app steps, runner code)"
    if name.startswith("_engine"):
        for part, label in ENGINE:
            if part in function:
                return label
        return "engine: own code (steps, routing, batches)"
    if name.startswith("libc.") or name.startswith("libc-"):
        return "libc (malloc, memcpy, ...)"
    if name.startswith("ld-linux"):
        return "dynamic loader"
    if name.startswith("vgpreload"):
        return "libc (malloc, memcpy, ...)"
    return "other libraries"


def costs(outfile: str) -> Counter:
    """Instructions by component in one callgrind output file: the self cost of
    each function (cost lines, less those right after a ``calls=`` line, which
    are a call's inclusive cost), read from the file's own format."""
    names: dict = {"ob": {}, "fl": {}, "fn": {}}
    kinds = {"ob": "ob", "cob": "ob", "fn": "fn", "cfn": "fn",
             "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl"}
    found: Counter = Counter()

    def name(kind: str, value: str) -> str:
        # Name compression, one table per kind: "(id) name" defines, "(id)" reuses.
        match = re.match(r"\((\d+)\)\s*(.*)", value)
        if not match:
            return value
        if match.group(2):
            names[kind][match.group(1)] = match.group(2)
        return names[kind].get(match.group(1), "???")

    obj = function = "???"
    after_call = False
    called = ""
    with open(outfile) as data:
        for line in data:
            if line[:1].isdigit() or line[:1] in "+-*":
                if not after_call:
                    found[obj, function] += int(line.split()[-1])
                elif called in CROSSING and function not in CROSSING:
                    found["(inclusive)", called] += int(line.split()[-1])
                after_call = False
                continue
            key, sep, value = line.partition("=")
            if not sep or key not in kinds and key != "calls":
                continue
            if key == "calls":
                after_call = True
                continue
            value = name(kinds[key], value.strip())
            if key == "cfn":
                called = value
            if key == "ob":
                obj = value
            elif key == "fn":
                function = value
    by_component: Counter = Counter()
    for (obj, function), cost in found.items():
        if obj == "(inclusive)":
            by_component[CROSSING[function]] += cost
        else:
            by_component[component(function, obj)] += cost
    return by_component


def process_of(outfile: str) -> str:
    """Which process of a run a callgrind file is: worker-N, else the
    supervisor of ``--workers N`` (or the one process of a run alone)."""
    with open(outfile) as data:
        for line in data:
            if line.startswith("cmd:"):
                found = re.search(r" -n (\S+)", line)
                return found.group(1) if found else "supervisor / the one process"
    return "?"


def callgrind(command: list, workdir: str, tag: str, stdout_path: str, env: dict) -> Counter:
    """Instructions by component of ``command`` (every process it starts)."""
    outdir = os.path.join(workdir, f"cg-{tag}")
    os.makedirs(outdir)
    traced = ["valgrind", "--tool=callgrind", "--trace-children=yes", "-q",
              f"--callgrind-out-file={outdir}/cg.%p", *command]
    with open(stdout_path, "wb") as out:
        subprocess.run(traced, check=True, stdout=out, env=env)
    total: Counter = Counter()
    for name in os.listdir(outdir):
        path = os.path.join(outdir, name)
        found = costs(path)
        total += found
        total["process: " + process_of(path)] += sum(
            cost for label, cost in found.items() if label not in CROSSING.values())
    return total


def command_of(workers: int, input_path: str, output_path: str) -> tuple:
    """(command, where its leaderboards go) of a configuration."""
    import star_file

    if workers == 0:
        return star_file.bare(input_path), output_path
    return star_file.engine(input_path, output_path, workers), os.devnull


def timed(command: list, stdout_path: str, env: dict) -> tuple:
    """Wall and CPU seconds (user + system, all its processes) of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(stdout_path, "wb") as out:
        subprocess.run(command, check=True, stdout=out, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def lines(path: str) -> tuple:
    """The leaderboards written to ``path``, sorted (each configuration
    writes the same lines; with 2 workers the partitions interleave apart)."""
    with open(path, "rb") as f:
        return tuple(sorted(f))


def main() -> None:
    """Measure and print the table; ``--full`` takes the issue's sizes."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="events under callgrind")
    parser.add_argument("--wall-events", type=int, default=100_000, help="events timed")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (median)")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at once")
    parser.add_argument("--full", action="store_true",
                        help="issue 20's size: 30,000 events under callgrind, 300,000 timed, "
                        "median of 3")
    opts = parser.parse_args()
    if opts.full:
        opts.events, opts.wall_events, opts.repeat = 30_000, 300_000, 3
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    sys.path.insert(0, HERE)
    import star_file

    with tempfile.TemporaryDirectory(prefix="wallaroo-breakdown-") as tmp:
        small, empty, big, warm = (os.path.join(tmp, name)
                                   for name in ("small", "empty", "big", "warm"))
        star_file.write_events(small, opts.events)
        open(empty, "w").close()
        env = star_file.bytecode_env(os.path.join(tmp, "pycache"))
        # Writes the bytecode cache, as an install has, of every module a run
        # imports, those imported on the first record included (the app's
        # strptime imports _strptime and calendar): an empty input would
        # leave them to be compiled inside the counted runs.
        star_file.write_events(warm, 200)
        for _label, workers in CONFIGS:
            command, stdout_path = command_of(workers, warm, os.path.join(tmp, "warm-out"))
            timed(command, stdout_path, env)
        load = [os.getloadavg()[0]]
        jobs = {}
        with ThreadPoolExecutor(opts.jobs) as pool:
            for label, workers in CONFIGS:
                for size, path in (("n", small), ("0", empty)):
                    out = os.path.join(tmp, f"out-{workers}-{size}")
                    command, stdout_path = command_of(workers, path, out)
                    jobs[label, size] = (pool.submit(callgrind, command, tmp, f"{workers}{size}",
                                                     stdout_path, env), out)
        counted = {key: job.result() for key, (job, _out) in jobs.items()}
        outputs = {label: lines(jobs[label, "n"][1]) for label, _w in CONFIGS}
        if len(set(outputs.values())) != 1:
            sys.exit("leaderboards differ between configurations: "
                     + ", ".join(f"{label} {len(out)}" for label, out in outputs.items()))
        load.append(os.getloadavg()[0])

        star_file.write_events(big, opts.wall_events)
        times: dict = {label: [] for label, _w in CONFIGS}
        for _ in range(opts.repeat):
            written = {}
            for label, workers in CONFIGS:
                out = os.path.join(tmp, f"timed-{workers}")
                command, stdout_path = command_of(workers, big, out)
                times[label].append(timed(command, stdout_path, env))
                written[label] = lines(out)
            if len(set(written.values())) != 1:
                sys.exit("timed runs: leaderboards differ between configurations")
        load.append(os.getloadavg()[0])

    names = sorted({name for found in counted.values() for name in found})
    per_event = {label: {name: (counted[label, "n"][name] - counted[label, "0"][name])
                         / opts.events for name in names} for label, _w in CONFIGS}
    # Rows of their own (not parts of the total): inclusive costs, processes.
    apart = [name for name in names
             if name in CROSSING.values() or name.startswith("process: ")]
    names = [name for name in names if name not in apart]
    totals = {label: sum(per_event[label][name] for name in names) for label, _w in CONFIGS}
    print(f"cost breakdown, original star leaders app from a file, {opts.events:,} events "
          f"under callgrind ({len(outputs['bare loop']):,} leaderboards, the same lines each); "
          f"load average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores")
    print("instructions per event (run on N events - run on an empty file, / N), all "
          "processes and threads")
    header = f"  {'component':<45}" + "".join(f"{label:>20}" for label, _w in CONFIGS)
    print(header)
    order = sorted(names, key=lambda name: -max(per_event[lb][name] for lb, _w in CONFIGS))
    for name in order:
        cells = "".join(
            f"{per_event[label][name]:>11,.0f} ({per_event[label][name] / totals[label]:4.0%})"
            for label, _w in CONFIGS
        )
        print(f"  {name:<45}{cells}")
    print(f"  {'total per event':<45}"
          + "".join(f"{totals[label]:>11,.0f}{'':9}" for label, _w in CONFIGS))
    print(f"  {'start-up (empty file), whole run':<45}"
          + "".join(f"{sum(counted[label, '0'][name] for name in names):>14,.0f}{'':6}"
                    for label, _w in CONFIGS))
    print("of which (inclusive of callees) / by process:")
    for name in apart:
        cells = "".join(f"{per_event[label][name]:>11,.0f}{'':9}" for label, _w in CONFIGS)
        print(f"  {name:<45}{cells}")
    print(f"time, {opts.wall_events:,} events, median of {opts.repeat}, whole command "
          "(start-up included)")
    bare_wall = statistics.median(wall for wall, _cpu in times["bare loop"])
    for label, _w in CONFIGS:
        wall = statistics.median(wall for wall, _cpu in times[label])
        cpu = statistics.median(cpu for _wall, cpu in times[label])
        print(f"  {label:<10} wall {wall:6.2f} s ({bare_wall / wall:4.2f}x bare)  CPU {cpu:6.2f} s"
              f"  ({cpu / opts.wall_events * 1e6:5.1f} us CPU per event)")


if __name__ == "__main__":
    main()
