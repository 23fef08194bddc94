//! What a worker keeps for the whole run, across cluster generations: state
//! stores, sinks, the sources that outlive a generation, counters, and crash
//! recovery's snapshot writer; the chains each generation is made of.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Sender;
use pyo3::prelude::*;

use crate::bad_input::BadInput;
use crate::control::RunHandle;
use crate::errors::Error;
use crate::metrics::PipelineMetrics;
use crate::plan::{Options, PipelinePlan, Plan, SinkKind, SourceKind, StateStep, StepKind};
use crate::recovery::{self, ResilienceRun};
use crate::routing::{canonical_key, RoutingTable};
use crate::sinks::order::OutputSequence;
use crate::sinks::{self, SinkContext, SinkMessage};
use crate::sources::{self, SourceContext, SourceHandle, SourcePosition};
use crate::state::StateStore;
use crate::steps::{Chain, Kind, Step};
use crate::sync::lock;

/// What a worker's resources tell at the end of the run (the summary's
/// numbers).
pub(crate) struct Totals {
    pub(crate) pipelines: Vec<(String, Arc<PipelineMetrics>)>,
    pub(crate) bad_input: BTreeMap<String, u64>,
    pub(crate) dead_letter_failed: u64,
    /// Sinks that could not deliver everything at the end: which, and why.
    pub(crate) sink_failures: Vec<String>,
    pub(crate) state_keys: Vec<(String, usize)>,
    pub(crate) interrupted: bool,
    /// Stopped by a second signal without finishing what was read.
    pub(crate) at_once: bool,
    pub(crate) seconds: f64,
    pub(crate) worker: usize,
    pub(crate) workers: usize,
}

/// A step as the plan gave it, kept to make each generation's chains.
pub(crate) struct StepTemplate {
    pub(crate) name: String,
    pub(crate) func: Py<PyAny>,
    pub(crate) kind: StepKind,
}

/// What a pipeline keeps for the whole run, across cluster generations.
pub(crate) struct PipelineResources {
    pub(crate) name: String,
    pub(crate) metrics: Arc<PipelineMetrics>,
    pub(crate) sink_tx: Option<Sender<SinkMessage>>,
    pub(crate) sink_everywhere: bool,
    /// Pipelines of one group share one sink.
    pub(crate) sink_group: Option<String>,
    /// A group's sink written on another worker (cluster; not Kafka): the
    /// group's outputs made here are numbered for it (shared by the group).
    pub(crate) output_order: Option<OutputSequence>,
    /// The source this worker reads for the whole run (taken out while a
    /// generation runs).
    pub(crate) source: Mutex<Option<SourceHandle>>,
    /// A Kafka source of a cluster: made again in each generation, with that
    /// generation's share of the partitions.
    pub(crate) kafka: Option<crate::plan::KafkaSourcePlan>,
    pub(crate) source_info: sources::SourceInfo,
    /// Where this worker's source stands (crash recovery): updated as
    /// batches enter the dataflow, written with each snapshot.
    pub(crate) position: Mutex<SourcePosition>,
    pub(crate) decode: Py<PyAny>,
    pub(crate) steps: Vec<StepTemplate>,
    pub(crate) encode: Option<Py<PyAny>>,
}

/// Everything a worker keeps for the whole run: state, sinks, sources,
/// counters. Shared (read-only) with the worker thread of each generation.
pub(crate) struct Resources {
    pub(crate) pipelines: Vec<PipelineResources>,
    pub(crate) stores: HashMap<String, Arc<StateStore>>,
    declared: HashMap<String, Vec<Vec<u8>>>,
    sink_threads: Mutex<Vec<std::thread::JoinHandle<Option<String>>>>,
    bad: Arc<BadInput>,
    pub(crate) serialize: Option<Py<PyAny>>,
    pub(crate) deserialize: Option<Py<PyAny>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) control: RunHandle,
    pub(crate) cluster: bool,
    options: SourceOptions,
    started: Instant,
    pub(crate) resilience: Option<ResilienceRun>,
    /// The snapshot this run went on from, if any.
    recovered: Option<u64>,
    /// This process's stream of numbered outputs (see `output_order`).
    output_stream: u64,
}

/// The options sources are made with.
#[derive(Clone)]
struct SourceOptions {
    batch_size: usize,
    max_frame_bytes: u64,
    max_records: Option<u64>,
}

