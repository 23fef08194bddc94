"""What the Python side hands the engine (``_engine.run(plan, options)``),
declared once: the TypedDicts here, read by the ``FromPyObject`` structs of
the same names in ``src/plan.rs`` (the plan's sources, sinks and steps are
still dicts read key by key there). Every key is required there (``None``
where a value is optional), so a key spelt wrongly here fails the start with
its name."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Literal, TypedDict


class PipelinePlan(TypedDict):
    """One pipeline: its source, its steps in order, its sink."""

    name: str
    """The pipeline name."""
    source: dict
    """Its source and decoder (``kind`` and the kind's keys)."""
    steps: list[dict]
    """Its steps (``kind``, ``name``, ``func`` and the kind's keys)."""
    sink: dict | None
    """Its sink and encoder; None: the pipeline ends without one."""


class _AppPlan(TypedDict):
    name: str
    """The application name."""
    pipelines: list[PipelinePlan]
    """Its pipelines."""
    states: dict[str, Any]
    """State name -> state class."""
    serialize: Callable[[Any], bytes] | None
    """The application's own ``serialize`` (records crossing workers, snapshots)."""
    deserialize: Callable[[bytes], Any] | None
    """The application's own ``deserialize``."""


class Plan(_AppPlan, total=False):
    """The application plan :func:`wallaroo.plan.compile_plan` returns."""

    api_version: str
    """The API the application was written against (read by the runner)."""


def pipeline_plan(name: str, source: dict, steps: list[dict], sink: dict | None) -> PipelinePlan:
    """The plan of one pipeline."""
    return {"name": name, "source": source, "steps": steps, "sink": sink}


def app_plan(name: str, pipelines: list[PipelinePlan], states: dict[str, Any]) -> Plan:
    """The plan of an application, without codecs of its own (the runner sets
    ``serialize``/``deserialize`` when the application module defines both)."""
    return {
        "name": name,
        "pipelines": pipelines,
        "states": states,
        "serialize": None,
        "deserialize": None,
    }


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
