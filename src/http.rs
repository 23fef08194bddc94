//! The metrics HTTP server: axum on a tokio runtime on its own thread.
//!
//! * `/metrics` -- every known worker's metrics in the Prometheus text format;
//! * `/status` -- JSON: the application, its pipelines and steps, the
//!   workers and the keys they hold, current rates, recent bad input;
//! * `/status/history` -- JSON: rates and latency percentiles, one point a
//!   second for the last [`HISTORY_POINTS`] seconds;
//! * `/` and `/static/...` -- the live web page (files of the
//!   `wallaroo/ui_static` package directory, read at start).
//!
//! The initializer (or a single process) serves the whole cluster: other
//! workers' snapshots arrive through the control channel
//! ([`crate::metrics::report_peer`]). A worker may also serve its own view
//! (`everyone` false). The server never takes the GIL.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::{Deserialize, Serialize};

use crate::metrics::{self, HistogramSnapshot, WorkerSnapshot};

/// Points of history kept (one a second).
pub const HISTORY_POINTS: usize = 300;
/// Snapshots per worker kept for the latency percentiles (a window of seconds).
const WINDOW: usize = 6;
/// A worker whose last report is older than this shows no rate.
const STALE_SECONDS: f64 = 3.0;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// ---------------------------------------------------------------- history

/// One step at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepPoint {
    /// Records per second into the step.
    pub rate: f64,
    /// Mean Python time per record (seconds) over the window.
    pub mean: Option<f64>,
    /// Median sampled call duration (seconds) over the window.
    pub p50: Option<f64>,
    /// 99th percentile of sampled call durations.
    pub p99: Option<f64>,
}

/// One pipeline at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelinePoint {
    /// Records per second read by the source.
    pub r#in: f64,
    /// Records per second encoded for the sink.
    pub out: f64,
    /// Source-to-sink latency percentiles (seconds) over the window.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Per step.
    pub steps: BTreeMap<String, StepPoint>,
}

/// One worker (or the total) at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerPoint {
    /// Records per second read by sources.
    pub r#in: f64,
    /// Records per second encoded for sinks.
    pub out: f64,
    /// Records per second dropped by steps.
    pub dropped: f64,
    /// Bad input per second.
    pub bad: f64,
    /// Errors per second (skipped records and sink errors).
    pub errors: f64,
    /// Python calls per second (decoders, steps and encoders): the work done.
    pub calls: f64,
    /// Per pipeline.
    pub pipelines: BTreeMap<String, PipelinePoint>,
}

/// The rates of one second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    /// Unix seconds.
    pub t: f64,
    /// Every worker.
    pub total: WorkerPoint,
    /// Per worker.
    pub workers: BTreeMap<String, WorkerPoint>,
}

#[derive(Default)]
struct History {
    points: VecDeque<Point>,
    windows: BTreeMap<String, VecDeque<WorkerSnapshot>>,
}

static HISTORY: LazyLock<Mutex<History>> = LazyLock::new(|| Mutex::new(History::default()));

fn rate(new: u64, old: u64, seconds: f64) -> f64 {
    new.saturating_sub(old) as f64 / seconds
}

