//! Several worker processes as one timely dataflow cluster.
//!
//! Membership comes from the runner's rendezvous (`wallaroo.cluster`); the
//! processes connect to each other ([`crate::peers`]) and timely runs over
//! those connections. The pipelines are cut at their state steps:
//!
//! ```text
//! source (reading worker) -> batches spread round-robin over all workers
//!   -> decode + stateless steps -> partition key -> owner of the key
//!        same worker: the Python object as is; other worker: serialized
//!   -> state step at the owner: a reader's batches in order, each as soon
//!      as all its parts are in
//!   -> the steps after it -> (next state step: same again) -> encode
//!   -> sink (file / TCP / stdout on worker 0; Kafka on every worker)
//! ```
//!
//! Records are serialized only when they cross workers: a batch of plain
//! data with `marshal`, anything else with pickle (or the application's own
//! `serialize`). Every batch sends one part, empty or not, to every worker
//! with a state step downstream, so an owner knows when it has a batch whole
//! and applies it at once, its records sorted by source position: per-key
//! order is source order whatever worker decoded a record, and records do
//! not wait for their epoch to complete (held records cost cache misses and
//! garbage-collector work).

use std::collections::{BTreeMap, HashMap};
use std::ops::DerefMut;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use serde::{Deserialize, Serialize};
use timely::communication::allocator::zero_copy::bytes_slab::BytesRefill;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{GenericBuilder, Process};
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Concatenate, InputCapability};
use timely::dataflow::{InputHandleCore, ProbeHandle, Scope, StreamCore};
use timely::worker::Worker;
use timely::WorkerConfig;

use crate::codec::Codec;
use crate::control::{NextMembership, RunControl, RunHandle};
use crate::dataflow::{
    run_generation, run_guarded, sink_and_probe, FailureSlot, GenerationEnd, PipelineInput,
    PipelineParts, Resources, Summary,
};
use crate::errors::{format_py_err, Error, StepFailure};
use crate::plan::{Membership, Options, Plan};
use crate::routing::RoutingTable;
use crate::sinks::Output;
use crate::sources::Frame;
use crate::steps::{Chain, Emitted, Keyed, Kind, SortKey};

/// A source batch, named across the cluster: the worker that read it and
/// its number there. Every operator handles a reader's batches in number
/// order, so per-key order is source order wherever a record was decoded.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BatchId {
    /// The reading worker.
    pub reader: u32,
    /// Batch number at the reading worker, from 0 (also spreads batches
    /// round-robin over the workers that decode them).
    pub seq: u64,
}

/// A batch read by one worker's source, on its way to the worker that decodes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrameBatch {
    /// Which batch this is.
    pub id: BatchId,
    /// The records.
    pub frames: Vec<Frame>,
}

/// The records of one batch for state steps on another worker, serialized
/// together. Sent even when empty: the owner counts the parts of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemotePart {
    /// The worker that owns the keys.
    pub owner: u32,
    /// The batch the records belong to.
    pub batch: BatchId,
    /// Where each record came from, and the state step it goes to.
    pub records: Vec<(SortKey, u32)>,
    /// A format byte, then `marshal.dumps` or `pickle.dumps` of
    /// `[(key, value), ...]` (see [`Codec`]); with the application's own
    /// `serialize`, each value is its bytes. Empty when there are no records.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A Python object inside one worker; never serialized by timely.
pub struct PyObject(pub Py<PyAny>);

impl Clone for PyObject {
    fn clone(&self) -> Self {
        Python::attach(|py| PyObject(self.0.clone_ref(py)))
    }
}

/// A record for a state step on this worker: the Python objects themselves.
#[derive(Clone)]
pub struct LocalRecord {
    order: SortKey,
    step: u32,
    key: PyObject,
    value: PyObject,
}

/// The records of one batch for state steps on this worker (sent even when
/// empty, like [`RemotePart`]).
#[derive(Clone)]
pub struct LocalPart {
    batch: BatchId,
    records: Vec<LocalRecord>,
}

