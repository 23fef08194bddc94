//! What a worker measured at one moment, as it travels (JSON) from the
//! workers to the initializer, and sums over workers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::HistogramSnapshot;

/// One step's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepSnapshot {
    /// Step name.
    pub name: String,
    /// `decoder`, `step` or `encoder`.
    pub kind: String,
    /// Records the step was called with.
    pub records_in: u64,
    /// Records it passed on.
    pub records_out: u64,
    /// Records it dropped (None).
    pub dropped: u64,
    /// Estimated Python time.
    pub python_seconds: f64,
    /// Sampled call durations.
    pub call_duration: HistogramSnapshot,
}

/// One pipeline's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineSnapshot {
    /// Pipeline name.
    pub name: String,
    /// Source label (empty where the source does not run).
    pub source: String,
    /// Sink label (empty where the sink does not run).
    pub sink: String,
    /// Records read by the source.
    pub records_in: u64,
    /// Bytes read by the source.
    pub bytes_in: u64,
    /// Records encoded for the sink.
    pub records_out: u64,
    /// Bytes written by the sink.
    pub bytes_out: u64,
    /// Records dropped by steps.
    pub dropped: u64,
    /// Records skipped after errors (`--on-error skip`).
    pub skipped_errors: u64,
    /// Records the sink wrote.
    pub sink_records: u64,
    /// Records the sink could not deliver.
    pub sink_errors: u64,
    /// Sink reconnects.
    pub sink_retries: u64,
    /// Records per batch.
    pub batch_sizes: HistogramSnapshot,
    /// Source-to-sink latency.
    pub latency: HistogramSnapshot,
    /// `[decoder, steps..., encoder]`.
    pub steps: Vec<StepSnapshot>,
    /// The Kafka source's topic, if any.
    pub kafka_topic: String,
    /// Lag per partition of a Kafka source.
    pub kafka_lag: Vec<(i32, i64)>,
}

/// Bad records of one kind in one pipeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BadCount {
    /// Pipeline.
    pub pipeline: String,
    /// truncated, decode_error, ...
    pub kind: String,
    /// How many.
    pub count: u64,
}

/// A recent bad record, shortened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecentBad {
    /// Unix seconds.
    pub time: f64,
    /// Pipeline.
    pub pipeline: String,
    /// Source and position.
    pub position: String,
    /// What was wrong.
    pub kind: String,
    /// The error's last line.
    pub error: String,
    /// The payload, shortened.
    pub payload: String,
    /// The payload's length (shown when its preview is off).
    #[serde(default)]
    pub payload_bytes: u64,
}

/// A source partition of an event-time window stage: the newest event time
/// seen on it (its own watermark).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// The source (pipeline) name.
    pub source: String,
    /// The worker whose source read the partition's records.
    pub reader: u32,
    /// The connection or partition of the source.
    pub stream: u32,
    /// The newest event time seen (Unix seconds).
    pub event_time: f64,
    /// The worker's clock minus `event_time` when it reported.
    pub lag_seconds: f64,
    /// Silent longer than the idle timeout: not holding the watermark back.
    pub idle: bool,
}

/// A window stage on one worker (the stage counts; the engine reads the
/// counts at each timer tick).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowSnapshot {
    /// The stage's state name (unique in the application).
    pub stage: String,
    /// Its pipeline (a merged stage: the pipelines joined by `+`).
    pub pipeline: String,
    /// Its step name (the aggregation's).
    pub step: String,
    /// `ingest_time`, `event_time` or `count`.
    pub kind: String,
    /// Windows holding records that have not fired.
    pub open: u64,
    /// Windows fired (their output computed).
    pub fired: u64,
    /// Records that came after every window they belong to had fired (also
    /// counted as bad input of kind `late_event`).
    pub late_events: u64,
    /// Event time: the stage's watermark (Unix seconds), once it has one.
    pub watermark: Option<f64>,
    /// The worker's clock minus the watermark when it reported.
    pub watermark_lag_seconds: Option<f64>,
    /// The newest event time of any partition minus the watermark (how far
    /// the slowest partition holds the watermark back).
    pub event_time_lag_seconds: Option<f64>,
    /// Event time: its source partitions.
    pub partitions: Vec<PartitionSnapshot>,
}

impl WindowSnapshot {
    /// The lags as of `now` (Unix seconds).
    pub fn at(mut self, now: f64) -> WindowSnapshot {
        for partition in &mut self.partitions {
            partition.lag_seconds = now - partition.event_time;
        }
        self.watermark_lag_seconds = self.watermark.map(|w| now - w);
        let newest = self
            .partitions
            .iter()
            .map(|p| p.event_time)
            .max_by(f64::total_cmp);
        self.event_time_lag_seconds = self.watermark.zip(newest).map(|(w, n)| (n - w).max(0.0));
        self
    }
}

