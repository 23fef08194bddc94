//! The process's metrics: this process's run and identity, and the last
//! report of every other worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use super::clock::unix_seconds;
use super::counters::{EpochMetrics, PipelineMetrics};
use super::snapshot::{BadCount, KnownWorker, RecentBad, Totals, WorkerSnapshot};
use crate::bad_input::BadInput;
use crate::errors::shorten;
use crate::sync::lock;

/// Bad records a snapshot carries (the newest).
pub const RECENT_BAD_IN_SNAPSHOT: usize = 20;

/// Everything one run on this process measures.
pub struct RunMetrics {
    /// This worker's index in the cluster.
    pub index: usize,
    /// Workers in the cluster.
    pub peers: usize,
    started: f64,
    pipelines: Mutex<Vec<(String, Arc<PipelineMetrics>)>>,
    bad: Arc<BadInput>,
    /// Epoch progress.
    pub epochs: EpochMetrics,
    state_keys: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    running: AtomicBool,
}

/// This process's identity in the metrics.
#[derive(Debug, Clone, Default)]
struct Identity {
    name: String,
    app: String,
}

/// Another worker's last report.
struct Peer {
    snapshot: WorkerSnapshot,
    received: Instant,
    lost: bool,
}

/// The process-wide metrics state.
struct Hub {
    enabled: AtomicBool,
    identity: Mutex<Identity>,
    run: Mutex<Option<Arc<RunMetrics>>>,
    peers: Mutex<BTreeMap<String, Peer>>,
    cluster: Mutex<Vec<(String, String)>>,
    started: f64,
}

static HUB: LazyLock<Hub> = LazyLock::new(|| Hub {
    enabled: AtomicBool::new(true),
    identity: Mutex::new(Identity {
        name: "initializer".to_owned(),
        app: String::new(),
    }),
    run: Mutex::new(None),
    peers: Mutex::new(BTreeMap::new()),
    cluster: Mutex::new(Vec::new()),
    started: unix_seconds(),
});

/// Whether the per-step counts, timings and latencies are kept.
pub fn enabled() -> bool {
    HUB.enabled.load(Ordering::Relaxed)
}

/// Set this process's name and application, turn the detailed metrics on or
/// off, and forget the workers of a previous run.
pub fn configure(enabled: bool, name: &str, app: &str) {
    HUB.enabled.store(enabled, Ordering::Relaxed);
    *lock(&HUB.identity) = Identity {
        name: name.to_owned(),
        app: app.to_owned(),
    };
    lock(&HUB.peers).clear();
    lock(&HUB.cluster).clear();
}

/// The cluster's workers (names and data addresses, by index).
pub fn set_cluster(workers: Vec<(String, String)>) {
    *lock(&HUB.cluster) = workers;
}

pub(super) fn current_run() -> Option<Arc<RunMetrics>> {
    lock(&HUB.run).clone()
}

/// A run starts on this process: counters start from zero.
pub fn begin_run(index: usize, peers: usize, bad: &Arc<BadInput>) {
    *lock(&HUB.run) = Some(Arc::new(RunMetrics {
        index,
        peers,
        started: unix_seconds(),
        pipelines: Mutex::new(Vec::new()),
        bad: bad.clone(),
        epochs: EpochMetrics::default(),
        state_keys: Mutex::new(Vec::new()),
        running: AtomicBool::new(true),
    }));
}

/// The run on this process ended (its counters stay visible).
pub fn end_run() {
    if let Some(run) = current_run() {
        run.running.store(false, Ordering::Relaxed);
    }
}

/// The counters of a pipeline of the current run, with its steps.
pub fn register_pipeline<'a>(
    name: &str,
    steps: impl IntoIterator<Item = &'a str>,
) -> Arc<PipelineMetrics> {
    let metrics = Arc::new(PipelineMetrics::with_steps(steps));
    if let Some(run) = current_run() {
        lock(&run.pipelines).push((name.to_owned(), metrics.clone()));
    }
    metrics
}

/// The number of keys of state `name` held on this worker, kept up to date
/// by the state store (an increment per new key).
pub fn state_keys(name: &str) -> Arc<AtomicU64> {
    let keys = Arc::new(AtomicU64::new(0));
    if let Some(run) = current_run() {
        lock(&run.state_keys).push((name.to_owned(), keys.clone()));
    }
    keys
}

/// Store another worker's report (the initializer gets one a second).
pub fn report_peer(name: &str, snapshot: &str) -> Result<(), String> {
    let mut snapshot: WorkerSnapshot =
        serde_json::from_str(snapshot).map_err(|e| format!("bad metrics report: {e}"))?;
    snapshot.worker = name.to_owned();
    lock(&HUB.peers).insert(
        name.to_owned(),
        Peer {
            snapshot,
            received: Instant::now(),
            lost: false,
        },
    );
    Ok(())
}

