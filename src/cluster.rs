//! Several worker processes as one timely dataflow cluster.
//!
//! Membership comes from the runner's rendezvous (`wallaroo.cluster`); here
//! timely connects the processes and the pipelines are cut at their state
//! steps:
//!
//! ```text
//! source (reading worker) -> batches spread round-robin over all workers
//!   -> decode + stateless steps -> partition key -> owner of the key
//!        same worker: the Python object as is; other worker: pickled
//!   -> state step at the owner: each epoch's records in source order
//!   -> the steps after it -> (next state step: same again) -> encode
//!   -> sink (file / TCP / stdout on worker 0; Kafka on every worker)
//! ```
//!
//! Records are pickled (or serialized with the application's own
//! `serialize`) only when they cross workers. A state step applies an epoch's
//! records only once the epoch is complete, sorted by source position, so
//! per-key order is source order whatever worker decoded a record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::{Deserialize, Serialize};
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Concatenate};
use timely::dataflow::{InputHandleCore, ProbeHandle, Scope, StreamCore};
use timely::worker::Worker;
use timely::{CommunicationConfig, WorkerConfig};

use crate::dataflow::{
    run_generation, run_guarded, sink_and_probe, FailureSlot, GenerationEnd, PipelineInput,
    PipelineParts, Resources, Summary,
};
use crate::errors::{format_py_err, Error, StepFailure};
use crate::plan::{Membership, Options, Plan};
use crate::routing::RoutingTable;
use crate::sinks::Output;
use crate::sources::Frame;
use crate::steps::{Chain, Emitted, Kind, SortKey};

/// A batch read by one worker's source, on its way to the worker that decodes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrameBatch {
    /// Batch number at the reading worker (spreads batches round-robin).
    pub seq: u64,
    /// The reading worker.
    pub reader: u32,
    /// The records.
    pub frames: Vec<Frame>,
}

/// Records for state steps on another worker, serialized together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoteBatch {
    /// The worker that owns the keys.
    pub owner: u32,
    /// Where each record came from, and the state step it goes to.
    pub records: Vec<(SortKey, u32)>,
    /// `pickle.dumps([(key, value), ...])`; with the application's own
    /// `serialize`, each value is its bytes.
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

type BatchInput = InputHandleCore<u64, CapacityContainerBuilder<Vec<FrameBatch>>>;

/// The input of a cluster pipeline: numbers batches for the round-robin spread.
struct ClusterInput {
    handle: BatchInput,
    reader: u32,
    seq: u64,
}

impl PipelineInput for ClusterInput {
    fn send(&mut self, frames: Vec<Frame>) {
        self.seq += 1;
        self.handle.send(FrameBatch {
            seq: self.seq,
            reader: self.reader,
            frames,
        });
    }

    fn advance_to(&mut self, epoch: u64) {
        self.handle.advance_to(epoch);
    }
}

/// How records cross workers: one pickle per batch, and the application's
/// own `serialize` / `deserialize` for each value when it defines them.
pub(crate) struct Codec {
    /// `pickle.dumps`, called with the highest protocol.
    dumps: Py<PyAny>,
    protocol: Py<PyAny>,
    loads: Py<PyAny>,
    own: Option<(Py<PyAny>, Py<PyAny>)>,
}

impl Codec {
    fn new(py: Python<'_>, chain: &Chain) -> PyResult<Codec> {
        Codec::with(py, chain.serialize.as_ref(), chain.deserialize.as_ref())
    }

    pub(crate) fn with(
        py: Python<'_>,
        serialize: Option<&Py<PyAny>>,
        deserialize: Option<&Py<PyAny>>,
    ) -> PyResult<Codec> {
        let pickle = py.import("pickle")?;
        let own = match (serialize, deserialize) {
            (Some(s), Some(d)) => Some((s.clone_ref(py), d.clone_ref(py))),
            _ => None,
        };
        Ok(Codec {
            dumps: pickle.getattr("dumps")?.unbind(),
            protocol: pickle.getattr("HIGHEST_PROTOCOL")?.unbind(),
            loads: pickle.getattr("loads")?.unbind(),
            own,
        })
    }

