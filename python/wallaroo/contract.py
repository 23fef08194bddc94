"""What the Python side hands the engine (``_engine.run(plan, options)``),
declared once: the TypedDicts here, read by the ``FromPyObject`` structs of
the same names in ``src/plan.rs``. Every key is required there (``None``
where a value is optional), so a key spelt wrongly here fails the start with
its name."""

from __future__ import annotations

import argparse
from typing import Any, Literal, TypedDict


class ResilienceOptions(TypedDict):
    """Crash recovery (``--resilience-dir``): where and how snapshots are kept."""

    dir: str
    """The directory of the workers' stores."""
    interval_ms: int
    """Time between snapshots (at least 1)."""
    give_up_ms: int
    """How long snapshots may keep failing before the run stops."""
    worker: str
    """This worker's name (its store's name)."""
    app: str
    """The application's fingerprint: a store of another application is refused."""


class Membership(TypedDict):
    """This process's place in a cluster."""

    index: int
    """This process's index."""
    addresses: list[str]
    """Every process's data address, by index."""
    names: list[str]
    """Every process's worker name, by index."""
    token: int
    """The run token the data connections between workers present."""


class RunOptions(TypedDict):
    """The options of one run."""

    on_error: Literal["stop", "skip"]
    """What a failure of user code does: stop the run, or skip the record."""
    dead_letter: str | None
    """Where bad input is kept (JSON lines), if anywhere."""
    batch_size: int
    """Records per batch read by sources (at least 1)."""
    epoch_ms: int
    """Length of an epoch in milliseconds (at least 1)."""
    max_frame_bytes: int
    """Frames longer than this are bad input."""
    sink_connect_timeout_s: float
    """How long a TCP sink keeps trying to connect before giving up."""
    max_records: int | None
    """Each source ends after this many records (a bounded run)."""
    resilience: ResilienceOptions | None
    """Crash recovery, when a resilience directory is given."""
    cluster: Membership | None
    """This process's place in a cluster; None for a single process."""


def app_fingerprint(plan: dict) -> str:
    """What a snapshot store must have been written by: the application's
    name, its states and its pipelines (not its code, which may be fixed
    between a crash and the restart)."""
    states = sorted(
        {step["state_name"] for p in plan["pipelines"] for step in p["steps"]
         if step.get("state_name")}
    )  # fmt: skip
    pipelines = [p["name"] for p in plan["pipelines"]]
    return f"app {plan['name']!r}, states {states}, pipelines {pipelines}"


def run_options(opts: argparse.Namespace, plan: dict, membership: Any | None) -> RunOptions:
    """The engine's options for a run of ``plan`` from the runner's command
    line ``opts``; ``membership``: this process's place in its cluster
    (:class:`wallaroo.cluster.Membership`), None alone."""
    cluster: Membership | None = None
    worker = opts.name or "initializer"
    if membership is not None:
        cluster = {
            "index": membership.index,
            "addresses": list(membership.addresses),
            "names": list(membership.names),
            "token": membership.token,
        }
        worker = membership.names[membership.index]
    resilience: ResilienceOptions | None = None
    if opts.resilience_dir:
        resilience = {
            "dir": str(opts.resilience_dir),
            "interval_ms": max(1, round(opts.snapshot_interval * 1000)),
            "give_up_ms": round(opts.snapshot_give_up * 1000),
            "worker": worker,
            "app": app_fingerprint(plan),
        }
    return {
        "on_error": opts.on_error,
        "dead_letter": None if opts.dead_letter is None else str(opts.dead_letter),
        "batch_size": max(1, opts.batch_size),
        "epoch_ms": max(1, opts.epoch_ms),
        "max_frame_bytes": opts.max_frame_bytes,
        "sink_connect_timeout_s": opts.sink_connect_timeout,
        "max_records": opts.max_records,
        "resilience": resilience,
        "cluster": cluster,
    }
