//! # wallaroo engine
//!
//! The Rust engine behind the `wallaroo` Python package. It runs applications
//! written against the Wallaroo 0.4.2 Python API on Python 3.
//!
//! ## Architecture
//!
//! * [`plan`] reads the checked application plan that `wallaroo.plan` built
//!   from `ApplicationBuilder.build()`.
//! * The layers of a run, each naming only those below it: [`run`] (the
//!   entry, the summary) -> [`cluster`] (generations, hand-over, restart) ->
//!   [`worker`] (a generation's loop, the snapshot clock) -> [`pipeline`]
//!   (each pipeline's timely dataflow: on a worker alone an input, one
//!   operator running the Python chain and the sink; in a cluster the chain
//!   cut at its state steps) -> [`resources`] (what outlives a generation),
//!   [`steps`], [`codec`] and the leaves. [`control`] is the run's handle
//!   (stop, abort, next membership) passed down to all of them.
//! * [`steps`] calls the Python steps for a whole batch of records while
//!   holding the GIL once; partitioned state lives in [`state::StateStore`].
//! * [`sources`] and [`sinks`] are IO threads that never touch Python (except
//!   a hand-written decoder's `payload_length`); they talk to the worker
//!   through bounded channels, so a slow sink slows the source down.
//! * [`bad_input`] counts, logs and keeps records that could not be read.
//! * [`errors`] is the one place where engine errors become Python exceptions.
//! * [`metrics`] keeps the counters (per batch, never per record on shared
//!   atomics) and serves them: Prometheus text, a JSON status and a live web
//!   page, for every worker of the cluster at the initializer.
//! * [`sync`] holds the crate's one lock helper.

pub mod bad_input;
pub mod cluster;
pub mod codec;
pub mod control;
pub mod errors;
pub mod framing;
pub mod kafka;
pub mod metrics;
pub mod peers;
pub mod pipeline;
pub mod plan;
pub mod pycall;
pub mod recovery;
pub mod resources;
pub mod routing;
pub mod run;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod steps;
pub mod sync;
pub mod worker;

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Lets each run pick up the Python logging levels configured since import.
static LOG_RESET: OnceLock<pyo3_log::ResetHandle> = OnceLock::new();

/// Run an application plan until its sources end or it is stopped.
///
/// Returns a summary dict of what flowed through each pipeline.
#[pyfunction(name = "run")]
fn run_plan<'py>(
    py: Python<'py>,
    plan: &Bound<'py, PyAny>,
    options: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    if let Some(reset) = LOG_RESET.get() {
        reset.reset();
    }
    let plan: plan::Plan = plan
        .extract()
        .map_err(|e| plan::contract_error(py, "the plan", e))?;
    let options: plan::Options = options
        .extract()
        .map_err(|e| plan::contract_error(py, "the run options", e))?;
    let summary = py.detach(|| run::run(plan, options))?;
    summary.to_py(py)
}

/// Stop the running worker with an error naming `reason` (used by the
/// cluster's control channel when a member is lost).
#[pyfunction]
fn abort(reason: String) {
    run::current_run().abort(reason);
}

/// Announce the cluster's next membership to the running worker (a worker
/// joined or leaves): the current generation ends, the keys move, and the
/// next generation starts. `index` is None for a worker that leaves.
#[pyfunction]
#[pyo3(signature = (index, addresses, names))]
fn reconfigure(index: Option<usize>, addresses: Vec<String>, names: Vec<String>) {
    run::current_run().reconfigure(control::NextMembership {
        index,
        addresses,
        names,
    });
}

/// How many generations (timely instances) this process has started in the
/// current run; a cluster starts a new one when its membership changes.
#[pyfunction]
fn generation() -> u64 {
    run::current_run().generation()
}

/// The last generation whose workers all connected to each other.
#[pyfunction]
fn connected_generation() -> u64 {
    run::current_run().connected_generation()
}

/// Ask the running worker to finish what its sources have read and end
/// (what the runner's Ctrl-C / SIGTERM handlers call); `at_once` (a second
/// signal): stop without finishing, the run is reported as interrupted.
#[pyfunction]
#[pyo3(signature = (at_once = false))]
fn request_stop(at_once: bool) {
    run::current_run().request_stop(at_once);
}

/// Replace this process by a fresh start of its own command line (crash
/// recovery: a cluster worker that lost a peer starts again and recovers
/// from the last complete snapshot). Never returns.
#[pyfunction]
fn restart(reason: String) {
    cluster::restart_process(&reason);
}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    if LOG_RESET.get().is_none() {
        // Debug at most (the runner's lowest level): with Trace, every
        // `trace!` of a dependency went through the logger's target lookup,
        // about 2,400 instructions each, two per Kafka message (rdkafka's
        // `NativePtr::drop`); above the maximum level it costs one load.
        let logger = pyo3_log::Logger::new(m.py(), pyo3_log::Caching::LoggersAndLevels)?
            .filter(log::LevelFilter::Debug);
        if let Ok(reset) = logger.install() {
            let _ = LOG_RESET.set(reset);
        }
    }
    m.add_function(wrap_pyfunction!(run_plan, m)?)?;
    m.add_function(wrap_pyfunction!(abort, m)?)?;
    m.add_function(wrap_pyfunction!(request_stop, m)?)?;
    m.add_function(wrap_pyfunction!(reconfigure, m)?)?;
    m.add_function(wrap_pyfunction!(generation, m)?)?;
    m.add_function(wrap_pyfunction!(connected_generation, m)?)?;
    m.add_function(wrap_pyfunction!(restart, m)?)?;
    m.add_class::<kafka::EmbeddedKafka>()?;
    metrics::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
