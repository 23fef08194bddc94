//! Calling the Python steps of a pipeline, a whole batch per GIL hold.
//!
//! A record goes through its whole chain (decoder, steps, state step, the
//! steps after it, encoder) before the next record starts, so an output that
//! aliases state is encoded before later records change that state.

use std::cell::Cell;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyList, PyString, PyTuple};

use crate::bad_input::BadInput;
use crate::control::RunHandle;
use crate::errors::{format_py_err, short_repr, StepFailure};
use crate::metrics::{ChainStats, PipelineMetrics};
use crate::plan::OnError;
use crate::pycall::{call1, call2, call3};
use crate::routing::{canonical_key, RoutingTable};
use crate::sinks::order::OutputSequence;
use crate::sinks::Output;
use crate::sources::{Frame, Pos, SourceInfo};
use crate::state::{check_key, StateStore};

const RECORD_REPR_LIMIT: usize = 300;

/// The key of the keyed records that carry a timer tick to every worker of
/// a cluster (the value is the `end` flag); no application key is this.
const TIMER_KEY: &str = "\u{0}wallaroo timer tick\u{0}";

fn is_timer_key(key: &Bound<'_, PyAny>) -> bool {
    key.cast::<PyString>()
        .is_ok_and(|s| s.to_cow().is_ok_and(|s| s == TIMER_KEY))
}

/// How a step is called.
pub enum Kind {
    /// `compute(data)`.
    Map,
    /// `compute_multi(data)`.
    Multi,
    /// `compute(data, state)` / `compute_multi(data, state)`.
    State {
        /// Where the states live.
        store: Arc<StateStore>,
        /// The partition function; None for one state object.
        partition: Option<Py<PyAny>>,
        /// Keys must be non-negative ints.
        u64_keys: bool,
        /// The output is a list.
        multi: bool,
        /// In a cluster: where keys live. A record reaching this step is then
        /// handed over (as a [`KeyedRecord`]) instead of running the step here.
        routing: Option<Arc<RoutingTable>>,
        /// Windows: `tick(states, end)` -> `[(key, outputs), ...]`, `(keys,
        /// outputs)` (flat: the changed keys, then every output) or None,
        /// called on the engine's timer and at the end of input.
        tick: Option<Py<PyAny>>,
        /// Event-time windows in a cluster: `share()` -> what goes with each
        /// tick to every worker (the tick's value is then `(end, shared)`).
        share: Option<Py<PyAny>>,
        /// Event-time windows: called as `compute(data, state, (reader,
        /// stream))`, so they keep a watermark per source partition.
        origin: bool,
    },
}

/// One step ready to call.
pub struct Step {
    /// The step name.
    pub name: String,
    /// The bound compute method.
    pub func: Py<PyAny>,
    /// How to call it.
    pub kind: Kind,
}

/// A pipeline's Python side: decoder, steps, encoder.
pub struct Chain {
    /// The pipeline name.
    pub pipeline: String,
    /// Names the source's positions.
    pub source: SourceInfo,
    /// The bound `decode`.
    pub decode: Py<PyAny>,
    /// The steps in order.
    pub steps: Vec<Step>,
    /// The bound `encode`; None when the pipeline has no sink.
    pub encode: Option<Py<PyAny>>,
    /// What to do when user code fails.
    pub on_error: OnError,
    /// Where bad input goes.
    pub bad: Arc<BadInput>,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// Counts of the batch in progress, added to `metrics` once per batch
    /// (per-record atomics would share a cache line with the IO threads).
    pub batch_counts: BatchCounts,
    /// Running in a cluster: fan-out paths are tracked for ordering.
    pub cluster: bool,
    /// The application's own `serialize`, for records crossing workers.
    pub serialize: Option<Py<PyAny>>,
    /// The application's own `deserialize`.
    pub deserialize: Option<Py<PyAny>>,
    /// The run's control: a second signal makes a failure the interruption.
    pub control: RunHandle,
    /// Outputs of merged pipelines written on another worker are numbered
    /// in the order made (see [`crate::sinks::order`]).
    pub sequence: Option<OutputSequence>,
}

