"""Metrics: ``/metrics`` (parsed with the official ``prometheus_client``
parser), ``/status``, ``-m`` for one process and for clusters, the progress
line and the log level.

The application (``tests/apps/metrics_app.py``) reads ASCII integers over TCP:
anything else is bad input (``decode_error``), ``keep even`` drops the odd
ones, ``count`` keeps a running count per partition, and the file sink gets a
line per even number. So for ``n`` numbers and ``b`` bad frames every counter
is known in advance.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest
from conftest import APPS_DIR, RunningApp, app_env
from prometheus_client.parser import text_string_to_metric_families
from wallaroo.progress import render
from wallaroo.sender import send_messages

APP = APPS_DIR / "metrics_app.py"
HOST = "127.0.0.1"
URL_LINE = re.compile(r"metrics: (http://[\d.]+:\d+/) \(Prometheus")

pytestmark = pytest.mark.timeout(90)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def numbers(n: int, bad: int = 0) -> list:
    """``n`` integers as ASCII payloads, then ``bad`` undecodable ones."""
    return [str(i).encode() for i in range(n)] + [b"not a number %d" % i for i in range(bad)]


class Scrape:
    """One ``/metrics`` scrape, parsed by ``prometheus_client``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list:
        """Samples called ``name`` whose labels include ``labels``."""
        found = []
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    found.append(sample)
        return found

    def total(self, name: str, **labels: str) -> float:
        """Sum of the matching samples' values."""
        return sum(s.value for s in self.samples(name, **labels))

    def workers(self) -> dict:
        """``{worker: up}`` from ``wallaroo_worker_up``."""
        return {s.labels["worker"]: s.value for s in self.samples("wallaroo_worker_up")}


