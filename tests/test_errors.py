"""Errors and bad input (DESIGN.md "Errors and bad input"), end to end.

Every test runs the real runner, ``python -m wallaroo APP ...``, as a
subprocess on the small applications in ``tests/bad_apps/``: TCP sources fed
by raw sockets, TCP sinks read by :class:`wallaroo.receiver.Receiver`, file
sources and sinks in ``tmp_path``. Exit codes: 0 ok, 1 run failed, 2 bad app.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from wallaroo.receiver import Receiver
from wallaroo.sender import connect, frame

HERE = Path(__file__).resolve().parent
APPS_DIR = HERE / "bad_apps"
PYTHON_DIR = HERE.parent / "python"
ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(APPS_DIR), str(PYTHON_DIR), os.environ.get("PYTHONPATH", "")) if p
)
ENV.pop("WALLAROO_LOG_LEVEL", None)
HOST = "127.0.0.1"
DEAD_LETTER_KEYS = {
    "time",
    "pipeline",
    "position",
    "kind",
    "error",
    "payload_base64",
    "payload_preview",
}


# -- helpers ---------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_app(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``python -m wallaroo ARGS`` to completion (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "wallaroo", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def dead_letters(path: Path) -> list[dict]:
    """The JSON lines of a dead-letter file, each checked for the documented keys."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        assert set(record) == DEAD_LETTER_KEYS, record
        assert isinstance(record["time"], float) and record["time"] > 1.5e9
    return records


def payload_of(record: dict) -> bytes:
    return base64.b64decode(record["payload_base64"], validate=True)


def bad_log(kind: str, pipeline: str, position: str) -> str:
    """The start of the log line the engine writes for one bad input."""
    return f'bad input ({kind}) in pipeline "{pipeline}" at {position}'


def recv_eof(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class TcpRun:
    """``tcp_app`` listening on a free port, writing to an in-process Receiver.

    Use as a context manager; :meth:`stop` sends SIGTERM and returns
    ``(exit code, stderr)``.
    """

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.rx = Receiver(port=0).start()
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.dead = tmp_path / "dead.jsonl"
        self.err_path = tmp_path / "engine.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wallaroo",
                    "tcp_app",
                    "--in",
                    self.address,
                    "--out",
                    f"{HOST}:{self.rx.port}",
                    "--dead-letter",
                    str(self.dead),
                    *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=ENV,
            )
        listening = f"listening for TCP input on {self.address}"
        if not wait_until(lambda: listening in self.stderr() or self.proc.poll() is not None, 20):
            pytest.fail(f"the engine never listened:\n{self.stderr()}")
        if self.proc.poll() is not None:
            pytest.fail(f"the engine exited {self.proc.returncode}:\n{self.stderr()}")
        self.pipeline = "tcp in"

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def connect(self) -> socket.socket:
        return connect(HOST, self.port, connect_timeout=5)

    def position(self, connection: int, frame_no: int, byte: int) -> str:
        return f"tcp {self.address} connection {connection} frame {frame_no} (byte {byte})"

    def wait_messages(self, n: int) -> list[bytes]:
        assert self.rx.wait_for(n, timeout=10), (self.rx.messages(), self.stderr())
        return self.rx.messages()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the engine did not stop on SIGTERM:\n{self.stderr()}")
        # The sink connection closes with the engine; let the receiver read its end.
        assert wait_until(lambda: self.rx.open_connections == 0, 5)
        return code, self.stderr()

    def __enter__(self) -> TcpRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.rx.stop()


def send_and_close(run: TcpRun, data: bytes) -> None:
    """Send ``data`` on a new connection, close our side, wait for the engine's close."""
    sock = run.connect()
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_eof(sock), "the engine did not close the connection after our EOF"
    finally:
        sock.close()


# -- bad input over TCP ------------------------------------------------------


