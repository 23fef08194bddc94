//! The workers' snapshots in the Prometheus text format.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::histogram::HistogramSnapshot;
use super::registry::cluster;
use super::snapshot::{KnownWorker, PipelineSnapshot, StepSnapshot, WorkerSnapshot};

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