/// Rates between the two newest snapshots of a worker, percentiles over its
/// window; the latency and call-duration windows are returned for merging.
fn worker_point(
    window: &VecDeque<WorkerSnapshot>,
    stale: bool,
) -> (WorkerPoint, BTreeMap<String, HistogramSnapshot>) {
    let mut point = WorkerPoint::default();
    let mut latencies = BTreeMap::new();
    let (Some(cur), Some(oldest)) = (window.back(), window.front()) else {
        return (point, latencies);
    };
    let prev = if window.len() >= 2 {
        &window[window.len() - 2]
    } else {
        cur
    };
    let seconds = cur.time - prev.time;
    let moving = !stale && seconds > 0.0;
    let r = |new: u64, old: u64| if moving { rate(new, old, seconds) } else { 0.0 };
    point.r#in = r(cur.sum(|p| p.records_in), prev.sum(|p| p.records_in));
    point.out = r(cur.sum(|p| p.records_out), prev.sum(|p| p.records_out));
    point.dropped = r(cur.sum(|p| p.dropped), prev.sum(|p| p.dropped));
    point.bad = r(cur.bad_total(), prev.bad_total());
    point.errors = r(
        cur.sum(|p| p.skipped_errors + p.sink_errors),
        prev.sum(|p| p.skipped_errors + p.sink_errors),
    );
    for pipeline in &cur.pipelines {
        let find = |s: &WorkerSnapshot| {
            s.pipelines
                .iter()
                .find(|p| p.name == pipeline.name)
                .cloned()
        };
        let before = find(prev).unwrap_or_default();
        let first = find(oldest).unwrap_or_default();
        let latency = pipeline.latency.since(&first.latency);
        let mut pp = PipelinePoint {
            r#in: r(pipeline.records_in, before.records_in),
            out: r(pipeline.records_out, before.records_out),
            p50: latency.quantile(0.5),
            p95: latency.quantile(0.95),
            p99: latency.quantile(0.99),
            steps: BTreeMap::new(),
        };
        if !pipeline.sink.is_empty() {
            latencies.insert(pipeline.name.clone(), latency);
        }
        for step in &pipeline.steps {
            let find_step = |p: &metrics::PipelineSnapshot| {
                p.steps.iter().find(|s| s.name == step.name).cloned()
            };
            let step_before = find_step(&before).unwrap_or_default();
            let step_first = find_step(&first).unwrap_or_default();
            let durations = step.call_duration.since(&step_first.call_duration);
            let calls = step.records_in.saturating_sub(step_first.records_in);
            let seconds_in_python = (step.python_seconds - step_first.python_seconds).max(0.0);
            pp.steps.insert(
                step.name.clone(),
                StepPoint {
                    rate: r(step.records_in, step_before.records_in),
                    mean: (calls > 0).then(|| seconds_in_python / calls as f64),
                    p50: durations.quantile(0.5),
                    p99: durations.quantile(0.99),
                },
            );
        }
        point.calls += pp.steps.values().map(|s| s.rate).sum::<f64>();
        point.pipelines.insert(pipeline.name.clone(), pp);
    }
    (point, latencies)
}

