//! One timely dataflow worker running every pipeline of the application.
//!
//! Per pipeline: a timely input fed from the source's channel, an operator
//! that runs the Python chain on each batch (GIL taken once per batch), and an
//! operator that hands encoded batches to the sink thread. The worker loop
//! moves batches from sources into inputs, advances epochs on a timer, steps
//! the dataflow, and checks for Ctrl-C / SIGTERM.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, TryRecvError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use timely::communication::allocator::thread::Thread;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::InputHandleCore;
use timely::worker::Worker;
use timely::WorkerConfig;

use crate::bad_input::BadInput;
use crate::errors::{Error, StepFailure};
use crate::metrics::PipelineMetrics;
use crate::plan::{Options, Plan, StepKind};
use crate::sinks::{self, Output, SinkContext, SinkHandle};
use crate::sources::{self, Frame, SourceContext, SourceHandle};
use crate::steps::{Chain, Kind, StateStore, Step};

type Input = InputHandleCore<u64, CapacityContainerBuilder<Vec<Frame>>>;

/// How often the worker looks for signals (Ctrl-C, SIGTERM).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// How long the worker waits for input when it has nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Batches moved from one source per loop round, so one source cannot starve the others.
const BATCHES_PER_ROUND: usize = 4;

/// What a run did, returned to Python.
pub struct Summary {
    pipelines: Vec<(String, Arc<PipelineMetrics>)>,
    bad_input: BTreeMap<String, u64>,
    state_keys: Vec<(String, usize)>,
    interrupted: bool,
    seconds: f64,
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
        Ok(dict)
    }
}

/// Everything a pipeline needs at run time, before the dataflow is built.
struct PipelineParts {
    name: String,
    chain: Chain,
    sink: Option<SinkHandle>,
    source: SourceHandle,
}

