"""One run's cluster: form it (either role), watch the peers while the
engine runs, and agree on the verdict at the end."""

from __future__ import annotations

import argparse
import logging
import queue
import socket
import threading
import time
from typing import Callable

from wallaroo.cluster.initializer import Initializer
from wallaroo.cluster.member import Member
from wallaroo.cluster.wire import Lines, Membership, send, watch_peer

log = logging.getLogger("wallaroo.cluster")


class Cluster(Initializer, Member):
    """Forms the cluster for one run and watches it while the engine runs."""

    def __init__(self, opts: argparse.Namespace, app_name: str) -> None:
        self.opts = opts
        self.app_name = app_name
        self.done = threading.Event()
        self.membership: Membership | None = None
        self._send_lock = threading.Lock()
        self._report: Callable[[], dict] | None = None
        # What each peer said at the end: its result, the verdict, or "lost".
        self._results: dict = {}
        self._answered: dict = {}
        # Growing and shrinking while the application runs.
        self._server: socket.socket | None = None
        self._change_lock = threading.Lock()
        self._left: set = set()
        self.left = False
        self._on_reconfigure: Callable[[int | None, list, list], None] | None = None
        self._joins: queue.Queue = queue.Queue()
        self._forming = False
        self._admit_lock = threading.Lock()
        self._running = threading.Event()
        self._watch_args: tuple = ()
        self._reader: Lines | None = None
        # Crash recovery: a member that registers again was restarted.
        self.on_restarted: Callable[[str], None] | None = None

    def form(self, extra: dict | None = None) -> Membership:
        """Wait until the cluster is complete; this process's membership.

        ``extra`` (initializer only) is shared with every worker.
        """
        if self.opts.cluster_initializer:
            self.membership = self._initialize(extra or {})
        else:
            self.membership = self._join()
        return self.membership

    def watch(
        self,
        on_lost: Callable[[str], None],
        on_message: Callable[[str, dict], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        """Call ``on_lost(name)`` when a peer's control connection drops,
        ``on_failed(name, reason)`` when a peer reports that its run failed
        while this one goes on, and ``on_message(name, message)`` for what
        peers send (metrics reports)."""
        assert self.membership is not None

        def handle(name: str, message: dict) -> None:
            kind = message.get("type")
            if kind == "reconfigure" and self._on_reconfigure is not None:
                self._reconfigured(message)
            elif kind == "leave" and self.opts.cluster_initializer:
                threading.Thread(
                    target=self.change, kwargs={"remove": name}, daemon=True
                ).start()
            if kind in ("result", "verdict", "lost"):
                self._results.setdefault(name, message)
                self._answered.setdefault(name, threading.Event()).set()
                failed = kind != "lost" and not message.get("ok")
                if (failed and on_failed is not None and not self.done.is_set()
                        and name not in self._left):
                    on_failed(name, str(message.get("reason")))
            if on_message is not None:
                on_message(name, message)

        self._watch_args = (on_lost, handle)
        for name, _sock, reader in self.membership.peers:
            self._watch_peer(name, reader)
        self._running.set()

    def _watch_peer(self, name: str, reader: Lines) -> None:
        on_lost, handle = self._watch_args
        self._answered.setdefault(name, threading.Event())

        def lost(who: str) -> None:
            if who not in self._left:
                on_lost(who)

        threading.Thread(
            target=watch_peer,
            args=(name, reader, lost, self.done, handle),
            name=f"watch {name}",
            daemon=True,
        ).start()

    def on_reconfigure(self, callback: Callable[[int | None, list, list], None]) -> None:
        """``callback(index, addresses, names)`` when the membership changes
        (``index`` None: this worker leaves)."""
        self._on_reconfigure = callback

    def report(self, message: Callable[[], dict], interval: float = 1.0) -> None:
        """Send ``message()`` to the peers every ``interval`` seconds until
        :meth:`finish`, and once more then (a worker's metrics for the
        initializer: ``{"type": "metrics", "snapshot": "..."}``)."""
        self._report = message

        def loop() -> None:
            while not self.done.wait(interval):
                self._send_to_peers(message)

        threading.Thread(target=loop, name="report metrics", daemon=True).start()

    def _send_to_peers(self, message: Callable[[], dict]) -> None:
        if self.membership is None:
            return
        try:
            body = message()
        except Exception:
            log.exception("making a report for the peers")
            return
        with self._send_lock:
            for _name, sock, _reader in self.membership.peers:
                try:
                    send(sock, body)
                except OSError:
                    pass

    def finish(
        self, ok: bool = True, reason: str | None = None, timeout: float = 30.0
    ) -> tuple:
        """Agree on how the run went; ``(ok, reason)`` for the whole cluster.

        Every worker reports its result to the initializer, which answers all
        of them with the verdict, so no worker reports success when another
        one failed or was lost.
        """
        self.done.set()
        self._running.set()
        if self.membership is None:
            return ok, reason
        if self._report is not None:
            self._send_to_peers(self._report)
        self._stop_listening()
        with self._change_lock:  # a change under way settles the membership first
            names = [name for name, _sock, _reader in self.membership.peers]
        if self.opts.cluster_initializer:
            failures = [] if ok else [f"worker {self.membership.names[0]!r}: {reason}"]
            deadline = time.monotonic() + timeout
            for name in names:
                self._answered[name].wait(max(0.0, deadline - time.monotonic()))
                result = self._results.get(name)
                if result is None or result.get("type") == "lost":
                    failures.append(f"lost worker {name!r}")
                elif not result.get("ok"):
                    failures.append(f"worker {name!r}: {result.get('reason')}")
            verdict = {"type": "verdict", "ok": not failures, "reason": "; ".join(failures)}
            self._close_all(verdict)
            return verdict["ok"], verdict["reason"] or None
        with self._send_lock:
            for _name, sock, _reader in self.membership.peers:
                try:
                    send(sock, {"type": "result", "ok": ok, "reason": reason, "left": self.left})
                except OSError:
                    pass
        if self.left:
            # Left the cluster: the others go on; nobody owes this worker a verdict.
            self._close_all(None)
            return ok, reason
        self._answered[names[0]].wait(timeout)
        verdict = self._results.get(names[0]) or {"type": "lost"}
        self._close_all(None)
        if verdict.get("type") != "verdict":
            return False, reason or "lost the initializer before it gave the verdict"
        return bool(verdict.get("ok")) and ok, reason or verdict.get("reason")

    def _close_all(self, message: dict | None) -> None:
        assert self.membership is not None
        with self._send_lock:
            for _name, sock, _reader in self.membership.peers:
                try:
                    if message is not None:
                        send(sock, message)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
