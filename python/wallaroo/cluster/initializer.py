"""The initializer's side of the control plane: the rendezvous (``-t``), the
joins it accepts while the cluster runs (grow), shrinking, and the external
channel (``-e``)."""

from __future__ import annotations

import argparse
import logging
import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from wallaroo.cluster import external
from wallaroo.cluster.auth import (
    HANDSHAKE_SECONDS,
    Watchdog,
    nonce,
    proof,
    proves,
    publish_local_secret,
)
from wallaroo.cluster.options import SECRET_ENV
from wallaroo.cluster.wire import (
    GROW_WITH_RESILIENCE,
    MAX_HANDSHAKE_LINE,
    PROTOCOL,
    ClusterSetupError,
    Joiner,
    Lines,
    Membership,
    free_address,
    is_loopback,
    no_delay,
    send,
    split_address,
)

log = logging.getLogger("wallaroo.cluster")

#: Handshakes in progress at once; more connections are closed at once.
MAX_HANDSHAKES = 32


def _listening(host: str, port: int, backlog: int) -> socket.socket:
    """A socket listening on ``host:port``; its accepts time out now and then
    so that the accepting thread sees when the run ended."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind((host, port))
    except OSError:
        server.close()
        raise
    server.listen(backlog)
    server.settimeout(0.5)
    return server


class Initializer:
    """What the initializer does (a part of :class:`wallaroo.cluster.Cluster`)."""

    opts: argparse.Namespace
    app_name: str
    done: threading.Event
    membership: Membership | None
    _server: socket.socket | None
    #: The secret joins prove: the cluster's, or one drawn for a loopback
    #: cluster without one (kept in ``_secret_file``, removed at the end).
    _join_secret: str | None = None
    _secret_file: Path | None = None
    _change_lock: threading.Lock
    _send_lock: threading.Lock
    _left: set
    _on_reconfigure: Callable[[int | None, list, list], None] | None
    on_restarted: Callable[[str], None] | None
    _watch_peer: Callable[[str, Lines], None]
    #: Workers admitted while the cluster forms, and whether it still does.
    _joins: queue.Queue
    _forming: bool
    _admit_lock: threading.Lock
    #: Set once the peers are watched: joins from then on grow the cluster.
    _running: threading.Event

    def _listen(self) -> socket.socket:
        if not self.opts.control:
            raise ClusterSetupError("the initializer needs -c/--control host:port to listen on")
        host, port = split_address(self.opts.control, "-c/--control")
        if not is_loopback(host) and not self.opts.cluster_secret:
            raise ClusterSetupError(
                f"-c {self.opts.control} is reachable from other hosts: give a cluster secret "
                f"(--cluster-secret-file or {SECRET_ENV}) so strangers cannot join"
            )
        try:
            server = _listening(host, port, backlog=64)
        except OSError as err:
            raise ClusterSetupError(f"cannot listen on -c {self.opts.control}: {err}") from None
        self._join_secret = self.opts.cluster_secret
        if not self._join_secret:
            published = publish_local_secret(server.getsockname()[1])
            if published is None:
                log.warning("no cluster secret, and no private directory to keep one in: any "
                            "process on this host can join")
            else:
                self._join_secret, self._secret_file = published
                log.info("no cluster secret given: workers started by this user on this host "
                         "prove the one in %s", self._secret_file)
        return server

    def _stop_listening(self) -> None:
        """Close the control port and remove the secret drawn for it."""
        if self._server is not None:
            self._server.close()
        if self._secret_file is not None:
            self._secret_file.unlink(missing_ok=True)
            self._secret_file = None

    def _connections(self, server: socket.socket) -> Iterator[tuple[socket.socket, tuple]]:
        """The connections ``server`` accepts until the run ends or the socket
        is closed."""
        while not self.done.is_set():
            try:
                yield server.accept()
            except socket.timeout:
                continue
            except OSError:
                return

    def _accept(self, server: socket.socket) -> None:
        """Accept control connections for the whole run; each one's handshake
        runs on its own thread, under a deadline, so a slow or silent stranger
        delays nobody."""
        handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        for sock, peer in self._connections(server):
            if not handshakes.acquire(blocking=False):
                log.warning("refused a connection from %s:%s: too many handshakes at once",
                            peer[0], peer[1])
                sock.close()
                continue

            def handshake(sock: socket.socket = sock, peer: tuple = peer) -> None:
                try:
                    joiner = self._handshake(sock, f"{peer[0]}:{peer[1]}")
                finally:
                    handshakes.release()
                if joiner is not None:
                    self._admit(joiner)

            threading.Thread(target=handshake, name="control handshake", daemon=True).start()

    def _handshake(self, sock: socket.socket, peer: str) -> Joiner | None:
        """Challenge a new connection; the worker it admits, or None after
        refusing it (the reason is sent and logged)."""
        secret = self._join_secret
        server_nonce = nonce()
        reader = Lines(no_delay(sock))
        watchdog = Watchdog(sock)
        try:
            send(sock, {"type": "hello", "protocol": PROTOCOL, "nonce": server_nonce,
                        "secret": bool(secret)})
            message = reader.read(MAX_HANDSHAKE_LINE)
        except OSError:
            message = None
        finally:
            watchdog.cancel()
        problem = (
            f"no join request within {HANDSHAKE_SECONDS:g} s" if watchdog.expired
            else self._check_join(message, server_nonce)
        )
        if problem is not None:
            log.warning("refused a worker from %s: %s", peer, problem)
            try:
                send(sock, {"type": "refused", "reason": problem})
            except OSError:
                pass
            sock.close()
            return None
        assert message is not None
        return Joiner(
            name=str(message.get("name") or "worker"),
            data=message["data"],
            sock=sock,
            reader=reader,
            peer=peer,
            authenticated=bool(secret),
            proof=proof(secret, "initializer", server_nonce, message["nonce"]) if secret else None,
        )

    def _check_join(self, message: dict | None, server_nonce: str) -> str | None:
        if not message or message.get("type") != "join":
            return "expected a join message"
        if message.get("protocol") != PROTOCOL:
            return f"protocol {message.get('protocol')} is not {PROTOCOL}"
        if not isinstance(message.get("nonce"), str):
            return "no nonce"
        secret = self._join_secret
        if secret and not proves(secret, "worker", server_nonce, message["nonce"],
                                 message.get("proof")):
            return "wrong cluster secret (no proof of it)"
        if message.get("app") != self.app_name:
            return f"application {message.get('app')!r} is not {self.app_name!r}"
        if not isinstance(message.get("data"), str):
            return "no data address"
        return None

    def _admit(self, joiner: Joiner) -> None:
        """A worker passed the handshake: it completes the cluster while it
        forms, else it joins (or, with crash recovery, rejoins) the running one."""
        with self._admit_lock:
            if self._forming:
                self._joins.put(joiner)
                return
        self._running.wait()
        if self.on_restarted is None:
            self.change(add=joiner)
        elif self.membership is not None and joiner.name in self.membership.names:
            # A worker that was started again; its crash may not have been
            # noticed yet. Only a worker that proved the secret makes
            # everyone start again; without a secret its lost control
            # connection does (it retries its request meanwhile).
            joiner.sock.close()
            if joiner.authenticated:
                self.on_restarted(joiner.name)
            else:
                log.warning("worker %r from %s asked to join again while it is connected "
                            "(not authenticated: no restart)", joiner.name, joiner.peer)
        else:
            self._refuse(joiner, GROW_WITH_RESILIENCE)

    @staticmethod
    def _refuse(joiner: Joiner, reason: str) -> None:
        try:
            send(joiner.sock, {"type": "refused", "reason": reason})
        except OSError:
            pass
        joiner.sock.close()

    def _initialize(self, extra: dict) -> Membership:
        workers = self.opts.worker_count or 1
        my_data = self.opts.data or free_address()
        names = [self.opts.name or "initializer"]
        addresses = [my_data]
        joined: list = []
        server = self._listen()
        self._server = server
        self._forming = True
        threading.Thread(target=self._accept, args=(server,), name="accept joins",
                         daemon=True).start()
        log.info(
            "initializer: waiting for %d more worker(s) on %s", workers - 1, self.opts.control
        )
        deadline = time.monotonic() + self.opts.cluster_timeout
        while len(addresses) < workers:
            try:
                joiner = self._joins.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.done.set()
                self._stop_listening()
                raise ClusterSetupError(
                    f"only {len(addresses)} of {workers} workers joined within "
                    f"{self.opts.cluster_timeout:g} s"
                ) from None
            if joiner.name in names:
                joiner.name = f"{joiner.name}-{len(addresses)}"
            names.append(joiner.name)
            addresses.append(joiner.data)
            joined.append(joiner)
            log.info("worker %r joined from %s (data %s)", joiner.name, joiner.peer, joiner.data)
        with self._admit_lock:
            self._forming = False
        while not self._joins.empty():
            # Came with the last one: they join the running cluster.
            threading.Thread(target=self._admit, args=(self._joins.get(),), daemon=True).start()
        token = secrets.randbits(64)
        for index, joiner in enumerate(joined, start=1):
            send(joiner.sock, self._start_message(joiner, index, addresses, names, extra, token))
            joiner.sock.settimeout(None)
        peers = [(joiner.name, joiner.sock, joiner.reader) for joiner in joined]
        return Membership(0, addresses, names, peers, extra, token)

    @staticmethod
    def _start_message(joiner: Joiner, index: int, addresses: list, names: list, extra: dict,
                       token: int) -> dict:
        """What a worker starts with; the run token goes only to a worker that
        passed the handshake, with the initializer's own proof of the secret."""
        return {"type": "start", "index": index, "addresses": addresses, "names": names,
                "extra": extra, "token": token, "proof": joiner.proof}

    def change(self, add: Joiner | None = None, remove: str | None = None) -> str:
        """Grow by ``add`` (a worker that passed the handshake) or shrink by the
        worker named ``remove``; every worker moves to the new membership at its
        next epoch. Returns what was done (or why not)."""
        with self._change_lock:
            assert self.membership is not None and self._on_reconfigure is not None
            refusal = GROW_WITH_RESILIENCE if self.on_restarted is not None else (
                "the run is ending" if self.done.is_set() else None)
            if refusal is not None:
                if add is not None:
                    self._refuse(add, refusal)
                return refusal
            before = list(self.membership.names), list(self.membership.addresses)
            names, addresses = list(self.membership.names), list(self.membership.addresses)
            if remove is not None:
                if remove not in names[1:]:
                    return f"no worker {remove!r} to remove (the initializer cannot leave)"
                position = names.index(remove)
                del names[position], addresses[position]
                self._left.add(remove)
            if add is not None:
                if add.name in names:
                    add.name = f"{add.name}-{len(self.membership.names)}"
                names.append(add.name)
                addresses.append(add.data)
            with self._send_lock:
                for name_, sock_, _reader in self.membership.peers:
                    index = names.index(name_) if name_ in names else None
                    try:
                        send(
                            sock_,
                            {"type": "reconfigure", "index": index,
                             "addresses": addresses, "names": names},
                        )
                    except OSError:
                        pass

            self.membership.names, self.membership.addresses = names, addresses
            self.membership.peers = [p for p in self.membership.peers if p[0] not in self._left]
            if add is not None:
                self.membership.peers.append((add.name, add.sock, add.reader))
                self._watch_peer(add.name, add.reader)
            generation = self._generation()
            self._on_reconfigure(0, addresses, names)
            # One change at a time: wait (holding the lock) until this worker
            # has finished the current generation; only then does a new worker
            # start (so its first connection attempts find us).
            self._wait_for_generation(generation)
            if add is not None:
                start = self._start_message(add, len(names) - 1, addresses, names,
                                            self.membership.extra, self.membership.token)
                with self._send_lock:
                    try:
                        send(add.sock, start)
                    except OSError:
                        pass
                if not self._grown(generation + 1):
                    return self._roll_back(add, *before)
            what = f"grew to {len(names)} workers" if add else f"shrank to {len(names)} workers"
            log.info("cluster %s: %s", what, ", ".join(names))
            return what

    def serve_external(self, address: str) -> None:
        """The external channel (``-e``, :mod:`wallaroo.cluster.external`):
        ``shrink NAME`` (that worker hands its keys over and leaves) or
        ``status``; with a cluster secret only after a proof of it, without
        one on loopback only."""
        host, port = split_address(address, "-e/--external")
        secret = self.opts.cluster_secret
        if not secret and not is_loopback(host):
            log.warning("-e %s: without a cluster secret the external channel listens on "
                        "loopback only", address)
            host = "127.0.0.1"
        try:
            server = _listening(host, port, backlog=4)
        except OSError as err:
            log.warning("external channel: cannot listen on %s:%d: %s", host, port, err)
            return
        log.info("external channel on %s:%d (commands: status, shrink NAME%s)", host, port,
                 "; the cluster secret is required" if secret else "")

        def serve() -> None:
            with server:
                for sock, peer in self._connections(server):
                    with sock:
                        self._serve_command(sock, peer[0], secret)

        threading.Thread(target=serve, name="external channel", daemon=True).start()

    def _serve_command(self, sock: socket.socket, peer: str, secret: str | None) -> None:
        watchdog = Watchdog(sock)
        try:
            words = external.read_command(sock, peer, secret)
        except external.Refused as refused:
            log.warning("external channel: refused a command from %s: %s", peer, refused)
            words, answer = None, {"ok": False, "message": str(refused)}
        except OSError:
            return
        finally:
            watchdog.cancel()
        if words is not None:
            answer = self._command(words)
        try:
            send(sock, answer)
        except OSError:
            pass

    def _command(self, words: list) -> dict:
        assert self.membership is not None
        if words[:1] == ["status"]:
            return {"ok": True, "workers": self.membership.names}
        if words[:1] == ["shrink"] and len(words) == 2:
            what = self.change(remove=words[1])
            return {"ok": what.startswith("shrank"), "message": what}
        return {"ok": False, "message": "commands: status, shrink NAME"}

    def _grown(self, generation: int) -> bool:
        """Whether the grown ``generation`` connected; False when the engine
        rolled it back (the next generation connected instead)."""
        from wallaroo import _engine

        # A rolled-back generation never connects (the next one does); the
        # run may also end meanwhile.
        while _engine.connected_generation() < generation and not self.done.is_set():
            time.sleep(0.05)
        return _engine.connected_generation() == generation

    def _roll_back(self, joiner: Joiner, names: list, addresses: list) -> str:
        """The joiner never connected and the engine went back to ``names``:
        so does the membership; the joiner's loss is nobody's failure."""
        assert self.membership is not None
        self._left.add(joiner.name)
        self.membership.names, self.membership.addresses = names, addresses
        self.membership.peers = [p for p in self.membership.peers if p[0] != joiner.name]
        self._refuse(joiner, "it never connected to the cluster's data addresses")
        what = (f"rolled back the grow: {joiner.name!r} never connected; "
                f"{len(names)} workers: {', '.join(names)}")
        log.warning("cluster %s", what)
        return what

    @staticmethod
    def _generation() -> int:
        from wallaroo import _engine

        return _engine.generation()

    def _wait_for_generation(self, generation: int) -> None:
        while self._generation() <= generation and not self.done.is_set():
            time.sleep(0.05)
