"""Wallaroo 0.6.1 windows and aggregations.

The API: ``range_windows(r).with_slide(s).with_delay(d).over(Agg)``,
``count_windows(n).over(Agg)``, the time helpers (integer nanoseconds) and
:class:`Aggregation`.

The run time: a window stage is a keyed state step of the engine whose state
(one :class:`KeyWindows` per key) holds that key's open panes and
accumulators, so windows are snapshotted with ``-r`` and move with their key
on rescale like any state. Semantics are 0.6.1's implementation (see
WALLAROO_LATER_API.md section 3): ingest time; each key's grid starts at its
first message minus (range + delay); the window starting at ``s`` fires when
``s + range < now - delay``, on a message of its key or on a timer tick of
the engine; windows without data fire too (``output`` gets the identity
accumulator); when no input came for twice the timer period, or when every
source feeding the stage has ended, every held window fires.

Beyond 0.6 (opt-in): ``aligned_to_epoch()`` puts every window on the grid
``k * slide`` from the epoch (hourly windows start on the hour), and
``with_event_time(extractor)`` places records by the time the extractor
reads from them, fired by a watermark: per source partition the newest event
time seen, the stage's watermark the minimum over the partitions heard from
within the idle timeout (the maximum when every partition is idle). A window
``[s, e)`` fires once the watermark reaches ``e + allowed lateness``; an
event whose windows have all fired is late: the engine counts it, logs it
with its source position and keeps it like bad input (kind ``late_event``:
``--dead-letter`` file, ``/status``). The watermarks travel in every
snapshot with the keys' windows.
"""

from __future__ import annotations

import datetime
import heapq
import logging
import math
import time
from typing import Any, Callable

from wallaroo.versions import ONLY_06, Mark

_log = logging.getLogger("wallaroo.windows")

_WINDOWS_MARK = Mark("range_windows/count_windows", ONLY_06)


def _error(message: str) -> Exception:
    from wallaroo import WallarooParameterError

    return WallarooParameterError(message)


# ---------------------------------------------------------------------------
# Time units (integer nanoseconds)
# ---------------------------------------------------------------------------


def nanoseconds(x: int) -> int:
    """``x`` nanoseconds."""
    return x


def microseconds(x: int) -> int:
    """``x`` microseconds in nanoseconds."""
    return x * 1000


def milliseconds(x: int) -> int:
    """``x`` milliseconds in nanoseconds."""
    return x * 1000_000


def seconds(x: int) -> int:
    """``x`` seconds in nanoseconds."""
    return x * 1000_000_000


def minutes(x: int) -> int:
    """``x`` minutes in nanoseconds."""
    return seconds(x) * 60


def hours(x: int) -> int:
    """``x`` hours in nanoseconds."""
    return minutes(x) * 60


# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------


class Aggregation:
    """Base of aggregations: define ``initial_accumulator()``, ``update(data, acc)``
    (mutates ``acc``), ``combine(acc1, acc2)`` (returns a new accumulator) and
    ``output(key, acc)`` (the window's output, or None for none).

    Beyond 0.6: a range window calls ``output_window(key, acc, start, end)``
    instead, when the aggregation defines it (the window's bounds in ns)."""

    _api_mark = Mark("Aggregation", ONLY_06)

    def name(self) -> str:
        """The stage name: the class name."""
        return type(self).__name__

    def __call__(self, *args: Any) -> Aggregation:
        return self


_AGGREGATION_METHODS = ("name", "initial_accumulator", "update", "combine", "output")


def _validate_aggregation(agg: Any) -> None:
    for method in _AGGREGATION_METHODS:
        if not hasattr(agg, method):
            raise _error(f"Aggregation {agg!r:.100} must have method {method!r}")


