"""The initializer's side of the control plane: the rendezvous (``-t``), the
joins it accepts while the cluster runs (grow), shrinking, and the external
channel (``-e``)."""

from __future__ import annotations

import argparse
import hmac
import logging
import secrets
import socket
import threading
import time
from typing import Callable

from wallaroo.cluster.wire import (
    GROW_WITH_RESILIENCE,
    PROTOCOL,
    SECRET_ENV,
    ClusterSetupError,
    Lines,
    Membership,
    free_address,
    is_loopback,
    no_delay,
    send,
    split_address,
)

log = logging.getLogger("wallaroo.cluster")


class Initializer:
    """What the initializer does (a part of :class:`wallaroo.cluster.Cluster`)."""

    opts: argparse.Namespace
    app_name: str
    done: threading.Event
    membership: Membership | None
    _server: socket.socket | None
    _change_lock: threading.Lock
    _send_lock: threading.Lock
    _left: set
    _on_reconfigure: Callable[[int | None, list, list], None] | None
    on_restarted: Callable[[str], None] | None
    _watch_peer: Callable[[str, Lines], None]

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
        reader = Lines(sock)
        try:
            message = reader.read()
        except OSError:
            message = None
        problem = self._check_join(message)
        if problem is None:
            return reader, message
        log.warning("refused a worker from %s:%s: %s", peer[0], peer[1], problem)
        try:
            send(sock, {"type": "refused", "reason": problem})
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
                    no_delay(sock)
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
            send(
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

    def _accept_joins(self) -> None:
        """Workers that join the running cluster (``--join``): grow."""
        assert self._server is not None
        while not self.done.is_set():
            try:
                sock, peer = self._server.accept()
                no_delay(sock)
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
                send(sock, {"type": "refused", "reason": GROW_WITH_RESILIENCE})
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
                    send(add[2], {"type": "refused", "reason": GROW_WITH_RESILIENCE})
                return GROW_WITH_RESILIENCE
            if self.done.is_set():
                if add is not None:
                    send(add[2], {"type": "refused", "reason": "the run is ending"})
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
                        send(sock, start)
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
                            words = Lines(sock).file.readline().decode().split()
                        except (OSError, UnicodeDecodeError):
                            continue
                        answer = self._command(words)
                        try:
                            send(sock, answer)
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
