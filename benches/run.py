"""Benchmarks: the engine against a bare Python loop, measured in the same run.

Each variant runs in its own process (so peak memory is its own) on the same
generated input, best of ``--repeat`` runs; prints events/s and the ratio.

The engine runs with its metrics on (the default: per-step counts, sampled
Python timings, latency histograms, the HTTP server, here scraped once a
second on ``/metrics`` and ``/status`` as a dashboard would) and, alternating
with those runs, with ``--no-metrics``; the difference is the metrics' overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {here!r})
mode, input_path, output_path = sys.argv[1:4]
extra = sys.argv[4:]
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
                        "--bench-output", output_path, "--log-level", "warning", *extra])
    seconds = time.perf_counter() - start
    assert code == 0, code
    with open(output_path, "rb") as f:
        outputs = sum(1 for _ in f)
usage = resource.getrusage(resource.RUSAGE_SELF)
rss_mib = usage.ru_maxrss / 1024
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({{"seconds": seconds, "outputs": outputs, "rss_mib": rss_mib, "cpu": cpu}}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(
    mode: str,
    input_path: str,
    workdir: str,
    extra: tuple = (),
    scrape_port: int | None = None,
    tag: str = "",
) -> dict:
    output_path = os.path.join(workdir, f"out-{mode}{tag}.jsonl")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(here=HERE), mode, input_path, output_path, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    scrapes = 0
    if scrape_port is not None:
        # A dashboard's load: /metrics and /status once a second while it runs.
        while child.poll() is None:
            time.sleep(1.0)
            for path in ("metrics", "status"):
                try:
                    url = f"http://127.0.0.1:{scrape_port}/{path}"
                    with urllib.request.urlopen(url, timeout=2) as response:
                        response.read()
                    scrapes += 1
                except OSError:
                    pass
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        sys.exit(f"{mode} run failed:\n{stderr}")
    stats = json.loads(stdout.strip().splitlines()[-1])
    stats["scrapes"] = scrapes
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
        engine, engine_off = metrics_on_and_off(input_path, workdir, opts.repeat)
        engine_small = measure("engine", small_path, workdir)
    for run in (engine, engine_off):
        if bare["digest"] != run["digest"] or bare["outputs"] != run["outputs"]:
            sys.exit("engine output differs from the bare loop's output")
    bare_rate = opts.events / bare["seconds"]
    engine_rate = opts.events / engine["seconds"]
    off_rate = opts.events / engine_off["seconds"]
    small = max(opts.events // 5, 1)
    print(f"pipeline: json decode -> filter -> partitioned state -> json encode, {opts.events:,}")
    print(_row("bare Python loop", bare_rate, bare))
    print(_row("engine, 1 worker", engine_rate, engine))
    print(f"  ratio engine/bare: {engine_rate / bare_rate:.2f}x  (target >= 0.90x)")
    print(_row("engine, no metrics", off_rate, engine_off))
    overhead = engine["seconds"] / engine_off["seconds"] - 1
    cpu_overhead = engine["cpu"] / engine_off["cpu"] - 1
    print(
        f"  metrics overhead: {overhead * 100:+.1f}% time, {cpu_overhead * 100:+.1f}% CPU "
        f"(target < 3%; best of {opts.repeat} alternating runs each; metrics on: served and "
        f"scraped, {engine['scrapes']} scrapes of /metrics and /status in the best run)"
    )
    print(
        f"  memory: peak RSS {engine_small['rss_mib']:.0f} MiB at {small:,} events, "
        f"{engine['rss_mib']:.0f} MiB at {opts.events:,} (state grows with keys, not events)"
    )


def metrics_on_and_off(input_path: str, workdir: str, repeat: int) -> tuple:
    """The engine with its metrics on (served on a port and scraped once a
    second) and with --no-metrics, runs alternating; the best of each."""
    on, off = [], []
    for _ in range(repeat):
        port = free_port()
        on.append(measure("engine", input_path, workdir, ("-m", f"127.0.0.1:{port}"), port))
        off.append(measure("engine", input_path, workdir, ("--no-metrics",), tag="-off"))
    best_on = dict(min(on, key=lambda r: r["seconds"]), cpu=min(r["cpu"] for r in on))
    best_off = dict(min(off, key=lambda r: r["seconds"]), cpu=min(r["cpu"] for r in off))
    return best_on, best_off


def _row(label: str, rate: float, stats: dict) -> str:
    return (
        f"  {label:<17}: {rate:>12,.0f} events/s  "
        f"({stats['seconds']:.2f} s, peak RSS {stats['rss_mib']:.0f} MiB)"
    )

if __name__ == "__main__":
    main()
