"""The control plane's wire format: JSON lines over TCP, addresses, and what
both roles share (the errors, this process's membership, the liveness watch).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("wallaroo.cluster")

GROW_WITH_RESILIENCE = (
    "a cluster with --resilience-dir does not grow or shrink while it runs; stop it and start "
    "it with the new worker count: the snapshot's state is spread over the new workers"
)
#: 2: the initializer opens with a nonce; the secret is proved, never sent
#: (:mod:`wallaroo.cluster.auth`).
PROTOCOL = 2
#: The longest line read before a peer is admitted.
MAX_HANDSHAKE_LINE = 64 << 10


class ClusterSetupError(Exception):
    """The cluster could not form; the message says why."""


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


def no_delay(sock: socket.socket) -> socket.socket:
    """Send small control messages at once (Nagle would hold one for 40 ms)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


class Lines:
    """Reads JSON lines from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def read(self, limit: int = -1) -> dict | None:
        """The next message; None at the end; ``{"type": "garbage"}`` for a
        line that is not a JSON object (or longer than ``limit`` bytes)."""
        line = self.file.readline(limit)
        if not line:
            return None
        if limit > 0 and len(line) >= limit and not line.endswith(b"\n"):
            return {"type": "garbage"}
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


@dataclass
class Joiner:
    """A worker whose join request was admitted, not yet started."""

    name: str
    data: str
    sock: socket.socket
    reader: Lines
    #: Where it connected from (for the log).
    peer: str
    #: It proved the cluster secret (False in a cluster without one).
    authenticated: bool
    #: The initializer's proof of the secret for this connection (None without one).
    proof: str | None = None


def watch_peer(
    name: str,
    reader: Lines,
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

