//! A pipeline's dataflow, on a worker alone or in a cluster: the chain is
//! cut at its routed state steps. On a worker alone no step is routed (there
//! is no routing table), so the first operator runs the whole chain and
//! hands its output to the sink. In a cluster:
//!
//! ```text
//! source (reading worker) -> batches spread round-robin over all workers
//!        (or kept where read when every worker reads its own share)
//!   -> decode + stateless steps -> partition key -> owner of the key
//!        same worker: the Python object as is; other worker: serialized
//!   -> state step at the owner: a reader's batches in order, each as soon
//!      as all its parts are in
//!   -> the steps after it -> (next state step: same again) -> encode
//!   -> sink (file / TCP / stdout on worker 0; Kafka on every worker)
//! ```
//!
//! Records are serialized only when they cross workers: a batch of plain
//! data with `marshal`, anything else with pickle (or the application's own
//! `serialize`). Every batch sends one part, empty or not, to every worker
//! with a state step downstream, so an owner knows when it has a batch whole
//! and applies it at once, its records sorted by source position: per-key
//! order is source order whatever worker decoded a record, and records do
//! not wait for their epoch to complete (held records cost cache misses and
//! garbage-collector work).

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, Concatenate, InputCapability};
use timely::dataflow::{InputHandleCore, ProbeHandle, Scope, StreamCore};
use timely::worker::Worker;

use super::parts::{BatchId, FrameBatch, LocalPart, LocalRecord, PyObject, RemotePart};
use super::sequencer::{merge_parts, Sequencer};
use super::{run_guarded, sink_and_probe, FailureSlot, PipelineInput, PipelineParts};
use crate::codec::Codec;
use crate::errors::{format_py_err, StepFailure};
use crate::sinks::Output;
use crate::sources::Frame;
use crate::steps::{Chain, Emitted, Kind, SortKey};

type BatchInput = InputHandleCore<u64, CapacityContainerBuilder<Vec<FrameBatch>>>;

/// The input of a cluster pipeline: numbers its batches and says which
/// worker decodes each.
struct ClusterInput {
    handle: BatchInput,
    /// The next batch's id.
    next: BatchId,
    /// Workers in the cluster.
    peers: u32,
    /// Every worker reads its own share of the source: batches are decoded
    /// here, where they were read, rather than spread round-robin.
    read_everywhere: Arc<AtomicBool>,
}

impl ClusterInput {
    fn new(
        handle: BatchInput,
        reader: usize,
        peers: usize,
        read_everywhere: Arc<AtomicBool>,
    ) -> ClusterInput {
        let reader = u32::try_from(reader).unwrap_or(u32::MAX);
        ClusterInput {
            handle,
            next: BatchId { reader, seq: 0 },
            peers: u32::try_from(peers).unwrap_or(u32::MAX).max(1),
            read_everywhere,
        }
    }

    /// The worker that decodes batch `id`: its reader when every worker
    /// reads (no batch crosses, and records whose keys the reader owns stay
    /// Python objects), else the workers in turn.
    fn decoder(&self, id: BatchId) -> u32 {
        if self.read_everywhere.load(Ordering::Relaxed) {
            id.reader
        } else {
            let turn = id.seq.wrapping_add(u64::from(id.reader)) % u64::from(self.peers);
            u32::try_from(turn).unwrap_or(0)
        }
    }
}

impl PipelineInput for ClusterInput {
    fn send(&mut self, frames: Vec<Frame>) {
        let id = self.next;
        self.next.seq += 1;
        let decoder = self.decoder(id);
        self.handle.send(FrameBatch {
            id,
            decoder,
            frames,
        });
    }

    fn flush(&mut self) {
        self.handle.flush();
    }

    fn advance_to(&mut self, epoch: u64) {
        self.handle.advance_to(epoch);
    }
}

/// Records for one other worker: their positions and steps, and `(key, value)`.
type OutgoingBatch = (Vec<(SortKey, u32)>, Vec<(Py<PyAny>, Py<PyAny>)>);

/// The three kinds of output of a chain operator.
struct Routed {
    outputs: Vec<Output>,
    local: Vec<LocalPart>,
    remote: Vec<RemotePart>,
}

/// Where a chain operator sends the records it hands to the next state step.
#[derive(Clone, Copy)]
struct Fanout {
    /// This worker.
    me: usize,
    /// Workers in the cluster.
    peers: usize,
    /// A state step follows: every batch sends one part to every worker.
    downstream: bool,
}

