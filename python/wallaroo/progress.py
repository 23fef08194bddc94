"""The progress line on the terminal during a run.

One line, rewritten in place twice a second on standard error::

    wallaroo ▸ 1,204,311 in  48,120/s │ 1,180,002 out │ 24,309 filtered │ 2 bad │ 0 errors │ 0:25

Only on a TTY (the runner checks) and not with ``--quiet``. Log lines and
other output (``print(..., file=sys.stderr)``, tracebacks) go to the same
terminal: a filter on the logging handlers and a wrapper around
``sys.stderr`` clear the progress line before anything else is written, and
the next tick draws it again below.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import Callable, TextIO

#: Seconds between redraws.
INTERVAL = 0.5
#: Clear the current terminal line.
CLEAR = "\r\x1b[K"


def _count(n: float) -> str:
    return f"{int(n):,}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def render(totals: dict, rate: float, elapsed: float, width: int = 200) -> str:
    """The progress line for ``totals`` (from ``_engine.metrics_totals()``)."""
    parts = [
        f"{_count(totals.get('records_in', 0))} in  {_count(rate)}/s",
        f"{_count(totals.get('records_out', 0))} out",
        f"{_count(totals.get('dropped', 0))} filtered",
        f"{_count(totals.get('bad_input', 0))} bad",
        f"{_count(totals.get('errors', 0))} errors",
    ]
    if totals.get("kafka_lag"):
        parts.append(f"lag {_count(totals['kafka_lag'])}")
    workers = totals.get("workers", 1)
    if workers > 1:
        parts.append(f"{workers} workers")
    parts.append(_duration(elapsed))
    line = "wallaroo ▸ " + " │ ".join(parts)
    return line[: max(width - 1, 10)]


class _ClearBeforeLogging(logging.Filter):
    """Clears the progress line before a log record reaches the terminal."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self.progress.clear()
        return True


class _ClearingStream:
    """``sys.stderr`` while the line is shown: clears it before other writes."""

    def __init__(self, stream: TextIO, progress: Progress) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        self._progress.clear()
        return self._stream.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


class Progress:
    """Redraws the progress line on a thread until :meth:`stop`."""

    def __init__(
        self,
        totals: Callable[[], dict],
        stream: TextIO | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.totals = totals
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._lock = threading.Lock()
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._filter = _ClearBeforeLogging(self)
        self._handlers: list = []
        self._wrapped = False
        self._started = time.monotonic()
        self._last: tuple | None = None  # (time, records_in)
        self._rate = 0.0

    def start(self) -> Progress:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "stream", None) is self.stream:
                handler.addFilter(self._filter)
                self._handlers.append(handler)
        if sys.stderr is self.stream:
            sys.stderr = _ClearingStream(self.stream, self)  # type: ignore[assignment]
            self._wrapped = True
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.draw()
            except Exception:  # never let the progress line break a run
                return

    def _measure(self) -> tuple:
        totals = self.totals()
        now = time.monotonic()
        records = totals.get("records_in", 0)
        if self._last is not None:
            seconds = now - self._last[0]
            if seconds > 0:
                current = max(records - self._last[1], 0) / seconds
                # Smooth over about two seconds.
                self._rate = current if self._rate == 0 else 0.5 * self._rate + 0.5 * current
        self._last = (now, records)
        return totals, now - self._started

    def draw(self) -> None:
        """Draw the line once."""
        totals, elapsed = self._measure()
        width = shutil.get_terminal_size((120, 24)).columns
        line = render(totals, self._rate, elapsed, width)
        with self._lock:
            self.stream.write(CLEAR + line)
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        """Remove the line (before something else is written)."""
        with self._lock:
            if self._shown:
                try:
                    self.stream.write(CLEAR)
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
                self._shown = False

    def stop(self) -> None:
        """Stop redrawing and clear the line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for handler in self._handlers:
            handler.removeFilter(self._filter)
        self._handlers = []
        if self._wrapped:
            sys.stderr = self.stream
            self._wrapped = False
        self.clear()
