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
use crate::errors::{Error, StepFailure};
use crate::metrics::PipelineMetrics;
use crate::plan::{Options, PipelinePlan, Plan, SinkKind, SourceKind, StepKind};
use crate::routing::{canonical_key, RoutingTable};
use crate::sinks::{self, Output, SinkContext};
use crate::sources::{self, Frame, SourceContext, SourceHandle};
use crate::steps::{Chain, Emitted, Kind, StateStore, Step};

/// How often the worker looks for signals (Ctrl-C, SIGTERM).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// How long the worker waits for input when it has nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Batches moved from one source per loop round, so one source cannot starve the others.
const BATCHES_PER_ROUND: usize = 4;
/// Epochs that may be open at once before sources wait (back-pressure).
const MAX_EPOCHS_IN_FLIGHT: u64 = 4;
/// An epoch also ends after this many records, so a fast source cannot put
/// an unbounded number of records into one epoch (state steps in a cluster
/// hold an epoch's records until it completes).
const MAX_EPOCH_RECORDS: usize = 4096;

/// Set by the runner's signal handlers (Ctrl-C, SIGTERM): finish what the
/// sources have read, then end. A flag, not an exception, so user code that
/// happens to run when the signal arrives is not interrupted.
static STOP_REQUEST: AtomicBool = AtomicBool::new(false);

/// Ask the running worker to stop cleanly.
pub fn request_stop() {
    STOP_REQUEST.store(true, Ordering::Relaxed);
}

/// A reason to stop the run set from outside the worker (the cluster's
/// control channel saw a worker go), checked by the worker loop.
static ABORT: Mutex<Option<String>> = Mutex::new(None);

/// Ask the running worker to stop with an error (e.g. a lost cluster member).
pub fn abort(reason: String) {
    if let Ok(mut slot) = ABORT.lock() {
        slot.get_or_insert(reason);
    }
}

fn take_abort() -> Option<String> {
    ABORT.lock().ok().and_then(|mut slot| slot.take())
}

/// The reason the run is being aborted, if it is (left in place).
pub fn peek_abort() -> Option<String> {
    ABORT.lock().ok().and_then(|slot| slot.clone())
}

fn pending_abort() -> bool {
    ABORT.lock().map(|slot| slot.is_some()).unwrap_or(false)
}

/// What a run did, returned to Python.
pub struct Summary {
    pipelines: Vec<(String, Arc<PipelineMetrics>)>,
    bad_input: BTreeMap<String, u64>,
    state_keys: Vec<(String, usize)>,
    interrupted: bool,
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
            pipelines.set_item(name, counters)?;
        }
        dict.set_item("pipelines", pipelines)?;
        dict.set_item("bad_input", self.bad_input.clone())?;
        dict.set_item(
            "state_keys",
            self.state_keys.iter().cloned().collect::<HashMap<_, _>>(),
        )?;
        dict.set_item("interrupted", self.interrupted)?;
        dict.set_item("seconds", self.seconds)?;
        dict.set_item("worker", self.worker)?;
        dict.set_item("workers", self.workers)?;
        Ok(dict)
    }
}

