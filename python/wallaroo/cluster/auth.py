"""The cluster secret and how it is proved without ever crossing the wire.

Each side of a control connection draws a fresh random nonce and proves it
knows the secret with an HMAC-SHA256 of both nonces and its role: a proof is
good for one connection only (a recorded one replayed on another connection
meets another nonce) and one direction only (a proof sent back is not one).
The same exchange guards the external channel.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import socket
import threading

#: The environment variable holding the cluster secret.
SECRET_ENV = "WALLAROO_CLUSTER_SECRET"
#: How long a new connection may take to say who it is and prove it: a
#: stalled or slow stranger is dropped after that, never waited for.
HANDSHAKE_SECONDS = 5.0


def nonce() -> str:
    """A fresh random nonce (hex)."""
    return secrets.token_hex(16)


def proof(secret: str, role: str, server_nonce: str, client_nonce: str) -> str:
    """The HMAC-SHA256 by which ``role`` proves ``secret`` on the connection
    whose two sides drew ``server_nonce`` and ``client_nonce``."""
    message = "\0".join(("wallaroo", role, server_nonce, client_nonce)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def proves(secret: str, role: str, server_nonce: str, client_nonce: object,
           claimed: object) -> bool:
    """Whether ``claimed`` is ``role``'s proof of ``secret`` for these nonces."""
    if not isinstance(client_nonce, str) or not isinstance(claimed, str):
        return False
    return hmac.compare_digest(proof(secret, role, server_nonce, client_nonce), claimed)


def load_secret(opts: argparse.Namespace) -> str | None:
    """Settle ``opts.cluster_secret``: ``--cluster-secret``, else the file of
    ``--cluster-secret-file``, else the environment. A problem, or None."""
    path = getattr(opts, "cluster_secret_file", None)
    if opts.cluster_secret is None and path:
        try:
            with open(path, encoding="utf-8") as file:
                opts.cluster_secret = file.read().strip()
        except (OSError, UnicodeDecodeError) as err:
            return f"--cluster-secret-file: cannot read {path}: {err}"
        if not opts.cluster_secret:
            return f"--cluster-secret-file: {path} is empty"
    if opts.cluster_secret is None:
        opts.cluster_secret = os.environ.get(SECRET_ENV) or None
    return None


class Watchdog:
    """Shuts ``sock`` down when ``seconds`` pass before :meth:`cancel`: a
    read waiting on it returns at once, however slowly the peer sends."""

    def __init__(self, sock: socket.socket, seconds: float = HANDSHAKE_SECONDS) -> None:
        self.timer = threading.Timer(seconds, self._expire, (sock,))
        self.timer.daemon = True
        self.expired = False
        self.timer.start()

    def _expire(self, sock: socket.socket) -> None:
        self.expired = True
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        """The handshake ended in time."""
        self.timer.cancel()
