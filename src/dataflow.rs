//! The worker: sets up sources, sinks and state, builds the timely dataflow of
//! every pipeline, and drives it.
//!
//! On one process each pipeline is an input fed from the source's channel, an
//! operator running the whole Python chain per batch (GIL taken once per
//! batch), and an operator handing encoded batches to the sink thread. In a
//! cluster the chain is cut at its state steps and records travel between
//! workers (see [`crate::cluster`]). The worker loop moves batches from
//! sources into inputs, advances epochs on a timer, bounds the epochs in
//! flight, steps the dataflow, and watches for Ctrl-C / SIGTERM and aborts.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, Sender, TryRecvError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use timely::communication::allocator::thread::Thread;
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleCore, ProbeHandle};
use timely::worker::Worker;
use timely::WorkerConfig;

use crate::bad_input::BadInput;
use crate::cluster;
use crate::codec::Codec;
use crate::control::{NextMembership, RunControl, RunHandle};
use crate::errors::{Error, StepFailure};
use crate::metrics::PipelineMetrics;
use crate::plan::{Options, PipelinePlan, Plan, SinkKind, SourceKind, StartOffset, StepKind};
use crate::recovery;
use crate::routing::{canonical_key, RoutingTable};
use crate::sinks::{self, Output, SinkContext, SinkMessage};
use crate::sources::{self, Frame, SourceContext, SourceHandle, SourcePosition};
use crate::steps::{Chain, Emitted, Kind, StateStore, Step};
use crate::sync::lock;

/// How often the worker looks for signals (Ctrl-C, SIGTERM).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// How long the worker waits for input when it has nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Batches moved from one source per loop round, so one source cannot starve the others.
const BATCHES_PER_ROUND: usize = 4;
/// Epochs that may be open at once before sources wait (back-pressure).
const MAX_EPOCHS_IN_FLIGHT: u64 = 4;
/// An epoch also ends after this many records, so a fast source cannot put
/// an unbounded number of records into one epoch: the epochs in flight bound
/// the records in flight (and in a cluster, the batches a state step may
/// hold while an earlier batch of the same reader is still on its way).
const MAX_EPOCH_RECORDS: usize = 4096;

/// How often steps with timers (windows) get a tick.
const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// The control of the run in progress (or of the last one), for the
/// Python-facing functions of `_engine` (`request_stop`, `abort`,
/// `reconfigure`, `generation`, `connected_generation`). They are called from
/// the runner's signal handlers and the cluster's control-channel threads,
/// which hold no reference to the run: `_engine.run` blocks the thread that
/// started it, and the runner's protocol names no run. So this one registry
/// is the way in; everything below the entry gets the handle passed down.
static CURRENT_RUN: Mutex<Option<RunHandle>> = Mutex::new(None);

/// The control of the run in progress, or of the last one (a fresh one
/// before the first run).
pub fn current_run() -> RunHandle {
    lock(&CURRENT_RUN)
        .get_or_insert_with(RunControl::new)
        .clone()
}

/// What a run did, returned to Python.
pub struct Summary {
    pipelines: Vec<(String, Arc<PipelineMetrics>)>,
    bad_input: BTreeMap<String, u64>,
    dead_letter_failed: u64,
    /// Sinks that could not deliver everything at the end: which, and why.
    sink_failures: Vec<String>,
    state_keys: Vec<(String, usize)>,
    interrupted: bool,
    /// Stopped by a second signal without finishing what was read.
    at_once: bool,
    seconds: f64,
    worker: usize,
    workers: usize,
}

impl Summary {
    /// As a Python dict: `{"pipelines": {name: {counter: n}}, "bad_input": {...}, ...}`.
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        let pipelines = PyDict::new(py);
        for (name, m) in &self.pipelines {
            let counters = PyDict::new(py);
            counters.set_item("records_in", PipelineMetrics::get(&m.records_in))?;
            counters.set_item("bytes_in", PipelineMetrics::get(&m.bytes_in))?;
            counters.set_item("records_out", PipelineMetrics::get(&m.records_out))?;
            counters.set_item("bytes_out", PipelineMetrics::get(&m.bytes_out))?;
            counters.set_item("dropped", PipelineMetrics::get(&m.dropped))?;
            counters.set_item("skipped_errors", PipelineMetrics::get(&m.skipped_errors))?;
            counters.set_item("sink_errors", PipelineMetrics::get(&m.sink_errors))?;
            counters.set_item("delivered", PipelineMetrics::get(&m.sink_records))?;
            pipelines.set_item(name, counters)?;
        }
        dict.set_item("pipelines", pipelines)?;
        dict.set_item("bad_input", self.bad_input.clone())?;
        dict.set_item("dead_letter_failed", self.dead_letter_failed)?;
        dict.set_item("sink_failures", self.sink_failures.clone())?;
        dict.set_item(
            "state_keys",
            self.state_keys.iter().cloned().collect::<HashMap<_, _>>(),
        )?;
        dict.set_item("interrupted", self.interrupted)?;
        dict.set_item("stopped_at_once", self.at_once)?;
        dict.set_item("seconds", self.seconds)?;
        dict.set_item("worker", self.worker)?;
        dict.set_item("workers", self.workers)?;
        Ok(dict)
    }
}

/// Run the application until its sources end, it is interrupted, or user code
/// fails under the stop policy.
pub fn run(plan: Plan, options: Options) -> Result<Summary, Error> {
    // A new run starts with a fresh control: no stop, abort or membership
    // from before it.
    let control = RunControl::new();
    *lock(&CURRENT_RUN) = Some(control.clone());
    let stop = Arc::new(AtomicBool::new(false));
    match options.cluster.clone() {
        None => {
            let mut worker = Worker::new(
                WorkerConfig::default(),
                Thread::default(),
                Some(Instant::now()),
            );
            let resources = Resources::new(plan, &options, 0, 1, stop, control)?;
            let outcome = run_generation(&mut worker, &resources, &options, &[], true);
            resources.finish(outcome.map(|end| end.interrupted()), 0, 1)
        }
        Some(membership) => cluster::execute(plan, options, membership, stop, control),
    }
}

/// A step as the plan gave it, kept to make each generation's chains.
struct StepTemplate {
    name: String,
    func: Py<PyAny>,
    kind: StepKind,
}

/// What a pipeline keeps for the whole run, across cluster generations.
pub(crate) struct PipelineResources {
    name: String,
    metrics: Arc<PipelineMetrics>,
    sink_tx: Option<Sender<SinkMessage>>,
    sink_everywhere: bool,
    /// Pipelines of one group share one sink.
    sink_group: Option<String>,
    /// The source this worker reads for the whole run (taken out while a
    /// generation runs).
    source: Mutex<Option<SourceHandle>>,
    /// A Kafka source of a cluster: made again in each generation, with that
    /// generation's share of the partitions.
    kafka: Option<crate::plan::KafkaSourcePlan>,
    source_info: sources::SourceInfo,
    /// Where this worker's source stands (crash recovery): updated as
    /// batches enter the dataflow, written with each snapshot.
    position: Mutex<SourcePosition>,
    decode: Py<PyAny>,
    steps: Vec<StepTemplate>,
    encode: Option<Py<PyAny>>,
}

