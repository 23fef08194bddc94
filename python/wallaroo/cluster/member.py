"""A member's side of the control plane: joining the initializer (``-c`` or
``-j``), moving to a new membership, and asking to leave."""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from typing import Callable

from wallaroo.cluster.auth import local_secret, nonce, proof, proves
from wallaroo.cluster.wire import (
    PROTOCOL,
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


class Member:
    """What a member does (a part of :class:`wallaroo.cluster.Cluster`)."""

    opts: argparse.Namespace
    app_name: str
    done: threading.Event
    membership: Membership | None
    left: bool
    _reader: Lines | None
    _send_lock: threading.Lock
    _on_reconfigure: Callable[[int | None, list, list], None] | None

    def _join(self) -> Membership:
        target = self.opts.join or self.opts.control
        host, port = split_address(target, "-c/--control or -j/--join")
        my_data = self.opts.my_data or free_address()
        deadline = time.monotonic() + self.opts.cluster_timeout
        # Workers started together reach this point about when the
        # initializer starts listening: try again soon, then less often.
        delay = 0.01
        while True:
            try:
                sock = no_delay(socket.create_connection((host, port), timeout=5))
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
        """Answer the initializer's challenge with the join request; its answer
        (checked: a start carries its proof of the secret), None if it closed."""
        secret = self.opts.cluster_secret
        try:
            sock.settimeout(max(1.0, deadline - time.monotonic()))
            self._reader = Lines(sock)
            hello = self._reader.read()
            if hello is None:
                return None
            if hello.get("type") != "hello" or hello.get("protocol") != PROTOCOL:
                raise ClusterSetupError(
                    f"the initializer speaks another protocol (said {hello.get('type')!r}, "
                    f"protocol {hello.get('protocol')!r}; this worker speaks {PROTOCOL})"
                )
            if not secret and hello.get("secret") and is_loopback(sock.getpeername()[0]):
                # A loopback cluster without a given secret: the initializer
                # drew one that this user can read.
                secret = local_secret(sock.getpeername()[1])
            if secret and not hello.get("secret"):
                raise ClusterSetupError(
                    "this worker has a cluster secret but the initializer uses none: it "
                    "cannot prove it is the initializer (give both the same secret)"
                )
            server_nonce, my_nonce = str(hello.get("nonce")), nonce()
            join = {"type": "join", "protocol": PROTOCOL, "name": self.opts.name,
                    "data": my_data, "app": self.app_name, "nonce": my_nonce}
            if secret:
                join["proof"] = proof(secret, "worker", server_nonce, my_nonce)
            send(sock, join)
            answer = self._reader.read()
        except OSError:
            return None
        if (answer is not None and answer.get("type") == "start" and secret
                and not proves(secret, "initializer", server_nonce, my_nonce,
                               answer.get("proof"))):
            raise ClusterSetupError("the initializer gave no valid proof of the cluster secret")
        return answer

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

    def request_leave(self) -> bool:
        """Ask the initializer to let this worker leave (its keys move first)."""
        if self.membership is None or self.opts.cluster_initializer:
            return False
        with self._send_lock:
            for _name, sock, _reader in self.membership.peers:
                try:
                    send(sock, {"type": "leave"})
                except OSError:
                    return False
        log.info("asked the initializer to let this worker leave")
        return True