/// Take a snapshot of every worker and add a point to the history.
fn tick() {
    let workers = metrics::known_workers(true);
    let now = metrics::unix_seconds();
    let mut history = lock(&HISTORY);
    for worker in &workers {
        let window = history
            .windows
            .entry(worker.snapshot.worker.clone())
            .or_default();
        if window
            .back()
            .is_none_or(|last| last.time < worker.snapshot.time)
        {
            window.push_back(worker.snapshot.clone());
            while window.len() > WINDOW {
                window.pop_front();
            }
        }
    }
    let mut point = Point {
        t: now,
        ..Point::default()
    };
    let mut merged: BTreeMap<String, HistogramSnapshot> = BTreeMap::new();
    for worker in &workers {
        let name = &worker.snapshot.worker;
        let Some(window) = history.windows.get(name) else {
            continue;
        };
        let stale = worker.lost
            || worker.age > STALE_SECONDS
            || window.back().is_some_and(|s| now - s.time > STALE_SECONDS);
        let (wp, latencies) = worker_point(window, stale);
        for (pipeline, latency) in latencies {
            merged.entry(pipeline).or_default().merge(&latency);
        }
        let total = &mut point.total;
        total.r#in += wp.r#in;
        total.out += wp.out;
        total.dropped += wp.dropped;
        total.bad += wp.bad;
        total.errors += wp.errors;
        total.calls += wp.calls;
        for (name, pp) in &wp.pipelines {
            let tp = total.pipelines.entry(name.clone()).or_default();
            tp.r#in += pp.r#in;
            tp.out += pp.out;
            for (step, sp) in &pp.steps {
                let ts = tp.steps.entry(step.clone()).or_default();
                ts.rate += sp.rate;
                // Slowest worker's percentiles: a bottleneck shows.
                ts.p50 = max_option(ts.p50, sp.p50);
                ts.p99 = max_option(ts.p99, sp.p99);
                ts.mean = max_option(ts.mean, sp.mean);
            }
        }
        point.workers.insert(name.clone(), wp);
    }
    for (name, latency) in merged {
        if let Some(tp) = point.total.pipelines.get_mut(&name) {
            tp.p50 = latency.quantile(0.5);
            tp.p95 = latency.quantile(0.95);
            tp.p99 = latency.quantile(0.99);
        }
    }
    history.points.push_back(point);
    while history.points.len() > HISTORY_POINTS {
        history.points.pop_front();
    }
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Points newer than `since`; for a worker's own view, only its series.
fn history_since(since: f64, everyone: bool) -> Vec<Point> {
    let me = metrics::worker_name();
    lock(&HISTORY)
        .points
        .iter()
        .filter(|p| p.t > since)
        .map(|p| {
            if everyone {
                return p.clone();
            }
            let mine = p.workers.get(&me).cloned().unwrap_or_default();
            Point {
                t: p.t,
                total: mine.clone(),
                workers: BTreeMap::from([(me.clone(), mine)]),
            }
        })
        .collect()
}

fn latest_point(everyone: bool) -> Point {
    history_since(0.0, everyone).pop().unwrap_or_default()
}

// ---------------------------------------------------------------- status

#[derive(Serialize)]
struct StepStatus {
    name: String,
    kind: String,
    records_in: u64,
    records_out: u64,
    dropped: u64,
    python_seconds: f64,
    per_second: f64,
    mean_seconds: Option<f64>,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

#[derive(Serialize)]
struct PipelineStatus {
    name: String,
    sources: Vec<String>,
    sinks: Vec<String>,
    records_in: u64,
    bytes_in: u64,
    records_out: u64,
    bytes_out: u64,
    dropped: u64,
    skipped_errors: u64,
    bad_input: u64,
    sink_records: u64,
    sink_errors: u64,
    sink_retries: u64,
    in_per_second: f64,
    out_per_second: f64,
    latency_seconds: BTreeMap<&'static str, Option<f64>>,
    steps: Vec<StepStatus>,
    kafka_lag: i64,
}

#[derive(Serialize)]
struct WorkerStatus {
    name: String,
    index: usize,
    address: String,
    state: String,
    up: bool,
    serving: bool,
    report_age_seconds: f64,
    records_in: u64,
    records_out: u64,
    dropped: u64,
    bad_input: u64,
    in_per_second: f64,
    out_per_second: f64,
    epoch: u64,
    epochs_completed: u64,
    state_keys: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Totals {
    records_in: u64,
    records_out: u64,
    dropped: u64,
    bad_input: u64,
    errors: u64,
    sink_errors: u64,
    in_per_second: f64,
    out_per_second: f64,
    bad_per_second: f64,
}

#[derive(Serialize)]
struct Status {
    app: String,
    scope: &'static str,
    worker: String,
    time: f64,
    started: f64,
    state: String,
    expected_workers: usize,
    totals: Totals,
    pipelines: Vec<PipelineStatus>,
    workers: Vec<WorkerStatus>,
    keys: BTreeMap<String, BTreeMap<String, u64>>,
    bad_input: BTreeMap<String, u64>,
    recent_bad_input: Vec<metrics::RecentBad>,
}

fn status(everyone: bool) -> Status {
    let workers = metrics::known_workers(everyone);
    let point = latest_point(everyone);
    let cluster = metrics::cluster();
    let mut pipelines: Vec<PipelineStatus> = Vec::new();
    let mut keys: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut bad_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut recent = Vec::new();
    let mut worker_rows = Vec::new();
    for known in &workers {
        let s = &known.snapshot;
        for (state, n) in &s.state_keys {
            keys.entry(state.clone())
                .or_default()
                .insert(s.worker.clone(), *n);
        }
        for bad in &s.bad_input {
            *bad_by_kind.entry(bad.kind.clone()).or_insert(0) += bad.count;
        }
        recent.extend(s.recent_bad.iter().cloned());
        for p in &s.pipelines {
            let row = match pipelines.iter_mut().position(|r| r.name == p.name) {
                Some(i) => &mut pipelines[i],
                None => {
                    pipelines.push(PipelineStatus {
                        name: p.name.clone(),
                        sources: Vec::new(),
                        sinks: Vec::new(),
                        records_in: 0,
                        bytes_in: 0,
                        records_out: 0,
                        bytes_out: 0,
                        dropped: 0,
                        skipped_errors: 0,
                        bad_input: 0,
                        sink_records: 0,
                        sink_errors: 0,
                        sink_retries: 0,
                        in_per_second: 0.0,
                        out_per_second: 0.0,
                        latency_seconds: BTreeMap::new(),
                        steps: Vec::new(),
                        kafka_lag: 0,
                    });
                    pipelines.last_mut().expect("just pushed")
                }
            };
            if !p.source.is_empty() && !row.sources.contains(&p.source) {
                row.sources.push(p.source.clone());
            }
            if !p.sink.is_empty() && !row.sinks.contains(&p.sink) {
                row.sinks.push(p.sink.clone());
            }
            row.records_in += p.records_in;
            row.bytes_in += p.bytes_in;
            row.records_out += p.records_out;
            row.bytes_out += p.bytes_out;
            row.dropped += p.dropped;
            row.skipped_errors += p.skipped_errors;
            row.sink_records += p.sink_records;
            row.sink_errors += p.sink_errors;
            row.sink_retries += p.sink_retries;
            row.kafka_lag += p.kafka_lag.iter().map(|(_, l)| *l).sum::<i64>();
            row.bad_input += s
                .bad_input
                .iter()
                .filter(|b| b.pipeline == p.name)
                .map(|b| b.count)
                .sum::<u64>();
            for step in &p.steps {
                let srow = match row.steps.iter_mut().position(|r| r.name == step.name) {
                    Some(i) => &mut row.steps[i],
                    None => {
                        row.steps.push(StepStatus {
                            name: step.name.clone(),
                            kind: step.kind.clone(),
                            records_in: 0,
                            records_out: 0,
                            dropped: 0,
                            python_seconds: 0.0,
                            per_second: 0.0,
                            mean_seconds: None,
                            p50_seconds: None,
                            p99_seconds: None,
                        });
                        row.steps.last_mut().expect("just pushed")
                    }
                };
                srow.records_in += step.records_in;
                srow.records_out += step.records_out;
                srow.dropped += step.dropped;
                srow.python_seconds += step.python_seconds;
            }
        }
        let wp = point.workers.get(&s.worker).cloned().unwrap_or_default();
        let up = !known.lost && s.state != "finished" && known.age < 10.0;
        worker_rows.push(WorkerStatus {
            name: s.worker.clone(),
            index: s.index,
            address: cluster
                .get(s.index)
                .map(|(_, address)| address.clone())
                .unwrap_or_default(),
            state: s.state.clone(),
            up,
            serving: known.local,
            report_age_seconds: known.age,
            records_in: s.sum(|p| p.records_in),
            records_out: s.sum(|p| p.records_out),
            dropped: s.sum(|p| p.dropped),
            bad_input: s.bad_total(),
            in_per_second: wp.r#in,
            out_per_second: wp.out,
            epoch: s.epoch,
            epochs_completed: s.epochs_completed,
            state_keys: s.state_keys.clone(),
        });
    }
    for row in &mut pipelines {
        if let Some(pp) = point.total.pipelines.get(&row.name) {
            row.in_per_second = pp.r#in;
            row.out_per_second = pp.out;
            row.latency_seconds =
                BTreeMap::from([("p50", pp.p50), ("p95", pp.p95), ("p99", pp.p99)]);
            for step in &mut row.steps {
                if let Some(sp) = pp.steps.get(&step.name) {
                    step.per_second = sp.rate;
                    step.mean_seconds = sp.mean;
                    step.p50_seconds = sp.p50;
                    step.p99_seconds = sp.p99;
                }
            }
        }
    }
    recent.sort_by(|a, b| a.time.total_cmp(&b.time));
    let skip = recent.len().saturating_sub(metrics::RECENT_BAD_IN_SNAPSHOT);
    let recent: Vec<_> = recent.into_iter().skip(skip).collect();
    let local = &workers[0].snapshot;
    let state = if workers.iter().any(|w| w.snapshot.state == "running") {
        "running"
    } else {
        local.state.as_str()
    };
    Status {
        app: metrics::app_name(),
        scope: if everyone { "cluster" } else { "worker" },
        worker: local.worker.clone(),
        time: metrics::unix_seconds(),
        started: metrics::started(),
        state: state.to_owned(),
        expected_workers: if everyone {
            cluster.len().max(workers.len())
        } else {
            1
        },
        totals: Totals {
            records_in: workers
                .iter()
                .map(|w| w.snapshot.sum(|p| p.records_in))
                .sum(),
            records_out: workers
                .iter()
                .map(|w| w.snapshot.sum(|p| p.records_out))
                .sum(),
            dropped: workers.iter().map(|w| w.snapshot.sum(|p| p.dropped)).sum(),
            bad_input: workers.iter().map(|w| w.snapshot.bad_total()).sum(),
            errors: workers
                .iter()
                .map(|w| w.snapshot.sum(|p| p.skipped_errors))
                .sum(),
            sink_errors: workers
                .iter()
                .map(|w| w.snapshot.sum(|p| p.sink_errors))
                .sum(),
            in_per_second: point.total.r#in,
            out_per_second: point.total.out,
            bad_per_second: point.total.bad,
        },
        pipelines,
        workers: worker_rows,
        keys,
        bad_input: bad_by_kind,
        recent_bad_input: recent,
    }
}

// ---------------------------------------------------------------- server

/// The page's files, read once when the server starts.
struct Assets {
    files: BTreeMap<String, Vec<u8>>,
}

const FALLBACK_PAGE: &str = "<!doctype html><title>wallaroo metrics</title>\
<p>The web page's files were not found; <a href=\"/metrics\">/metrics</a> and \
<a href=\"/status\">/status</a> work.</p>";

impl Assets {
    fn load(dir: Option<PathBuf>) -> Assets {
        let mut files = BTreeMap::new();
        if let Some(dir) = dir {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                            continue;
                        };
                        if content_type(name).is_some() {
                            if let Ok(bytes) = std::fs::read(&path) {
                                files.insert(name.to_owned(), bytes);
                            }
                        }
                    }
                }
                Err(e) => log::warn!(
                    "metrics: cannot read the web page's files in {}: {e}",
                    dir.display()
                ),
            }
        }
        Assets { files }
    }
}

fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit('.').next()?;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    })
}

struct AppState {
    everyone: bool,
    assets: Assets,
    /// Host names answered besides IP literals and localhost.
    allowed_hosts: Vec<String>,
    /// Show recent bad input's payload previews on /status.
    previews: bool,
}

type Shared = State<Arc<AppState>>;

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn index(State(state): Shared) -> Response {
    match state.assets.files.get("index.html") {
        Some(page) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page.clone(),
        )
            .into_response(),
        None => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            FALLBACK_PAGE,
        )
            .into_response(),
    }
}

async fn asset(State(state): Shared, Path(name): Path<String>) -> Response {
    match (state.assets.files.get(&name), content_type(&name)) {
        (Some(bytes), Some(kind)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes.clone(),
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn prometheus(State(state): Shared) -> Response {
    let text = metrics::exposition(metrics::known_workers(state.everyone));
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

async fn status_json(State(state): Shared) -> Response {
    let mut status = status(state.everyone);
    if !state.previews {
        for bad in &mut status.recent_bad_input {
            bad.payload.clear();
        }
    }
    json(&status)
}

/// Whether a request's `Host` names this server: an IP literal, localhost,
/// or a name it was told (a page of another site whose name was rebound to
/// this address -- DNS rebinding -- names that site). No `Host` (HTTP/1.0
/// clients) passes: browsers always send one.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

async fn check_host(State(state): Shared, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{0}"));
    if host_allowed(host, &state.allowed_hosts) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers to its IP address, localhost or its own host name only\n",
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct Since {
    since: Option<f64>,
}

async fn history_json(State(state): Shared, Query(query): Query<Since>) -> Response {
    #[derive(Serialize)]
    struct Body {
        worker: String,
        points: Vec<Point>,
    }
    json(&Body {
        worker: metrics::worker_name(),
        points: history_since(query.since.unwrap_or(0.0), state.everyone),
    })
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/static/{name}", get(asset))
        .route("/metrics", get(prometheus))
        .route("/status", get(status_json))
        .route("/status/history", get(history_json))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state)
}

/// Connections served at once; more are closed as soon as they are
/// accepted, so the metrics page can never take the file descriptors the
/// data path needs.
const MAX_CONNECTIONS: usize = 64;
/// A request's headers must be in within this; it is also how long a
/// connection may sit idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long (after its current request).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a closing connection may take to finish its current request.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// Accept and serve until `shutdown`: one task per connection, at most
/// [`MAX_CONNECTIONS`], each with a header timeout and a lifetime.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    bound: SocketAddr,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused = false;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("metrics: accepting on {bound}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refused {
                log::warn!(
                    "metrics: {MAX_CONNECTIONS} connections open on {bound}; closing new ones \
                     until some end"
                );
                refused = true;
            }
            drop(stream);
            continue;
        };
        refused = false;
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            if tokio::time::timeout(CONNECTION_LIFETIME, connection.as_mut())
                .await
                .is_err()
            {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSING_GRACE, connection).await;
            }
            drop(slot);
        });
    }
}

