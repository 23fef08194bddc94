//! The `/status` document: the application, its pipelines and steps, the
//! workers and the keys they hold, current rates, recent bad input.

use std::collections::BTreeMap;

use serde::Serialize;

use super::clock::unix_seconds;
use super::history::Point;
use super::registry::{Registry, RECENT_BAD_IN_SNAPSHOT};
use super::snapshot::{PipelineSnapshot, RecentBad, Totals, WindowSnapshot, WorkerSnapshot};

#[derive(Default, Serialize)]
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

#[derive(Default, Serialize)]
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

/// A window stage on one worker.
#[derive(Serialize)]
struct WindowOnWorker {
    worker: String,
    #[serde(flatten)]
    window: WindowSnapshot,
}

/// `pick` of the two when both are known, else the one known.
fn either(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// A window stage: sums over the workers, and each worker's own.
#[derive(Default, Serialize)]
struct WindowStatus {
    stage: String,
    pipeline: String,
    step: String,
    kind: String,
    open: u64,
    fired: u64,
    late_events: u64,
    /// The lowest watermark of the workers (each fires by its own).
    watermark: Option<f64>,
    /// The largest lag of a worker's watermark behind its clock.
    watermark_lag_seconds: Option<f64>,
    workers: Vec<WindowOnWorker>,
}

impl WindowStatus {
    /// Add worker `worker`'s report of this stage.
    fn add(&mut self, worker: &str, w: &WindowSnapshot) {
        self.open += w.open;
        self.fired += w.fired;
        self.late_events += w.late_events;
        self.watermark = either(self.watermark, w.watermark, f64::min);
        self.watermark_lag_seconds = either(
            self.watermark_lag_seconds,
            w.watermark_lag_seconds,
            f64::max,
        );
        self.workers.push(WindowOnWorker {
            worker: worker.to_owned(),
            window: w.clone(),
        });
    }
}

/// The sums over workers and the current rates.
#[derive(Serialize)]
struct StatusTotals {
    #[serde(flatten)]
    sums: Totals,
    in_per_second: f64,
    out_per_second: f64,
    bad_per_second: f64,
}

#[derive(Serialize)]
pub(super) struct Status {
    app: String,
    scope: &'static str,
    worker: String,
    time: f64,
    started: f64,
    state: String,
    expected_workers: usize,
    totals: StatusTotals,
    pipelines: Vec<PipelineStatus>,
    workers: Vec<WorkerStatus>,
    keys: BTreeMap<String, BTreeMap<String, u64>>,
    /// Window stages (empty without windows).
    windows: Vec<WindowStatus>,
    bad_input: BTreeMap<String, u64>,
    pub(super) recent_bad_input: Vec<RecentBad>,
    /// Whether `recent_bad_input` carries payload previews
    /// (`--bad-input-previews`); without them each `payload` is empty.
    pub(super) payload_previews: bool,
}

/// The row named `name`, added at the end (`new`) if there is none yet.
fn row_named<'a, T>(
    rows: &'a mut Vec<T>,
    name: &str,
    name_of: impl Fn(&T) -> &String,
    new: impl FnOnce() -> T,
) -> &'a mut T {
    let i = match rows.iter().position(|r| name_of(r) == name) {
        Some(i) => i,
        None => {
            rows.push(new());
            rows.len() - 1
        }
    };
    &mut rows[i]
}

impl PipelineStatus {
    /// Add worker `s`'s counts of this pipeline (`p`).
    fn add(&mut self, s: &WorkerSnapshot, p: &PipelineSnapshot) {
        if !p.source.is_empty() && !self.sources.contains(&p.source) {
            self.sources.push(p.source.clone());
        }
        if !p.sink.is_empty() && !self.sinks.contains(&p.sink) {
            self.sinks.push(p.sink.clone());
        }
        self.records_in += p.records_in;
        self.bytes_in += p.bytes_in;
        self.records_out += p.records_out;
        self.bytes_out += p.bytes_out;
        self.dropped += p.dropped;
        self.skipped_errors += p.skipped_errors;
        self.sink_records += p.sink_records;
        self.sink_errors += p.sink_errors;
        self.sink_retries += p.sink_retries;
        self.kafka_lag += p.kafka_lag.iter().map(|(_, l)| *l).sum::<i64>();
        self.bad_input += s
            .bad_input
            .iter()
            .filter(|b| b.pipeline == p.name)
            .map(|b| b.count)
            .sum::<u64>();
        for step in &p.steps {
            let row = row_named(
                &mut self.steps,
                &step.name,
                |r| &r.name,
                || StepStatus {
                    name: step.name.clone(),
                    kind: step.kind.clone(),
                    ..StepStatus::default()
                },
            );
            row.records_in += step.records_in;
            row.records_out += step.records_out;
            row.dropped += step.dropped;
            row.python_seconds += step.python_seconds;
        }
    }
}

