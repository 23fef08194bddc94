"""The external channel (``-e``) of the initializer: one command per
connection (``status``, ``shrink NAME``), answered with one JSON line.

With a cluster secret the command comes after a proof of it: either the
challenge (``hello NONCE``, answered with ``{"nonce", "proof"}`` -- the
initializer's own proof -- then ``proof HMAC``) or, over loopback only, the
secret itself as the first line (``secret SECRET``). Without a secret the
channel listens on loopback only. :func:`command` is the client.
"""

from __future__ import annotations

import hmac
import json
import socket

from wallaroo.cluster.auth import nonce, proof, proves
from wallaroo.cluster.wire import MAX_HANDSHAKE_LINE, ClusterSetupError, is_loopback, send

NEEDS_SECRET = (
    "this cluster's external channel needs the cluster secret: first line `hello NONCE` "
    "(challenge) or, over loopback, `secret SECRET`"
)


class Refused(Exception):
    """The connection did not prove the secret; the message says why."""


def read_command(sock: socket.socket, peer: str, secret: str | None) -> list:
    """The words of the command on ``sock``, after the proof of ``secret``
    when there is one; raises :class:`Refused`."""
    file = sock.makefile("rb")

    def read_line() -> str:
        try:
            return file.readline(MAX_HANDSHAKE_LINE).decode().strip()
        except UnicodeDecodeError:
            return ""

    def words() -> list:
        return read_line().split()

    line = read_line()
    first = line.split()
    if not secret:
        return first
    if first[:1] == ["secret"]:
        if not is_loopback(peer):
            raise Refused("the secret as a line is taken over loopback only: use the challenge")
        if not hmac.compare_digest(line[len("secret"):].strip().encode(), secret.encode()):
            raise Refused("wrong cluster secret")
        return words()
    if first[:1] == ["hello"] and len(first) == 2:
        server_nonce = nonce()
        send(sock, {"nonce": server_nonce, "proof": proof(secret, "initializer", server_nonce,
                                                           first[1])})
        answer = words()
        if answer[:1] != ["proof"] or not proves(secret, "external", server_nonce, first[1],
                                                 answer[1] if len(answer) == 2 else None):
            raise Refused("wrong cluster secret (no proof of it)")
        return words()
    raise Refused(NEEDS_SECRET)


def command(address: str, line: str, secret: str | None = None, timeout: float = 30.0) -> dict:
    """Send one command to the external channel at ``host:port`` (proving
    ``secret`` by the challenge when given); the answer."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        if secret:
            my_nonce = nonce()
            sock.sendall(f"hello {my_nonce}\n".encode())
            challenge = json.loads(reader.readline() or b"{}")
            if "nonce" not in challenge:
                return challenge
            if not proves(secret, "initializer", challenge["nonce"], my_nonce,
                          challenge.get("proof")):
                raise ClusterSetupError(f"{address} gave no valid proof of the cluster secret")
            reply = proof(secret, "external", challenge["nonce"], my_nonce)
            sock.sendall(f"proof {reply}\n".encode())
        sock.sendall(line.encode() + b"\n")
        return json.loads(reader.readline() or b"{}")
