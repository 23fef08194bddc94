"""Growing and shrinking a running cluster: a worker joins with ``--join``,
leaves through the external channel (``shrink NAME``) or on SIGTERM; its keys
move at an epoch boundary, and every key's count still goes 1, 2, 3, ... once
per record (nothing lost, nothing counted twice)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS_DIR, app_env

APP = str(APPS_DIR / "cluster_slow.py")
KEYS = 23


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(args: list, log: Path, app: str = APP) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wallaroo", app, *args],
        env=app_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def _wait_for(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    pytest.fail(f"{path.name} never said {text!r}:\n{path.read_text()}")


def _wait_lines(path: Path, lines: int, timeout: float = 60) -> None:
    """Wait until the run's output has ``lines`` lines (records went through)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= lines):
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name}: fewer than {lines} lines after {timeout} s")
        time.sleep(0.05)


def _command(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(line.encode() + b"\n")
        return sock.makefile().readline()


def _check_counts(output: Path, records: int) -> None:
    counts: dict = {}
    for line in output.read_text().splitlines():
        key, count = line.split()
        assert int(count) == counts.get(key, 0) + 1, f"{key}: {count} after {counts.get(key)}"
        counts[key] = int(count)
    assert sum(counts.values()) == records
    assert counts == {f"k{k}": records // KEYS + (k < records % KEYS) for k in range(KEYS)}


@pytest.fixture
def lines(tmp_path: Path) -> tuple:
    records = 6000
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"k{i % KEYS}\n" for i in range(records)))
    return source, records


def _wait_exit(proc: subprocess.Popen, log: Path, timeout: float = 150) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"did not exit:\n{log.read_text()}")
    assert proc.returncode == 0, log.read_text()


