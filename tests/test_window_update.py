"""An aggregation whose ``update`` returns a new accumulator (``return acc +
x`` on an int) adds up to nothing, as in 0.6.1, which ignored the result too:
each window stage says so once in the log; an ``update`` that changes the
accumulator in place (returning nothing, or the accumulator) is not warned of."""

from __future__ import annotations

import base64
import json
import logging

import pytest
import wallaroo
from conftest import APPS_DIR
from wallaroo import windows as win
from wallaroo import windows_event as wev


class IntSum(wallaroo.Aggregation):
    def initial_accumulator(self):
        return 0

    def update(self, data, acc):
        return acc + data[1]

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return (key, acc)


class ListSum(IntSum):
    def initial_accumulator(self):
        return [0]

    def update(self, data, acc):
        acc[0] += data[1]
        return acc  # the same accumulator: fine

    def combine(self, a, b):
        return [a[0] + b[0]]


@wallaroo.timestamp_extractor
def _t(data):
    return data[1] * 10**9 + 10**18


def _stages(agg):
    yield win.RangeStage(wallaroo.range_windows(100).over(agg), lambda d: d[0], 1)
    yield win.CountStage(wallaroo.count_windows(2).over(agg), lambda d: d[0], 1)
    spec = wallaroo.range_windows(10**10).with_event_time(_t).over(agg)
    yield wev.EventRangeStage(spec, lambda d: d[0], 1, f"test/update/{agg.__name__}")


def _run(stage, records):
    states: dict = {}
    for record in records:
        state = states.setdefault(record[0], stage.new_state())
        if isinstance(stage, wev.EventRangeStage):
            stage.process(record, state, (0, 0), source="src")
        else:
            stage.process(record, state)


