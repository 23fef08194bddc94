//! The workers' snapshots in the Prometheus text format.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::HistogramSnapshot;
use super::snapshot::{
    KnownWorker, PartitionSnapshot, PipelineSnapshot, StepSnapshot, WindowSnapshot, WorkerSnapshot,
};

/// The snapshots as a prometheus-client collector (encoded at each scrape).
#[derive(Debug)]
struct SnapshotCollector {
    workers: Vec<KnownWorker>,
    expected_workers: usize,
}

type Encoder<'a, 'b> = &'a mut DescriptorEncoder<'b>;
type Written = Result<(), std::fmt::Error>;
type LabelPairs = Vec<(&'static str, String)>;
/// A counter family of pipelines: its name, its help and a pipeline's value.
type PipelineCounter = (&'static str, &'static str, fn(&PipelineSnapshot) -> u64);

fn counter(
    encoder: Encoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(LabelPairs, f64)>,
) -> Written {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, value) in &samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(encoder: Encoder, name: &str, help: &str, samples: Vec<(LabelPairs, f64)>) -> Written {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in &samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: Encoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(LabelPairs, &HistogramSnapshot)>,
) -> Written {
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    for (labels, h) in &samples {
        let buckets: Vec<(f64, u64)> = h.bounds.iter().copied().zip(h.counts.clone()).collect();
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
    }
    Ok(())
}

/// `worker="..."`.
fn worker_labels(s: &WorkerSnapshot) -> LabelPairs {
    vec![("worker", s.worker.clone())]
}

/// `worker="...",pipeline="..."`.
fn pipeline_labels(s: &WorkerSnapshot, p: &PipelineSnapshot) -> LabelPairs {
    vec![("worker", s.worker.clone()), ("pipeline", p.name.clone())]
}

/// One sample per worker.
fn per_worker<'a, T>(
    workers: &[&'a WorkerSnapshot],
    f: impl Fn(&'a WorkerSnapshot) -> T,
) -> Vec<(LabelPairs, T)> {
    workers.iter().map(|s| (worker_labels(s), f(s))).collect()
}

/// One sample per pipeline of every worker, where `f` gives one.
fn per_pipeline<'a, T>(
    workers: &[&'a WorkerSnapshot],
    f: impl Fn(&'a WorkerSnapshot, &'a PipelineSnapshot) -> Option<(LabelPairs, T)>,
) -> Vec<(LabelPairs, T)> {
    workers
        .iter()
        .flat_map(|s| s.pipelines.iter().filter_map(|p| f(s, p)))
        .collect()
}

/// One sample per step of every pipeline of every worker.
fn per_step<'a, T>(
    workers: &[&'a WorkerSnapshot],
    f: impl Fn(&'a StepSnapshot) -> T,
) -> Vec<(LabelPairs, T)> {
    let mut samples = Vec::new();
    for s in workers {
        for p in &s.pipelines {
            for step in &p.steps {
                let mut labels = pipeline_labels(s, p);
                labels.push(("step", step.name.clone()));
                samples.push((labels, f(step)));
            }
        }
    }
    samples
}

/// A pipeline's value labelled with its source or sink (`kind`), when this
/// worker runs one (`name` not empty).
fn endpoint(
    s: &WorkerSnapshot,
    p: &PipelineSnapshot,
    kind: &'static str,
    name: &str,
    value: u64,
) -> Option<(LabelPairs, f64)> {
    if name.is_empty() {
        return None;
    }
    let mut labels = pipeline_labels(s, p);
    labels.push((kind, name.to_owned()));
    Some((labels, value as f64))
}

/// The cluster and each worker's liveness.
fn write_workers(e: Encoder, known: &[KnownWorker], expected_workers: usize) -> Written {
    gauge(
        e,
        "cluster_workers",
        "Workers in the cluster (1 for a single process).",
        vec![(vec![], expected_workers.max(known.len()).max(1) as f64)],
    )?;
    gauge(
        e,
        "worker_up",
        "1 while a worker runs and reports, 0 once it finished or was lost.",
        known
            .iter()
            .map(|k| {
                let mut labels = worker_labels(&k.snapshot);
                labels.push(("index", k.snapshot.index.to_string()));
                (labels, if k.is_up() { 1.0 } else { 0.0 })
            })
            .collect(),
    )?;
    gauge(
        e,
        "worker_start_time_seconds",
        "When the worker started (Unix time).",
        known
            .iter()
            .map(|k| (worker_labels(&k.snapshot), k.snapshot.started))
            .collect(),
    )?;
    gauge(
        e,
        "worker_report_age_seconds",
        "Seconds since the worker's metrics last arrived (0 for the one serving).",
        known
            .iter()
            .map(|k| (worker_labels(&k.snapshot), k.age))
            .collect(),
    )
}

/// What the sources read, and what they could not.
fn write_sources(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    let source = |s, p: &PipelineSnapshot, v| endpoint(s, p, "source", &p.source, v);
    counter(
        e,
        "source_records",
        "Records read by a source (frames, lines, messages).",
        None,
        per_pipeline(workers, |s, p| source(s, p, p.records_in)),
    )?;
    counter(
        e,
        "source_bytes",
        "Payload bytes read by a source.",
        None,
        per_pipeline(workers, |s, p| source(s, p, p.bytes_in)),
    )?;
    let mut bad = Vec::new();
    for s in workers {
        for b in &s.bad_input {
            let labels = vec![
                ("worker", s.worker.clone()),
                ("pipeline", b.pipeline.clone()),
                ("kind", b.kind.clone()),
            ];
            bad.push((labels, b.count as f64));
        }
    }
    counter(
        e,
        "bad_input",
        "Records that could not be read or decoded, by kind (kept in the dead-letter record).",
        None,
        bad,
    )?;
    counter(
        e,
        "dead_letter_failed",
        "Bad records that could not be written to the dead-letter file (disk full, ...).",
        None,
        per_worker(workers, |s| s.dead_letter_failed as f64),
    )
}

/// What each pipeline passed on, dropped and skipped.
fn write_pipelines(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    let families: [PipelineCounter; 3] = [
        (
            "pipeline_records_out",
            "Records encoded and handed to the pipeline's sink.",
            |p| p.records_out,
        ),
        (
            "pipeline_dropped",
            "Records a step of the pipeline dropped by returning None.",
            |p| p.dropped,
        ),
        (
            "pipeline_errors_skipped",
            "Records skipped because user code raised (--on-error skip).",
            |p| p.skipped_errors,
        ),
    ];
    for (name, help, value) in families {
        let samples = per_pipeline(workers, |s, p| {
            Some((pipeline_labels(s, p), value(p) as f64))
        });
        counter(e, name, help, None, samples)?;
    }
    Ok(())
}

/// Each step's records and Python time.
fn write_steps(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    counter(
        e,
        "step_records_in",
        "Records a step's Python code was called with (decoder and encoder included).",
        None,
        per_step(workers, |st| st.records_in as f64),
    )?;
    counter(
        e,
        "step_records_out",
        "Records a step passed on to the next one (the encoder: to the sink).",
        None,
        per_step(workers, |st| st.records_out as f64),
    )?;
    counter(
        e,
        "step_dropped",
        "Records a step dropped by returning None.",
        None,
        per_step(workers, |st| st.dropped as f64),
    )?;
    counter(
        e,
        "step_python",
        "Python time spent in a step: its calls times the mean of sampled calls.",
        Some(&Unit::Seconds),
        per_step(workers, |st| st.python_seconds),
    )?;
    histogram(
        e,
        "step_call_duration",
        "Duration of one call of a step's Python code (a random sample of records).",
        Some(&Unit::Seconds),
        per_step(workers, |st| &st.call_duration),
    )
}

/// Batch sizes and the source-to-sink latency.
fn write_batches_and_latency(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    histogram(
        e,
        "batch_size_records",
        "Records per batch handed to the Python chain (one GIL hold).",
        None,
        per_pipeline(workers, |s, p| {
            Some((pipeline_labels(s, p), &p.batch_sizes))
        }),
    )?;
    histogram(
        e,
        "source_to_sink_latency",
        "From the source reading a record to the sink writing what came of it.",
        Some(&Unit::Seconds),
        per_pipeline(workers, |s, p| {
            (!p.sink.is_empty()).then(|| (pipeline_labels(s, p), &p.latency))
        }),
    )
}

/// What the sinks wrote, and the Kafka sources' lag.
fn write_sinks(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    let families: [PipelineCounter; 4] = [
        ("sink_records", "Records a sink wrote.", |p| p.sink_records),
        ("sink_bytes", "Bytes a sink wrote.", |p| p.bytes_out),
        ("sink_errors", "Records a sink could not deliver.", |p| {
            p.sink_errors
        }),
        (
            "sink_retries",
            "Times a sink tried again to connect to its receiver or to write a batch.",
            |p| p.sink_retries,
        ),
    ];
    for (name, help, value) in families {
        let samples = per_pipeline(workers, |s, p| endpoint(s, p, "sink", &p.sink, value(p)));
        counter(e, name, help, None, samples)?;
    }
    let mut lag = Vec::new();
    for s in workers {
        for p in &s.pipelines {
            for (partition, messages) in &p.kafka_lag {
                let mut labels = pipeline_labels(s, p);
                labels.push(("topic", p.kafka_topic.clone()));
                labels.push(("partition", partition.to_string()));
                lag.push((labels, *messages as f64));
            }
        }
    }
    gauge(
        e,
        "kafka_consumer_lag_messages",
        "Messages of a partition not yet read by the source (high watermark minus position).",
        lag,
    )
}

/// Epoch progress and the keys of state each worker holds.
fn write_epochs_and_state(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    gauge(
        e,
        "epoch",
        "The epoch this worker's sources are in.",
        per_worker(workers, |s| s.epoch as f64),
    )?;
    counter(
        e,
        "epochs_completed",
        "Epochs whose records all went through this worker's dataflow.",
        None,
        per_worker(workers, |s| s.epochs_completed as f64),
    )?;
    histogram(
        e,
        "epoch_duration",
        "From an epoch's start to its completion.",
        Some(&Unit::Seconds),
        per_worker(workers, |s| &s.epoch_duration),
    )?;
    let mut keys = Vec::new();
    for s in workers {
        for (state, n) in &s.state_keys {
            let labels = vec![("worker", s.worker.clone()), ("state", state.clone())];
            keys.push((labels, *n as f64));
        }
    }
    gauge(
        e,
        "state_keys",
        "Partition keys whose state this worker holds.",
        keys,
    )
}

/// `worker="...",pipeline="...",step="..."` of a window stage.
fn window_labels(s: &WorkerSnapshot, w: &WindowSnapshot) -> LabelPairs {
    vec![
        ("worker", s.worker.clone()),
        ("pipeline", w.pipeline.clone()),
        ("step", w.step.clone()),
    ]
}

/// One sample per window stage of every worker, where `f` gives one.
fn per_window(
    workers: &[&WorkerSnapshot],
    f: impl Fn(&WindowSnapshot) -> Option<f64>,
) -> Vec<(LabelPairs, f64)> {
    workers
        .iter()
        .flat_map(|s| {
            s.windows
                .iter()
                .filter_map(|w| f(w).map(|v| (window_labels(s, w), v)))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One sample per source partition of every event-time window stage.
fn per_partition(
    workers: &[&WorkerSnapshot],
    f: impl Fn(&PartitionSnapshot) -> f64,
) -> Vec<(LabelPairs, f64)> {
    let mut samples = Vec::new();
    for s in workers {
        for w in &s.windows {
            for p in &w.partitions {
                let mut labels = window_labels(s, w);
                labels.push(("source", p.source.clone()));
                labels.push(("reader", p.reader.to_string()));
                labels.push(("stream", p.stream.to_string()));
                samples.push((labels, f(p)));
            }
        }
    }
    samples
}

/// Window stages: open and fired windows, late events, watermarks.
fn write_windows(e: Encoder, workers: &[&WorkerSnapshot]) -> Written {
    gauge(
        e,
        "window_open",
        "Windows of a window stage holding records that have not fired yet.",
        per_window(workers, |w| Some(w.open as f64)),
    )?;
    counter(
        e,
        "window_fired",
        "Windows a window stage fired (their output computed; on ingest time also empty ones).",
        None,
        per_window(workers, |w| Some(w.fired as f64)),
    )?;
    counter(
        e,
        "window_late_events",
        "Records that came after all their windows fired (event time), by stage: the records of \
         wallaroo_bad_input_total{kind=\"late_event\"}.",
        None,
        per_window(workers, |w| Some(w.late_events as f64)),
    )?;
    gauge(
        e,
        "window_watermark_seconds",
        "An event-time window stage's watermark (Unix time): the minimum over its source \
         partitions not idle.",
        per_window(workers, |w| w.watermark),
    )?;
    gauge(
        e,
        "window_watermark_lag_seconds",
        "How far the watermark is behind the worker's clock.",
        per_window(workers, |w| w.watermark_lag_seconds),
    )?;
    gauge(
        e,
        "window_event_time_lag_seconds",
        "How far the watermark is behind the newest event time of its partitions (what the \
         slowest partition holds back).",
        per_window(workers, |w| w.event_time_lag_seconds),
    )?;
    gauge(
        e,
        "window_partition_event_time_seconds",
        "The newest event time seen on a source partition of an event-time window stage (Unix \
         time).",
        per_partition(workers, |p| p.event_time),
    )?;
    gauge(
        e,
        "window_partition_lag_seconds",
        "How far a source partition's newest event time is behind the worker's clock.",
        per_partition(workers, |p| p.lag_seconds),
    )?;
    gauge(
        e,
        "window_partition_idle",
        "1 while a source partition is silent longer than the idle timeout (not holding the \
         watermark back).",
        per_partition(workers, |p| if p.idle { 1.0 } else { 0.0 }),
    )
}

impl prometheus_client::collector::Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Written {
        let e = &mut encoder;
        let workers: Vec<&WorkerSnapshot> = self.workers.iter().map(|w| &w.snapshot).collect();
        write_workers(e, &self.workers, self.expected_workers)?;
        write_sources(e, &workers)?;
        write_pipelines(e, &workers)?;
        write_steps(e, &workers)?;
        write_batches_and_latency(e, &workers)?;
        write_sinks(e, &workers)?;
        write_epochs_and_state(e, &workers)?;
        write_windows(e, &workers)
    }
}

/// The workers' metrics in the Prometheus text format (version 0.0.4);
/// `expected_workers` is the cluster's size (0 when unknown).
pub fn exposition(workers: Vec<KnownWorker>, expected_workers: usize) -> String {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metrics::counters::{EpochMetrics, PipelineMetrics};
    use crate::metrics::snapshot::BadCount;

    const MS: u64 = 1_000_000;

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
            windows: fixed_windows(1_700_000_010.25),
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

    /// An event-time stage with two partitions (one idle) and a count stage.
    pub(crate) fn fixed_windows(now: f64) -> Vec<WindowSnapshot> {
        let partition = |stream, event_time, idle| PartitionSnapshot {
            source: "Events".to_owned(),
            reader: 0,
            stream,
            event_time,
            idle,
            ..PartitionSnapshot::default()
        };
        let event = WindowSnapshot {
            stage: "app/1.0/Hourly".to_owned(),
            pipeline: "Events".to_owned(),
            step: "Hourly".to_owned(),
            kind: "event_time".to_owned(),
            open: 24,
            fired: 1_000,
            late_events: 3,
            watermark: Some(1_700_000_000.0),
            partitions: vec![
                partition(0, 1_700_000_000.0, false),
                partition(1, 1_700_000_004.5, true),
            ],
            ..WindowSnapshot::default()
        };
        let count = WindowSnapshot {
            stage: "app/2.0/Batches".to_owned(),
            pipeline: "Left+Right".to_owned(),
            step: "Batches".to_owned(),
            kind: "count".to_owned(),
            open: 2,
            fired: 7,
            ..WindowSnapshot::default()
        };
        vec![event.at(now), count.at(now)]
    }

    #[test]
    fn window_lags_are_taken_at_the_report() {
        let windows = fixed_windows(1_700_000_010.25);
        let event = &windows[0];
        assert_eq!(event.watermark_lag_seconds, Some(10.25));
        assert_eq!(event.event_time_lag_seconds, Some(4.5));
        let lags: Vec<f64> = event.partitions.iter().map(|p| p.lag_seconds).collect();
        assert_eq!(lags, [10.25, 5.75]);
        assert_eq!(windows[1].watermark_lag_seconds, None);
        assert_eq!(windows[1].event_time_lag_seconds, None);
    }

    #[test]
    fn exposition_text_is_pinned() {
        let text = exposition(fixed_workers(), 0);
        let pinned = include_str!("testdata/exposition.txt");
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
        let text = exposition(
            vec![KnownWorker {
                snapshot,
                local: true,
                age: 0.0,
                lost: false,
            }],
            0,
        );
        assert!(text.contains(
            "wallaroo_source_records_total{worker=\"w\\\"0\",pipeline=\"p\",source=\"file in.txt\"} 3"
        ));
        assert!(text.contains("# TYPE wallaroo_source_to_sink_latency_seconds histogram"));
        assert!(text.contains("wallaroo_step_python_seconds_total{"));
    }
}
