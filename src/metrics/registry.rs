//! The process's metrics: this process's run and identity, and the last
//! report of every other worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use super::clock::unix_seconds;
use super::counters::{EpochMetrics, PipelineMetrics};
use super::server::Servers;
use super::snapshot::{BadCount, KnownWorker, RecentBad, Totals, WindowSnapshot, WorkerSnapshot};
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
    windows: Mutex<BTreeMap<String, WindowSnapshot>>,
    running: AtomicBool,
    /// Whether the per-step counts, timings and latencies are kept (the
    /// process's setting when the run began).
    detailed: bool,
}

impl Default for RunMetrics {
    /// The counters of a run nothing reads (tests, the control before a run).
    fn default() -> Self {
        RunMetrics::new(0, 1, &Arc::default(), true)
    }
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

/// The metrics of this process: its identity, its run's counters, the last
/// report of every other worker, and the servers showing them.
///
/// One per process ([`registry`]), and the only process-wide metrics state:
/// the extension's Python functions (`metrics_configure`, `metrics_report`,
/// `metrics_totals`, `metrics_serve`, `metrics_stop`, ...) are called by the
/// runner's threads (control channel, progress line, shutdown) before,
/// during and after a run, with nothing to hold a handle in. A run's entry
/// registers the run's counters here ([`begin_run`]) for them and the HTTP
/// server to read; the run's own code reaches its counters through the
/// run's handle (`control::RunControl::counters`), never through this.
/// Everything below it (a run's counters, the history, a server's state) is
/// handed down as a handle; a `Registry` of its own serves the unit tests.
pub struct Registry {
    enabled: AtomicBool,
    identity: Mutex<Identity>,
    run: Mutex<Option<Arc<RunMetrics>>>,
    peers: Mutex<BTreeMap<String, Peer>>,
    cluster: Mutex<Vec<(String, String)>>,
    started: f64,
    /// The HTTP servers and their history (see [`super::server::serve`]).
    pub(super) servers: Mutex<Servers>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The process's registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry: detailed metrics on, named `initializer`, no run.
    pub fn new() -> Registry {
        Registry {
            enabled: AtomicBool::new(true),
            identity: Mutex::new(Identity {
                name: "initializer".to_owned(),
                app: String::new(),
            }),
            run: Mutex::new(None),
            peers: Mutex::new(BTreeMap::new()),
            cluster: Mutex::new(Vec::new()),
            started: unix_seconds(),
            servers: Mutex::new(Servers::default()),
        }
    }

    /// Whether the per-step counts, timings and latencies are kept.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Set this process's name and application, turn the detailed metrics on
    /// or off, and forget the workers of a previous run.
    pub fn configure(&self, enabled: bool, name: &str, app: &str) {
        self.enabled.store(enabled, Ordering::Relaxed);
        *lock(&self.identity) = Identity {
            name: name.to_owned(),
            app: app.to_owned(),
        };
        lock(&self.peers).clear();
        lock(&self.cluster).clear();
    }

    /// The cluster's workers (names and data addresses, by index).
    pub fn set_cluster(&self, workers: Vec<(String, String)>) {
        *lock(&self.cluster) = workers;
    }

    /// The run on this process, if one began.
    pub fn current_run(&self) -> Option<Arc<RunMetrics>> {
        lock(&self.run).clone()
    }

    /// A run starts on this process: counters start from zero.
    pub fn begin_run(&self, index: usize, peers: usize, bad: &Arc<BadInput>) -> Arc<RunMetrics> {
        let run = Arc::new(RunMetrics::new(index, peers, bad, self.enabled()));
        *lock(&self.run) = Some(run.clone());
        run
    }

    /// Store another worker's report (the initializer gets one a second).
    pub fn report_peer(&self, name: &str, snapshot: &str) -> Result<(), String> {
        let mut snapshot: WorkerSnapshot =
            serde_json::from_str(snapshot).map_err(|e| format!("bad metrics report: {e}"))?;
        snapshot.worker = name.to_owned();
        lock(&self.peers).insert(
            name.to_owned(),
            Peer {
                snapshot,
                received: Instant::now(),
                lost: false,
            },
        );
        Ok(())
    }

