"""The demo's companions, each a child process of the runner.

The runner side, :class:`Companions`, starts ``python -m
wallaroo.demo.companions streamer ...`` (generated events into the source
topic) and ``... dashboard ...`` (the live page of the sink topic, which also
prints the leaderboard lines on the terminal), logs a companion that ends
early, and stops them with the run. The engine's process runs the app and
nothing else.

The child side, :func:`main`, ignores Ctrl-C (the runner stops it after the
engine has drained, so the dashboard shows the last leaderboards), ends on
SIGTERM, and ends by itself when the runner is gone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import wallaroo

log = logging.getLogger("wallaroo.demo")

#: The streamer pauses while the app's consumer group trails by more than this.
MAX_LAG = 3_000

#: How long a companion may take to stop before it is killed.
STOP_TIMEOUT = 10.0


def _child_env() -> dict:
    """The runner's environment, with this ``wallaroo`` first on the path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(wallaroo.__file__)))
    path = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


class Companions:
    """The streamer and dashboard child processes of one demo run."""

    def __init__(self, opts: argparse.Namespace, plan: dict) -> None:
        self.opts = opts
        self.plan = plan
        self.children: dict = {}
        self._stopping = threading.Event()

    def _commands(self) -> dict:
        """Name -> (command line, what it does) of each companion to start."""
        from wallaroo.demo import kafka_ends

        sources, sinks = kafka_ends(self.plan)
        base = [sys.executable, "-m", "wallaroo.demo.companions"]
        parent = ["--parent", str(os.getpid())]
        commands = {}
        if sources:
            source = sources[0]
            streamer = [*base, "streamer", *parent, "--brokers", source["bootstrap"]]
            streamer += ["--topic", source["topic"], "--group", source["group_id"]]
            streamer += ["--speedup", str(self.opts.demo_speedup)]
            if self.opts.demo_events is not None:
                streamer += ["--events", str(self.opts.demo_events)]
            what = (f"feeding generated GitHub events into {source['topic']!r} "
                    f"at {self.opts.demo_speedup:g}x speed")
            commands["streamer"] = (streamer, what)
        if sinks:
            sink = sinks[0]
            dashboard = [*base, "dashboard", *parent, "--brokers", sink["bootstrap"]]
            dashboard += ["--topic", sink["topic"], "--port", str(self.opts.dashboard_port)]
            commands["dashboard"] = (dashboard, f"showing the leaderboards of {sink['topic']!r}")
        return commands

    def start(self) -> None:
        """Start the companions the app's Kafka ends call for."""
        env = _child_env()
        commands = self._commands()
        if not commands:
            log.warning("demo: the app has no Kafka source or sink; nothing to start beside it")
        for name, (command, what) in commands.items():
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env)
            self.children[name] = child
            log.info("demo %s (pid %d): %s", name, child.pid, what)
            threading.Thread(
                target=self._watch, args=(name, child), name=f"demo watch {name}", daemon=True
            ).start()

    def _watch(self, name: str, child: subprocess.Popen) -> None:
        """Log a companion that ends before the run (the run goes on)."""
        code = child.wait()
        if self._stopping.is_set():
            return
        if code == 0:
            log.info("demo %s finished", name)
        else:
            log.warning("demo %s exited with status %s; the app runs on without it", name, code)

    def stop(self) -> None:
        """Stop every companion: SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`."""
        self._stopping.set()
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        for name, child in self.children.items():
            try:
                child.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("demo %s did not stop in %g s; killing it", name, STOP_TIMEOUT)
                child.kill()
                child.wait()


# -- the child side ----------------------------------------------------------------


def _serve_until_told(parent: int, done: Callable[[], bool] = lambda: False) -> None:
    """Wait for SIGTERM, for the runner ``parent`` to be gone or for ``done()``.
    The handler only appends to a list (a handler taking a lock the main
    thread holds would deadlock)."""
    received: list = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    while not received and os.getppid() == parent and not done():
        time.sleep(0.2)