/// Everything a worker keeps for the whole run: state, sinks, sources,
/// counters. Shared (read-only) with the worker thread of each generation.
pub(crate) struct Resources {
    pipelines: Vec<PipelineResources>,
    stores: HashMap<String, Arc<StateStore>>,
    declared: HashMap<String, Vec<Vec<u8>>>,
    sink_threads: Mutex<Vec<std::thread::JoinHandle<Option<String>>>>,
    bad: Arc<BadInput>,
    serialize: Option<Py<PyAny>>,
    deserialize: Option<Py<PyAny>>,
    stop: Arc<AtomicBool>,
    pub(crate) control: RunHandle,
    cluster: bool,
    options: SourceOptions,
    started: Instant,
    resilience: Option<ResilienceRun>,
    /// The snapshot this run went on from, if any.
    recovered: Option<u64>,
}

/// Crash recovery for one run: the snapshot writer and where the run began.
pub(crate) struct ResilienceRun {
    interval: Duration,
    writer: recovery::Writer,
    /// The next snapshot's id (the same sequence on every worker).
    next_id: std::sync::atomic::AtomicU64,
    /// The run's lineage, written with each snapshot.
    tag: String,
    /// The run's workers, by index.
    members: Vec<String>,
    stats: Arc<recovery::WriterStats>,
}

/// The options sources are made with.
#[derive(Clone)]
struct SourceOptions {
    batch_size: usize,
    max_frame_bytes: u64,
    max_records: Option<u64>,
}

/// Find what to recover, open this worker's store and start its writer.
fn start_resilience(
    settings: &crate::plan::ResilienceOptions,
    names: &[String],
    worker: usize,
) -> Result<(ResilienceRun, Option<recovery::Recovered>), Error> {
    let me = names
        .get(worker)
        .cloned()
        .unwrap_or_else(|| settings.worker.clone());
    let recovered = recovery::recover(&settings.dir, &settings.app, &me, names)?;
    let identity = recovery::Identity {
        app: settings.app.clone(),
        worker: me,
    };
    let mut store = recovery::Store::open(&settings.dir, &identity)?;
    let base = recovered.as_ref().map_or(0, |r| r.id);
    // Snapshots after the one recovered were never complete: a new lineage
    // starts from it.
    store.truncate_after(base)?;
    let tag = serde_json::json!({ "base": base, "members": names }).to_string();
    let stats = Arc::new(recovery::WriterStats::default());
    let run = ResilienceRun {
        interval: Duration::from_millis(settings.interval_ms),
        writer: recovery::Writer::start(
            store,
            stats.clone(),
            Duration::from_millis(settings.give_up_ms),
            base,
        )?,
        stats,
        next_id: std::sync::atomic::AtomicU64::new(base + 1),
        tag,
        members: names.to_vec(),
    };
    Ok((run, recovered))
}

fn declared_keys(py: Python<'_>, plan: &Plan) -> Result<HashMap<String, Vec<Vec<u8>>>, Error> {
    let mut declared: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for pipeline in &plan.pipelines {
        for step in &pipeline.steps {
            if let StepKind::State {
                state_name, keys, ..
            } = &step.kind
            {
                let entry = declared.entry(state_name.clone()).or_default();
                for key in keys {
                    let key = key.bind(py);
                    let canonical = canonical_key(key).ok_or_else(|| {
                        Error::Config(format!(
                            "step {:?}: declared partition key {key} is not a str, bytes, int \
                             or tuple of these",
                            step.name
                        ))
                    })?;
                    entry.push(canonical);
                }
            }
        }
    }
    Ok(declared)
}

impl Resources {
    /// Start the sinks and the sources this worker runs for the whole run.
    pub(crate) fn new(
        plan: Plan,
        options: &Options,
        worker: usize,
        peers: usize,
        stop: Arc<AtomicBool>,
        control: RunHandle,
    ) -> Result<Resources, Error> {
        let bad = Arc::new(BadInput::new(options.dead_letter.as_deref())?);
        crate::metrics::begin_run(worker, peers, &bad);
        let cluster = options.cluster.is_some();
        let (stores, declared) = Python::attach(|py| -> Result<_, Error> {
            let mut stores = HashMap::new();
            for (name, class) in &plan.states {
                let mut store = StateStore::new(py, name.clone(), class.clone_ref(py));
                if options.resilience.is_some() {
                    store.track_changes(py)?;
                }
                stores.insert(name.clone(), Arc::new(store));
            }
            Ok((stores, declared_keys(py, &plan)?))
        })?;
        let names = match &options.cluster {
            Some(membership) => membership.names.clone(),
            None => vec![options
                .resilience
                .as_ref()
                .map(|r| r.worker.clone())
                .unwrap_or_default()],
        };
        let (resilience, recovered) = match &options.resilience {
            Some(settings) => {
                let (run, recovered) = start_resilience(settings, &names, worker)?;
                (Some(run), recovered)
            }
            None => (None, None),
        };
        let mut resources = Resources {
            pipelines: Vec::new(),
            stores,
            declared,
            sink_threads: Mutex::new(Vec::new()),
            bad,
            serialize: plan.serialize,
            deserialize: plan.deserialize,
            stop,
            control,
            cluster,
            options: SourceOptions {
                batch_size: options.batch_size,
                max_frame_bytes: options.max_frame_bytes,
                max_records: options.max_records,
            },
            started: Instant::now(),
            resilience,
            recovered: recovered.as_ref().map(|r| r.id),
        };
        let positions = match &recovered {
            Some(recovered) => {
                resources.restore(recovered)?;
                recovered.positions.clone()
            }
            None => BTreeMap::new(),
        };
        for pipeline in plan.pipelines {
            let resume = positions.get(&pipeline.name).cloned();
            let part = resources.pipeline(pipeline, options, worker, peers, resume)?;
            resources.pipelines.push(part);
        }
        Ok(resources)
    }