fn declared_keys(py: Python<'_>, plan: &Plan) -> Result<HashMap<String, Vec<Vec<u8>>>, Error> {
    let mut declared: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for pipeline in &plan.pipelines {
        for step in &pipeline.steps {
            if let StepKind::State(StateStep {
                state_name, keys, ..
            }) = &step.kind
            {
                let entry = declared.entry(state_name.clone()).or_default();
                for key in keys {
                    let key = key.bind(py);
                    let canonical = canonical_key(key).ok_or_else(|| {
                        Error::Config(format!(
                            "step {:?}: declared partition key {key} is not a str, bytes, int \
                             or tuple of these",
                            step.name
                        ))
                    })?;
                    entry.push(canonical);
                }
            }
        }
    }
    Ok(declared)
}

impl Resources {
    /// Start the sinks and the sources this worker runs for the whole run.
    pub(crate) fn new(
        plan: Plan,
        options: &Options,
        worker: usize,
        peers: usize,
        stop: Arc<AtomicBool>,
        control: RunHandle,
    ) -> Result<Resources, Error> {
        let bad = control.counters().bad_input().clone();
        let cluster = options.cluster.is_some();
        let (stores, declared) = Python::attach(|py| -> Result<_, Error> {
            let mut stores = HashMap::new();
            for (name, class) in &plan.states {
                let keys = control.counters().state_keys(name);
                let mut store = StateStore::new(py, name.clone(), class.clone_ref(py), keys);
                if options.resilience.is_some() {
                    store.track_changes(py)?;
                }
                stores.insert(name.clone(), Arc::new(store));
            }
            Ok((stores, declared_keys(py, &plan)?))
        })?;
        let names = match &options.cluster {
            Some(membership) => membership.names.clone(),
            None => vec![options
                .resilience
                .as_ref()
                .map(|r| r.worker.clone())
                .unwrap_or_default()],
        };
        let (resilience, recovered) = match &options.resilience {
            Some(settings) => {
                let (run, recovered) = ResilienceRun::start(settings, &names, worker)?;
                (Some(run), recovered)
            }
            None => (None, None),
        };
        let mut resources = Resources {
            pipelines: Vec::new(),
            stores,
            declared,
            sink_threads: Mutex::new(Vec::new()),
            bad,
            serialize: plan.serialize,
            deserialize: plan.deserialize,
            stop,
            control,
            cluster,
            options: SourceOptions {
                batch_size: options.batch_size,
                max_frame_bytes: options.max_frame_bytes,
                max_records: options.max_records,
            },
            started: Instant::now(),
            resilience,
            recovered: recovered.as_ref().map(|r| r.id),
            output_stream: OutputSequence::draw_stream(),
        };
        let positions = match &recovered {
            Some(recovered) => {
                recovery::restore(
                    &resources.stores,
                    resources.serialize.as_ref(),
                    resources.deserialize.as_ref(),
                    recovered,
                )?;
                recovered.positions.clone()
            }
            None => BTreeMap::new(),
        };
        for pipeline in plan.pipelines {
            let resume = positions.get(&pipeline.name).cloned();
            let part = resources.pipeline(pipeline, options, worker, peers, resume)?;
            resources.pipelines.push(part);
        }
        Ok(resources)
    }

    /// Write a snapshot: the keys changed since the last one and where the
    /// sources stand. Called when the epochs before it are complete on
    /// every worker and none after it has started.
    pub(crate) fn snapshot(&self) -> Result<(), Error> {
        let Some(run) = &self.resilience else {
            return Ok(());
        };
        let positions = self
            .pipelines
            .iter()
            .map(|p| (p.name.clone(), lock(&p.position).clone()))
            .collect();
        let sinks: Vec<&Sender<SinkMessage>> = self
            .pipelines
            .iter()
            .filter_map(|p| p.sink_tx.as_ref())
            .collect();
        run.snapshot(
            &self.stores,
            self.serialize.as_ref(),
            self.deserialize.as_ref(),
            positions,
            &sinks,
        )
    }

    /// Note how many records each non-replayable source has handed over.
    pub(crate) fn note_progress(&self) {
        let Some(run) = &self.resilience else { return };
        let sent: BTreeMap<String, u64> = self
            .pipelines
            .iter()
            .filter_map(|p| {
                let position = lock(&p.position);
                (!position.replays()).then(|| (p.name.clone(), position.sent()))
            })
            .collect();
        if !sent.is_empty() {
            run.writer.progress(sent);
        }
    }