struct Server {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Ticker {
    /// Dropped to stop the thread (it wakes at once).
    stop: crossbeam_channel::Sender<()>,
    thread: JoinHandle<()>,
}

static SERVERS: Mutex<Vec<Server>> = Mutex::new(Vec::new());
static TICKER: Mutex<Option<Ticker>> = Mutex::new(None);

fn start_ticker() -> std::io::Result<()> {
    let mut ticker = lock(&TICKER);
    if ticker.is_some() {
        return Ok(());
    }
    *lock(&HISTORY) = History::default();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("metrics history".to_owned())
        .spawn(move || {
            let mut next = Instant::now();
            loop {
                tick();
                next += Duration::from_secs(1);
                let wait = next.saturating_duration_since(Instant::now());
                if stopped.recv_timeout(wait) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                    return;
                }
            }
        })?;
    *ticker = Some(Ticker { stop, thread });
    Ok(())
}

/// Serve on `address` (`host:port`, port 0 for any); returns the bound address.
/// `everyone`: show every worker that reports (the initializer); else this
/// worker only.
pub fn serve(
    address: &str,
    static_dir: Option<PathBuf>,
    everyone: bool,
    allowed_hosts: Vec<String>,
    previews: bool,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let state = Arc::new(AppState {
        everyone,
        assets: Assets::load(static_dir),
        allowed_hosts,
        previews,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("metrics http {bound}"))
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                accept_loop(listener, router(state), bound, signal).await;
                std::io::Result::Ok(())
            });
            if let Err(e) = served {
                log::error!("metrics: the HTTP server on {bound} stopped: {e}");
            }
        })?;
    start_ticker()?;
    lock(&SERVERS).push(Server {
        address: bound,
        shutdown: Some(shutdown),
        thread: Some(thread),
    });
    Ok(bound)
}

