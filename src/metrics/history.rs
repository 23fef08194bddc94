//! The history the web page draws: rates and percentiles, one point a
//! second, from the workers' snapshots.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::histogram::HistogramSnapshot;
use super::snapshot::{KnownWorker, PipelineSnapshot, WorkerSnapshot};

/// Points of history kept (one a second).
pub const HISTORY_POINTS: usize = 300;
/// Snapshots per worker kept for the latency percentiles (a window of seconds).
const WINDOW: usize = 6;
/// A worker whose last report is older than this shows no rate.
const STALE_SECONDS: f64 = 3.0;

/// One step at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepPoint {
    /// Records per second into the step.
    pub rate: f64,
    /// Mean Python time per record (seconds) over the window.
    pub mean: Option<f64>,
    /// Median sampled call duration (seconds) over the window.
    pub p50: Option<f64>,
    /// 99th percentile of sampled call durations.
    pub p99: Option<f64>,
}

/// One pipeline at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelinePoint {
    /// Records per second read by the source.
    pub r#in: f64,
    /// Records per second encoded for the sink.
    pub out: f64,
    /// Source-to-sink latency percentiles (seconds) over the window.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Per step.
    pub steps: BTreeMap<String, StepPoint>,
}

/// One worker (or the total) at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerPoint {
    /// Records per second read by sources.
    pub r#in: f64,
    /// Records per second encoded for sinks.
    pub out: f64,
    /// Records per second dropped by steps.
    pub dropped: f64,
    /// Bad input per second.
    pub bad: f64,
    /// Errors per second (skipped records and sink errors).
    pub errors: f64,
    /// Python calls per second (decoders, steps and encoders): the work done.
    pub calls: f64,
    /// Per pipeline.
    pub pipelines: BTreeMap<String, PipelinePoint>,
}

/// The rates of one second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    /// Unix seconds.
    pub t: f64,
    /// Every worker.
    pub total: WorkerPoint,
    /// Per worker.
    pub workers: BTreeMap<String, WorkerPoint>,
}

/// The last [`HISTORY_POINTS`] points, and each worker's last [`WINDOW`]
/// snapshots they come from.
#[derive(Default)]
pub struct History {
    points: VecDeque<Point>,
    windows: BTreeMap<String, VecDeque<WorkerSnapshot>>,
}

fn rate(new: u64, old: u64, seconds: f64) -> f64 {
    new.saturating_sub(old) as f64 / seconds
}

/// Rates between the two newest snapshots of a worker, percentiles over its
/// window; the latency and call-duration windows are returned for merging.
fn worker_point(
    window: &VecDeque<WorkerSnapshot>,
    stale: bool,
) -> (WorkerPoint, BTreeMap<String, HistogramSnapshot>) {
    let mut point = WorkerPoint::default();
    let mut latencies = BTreeMap::new();
    let (Some(cur), Some(oldest)) = (window.back(), window.front()) else {
        return (point, latencies);
    };
    let prev = if window.len() >= 2 {
        &window[window.len() - 2]
    } else {
        cur
    };
    let seconds = cur.time - prev.time;
    let moving = !stale && seconds > 0.0;
    let r = |new: u64, old: u64| if moving { rate(new, old, seconds) } else { 0.0 };
    point.r#in = r(cur.sum(|p| p.records_in), prev.sum(|p| p.records_in));
    point.out = r(cur.sum(|p| p.records_out), prev.sum(|p| p.records_out));
    point.dropped = r(cur.sum(|p| p.dropped), prev.sum(|p| p.dropped));
    point.bad = r(cur.bad_total(), prev.bad_total());
    point.errors = r(
        cur.sum(|p| p.skipped_errors + p.sink_errors),
        prev.sum(|p| p.skipped_errors + p.sink_errors),
    );
    for pipeline in &cur.pipelines {
        let find = |s: &WorkerSnapshot| {
            s.pipelines
                .iter()
                .find(|p| p.name == pipeline.name)
                .cloned()
        };
        let before = find(prev).unwrap_or_default();
        let first = find(oldest).unwrap_or_default();
        let latency = pipeline.latency.since(&first.latency);
        let mut pp = PipelinePoint {
            r#in: r(pipeline.records_in, before.records_in),
            out: r(pipeline.records_out, before.records_out),
            p50: latency.quantile(0.5),
            p95: latency.quantile(0.95),
            p99: latency.quantile(0.99),
            steps: BTreeMap::new(),
        };
        if !pipeline.sink.is_empty() {
            latencies.insert(pipeline.name.clone(), latency);
        }
        for step in &pipeline.steps {
            let find_step =
                |p: &PipelineSnapshot| p.steps.iter().find(|s| s.name == step.name).cloned();
            let step_before = find_step(&before).unwrap_or_default();
            let step_first = find_step(&first).unwrap_or_default();
            let durations = step.call_duration.since(&step_first.call_duration);
            let calls = step.records_in.saturating_sub(step_first.records_in);
            let seconds_in_python = (step.python_seconds - step_first.python_seconds).max(0.0);
            pp.steps.insert(
                step.name.clone(),
                StepPoint {
                    rate: r(step.records_in, step_before.records_in),
                    mean: (calls > 0).then(|| seconds_in_python / calls as f64),
                    p50: durations.quantile(0.5),
                    p99: durations.quantile(0.99),
                },
            );
        }
        point.calls += pp.steps.values().map(|s| s.rate).sum::<f64>();
        point.pipelines.insert(pipeline.name.clone(), pp);
    }
    (point, latencies)
}