    pub(crate) fn source_context(
        &self,
        pipeline: &str,
        metrics: &Arc<PipelineMetrics>,
        stop: Arc<AtomicBool>,
        worker: usize,
        peers: usize,
        sent: u64,
    ) -> SourceContext {
        SourceContext {
            pipeline: pipeline.to_owned(),
            bad: self.bad.clone(),
            metrics: metrics.clone(),
            batch_size: self.options.batch_size,
            max_frame_bytes: self.options.max_frame_bytes,
            stop,
            worker,
            peers,
            remaining: self
                .options
                .max_records
                .map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n.saturating_sub(sent)))),
        }
    }

    fn pipeline(
        &mut self,
        pipeline: PipelinePlan,
        options: &Options,
        worker: usize,
        peers: usize,
        resume: Option<SourcePosition>,
    ) -> Result<PipelineResources, Error> {
        let position = resume.unwrap_or_else(|| SourcePosition::start(&pipeline.source.kind));
        let metrics = self.control.counters().register_pipeline(
            &pipeline.name,
            pipeline.steps.iter().map(|s| s.name.as_str()),
        );
        let mut sink_everywhere = false;
        let sink_group = pipeline.sink.as_ref().and_then(|s| s.group.clone());
        let shared = sink_group.as_ref().and_then(|group| {
            self.pipelines
                .iter()
                .find(|p| p.sink_group.as_ref() == Some(group))
                .map(|p| (p.sink_tx.clone(), p.sink_everywhere, p.output_order.clone()))
        });
        let mut output_order = None;
        let (encode, sink_tx) = match (pipeline.sink, shared) {
            (Some(sink), Some((tx, everywhere, order))) => {
                sink_everywhere = everywhere;
                output_order = order;
                (Some(sink.encode), tx)
            }
            (Some(sink), None) => {
                sink_everywhere = matches!(sink.kind, SinkKind::Kafka(_));
                if self.cluster && !sink_everywhere && sink_group.is_some() {
                    output_order = Some(OutputSequence::new(self.output_stream));
                }
                let tx = if sink_everywhere || worker == 0 {
                    let ctx = SinkContext {
                        pipeline: pipeline.name.clone(),
                        bad: self.bad.clone(),
                        metrics: metrics.clone(),
                        connect_timeout_s: options.sink_connect_timeout_s,
                        append: self.recovered.is_some(),
                        transactional_id: match (&sink.kind, &options.resilience) {
                            (SinkKind::Kafka(plan), Some(r)) if plan.transactions => Some(format!(
                                "wallaroo.{:016x}.{}.{}",
                                crate::routing::stable_hash(r.app.as_bytes()),
                                pipeline.name,
                                r.worker
                            )),
                            _ => None,
                        },
                        control: self.control.clone(),
                    };
                    let handle = sinks::start(sink.kind, ctx)?;
                    lock(&self.sink_threads).push(handle.thread);
                    Some(handle.tx)
                } else {
                    None
                };
                (Some(sink.encode), tx)
            }
            (None, _) => (None, None),
        };
        let kafka = matches!(pipeline.source.kind, SourceKind::Kafka(_));
        let mut source_info = sources::SourceInfo {
            label: format!("pipeline {} source", pipeline.name),
            style: sources::PosStyle::Frames,
        };
        let (source, kafka_plan) = match pipeline.source.kind {
            SourceKind::Kafka(plan) if self.cluster => {
                source_info = sources::SourceInfo {
                    label: format!("kafka topic {}", plan.topic),
                    style: sources::PosStyle::Partitions,
                };
                (None, Some(plan))
            }
            kind if worker == 0 || kafka => {
                let ctx = self.source_context(
                    &pipeline.name,
                    &metrics,
                    self.stop.clone(),
                    worker,
                    peers,
                    position.sent(),
                );
                let resume = self.resilience.as_ref().map(|_| &position);
                let handle = sources::start(kind, pipeline.source.framing, ctx, resume)?;
                source_info = handle.info.clone();
                (Some(handle), None)
            }
            _ => (None, None),
        };
        Ok(PipelineResources {
            name: pipeline.name,
            metrics,
            sink_tx,
            sink_everywhere,
            sink_group,
            output_order,
            source: Mutex::new(source),
            kafka: kafka_plan,
            source_info,
            position: Mutex::new(position),
            decode: pipeline.source.decode,
            steps: pipeline
                .steps
                .into_iter()
                .map(|s| StepTemplate {
                    name: s.name,
                    func: s.func,
                    kind: s.kind,
                })
                .collect(),
            encode,
        })
    }

    /// The routing tables for a generation of `peers` workers.
    pub(crate) fn tables(&self, peers: usize) -> HashMap<String, Arc<RoutingTable>> {
        self.declared
            .iter()
            .map(|(name, keys)| (name.clone(), Arc::new(RoutingTable::new(peers, keys))))
            .collect()
    }

    /// A pipeline's Python chain for a generation.
    pub(crate) fn chain(
        &self,
        py: Python<'_>,
        pipeline: &PipelineResources,
        tables: &HashMap<String, Arc<RoutingTable>>,
        on_error: crate::plan::OnError,
    ) -> Result<Chain, Error> {
        let steps = pipeline
            .steps
            .iter()
            .map(|step| {
                let kind = match &step.kind {
                    StepKind::Map => Kind::Map,
                    StepKind::Multi => Kind::Multi,
                    StepKind::State(StateStep {
                        state_name,
                        partition,
                        u64_keys,
                        multi,
                        keys: _,
                        tick,
                        share,
                        origin,
                    }) => Kind::State {
                        store: self.stores.get(state_name).cloned().ok_or_else(|| {
                            Error::Config(format!("state {state_name:?} has no state class"))
                        })?,
                        routing: tables.get(state_name).cloned(),
                        partition: partition.as_ref().map(|p| p.clone_ref(py)),
                        u64_keys: *u64_keys,
                        multi: *multi,
                        tick: tick.as_ref().map(|t| t.clone_ref(py)),
                        share: share.as_ref().map(|s| s.clone_ref(py)),
                        origin: *origin,
                    },
                };
                Ok(Step {
                    name: step.name.clone(),
                    func: step.func.clone_ref(py),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let own = |f: &Option<Py<PyAny>>| f.as_ref().map(|f| f.clone_ref(py));
        Ok(Chain {
            pipeline: pipeline.name.clone(),
            source: pipeline.source_info.clone(),
            decode: pipeline.decode.clone_ref(py),
            steps,
            encode: own(&pipeline.encode),
            on_error,
            bad: self.bad.clone(),
            metrics: pipeline.metrics.clone(),
            batch_counts: Default::default(),
            cluster: self.cluster,
            serialize: own(&self.serialize),
            deserialize: own(&self.deserialize),
            control: self.control.clone(),
            sequence: pipeline.output_order.clone(),
        })
    }

    /// Wait for the sinks' last flush and the sources' threads; the summary.
    pub(crate) fn finish(
        self,
        outcome: Result<bool, Error>,
        worker: usize,
        workers: usize,
    ) -> Result<Totals, Error> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(run) = &self.resilience {
            run.finish();
        }
        let mut pipelines = Vec::new();
        let mut sources = Vec::new();
        for pipeline in self.pipelines {
            pipelines.push((pipeline.name, pipeline.metrics));
            drop(pipeline.sink_tx);
            if let Some(source) = lock(&pipeline.source).take() {
                sources.push(source);
            }
        }
        // A sink whose final flush failed lost records: the run fails.
        let sink_failures: Vec<String> = lock(&self.sink_threads)
            .drain(..)
            .filter_map(|thread| match thread.join() {
                Ok(failure) => failure,
                Err(_) => Some("a sink thread panicked".to_owned()),
            })
            .collect();
        for source in sources {
            drop(source.rx);
            for thread in source.threads {
                let _ = thread.join();
            }
        }
        let at_once = self.control.stopping_at_once();
        let interrupted = match outcome {
            Err(Error::Step(failure)) if at_once => {
                log::warn!(
                    "stopped at once by a second signal while pipeline {:?}, step {:?} ran on \
                     record {} (from {}): that record and those read after it were not delivered",
                    failure.pipeline,
                    failure.step,
                    failure.record,
                    failure.position
                );
                true
            }
            Err(Error::Python(_)) if at_once => true,
            outcome => outcome?,
        };
        let state_keys = Python::attach(|py| {
            self.stores
                .values()
                .map(|store| (store.name.clone(), store.len(py)))
                .collect()
        });
        Ok(Totals {
            pipelines,
            bad_input: self.bad.counts(),
            dead_letter_failed: self.bad.dead_letter_failed(),
            sink_failures,
            state_keys,
            interrupted,
            at_once,
            seconds: self.started.elapsed().as_secs_f64(),
            worker,
            workers,
        })
    }
}