    /// Put the recovered states into the stores.
    fn restore(&self, recovered: &recovery::Recovered) -> Result<(), Error> {
        Python::attach(|py| -> Result<(), Error> {
            let codec = Codec::with(py, self.serialize.as_ref(), self.deserialize.as_ref())?;
            let own = recovered.rows.iter().map(|row| (row, false));
            for (row, adopted) in own.chain(recovered.adopted.iter().map(|row| (row, true))) {
                let store = self.stores.get(&row.store).ok_or_else(|| {
                    Error::Config(format!(
                        "the snapshot has state {:?}, which this application does not declare",
                        row.store
                    ))
                })?;
                let value = row.value.as_deref().unwrap_or_default();
                let key = crate::routing::key_from_canonical(py, &row.key).ok_or_else(|| {
                    Error::Config(format!(
                        "state {:?}: a key in the snapshot is not a key this engine writes",
                        row.store
                    ))
                })?;
                let state = codec.decode_value(py, value).map_err(|e| {
                    Error::Config(format!(
                        "state {:?}: cannot load the state of key {key} from the snapshot: {}",
                        row.store,
                        crate::errors::format_py_err(py, &e)
                    ))
                })?;
                if adopted {
                    // From another worker's store: written to this one next time.
                    store.insert(py, &key, &state)?;
                } else {
                    store.restore(py, &key, &state)?;
                }
            }
            Ok(())
        })?;
        log::info!(
            "recovered snapshot {} (written by {}): {} keys{}",
            recovered.id,
            recovered.members.join(", "),
            recovered.rows.len() + recovered.adopted.len(),
            if !recovered.adopted.is_empty() {
                format!(
                    ", {} of them from workers no longer in the cluster",
                    recovered.adopted.len()
                )
            } else {
                String::new()
            }
        );
        for (pipeline, lost) in &recovered.lost {
            log::warn!(
                "pipeline {pipeline:?}: its TCP source cannot replay: {lost} records it had \
                 received after snapshot {} are lost (their effect on state was rolled back); \
                 the sender must send them again",
                recovered.id
            );
        }
        Ok(())
    }

    /// Write a snapshot: the keys changed since the last one and where the
    /// sources stand. Called when the epochs before it are complete on
    /// every worker and none after it has started.
    pub(crate) fn snapshot(&self) -> Result<(), Error> {
        let Some(run) = &self.resilience else {
            return Ok(());
        };
        let id = run.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let rows = Python::attach(|py| -> Result<Vec<recovery::StateRow>, Error> {
            let codec = Codec::with(py, self.serialize.as_ref(), self.deserialize.as_ref())?;
            let mut rows = Vec::new();
            for (name, store) in &self.stores {
                for (key, state) in store.take_changes(py)? {
                    let key = key.bind(py);
                    let canonical = canonical_key(key).ok_or_else(|| {
                        Error::Config(format!("state {name:?}: key {key} cannot be stored"))
                    })?;
                    let value = match &state {
                        Some(state) => {
                            Some(codec.encode_value(py, state.bind(py)).map_err(|e| {
                                Error::Config(format!(
                                "state {name:?}: cannot serialize the state of key {key} for a \
                                 snapshot: {}",
                                crate::errors::format_py_err(py, &e)
                            ))
                            })?)
                        }
                        None => None,
                    };
                    rows.push(recovery::StateRow {
                        store: name.clone(),
                        key: canonical,
                        value,
                    });
                }
            }
            Ok(rows)
        })?;
        log::debug!(
            "snapshot {id}: {} changed keys serialized in {:?}",
            rows.len(),
            started.elapsed()
        );
        let positions = self
            .pipelines
            .iter()
            .map(|p| (p.name.clone(), lock(&p.position).clone()))
            .collect();
        // Every output before the cut is with the sinks (the probe is after
        // them); the snapshot is stored once they have pushed it out.
        let mut acks = Vec::new();
        for tx in self.pipelines.iter().filter_map(|p| p.sink_tx.as_ref()) {
            let (ack, acked) = crossbeam_channel::bounded(1);
            if tx.send(SinkMessage::Barrier(id, ack)).is_ok() {
                acks.push(acked);
            }
        }
        run.writer.snapshot(
            recovery::Snapshot {
                id,
                tag: run.tag.clone(),
                members: run.members.clone(),
                rows,
                positions,
            },
            acks,
        );
        Ok(())
    }

    /// Note how many records each non-replayable source has handed over.
    fn note_progress(&self) {
        let Some(run) = &self.resilience else { return };
        let sent: BTreeMap<String, u64> = self
            .pipelines
            .iter()
            .filter_map(|p| {
                let position = lock(&p.position);
                (!position.replays()).then(|| (p.name.clone(), position.sent()))
            })
            .collect();
        if !sent.is_empty() {
            run.writer.progress(sent);
        }
    }

