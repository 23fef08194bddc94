//! What a worker writes at a snapshot, and the store format.

use std::collections::BTreeMap;

use crate::sources::SourcePosition;

/// The store layout this engine writes and reads.
pub const FORMAT: i64 = 1;

/// One state row of a snapshot.
#[derive(Debug, Clone)]
pub struct StateRow {
    /// The state name.
    pub store: String,
    /// The key's canonical bytes ([`crate::routing::canonical_key`]): its
    /// identity across snapshots, and how it is made again.
    pub key: Vec<u8>,
    /// The state, serialized; None: the key left this worker.
    pub value: Option<Vec<u8>>,
}

impl StateRow {
    pub(super) fn crc(&self) -> u32 {
        let mut crc = flate2::Crc::new();
        crc.update(self.store.as_bytes());
        crc.update(&[0]);
        crc.update(&self.key);
        match &self.value {
            Some(value) => {
                crc.update(&[1]);
                crc.update(value);
            }
            None => crc.update(&[2]),
        }
        crc.sum()
    }
}

/// What a worker writes at one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The snapshot id (the same on every worker for the same cut).
    pub id: u64,
    /// The run's lineage: which snapshot it started from and its workers.
    pub tag: String,
    /// The workers of the run, by index.
    pub members: Vec<String>,
    /// Changed keys.
    pub rows: Vec<StateRow>,
    /// Source positions by pipeline.
    pub positions: BTreeMap<String, SourcePosition>,
}

/// The identity a store must match to be loaded.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The application's fingerprint (name, states, pipelines).
    pub app: String,
    /// This worker's name.
    pub worker: String,
}

#[cfg(test)]
mod tests {
    use super::StateRow;

    fn row(store: &str, key: &[u8], value: Option<&[u8]>) -> StateRow {
        StateRow {
            store: store.into(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// The checksum that finds damaged rows at recovery changes with every
    /// part of a row, and tells a tombstone from an empty state.
    #[test]
    fn a_row_checksum_covers_store_key_and_value() {
        let base = row("counts", b"k", Some(b"1"));
        assert_eq!(base.crc(), row("counts", b"k", Some(b"1")).crc());
        for other in [
            row("totals", b"k", Some(b"1")),
            row("counts", b"j", Some(b"1")),
            row("counts", b"k", Some(b"2")),
            row("counts", b"k", None),
            // The store/key boundary counts: ("ab", "c") is not ("a", "bc").
            row("countsk", b"", Some(b"1")),
        ] {
            assert_ne!(base.crc(), other.crc(), "{other:?}");
        }
        assert_ne!(
            row("counts", b"k", None).crc(),
            row("counts", b"k", Some(b"")).crc()
        );
    }
}
