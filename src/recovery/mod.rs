//! Crash recovery (`--resilience-dir`): each worker's snapshot store, the
//! thread that writes it, and finding and loading the last snapshot that is
//! complete on every worker.
//!
//! A store is one SQLite database per worker (`DIR/<worker name>.sqlite`,
//! WAL journal): a snapshot is one transaction, so a crash mid-write leaves
//! the previous snapshot intact. Rows are versioned by snapshot id: a
//! snapshot writes only the keys whose state ran since the last one (and a
//! tombstone for keys that moved away); the state at snapshot `n` is, per
//! key, the newest row at or before `n`. Every row carries a CRC-32 and every
//! snapshot the number and sum of its rows' CRCs, so damaged data is detected
//! and recovery falls back to an earlier snapshot.
//!
//! * [`snapshot`]: what a snapshot holds and the store format.
//! * [`store`]: a worker's store, written one snapshot per transaction.
//! * [`recover`]: finding the newest snapshot complete and intact on every
//!   worker, and loading it.
//! * [`writer`]: the thread that writes a worker's snapshots.
//! * [`session`]: a run's recovery as its worker drives it: restoring the
//!   stores, taking a snapshot at a cut.

pub mod recover;
pub mod session;
pub mod snapshot;
pub mod store;
pub mod writer;

pub use recover::{recover, Recovered};
pub(crate) use session::{restore, ResilienceRun};
pub use snapshot::{Identity, Snapshot, StateRow};
pub use store::Store;
pub use writer::{Writer, WriterStats};

/// Rows and snapshots for the tests of this folder.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use super::{Snapshot, StateRow};

    pub(crate) fn row(key: &str, value: Option<&str>) -> StateRow {
        StateRow {
            store: "counts".into(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    pub(crate) fn snapshot(id: u64, members: &[&str], rows: Vec<StateRow>) -> Snapshot {
        Snapshot {
            id,
            tag: "t".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            rows,
            positions: BTreeMap::new(),
        }
    }
}
