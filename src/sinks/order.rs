//! The order of a merged group's outputs at a sink written on one worker.
//!
//! The pipelines of a 0.6 `merge` are separate dataflows that share state and
//! one sink. In a cluster, a file, TCP or stdout sink is written on worker 0,
//! and each pipeline's outputs cross to it on their own channel, so outputs
//! one worker made in order (the windows of a key, fired through different
//! pipelines) could reach the sink in another order. Each worker numbers the
//! group's outputs as it makes them ([`OutputSequence`], stamped in
//! `Output::seq`), and the sink thread puts each worker's back in that order
//! ([`Reorder`]) before writing them.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::Output;

/// Outputs one stream may hold back waiting for an earlier one before the
/// sink gives up waiting and writes them (an output that never comes must
/// not stop the sink or grow its memory without bound).
const MAX_HELD: usize = 100_000;

/// Numbers the outputs a worker makes for one sink group.
#[derive(Clone, Debug)]
pub struct OutputSequence {
    /// This worker's stream: drawn at random once per process, so numbers
    /// restart with a new process (a restart, a worker that joins) without
    /// meeting the old ones.
    stream: u64,
    next: Arc<AtomicU64>,
}

impl OutputSequence {
    /// A new sequence for a worker's outputs of one group.
    pub fn new(stream: u64) -> OutputSequence {
        OutputSequence {
            stream,
            next: Arc::default(),
        }
    }

    /// A process's stream number.
    pub fn draw_stream() -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now))
    }

    /// Number `output` as the next one.
    pub fn stamp(&self, output: &mut Output) {
        output.seq = Some((self.stream, self.next.fetch_add(1, Ordering::Relaxed)));
    }
}

/// One worker's numbered outputs at the sink.
#[derive(Default)]
struct Stream {
    next: u64,
    held: BTreeMap<u64, Output>,
}

impl Stream {
    /// Everything held, in order; the stream then waits for what follows it.
    fn release_held(&mut self, into: &mut Vec<Output>) {
        while let Some((seq, output)) = self.held.pop_first() {
            self.next = seq + 1;
            into.push(output);
        }
    }
}

/// Puts numbered outputs back in their order per stream.
#[derive(Default)]
pub struct Reorder {
    streams: HashMap<u64, Stream>,
}

impl Reorder {
    /// What of `batch` can be written now, in order: outputs without a
    /// number as they come; numbered ones once every earlier one of their
    /// stream was, with those they free.
    pub fn release(&mut self, batch: Vec<Output>) -> Vec<Output> {
        if batch.iter().all(|output| output.seq.is_none()) {
            return batch;
        }
        let mut ready = Vec::with_capacity(batch.len());
        for output in batch {
            let Some((stream, seq)) = output.seq else {
                ready.push(output);
                continue;
            };
            let stream = self.streams.entry(stream).or_default();
            if seq > stream.next {
                stream.held.insert(seq, output);
                if stream.held.len() > MAX_HELD {
                    log::warn!(
                        "a sink waited for output {} of a worker while {} later ones came; \
                         writing them without it",
                        stream.next,
                        stream.held.len()
                    );
                    stream.release_held(&mut ready);
                }
                continue;
            }
            if seq == stream.next {
                stream.next += 1;
            }
            ready.push(output);
            while let Some(output) = stream.held.remove(&stream.next) {
                stream.next += 1;
                ready.push(output);
            }
        }
        ready
    }

    /// Everything held back, each stream in order (before a snapshot is
    /// stored and at the end: whatever was still missing will not come
    /// before then).
    pub fn drain(&mut self) -> Vec<Output> {
        let mut ready = Vec::new();
        for stream in self.streams.values_mut() {
            stream.release_held(&mut ready);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(stream: u64, seq: u64) -> Output {
        Output {
            value: format!("{stream}.{seq}").into_bytes(),
            seq: Some((stream, seq)),
            ..Output::default()
        }
    }

    fn names(outputs: &[Output]) -> Vec<String> {
        outputs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.value).into_owned())
            .collect()
    }

    #[test]
    fn outputs_wait_for_the_earlier_ones_of_their_stream_only() {
        let mut order = Reorder::default();
        let plain = Output {
            value: b"plain".to_vec(),
            ..Output::default()
        };
        let first = order.release(vec![numbered(1, 1), numbered(2, 0), plain.clone()]);
        assert_eq!(names(&first), ["2.0", "plain"]);
        let second = order.release(vec![numbered(1, 2), numbered(1, 0)]);
        assert_eq!(names(&second), ["1.0", "1.1", "1.2"]);
        assert_eq!(names(&order.release(vec![numbered(2, 1)])), ["2.1"]);
        assert!(order.drain().is_empty());
    }

    #[test]
    fn unnumbered_batches_pass_as_they_are() {
        let mut order = Reorder::default();
        let batch = vec![Output::default(), Output::default()];
        assert_eq!(order.release(batch.clone()), batch);
    }

    #[test]
    fn a_drain_writes_what_waits_and_the_stream_goes_on_after_it() {
        let mut order = Reorder::default();
        assert!(order
            .release(vec![numbered(7, 3), numbered(7, 1)])
            .is_empty());
        assert_eq!(names(&order.drain()), ["7.1", "7.3"]);
        // The missing 0 and 2 come late: written at once, not held.
        assert_eq!(
            names(&order.release(vec![numbered(7, 2), numbered(7, 4), numbered(7, 0)])),
            ["7.2", "7.4", "7.0"]
        );
    }

    #[test]
    fn a_stream_that_waits_too_long_writes_what_it_holds() {
        let mut order = Reorder::default();
        let batch: Vec<Output> = (1..=MAX_HELD as u64 + 1).map(|i| numbered(3, i)).collect();
        let ready = order.release(batch);
        assert_eq!(ready.len(), MAX_HELD + 1);
        assert!(ready.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            names(&order.release(vec![numbered(3, MAX_HELD as u64 + 2)])).len(),
            1
        );
    }

    #[test]
    fn a_sequence_numbers_outputs_in_the_order_made() {
        let sequence = OutputSequence::new(OutputSequence::draw_stream());
        let shared = sequence.clone();
        let mut a = Output::default();
        let mut b = Output::default();
        sequence.stamp(&mut a);
        shared.stamp(&mut b);
        assert_eq!(a.seq.map(|s| s.1), Some(0));
        assert_eq!(b.seq.map(|s| s.1), Some(1));
        assert_eq!(a.seq.map(|s| s.0), b.seq.map(|s| s.0));
    }
}