def _duration(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(f"{what} must be an integer number of nanoseconds, got {value!r}")
    return value


class RangeWindows:
    """Range (tumbling or sliding) windows over an aggregation: ``Pipeline.to`` takes it."""

    _api_mark = _WINDOWS_MARK

    def __init__(
        self,
        wrange: int,
        slide: int,
        delay: int,
        agg: Any,
        options: dict | None = None,
    ) -> None:
        self.range = _duration(wrange, "range_windows range")
        self.slide = _duration(slide, "with_slide")
        self.delay = _duration(delay, "with_delay")
        if self.range <= 0 or self.slide <= 0:
            raise _error("range_windows: the range and the slide must be positive")
        if self.slide > self.range:
            raise _error(
                f"range_windows: the slide ({self.slide} ns) is longer than the range "
                f"({self.range} ns)"
            )
        if self.delay < 0:
            raise _error("range_windows: the delay cannot be negative")
        _validate_aggregation(agg)
        self.aggregation = agg
        #: The options beyond 0.6 (event_time, idle_timeout, aligned); empty for 0.6 windows.
        self.options = dict(options or {})
        self.event_time = self.options.get("event_time")
        self.idle_timeout = _duration(
            self.options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT), "with_idle_timeout"
        )
        if self.idle_timeout <= 0:
            raise _error("range_windows: the idle timeout must be positive")
        #: Windows on the grid k * slide from the epoch (event time: always).
        self.aligned = bool(self.options.get("aligned")) or self.event_time is not None


class RangeWindowsBuilder:
    """``range_windows(r)``; ``with_slide``/``with_delay`` at most once each, then ``over``."""

    _api_mark = _WINDOWS_MARK

    def __init__(self, wrange: int) -> None:
        self.range = wrange
        self.slide: int | None = None
        self.delay: int | None = None
        self.options: dict = {}

    def with_slide(self, slide: int) -> RangeWindowsBuilder:
        """Windows start every ``slide`` ns (default: the range, tumbling windows)."""
        if self.slide is not None:
            raise _error("Only call with_slide() once per window specification")
        self.slide = slide
        return self

    def with_delay(self, delay: int) -> RangeWindowsBuilder:
        """Fire each window ``delay`` ns after its end (default 0)."""
        if self.delay is not None:
            raise _error(
                "Only call with_delay() or with_allowed_lateness() once per window specification"
            )
        self.delay = delay
        return self

    def with_allowed_lateness(self, lateness: int) -> RangeWindowsBuilder:
        """Event time: how far (ns) behind the watermark an event may be and still
        count; each window fires once the watermark is that far past its end. The
        same setting as ``with_delay`` (use one of them)."""
        return self.with_delay(lateness)

    def _option(self, name: str, value: Any, call: str) -> RangeWindowsBuilder:
        if name in self.options:
            raise _error(f"Only call {call}() once per window specification")
        self.options[name] = value
        return self

    def with_event_time(self, extractor: Any) -> RangeWindowsBuilder:
        """Place records by their event time instead of their arrival:
        ``extractor`` is a ``@wallaroo.timestamp_extractor`` (or a function)
        returning the record's time: int nanoseconds since the epoch, float
        seconds, a ``datetime`` (naive: UTC) or an ISO 8601 string. Implies
        ``aligned_to_epoch()``."""
        extract = getattr(extractor, "extract_timestamp", extractor)
        if not callable(extract):
            raise _error(
                f"with_event_time: expected a timestamp extractor, got {extractor!r:.100}"
            )
        return self._option("event_time", extractor, "with_event_time")

    def with_idle_timeout(self, timeout: int) -> RangeWindowsBuilder:
        """Event time: a source partition that sent nothing for ``timeout`` ns
        (wall clock; default 10 s) stops holding the watermark back until it
        sends again."""
        return self._option("idle_timeout", timeout, "with_idle_timeout")

    def aligned_to_epoch(self) -> RangeWindowsBuilder:
        """Windows start at multiples of the slide from the epoch (hourly
        windows on the hour) instead of at each key's first record."""
        return self._option("aligned", True, "aligned_to_epoch")

    def over(self, aggregation_cls: Callable[[], Any]) -> RangeWindows:
        """The windows, aggregated by one ``aggregation_cls()`` instance."""
        slide = self.range if self.slide is None else self.slide
        delay = 0 if self.delay is None else self.delay
        return RangeWindows(self.range, slide, delay, aggregation_cls(), self.options)


class CountWindows:
    """Windows of ``count`` records per key: ``Pipeline.to`` takes it."""

    _api_mark = _WINDOWS_MARK

    def __init__(self, count: int, agg: Any) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise _error(f"count_windows: the count must be a positive int, got {count!r}")
        self.count = count
        _validate_aggregation(agg)
        self.aggregation = agg


class CountWindowsBuilder:
    """``count_windows(n)``, then ``over``."""

    _api_mark = _WINDOWS_MARK

    def __init__(self, count: int) -> None:
        self.count = count

    def over(self, aggregation_cls: Callable[[], Any]) -> CountWindows:
        """The windows, aggregated by one ``aggregation_cls()`` instance."""
        return CountWindows(self.count, aggregation_cls())