/// Orders the records a state step applies within an epoch: source order
/// (reader worker, stream, record number), then the fan-out path.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SortKey {
    /// The worker whose source read the record.
    pub reader: u32,
    /// Connection / partition.
    pub stream: u32,
    /// Record number in the stream.
    pub index: u64,
    /// Output number at each fan-out step on the way.
    pub path: Vec<u32>,
    /// Byte offset / Kafka offset, for messages.
    pub offset: u64,
    /// When the source read it, for the latency metrics (never decides the
    /// order: the fields above identify a record).
    pub read_ns: u64,
}

/// A record handed to a state step on its owner: where it came from, the
/// index of the state step, the partition key and the record.
pub type Keyed = (SortKey, usize, Py<PyAny>, Py<PyAny>);

/// A record on its way to the state step `step`, owned by worker `owner`.
pub struct KeyedRecord {
    /// Where it came from, for ordering and messages.
    pub order: SortKey,
    /// The index of the state step.
    pub step: usize,
    /// The owner of the key.
    pub owner: usize,
    /// The partition key.
    pub key: Py<PyAny>,
    /// The record.
    pub value: Py<PyAny>,
}

/// What running records through a chain produced.
#[derive(Default)]
pub struct Emitted {
    /// Encoded records for the sink.
    pub outputs: Vec<Output>,
    /// Records handed over to a state step (cluster mode only).
    pub keyed: Vec<KeyedRecord>,
}

/// Per-batch counts kept on the worker thread.
#[derive(Default)]
pub struct BatchCounts {
    out: Cell<u64>,
    dropped: Cell<u64>,
    /// Per-step counts and sampled Python time (see [`crate::metrics::ChainStats`]).
    pub stats: crate::metrics::ChainStats,
}

impl BatchCounts {
    fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }

    fn flush(&self, metrics: &PipelineMetrics) {
        PipelineMetrics::add(&metrics.records_out, self.out.replace(0));
        PipelineMetrics::add(&metrics.dropped, self.dropped.replace(0));
        self.stats.flush(metrics);
    }
}

/// Where a record is while it goes through the chain.
#[derive(Clone)]
struct Cursor {
    order: SortKey,
}

impl Cursor {
    fn pos(&self) -> Pos {
        Pos {
            stream: self.order.stream,
            index: self.order.index,
            offset: self.order.offset,
        }
    }
}

impl Chain {
    /// Run every frame of `frames` (read by worker `reader`) through the
    /// chain. Err when user code failed and the policy is stop.
    pub fn process(
        &self,
        py: Python<'_>,
        reader: u32,
        frames: &mut Vec<Frame>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        self.batch_counts.stats.begin(&self.metrics, frames.len());
        let result = self.process_frames(py, reader, frames, out);
        self.batch_counts.flush(&self.metrics);
        result
    }

    fn process_frames(
        &self,
        py: Python<'_>,
        reader: u32,
        frames: &mut Vec<Frame>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        let decode = self.decode.bind(py);
        let stats = &self.batch_counts.stats;
        for frame in frames.drain(..) {
            if let Some(end) = frame.as_marker() {
                let result = self.tick(py, end, out);
                self.apply_policy(result, None)?;
                continue;
            }
            stats.record();
            let decoded = stats.call(ChainStats::DECODER, || {
                call1(decode, PyBytes::new(py, &frame.payload).as_any())
            });
            let value = match decoded {
                Ok(value) => value,
                Err(err) if err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => {
                    // A second Ctrl-C, not bad input.
                    let record = PyBytes::new(py, &frame.payload);
                    return Err(StepFailure {
                        pipeline: self.pipeline.clone(),
                        step: "decoder".into(),
                        record: short_repr(record.as_any(), RECORD_REPR_LIMIT),
                        position: self.source.describe(&frame.pos),
                        detail: format_py_err(py, &err),
                    });
                }
                Err(err) => {
                    self.bad.record(
                        &self.pipeline,
                        &self.source.describe(&frame.pos),
                        "decode_error",
                        &format_py_err(py, &err),
                        &frame.payload,
                    );
                    continue;
                }
            };
            let cursor = Cursor {
                order: SortKey {
                    reader,
                    stream: frame.pos.stream,
                    index: frame.pos.index,
                    path: Vec::new(),
                    offset: frame.pos.offset,
                    read_ns: frame.read_ns,
                },
            };
            let result = self.run(py, &cursor, 0, value, out);
            self.apply_policy(result, Some(&frame.payload))?;
        }
        Ok(())
    }

