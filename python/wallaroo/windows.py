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
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from wallaroo.versions import ONLY_06, Mark

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
    ``output(key, acc)`` (the window's output, or None for none)."""

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

    def __init__(self, wrange: int, slide: int, delay: int, agg: Any) -> None:
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


class RangeWindowsBuilder:
    """``range_windows(r)``; ``with_slide``/``with_delay`` at most once each, then ``over``."""

    _api_mark = _WINDOWS_MARK

    def __init__(self, wrange: int) -> None:
        self.range = wrange
        self.slide: int | None = None
        self.delay: int | None = None

    def with_slide(self, slide: int) -> RangeWindowsBuilder:
        """Windows start every ``slide`` ns (default: the range, tumbling windows)."""
        if self.slide is not None:
            raise _error("Only call with_slide() once per window specification")
        self.slide = slide
        return self

    def with_delay(self, delay: int) -> RangeWindowsBuilder:
        """Fire each window ``delay`` ns after its end (default 0)."""
        if self.delay is not None:
            raise _error("Only call with_delay() once per window specification")
        self.delay = delay
        return self

    def over(self, aggregation_cls: Callable[[], Any]) -> RangeWindows:
        """The windows, aggregated by one ``aggregation_cls()`` instance."""
        slide = self.range if self.slide is None else self.slide
        delay = 0 if self.delay is None else self.delay
        return RangeWindows(self.range, slide, delay, aggregation_cls())


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


def range_windows(wrange: int) -> RangeWindowsBuilder:
    """Windows ``wrange`` ns long (tumbling unless ``with_slide``)."""
    return RangeWindowsBuilder(wrange)


def count_windows(count: int) -> CountWindowsBuilder:
    """Windows of ``count`` records per key."""
    return CountWindowsBuilder(count)


# ---------------------------------------------------------------------------
# Run time
# ---------------------------------------------------------------------------

_UNSET = object()


class KeyWindows:
    """The windows of one key of one window stage (the engine's state object)."""

    def __init__(self) -> None:
        self.key: Any = None
        self.started = False
        #: Range windows: start of the earliest window not fired yet.
        self.next_start = 0
        #: Range windows: pane start -> accumulator (panes with data only).
        self.panes: dict = {}
        #: Range windows: the identity accumulator of ``combine`` (made once).
        self.identity: Any = None
        #: Count windows: the accumulator and the records in it.
        self.acc: Any = None
        self.count = 0


class _Stage:
    """What a window stage shares across its keys (on one worker)."""

    #: Timer period in ns; ``tick`` does nothing between periods.
    period = 0

    def __init__(self, agg: Any, key_of: Callable[[Any], Any], feeders: int) -> None:
        self.agg = agg
        self.key_of = key_of
        self.feeders = max(1, feeders)
        self.finished_feeders = 0
        self.last_input = time.time_ns()
        #: The first tick comes one period after the start.
        self.next_tick = self.last_input + self.period

    def new_state(self) -> KeyWindows:
        """A key's empty windows (the engine's state class)."""
        return KeyWindows()

    def _output(self, key: Any, acc: Any, outs: list) -> None:
        out = self.agg.output(key, acc)
        if out is not None:
            outs.append(out)

    def tick(self, states: dict, final: bool) -> list | None:
        """Called by the engine on a timer (``final``: a source feeding this stage
        ended). Returns ``[(state_key, outputs), ...]`` for the keys that changed."""
        now = time.time_ns()
        if final:
            self.finished_feeders += 1
            if self.finished_feeders < self.feeders:
                return None
            flush = True
        else:
            if now < self.next_tick:
                return None
            self.next_tick = now + self.period
            flush = self.quiet(now)
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

    def __init__(self, spec: RangeWindows, key_of: Callable[[Any], Any], feeders: int) -> None:
        self.range = spec.range
        self.slide = spec.slide
        self.delay = math.ceil(spec.delay / spec.slide) * spec.slide
        self.pane = math.gcd(spec.range, spec.slide)
        self.period = 2 * (self.range + self.delay)
        super().__init__(spec.aggregation, key_of, feeders)
        #: After a gap, at most this many empty windows fire before the grid jumps.
        self.max_empty = (self.range + self.delay) // self.slide

    def process(self, data: Any, windows: KeyWindows, key_of: Any = None) -> tuple:
        """The engine's state step: add ``data``, fire what is due."""
        now = time.time_ns()
        self.last_input = now
        agg = self.agg
        if not windows.started:
            windows.started = True
            windows.key = (key_of or self.key_of)(data)
            windows.identity = agg.initial_accumulator()
            windows.next_start = now - (self.range + self.delay)
        if now >= windows.next_start:
            pane = windows.next_start + (now - windows.next_start) // self.pane * self.pane
            acc = windows.panes.get(pane)
            if acc is None:
                acc = windows.panes[pane] = agg.initial_accumulator()
            agg.update(data, acc)
        outs: list = []
        self.fire(windows, now, False, outs)
        return (outs, True)

    def fire(self, windows: KeyWindows, now: int, flush: bool, outs: list) -> bool:
        """Fire the due windows of one key, oldest first; True when any fired."""
        limit = now - self.delay
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
                    due = (limit - self.range - start) // self.slide + 1
                    windows.next_start = start + max(due, 0) * self.slide
                    return True
            self._fire_one(windows, start, outs)
            fired = True
        return fired

    def _fire_one(self, windows: KeyWindows, start: int, outs: list) -> None:
        agg = self.agg
        end = start + self.range
        acc = windows.identity
        for pane in sorted(p for p in windows.panes if start <= p < end):
            acc = agg.combine(acc, windows.panes[pane])
        self._output(windows.key, acc, outs)
        windows.next_start = start + self.slide
        for pane in [p for p in windows.panes if p < windows.next_start]:
            del windows.panes[pane]


class CountStage(_Stage):
    """Count windows: fire at the n-th record of a key; partial windows fire on
    the 5 s timer and when the input ends."""

    period = 5_000_000_000

    def __init__(self, spec: CountWindows, key_of: Callable[[Any], Any], feeders: int) -> None:
        super().__init__(spec.aggregation, key_of, feeders)
        self.size = spec.count

    def process(self, data: Any, windows: KeyWindows, key_of: Any = None) -> tuple:
        """The engine's state step: add ``data``; fire at the n-th record."""
        self.last_input = time.time_ns()
        if not windows.started:
            windows.started = True
            windows.key = (key_of or self.key_of)(data)
        if windows.acc is None:
            windows.acc = self.agg.initial_accumulator()
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
        self._output(windows.key, acc, outs)