    fn source_context(
        &self,
        pipeline: &str,
        metrics: &Arc<PipelineMetrics>,
        stop: Arc<AtomicBool>,
        worker: usize,
        peers: usize,
        sent: u64,
    ) -> SourceContext {
        SourceContext {
            pipeline: pipeline.to_owned(),
            bad: self.bad.clone(),
            metrics: metrics.clone(),
            batch_size: self.options.batch_size,
            max_frame_bytes: self.options.max_frame_bytes,
            stop,
            worker,
            peers,
            remaining: self
                .options
                .max_records
                .map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n.saturating_sub(sent)))),
        }
    }

    fn pipeline(
        &mut self,
        pipeline: PipelinePlan,
        options: &Options,
        worker: usize,
        peers: usize,
        resume: Option<SourcePosition>,
    ) -> Result<PipelineResources, Error> {
        let position = resume.unwrap_or_else(|| SourcePosition::start(&pipeline.source.kind));
        let metrics = crate::metrics::register_pipeline(
            &pipeline.name,
            pipeline.steps.iter().map(|s| s.name.as_str()),
        );
        let mut sink_everywhere = false;
        let sink_group = pipeline.sink.as_ref().and_then(|s| s.group.clone());
        let shared = sink_group.as_ref().and_then(|group| {
            self.pipelines
                .iter()
                .find(|p| p.sink_group.as_ref() == Some(group))
                .map(|p| (p.sink_tx.clone(), p.sink_everywhere))
        });
        let (encode, sink_tx) = match (pipeline.sink, shared) {
            (Some(sink), Some((tx, everywhere))) => {
                sink_everywhere = everywhere;
                (Some(sink.encode), tx)
            }
            (Some(sink), None) => {
                sink_everywhere = matches!(sink.kind, SinkKind::Kafka(_));
                let tx = if sink_everywhere || worker == 0 {
                    let ctx = SinkContext {
                        pipeline: pipeline.name.clone(),
                        bad: self.bad.clone(),
                        metrics: metrics.clone(),
                        connect_timeout_s: options.sink_connect_timeout_s,
                        append: self.recovered.is_some(),
                        transactional_id: match (&sink.kind, &options.resilience) {
                            (SinkKind::Kafka(plan), Some(r)) if plan.transactions => Some(format!(
                                "wallaroo.{:016x}.{}.{}",
                                crate::routing::stable_hash(r.app.as_bytes()),
                                pipeline.name,
                                r.worker
                            )),
                            _ => None,
                        },
                        control: self.control.clone(),
                    };
                    let handle = sinks::start(sink.kind, ctx)?;
                    lock(&self.sink_threads).push(handle.thread);
                    Some(handle.tx)
                } else {
                    None
                };
                (Some(sink.encode), tx)
            }
            (None, _) => (None, None),
        };
        let kafka = matches!(pipeline.source.kind, SourceKind::Kafka(_));
        let mut source_info = sources::SourceInfo {
            label: format!("pipeline {} source", pipeline.name),
            style: sources::PosStyle::Frames,
        };
        let (source, kafka_plan) = match pipeline.source.kind {
            SourceKind::Kafka(plan) if self.cluster => {
                source_info = sources::SourceInfo {
                    label: format!("kafka topic {}", plan.topic),
                    style: sources::PosStyle::Partitions,
                };
                (None, Some(plan))
            }
            kind if worker == 0 || kafka => {
                let ctx = self.source_context(
                    &pipeline.name,
                    &metrics,
                    self.stop.clone(),
                    worker,
                    peers,
                    position.sent(),
                );
                let resume = self.resilience.as_ref().map(|_| &position);
                let handle = sources::start(kind, pipeline.source.framing, ctx, resume)?;
                source_info = handle.info.clone();
                (Some(handle), None)
            }
            _ => (None, None),
        };
        Ok(PipelineResources {
            name: pipeline.name,
            metrics,
            sink_tx,
            sink_everywhere,
            sink_group,
            source: Mutex::new(source),
            kafka: kafka_plan,
            source_info,
            position: Mutex::new(position),
            decode: pipeline.source.decode,
            steps: pipeline
                .steps
                .into_iter()
                .map(|s| StepTemplate {
                    name: s.name,
                    func: s.func,
                    kind: s.kind,
                })
                .collect(),
            encode,
        })
    }

    /// The routing tables for a generation of `peers` workers.
    fn tables(&self, peers: usize) -> HashMap<String, Arc<RoutingTable>> {
        self.declared
            .iter()
            .map(|(name, keys)| (name.clone(), Arc::new(RoutingTable::new(peers, keys))))
            .collect()
    }

    /// A pipeline's Python chain for a generation.
    fn chain(
        &self,
        py: Python<'_>,
        pipeline: &PipelineResources,
        tables: &HashMap<String, Arc<RoutingTable>>,
        on_error: crate::plan::OnError,
    ) -> Result<Chain, Error> {
        let steps = pipeline
            .steps
            .iter()
            .map(|step| {
                let kind = match &step.kind {
                    StepKind::Map => Kind::Map,
                    StepKind::Multi => Kind::Multi,
                    StepKind::State {
                        state_name,
                        partition,
                        u64_keys,
                        multi,
                        keys: _,
                        tick,
                        origin,
                    } => Kind::State {
                        store: self.stores.get(state_name).cloned().ok_or_else(|| {
                            Error::Config(format!("state {state_name:?} has no state class"))
                        })?,
                        routing: tables.get(state_name).cloned(),
                        partition: partition.as_ref().map(|p| p.clone_ref(py)),
                        u64_keys: *u64_keys,
                        multi: *multi,
                        tick: tick.as_ref().map(|t| t.clone_ref(py)),
                        origin: *origin,
                    },
                };
                Ok(Step {
                    name: step.name.clone(),
                    func: step.func.clone_ref(py),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let own = |f: &Option<Py<PyAny>>| f.as_ref().map(|f| f.clone_ref(py));
        Ok(Chain {
            pipeline: pipeline.name.clone(),
            source: pipeline.source_info.clone(),
            decode: pipeline.decode.clone_ref(py),
            steps,
            encode: own(&pipeline.encode),
            on_error,
            bad: self.bad.clone(),
            metrics: pipeline.metrics.clone(),
            batch_counts: Default::default(),
            cluster: self.cluster,
            serialize: own(&self.serialize),
            deserialize: own(&self.deserialize),
            control: self.control.clone(),
        })
    }

    /// Take out of the stores the keys whose owner (by `tables` over the
    /// worker names `owners`) is not `me` -- or every key with `all` --
    /// serialized for the owner's index among `instance` (this timely
    /// instance's worker names).
    pub(crate) fn take_moves(
        &self,
        py: Python<'_>,
        tables: &HashMap<String, Arc<RoutingTable>>,
        owners: &[String],
        instance: &[String],
        me: &str,
        all: bool,
    ) -> Result<Vec<cluster::MovedState>, Error> {
        let codec = Codec::with(py, self.serialize.as_ref(), self.deserialize.as_ref())?;
        let mut moves = Vec::new();
        for (name, store) in &self.stores {
            let Some(table) = tables.get(name) else {
                continue;
            };
            for (key, state) in store.items(py) {
                let (key, state) = (key.bind(py), state.bind(py));
                let canonical = canonical_key(key).ok_or_else(|| {
                    Error::Config(format!("state {name:?}: key {key} cannot be routed"))
                })?;
                let owner = owners
                    .get(table.owner(&canonical))
                    .map(String::as_str)
                    .unwrap_or(me);
                if !all && owner == me {
                    continue;
                }
                let dest = instance.iter().position(|n| n == owner).ok_or_else(|| {
                    Error::Cluster(format!("worker {owner:?} is not in this generation"))
                })?;
                let (key_bytes, state_bytes) = codec.encode_state(py, key, state).map_err(|e| {
                    Error::Config(format!(
                        "state {name:?}: cannot serialize the state of key {key} to hand it \
                         over: {}",
                        crate::errors::format_py_err(py, &e)
                    ))
                })?;
                store.remove(py, key)?;
                moves.push(cluster::MovedState {
                    dest: u32::try_from(dest).unwrap_or(u32::MAX),
                    store: name.clone(),
                    key: key_bytes,
                    state: state_bytes,
                });
            }
        }
        Ok(moves)
    }

    /// Put states handed over by other workers into the stores.
    pub(crate) fn install(
        &self,
        py: Python<'_>,
        received: Vec<cluster::MovedState>,
    ) -> Result<(), Error> {
        let codec = Codec::with(py, self.serialize.as_ref(), self.deserialize.as_ref())?;
        for moved in received {
            let store = self.stores.get(&moved.store).ok_or_else(|| {
                Error::Cluster(format!(
                    "state {:?} handed over is unknown here",
                    moved.store
                ))
            })?;
            let (key, state) = codec.decode_state(py, &moved.key, &moved.state)?;
            store.insert(py, &key, &state)?;
        }
        Ok(())
    }

    /// Wait for the sinks' last flush and the sources' threads; the summary.
    pub(crate) fn finish(
        self,
        outcome: Result<bool, Error>,
        worker: usize,
        workers: usize,
    ) -> Result<Summary, Error> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(run) = &self.resilience {
            run.writer.finish();
            let failed = run.stats.failed.load(Ordering::Relaxed);
            log::info!(
                "{} snapshots written{}",
                run.stats.written.load(Ordering::Relaxed),
                if failed > 0 {
                    format!(", {failed} failed (see the errors above)")
                } else {
                    String::new()
                }
            );
        }
        let mut pipelines = Vec::new();
        let mut sources = Vec::new();
        for pipeline in self.pipelines {
            pipelines.push((pipeline.name, pipeline.metrics));
            drop(pipeline.sink_tx);
            if let Some(source) = lock(&pipeline.source).take() {
                sources.push(source);
            }
        }
        // A sink whose final flush failed lost records: the run fails.
        let sink_failures: Vec<String> = lock(&self.sink_threads)
            .drain(..)
            .filter_map(|thread| match thread.join() {
                Ok(failure) => failure,
                Err(_) => Some("a sink thread panicked".to_owned()),
            })
            .collect();
        for source in sources {
            drop(source.rx);
            for thread in source.threads {
                let _ = thread.join();
            }
        }
        let at_once = self.control.stopping_at_once();
        let interrupted = match outcome {
            Err(Error::Step(failure)) if at_once => {
                log::warn!(
                    "stopped at once by a second signal while pipeline {:?}, step {:?} ran on \
                     record {} (from {}): that record and those read after it were not delivered",
                    failure.pipeline,
                    failure.step,
                    failure.record,
                    failure.position
                );
                true
            }
            Err(Error::Python(_)) if at_once => true,
            outcome => outcome?,
        };
        let state_keys = Python::attach(|py| {
            self.stores
                .values()
                .map(|store| (store.name.clone(), store.len(py)))
                .collect()
        });
        Ok(Summary {
            pipelines,
            bad_input: self.bad.counts(),
            dead_letter_failed: self.bad.dead_letter_failed(),
            sink_failures,
            state_keys,
            interrupted,
            at_once,
            seconds: self.started.elapsed().as_secs_f64(),
            worker,
            workers,
        })
    }
}

/// One pipeline of one generation, ready to be built into the dataflow.
pub(crate) struct PipelineParts {
    /// The pipeline name.
    pub name: String,
    /// Its Python side.
    pub chain: Rc<Chain>,
    /// Where its encoded records go on this worker, if anywhere.
    pub sink_tx: Option<Sender<SinkMessage>>,
    /// Whether its sink runs on every worker (Kafka) rather than on worker 0.
    pub sink_everywhere: bool,
}

/// How a generation ended.
pub(crate) enum GenerationEnd {
    /// The sources ended (or the run was stopped); `true` when by a signal.
    Finished(bool),
    /// The membership changes; the next generation starts.
    Reconfigure(NextMembership),
}

impl GenerationEnd {
    fn interrupted(&self) -> bool {
        matches!(self, GenerationEnd::Finished(true))
    }
}

/// The shared slot where an operator reports a failure of user code.
pub(crate) type FailureSlot = Rc<RefCell<Option<StepFailure>>>;

/// The input of a pipeline in the single-process dataflow.
type FrameInput = InputHandleCore<u64, CapacityContainerBuilder<Vec<Frame>>>;

/// A pipeline input as the worker loop sees it.
pub(crate) trait PipelineInput {
    /// Hand a batch read by this worker's source to the dataflow.
    fn send(&mut self, batch: Vec<Frame>);
    /// Move to the next epoch.
    fn advance_to(&mut self, epoch: u64);
}

impl PipelineInput for FrameInput {
    fn send(&mut self, mut batch: Vec<Frame>) {
        self.send_batch(&mut batch);
    }

    fn advance_to(&mut self, epoch: u64) {
        FrameInput::advance_to(self, epoch);
    }
}

/// A source as one generation sees it.
pub(crate) struct GenerationSource {
    handle: SourceHandle,
    /// Made for this generation (a cluster's Kafka source): stopped and
    /// joined when the generation ends. Otherwise it goes back to the
    /// pipeline's resources.
    own: Option<Arc<AtomicBool>>,
}

/// One generation of the worker: (in a cluster) take over the keys this
/// worker now owns, build the dataflow, drive it, and end it. `names` are the
/// generation's worker names (empty on one process).
pub(crate) fn run_generation<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    options: &Options,
    names: &[String],
    check_signals: bool,
) -> Result<GenerationEnd, Error> {
    let (index, peers) = (worker.index(), worker.peers());
    let tables = if resources.cluster {
        let tables = resources.tables(peers);
        cluster::hand_over(worker, resources, &tables, names)?;
        tables
    } else {
        HashMap::new()
    };
    let failure: FailureSlot = Rc::new(RefCell::new(None));
    let probe = ProbeHandle::new();
    let mut inputs: Vec<Option<Box<dyn PipelineInput>>> = Vec::new();
    let mut sources: Vec<Option<GenerationSource>> = Vec::new();
    for pipeline in &resources.pipelines {
        let chain = Python::attach(|py| resources.chain(py, pipeline, &tables, options.on_error))?;
        let part = PipelineParts {
            name: pipeline.name.clone(),
            chain: Rc::new(chain),
            sink_tx: pipeline.sink_tx.clone(),
            sink_everywhere: pipeline.sink_everywhere,
        };
        let source = match &pipeline.kafka {
            Some(plan) => {
                let stop = Arc::new(AtomicBool::new(resources.stop.load(Ordering::Relaxed)));
                let position = lock(&pipeline.position).clone();
                let ctx = resources.source_context(
                    &pipeline.name,
                    &pipeline.metrics,
                    stop.clone(),
                    index,
                    peers,
                    position.sent(),
                );
                let mut plan = plan.clone();
                if let (Some(_), SourcePosition::Kafka(at)) = (&resources.resilience, &position) {
                    at.resume(&mut plan);
                }
                if resources.control.generation() > 1 {
                    // Later generations go on from what the last one committed.
                    plan.start_offset = StartOffset::Committed;
                }
                let handle = sources::kafka::start(plan, ctx)?;
                Some(GenerationSource {
                    handle,
                    own: Some(stop),
                })
            }
            None => lock(&pipeline.source)
                .take()
                .map(|handle| GenerationSource { handle, own: None }),
        };
        let input: Box<dyn PipelineInput> = if resources.cluster {
            cluster::build_pipeline(worker, &part, failure.clone(), &probe)
        } else {
            build_pipeline(worker, &part, failure.clone(), &probe)
        };
        // A worker without this source closes its input at once, so the
        // epochs of the others are not held back (with snapshots, it waits
        // at the next cut instead: see SnapshotClock).
        inputs.push((source.is_some() || resources.resilience.is_some()).then_some(input));
        sources.push(source);
    }
    let outcome = drive(
        worker,
        resources,
        &mut inputs,
        &sources,
        &failure,
        options,
        &probe,
        check_signals,
    );
    if !matches!(outcome, Ok(DriveEnd::Reconfigure(_))) {
        resources.stop.store(true, Ordering::Relaxed);
    }
    inputs.clear();
    while worker.step_or_park(Some(IDLE_WAIT)) {
        if resources.control.pending_abort() {
            // The cluster is gone: nothing more will complete. Dropping the
            // dataflows closes the sink channels so the sinks flush and end.
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            break;
        }
    }
    for (pipeline, source) in resources.pipelines.iter().zip(sources) {
        let Some(source) = source else { continue };
        match source.own {
            Some(stop) => {
                stop.store(true, Ordering::Relaxed);
                drop(source.handle.rx);
                for thread in source.handle.threads {
                    let _ = thread.join();
                }
            }
            None => *lock(&pipeline.source) = Some(source.handle),
        }
    }
    if resources.resilience.is_some()
        && matches!(outcome, Ok(DriveEnd::Finished(_)))
        && failure.borrow().is_none()
        && !resources.control.pending_abort()
    {
        // The final state and positions: started again, the run goes on
        // from where this one ended.
        resources.snapshot()?;
    }
    let (interrupted, proposal) = match outcome? {
        DriveEnd::Finished(interrupted) => (interrupted, resources.control.take_reconfigure()),
        DriveEnd::Reconfigure(next) => (false, Some(next)),
    };
    let failed = failure.borrow_mut().take();
    // Whether the run goes on with another membership is the initializer's
    // word, for every worker alike (a worker without sources of its own sees
    // its dataflow end either way); a worker that failed still takes part.
    let decided = if resources.cluster {
        let proposal = proposal.filter(|_| index == 0 && failed.is_none());
        cluster::decide(worker, &resources.control, proposal)?
    } else {
        None
    };
    resources.control.take_reconfigure();
    if let Some(failure) = failed {
        return Err(Error::Step(failure));
    }
    Ok(match decided {
        None => GenerationEnd::Finished(interrupted),
        Some((addresses, next_names)) => {
            let me = names.get(index).cloned().unwrap_or_default();
            let leaving: Vec<String> = names
                .iter()
                .filter(|name| !next_names.contains(name))
                .cloned()
                .collect();
            // Workers that leave hand their keys to their next owners while
            // every worker of this generation is still here.
            let next_tables = resources.tables(next_names.len());
            cluster::hand_over_leaving(
                worker,
                resources,
                &next_tables,
                names,
                &next_names,
                &leaving,
            )?;
            GenerationEnd::Reconfigure(NextMembership {
                index: next_names.iter().position(|name| *name == me),
                addresses,
                names: next_names,
            })
        }
    })
}

/// The end of a pipeline's dataflow: hand batches to the sink thread, then
/// the probe, so an epoch is complete only once its output is with the sink.
pub(crate) fn sink_and_probe<G: timely::dataflow::Scope<Timestamp = u64>>(
    stream: &timely::dataflow::StreamCore<G, Vec<Output>>,
    name: &str,
    sink_tx: Option<Sender<SinkMessage>>,
    probe: &ProbeHandle<u64>,
) {
    stream
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            &format!("sink {name}"),
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|_time, batch| send_to_sink(&sink_tx, batch));
                }
            },
        )
        .probe_with(probe);
}