/// Everything one worker measured, at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// Worker name.
    pub worker: String,
    /// Index in the cluster.
    pub index: usize,
    /// Workers in the cluster, as this worker sees it.
    pub workers: usize,
    /// When (Unix seconds).
    pub time: f64,
    /// When the process started measuring.
    pub started: f64,
    /// `starting`, `running`, `finished`, or `lost` (set by the initializer).
    pub state: String,
    /// Current epoch.
    pub epoch: u64,
    /// Completed epochs.
    pub epochs_completed: u64,
    /// Epoch durations.
    pub epoch_duration: HistogramSnapshot,
    /// Per pipeline.
    pub pipelines: Vec<PipelineSnapshot>,
    /// Bad input by pipeline and kind.
    pub bad_input: Vec<BadCount>,
    /// Bad records that could not be written to the dead-letter file.
    #[serde(default)]
    pub dead_letter_failed: u64,
    /// The newest bad records.
    pub recent_bad: Vec<RecentBad>,
    /// Keys held per state.
    pub state_keys: BTreeMap<String, u64>,
    /// Window stages.
    #[serde(default)]
    pub windows: Vec<WindowSnapshot>,
}

impl WorkerSnapshot {
    /// Bad records of every kind.
    pub fn bad_total(&self) -> u64 {
        self.bad_input.iter().map(|b| b.count).sum()
    }

    /// Sum of a pipeline counter over the pipelines.
    pub fn sum(&self, counter: impl Fn(&PipelineSnapshot) -> u64) -> u64 {
        self.pipelines.iter().map(counter).sum()
    }
}

/// A worker's snapshot as the initializer knows it.
#[derive(Debug, Clone)]
pub struct KnownWorker {
    /// The snapshot.
    pub snapshot: WorkerSnapshot,
    /// This process's own.
    pub local: bool,
    /// Seconds since it arrived (0 for the local one).
    pub age: f64,
    /// Its control connection closed before it finished.
    pub lost: bool,
}

/// A worker whose last report is older than this is not up.
const UP_WITHIN_SECONDS: f64 = 10.0;

impl KnownWorker {
    /// Whether the worker runs and reports: not lost, not finished, and
    /// heard from within [`UP_WITHIN_SECONDS`].
    pub fn is_up(&self) -> bool {
        !self.lost && self.snapshot.state != "finished" && self.age < UP_WITHIN_SECONDS
    }
}

/// Sums over workers: the terminal's progress line and `/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Records read by sources.
    pub records_in: u64,
    /// Records encoded for sinks.
    pub records_out: u64,
    /// Dropped by steps.
    pub dropped: u64,
    /// Bad input.
    pub bad_input: u64,
    /// Records skipped because user code raised (`--on-error skip`).
    #[serde(rename = "errors")]
    pub skipped_errors: u64,
    /// Records the sinks could not deliver.
    pub sink_errors: u64,
    /// Workers known (this one and those reporting).
    #[serde(skip)]
    pub workers: usize,
    /// Kafka consumer lag, summed over partitions.
    #[serde(skip)]
    pub kafka_lag: i64,
}

impl Totals {
    /// The sums over `workers`.
    pub fn over(workers: &[KnownWorker]) -> Totals {
        let mut totals = Totals::default();
        for worker in workers {
            let s = &worker.snapshot;
            totals.workers += 1;
            totals.records_in += s.sum(|p| p.records_in);
            totals.records_out += s.sum(|p| p.records_out);
            totals.dropped += s.sum(|p| p.dropped);
            totals.bad_input += s.bad_total();
            totals.skipped_errors += s.sum(|p| p.skipped_errors);
            totals.sink_errors += s.sum(|p| p.sink_errors);
            totals.kafka_lag += s
                .pipelines
                .iter()
                .flat_map(|p| p.kafka_lag.iter().map(|(_, lag)| *lag))
                .sum::<i64>();
        }
        totals
    }

    /// Skipped records and sink errors: the progress line's errors.
    pub fn errors(&self) -> u64 {
        self.skipped_errors + self.sink_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(state: &str, age: f64, lost: bool) -> KnownWorker {
        KnownWorker {
            snapshot: WorkerSnapshot {
                state: state.to_owned(),
                ..WorkerSnapshot::default()
            },
            local: false,
            age,
            lost,
        }
    }

    #[test]
    fn a_worker_is_up_while_it_runs_and_reports() {
        assert!(worker("running", 0.0, false).is_up());
        assert!(worker("starting", 9.9, false).is_up());
        assert!(!worker("running", UP_WITHIN_SECONDS, false).is_up());
        assert!(!worker("finished", 0.0, false).is_up());
        assert!(!worker("lost", 0.0, true).is_up());
    }

    #[test]
    fn totals_sum_every_worker() {
        let pipeline =
            |records_in, skipped_errors, sink_errors, lag: Vec<(i32, i64)>| PipelineSnapshot {
                records_in,
                records_out: records_in / 2,
                dropped: 1,
                skipped_errors,
                sink_errors,
                kafka_lag: lag,
                ..PipelineSnapshot::default()
            };
        let mut a = worker("running", 0.0, false);
        a.snapshot.pipelines = vec![pipeline(10, 1, 0, vec![(0, 3)]), pipeline(4, 0, 2, vec![])];
        a.snapshot.bad_input = vec![BadCount {
            pipeline: "p".to_owned(),
            kind: "truncated".to_owned(),
            count: 5,
        }];
        let mut b = worker("running", 1.0, false);
        b.snapshot.pipelines = vec![pipeline(6, 2, 1, vec![(1, 4), (2, 1)])];
        let totals = Totals::over(&[a, b]);
        let expected = Totals {
            records_in: 20,
            records_out: 10,
            dropped: 3,
            bad_input: 5,
            skipped_errors: 3,
            sink_errors: 3,
            workers: 2,
            kafka_lag: 8,
        };
        assert_eq!(totals, expected);
        assert_eq!(totals.errors(), 6);
    }
}
