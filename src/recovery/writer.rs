//! The thread that writes a worker's snapshots, so the worker only pays
//! for serializing the changed states.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

use super::snapshot::{Snapshot, StateRow};
use super::store::Store;
use crate::errors::Error;
use crate::sync::lock;

/// What the writer thread is given.
enum Message {
    /// A snapshot, stored once every sink acknowledged the output before it.
    Snapshot(Box<Snapshot>, Vec<crossbeam_channel::Receiver<()>>),
    Progress(BTreeMap<String, u64>),
}

/// Store `snapshot` once every sink acknowledged the output before it.
fn write_after(
    store: &mut Store,
    snapshot: &Snapshot,
    acks: &[crossbeam_channel::Receiver<()>],
    stats: &WriterStats,
) -> Result<(), Error> {
    let result = if acks.iter().all(|ack| ack.recv().is_ok()) {
        let started = std::time::Instant::now();
        let result = store.write(snapshot);
        log::debug!(
            "snapshot {}: stored in {:?}",
            snapshot.id,
            started.elapsed()
        );
        result
    } else {
        Err(Error::Config(
            "a sink could not push out the output before it".into(),
        ))
    };
    stats
        .queued
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    result
}

/// The thread that writes a worker's snapshots, so the worker only pays for
/// serializing the changed states.
pub struct Writer {
    tx: Mutex<Option<Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: std::sync::Arc<WriterStats>,
}

/// How the store is doing, for logs and metrics.
#[derive(Default)]
pub struct WriterStats {
    /// Snapshots written.
    pub written: std::sync::atomic::AtomicU64,
    /// Snapshots that failed to be written (disk full, ...).
    pub failed: std::sync::atomic::AtomicU64,
    /// Id of the newest snapshot written.
    pub last_id: std::sync::atomic::AtomicU64,
    /// Snapshots handed to the writer and not yet written (or failed).
    pub queued: std::sync::atomic::AtomicU64,
    /// Set when snapshots failed for longer than the run tolerates: why.
    gave_up: Mutex<Option<String>>,
}

/// The writer thread's memory of snapshots that were not stored: their
/// changed keys go into the next snapshot, and a failure that lasts too
/// long stops the run.
struct Unstored {
    /// The changed keys of the snapshots not stored (newest state per key).
    rows: Vec<StateRow>,
    /// Since when, and how many, snapshots in a row failed.
    failing: Option<(std::time::Instant, u64)>,
    /// How long snapshots may keep failing.
    give_up: Duration,
}

impl Unstored {
    /// Add the changed keys of the snapshots not stored to `snapshot`
    /// (its own rows are newer and win).
    fn carry_into(&mut self, snapshot: &mut Snapshot) {
        let older = std::mem::take(&mut self.rows);
        if older.is_empty() {
            return;
        }
        let fresh: std::collections::HashSet<(&str, &[u8])> = snapshot
            .rows
            .iter()
            .map(|row| (row.store.as_str(), row.key.as_slice()))
            .collect();
        let older: Vec<StateRow> = older
            .into_iter()
            .filter(|row| !fresh.contains(&(row.store.as_str(), row.key.as_slice())))
            .collect();
        snapshot.rows.extend(older);
    }

    /// `snapshot` was stored: nothing is carried any more.
    fn stored(&mut self, snapshot: &Snapshot, path: &Path) {
        if let Some((_, failed)) = self.failing.take() {
            log::info!(
                "snapshot {} written to {}: snapshots are stored again after {failed} failed \
                 (it holds their changed keys)",
                snapshot.id,
                path.display()
            );
        }
    }

    /// `snapshot` was not stored: keep its rows for the next one. Returns
    /// why the run must stop when snapshots have failed for too long.
    fn failed(&mut self, snapshot: Snapshot, error: &Error, last_stored: u64) -> Option<String> {
        let (since, failed) = self
            .failing
            .get_or_insert_with(|| (std::time::Instant::now(), 0));
        *failed += 1;
        log::error!(
            "snapshot {} not stored: {error}; its {} changed keys go into the next snapshot",
            snapshot.id,
            snapshot.rows.len()
        );
        self.rows = snapshot.rows;
        let lasting = since.elapsed();
        (lasting >= self.give_up).then(|| {
            format!(
                "{error}; snapshots have failed for {:.1} s ({failed} in a row, more than \
                 --snapshot-give-up {:.0} s allows): stopping. A run started again goes on \
                 from snapshot {last_stored}",
                lasting.as_secs_f64(),
                self.give_up.as_secs_f64()
            )
        })
    }
}

