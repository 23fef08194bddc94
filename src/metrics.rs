//! Metrics: what flows through each pipeline, step, source and sink.
//!
//! Counters live in atomics shared by the worker and the IO threads
//! ([`PipelineMetrics`]). The worker never touches them per record: a chain
//! keeps its counts for the batch in progress in plain cells
//! ([`ChainStats`]) and adds them to the atomics once per batch. Python time
//! per step is measured on a random sample of records (one in
//! [`SAMPLE_ONE_IN`]); a step's total is the sampled mean times its calls.
//! Source threads stamp each batch with the time it was read
//! ([`now_ns`], once per batch); sink threads turn the stamps into the
//! source-to-sink latency histogram.
//!
//! Each worker process sums up into a [`WorkerSnapshot`] (JSON), which
//! workers send to the initializer through the cluster's control channel; the
//! initializer's HTTP server (`crate::http`) shows every worker's snapshot
//! in Prometheus text ([`exposition`]), as JSON and on a web page.

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use crate::bad_input::BadInput;
use crate::errors::shorten;
use crate::sinks::Output;

/// One record in this many has its Python calls timed.
pub const SAMPLE_ONE_IN: u64 = 64;
/// Bad records a snapshot carries (the newest).
pub const RECENT_BAD_IN_SNAPSHOT: usize = 20;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// --------------------------------------------------------------------- clock

struct Clock {
    base: Instant,
    base_unix_ns: u64,
}

static CLOCK: LazyLock<Clock> = LazyLock::new(|| Clock {
    base: Instant::now(),
    base_unix_ns: SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0),
});