class TimestampExtractor:
    """Reads a record's event time: ``extract_timestamp(data)``."""

    _api_mark = _WINDOWS_MARK

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self._func = func
        self.__name__ = getattr(func, "__name__", "timestamp_extractor")
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__module__ = getattr(func, "__module__", __name__)

    def __call__(self, *args: Any) -> TimestampExtractor:
        return self

    def extract_timestamp(self, data: Any) -> Any:
        """The record's event time, as the decorated function returns it."""
        return self._func(data)

    def __reduce__(self) -> Any:
        import sys

        module = sys.modules.get(self.__module__)
        if module is not None and getattr(module, self.__qualname__, None) is self:
            return self.__qualname__
        return (type(self), (self._func,))


def timestamp_extractor(func: Callable[[Any], Any]) -> TimestampExtractor:
    """``@timestamp_extractor`` on ``f(data)`` returning the record's event
    time (see ``RangeWindowsBuilder.with_event_time``)."""
    if not callable(func):
        raise _error(f"timestamp_extractor: expected a function, got {func!r:.100}")
    return TimestampExtractor(func)


def range_windows(wrange: int) -> RangeWindowsBuilder:
    """Windows ``wrange`` ns long (tumbling unless ``with_slide``)."""
    return RangeWindowsBuilder(wrange)


def count_windows(count: int) -> CountWindowsBuilder:
    """Windows of ``count`` records per key."""
    return CountWindowsBuilder(count)


# ---------------------------------------------------------------------------
# Run time
# ---------------------------------------------------------------------------

#: Event time: a partition silent this long (ns) stops holding the watermark back.
DEFAULT_IDLE_TIMEOUT = 10 * 1000_000_000

#: Event-time stages of this process by state name, for watermarks that come
#: back in a snapshot or with a key's windows from another worker.
_STAGES: dict = {}


def _restore_key_windows(fields: dict) -> KeyWindows:
    """Unpickle a key's windows; watermarks travelling with them join the stage's."""
    windows = KeyWindows.__new__(KeyWindows)
    watermarks = fields.pop("watermarks", None)
    windows.__dict__.update(fields)
    stage = _STAGES.get(windows.stage)
    if stage is not None:
        stage.reindex = True  # a key the timer's buckets do not know yet
        if watermarks:
            stage.learn(*watermarks)
    return windows


class KeyWindows:
    """The windows of one key of one window stage (the engine's state object)."""

    def __init__(self, stage: str | None = None) -> None:
        self.key: Any = None
        self.started = False
        #: Event-time windows: the stage (state name) whose watermarks go along.
        self.stage = stage
        #: Range windows: start of the earliest window not fired yet.
        self.next_start = 0
        #: Range windows: every window starting before this has fired.
        self.fired_to = 0
        #: Event time: start of the earliest window holding data, not fired (None: none).
        self.due: int | None = None
        #: Range windows: pane start -> accumulator (panes with data only).
        self.panes: dict = {}
        #: Range windows: the identity accumulator of ``combine`` (made once).
        self.identity: Any = None
        #: Count windows: the accumulator and the records in it.
        self.acc: Any = None
        self.count = 0

    def __reduce__(self) -> Any:
        fields = dict(self.__dict__)
        stage = _STAGES.get(getattr(self, "stage", None))
        if stage is not None:
            # The stage's watermarks at this moment go into every snapshot
            # (and hand-over) of the key: a restore takes the newest of them.
            fields["watermarks"] = (dict(stage.partitions), stage.floor)
        return (_restore_key_windows, (fields,))