type BatchInput = InputHandleCore<u64, CapacityContainerBuilder<Vec<FrameBatch>>>;

/// The input of a cluster pipeline: numbers its batches.
struct ClusterInput {
    handle: BatchInput,
    /// The next batch's id.
    next: BatchId,
}

impl ClusterInput {
    fn new(handle: BatchInput, reader: usize) -> ClusterInput {
        let reader = u32::try_from(reader).unwrap_or(u32::MAX);
        ClusterInput {
            handle,
            next: BatchId { reader, seq: 0 },
        }
    }
}

impl PipelineInput for ClusterInput {
    fn send(&mut self, frames: Vec<Frame>) {
        let id = self.next;
        self.next.seq += 1;
        self.handle.send(FrameBatch { id, frames });
    }

    fn advance_to(&mut self, epoch: u64) {
        self.handle.advance_to(epoch);
    }
}

/// Records for one other worker: their positions and steps, and `(key, value)`.
type OutgoingBatch = (Vec<(SortKey, u32)>, Vec<(Py<PyAny>, Py<PyAny>)>);

/// The three kinds of output of a chain operator.
struct Routed {
    outputs: Vec<Output>,
    local: Vec<LocalPart>,
    remote: Vec<RemotePart>,
}

/// Where a chain operator sends the records it hands to the next state step.
#[derive(Clone, Copy)]
struct Fanout {
    /// This worker.
    me: usize,
    /// Workers in the cluster.
    peers: usize,
    /// A state step follows: every batch sends one part to every worker.
    downstream: bool,
}

/// Split what a chain produced for `batch` into sink output, the part for
/// this worker and the parts for the others (serialized here, under the GIL
/// of the batch). With a state step downstream every worker gets a part,
/// empty or not, so it knows when it has the whole batch: a part that cannot
/// be serialized goes empty, with the failure that stops the run.
fn route(
    py: Python<'_>,
    chain: &Chain,
    codec: &Codec,
    fanout: Fanout,
    batch: BatchId,
    emitted: Emitted,
) -> (Routed, Option<StepFailure>) {
    let mut routed = Routed {
        outputs: emitted.outputs,
        local: Vec::new(),
        remote: Vec::new(),
    };
    let mut failure = None;
    if !fanout.downstream {
        return (routed, failure);
    }
    let mut local = Vec::new();
    let mut remote: Vec<OutgoingBatch> = (0..fanout.peers).map(|_| Default::default()).collect();
    for record in emitted.keyed {
        let step = u32::try_from(record.step).unwrap_or(u32::MAX);
        if record.owner == fanout.me {
            local.push(LocalRecord {
                order: record.order,
                step,
                key: PyObject(record.key),
                value: PyObject(record.value),
            });
        } else {
            // The routing table is made for this generation's workers, so
            // the owner is one of them; the vector grows rather than drop a
            // record if that ever changed.
            if remote.len() <= record.owner {
                remote.resize_with(record.owner + 1, Default::default);
            }
            let entry = &mut remote[record.owner];
            entry.0.push((record.order, step));
            entry.1.push((record.key, record.value));
        }
    }
    routed.local.push(LocalPart {
        batch,
        records: local,
    });
    for (owner, (mut records, pairs)) in remote.into_iter().enumerate() {
        if owner == fanout.me {
            continue;
        }
        let mut data = Vec::new();
        if !pairs.is_empty() {
            match codec.encode(py, &pairs) {
                Ok(encoded) => data = encoded,
                Err((index, err)) => {
                    failure.get_or_insert(encode_failure(py, chain, &records, &pairs, index, &err));
                    records.clear();
                }
            }
        }
        routed.remote.push(RemotePart {
            owner: u32::try_from(owner).unwrap_or(u32::MAX),
            batch,
            records,
            data,
        });
    }
    (routed, failure)
}

