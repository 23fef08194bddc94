//! Control of one run from outside its worker: stop requests (the runner's
//! signal handlers), aborts (the cluster's control channel, a failed Kafka
//! commit), a new membership, and the generation counters the runner reads;
//! and the run's metrics counters.
//!
//! A run makes one [`RunControl`] and hands it down to everything that reads
//! or sets these (cluster, worker, chains, sinks, state stores) as a
//! [`RunHandle`].

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::RunMetrics;
use crate::sync::lock;

/// The run's control, shared by everything that runs for it.
pub type RunHandle = Arc<RunControl>;

/// Finish what the sources have read, then end.
const STOP_DRAIN: u8 = 1;
/// A second signal: stop without finishing.
const STOP_AT_ONCE: u8 = 2;

/// A cluster membership announced while the application runs (a worker
/// joins or leaves): the current generation ends and the next one starts.
#[derive(Debug, Clone)]
pub struct NextMembership {
    /// This process's index in the next generation; None when it leaves.
    pub index: Option<usize>,
    /// Data addresses of the next generation, by index.
    pub addresses: Vec<String>,
    /// Worker names of the next generation, by index.
    pub names: Vec<String>,
}

/// What can be asked of a running worker from outside it, and what it tells.
#[derive(Default)]
pub struct RunControl {
    /// Set by the runner's signal handlers (Ctrl-C, SIGTERM): a flag, not an
    /// exception, so user code that happens to run when the signal arrives
    /// is not interrupted. 0 (none), [`STOP_DRAIN`] or [`STOP_AT_ONCE`].
    stop_request: AtomicU8,
    /// A reason to stop the run with an error (a lost cluster member).
    abort: Mutex<Option<String>>,
    /// The next membership, until the worker takes it.
    reconfigure: Mutex<Option<NextMembership>>,
    /// Generations (timely instances) this process has started.
    generation: AtomicU64,
    /// The last generation whose workers all connected.
    connected_generation: AtomicU64,
    /// The run's counters (registered with the process's metrics registry
    /// for the HTTP server; the run's code reaches them here).
    counters: Arc<RunMetrics>,
}

impl RunControl {
    /// A fresh control whose counters nothing reads (before a run, tests).
    pub fn new() -> RunHandle {
        Arc::new(RunControl::default())
    }

    /// A fresh control for a new run counting into `counters`.
    pub fn with_counters(counters: Arc<RunMetrics>) -> RunHandle {
        Arc::new(RunControl {
            counters,
            ..RunControl::default()
        })
    }

    /// The run's counters.
    pub fn counters(&self) -> &Arc<RunMetrics> {
        &self.counters
    }

    /// Ask the running worker to stop cleanly, or (`at_once`, a second
    /// signal) without finishing what was read.
    pub fn request_stop(&self, at_once: bool) {
        let level = if at_once { STOP_AT_ONCE } else { STOP_DRAIN };
        self.stop_request.fetch_max(level, Ordering::Relaxed);
    }

    /// Whether a stop was requested (either kind).
    pub fn stop_requested(&self) -> bool {
        self.stop_request.load(Ordering::Relaxed) >= STOP_DRAIN
    }

    /// Whether a second signal asked the run to stop at once: a step failure
    /// is then the interruption (a KeyboardInterrupt raised in user code),
    /// never skipped and never reported as the step's own failure.
    pub fn stopping_at_once(&self) -> bool {
        self.stop_request.load(Ordering::Relaxed) >= STOP_AT_ONCE
    }

    /// Ask the running worker to stop with an error (e.g. a lost cluster
    /// member); the first reason given is kept.
    pub fn abort(&self, reason: String) {
        lock(&self.abort).get_or_insert(reason);
    }

    /// Take the reason the run is being aborted, if it is.
    pub fn take_abort(&self) -> Option<String> {
        lock(&self.abort).take()
    }

    /// The reason the run is being aborted, if it is (left in place).
    pub fn peek_abort(&self) -> Option<String> {
        lock(&self.abort).clone()
    }

    /// Whether the run is being aborted.
    pub fn pending_abort(&self) -> bool {
        lock(&self.abort).is_some()
    }

    /// Announce the next membership to the running worker.
    pub fn reconfigure(&self, next: NextMembership) {
        *lock(&self.reconfigure) = Some(next);
    }

    /// Take the announced next membership, if any.
    pub fn take_reconfigure(&self) -> Option<NextMembership> {
        lock(&self.reconfigure).take()
    }

    /// How many generations this process has started in this run.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A new generation begins: this process connects to its workers.
    pub fn begin_generation(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The last generation whose workers all connected: a grow is through
    /// once it reaches the grown generation; a later generation without
    /// that is a grow rolled back.
    pub fn connected_generation(&self) -> u64 {
        self.connected_generation.load(Ordering::Relaxed)
    }

    /// The current generation's workers all connected.
    pub fn connected(&self) {
        self.connected_generation
            .store(self.generation(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_signal_raises_a_drain_to_at_once_and_never_back() {
        let control = RunControl::new();
        assert!(!control.stop_requested());
        control.request_stop(false);
        assert!(control.stop_requested() && !control.stopping_at_once());
        control.request_stop(true);
        assert!(control.stopping_at_once());
        control.request_stop(false);
        assert!(control.stopping_at_once());
    }

    #[test]
    fn the_first_abort_reason_is_kept_until_taken() {
        let control = RunControl::new();
        control.abort("worker b lost".into());
        control.abort("later".into());
        assert!(control.pending_abort());
        assert_eq!(control.peek_abort().as_deref(), Some("worker b lost"));
        assert_eq!(control.take_abort().as_deref(), Some("worker b lost"));
        assert!(!control.pending_abort());
    }

    #[test]
    fn a_connected_generation_is_the_one_begun_last() {
        let control = RunControl::new();
        control.begin_generation();
        control.connected();
        control.begin_generation();
        assert_eq!(
            (control.generation(), control.connected_generation()),
            (2, 1)
        );
    }
}
