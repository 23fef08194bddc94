//! Restores per-key order at a state step: the parts of a batch arrive from
//! every worker in any order; a batch is applied once whole and after every
//! earlier batch of its reader, its records sorted by source position.

use std::collections::{BTreeMap, HashMap};

use pyo3::prelude::*;

use super::parts::{BatchId, LocalRecord, RemotePart};
use crate::codec::Codec;
use crate::errors::{format_py_err, StepFailure};
use crate::steps::{Chain, Keyed};

/// The parts of one batch gathered at a state step so far.
pub(crate) struct Gathered<C> {
    parts: usize,
    /// The earliest time among the parts, and what the operator made for it
    /// (its output capabilities).
    pub(crate) first: Option<(u64, C)>,
    pub(crate) local: Vec<LocalRecord>,
    pub(crate) remote: Vec<RemotePart>,
}

/// Puts the parts arriving at a state step back in batch order: a batch is
/// applied as soon as all its parts are in and every earlier batch of its
/// reader has been applied. Records are applied on arrival, not held until
/// their epoch completes (held records cost cache misses and GC work).
pub(crate) struct Sequencer<C> {
    /// Parts per batch: 1 after the decoding worker, one per worker after an
    /// earlier state step.
    expected: usize,
    /// Per reader: the next batch to apply, and the batches waiting.
    readers: HashMap<u32, (u64, BTreeMap<u64, Gathered<C>>)>,
}

impl<C> Sequencer<C> {
    pub(crate) fn new(expected: usize) -> Sequencer<C> {
        Sequencer {
            expected,
            readers: HashMap::new(),
        }
    }

    /// The gathering for `batch`, counting one more part that arrived at
    /// `time`; `at` makes what the operator keeps for the earliest time.
    pub(crate) fn part(
        &mut self,
        batch: BatchId,
        time: u64,
        at: impl FnOnce() -> C,
    ) -> &mut Gathered<C> {
        let (_, waiting) = self.readers.entry(batch.reader).or_default();
        let gathered = waiting.entry(batch.seq).or_insert_with(|| Gathered {
            parts: 0,
            first: None,
            local: Vec::new(),
            remote: Vec::new(),
        });
        gathered.parts += 1;
        let earlier = gathered
            .first
            .as_ref()
            .is_none_or(|(first, _)| time < *first);
        if earlier {
            gathered.first = Some((time, at()));
        }
        gathered
    }

    /// The batches ready to apply, in order per reader. `ended`: no more
    /// parts can come (the inputs are closed), so every batch waiting is
    /// applied; one can be incomplete only after a worker failed.
    pub(crate) fn ready(&mut self, ended: bool) -> Vec<(BatchId, Gathered<C>)> {
        let mut ready = Vec::new();
        for (reader, (next, waiting)) in &mut self.readers {
            while let Some(entry) = waiting.first_entry() {
                let complete = *entry.key() == *next && entry.get().parts >= self.expected;
                if !complete && !ended {
                    break;
                }
                *next = *entry.key();
                let batch = BatchId {
                    reader: *reader,
                    seq: *next,
                };
                ready.push((batch, entry.remove()));
                *next += 1;
            }
        }
        ready
    }
}