/// The failure for a record pickle (or the app's `serialize`) refused.
fn encode_failure(
    py: Python<'_>,
    chain: &Chain,
    records: &[(SortKey, u32)],
    pairs: &[(Py<PyAny>, Py<PyAny>)],
    index: usize,
    err: &PyErr,
) -> StepFailure {
    let order = records.get(index).map(|r| r.0.clone()).unwrap_or_default();
    StepFailure {
        pipeline: chain.pipeline.clone(),
        step: "serialize (records crossing workers)".to_owned(),
        record: pairs
            .get(index)
            .map(|(_, value)| crate::errors::short_repr(value.bind(py), 200))
            .unwrap_or_default(),
        position: chain.source.describe(&crate::sources::Pos {
            stream: order.stream,
            index: order.index,
            offset: order.offset,
        }),
        detail: format_py_err(py, err),
    }
}

type Outputs<G, D> = timely::dataflow::channels::pushers::Output<
    <G as timely::dataflow::ScopeParent>::Timestamp,
    Vec<D>,
>;

/// The output ports of a chain operator: sink output, local and remote parts.
type Ports<G> = (
    Outputs<G, Output>,
    Outputs<G, LocalPart>,
    Outputs<G, RemotePart>,
);

/// Give the three kinds of output at `caps` (one capability per output port).
fn give<G: Scope<Timestamp = u64>>(
    ports: &mut Ports<G>,
    caps: &[Capability<u64>; 3],
    mut routed: Routed,
) {
    if !routed.outputs.is_empty() {
        ports.0.activate().give(&caps[0], &mut routed.outputs);
    }
    if !routed.local.is_empty() {
        ports.1.activate().give(&caps[1], &mut routed.local);
    }
    if !routed.remote.is_empty() {
        ports.2.activate().give(&caps[2], &mut routed.remote);
    }
}

/// What a chain operator needs: the chain, how records cross workers, where
/// they go next, and where a failure is recorded.
#[derive(Clone)]
struct Stage {
    chain: Rc<Chain>,
    codec: Rc<Codec>,
    fanout: Fanout,
    failure: FailureSlot,
}

impl Stage {
    /// Route what the chain produced for `batch` and give it to the
    /// operator's outputs; a serialization failure is recorded like a step
    /// failure.
    fn route_and_give<G: Scope<Timestamp = u64>>(
        &self,
        batch: BatchId,
        emitted: Emitted,
        ports: &mut Ports<G>,
        caps: &[Capability<u64>; 3],
    ) {
        let (routed, failed) =
            Python::attach(|py| route(py, &self.chain, &self.codec, self.fanout, batch, emitted));
        if let Some(step_failure) = failed {
            self.failure.borrow_mut().get_or_insert(step_failure);
        }
        give::<G>(ports, caps, routed);
    }
}

/// The three output streams of a chain operator.
struct ChainStreams<G: Scope<Timestamp = u64>> {
    outputs: StreamCore<G, Vec<Output>>,
    local: StreamCore<G, Vec<LocalPart>>,
    remote: StreamCore<G, Vec<RemotePart>>,
}

/// Capabilities for the three outputs of a chain operator at `cap`'s time.
fn output_caps(cap: &InputCapability<u64>) -> [Capability<u64>; 3] {
    [0, 1, 2].map(|port| cap.delayed_for_output(cap.time(), port))
}

/// Decode and the steps up to the first state step, wherever the batch landed.
fn prefix_operator<G: Scope<Timestamp = u64>>(
    batches: &StreamCore<G, Vec<FrameBatch>>,
    stage: Stage,
) -> ChainStreams<G> {
    let name = format!("decode {}", stage.chain.pipeline);
    let mut builder = OperatorBuilder::new(name, batches.scope());
    let spread =
        Exchange::new(|batch: &FrameBatch| batch.id.seq.wrapping_add(u64::from(batch.id.reader)));
    let mut input = builder.new_input(batches, spread);
    let (out0, outputs) = builder.new_output::<Vec<Output>>();
    let (out1, local) = builder.new_output::<Vec<LocalPart>>();
    let (out2, remote) = builder.new_output::<Vec<RemotePart>>();
    builder.set_notify(false);
    builder.build(move |_capabilities| {
        let mut ports = (out0, out1, out2);
        move |_frontiers| {
            input.for_each(|cap, batches| {
                let caps = output_caps(&cap);
                for batch in batches.iter_mut() {
                    let chain = &stage.chain;
                    let emitted = run_guarded(&stage.failure, |py, out| {
                        chain.process(py, batch.id.reader, &mut batch.frames, out)
                    });
                    stage.route_and_give::<G>(batch.id, emitted, &mut ports, &caps);
                }
                batches.clear();
            });
        }
    });
    ChainStreams {
        outputs,
        local,
        remote,
    }
}

