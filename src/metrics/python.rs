//! The metrics functions of the extension module.

use std::path::PathBuf;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::registry::registry;
use super::server::{serve, stop_all};
use super::snapshot::{PartitionSnapshot, WindowSnapshot};

/// Set this worker's name and application; `enabled` false turns the
/// per-step counts, sampled timings and latencies off (the plain counters stay).
#[pyfunction]
fn metrics_configure(enabled: bool, name: &str, app: &str) {
    registry().configure(enabled, name, app);
}

/// The cluster's workers as `(name, data address)` by index.
#[pyfunction]
fn metrics_set_cluster(workers: Vec<(String, String)>) {
    registry().set_cluster(workers);
}

/// Serve the metrics on `address`; returns the bound `host:port`. Raises
/// OSError when the address cannot be bound.
#[pyfunction]
#[pyo3(signature = (address, static_dir=None, everyone=true, allowed_hosts=None, previews=false))]
fn metrics_serve(
    py: Python<'_>,
    address: &str,
    static_dir: Option<PathBuf>,
    everyone: bool,
    allowed_hosts: Option<Vec<String>>,
    previews: bool,
) -> PyResult<String> {
    let allowed_hosts = allowed_hosts.unwrap_or_default();
    py.detach(|| {
        serve(
            registry(),
            address,
            static_dir,
            everyone,
            allowed_hosts,
            previews,
        )
    })
    .map(|bound| bound.to_string())
    .map_err(|e| PyOSError::new_err(format!("cannot serve metrics on {address}: {e}")))
}

/// Stop the metrics servers.
#[pyfunction]
fn metrics_stop(py: Python<'_>) {
    py.detach(|| stop_all(registry()));
}

/// This worker's metrics now, as JSON (what workers report to the initializer).
#[pyfunction]
fn metrics_snapshot(py: Python<'_>) -> PyResult<String> {
    py.detach(|| serde_json::to_string(&registry().local_snapshot()))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Store worker `name`'s report (JSON from its `metrics_snapshot`).
#[pyfunction]
fn metrics_report(name: &str, snapshot: &str) -> PyResult<()> {
    registry()
        .report_peer(name, snapshot)
        .map_err(PyValueError::new_err)
}

/// Worker `name`'s control connection closed (`lost`) or it finished.
#[pyfunction]
#[pyo3(signature = (name, lost=true))]
fn metrics_peer_lost(name: &str, lost: bool) {
    registry().peer_lost(name, lost);
}

/// A window stage's counts (its timer tick hands them over): open windows,
/// windows fired, late events, and on event time the watermark and each source
/// partition's `(source, reader, stream, newest event time, idle)`; times in
/// nanoseconds since the epoch. Kept for the current run's metrics.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn metrics_windows(
    stage: String,
    pipeline: String,
    step: String,
    kind: String,
    open: i64,
    fired: u64,
    late: u64,
    watermark: Option<f64>,
    partitions: Vec<(String, u32, u32, f64, bool)>,
) {
    let Some(run) = registry().current_run() else {
        return;
    };
    run.report_windows(WindowSnapshot {
        stage,
        pipeline,
        step,
        kind,
        open: u64::try_from(open).unwrap_or(0),
        fired,
        late_events: late,
        watermark: watermark.map(|ns| ns / 1e9),
        partitions: partitions
            .into_iter()
            .map(|(source, reader, stream, newest, idle)| PartitionSnapshot {
                source,
                reader,
                stream,
                event_time: newest / 1e9,
                idle,
                ..PartitionSnapshot::default()
            })
            .collect(),
        ..WindowSnapshot::default()
    });
}

/// Totals over every known worker, for the progress line.
#[pyfunction]
fn metrics_totals(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let totals = py.detach(|| registry().totals());
    let dict = PyDict::new(py);
    dict.set_item("records_in", totals.records_in)?;
    dict.set_item("records_out", totals.records_out)?;
    dict.set_item("dropped", totals.dropped)?;
    dict.set_item("bad_input", totals.bad_input)?;
    dict.set_item("errors", totals.errors())?;
    dict.set_item("workers", totals.workers)?;
    dict.set_item("kafka_lag", totals.kafka_lag)?;
    Ok(dict)
}

/// Add the metrics functions to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(metrics_configure, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_set_cluster, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_serve, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_stop, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_report, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_peer_lost, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_totals, m)?)?;
    m.add_function(wrap_pyfunction!(metrics_windows, m)?)?;
    Ok(())
}