/// Run a batch through a chain, recording a failure instead of raising.
pub(crate) fn run_guarded(
    failure: &FailureSlot,
    work: impl FnOnce(Python<'_>, &mut Emitted) -> Result<(), StepFailure>,
) -> Emitted {
    let mut emitted = Emitted::default();
    if failure.borrow().is_some() {
        return emitted;
    }
    let result = Python::attach(|py| work(py, &mut emitted));
    if let Err(step_failure) = result {
        *failure.borrow_mut() = Some(step_failure);
    }
    emitted
}

/// The sink end of a pipeline: blocking sends to the sink thread.
pub(crate) fn send_to_sink(tx: &Option<Sender<SinkMessage>>, batch: &mut Vec<Output>) {
    let batch = std::mem::take(batch);
    if let Some(tx) = tx {
        // Blocks while the sink is behind: back-pressure.
        if tx.send(SinkMessage::Batch(batch)).is_err() {
            log::error!("the sink thread has stopped; output is lost");
        }
    }
}

fn build_pipeline<A: Allocate>(
    worker: &mut Worker<A>,
    part: &PipelineParts,
    failure: FailureSlot,
    probe: &ProbeHandle<u64>,
) -> Box<dyn PipelineInput> {
    let mut input = FrameInput::new();
    let chain = part.chain.clone();
    let sink_tx = part.sink_tx.clone();
    let name = part.name.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let outputs = input
            .to_stream(scope)
            .unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Pipeline,
                &format!("python chain {name}"),
                move |_capability, _info| {
                    move |input, output| {
                        input.for_each(|time, frames| {
                            let mut emitted =
                                run_guarded(&failure, |py, out| chain.process(py, 0, frames, out));
                            frames.clear();
                            if !emitted.outputs.is_empty() {
                                output.session(&time).give_container(&mut emitted.outputs);
                            }
                        });
                    }
                },
            );
        sink_and_probe(&outputs, &name, sink_tx, probe);
    });
    Box::new(input)
}

