"""The archive streamer: replays GitHub Archive events into a Kafka topic.

Run it as ``python -m wallaroo.demo.streamer`` (``--help`` lists the flags) to feed the
star leaders example, or use :class:`Streamer` in-process (the runner's demo mode
does). Events come from a source:

``generated`` (the default)
    invented offline by :func:`wallaroo.generator.generate_events`, the same for
    the same ``--seed``; endless unless ``--limit`` or ``--hours`` ends it.
``FILE`` or ``DIR``
    a GitHub Archive hour file (``.json`` or ``.json.gz``, one event per line) or a
    directory of them, replayed in name order; each line is sent exactly as read.
``gharchive:YYYY-MM-DD-H[..YYYY-MM-DD-H]`` (or ``gharchive`` with ``--start``)
    hour files downloaded from https://data.gharchive.org as they are replayed.

Each event is sent when its ``created_at``, counted from the first event, divided
by the speed-up has elapsed (speed-up 0: as fast as possible); ``--rate-limit``
caps messages per second as well. Lines that are not JSON or lack a valid
``created_at`` are counted and skipped. The message key is the repository name, so
one repository's events stay in order on a topic of several partitions.

With ``max_lag`` and ``lag_group`` the streamer never lets the consumer group
``lag_group`` trail what it produced by more than ``max_lag`` messages: it pauses,
checking the group's committed offsets a few times a second, and resumes where
the consumer caught up. Brokers that keep little (the engine's embedded broker
holds about 5 MiB per partition, some 4,000 events) would otherwise drop events
the application has not read yet.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from wallaroo.demo import generator, gharchive

__all__ = ["BrokerUnavailable", "Streamer", "StreamerStats", "main"]

log = logging.getLogger("wallaroo.demo.streamer")

#: Seed of generated events when none is given.
DEFAULT_SEED = 1

#: Seconds between two looks at the consumer group's committed offsets.
LAG_CHECK_INTERVAL = 0.25

#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_INTERVAL = 5.0

#: Seconds between two redraws of the progress line on a terminal.
TTY_REFRESH = 0.25

#: Longest sleep between two looks at the stop event and the producer's callbacks.
_NAP = 0.05


class BrokerUnavailable(RuntimeError):
    """The Kafka bootstrap servers did not answer."""


@dataclass
class StreamerStats:
    """How a run went (also readable live, as :attr:`Streamer.stats`, while it runs)."""

    #: Events the broker acknowledged.
    events_sent: int = 0
    #: Source lines skipped: not JSON, not an object, no valid ``created_at``.
    bad_lines: int = 0
    #: Events the broker refused, or did not acknowledge before the final flush ended.
    delivery_errors: int = 0
    #: Wall seconds of the run, flush included.
    seconds: float = 0.0
    #: Events handed to the producer (sent, failed or still in flight).
    events_produced: int = 0
    #: ``created_at`` (seconds since the epoch) of the first and last event produced.
    first_created_at: float | None = None
    last_created_at: float | None = None
    #: Wall seconds spent paused because the consumer group lagged too far behind.
    throttled_seconds: float = 0.0

    def summary(self, topic: str, outcome: str = "done") -> str:
        """One line saying how the run ended (``outcome``), what was sent, from which
        simulated time span, and what failed."""
        rate = self.events_sent / self.seconds if self.seconds > 0 else 0.0
        text = (
            f"streamer: {outcome}: {self.events_sent:,} events sent to {topic!r} "
            f"in {self.seconds:.1f} s ({rate:,.0f} ev/s)"
        )
        if self.first_created_at is not None and self.last_created_at is not None:
            text += (
                f", simulated {gharchive.format_created_at(self.first_created_at)}"
                f"..{gharchive.format_created_at(self.last_created_at)}"
            )
        text += f"; {self.bad_lines:,} bad lines skipped; {self.delivery_errors:,} delivery errors"
        if self.throttled_seconds:
            text += f"; paused {self.throttled_seconds:.1f} s for the consumer to catch up"
        return text


class _Progress:
    """Progress on a text stream: one line redrawn in place on a terminal, else a
    line every ``interval`` seconds."""

    def __init__(self, stream: IO[str], enabled: bool, interval: float) -> None:
        self.stream = stream
        self.enabled = enabled
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.every = TTY_REFRESH if self.tty else interval
        now = time.monotonic()
        self.next_at = now + self.every
        #: ``(time, events produced)`` of recent updates: the rate is over about 2 s.
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])
        self.drawn = False

    def update(self, stats: StreamerStats, note: str = "") -> None:
        """Show progress if it is time to."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every
        while len(self.samples) > 1 and now - self.samples[1][0] >= 2.0:
            self.samples.popleft()
        since, count = self.samples[0]
        rate = (stats.events_produced - count) / (now - since) if now > since else 0.0
        self.samples.append((now, stats.events_produced))
        line = f"streamer: {stats.events_sent:,} sent  {rate:,.0f} ev/s"
        if stats.last_created_at is not None:
            line += f"  sim {gharchive.format_created_at(stats.last_created_at)}"
        if stats.bad_lines:
            line += f"  bad lines {stats.bad_lines:,}"
        if stats.delivery_errors:
            line += f"  delivery errors {stats.delivery_errors:,}"
        if note:
            line += f"  {note}"
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, summary: str) -> None:
        """End the progress line and print the summary."""
        if not self.enabled:
            return
        if self.drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(summary + "\n")
        self.stream.flush()


