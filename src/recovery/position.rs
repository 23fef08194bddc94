//! Where a pipeline's source stood at a snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where one pipeline's source stood at a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourcePosition {
    /// `file`, `kafka` or `tcp`.
    pub kind: String,
    /// Records this worker's source handed to the dataflow, since the lineage began.
    pub sent: u64,
    /// File: byte offset of the last record handed over (its start).
    #[serde(default)]
    pub offset: u64,
    /// File: record number of the last record handed over (from 1; 0: none).
    #[serde(default)]
    pub index: u64,
    /// Kafka: per partition, the offset of the next record to read.
    #[serde(default)]
    pub partitions: BTreeMap<i32, i64>,
}

impl SourcePosition {
    /// An empty position for a source of `kind`.
    pub fn new(kind: &str) -> SourcePosition {
        SourcePosition {
            kind: kind.to_owned(),
            ..SourcePosition::default()
        }
    }

    /// Note the records of a batch handed to the dataflow.
    pub fn advance(&mut self, frames: &[crate::sources::Frame]) {
        self.sent += frames.len() as u64;
        match self.kind.as_str() {
            "kafka" => {
                for frame in frames {
                    let next = i64::try_from(frame.pos.offset).unwrap_or(i64::MAX) + 1;
                    let partition = i32::try_from(frame.pos.stream).unwrap_or(i32::MAX);
                    self.partitions.insert(partition, next);
                }
            }
            "file" => {
                if let Some(last) = frames.last() {
                    self.offset = last.pos.offset;
                    self.index = last.pos.index;
                }
            }
            _ => {}
        }
    }
}

/// Merge one worker's position of a pipeline into the run's: Kafka
/// partitions are united; the record count is this worker's own (a file
/// source's, wherever it ran).
pub(super) fn merge_position(
    all: &mut BTreeMap<String, SourcePosition>,
    pipeline: &str,
    position: &SourcePosition,
    mine: bool,
) {
    let entry = all
        .entry(pipeline.to_owned())
        .or_insert_with(|| SourcePosition::new(&position.kind));
    for (&partition, &next) in &position.partitions {
        let slot = entry.partitions.entry(partition).or_insert(next);
        *slot = (*slot).max(next);
    }
    if position.kind == "file" && position.index >= entry.index {
        entry.offset = position.offset;
        entry.index = position.index;
        entry.sent = position.sent;
    } else if mine {
        entry.sent = position.sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_merge_partitions_and_keep_the_file_position() {
        let mut all = BTreeMap::new();
        let mut kafka = SourcePosition::new("kafka");
        kafka.partitions.insert(0, 10);
        kafka.sent = 5;
        merge_position(&mut all, "p", &kafka, false);
        let mut other = SourcePosition::new("kafka");
        other.partitions.insert(1, 7);
        other.sent = 3;
        merge_position(&mut all, "p", &other, true);
        assert_eq!(all["p"].partitions, BTreeMap::from([(0, 10), (1, 7)]));
        assert_eq!(all["p"].sent, 3);
    }
}