    /// Another worker's control connection closed (`lost`) or it finished.
    pub fn peer_lost(&self, name: &str, lost: bool) {
        let mut peers = lock(&self.peers);
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
    pub fn app_name(&self) -> String {
        lock(&self.identity).app.clone()
    }

    /// This process's worker name.
    pub fn worker_name(&self) -> String {
        lock(&self.identity).name.clone()
    }

    /// When this process started measuring (Unix seconds).
    pub fn started(&self) -> f64 {
        self.started
    }

    /// The cluster's workers (name, data address) by index; empty for one
    /// process.
    pub fn cluster(&self) -> Vec<(String, String)> {
        lock(&self.cluster).clone()
    }

    /// This process's snapshot now.
    pub fn local_snapshot(&self) -> WorkerSnapshot {
        let name = self.worker_name();
        let Some(run) = self.current_run() else {
            return WorkerSnapshot {
                worker: name,
                time: unix_seconds(),
                started: self.started,
                state: "starting".to_owned(),
                workers: lock(&self.cluster).len().max(1),
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
                payload_bytes: r.payload_bytes as u64,
            })
            .collect();
        let mut state_keys = BTreeMap::new();
        for (state, keys) in lock(&run.state_keys).iter() {
            *state_keys.entry(state.clone()).or_insert(0) += keys.load(Ordering::Relaxed);
        }
        let time = unix_seconds();
        let windows = lock(&run.windows)
            .values()
            .map(|w| w.clone().at(time))
            .collect();
        WorkerSnapshot {
            worker: name,
            index: run.index,
            workers: run.peers,
            time,
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
            windows,
        }
    }

    /// This process's snapshot, then (with `everyone`) the last report of
    /// every other worker, by index.
    pub fn known_workers(&self, everyone: bool) -> Vec<KnownWorker> {
        let mut workers = vec![KnownWorker {
            snapshot: self.local_snapshot(),
            local: true,
            age: 0.0,
            lost: false,
        }];
        if everyone {
            for peer in lock(&self.peers).values() {
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
    pub fn totals(&self) -> Totals {
        Totals::over(&self.known_workers(true))
    }
}

impl RunMetrics {
    /// The counters of worker `index` of `peers`, from zero; `detailed`:
    /// whether the per-step counts, timings and latencies are kept.
    pub fn new(index: usize, peers: usize, bad: &Arc<BadInput>, detailed: bool) -> RunMetrics {
        RunMetrics {
            index,
            peers,
            started: unix_seconds(),
            pipelines: Mutex::new(Vec::new()),
            bad: bad.clone(),
            epochs: EpochMetrics::default(),
            state_keys: Mutex::new(Vec::new()),
            windows: Mutex::new(BTreeMap::new()),
            running: AtomicBool::new(true),
            detailed,
        }
    }

    /// Whether the per-step counts, timings and latencies are kept.
    pub fn detailed(&self) -> bool {
        self.detailed
    }

    /// The run's record of bad input (counted in its snapshots).
    pub fn bad_input(&self) -> &Arc<BadInput> {
        &self.bad
    }

    /// The counters of a pipeline of this run, with its steps.
    pub fn register_pipeline<'a>(
        &self,
        name: &str,
        steps: impl IntoIterator<Item = &'a str>,
    ) -> Arc<PipelineMetrics> {
        let mut metrics = PipelineMetrics::with_steps(steps);
        metrics.detailed = self.detailed;
        let metrics = Arc::new(metrics);
        lock(&self.pipelines).push((name.to_owned(), metrics.clone()));
        metrics
    }

    /// The number of keys of state `name` held on this worker, kept up to
    /// date by the state store (an increment per new key).
    pub fn state_keys(&self, name: &str) -> Arc<AtomicU64> {
        let keys = Arc::new(AtomicU64::new(0));
        lock(&self.state_keys).push((name.to_owned(), keys.clone()));
        keys
    }

    /// A window stage's counts now (its stage names it).
    pub fn report_windows(&self, window: WindowSnapshot) {
        lock(&self.windows).insert(window.stage.clone(), window);
    }

    /// The run ended (its counters stay visible).
    pub fn end(&self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// A run starts on this process: its counters, from zero, registered for the
/// Python-facing functions and the HTTP server to read (the run's entry
/// hands them down in the run's handle).
pub fn begin_run(index: usize, peers: usize, bad: &Arc<BadInput>) -> Arc<RunMetrics> {
    REGISTRY.begin_run(index, peers, bad)
}