    /// `pickle.dumps(obj, HIGHEST_PROTOCOL)`.
    fn dump<'py>(&self, py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.dumps.bind(py).call1((obj, self.protocol.bind(py)))
    }

    /// Serialize `(key, value)` pairs for another worker; on failure, the
    /// index of the pair that could not be serialized.
    fn encode(
        &self,
        py: Python<'_>,
        pairs: &[(Py<PyAny>, Py<PyAny>)],
    ) -> Result<Vec<u8>, (usize, PyErr)> {
        let mut items = Vec::with_capacity(pairs.len());
        for (index, (key, value)) in pairs.iter().enumerate() {
            let value = match &self.own {
                Some((serialize, _)) => serialize
                    .bind(py)
                    .call1((value,))
                    .map_err(|err| (index, err))?
                    .unbind(),
                None => value.clone_ref(py),
            };
            let pair = pyo3::types::PyTuple::new(py, [key.clone_ref(py), value]);
            items.push(pair.map_err(|err| (index, err))?);
        }
        let pickled = pyo3::types::PyList::new(py, items)
            .and_then(|list| self.dump(py, list.as_any()))
            .and_then(|data| Ok(data.cast::<PyBytes>()?.as_bytes().to_vec()));
        pickled.map_err(|err| {
            // Find the record pickle refused, for the message.
            let culprit = pairs
                .iter()
                .position(|(key, value)| {
                    let pair = pyo3::types::PyTuple::new(py, [key, value]);
                    pair.and_then(|pair| self.dump(py, pair.as_any())).is_err()
                })
                .unwrap_or(0);
            (culprit, err)
        })
    }

    /// Serialize a state for a snapshot (the app's `serialize`, else pickle).
    pub(crate) fn encode_value(
        &self,
        py: Python<'_>,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<u8>> {
        let bytes = match &self.own {
            Some((serialize, _)) => serialize.bind(py).call1((state,))?,
            None => self.dump(py, state)?,
        };
        Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
    }

    /// The inverse of [`Codec::encode_value`].
    pub(crate) fn decode_value<'py>(
        &self,
        py: Python<'py>,
        bytes: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        let loads = match &self.own {
            Some((_, deserialize)) => deserialize.bind(py),
            None => self.loads.bind(py),
        };
        loads.call1((PyBytes::new(py, bytes),))
    }

    /// A key and its state, serialized to move to another worker.
    pub(crate) fn encode_state(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<(Vec<u8>, Vec<u8>)> {
        let key = self.dump(py, key)?;
        let state = match &self.own {
            Some((serialize, _)) => serialize.bind(py).call1((state,))?,
            None => self.dump(py, state)?,
        };
        Ok((
            key.cast::<PyBytes>()?.as_bytes().to_vec(),
            state.cast::<PyBytes>()?.as_bytes().to_vec(),
        ))
    }

    /// The inverse of [`Codec::encode_state`].
    pub(crate) fn decode_state<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        state: &[u8],
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let key = self.loads.bind(py).call1((PyBytes::new(py, key),))?;
        let loads = match &self.own {
            Some((_, deserialize)) => deserialize.bind(py),
            None => self.loads.bind(py),
        };
        let state = loads.call1((PyBytes::new(py, state),))?;
        Ok((key, state))
    }

    /// The `(key, value)` pairs of a batch from another worker.
    fn decode(&self, py: Python<'_>, data: &[u8]) -> PyResult<Vec<(Py<PyAny>, Py<PyAny>)>> {
        let list = self.loads.bind(py).call1((PyBytes::new(py, data),))?;
        let mut pairs = Vec::new();
        for item in list.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            let value = match &self.own {
                Some((_, deserialize)) => deserialize.bind(py).call1((value,))?,
                None => value,
            };
            pairs.push((key.unbind(), value.unbind()));
        }
        Ok(pairs)
    }
}

/// Records for one other worker: their positions and steps, and `(key, value)`.
type OutgoingBatch = (Vec<(SortKey, u32)>, Vec<(Py<PyAny>, Py<PyAny>)>);

/// The three kinds of output of a chain operator.
struct Routed {
    outputs: Vec<Output>,
    local: Vec<LocalRecord>,
    remote: Vec<RemoteBatch>,
}

