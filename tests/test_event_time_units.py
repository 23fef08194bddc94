"""Event-time windows as a 0.6 user writes them: float seconds from the
timestamp extractor, late events in the dead-letter file; and an extractor
that returns int seconds (read as nanoseconds, a date in 1970) is warned of."""

from __future__ import annotations

import ast
import base64
import json
import random
from pathlib import Path

APP = Path(__file__).resolve().parent / "apps" / "click_windows_06.py"
T0 = 1_700_000_000
LATE = {50, 120, 180}


def _events(path: Path, as_int: bool) -> list:
    rng = random.Random(3)
    events, t = [], float(T0)
    for i in range(200):
        t += rng.uniform(0, 1)
        # A few events come 30 s behind the others: late.
        stamp = t - 30 if i in LATE else t
        events.append({"id": i, "page": rng.choice("ab"), "t": int(stamp) if as_int else stamp})
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


def _expected(events: list) -> tuple:
    """Windows and late ids computed directly: one source, so the watermark is
    the newest event time before each event; a window [s, s + 10) has fired
    once the watermark reached s + 10 + 2."""
    windows: dict = {}
    late, mark = [], None
    for e in events:
        start = int(e["t"] // 10) * 10
        if mark is not None and mark >= start + 12:
            late.append(e["id"])
        else:
            windows.setdefault((e["page"], start * 10**9), []).append(e["id"])
        mark = e["t"] if mark is None else max(mark, e["t"])
    return {k: sorted(v) for k, v in windows.items()}, late


def test_float_seconds_place_events_on_the_epoch_grid_and_late_ones_are_kept(run_app, tmp_path):
    events = _events(tmp_path / "clicks.jsonl", as_int=False)
    output, dead = tmp_path / "windows.jsonl", tmp_path / "dead.jsonl"
    result = run_app(
        APP, "--input", str(tmp_path / "clicks.jsonl"), "--output", str(output),
        "--dead-letter", str(dead),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    windows, late = _expected(events)
    assert sorted(late) == sorted(LATE)
    got = {(w["page"], w["start"]): w["ids"] for w in map(json.loads, output.open())}
    assert got == windows
    kept = [json.loads(line) for line in dead.open()]
    # The dead-letter file keeps the event's repr (base64).
    ids = [ast.literal_eval(base64.b64decode(d["payload_base64"]).decode())["id"] for d in kept]
    assert sorted(ids) == sorted(LATE)
    assert all(d["kind"] == "late_event" for d in kept)
    assert "read as nanoseconds" not in result.stderr


def test_an_int_of_seconds_from_the_extractor_is_warned_of(run_app, tmp_path):
    _events(tmp_path / "clicks.jsonl", as_int=True)
    output = tmp_path / "windows.jsonl"
    result = run_app(APP, "--input", str(tmp_path / "clicks.jsonl"), "--output", str(output))
    assert result.returncode == 0, result.stderr
    # 1700000000 ns is 1.7 s after the epoch: every event lands in [0, 10 s).
    assert {json.loads(line)["start"] for line in output.open()} == {0}
    warnings = [line for line in result.stderr.splitlines() if "read as nanoseconds" in line]
    assert len(warnings) == 1, result.stderr
    assert "1970-01-01T00:00:01.7" in warnings[0] and "float seconds" in warnings[0]