@pytest.mark.timeout(60)
def test_tcp_truncated_frame_when_the_connection_closes_mid_frame(tmp_path: Path) -> None:
    cut = struct.pack(">I", 10) + b"xyz"
    with TcpRun(tmp_path) as run:
        send_and_close(run, frame(b"a") + frame(b"b") + cut)
        assert run.wait_messages(2) == [b"A", b"B"]
        code, err = run.stop()
    assert code == 0, err
    assert run.rx.messages() == [b"A", b"B"]
    position = run.position(1, 3, 10)
    assert bad_log("truncated", "tcp in", position) in err
    assert "bad input: 1 truncated" in err
    [record] = dead_letters(run.dead)
    assert record["kind"] == "truncated"
    assert record["pipeline"] == "tcp in"
    assert record["position"] == position
    assert payload_of(record) == cut
    assert record["payload_preview"] == cut.decode("latin-1")
    assert "7 bytes" in record["error"]


@pytest.mark.timeout(60)
def test_tcp_zero_length_frame_is_bad_and_later_frames_go_on(tmp_path: Path) -> None:
    zero = struct.pack(">I", 0)
    with TcpRun(tmp_path) as run:
        send_and_close(run, frame(b"a") + zero + frame(b"b") + frame(b"c"))
        assert run.wait_messages(3) == [b"A", b"B", b"C"]
        code, err = run.stop()
    assert code == 0, err
    assert run.rx.messages() == [b"A", b"B", b"C"]
    position = run.position(1, 2, 5)
    assert bad_log("zero_length", "tcp in", position) in err
    assert "bad input: 1 zero_length" in err
    [record] = dead_letters(run.dead)
    assert (record["kind"], record["pipeline"], record["position"]) == (
        "zero_length",
        "tcp in",
        position,
    )
    assert payload_of(record) == zero


@pytest.mark.timeout(60)
def test_tcp_oversize_frame_closes_only_that_connection(tmp_path: Path) -> None:
    huge = struct.pack(">I", 1000)
    with TcpRun(tmp_path, "--max-frame-bytes", "100") as run:
        first = run.connect()
        second = None
        try:
            first.sendall(frame(b"a"))
            assert run.wait_messages(1) == [b"A"]
            second = run.connect()
            second.sendall(frame(b"b"))
            assert run.wait_messages(2) == [b"A", b"B"]
            # A frame of exactly the limit is fine; one byte more is not.
            first.sendall(frame(b"x" * 100))
            assert run.wait_messages(3)[2] == b"X" * 100
            first.sendall(huge + b"q" * 20)
            assert recv_eof(first), "the engine kept the connection with the oversize frame"
            second.sendall(frame(b"c"))
            assert run.wait_messages(4) == [b"A", b"B", b"X" * 100, b"C"]
            second.shutdown(socket.SHUT_WR)
            assert recv_eof(second)
        finally:
            first.close()
            if second is not None:
                second.close()
        code, err = run.stop()
    assert code == 0, err
    assert run.rx.messages() == [b"A", b"B", b"X" * 100, b"C"]
    position = run.position(1, 3, 5 + 104)
    assert bad_log("oversize", "tcp in", position) in err
    assert f"tcp {run.address} connection 1: cannot find the next frame, closing" in err
    assert "bad input: 1 oversize" in err
    [record] = dead_letters(run.dead)
    assert (record["kind"], record["position"]) == ("oversize", position)
    assert payload_of(record) == huge
    assert "1000" in record["error"] and "100" in record["error"]