/// Stop every server and the history (waits a moment for open connections).
pub fn stop_all() {
    let servers: Vec<Server> = lock(&SERVERS).drain(..).collect();
    for mut server in servers {
        if let Some(shutdown) = server.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = server.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::debug!("metrics: {} still has open connections", server.address);
            }
        }
    }
    if let Some(ticker) = lock(&TICKER).take() {
        drop(ticker.stop);
        let _ = ticker.thread.join();
    }
}

// ---------------------------------------------------------------- Python

/// Set this worker's name and application; `enabled` false turns the
/// per-step counts, sampled timings and latencies off (the plain counters stay).
#[pyfunction]
fn metrics_configure(enabled: bool, name: &str, app: &str) {
    metrics::configure(enabled, name, app);
}

/// The cluster's workers as `(name, data address)` by index.
#[pyfunction]
fn metrics_set_cluster(workers: Vec<(String, String)>) {
    metrics::set_cluster(workers);
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
    py.detach(|| serve(address, static_dir, everyone, allowed_hosts, previews))
        .map(|bound| bound.to_string())
        .map_err(|e| PyOSError::new_err(format!("cannot serve metrics on {address}: {e}")))
}

/// Stop the metrics servers.
#[pyfunction]
fn metrics_stop(py: Python<'_>) {
    py.detach(stop_all);
}

