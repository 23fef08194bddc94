"""Cluster membership: the initializer's rendezvous, workers joining it, the
secret, liveness, and the ``--workers N`` supervisor.

The data plane is timely dataflow's communication over connections the
engine makes (``src/peers.rs``); this module only finds out who is in the
cluster. Protocol: JSON lines over the control address.

* A worker connects to the initializer's control address (``-c`` or ``-j``);
  the initializer opens with ``{"type": "hello", "protocol", "nonce",
  "secret": bool}`` and the worker answers ``{"type": "join", "name",
  "data", "app", "nonce", "proof"}`` within a few seconds (else it is
  dropped). With a cluster secret, ``proof`` is an HMAC of both nonces
  (:mod:`.auth`): the secret itself never crosses the wire.
* The initializer (``-t``) waits until ``--worker-count`` workers are there,
  then sends each ``{"type": "start", "index", "addresses", "token",
  "proof"}`` (its own proof, checked by the worker); everyone starts the
  engine with that membership. The workers' data connections present the
  run's random token, which travels only here, to proven workers.
* The control connections stay open while the application runs: if one
  closes without a ``{"type": "done"}`` first, the worker at the other end
  was lost, and the engine is told to stop with an error naming it (no hang).
* While it runs, a worker sends the initializer its metrics once a second
  (``{"type": "metrics", "snapshot": JSON text}``), and once more before
  ``done``; the initializer serves them with its own (``wallaroo.metrics``).

Modules: :mod:`.wire` (the messages, addresses, what both roles share),
:mod:`.auth` (the secret and its proofs), :mod:`.initializer`,
:mod:`.member`, :mod:`.membership` (one run's cluster: form, watch,
verdict) and :mod:`.supervisor` (``--workers N``).
"""

from __future__ import annotations

import argparse

from wallaroo.cluster.auth import SECRET_ENV, load_secret
from wallaroo.cluster.membership import Cluster
from wallaroo.cluster.supervisor import supervise
from wallaroo.cluster.wire import (
    GROW_WITH_RESILIENCE,
    ClusterSetupError,
    Membership,
    free_address,
    is_loopback,
    split_address,
)

__all__ = [
    "GROW_WITH_RESILIENCE",
    "SECRET_ENV",
    "Cluster",
    "ClusterSetupError",
    "Membership",
    "add_arguments",
    "free_address",
    "is_loopback",
    "load_secret",
    "split_address",
    "supervise",
]


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
        help="the cluster's shared secret, proved by every worker and the initializer and "
        "never sent (a command line is visible to other users: prefer "
        f"--cluster-secret-file or {SECRET_ENV}); required when the control address is "
        "reachable from other hosts, and then by the external channel too",
    )
    group.add_argument(
        "--cluster-secret-file",
        metavar="PATH",
        help="read the cluster secret from PATH (surrounding whitespace dropped); "
        f"else {SECRET_ENV}",
    )
    group.add_argument(
        "--cluster-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the cluster to form (default 60)",
    )
