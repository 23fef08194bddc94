"""An aggregation whose ``update`` returns a new accumulator (``return acc +
x`` on an int) adds up to nothing, as in 0.6.1, which ignored the result too:
each window stage says so once in the log; an ``update`` that changes the
accumulator in place (returning nothing, or the accumulator) is not warned of."""

from __future__ import annotations

import logging

import pytest
import wallaroo
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