/// Nanoseconds since the Unix epoch: monotonic within the process and
/// comparable between the processes of a cluster (up to clock skew between
/// hosts), so a record read on one worker and written on another has a latency.
pub fn now_ns() -> u64 {
    let clock = &*CLOCK;
    clock.base_unix_ns + clock.base.elapsed().as_nanos() as u64
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> f64 {
    now_ns() as f64 / 1e9
}

// ---------------------------------------------------------------- histograms

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// Source-to-sink latency buckets (ns).
pub const LATENCY_NS: &[u64] = &[
    100 * US,
    250 * US,
    500 * US,
    MS,
    2 * MS + MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    5000 * MS,
    10_000 * MS,
    30_000 * MS,
    60_000 * MS,
];
/// Python call duration buckets (ns).
pub const CALL_NS: &[u64] = &[
    250,
    500,
    US,
    2 * US + US / 2,
    5 * US,
    10 * US,
    25 * US,
    50 * US,
    100 * US,
    250 * US,
    500 * US,
    MS,
    2 * MS + MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    100 * MS,
    1000 * MS,
];
/// Epoch duration buckets (ns).
pub const EPOCH_NS: &[u64] = &[
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    150 * MS,
    250 * MS,
    500 * MS,
    1000 * MS,
    2500 * MS,
    5000 * MS,
    10_000 * MS,
    60_000 * MS,
];
/// Batch size buckets (records).
pub const BATCH_RECORDS: &[u64] = &[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/// The bucket of `value`: the first bound at or above it (`le`), or the
/// overflow bucket.
fn bucket_of(bounds: &[u64], value: u64) -> usize {
    bounds.partition_point(|&bound| bound < value)
}

/// A histogram in atomics: counts per bucket (not cumulative) and the sum,
/// in integer units (`scale` turns them into the exported unit).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    scale: f64,
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        Histogram {
            bounds,
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Durations in nanoseconds, exported in seconds.
    pub fn nanos(bounds: &'static [u64]) -> Histogram {
        Histogram::new(bounds, 1e-9)
    }

    /// Record one value.
    pub fn observe(&self, value: u64) {
        self.counts[bucket_of(self.bounds, value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Add counts gathered elsewhere (same bounds).
    pub fn add(&self, counts: &[u64], sum: u64) {
        for (total, &n) in self.counts.iter().zip(counts) {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.sum.fetch_add(sum, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.iter().map(|&b| b as f64 * self.scale).collect(),
            count: counts.iter().sum(),
            counts,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
        }
    }
}

/// A histogram's values at one moment, in the exported unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (the last bucket, +Inf, has none).
    pub bounds: Vec<f64>,
    /// Observations per bucket, not cumulative; one more than `bounds`.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// What was observed since `older` (a snapshot of the same histogram).
    pub fn since(&self, older: &HistogramSnapshot) -> HistogramSnapshot {
        if older.counts.len() != self.counts.len() {
            return self.clone();
        }
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(&older.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            count: counts.iter().sum(),
            counts,
            sum: (self.sum - older.sum).max(0.0),
        }
    }

    /// Add another histogram with the same bounds.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        if other.counts.len() != self.counts.len() {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The `q` quantile (0..1), interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; None without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&upper) = self.bounds.get(i) else {
                    // The overflow bucket: the largest bound is all we know.
                    return Some(lower);
                };
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            seen += n;
        }
        self.bounds.last().copied()
    }

    /// The mean observation; None without observations.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

// ---------------------------------------------------------------- per step

/// Counters of one step of a pipeline (also the decoder and the encoder).
#[derive(Debug)]
pub struct StepMetrics {
    /// The step name (`decoder` and `encoder` for those).
    pub name: String,
    /// `decoder`, `step` or `encoder`.
    pub kind: &'static str,
    /// Records the step's Python code was called with.
    pub calls: AtomicU64,
    /// Records that reached the step (its output is what reached the next).
    pub entered: AtomicU64,
    /// Records the step dropped (returned None).
    pub dropped: AtomicU64,
    /// Estimated Python time (ns): calls times the sampled mean.
    pub python_ns: AtomicU64,
    sampled_ns: AtomicU64,
    sampled_calls: AtomicU64,
    /// Durations of sampled calls.
    pub call_duration: Histogram,
}

impl StepMetrics {
    fn new(name: &str, kind: &'static str) -> StepMetrics {
        StepMetrics {
            name: name.to_owned(),
            kind,
            calls: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            python_ns: AtomicU64::new(0),
            sampled_ns: AtomicU64::new(0),
            sampled_calls: AtomicU64::new(0),
            call_duration: Histogram::nanos(CALL_NS),
        }
    }
}

// ---------------------------------------------------------------- pipeline

#[derive(Debug, Default)]
struct Labels {
    source: String,
    sink: String,
    kafka_topic: String,
    kafka_lag: BTreeMap<i32, i64>,
}

/// Counters of one pipeline.
#[derive(Debug)]
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
    /// Records the sink wrote.
    pub sink_records: AtomicU64,
    /// Times the sink tried again to connect or to write a batch.
    pub sink_retries: AtomicU64,
    /// Records per batch handed to the chain.
    pub batch_sizes: Histogram,
    /// From the source reading a record to the sink writing its output.
    pub latency: Histogram,
    /// `[decoder, steps..., encoder]`; empty when the steps are not known.
    pub steps: Vec<StepMetrics>,
    labels: Mutex<Labels>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        PipelineMetrics {
            records_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            skipped_errors: AtomicU64::new(0),
            sink_errors: AtomicU64::new(0),
            sink_records: AtomicU64::new(0),
            sink_retries: AtomicU64::new(0),
            batch_sizes: Histogram::new(BATCH_RECORDS, 1.0),
            latency: Histogram::nanos(LATENCY_NS),
            steps: Vec::new(),
            labels: Mutex::new(Labels::default()),
        }
    }
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

    /// Counters for a pipeline with these steps (the decoder and the
    /// encoder are added around them).
    pub fn with_steps<'a>(steps: impl IntoIterator<Item = &'a str>) -> PipelineMetrics {
        let mut all = vec![StepMetrics::new("decoder", "decoder")];
        all.extend(steps.into_iter().map(|name| StepMetrics::new(name, "step")));
        all.push(StepMetrics::new("encoder", "encoder"));
        PipelineMetrics {
            steps: all,
            ..PipelineMetrics::default()
        }
    }

    /// Name the source (e.g. `tcp 127.0.0.1:7000`), for labels.
    pub fn set_source_label(&self, label: &str) {
        lock(&self.labels).source = label.to_owned();
    }

    /// Name the sink (e.g. `file out.txt`), for labels.
    pub fn set_sink_label(&self, label: &str) {
        lock(&self.labels).sink = label.to_owned();
    }

    /// A Kafka source's lag per partition (messages behind the high watermark).
    pub fn set_kafka_lag(&self, topic: &str, lag: BTreeMap<i32, i64>) {
        let mut labels = lock(&self.labels);
        labels.kafka_topic = topic.to_owned();
        labels.kafka_lag = lag;
    }

    /// The sink thread wrote `batch`: count it and observe the latency of
    /// each record (one clock read per batch).
    pub fn sink_wrote(&self, batch: &[Output]) {
        Self::add(&self.sink_records, batch.len() as u64);
        if !enabled() {
            return;
        }
        let now = now_ns();
        let mut counts = [0u64; LATENCY_NS.len() + 1];
        let mut sum = 0u64;
        let mut seen = false;
        // Records of one source batch share a stamp: look each stamp up once.
        let mut last = (u64::MAX, 0usize, 0u64);
        for record in batch {
            if record.read_ns == 0 {
                continue;
            }
            if record.read_ns != last.0 {
                let latency = now.saturating_sub(record.read_ns);
                last = (record.read_ns, bucket_of(LATENCY_NS, latency), latency);
            }
            counts[last.1] += 1;
            sum += last.2;
            seen = true;
        }
        if seen {
            self.latency.add(&counts, sum);
        }
    }

    /// The counters as they are now.
    pub fn snapshot(&self, name: &str) -> PipelineSnapshot {
        let labels = lock(&self.labels);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let steps = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let records_out = match self.steps.get(i + 1) {
                    Some(next) => get(&next.entered),
                    None => get(&self.records_out),
                };
                StepSnapshot {
                    name: step.name.clone(),
                    kind: step.kind.to_owned(),
                    records_in: get(&step.calls),
                    records_out,
                    dropped: get(&step.dropped),
                    python_seconds: get(&step.python_ns) as f64 * 1e-9,
                    call_duration: step.call_duration.snapshot(),
                }
            })
            .collect();
        PipelineSnapshot {
            name: name.to_owned(),
            source: labels.source.clone(),
            sink: labels.sink.clone(),
            records_in: get(&self.records_in),
            bytes_in: get(&self.bytes_in),
            records_out: get(&self.records_out),
            bytes_out: get(&self.bytes_out),
            dropped: get(&self.dropped),
            skipped_errors: get(&self.skipped_errors),
            sink_records: get(&self.sink_records),
            sink_errors: get(&self.sink_errors),
            sink_retries: get(&self.sink_retries),
            batch_sizes: self.batch_sizes.snapshot(),
            latency: self.latency.snapshot(),
            steps,
            kafka_topic: labels.kafka_topic.clone(),
            kafka_lag: labels.kafka_lag.iter().map(|(&p, &l)| (p, l)).collect(),
        }
    }
}