class _Stage:
    """What a window stage shares across its keys (on one worker)."""

    #: Timer period in ns; ``tick`` does nothing between periods.
    period = 0
    #: The stage's kind in the metrics.
    kind = "ingest_time"

    def __init__(self, agg: Any, key_of: Callable[[Any], Any], feeders: int) -> None:
        self.agg = agg
        self.key_of = key_of
        self.feeders = max(1, feeders)
        self.finished_feeders = 0
        self.last_input = time.time_ns()
        #: The first tick comes one period after the start.
        self.next_tick = self.last_input + self.period
        #: Metrics, plain ints handed to the engine at each timer tick
        #: (``report``): windows fired (their output computed), windows holding
        #: records that have not fired, late records, and keys started here (a
        #: different count of keys means keys arrived or left: count again).
        self.fired = 0
        self.open_windows = 0
        self.late = 0
        self.keys = 0
        #: Names in the metrics: (stage id, pipelines, step, kind); see ``label``.
        self.labels: tuple = ("", [], "", self.kind)
        #: Whether the stage said that ``update`` returned a new accumulator.
        self.warned_update = False

    def new_state(self) -> KeyWindows:
        """A key's empty windows (the engine's state class)."""
        return KeyWindows()

    def _first_update(self, data: Any, acc: Any) -> None:
        """``update`` on a fresh accumulator (once per pane or count window, not
        per record), saying once when it returned a new accumulator: Wallaroo
        uses only the one it passed in (0.6.1 did too), so an ``int`` total
        ``return acc + x`` adds up to nothing."""
        result = self.agg.update(data, acc)
        if result is not None and result is not acc and not self.warned_update:
            self.warned_update = True
            _log.warning(
                "aggregation %s: update() returned %.60r, which is not used: as in "
                "Wallaroo 0.6.1, update must change the accumulator it is given in place "
                "(an int or str accumulator cannot change: use a list or an object)",
                self.agg.name(), result,
            )  # fmt: skip

    def _output(self, key: Any, acc: Any, outs: list) -> None:
        out = self.agg.output(key, acc)
        if out is not None:
            outs.append(out)

    def label(self, stage: str, pipeline: str, step: str) -> None:
        """Name this stage in the metrics (a merged stage is in several pipelines)."""
        _, pipelines, _, _ = self.labels
        if pipeline not in pipelines:
            pipelines.append(pipeline)
        self.labels = (stage, pipelines, step, self.kind)

    def timer(self, states: dict, final: bool) -> list | None:
        """The engine's timer step: ``tick``, then hand the metrics over."""
        try:
            return self.tick(states, final)
        finally:
            self.report(states)

    def report(self, states: dict) -> None:
        """Hand this stage's metrics to the engine (once per timer tick)."""
        from wallaroo._engine import metrics_windows

        if len(states) != self.keys:
            # Keys came back from a snapshot, or moved in or out: count again.
            self.open_windows = sum(self._open_of(w) for w in states.values())
            self.keys = len(states)
        stage, pipelines, step, kind = self.labels
        watermark, partitions = self.watermarks()
        metrics_windows(
            stage, "+".join(pipelines), step, kind,
            self.open_windows, self.fired, self.late, watermark, partitions,
        )  # fmt: skip

    def watermarks(self) -> tuple:
        """``(watermark, [(source, reader, stream, newest event time, idle), ...])``
        for the metrics; event time only."""
        return (None, [])

    def _open_of(self, windows: KeyWindows) -> int:
        """The windows of one key holding records that have not fired."""
        raise NotImplementedError

    def _ended(self) -> bool:
        """A source feeding this stage ended: whether all of them have."""
        self.finished_feeders += 1
        return self.finished_feeders >= self.feeders

    def tick(self, states: dict, final: bool) -> list | None:
        """Called by the engine on a timer (``final``: a source feeding this stage
        ended). Returns ``[(state_key, outputs), ...]`` for the keys that changed."""
        now = time.time_ns()
        if final:
            if not self._ended():
                return None
            flush = True
        else:
            if now < self.next_tick:
                return None
            self.next_tick = now + self.period
            flush = self.quiet(now)
        return self._fire_all(states, now, flush)

    def _fire_all(self, states: dict, now: int, flush: bool) -> list:
        changed = []
        for state_key, windows in list(states.items()):
            if not windows.started:
                continue
            outs: list = []
            if self.fire(windows, now, flush, outs):
                changed.append((state_key, outs))
        return changed

    def quiet(self, now: int) -> bool:
        """Whether input has been silent long enough to fire everything."""
        return now - self.last_input > 2 * self.period

    def fire(self, windows: KeyWindows, now: int, flush: bool, outs: list) -> bool:
        raise NotImplementedError