/// Another worker's control connection closed.
pub fn peer_lost(name: &str, lost: bool) {
    let mut peers = lock(&HUB.peers);
    match peers.get_mut(name) {
        Some(peer) => peer.lost = lost,
        None if lost => {
            peers.insert(
                name.to_owned(),
                Peer {
                    snapshot: WorkerSnapshot {
                        worker: name.to_owned(),
                        state: "lost".to_owned(),
                        ..WorkerSnapshot::default()
                    },
                    received: Instant::now(),
                    lost,
                },
            );
        }
        None => {}
    }
}

/// The application's name.
pub fn app_name() -> String {
    lock(&HUB.identity).app.clone()
}

/// This process's worker name.
pub fn worker_name() -> String {
    lock(&HUB.identity).name.clone()
}

/// When this process started measuring (Unix seconds).
pub fn started() -> f64 {
    HUB.started
}

/// The cluster's workers (name, data address) by index; empty for one process.
pub fn cluster() -> Vec<(String, String)> {
    lock(&HUB.cluster).clone()
}

/// This process's snapshot now.
pub fn local_snapshot() -> WorkerSnapshot {
    let name = worker_name();
    let Some(run) = current_run() else {
        return WorkerSnapshot {
            worker: name,
            time: unix_seconds(),
            started: HUB.started,
            state: "starting".to_owned(),
            workers: lock(&HUB.cluster).len().max(1),
            ..WorkerSnapshot::default()
        };
    };
    let pipelines = lock(&run.pipelines)
        .iter()
        .map(|(name, m)| m.snapshot(name))
        .collect();
    let bad_input = run
        .bad
        .counts_by_pipeline()
        .into_iter()
        .map(|(pipeline, kind, count)| BadCount {
            pipeline,
            kind,
            count,
        })
        .collect();
    let recent_bad = run
        .bad
        .newest(RECENT_BAD_IN_SNAPSHOT)
        .into_iter()
        .map(|r| RecentBad {
            time: r.time,
            pipeline: r.pipeline,
            position: r.position,
            kind: r.kind,
            error: shorten(r.error.lines().last().unwrap_or(&r.error), 300),
            payload: r.payload_preview,
        })
        .collect();
    let mut state_keys = BTreeMap::new();
    for (state, keys) in lock(&run.state_keys).iter() {
        *state_keys.entry(state.clone()).or_insert(0) += keys.load(Ordering::Relaxed);
    }
    WorkerSnapshot {
        worker: name,
        index: run.index,
        workers: run.peers,
        time: unix_seconds(),
        started: run.started,
        state: if run.running.load(Ordering::Relaxed) {
            "running"
        } else {
            "finished"
        }
        .to_owned(),
        epoch: run.epochs.current.load(Ordering::Relaxed),
        epochs_completed: run.epochs.completed.load(Ordering::Relaxed),
        epoch_duration: run.epochs.durations.snapshot(),
        pipelines,
        bad_input,
        dead_letter_failed: run.bad.dead_letter_failed(),
        recent_bad,
        state_keys,
    }
}

/// This process's snapshot, then (with `everyone`) the last report of every
/// other worker, by index.
pub fn known_workers(everyone: bool) -> Vec<KnownWorker> {
    let mut workers = vec![KnownWorker {
        snapshot: local_snapshot(),
        local: true,
        age: 0.0,
        lost: false,
    }];
    if everyone {
        for peer in lock(&HUB.peers).values() {
            let mut snapshot = peer.snapshot.clone();
            if peer.lost && snapshot.state != "finished" {
                snapshot.state = "lost".to_owned();
            }
            workers.push(KnownWorker {
                snapshot,
                local: false,
                age: peer.received.elapsed().as_secs_f64(),
                lost: peer.lost,
            });
        }
        workers.sort_by_key(|w| w.snapshot.index);
    }
    workers
}

/// Totals over every known worker.
pub fn totals() -> Totals {
    let mut totals = Totals::default();
    for worker in known_workers(true) {
        let s = &worker.snapshot;
        totals.workers += 1;
        totals.records_in += s.sum(|p| p.records_in);
        totals.records_out += s.sum(|p| p.records_out);
        totals.dropped += s.sum(|p| p.dropped);
        totals.bad_input += s.bad_total();
        totals.errors += s.sum(|p| p.skipped_errors + p.sink_errors);
        totals.kafka_lag += s
            .pipelines
            .iter()
            .flat_map(|p| p.kafka_lag.iter().map(|(_, lag)| *lag))
            .sum::<i64>();
    }
    totals
}