def _summary(leaders: list, limit: int = 5) -> str:
    parts = [f"{i}. {item['repo']} {item['stars']}*" for i, item in enumerate(leaders[:limit], 1)]
    return "top: " + "  ".join(parts) if parts else "top: (no stars yet)"


class _TerminalLines:
    """Prints the global top on the terminal when it changes, at most twice a second."""

    def __init__(self) -> None:
        self.last_line = ""
        self.last_print = 0.0

    def __call__(self, leaders: list) -> None:
        line = _summary(leaders)
        now = time.monotonic()
        if line == self.last_line or now - self.last_print < 0.5:
            return
        self.last_line, self.last_print = line, now
        print(line, file=sys.stderr, flush=True)


def _settle(dashboard: Any, timeout: float = 3.0) -> None:
    """Let the dashboard catch up with the last leaderboards of the run."""
    deadline = time.monotonic() + timeout
    consumed, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = dashboard.board.snapshot()["messages_consumed"]
        if now != consumed:
            consumed, quiet_since = now, time.monotonic()
        elif consumed > 0 and time.monotonic() - quiet_since > 0.5:
            return
        time.sleep(0.1)


def _dashboard(opts: argparse.Namespace) -> int:
    from wallaroo.demo.dashboard import Dashboard

    dashboard = None
    for port in dict.fromkeys((opts.port, 0)):
        try:
            dashboard = Dashboard(opts.brokers, topic=opts.topic, host="127.0.0.1", port=port)
            dashboard.on_change = _TerminalLines()
            dashboard.start()
            break
        except OSError as err:
            log.warning("dashboard port %s unavailable (%s); using a free port", port, err)
            dashboard = None
    if dashboard is None:
        return 1
    print(f"dashboard: {dashboard.url}", file=sys.stderr, flush=True)
    _serve_until_told(opts.parent)
    _settle(dashboard)
    leaders = dashboard.board.snapshot()["leaders"]
    if leaders:
        print("final " + _summary(leaders), file=sys.stderr, flush=True)
    dashboard.stop()
    return 0


def _streamer(opts: argparse.Namespace) -> int:
    from wallaroo.demo.streamer import Streamer

    streamer = Streamer(
        opts.brokers,
        opts.topic,
        source="generated",
        speedup=opts.speedup,
        limit=opts.events,
        progress=False,
        max_lag=MAX_LAG,
        lag_group=opts.group,
        # Generated events: when the runner (and its embedded broker) is gone,
        # waiting long for the last acknowledgements serves nothing.
        flush_timeout=3.0,
    )
    stop = threading.Event()
    failed: list = []

    def run() -> None:
        try:
            streamer.run(stop)
        except Exception as err:  # reported below, as the exit status
            failed.append(err)

    worker = threading.Thread(target=run, name="streamer")
    worker.start()
    _serve_until_told(opts.parent, done=lambda: not worker.is_alive())
    stop.set()
    worker.join()
    if failed:
        print(f"demo streamer: {failed[0]}", file=sys.stderr, flush=True)
        return 1
    return 1 if streamer.stats.delivery_errors else 0


def main(argv: list | None = None) -> int:
    """``python -m wallaroo.demo.companions streamer|dashboard ...`` (started by the runner)."""
    parser = argparse.ArgumentParser(
        prog="python -m wallaroo.demo.companions",
        description="A companion of the demo, started and stopped by the runner.",
    )
    parser.add_argument("role", choices=("streamer", "dashboard"))
    parser.add_argument("--parent", type=int, required=True, help="the runner's pid")
    parser.add_argument("--brokers", required=True, metavar="HOST:PORT")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", help="streamer: the app's consumer group (paces it)")
    parser.add_argument("--speedup", type=float, default=24.0, help="streamer: speed-up")
    parser.add_argument("--events", type=int, help="streamer: stop after N events")
    parser.add_argument("--port", type=int, default=8080, help="dashboard: HTTP port")
    # Ctrl-C reaches the whole process group: the runner stops its companions
    # once the engine has drained (so the dashboard shows the last leaderboards).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    opts = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return _streamer(opts) if opts.role == "streamer" else _dashboard(opts)


if __name__ == "__main__":
    sys.exit(main())