// ------------------------------------------------------- worker-local counts

/// One step's counts for the batch in progress.
#[derive(Default)]
struct LocalStep {
    calls: Cell<u64>,
    entered: Cell<u64>,
    dropped: Cell<u64>,
    sampled_ns: Cell<u64>,
    sampled_calls: Cell<u64>,
    /// Calls not yet turned into Python time (no sample seen yet).
    unestimated: Cell<u64>,
    durations: [Cell<u64>; CALL_NS.len() + 1],
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// A chain's per-step counts for the batch in progress, on the worker
/// thread; [`ChainStats::flush`] adds them to the pipeline's atomics.
///
/// Slots: 0 is the decoder, step `i` is `i + 1`, the encoder is last.
#[derive(Default)]
pub struct ChainStats {
    on: Cell<bool>,
    sampling: Cell<bool>,
    rng: Cell<u64>,
    slots: OnceCell<Box<[LocalStep]>>,
}

impl ChainStats {
    /// The decoder's slot.
    pub const DECODER: usize = 0;

    /// A batch of `records` source records starts (0 for records handed
    /// over by other workers).
    pub fn begin(&self, metrics: &PipelineMetrics, records: usize) {
        let on = enabled() && !metrics.steps.is_empty();
        self.on.set(on);
        self.sampling.set(false);
        if !on {
            return;
        }
        let slots = self
            .slots
            .get_or_init(|| metrics.steps.iter().map(|_| LocalStep::default()).collect());
        if records > 0 {
            metrics.batch_sizes.observe(records as u64);
            if let Some(decoder) = slots.first() {
                decoder.entered.set(decoder.entered.get() + records as u64);
            }
        }
    }