/// How the worker loop ended.
enum DriveEnd {
    /// Every input closed; `true` when a signal stopped the run.
    Finished(bool),
    /// A new membership was announced; every input is closed.
    Reconfigure(NextMembership),
}

/// Crash recovery in the worker loop. Snapshot `k` is cut at epoch
/// `k << 32`: when its time comes every source input moves to that epoch and
/// the worker stops feeding records until the probe shows every earlier
/// epoch complete on every worker (no epoch after it has started anywhere,
/// since it needs this worker's input); then the snapshot is written, the
/// inputs move to `(k << 32) + 1`, and feeding resumes only once the probe
/// passes that epoch too, that is once every worker has written its
/// snapshot `k`. Without that second step a worker that saw the cut pass
/// first would feed records that another worker's state steps apply (they
/// do not wait for their epoch) before that worker writes its snapshot `k`,
/// which would then hold records after the cut (counted again after a
/// recovery from it). A worker without a live source waits at the next cut,
/// so it never holds the others back. Inputs stay open until every worker's
/// sources have ended (the `alive` dataflow's frontier tells).
pub(crate) struct SnapshotClock<'a> {
    resources: &'a Resources,
    interval: Duration,
    next_at: Instant,
    cycle: CutCycle,
    alive: Option<InputHandleCore<u64, CapacityContainerBuilder<Vec<()>>>>,
    alive_probe: ProbeHandle<u64>,
    last_progress: Instant,
}

