//! A pipeline's dataflow on a worker alone: its input, one operator running
//! the whole Python chain per batch (the GIL taken once per batch), and the
//! sink.

use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{InputHandleCore, ProbeHandle};
use timely::worker::Worker;

use super::{run_guarded, sink_and_probe, FailureSlot, PipelineInput, PipelineParts};
use crate::sinks::Output;
use crate::sources::Frame;

/// The input of a pipeline in the single-process dataflow.
type FrameInput = InputHandleCore<u64, CapacityContainerBuilder<Vec<Frame>>>;

impl PipelineInput for FrameInput {
    fn send(&mut self, mut batch: Vec<Frame>) {
        self.send_batch(&mut batch);
    }

    fn advance_to(&mut self, epoch: u64) {
        FrameInput::advance_to(self, epoch);
    }
}

/// Build one pipeline of a worker alone; returns its input.
pub(crate) fn build<A: Allocate>(
    worker: &mut Worker<A>,
    part: &PipelineParts,
    failure: FailureSlot,
    probe: &ProbeHandle<u64>,
) -> Box<dyn PipelineInput> {
    let mut input = FrameInput::new();
    let chain = part.chain.clone();
    let sink_tx = part.sink_tx.clone();
    let name = part.name.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let outputs = input
            .to_stream(scope)
            .unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Pipeline,
                &format!("python chain {name}"),
                move |_capability, _info| {
                    move |input, output| {
                        input.for_each(|time, frames| {
                            let mut emitted =
                                run_guarded(&failure, |py, out| chain.process(py, 0, frames, out));
                            frames.clear();
                            if !emitted.outputs.is_empty() {
                                output.session(&time).give_container(&mut emitted.outputs);
                            }
                        });
                    }
                },
            );
        sink_and_probe(&outputs, &name, sink_tx, probe);
    });
    Box::new(input)
}
