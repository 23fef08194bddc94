//! Where a pipeline's source stood at a snapshot, one variant per source
//! kind; each source's file owns what its position holds and how it
//! resumes. Stored in snapshots as JSON tagged by `kind` (`file`, `tcp`,
//! `kafka`, `gen`), which is also how stores of earlier versions read.

use serde::{Deserialize, Serialize};

use super::file::FilePosition;
use super::kafka::KafkaPosition;
use super::Frame;
use crate::plan::SourceKind;

/// A source's position, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourcePosition {
    /// A file: the last record handed over.
    File(FilePosition),
    /// A TCP source: cannot replay; the count says what a crash loses.
    Tcp(Counted),
    /// Kafka: the next offset per partition.
    Kafka(KafkaPosition),
    /// A 0.5/0.6 generator: started again, it skips what it produced.
    Gen(Counted),
}

/// The position of a source that only counts its records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    /// Records this worker's source handed to the dataflow, since the lineage began.
    pub sent: u64,
}

impl SourcePosition {
    /// The position of a source of `kind` that has handed nothing over.
    pub fn start(kind: &SourceKind) -> SourcePosition {
        match kind {
            SourceKind::File { .. } => SourcePosition::File(FilePosition::default()),
            SourceKind::Tcp(_) => SourcePosition::Tcp(Counted::default()),
            SourceKind::Kafka(_) => SourcePosition::Kafka(KafkaPosition::default()),
            SourceKind::Gen { .. } => SourcePosition::Gen(Counted::default()),
        }
    }

    /// The same kind of position, having handed nothing over.
    pub fn emptied(&self) -> SourcePosition {
        match self {
            SourcePosition::File(_) => SourcePosition::File(FilePosition::default()),
            SourcePosition::Tcp(_) => SourcePosition::Tcp(Counted::default()),
            SourcePosition::Kafka(_) => SourcePosition::Kafka(KafkaPosition::default()),
            SourcePosition::Gen(_) => SourcePosition::Gen(Counted::default()),
        }
    }

    /// Records this worker's source handed to the dataflow, since the lineage began.
    pub fn sent(&self) -> u64 {
        match self {
            SourcePosition::File(at) => at.sent,
            SourcePosition::Kafka(at) => at.sent,
            SourcePosition::Tcp(at) | SourcePosition::Gen(at) => at.sent,
        }
    }

    /// Whether a recovering run reads the records after this position
    /// again (a TCP source cannot: what it had received is lost).
    pub fn replays(&self) -> bool {
        !matches!(self, SourcePosition::Tcp(_))
    }

    /// Note the records of a batch handed to the dataflow.
    pub fn advance(&mut self, frames: &[Frame]) {
        match self {
            SourcePosition::File(at) => at.advance(frames),
            SourcePosition::Kafka(at) => at.advance(frames),
            SourcePosition::Tcp(at) | SourcePosition::Gen(at) => at.sent += frames.len() as u64,
        }
    }

    /// Merge another worker's position of the same pipeline into this one
    /// (`mine`: it is this worker's own): Kafka partitions are united; the
    /// record count is this worker's own (a file source's, wherever it ran).
    pub fn merge(&mut self, other: &SourcePosition, mine: bool) {
        match (self, other) {
            (SourcePosition::File(at), SourcePosition::File(theirs)) => at.merge(theirs, mine),
            (SourcePosition::Kafka(at), SourcePosition::Kafka(theirs)) => at.merge(theirs, mine),
            (SourcePosition::Tcp(at), SourcePosition::Tcp(theirs))
            | (SourcePosition::Gen(at), SourcePosition::Gen(theirs)) => {
                if mine {
                    at.sent = theirs.sent;
                }
            }
            (at, theirs) => {
                if mine {
                    *at = theirs.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sources::Pos;

    fn frame(stream: u32, index: u64, offset: u64) -> Frame {
        Frame {
            pos: Pos {
                stream,
                index,
                offset,
            },
            ..Frame::default()
        }
    }

    fn kafka(sent: u64, partitions: &[(i32, i64)]) -> SourcePosition {
        SourcePosition::Kafka(KafkaPosition {
            sent,
            partitions: partitions.iter().copied().collect(),
        })
    }

    /// Positions as the engine wrote them before they were typed (every
    /// field, whatever the kind) read as the same positions.
    #[test]
    fn positions_of_earlier_stores_read() {
        let old = r#"{
            "f": {"kind":"file","sent":7,"offset":120,"index":7,"partitions":{}},
            "k": {"kind":"kafka","sent":5,"offset":0,"index":0,"partitions":{"0":10,"3":2}},
            "t": {"kind":"tcp","sent":9,"offset":0,"index":0,"partitions":{}},
            "g": {"kind":"gen","sent":4,"offset":0,"index":0,"partitions":{}}
        }"#;
        let read: BTreeMap<String, SourcePosition> = serde_json::from_str(old).unwrap();
        assert_eq!(
            read["f"],
            SourcePosition::File(FilePosition {
                sent: 7,
                offset: 120,
                index: 7
            })
        );
        assert_eq!(read["k"], kafka(5, &[(0, 10), (3, 2)]));
        assert_eq!(read["t"], SourcePosition::Tcp(Counted { sent: 9 }));
        assert_eq!(read["g"], SourcePosition::Gen(Counted { sent: 4 }));
    }

    #[test]
    fn every_kind_round_trips_through_its_stored_form() {
        let positions = [
            SourcePosition::File(FilePosition {
                sent: 3,
                offset: 40,
                index: 3,
            }),
            kafka(2, &[(0, 11), (1, 4)]),
            SourcePosition::Tcp(Counted { sent: 8 }),
            SourcePosition::Gen(Counted { sent: 1 }),
        ];
        for position in positions {
            let stored = serde_json::to_string(&position).unwrap();
            let read: SourcePosition = serde_json::from_str(&stored).unwrap();
            assert_eq!(read, position, "{stored}");
        }
        let stored = serde_json::to_string(&SourcePosition::Tcp(Counted { sent: 8 })).unwrap();
        assert_eq!(stored, r#"{"kind":"tcp","sent":8}"#);
    }

    #[test]
    fn advance_notes_what_each_kind_resumes_from() {
        let batch = [frame(0, 1, 0), frame(1, 5, 9), frame(0, 2, 30)];
        let mut file = SourcePosition::File(FilePosition::default());
        file.advance(&batch);
        assert_eq!(
            file,
            SourcePosition::File(FilePosition {
                sent: 3,
                offset: 30,
                index: 2
            })
        );
        let mut topic = kafka(0, &[]);
        topic.advance(&batch);
        // The next offset to read: one after the last record of each partition.
        assert_eq!(topic, kafka(3, &[(0, 31), (1, 10)]));
        let mut tcp = SourcePosition::Tcp(Counted::default());
        tcp.advance(&batch);
        assert_eq!(tcp.sent(), 3);
        assert!(!tcp.replays() && topic.replays() && file.replays());
    }

    #[test]
    fn merging_unites_partitions_and_keeps_the_furthest_file_position() {
        let mut all = kafka(0, &[]);
        all.merge(&kafka(5, &[(0, 10)]), false);
        all.merge(&kafka(3, &[(0, 4), (1, 7)]), true);
        assert_eq!(all, kafka(3, &[(0, 10), (1, 7)]));

        let at = |sent, index| {
            SourcePosition::File(FilePosition {
                sent,
                offset: index * 10,
                index,
            })
        };
        let mut all = at(0, 0);
        all.merge(&at(6, 6), false);
        all.merge(&at(0, 0), false);
        assert_eq!(all, at(6, 6));
    }
}