    /// Apply the state steps of records handed over to this worker, in the
    /// order given, and everything after them.
    pub fn process_keyed(
        &self,
        py: Python<'_>,
        records: Vec<Keyed>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        let mut result = Ok(());
        self.batch_counts.stats.begin(&self.metrics, 0);
        for (order, step, key, value) in records {
            let (key, value) = (key.into_bound(py), value.into_bound(py));
            let applied = if is_timer_key(&key) {
                self.tick_step(py, step, &value, out)
            } else {
                self.batch_counts.stats.record();
                self.run_state(py, &Cursor { order }, step, key, value, out)
            };
            if let Err(failure) = self.apply_policy(applied, None) {
                result = Err(failure);
                break;
            }
        }
        self.batch_counts.flush(&self.metrics);
        result
    }

    /// A timer tick (`end`: the pipeline's input ended): every step with a
    /// timer fires what is due over its states. In a cluster the tick goes
    /// to every worker as a keyed record of [`TIMER_KEY`] (each worker holds
    /// the states of its own keys); a step that shares (event-time windows:
    /// this worker's source partitions and their newest event times) sends
    /// `(end, shared)` instead of `end`, so every worker's watermark is the
    /// minimum over every partition any worker heard from.
    fn tick(&self, py: Python<'_>, end: bool, out: &mut Emitted) -> Result<(), StepFailure> {
        for (index, step) in self.steps.iter().enumerate() {
            let Kind::State {
                tick: Some(_),
                routing,
                share,
                ..
            } = &step.kind
            else {
                continue;
            };
            let flag = PyBool::new(py, end).to_owned().into_any();
            let Some(routing) = routing else {
                self.tick_step(py, index, &flag, out)?;
                continue;
            };
            let value = match share {
                Some(share) => share
                    .bind(py)
                    .call0()
                    .and_then(|shared| PyTuple::new(py, [flag.clone(), shared]))
                    .map(|pair| pair.into_any())
                    .map_err(|err| self.timer_failure(py, step, &flag, &err))?,
                None => flag,
            };
            for owner in 0..routing.workers() {
                out.keyed.push(KeyedRecord {
                    order: SortKey::default(),
                    step: index,
                    owner,
                    key: PyString::new(py, TIMER_KEY).into_any().unbind(),
                    value: value.clone().unbind(),
                });
            }
        }
        Ok(())
    }

    /// A timer step's call failed (`value`: the tick's value).
    fn timer_failure(
        &self,
        py: Python<'_>,
        step: &Step,
        value: &Bound<'_, PyAny>,
        err: &PyErr,
    ) -> StepFailure {
        let cursor = Cursor {
            order: SortKey::default(),
        };
        self.failure(
            &cursor,
            &format!("{} (timer)", step.name),
            value,
            format_py_err(py, err),
        )
    }

    /// Fire what the timer step `index` holds due here (`value`: the tick's,
    /// see [`Chain::tick`]); its outputs go through the rest of the chain
    /// like those of a record.
    fn tick_step(
        &self,
        py: Python<'_>,
        index: usize,
        value: &Bound<'_, PyAny>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        let step = &self.steps[index];
        let Kind::State {
            store,
            tick: Some(tick),
            ..
        } = &step.kind
        else {
            return Ok(());
        };
        let cursor = Cursor {
            order: SortKey::default(),
        };
        let failure = |err: PyErr| self.timer_failure(py, step, value, &err);
        let states = store.states.bind(py);
        let fired = call2(tick.bind(py), states.as_any(), value).map_err(failure)?;
        if fired.is_none() {
            return Ok(());
        }
        // `(keys, outputs)`: the keys whose state changed, then every output
        // in order (flat: no list and pair per key).
        let (keys, outputs): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
            fired.extract().map_err(failure)?;
        if store.tracks_changes() {
            for key in keys.try_iter().map_err(failure)? {
                store
                    .mark_changed(py, &key.map_err(failure)?)
                    .map_err(failure)?;
            }
        }
        self.next(py, &cursor, step, index, &keys, outputs, true, out)
    }