impl<'a> SnapshotClock<'a> {
    fn new<A: Allocate>(worker: &mut Worker<A>, resources: &'a Resources) -> Option<Self> {
        let run = resources.resilience.as_ref()?;
        let mut alive = InputHandleCore::new();
        let alive_probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            alive.to_stream(scope).probe_with(&alive_probe);
        });
        Some(SnapshotClock {
            resources,
            interval: run.interval,
            next_at: Instant::now() + run.interval,
            cycle: CutCycle::default(),
            alive: Some(alive),
            alive_probe,
            last_progress: Instant::now(),
        })
    }

    /// Whether records are held back (a cut is under way).
    fn pausing(&self) -> bool {
        self.cycle.pausing()
    }

    /// The epoch the inputs move to now, if any. The next cut is due on
    /// time (not while the last snapshot is still being written: a slow
    /// disk lengthens the interval), or at once without a live source.
    fn advance(&mut self, any_live: bool) -> Option<u64> {
        let writing = self
            .resources
            .resilience
            .as_ref()
            .is_some_and(|run| run.writer.busy());
        self.cycle
            .advance(!any_live || (Instant::now() >= self.next_at && !writing))
    }

    /// After a step: snapshot once the cut is complete everywhere; notice
    /// when every worker's sources have ended (then the inputs close).
    fn after_step(&mut self, probe: &ProbeHandle<u64>, any_live: bool) -> Result<bool, Error> {
        if let Some(why) = self
            .resources
            .resilience
            .as_ref()
            .and_then(|run| run.writer.gave_up())
        {
            return Err(Error::Config(why));
        }
        match self.cycle.observe(probe) {
            CutEvent::Snapshot => self.resources.snapshot()?,
            CutEvent::Resumed => self.next_at = Instant::now() + self.interval,
            CutEvent::None => {}
        }
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            self.resources.note_progress();
        }
        if !any_live {
            self.alive = None;
        }
        Ok(self.alive.is_none() && self.alive_probe.done())
    }
}

/// One worker's side of the snapshot cuts: snapshot `k` at epoch `k << 32`,
/// feeding again after `(k << 32) + 1` (see [`SnapshotClock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CutCycle {
    /// The next snapshot's number.
    cut: u64,
    phase: CutPhase,
}

impl Default for CutCycle {
    fn default() -> Self {
        CutCycle {
            cut: 1,
            phase: CutPhase::Feeding,
        }
    }
}

/// Where a worker is in the cycle of one snapshot's cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutPhase {
    /// Records are fed.
    Feeding,
    /// The inputs are at the cut; waiting for every epoch before it.
    Cutting,
    /// The snapshot is written; the inputs move past the cut next.
    Written,
    /// The inputs are past the cut; waiting until every worker's are (each
    /// moves them only after writing its snapshot).
    Releasing,
}

/// What [`CutCycle::observe`] asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutEvent {
    None,
    /// Write the snapshot now: every epoch before the cut is complete on
    /// every worker and no record after it has been fed anywhere.
    Snapshot,
    /// Every worker wrote its snapshot: records are fed again.
    Resumed,
}

impl CutCycle {
    /// The epoch of the next cut.
    fn cut_epoch(&self) -> u64 {
        self.cut << 32
    }

    /// Whether records are held back (a cut is under way).
    pub(crate) fn pausing(&self) -> bool {
        self.phase != CutPhase::Feeding
    }

    /// Whether the inputs move to a new epoch at once (a snapshot was just
    /// written and they are still at the cut).
    pub(crate) fn written(&self) -> bool {
        self.phase == CutPhase::Written
    }

    /// The epoch the inputs move to now, if any: the next cut when `due`
    /// (and records are being fed), or the epoch after the cut once this
    /// worker wrote its snapshot.
    pub(crate) fn advance(&mut self, due: bool) -> Option<u64> {
        match self.phase {
            CutPhase::Feeding if due => {
                self.phase = CutPhase::Cutting;
                Some(self.cut_epoch())
            }
            CutPhase::Written => {
                self.phase = CutPhase::Releasing;
                Some(self.cut_epoch() + 1)
            }
            _ => None,
        }
    }

    /// After a step: what the probe's frontier allows now.
    pub(crate) fn observe(&mut self, probe: &ProbeHandle<u64>) -> CutEvent {
        match self.phase {
            CutPhase::Cutting if !probe.less_than(&self.cut_epoch()) => {
                self.phase = CutPhase::Written;
                CutEvent::Snapshot
            }
            CutPhase::Releasing if !probe.less_than(&(self.cut_epoch() + 1)) => {
                self.cut += 1;
                self.phase = CutPhase::Feeding;
                CutEvent::Resumed
            }
            _ => CutEvent::None,
        }
    }
}

