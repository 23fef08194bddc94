//! A run's crash recovery as its worker drives it: where the run goes on
//! from (the stores' states restored from the last complete snapshot), and
//! each snapshot taken at a cut (changed states serialized, a barrier through
//! every sink, then handed to the writer thread).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use pyo3::prelude::*;

use super::{recover, Identity, Recovered, Snapshot, StateRow, Store, Writer, WriterStats};
use crate::codec::Codec;
use crate::errors::Error;
use crate::routing::canonical_key;
use crate::sinks::SinkMessage;
use crate::sources::SourcePosition;
use crate::state::StateStore;

/// Crash recovery for one run: the snapshot writer and where the run began.
pub(crate) struct ResilienceRun {
    pub(crate) interval: Duration,
    pub(crate) writer: Writer,
    /// The next snapshot's id (the same sequence on every worker).
    next_id: std::sync::atomic::AtomicU64,
    /// The run's lineage, written with each snapshot.
    tag: String,
    /// The run's workers, by index.
    members: Vec<String>,
    stats: Arc<WriterStats>,
}

impl ResilienceRun {
    /// Find what to recover, open this worker's store and start its writer.
    pub(crate) fn start(
        settings: &crate::plan::ResilienceOptions,
        names: &[String],
        worker: usize,
    ) -> Result<(ResilienceRun, Option<Recovered>), Error> {
        let me = names
            .get(worker)
            .cloned()
            .unwrap_or_else(|| settings.worker.clone());
        let recovered = recover(&settings.dir, &settings.app, &me, names)?;
        let identity = Identity {
            app: settings.app.clone(),
            worker: me,
        };
        let mut store = Store::open(&settings.dir, &identity)?;
        let base = recovered.as_ref().map_or(0, |r| r.id);
        // Snapshots after the one recovered were never complete: a new lineage
        // starts from it.
        store.truncate_after(base)?;
        let tag = serde_json::json!({ "base": base, "members": names }).to_string();
        let stats = Arc::new(WriterStats::default());
        let run = ResilienceRun {
            interval: Duration::from_millis(settings.interval_ms),
            writer: Writer::start(
                store,
                stats.clone(),
                Duration::from_millis(settings.give_up_ms),
                base,
            )?,
            stats,
            next_id: std::sync::atomic::AtomicU64::new(base + 1),
            tag,
            members: names.to_vec(),
        };
        Ok((run, recovered))
    }

    /// Write a snapshot: the keys changed since the last one and where the
    /// sources stand. Called when the epochs before it are complete on
    /// every worker and none after it has started.
    pub(crate) fn snapshot(
        &self,
        stores: &HashMap<String, Arc<StateStore>>,
        serialize: Option<&Py<PyAny>>,
        deserialize: Option<&Py<PyAny>>,
        positions: BTreeMap<String, SourcePosition>,
        sinks: &[&Sender<SinkMessage>],
    ) -> Result<(), Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let rows = Python::attach(|py| -> Result<Vec<StateRow>, Error> {
            let codec = Codec::with(py, serialize, deserialize)?;
            let mut rows = Vec::new();
            for (name, store) in stores {
                for (key, state) in store.take_changes(py)? {
                    let key = key.bind(py);
                    let canonical = canonical_key(key).ok_or_else(|| {
                        Error::Config(format!("state {name:?}: key {key} cannot be stored"))
                    })?;
                    let value = match &state {
                        Some(state) => {
                            Some(codec.encode_value(py, state.bind(py)).map_err(|e| {
                                Error::Config(format!(
                                "state {name:?}: cannot serialize the state of key {key} for a \
                                 snapshot: {}",
                                crate::errors::format_py_err(py, &e)
                            ))
                            })?)
                        }
                        None => None,
                    };
                    rows.push(StateRow {
                        store: name.clone(),
                        key: canonical,
                        value,
                    });
                }
            }
            Ok(rows)
        })?;
        log::debug!(
            "snapshot {id}: {} changed keys serialized in {:?}",
            rows.len(),
            started.elapsed()
        );
        // Every output before the cut is with the sinks (the probe is after
        // them); the snapshot is stored once they have pushed it out.
        let mut acks = Vec::new();
        for tx in sinks {
            let (ack, acked) = crossbeam_channel::bounded(1);
            if tx.send(SinkMessage::Barrier(id, ack)).is_ok() {
                acks.push(acked);
            }
        }
        self.writer.snapshot(
            Snapshot {
                id,
                tag: self.tag.clone(),
                members: self.members.clone(),
                rows,
                positions,
            },
            acks,
        );
        Ok(())
    }

    /// The end of the run: wait until the writer stored what it has.
    pub(crate) fn finish(&self) {
        self.writer.finish();
        let failed = self.stats.failed.load(Ordering::Relaxed);
        log::info!(
            "{} snapshots written{}",
            self.stats.written.load(Ordering::Relaxed),
            if failed > 0 {
                format!(", {failed} failed (see the errors above)")
            } else {
                String::new()
            }
        );
    }
}

/// Put the states of the snapshot recovered into the stores.
pub(crate) fn restore(
    stores: &HashMap<String, Arc<StateStore>>,
    serialize: Option<&Py<PyAny>>,
    deserialize: Option<&Py<PyAny>>,
    recovered: &Recovered,
) -> Result<(), Error> {
    Python::attach(|py| -> Result<(), Error> {
        let codec = Codec::with(py, serialize, deserialize)?;
        let own = recovered.rows.iter().map(|row| (row, false));
        for (row, adopted) in own.chain(recovered.adopted.iter().map(|row| (row, true))) {
            let store = stores.get(&row.store).ok_or_else(|| {
                Error::Config(format!(
                    "the snapshot has state {:?}, which this application does not declare",
                    row.store
                ))
            })?;
            let value = row.value.as_deref().unwrap_or_default();
            let key = crate::routing::key_from_canonical(py, &row.key).ok_or_else(|| {
                Error::Config(format!(
                    "state {:?}: a key in the snapshot is not a key this engine writes",
                    row.store
                ))
            })?;
            let state = codec.decode_value(py, value).map_err(|e| {
                Error::Config(format!(
                    "state {:?}: cannot load the state of key {key} from the snapshot: {}",
                    row.store,
                    crate::errors::format_py_err(py, &e)
                ))
            })?;
            if adopted {
                // From another worker's store: written to this one next time.
                store.insert(py, &key, &state)?;
            } else {
                store.restore(py, &key, &state)?;
            }
        }
        Ok(())
    })?;
    log::info!(
        "recovered snapshot {} (written by {}): {} keys{}",
        recovered.id,
        recovered.members.join(", "),
        recovered.rows.len() + recovered.adopted.len(),
        if !recovered.adopted.is_empty() {
            format!(
                ", {} of them from workers no longer in the cluster",
                recovered.adopted.len()
            )
        } else {
            String::new()
        }
    );
    for (pipeline, lost) in &recovered.lost {
        log::warn!(
            "pipeline {pipeline:?}: its TCP source cannot replay: {lost} records it had \
             received after snapshot {} are lost (their effect on state was rolled back); \
             the sender must send them again",
            recovered.id
        );
    }
    Ok(())
}