fn max_option(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl History {
    /// Add the point of `now` from the workers' snapshots.
    pub fn add(&mut self, workers: &[KnownWorker], now: f64) {
        let history = self;
        for worker in workers {
            let window = history
                .windows
                .entry(worker.snapshot.worker.clone())
                .or_default();
            if window
                .back()
                .is_none_or(|last| last.time < worker.snapshot.time)
            {
                window.push_back(worker.snapshot.clone());
                while window.len() > WINDOW {
                    window.pop_front();
                }
            }
        }
        let mut point = Point {
            t: now,
            ..Point::default()
        };
        let mut merged: BTreeMap<String, HistogramSnapshot> = BTreeMap::new();
        for worker in workers {
            let name = &worker.snapshot.worker;
            let Some(window) = history.windows.get(name) else {
                continue;
            };
            let stale = worker.lost
                || worker.age > STALE_SECONDS
                || window.back().is_some_and(|s| now - s.time > STALE_SECONDS);
            let (wp, latencies) = worker_point(window, stale);
            for (pipeline, latency) in latencies {
                merged.entry(pipeline).or_default().merge(&latency);
            }
            let total = &mut point.total;
            total.r#in += wp.r#in;
            total.out += wp.out;
            total.dropped += wp.dropped;
            total.bad += wp.bad;
            total.errors += wp.errors;
            total.calls += wp.calls;
            for (name, pp) in &wp.pipelines {
                let tp = total.pipelines.entry(name.clone()).or_default();
                tp.r#in += pp.r#in;
                tp.out += pp.out;
                for (step, sp) in &pp.steps {
                    let ts = tp.steps.entry(step.clone()).or_default();
                    ts.rate += sp.rate;
                    // Slowest worker's percentiles: a bottleneck shows.
                    ts.p50 = max_option(ts.p50, sp.p50);
                    ts.p99 = max_option(ts.p99, sp.p99);
                    ts.mean = max_option(ts.mean, sp.mean);
                }
            }
            point.workers.insert(name.clone(), wp);
        }
        for (name, latency) in merged {
            if let Some(tp) = point.total.pipelines.get_mut(&name) {
                tp.p50 = latency.quantile(0.5);
                tp.p95 = latency.quantile(0.95);
                tp.p99 = latency.quantile(0.99);
            }
        }
        history.points.push_back(point);
        while history.points.len() > HISTORY_POINTS {
            history.points.pop_front();
        }
    }

    /// Points newer than `since`; with `only` (a worker's own view), only
    /// that worker's series, as the total too.
    pub fn since(&self, since: f64, only: Option<&str>) -> Vec<Point> {
        self.points
            .iter()
            .filter(|p| p.t > since)
            .map(|p| {
                let Some(me) = only else {
                    return p.clone();
                };
                let mine = p.workers.get(me).cloned().unwrap_or_default();
                Point {
                    t: p.t,
                    total: mine.clone(),
                    workers: BTreeMap::from([(me.to_owned(), mine)]),
                }
            })
            .collect()
    }

    /// The newest point (see [`History::since`]); empty before the first.
    pub fn latest(&self, only: Option<&str>) -> Point {
        self.since(0.0, only).pop().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::counters::PipelineMetrics;

    /// Worker `name`'s snapshot at `time`, its pipeline `p` having read
    /// `records`.
    fn report(name: &str, time: f64, records: u64) -> WorkerSnapshot {
        let m = PipelineMetrics::with_steps(["s"]);
        PipelineMetrics::add(&m.records_in, records);
        m.set_sink_label("stdout");
        WorkerSnapshot {
            worker: name.to_owned(),
            time,
            pipelines: vec![m.snapshot("p")],
            ..WorkerSnapshot::default()
        }
    }

    fn snapshot(time: f64, records: u64) -> WorkerSnapshot {
        report("w", time, records)
    }

    fn known(snapshot: WorkerSnapshot, lost: bool) -> KnownWorker {
        KnownWorker {
            snapshot,
            local: false,
            age: 0.0,
            lost,
        }
    }

    #[test]
    fn rates_come_from_the_two_newest_snapshots() {
        let window: VecDeque<_> = [snapshot(10.0, 0), snapshot(11.0, 100), snapshot(13.0, 500)]
            .into_iter()
            .collect();
        let (point, _) = worker_point(&window, false);
        assert_eq!(point.r#in, 200.0);
        assert_eq!(point.pipelines["p"].r#in, 200.0);
        let (stale, _) = worker_point(&window, true);
        assert_eq!(stale.r#in, 0.0);
    }

    #[test]
    fn a_point_sums_the_workers_and_a_worker_view_shows_its_own_series() {
        let mut history = History::default();
        history.add(
            &[
                known(report("a", 100.0, 0), false),
                known(report("b", 100.0, 0), false),
            ],
            100.5,
        );
        history.add(
            &[
                known(report("a", 101.0, 10), false),
                known(report("b", 101.0, 30), false),
            ],
            101.5,
        );
        let all = history.latest(None);
        assert_eq!(all.t, 101.5);
        assert_eq!(all.total.r#in, 40.0);
        assert_eq!(all.total.pipelines["p"].r#in, 40.0);
        assert_eq!(all.workers["a"].r#in, 10.0);
        assert_eq!(all.workers["b"].r#in, 30.0);
        let mine = history.latest(Some("b"));
        assert_eq!(mine.total.r#in, 30.0);
        assert_eq!(mine.workers.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(history.since(100.5, None).len(), 1);
        assert_eq!(history.since(0.0, None).len(), 2);
    }

    #[test]
    fn a_lost_or_silent_worker_adds_no_rate() {
        let mut history = History::default();
        history.add(
            &[
                known(report("a", 100.0, 0), false),
                known(report("b", 100.0, 0), false),
            ],
            100.0,
        );
        // b was lost; a's last report is older than STALE_SECONDS.
        history.add(
            &[
                known(report("a", 101.0, 10), false),
                known(report("b", 101.0, 50), true),
            ],
            101.0,
        );
        assert_eq!(history.latest(None).total.r#in, 10.0);
        history.add(
            &[known(report("a", 101.0, 10), false)],
            101.0 + STALE_SECONDS + 1.0,
        );
        assert_eq!(history.latest(None).total.r#in, 0.0);
    }

    #[test]
    fn the_history_keeps_its_last_points() {
        let mut history = History::default();
        for second in 0..HISTORY_POINTS + 5 {
            let t = second as f64;
            history.add(&[known(report("a", t, 10 * second as u64), false)], t);
        }
        let points = history.since(0.0, None);
        assert_eq!(points.len(), HISTORY_POINTS);
        assert_eq!(points.first().map(|p| p.t), Some(5.0));
        assert_eq!(points.last().map(|p| p.total.r#in), Some(10.0));
    }
}
