"""Live web dashboard of the star leaders example.

The star leaders application publishes, on the Kafka topic ``leaderboard``,
one message per change of a state partition's top 10::

    {"leaders": [{"repo": "owner/name", "stars": N, "recent_events": [...]}, ...],
     "partition": K}

A message replaces the previous leaders of its partition ``K``. This module
keeps the latest leaders of every partition, merges them into a global top 10
(stars descending, then repo name) and serves it over HTTP:

* ``/`` -- the page (``dashboard_static/``: plain HTML, CSS and JavaScript);
* ``/api/leaders`` -- the current snapshot as JSON;
* ``/events`` -- Server-Sent Events: the snapshot again on every change.

Run it with ``python -m wallaroo.demo.dashboard --brokers HOST:PORT``, or embed it::

    dashboard = Dashboard("127.0.0.1:9092")
    dashboard.on_change = lambda leaders: print(leaders[0]["repo"])
    dashboard.start()
    print(dashboard.url)
    ...
    dashboard.stop()

The Kafka consumer assigns itself every partition of the topic from the
beginning (no consumer group membership, no committed offsets): a dashboard
started late still sees the current leaders. It waits, with back-off, for the
broker and the topic to exist, and picks up partitions added later.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, TypedDict
from urllib.parse import urlsplit

log = logging.getLogger("wallaroo.demo.dashboard")

#: Where the page's files live (shipped inside the package).
STATIC_DIR = Path(__file__).resolve().parent / "dashboard_static"
#: How many repositories the global leaderboard shows.
TOP_N = 10
#: Recent events kept per repository (the application keeps 3).
MAX_RECENT_EVENTS = 3
#: Seconds between SSE keep-alive pings when nothing changes.
SSE_PING_INTERVAL = 15.0
#: Least seconds between two SSE pushes to one client (changes in between coalesce).
SSE_MIN_PUSH_INTERVAL = 0.1
#: Back-off, in seconds, while the broker or the topic is not there yet.
RETRY_INITIAL = 0.5
RETRY_MAX = 10.0
#: Seconds between checks for partitions added to the topic.
PARTITION_REFRESH_INTERVAL = 10.0
#: Timeout of one metadata request.
METADATA_TIMEOUT = 2.0
#: The same Kafka error is logged at most once in this many seconds.
KAFKA_ERROR_LOG_INTERVAL = 30.0

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


class RecentEvent(TypedDict):
    """A fork or pull-request event of a leader, reduced to what the page shows."""

    type: str
    actor: str | None
    created_at: str | None
    id: str | None
    url: str | None


class Leader(TypedDict):
    """One repository of a leaderboard."""

    repo: str
    stars: int
    partition: int
    recent_events: list[RecentEvent]


#: The ``on_change`` hook: called with the new global top 10.
ChangeCallback = Callable[[list[Leader]], None]


class BadMessage(ValueError):
    """A ``leaderboard`` message that is not JSON or not of the expected shape."""


def _event_url(event: Mapping[str, Any]) -> str | None:
    """The GitHub page of a pull request or of the fork, when the event names it."""
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return None
    for key in ("pull_request", "forkee"):
        item = payload.get(key)
        if isinstance(item, dict):
            url = item.get("html_url")
            if isinstance(url, str) and url.startswith("https://github.com/"):
                return url
    return None


def normalize_event(event: Mapping[str, Any]) -> RecentEvent:
    """Reduce a GitHub Archive event dict to a :class:`RecentEvent`.

    Every field is optional: ``actor`` may be a login or a dict with ``login``;
    ``id`` may be a number or a string.
    """
    kind = event.get("type")
    actor = event.get("actor")
    if isinstance(actor, dict):
        actor = actor.get("login") or actor.get("display_login")
    created_at = event.get("created_at")
    event_id = event.get("id")
    if isinstance(event_id, bool) or not isinstance(event_id, (int, str)):
        event_id = None
    return {
        "type": kind if isinstance(kind, str) and kind else "Event",
        "actor": actor if isinstance(actor, str) and actor else None,
        "created_at": created_at if isinstance(created_at, str) else None,
        "id": None if event_id is None else str(event_id),
        "url": _event_url(event),
    }


def parse_message(value: bytes | str | None) -> tuple[int, list[Leader]]:
    """Parse one ``leaderboard`` message value into ``(partition, leaders)``.

    Raises :class:`BadMessage` when the value is not JSON, or not an object
    with an integer ``partition`` and a list ``leaders`` of objects with a
    string ``repo`` and an integer ``stars``. ``recent_events`` may be missing;
    entries of it that are not objects are skipped.
    """
    if value is None:
        raise BadMessage("empty message value")
    try:
        message = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadMessage(f"expected a JSON object, got {type(message).__name__}")
    partition = message.get("partition")
    # bool is an int in Python, but JSON true is no number.
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        raise BadMessage(f"'partition' must be a non-negative integer, got {partition!r}")
    raw_leaders = message.get("leaders")
    if not isinstance(raw_leaders, list):
        raise BadMessage("'leaders' must be a list")
    leaders: list[Leader] = []
    for index, raw in enumerate(raw_leaders):
        if not isinstance(raw, dict):
            raise BadMessage(f"leaders[{index}] is not an object")
        repo, stars = raw.get("repo"), raw.get("stars")
        if not isinstance(repo, str) or not repo:
            raise BadMessage(f"leaders[{index}].repo must be a non-empty string")
        if not isinstance(stars, int) or isinstance(stars, bool):
            raise BadMessage(f"leaders[{index}].stars must be an integer")
        events = raw.get("recent_events") or []
        if not isinstance(events, list):
            raise BadMessage(f"leaders[{index}].recent_events must be a list")
        recent = [normalize_event(e) for e in events if isinstance(e, dict)]
        leaders.append(
            {
                "repo": repo,
                "stars": stars,
                "partition": partition,
                "recent_events": recent[-MAX_RECENT_EVENTS:],
            }
        )
    return partition, leaders


def merge_leaders(partitions: Mapping[int, Sequence[Leader]], limit: int = TOP_N) -> list[Leader]:
    """The global top ``limit`` of the per-partition leaders.

    Sorted by stars descending, then repo name ascending. A repository is in
    one partition only; should it appear twice, its entry with the most stars
    counts (the lower partition number on a tie).
    """
    best: dict[str, Leader] = {}
    for partition in sorted(partitions):
        for leader in partitions[partition]:
            current = best.get(leader["repo"])
            if current is None or leader["stars"] > current["stars"]:
                best[leader["repo"]] = leader
    return sorted(best.values(), key=lambda leader: (-leader["stars"], leader["repo"]))[:limit]


def _iso(epoch: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (``...Z``), None stays None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leaderboard:
    """The latest leaders of each partition, their merged top 10 and counters.

    Thread-safe. Every change (a message, good or bad, or a new consumer
    status) advances :attr:`version`; :meth:`wait_for_change` blocks until then.
    """

    def __init__(self, limit: int = TOP_N, *, topic: str = "", brokers: str = "") -> None:
        self._limit = limit
        self._topic = topic
        self._brokers = brokers
        self._cond = threading.Condition()
        self._partitions: dict[int, list[Leader]] = {}
        self._updates: dict[int, int] = {}
        self._top: list[Leader] = []
        self._messages = 0
        self._bad = 0
        self._last_update: float | None = None
        self._status = "starting"
        self._version = 0
        self._closed = False
        self._cached: tuple[int, bytes] = (-1, b"")

    @property
    def version(self) -> int:
        """How many changes happened so far."""
        with self._cond:
            return self._version

    @property
    def top(self) -> list[Leader]:
        """The current global top 10 (a copy)."""
        with self._cond:
            return list(self._top)

    def apply(self, value: bytes | str | None) -> list[Leader] | None:
        """Count one message and apply it if it is good.

        Returns the new global top 10 when it changed, otherwise None. Raises
        :class:`BadMessage` (after counting it) for a bad message.
        """
        try:
            partition, leaders = parse_message(value)  # outside the lock: readers go on
        except BadMessage:
            with self._cond:
                self._messages += 1
                self._bad += 1
                self._changed()
            raise
        with self._cond:
            self._messages += 1
            self._partitions[partition] = leaders
            self._updates[partition] = self._updates.get(partition, 0) + 1
            self._last_update = time.time()
            self._changed()
            top = merge_leaders(self._partitions, self._limit)
            if top == self._top:
                return None
            self._top = top
            return list(top)

    def _changed(self) -> None:
        """Advance the version and wake the waiters (the lock is held)."""
        self._version += 1
        self._cond.notify_all()

    def set_status(self, status: str) -> None:
        """Record what the Kafka consumer is doing (shown in the page's header)."""
        with self._cond:
            if status != self._status:
                self._status = status
                self._changed()

    def snapshot(self) -> dict[str, Any]:
        """Everything ``/api/leaders`` reports, as a JSON-ready dict."""
        with self._cond:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> dict[str, Any]:
        return {
            "leaders": [{"rank": rank, **leader} for rank, leader in enumerate(self._top, 1)],
            "updates_per_partition": {str(p): n for p, n in sorted(self._updates.items())},
            "last_update": _iso(self._last_update),
            "last_update_ms": None if self._last_update is None else int(self._last_update * 1000),
            "messages_consumed": self._messages,
            "bad_messages": self._bad,
            "status": self._status,
            "topic": self._topic,
            "brokers": self._brokers,
            "version": self._version,
        }

    def snapshot_json(self) -> tuple[int, bytes]:
        """``(version, snapshot as JSON bytes)``, serialized once per version."""
        with self._cond:
            if self._cached[0] != self._version:
                body = json.dumps(self._snapshot_locked(), separators=(",", ":"))
                self._cached = (self._version, body.encode())
            return self._cached

    def wait_for_change(self, seen_version: int, timeout: float) -> bool:
        """Block until the version differs from ``seen_version`` (True), the
        timeout passes or the board is closed (False)."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or self._version != seen_version, timeout=timeout
            )
            return not self._closed and self._version != seen_version

    def close(self) -> None:
        """Wake every waiter for good (the server is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _LibrdkafkaLog:
    """librdkafka's own log lines, sent to Python logging at DEBUG level:
    connection failures are reported once, clearly, by the error callback."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def log(self, level: int, msg: str, *args: object) -> None:
        self._logger.debug(msg, *args)


class _ConsumerThread(threading.Thread):
    """Reads the topic from the beginning of every partition into a Leaderboard."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        board: Leaderboard,
        stopping: threading.Event,
        notify: Callable[[list[Leader]], None],
    ) -> None:
        super().__init__(name=f"dashboard-consumer-{topic}", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.board = board
        self.stopping = stopping
        self.notify = notify
        self._error_logged_at: dict[str, float] = {}
        self._last_failure = ""

    def run(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                # Required by the client; never joined (assign, not subscribe) nor committed.
                "group.id": "wallaroo-dashboard",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log.connection.close": False,  # idle disconnects are normal
                "error_cb": self._on_kafka_error,
                "logger": _LibrdkafkaLog(logging.getLogger("wallaroo.demo.dashboard.librdkafka")),
            }
        )
        try:
            self._run(consumer)
        except Exception:
            log.exception("dashboard consumer stopped by an unexpected error")
            self.board.set_status("consumer crashed (see the dashboard's log)")
        finally:
            consumer.close()

    def _run(self, consumer: Any) -> None:
        """Wait for the topic, assign its partitions, consume until stopped."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        partitions = self._wait_for_partitions(consumer)
        if partitions is None:
            return
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        log.info(
            "consuming %s partition(s) of topic %r on %s from the beginning",
            len(partitions),
            self.topic,
            self.bootstrap,
        )
        assigned = set(partitions)
        self.board.set_status(f"consuming {len(assigned)} partition(s)")
        next_refresh = time.monotonic() + PARTITION_REFRESH_INTERVAL
        while not self.stopping.is_set():
            messages = consumer.consume(num_messages=500, timeout=0.2)
            for message in messages:
                self._handle(message)
            healthy = any(message.error() is None for message in messages)
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + PARTITION_REFRESH_INTERVAL
                current = self._partitions(consumer)
                healthy = healthy or current is not None
                added = sorted(set(current or ()) - assigned)
                if added:
                    consumer.incremental_assign(
                        [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in added]
                    )
                    assigned.update(added)
                    log.info("topic %r grew: now consuming partitions %s", self.topic, added)
            if healthy:  # back from a broker outage, if there was one
                self.board.set_status(f"consuming {len(assigned)} partition(s)")

    def _handle(self, message: Any) -> None:
        """Apply one consumed message; report a changed top 10."""
        error = message.error()
        if error is not None:
            self._on_kafka_error(error)
            return
        try:
            changed = self.board.apply(message.value())
        except BadMessage as exc:
            log.warning(
                "bad message at %s[%s]@%s: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )
            return
        if changed is not None:
            self.notify(changed)

    def _partitions(self, consumer: Any) -> list[int] | None:
        """The topic's partition ids; None when the broker cannot be reached."""
        from confluent_kafka import KafkaException

        try:
            metadata = consumer.list_topics(self.topic, timeout=METADATA_TIMEOUT)
        except KafkaException as exc:
            self._last_failure = f"broker {self.bootstrap} unreachable ({exc.args[0].str()})"
            return None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            self._last_failure = f"topic {self.topic!r} does not exist yet on {self.bootstrap}"
            return []
        return sorted(topic.partitions)

    def _wait_for_partitions(self, consumer: Any) -> list[int] | None:
        """Retry with back-off until the topic has partitions; None if stopped first."""
        delay = RETRY_INITIAL
        self.board.set_status(f"connecting to {self.bootstrap}")
        while not self.stopping.is_set():
            partitions = self._partitions(consumer)
            if partitions:
                return partitions
            log.warning("%s; retrying in %.1f s", self._last_failure, delay)
            self.board.set_status(self._last_failure)
            if self.stopping.wait(delay):
                break
            delay = min(delay * 2, RETRY_MAX)
        return None

    def _on_kafka_error(self, error: Any) -> None:
        """Log a Kafka client error, the same kind at most every 30 seconds."""
        kind, now = error.name(), time.monotonic()
        if now - self._error_logged_at.get(kind, -KAFKA_ERROR_LOG_INTERVAL) >= (
            KAFKA_ERROR_LOG_INTERVAL
        ):
            self._error_logged_at[kind] = now
            log.warning("Kafka (%s): %s", self.bootstrap, error.str())
        if error.name() == "_ALL_BROKERS_DOWN":
            self.board.set_status(f"broker {self.bootstrap} unreachable, reconnecting")


class _Handler(BaseHTTPRequestHandler):
    """The dashboard's HTTP endpoints."""

    server: _Server
    server_version = "wallaroo-dashboard"

    def log_message(self, format: str, *args: Any) -> None:
        """Access log lines go to the logger at DEBUG level, not to stderr."""
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        """Route: the API, the event stream, or one of the page's files."""
        path = urlsplit(self.path).path
        if path == "/api/leaders":
            self._send(HTTPStatus.OK, "application/json", self.server.board.snapshot_json()[1])
        elif path == "/events":
            self._stream_events()
        else:
            name = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
            static = self.server.static_files.get(name)
            if static is None:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")
            else:
                self._send(HTTPStatus.OK, _CONTENT_TYPES[static.suffix], static.read_bytes())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        """A complete, uncached response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream_events(self) -> None:
        """Server-Sent Events: the snapshot now, then after every change."""
        board, stopping = self.server.board, self.server.stopping
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        try:
            self.wfile.write(b"retry: 2000\n\n")
            sent = -1
            while not stopping.is_set():
                version, body = board.snapshot_json()
                if version != sent:
                    self.wfile.write(b"event: leaders\nid: %d\ndata: %s\n\n" % (version, body))
                    self.wfile.flush()
                    sent = version
                    stopping.wait(SSE_MIN_PUSH_INTERVAL)
                elif not board.wait_for_change(sent, SSE_PING_INTERVAL):
                    # An event, not a comment: the page's watchdog must see it.
                    self.wfile.write(b"event: ping\ndata: {}\n\n")
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            log.debug("SSE client %s went away", self.address_string())


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries the dashboard's shared state."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        board: Leaderboard,
        stopping: threading.Event,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.board = board
        self.stopping = stopping
        self.static_files = {
            path.name: path
            for path in STATIC_DIR.iterdir()
            if path.is_file() and path.suffix in _CONTENT_TYPES
        }
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed (mostly: the client went away) is logged, not printed."""
        log.debug("HTTP request from %s failed", client_address, exc_info=True)


class Dashboard:
    """The dashboard: a Kafka consumer thread and an HTTP server thread.

    ``bootstrap`` is the Kafka address (``HOST:PORT[,...]``). ``port=0`` picks a
    free port; :attr:`url` tells which once :meth:`start` returned.
    :attr:`on_change`, if set, is called from the consumer thread with the
    new global top 10 whenever it changes; its exceptions are logged.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str = "leaderboard",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_change: ChangeCallback | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.host = host
        self.port = port
        self.on_change = on_change
        self.board = Leaderboard(topic=topic, brokers=bootstrap)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/``."""
        if self._server is None:
            raise RuntimeError("the dashboard is not started")
        address = self._server.server_address
        host, port = str(address[0]), address[1]
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def start(self) -> Dashboard:
        """Bind the HTTP port and start both threads; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the dashboard is already started")
        self._server = _Server((self.host, self.port), self.board, self._stopping)
        consumer = _ConsumerThread(
            self.bootstrap, self.topic, self.board, self._stopping, self._notify
        )
        http = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="dashboard-http",
            daemon=True,
        )
        self._threads = [consumer, http]
        for thread in self._threads:
            thread.start()
        log.info("dashboard of topic %r on %s at %s", self.topic, self.bootstrap, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and consuming; waits up to ``timeout`` seconds per thread.
        Stopping twice, or a dashboard never started, does nothing."""
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self.board.close()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _notify(self, leaders: list[Leader]) -> None:
        """Call :attr:`on_change`, if set, logging what it raises."""
        callback = self.on_change
        if callback is None:
            return
        try:
            callback(leaders)
        except Exception:
            log.exception("the dashboard's on_change callback failed")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wallaroo.demo.dashboard``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m wallaroo.demo.dashboard",
        description="Web dashboard of the star leaders example's 'leaderboard' topic.",
    )
    parser.add_argument("--brokers", required=True, metavar="HOST:PORT", help="Kafka brokers")
    parser.add_argument("--topic", default="leaderboard", help="topic (default leaderboard)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A plain list, not an Event: a handler taking a lock the main thread may hold deadlocks.
    received: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, _frame: received.append(signum))
    dashboard = Dashboard(args.brokers, args.topic, args.host, args.port)
    try:
        dashboard.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Dashboard: {dashboard.url}", flush=True)
    while not received:
        time.sleep(0.2)
    log.info("stopping (signal %s)", received[0])
    dashboard.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
