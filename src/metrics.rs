//! Counters of what flowed through each pipeline, shared by worker and IO threads.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one pipeline.
#[derive(Default, Debug)]
pub struct PipelineMetrics {
    /// Records read by the source (frames, lines, messages).
    pub records_in: AtomicU64,
    /// Bytes read by the source.
    pub bytes_in: AtomicU64,
    /// Records handed to the sink after encoding.
    pub records_out: AtomicU64,
    /// Bytes written by the sink.
    pub bytes_out: AtomicU64,
    /// Records a step dropped by returning None.
    pub dropped: AtomicU64,
    /// Records skipped because user code failed (`--on-error skip`).
    pub skipped_errors: AtomicU64,
    /// Records the sink could not deliver.
    pub sink_errors: AtomicU64,
}

impl PipelineMetrics {
    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Read a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