/// The status of this worker (or, with `everyone`, of every worker that
/// reports) with the rates of `point`, the history's newest.
pub(super) fn status(registry: &Registry, point: &Point, everyone: bool) -> Status {
    let workers = registry.known_workers(everyone);
    let cluster = registry.cluster();
    let mut pipelines: Vec<PipelineStatus> = Vec::new();
    let mut keys: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut bad_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut recent = Vec::new();
    let mut worker_rows = Vec::new();
    let mut windows: Vec<WindowStatus> = Vec::new();
    for known in &workers {
        let s = &known.snapshot;
        for w in &s.windows {
            let row = row_named(
                &mut windows,
                &w.stage,
                |r| &r.stage,
                || WindowStatus {
                    stage: w.stage.clone(),
                    pipeline: w.pipeline.clone(),
                    step: w.step.clone(),
                    kind: w.kind.clone(),
                    ..WindowStatus::default()
                },
            );
            row.add(&s.worker, w);
        }
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
            let row = row_named(
                &mut pipelines,
                &p.name,
                |r| &r.name,
                || PipelineStatus {
                    name: p.name.clone(),
                    ..PipelineStatus::default()
                },
            );
            row.add(s, p);
        }
        let wp = point.workers.get(&s.worker).cloned().unwrap_or_default();
        worker_rows.push(WorkerStatus {
            name: s.worker.clone(),
            index: s.index,
            address: cluster
                .get(s.index)
                .map(|(_, address)| address.clone())
                .unwrap_or_default(),
            state: s.state.clone(),
            up: known.is_up(),
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
    let skip = recent.len().saturating_sub(RECENT_BAD_IN_SNAPSHOT);
    let recent: Vec<_> = recent.into_iter().skip(skip).collect();
    let local = &workers[0].snapshot;
    let state = if workers.iter().any(|w| w.snapshot.state == "running") {
        "running"
    } else {
        local.state.as_str()
    };
    Status {
        app: registry.app_name(),
        scope: if everyone { "cluster" } else { "worker" },
        worker: local.worker.clone(),
        time: unix_seconds(),
        started: registry.started(),
        state: state.to_owned(),
        expected_workers: if everyone {
            cluster.len().max(workers.len())
        } else {
            1
        },
        totals: StatusTotals {
            sums: Totals::over(&workers),
            in_per_second: point.total.r#in,
            out_per_second: point.total.out,
            bad_per_second: point.total.bad,
        },
        pipelines,
        workers: worker_rows,
        keys,
        windows,
        bad_input: bad_by_kind,
        recent_bad_input: recent,
        payload_previews: true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::bad_input::BadInput;
    use crate::metrics::counters::PipelineMetrics;
    use crate::metrics::history::WorkerPoint;

    /// Worker `index`'s report of the window stage `app/w`.
    fn window(index: u64) -> WindowSnapshot {
        WindowSnapshot {
            stage: "app/w".to_owned(),
            pipeline: "p".to_owned(),
            step: "Sum".to_owned(),
            kind: "event_time".to_owned(),
            open: 2 + index,
            fired: 10 * (index + 1),
            late_events: index,
            watermark: Some(1_000.0 + index as f64),
            ..WindowSnapshot::default()
        }
        .at(1_010.0)
    }

    /// Worker `index`'s report, as the control channel brings it.
    fn report(index: usize, records_in: u64, sink_errors: u64) -> String {
        let m = PipelineMetrics::with_steps(["double"]);
        m.set_source_label(&format!("file in{index}.txt"));
        PipelineMetrics::add(&m.records_in, records_in);
        PipelineMetrics::add(&m.sink_errors, sink_errors);
        let snapshot = WorkerSnapshot {
            index,
            workers: 3,
            state: "running".to_owned(),
            pipelines: vec![m.snapshot("p")],
            windows: vec![window(index as u64)],
            ..WorkerSnapshot::default()
        };
        serde_json::to_string(&snapshot).expect("a snapshot is JSON")
    }

    /// A three-worker cluster seen from the initializer: itself (with a
    /// run), worker-1 reporting, worker-2 lost.
    fn cluster_registry() -> (Registry, Arc<BadInput>) {
        let registry = Registry::new();
        registry.configure(true, "initializer", "celsius");
        registry.set_cluster(
            (0..3)
                .map(|i| (format!("w{i}"), format!("127.0.0.1:700{i}")))
                .collect(),
        );
        let bad = Arc::new(BadInput::new(None).expect("no dead-letter file"));
        let run = registry.begin_run(0, 3, &bad);
        let m = run.register_pipeline("p", ["double"]);
        m.set_source_label("file in0.txt");
        PipelineMetrics::add(&m.records_in, 10);
        PipelineMetrics::add(&m.skipped_errors, 1);
        run.state_keys("counts")
            .fetch_add(4, std::sync::atomic::Ordering::Relaxed);
        bad.keep("p", "in0.txt:3", "decode_error", "ValueError: x", b"xx");
        run.report_windows(window(0));
        for (name, index, records_in, sink_errors) in
            [("worker-1", 1, 20, 2), ("worker-2", 2, 30, 0)]
        {
            registry
                .report_peer(name, &report(index, records_in, sink_errors))
                .expect("a good report");
        }
        registry.peer_lost("worker-2", true);
        (registry, bad)
    }

    fn point(records_per_second: f64) -> Point {
        Point {
            total: WorkerPoint {
                r#in: records_per_second,
                ..WorkerPoint::default()
            },
            ..Point::default()
        }
    }

    #[test]
    fn the_cluster_status_sums_every_worker_and_shows_the_lost_one_down() {
        let (registry, _bad) = cluster_registry();
        let status = serde_json::to_value(status(&registry, &point(5.0), true)).expect("JSON");
        assert_eq!(status["app"], "celsius");
        assert_eq!(status["scope"], "cluster");
        assert_eq!(status["state"], "running");
        assert_eq!(status["expected_workers"], 3);
        assert_eq!(
            status["totals"],
            json!({
                "records_in": 60, "records_out": 0, "dropped": 0, "bad_input": 1,
                "errors": 1, "sink_errors": 2,
                "in_per_second": 5.0, "out_per_second": 0.0, "bad_per_second": 0.0,
            })
        );
        let workers = status["workers"].as_array().expect("workers");
        let column = |key: &str| {
            workers
                .iter()
                .map(|w| w[key].clone())
                .collect::<Vec<Value>>()
        };
        assert_eq!(
            column("name"),
            [json!("initializer"), json!("worker-1"), json!("worker-2")]
        );
        assert_eq!(column("up"), [json!(true), json!(true), json!(false)]);
        assert_eq!(
            column("state"),
            [json!("running"), json!("running"), json!("lost")]
        );
        assert_eq!(column("serving"), [json!(true), json!(false), json!(false)]);
        assert_eq!(workers[2]["address"], "127.0.0.1:7002");
        let pipelines = status["pipelines"].as_array().expect("pipelines");
        assert_eq!(pipelines.len(), 1);
        assert_eq!(
            pipelines[0]["sources"],
            json!(["file in0.txt", "file in1.txt", "file in2.txt"])
        );
        assert_eq!(pipelines[0]["records_in"], 60);
        assert_eq!(pipelines[0]["bad_input"], 1);
        assert_eq!(pipelines[0]["steps"][1]["name"], "double");
        assert_eq!(status["keys"], json!({"counts": {"initializer": 4}}));
        assert_eq!(status["bad_input"], json!({"decode_error": 1}));
        assert_eq!(status["recent_bad_input"][0]["position"], "in0.txt:3");
        // The window stage: sums, the lowest watermark, each worker's report.
        let windows = status["windows"].as_array().expect("windows");
        assert_eq!(windows.len(), 1);
        let w = &windows[0];
        assert_eq!(
            (&w["pipeline"], &w["step"], &w["kind"]),
            (&json!("p"), &json!("Sum"), &json!("event_time"))
        );
        assert_eq!(
            (&w["open"], &w["fired"], &w["late_events"]),
            (&json!(9), &json!(60), &json!(3))
        );
        assert_eq!(w["watermark"], 1_000.0);
        // The local report's lags are taken now, the others' at their report.
        let lags: Vec<f64> = w["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter_map(|r| r["watermark_lag_seconds"].as_f64())
            .collect();
        assert_eq!(lags[1..], [9.0, 8.0]);
        assert!(lags[0] > 1e8, "{lags:?}");
        assert_eq!(w["watermark_lag_seconds"].as_f64(), Some(lags[0]));
        let per_worker: Vec<(Value, Value)> = w["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|r| (r["worker"].clone(), r["fired"].clone()))
            .collect();
        assert_eq!(
            per_worker,
            [
                (json!("initializer"), json!(10)),
                (json!("worker-1"), json!(20)),
                (json!("worker-2"), json!(30))
            ]
        );
    }

    #[test]
    fn a_worker_view_shows_only_the_worker() {
        let (registry, _bad) = cluster_registry();
        let status = serde_json::to_value(status(&registry, &point(0.0), false)).expect("JSON");
        assert_eq!(status["scope"], "worker");
        assert_eq!(status["expected_workers"], 1);
        assert_eq!(status["workers"].as_array().map(Vec::len), Some(1));
        assert_eq!(status["totals"]["records_in"], 10);
    }
}
