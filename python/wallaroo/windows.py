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
    ``output(key, acc)`` (the window's output, or None for none). As in
    0.6: the initial accumulator is an identity of ``combine``, and
    ``combine`` and ``output`` do not change their arguments (the last
    event-time window of a key's only pane gets that pane's accumulator
    itself, not a fold of it onto an identity).

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
    windows = KeyWindows()  # a field a snapshot lacks keeps its default
    watermarks = fields.pop("watermarks", None)
    for name, value in fields.items():
        setattr(windows, name, value)
    stage = _STAGES.get(windows.stage)
    if stage is not None:
        stage.reindex = True  # a key the timer's buckets do not know yet
        if watermarks:
            stage.learn(*watermarks)
    return windows


class KeyWindows:
    """The windows of one key of one window stage (the engine's state object).

    Slots, not a ``__dict__``: a stage holds one per key (100,000s), and the
    timer reads them long after they were written, so each cache line counts.
    They pickle as a dict of their fields (``__reduce__``)."""

    __slots__ = (
        "key", "started", "stage", "next_start", "fired_to", "due",
        "panes", "at", "identity", "acc", "count",
    )  # fmt: skip

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
        #: Event time holds a single pane flat instead (``at``, ``acc``).
        self.panes: dict = {}
        #: Event time: the start of the key's only pane (its accumulator in
        #: ``acc``), or None (no pane, or the panes are in ``panes``).
        self.at: int | None = None
        #: Ingest-time range windows: the identity accumulator of ``combine``
        #: (made once; event time folds onto a fresh ``initial_accumulator()``).
        self.identity: Any = None
        #: Count windows: the accumulator and the records in it (event time:
        #: the only pane's accumulator).
        self.acc: Any = None
        self.count = 0

    def __reduce__(self) -> Any:
        fields = {name: getattr(self, name) for name in self.__slots__}
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
        ``return acc + x`` adds up to nothing.

        Callers keep ``acc`` only once this returned: when ``update`` raises
        (a step error, skipped under ``--on-error skip``), the pane or count
        window is not opened, so a window whose only records failed is a
        window without records."""
        result = self.agg.update(data, acc)
        if result is not None:
            self._returned(result, acc)

    def _returned(self, result: Any, acc: Any) -> None:
        """``update`` on a fresh ``acc`` returned ``result`` (not None): see
        :meth:`_first_update` (event-time windows call ``update`` inline)."""
        if result is not acc and not self.warned_update:
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

    def timer(self, states: dict, final: Any) -> list | None:
        """The engine's timer step: ``tick``, then hand the metrics over. In a
        cluster, an event-time stage's tick comes as ``(final, shared)``: what
        the sending worker's stage knows (:meth:`learn_shared`)."""
        if type(final) is tuple:
            final, shared = final
            self.learn_shared(shared)
        try:
            return self.tick(states, final)
        finally:
            self.report(states)

    def learn_shared(self, shared: Any) -> None:
        """What another worker's stage shared: only event-time stages share
        (their source partitions), so here there is nothing to learn."""

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

    def tick(self, states: dict, final: bool) -> tuple | None:
        """Called by the engine on a timer (``final``: a source feeding this stage
        ended). Returns ``(keys, outputs)``: the keys whose windows fired (their
        state changed) and all the outputs, in order; None when none fired."""
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

    def _fire_all(self, states: dict, now: int, flush: bool) -> tuple | None:
        keys: list = []
        outs: list = []
        for state_key, windows in list(states.items()):
            if windows.started and self.fire(windows, now, flush, outs):
                keys.append(state_key)
        return (keys, outs) if keys else None

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
            opens = self._opens(windows, pane)
            acc = self.agg.initial_accumulator()
            self._first_update(data, acc)  # raises: no pane opened
            windows.panes[pane] = acc
            self.open_windows += opens
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
            try:
                self._add(windows, data, now)
            except BaseException:
                # The key's first record failed (a step error): the key has
                # not started, like a key no record came for (no empty
                # windows). ``keys`` still counts its state (in ``states``).
                windows.started = False
                raise
        elif now >= windows.next_start:
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

    def _open_of(
        self, windows: KeyWindows, start: int | None = None, panes: dict | None = None
    ) -> int:
        slide = self.slide
        if panes is None:
            panes = windows.panes
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
            acc = self.agg.initial_accumulator()
            self._first_update(data, acc)  # raises: no window opened
            windows.acc = acc
            self.open_windows += 1
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
