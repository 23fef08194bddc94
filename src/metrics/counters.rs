//! Counters of a run: per pipeline and step (atomics shared with the IO
//! threads), per batch on the worker thread, and epoch progress.

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::clock::now_ns;
use super::histogram::{bucket_of, Histogram, BATCH_RECORDS, CALL_NS, EPOCH_NS, LATENCY_NS};
use super::registry::RunMetrics;
use super::snapshot::{PipelineSnapshot, StepSnapshot};
use crate::sync::lock;

/// One record in this many has its Python calls timed.
pub const SAMPLE_ONE_IN: u64 = 64;

/// The first calls of each step on each worker are timed too, so a step that
/// ran a few times has a Python time (not 0 until a sampled record came).
pub const FIRST_TIMED: u64 = 8;

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
    /// Whether the per-step counts, timings and latencies are kept (the
    /// run's setting, [`RunMetrics::detailed`]).
    pub detailed: bool,
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
            detailed: true,
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

    /// The sink thread wrote a batch whose records were read at `read_ns`
    /// ([`now_ns`]; 0: unknown), `delivered` of them delivered by the write:
    /// count those and observe the latency of each record (one clock read
    /// per batch).
    pub fn sink_wrote(&self, delivered: u64, read_ns: impl Iterator<Item = u64>) {
        Self::add(&self.sink_records, delivered);
        if !self.detailed {
            return;
        }
        let now = now_ns();
        let mut counts = [0u64; LATENCY_NS.len() + 1];
        let mut sum = 0u64;
        let mut seen = false;
        // Records of one source batch share a stamp: look each stamp up once.
        let mut last = (u64::MAX, 0usize, 0u64);
        for read_ns in read_ns {
            if read_ns == 0 {
                continue;
            }
            if read_ns != last.0 {
                let latency = now.saturating_sub(read_ns);
                last = (read_ns, bucket_of(LATENCY_NS, latency), latency);
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
    /// Calls timed since the start (never reset: see [`FIRST_TIMED`]).
    timed: Cell<u64>,
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
        let on = metrics.detailed && !metrics.steps.is_empty();
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

    /// Call the Python code of `slot` (timed when the record is sampled, and
    /// for the step's first [`FIRST_TIMED`] calls).
    #[inline]
    pub fn call<R>(&self, slot: usize, f: impl FnOnce() -> R) -> R {
        let Some(step) = self.slot(slot) else {
            return f();
        };
        bump(&step.calls);
        if !self.sampling.get() && step.timed.get() >= FIRST_TIMED {
            return f();
        }
        bump(&step.timed);
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

impl EpochTracker {
    /// A tracker for the run whose counters are `run` (inert when its
    /// detailed metrics are off).
    pub fn new(run: &Arc<RunMetrics>) -> EpochTracker {
        let metrics = run.detailed().then(|| run.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        // The first calls are timed whatever the sample: a time for each step.
        assert!(snap.steps[1].call_duration.count >= FIRST_TIMED);
        assert!(snap.steps[1].python_seconds >= 100.0 * 20e-6 * 0.9);
    }

    #[test]
    fn a_step_called_a_few_times_has_a_python_time() {
        let metrics = PipelineMetrics::with_steps(["a"]);
        let stats = ChainStats::default();
        stats.begin(&metrics, 3);
        for _ in 0..3 {
            stats.record();
            stats.call(ChainStats::DECODER, || ());
            stats.call(1, || std::thread::sleep(Duration::from_micros(50)));
            stats.call(2, || std::thread::sleep(Duration::from_micros(50)));
        }
        stats.flush(&metrics);
        let snap = metrics.snapshot("p");
        for step in &snap.steps[1..] {
            assert_eq!(step.records_in, 3, "{}", step.name);
            assert_eq!(step.call_duration.count, 3, "{}", step.name);
            assert!(
                step.python_seconds >= 3.0 * 50e-6,
                "{}: {}",
                step.name,
                step.python_seconds
            );
        }
        // Later calls go back to the sample only: after FIRST_TIMED calls
        // with no record sampled, no further call is timed.
        stats.begin(&metrics, 100);
        for _ in 0..100 {
            stats.call(1, || ());
        }
        stats.flush(&metrics);
        assert_eq!(
            metrics.snapshot("p").steps[1].call_duration.count,
            FIRST_TIMED
        );
    }
}