/// Split what a chain produced into sink output, records for this worker and
/// records for others (serialized here, under the GIL of the batch).
fn route(
    py: Python<'_>,
    chain: &Chain,
    codec: &Codec,
    me: usize,
    emitted: Emitted,
) -> Result<Routed, StepFailure> {
    let mut routed = Routed {
        outputs: emitted.outputs,
        local: Vec::new(),
        remote: Vec::new(),
    };
    let mut remote: BTreeMap<usize, OutgoingBatch> = BTreeMap::new();
    for record in emitted.keyed {
        let step = u32::try_from(record.step).unwrap_or(u32::MAX);
        if record.owner == me {
            routed.local.push(LocalRecord {
                order: record.order,
                step,
                key: PyObject(record.key),
                value: PyObject(record.value),
            });
            continue;
        }
        let entry = remote.entry(record.owner).or_default();
        entry.0.push((record.order, step));
        entry.1.push((record.key, record.value));
    }
    for (owner, (records, pairs)) in remote {
        let data = codec.encode(py, &pairs).map_err(|(index, err)| {
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
                detail: format_py_err(py, &err),
            }
        })?;
        routed.remote.push(RemoteBatch {
            owner: u32::try_from(owner).unwrap_or(u32::MAX),
            records,
            data,
        });
    }
    Ok(routed)
}

type Outputs<G, D> = timely::dataflow::channels::pushers::Output<
    <G as timely::dataflow::ScopeParent>::Timestamp,
    Vec<D>,
>;

/// The output ports of a chain operator: sink output, local and remote records.
type Ports<G> = (
    Outputs<G, Output>,
    Outputs<G, LocalRecord>,
    Outputs<G, RemoteBatch>,
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

/// Route what a chain produced and give it to the operator's outputs; a
/// serialization failure is recorded like a step failure.
fn route_and_give<G: Scope<Timestamp = u64>>(
    chain: &Chain,
    codec: &Codec,
    me: usize,
    emitted: Emitted,
    failure: &FailureSlot,
    ports: &mut Ports<G>,
    caps: &[Capability<u64>; 3],
) {
    match Python::attach(|py| route(py, chain, codec, me, emitted)) {
        Ok(routed) => give::<G>(ports, caps, routed),
        Err(step_failure) => {
            failure.borrow_mut().get_or_insert(step_failure);
        }
    }
}

/// The three output streams of a chain operator.
struct ChainStreams<G: Scope<Timestamp = u64>> {
    outputs: StreamCore<G, Vec<Output>>,
    local: StreamCore<G, Vec<LocalRecord>>,
    remote: StreamCore<G, Vec<RemoteBatch>>,
}

/// Decode and the steps up to the first state step, wherever the batch landed.
fn prefix_operator<G: Scope<Timestamp = u64>>(
    batches: &StreamCore<G, Vec<FrameBatch>>,
    chain: std::rc::Rc<Chain>,
    codec: std::rc::Rc<Codec>,
    failure: FailureSlot,
    me: usize,
) -> ChainStreams<G> {
    let mut builder = OperatorBuilder::new(format!("decode {}", chain.pipeline), batches.scope());
    let spread =
        Exchange::new(|batch: &FrameBatch| batch.seq.wrapping_add(u64::from(batch.reader)));
    let mut input = builder.new_input(batches, spread);
    let (out0, outputs) = builder.new_output::<Vec<Output>>();
    let (out1, local) = builder.new_output::<Vec<LocalRecord>>();
    let (out2, remote) = builder.new_output::<Vec<RemoteBatch>>();
    builder.set_notify(false);
    builder.build(move |_capabilities| {
        let mut ports = (out0, out1, out2);
        move |_frontiers| {
            input.for_each(|cap, batches| {
                let caps = [
                    cap.delayed_for_output(cap.time(), 0),
                    cap.delayed_for_output(cap.time(), 1),
                    cap.delayed_for_output(cap.time(), 2),
                ];
                let emitted = run_guarded(&failure, |py, out| {
                    for batch in batches.iter_mut() {
                        chain.process(py, batch.reader, &mut batch.frames, out)?;
                    }
                    Ok(())
                });
                batches.clear();
                route_and_give::<G>(&chain, &codec, me, emitted, &failure, &mut ports, &caps);
            });
        }
    });
    ChainStreams {
        outputs,
        local,
        remote,
    }
}

/// Records of one epoch waiting for the epoch to complete.
struct Pending {
    caps: [Capability<u64>; 3],
    local: Vec<LocalRecord>,
    remote: Vec<RemoteBatch>,
}

/// The records of the epoch of `cap`, created with capabilities for all three outputs.
fn pending_at<'a>(
    pending: &'a mut BTreeMap<u64, Pending>,
    cap: &timely::dataflow::operators::InputCapability<u64>,
) -> &'a mut Pending {
    let time = *cap.time();
    pending.entry(time).or_insert_with(|| Pending {
        caps: [
            cap.delayed_for_output(&time, 0),
            cap.delayed_for_output(&time, 1),
            cap.delayed_for_output(&time, 2),
        ],
        local: Vec::new(),
        remote: Vec::new(),
    })
}

