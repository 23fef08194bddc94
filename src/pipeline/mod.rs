//! Building a pipeline's timely dataflow for one generation, and the pieces
//! every builder shares: the input the worker loop feeds, the guarded call
//! into the chain, and the sink at the end.
//!
//! One builder for a worker alone and a cluster ([`exchange`]): the chain
//! is cut at its routed state steps and records travel to the owners of
//! their keys, where [`sequencer`] restores per-key order. On a worker alone
//! no state step is routed, so a pipeline is its input, one operator
//! running the whole chain, and the sink.

pub mod exchange;
pub mod parts;
pub mod sequencer;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::Sender;
use pyo3::prelude::*;
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::errors::StepFailure;
use crate::sinks::{Output, SinkMessage};
use crate::sources::Frame;
use crate::steps::{Chain, Emitted};

/// One pipeline of one generation, ready to be built into the dataflow.
pub(crate) struct PipelineParts {
    /// The pipeline name.
    pub name: String,
    /// Its Python side.
    pub chain: Rc<Chain>,
    /// Where its encoded records go on this worker, if anywhere.
    pub sink_tx: Option<Sender<SinkMessage>>,
    /// Whether its sink runs on every worker (Kafka) rather than on worker 0.
    pub sink_everywhere: bool,
    /// Set once every worker reads its own share of the source
    /// ([`crate::sources::SourceHandle::read_everywhere`]).
    pub read_everywhere: Arc<AtomicBool>,
}

/// The shared slot where an operator reports a failure of user code.
pub(crate) type FailureSlot = Rc<RefCell<Option<StepFailure>>>;

/// A pipeline input as the worker loop sees it.
pub(crate) trait PipelineInput {
    /// Hand a batch read by this worker's source to the dataflow.
    fn send(&mut self, batch: Vec<Frame>);
    /// Hand what was sent to the dataflow now, not when the epoch advances.
    fn flush(&mut self);
    /// Move to the next epoch.
    fn advance_to(&mut self, epoch: u64);
}

/// Build one pipeline of this generation (cut at its routed state steps,
/// spread over the workers); returns its input.
pub(crate) fn build<A: Allocate>(
    worker: &mut Worker<A>,
    part: &PipelineParts,
    failure: FailureSlot,
    probe: &ProbeHandle<u64>,
) -> Box<dyn PipelineInput> {
    exchange::build(worker, part, failure, probe)
}

/// The end of a pipeline's dataflow: hand batches to the sink thread, then
/// the probe, so an epoch is complete only once its output is with the sink.
pub(crate) fn sink_and_probe<G: timely::dataflow::Scope<Timestamp = u64>>(
    stream: &timely::dataflow::StreamCore<G, Vec<Output>>,
    name: &str,
    sink_tx: Option<Sender<SinkMessage>>,
    probe: &ProbeHandle<u64>,
) {
    stream
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Pipeline,
            &format!("sink {name}"),
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|_time, batch| send_to_sink(&sink_tx, batch));
                }
            },
        )
        .probe_with(probe);
}

/// Run a batch through a chain, recording a failure instead of raising.
pub(crate) fn run_guarded(
    failure: &FailureSlot,
    work: impl FnOnce(Python<'_>, &mut Emitted) -> Result<(), StepFailure>,
) -> Emitted {
    let mut emitted = Emitted::default();
    if failure.borrow().is_some() {
        return emitted;
    }
    let result = Python::attach(|py| work(py, &mut emitted));
    if let Err(step_failure) = result {
        *failure.borrow_mut() = Some(step_failure);
    }
    emitted
}

/// The sink end of a pipeline: blocking sends to the sink thread.
pub(crate) fn send_to_sink(tx: &Option<Sender<SinkMessage>>, batch: &mut Vec<Output>) {
    let batch = std::mem::take(batch);
    if let Some(tx) = tx {
        // Blocks while the sink is behind: back-pressure.
        if tx.send(SinkMessage::Batch(batch)).is_err() {
            log::error!("the sink thread has stopped; output is lost");
        }
    }
}