    /// The next record starts its way through the chain: decide whether its
    /// calls are timed.
    #[inline]
    pub fn record(&self) {
        if !self.on.get() {
            return;
        }
        // xorshift64: cheap, and no aliasing with periodic input.
        let mut x = self.rng.get();
        if x == 0 {
            x = 0x9E37_79B9_7F4A_7C15;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        self.sampling.set(x.is_multiple_of(SAMPLE_ONE_IN));
    }

    #[inline]
    fn slot(&self, slot: usize) -> Option<&LocalStep> {
        if !self.on.get() {
            return None;
        }
        self.slots.get().and_then(|slots| slots.get(slot))
    }

    /// A record reached `slot`.
    #[inline]
    pub fn entered(&self, slot: usize) {
        if let Some(step) = self.slot(slot) {
            bump(&step.entered);
        }
    }

    /// A record was dropped at `slot`.
    #[inline]
    pub fn dropped(&self, slot: usize) {
        if let Some(step) = self.slot(slot) {
            bump(&step.dropped);
        }
    }

    /// Call the Python code of `slot` (timed when the record is sampled).
    #[inline]
    pub fn call<R>(&self, slot: usize, f: impl FnOnce() -> R) -> R {
        let Some(step) = self.slot(slot) else {
            return f();
        };
        bump(&step.calls);
        if !self.sampling.get() {
            return f();
        }
        let started = Instant::now();
        let result = f();
        let ns = started.elapsed().as_nanos() as u64;
        step.sampled_ns.set(step.sampled_ns.get() + ns);
        bump(&step.sampled_calls);
        bump(&step.durations[bucket_of(CALL_NS, ns)]);
        result
    }

    /// Add the batch's counts to the pipeline's atomics.
    pub fn flush(&self, metrics: &PipelineMetrics) {
        let Some(slots) = self.slots.get() else {
            return;
        };
        for (local, shared) in slots.iter().zip(&metrics.steps) {
            let add = |cell: &Cell<u64>, counter: &AtomicU64| {
                let n = cell.replace(0);
                if n > 0 {
                    counter.fetch_add(n, Ordering::Relaxed);
                }
                n
            };
            let calls = add(&local.calls, &shared.calls);
            add(&local.entered, &shared.entered);
            add(&local.dropped, &shared.dropped);
            let sampled_ns = local.sampled_ns.replace(0);
            let sampled_calls = local.sampled_calls.replace(0);
            if sampled_calls > 0 {
                let mut counts = [0u64; CALL_NS.len() + 1];
                for (count, cell) in counts.iter_mut().zip(&local.durations) {
                    *count = cell.replace(0);
                }
                shared.call_duration.add(&counts, sampled_ns);
            }
            let total_ns = shared.sampled_ns.fetch_add(sampled_ns, Ordering::Relaxed) + sampled_ns;
            let total_calls = shared
                .sampled_calls
                .fetch_add(sampled_calls, Ordering::Relaxed)
                + sampled_calls;
            let pending = local.unestimated.replace(0) + calls;
            if pending == 0 {
                continue;
            }
            if total_calls == 0 {
                local.unestimated.set(pending);
                continue;
            }
            let estimate = u128::from(pending) * u128::from(total_ns) / u128::from(total_calls);
            shared.python_ns.fetch_add(
                u64::try_from(estimate).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }
}

// ---------------------------------------------------------------- epochs

/// Epoch progress of one worker.
#[derive(Debug)]
pub struct EpochMetrics {
    /// Epochs the sources have begun (with snapshots, epoch timestamps jump at
    /// each cut: this counts them instead).
    pub current: AtomicU64,
    /// Epochs complete on this worker (every record of them went through).
    pub completed: AtomicU64,
    /// From an epoch's start to its completion.
    pub durations: Histogram,
}

impl Default for EpochMetrics {
    fn default() -> Self {
        EpochMetrics {
            current: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            durations: Histogram::nanos(EPOCH_NS),
        }
    }
}

/// Follows the epochs of the worker loop: when each started and when the
/// dataflow's frontier passed it.
pub struct EpochTracker {
    metrics: Option<Arc<RunMetrics>>,
    open: std::collections::VecDeque<(u64, Instant)>,
}

impl Default for EpochTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl EpochTracker {
    /// A tracker for the current run (inert when metrics are off).
    pub fn new() -> EpochTracker {
        let metrics = if enabled() { current_run() } else { None };
        let mut open = std::collections::VecDeque::new();
        if metrics.is_some() {
            open.push_back((0, Instant::now()));
        }
        EpochTracker { metrics, open }
    }

    /// The sources moved on to `epoch`.
    pub fn advanced(&mut self, epoch: u64) {
        if let Some(run) = &self.metrics {
            run.epochs.current.fetch_add(1, Ordering::Relaxed);
            self.open.push_back((epoch, Instant::now()));
        }
    }

    /// Look at the frontier: epochs below it are complete.
    pub fn observe(&mut self, probe: &timely::dataflow::ProbeHandle<u64>) {
        let Some(run) = &self.metrics else {
            return;
        };
        let Some(&(first, _)) = self.open.front() else {
            return;
        };
        let frontier = probe.with_frontier(|f| f.iter().copied().min().unwrap_or(u64::MAX));
        if frontier <= first {
            return;
        }
        while let Some(&(epoch, started)) = self.open.front() {
            if epoch >= frontier {
                break;
            }
            self.open.pop_front();
            run.epochs.completed.fetch_add(1, Ordering::Relaxed);
            run.epochs
                .durations
                .observe(started.elapsed().as_nanos() as u64);
        }
    }
}

// ---------------------------------------------------------------- registry

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

fn current_run() -> Option<Arc<RunMetrics>> {
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

// ---------------------------------------------------------------- snapshots

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

/// Sum over workers, for the terminal's progress line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Records read by sources.
    pub records_in: u64,
    /// Records encoded for sinks.
    pub records_out: u64,
    /// Dropped by steps.
    pub dropped: u64,
    /// Bad input.
    pub bad_input: u64,
    /// Records skipped after errors plus sink errors.
    pub errors: u64,
    /// Workers known (this one and those reporting).
    pub workers: usize,
    /// Kafka consumer lag, summed over partitions.
    pub kafka_lag: i64,
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

// ---------------------------------------------------------------- exposition

/// The snapshots as a prometheus-client collector (encoded at each scrape).
#[derive(Debug)]
struct SnapshotCollector {
    workers: Vec<KnownWorker>,
    expected_workers: usize,
}

type LabelPairs = Vec<(&'static str, String)>;
/// One sample of a per-pipeline family, if the pipeline has it.
type PipelineSample<'a> =
    &'a dyn Fn(&WorkerSnapshot, &PipelineSnapshot) -> Option<(LabelPairs, f64)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(LabelPairs, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in &samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(LabelPairs, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in &samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(LabelPairs, &HistogramSnapshot)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in &samples {
        let buckets: Vec<(f64, u64)> = h.bounds.iter().copied().zip(h.counts.clone()).collect();
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let workers: Vec<&WorkerSnapshot> = self.workers.iter().map(|w| &w.snapshot).collect();
        let w = |s: &WorkerSnapshot| -> LabelPairs { vec![("worker", s.worker.clone())] };
        let wp = |s: &WorkerSnapshot, p: &PipelineSnapshot| -> LabelPairs {
            vec![("worker", s.worker.clone()), ("pipeline", p.name.clone())]
        };
        let per_pipeline = |f: PipelineSample| {
            workers
                .iter()
                .flat_map(|s| s.pipelines.iter().filter_map(move |p| f(s, p)))
                .collect::<Vec<_>>()
        };

        gauge(
            e,
            "cluster_workers",
            "Workers in the cluster (1 for a single process).",
            vec![(
                vec![],
                self.expected_workers.max(workers.len()).max(1) as f64,
            )],
        )?;
        gauge(
            e,
            "worker_up",
            "1 while a worker runs and reports, 0 once it finished or was lost.",
            self.workers
                .iter()
                .map(|k| {
                    let up = !k.lost && k.snapshot.state != "finished" && k.age < 10.0;
                    let mut labels = w(&k.snapshot);
                    labels.push(("index", k.snapshot.index.to_string()));
                    (labels, if up { 1.0 } else { 0.0 })
                })
                .collect(),
        )?;
        gauge(
            e,
            "worker_start_time_seconds",
            "When the worker started (Unix time).",
            workers.iter().map(|s| (w(s), s.started)).collect(),
        )?;
        gauge(
            e,
            "worker_report_age_seconds",
            "Seconds since the worker's metrics last arrived (0 for the one serving).",
            self.workers
                .iter()
                .map(|k| (w(&k.snapshot), k.age))
                .collect(),
        )?;

        // A value labelled with the pipeline's source or sink (when it has one).
        let endpoint =
            |s: &WorkerSnapshot, p: &PipelineSnapshot, kind: &'static str, name: &str, v: u64| {
                if name.is_empty() {
                    return None;
                }
                let mut labels = wp(s, p);
                labels.push((kind, name.to_owned()));
                Some((labels, v as f64))
            };
        let source = |s: &WorkerSnapshot, p: &PipelineSnapshot, v: u64| {
            endpoint(s, p, "source", &p.source, v)
        };
        counter(
            e,
            "source_records",
            "Records read by a source (frames, lines, messages).",
            None,
            per_pipeline(&|s, p| source(s, p, p.records_in)),
        )?;
        counter(
            e,
            "source_bytes",
            "Payload bytes read by a source.",
            None,
            per_pipeline(&|s, p| source(s, p, p.bytes_in)),
        )?;
        counter(
            e,
            "bad_input",
            "Records that could not be read or decoded, by kind (kept in the dead-letter record).",
            None,
            workers
                .iter()
                .flat_map(|s| {
                    s.bad_input.iter().map(move |b| {
                        (
                            vec![
                                ("worker", s.worker.clone()),
                                ("pipeline", b.pipeline.clone()),
                                ("kind", b.kind.clone()),
                            ],
                            b.count as f64,
                        )
                    })
                })
                .collect(),
        )?;
        counter(
            e,
            "dead_letter_failed",
            "Bad records that could not be written to the dead-letter file (disk full, ...).",
            None,
            workers
                .iter()
                .map(|s| {
                    (
                        vec![("worker", s.worker.clone())],
                        s.dead_letter_failed as f64,
                    )
                })
                .collect(),
        )?;
        counter(
            e,
            "pipeline_records_out",
            "Records encoded and handed to the pipeline's sink.",
            None,
            per_pipeline(&|s, p| Some((wp(s, p), p.records_out as f64))),
        )?;
        counter(
            e,
            "pipeline_dropped",
            "Records a step of the pipeline dropped by returning None.",
            None,
            per_pipeline(&|s, p| Some((wp(s, p), p.dropped as f64))),
        )?;
        counter(
            e,
            "pipeline_errors_skipped",
            "Records skipped because user code raised (--on-error skip).",
            None,
            per_pipeline(&|s, p| Some((wp(s, p), p.skipped_errors as f64))),
        )?;

        let steps = |f: &dyn Fn(&StepSnapshot) -> f64| {
            workers
                .iter()
                .flat_map(|s| {
                    s.pipelines.iter().flat_map(move |p| {
                        p.steps.iter().map(move |st| {
                            let mut labels = wp(s, p);
                            labels.push(("step", st.name.clone()));
                            (labels, f(st))
                        })
                    })
                })
                .collect::<Vec<_>>()
        };
        counter(
            e,
            "step_records_in",
            "Records a step's Python code was called with (decoder and encoder included).",
            None,
            steps(&|st| st.records_in as f64),
        )?;
        counter(
            e,
            "step_records_out",
            "Records a step passed on to the next one (the encoder: to the sink).",
            None,
            steps(&|st| st.records_out as f64),
        )?;
        counter(
            e,
            "step_dropped",
            "Records a step dropped by returning None.",
            None,
            steps(&|st| st.dropped as f64),
        )?;
        counter(
            e,
            "step_python",
            "Python time spent in a step: its calls times the mean of sampled calls.",
            Some(&Unit::Seconds),
            steps(&|st| st.python_seconds),
        )?;
        histogram(
            e,
            "step_call_duration",
            "Duration of one call of a step's Python code (a random sample of records).",
            Some(&Unit::Seconds),
            workers
                .iter()
                .flat_map(|s| {
                    s.pipelines.iter().flat_map(move |p| {
                        p.steps.iter().map(move |st| {
                            let mut labels = wp(s, p);
                            labels.push(("step", st.name.clone()));
                            (labels, &st.call_duration)
                        })
                    })
                })
                .collect(),
        )?;
        histogram(
            e,
            "batch_size_records",
            "Records per batch handed to the Python chain (one GIL hold).",
            None,
            workers
                .iter()
                .flat_map(|s| s.pipelines.iter().map(move |p| (wp(s, p), &p.batch_sizes)))
                .collect(),
        )?;
        histogram(
            e,
            "source_to_sink_latency",
            "From the source reading a record to the sink writing what came of it.",
            Some(&Unit::Seconds),
            workers
                .iter()
                .flat_map(|s| {
                    s.pipelines
                        .iter()
                        .filter(|p| !p.sink.is_empty())
                        .map(move |p| (wp(s, p), &p.latency))
                })
                .collect(),
        )?;

        let sink =
            |s: &WorkerSnapshot, p: &PipelineSnapshot, v: u64| endpoint(s, p, "sink", &p.sink, v);
        counter(
            e,
            "sink_records",
            "Records a sink wrote.",
            None,
            per_pipeline(&|s, p| sink(s, p, p.sink_records)),
        )?;
        counter(
            e,
            "sink_bytes",
            "Bytes a sink wrote.",
            None,
            per_pipeline(&|s, p| sink(s, p, p.bytes_out)),
        )?;
        counter(
            e,
            "sink_errors",
            "Records a sink could not deliver.",
            None,
            per_pipeline(&|s, p| sink(s, p, p.sink_errors)),
        )?;
        counter(
            e,
            "sink_retries",
            "Times a sink tried again to connect to its receiver or to write a batch.",
            None,
            per_pipeline(&|s, p| sink(s, p, p.sink_retries)),
        )?;
        gauge(
            e,
            "kafka_consumer_lag_messages",
            "Messages of a partition not yet read by the source (high watermark minus position).",
            workers
                .iter()
                .flat_map(|s| {
                    s.pipelines.iter().flat_map(move |p| {
                        p.kafka_lag.iter().map(move |(partition, lag)| {
                            let mut labels = wp(s, p);
                            labels.push(("topic", p.kafka_topic.clone()));
                            labels.push(("partition", partition.to_string()));
                            (labels, *lag as f64)
                        })
                    })
                })
                .collect(),
        )?;

        gauge(
            e,
            "epoch",
            "The epoch this worker's sources are in.",
            workers.iter().map(|s| (w(s), s.epoch as f64)).collect(),
        )?;
        counter(
            e,
            "epochs_completed",
            "Epochs whose records all went through this worker's dataflow.",
            None,
            workers
                .iter()
                .map(|s| (w(s), s.epochs_completed as f64))
                .collect(),
        )?;
        histogram(
            e,
            "epoch_duration",
            "From an epoch's start to its completion.",
            Some(&Unit::Seconds),
            workers.iter().map(|s| (w(s), &s.epoch_duration)).collect(),
        )?;
        gauge(
            e,
            "state_keys",
            "Partition keys whose state this worker holds.",
            workers
                .iter()
                .flat_map(|s| {
                    s.state_keys.iter().map(move |(state, n)| {
                        (
                            vec![("worker", s.worker.clone()), ("state", state.clone())],
                            *n as f64,
                        )
                    })
                })
                .collect(),
        )?;
        Ok(())
    }
}

/// The workers' metrics in the Prometheus text format (version 0.0.4).
pub fn exposition(workers: Vec<KnownWorker>) -> String {
    let expected_workers = cluster().len();
    let mut registry = Registry::with_prefix("wallaroo");
    registry.register_collector(Box::new(SnapshotCollector {
        workers,
        expected_workers,
    }));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        log::warn!("metrics: cannot encode: {e}");
    }
    text
}

/// How long a reporting worker waits between reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_bounds() {
        assert_eq!(bucket_of(&[1, 5, 10], 0), 0);
        assert_eq!(bucket_of(&[1, 5, 10], 1), 0);
        assert_eq!(bucket_of(&[1, 5, 10], 2), 1);
        assert_eq!(bucket_of(&[1, 5, 10], 10), 2);
        assert_eq!(bucket_of(&[1, 5, 10], 11), 3);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::new(&[10, 20, 40], 1.0);
        for v in [5, 15, 15, 35] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.sum, 70.0);
        assert_eq!(s.quantile(0.25), Some(10.0));
        assert_eq!(s.quantile(0.5), Some(15.0));
        assert_eq!(s.quantile(1.0), Some(40.0));
        let older = s.clone();
        h.observe(100);
        let delta = h.snapshot().since(&older);
        assert_eq!(delta.count, 1);
        assert_eq!(delta.quantile(0.5), Some(40.0));
    }

    #[test]
    fn chain_stats_count_per_batch_and_estimate_python_time() {
        let metrics = PipelineMetrics::with_steps(["a", "b"]);
        let stats = ChainStats::default();
        stats.begin(&metrics, 100);
        for _ in 0..100 {
            stats.record();
            stats.call(ChainStats::DECODER, || ());
            stats.entered(1);
            stats.call(1, || std::thread::sleep(Duration::from_micros(20)));
            stats.dropped(1);
        }
        assert_eq!(metrics.steps[1].calls.load(Ordering::Relaxed), 0);
        stats.flush(&metrics);
        let snap = metrics.snapshot("p");
        assert_eq!(snap.steps.len(), 4);
        assert_eq!(snap.steps[0].records_in, 100);
        assert_eq!(snap.steps[0].records_out, 100);
        assert_eq!(snap.steps[1].records_in, 100);
        assert_eq!(snap.steps[1].dropped, 100);
        assert_eq!(snap.steps[1].records_out, 0);
        assert_eq!(snap.batch_sizes.count, 1);
        let sampled = snap.steps[1].call_duration.count;
        if sampled > 0 {
            assert!(snap.steps[1].python_seconds >= 100.0 * 20e-6 * 0.9);
        }
    }

    /// Two workers with every kind of sample, fixed to the last bit.
    pub(crate) fn fixed_workers() -> Vec<KnownWorker> {
        let metrics = PipelineMetrics::with_steps(["double", "keep odd"]);
        metrics.set_source_label("tcp 127.0.0.1:7000");
        metrics.set_sink_label("file out.txt");
        metrics.set_kafka_lag("events", BTreeMap::from([(0, 5), (2, 17)]));
        for (counter, n) in [
            (&metrics.records_in, 1000),
            (&metrics.bytes_in, 64_000),
            (&metrics.records_out, 400),
            (&metrics.bytes_out, 9_600),
            (&metrics.dropped, 590),
            (&metrics.skipped_errors, 3),
            (&metrics.sink_errors, 2),
            (&metrics.sink_records, 398),
            (&metrics.sink_retries, 1),
        ] {
            PipelineMetrics::add(counter, n);
        }
        for (i, step) in metrics.steps.iter().enumerate() {
            let i = i as u64;
            PipelineMetrics::add(&step.calls, 1000 - 100 * i);
            PipelineMetrics::add(&step.entered, 1000 - 100 * i);
            PipelineMetrics::add(&step.dropped, 10 * i);
            PipelineMetrics::add(&step.python_ns, 1_500_000 * (i + 1));
            for ns in [300, 4_000, 4_000 * (i + 1), 30_000_000] {
                step.call_duration.observe(ns);
            }
        }
        for n in [1, 7, 100, 100, 20_000] {
            metrics.batch_sizes.observe(n);
        }
        for ns in [50_000, 3_000_000, 3_000_000, 70_000_000_000] {
            metrics.latency.observe(ns);
        }
        let epochs = EpochMetrics::default();
        epochs.durations.observe(120 * MS);
        let local = WorkerSnapshot {
            worker: "initializer".to_owned(),
            index: 0,
            workers: 2,
            time: 1_700_000_010.25,
            started: 1_700_000_000.5,
            state: "running".to_owned(),
            epoch: 12,
            epochs_completed: 11,
            epoch_duration: epochs.durations.snapshot(),
            pipelines: vec![
                metrics.snapshot("Celsius \"conversion\""),
                PipelineMetrics::with_steps([]).snapshot("idle"),
            ],
            bad_input: vec![BadCount {
                pipeline: "Celsius \"conversion\"".to_owned(),
                kind: "decode_error".to_owned(),
                count: 4,
            }],
            dead_letter_failed: 1,
            recent_bad: Vec::new(),
            state_keys: BTreeMap::from([("counts".to_owned(), 42), ("totals".to_owned(), 7)]),
        };
        let lost = WorkerSnapshot {
            worker: "worker-1".to_owned(),
            index: 1,
            workers: 2,
            time: 1_700_000_008.0,
            started: 1_700_000_001.0,
            state: "lost".to_owned(),
            ..WorkerSnapshot::default()
        };
        vec![
            KnownWorker {
                snapshot: local,
                local: true,
                age: 0.0,
                lost: false,
            },
            KnownWorker {
                snapshot: lost,
                local: false,
                age: 12.5,
                lost: true,
            },
        ]
    }

    #[test]
    fn exposition_text_is_pinned() {
        let text = exposition(fixed_workers());
        let pinned = include_str!("metrics/testdata/exposition.txt");
        if text != pinned {
            let _ = std::fs::write("target/metrics_exposition.actual.txt", &text);
        }
        assert!(
            text == pinned,
            "the Prometheus text changed (see target/metrics_exposition.actual.txt)"
        );
    }

    #[test]
    fn exposition_parses_as_prometheus_text() {
        let metrics = PipelineMetrics::with_steps(["double"]);
        metrics.set_source_label("file in.txt");
        metrics.set_sink_label("file out.txt");
        PipelineMetrics::add(&metrics.records_in, 3);
        let snapshot = WorkerSnapshot {
            worker: "w\"0".to_owned(),
            pipelines: vec![metrics.snapshot("p")],
            ..WorkerSnapshot::default()
        };
        let text = exposition(vec![KnownWorker {
            snapshot,
            local: true,
            age: 0.0,
            lost: false,
        }]);
        assert!(text.contains(
            "wallaroo_source_records_total{worker=\"w\\\"0\",pipeline=\"p\",source=\"file in.txt\"} 3"
        ));
        assert!(text.contains("# TYPE wallaroo_source_to_sink_latency_seconds histogram"));
        assert!(text.contains("wallaroo_step_python_seconds_total{"));
    }
}
