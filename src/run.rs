//! The entry of a run: one worker on this process, or this process's worker
//! of a cluster ([`crate::cluster`]); the summary handed back to Python; the
//! registry through which the Python-facing functions reach the run.
//!
//! Layers, each naming only those below it: `run` -> `cluster` -> `worker`
//! (a generation's loop) -> `pipeline` (a pipeline's dataflow) -> `steps`,
//! `codec`, `resources` (what outlives a generation) and the leaves.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use timely::communication::allocator::thread::Thread;
use timely::worker::Worker;
use timely::WorkerConfig;

use crate::bad_input::BadInput;
use crate::cluster;
use crate::control::{RunControl, RunHandle};
use crate::errors::Error;
use crate::metrics::PipelineMetrics;
use crate::plan::{Options, Plan};
use crate::resources::{Resources, Totals};
use crate::sync::lock;
use crate::worker;

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
pub struct Summary(Totals);

impl Summary {
    /// As a Python dict: `{"pipelines": {name: {counter: n}}, "bad_input": {...}, ...}`.
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let totals = &self.0;
        let dict = PyDict::new(py);
        let pipelines = PyDict::new(py);
        for (name, m) in &totals.pipelines {
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
        dict.set_item("bad_input", totals.bad_input.clone())?;
        dict.set_item("dead_letter_failed", totals.dead_letter_failed)?;
        dict.set_item("sink_failures", totals.sink_failures.clone())?;
        dict.set_item(
            "state_keys",
            totals.state_keys.iter().cloned().collect::<HashMap<_, _>>(),
        )?;
        dict.set_item("interrupted", totals.interrupted)?;
        dict.set_item("stopped_at_once", totals.at_once)?;
        dict.set_item("seconds", totals.seconds)?;
        dict.set_item("worker", totals.worker)?;
        dict.set_item("workers", totals.workers)?;
        Ok(dict)
    }
}

/// Run the application until its sources end, it is interrupted, or user code
/// fails under the stop policy.
pub fn run(plan: Plan, options: Options) -> Result<Summary, Error> {
    let bad = Arc::new(BadInput::new(options.dead_letter.as_deref())?);
    let (index, peers) = options
        .cluster
        .as_ref()
        .map_or((0, 1), |m| (m.index, m.addresses.len()));
    // A new run starts with a fresh control: no stop, abort or membership
    // from before it, its counters from zero.
    let control = RunControl::with_counters(crate::metrics::begin_run(index, peers, &bad));
    *lock(&CURRENT_RUN) = Some(control.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = match options.cluster.clone() {
        None => {
            let mut worker = Worker::new(
                WorkerConfig::default(),
                Thread::default(),
                Some(Instant::now()),
            );
            Resources::new(plan, &options, 0, 1, stop, control.clone()).and_then(|resources| {
                let outcome = worker::run_alone(&mut worker, &resources, &options);
                resources.finish(outcome, 0, 1)
            })
        }
        Some(membership) => cluster::execute(plan, options, membership, stop, control.clone()),
    };
    // The run ended (its counters stay visible).
    control.counters().end();
    outcome.map(Summary)
}