/// This worker's metrics now, as JSON (what workers report to the initializer).
#[pyfunction]
fn metrics_snapshot(py: Python<'_>) -> PyResult<String> {
    py.detach(|| serde_json::to_string(&metrics::local_snapshot()))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Store worker `name`'s report (JSON from its `metrics_snapshot`).
#[pyfunction]
fn metrics_report(name: &str, snapshot: &str) -> PyResult<()> {
    metrics::report_peer(name, snapshot).map_err(PyValueError::new_err)
}

/// Worker `name`'s control connection closed (`lost`) or it finished.
#[pyfunction]
#[pyo3(signature = (name, lost=true))]
fn metrics_peer_lost(name: &str, lost: bool) {
    metrics::peer_lost(name, lost);
}

/// Totals over every known worker, for the progress line.
#[pyfunction]
fn metrics_totals(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let totals = py.detach(metrics::totals);
    let dict = PyDict::new(py);
    dict.set_item("records_in", totals.records_in)?;
    dict.set_item("records_out", totals.records_out)?;
    dict.set_item("dropped", totals.dropped)?;
    dict.set_item("bad_input", totals.bad_input)?;
    dict.set_item("errors", totals.errors)?;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(time: f64, records: u64) -> WorkerSnapshot {
        let m = metrics::PipelineMetrics::with_steps(["s"]);
        metrics::PipelineMetrics::add(&m.records_in, records);
        m.set_sink_label("stdout");
        WorkerSnapshot {
            worker: "w".to_owned(),
            time,
            pipelines: vec![m.snapshot("p")],
            ..WorkerSnapshot::default()
        }
    }

    #[test]
    fn only_ip_literals_localhost_and_named_hosts_pass() {
        let named = vec!["metrics.internal".to_owned()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:9000",
            "[::1]:9000",
            "10.1.2.3",
            "localhost:80",
            "LOCALHOST",
            "app.localhost",
            "metrics.internal:9000",
            "metrics.internal.",
        ] {
            assert!(host_allowed(Some(host), &named), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9000",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!host_allowed(Some(host), &named), "{host}");
        }
        assert!(host_allowed(None, &named));
    }

    #[test]
    fn rates_come_from_the_two_newest_snapshots() {
        let window: VecDeque<_> = [snapshot(10.0, 0), snapshot(11.0, 100), snapshot(13.0, 500)]
            .into_iter()
            .collect();
        let (point, _) = worker_point(&window, false);
        assert_eq!(point.r#in, 200.0);
        assert_eq!(point.pipelines["p"].r#in, 200.0);
        let (stale, _) = worker_point(&window, true);
        assert_eq!(stale.r#in, 0.0);
    }
}
