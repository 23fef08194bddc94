//! The worker loop of one generation: moves batches from the sources into
//! the pipelines' inputs, advances epochs on a timer, bounds the epochs in
//! flight, steps the dataflow, sends timer ticks, takes snapshots at cuts
//! (the [`SnapshotClock`]), and watches for signals, aborts and a new
//! membership.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Select, TryRecvError};
use pyo3::prelude::*;
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandleCore, ProbeHandle};
use timely::worker::Worker;

use crate::control::NextMembership;
use crate::errors::{Error, StepFailure};
use crate::pipeline::{self, FailureSlot, PipelineInput, PipelineParts};
use crate::plan::{Options, StartOffset, StepKind};
use crate::resources::Resources;
use crate::routing::RoutingTable;
use crate::sources::{self, Frame, SourceHandle, SourcePosition};
use crate::sync::lock;

/// How often the worker looks for signals (Ctrl-C, SIGTERM).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);
/// How long the worker waits for input when it has nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Batches moved from one source per loop round, so one source cannot starve the others.
const BATCHES_PER_ROUND: usize = 4;
/// Epochs that may be open at once before sources wait (back-pressure).
const MAX_EPOCHS_IN_FLIGHT: u64 = 4;
/// An epoch also ends after this many records, so a fast source cannot put
/// an unbounded number of records into one epoch: the epochs in flight bound
/// the records in flight (and in a cluster, the batches a state step may
/// hold while an earlier batch of the same reader is still on its way).
const MAX_EPOCH_RECORDS: usize = 4096;

/// How often steps with timers (windows) get a tick.
const TICK_INTERVAL: Duration = Duration::from_millis(50);

/// A source as one generation sees it.
pub(crate) struct GenerationSource {
    handle: SourceHandle,
    /// Made for this generation (a cluster's Kafka source): stopped and
    /// joined when the generation ends. Otherwise it goes back to the
    /// pipeline's resources.
    own: Option<Arc<AtomicBool>>,
}

/// How one generation's worker loop ended.
pub(crate) struct Ran {
    /// A signal stopped the run.
    pub(crate) interrupted: bool,
    /// The next membership announced to this worker, if any.
    pub(crate) proposal: Option<NextMembership>,
    /// User code failed (the run stops once every worker has its decision).
    pub(crate) failed: Option<StepFailure>,
}

/// One generation of the worker: build the dataflow of every pipeline (with
/// the generation's routing `tables`; none on one process), drive it, and
/// end it (with crash recovery, a final snapshot when it finished).
pub(crate) fn run_generation<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    options: &Options,
    tables: &HashMap<String, Arc<RoutingTable>>,
    check_signals: bool,
) -> Result<Ran, Error> {
    let (index, peers) = (worker.index(), worker.peers());
    let failure: FailureSlot = Rc::new(RefCell::new(None));
    let probe = ProbeHandle::new();
    let mut inputs: Vec<Option<Box<dyn PipelineInput>>> = Vec::new();
    let mut sources: Vec<Option<GenerationSource>> = Vec::new();
    for pipeline in &resources.pipelines {
        let chain = Python::attach(|py| resources.chain(py, pipeline, tables, options.on_error))?;
        let source = match &pipeline.kafka {
            Some(plan) => {
                let stop = Arc::new(AtomicBool::new(resources.stop.load(Ordering::Relaxed)));
                let position = lock(&pipeline.position).clone();
                let ctx = resources.source_context(
                    &pipeline.name,
                    &pipeline.metrics,
                    stop.clone(),
                    index,
                    peers,
                    position.sent(),
                );
                let mut plan = plan.clone();
                if let (Some(_), SourcePosition::Kafka(at)) = (&resources.resilience, &position) {
                    at.resume(&mut plan);
                }
                if resources.control.generation() > 1 {
                    // Later generations go on from what the last one committed.
                    plan.start_offset = StartOffset::Committed;
                }
                let handle = sources::kafka::start(plan, ctx)?;
                Some(GenerationSource {
                    handle,
                    own: Some(stop),
                })
            }
            None => lock(&pipeline.source)
                .take()
                .map(|handle| GenerationSource { handle, own: None }),
        };
        let part = PipelineParts {
            name: pipeline.name.clone(),
            chain: Rc::new(chain),
            sink_tx: pipeline.sink_tx.clone(),
            sink_everywhere: pipeline.sink_everywhere,
            read_everywhere: source
                .as_ref()
                .map(|s| s.handle.read_everywhere.clone())
                .unwrap_or_default(),
        };
        let input = pipeline::build(worker, &part, failure.clone(), &probe);
        // A worker without this source closes its input at once, so the
        // epochs of the others are not held back (with snapshots, it waits
        // at the next cut instead: see SnapshotClock).
        inputs.push((source.is_some() || resources.resilience.is_some()).then_some(input));
        sources.push(source);
    }
    let outcome = drive(
        worker,
        resources,
        &mut inputs,
        &sources,
        &failure,
        options,
        &probe,
        check_signals,
    );
    if !matches!(outcome, Ok(DriveEnd::Reconfigure(_))) {
        resources.stop.store(true, Ordering::Relaxed);
    }
    inputs.clear();
    while worker.step_or_park(Some(IDLE_WAIT)) {
        if resources.control.pending_abort() {
            // The cluster is gone: nothing more will complete. Dropping the
            // dataflows closes the sink channels so the sinks flush and end.
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            break;
        }
    }
    for (pipeline, source) in resources.pipelines.iter().zip(sources) {
        let Some(source) = source else { continue };
        match source.own {
            Some(stop) => {
                stop.store(true, Ordering::Relaxed);
                drop(source.handle.rx);
                for thread in source.handle.threads {
                    let _ = thread.join();
                }
            }
            None => *lock(&pipeline.source) = Some(source.handle),
        }
    }
    if resources.resilience.is_some()
        && matches!(outcome, Ok(DriveEnd::Finished(_)))
        && failure.borrow().is_none()
        && !resources.control.pending_abort()
    {
        // The final state and positions: started again, the run goes on
        // from where this one ended.
        resources.snapshot()?;
    }
    let (interrupted, proposal) = match outcome? {
        DriveEnd::Finished(interrupted) => (interrupted, resources.control.take_reconfigure()),
        DriveEnd::Reconfigure(next) => (false, Some(next)),
    };
    let failed = failure.borrow_mut().take();
    Ok(Ran {
        interrupted,
        proposal,
        failed,
    })
}

