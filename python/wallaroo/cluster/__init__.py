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
verdict), :mod:`.supervisor` (``--workers N``) and :mod:`.options` (the
flags, the secret's source, whether a run is a cluster). Only
:mod:`.options` is imported with the package: the rest on first use of one
of its names (``cluster.Cluster``, ``cluster.supervise``, ...), so a
one-process run never loads it (start-up time).
"""

from __future__ import annotations

from wallaroo._lazy import lazy_names
from wallaroo.cluster.options import (
    SECRET_ENV,
    SUPERVISED_ENV,
    add_arguments,
    load_secret,
    wanted,
)

__all__ = [
    "GROW_WITH_RESILIENCE",
    "SECRET_ENV",
    "SUPERVISED_ENV",
    "Cluster",
    "ClusterSetupError",
    "Membership",
    "add_arguments",
    "free_address",
    "is_loopback",
    "load_secret",
    "split_address",
    "supervise",
    "wanted",
]

__getattr__ = lazy_names(
    __name__,
    {
        "Cluster": "membership",
        "supervise": "supervisor",
        "GROW_WITH_RESILIENCE": "wire",
        "ClusterSetupError": "wire",
        "Membership": "wire",
        "free_address": "wire",
        "is_loopback": "wire",
        "split_address": "wire",
    },
)