@pytest.mark.timeout(240)
def test_grow_then_shrink_through_the_external_channel(tmp_path: Path, lines) -> None:
    source, records = lines
    output = tmp_path / "out.txt"
    control, external = _free_port(), _free_port()
    common = [
        "--input",
        str(source),
        "--output",
        str(output),
        "--batch-size",
        "5",
        "--sleep",
        "0.003",
    ]
    init_log, joiner_log = tmp_path / "init.log", tmp_path / "joiner.log"
    init = _start(
        [
            *common,
            "-t",
            "-w",
            "1",
            "-c",
            f"127.0.0.1:{control}",
            "-e",
            f"127.0.0.1:{external}",
            "-n",
            "init",
        ],
        init_log,
    )
    joiner = None
    try:
        _wait_for(init_log, "running application")
        _wait_lines(output, 2 * KEYS)  # every key has state to hand over
        joiner = _start([*common, "-j", f"127.0.0.1:{control}", "-n", "w2"], joiner_log)
        _wait_for(joiner_log, "took over")
        # The grown cluster processes records before it shrinks again.
        _wait_lines(output, output.read_bytes().count(b"\n") + 2 * KEYS)
        answer = _command(external, "shrink w2")
        assert '"ok": true' in answer, answer
        _wait_exit(joiner, joiner_log)
        _wait_exit(init, init_log)
    finally:
        for proc in (init, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
    init_text, joiner_text = init_log.read_text(), joiner_log.read_text()
    assert "the cluster now has 2 workers (init, w2)" in init_text
    assert "the cluster now has 1 workers (init)" in init_text
    assert "left the cluster" in joiner_text
    moved_in = [int(n) for n in re.findall(r"took over (\d+) keys", joiner_text)]
    assert moved_in and moved_in[0] > 0, joiner_text
    _check_counts(output, records)


@pytest.mark.timeout(240)
def test_a_worker_leaves_on_sigterm(tmp_path: Path, lines) -> None:
    source, records = lines
    output = tmp_path / "out.txt"
    control = _free_port()
    common = [
        "--input",
        str(source),
        "--output",
        str(output),
        "--batch-size",
        "5",
        "--sleep",
        "0.003",
        "-w",
        "2",
    ]
    init_log, member_log = tmp_path / "init.log", tmp_path / "member.log"
    init = _start([*common, "-t", "-c", f"127.0.0.1:{control}", "-n", "init"], init_log)
    member = _start([*common, "-c", f"127.0.0.1:{control}", "-n", "w2"], member_log)
    try:
        _wait_for(member_log, "running application")
        _wait_lines(output, 2 * KEYS)  # the member holds state when it leaves
        member.send_signal(signal.SIGTERM)
        _wait_exit(member, member_log)
        _wait_exit(init, init_log)
    finally:
        for proc in (init, member):
            if proc.poll() is None:
                proc.kill()
    assert "leaving the cluster once this worker's keys are handed over" in member_log.read_text()
    assert "the cluster now has 1 workers (init)" in init_log.read_text()
    _check_counts(output, records)


@pytest.mark.timeout(300)
def test_event_time_windows_move_with_their_keys_as_a_worker_joins_and_leaves(
    tmp_path: Path,
) -> None:
    """Sliding event-time windows with late events: a worker joins the running
    cluster and leaves it again while windows are open. Every window comes
    out once with exactly its events and every late event is kept once, as
    computed from the events (the same expectation as without moves)."""
    from test_windows import EVENT_APP, _event_inputs, _late_ids

    events = tmp_path / "events.txt"
    expected, late = _event_inputs(events, 20_000, 200, seed=11)
    output, dead, hold = tmp_path / "windows.txt", tmp_path / "late.jsonl", tmp_path / "hold"
    hold.touch()  # paced until the worker has left, then the rest at full speed
    control, external = _free_port(), _free_port()
    common = ["--input", str(events), "--output", str(output), "--dead-letter", str(dead),
              "--pause-every", "50", "--pause-ms", "40", "--hold-file", str(hold)]  # fmt: skip
    init_log, joiner_log = tmp_path / "init.log", tmp_path / "joiner.log"
    app = str(EVENT_APP)
    init = _start(
        [*common, "-t", "-w", "1", "-c", f"127.0.0.1:{control}",
         "-e", f"127.0.0.1:{external}", "-n", "init"],
        init_log, app,
    )  # fmt: skip
    joiner = None
    try:
        _wait_for(init_log, "running application")
        _wait_lines(output, 100)  # keys hold windows to hand over
        joiner = _start([*common, "-j", f"127.0.0.1:{control}", "-n", "w2"], joiner_log, app)
        _wait_for(joiner_log, "took over")
        _wait_lines(output, output.read_bytes().count(b"\n") + 100)
        answer = _command(external, "shrink w2")
        assert '"ok": true' in answer, answer
        _wait_exit(joiner, joiner_log)
        hold.unlink()
        _wait_exit(init, init_log)
    finally:
        for proc in (init, joiner):
            if proc is not None and proc.poll() is None:
                proc.kill()
    joiner_text = joiner_log.read_text()
    moved_in = [int(n) for n in re.findall(r"took over (\d+) keys", joiner_text)]
    assert moved_in and moved_in[0] > 0, joiner_text
    assert "the cluster now has 1 workers (init)" in init_log.read_text()
    assert sorted(output.read_text().splitlines()) == sorted(expected)
    assert sorted(_late_ids(dead), key=int) == sorted(late, key=int)


@pytest.mark.timeout(120)
def test_external_channel_status_and_unknown_worker(tmp_path: Path, lines) -> None:
    source, _records = lines
    control, external = _free_port(), _free_port()
    log = tmp_path / "init.log"
    init = _start(
        [
            "--input",
            str(source),
            "--output",
            str(tmp_path / "out.txt"),
            "--sleep",
            "0.003",
            "-t",
            "-w",
            "1",
            "-c",
            f"127.0.0.1:{control}",
            "-e",
            f"127.0.0.1:{external}",
            "-n",
            "init",
        ],
        log,
    )
    try:
        _wait_for(log, "external channel on")
        assert '"workers": ["init"]' in _command(external, "status")
        answer = _command(external, "shrink nobody")
        assert '"ok": false' in answer and "no worker 'nobody'" in answer
        init.send_signal(signal.SIGTERM)  # the checks are done: no need to read it all
        _wait_exit(init, log)
    finally:
        if init.poll() is None:
            init.kill()