def get(url: str, timeout: float = 5.0) -> tuple:
    """``(status, content type, body text)``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(base: str) -> Scrape:
    status, content_type, body = get(base + "metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return Scrape(body)


def status_json(base: str) -> dict:
    status, content_type, body = get(base + "status")
    assert status == 200 and content_type == "application/json"
    return json.loads(body)


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, urllib.error.URLError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@contextmanager
def running(*args: str, sources: int = 1, env: dict | None = None) -> Iterator[RunningApp]:
    """Start ``python -m wallaroo ARGS`` and wait for its TCP source(s); on
    exit SIGTERM it and expect exit 0."""
    app = RunningApp([sys.executable, "-m", "wallaroo", *args], env or app_env(), None)
    try:
        app.wait_listening(sources, 30)
        yield app
    except BaseException:
        if app.proc.poll() is None:
            app.proc.kill()
        app.proc.wait()
        raise
    code = app.stop(30)
    assert code == 0, f"exit code {code}\n{app.stderr}"


def metrics_url(app: RunningApp, timeout: float = 10.0) -> str:
    """The URL the run logged for its metrics."""
    found = wait_for(lambda: URL_LINE.search(app.stderr), timeout, "the metrics URL in the log")
    return found.group(1)  # type: ignore[union-attr]


def settled(base: str, records: int, outputs: int, workers: int = 1) -> Callable[[], object]:
    """A check: every record read, every output written, every worker reported it."""

    def check() -> object:
        s = scrape(base)
        if len(s.workers()) < workers:
            return None
        done = (
            s.total("wallaroo_step_records_in_total", step="decoder") == records
            and s.total("wallaroo_sink_records_total") == outputs
            and s.total("wallaroo_step_records_in_total", step="encoder") == outputs
        )
        return s if done else None

    return check


def check_counters(s: Scrape, sent: int, bad: int, workers: int) -> None:
    """The counters of a run that got ``sent`` numbers and ``bad`` bad frames."""
    evens = (sent + 1) // 2
    assert s.total("wallaroo_source_records_total", pipeline="numbers") == sent + bad
    assert s.total("wallaroo_source_bytes_total") == sum(len(p) for p in numbers(sent, bad))
    assert s.total("wallaroo_bad_input_total", kind="decode_error") == bad
    assert s.total("wallaroo_step_records_in_total", step="decoder") == sent + bad
    assert s.total("wallaroo_step_records_out_total", step="decoder") == sent
    assert s.total("wallaroo_step_records_in_total", step="keep even") == sent
    assert s.total("wallaroo_step_dropped_total", step="keep even") == sent - evens
    assert s.total("wallaroo_step_records_out_total", step="keep even") == evens
    assert s.total("wallaroo_step_records_in_total", step="count") == evens
    assert s.total("wallaroo_step_records_out_total", step="count") == evens
    assert s.total("wallaroo_pipeline_dropped_total") == sent - evens
    assert s.total("wallaroo_pipeline_records_out_total") == evens
    assert s.total("wallaroo_sink_records_total") == evens
    assert s.total("wallaroo_sink_errors_total") == 0
    assert s.total("wallaroo_pipeline_errors_skipped_total") == 0
    # Every written record has a latency; every step was timed on a sample.
    assert s.total("wallaroo_source_to_sink_latency_seconds_count") == evens
    assert s.total("wallaroo_source_to_sink_latency_seconds_sum") > 0
    for step in ("decoder", "keep even", "count", "encoder"):
        assert s.total("wallaroo_step_python_seconds_total", step=step) > 0, step
        assert s.total("wallaroo_step_call_duration_seconds_count", step=step) > 0, step
    assert s.total("wallaroo_batch_size_records_sum") == sent + bad
    assert s.total("wallaroo_state_keys", state="counts") == 4
    assert s.total("wallaroo_cluster_workers") == workers
    assert list(s.workers().values()) == [1.0] * workers
    assert s.total("wallaroo_epochs_completed_total") > 0
    # Names follow the conventions: prefix, _total counters, base units.
    for family in s.families.values():
        assert family.name.startswith("wallaroo_"), family.name
        if family.type == "counter":
            assert all(x.name.endswith("_total") for x in family.samples), family.name


def output_lines(path: Path) -> list:
    return path.read_text().splitlines() if path.exists() else []


def summary_counts(stderr: str) -> list:
    """``(in, out, dropped)`` of each ``pipeline 'numbers': ...`` summary line."""
    return [
        tuple(int(x) for x in m.groups())
        for m in re.finditer(r"pipeline 'numbers': (\d+) in, (\d+) out, (\d+) filtered", stderr)
    ]


# --------------------------------------------------------------------------- one process


def test_one_worker_counters_equal_what_was_sent_and_written(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    port = free_port()
    sent, bad = 3001, 3
    with running(APP, "--in", f"{HOST}:0", "--output", str(out), "-m", f"{HOST}:{port}") as app:
        base = metrics_url(app)
        assert base == f"http://{HOST}:{port}/"
        ((_, _, in_port),) = app.listening()
        assert send_messages(HOST, in_port, numbers(sent, bad)) == sent + bad
        s = wait_for(settled(base, sent + bad, (sent + 1) // 2), 30, "all records counted")
        check_counters(s, sent, bad, workers=1)  # type: ignore[arg-type]
        last = s
        status = status_json(base)
    # After the run: the sink's output is what the counters said.
    lines = output_lines(out)
    assert len(lines) == last.total("wallaroo_sink_records_total") == (sent + 1) // 2  # type: ignore[union-attr]
    assert sorted(int(line.split()[0]) for line in lines) == list(range(0, sent, 2))
    assert summary_counts(app.stderr) == [(sent + bad, (sent + 1) // 2, sent // 2)]

    assert status["app"] == "Metrics Test" and status["scope"] == "cluster"
    (pipeline,) = status["pipelines"]
    assert [step["name"] for step in pipeline["steps"]] == [
        "decoder",
        "keep even",
        "count",
        "encoder",
    ]
    assert pipeline["records_in"] == sent + bad and pipeline["bad_input"] == bad
    assert pipeline["sources"] == [f"tcp {HOST}:{in_port}"] and pipeline["sinks"] == [f"file {out}"]
    assert status["bad_input"] == {"decode_error": bad}
    assert [b["kind"] for b in status["recent_bad_input"]] == ["decode_error"] * bad
    assert "connection 1 frame" in status["recent_bad_input"][0]["position"]
    assert status["keys"] == {"counts": {"initializer": 4}}
    (worker,) = status["workers"]
    assert worker["name"] == "initializer" and worker["up"] and worker["serving"]


def test_every_step_that_ran_has_a_python_time_after_a_few_records(tmp_path: Path) -> None:
    """Step Python time is calls times the mean of timed calls; records are
    timed one in 64, and each step's first calls always are: after 4 records
    every step that ran (encoder included) has a non-zero time."""
    out = tmp_path / "out.txt"
    with running(APP, "--in", f"{HOST}:0", "--output", str(out)) as app:
        base = metrics_url(app)
        ((_, _, in_port),) = app.listening()
        assert send_messages(HOST, in_port, numbers(4)) == 4
        s = wait_for(settled(base, 4, 2), 30, "4 records counted")
        status = status_json(base)
    for step in ("decoder", "keep even", "count", "encoder"):
        assert s.total("wallaroo_step_python_seconds_total", step=step) > 0, step  # type: ignore[attr-defined]
    (pipeline,) = status["pipelines"]
    assert {st["name"]: st["python_seconds"] > 0 for st in pipeline["steps"]} == {
        "decoder": True,
        "keep even": True,
        "count": True,
        "encoder": True,
    }


def test_rates_and_latency_appear_in_status_while_records_flow(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with running(APP, "--in", f"{HOST}:0", "--output", str(out)) as app:
        base = metrics_url(app)
        ((_, _, in_port),) = app.listening()
        sender = threading.Thread(
            target=lambda: send_messages(
                HOST, in_port, (str(i).encode() for i in range(12000)), rate=2000
            ),
            daemon=True,
        )
        sender.start()

        def flowing() -> object:
            status = status_json(base)
            step = {s["name"]: s for s in status["pipelines"][0]["steps"]}
            ok = (
                status["totals"]["in_per_second"] > 100
                and status["pipelines"][0]["latency_seconds"]["p99"]
                and step["keep even"]["per_second"] > 100
                and step["count"]["p99_seconds"]
            )
            return status if ok else None

        status = wait_for(flowing, 20, "non-zero rates and latencies in /status")
        _, _, body = get(base + "status/history")
        points = json.loads(body)["points"]
        assert any(p["total"]["in"] > 0 for p in points)
        assert points[-1]["workers"]["initializer"]["pipelines"]["numbers"]["steps"]["decoder"]
        sender.join(30)
    assert status


def test_without_m_a_single_process_serves_on_a_free_loopback_port(tmp_path: Path) -> None:
    with running(APP, "--in", f"{HOST}:0", "--output", str(tmp_path / "o.txt")) as app:
        base = metrics_url(app)
        assert base.startswith(f"http://{HOST}:")
        s = scrape(base)
        assert s.workers() == {"initializer": 1.0}
        status, content_type, page = get(base)
        assert status == 200 and content_type.startswith("text/html")
        assert "static/app.js" in page
        for asset in ("app.js", "style.css"):
            assert get(base + "static/" + asset)[0] == 200
        assert get(base + "static/../metrics.rs")[0] == 404
        assert get(base + "nothing-here")[0] == 404


def test_m_never_stops_a_start(tmp_path: Path) -> None:
    # A host that is not this machine's (0.4.2 connected out to a metrics UI):
    # served on that port on loopback, and the log says where.
    port = free_port()
    with running(
        APP,
        "--in",
        f"{HOST}:0",
        "--output",
        str(tmp_path / "a.txt"),
        "-m",
        f"wallaroo-metrics-ui.invalid:{port}",
    ) as app:
        assert metrics_url(app) == f"http://{HOST}:{port}/"
        assert "is not an address of this host" in app.stderr
        assert scrape(f"http://{HOST}:{port}/").workers() == {"initializer": 1.0}
    # A port that is taken: a free one instead, with a warning.
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with running(
            APP, "--in", f"{HOST}:0", "--output", str(tmp_path / "b.txt"), "-m", f"{HOST}:{busy}"
        ) as app:
            base = metrics_url(app)
            assert base != f"http://{HOST}:{busy}/"
            assert "cannot serve metrics" in app.stderr
            assert scrape(base).workers() == {"initializer": 1.0}


def test_no_metrics_serves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with running(APP, "--in", f"{HOST}:0", "--output", str(out), "--no-metrics") as app:
        ((_, _, in_port),) = app.listening()
        send_messages(HOST, in_port, numbers(100))
        wait_for(lambda: len(output_lines(out)) == 50, 20, "the output")
    assert URL_LINE.search(app.stderr) is None
    assert summary_counts(app.stderr) == [(100, 50, 50)]


# --------------------------------------------------------------------------- clusters


def test_two_processes_report_to_one_endpoint(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    port = free_port()
    sent, bad = 4001, 2
    with running(
        APP, "--in", f"{HOST}:0", "--output", str(out), "-m", f"{HOST}:{port}", "--workers", "2"
    ) as app:
        base = metrics_url(app)
        ((_, _, in_port),) = app.listening()
        assert send_messages(HOST, in_port, numbers(sent, bad)) == sent + bad
        s = wait_for(
            settled(base, sent + bad, (sent + 1) // 2, workers=2), 30, "both workers' counts"
        )
        check_counters(s, sent, bad, workers=2)  # type: ignore[arg-type]
        assert set(s.workers()) == {"worker-0", "worker-1"}  # type: ignore[union-attr]
        # The declared keys are spread over both workers.
        keys = {x.labels["worker"]: x.value for x in s.samples("wallaroo_state_keys")}  # type: ignore[union-attr]
        assert keys == {"worker-0": 2, "worker-1": 2}
        status = status_json(base)
        assert [w["name"] for w in status["workers"]] == ["worker-0", "worker-1"]
        assert all(w["up"] for w in status["workers"])
        assert status["totals"]["records_in"] == sent + bad
        assert status["expected_workers"] == 2
        last = s
    lines = output_lines(out)
    assert len(lines) == last.total("wallaroo_sink_records_total") == (sent + 1) // 2  # type: ignore[union-attr]
    # Each worker's own summary; together they are the counters.
    counts = summary_counts(app.stderr)
    assert len(counts) == 2
    assert sum(c[0] for c in counts) == sent + bad
    assert sum(c[1] for c in counts) == (sent + 1) // 2
    assert sum(c[2] for c in counts) == sent // 2


def test_two_workers_started_with_the_same_m_address(tmp_path: Path) -> None:
    """The 0.4.2 way: the same --in, --out and -m for both workers, -c to the
    initializer; the one endpoint shows both. --worker-metrics: the second
    worker also serves its own view."""
    out = tmp_path / "out.txt"
    metrics_port, control, data = free_port(), free_port(), free_port()
    own_port, in_port = free_port(), free_port()
    common = [
        str(APP),
        "--in",
        f"{HOST}:{in_port}",
        "--output",
        str(out),
        "-m",
        f"{HOST}:{metrics_port}",
        "-w",
        "2",
        "-c",
        f"{HOST}:{control}",
    ]
    env = app_env()
    initializer = RunningApp(
        [
            sys.executable,
            "-m",
            "wallaroo",
            *common,
            "-t",
            "-d",
            f"{HOST}:{data}",
            "-n",
            "initializer",
        ],
        env,
        None,
    )
    worker = RunningApp(
        [
            sys.executable,
            "-m",
            "wallaroo",
            *common,
            "-n",
            "worker2",
            "--worker-metrics",
            f"{HOST}:{own_port}",
        ],
        env,
        None,
    )
    try:
        initializer.wait_listening(1, 30)
        base = f"http://{HOST}:{metrics_port}/"
        assert metrics_url(initializer) == base
        assert send_messages(HOST, in_port, numbers(1000, 1)) == 1001
        s = wait_for(settled(base, 1001, 500, workers=2), 30, "both workers at the endpoint")
        assert s.workers() == {"initializer": 1.0, "worker2": 1.0}  # type: ignore[union-attr]
        assert s.total("wallaroo_bad_input_total") == 1  # type: ignore[union-attr]
        # The second worker's own endpoint: only itself.
        own = scrape(f"http://{HOST}:{own_port}/")
        assert own.workers() == {"worker2": 1.0}
        assert "this worker's metrics: " in worker.stderr
        assert status_json(f"http://{HOST}:{own_port}/")["scope"] == "worker"
    finally:
        # SIGTERM makes the initializer stop the run and the other worker
        # leave the cluster (its keys handed over): both end cleanly. Wait
        # for them without signalling again (a second signal stops at once).
        for proc in (initializer, worker):
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        codes = [p.proc.wait(30) for p in (worker, initializer)]
    assert codes == [0, 0], f"{initializer.stderr}\n---\n{worker.stderr}"
    assert "cannot serve metrics" not in worker.stderr
    assert len(output_lines(out)) == 500


# --------------------------------------------------------------------------- terminal and logs


def test_progress_line_on_a_terminal_only(tmp_path: Path) -> None:
    def run(*extra: str) -> str:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "wallaroo",
                str(APP),
                "--in",
                f"{HOST}:0",
                "--output",
                str(tmp_path / "o.txt"),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=app_env(),
        )
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 30
        sent = stopped = False
        stop_at = 0.0
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    seen += chunk
                match = re.search(rb"listening for TCP input on [\d.]+:(\d+)", seen)
                if match and not sent:
                    send_messages(HOST, int(match.group(1)), numbers(500, 1))
                    sent = True
                    stop_at = time.monotonic() + 2.0
                if sent and not stopped and time.monotonic() > stop_at:
                    proc.send_signal(signal.SIGTERM)
                    stopped = True
                if proc.poll() is not None and not ready:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            os.close(master)
        assert proc.returncode == 0, seen.decode(errors="replace")
        return seen.decode(errors="replace")

    shown = run()
    assert "wallaroo ▸ " in shown and "\r\x1b[K" in shown
    lines = re.findall(r"wallaroo ▸ ([^\r\n\x1b]*)", shown)
    assert any(line.startswith("501 in") for line in lines), lines
    assert "1 bad" in lines[-1]
    assert "wallaroo ▸" not in run("--quiet")
    # Not a terminal: no progress line (the other tests read pipes).
    with running(APP, "--in", f"{HOST}:0", "--output", str(tmp_path / "p.txt")) as app:
        metrics_url(app)
        time.sleep(1.2)
    assert "wallaroo ▸" not in app.stderr


def test_render_progress_line() -> None:
    line = render(
        {
            "records_in": 1234567,
            "records_out": 1000,
            "dropped": 5,
            "bad_input": 2,
            "errors": 0,
            "workers": 2,
            "kafka_lag": 17,
        },
        rate=45678.9,
        elapsed=83,
    )
    assert line == (
        "wallaroo ▸ 1,234,567 in  45,678/s │ 1,000 out │ 5 filtered │ 2 bad │ 0 errors │ "
        "lag 17 │ 2 workers │ 1:23"
    )
    assert len(render({"records_in": 1}, 0, 0, width=30)) == 29


def test_one_log_level_for_runner_and_engine(tmp_path: Path) -> None:
    """--log-level is for the runner and the engine (Rust logs go through
    Python's logging); a bad input line names the source position."""
    in_port = free_port()
    with running(
        APP,
        "--in",
        f"{HOST}:{in_port}",
        "--output",
        str(tmp_path / "o.txt"),
        "--log-level",
        "warning",
        sources=0,
    ) as app:
        assert send_messages(HOST, in_port, numbers(10, 1)) == 11
        wait_for(lambda: "bad input" in app.stderr, 20, "the bad input warning")
    assert " INFO " not in app.stderr, app.stderr
    assert re.search(
        r"WARNING _engine\.bad_input: bad input \(decode_error\) in pipeline \"numbers\" "
        rf"at tcp {HOST}:{in_port} connection 1 frame 11 \(byte \d+\)",
        app.stderr,
    ), app.stderr


def test_progress_line_is_cleared_before_other_output() -> None:
    import io
    import logging

    from wallaroo.progress import CLEAR, Progress

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    saved = sys.stderr
    sys.stderr = stream
    try:
        progress = Progress(lambda: {"records_in": 5, "workers": 1}, stream=stream, interval=60)
        progress.start()
        progress.draw()
        logging.getLogger("wallaroo.test").warning("a log line")
        print("top: a print", file=sys.stderr)
        progress.draw()
        progress.stop()
        assert sys.stderr is stream  # unwrapped again
    finally:
        sys.stderr = saved
        root.removeHandler(handler)
    text = stream.getvalue()
    line = "wallaroo ▸ 5 in  0/s │ 0 out │ 0 filtered │ 0 bad │ 0 errors │ 0:00"
    assert text == (
        f"{CLEAR}{line}{CLEAR}WARNING a log line\ntop: a print\n{CLEAR}{line}{CLEAR}"
    ), repr(text)


def test_kafka_source_reports_lag_per_partition() -> None:
    from kafka_broker import TansuBroker

    with TansuBroker() as broker:
        source, sink = f"lag-in-{os.getpid()}", f"lag-out-{os.getpid()}"
        broker.create_topic(source, partitions=2)
        broker.create_topic(sink, partitions=1)
        broker.produce(source, [b"a%d" % i for i in range(300)], partition=0)
        broker.produce(source, [b"b%d" % i for i in range(200)], partition=1)
        flags = [
            "--kafka_source_topic", source, "--kafka_source_brokers", broker.bootstrap,
            "--kafka_sink_topic", sink, "--kafka_sink_brokers", broker.bootstrap,
        ]  # fmt: skip
        with running(APPS_DIR / "kafka_echo.py", *flags, sources=0) as app:
            base = metrics_url(app, timeout=30)

            def caught_up() -> object:
                s = scrape(base)
                lag = {
                    x.labels["partition"]: x.value
                    for x in s.samples("wallaroo_kafka_consumer_lag_messages", topic=source)
                }
                read = s.total("wallaroo_source_records_total")
                # The sink's count comes after the source's (the records go
                # through the steps first): wait for both.
                written = s.total("wallaroo_sink_records_total")
                done = read == 500 and written == 500 and lag == {"0": 0.0, "1": 0.0}
                return s if done else None

            s = wait_for(caught_up, 30, "every message read and written, lag 0 on both partitions")
            source_labels = {x.labels["source"] for x in s.samples("wallaroo_source_records_total")}  # type: ignore[union-attr]
            assert source_labels == {f"kafka topic {source}"}


# ------------------------------------------------------------- the server against strangers


#: The file descriptors the run below may have (soft = hard: nothing to raise).
FD_LIMIT = 256


def test_half_sent_requests_never_starve_the_data_path(tmp_path: Path) -> None:
    """More half-sent HTTP requests than the process has file descriptors:
    the server caps its connections, so the TCP source still accepts and
    every record goes through; the header timeout then closes them."""
    out = tmp_path / "out.txt"
    limited = (
        "import os, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT}))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'wallaroo', *sys.argv[1:]])\n"
    )
    argv = [sys.executable, "-c", limited, str(APP), "--in", f"{HOST}:0", "--output", str(out)]
    app = RunningApp(argv, app_env(), None)
    held: list = []
    try:
        app.wait_listening(1, 30)
        base = metrics_url(app)
        port = int(base.rstrip("/").rsplit(":", 1)[1])
        for _ in range(FD_LIMIT + 100):
            sock = socket.create_connection((HOST, port), timeout=10)
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends
            held.append(sock)
        ((_, _, in_port),) = app.listening()
        assert send_messages(HOST, in_port, numbers(1000)) == 1000
        wait_for(lambda: len(output_lines(out)) == 500, 30, "every record through the source")
        assert "Too many open files" not in app.stderr

        def closed(sock: socket.socket) -> bool:
            try:
                return sock.recv(1) == b""
            except ConnectionResetError:
                return True

        def all_closed() -> bool:
            ready, _, _ = select.select(held, [], [], 0)
            return len(ready) == len(held) and all(closed(s) for s in ready)

        wait_for(all_closed, 60, "the half-sent requests closed by the server")
        assert scrape(base).workers() == {"initializer": 1.0}
    finally:
        for sock in held:
            sock.close()
        code = app.stop(30)
    assert code == 0, app.stderr


def _get_with_host(base: str, host: str) -> int:
    request = urllib.request.Request(base + "status", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_foreign_host_header_is_refused(tmp_path: Path) -> None:
    """A page of another site whose name was rebound to this address (DNS
    rebinding) sends its own name as Host: refused."""
    with running(APP, "--in", f"{HOST}:0", "--output", str(tmp_path / "o.txt")) as app:
        base = metrics_url(app)
        port = base.rstrip("/").rsplit(":", 1)[1]
        assert _get_with_host(base, f"attacker.example:{port}") == 421
        assert _get_with_host(base, "attacker.example") == 421
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                     f"{socket.gethostname()}:{port}"):
            assert _get_with_host(base, host) == 200, host


def test_the_full_host_name_is_looked_up_only_for_servers_beyond_loopback(monkeypatch) -> None:
    """Looking the full name up can take a DNS round trip at every start: a
    server on loopback, which no browser can reach by that name, skips it."""
    from wallaroo import metrics

    def no_lookup() -> str:
        raise AssertionError("getfqdn called for a loopback server")

    monkeypatch.setattr(socket, "getfqdn", no_lookup)
    for address in ("127.0.0.1:0", "127.0.0.1:5001", "localhost:80", "[::1]:0"):
        assert metrics.allowed_hosts(None, address) == [socket.gethostname()], address
    assert metrics.allowed_hosts("box.example:5001", "127.0.0.1:5001") == sorted(
        {"box.example", socket.gethostname()})
    monkeypatch.setattr(socket, "getfqdn", lambda: "box.full.example")
    for address in ("0.0.0.0:5001", "[::]:0", "10.1.2.3:80", ""):
        assert "box.full.example" in metrics.allowed_hosts(None, address), address


def _bad_input_previews(tmp_path: Path, *flags: str) -> tuple:
    """The payloads of /status's recent bad input, and its ``payload_previews``."""
    with running(APP, "--in", f"{HOST}:0", "--output", str(tmp_path / "o.txt"), *flags) as app:
        base = metrics_url(app)
        ((_, _, in_port),) = app.listening()
        send_messages(HOST, in_port, numbers(0, bad=2))
        wait_for(lambda: len(status_json(base)["recent_bad_input"]) == 2, 20, "bad input")
        status = status_json(base)
    recent = status["recent_bad_input"]
    return (
        [b["payload"] for b in recent],
        status["payload_previews"],
        [b["payload_bytes"] for b in recent],
    )


def test_bad_input_previews_are_shown_only_when_asked_for(tmp_path: Path) -> None:
    """Without previews a payload's length is still there (for the page)."""
    assert _bad_input_previews(tmp_path) == (["", ""], False, [14, 14])
    assert _bad_input_previews(tmp_path, "--bad-input-previews") == (
        ["not a number 0", "not a number 1"],
        True,
        [14, 14],
    )


def test_m_with_only_a_port_says_it_listens_on_every_interface(tmp_path: Path) -> None:
    port = free_port()
    with running(APP, "--in", f"{HOST}:0", "--output", str(tmp_path / "o.txt"),
                 "-m", f":{port}") as app:
        assert metrics_url(app) == f"http://{HOST}:{port}/"
        assert f"listening on every interface of this host, port {port}" in app.stderr