/// The parts of one batch gathered at a state step so far.
struct Gathered {
    parts: usize,
    /// Output capabilities at the earliest time among the parts.
    caps: Option<[Capability<u64>; 3]>,
    local: Vec<LocalRecord>,
    remote: Vec<RemotePart>,
}

/// Puts the parts arriving at a state step back in batch order: a batch is
/// applied as soon as all its parts are in and every earlier batch of its
/// reader has been applied. Records are applied on arrival, not held until
/// their epoch completes (held records cost cache misses and GC work).
struct Sequencer {
    /// Parts per batch: 1 after the decoding worker, one per worker after an
    /// earlier state step.
    expected: usize,
    /// Per reader: the next batch to apply, and the batches waiting.
    readers: HashMap<u32, (u64, BTreeMap<u64, Gathered>)>,
}

impl Sequencer {
    fn new(expected: usize) -> Sequencer {
        Sequencer {
            expected,
            readers: HashMap::new(),
        }
    }

    /// The gathering for `batch`, counting one more part that arrived at `cap`.
    fn part(&mut self, batch: BatchId, cap: &InputCapability<u64>) -> &mut Gathered {
        let (_, waiting) = self.readers.entry(batch.reader).or_default();
        let gathered = waiting.entry(batch.seq).or_insert_with(|| Gathered {
            parts: 0,
            caps: None,
            local: Vec::new(),
            remote: Vec::new(),
        });
        gathered.parts += 1;
        let earlier = gathered
            .caps
            .as_ref()
            .is_none_or(|caps| cap.time() < caps[0].time());
        if earlier {
            gathered.caps = Some(output_caps(cap));
        }
        gathered
    }

    /// The batches ready to apply, in order per reader. `ended`: no more
    /// parts can come (the inputs are closed), so every batch waiting is
    /// applied; one can be incomplete only after a worker failed.
    fn ready(&mut self, ended: bool) -> Vec<(BatchId, Gathered)> {
        let mut ready = Vec::new();
        for (reader, (next, waiting)) in &mut self.readers {
            while let Some(entry) = waiting.first_entry() {
                let complete = *entry.key() == *next && entry.get().parts >= self.expected;
                if !complete && !ended {
                    break;
                }
                *next = *entry.key();
                let batch = BatchId {
                    reader: *reader,
                    seq: *next,
                };
                ready.push((batch, entry.remove()));
                *next += 1;
            }
        }
        ready
    }
}

/// A state step at the owners of its keys, and the steps after it.
fn state_operator<G: Scope<Timestamp = u64>>(
    upstream: &ChainStreams<G>,
    stage: Stage,
    expected: usize,
    step_name: &str,
) -> ChainStreams<G> {
    let mut builder = OperatorBuilder::new(format!("state {step_name}"), upstream.local.scope());
    let mut local_in = builder.new_input(&upstream.local, Pipeline);
    let by_owner = Exchange::new(|part: &RemotePart| u64::from(part.owner));
    let mut remote_in = builder.new_input(&upstream.remote, by_owner);
    let (out0, outputs) = builder.new_output::<Vec<Output>>();
    let (out1, local) = builder.new_output::<Vec<LocalPart>>();
    let (out2, remote) = builder.new_output::<Vec<RemotePart>>();
    builder.build(move |_capabilities| {
        let mut ports = (out0, out1, out2);
        let mut sequencer = Sequencer::new(expected);
        move |frontiers| {
            local_in.for_each(|cap, parts| {
                for part in parts.drain(..) {
                    let gathered = sequencer.part(part.batch, &cap);
                    gathered.local.extend(part.records);
                }
            });
            remote_in.for_each(|cap, parts| {
                for part in parts.drain(..) {
                    sequencer.part(part.batch, &cap).remote.push(part);
                }
            });
            let ended = frontiers.iter().all(|f| f.is_empty());
            for (batch, gathered) in sequencer.ready(ended) {
                let Some(caps) = gathered.caps else {
                    continue;
                };
                let chain = &stage.chain;
                let codec = &stage.codec;
                let emitted = run_guarded(&stage.failure, |py, out| {
                    let records = merge_parts(py, chain, codec, gathered.local, gathered.remote)?;
                    chain.process_keyed(py, records, out)
                });
                stage.route_and_give::<G>(batch, emitted, &mut ports, &caps);
            }
        }
    });
    ChainStreams {
        outputs,
        local,
        remote,
    }
}