/// The one generation of a worker alone (no cluster): whether a signal
/// stopped it.
pub(crate) fn run_alone<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    options: &Options,
) -> Result<bool, Error> {
    let ran = run_generation(worker, resources, options, &HashMap::new(), true)?;
    resources.control.take_reconfigure();
    match ran.failed {
        Some(failure) => Err(Error::Step(failure)),
        None => Ok(ran.interrupted),
    }
}

/// How the worker loop ended.
enum DriveEnd {
    /// Every input closed; `true` when a signal stopped the run.
    Finished(bool),
    /// A new membership was announced; every input is closed.
    Reconfigure(NextMembership),
}

/// Crash recovery in the worker loop. Snapshot `k` is cut at epoch
/// `k << 32`: when its time comes every source input moves to that epoch and
/// the worker stops feeding records until the probe shows every earlier
/// epoch complete on every worker (no epoch after it has started anywhere,
/// since it needs this worker's input); then the snapshot is written, the
/// inputs move to `(k << 32) + 1`, and feeding resumes only once the probe
/// passes that epoch too, that is once every worker has written its
/// snapshot `k`. Without that second step a worker that saw the cut pass
/// first would feed records that another worker's state steps apply (they
/// do not wait for their epoch) before that worker writes its snapshot `k`,
/// which would then hold records after the cut (counted again after a
/// recovery from it). A worker without a live source waits at the next cut,
/// so it never holds the others back. Inputs stay open until every worker's
/// sources have ended (the `alive` dataflow's frontier tells).
pub(crate) struct SnapshotClock<'a> {
    resources: &'a Resources,
    interval: Duration,
    next_at: Instant,
    cycle: CutCycle,
    alive: Option<InputHandleCore<u64, CapacityContainerBuilder<Vec<()>>>>,
    alive_probe: ProbeHandle<u64>,
    last_progress: Instant,
}