class RangeStage(_Stage):
    """Range windows (tumbling and sliding) on ingest time."""

    #: Windows without records output too (0.6.1); not on event time.
    fire_empty = True

    def __init__(self, spec: RangeWindows, key_of: Callable[[Any], Any], feeders: int) -> None:
        self.range = spec.range
        self.slide = spec.slide
        self.delay = math.ceil(spec.delay / spec.slide) * spec.slide
        self.pane = math.gcd(spec.range, spec.slide)
        self.period = 2 * (self.range + self.delay)
        self.aligned = spec.aligned
        super().__init__(spec.aggregation, key_of, feeders)
        #: After a gap, at most this many empty windows fire before the grid jumps.
        self.max_empty = (self.range + self.delay) // self.slide

    def first_start(self, t: int) -> int:
        """The start of the earliest window of the epoch grid holding time ``t``."""
        return ((t - self.range) // self.slide + 1) * self.slide

    def _start(self, windows: KeyWindows, data: Any, key_of: Any) -> None:
        windows.started = True
        self.keys += 1
        windows.key = (key_of or self.key_of)(data)
        windows.identity = self.agg.initial_accumulator()

    def _add(self, windows: KeyWindows, data: Any, t: int) -> None:
        """Add ``data`` to the pane of time ``t`` (not before ``next_start``)."""
        pane = windows.next_start + (t - windows.next_start) // self.pane * self.pane
        acc = windows.panes.get(pane)
        if acc is None:
            self.open_windows += self._opens(windows, pane)
            acc = windows.panes[pane] = self.agg.initial_accumulator()
            self._first_update(data, acc)
            return
        self.agg.update(data, acc)

    def process(self, data: Any, windows: KeyWindows, key_of: Any = None) -> tuple:
        """The engine's state step: add ``data``, fire what is due."""
        now = time.time_ns()
        self.last_input = now
        if not windows.started:
            self._start(windows, data, key_of)
            if self.aligned:
                windows.next_start = self.first_start(now)
            else:
                windows.next_start = now - (self.range + self.delay)
        if now >= windows.next_start:
            self._add(windows, data, now)
        outs: list = []
        self.fire(windows, now, False, outs)
        return (outs, True)

    def fire(self, windows: KeyWindows, now: int, flush: bool, outs: list) -> bool:
        """Fire the due windows of one key (ingest time ``now``)."""
        return self.fire_until(windows, now - self.delay, flush, outs)

    def fire_until(self, windows: KeyWindows, limit: int, flush: bool, outs: list) -> bool:
        """Fire the windows of one key ending before ``limit`` (``flush``: every
        window holding data), oldest first; True when any fired."""
        fired = False
        empty = 0
        while True:
            start = windows.next_start
            if flush:
                if not windows.panes:
                    break
            elif start + self.range >= limit:
                break
            if not windows.panes:
                empty += 1
                if empty > self.max_empty:
                    # A long gap: jump to the first window not due yet.
                    due = -(-(limit - self.range - start) // self.slide)
                    windows.next_start = windows.fired_to = start + max(due, 0) * self.slide
                    return True
            self._fire_one(windows, start, outs)
            windows.fired_to = windows.next_start
            fired = True
        return fired

    def _opens(self, windows: KeyWindows, pane: int) -> int:
        """The windows a new pane opens: those holding it (from ``next_start``
        on) that hold no other pane."""
        slide, wrange, start = self.slide, self.range, windows.next_start
        first = start + max(0, -(-(pane - wrange + 1 - start) // slide)) * slide
        last = start + (pane - start) // slide * slide
        panes = windows.panes
        if panes and wrange != self.pane:
            # The nearest panes below and above sharing a window with this one.
            below = above = None
            end = last + wrange
            for other in panes:
                if other < pane:
                    if other >= first and (below is None or other > below):
                        below = other
                elif other < end and (above is None or other < above):
                    above = other
            if below is not None:
                first = start + ((below - start) // slide + 1) * slide
            if above is not None:
                last = min(last, start + (above - wrange - start) // slide * slide)
        return max(0, (last - first) // slide + 1)

    def _open_of(self, windows: KeyWindows, start: int | None = None) -> int:
        panes, slide = windows.panes, self.slide
        if start is None:
            start = windows.next_start
        held: set = set()
        for pane in panes:
            first = start + max(0, -(-(pane - self.range + 1 - start) // slide)) * slide
            held.update(range(first, pane + 1, slide))
        return len(held)

    def _panes_in(self, panes: dict, start: int, end: int) -> list:
        """The starts of the panes holding data in ``[start, end)``, oldest first
        (panes sit on the grid ``start + k * pane``)."""
        if (end - start) // self.pane <= len(panes):
            return [p for p in range(start, end, self.pane) if p in panes]
        return sorted(p for p in panes if start <= p < end)

    def _fire_one(self, windows: KeyWindows, start: int, outs: list) -> None:
        agg = self.agg
        panes = windows.panes
        acc = windows.identity
        held = self._panes_in(panes, start, start + self.range)
        for pane in held:
            acc = agg.combine(acc, panes[pane])
        if held:
            self.open_windows -= 1
        if held or self.fire_empty:
            self.fired += 1
            window_output = getattr(agg, "output_window", None)
            if window_output is None:
                self._output(windows.key, acc, outs)
            else:
                out = window_output(windows.key, acc, start, start + self.range)
                if out is not None:
                    outs.append(out)
        windows.next_start = start + self.slide
        # Panes before the next window start are in no window left.
        for pane in self._panes_in(panes, start, windows.next_start):
            del panes[pane]


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
    windows in ``buckets`` (window start -> keys, starts in the heap
    ``starts``) instead of scanning every key.
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
        #: Window start -> keys whose ``due`` was that start; the starts in a heap.
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
        """Take the newer of ours and those of a snapshot or another worker, per
        partition; they count as heard from now."""
        table = self.table
        for partition, newest in partitions.items():
            entry = table.get(partition)
            if entry is None:
                table[partition] = [newest, None, True]
            elif newest > entry[0]:
                entry[0] = newest
        if floor is not None and (self.mark is None or floor > self.mark):
            self.mark = floor
        self._recompute()

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
                    index(due, windows.key)
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
            if due is None or first < due:
                windows.due = first
                bucket = buckets.get(first)
                if bucket is None:
                    index(first, windows.key)
                else:
                    bucket.append(windows.key)
            panes = windows.panes
            at = t // pane * pane
            acc = panes.get(at)
            if acc is None:
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
                else:
                    stage.open_windows += (top - first) // slide + 1
                acc = panes[at] = initial()
                stage._first_update(data, acc)
                return result
            update(data, acc)
            return result

        step.none_safe = True  # type: ignore[attr-defined]
        self.steps[(source, key_of)] = step
        return step

    def _begin(self, windows: KeyWindows, data: Any, key_of: Any) -> None:
        """The first record of a key."""
        self._start(windows, data, key_of)
        windows.fired_to = windows.due = None
        self.indexed += 1

    def _late(self, windows: KeyWindows, t: int) -> str:
        self.late += 1
        return (
            f"late event of key {windows.key!r:.100}: event time {_iso(t)}; its windows "
            f"have fired (watermark {_iso(self.mark)}, allowed lateness {self.delay} ns)"
        )

    # -- firing -------------------------------------------------------------

    def _index(self, start: int, key: Any) -> None:
        """Note that the timer must look at ``key`` once windows from ``start`` are due."""
        bucket = self.buckets.get(start)
        if bucket is None:
            self.buckets[start] = [key]
            heapq.heappush(self.starts, start)
        else:
            bucket.append(key)

    def _fire(self, windows: KeyWindows, limit: int | None, outs: list) -> None:
        """Fire the windows of one key that hold data and end before ``limit``
        (None: every one), oldest first; windows without data are skipped."""
        panes = windows.panes
        wrange, slide = self.range, self.slide
        combine, output, window_output = self.agg.combine, self.agg.output, self.window_output
        key, identity = windows.key, windows.identity
        start = windows.due
        fired = 0
        if len(panes) == 1:
            # One pane (the common case): the windows holding it, from ``due``.
            for at in panes:
                acc = panes[at]
            stop = last = at - at % slide
            if limit is not None and limit - 1 - wrange < last:
                stop = limit - 1 - wrange
            while start <= stop:
                end = start + wrange
                if window_output is None:
                    out = output(key, combine(identity, acc))
                else:
                    out = window_output(key, combine(identity, acc), start, end)
                if out is not None:
                    outs.append(out)
                fired += 1
                start += slide
            left = start <= last
            if not left:
                del panes[at]
        else:
            held = sorted(panes)
            count = len(held)
            lo = 0
            while limit is None or start + wrange < limit:
                end = start + wrange
                acc = identity
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
        self.fired += fired
        self.open_windows -= fired
        windows.due = start if left else None
        if limit is None:
            # The final flush: every window has fired. (Otherwise the
            # watermark, which never goes back, tells which windows have.)
            windows.fired_to = start

    def tick(self, states: dict, final: bool) -> list | None:
        """Fire the windows the watermark made due (``final``: every window once
        all sources feeding the stage ended). Keys come from the buckets of due
        windows, rebuilt when keys arrived other than by a record (a restore,
        a hand-over) or left."""
        if final:
            if not self._ended():
                return None
            return self._fire_all(states, 0, True)
        limit = self.limit(self.watermark(time.time_ns()))
        if limit is None:
            return None
        if self.reindex or len(states) != self.indexed:
            self.buckets.clear()  # in place: the steps hold them
            self.starts.clear()
            for key, windows in states.items():
                if windows.started and windows.due is not None:
                    self._index(windows.due, key)
            self.indexed = len(states)
            self.reindex = False
        bound = self.first_start(limit - 1)
        changed: list = []
        starts, buckets, get = self.starts, self.buckets, states.get
        slide, stop = self.slide, limit - 1 - self.range
        combine, output, window_output = self.agg.combine, self.agg.output, self.window_output
        fired = 0
        while starts and starts[0] < bound:
            start = heapq.heappop(starts)
            for key in buckets.pop(start):
                windows = get(key)
                if windows is None or windows.due != start:
                    continue  # moved away, or fired on one of its records since
                outs: list = []
                panes = windows.panes
                if len(panes) != 1:
                    self._fire(windows, limit, outs)
                else:
                    # One pane (the common case, as in ``_fire``), inline.
                    for at in panes:
                        acc = panes[at]
                    last = at - at % slide
                    identity = windows.identity
                    window = start
                    while window <= stop and window <= last:
                        if window_output is None:
                            out = output(key, combine(identity, acc))
                        else:
                            end = window + self.range
                            out = window_output(key, combine(identity, acc), window, end)
                        if out is not None:
                            outs.append(out)
                        fired += 1
                        window += slide
                    if window > last:
                        del panes[at]
                        windows.due = None
                    else:
                        windows.due = window
                changed.append((key, outs))
                due = windows.due
                if due is not None:
                    bucket = buckets.get(due)
                    if bucket is None:
                        self._index(due, key)
                    else:
                        bucket.append(key)
        self.fired += fired
        self.open_windows -= fired
        return changed

    def _open_of(self, windows: KeyWindows, start: int | None = None) -> int:
        # Windows before the earliest one holding data and not fired hold none.
        return 0 if windows.due is None else super()._open_of(windows, windows.due)

    def fire(self, windows: KeyWindows, now: int, flush: bool, outs: list) -> bool:
        """``now`` is the fire limit here (see ``tick``)."""
        if windows.due is None:
            return False
        self._fire(windows, None if flush else now, outs)
        return True


def _newest(entry: list) -> int:
    return entry[0]


class CountStage(_Stage):
    """Count windows: fire at the n-th record of a key; partial windows fire on
    the 5 s timer and when the input ends."""

    period = 5_000_000_000
    kind = "count"

    def __init__(self, spec: CountWindows, key_of: Callable[[Any], Any], feeders: int) -> None:
        super().__init__(spec.aggregation, key_of, feeders)
        self.size = spec.count

    def process(self, data: Any, windows: KeyWindows, key_of: Any = None) -> tuple:
        """The engine's state step: add ``data``; fire at the n-th record."""
        self.last_input = time.time_ns()
        if not windows.started:
            windows.started = True
            windows.key = (key_of or self.key_of)(data)
            self.keys += 1
        if windows.acc is None:
            windows.acc = self.agg.initial_accumulator()
            self.open_windows += 1
            self._first_update(data, windows.acc)
        else:
            self.agg.update(data, windows.acc)
        windows.count += 1
        outs: list = []
        if windows.count >= self.size:
            self._fire_one(windows, outs)
        return (outs, True)

    def quiet(self, now: int) -> bool:
        return True

    def fire(self, windows: KeyWindows, now: int, flush: bool, outs: list) -> bool:
        if windows.count == 0:
            return False
        self._fire_one(windows, outs)
        return True

    def _fire_one(self, windows: KeyWindows, outs: list) -> None:
        acc, windows.acc, windows.count = windows.acc, None, 0
        self.open_windows -= 1
        self.fired += 1
        self._output(windows.key, acc, outs)

    def _open_of(self, windows: KeyWindows) -> int:
        return 0 if windows.acc is None else 1
