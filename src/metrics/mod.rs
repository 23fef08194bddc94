//! Metrics: what flows through each pipeline, step, source and sink.
//!
//! Counters live in atomics shared by the worker and the IO threads
//! ([`PipelineMetrics`]). The worker never touches them per record: a chain
//! keeps its counts for the batch in progress in plain cells
//! ([`ChainStats`]) and adds them to the atomics once per batch. Python time
//! per step is measured on a random sample of records (one in
//! [`counters::SAMPLE_ONE_IN`], plus each step's first [`counters::FIRST_TIMED`]
//! calls on each worker); a step's total is the timed mean times its calls.
//! Source threads stamp each batch with the time it was read
//! ([`now_ns`], once per batch); sink threads turn the stamps into the
//! source-to-sink latency histogram.
//!
//! Each worker process sums up into a [`snapshot::WorkerSnapshot`] (JSON),
//! which workers send to the initializer through the cluster's control
//! channel; the initializer's HTTP server ([`server`]) shows every worker's
//! snapshot in Prometheus text ([`prometheus`]), as JSON ([`status`],
//! [`history`]) and on a web page.
//!
//! One concern per file: [`clock`], [`histogram`], [`counters`] (what a run
//! counts), [`snapshot`] (what a worker reports), [`registry`] (this process's
//! run and the other workers' reports), [`prometheus`], [`history`],
//! [`status`], [`server`] and [`python`] (the extension's functions).

mod clock;
mod counters;
mod histogram;
mod history;
mod prometheus;
mod python;
mod registry;
mod server;
mod snapshot;
mod status;

// What the rest of the crate uses.
pub use clock::{now_ns, unix_seconds};
pub use counters::{ChainStats, EpochTracker, PipelineMetrics};
pub use python::register;
pub use registry::{begin_run, RunMetrics};