/// The records of a batch's parts (remote ones deserialized), in source order.
pub(crate) fn merge_parts(
    py: Python<'_>,
    chain: &Chain,
    codec: &Codec,
    local: Vec<LocalRecord>,
    remote: Vec<RemotePart>,
) -> Result<Vec<Keyed>, StepFailure> {
    let mut records =
        Vec::with_capacity(local.len() + remote.iter().map(|p| p.records.len()).sum::<usize>());
    for record in local {
        records.push((
            record.order,
            record.step as usize,
            record.key.0,
            record.value.0,
        ));
    }
    let from_others = !remote.iter().all(|part| part.records.is_empty());
    for part in remote.into_iter().filter(|part| !part.records.is_empty()) {
        let pairs = codec.decode(py, &part.data).map_err(|err| StepFailure {
            pipeline: chain.pipeline.clone(),
            step: "deserialize (records crossing workers)".to_owned(),
            record: format!("{} bytes from another worker", part.data.len()),
            position: format!("{} records", part.records.len()),
            detail: format_py_err(py, &err),
        })?;
        for ((order, step), (key, value)) in part.records.into_iter().zip(pairs) {
            records.push((order, step as usize, key, value));
        }
    }
    if from_others {
        records.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(reader: u32, seq: u64) -> BatchId {
        BatchId { reader, seq }
    }

    /// The batches `ready` gives, as (reader, seq).
    fn ready(sequencer: &mut Sequencer<u64>, ended: bool) -> Vec<(u32, u64)> {
        let mut ready: Vec<(u32, u64)> = sequencer
            .ready(ended)
            .into_iter()
            .map(|(id, _)| (id.reader, id.seq))
            .collect();
        // Readers are independent: only the order within a reader counts.
        ready.sort();
        ready
    }

    #[test]
    fn a_readers_batches_are_applied_in_number_order_whatever_order_they_arrive_in() {
        let mut sequencer = Sequencer::new(1);
        sequencer.part(batch(0, 2), 1, || 1);
        sequencer.part(batch(0, 1), 1, || 1);
        assert_eq!(ready(&mut sequencer, false), []);
        sequencer.part(batch(0, 0), 1, || 1);
        let order: Vec<u64> = sequencer
            .ready(false)
            .iter()
            .map(|(id, _)| id.seq)
            .collect();
        assert_eq!(order, [0, 1, 2]);
        sequencer.part(batch(0, 3), 2, || 2);
        assert_eq!(ready(&mut sequencer, false), [(0, 3)]);
    }

    #[test]
    fn a_batch_waits_for_a_part_from_every_worker() {
        let mut sequencer = Sequencer::new(3);
        sequencer.part(batch(1, 0), 4, || 4);
        sequencer.part(batch(1, 0), 4, || 4);
        assert_eq!(ready(&mut sequencer, false), []);
        sequencer.part(batch(1, 0), 5, || 5);
        assert_eq!(ready(&mut sequencer, false), [(1, 0)]);
    }

    #[test]
    fn readers_do_not_wait_for_each_other() {
        let mut sequencer = Sequencer::new(1);
        sequencer.part(batch(0, 1), 1, || 1);
        sequencer.part(batch(1, 0), 1, || 1);
        assert_eq!(ready(&mut sequencer, false), [(1, 0)]);
        sequencer.part(batch(0, 0), 1, || 1);
        assert_eq!(ready(&mut sequencer, false), [(0, 0), (0, 1)]);
    }

    #[test]
    fn a_batch_keeps_what_was_made_for_its_earliest_part() {
        let mut sequencer = Sequencer::new(3);
        let mut made = Vec::new();
        for time in [5, 3, 7] {
            sequencer.part(batch(0, 0), time, || {
                made.push(time);
                time * 10
            });
        }
        // Made again only for an earlier time.
        assert_eq!(made, [5, 3]);
        let ready = sequencer.ready(false);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.first, Some((3, 30)));
    }

    #[test]
    fn once_the_inputs_end_whatever_waits_is_applied_and_later_batches_follow_it() {
        let mut sequencer = Sequencer::new(2);
        // A worker failed: batch 0 never comes whole, batch 2 has one part.
        sequencer.part(batch(0, 0), 1, || 1);
        sequencer.part(batch(0, 2), 1, || 1);
        assert_eq!(ready(&mut sequencer, false), []);
        assert_eq!(ready(&mut sequencer, true), [(0, 0), (0, 2)]);
        sequencer.part(batch(0, 3), 2, || 2);
        sequencer.part(batch(0, 3), 2, || 2);
        assert_eq!(ready(&mut sequencer, false), [(0, 3)]);
    }
}