impl Writer {
    /// Start the writer of `store`; a run whose snapshots fail for longer
    /// than `give_up` is told to stop ([`Writer::gave_up`]).
    pub fn start(
        mut store: Store,
        stats: std::sync::Arc<WriterStats>,
        give_up: Duration,
        last_stored: u64,
    ) -> Result<Writer, Error> {
        use std::sync::atomic::Ordering;
        // One snapshot queued while one is written: a worker never gets more
        // than two snapshots ahead of its disk.
        let (tx, rx) = bounded::<Message>(1);
        let thread_stats = stats.clone();
        let mut unstored = Unstored {
            rows: Vec::new(),
            failing: None,
            give_up,
        };
        stats.last_id.store(last_stored, Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name("snapshot writer".into())
            .spawn(move || {
                for message in rx {
                    match message {
                        Message::Snapshot(mut snapshot, acks) => {
                            unstored.carry_into(&mut snapshot);
                            match write_after(&mut store, &snapshot, &acks, &stats) {
                                Ok(()) => {
                                    let first = stats.written.fetch_add(1, Ordering::Relaxed) == 0;
                                    stats.last_id.store(snapshot.id, Ordering::Relaxed);
                                    let say = format!(
                                        "snapshot {} written ({} changed keys) to {}",
                                        snapshot.id,
                                        snapshot.rows.len(),
                                        store.path.display()
                                    );
                                    if first {
                                        log::info!("{say}");
                                    } else {
                                        log::debug!("{say}");
                                    }
                                    unstored.stored(&snapshot, &store.path);
                                }
                                Err(e) => {
                                    stats.failed.fetch_add(1, Ordering::Relaxed);
                                    let last = stats.last_id.load(Ordering::Relaxed);
                                    if let Some(why) = unstored.failed(*snapshot, &e, last) {
                                        *lock(&stats.gave_up) = Some(why);
                                    }
                                }
                            }
                        }
                        Message::Progress(sent) => {
                            if let Err(e) = store.progress(&sent) {
                                log::debug!("progress not written: {e}");
                            }
                        }
                    }
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the snapshot writer: {e}")))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            stats: thread_stats,
        })
    }

    /// Why the run must stop, once snapshots have failed for too long.
    pub fn gave_up(&self) -> Option<String> {
        lock(&self.stats.gave_up).clone()
    }

    fn send(&self, message: Message) {
        let tx = lock(&self.tx).clone();
        if let Some(tx) = tx {
            // Blocks while the writer is two snapshots behind: back-pressure.
            let _ = tx.send(message);
        }
    }

    /// Hand a snapshot to the writer, to be stored once every receiver in
    /// `acks` answered (the sinks pushed out the output before it).
    pub fn snapshot(&self, snapshot: Snapshot, acks: Vec<crossbeam_channel::Receiver<()>>) {
        self.stats
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(Message::Snapshot(Box::new(snapshot), acks));
    }

    /// Whether a snapshot is still being written: the next cut waits for
    /// it (its changed keys accumulate), so a slow disk lengthens the
    /// interval instead of stalling the worker.
    pub fn busy(&self) -> bool {
        self.stats.queued.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Note how far non-replayable sources got (best effort, never blocks).
    pub fn progress(&self, sent: BTreeMap<String, u64>) {
        let tx = lock(&self.tx).clone();
        if let Some(tx) = tx {
            let _ = tx.try_send(Message::Progress(sent));
        }
    }

    /// Write what is queued and stop.
    pub fn finish(&self) {
        lock(&self.tx).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::fixtures::{row, snapshot};

    #[test]
    fn keys_of_a_snapshot_not_stored_go_into_the_next_one() {
        let mut unstored = Unstored {
            rows: Vec::new(),
            failing: None,
            give_up: Duration::from_secs(60),
        };
        let failed = snapshot(2, &["w0"], vec![row("a", Some("1")), row("b", Some("1"))]);
        let error = Error::Config("disk full".into());
        assert_eq!(unstored.failed(failed, &error, 1), None);
        let mut next = snapshot(3, &["w0"], vec![row("a", Some("2"))]);
        unstored.carry_into(&mut next);
        let mut rows: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            next.rows.into_iter().map(|r| (r.key, r.value)).collect();
        rows.sort();
        assert_eq!(
            rows,
            vec![
                (b"a".to_vec(), Some(b"2".to_vec())),
                (b"b".to_vec(), Some(b"1".to_vec()))
            ]
        );
        // Failing for longer than allowed: the run is told to stop.
        unstored.give_up = Duration::ZERO;
        let why = unstored.failed(snapshot(4, &["w0"], vec![]), &error, 1);
        assert!(why.is_some_and(|why| why.contains("disk full")));
    }
}
