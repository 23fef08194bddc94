"""Tests of the framed-TCP test tools ``wallaroo.sender`` and ``wallaroo.receiver``.

Everything runs for real on 127.0.0.1 with free ports: the importable API in-process,
and the command lines as subprocesses.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from wallaroo.receiver import Receiver
from wallaroo.sender import frame, send_messages

PYTHON_DIR = str(Path(__file__).resolve().parent.parent / "python")
ENV = dict(os.environ)
ENV["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, os.environ.get("PYTHONPATH", "")) if p)
HOST = "127.0.0.1"


# -- helpers ---------------------------------------------------------------


def run_sender(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m wallaroo.sender ARGS`` to completion and return the result."""
    return subprocess.run(
        [sys.executable, "-m", "wallaroo.sender", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=ENV,
        timeout=20,
    )


class ReceiverProcess:
    """``python -m wallaroo.receiver ARGS`` in the background, with its port read."""

    def __init__(self, *args: str) -> None:
        """Start the receiver and read the ``listening on HOST:PORT`` line."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wallaroo.receiver", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        assert line.startswith("listening on "), line
        self.port = int(line.strip().rsplit(":", 1)[1])

    def finish(self, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
        """Wait for exit; return ``(returncode, stdout, rest of stderr)``."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"receiver did not exit: {err.decode()}")
        return self.proc.returncode, out, err


def free_port() -> int:
    """Return a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- frame / send_messages / Receiver ---------------------------------------


def test_frame() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"
    assert frame(b"xy", ">H") == b"\x00\x02xy"
    assert frame(b"z", ">Q") == b"\x00" * 7 + b"\x01z"
    assert frame(b"z", "<I") == b"\x01\x00\x00\x00z"
    with pytest.raises(ValueError):
        frame(b"x" * 70000, ">H")


def test_receiver_binary_and_empty_payloads() -> None:
    payloads = [bytes(range(256)), b"", b"\n\r\x00", b"\xff" * 3, b"", b"hello"]
    with Receiver(port=0) as rx:
        assert rx.port > 0
        assert rx.address == (HOST, rx.port)
        assert send_messages(HOST, rx.port, payloads) == len(payloads)
        assert rx.wait_for(len(payloads), timeout=5)
        assert rx.messages() == payloads
        assert rx.raw() == b"".join(frame(p) for p in payloads)
        assert rx.message_count == len(payloads)


def test_receiver_large_payload() -> None:
    big = os.urandom(1024 * 1024)
    with Receiver() as rx:
        assert send_messages(HOST, rx.port, [b"before", big, b"after"]) == 3
        assert rx.wait_for(3, timeout=5)
        assert rx.messages() == [b"before", big, b"after"]


def test_receiver_sequential_connections() -> None:
    with Receiver() as rx:
        send_messages(HOST, rx.port, [b"a1", b"a2"])
        assert rx.wait_for(2, timeout=5)
        send_messages(HOST, rx.port, [b"b1"])
        assert rx.wait_for(3, timeout=5)
        send_messages(HOST, rx.port, [])
        send_messages(HOST, rx.port, [b"c1", b"c2"])
        assert rx.wait_for(5, timeout=5)
        assert rx.messages() == [b"a1", b"a2", b"b1", b"c1", b"c2"]
        assert rx.connections == 4


def test_receiver_concurrent_connections() -> None:
    n_senders, n_messages = 4, 200
    with Receiver() as rx:

        def send(i: int) -> None:
            send_messages(HOST, rx.port, [f"{i}:{j}".encode() for j in range(n_messages)])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n_senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert rx.wait_for(n_senders * n_messages, timeout=5)
        got = rx.messages()
        assert rx.connections == n_senders
    assert len(got) == n_senders * n_messages
    for i in range(n_senders):
        mine = [m for m in got if m.startswith(f"{i}:".encode())]
        assert mine == [f"{i}:{j}".encode() for j in range(n_messages)]


@pytest.mark.parametrize("fmt", [">H", ">Q", "<I"])
def test_length_formats(fmt: str) -> None:
    payloads = [b"x" * 300, b"", b"yz"]
    with Receiver(length_fmt=fmt) as rx:
        send_messages(HOST, rx.port, payloads, length_fmt=fmt)
        assert rx.wait_for(3, timeout=5)
        assert rx.messages() == payloads
        assert rx.raw() == b"".join(frame(p, fmt) for p in payloads)


def test_receiver_raw_mode() -> None:
    with Receiver(length_fmt=None) as rx:
        send_messages(HOST, rx.port, [b"ab", b"", b"c"])
        expected = frame(b"ab") + frame(b"") + frame(b"c")
        assert rx.wait_for(len(expected), timeout=5)
        assert rx.raw() == expected
        assert rx.messages() == []
        assert not rx.wait_for(len(expected) + 1, timeout=0.05)


def test_receiver_stop_closes_port() -> None:
    rx = Receiver().start()
    port = rx.port
    rx.stop()
    with pytest.raises(OSError):
        send_messages(HOST, port, [b"x"], connect_timeout=0.2)


def test_send_retries_until_listening() -> None:
    port = free_port()
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(send_messages(HOST, port, [b"late"], connect_timeout=5))
    )
    t.start()
    time.sleep(0.3)
    with Receiver(port=port) as rx:
        t.join(5)
        assert result == [1]
        assert rx.wait_for(1, timeout=5)
        assert rx.messages() == [b"late"]


def test_send_connect_timeout() -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(OSError):
        send_messages(HOST, port, [b"x"], connect_timeout=0.3)
    assert time.monotonic() - start < 15  # the 0.3 s timeout, not the OS's minutes


# -- command lines ------------------------------------------------------------


def test_cli_end_to_end_lines_to_file(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"first\nsecond line\r\n\nlast without newline")
    out = tmp_path / "out.txt"
    rx = ReceiverProcess("--framed", "--count", "4", "--output", str(out))
    sent = run_sender("--port", str(rx.port), "--file", str(src))
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.decode().startswith("sent 4 messages, ")
    summary = sent.stderr.decode().split()
    assert summary[3] == str(4 * 4 + len(b"firstsecond linelast without newline"))
    code, stdout, _ = rx.finish()
    assert code == 0
    assert stdout == b""
    assert out.read_bytes() == b"first\nsecond line\n\nlast without newline\n"


def test_cli_repeat_to_stdout(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\nb\n")
    rx = ReceiverProcess("--listen", "127.0.0.1:0", "--framed", "--count", "6")
    sent = run_sender("--to", f"127.0.0.1:{rx.port}", "--file", str(src), "--repeat", "3")
    assert sent.returncode == 0, sent.stderr
    code, stdout, _ = rx.finish()
    assert code == 0
    assert stdout == b"a\nb\n" * 3


def test_cli_limit(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"".join(b"m%d\n" % i for i in range(10)))
    with Receiver() as rx:
        sent = run_sender(
            "--port", str(rx.port), "--file", str(src), "--repeat", "2", "--limit", "13"
        )
        assert sent.returncode == 0, sent.stderr
        assert b"sent 13 messages" in sent.stderr
        assert rx.wait_for(13, timeout=5)
        time.sleep(0.05)
        assert rx.messages() == [b"m%d" % i for i in range(10)] + [b"m0", b"m1", b"m2"]


def test_cli_gz_input(tmp_path: Path) -> None:
    src = tmp_path / "in.txt.gz"
    lines = [b"line %d \xe2\x98\x83" % i for i in range(100)]
    with gzip.open(src, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    with Receiver() as rx:
        sent = run_sender("--port", str(rx.port), "--file", str(src))
        assert sent.returncode == 0, sent.stderr
        assert rx.wait_for(100, timeout=5)
        assert rx.messages() == lines


def test_cli_framed_mode(tmp_path: Path) -> None:
    payloads = [b"\x00\x01binary", b"", b"x" * 1000, b"tail\n"]
    src = tmp_path / "in.bin"
    src.write_bytes(b"".join(frame(p, ">H") for p in payloads))
    out = tmp_path / "out.bin"
    rx = ReceiverProcess(
        "--framed", "--length-fmt", ">H", "--count", "8", "--no-newline", "--output", str(out)
    )
    sent = run_sender(
        "--port",
        str(rx.port),
        "--file",
        str(src),
        "--mode",
        "framed",
        "--length-fmt",
        ">H",
        "--repeat",
        "2",
    )
    assert sent.returncode == 0, sent.stderr
    assert b"sent 8 messages" in sent.stderr
    code, _, _ = rx.finish()
    assert code == 0
    assert out.read_bytes() == src.read_bytes() * 2


def test_cli_framed_mode_truncated_input(tmp_path: Path) -> None:
    src = tmp_path / "bad.bin"
    src.write_bytes(frame(b"ok") + b"\x00\x00\x00\x09abc")
    with Receiver() as rx:
        sent = run_sender("--port", str(rx.port), "--file", str(src), "--mode", "framed")
        assert sent.returncode == 1
        assert b"inside a frame" in sent.stderr


def test_cli_stdin_raw_mode_and_bytes() -> None:
    data = bytes(range(256)) * 4
    rx = ReceiverProcess("--bytes", str(len(data) * 2))
    sent = run_sender("--port", str(rx.port), "--mode", "raw", "--repeat", "2", stdin=data)
    assert sent.returncode == 0, sent.stderr
    assert b"sent 2 messages, 2048 bytes" in sent.stderr
    code, stdout, _ = rx.finish()
    assert code == 0
    assert stdout == data * 2


def test_cli_stdin_lines_rate() -> None:
    with Receiver() as rx:
        start = time.monotonic()
        sent = run_sender("--port", str(rx.port), "--rate", "50", stdin=b"a\nb\nc\nd\ne\n")
        elapsed = time.monotonic() - start
        assert sent.returncode == 0, sent.stderr
        assert rx.wait_for(5, timeout=5)
        assert rx.messages() == [b"a", b"b", b"c", b"d", b"e"]
        assert elapsed >= 4 / 50


def test_cli_receiver_several_connections_and_raw_output(tmp_path: Path) -> None:
    out = tmp_path / "raw.bin"
    first = frame(b"one") + frame(b"two")
    second = frame(b"three")
    rx = ReceiverProcess("--output", str(out), "--bytes", str(len(first) + len(second)))
    send_messages(HOST, rx.port, [b"one", b"two"])
    time.sleep(0.1)
    send_messages(HOST, rx.port, [b"three"])
    code, _, _ = rx.finish()
    assert code == 0
    assert out.read_bytes() == first + second


def test_cli_receiver_count_stops_exactly(tmp_path: Path) -> None:
    rx = ReceiverProcess("--framed", "--count", "2")
    send_messages(HOST, rx.port, [b"1", b"2", b"3", b"4"])
    code, stdout, _ = rx.finish()
    assert code == 0
    assert stdout == b"1\n2\n"


def test_cli_receiver_timeout() -> None:
    rx = ReceiverProcess("--framed", "--count", "5", "--timeout", "0.5")
    send_messages(HOST, rx.port, [b"only", b"two"])
    code, stdout, err = rx.finish()
    assert code == 1
    assert stdout == b"only\ntwo\n"
    assert b"no data for 0.5 seconds" in err


def test_cli_sender_cannot_connect() -> None:
    sent = run_sender("--port", str(free_port()), "--connect-timeout", "0.3", stdin=b"x\n")
    assert sent.returncode == 1
    assert b"cannot connect" in sent.stderr


def test_cli_header_struct_matches_decoder() -> None:
    # A Wallaroo decoder(header_length=4, length_fmt=">I") reads what the sender writes.
    with Receiver(length_fmt=None) as rx:
        run_sender("--port", str(rx.port), stdin=b"payload\n")
        assert rx.wait_for(11, timeout=5)
        raw = rx.raw()
    (size,) = struct.unpack(">I", raw[:4])
    assert raw[4 : 4 + size] == b"payload"