    /// Stop on a failure, or (`--on-error skip`) count it, log it (rate
    /// limited, like bad input) and keep the record like bad input (kind
    /// `step_error`): `payload` is the record's input bytes when known, else
    /// its repr.
    fn apply_policy(
        &self,
        result: Result<(), StepFailure>,
        payload: Option<&[u8]>,
    ) -> Result<(), StepFailure> {
        match (result, self.on_error) {
            (Ok(()), _) => Ok(()),
            (Err(failure), OnError::Stop) => Err(failure),
            (Err(failure), OnError::Skip) if self.control.stopping_at_once() => Err(failure),
            (Err(failure), OnError::Skip) => {
                PipelineMetrics::add(&self.metrics.skipped_errors, 1);
                const KIND: &str = "step_error";
                if self.bad.should_log(KIND) {
                    log::warn!(
                        "skipped a record (--on-error skip): pipeline {:?}, step {:?} failed on \
                         record {} (from {}): {}",
                        failure.pipeline,
                        failure.step,
                        failure.record,
                        failure.position,
                        failure.detail.trim_end().lines().last().unwrap_or_default()
                    );
                }
                self.bad.keep(
                    &failure.pipeline,
                    &failure.position,
                    KIND,
                    &failure.to_string(),
                    payload.unwrap_or(failure.record.as_bytes()),
                );
                Ok(())
            }
        }
    }

    fn failure(
        &self,
        cursor: &Cursor,
        step: &str,
        record: &Bound<'_, PyAny>,
        detail: String,
    ) -> StepFailure {
        StepFailure {
            pipeline: self.pipeline.clone(),
            step: step.to_owned(),
            record: short_repr(record, RECORD_REPR_LIMIT),
            position: self.source.describe(&cursor.pos()),
            detail,
        }
    }

