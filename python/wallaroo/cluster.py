"""Cluster membership: the initializer's rendezvous, workers joining it, the
secret, liveness, and the ``--workers N`` supervisor.

The data plane is timely dataflow's communication over connections the
engine makes (``src/peers.rs``); this module only finds out who is in the
cluster. Protocol: JSON lines over the control address.

* A worker connects to the initializer's control address (``-c`` or ``-j``)
  and sends ``{"type": "join", "name", "data", "app", "secret"}``.
* The initializer (``-t``) waits until ``--worker-count`` workers are there,
  then sends each ``{"type": "start", "index", "addresses", "token"}``;
  everyone starts the engine with that membership. The workers' data
  connections present the run's random token, which travels only here.
* The control connections stay open while the application runs: if one
  closes without a ``{"type": "done"}`` first, the worker at the other end
  was lost, and the engine is told to stop with an error naming it (no hang).
* While it runs, a worker sends the initializer its metrics once a second
  (``{"type": "metrics", "snapshot": JSON text}``), and once more before
  ``done``; the initializer serves them with its own (``wallaroo.metrics``).
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("wallaroo.cluster")

SECRET_ENV = "WALLAROO_CLUSTER_SECRET"
GROW_WITH_RESILIENCE = (
    "a cluster with --resilience-dir does not grow or shrink while it runs; stop it and start "
    "it with the new worker count: the snapshot's state is spread over the new workers"
)
PROTOCOL = 1


class ClusterSetupError(Exception):
    """The cluster could not form; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The runner's cluster flags beyond the 0.4.2 ones."""
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start N worker processes on this machine and supervise them "
        "(a convenience for -t/-w/-c/-d on loopback)",
    )
    group.add_argument(
        "--cluster-secret",
        metavar="SECRET",
        default=os.environ.get(SECRET_ENV),
        help=f"shared secret workers must present (env {SECRET_ENV}); required when the "
        "control address is reachable from other hosts",
    )
    group.add_argument(
        "--cluster-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the cluster to form (default 60)",
    )


def split_address(address: str, flag: str) -> tuple:
    """``host:port`` -> ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterSetupError(f"{flag}: expected host:port, got {address!r}")
    return host or "127.0.0.1", int(port)


def free_address(host: str = "127.0.0.1") -> str:
    """A ``host:port`` with a port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return f"{host}:{probe.getsockname()[1]}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_delay(sock: socket.socket) -> socket.socket:
    """Send small control messages at once (Nagle would hold one for 40 ms)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


class _Lines:
    """Reads JSON lines from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def read(self) -> dict | None:
        line = self.file.readline()
        if not line:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return {"type": "garbage"}
        return message if isinstance(message, dict) else {"type": "garbage"}


@dataclass
class Membership:
    """This process's place in a formed cluster."""

    index: int
    addresses: list
    names: list
    peers: list = field(default_factory=list)  # (name, socket, reader)
    extra: dict = field(default_factory=dict)  # what the initializer shares (embedded Kafka)
    #: Drawn by the initializer for the run and sent over the control channel
    #: only: the workers' data connections must present it.
    token: int = 0


def _watch(
    name: str,
    reader: _Lines,
    on_lost: Callable[[str], None],
    done: threading.Event,
    on_message: Callable[[str, dict], None] | None = None,
) -> None:
    while True:
        try:
            message = reader.read()
        except OSError:
            message = None
        if message is None:
            _pass_on(on_message, name, {"type": "lost"})
            if not done.is_set():
                on_lost(name)
            return
        _pass_on(on_message, name, message)


def _pass_on(on_message: Callable[[str, dict], None] | None, name: str, message: dict) -> None:
    """Hand a peer's message on (e.g. its metrics); a failure there never
    stops the liveness watch."""
    if on_message is None:
        return
    try:
        on_message(name, message)
    except Exception:
        log.exception("handling a message from worker %r", name)