/// Split what a chain produced for `batch` into sink output, the part for
/// this worker and the parts for the others (serialized here, under the GIL
/// of the batch). With a state step downstream every worker gets a part,
/// empty or not, so it knows when it has the whole batch: a part that cannot
/// be serialized goes empty, with the failure that stops the run.
fn route(
    py: Python<'_>,
    chain: &Chain,
    codec: &Codec,
    fanout: Fanout,
    batch: BatchId,
    emitted: Emitted,
) -> (Routed, Option<StepFailure>) {
    let mut routed = Routed {
        outputs: emitted.outputs,
        local: Vec::new(),
        remote: Vec::new(),
    };
    let mut failure = None;
    if !fanout.downstream {
        return (routed, failure);
    }
    let mut local = Vec::new();
    let mut remote: Vec<OutgoingBatch> = (0..fanout.peers).map(|_| Default::default()).collect();
    for record in emitted.keyed {
        let step = u32::try_from(record.step).unwrap_or(u32::MAX);
        if record.owner == fanout.me {
            local.push(LocalRecord {
                order: record.order,
                step,
                key: PyObject(record.key),
                value: PyObject(record.value),
            });
        } else {
            // The routing table is made for this generation's workers, so
            // the owner is one of them; the vector grows rather than drop a
            // record if that ever changed.
            if remote.len() <= record.owner {
                remote.resize_with(record.owner + 1, Default::default);
            }
            let entry = &mut remote[record.owner];
            entry.0.push((record.order, step));
            entry.1.push((record.key, record.value));
        }
    }
    routed.local.push(LocalPart {
        batch,
        records: local,
    });
    for (owner, (mut records, pairs)) in remote.into_iter().enumerate() {
        if owner == fanout.me {
            continue;
        }
        let mut data = Vec::new();
        if !pairs.is_empty() {
            match codec.encode(py, &pairs) {
                Ok(encoded) => data = encoded,
                Err((index, err)) => {
                    failure.get_or_insert(encode_failure(py, chain, &records, &pairs, index, &err));
                    records.clear();
                }
            }
        }
        routed.remote.push(RemotePart {
            owner: u32::try_from(owner).unwrap_or(u32::MAX),
            batch,
            records,
            data,
        });
    }
    (routed, failure)
}

/// The failure for a record pickle (or the app's `serialize`) refused.
fn encode_failure(
    py: Python<'_>,
    chain: &Chain,
    records: &[(SortKey, u32)],
    pairs: &[(Py<PyAny>, Py<PyAny>)],
    index: usize,
    err: &PyErr,
) -> StepFailure {
    let order = records.get(index).map(|r| r.0.clone()).unwrap_or_default();
    StepFailure {
        pipeline: chain.pipeline.clone(),
        step: "serialize (records crossing workers)".to_owned(),
        record: pairs
            .get(index)
            .map(|(_, value)| crate::errors::short_repr(value.bind(py), 200))
            .unwrap_or_default(),
        position: chain.source.describe(&crate::sources::Pos {
            stream: order.stream,
            index: order.index,
            offset: order.offset,
        }),
        detail: format_py_err(py, err),
    }
}

type Outputs<G, D> = timely::dataflow::channels::pushers::Output<
    <G as timely::dataflow::ScopeParent>::Timestamp,
    Vec<D>,
>;

/// The output ports of a chain operator: sink output, local and remote parts.
type Ports<G> = (
    Outputs<G, Output>,
    Outputs<G, LocalPart>,
    Outputs<G, RemotePart>,
);

/// Give the three kinds of output at `caps` (one capability per output port).
fn give<G: Scope<Timestamp = u64>>(
    ports: &mut Ports<G>,
    caps: &[Capability<u64>; 3],
    mut routed: Routed,
) {
    if !routed.outputs.is_empty() {
        ports.0.activate().give(&caps[0], &mut routed.outputs);
    }
    if !routed.local.is_empty() {
        ports.1.activate().give(&caps[1], &mut routed.local);
    }
    if !routed.remote.is_empty() {
        ports.2.activate().give(&caps[2], &mut routed.remote);
    }
}

