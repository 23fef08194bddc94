"""The runner's cluster flags and what every run reads of them (whether the
run is a cluster, the secret), apart from the membership code: a run of one
process imports only this module of the package."""

from __future__ import annotations

import argparse
import os

#: The environment variable holding the cluster secret.
SECRET_ENV = "WALLAROO_CLUSTER_SECRET"
#: Set in the environment of the workers of ``--workers N``: a signal they get
#: means "stop" (the supervisor passes it to every worker), never "leave the
#: cluster", which would race the initializer's own stop.
SUPERVISED_ENV = "WALLAROO_SUPERVISED"


def wanted(opts: argparse.Namespace) -> bool:
    """Whether the flags ask for a multi-process cluster."""
    initializer = opts.cluster_initializer and (
        (opts.worker_count or 1) > 1 or bool(opts.control)
    )
    member = not opts.cluster_initializer and bool(opts.join or opts.control)
    return bool(initializer or member)


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
