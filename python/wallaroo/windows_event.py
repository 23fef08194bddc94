"""Event-time range windows: the run time of ``with_event_time`` (see
:mod:`wallaroo.windows` for the API and the semantics).

A stage places each record by the time its extractor reads from it and fires
a key's windows when the stage's watermark (per source partition the newest
event time seen; the minimum over the partitions heard from within the idle
timeout) passes their end plus the allowed lateness. A record whose windows
have all fired is late: the engine keeps it as bad input (``late_event``).
"""

from __future__ import annotations

import datetime
import heapq
import logging
import math
import time
from typing import Any, Callable

from wallaroo.windows import (
    _STAGES,
    KeyWindows,
    RangeStage,
    RangeWindows,
    TimestampExtractor,
)

_log = logging.getLogger("wallaroo.windows")


def event_ns(value: Any) -> int:
    """An event time as integer nanoseconds since the epoch: int (ns), float
    (seconds), ``datetime`` (naive: UTC) or an ISO 8601 string."""
    if isinstance(value, bool):
        raise TypeError(f"an event time cannot be a bool ({value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value * 1e9)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        value = datetime.datetime.fromisoformat(text)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1000_000_000 + delta.microseconds * 1000
    raise TypeError(
        "an event time must be int nanoseconds, float seconds, a datetime or an ISO 8601 "
        f"string, got {value!r:.100}"
    )


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
#: Event times below this (ns, 1973-03-03) were most likely meant as seconds,
#: milliseconds or microseconds since the epoch.
_SECONDS_AS_NS = 10**17


def _iso(ns: int | None) -> str:
    if ns is None:
        return "none yet"
    stamp = _EPOCH + datetime.timedelta(microseconds=ns // 1000)
    return f"{stamp.isoformat().replace('+00:00', 'Z')} ({ns} ns)"


class EventRangeStage(RangeStage):
    """Range windows on event time, fired by watermarks (see the module docs).

    ``table`` maps a source partition ``(source, reader worker, stream)`` to
    ``[newest event time, last heard, active]``: last heard is wall-clock ns,
    or None for "since the last tick" (records do not read the clock; the
    timer stamps them), and active is whether the partition was heard from
    within the idle timeout at the last tick (or sent since). The watermark
    ``mark`` is the minimum newest time over the active partitions, or the
    maximum over all when none is active; it never goes back. A record only
    recomputes it when its partition is new, was idle, or was the slowest
    one and passed the second slowest.

    Per key (``KeyWindows``): ``due`` is the start of the earliest window
    holding data and not fired (None: no data). A window has fired once the
    watermark passed its end (plus the allowed lateness), or, after the final
    flush, when it starts before ``fired_to``. The timer finds the keys with due
    windows in ``buckets`` (window start -> the keys' ``KeyWindows``, starts in
    the heap ``starts``) instead of scanning every key.
    """

    fire_empty = False
    kind = "event_time"

    def __init__(
        self,
        spec: RangeWindows,
        key_of: Callable[[Any], Any],
        feeders: int,
        stage_id: str,
    ) -> None:
        super().__init__(spec, key_of, feeders)
        #: The allowed lateness, exact (ingest time rounds the delay up to the slide).
        self.delay = spec.delay
        self.stage_id = stage_id
        extractor = spec.event_time
        if isinstance(extractor, TimestampExtractor):
            self.extract = extractor._func  # one Python call less per record
        else:
            self.extract = getattr(extractor, "extract_timestamp", extractor)
        self.idle_timeout = spec.idle_timeout
        self.window_output = getattr(self.agg, "output_window", None)
        self.table: dict = {}
        #: The watermark (None before any record); never goes back.
        self.mark: int | None = None
        #: The active partition whose newest time is the watermark (None: none active).
        self.slowest: list | None = None
        #: The second lowest newest time over the active partitions (or above).
        self.runner_up: float = math.inf
        #: Window start -> the windows (``KeyWindows``) of the keys whose ``due``
        #: was that start; the starts in a heap. The timer reaches a key's
        #: windows from here without looking its key up; a key that left is
        #: never found here (a different count of keys rebuilds the buckets).
        self.buckets: dict = {}
        self.starts: list = []
        #: Keys this stage knows of (a different count rebuilds the buckets).
        self.indexed = 0
        #: Keys arrived other than by a record (restore, hand-over): rebuild.
        self.reindex = False
        self.steps: dict = {}
        #: Whether the stage said that its first event time looked like seconds.
        self.warned_unit = False
        _STAGES[stage_id] = self

    def new_state(self) -> KeyWindows:
        return KeyWindows(self.stage_id)

    # -- watermarks ---------------------------------------------------------

    @property
    def partitions(self) -> dict:
        """Source partition -> the newest event time seen on it."""
        return {partition: entry[0] for partition, entry in self.table.items()}

    @property
    def floor(self) -> int | None:
        """The highest watermark so far (the watermark itself: it never goes back)."""
        return self.mark

    def learn(self, partitions: dict, floor: int | None) -> None:
        """Take the newer of ours and those of a snapshot, per partition; they
        count as heard from now."""
        table = self.table
        for partition, newest in partitions.items():
            entry = table.get(partition)
            if entry is None:
                table[partition] = [newest, None, True]
            elif newest > entry[0]:
                entry[0] = newest
                entry[1] = None
                entry[2] = True
        if floor is not None and (self.mark is None or floor > self.mark):
            self.mark = floor
        self._recompute()

    def share(self) -> dict:
        """For the other workers (sent with each timer tick, see
        :meth:`learn_shared`): source partition -> ``(newest event time, last
        heard)``, last heard in wall-clock ns."""
        now = time.time_ns()
        return {
            partition: (entry[0], now if entry[1] is None else entry[1])
            for partition, entry in self.table.items()
        }

    def learn_shared(self, shared: dict) -> None:
        """What another worker's stage shared: per partition the newer event
        time and the later time heard of (what it heard itself or learned: an
        echo changes nothing, so a partition idle everywhere goes idle here
        too). Each worker thus holds back its watermark for every partition
        that any worker heard from, not only those reaching its own keys; the
        timer's :meth:`watermark` then decides activity and the watermark."""
        table = self.table
        for partition, (newest, heard) in shared.items():
            entry = table.get(partition)
            if entry is None:
                table[partition] = [newest, heard, False]
                continue
            if newest > entry[0]:
                entry[0] = newest
            if entry[1] is not None and heard > entry[1]:
                entry[1] = heard

    def _join(self, partition: tuple, t: int) -> list:
        """A record of a partition new to the stage or idle until now: its entry."""
        entry = self.table.get(partition)
        if entry is None:
            if 0 <= t < _SECONDS_AS_NS and not self.warned_unit:
                self._warn_unit(t)
            entry = self.table[partition] = [t, None, True]
        else:
            if t > entry[0]:
                entry[0] = t
            entry[1] = None
            entry[2] = True
        self._recompute()
        return entry

    def _warn_unit(self, t: int) -> None:
        """Say once that an event time reads as a date in 1970-1973: an int is
        nanoseconds, and epoch seconds or milliseconds are a common mistake."""
        self.warned_unit = True
        stage, pipelines, step, _ = self.labels
        _log.warning(
            "window stage %s of pipeline %s: the first event time of a source is %s: "
            "the timestamp extractor's int is read as nanoseconds since the epoch; "
            "return float seconds (or seconds * 10**9) if it gave seconds or milliseconds",
            step or stage, "+".join(pipelines), _iso(t),
        )  # fmt: skip

    def _recompute(self) -> None:
        """The watermark from the table (activity as of the last tick)."""
        active = sorted((e for e in self.table.values() if e[2]), key=_newest)
        if active:
            self.slowest = active[0]
            self.runner_up = active[1][0] if len(active) > 1 else math.inf
            mark = active[0][0]
        elif self.table:
            self.slowest, self.runner_up = None, math.inf
            mark = max(e[0] for e in self.table.values())
        else:
            return
        if self.mark is None or mark > self.mark:
            self.mark = mark

    def watermark(self, now: int) -> int | None:
        """The stage's watermark at wall-clock ``now`` (None before any record):
        partitions that sent since the last call count as heard at ``now``;
        those silent longer than the idle timeout stop holding it back."""
        idle = self.idle_timeout
        for entry in self.table.values():
            if entry[1] is None:
                entry[1] = now
            entry[2] = now - entry[1] <= idle
        self._recompute()
        return self.mark

    def watermarks(self) -> tuple:
        """``(watermark, [(source, reader, stream, newest, idle), ...])``,
        idleness as of the last tick."""
        partitions = [
            (source, reader, stream, entry[0], not entry[2])
            for (source, reader, stream), entry in self.table.items()
        ]
        return (self.mark, partitions)

    def limit(self, watermark: int | None) -> int | None:
        """Windows ending before this are due (None: nothing is)."""
        return None if watermark is None else watermark - self.delay + 1

    # -- records ------------------------------------------------------------

    def process(  # type: ignore[override]
        self,
        data: Any,
        windows: KeyWindows,
        origin: tuple = (0, 0),
        key_of: Any = None,
        source: str = "",
    ) -> tuple:
        """The engine's state step (``origin``: the record's reader worker and
        stream): see :meth:`step_for`."""
        return self.step_for(source, key_of)(data, windows, origin)

    def step_for(
        self, source: str, key_of: Any = None
    ) -> Callable[[Any, KeyWindows, tuple], tuple]:
        """The state step for the records of ``source``: ``step(data, windows,
        origin)`` adds ``data`` at its event time and fires what is due; a late
        record comes back as the third item, for the engine to keep. One
        closure per source, everything it reads bound once."""
        step = self.steps.get((source, key_of))
        if step is not None:
            return step
        stage = self
        #: origin -> the table's entry of partition (source, *origin).
        entries: dict = {}
        extract = self.extract
        update = self.agg.update
        initial = self.agg.initial_accumulator
        wrange, slide, pane, delay = self.range, self.slide, self.pane, self.delay
        grid = pane == slide and wrange % slide == 0
        buckets, index = self.buckets, self._index
        begin = self._begin
        fire = self._fire
        nothing = ((), True)
        dropped = (None, False)

        def step(data: Any, windows: KeyWindows, origin: tuple) -> tuple:
            if data is None:
                return dropped  # a decoder's None (see ``plan._none_guard``)
            t = extract(data)
            if type(t) is not int:
                t = event_ns(t)
            entry = entries.get(origin)
            if entry is None or not entry[2]:
                entry = entries[origin] = stage._join((source, *origin), t)
            else:
                entry[1] = None
                if t > entry[0]:
                    entry[0] = t
                    if entry is stage.slowest:
                        if t <= stage.runner_up:
                            if t > stage.mark:
                                stage.mark = t
                        else:
                            stage._recompute()
            behind = stage.mark - delay
            if not windows.started:
                begin(windows, data, key_of)
            result = nothing
            due = windows.due
            if due is not None and due + wrange <= behind:
                outs: list = []
                fire(windows, behind + 1, outs)
                result = (outs, True)
                due = windows.due
                if due is not None:
                    index(due, windows)
            if grid:
                # The pane is the slide and the range a multiple of it: one division.
                at = t // slide * slide
                first = at - wrange + slide
            else:
                at = t // pane * pane
                first = ((t - wrange) // slide + 1) * slide
            fired_to = windows.fired_to
            if t < behind or (fired_to is not None and fired_to > first):
                # Behind the watermark: its earliest windows may have fired.
                open_from = ((behind - wrange) // slide + 1) * slide
                if fired_to is not None and fired_to > open_from:
                    open_from = fired_to
                if t // slide * slide < open_from:
                    return (result[0], True, stage._late(windows, t))
                if first < open_from:
                    first = open_from
            # One pane is held flat (``at``, ``acc``), more in ``panes``.
            one = windows.at
            if one is None:
                panes = windows.panes
                acc = panes.get(at) if panes else None
            elif one == at:
                panes = None
                acc = windows.acc
            else:
                # A second pane: both go to ``panes``.
                panes = windows.panes
                panes[one] = windows.acc
                windows.at = windows.acc = None
                acc = None
            fresh = acc is None
            try:
                if fresh:
                    acc = initial()
                    returned = update(data, acc)  # stage._first_update, inline
                    if returned is not None:
                        stage._returned(returned, acc)
                else:
                    update(data, acc)
            except BaseException as err:
                # A step error: a new pane is not opened (a window whose only
                # records failed is a window without records). Windows fired
                # above left the state: the engine sends them on first.
                if result is not nothing:
                    err._wallaroo_fired = result[0]  # type: ignore[attr-defined]
                raise
            if fresh:
                # It opens the windows holding it from `first` on that hold no
                # other pane (inline: most keys have none or one).
                top = at - at % slide
                if panes:
                    low = first
                    for other in panes:
                        if other < at:
                            if other >= low:
                                low = (other // slide + 1) * slide
                        elif other - wrange < top:
                            top = (other - wrange) // slide * slide
                    if top >= low:
                        stage.open_windows += (top - low) // slide + 1
                    panes[at] = acc
                else:
                    stage.open_windows += (top - first) // slide + 1
                    windows.at = at
                    windows.acc = acc
            if due is None or first < due:
                windows.due = first
                bucket = buckets.get(first)
                if bucket is None:
                    index(first, windows)
                else:
                    bucket.append(windows)
            return result

        step.none_safe = True  # type: ignore[attr-defined]
        self.steps[(source, key_of)] = step
        return step

    def _begin(self, windows: KeyWindows, data: Any, key_of: Any) -> None:
        """The first record of a key (no identity accumulator is kept: a
        window's fold starts from a fresh ``initial_accumulator()``)."""
        windows.started = True
        self.keys += 1
        windows.key = (key_of or self.key_of)(data)
        windows.fired_to = windows.due = None
        self.indexed += 1

    def _late(self, windows: KeyWindows, t: int) -> str:
        self.late += 1
        return (
            f"late event of key {windows.key!r:.100}: event time {_iso(t)}; its windows "
            f"have fired (watermark {_iso(self.mark)}, allowed lateness {self.delay} ns)"
        )

    # -- firing -------------------------------------------------------------

    def _index(self, start: int, windows: KeyWindows) -> None:
        """Note that the timer must look at a key's ``windows`` once windows from
        ``start`` are due."""
        bucket = self.buckets.get(start)
        if bucket is None:
            self.buckets[start] = [windows]
            heapq.heappush(self.starts, start)
        else:
            bucket.append(windows)

    def _fire(self, windows: KeyWindows, limit: int | None, outs: list) -> None:
        """Fire the windows of one key that hold data and end before ``limit``
        (None: every one), oldest first; windows without data are skipped."""
        wrange, slide = self.range, self.slide
        combine, output, window_output = self.agg.combine, self.agg.output, self.window_output
        initial = self.agg.initial_accumulator
        key = windows.key
        start = windows.due
        fired = 0
        at = windows.at
        if at is not None:
            # One pane (the common case): the windows holding it, from ``due``
            # (see ``tick`` for the accumulator each one gets).
            acc = windows.acc
            stop = last = at - at % slide
            if limit is not None and limit - 1 - wrange < last:
                stop = limit - 1 - wrange
            while start <= stop:
                window = acc if start == last else combine(initial(), acc)
                if window_output is None:
                    out = output(key, window)
                else:
                    out = window_output(key, window, start, start + wrange)
                if out is not None:
                    outs.append(out)
                fired += 1
                start += slide
            left = start <= last
            if not left:
                windows.at = windows.acc = None
        else:
            panes = windows.panes
            held = sorted(panes)
            count = len(held)
            lo = 0
            while limit is None or start + wrange < limit:
                end = start + wrange
                acc = initial()
                i = lo
                while i < count and held[i] < end:
                    acc = combine(acc, panes[held[i]])
                    i += 1
                if window_output is None:
                    out = output(key, acc)
                else:
                    out = window_output(key, acc, start, end)
                if out is not None:
                    outs.append(out)
                fired += 1
                start += slide
                # Panes before the next window start are in no window left.
                while lo < count and held[lo] < start:
                    del panes[held[lo]]
                    lo += 1
                if lo == count:
                    break
                first = ((held[lo] - wrange) // slide + 1) * slide
                if first > start:
                    start = first
            left = lo < count
            if len(panes) == 1:
                windows.at, windows.acc = panes.popitem()  # flat again
        self.fired += fired
        self.open_windows -= fired
        windows.due = start if left else None
        if limit is None:
            # The final flush: every window has fired. (Otherwise the
            # watermark, which never goes back, tells which windows have.)
            windows.fired_to = start

    def tick(self, states: dict, final: bool) -> tuple | None:
        """Fire the windows the watermark made due (``final``: every window once
        all sources feeding the stage ended). Returns ``(keys, outputs)``: the
        keys whose windows fired (their state changed) and all the outputs, in
        order (flat: no list and pair per key), or None when none fired. Keys
        come from the
        buckets of due windows, rebuilt when keys arrived other than by a
        record (a restore, a hand-over) or left."""
        if final:
            if not self._ended():
                return None
            return self._flush(states)
        limit = self.limit(self.watermark(time.time_ns()))
        if limit is None:
            return None
        if self.reindex or len(states) != self.indexed:
            self.buckets.clear()  # in place: the steps hold them
            self.starts.clear()
            for windows in states.values():
                if windows.started and windows.due is not None:
                    self._index(windows.due, windows)
            self.indexed = len(states)
            self.reindex = False
        bound = self.first_start(limit - 1)
        keys: list = []
        outs: list = []
        changed, emit = keys.append, outs.append
        starts, buckets = self.starts, self.buckets
        slide, wrange = self.slide, self.range
        stop = limit - 1 - wrange
        combine, output, window_output = self.agg.combine, self.agg.output, self.window_output
        initial = self.agg.initial_accumulator
        fired = 0
        while starts and starts[0] < bound:
            start = heapq.heappop(starts)
            for windows in buckets.pop(start):
                if windows.due != start:
                    continue  # fired on one of its records since
                key = windows.key
                changed(key)
                at = windows.at
                if at is None:
                    self._fire(windows, limit, outs)
                    due = windows.due
                    if due is None:
                        continue
                else:
                    # One pane (the common case, as in ``_fire``), inline. Its
                    # last window (``last``: the pane is dropped after it)
                    # gets its accumulator itself; each earlier one the fold
                    # of the pane onto a fresh identity (``combine``), as the
                    # pane may still change and what ``output`` returned may
                    # be kept downstream.
                    acc = windows.acc
                    last = at - at % slide
                    due = start
                    end = stop if stop < last else last
                    while due <= end:
                        window = acc if due == last else combine(initial(), acc)
                        if window_output is None:
                            out = output(key, window)
                        else:
                            out = window_output(key, window, due, due + wrange)
                        if out is not None:
                            emit(out)
                        fired += 1
                        due += slide
                    if due > last:
                        windows.due = windows.at = windows.acc = None
                        continue
                    windows.due = due
                bucket = buckets.get(due)
                if bucket is None:
                    self._index(due, windows)
                else:
                    bucket.append(windows)
        self.fired += fired
        self.open_windows -= fired
        return (keys, outs) if keys else None

    def _flush(self, states: dict) -> tuple:
        """The final flush: every window holding data fires, as ``(keys, outputs)``."""
        keys: list = []
        outs: list = []
        for key, windows in states.items():
            if windows.started and windows.due is not None:
                keys.append(key)
                self._fire(windows, None, outs)
        return (keys, outs) if keys else None

    def _open_of(self, windows: KeyWindows, start: int | None = None) -> int:
        # Windows before the earliest one holding data and not fired hold none.
        if windows.due is None:
            return 0
        panes = windows.panes if windows.at is None else {windows.at: windows.acc}
        return super()._open_of(windows, windows.due, panes)

    def fire(self, windows: KeyWindows, now: int, flush: bool, outs: list) -> bool:
        """``now`` is the fire limit here (see ``tick``)."""
        if windows.due is None:
            return False
        self._fire(windows, None if flush else now, outs)
        return True


def _newest(entry: list) -> int:
    return entry[0]