/// The records of a batch's parts (remote ones deserialized), in source order.
fn merge_parts(
    py: Python<'_>,
    chain: &Chain,
    codec: &Codec,
    local: Vec<LocalRecord>,
    remote: Vec<RemotePart>,
) -> Result<Vec<Keyed>, StepFailure> {
    let mut records =
        Vec::with_capacity(local.len() + remote.iter().map(|p| p.records.len()).sum::<usize>());
    for record in local {
        records.push((
            record.order,
            record.step as usize,
            record.key.0,
            record.value.0,
        ));
    }
    let from_others = !remote.iter().all(|part| part.records.is_empty());
    for part in remote.into_iter().filter(|part| !part.records.is_empty()) {
        let pairs = codec.decode(py, &part.data).map_err(|err| StepFailure {
            pipeline: chain.pipeline.clone(),
            step: "deserialize (records crossing workers)".to_owned(),
            record: format!("{} bytes from another worker", part.data.len()),
            position: format!("{} records", part.records.len()),
            detail: format_py_err(py, &err),
        })?;
        for ((order, step), (key, value)) in part.records.into_iter().zip(pairs) {
            records.push((order, step as usize, key, value));
        }
    }
    if from_others {
        records.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(records)
}

/// Build one pipeline of a cluster worker; returns its input.
pub(crate) fn build_pipeline<A: Allocate>(
    worker: &mut Worker<A>,
    part: &PipelineParts,
    failure: FailureSlot,
    probe: &ProbeHandle<u64>,
) -> Box<dyn PipelineInput> {
    let me = worker.index();
    let peers = worker.peers();
    let mut handle = BatchInput::new();
    let chain = part.chain.clone();
    let codec = match Python::attach(|py| {
        Codec::with(py, chain.serialize.as_ref(), chain.deserialize.as_ref())
    }) {
        Ok(codec) => Rc::new(codec),
        Err(err) => {
            let detail = Python::attach(|py| format_py_err(py, &err));
            failure.borrow_mut().get_or_insert(StepFailure {
                pipeline: chain.pipeline.clone(),
                step: "serialize".to_owned(),
                record: String::new(),
                position: String::new(),
                detail,
            });
            return Box::new(ClusterInput::new(handle, me));
        }
    };
    let state_steps: Vec<String> = chain
        .steps
        .iter()
        .filter(|s| matches!(s.kind, Kind::State { .. }))
        .map(|s| s.name.clone())
        .collect();
    let stage = |downstream: bool| Stage {
        chain: chain.clone(),
        codec: codec.clone(),
        fanout: Fanout {
            me,
            peers,
            downstream,
        },
        failure: failure.clone(),
    };
    let sink_tx = part.sink_tx.clone();
    let everywhere = part.sink_everywhere;
    let name = part.name.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let batches = handle.to_stream(scope);
        let mut streams = prefix_operator(&batches, stage(!state_steps.is_empty()));
        let mut outputs = Vec::new();
        for (i, step_name) in state_steps.iter().enumerate() {
            outputs.push(streams.outputs.clone());
            // A batch is decoded on one worker; after a state step every
            // worker sends its part.
            let expected = if i == 0 { 1 } else { peers };
            let downstream = i + 1 < state_steps.len();
            streams = state_operator(&streams, stage(downstream), expected, step_name);
        }
        outputs.push(streams.outputs.clone());
        let all = scope.concatenate(outputs);
        let to_sink = if everywhere {
            all.unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Pipeline,
                "local",
                |_, _| {
                    |input, output| {
                        input.for_each(|time, data| output.session(&time).give_container(data))
                    }
                },
            )
        } else {
            all.unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Exchange::new(|_: &Output| 0),
                "to worker 0",
                |_, _| {
                    |input, output| {
                        input.for_each(|time, data| output.session(&time).give_container(data))
                    }
                },
            )
        };
        sink_and_probe(&to_sink, &name, sink_tx, probe);
    });
    Box::new(ClusterInput::new(handle, me))
}