@pytest.mark.parametrize("kind", ["ingest", "count", "event"])
def test_an_update_returning_a_new_accumulator_is_warned_of_once(caplog, kind):
    stage = dict(zip(["ingest", "count", "event"], _stages(IntSum)))[kind]
    with caplog.at_level(logging.WARNING, logger="wallaroo.windows"):
        _run(stage, [("a", 2), ("b", 3), ("a", 4), ("c", 5)])
    warnings = [r.getMessage() for r in caplog.records if "update()" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "aggregation IntSum: update() returned 2, which is not used" in warnings[0]
    assert "in place" in warnings[0]


@pytest.mark.parametrize("kind", ["ingest", "count", "event"])
def test_an_update_changing_the_accumulator_in_place_is_not_warned_of(caplog, kind):
    stage = dict(zip(["ingest", "count", "event"], _stages(ListSum)))[kind]
    with caplog.at_level(logging.WARNING, logger="wallaroo.windows"):
        _run(stage, [("a", 2), ("b", 3), ("a", 4), ("c", 5)])
    assert not [r for r in caplog.records if "update()" in r.getMessage()]


# -- an update that raises (a step error, skipped under --on-error skip) -----


class Ids(wallaroo.Aggregation):
    """Ids per window; ``update`` raises on the id ``bad``."""

    def initial_accumulator(self):
        return []

    def update(self, data, acc):
        if data[1] == "bad":
            raise ValueError("cannot count bad")
        acc.append(data[1])

    def combine(self, a, b):
        return a + b

    def output(self, key, acc):
        return (key, sorted(acc))


def _fails(step, *args):
    with pytest.raises(ValueError, match="cannot count bad"):
        step(*args)


def test_ingest_time_a_key_whose_first_record_failed_has_no_windows(monkeypatch):
    """The key's only record failed: like a key no record came for, it outputs
    nothing (not empty windows as a started key does, 0.6.1's ingest time)."""
    now = [1000]
    monkeypatch.setattr(win.time, "time_ns", lambda: now[0])
    stage = win.RangeStage(wallaroo.range_windows(10).over(Ids), lambda d: d[0], 1)
    state = stage.new_state()
    _fails(stage.process, ("a", "bad"), state)
    assert not state.started and state.panes == {} and stage.open_windows == 0
    assert stage._fire_all({"a": state}, 5000, True) is None  # no key fired
    now[0] = 1003  # its next record starts its windows then
    assert stage.process(("a", "1"), state) == ([], True)
    assert state.started and state.next_start == 1003 - 10


def test_ingest_time_a_window_whose_only_records_failed_is_an_empty_window(monkeypatch):
    """0.6.1's ingest-time windows output when empty: a window whose only
    record failed outputs what an empty window does, and opened no window."""
    now = [1000]
    monkeypatch.setattr(win.time, "time_ns", lambda: now[0])
    stage = win.RangeStage(wallaroo.range_windows(10).over(Ids), lambda d: d[0], 1)
    state = stage.new_state()
    assert stage.process(("a", "1"), state) == ([], True)  # window [1000, 1010)
    assert stage.open_windows == 1
    now[0] = 1012
    _fails(stage.process, ("a", "bad"), state)  # window [1010, 1020): only it
    assert stage.open_windows == 1 and list(state.panes) == [1000]
    now[0] = 1029
    assert stage.process(("a", "2"), state) == (
        [("a", []), ("a", ["1"]), ("a", [])],  # [990,1000) [1000,1010) [1010,1020)
        True,
    )
    assert stage.open_windows == 1


def test_count_windows_open_no_window_for_a_failed_first_record():
    stage = win.CountStage(wallaroo.count_windows(2).over(Ids), lambda d: d[0], 1)
    state = stage.new_state()
    _fails(stage.process, ("a", "bad"), state)
    assert state.acc is None and state.count == 0 and stage.open_windows == 0
    assert stage.process(("a", "1"), state) == ([], True)
    assert stage.open_windows == 1
    _fails(stage.process, ("a", "bad"), state)
    assert stage.process(("a", "2"), state) == ([("a", ["1", "2"])], True)
    assert stage.open_windows == 0


#: 2023-11-14T22:13:20Z in ms: event times that look like the epoch's.
BASE_MS = 1_700_000_000_000


@wallaroo.timestamp_extractor
def _ms(data):
    return (BASE_MS + data[2]) * 10**6


def test_event_time_a_window_whose_only_records_failed_outputs_nothing():
    """Event-time windows output nothing without records: a window whose only
    record failed outputs nothing, and a key whose only record failed has no
    windows. Windows a failing record's arrival fired before its ``update``
    raised have left the state: they ride on the exception for the engine to
    send on (``_wallaroo_fired``)."""
    spec = wallaroo.range_windows(100 * 10**6).with_event_time(_ms).over(Ids)
    stage = wev.EventRangeStage(spec, lambda d: d[0], 1, "test/update/failing")
    states = {"a": stage.new_state(), "b": stage.new_state()}

    def step(key, ident, ms):
        return stage.process((key, ident, ms), states[key], (0, 0), source="src")

    assert step("a", "1", 10) == ((), True)
    with pytest.raises(ValueError, match="cannot count bad") as raised:
        step("a", "bad", 150)  # the watermark passes [0, 100): it fires first
    assert raised.value._wallaroo_fired == [("a", ["1"])]
    assert states["a"].panes == {} and states["a"].due is None
    assert stage.open_windows == 0
    _fails(step, "b", "bad", 160)  # b's only record
    assert states["b"].panes == {} and states["b"].due is None
    assert stage.open_windows == 0
    # The watermark passes [100, 200): nothing fires for it.
    assert step("a", "2", 330) == ((), True)
    assert stage.open_windows == 1
    assert stage.timer(states, True) == (["a"], [("a", ["2"])])
    assert stage.open_windows == 0


def test_failing_updates_are_skipped_step_errors_and_leave_no_window(run_app, tmp_path):
    """End to end with ``--on-error skip``: each record whose ``update`` raised
    is kept like any step error; no window outputs for it (event-time windows
    output nothing without records); the window its arrival fired comes out."""
    base = BASE_MS // 100 * 100
    events = tmp_path / "events.txt"
    events.write_text(
        f"a {base + 10} 1\n"
        f"a {base + 20} 2\n"
        f"a {base + 150} bad\n"  # fires a's [0, 100), then fails: [100, 200) holds nothing
        f"b {base + 160} bad\n"  # b's only record
        f"a {base + 330} 3\n"
    )
    output, dead = tmp_path / "windows.txt", tmp_path / "errors.jsonl"
    result = run_app(
        APPS_DIR / "failing_update_06.py", "--input", str(events), "--output", str(output),
        "--on-error", "skip", "--dead-letter", str(dead),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(output.read_text().splitlines()) == [f"a {base} 2:1,2", f"a {base + 300} 1:3"]
    kept = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [k["kind"] for k in kept] == ["step_error", "step_error"]
    payloads = sorted(base64.b64decode(k["payload_base64"]) for k in kept)
    assert payloads == [f"a {base + 150} bad".encode(), f"b {base + 160} bad".encode()]
    assert all("ValueError: cannot count" in k["error"] for k in kept), kept
    assert "2 skipped after errors" in result.stderr