    fn run<'py>(
        &self,
        py: Python<'py>,
        cursor: &Cursor,
        index: usize,
        value: Bound<'py, PyAny>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        let stats = &self.batch_counts.stats;
        stats.entered(index + 1);
        let Some(step) = self.steps.get(index) else {
            return self.emit(py, cursor, value, out);
        };
        let func = step.func.bind(py);
        let py_failure =
            |err: PyErr| self.failure(cursor, &step.name, &value, format_py_err(py, &err));
        match &step.kind {
            Kind::Map => {
                let result = stats
                    .call(index + 1, || call1(func, &value))
                    .map_err(py_failure)?;
                self.next(py, cursor, step, index, &value, result, false, out)
            }
            Kind::Multi => {
                let result = stats
                    .call(index + 1, || call1(func, &value))
                    .map_err(py_failure)?;
                self.next(py, cursor, step, index, &value, result, true, out)
            }
            Kind::State {
                partition, routing, ..
            } => {
                let key = match partition {
                    Some(partition) => call1(partition.bind(py), &value).map_err(|err| {
                        self.failure(
                            cursor,
                            &format!("{} (partition function)", step.name),
                            &value,
                            format_py_err(py, &err),
                        )
                    })?,
                    None => py.None().into_bound(py),
                };
                let Some(routing) = routing else {
                    return self.run_state(py, cursor, index, key, value, out);
                };
                let canonical = canonical_key(&key).ok_or_else(|| {
                    let detail = check_key(&key, false)
                        .err()
                        .unwrap_or_else(|| "invalid partition key".to_owned());
                    self.failure(cursor, &step.name, &value, detail)
                })?;
                out.keyed.push(KeyedRecord {
                    order: cursor.order.clone(),
                    step: index,
                    owner: routing.owner(&canonical),
                    key: key.unbind(),
                    value: value.unbind(),
                });
                Ok(())
            }
        }
    }

    /// Run the state step `index` for `key` here, then the rest of the chain.
    fn run_state<'py>(
        &self,
        py: Python<'py>,
        cursor: &Cursor,
        index: usize,
        key: Bound<'py, PyAny>,
        value: Bound<'py, PyAny>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        let step = &self.steps[index];
        let Kind::State {
            store,
            u64_keys,
            multi,
            tick,
            origin,
            ..
        } = &step.kind
        else {
            return self.run(py, cursor, index, value, out);
        };
        let py_failure =
            |err: PyErr| self.failure(cursor, &step.name, &value, format_py_err(py, &err));
        let state = store
            .get_or_create(py, &key, *u64_keys)
            .map_err(|detail| self.failure(cursor, &step.name, &value, detail))?;
        let func = step.func.bind(py);
        let result = match self.batch_counts.stats.call(index + 1, || {
            if *origin {
                let from = (cursor.order.reader, cursor.order.stream).into_pyobject(py)?;
                call3(func, &value, &state, from.as_any())
            } else {
                call2(func, &value, &state)
            }
        }) {
            Ok(result) => result,
            Err(err) => {
                // A window step that fired windows before the record's
                // `update` raised hands their outputs over on the exception
                // (they left the state): they go on, then the record fails.
                let fired = err
                    .value(py)
                    .getattr(pyo3::intern!(py, "_wallaroo_fired"))
                    .ok();
                if let Some(fired) = fired {
                    self.next(py, cursor, step, index, &value, fired, *multi, out)?;
                }
                return Err(py_failure(err));
            }
        };
        let shape_error = || {
            self.failure(
                cursor,
                &step.name,
                &value,
                format!(
                    "a state computation must return (output, state_changed) with \
                     state_changed a bool, got {}",
                    short_repr(&result, 200)
                ),
            )
        };
        let pair = result.cast::<PyTuple>().map_err(|_| shape_error())?;
        // Windows add a third item: None, or why the record is late.
        let late = match (pair.len(), tick) {
            (2, _) => None,
            (3, Some(_)) => Some(pair.get_item(2).map_err(py_failure)?),
            _ => return Err(shape_error()),
        };
        if let Some(late) = late.filter(|late| !late.is_none()) {
            self.keep_late(cursor, &value, &late);
        }
        let changed = pair.get_item(1).map_err(py_failure)?;
        if !changed.is_instance_of::<PyBool>() {
            return Err(shape_error());
        }
        let output = pair.get_item(0).map_err(py_failure)?;
        self.next(py, cursor, step, index, &value, output, *multi, out)
    }

    /// A record a window step found late (every window it belongs to has
    /// fired): counted, logged with where it came from and kept like bad
    /// input (kind `late_event`; the payload is the record's repr).
    fn keep_late(&self, cursor: &Cursor, value: &Bound<'_, PyAny>, why: &Bound<'_, PyAny>) {
        let record = value
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| short_repr(value, RECORD_REPR_LIMIT));
        let detail = why
            .str()
            .map(|d| d.to_string())
            .unwrap_or_else(|_| short_repr(why, RECORD_REPR_LIMIT));
        self.bad.record(
            &self.pipeline,
            &self.source.describe(&cursor.pos()),
            "late_event",
            &detail,
            record.as_bytes(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn next<'py>(
        &self,
        py: Python<'py>,
        cursor: &Cursor,
        step: &Step,
        index: usize,
        input: &Bound<'py, PyAny>,
        result: Bound<'py, PyAny>,
        multi: bool,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        if result.is_none() {
            BatchCounts::bump(&self.batch_counts.dropped);
            self.batch_counts.stats.dropped(index + 1);
            return Ok(());
        }
        if !multi {
            return self.run(py, cursor, index + 1, result, out);
        }
        // A list or tuple goes by index: no iterator object per call (an
        // empty tuple is a window step's usual result, a flat list of every
        // output its timer fired the tick's).
        if let Ok(list) = result.cast_exact::<PyList>() {
            for (number, item) in list.iter().enumerate() {
                self.next_item(py, cursor, index, number, item, out)?;
            }
            return Ok(());
        }
        if let Ok(tuple) = result.cast_exact::<PyTuple>() {
            for (number, item) in tuple.iter().enumerate() {
                self.next_item(py, cursor, index, number, item, out)?;
            }
            return Ok(());
        }
        let items = result.try_iter().map_err(|_| {
            self.failure(
                cursor,
                &step.name,
                input,
                format!(
                    "compute_multi must return a list or None, got {}",
                    short_repr(&result, 200)
                ),
            )
        })?;
        for (number, item) in items.enumerate() {
            let item =
                item.map_err(|e| self.failure(cursor, &step.name, input, format_py_err(py, &e)))?;
            self.next_item(py, cursor, index, number, item, out)?;
        }
        Ok(())
    }

    /// Output `number` of the multi step `index`: through the rest of the chain.
    fn next_item<'py>(
        &self,
        py: Python<'py>,
        cursor: &Cursor,
        index: usize,
        number: usize,
        item: Bound<'py, PyAny>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        if item.is_none() {
            BatchCounts::bump(&self.batch_counts.dropped);
            self.batch_counts.stats.dropped(index + 1);
            Ok(())
        } else if self.cluster {
            let mut branch = cursor.clone();
            branch
                .order
                .path
                .push(u32::try_from(number).unwrap_or(u32::MAX));
            self.run(py, &branch, index + 1, item, out)
        } else {
            self.run(py, cursor, index + 1, item, out)
        }
    }

    fn emit(
        &self,
        py: Python<'_>,
        cursor: &Cursor,
        value: Bound<'_, PyAny>,
        out: &mut Emitted,
    ) -> Result<(), StepFailure> {
        let Some(encode) = &self.encode else {
            return Ok(());
        };
        let encoded = self
            .batch_counts
            .stats
            .call(self.steps.len() + 1, || call1(encode.bind(py), &value))
            .map_err(|err| self.failure(cursor, "encoder", &value, format_py_err(py, &err)))?;
        if encoded.is_none() {
            return Ok(());
        }
        // Several sinks (`to_sinks`): the plan's encoder returns a list, item
        // `i` for sink `i` (None: nothing for that sink).
        let per_sink = encoded.cast::<PyList>().ok();
        let items: Vec<Bound<'_, PyAny>> = match &per_sink {
            Some(list) => list.iter().collect(),
            None => vec![encoded],
        };
        for (sink, item) in items.iter().enumerate() {
            if item.is_none() {
                continue;
            }
            let Some(mut output) = to_output(item) else {
                return Err(self.failure(
                    cursor,
                    "encoder",
                    &value,
                    format!(
                        "encode() must return bytes, str, (value, key), (value, key, partition) \
                         or None, got {}",
                        short_repr(item, 200)
                    ),
                ));
            };
            output.read_ns = cursor.order.read_ns;
            output.sink = u16::try_from(sink).unwrap_or(u16::MAX);
            if let Some(sequence) = &self.sequence {
                sequence.stamp(&mut output);
            }
            out.outputs.push(output);
            BatchCounts::bump(&self.batch_counts.out);
        }
        Ok(())
    }
}