/// How often the count of records from non-replayable sources is stored.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The worker loop of one generation.
#[allow(clippy::too_many_arguments)]
fn drive<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    inputs: &mut [Option<Box<dyn PipelineInput>>],
    sources: &[Option<GenerationSource>],
    failure: &FailureSlot,
    options: &Options,
    probe: &ProbeHandle<u64>,
    check_signals: bool,
) -> Result<DriveEnd, Error> {
    let stop = &resources.stop;
    let control = &resources.control;
    let epoch_length = Duration::from_millis(options.epoch_ms);
    let mut clock = SnapshotClock::new(worker, resources);
    let mut live: Vec<bool> = sources.iter().map(Option::is_some).collect();
    let mut next_membership: Option<NextMembership> = None;
    let mut epoch = 0u64;
    let mut epoch_records = 0usize;
    let mut last_epoch = Instant::now();
    let mut epochs = crate::metrics::EpochTracker::new();
    let mut last_signal_check = Instant::now();
    let mut last_tick = Instant::now();
    // Pipelines with timer steps (windows) get marker frames; others never.
    let timers: Vec<bool> = resources
        .pipelines
        .iter()
        .map(|p| {
            p.steps
                .iter()
                .any(|s| matches!(s.kind, StepKind::State { tick: Some(_), .. }))
        })
        .collect();
    let mut interrupted = false;
    loop {
        let pausing = clock.as_ref().is_some_and(SnapshotClock::pausing);
        if !pausing && last_tick.elapsed() >= TICK_INTERVAL {
            last_tick = Instant::now();
            for (slot, _) in inputs.iter_mut().zip(&timers).filter(|(_, timer)| **timer) {
                if let Some(input) = slot.as_mut() {
                    input.send(vec![Frame::marker(false)]);
                }
            }
        }
        let behind = pausing || probe.less_than(&epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
        let mut received = false;
        let mut records = 0usize;
        for (i, (slot, source)) in inputs.iter_mut().zip(sources).enumerate() {
            let (Some(input), Some(source), true) = (slot.as_mut(), source, live[i]) else {
                continue;
            };
            if behind {
                break;
            }
            for _ in 0..BATCHES_PER_ROUND {
                match source.handle.rx.try_recv() {
                    Ok(batch) => {
                        records += batch.len();
                        if clock.is_some() {
                            lock(&resources.pipelines[i].position).advance(&batch);
                        }
                        input.send(batch);
                        received = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        live[i] = false;
                        let cut = options.max_records.is_some()
                            || next_membership.is_some()
                            || stop.load(Ordering::Relaxed);
                        if timers[i] && !cut {
                            // The input ended by itself (not a stop, a new
                            // membership or --max-records, after which a
                            // later run goes on): steps with timers fire
                            // what they hold.
                            input.send(vec![Frame::marker(true)]);
                        }
                        if clock.is_none() {
                            *slot = None;
                        }
                        break;
                    }
                }
            }
        }
        epoch_records += records;
        let any_live = live.iter().any(|l| *l);
        let mut advance = clock.as_mut().and_then(|c| c.advance(any_live));
        if advance.is_none()
            && !pausing
            && (last_epoch.elapsed() >= epoch_length || epoch_records >= MAX_EPOCH_RECORDS)
        {
            advance = Some(epoch + 1);
        }
        if let Some(next) = advance {
            epoch = next;
            epoch_records = 0;
            for input in inputs.iter_mut().flatten() {
                input.advance_to(epoch);
            }
            last_epoch = Instant::now();
            epochs.advanced(epoch);
        }
        worker.step();
        epochs.observe(probe);
        if let Some(clock) = clock.as_mut() {
            if clock.after_step(probe, any_live)? {
                // Every worker's sources have ended: close the inputs.
                inputs.iter_mut().for_each(|slot| *slot = None);
            }
        }
        if let Some(reason) = control.take_abort() {
            stop.store(true, Ordering::Relaxed);
            control.abort(reason.clone());
            return Err(Error::Cluster(reason));
        }
        if failure.borrow().is_some() {
            stop.store(true, Ordering::Relaxed);
            return Ok(DriveEnd::Finished(interrupted));
        }
        if next_membership.is_none() {
            if let Some(next) = control.take_reconfigure() {
                log::info!("the cluster changes: ending this generation at the current epoch");
                // Sources made for this generation end (and commit); the
                // others stay open for the next generation.
                for (slot, source) in inputs.iter_mut().zip(sources) {
                    match source.as_ref().and_then(|s| s.own.as_ref()) {
                        Some(own) => own.store(true, Ordering::Relaxed),
                        None => *slot = None,
                    }
                }
                next_membership = Some(next);
            }
        }
        if inputs.iter().all(Option::is_none) {
            return Ok(match next_membership {
                Some(next) => DriveEnd::Reconfigure(next),
                None => DriveEnd::Finished(interrupted),
            });
        }
        if check_signals && !interrupted && last_signal_check.elapsed() >= SIGNAL_CHECK {
            last_signal_check = Instant::now();
            if let Err(signal) = Python::attach(|py| py.check_signals()) {
                log::info!("stopping ({signal}): finishing what the sources have read");
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
        if control.stopping_at_once() {
            log::warn!(
                "stopping at once (a second signal): what was read and not yet delivered is not"
            );
            stop.store(true, Ordering::Relaxed);
            return Ok(DriveEnd::Finished(true));
        }
        if control.stop_requested() && !interrupted {
            log::info!("stopping: finishing what the sources have read");
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            for own in sources.iter().flatten().filter_map(|s| s.own.as_ref()) {
                own.store(true, Ordering::Relaxed);
            }
        }
        // A snapshot was just written: move the inputs past the cut at once.
        let written = clock.as_ref().is_some_and(|c| c.cycle.written());
        if !received && !written {
            let mut select = Select::new();
            let mut watched = 0;
            for ((slot, source), live) in inputs.iter().zip(sources).zip(&live) {
                if let (Some(_), Some(source), true) = (slot, source, live) {
                    select.recv(&source.handle.rx);
                    watched += 1;
                }
            }
            if behind || watched == 0 {
                worker.step_or_park(Some(IDLE_WAIT));
                continue;
            }
            let _ = select.ready_timeout(IDLE_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use timely::dataflow::operators::{Exchange, Inspect};

    use super::*;

    /// Two workers in one process: worker 0 feeds numbers, each is applied
    /// as soon as it reaches its owner (as the state steps do: they do not
    /// wait for their epoch), and worker 1 is slow to step, so it sees a
    /// cut pass only together with what worker 0 sent after it. Snapshot
    /// `k` of both workers must hold exactly the records worker 0 had fed
    /// at its snapshot `k`, never one after the cut.
    #[test]
    fn a_snapshot_on_every_worker_holds_exactly_the_records_before_its_cut() {
        const SNAPSHOTS: usize = 15;
        let guards = timely::execute(timely::Config::process(2), |worker| {
            let index = worker.index();
            let applied = Rc::new(Cell::new(0u64));
            let counter = applied.clone();
            let mut input = InputHandleCore::<u64, CapacityContainerBuilder<Vec<u64>>>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                input
                    .to_stream(scope)
                    .exchange(|n: &u64| *n)
                    .inspect(move |_| counter.set(counter.get() + 1))
                    .probe_with(&probe);
            });
            let mut cycle = CutCycle::default();
            let (mut fed, mut epoch, mut rounds) = (0u64, 0u64, 0u32);
            // (records applied here, records fed by this worker) at each snapshot.
            let mut snapshots = Vec::new();
            while snapshots.len() < SNAPSHOTS {
                if !cycle.pausing() && index == 0 {
                    for n in fed..fed + 20 {
                        input.send(n);
                    }
                    fed += 20;
                    rounds += 1;
                }
                // Worker 1 has no source: it goes to the next cut at once.
                let due = index == 1 || rounds >= 5;
                if let Some(next) = cycle.advance(due) {
                    epoch = next;
                    rounds = 0;
                } else if !cycle.pausing() {
                    epoch += 1;
                }
                input.advance_to(epoch);
                if index == 1 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                worker.step();
                if cycle.observe(&probe) == CutEvent::Snapshot {
                    snapshots.push((applied.get(), fed));
                }
            }
            snapshots
        })
        .expect("timely starts");
        let results: Vec<Vec<(u64, u64)>> = guards
            .join()
            .into_iter()
            .map(|r| r.expect("worker ran"))
            .collect();
        assert!(results.iter().all(|snapshots| snapshots.len() == SNAPSHOTS));
        for (k, (first, second)) in results[0].iter().zip(&results[1]).enumerate() {
            let in_state = first.0 + second.0;
            let fed = first.1;
            assert_eq!(
                in_state,
                fed,
                "snapshot {}: the workers' state holds {in_state} records, {fed} were fed \
                 before the cut",
                k + 1
            );
        }
    }
}
