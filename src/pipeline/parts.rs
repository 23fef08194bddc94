//! What travels between the operators of a cluster pipeline: source batches
//! named across the cluster, and the parts of a batch for the state steps
//! (Python objects on this worker, serialized bytes for another).

use pyo3::prelude::*;
use serde::{Deserialize, Serialize};

use crate::sources::Frame;
use crate::steps::SortKey;

/// A source batch, named across the cluster: the worker that read it and
/// its number there. Every operator handles a reader's batches in number
/// order, so per-key order is source order wherever a record was decoded.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct BatchId {
    /// The reading worker.
    pub reader: u32,
    /// Batch number at the reading worker, from 0 (also spreads batches
    /// round-robin over the workers that decode them).
    pub seq: u64,
}

/// A batch read by one worker's source, on its way to the worker that decodes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrameBatch {
    /// Which batch this is.
    pub id: BatchId,
    /// The worker that decodes it.
    pub decoder: u32,
    /// The records.
    pub frames: Vec<Frame>,
}

/// The records of one batch for state steps on another worker, serialized
/// together. Sent even when empty: the owner counts the parts of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemotePart {
    /// The worker that owns the keys.
    pub owner: u32,
    /// The batch the records belong to.
    pub batch: BatchId,
    /// Where each record came from, and the state step it goes to.
    pub records: Vec<(SortKey, u32)>,
    /// A format byte, then `marshal.dumps` or `pickle.dumps` of
    /// `[(key, value), ...]` (see [`Codec`]); with the application's own
    /// `serialize`, each value is its bytes. Empty when there are no records.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A Python object inside one worker; never serialized by timely.
pub struct PyObject(pub Py<PyAny>);

impl Clone for PyObject {
    fn clone(&self) -> Self {
        Python::attach(|py| PyObject(self.0.clone_ref(py)))
    }
}

/// A record for a state step on this worker: the Python objects themselves.
#[derive(Clone)]
pub struct LocalRecord {
    /// Where it came from.
    pub order: SortKey,
    /// The index of the state step.
    pub step: u32,
    /// The partition key.
    pub key: PyObject,
    /// The record.
    pub value: PyObject,
}

/// The records of one batch for state steps on this worker (sent even when
/// empty, like [`RemotePart`]).
#[derive(Clone)]
pub struct LocalPart {
    /// The batch the records belong to.
    pub batch: BatchId,
    /// The records.
    pub records: Vec<LocalRecord>,
}