/// What a chain operator needs: the chain, how records cross workers, where
/// they go next, and where a failure is recorded.
#[derive(Clone)]
struct Stage {
    chain: Rc<Chain>,
    codec: Rc<Codec>,
    fanout: Fanout,
    failure: FailureSlot,
}

impl Stage {
    /// Route what the chain produced for `batch` and give it to the
    /// operator's outputs; a serialization failure is recorded like a step
    /// failure.
    fn route_and_give<G: Scope<Timestamp = u64>>(
        &self,
        batch: BatchId,
        emitted: Emitted,
        ports: &mut Ports<G>,
        caps: &[Capability<u64>; 3],
    ) {
        let (routed, failed) =
            Python::attach(|py| route(py, &self.chain, &self.codec, self.fanout, batch, emitted));
        if let Some(step_failure) = failed {
            self.failure.borrow_mut().get_or_insert(step_failure);
        }
        give::<G>(ports, caps, routed);
    }
}

/// The three output streams of a chain operator.
struct ChainStreams<G: Scope<Timestamp = u64>> {
    outputs: StreamCore<G, Vec<Output>>,
    local: StreamCore<G, Vec<LocalPart>>,
    remote: StreamCore<G, Vec<RemotePart>>,
}

/// Capabilities for the three outputs of a chain operator at `cap`'s time.
fn output_caps(cap: &InputCapability<u64>) -> [Capability<u64>; 3] {
    [0, 1, 2].map(|port| cap.delayed_for_output(cap.time(), port))
}

/// Decode and the steps up to the first state step, wherever the batch landed.
fn prefix_operator<G: Scope<Timestamp = u64>>(
    batches: &StreamCore<G, Vec<FrameBatch>>,
    stage: Stage,
) -> ChainStreams<G> {
    let name = format!("decode {}", stage.chain.pipeline);
    let mut builder = OperatorBuilder::new(name, batches.scope());
    let to_decoder = Exchange::new(|batch: &FrameBatch| u64::from(batch.decoder));
    let mut input = builder.new_input(batches, to_decoder);
    let (out0, outputs) = builder.new_output::<Vec<Output>>();
    let (out1, local) = builder.new_output::<Vec<LocalPart>>();
    let (out2, remote) = builder.new_output::<Vec<RemotePart>>();
    builder.set_notify(false);
    builder.build(move |_capabilities| {
        let mut ports = (out0, out1, out2);
        move |_frontiers| {
            input.for_each(|cap, batches| {
                let caps = output_caps(&cap);
                for batch in batches.iter_mut() {
                    let chain = &stage.chain;
                    let emitted = run_guarded(&stage.failure, |py, out| {
                        chain.process(py, batch.id.reader, &mut batch.frames, out)
                    });
                    stage.route_and_give::<G>(batch.id, emitted, &mut ports, &caps);
                }
                batches.clear();
            });
        }
    });
    ChainStreams {
        outputs,
        local,
        remote,
    }
}

/// A state step at the owners of its keys, and the steps after it.
fn state_operator<G: Scope<Timestamp = u64>>(
    upstream: &ChainStreams<G>,
    stage: Stage,
    expected: usize,
    step_name: &str,
) -> ChainStreams<G> {
    let mut builder = OperatorBuilder::new(format!("state {step_name}"), upstream.local.scope());
    let mut local_in = builder.new_input(&upstream.local, Pipeline);
    let by_owner = Exchange::new(|part: &RemotePart| u64::from(part.owner));
    let mut remote_in = builder.new_input(&upstream.remote, by_owner);
    let (out0, outputs) = builder.new_output::<Vec<Output>>();
    let (out1, local) = builder.new_output::<Vec<LocalPart>>();
    let (out2, remote) = builder.new_output::<Vec<RemotePart>>();
    builder.build(move |_capabilities| {
        let mut ports = (out0, out1, out2);
        let mut sequencer = Sequencer::new(expected);
        move |frontiers| {
            local_in.for_each(|cap, parts| {
                for part in parts.drain(..) {
                    let gathered = sequencer.part(part.batch, *cap.time(), || output_caps(&cap));
                    gathered.local.extend(part.records);
                }
            });
            remote_in.for_each(|cap, parts| {
                for part in parts.drain(..) {
                    sequencer
                        .part(part.batch, *cap.time(), || output_caps(&cap))
                        .remote
                        .push(part);
                }
            });
            let ended = frontiers.iter().all(|f| f.is_empty());
            for (batch, gathered) in sequencer.ready(ended) {
                let Some((_, caps)) = gathered.first else {
                    continue;
                };
                let chain = &stage.chain;
                let codec = &stage.codec;
                let emitted = run_guarded(&stage.failure, |py, out| {
                    let records = merge_parts(py, chain, codec, gathered.local, gathered.remote)?;
                    chain.process_keyed(py, records, out)
                });
                stage.route_and_give::<G>(batch, emitted, &mut ports, &caps);
            }
        }
    });
    ChainStreams {
        outputs,
        local,
        remote,
    }
}

