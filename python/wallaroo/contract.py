"""What the Python side hands the engine (``_engine.run(plan, options)``),
declared once: the TypedDicts here, read by the ``FromPyObject`` structs of
the same names in ``src/plan.rs``: the plan, its pipelines, and a TypedDict
per kind of source, sink and step. Every key is required there (``None``
where a value is optional), so a key spelt wrongly here fails the start with
its name and the source, sink or step it belongs to."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Literal, TypedDict, Union


class Decoder(TypedDict):
    """A source's decoder of whole records (lines, Kafka messages, generator values)."""

    decode: Callable[[bytes], Any]
    """The decoder's bound ``decode``."""


class FramedDecoder(Decoder):
    """A source's decoder of framed records: a header, then its payload."""

    header_length: int
    """Header size in bytes."""
    payload_length: Callable[[bytes], int]
    """The decoder's bound ``payload_length`` (header -> payload size)."""
    length_fmt: str | None
    """A ``struct`` format the engine reads the header with natively, if any."""


class TcpSource(FramedDecoder):
    """Listen on a TCP address."""

    kind: Literal["tcp"]
    host: str
    port: int
    max_connections: int | None
    """Connections read at once (0.6.1 ``parallelism``); None: any number."""


class FileSource(Decoder):
    """A file (plain or .gz), one record a line."""

    kind: Literal["file"]
    path: str
    framing: Literal["lines"]


class FramedFileSource(FramedDecoder):
    """A file (plain or .gz) of framed records."""

    kind: Literal["file"]
    path: str
    framing: Literal["length"]


class GenSource(Decoder):
    """The values of a 0.5/0.6 generator object (``initial_value``, then ``apply``)."""

    kind: Literal["gen"]
    generator: Any


class KafkaClient(TypedDict):
    """A Kafka source's or sink's connection; :meth:`wallaroo.kafka.KafkaSetup.prepare`
    sets these in place of the ``brokers`` the plan is compiled with."""

    bootstrap: str
    """``host:port,...``."""
    log_level: str
    """0.4.2 log level: Fine, Info, Warn, Error."""
    config: list[tuple[str, str]]
    """librdkafka settings from the command line, applied last."""


class KafkaSource(Decoder, KafkaClient):
    """Consume a Kafka topic."""

    kind: Literal["kafka"]
    topic: str
    group_id: str
    """The consumer group offsets are committed under."""
    start_offset: Literal["committed", "earliest", "latest"]
    create_partitions: int | None
    """Create the topic with this many partitions when it is missing."""


Source = Union[TcpSource, FileSource, FramedFileSource, GenSource, KafkaSource]
"""A pipeline's source and decoder, by ``kind``."""


class _Sink(TypedDict):
    encode: Callable[[Any], Any]
    """The encoder's bound ``encode``."""
    group: str | None
    """Pipelines with the same group write through one sink (a merged 0.6 pipeline)."""


class TcpSink(_Sink):
    """Connect to a TCP address."""

    kind: Literal["tcp"]
    host: str
    port: int


class FileSink(_Sink):
    """Write a file (created or truncated)."""

    kind: Literal["file"]
    path: str


class StdoutSink(_Sink):
    """Write standard output."""

    kind: Literal["stdout"]


class KafkaSink(_Sink, KafkaClient):
    """Produce to a Kafka topic."""

    kind: Literal["kafka"]
    topic: str
    max_produce_buffer_ms: int
    """librdkafka's ``linger.ms``."""
    max_message_size: int
    """Larger encoded records are bad output."""
    create_partitions: int | None
    """Create the topic with this many partitions when it is missing."""
    transactions: bool
    """Output committed at each snapshot (``--kafka-sink-transactions``)."""


class ManySink(_Sink):
    """Several sinks (``to_sinks``): the encoder returns a list, item ``i`` for
    sink ``i``; the engine reads the kinds of ``sinks``, not their encoders."""

    kind: Literal["many"]
    sinks: list[Sink]


Sink = Union[TcpSink, FileSink, StdoutSink, KafkaSink, ManySink]
"""A pipeline's sink and encoder, by ``kind``."""


class Step(TypedDict):
    """A stateless step."""

    kind: Literal["map", "multi"]
    """``map``: ``compute(data)`` -> output or None; ``multi``: a list."""
    name: str
    """The name from ``name()``."""
    func: Callable[..., Any]
    """The bound ``compute`` / ``compute_multi``."""


class StateStep(TypedDict):
    """A step with partitioned state: ``func(data, state)`` -> ``(output, changed)``."""

    kind: Literal["state", "state_multi"]
    """``state_multi``: the output is a list."""
    name: str
    func: Callable[..., Any]
    state_name: str
    """The state name shared across pipelines."""
    partition: Callable[[Any], Any] | None
    """Record -> partition key; None: one state (``to_stateful``)."""
    keys: list
    """The keys the application declared, in order."""
    u64: bool
    """Keys must be non-negative ints (``to_state_partition_u64``)."""
    tick: Callable[..., Any] | None
    """Windows: ``tick(states, final)`` fires what is due on the engine's timer
    and returns ``(keys, outputs)`` (the keys whose state changed, every output
    in order) or None."""
    share: Callable[[], Any] | None
    """Event-time windows: ``share()`` -> what this worker's stage knows of its
    source partitions; in a cluster it goes with every timer tick to every
    worker, whose ``tick`` then gets ``(final, shared)`` as ``final``."""
    origin: bool
    """Event-time windows: ``func`` takes the record's ``(reader, stream)`` third."""


AnyStep = Union[Step, StateStep]
"""A pipeline step, by ``kind``."""


def state_step(
    step: Step,
    state_name: str,
    partition: Callable[[Any], Any] | None,
    keys: list | None = None,
    *,
    u64: bool = False,
    tick: Callable[..., Any] | None = None,
    share: Callable[[], Any] | None = None,
    origin: bool = False,
) -> StateStep:
    """``step`` (its name, its function, ``multi`` or not) as a step on the
    state ``state_name``."""
    return {
        "kind": "state_multi" if step["kind"] == "multi" else "state",
        "name": step["name"],
        "func": step["func"],
        "state_name": state_name,
        "partition": partition,
        "keys": list(keys or []),
        "u64": u64,
        "tick": tick,
        "share": share,
        "origin": origin,
    }


class PipelinePlan(TypedDict):
    """One pipeline: its source, its steps in order, its sink."""

    name: str
    """The pipeline name."""
    source: Source
    """Its source and decoder (``kind`` and the kind's keys)."""
    steps: list[AnyStep]
    """Its steps (``kind``, ``name``, ``func`` and the kind's keys)."""
    sink: Sink | None
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


def pipeline_plan(
    name: str, source: Source, steps: list[AnyStep], sink: Sink | None
) -> PipelinePlan:
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