/// Run the application until its sources end, it is interrupted, or user code
/// fails under the stop policy.
pub fn run(plan: Plan, options: Options) -> Result<Summary, Error> {
    let started = Instant::now();
    let bad = Arc::new(BadInput::new(options.dead_letter.as_deref())?);
    let stop = Arc::new(AtomicBool::new(false));
    let stores: HashMap<String, Rc<StateStore>> = Python::attach(|py| {
        plan.states
            .iter()
            .map(|(name, class)| {
                let store = StateStore::new(py, name.clone(), class.clone_ref(py));
                (name.clone(), Rc::new(store))
            })
            .collect()
    });

    let mut parts = Vec::new();
    let mut metrics = Vec::new();
    for pipeline in plan.pipelines {
        let pipeline_metrics = Arc::new(PipelineMetrics::default());
        metrics.push((pipeline.name.clone(), pipeline_metrics.clone()));
        let (encode, sink) = match pipeline.sink {
            Some(sink) => {
                let ctx = SinkContext {
                    pipeline: pipeline.name.clone(),
                    bad: bad.clone(),
                    metrics: pipeline_metrics.clone(),
                    connect_timeout_s: options.sink_connect_timeout_s,
                };
                (Some(sink.encode), Some(sinks::start(sink.kind, ctx)?))
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
                    } => Kind::State {
                        store: stores.get(&state_name).cloned().ok_or_else(|| {
                            Error::Config(format!("state {state_name:?} has no state class"))
                        })?,
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
        let source_ctx = SourceContext {
            pipeline: pipeline.name.clone(),
            bad: bad.clone(),
            metrics: pipeline_metrics.clone(),
            batch_size: options.batch_size,
            max_frame_bytes: options.max_frame_bytes,
            stop: stop.clone(),
        };
        let source = sources::start(pipeline.source.kind, pipeline.source.framing, source_ctx)?;
        let chain = Chain {
            pipeline: pipeline.name.clone(),
            source: source.info.clone(),
            decode: pipeline.source.decode,
            steps,
            encode,
            on_error: options.on_error,
            bad: bad.clone(),
            metrics: pipeline_metrics,
            batch_counts: Default::default(),
        };
        parts.push(PipelineParts {
            name: pipeline.name,
            chain,
            sink,
            source,
        });
    }

    let mut worker = Worker::new(
        WorkerConfig::default(),
        Thread::default(),
        Some(Instant::now()),
    );
    let failure: Rc<RefCell<Option<StepFailure>>> = Rc::new(RefCell::new(None));
    let mut inputs: Vec<Option<Input>> = Vec::new();
    let mut source_handles = Vec::new();
    let mut sink_threads = Vec::new();
    for part in parts {
        let mut input = Input::new();
        let sink_tx = part.sink.map(|sink| {
            sink_threads.push(sink.thread);
            sink.tx
        });
        build_pipeline(
            &mut worker,
            &mut input,
            part.name,
            part.chain,
            sink_tx,
            failure.clone(),
        );
        inputs.push(Some(input));
        source_handles.push(part.source);
    }

    let interrupted = drive(
        &mut worker,
        &mut inputs,
        &source_handles,
        &failure,
        &options,
        &stop,
    );
    stop.store(true, Ordering::Relaxed);
    inputs.clear();
    while worker.step_or_park(Some(IDLE_WAIT)) {}
    drop(worker);
    for thread in sink_threads {
        let _ = thread.join();
    }
    for source in source_handles {
        drop(source.rx);
        for thread in source.threads {
            let _ = thread.join();
        }
    }
    if let Some(failure) = failure.borrow_mut().take() {
        return Err(Error::Step(failure));
    }
    let state_keys = Python::attach(|py| {
        stores
            .values()
            .map(|store| (store.name.clone(), store.len(py)))
            .collect()
    });
    Ok(Summary {
        pipelines: metrics,
        bad_input: bad.counts(),
        state_keys,
        interrupted,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn build_pipeline(
    worker: &mut Worker<Thread>,
    input: &mut Input,
    name: String,
    chain: Chain,
    sink_tx: Option<crossbeam_channel::Sender<Vec<Output>>>,
    failure: Rc<RefCell<Option<StepFailure>>>,
) {
    worker.dataflow::<u64, _, _>(|scope| {
        let encoded = input
            .to_stream(scope)
            .unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Pipeline,
                &format!("python chain {name}"),
                move |_capability, _info| {
                    move |input, output| {
                        input.for_each(|time, frames| {
                            if failure.borrow().is_some() {
                                frames.clear();
                                return;
                            }
                            let mut outputs = Vec::new();
                            let result =
                                Python::attach(|py| chain.process(py, frames, &mut outputs));
                            if !outputs.is_empty() {
                                output.session(&time).give_container(&mut outputs);
                            }
                            if let Err(step_failure) = result {
                                *failure.borrow_mut() = Some(step_failure);
                            }
                        });
                    }
                },
            );
        encoded.sink(
            Pipeline,
            &format!("sink {name}"),
            move |(input, _frontier)| {
                input.for_each(|_time, batch| {
                    let batch = std::mem::take(batch);
                    if let Some(tx) = &sink_tx {
                        // Blocks while the sink is behind: back-pressure.
                        if tx.send(batch).is_err() {
                            log::error!("the sink thread has stopped; output is lost");
                        }
                    }
                });
            },
        );
    });
}

/// The worker loop; returns whether the run was interrupted by a signal.
fn drive(
    worker: &mut Worker<Thread>,
    inputs: &mut [Option<Input>],
    sources: &[SourceHandle],
    failure: &Rc<RefCell<Option<StepFailure>>>,
    options: &Options,
    stop: &AtomicBool,
) -> bool {
    let epoch_length = Duration::from_millis(options.epoch_ms);
    let mut epoch = 0u64;
    let mut last_epoch = Instant::now();
    let mut last_signal_check = Instant::now();
    let mut interrupted = false;
    loop {
        let mut received = false;
        for (slot, source) in inputs.iter_mut().zip(sources) {
            let Some(input) = slot.as_mut() else { continue };
            for _ in 0..BATCHES_PER_ROUND {
                match source.rx.try_recv() {
                    Ok(mut batch) => {
                        input.send_batch(&mut batch);
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
        if last_epoch.elapsed() >= epoch_length {
            epoch += 1;
            for input in inputs.iter_mut().flatten() {
                input.advance_to(epoch);
            }
            last_epoch = Instant::now();
        }
        worker.step();
        if failure.borrow().is_some() {
            stop.store(true, Ordering::Relaxed);
            return interrupted;
        }
        if inputs.iter().all(Option::is_none) {
            return interrupted;
        }
        if !interrupted && last_signal_check.elapsed() >= SIGNAL_CHECK {
            last_signal_check = Instant::now();
            if let Err(signal) = Python::attach(|py| py.check_signals()) {
                log::info!("stopping ({signal}): finishing what the sources have read");
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
        if !received {
            let mut select = Select::new();
            for (slot, source) in inputs.iter().zip(sources) {
                if slot.is_some() {
                    select.recv(&source.rx);
                }
            }
            let _ = select.ready_timeout(IDLE_WAIT);
        }
    }
}
