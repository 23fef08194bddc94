"""The cluster secret and how it is proved without ever crossing the wire.

Each side of a control connection draws a fresh random nonce and proves it
knows the secret with an HMAC-SHA256 of both nonces and its role: a proof is
good for one connection only (a recorded one replayed on another connection
meets another nonce) and one direction only (a proof sent back is not one).
The same exchange guards the external channel.

A cluster on loopback whose workers were given no secret still has one: the
initializer draws it and writes it to a file only its user can read
(:func:`publish_local_secret`), and workers started by that user on that host
prove it (:func:`local_secret`). Strangers on the same host (other users)
cannot join; the user's own processes can, as they could anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import stat
import tempfile
import threading
from pathlib import Path

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


def _private_dir() -> Path | None:
    """This user's directory for cluster secrets (``$XDG_RUNTIME_DIR`` or the
    temporary directory, ``wallaroo-UID``, mode 0700), or None when it cannot
    be made or is not this user's alone."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"wallaroo-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path


def local_secret_path(port: int) -> Path | None:
    """Where the secret of the loopback cluster with control port ``port`` is
    kept, or None when this user has no private directory for it."""
    directory = _private_dir()
    return None if directory is None else directory / f"cluster-{port}.secret"


def publish_local_secret(port: int) -> tuple[str, Path] | None:
    """Draw a secret for the loopback cluster whose control port is ``port``
    and write it where only this user can read it; the secret and its file,
    or None when there is no such place."""
    path = local_secret_path(port)
    if path is None:
        return None
    secret = secrets.token_hex(32)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secret)
        os.replace(partial, path)
    except OSError:
        return None
    return secret, path


def local_secret(port: int) -> str | None:
    """The secret the initializer on this host's control port ``port`` wrote
    for its workers (:func:`publish_local_secret`), or None."""
    path = local_secret_path(port)
    if path is None:
        return None
    try:
        return path.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
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