/// Run the application until its sources end, it is interrupted, or user code
/// fails under the stop policy.
pub fn run(plan: Plan, options: Options) -> Result<Summary, Error> {
    take_abort();
    STOP_REQUEST.store(false, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    match options.cluster.clone() {
        None => {
            let mut worker = Worker::new(
                WorkerConfig::default(),
                Thread::default(),
                Some(Instant::now()),
            );
            worker_main(&mut worker, plan, &options, stop, true)
        }
        Some(membership) => cluster::execute(plan, options, membership, stop),
    }
}

/// One pipeline ready to be built into the dataflow.
pub(crate) struct PipelineParts {
    /// The pipeline name.
    pub name: String,
    /// Its Python side.
    pub chain: Rc<Chain>,
    /// Where its encoded records go on this worker, if anywhere.
    pub sink_tx: Option<Sender<Vec<Output>>>,
    /// Whether its sink runs on every worker (Kafka) rather than on worker 0.
    pub sink_everywhere: bool,
    /// Its source on this worker, if it reads here.
    pub source: Option<SourceHandle>,
}

/// Everything a worker needs to join when the run ends.
struct Running {
    parts: Vec<PipelineParts>,
    metrics: Vec<(String, Arc<PipelineMetrics>)>,
    sink_threads: Vec<std::thread::JoinHandle<()>>,
    stores: HashMap<String, Rc<StateStore>>,
}

fn routing_tables(
    py: Python<'_>,
    plan: &Plan,
    peers: usize,
) -> Result<HashMap<String, Rc<RoutingTable>>, Error> {
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
    Ok(declared
        .into_iter()
        .map(|(name, keys)| (name, Rc::new(RoutingTable::new(peers, &keys))))
        .collect())
}

/// Start sinks and sources and make the chains of this worker.
fn set_up(
    plan: Plan,
    options: &Options,
    bad: &Arc<BadInput>,
    stop: &Arc<AtomicBool>,
    worker: usize,
    peers: usize,
) -> Result<Running, Error> {
    let cluster = options.cluster.is_some();
    let (stores, tables) = Python::attach(|py| -> Result<_, Error> {
        let stores: HashMap<String, Rc<StateStore>> = plan
            .states
            .iter()
            .map(|(name, class)| {
                let store = StateStore::new(py, name.clone(), class.clone_ref(py));
                (name.clone(), Rc::new(store))
            })
            .collect();
        let tables = if cluster {
            routing_tables(py, &plan, peers)?
        } else {
            HashMap::new()
        };
        Ok((stores, tables))
    })?;
    let mut running = Running {
        parts: Vec::new(),
        metrics: Vec::new(),
        sink_threads: Vec::new(),
        stores,
    };
    for pipeline in plan.pipelines {
        let codecs = Python::attach(|py| {
            let own = |f: &Option<Py<PyAny>>| f.as_ref().map(|f| f.clone_ref(py));
            (own(&plan.serialize), own(&plan.deserialize))
        });
        let part = set_up_pipeline(
            pipeline,
            options,
            bad,
            stop,
            worker,
            peers,
            &tables,
            codecs,
            &mut running,
        )?;
        running.parts.push(part);
    }
    Ok(running)
}

#[allow(clippy::too_many_arguments)]
fn set_up_pipeline(
    pipeline: PipelinePlan,
    options: &Options,
    bad: &Arc<BadInput>,
    stop: &Arc<AtomicBool>,
    worker: usize,
    peers: usize,
    tables: &HashMap<String, Rc<RoutingTable>>,
    codecs: (Option<Py<PyAny>>, Option<Py<PyAny>>),
    running: &mut Running,
) -> Result<PipelineParts, Error> {
    let metrics = crate::metrics::register_pipeline(
        &pipeline.name,
        pipeline.steps.iter().map(|s| s.name.as_str()),
    );
    running
        .metrics
        .push((pipeline.name.clone(), metrics.clone()));
    let mut sink_everywhere = false;
    let (encode, sink_tx) = match pipeline.sink {
        Some(sink) => {
            sink_everywhere = matches!(sink.kind, SinkKind::Kafka(_));
            let tx = if sink_everywhere || worker == 0 {
                let ctx = SinkContext {
                    pipeline: pipeline.name.clone(),
                    bad: bad.clone(),
                    metrics: metrics.clone(),
                    connect_timeout_s: options.sink_connect_timeout_s,
                };
                let handle = sinks::start(sink.kind, ctx)?;
                running.sink_threads.push(handle.thread);
                Some(handle.tx)
            } else {
                None
            };
            (Some(sink.encode), tx)
        }
        None => (None, None),
    };
    let steps = pipeline
        .steps
        .into_iter()
        .map(|step| {
            let kind = match step.kind {
                StepKind::Map => Kind::Map,
                StepKind::Multi => Kind::Multi,
                StepKind::State {
                    state_name,
                    partition,
                    u64_keys,
                    multi,
                    keys: _,
                } => Kind::State {
                    store: running.stores.get(&state_name).cloned().ok_or_else(|| {
                        Error::Config(format!("state {state_name:?} has no state class"))
                    })?,
                    routing: tables.get(&state_name).cloned(),
                    partition,
                    u64_keys,
                    multi,
                },
            };
            Ok(Step {
                name: step.name,
                func: step.func,
                kind,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let reads_here = worker == 0 || matches!(pipeline.source.kind, SourceKind::Kafka(_));
    let source = if reads_here {
        let ctx = SourceContext {
            pipeline: pipeline.name.clone(),
            bad: bad.clone(),
            metrics: metrics.clone(),
            batch_size: options.batch_size,
            max_frame_bytes: options.max_frame_bytes,
            stop: stop.clone(),
            worker,
            peers,
            remaining: options
                .max_records
                .map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n))),
        };
        Some(sources::start(
            pipeline.source.kind,
            pipeline.source.framing,
            ctx,
        )?)
    } else {
        None
    };
    let info = source
        .as_ref()
        .map(|s| s.info.clone())
        .unwrap_or_else(|| sources::SourceInfo {
            label: format!("pipeline {} source", pipeline.name),
            style: sources::PosStyle::Frames,
        });
    let chain = Chain {
        pipeline: pipeline.name.clone(),
        source: info,
        decode: pipeline.source.decode,
        steps,
        encode,
        on_error: options.on_error,
        bad: bad.clone(),
        metrics,
        batch_counts: Default::default(),
        cluster: options.cluster.is_some(),
        serialize: codecs.0,
        deserialize: codecs.1,
    };
    Ok(PipelineParts {
        name: pipeline.name,
        chain: Rc::new(chain),
        sink_tx,
        sink_everywhere,
        source,
    })
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

/// The worker's life: set up, build the dataflow, drive it, tear down.
pub(crate) fn worker_main<A: Allocate>(
    worker: &mut Worker<A>,
    plan: Plan,
    options: &Options,
    stop: Arc<AtomicBool>,
    check_signals: bool,
) -> Result<Summary, Error> {
    let started = Instant::now();
    let (index, peers) = (worker.index(), worker.peers());
    let bad = Arc::new(BadInput::new(options.dead_letter.as_deref())?);
    crate::metrics::begin_run(index, peers, &bad);
    let mut running = set_up(plan, options, &bad, &stop, index, peers)?;
    let failure: FailureSlot = Rc::new(RefCell::new(None));
    let probe = ProbeHandle::new();
    let mut inputs: Vec<Option<Box<dyn PipelineInput>>> = Vec::new();
    let mut sources = Vec::new();
    for part in running.parts.drain(..) {
        let input: Box<dyn PipelineInput> = if options.cluster.is_some() {
            cluster::build_pipeline(worker, &part, failure.clone(), &probe)
        } else {
            build_pipeline(worker, &part, failure.clone(), &probe)
        };
        // A worker without this source closes its input at once, so the
        // epochs of the others are not held back.
        inputs.push(part.source.is_some().then_some(input));
        sources.push(part.source);
    }
    let outcome = drive(
        worker,
        &mut inputs,
        &sources,
        &failure,
        options,
        &stop,
        &probe,
        check_signals,
    );
    stop.store(true, Ordering::Relaxed);
    inputs.clear();
    while worker.step_or_park(Some(IDLE_WAIT)) {
        if pending_abort() {
            // The cluster is gone: nothing more will complete. Dropping the
            // dataflows closes the sink channels so the sinks flush and end.
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            break;
        }
    }
    for thread in running.sink_threads.drain(..) {
        let _ = thread.join();
    }
    for source in sources.into_iter().flatten() {
        drop(source.rx);
        for thread in source.threads {
            let _ = thread.join();
        }
    }
    let interrupted = outcome?;
    if let Some(failure) = failure.borrow_mut().take() {
        return Err(Error::Step(failure));
    }
    let state_keys = Python::attach(|py| {
        running
            .stores
            .values()
            .map(|store| (store.name.clone(), store.len(py)))
            .collect()
    });
    Ok(Summary {
        pipelines: running.metrics,
        bad_input: bad.counts(),
        state_keys,
        interrupted,
        seconds: started.elapsed().as_secs_f64(),
        worker: index,
        workers: peers,
    })
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
pub(crate) fn send_to_sink(tx: &Option<Sender<Vec<Output>>>, batch: &mut Vec<Output>) {
    let batch = std::mem::take(batch);
    if let Some(tx) = tx {
        // Blocks while the sink is behind: back-pressure.
        if tx.send(batch).is_err() {
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
        input
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
            )
            .probe_with(probe)
            .sink(
                Pipeline,
                &format!("sink {name}"),
                move |(input, _frontier)| {
                    input.for_each(|_time, batch| send_to_sink(&sink_tx, batch));
                },
            );
    });
    Box::new(input)
}

/// The worker loop; returns whether the run was interrupted by a signal.
#[allow(clippy::too_many_arguments)]
fn drive<A: Allocate>(
    worker: &mut Worker<A>,
    inputs: &mut [Option<Box<dyn PipelineInput>>],
    sources: &[Option<SourceHandle>],
    failure: &FailureSlot,
    options: &Options,
    stop: &AtomicBool,
    probe: &ProbeHandle<u64>,
    check_signals: bool,
) -> Result<bool, Error> {
    let epoch_length = Duration::from_millis(options.epoch_ms);
    let mut epoch = 0u64;
    let mut epoch_records = 0usize;
    let mut last_epoch = Instant::now();
    let mut epochs = crate::metrics::EpochTracker::new();
    let mut last_signal_check = Instant::now();
    let mut interrupted = false;
    loop {
        let behind = probe.less_than(&epoch.saturating_sub(exp_inflight()));
        let mut received = false;
        let mut records = 0usize;
        for (slot, source) in inputs.iter_mut().zip(sources) {
            let (Some(input), Some(source)) = (slot.as_mut(), source) else {
                continue;
            };
            if behind {
                break;
            }
            for _ in 0..BATCHES_PER_ROUND {
                match source.rx.try_recv() {
                    Ok(batch) => {
                        records += batch.len();
                        input.send(batch);
                        received = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
        epoch_records += records;
        if last_epoch.elapsed() >= epoch_length || epoch_records >= exp_records() {
            epoch += 1;
            epoch_records = 0;
            for input in inputs.iter_mut().flatten() {
                input.advance_to(epoch);
            }
            last_epoch = Instant::now();
            epochs.advanced(epoch);
        }
        worker.step();
        epochs.observe(probe);
        if let Some(reason) = take_abort() {
            stop.store(true, Ordering::Relaxed);
            abort(reason.clone());
            return Err(Error::Cluster(reason));
        }
        if failure.borrow().is_some() {
            stop.store(true, Ordering::Relaxed);
            return Ok(interrupted);
        }
        if inputs.iter().all(Option::is_none) {
            return Ok(interrupted);
        }
        if check_signals && !interrupted && last_signal_check.elapsed() >= SIGNAL_CHECK {
            last_signal_check = Instant::now();
            if let Err(signal) = Python::attach(|py| py.check_signals()) {
                log::info!("stopping ({signal}): finishing what the sources have read");
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
        if STOP_REQUEST.load(Ordering::Relaxed) && !interrupted {
            log::info!("stopping: finishing what the sources have read");
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
        }
        if !received {
            if behind {
                worker.step_or_park(Some(IDLE_WAIT));
                continue;
            }
            let mut select = Select::new();
            for (slot, source) in inputs.iter().zip(sources) {
                if let (Some(_), Some(source)) = (slot, source) {
                    select.recv(&source.rx);
                }
            }
            let _ = select.ready_timeout(IDLE_WAIT);
        }
    }
}

fn exp_inflight() -> u64 {
    std::env::var("EXP_INFLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_EPOCHS_IN_FLIGHT)
}
fn exp_records() -> usize {
    std::env::var("EXP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_EPOCH_RECORDS)
}