class _LagGate:
    """Measures how far a consumer group trails what this streamer produced."""

    def __init__(self, config: dict, topic: str, group: str, max_lag: int) -> None:
        self.topic = topic
        self.max_lag = max_lag
        # Never subscribes, so never joins the group: it only reads committed offsets.
        self.consumer = Consumer(
            {
                **config,
                "group.id": group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        self.lag = 0
        self.since_check = 0
        self.checked_at = -math.inf
        self.warned = False

    def measure(self, ends: dict[int, int], firsts: dict[int, int], in_flight: int) -> int | None:
        """Messages produced and not yet committed by the group, or None when the
        committed offsets could not be read. A partition the group never committed
        counts from this streamer's first message in it."""
        self.checked_at = time.monotonic()
        lag = in_flight
        if ends:
            wanted = [TopicPartition(self.topic, p) for p in sorted(ends)]
            try:
                committed = self.consumer.committed(wanted, timeout=2.0)
            except KafkaException as err:
                if not self.warned:
                    log.warning("cannot read the consumer group's offsets (%s); retrying", err)
                    self.warned = True
                return None
            for tp in committed:
                base = tp.offset if tp.offset >= 0 else firsts[tp.partition]
                lag += max(0, ends[tp.partition] - base)
        self.lag, self.since_check = lag, 0
        return lag

    def close(self) -> None:
        """Release the consumer (commits nothing)."""
        self.consumer.close()


def _brokers(spec: str) -> str:
    """``host[:port],...`` with the default port 9092 filled in."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            out.append(part if ":" in part.rsplit("]", 1)[-1] else f"{part}:9092")
    if not out:
        raise ValueError("no broker given")
    return ",".join(out)


def _repo_key(event: Any) -> bytes | None:
    repo = event.get("repo") if isinstance(event, dict) else None
    name = repo.get("name") if isinstance(repo, dict) else None
    return name.encode() if isinstance(name, str) else None


class Streamer:
    """Replays GitHub Archive events from ``source`` into ``topic`` at ``bootstrap``.

    ``speedup`` divides the simulated time between events (0: no pacing);
    ``rate_limit`` caps messages per wall second; ``limit`` stops after that many
    events, ``hours`` after that many simulated hours (for ``gharchive`` sources:
    that many hour files). ``seed``, ``start``, ``repos`` and ``event_rate`` shape
    generated events (:func:`wallaroo.generator.generate_events`). ``max_lag`` with
    ``lag_group`` pauses while that consumer group trails by more than ``max_lag``
    messages (it stays paused, logging a warning, while the group's offsets cannot
    be read). ``key`` is ``"repo"`` (the repository name) or ``"none"``.
    ``producer_config`` adds librdkafka settings (TLS, SASL, ...). ``progress``
    writes progress and a summary to ``progress_stream`` (default stderr).

    Source errors (a missing file, a malformed hour) raise at construction.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = "gharchive",
        source: str = "generated",
        speedup: float = 24.0,
        limit: int | None = None,
        seed: int = DEFAULT_SEED,
        progress: bool = True,
        max_lag: int | None = None,
        lag_group: str | None = None,
        *,
        start: str | datetime | float = gharchive.DEFAULT_START,
        hours: float | None = None,
        rate_limit: float | None = None,
        repos: int = generator.DEFAULT_REPOS,
        event_rate: float = generator.DEFAULT_RATE,
        key: str = "repo",
        archive_url: str = gharchive.ARCHIVE_URL,
        producer_config: dict | None = None,
        progress_stream: IO[str] | None = None,
        progress_interval: float = PROGRESS_INTERVAL,
        connect_timeout: float = 10.0,
        flush_timeout: float = 30.0,
    ) -> None:
        if speedup < 0 or math.isnan(speedup):
            raise ValueError("speedup must be 0 (no pacing) or positive")
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        if hours is not None and not hours > 0:
            raise ValueError("hours must be positive")
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError("rate limit must be positive")
        if (max_lag is None) != (lag_group is None):
            raise ValueError("max_lag and lag_group go together")
        if max_lag is not None and max_lag < 1:
            raise ValueError("max_lag must be at least 1")
        if key not in ("repo", "none"):
            raise ValueError("key must be 'repo' or 'none'")
        self.bootstrap = _brokers(bootstrap)
        self.topic = topic
        self.source = source
        self.speedup = speedup
        self.limit = limit
        self.seed = seed
        self.max_lag = max_lag
        self.lag_group = lag_group
        self.hours = hours
        self.rate_limit = rate_limit
        self.repos = repos
        self.event_rate = event_rate
        self.key = key
        self.producer_config = dict(producer_config or {})
        self.progress = progress
        self.progress_stream = progress_stream
        self.progress_interval = progress_interval
        self.connect_timeout = connect_timeout
        self.flush_timeout = flush_timeout
        self.start = gharchive.parse_start(start)
        self.archive_urls: list[str] = []
        if source == "generated":
            self.kind = "generated"
        elif source == "gharchive" or source.startswith("gharchive:"):
            self.kind = "archive"
            spec = source.partition(":")[2]
            count = None if hours is None else math.ceil(hours)
            self.archive_urls = [
                gharchive.archive_url(hour, archive_url)
                for hour in gharchive.archive_hours(spec, count, start)
            ]
        else:
            self.kind = "files"
            gharchive.source_files(source)
        #: Live figures of the current (or last) run.
        self.stats = StreamerStats()
        #: True while paused for the consumer group to catch up.
        self.throttled = False
        #: The consumer group's lag at the last look (max_lag runs only).
        self.lag: int | None = None
        self._read_stats = gharchive.ReadStats()
        self._ends: dict[int, int] = {}
        self._firsts: dict[int, int] = {}
        self._first_errors: list[str] = []

    # -- the source ----------------------------------------------------------------

    def _records(self) -> Iterator[tuple[float, bytes, bytes | None]]:
        """``(created_at, value, key)`` of each valid event of the source."""
        with_key = self.key == "repo"
        if self.kind == "generated":
            for event in generator.generate_events(
                self.seed, self.start, None, self.repos, rate=self.event_rate
            ):
                value = json.dumps(event, separators=(",", ":")).encode()
                created_at = gharchive.parse_created_at(event["created_at"])
                yield created_at, value, _repo_key(event) if with_key else None
            return
        stats = self._read_stats
        if self.kind == "files":
            lines = gharchive.read_lines(self.source, stats)
        else:
            lines = (
                line
                for url in self.archive_urls
                for line in gharchive.fetch_archive_lines(url, stats)
            )
        for item in gharchive.parse_lines(lines, stats):
            yield item.created_at, item.line, _repo_key(item.event) if with_key else None

    def _time_end(self, first_created_at: float) -> float | None:
        """The simulated time at which ``hours`` ends the run."""
        if self.hours is None or self.kind == "archive":
            return None
        origin = self.start if self.kind == "generated" else first_created_at
        return origin + self.hours * 3600

    # -- Kafka ----------------------------------------------------------------------

    def _client_config(self) -> dict:
        return {
            "bootstrap.servers": self.bootstrap,
            "logger": logging.getLogger("wallaroo.demo.streamer.kafka"),
            **self.producer_config,
        }

    def _failed(self, err: Any) -> None:
        self.stats.delivery_errors += 1
        text = err.str() if hasattr(err, "str") else str(err)
        if len(self._first_errors) < 3 and text not in self._first_errors:
            self._first_errors.append(text)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        stats = self.stats
        if err is not None:
            self._failed(err)
            return
        stats.events_sent += 1
        partition, offset = msg.partition(), msg.offset()
        if offset is not None and offset >= 0:
            self._ends[partition] = max(self._ends.get(partition, 0), offset + 1)
            self._firsts[partition] = min(self._firsts.get(partition, offset), offset)

    def _in_flight(self) -> int:
        stats = self.stats
        return stats.events_produced - stats.events_sent - stats.delivery_errors

    def _produce(self, producer: Producer, value: bytes, key: bytes | None) -> None:
        """Hand one message to the producer; a refusal (too large...) counts as failed."""
        while True:
            try:
                producer.produce(self.topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
            except KafkaException as err:
                self._failed(err.args[0])
                return

    # -- waiting -------------------------------------------------------------------

    def _wait_until(
        self, target: float, producer: Producer, stop: threading.Event, progress: _Progress
    ) -> bool:
        """Sleep until the monotonic time ``target``; False if stopped meanwhile."""
        while True:
            left = target - time.monotonic()
            if left <= 0:
                return True
            if stop.wait(min(left, _NAP)):
                return False
            producer.poll(0)
            progress.update(self.stats)

    def _throttle(
        self, gate: _LagGate, producer: Producer, stop: threading.Event, progress: _Progress
    ) -> float:
        """Wait while one more message would put the group more than ``max_lag``
        behind; return the seconds paused."""
        if gate.lag + gate.since_check < gate.max_lag and (
            time.monotonic() - gate.checked_at < LAG_CHECK_INTERVAL
        ):
            return 0.0
        paused_at = time.monotonic()
        waited = False
        while not stop.is_set():
            if time.monotonic() - gate.checked_at >= LAG_CHECK_INTERVAL:
                producer.poll(0)
                measured = gate.measure(self._ends, self._firsts, self._in_flight())
                if measured is not None:
                    self.lag = measured
            if gate.lag + gate.since_check < gate.max_lag:
                break
            self.throttled = waited = True
            note = f"paused: consumer lag {gate.lag + gate.since_check:,} >= {gate.max_lag:,}"
            progress.update(self.stats, note)
            wake = gate.checked_at + LAG_CHECK_INTERVAL
            self._wait_until(wake, producer, stop, progress)
        self.throttled = False
        if not waited:
            return 0.0
        paused = time.monotonic() - paused_at
        self.stats.throttled_seconds += paused
        return paused

    # -- the run -------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> StreamerStats:
        """Stream until the source ends, ``limit`` or ``hours`` is reached or ``stop``
        is set; flush and return the figures.

        Raises :class:`BrokerUnavailable` when the brokers do not answer within
        ``connect_timeout`` seconds, and :class:`wallaroo.demo.gharchive.ArchiveUnavailable`
        (after flushing what was sent) when a download fails.
        """
        stop = stop if stop is not None else threading.Event()
        started = time.monotonic()
        self.stats = StreamerStats()
        self._read_stats = gharchive.ReadStats()
        self._ends, self._firsts, self._first_errors = {}, {}, []
        config = self._client_config()
        producer = Producer(
            {"linger.ms": 5, "enable.idempotence": True, "client.id": "wallaroo-streamer", **config}
        )
        try:
            producer.list_topics(timeout=self.connect_timeout)
        except KafkaException as err:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.bootstrap}: {err.args[0].str()}"
            ) from err
        gate = None
        if self.max_lag is not None and self.lag_group is not None:
            gate = _LagGate(config, self.topic, self.lag_group, self.max_lag)
        stream = self.progress_stream if self.progress_stream is not None else sys.stderr
        progress = _Progress(stream, self.progress, self.progress_interval)
        failed = True
        try:
            self._stream(producer, stop, gate, progress)
            failed = False
        finally:
            left = producer.flush(self.flush_timeout)
            self.stats.bad_lines = self._read_stats.bad_lines
            if left:
                self.stats.delivery_errors += left
                self._first_errors.append(f"{left} not acknowledged within {self.flush_timeout} s")
            if gate is not None:
                gate.close()
            self.stats.seconds = time.monotonic() - started
            progress.finish(self.stats.summary(self.topic, "failed" if failed else "done"))
            if self.stats.delivery_errors:
                log.error(
                    "%d events not delivered to %r (%s)",
                    self.stats.delivery_errors,
                    self.topic,
                    "; ".join(self._first_errors),
                )
        return self.stats

    def _stream(
        self,
        producer: Producer,
        stop: threading.Event,
        gate: _LagGate | None,
        progress: _Progress,
    ) -> None:
        stats = self.stats
        records = self._records()
        sim_base = sim_clock = wall_base = 0.0
        time_end: float | None = None
        first = True
        while not stop.is_set():
            if self.limit is not None and stats.events_produced >= self.limit:
                break
            item = next(records, None)
            stats.bad_lines = self._read_stats.bad_lines
            if item is None:
                break
            created_at, value, key = item
            if first:
                first = False
                sim_base = sim_clock = created_at
                wall_base = time.monotonic()
                time_end = self._time_end(created_at)
                stats.first_created_at = created_at
            if time_end is not None and created_at >= time_end:
                break
            # Archive files are not strictly sorted: an early event goes out at once.
            sim_clock = max(sim_clock, created_at)
            target = wall_base
            if self.speedup > 0:
                target += (sim_clock - sim_base) / self.speedup
            if self.rate_limit is not None:
                target = max(target, wall_base + stats.events_produced / self.rate_limit)
            if not self._wait_until(target, producer, stop, progress):
                break
            if gate is not None:
                # Time paused does not count: no burst to catch up afterwards.
                wall_base += self._throttle(gate, producer, stop, progress)
                if stop.is_set():
                    break
                gate.since_check += 1
            self._produce(producer, value, key)
            stats.events_produced += 1
            stats.last_created_at = created_at
            producer.poll(0)
            progress.update(stats)