fn to_bytes(obj: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Some(bytes.as_bytes().to_vec());
    }
    if let Ok(text) = obj.cast::<PyString>() {
        return text.to_cow().ok().map(|s| s.as_bytes().to_vec());
    }
    if let Ok(array) = obj.cast::<PyByteArray>() {
        return Some(array.to_vec());
    }
    None
}

/// An encoder's result as bytes: bytes, str (UTF-8), bytearray, `(value,
/// key)` (0.4.2) or `(value, key, partition)` (0.5+; the Kafka partition, an
/// int, or None for the producer's partitioner).
pub fn to_output(encoded: &Bound<'_, PyAny>) -> Option<Output> {
    if let Some(value) = to_bytes(encoded) {
        return Some(Output {
            value,
            ..Output::default()
        });
    }
    let items = encoded.cast::<PyTuple>().ok()?;
    if !matches!(items.len(), 2 | 3) {
        return None;
    }
    let value = to_bytes(&items.get_item(0).ok()?)?;
    let key = items.get_item(1).ok()?;
    let key = if key.is_none() {
        None
    } else {
        Some(to_bytes(&key)?)
    };
    let partition = match items.get_item(2) {
        Ok(partition) if !partition.is_none() => Some(partition.extract::<i32>().ok()?),
        _ => None,
    };
    Some(Output {
        value,
        key,
        partition,
        ..Output::default()
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    fn output_of(code: &str) -> Option<Output> {
        Python::initialize();
        Python::attach(|py| {
            let code = CString::new(code).expect("no NUL in test code");
            let encoded = py
                .eval(&code, None, None)
                .expect("test expression evaluates");
            to_output(&encoded)
        })
    }

    #[test]
    fn an_encoder_result_gives_value_key_and_partition() {
        let plain = output_of("'v'").expect("a str is an output");
        assert_eq!(
            (plain.value, plain.key, plain.partition),
            (b"v".to_vec(), None, None)
        );
        let keyed = output_of("(b'v', 'k')").expect("0.4.2's (value, key)");
        assert_eq!((keyed.key, keyed.partition), (Some(b"k".to_vec()), None));
        let placed = output_of("(b'v', None, 2)").expect("0.5's (value, key, partition)");
        assert_eq!((placed.key, placed.partition), (None, Some(2)));
        let unplaced = output_of("('v', b'k', None)").expect("a None partition");
        assert_eq!(
            (unplaced.key, unplaced.partition),
            (Some(b"k".to_vec()), None)
        );
        assert!(
            output_of("(b'v', None, 'two')").is_none(),
            "a partition must be an int"
        );
        assert!(
            output_of("(b'v', None, 2, 3)").is_none(),
            "at most three items"
        );
    }
}