@pytest.mark.timeout(60)
def test_tcp_undecodable_payload_between_good_ones(tmp_path: Path) -> None:
    with TcpRun(tmp_path) as run:
        send_and_close(run, frame(b"a") + frame(b"BAD") + frame(b"b"))
        assert run.wait_messages(2) == [b"A", b"B"]
        code, err = run.stop()
    assert code == 0, err
    assert run.rx.messages() == [b"A", b"B"]
    position = run.position(1, 2, 5)
    assert bad_log("decode_error", "tcp in", position) + ": BadPayload: cannot decode BAD" in err
    assert "bad input: 1 decode_error" in err
    [record] = dead_letters(run.dead)
    assert (record["kind"], record["pipeline"], record["position"]) == (
        "decode_error",
        "tcp in",
        position,
    )
    assert payload_of(record) == b"BAD"
    assert record["payload_preview"] == "BAD"
    assert "tcp_app.py" in record["error"] and "in struct_decoder" in record["error"]
    assert record["error"].rstrip().endswith("BadPayload: cannot decode BAD")


@pytest.mark.timeout(60)
def test_tcp_all_bad_kinds_in_one_run_keep_one_dead_letter_line_each(tmp_path: Path) -> None:
    zero = struct.pack(">I", 0)
    cut = struct.pack(">I", 50) + b"partial"
    with TcpRun(tmp_path) as run:
        send_and_close(run, frame(b"a") + zero + frame(b"BAD") + frame(b"b"))
        assert run.wait_messages(2) == [b"A", b"B"]
        send_and_close(run, frame(b"c") + cut)
        assert run.wait_messages(3) == [b"A", b"B", b"C"]
        code, err = run.stop()
    assert code == 0, err
    records = dead_letters(run.dead)
    assert [(r["kind"], r["position"], payload_of(r)) for r in records] == [
        ("zero_length", run.position(1, 2, 5), zero),
        ("decode_error", run.position(1, 3, 9), b"BAD"),
        ("truncated", run.position(2, 2, 5), cut),
    ]
    assert "bad input: 1 decode_error, 1 truncated, 1 zero_length" in err


@pytest.mark.timeout(60)
def test_tcp_partial_frame_pending_at_sigterm_is_kept_as_truncated(tmp_path: Path) -> None:
    cut = struct.pack(">I", 10) + b"xy"
    with TcpRun(tmp_path) as run:
        sock = run.connect()
        try:
            sock.sendall(frame(b"a") + cut)
            assert run.wait_messages(1) == [b"A"]
            # No wait for the partial frame: sendall returned, so its bytes are in
            # the engine's socket buffer (loopback), and a TCP source that stops
            # reads everything its connections sent first (src/sources/tcp.rs).
            code, err = run.stop()
        finally:
            sock.close()
    assert code == 0, err
    [record] = dead_letters(run.dead)
    assert (record["kind"], record["position"]) == ("truncated", run.position(1, 2, 5))
    assert payload_of(record) == cut