class Cluster:
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
        self._watch_args: tuple = ()
        self._reader: _Lines | None = None
        # Crash recovery: a member that registers again was restarted.
        self.on_restarted: Callable[[str], None] | None = None

    @staticmethod
    def wanted(opts: argparse.Namespace) -> bool:
        """Whether the flags ask for a multi-process cluster."""
        initializer = opts.cluster_initializer and (
            (opts.worker_count or 1) > 1 or bool(opts.control)
        )
        member = not opts.cluster_initializer and bool(opts.join or opts.control)
        return bool(initializer or member)

    # -- initializer -------------------------------------------------------

    def _listen(self) -> socket.socket:
        if not self.opts.control:
            raise ClusterSetupError("the initializer needs -c/--control host:port to listen on")
        host, port = split_address(self.opts.control, "-c/--control")
        if not is_loopback(host) and not self.opts.cluster_secret:
            raise ClusterSetupError(
                f"-c {self.opts.control} is reachable from other hosts: give a cluster secret "
                f"(--cluster-secret or {SECRET_ENV}) so strangers cannot join"
            )
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((host, port))
        except OSError as err:
            raise ClusterSetupError(f"cannot listen on -c {self.opts.control}: {err}") from None
        server.listen(16)
        return server

    def _check_join(self, message: dict | None) -> str | None:
        if not message or message.get("type") != "join":
            return "expected a join message"
        if message.get("protocol") != PROTOCOL:
            return f"protocol {message.get('protocol')} is not {PROTOCOL}"
        secret = self.opts.cluster_secret
        if secret and not hmac.compare_digest(str(message.get("secret") or ""), secret):
            return "wrong cluster secret"
        if message.get("app") != self.app_name:
            return f"application {message.get('app')!r} is not {self.app_name!r}"
        if not isinstance(message.get("data"), str):
            return "no data address"
        return None

    def _read_join(self, sock: socket.socket, peer: tuple) -> tuple:
        """A worker's join request: ``(reader, message)``, or ``(None, None)``
        after refusing it (the reason is sent and logged)."""
        sock.settimeout(10)
        reader = _Lines(sock)
        try:
            message = reader.read()
        except OSError:
            message = None
        problem = self._check_join(message)
        if problem is None:
            return reader, message
        log.warning("refused a worker from %s:%s: %s", peer[0], peer[1], problem)
        try:
            _send(sock, {"type": "refused", "reason": problem})
        except OSError:
            pass
        sock.close()
        return None, None

    def _initialize(self, extra: dict) -> Membership:
        workers = self.opts.worker_count or 1
        my_data = self.opts.data or free_address()
        names = [self.opts.name or "initializer"]
        addresses = [my_data]
        peers: list = []
        server = self._listen()
        log.info(
            "initializer: waiting for %d more worker(s) on %s", workers - 1, self.opts.control
        )
        deadline = time.monotonic() + self.opts.cluster_timeout
        formed = False
        try:
            while len(addresses) < workers:
                server.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    sock, peer = server.accept()
                    _no_delay(sock)
                except socket.timeout:
                    raise ClusterSetupError(
                        f"only {len(addresses)} of {workers} workers joined within "
                        f"{self.opts.cluster_timeout:g} s"
                    ) from None
                reader, message = self._read_join(sock, peer)
                if message is None:
                    continue
                name = str(message.get("name") or f"worker-{len(addresses)}")
                if name in names:
                    name = f"{name}-{len(addresses)}"
                names.append(name)
                addresses.append(message["data"])
                peers.append((name, sock, reader))
                log.info("worker %r joined from %s (data %s)", name, peer[0], message["data"])
            formed = True
        finally:
            if not formed:
                server.close()
        # Joins are accepted by a thread that checks now and then whether the run ended.
        server.settimeout(0.5)
        self._server = server
        token = secrets.randbits(64)
        for index, (_name, sock, _reader) in enumerate(peers, start=1):
            _send(
                sock,
                {
                    "type": "start",
                    "index": index,
                    "addresses": addresses,
                    "names": names,
                    "extra": extra,
                    "token": token,
                },
            )
            sock.settimeout(None)
        return Membership(0, addresses, names, peers, extra, token)

    # -- member --------------------------------------------------------------

    def _join(self) -> Membership:
        target = self.opts.join or self.opts.control
        host, port = split_address(target, "-c/--control or -j/--join")
        my_data = self.opts.my_data or free_address()
        deadline = time.monotonic() + self.opts.cluster_timeout
        delay = 0.1
        while True:
            try:
                sock = _no_delay(socket.create_connection((host, port), timeout=5))
            except OSError as err:
                if time.monotonic() > deadline:
                    raise ClusterSetupError(
                        f"cannot reach the initializer at {target}: {err}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            message = self._ask_to_join(sock, my_data, deadline)
            if message is not None:
                break
            # The initializer closed the connection without an answer. With
            # crash recovery it is starting again: try again until the deadline.
            sock.close()
            if not getattr(self.opts, "resilience_dir", None) or time.monotonic() > deadline:
                raise ClusterSetupError(f"the initializer at {target} closed the connection")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if message.get("type") == "refused":
            raise ClusterSetupError(f"the initializer refused this worker: {message.get('reason')}")
        if message.get("type") != "start":
            raise ClusterSetupError(f"unexpected answer from the initializer: {message}")
        sock.settimeout(None)
        index = int(message["index"])
        log.info("joined the cluster as worker %d of %d", index, len(message["addresses"]))
        return Membership(
            index,
            list(message["addresses"]),
            list(message["names"]),
            [("initializer", sock, self._reader)],
            dict(message.get("extra") or {}),
            int(message.get("token") or 0),
        )

    def _ask_to_join(self, sock: socket.socket, my_data: str, deadline: float) -> dict | None:
        """Send the join request; the initializer's answer, None if it closed."""
        try:
            _send(
                sock,
                {
                    "type": "join",
                    "protocol": PROTOCOL,
                    "name": self.opts.name,
                    "data": my_data,
                    "app": self.app_name,
                    "secret": self.opts.cluster_secret,
                },
            )
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            self._reader = _Lines(sock)
            return self._reader.read() or None
        except OSError:
            return None

    # -- both ----------------------------------------------------------------

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
                if failed and on_failed is not None and not self.done.is_set():
                    on_failed(name, str(message.get("reason")))
            if on_message is not None:
                on_message(name, message)

        self._watch_args = (on_lost, handle)
        for name, _sock, reader in self.membership.peers:
            self._watch_peer(name, reader)
        if self._server is not None:
            threading.Thread(target=self._accept_joins, name="accept joins", daemon=True).start()

    def _watch_peer(self, name: str, reader: _Lines) -> None:
        on_lost, handle = self._watch_args
        self._answered.setdefault(name, threading.Event())

        def lost(who: str) -> None:
            if who not in self._left:
                on_lost(who)

        threading.Thread(
            target=_watch,
            args=(name, reader, lost, self.done, handle),
            name=f"watch {name}",
            daemon=True,
        ).start()

    def on_reconfigure(self, callback: Callable[[int | None, list, list], None]) -> None:
        """``callback(index, addresses, names)`` when the membership changes
        (``index`` None: this worker leaves)."""
        self._on_reconfigure = callback

    def _reconfigured(self, message: dict) -> None:
        assert self.membership is not None and self._on_reconfigure is not None
        index = message.get("index")
        addresses, names = list(message["addresses"]), list(message["names"])
        if index is None:
            self.left = True
            log.info("leaving the cluster: handing this worker's keys over")
        else:
            self.membership.index = int(index)
        self.membership.addresses, self.membership.names = addresses, names
        self._on_reconfigure(index, addresses, names)

    # -- growing and shrinking (initializer) ---------------------------------

    def _accept_joins(self) -> None:
        """Workers that join the running cluster (``--join``): grow."""
        assert self._server is not None
        while not self.done.is_set():
            try:
                sock, peer = self._server.accept()
                _no_delay(sock)
            except socket.timeout:
                continue
            except OSError:
                return
            reader, message = self._read_join(sock, peer)
            if message is None:
                continue
            name = str(message.get("name") or "worker")
            if self.on_restarted is not None:
                if self.membership is not None and name in self.membership.names:
                    # Its crash may not have been noticed yet: start again
                    # with it (it retries its request meanwhile).
                    sock.close()
                    self.on_restarted(name)
                    continue
                _send(sock, {"type": "refused", "reason": GROW_WITH_RESILIENCE})
                sock.close()
                continue
            sock.settimeout(None)
            self.change(add=(name, message["data"], sock, reader))

    def change(self, add: tuple | None = None, remove: str | None = None) -> str:
        """Grow by ``add`` (name, data address, socket, reader) or shrink by the
        worker named ``remove``; every worker moves to the new membership at its
        next epoch. Returns what was done (or why not)."""
        with self._change_lock:
            assert self.membership is not None and self._on_reconfigure is not None
            if self.on_restarted is not None:
                if add is not None:
                    _send(add[2], {"type": "refused", "reason": GROW_WITH_RESILIENCE})
                return GROW_WITH_RESILIENCE
            if self.done.is_set():
                if add is not None:
                    _send(add[2], {"type": "refused", "reason": "the run is ending"})
                return "the run is ending"
            names, addresses = list(self.membership.names), list(self.membership.addresses)
            if remove is not None:
                if remove not in names[1:]:
                    return f"no worker {remove!r} to remove (the initializer cannot leave)"
                position = names.index(remove)
                del names[position], addresses[position]
                self._left.add(remove)
            if add is not None:
                name, data, sock, reader = add
                if name in names:
                    name = f"{name}-{len(self.membership.names)}"
                names.append(name)
                addresses.append(data)
            with self._send_lock:
                for name_, sock_, _reader in self.membership.peers:
                    index = names.index(name_) if name_ in names else None
                    try:
                        _send(
                            sock_,
                            {"type": "reconfigure", "index": index,
                             "addresses": addresses, "names": names},
                        )
                    except OSError:
                        pass

            self.membership.names, self.membership.addresses = names, addresses
            self.membership.peers = [p for p in self.membership.peers if p[0] not in self._left]
            if add is not None:
                self.membership.peers.append((names[-1], sock, reader))
                self._watch_peer(names[-1], reader)
            generation = self._generation()
            self._on_reconfigure(0, addresses, names)
            # One change at a time: wait (holding the lock) until this worker
            # has finished the current generation; only then does a new worker
            # start (so its first connection attempts find us).
            self._wait_for_generation(generation)
            if add is not None:
                start = {"type": "start", "index": len(names) - 1, "addresses": addresses,
                         "names": names, "extra": self.membership.extra,
                         "token": self.membership.token}
                with self._send_lock:
                    try:
                        _send(sock, start)
                    except OSError:
                        pass
            what = f"grew to {len(names)} workers" if add else f"shrank to {len(names)} workers"
            log.info("cluster %s: %s", what, ", ".join(names))
            return what

    def serve_external(self, address: str) -> None:
        """The external channel (``-e``) of the initializer: one command per
        connection, ``shrink NAME`` (that worker hands its keys over and
        leaves) or ``status``; the answer is one JSON line."""
        host, port = split_address(address, "-e/--external")
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((host, port))
        except OSError as err:
            log.warning("external channel: cannot listen on %s: %s", address, err)
            return
        server.listen(4)
        server.settimeout(0.5)
        log.info("external channel on %s (commands: status, shrink NAME)", address)

        def serve() -> None:
            with server:
                while not self.done.is_set():
                    try:
                        sock, _peer = server.accept()
                    except socket.timeout:
                        continue
                    except OSError:
                        return
                    with sock:
                        sock.settimeout(5)
                        try:
                            words = _Lines(sock).file.readline().decode().split()
                        except (OSError, UnicodeDecodeError):
                            continue
                        answer = self._command(words)
                        try:
                            _send(sock, answer)
                        except OSError:
                            pass

        threading.Thread(target=serve, name="external channel", daemon=True).start()

    def _command(self, words: list) -> dict:
        assert self.membership is not None
        if words[:1] == ["status"]:
            return {"ok": True, "workers": self.membership.names}
        if words[:1] == ["shrink"] and len(words) == 2:
            what = self.change(remove=words[1])
            return {"ok": what.startswith("shrank"), "message": what}
        return {"ok": False, "message": "commands: status, shrink NAME"}

    @staticmethod
    def _generation() -> int:
        from wallaroo import _engine

        return _engine.generation()

    def _wait_for_generation(self, generation: int) -> None:
        while self._generation() <= generation and not self.done.is_set():
            time.sleep(0.05)

    def request_leave(self) -> bool:
        """Ask the initializer to let this worker leave (its keys move first)."""
        if self.membership is None or self.opts.cluster_initializer:
            return False
        with self._send_lock:
            for _name, sock, _reader in self.membership.peers:
                try:
                    _send(sock, {"type": "leave"})
                except OSError:
                    return False
        log.info("asked the initializer to let this worker leave")
        return True

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
                    _send(sock, body)
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
        if self.membership is None:
            return ok, reason
        if self._report is not None:
            self._send_to_peers(self._report)
        if self._server is not None:
            self._server.close()
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
                    _send(sock, {"type": "result", "ok": ok, "reason": reason, "left": self.left})
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
                        _send(sock, message)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass


def supervise(argv: list, workers: int) -> int:
    """``--workers N``: start N worker processes on loopback and wait for them.

    A worker that fails makes the others stop; Ctrl-C / SIGTERM are passed on.
    """
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    base = _without_flag(argv, "--workers")
    resilient = any(arg in ("-r", "--resilience-dir") or arg.startswith("--resilience-dir=")
                    for arg in base)
    control = free_address()
    commands: list = []
    for index in range(workers):
        if index == 0:
            role = ["-t", "-w", str(workers), "-c", control, "-d", free_address(), "-n", "worker-0"]
        else:
            name = f"worker-{index}"
            role = ["-w", str(workers), "-c", control, "-y", free_address(), "-n", name]
        command = [sys.executable, "-m", "wallaroo", *base, *role]
        if index > 0:
            command += ["--no-demo"]
        commands.append(command)
    children = [subprocess.Popen(command) for command in commands]
    log.info("supervising %d workers (control %s)", workers, control)
    stopping = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = 0
        while any(child.poll() is None for child in children):
            for index, child in enumerate(children):
                status = child.poll()
                if status is not None and status < 0 and resilient and not stopping.is_set():
                    # Killed: with crash recovery it starts again, and the
                    # cluster recovers from the last complete snapshot.
                    log.warning(
                        "worker %d was killed (signal %d); starting it again", index, -status
                    )
                    children[index] = subprocess.Popen(commands[index])
                    continue
                if status not in (None, 0) and code == 0:
                    code = status if status > 0 else 1
                    log.error("worker %d exited with status %s; stopping the others", index, status)
                    for other in children:
                        if other.poll() is None:
                            other.terminate()
            time.sleep(0.02)
        for child in children:
            if child.returncode not in (0, None) and code == 0:
                code = child.returncode if child.returncode > 0 else 1
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _without_flag(argv: list, flag: str) -> list:
    out = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out
