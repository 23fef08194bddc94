"""What ``python -m wallaroo star_leaders`` adds around the star leaders app.

With no Kafka given, the runner starts an embedded broker; this module then
feeds it generated GitHub events (the archive streamer, at a speed-up), serves
the live dashboard, and prints leaderboard changes on the terminal. With real
brokers it only serves the dashboard (feed the topic with
``python -m wallaroo.demo.streamer``). Everything stops with the run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger("wallaroo.demo")

#: The app this module knows how to accompany.
STAR_LEADERS = "star_leaders"

#: The original example's primary.sh flags, filled in when absent.
STAR_LEADERS_DEFAULTS = (
    ("--kafka_source_topic", "gharchive"),
    ("--kafka_sink_topic", "leaderboard"),
    ("--kafka_sink_max_message_size", "250000"),
    ("--kafka_sink_max_produce_buffer_ms", "10"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's flags for the star leaders demo."""
    group = parser.add_argument_group("star leaders demo (python -m wallaroo star_leaders)")
    group.add_argument(
        "--no-demo",
        action="store_true",
        help="run only the app: no built-in streamer, dashboard or terminal leaderboard",
    )
    group.add_argument(
        "--demo-speedup",
        type=float,
        default=24.0,
        metavar="X",
        help="speed-up of the built-in event streamer (default 24, as the original)",
    )
    group.add_argument(
        "--demo-events",
        type=int,
        metavar="N",
        help="stop the built-in streamer after N events (default: endless)",
    )
    group.add_argument(
        "--dashboard-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="dashboard port on 127.0.0.1 (default 8080; a free port if taken)",
    )


def is_star_leaders(module: Any) -> bool:
    """Whether ``module`` is the star leaders app (bundled or the original)."""
    return getattr(module, "__name__", "") == STAR_LEADERS


def with_defaults(argv: list) -> list:
    """``argv`` with the original example's Kafka flags added where absent."""
    present = {arg.split("=", 1)[0] for arg in argv}
    extra = []
    for flag, value in STAR_LEADERS_DEFAULTS:
        if flag not in present:
            extra += [flag, value]
    return [*argv, *extra]


def _summary(leaders: list, limit: int = 5) -> str:
    parts = [f"{i}. {item['repo']} {item['stars']}*" for i, item in enumerate(leaders[:limit], 1)]
    return "top: " + "  ".join(parts) if parts else "top: (no stars yet)"


class Companions:
    """The streamer, dashboard and terminal printer of one demo run."""

    def __init__(self, opts: argparse.Namespace, plan: dict, embedded: bool) -> None:
        self.opts = opts
        self.plan = plan
        self.embedded = embedded
        self.stop_event = threading.Event()
        self.threads: list = []
        self.dashboard: Any | None = None
        self._last_line = ""
        self._last_print = 0.0

    def _kafka_ends(self) -> tuple:
        pipeline = self.plan["pipelines"][0]
        return pipeline["source"], pipeline["sink"]

    def start(self) -> None:
        """Start what the demo needs around the engine."""
        source, sink = self._kafka_ends()
        if sink is not None and sink.get("kind") == "kafka":
            self._start_dashboard(sink["bootstrap"], sink["topic"])
        if self.embedded and source.get("kind") == "kafka":
            self._start_streamer(source)

    def _start_dashboard(self, bootstrap: str, topic: str) -> None:
        from wallaroo.demo.dashboard import Dashboard

        dashboard = None
        for port in (self.opts.dashboard_port, 0):
            try:
                dashboard = Dashboard(bootstrap, topic=topic, host="127.0.0.1", port=port)
                dashboard.on_change = self._print_leaders
                dashboard.start()
                break
            except OSError as err:
                log.warning("dashboard port %s unavailable (%s); using a free port", port, err)
                dashboard = None
        if dashboard is None:
            return
        self.dashboard = dashboard
        print(f"dashboard: {dashboard.url}", file=sys.stderr, flush=True)

    def _start_streamer(self, source: dict) -> None:
        from wallaroo.demo.streamer import Streamer

        streamer = Streamer(
            source["bootstrap"],
            source["topic"],
            source="generated",
            speedup=self.opts.demo_speedup,
            limit=self.opts.demo_events,
            progress=False,
            max_lag=3_000,
            lag_group=source["group_id"],
        )
        log.info(
            "feeding generated GitHub events into %r at %gx speed (the built-in streamer)",
            source["topic"],
            self.opts.demo_speedup,
        )
        self._spawn("streamer", lambda: streamer.run(self.stop_event))

    def _spawn(self, name: str, target: Callable[[], Any]) -> None:
        def guarded() -> None:
            try:
                target()
            except Exception:
                log.exception("demo %s failed", name)

        thread = threading.Thread(target=guarded, name=f"demo {name}", daemon=True)
        thread.start()
        self.threads.append(thread)

    def _print_leaders(self, leaders: list) -> None:
        line = _summary(leaders)
        now = time.monotonic()
        if line == self._last_line or now - self._last_print < 0.5:
            return
        self._last_line, self._last_print = line, now
        print(line, file=sys.stderr, flush=True)

    def _settle(self, timeout: float = 3.0) -> None:
        """Let the dashboard catch up with the last leaderboards of the run,
        then print the final top on the terminal."""
        assert self.dashboard is not None
        deadline = time.monotonic() + timeout
        consumed, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.dashboard.board.snapshot()["messages_consumed"]
            if now != consumed:
                consumed, quiet_since = now, time.monotonic()
            elif consumed > 0 and time.monotonic() - quiet_since > 0.5:
                break
            time.sleep(0.1)
        leaders = self.dashboard.board.snapshot()["leaders"]
        if leaders:
            print("final " + _summary(leaders), file=sys.stderr, flush=True)

    def stop(self) -> None:
        """Stop everything this object started."""
        self.stop_event.set()
        if self.dashboard is not None:
            self._settle()
            self.dashboard.stop()
        for thread in self.threads:
            thread.join(timeout=10)