/// Why the cluster broke: the reason the control channel gave (it names the
/// lost worker), waiting a moment for it, else `fallback`.
fn lost_peer_reason(control: &RunControl, fallback: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(reason) = control.peek_abort() {
            return reason;
        }
        if std::time::Instant::now() >= deadline {
            return fallback.to_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Panics in timely's threads mean a peer's connection broke: unwinding
/// through timely's shared queues would panic again and abort the process
/// with a backtrace, so report the lost worker in one line and exit (with
/// crash recovery, `restart`: start again from the last complete snapshot).
fn exit_on_lost_peer(control: RunHandle, restart: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_timely = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("timely"));
        if !in_timely {
            default(info);
            return;
        }
        let detail = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("connection lost");
        let reason = lost_peer_reason(
            &control,
            &format!("lost the connection to another worker ({detail})"),
        );
        if restart {
            restart_process(&reason);
        }
        eprintln!("error: cluster: {reason}");
        std::process::exit(1);
    }));
}

/// With crash recovery, a worker that loses a peer starts again (same
/// process, same command line) and the cluster recovers from the last
/// complete snapshot once the lost worker is back.
/// How long the processes of a new generation may take to connect to each other.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker that joins may take to connect; after that the grow
/// is rolled back.
const GROW_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Replace this process by a fresh start of the same command line.
pub fn restart_process(reason: &str) -> ! {
    use std::os::unix::process::CommandExt;
    eprintln!(
        "warning: cluster: {reason}; restarting this worker to recover from the last complete \
         snapshot"
    );
    let args: Vec<std::ffi::OsString> = std::fs::read("/proc/self/cmdline")
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| {
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(arg).to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    // The original argv[0] (not /proc/self/exe): Python finds its virtual
    // environment from it.
    let program = args
        .first()
        .cloned()
        .unwrap_or_else(|| std::ffi::OsString::from("/proc/self/exe"));
    let err = std::process::Command::new(program)
        .args(args.iter().skip(1))
        .exec();
    eprintln!("error: cluster: cannot restart this worker: {err}");
    std::process::exit(1);
}

/// Run this process's worker of the cluster, one timely instance per
/// generation (the membership changes when a worker joins or leaves); the
/// calling (main) thread waits, watching for signals.
pub fn execute(
    plan: Plan,
    options: Options,
    membership: Membership,
    stop: Arc<AtomicBool>,
    control: RunHandle,
) -> Result<Summary, Error> {
    exit_on_lost_peer(control.clone(), options.resilience.is_some());
    let peers = membership.addresses.len();
    let resources = Arc::new(Resources::new(
        plan,
        &options,
        membership.index,
        peers,
        stop.clone(),
        control.clone(),
    )?);
    let options = Arc::new(options);
    let mut current = membership;
    // The membership before a grow, until the grown generation is connected.
    let mut grown_from: Option<Membership> = None;
    let outcome = loop {
        control.begin_generation();
        let timeout = match grown_from {
            Some(_) => GROW_CONNECT_TIMEOUT,
            None => CONNECT_TIMEOUT,
        };
        let sockets = match crate::peers::connect(
            &current.addresses,
            current.index,
            current.token,
            timeout,
        ) {
            Ok(sockets) => sockets,
            Err(error) => match grown_from.take() {
                // Nothing moved yet (keys move once connected): the
                // cluster goes on as it was, on every worker alike.
                Some(previous) => {
                    log::warn!(
                        "{error}: the new worker never connected; the cluster goes back \
                             to {} workers ({})",
                        previous.names.len(),
                        previous.names.join(", ")
                    );
                    current = previous;
                    continue;
                }
                None => break Err(error),
            },
        };
        control.connected();
        match run_instance(&resources, &options, &current, sockets, &stop) {
            Ok(GenerationEnd::Finished(interrupted)) => break Ok(interrupted),
            Ok(GenerationEnd::Reconfigure(next)) => match next.index {
                Some(index) => {
                    log::info!(
                        "the cluster now has {} workers ({}); this is worker {index}",
                        next.names.len(),
                        next.names.join(", ")
                    );
                    let next = Membership {
                        index,
                        addresses: next.addresses,
                        names: next.names,
                        token: current.token,
                    };
                    let grew = next.names.len() > current.names.len();
                    let previous = std::mem::replace(&mut current, next);
                    grown_from = grew.then_some(previous);
                }
                None => {
                    log::info!("left the cluster: this worker's keys were handed over");
                    break Ok(false);
                }
            },
            Err(error) => break Err(error),
        }
    };
    // The worker thread of the last instance may still be dropping its
    // reference for a moment.
    let mut resources = resources;
    for _ in 0..50 {
        match Arc::try_unwrap(resources) {
            Ok(owned) => return owned.finish(outcome, current.index, current.addresses.len()),
            Err(shared) => {
                resources = shared;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    outcome.and(Err(Error::Cluster(
        "the worker did not release the run's resources".to_owned(),
    )))
}

/// One timely instance: connect to the generation's workers, run the
/// generation, disconnect.
fn run_instance(
    resources: &Arc<Resources>,
    options: &Arc<Options>,
    membership: &Membership,
    sockets: Vec<Option<std::net::TcpStream>>,
    stop: &Arc<AtomicBool>,
) -> Result<GenerationEnd, Error> {
    let refill = BytesRefill {
        logic: Arc::new(|size| Box::new(vec![0_u8; size]) as Box<dyn DerefMut<Target = [u8]>>),
        limit: None,
    };
    let (builders, network) = initialize_networking_from_sockets::<_, Process>(
        sockets,
        membership.index,
        1,
        refill,
        Arc::new(|_| None),
    )
    .map_err(|e| Error::Cluster(format!("cannot connect the cluster: {e}")))?;
    let builders = builders.into_iter().map(GenericBuilder::ZeroCopy).collect();
    let (result_tx, result_rx) = crossbeam_channel::bounded(1);
    let control = resources.control.clone();
    let (resources, options) = (resources.clone(), options.clone());
    let names = membership.names.clone();
    let guards = timely::execute::execute_from(
        builders,
        Box::new(network),
        WorkerConfig::default(),
        move |worker| {
            let result = run_generation(worker, &resources, &options, &names, false);
            let _ = result_tx.send(result);
        },
    )
    .map_err(|e| Error::Cluster(format!("cannot connect the cluster: {e}")))?;
    let result = loop {
        match result_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => break result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                break Err(Error::Cluster(lost_peer_reason(
                    &control,
                    "the worker stopped without a result (a peer was lost)",
                )))
            }
        }
        // Runs the runner's signal handlers, which request a clean stop.
        if let Err(signal) = Python::attach(|py| py.check_signals()) {
            log::info!("stopping ({signal}): finishing what the sources have read");
            stop.store(true, Ordering::Relaxed);
        }
    };
    match result {
        Ok(end) => {
            // A clean end on every worker: the connections close in order.
            drop(guards);
            Ok(end)
        }
        Err(error) => {
            // Peers may be gone; joining the network threads could wait forever.
            std::mem::forget(guards);
            Err(error)
        }
    }
}

/// A key's state on its way to its new owner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MovedState {
    /// The worker (index in this instance) that owns the key from now on.
    pub dest: u32,
    /// The state name.
    pub store: String,
    /// The pickled key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The serialized state (the application's `serialize`, else pickle).
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// At the start of a generation: every key this worker holds but no longer
/// owns goes to its owner.
pub(crate) fn hand_over<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    tables: &std::collections::HashMap<String, Arc<RoutingTable>>,
    names: &[String],
) -> Result<(), Error> {
    let me = names.get(worker.index()).cloned().unwrap_or_default();
    let moves = Python::attach(|py| resources.take_moves(py, tables, names, names, &me, false))?;
    exchange_states(worker, resources, moves)
}

/// At the end of a generation: a worker that leaves sends all its keys to
/// their owners in the next generation (identified by name).
pub(crate) fn hand_over_leaving<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    next_tables: &std::collections::HashMap<String, Arc<RoutingTable>>,
    names: &[String],
    next_names: &[String],
    leaving: &[String],
) -> Result<(), Error> {
    let me = names.get(worker.index()).cloned().unwrap_or_default();
    let moves = if leaving.contains(&me) {
        Python::attach(|py| resources.take_moves(py, next_tables, next_names, names, &me, true))?
    } else {
        Vec::new()
    };
    exchange_states(worker, resources, moves)
}