def test_unwritable_dead_letter_path_fails_the_start(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\n")
    dead = tmp_path / "no-such-dir" / "dead.jsonl"
    result = run_app(
        "file_app", "--input", str(src), "--output", str(tmp_path / "out"),
        "--dead-letter", str(dead),
    )
    assert result.returncode == 1, result.stderr
    assert f"error: cannot open dead-letter file {dead}: " in result.stderr


# -- hand-written (duck-typed) decoders ---------------------------------------


@pytest.mark.timeout(60)
def test_duck_typed_decoder_over_tcp(tmp_path: Path) -> None:
    with TcpRun(tmp_path, "--decoder", "duck") as run:
        send_and_close(run, frame(b"a") + frame(b"bb") + frame(b"c" * 300))
        assert run.wait_messages(3) == [b"A", b"BB", b"C" * 300]
        code, err = run.stop()
    assert code == 0, err
    assert run.rx.messages() == [b"A", b"BB", b"C" * 300]
    assert dead_letters(run.dead) == []
    assert "bad input" not in err


@pytest.mark.timeout(60)
def test_duck_decoder_whose_payload_length_raises_closes_the_connection(tmp_path: Path) -> None:
    header = b"\xff\x00\x00\x01"
    with TcpRun(tmp_path, "--decoder", "duck_bad") as run:
        sock = run.connect()
        try:
            sock.sendall(frame(b"a") + header + b"z")
            assert recv_eof(sock), "the engine kept a connection it cannot frame"
        finally:
            sock.close()
        assert run.wait_messages(1) == [b"A"]
        # The source itself goes on: a new connection is read.
        send_and_close(run, frame(b"b"))
        assert run.wait_messages(2) == [b"A", b"B"]
        code, err = run.stop()
    assert code == 0, err
    assert run.rx.messages() == [b"A", b"B"]
    position = run.position(1, 2, 5)
    assert bad_log("payload_length_error", "tcp in", position) in err
    assert "bad input: 1 payload_length_error" in err
    [record] = dead_letters(run.dead)
    assert (record["kind"], record["position"]) == ("payload_length_error", position)
    assert payload_of(record) == header
    assert record["error"].rstrip().endswith("ValueError: header starts with 0xff")
    assert "in payload_length" in record["error"]


# -- bad input in files ------------------------------------------------------


def test_length_framed_file_with_a_truncated_last_frame(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    out = tmp_path / "out.txt"
    dead = tmp_path / "dead.jsonl"
    cut = struct.pack(">I", 10) + b"abc"
    src.write_bytes(frame(b"one") + frame(b"two") + cut)
    result = run_app(
        "file_app", "--input", str(src), "--output", str(out), "--framing", "length",
        "--dead-letter", str(dead),
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"one\ntwo\n"
    position = f"file {src} frame 3 (byte 14)"
    assert bad_log("truncated", "file in", position) in result.stderr
    assert "bad input: 1 truncated" in result.stderr
    assert "'file in': 2 in, 2 out" in result.stderr
    [record] = dead_letters(dead)
    assert (record["kind"], record["pipeline"], record["position"]) == (
        "truncated",
        "file in",
        position,
    )
    assert payload_of(record) == cut


def test_lines_file_with_an_undecodable_json_line(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    out = tmp_path / "out.txt"
    dead = tmp_path / "dead.jsonl"
    src.write_bytes(b'{"a": 1}\n{oops\n{"b": 2}\n')
    result = run_app(
        "file_app", "--input", str(src), "--output", str(out), "--decoder", "json",
        "--dead-letter", str(dead),
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    position = f"file {src} line 2 (byte 9)"
    assert bad_log("decode_error", "file in", position) in result.stderr
    assert "JSONDecodeError" in result.stderr
    assert "bad input: 1 decode_error" in result.stderr
    [record] = dead_letters(dead)
    assert (record["kind"], record["position"]) == ("decode_error", position)
    assert payload_of(record) == b"{oops"
    assert record["payload_preview"] == "{oops"
    assert "in json_decoder" in record["error"]


def test_dead_letter_is_appended_to_not_truncated(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    dead = tmp_path / "dead.jsonl"
    src.write_bytes(b"{bad\n")
    for _ in range(2):
        result = run_app(
            "file_app", "--input", str(src), "--output", str(tmp_path / "out"),
            "--decoder", "json", "--dead-letter", str(dead),
        )
        assert result.returncode == 0, result.stderr
    assert [payload_of(r) for r in dead_letters(dead)] == [b"{bad", b"{bad"]


# -- exceptions in steps ------------------------------------------------------


def test_step_exception_stops_the_run_after_flushing(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    src.write_bytes(b"a\nb\nboom\nc\n")
    result = run_app("file_app", "--input", str(src), "--output", str(out), "--step", "explode")
    assert result.returncode == 1, result.stderr
    assert out.read_bytes() == b"a\nb\n"
    err = result.stderr
    assert (
        f'pipeline "file in", step "explode" failed on record b\'boom\' '
        f"(from file {src} line 3 (byte 4))" in err
    )
    assert "Traceback (most recent call last):" in err
    assert f'File "{APPS_DIR / "file_app.py"}", line ' in err
    assert ", in explode\n" in err
    assert 'raise RuntimeError("cannot handle boom")' in err
    assert "RuntimeError: cannot handle boom" in err


@pytest.mark.timeout(60)
def test_step_exception_over_tcp_stops_the_run_after_flushing_the_tcp_sink(
    tmp_path: Path,
) -> None:
    with TcpRun(tmp_path) as run:
        sock = run.connect()
        try:
            sock.sendall(frame(b"a") + frame(b"b") + frame(b"boom") + frame(b"c"))
            code = run.proc.wait(timeout=20)
        finally:
            sock.close()
        assert wait_until(lambda: run.rx.open_connections == 0, 5)
        err = run.stderr()
    assert code == 1, err
    assert run.rx.messages() == [b"A", b"B"]
    assert (
        f'pipeline "tcp in", step "upper" failed on record b\'boom\' '
        f"(from {run.position(1, 3, 10)})" in err
    )
    assert f'File "{APPS_DIR / "tcp_app.py"}", line ' in err
    assert ", in upper\n" in err
    assert "RuntimeError: upper cannot handle boom" in err


def test_step_exception_with_on_error_skip(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    src.write_bytes(b"a\nboom\nb\nboom\nc\n")
    result = run_app(
        "file_app", "--input", str(src), "--output", str(out), "--step", "explode",
        "--on-error", "skip",
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"a\nb\nc\n"
    err = result.stderr
    assert err.count("skipped a record (--on-error skip)") == 2
    assert 'step "explode" failed on record b\'boom\'' in err
    assert f"(from file {src} line 2 (byte 2))" in err
    assert f"(from file {src} line 4 (byte 9))" in err
    assert "'file in': 5 in, 3 out, 0 filtered, 2 skipped after errors" in err


def test_records_skipped_after_errors_are_kept_like_bad_input(tmp_path: Path) -> None:
    """``--on-error skip``: every skipped record goes to the dead-letter file
    (the step, the exception, the input bytes) and the log is rate-limited."""
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    dead = tmp_path / "dead.jsonl"
    src.write_bytes(b"a\n" + b"boom\n" * 60 + b"b\n")
    result = run_app(
        "file_app", "--input", str(src), "--output", str(out), "--step", "explode",
        "--on-error", "skip", "--dead-letter", str(dead),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"a\nb\n"
    kept = dead_letters(dead)
    assert len(kept) == 60
    assert {k["kind"] for k in kept} == {"step_error"}
    assert all(base64.b64decode(k["payload_base64"]) == b"boom" for k in kept)
    assert 'step "explode" failed on record b\'boom\'' in kept[0]["error"]
    assert "RuntimeError: cannot handle boom" in kept[0]["error"]
    assert kept[0]["position"] == f"file {src} line 2 (byte 2)"
    err = result.stderr
    assert 0 < err.count("skipped a record (--on-error skip)") <= 20, err
    assert "Traceback" not in err
    assert "62 in, 2 out, 0 filtered, 60 skipped after errors" in err


# -- sinks that cannot deliver ------------------------------------------------


@pytest.mark.timeout(90)
def test_tcp_sink_whose_receiver_never_comes_fails_the_run(tmp_path: Path) -> None:
    """Nobody listens where the TCP sink writes: after --sink-connect-timeout
    the records are counted as not delivered and the run exits 1."""
    with TcpRun(tmp_path, "--sink-connect-timeout", "1") as run:
        run.rx.stop()  # before the engine's first connection: nobody listens
        send_and_close(run, b"".join(frame(b"r%d" % i) for i in range(100)))
        assert wait_until(lambda: "records not delivered" in run.stderr(), 30), run.stderr()
        run.proc.send_signal(signal.SIGTERM)
        code = run.proc.wait(timeout=30)
        err = run.stderr()
    assert code == 1, err
    summary = "100 in, 100 out, 0 filtered, 0 skipped after errors, 0 delivered, 100 not delivered"
    assert summary in err
    assert "error: 100 records were not delivered" in err
    assert "records lost" not in err


@pytest.mark.timeout(90)
def test_tcp_sink_reconnects_to_a_receiver_that_dropped_it_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """The receiver closes the sink's connection and comes back later: the
    sink waits for it (the pipeline held back), reconnects and delivers
    everything."""
    with TcpRun(tmp_path) as run:
        port = run.rx.port
        sock = run.connect()
        try:
            sock.sendall(b"".join(frame(b"a%d" % i) for i in range(50)))
            run.wait_messages(50)
            run.rx.stop()  # closes the sink's connection
            sock.sendall(b"".join(frame(b"b%d" % i) for i in range(50)))
            assert wait_until(lambda: "waiting for the TCP sink" in run.stderr(), 30), (
                run.stderr()
            )
            run.rx = Receiver(port=port).start()
            assert run.rx.wait_for(50, timeout=30), (run.rx.messages(), run.stderr())
        finally:
            sock.close()
        code, err = run.stop()
    assert code == 0, err
    assert set(run.rx.messages()) == {b"B%d" % i for i in range(50)}
    assert "lost its connection" in err
    assert re.search(r"connected to the TCP sink \S+ after \d+ attempts", err), err
    assert "50 in" not in err and "100 in, 100 out" in err and "0 not delivered" in err


# -- the dead-letter file on a full disk ----------------------------------------


def metrics_text(stderr: str) -> str:
    """The Prometheus text of a run, from the metrics address it logged."""
    import urllib.request

    found = re.search(r"Prometheus (http://\S+/metrics)", stderr)
    assert found, stderr
    with urllib.request.urlopen(found.group(1), timeout=10) as response:
        return response.read().decode()


@pytest.mark.timeout(90)
def test_dead_letter_on_a_full_disk_counts_what_it_cannot_write_and_tears_no_line(
    tmp_path: Path, small_fs
) -> None:
    """Room for a few dead-letter lines only: the file holds whole lines, and
    the records it could not take are counted in the metrics and the summary."""
    from conftest import APPS_DIR as APPS
    from conftest import RunningApp, app_env

    small_fs.fill(leave=12 << 10)
    dead = small_fs.path / "dead.jsonl"
    out = tmp_path / "out.txt"
    running = RunningApp(
        [sys.executable, "-m", "wallaroo", str(APPS / "resilient_count.py"), "--in",
         f"{HOST}:0", "--output", str(out), "--dead-letter", str(dead)],
        app_env(), str(tmp_path),
    )  # fmt: skip
    try:
        ((_, _, port),) = running.wait_listening(1, 30)
        # Not UTF-8: the decoder raises on each; the last record is good.
        payloads = [bytes([0xFF, i]) * 750 for i in range(35)] + [b"k1"]
        with connect(HOST, port, connect_timeout=5) as sock:
            sock.sendall(b"".join(frame(p) for p in payloads))
        assert wait_until(lambda: out.exists() and "k1 1" in out.read_text(), 30), (
            running.stderr
        )
        failed = re.search(r"^wallaroo_dead_letter_failed_total\{.*\} (\d+)",
                           metrics_text(running.stderr), re.M)  # fmt: skip
        code = running.stop()
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
        small_fs.free()
    err = running.stderr
    assert code == 0, err
    text = dead.read_text()
    lines = text.splitlines()
    assert text.endswith("\n") and lines, text[-300:]
    kept = [json.loads(line) for line in lines]  # every line whole
    assert all(k["kind"] == "decode_error" for k in kept)
    not_written = 35 - len(kept)
    assert not_written > 0
    assert failed and int(failed.group(1)) == not_written
    assert f"dead-letter file: {not_written} bad records could not be written" in err


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` now (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(180)
def test_many_large_bad_frames_do_not_pile_up_in_memory(tmp_path: Path) -> None:
    """40 undecodable 8 MiB frames: the recent bad input keeps previews, not
    payloads, so the runner's memory stays bounded (it kept all 40 whole)."""
    from conftest import APPS_DIR as APPS
    from conftest import RunningApp, app_env

    out = tmp_path / "out.txt"
    running = RunningApp(
        [sys.executable, "-m", "wallaroo", str(APPS / "resilient_count.py"), "--in",
         f"{HOST}:0", "--output", str(out)],
        app_env(), str(tmp_path),
    )  # fmt: skip
    try:
        ((_, _, port),) = running.wait_listening(1, 30)
        big = b"\xff" * (8 << 20)  # not UTF-8: the decoder raises
        with connect(HOST, port, connect_timeout=5) as sock:
            for _ in range(40):
                sock.sendall(frame(big))
            sock.sendall(frame(b"k1"))
        assert wait_until(lambda: out.exists() and "k1 1" in out.read_text(), 120), (
            running.stderr
        )
        rss = rss_bytes(running.proc.pid)
        code = running.stop()
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
    assert code == 0, running.stderr
    assert "bad input: 40 decode_error" in running.stderr
    assert rss < 300 << 20, f"{rss >> 20} MiB resident after 40 bad 8 MiB frames"


# -- broken applications ------------------------------------------------------


def app_file(name: str) -> str:
    return str(APPS_DIR / f"{name}.py")


def test_no_application_setup() -> None:
    result = run_app("no_setup")
    assert result.returncode == 2
    assert f"error: {app_file('no_setup')}: the application defines no application_setup(args)" in (
        result.stderr
    )


def test_application_setup_returning_none() -> None:
    result = run_app("setup_returns_none")
    assert result.returncode == 2
    assert f"error: {app_file('setup_returns_none')}: application_setup() must return" in (
        result.stderr
    )
    assert "got None" in result.stderr


def test_step_without_compute() -> None:
    result = run_app("no_compute")
    assert result.returncode == 2
    assert f"error: {app_file('no_compute')}: pipeline 'p' step 1 'lazy step'" in result.stderr
    assert "has no compute() method" in result.stderr


@pytest.mark.parametrize(
    ("forget", "where", "decorator"),
    [
        ("step", "pipeline 'p' step 1", "@wallaroo.computation(name=...)"),
        ("partition", "pipeline 'p' step 2 partition function", "@wallaroo.partition"),
        ("decoder", "pipeline 'p' source, decoder", "@wallaroo.decoder(header_length=4"),
        ("encoder", "pipeline 'p' sink, encoder", "@wallaroo.encoder"),
    ],
)
def test_a_plain_function_names_the_decorator_it_needs(
    forget: str, where: str, decorator: str
) -> None:
    result = run_app("undecorated", "--forget", forget)
    assert result.returncode == 2, result.stderr
    assert f"error: {app_file('undecorated')}: {where}" in result.stderr
    assert f"the function plain() is not decorated: put {decorator}" in result.stderr
    assert "0x" not in result.stderr  # no <function plain at 0x...>


@pytest.mark.parametrize(
    ("shape", "got"),
    [("non_tuple", "b'a'"), ("three_tuple", "(b'a', True, 'extra')"), ("yes", "(b'a', 'yes')")],
)
def test_state_computation_with_a_wrong_return_shape(tmp_path: Path, shape: str, got: str) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\nb\n")
    out = tmp_path / "out.txt"
    result = run_app("bad_state", "--shape", shape, "--input", str(src), "--output", str(out))
    assert result.returncode == 1, result.stderr
    assert f'step "count it" failed on record b\'a\' (from file {src} line 1 (byte 0))' in (
        result.stderr
    )
    assert "state_changed" in result.stderr
    assert f"got {got}" in result.stderr
    assert out.read_bytes() == b""


def test_state_computation_with_the_right_shape_runs(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\nb\n")
    out = tmp_path / "out.txt"
    result = run_app("bad_state", "--shape", "good", "--input", str(src), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"a\nb\n"


def test_partition_function_returning_a_list(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\n")
    result = run_app(
        "bad_state", "--shape", "list_key", "--input", str(src), "--output", str(tmp_path / "o")
    )
    assert result.returncode == 1, result.stderr
    assert f'step "count it" failed on record b\'a\' (from file {src} line 1 (byte 0))' in (
        result.stderr
    )
    assert (
        "unhashable type: 'list'" in result.stderr
        or "the partition function returned [b'a'] of type list" in result.stderr
    )


def test_argument_helper_system_exit_in_application_setup() -> None:
    result = run_app("needs_in")
    assert result.returncode == 2
    assert "the following arguments are required: -i/--in" in result.stderr
    assert (
        f"error: {app_file('needs_in')}: application_setup() exited while reading its arguments"
        in result.stderr
    )


def test_import_error_in_the_app_module() -> None:
    result = run_app("import_error")
    assert result.returncode == 2
    assert "ModuleNotFoundError: No module named 'wallaroo_no_such_module_xyz'" in result.stderr
    assert f'File "{app_file("import_error")}", line 4' in result.stderr
    assert "error: importing application 'import_error' failed" in result.stderr
    # The traceback starts at the application's frame: no runner or importlib frames.
    assert result.stderr.split("\n")[1].startswith(f'  File "{app_file("import_error")}"')
    assert "runner.py" not in result.stderr and "importlib" not in result.stderr


def test_syntax_error_in_the_app(tmp_path: Path) -> None:
    app = tmp_path / "broken_syntax.py"
    app.write_text(
        '"""Broken."""\n\nimport wallaroo\n\n'
        "def application_setup(args:\n"
        '    return wallaroo.ApplicationBuilder("x").build()\n'
    )
    result = run_app(str(app))
    assert result.returncode == 2
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: {app}:5: ")
    assert "cannot compile" in line


def test_missing_input_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing.txt"
    result = run_app("file_app", "--input", str(missing), "--output", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert f'pipeline "file in": cannot open input file {missing}: ' in result.stderr


def test_tcp_source_port_already_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_app(
            "tcp_app", "--in", f"{HOST}:{port}", "--out", f"{HOST}:{free_port()}", timeout=20
        )
    assert result.returncode == 1, result.stderr
    assert f'pipeline "tcp in": cannot listen on {HOST}:{port}: ' in result.stderr


# -- encoder results -----------------------------------------------------------


def test_encoder_returning_str_is_written_utf8(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    src.write_bytes(b"a\nb\n")
    result = run_app("file_app", "--input", str(src), "--output", str(out), "--encoder", "str")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == "a \u00e9\u20ac\nb \u00e9\u20ac\n".encode()


def test_encoder_returning_none_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    src.write_bytes(b"a\nb\n")
    result = run_app("file_app", "--input", str(src), "--output", str(out), "--encoder", "none")
    assert result.returncode == 0, result.stderr
    assert out.exists()
    assert out.read_bytes() == b""


def test_encoder_returning_an_int_fails_the_run(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    src.write_bytes(b"a\nb\n")
    result = run_app("file_app", "--input", str(src), "--output", str(out), "--encoder", "int")
    assert result.returncode == 1, result.stderr
    assert 'step "encoder" failed on record b\'a\'' in result.stderr
    assert "got 42" in result.stderr
    assert out.read_bytes() == b""


# -- decoder returning None ------------------------------------------------------


def test_decoder_returning_none_passes_none_on(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    out = tmp_path / "out.txt"
    src.write_bytes(b"a\nnull-me\nc\n")
    result = run_app(
        "file_app", "--input", str(src), "--output", str(out), "--decoder", "none_for_null",
        "--step", "repr",
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == b"b'a'\nNone\nb'c'\n"
    assert "bad input" not in result.stderr