/// A state step at the owners of its keys, and the steps after it.
fn state_operator<G: Scope<Timestamp = u64>>(
    upstream: &ChainStreams<G>,
    chain: std::rc::Rc<Chain>,
    codec: std::rc::Rc<Codec>,
    failure: FailureSlot,
    me: usize,
    step_name: &str,
) -> ChainStreams<G> {
    let mut builder = OperatorBuilder::new(format!("state {step_name}"), upstream.local.scope());
    let mut local_in = builder.new_input(&upstream.local, Pipeline);
    let by_owner = Exchange::new(|record: &RemoteBatch| u64::from(record.owner));
    let mut remote_in = builder.new_input(&upstream.remote, by_owner);
    let (out0, outputs) = builder.new_output::<Vec<Output>>();
    let (out1, local) = builder.new_output::<Vec<LocalRecord>>();
    let (out2, remote) = builder.new_output::<Vec<RemoteBatch>>();
    builder.build(move |_capabilities| {
        let mut ports = (out0, out1, out2);
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        move |frontiers| {
            local_in.for_each(|cap, data| pending_at(&mut pending, &cap).local.append(data));
            remote_in.for_each(|cap, data| pending_at(&mut pending, &cap).remote.append(data));
            let complete: Vec<u64> = pending
                .keys()
                .copied()
                .filter(|t| !frontiers[0].less_equal(t) && !frontiers[1].less_equal(t))
                .collect();
            for time in complete {
                let Some(epoch) = pending.remove(&time) else {
                    continue;
                };
                let caps = epoch.caps;
                let emitted = run_guarded(&failure, |py, out| {
                    let mut records = Vec::with_capacity(epoch.local.len() + epoch.remote.len());
                    for record in epoch.local {
                        records.push((
                            record.order,
                            record.step as usize,
                            record.key.0,
                            record.value.0,
                        ));
                    }
                    for batch in epoch.remote {
                        let pairs = codec.decode(py, &batch.data).map_err(|err| StepFailure {
                            pipeline: chain.pipeline.clone(),
                            step: "deserialize (records crossing workers)".to_owned(),
                            record: format!("{} bytes from another worker", batch.data.len()),
                            position: format!("{} records", batch.records.len()),
                            detail: format_py_err(py, &err),
                        })?;
                        for ((order, step), (key, value)) in batch.records.into_iter().zip(pairs) {
                            records.push((order, step as usize, key, value));
                        }
                    }
                    records.sort_by(|a, b| a.0.cmp(&b.0));
                    chain.process_keyed(py, records, out)
                });
                route_and_give::<G>(&chain, &codec, me, emitted, &failure, &mut ports, &caps);
            }
        }
    });
    ChainStreams {
        outputs,
        local,
        remote,
    }
}