/// The next generation's data addresses and worker names, by index.
pub(crate) type NextWorkers = (Vec<String>, Vec<String>);

/// The initializer's decision at the end of a generation, delivered to every
/// worker: the next membership (data addresses and names), or None when the
/// run ends. `proposal` is only given on worker 0.
pub(crate) fn decide<A: Allocate>(
    worker: &mut Worker<A>,
    control: &RunControl,
    proposal: Option<NextMembership>,
) -> Result<Option<NextWorkers>, Error> {
    type Decision = (u32, Option<NextWorkers>);
    let mut input = InputHandleCore::<u64, CapacityContainerBuilder<Vec<Decision>>>::new();
    let received: std::rc::Rc<std::cell::RefCell<Vec<Decision>>> = Default::default();
    let inbox = received.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        input.to_stream(scope).sink(
            Exchange::new(|decision: &Decision| u64::from(decision.0)),
            "decide the next generation",
            move |(input, _frontier)| {
                input.for_each(|_time, data| inbox.borrow_mut().append(data));
            },
        );
    });
    if worker.index() == 0 {
        let next = proposal.map(|next| (next.addresses, next.names));
        for peer in 0..worker.peers() {
            input.send((u32::try_from(peer).unwrap_or(u32::MAX), next.clone()));
        }
    }
    drop(input);
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(reason) = control.peek_abort() {
            return Err(Error::Cluster(reason));
        }
    }
    let decision = received.borrow_mut().pop();
    Ok(decision.and_then(|(_, next)| next))
}

/// Run a small dataflow that delivers `moves` to their workers and installs
/// what this worker receives. Every worker of the instance takes part.
fn exchange_states<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    moves: Vec<MovedState>,
) -> Result<(), Error> {
    let mut input = InputHandleCore::<u64, CapacityContainerBuilder<Vec<MovedState>>>::new();
    let received: std::rc::Rc<std::cell::RefCell<Vec<MovedState>>> = Default::default();
    let inbox = received.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        input.to_stream(scope).sink(
            Exchange::new(|moved: &MovedState| u64::from(moved.dest)),
            "hand over state",
            move |(input, _frontier)| {
                input.for_each(|_time, data| inbox.borrow_mut().append(data));
            },
        );
    });
    let sent = moves.len();
    for moved in moves {
        input.send(moved);
    }
    drop(input);
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(reason) = resources.control.peek_abort() {
            return Err(Error::Cluster(reason));
        }
    }
    let received = std::mem::take(&mut *received.borrow_mut());
    if sent > 0 || !received.is_empty() {
        log::info!(
            "handed over the state of {sent} keys, took over {} keys",
            received.len()
        );
    }
    Python::attach(|py| resources.install(py, received))
}