/// Build one pipeline of a cluster worker; returns its input.
pub(crate) fn build<A: Allocate>(
    worker: &mut Worker<A>,
    part: &PipelineParts,
    failure: FailureSlot,
    probe: &ProbeHandle<u64>,
) -> Box<dyn PipelineInput> {
    let me = worker.index();
    let peers = worker.peers();
    let mut handle = BatchInput::new();
    let chain = part.chain.clone();
    let codec = match Python::attach(|py| {
        Codec::with(py, chain.serialize.as_ref(), chain.deserialize.as_ref())
    }) {
        Ok(codec) => Rc::new(codec),
        Err(err) => {
            let detail = Python::attach(|py| format_py_err(py, &err));
            failure.borrow_mut().get_or_insert(StepFailure {
                pipeline: chain.pipeline.clone(),
                step: "serialize".to_owned(),
                record: String::new(),
                position: String::new(),
                detail,
            });
            return Box::new(ClusterInput::new(
                handle,
                me,
                peers,
                part.read_everywhere.clone(),
            ));
        }
    };
    // The state steps whose keys are routed (every one in a cluster, none
    // on a worker alone).
    let state_steps: Vec<String> = chain
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                Kind::State {
                    routing: Some(_),
                    ..
                }
            )
        })
        .map(|s| s.name.clone())
        .collect();
    let stage = |downstream: bool| Stage {
        chain: chain.clone(),
        codec: codec.clone(),
        fanout: Fanout {
            me,
            peers,
            downstream,
        },
        failure: failure.clone(),
    };
    let sink_tx = part.sink_tx.clone();
    let everywhere = part.sink_everywhere;
    let name = part.name.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        // Through a local operator before the exchange to the decoders: the
        // exchange sends what it buffered at the end of each operator's
        // activation, but from the input handle only when the epoch
        // advances, so a partial batch the worker flushed in (the first
        // ones, 1, 2, 4, ... records) waited up to an epoch for its decoder
        // (on 2 workers the first output came 0.11-0.19 s after the
        // sources' start, against 0.03 s on 1). Full batches still enter an
        // epoch at a time: the input handle holds them until then.
        let batches = handle
            .to_stream(scope)
            .unary::<CapacityContainerBuilder<Vec<FrameBatch>>, _, _, _>(
                Pipeline,
                "hand over",
                |_, _| {
                    |input, output| {
                        input.for_each(|time, data| output.session(&time).give_container(data))
                    }
                },
            );
        let mut streams = prefix_operator(&batches, stage(!state_steps.is_empty()));
        let mut outputs = Vec::new();
        for (i, step_name) in state_steps.iter().enumerate() {
            outputs.push(streams.outputs.clone());
            // A batch is decoded on one worker; after a state step every
            // worker sends its part.
            let expected = if i == 0 { 1 } else { peers };
            let downstream = i + 1 < state_steps.len();
            streams = state_operator(&streams, stage(downstream), expected, step_name);
        }
        outputs.push(streams.outputs.clone());
        let all = scope.concatenate(outputs);
        let to_sink = if everywhere {
            all.unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Pipeline,
                "local",
                |_, _| {
                    |input, output| {
                        input.for_each(|time, data| output.session(&time).give_container(data))
                    }
                },
            )
        } else {
            all.unary::<CapacityContainerBuilder<Vec<Output>>, _, _, _>(
                Exchange::new(|_: &Output| 0),
                "to worker 0",
                |_, _| {
                    |input, output| {
                        input.for_each(|time, data| output.session(&time).give_container(data))
                    }
                },
            )
        };
        sink_and_probe(&to_sink, &name, sink_tx, probe);
    });
    Box::new(ClusterInput::new(
        handle,
        me,
        peers,
        part.read_everywhere.clone(),
    ))
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