/// Build one pipeline of a cluster worker; returns its input.
pub(crate) fn build_pipeline<A: Allocate>(
    worker: &mut Worker<A>,
    part: &PipelineParts,
    failure: FailureSlot,
    probe: &ProbeHandle<u64>,
) -> Box<dyn PipelineInput> {
    let me = worker.index();
    let mut handle = BatchInput::new();
    let chain = part.chain.clone();
    let codec = match Python::attach(|py| Codec::new(py, &chain)) {
        Ok(codec) => std::rc::Rc::new(codec),
        Err(err) => {
            let detail = Python::attach(|py| format_py_err(py, &err));
            failure.borrow_mut().get_or_insert(StepFailure {
                pipeline: chain.pipeline.clone(),
                step: "serialize".to_owned(),
                record: String::new(),
                position: String::new(),
                detail,
            });
            return Box::new(ClusterInput {
                handle,
                reader: me as u32,
                seq: 0,
            });
        }
    };
    let sink_tx = part.sink_tx.clone();
    let everywhere = part.sink_everywhere;
    let name = part.name.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let batches = handle.to_stream(scope);
        let mut streams =
            prefix_operator(&batches, chain.clone(), codec.clone(), failure.clone(), me);
        let mut outputs = Vec::new();
        for step in chain
            .steps
            .iter()
            .filter(|s| matches!(s.kind, Kind::State { .. }))
        {
            outputs.push(streams.outputs.clone());
            streams = state_operator(
                &streams,
                chain.clone(),
                codec.clone(),
                failure.clone(),
                me,
                &step.name,
            );
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
    Box::new(ClusterInput {
        handle,
        reader: me as u32,
        seq: 0,
    })
}

/// Why the cluster broke: the reason the control channel gave (it names the
/// lost worker), waiting a moment for it, else `fallback`.
fn lost_peer_reason(fallback: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(reason) = crate::dataflow::peek_abort() {
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
/// with a backtrace, so report the lost worker in one line and exit.
fn exit_on_lost_peer() {
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
        let reason = lost_peer_reason(&format!("lost the connection to another worker ({detail})"));
        if RESTART_ON_LOST.load(Ordering::Relaxed) {
            restart_process(&reason);
        }
        eprintln!("error: cluster: {reason}");
        std::process::exit(1);
    }));
}

/// With crash recovery, a worker that loses a peer starts again (same
/// process, same command line) and the cluster recovers from the last
/// complete snapshot once the lost worker is back.
static RESTART_ON_LOST: AtomicBool = AtomicBool::new(false);

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
) -> Result<Summary, Error> {
    exit_on_lost_peer();
    RESTART_ON_LOST.store(options.resilience.is_some(), Ordering::Relaxed);
    let peers = membership.addresses.len();
    let resources = Arc::new(Resources::new(
        plan,
        &options,
        membership.index,
        peers,
        stop.clone(),
    )?);
    let options = Arc::new(options);
    let mut current = membership;
    let outcome = loop {
        match run_instance(&resources, &options, &current, &stop) {
            Ok(GenerationEnd::Finished(interrupted)) => break Ok(interrupted),
            Ok(GenerationEnd::Reconfigure(next)) => match next.index {
                Some(index) => {
                    log::info!(
                        "the cluster now has {} workers ({}); this is worker {index}",
                        next.names.len(),
                        next.names.join(", ")
                    );
                    current = Membership {
                        index,
                        addresses: next.addresses,
                        names: next.names,
                    };
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
    stop: &Arc<AtomicBool>,
) -> Result<GenerationEnd, Error> {
    let config = timely::Config {
        communication: CommunicationConfig::Cluster {
            threads: 1,
            process: membership.index,
            addresses: membership.addresses.clone(),
            report: false,
            zerocopy: false,
            log_fn: Arc::new(|_| None),
        },
        worker: WorkerConfig::default(),
    };
    crate::dataflow::begin_generation();
    let (result_tx, result_rx) = crossbeam_channel::bounded(1);
    let (resources, options) = (resources.clone(), options.clone());
    let names = membership.names.clone();
    let guards = timely::execute(config, move |worker| {
        let result = run_generation(worker, &resources, &options, &names, false);
        let _ = result_tx.send(result);
    })
    .map_err(|e| Error::Cluster(format!("cannot connect the cluster: {e}")))?;
    let result = loop {
        match result_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => break result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                break Err(Error::Cluster(lost_peer_reason(
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
    proposal: Option<crate::dataflow::NextMembership>,
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
        if let Some(reason) = crate::dataflow::peek_abort() {
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
        if crate::dataflow::peek_abort().is_some() {
            return Err(Error::Cluster(
                crate::dataflow::peek_abort().unwrap_or_default(),
            ));
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
