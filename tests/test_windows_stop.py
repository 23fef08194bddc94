"""Stopping a run (SIGTERM / Ctrl-C) that has windows open.

Without ``-r`` no later run can go on from the open windows, so a stop fires
them like the end of a bounded source (the README promises that a stopped run
delivered every record it read). With ``-r`` they stay open in the last
snapshot and the next run goes on with them."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent / "apps" / "sliding_sums_06.py"


def _send_and_stop(tcp_app, rx, readings: list, *args: str) -> None:
    """Run the app, send ``readings`` over one connection, wait until the
    source has read them all (the peer closed), then SIGTERM it."""
    from wallaroo.sender import send_messages

    with tcp_app(APP, "--in", "127.0.0.1:0", "--out", f"127.0.0.1:{rx.port}", *args) as app:
        ((_, _, in_port),) = app.listening()
        payloads = [f"{name},{value}".encode() for name, value in readings]
        assert send_messages("127.0.0.1", in_port, payloads) == len(readings)
        deadline = time.monotonic() + 60
        while "closed by the peer" not in app.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "closed by the peer" in app.stderr, app.stderr


def _sums(messages: list) -> dict:
    got: dict = defaultdict(int)
    for message in messages:
        name, total = message.decode().split(",")
        got[name] += int(total)
    return dict(got)


@pytest.mark.timeout(120)
def test_a_stop_without_resilience_fires_the_open_windows(tcp_app):
    from wallaroo.receiver import Receiver

    rng = random.Random(5)
    readings = [(f"s{rng.randrange(3)}", rng.randrange(1, 10)) for _ in range(300)]
    expected: dict = defaultdict(int)
    for name, value in readings:
        expected[name] += 3 * value  # 30 s windows sliding by 10 s: 3 windows each
    with Receiver(length_fmt=">I") as rx:
        _send_and_stop(tcp_app, rx, readings)
        # The windows (30 s + 5 s delay, 140 s of quiet input before the
        # timer fires them) came out because of the stop, before the exit.
        assert _sums(rx.messages()) == dict(expected)


@pytest.mark.timeout(120)
def test_a_stop_with_resilience_keeps_the_open_windows_for_the_next_run(tcp_app, tmp_path):
    from wallaroo.receiver import Receiver

    first = [("a", 1), ("b", 2), ("a", 3)]
    second = [("a", 10), ("b", 20)]
    snapshots = tmp_path / "snapshots"
    with Receiver(length_fmt=">I") as rx:
        _send_and_stop(tcp_app, rx, first, "-r", str(snapshots))
        # Only the empty window before each key's first record fired (0.6.1
        # outputs empty windows too); the records' windows are open, in the
        # last snapshot.
        assert set(_sums(rx.messages()).values()) == {0}
        _send_and_stop(tcp_app, rx, second, "-r", str(snapshots))
        assert set(_sums(rx.messages()).values()) == {0}