impl<'a> SnapshotClock<'a> {
    fn new<A: Allocate>(worker: &mut Worker<A>, resources: &'a Resources) -> Option<Self> {
        let run = resources.resilience.as_ref()?;
        let mut alive = InputHandleCore::new();
        let alive_probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            alive.to_stream(scope).probe_with(&alive_probe);
        });
        Some(SnapshotClock {
            resources,
            interval: run.interval,
            next_at: Instant::now() + run.interval,
            cycle: CutCycle::default(),
            alive: Some(alive),
            alive_probe,
            last_progress: Instant::now(),
        })
    }

    /// Whether records are held back (a cut is under way).
    fn pausing(&self) -> bool {
        self.cycle.pausing()
    }

    /// The epoch the inputs move to now, if any. The next cut is due on
    /// time (not while the last snapshot is still being written: a slow
    /// disk lengthens the interval), or at once without a live source.
    fn advance(&mut self, any_live: bool) -> Option<u64> {
        let writing = self
            .resources
            .resilience
            .as_ref()
            .is_some_and(|run| run.writer.busy());
        self.cycle
            .advance(!any_live || (Instant::now() >= self.next_at && !writing))
    }

    /// After a step: snapshot once the cut is complete everywhere; notice
    /// when every worker's sources have ended (then the inputs close).
    fn after_step(&mut self, probe: &ProbeHandle<u64>, any_live: bool) -> Result<bool, Error> {
        if let Some(why) = self
            .resources
            .resilience
            .as_ref()
            .and_then(|run| run.writer.gave_up())
        {
            return Err(Error::Config(why));
        }
        match self.cycle.observe(probe) {
            CutEvent::Snapshot => self.resources.snapshot()?,
            CutEvent::Resumed => self.next_at = Instant::now() + self.interval,
            CutEvent::None => {}
        }
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            self.resources.note_progress();
        }
        if !any_live {
            self.alive = None;
        }
        Ok(self.alive.is_none() && self.alive_probe.done())
    }
}

/// One worker's side of the snapshot cuts: snapshot `k` at epoch `k << 32`,
/// feeding again after `(k << 32) + 1` (see [`SnapshotClock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CutCycle {
    /// The next snapshot's number.
    cut: u64,
    phase: CutPhase,
}

impl Default for CutCycle {
    fn default() -> Self {
        CutCycle {
            cut: 1,
            phase: CutPhase::Feeding,
        }
    }
}

/// Where a worker is in the cycle of one snapshot's cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutPhase {
    /// Records are fed.
    Feeding,
    /// The inputs are at the cut; waiting for every epoch before it.
    Cutting,
    /// The snapshot is written; the inputs move past the cut next.
    Written,
    /// The inputs are past the cut; waiting until every worker's are (each
    /// moves them only after writing its snapshot).
    Releasing,
}

/// What [`CutCycle::observe`] asks of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutEvent {
    None,
    /// Write the snapshot now: every epoch before the cut is complete on
    /// every worker and no record after it has been fed anywhere.
    Snapshot,
    /// Every worker wrote its snapshot: records are fed again.
    Resumed,
}

impl CutCycle {
    /// The epoch of the next cut.
    fn cut_epoch(&self) -> u64 {
        self.cut << 32
    }

    /// Whether records are held back (a cut is under way).
    pub(crate) fn pausing(&self) -> bool {
        self.phase != CutPhase::Feeding
    }

    /// Whether the inputs move to a new epoch at once (a snapshot was just
    /// written and they are still at the cut).
    pub(crate) fn written(&self) -> bool {
        self.phase == CutPhase::Written
    }

    /// The epoch the inputs move to now, if any: the next cut when `due`
    /// (and records are being fed), or the epoch after the cut once this
    /// worker wrote its snapshot.
    pub(crate) fn advance(&mut self, due: bool) -> Option<u64> {
        match self.phase {
            CutPhase::Feeding if due => {
                self.phase = CutPhase::Cutting;
                Some(self.cut_epoch())
            }
            CutPhase::Written => {
                self.phase = CutPhase::Releasing;
                Some(self.cut_epoch() + 1)
            }
            _ => None,
        }
    }

    /// After a step: what the probe's frontier allows now.
    pub(crate) fn observe(&mut self, probe: &ProbeHandle<u64>) -> CutEvent {
        match self.phase {
            CutPhase::Cutting if !probe.less_than(&self.cut_epoch()) => {
                self.phase = CutPhase::Written;
                CutEvent::Snapshot
            }
            CutPhase::Releasing if !probe.less_than(&(self.cut_epoch() + 1)) => {
                self.cut += 1;
                self.phase = CutPhase::Feeding;
                CutEvent::Resumed
            }
            _ => CutEvent::None,
        }
    }
}