# -- the command line ------------------------------------------------------------------


def _settings(pairs: list[str]) -> dict:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"-X expects KEY=VALUE, got {pair!r}")
        settings[name.strip()] = value
    return settings


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m wallaroo.demo.streamer``."""
    parser = argparse.ArgumentParser(
        prog="python -m wallaroo.demo.streamer",
        description="Replay GitHub Archive events into a Kafka topic, paced by their "
        "created_at times divided by a speed-up.",
        epilog="Exit status: 0 when the source ended (or on Ctrl-C / SIGTERM) and every "
        "event was delivered; 1 when the broker or the archive could not be reached or "
        "deliveries failed; 2 for bad arguments.",
    )
    parser.add_argument(
        "--brokers",
        default="127.0.0.1:9092",
        metavar="HOST:PORT,...",
        help="Kafka bootstrap servers (default 127.0.0.1:9092; port 9092 if omitted)",
    )
    parser.add_argument("--topic", default="gharchive", help="topic to write (default gharchive)")
    parser.add_argument(
        "--source",
        default="generated",
        metavar="SRC",
        help="'generated' (default: invented events, offline), an hour file "
        "(.json / .json.gz) or a directory of them, or "
        "gharchive:YYYY-MM-DD-H[..YYYY-MM-DD-H] to download from data.gharchive.org",
    )
    parser.add_argument(
        "--speedup",
        type=float,
        default=24.0,
        metavar="X",
        help="simulated seconds per wall second (default 24; 0: as fast as possible)",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="stop after N events")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of generated events (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--start",
        default=gharchive.DEFAULT_START,
        metavar="YYYY-MM-DDTHH",
        help=f"time of the first generated event, or first hour of a bare 'gharchive' "
        f"source (default {gharchive.DEFAULT_START})",
    )
    parser.add_argument(
        "--hours",
        type=float,
        metavar="H",
        help="stop after H simulated hours (gharchive sources: download H hour files)",
    )
    parser.add_argument(
        "--rate-limit", type=float, metavar="MSG/S", help="at most MSG/S messages per second"
    )
    parser.add_argument(
        "--repos",
        type=int,
        default=generator.DEFAULT_REPOS,
        metavar="N",
        help=f"repositories of generated events (default {generator.DEFAULT_REPOS:,})",
    )
    parser.add_argument(
        "--event-rate",
        type=float,
        default=generator.DEFAULT_RATE,
        metavar="EV/S",
        help="generated events per simulated second on average (default %(default)g)",
    )
    parser.add_argument(
        "--key",
        choices=("repo", "none"),
        default="repo",
        help="message key: the repository name (default) or none",
    )
    parser.add_argument(
        "--max-lag",
        type=int,
        metavar="N",
        help="pause while the consumer group --lag-group trails by more than N messages",
    )
    parser.add_argument("--lag-group", metavar="GROUP", help="consumer group watched by --max-lag")
    parser.add_argument(
        "--archive-url",
        default=gharchive.ARCHIVE_URL,
        metavar="URL",
        help=f"where gharchive: sources download from (default {gharchive.ARCHIVE_URL})",
    )
    parser.add_argument(
        "-X",
        "--producer-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting (repeatable; e.g. security.protocol=SSL)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=PROGRESS_INTERVAL,
        metavar="S",
        help=f"seconds between progress lines when stderr is not a terminal "
        f"(default {PROGRESS_INTERVAL:g})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up when the brokers do not answer within S seconds (default 10)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress, only the final summary"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the streamer's command line; return the exit status."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="streamer: %(levelname)s %(message)s")
    try:
        streamer = Streamer(
            opts.brokers,
            opts.topic,
            source=opts.source,
            speedup=opts.speedup,
            limit=opts.limit,
            seed=opts.seed,
            progress=not opts.quiet,
            max_lag=opts.max_lag,
            lag_group=opts.lag_group,
            start=opts.start,
            hours=opts.hours,
            rate_limit=opts.rate_limit,
            repos=opts.repos,
            event_rate=opts.event_rate,
            key=opts.key,
            archive_url=opts.archive_url,
            producer_config=_settings(opts.producer_config),
            progress_interval=opts.progress_interval,
            connect_timeout=opts.connect_timeout,
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        for sig, handler in previous.items():  # a second signal ends at once
            signal.signal(sig, handler)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        stats = streamer.run(stop)
    except (BrokerUnavailable, gharchive.ArchiveUnavailable) as err:
        print(f"streamer: error: {err}", file=sys.stderr)
        return 1
    if opts.quiet:
        print(stats.summary(opts.topic), file=sys.stderr)
    return 1 if stats.delivery_errors else 0


if __name__ == "__main__":
    sys.exit(main())
