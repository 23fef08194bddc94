//! Partitioned state: the state objects of one state name by partition key
//! (a Python dict, created on first use by calling the state class), the
//! keys changed since the last snapshot, and which keys are valid.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PySet, PyString, PyTuple};

use crate::errors::{format_py_err, short_repr};

/// The state objects of one state name, by partition key.
pub struct StateStore {
    /// The state name (shared by every pipeline that names it).
    pub name: String,
    class: Py<PyAny>,
    pub(crate) states: Py<PyDict>,
    /// Keys held, for the metrics (bumped when a key's state is created).
    keys: Arc<AtomicU64>,
    /// With crash recovery: the keys whose state ran or arrived since the
    /// last snapshot, and those that left this worker.
    changes: Option<Changes>,
}

/// Keys changed since the last snapshot (Python sets: one `add` per record).
struct Changes {
    dirty: Py<PySet>,
    removed: Py<PySet>,
}

/// A key's change since the last snapshot: its state, or None when it left.
pub type Change = (Py<PyAny>, Option<Py<PyAny>>);

impl StateStore {
    /// An empty store whose states are made by calling `class()`; `keys`
    /// counts its keys (the run's metrics).
    pub fn new(py: Python<'_>, name: String, class: Py<PyAny>, keys: Arc<AtomicU64>) -> StateStore {
        StateStore {
            keys,
            name,
            class,
            states: PyDict::new(py).unbind(),
            changes: None,
        }
    }

    /// Track changed keys from now on (crash recovery takes snapshots).
    pub fn track_changes(&mut self, py: Python<'_>) -> PyResult<()> {
        self.changes = Some(Changes {
            dirty: PySet::empty(py)?.unbind(),
            removed: PySet::empty(py)?.unbind(),
        });
        Ok(())
    }

    /// The keys changed since the last call, with their states (None: the
    /// key left this worker); tracking starts afresh.
    pub fn take_changes(&self, py: Python<'_>) -> PyResult<Vec<Change>> {
        let Some(changes) = &self.changes else {
            return Ok(Vec::new());
        };
        let states = self.states.bind(py);
        let mut out = Vec::new();
        for key in changes.dirty.bind(py).iter() {
            if let Some(state) = states.get_item(&key)? {
                out.push((key.unbind(), Some(state.unbind())));
            }
        }
        for key in changes.removed.bind(py).iter() {
            out.push((key.unbind(), None));
        }
        changes.dirty.bind(py).clear();
        changes.removed.bind(py).clear();
        Ok(out)
    }

    fn mark(&self, py: Python<'_>, key: &Bound<'_, PyAny>, present: bool) -> PyResult<()> {
        if let Some(changes) = &self.changes {
            let (add, discard) = if present {
                (&changes.dirty, &changes.removed)
            } else {
                (&changes.removed, &changes.dirty)
            };
            discard.bind(py).discard(key)?;
            add.bind(py).add(key)?;
        }
        Ok(())
    }

    /// Whether changed keys are tracked (crash recovery is on).
    pub(crate) fn tracks_changes(&self) -> bool {
        self.changes.is_some()
    }

    /// Record that `key`'s state changed outside a record (a timer fired
    /// its windows): it is written at the next snapshot.
    pub(crate) fn mark_changed(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.mark(py, key, true)
    }

    /// Number of keys with a state.
    pub fn len(&self, py: Python<'_>) -> usize {
        self.states.bind(py).len()
    }

    /// Every key and its state.
    pub fn items(&self, py: Python<'_>) -> Vec<(Py<PyAny>, Py<PyAny>)> {
        self.states
            .bind(py)
            .iter()
            .map(|(key, state)| (key.unbind(), state.unbind()))
            .collect()
    }

    /// Forget a key (its state moved to another worker).
    pub fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        self.states.bind(py).del_item(key)?;
        self.keys.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.mark(py, key, false)
    }

    /// Take over a key's state from another worker (or another worker's
    /// snapshot): it is written at this worker's next snapshot.
    pub fn insert(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.restore(py, key, state)?;
        self.mark(py, key, true)
    }

    /// Put back a key's state from this worker's own snapshot.
    pub fn restore(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let states = self.states.bind(py);
        if !states.contains(key)? {
            self.keys.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        states.set_item(key, state)
    }

    /// Whether no key has a state yet.
    pub fn is_empty(&self, py: Python<'_>) -> bool {
        self.len(py) == 0
    }

    /// The state of `key`, created on first use. Err(detail) for a bad key.
    pub(crate) fn get_or_create<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        u64_keys: bool,
    ) -> Result<Bound<'py, PyAny>, String> {
        let state = self.find_or_create(py, key, u64_keys)?;
        if let Some(changes) = &self.changes {
            // Every key whose computation runs is snapshotted: `state_changed`
            // is advisory (apps change state and return False).
            changes
                .dirty
                .bind(py)
                .add(key)
                .map_err(|e| format_py_err(py, &e))?;
        }
        Ok(state)
    }

    fn find_or_create<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        u64_keys: bool,
    ) -> Result<Bound<'py, PyAny>, String> {
        let states = self.states.bind(py);
        match states.get_item(key) {
            Ok(Some(state)) => return Ok(state),
            Ok(None) => {}
            Err(err) => {
                check_key(key, u64_keys)?;
                return Err(format_py_err(py, &err));
            }
        }
        check_key(key, u64_keys)?;
        let state = self.class.bind(py).call0().map_err(|e| {
            format!(
                "creating the state of {:?}: {}",
                self.name,
                format_py_err(py, &e)
            )
        })?;
        states
            .set_item(key, &state)
            .map_err(|e| format_py_err(py, &e))?;
        self.keys.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(state)
    }
}

fn valid_key(key: &Bound<'_, PyAny>) -> bool {
    if key.is_instance_of::<PyString>()
        || key.is_instance_of::<PyBytes>()
        || key.is_instance_of::<PyInt>()
    {
        return true;
    }
    match key.cast::<PyTuple>() {
        Ok(tuple) => tuple.iter().all(|item| valid_key(&item)),
        Err(_) => false,
    }
}

pub(crate) fn check_key(key: &Bound<'_, PyAny>, u64_keys: bool) -> Result<(), String> {
    if key.is_none() {
        return Ok(());
    }
    if u64_keys {
        let ok = key.is_instance_of::<PyInt>() && key.extract::<u64>().is_ok();
        if !ok {
            return Err(format!(
                "the partition function returned {}, but to_state_partition_u64 keys must be \
                 non-negative ints",
                short_repr(key, 100)
            ));
        }
        return Ok(());
    }
    if valid_key(key) {
        Ok(())
    } else {
        Err(format!(
            "the partition function returned {} of type {}; partition keys must be str, bytes, \
             int or tuples of these",
            short_repr(key, 100),
            key.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    }
}