/// How often the count of records from non-replayable sources is stored.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The worker loop of one generation.
#[allow(clippy::too_many_arguments)]
fn drive<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    inputs: &mut [Option<Box<dyn PipelineInput>>],
    sources: &[Option<GenerationSource>],
    failure: &FailureSlot,
    options: &Options,
    probe: &ProbeHandle<u64>,
    check_signals: bool,
) -> Result<DriveEnd, Error> {
    let stop = &resources.stop;
    let control = &resources.control;
    let epoch_length = Duration::from_millis(options.epoch_ms);
    let mut clock = SnapshotClock::new(worker, resources);
    let mut live: Vec<bool> = sources.iter().map(Option::is_some).collect();
    let mut next_membership: Option<NextMembership> = None;
    let mut epoch = 0u64;
    let mut epoch_records = 0usize;
    let mut last_epoch = Instant::now();
    let mut epochs = crate::metrics::EpochTracker::new(control.counters());
    let mut last_signal_check = Instant::now();
    let mut last_tick = Instant::now();
    // Pipelines with timer steps (windows) get marker frames; others never.
    let timers: Vec<bool> = resources
        .pipelines
        .iter()
        .map(|p| {
            p.steps
                .iter()
                .any(|s| matches!(&s.kind, StepKind::State(state) if state.tick.is_some()))
        })
        .collect();
    let mut interrupted = false;
    loop {
        let pausing = clock.as_ref().is_some_and(SnapshotClock::pausing);
        if !pausing && last_tick.elapsed() >= TICK_INTERVAL {
            last_tick = Instant::now();
            for (slot, _) in inputs.iter_mut().zip(&timers).filter(|(_, timer)| **timer) {
                if let Some(input) = slot.as_mut() {
                    input.send(vec![Frame::marker(false)]);
                }
            }
        }
        let behind = pausing || probe.less_than(&epoch.saturating_sub(MAX_EPOCHS_IN_FLIGHT));
        let mut received = false;
        let mut records = 0usize;
        for (i, (slot, source)) in inputs.iter_mut().zip(sources).enumerate() {
            let (Some(input), Some(source), true) = (slot.as_mut(), source, live[i]) else {
                continue;
            };
            if behind {
                break;
            }
            for _ in 0..BATCHES_PER_ROUND {
                match source.handle.rx.try_recv() {
                    Ok(batch) => {
                        records += batch.len();
                        if clock.is_some() {
                            lock(&resources.pipelines[i].position).advance(&batch);
                        }
                        // Timely's input handle holds what it is sent until
                        // its buffer is full (about 170 batches) or the epoch
                        // advances. A batch smaller than the batch size (the
                        // first ones, or a source with little to read) goes
                        // in at once, so its outputs do not wait up to an
                        // epoch; full batches go in an epoch at a time (one
                        // message per epoch between workers: per batch, 2
                        // workers on a 1-partition topic took 13% more CPU).
                        let partial = batch.len() < options.batch_size;
                        input.send(batch);
                        if partial {
                            input.flush();
                        }
                        received = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        live[i] = false;
                        // A later run goes on from what the steps hold
                        // after a new membership, or after a stop or
                        // --max-records with crash recovery (the last
                        // snapshot keeps it). Otherwise the input is over
                        // for good: steps with timers fire what they hold
                        // (a stop without -r would lose open windows).
                        let cut = next_membership.is_some()
                            || (clock.is_some()
                                && (options.max_records.is_some() || stop.load(Ordering::Relaxed)));
                        if timers[i] && !cut {
                            input.send(vec![Frame::marker(true)]);
                        }
                        if clock.is_none() {
                            *slot = None;
                        }
                        break;
                    }
                }
            }
        }
        epoch_records += records;
        let any_live = live.iter().any(|l| *l);
        let mut advance = clock.as_mut().and_then(|c| c.advance(any_live));
        if advance.is_none()
            && !pausing
            && (last_epoch.elapsed() >= epoch_length || epoch_records >= MAX_EPOCH_RECORDS)
        {
            advance = Some(epoch + 1);
        }
        if let Some(next) = advance {
            epoch = next;
            epoch_records = 0;
            for input in inputs.iter_mut().flatten() {
                input.advance_to(epoch);
            }
            last_epoch = Instant::now();
            epochs.advanced(epoch);
        }
        worker.step();
        epochs.observe(probe);
        if let Some(clock) = clock.as_mut() {
            if clock.after_step(probe, any_live)? {
                // Every worker's sources have ended: close the inputs.
                inputs.iter_mut().for_each(|slot| *slot = None);
            }
        }
        if let Some(reason) = control.take_abort() {
            stop.store(true, Ordering::Relaxed);
            control.abort(reason.clone());
            return Err(Error::Cluster(reason));
        }
        if failure.borrow().is_some() {
            stop.store(true, Ordering::Relaxed);
            return Ok(DriveEnd::Finished(interrupted));
        }
        if next_membership.is_none() {
            if let Some(next) = control.take_reconfigure() {
                log::info!("the cluster changes: ending this generation at the current epoch");
                // Sources made for this generation end (and commit); the
                // others stay open for the next generation.
                for (slot, source) in inputs.iter_mut().zip(sources) {
                    match source.as_ref().and_then(|s| s.own.as_ref()) {
                        Some(own) => own.store(true, Ordering::Relaxed),
                        None => *slot = None,
                    }
                }
                next_membership = Some(next);
            }
        }
        if inputs.iter().all(Option::is_none) {
            return Ok(match next_membership {
                Some(next) => DriveEnd::Reconfigure(next),
                None => DriveEnd::Finished(interrupted),
            });
        }
        if check_signals && !interrupted && last_signal_check.elapsed() >= SIGNAL_CHECK {
            last_signal_check = Instant::now();
            if let Err(signal) = Python::attach(|py| py.check_signals()) {
                log::info!("stopping ({signal}): finishing what the sources have read");
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
            }
        }
        if control.stopping_at_once() {
            log::warn!(
                "stopping at once (a second signal): what was read and not yet delivered is not"
            );
            stop.store(true, Ordering::Relaxed);
            return Ok(DriveEnd::Finished(true));
        }
        if control.stop_requested() && !interrupted {
            log::info!("stopping: finishing what the sources have read");
            stop.store(true, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            for own in sources.iter().flatten().filter_map(|s| s.own.as_ref()) {
                own.store(true, Ordering::Relaxed);
            }
        }
        // A snapshot was just written: move the inputs past the cut at once.
        let written = clock.as_ref().is_some_and(|c| c.cycle.written());
        if !received && !written {
            let mut select = Select::new();
            let mut watched = 0;
            for ((slot, source), live) in inputs.iter().zip(sources).zip(&live) {
                if let (Some(_), Some(source), true) = (slot, source, live) {
                    select.recv(&source.handle.rx);
                    watched += 1;
                }
            }
            if behind || watched == 0 {
                worker.step_or_park(Some(IDLE_WAIT));
                continue;
            }
            let _ = select.ready_timeout(IDLE_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use timely::dataflow::operators::{Exchange, Inspect};

    use super::*;

    /// Two workers in one process: worker 0 feeds numbers, each is applied
    /// as soon as it reaches its owner (as the state steps do: they do not
    /// wait for their epoch), and worker 1 is slow to step, so it sees a
    /// cut pass only together with what worker 0 sent after it. Snapshot
    /// `k` of both workers must hold exactly the records worker 0 had fed
    /// at its snapshot `k`, never one after the cut.
    #[test]
    fn a_snapshot_on_every_worker_holds_exactly_the_records_before_its_cut() {
        const SNAPSHOTS: usize = 15;
        let guards = timely::execute(timely::Config::process(2), |worker| {
            let index = worker.index();
            let applied = Rc::new(Cell::new(0u64));
            let counter = applied.clone();
            let mut input = InputHandleCore::<u64, CapacityContainerBuilder<Vec<u64>>>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                input
                    .to_stream(scope)
                    .exchange(|n: &u64| *n)
                    .inspect(move |_| counter.set(counter.get() + 1))
                    .probe_with(&probe);
            });
            let mut cycle = CutCycle::default();
            let (mut fed, mut epoch, mut rounds) = (0u64, 0u64, 0u32);
            // (records applied here, records fed by this worker) at each snapshot.
            let mut snapshots = Vec::new();
            while snapshots.len() < SNAPSHOTS {
                if !cycle.pausing() && index == 0 {
                    for n in fed..fed + 20 {
                        input.send(n);
                    }
                    fed += 20;
                    rounds += 1;
                }
                // Worker 1 has no source: it goes to the next cut at once.
                let due = index == 1 || rounds >= 5;
                if let Some(next) = cycle.advance(due) {
                    epoch = next;
                    rounds = 0;
                } else if !cycle.pausing() {
                    epoch += 1;
                }
                input.advance_to(epoch);
                if index == 1 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                worker.step();
                if cycle.observe(&probe) == CutEvent::Snapshot {
                    snapshots.push((applied.get(), fed));
                }
            }
            snapshots
        })
        .expect("timely starts");
        let results: Vec<Vec<(u64, u64)>> = guards
            .join()
            .into_iter()
            .map(|r| r.expect("worker ran"))
            .collect();
        assert!(results.iter().all(|snapshots| snapshots.len() == SNAPSHOTS));
        for (k, (first, second)) in results[0].iter().zip(&results[1]).enumerate() {
            let in_state = first.0 + second.0;
            let fed = first.1;
            assert_eq!(
                in_state,
                fed,
                "snapshot {}: the workers' state holds {in_state} records, {fed} were fed \
                 before the cut",
                k + 1
            );
        }
    }
}
