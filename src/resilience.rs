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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::errors::Error;

/// The store layout this engine writes and reads.
pub const FORMAT: i64 = 1;
/// Snapshots kept behind the newest (older versions are compacted away): a
/// worker's newest snapshot may be ahead of the newest complete one, and a
/// damaged newest one falls back to the one before.
const KEEP: u64 = 4;
/// Compact every this many snapshots.
const COMPACT_EVERY: u64 = 8;
/// File name suffix of a store.
const SUFFIX: &str = ".sqlite";

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
    fn crc(&self) -> u32 {
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

/// A snapshot's record in a store.
#[derive(Debug, Clone)]
struct SnapshotMeta {
    tag: String,
    members: Vec<String>,
    rows: u64,
    digest: u64,
    positions: BTreeMap<String, SourcePosition>,
}

/// The identity a store must match to be loaded.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The application's fingerprint (name, states, pipelines).
    pub app: String,
    /// This worker's name.
    pub worker: String,
}

/// A store whose content cannot be used: refused, with how to start
/// without it.
fn refuse(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Config(format!(
        "resilience store {p}: {what}; refusing to start from it. To start without its \
         snapshots, move it away: mv {p} {p}.damaged",
        p = path.display()
    ))
}

/// A store that cannot be opened or written (not its content): the
/// directory, the disk or permissions; no "move it away" where it is not
/// the file's fault.
fn store_io_error(path: &Path, err: impl std::fmt::Display) -> Error {
    let dir = path.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".wallaroo-write-test-{}", std::process::id()));
    let writable = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    Error::Config(if writable {
        format!("resilience store {}: {err}", path.display())
    } else {
        format!(
            "resilience store {}: {err}: the directory {} is not writable (a store needs to \
             write there, also to be read); give -r/--resilience-dir a writable directory",
            path.display(),
            dir.display()
        )
    })
}

/// A SQLite error on `path`: its content is damaged or not a store
/// (refused), or it cannot be opened or written (see [`store_io_error`]).
fn sqlite_error(path: &Path, err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::*;
    match err.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => refuse(path, format!("is damaged ({err})")),
        Some(
            CannotOpen
            | ReadOnly
            | PermissionDenied
            | DiskFull
            | SystemIoFailure
            | DatabaseBusy
            | DatabaseLocked
            | OutOfMemory
            | FileLockingProtocolFailed,
        ) => store_io_error(path, err),
        _ => refuse(path, format!("is not a readable Wallaroo store ({err})")),
    }
}

/// The store file of `worker` in `dir`.
pub fn store_path(dir: &Path, worker: &str) -> PathBuf {
    let safe: String = worker
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}{SUFFIX}"))
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite_error(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| sqlite_error(path, e))?;
    Ok(conn)
}

fn meta(conn: &Connection, path: &Path, key: &str) -> Result<Option<String>, Error> {
    conn.query_row("SELECT v FROM meta WHERE k = ?1", [key], |row| row.get(0))
        .optional()
        .map_err(|e| sqlite_error(path, e))
}

/// Refuse a store written by another application or another store format.
fn check_identity(conn: &Connection, path: &Path, app: &str) -> Result<(), Error> {
    let format = meta(conn, path, "format")?;
    if let Some(format) = format {
        if format != FORMAT.to_string() {
            return Err(refuse(
                path,
                format!("written in store format {format}; this engine reads format {FORMAT}"),
            ));
        }
    }
    if let Some(theirs) = meta(conn, path, "app")? {
        if theirs != app {
            return Err(refuse(
                path,
                format!("written by another application ({theirs}); this one is ({app})"),
            ));
        }
    }
    Ok(())
}

/// A worker's own store, open for writing.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    written: u64,
}

impl Store {
    /// Open (or create) `worker`'s store in `dir`, refusing a store of
    /// another application or format.
    pub fn open(dir: &Path, identity: &Identity) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!(
                "--resilience-dir {}: cannot create it: {e}",
                dir.display()
            ))
        })?;
        let path = store_path(dir, &identity.worker);
        if !path.exists() {
            // Made under another name and renamed when ready: the other
            // workers, reading every store at start, never see it half made.
            let fresh = path.with_extension("sqlite-new");
            let _ = std::fs::remove_file(&fresh);
            drop(Store::initialize(&fresh, identity)?);
            std::fs::rename(&fresh, &path).map_err(|e| store_io_error(&path, e))?;
        }
        let (conn, path) = Store::initialize(&path, identity)?;
        Ok(Store {
            conn,
            path,
            written: 0,
        })
    }

    /// Open the store at `path` (creating its tables when new), check whose
    /// it is and record ours.
    fn initialize(path: &Path, identity: &Identity) -> Result<(Connection, PathBuf), Error> {
        let path = path.to_path_buf();
        let conn = open(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        let setup = "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -65536;
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS snapshots (
                 id INTEGER PRIMARY KEY, tag TEXT NOT NULL, members TEXT NOT NULL,
                 rows INTEGER NOT NULL, digest INTEGER NOT NULL, positions TEXT NOT NULL,
                 written REAL NOT NULL);
             CREATE TABLE IF NOT EXISTS state (
                 store TEXT NOT NULL, key BLOB NOT NULL, snap INTEGER NOT NULL,
                 value BLOB, crc INTEGER NOT NULL,
                 PRIMARY KEY (store, key, snap)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS progress (
                 pipeline TEXT PRIMARY KEY, sent INTEGER NOT NULL);";
        conn.execute_batch(setup)
            .map_err(|e| sqlite_error(&path, e))?;
        check_identity(&conn, &path, &identity.app)?;
        let put = |k: &str, v: &str| {
            conn.execute(
                "INSERT OR IGNORE INTO meta (k, v) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(|e| sqlite_error(&path, e))
        };
        put("format", &FORMAT.to_string())?;
        put("app", &identity.app)?;
        put("worker", &identity.worker)?;
        Ok((conn, path))
    }

    /// Forget every snapshot after `id` (written by a run that crashed
    /// before they were complete everywhere).
    pub fn truncate_after(&mut self, id: u64) -> Result<(), Error> {
        let id = to_sql(id);
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite_error(&self.path, e))?;
        tx.execute("DELETE FROM state WHERE snap > ?1", [id])
            .and_then(|_| tx.execute("DELETE FROM snapshots WHERE id > ?1", [id]))
            .and_then(|_| tx.execute("DELETE FROM progress", []))
            .and_then(|_| tx.commit())
            .map_err(|e| sqlite_error(&self.path, e))?;
        Ok(())
    }

    /// Write a snapshot in one transaction; compact now and then (a failed
    /// compaction is logged: the snapshot is stored all the same).
    pub fn write(&mut self, snapshot: &Snapshot) -> Result<(), Error> {
        let path = self.path.clone();
        let fail =
            |e: rusqlite::Error| Error::Config(format!("resilience store {}: {e}", path.display()));
        let tx = self.conn.transaction().map_err(fail)?;
        let mut digest = 0u64;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO state (store, key, snap, value, crc) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(fail)?;
            // In key order: the B-tree fills in order instead of at random.
            let mut order: Vec<&StateRow> = snapshot.rows.iter().collect();
            order.sort_unstable_by(|a, b| (&a.store, &a.key).cmp(&(&b.store, &b.key)));
            for row in order {
                let crc = row.crc();
                digest = digest.wrapping_add(u64::from(crc));
                insert
                    .execute(params![
                        row.store,
                        row.key,
                        to_sql(snapshot.id),
                        row.value,
                        i64::from(crc)
                    ])
                    .map_err(fail)?;
            }
        }
        let members = serde_json::to_string(&snapshot.members).unwrap_or_default();
        let positions = serde_json::to_string(&snapshot.positions).unwrap_or_default();
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (id, tag, members, rows, digest, positions, written) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                to_sql(snapshot.id),
                snapshot.tag,
                members,
                to_sql(snapshot.rows.len() as u64),
                digest as i64,
                positions,
                crate::metrics::unix_seconds()
            ],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        self.written += 1;
        if self.written.is_multiple_of(COMPACT_EVERY) {
            if let Err(e) = self.compact(snapshot.id) {
                log::warn!("{e}");
            }
        }
        Ok(())
    }

    /// Drop what no snapshot from `newest - KEEP` on needs.
    fn compact(&mut self, newest: u64) -> Result<(), Error> {
        let Some(floor) = newest.checked_sub(KEEP) else {
            return Ok(());
        };
        let floor = to_sql(floor);
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| sqlite_error(&path, e))?;
        tx.execute(
            "DELETE FROM state WHERE snap < ?1 AND EXISTS (SELECT 1 FROM state AS newer \
             WHERE newer.store = state.store AND newer.key = state.key \
             AND newer.snap > state.snap AND newer.snap <= ?1)",
            [floor],
        )
        .and_then(|_| {
            tx.execute(
                "DELETE FROM state WHERE snap <= ?1 AND value IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM state AS older WHERE older.store = state.store \
                 AND older.key = state.key AND older.snap < state.snap)",
                [floor],
            )
        })
        .and_then(|_| tx.execute("DELETE FROM snapshots WHERE id < ?1", [floor]))
        .and_then(|_| tx.commit())
        .map_err(|e| {
            Error::Config(format!(
                "resilience store {}: compacting (tried again later): {e}",
                path.display()
            ))
        })?;
        Ok(())
    }

    /// Records each pipeline's source has handed over so far (TCP sources,
    /// which cannot replay: what a crash loses is counted from this).
    pub fn progress(&mut self, sent: &BTreeMap<String, u64>) -> Result<(), Error> {
        for (pipeline, n) in sent {
            self.conn
                .execute(
                    "INSERT OR REPLACE INTO progress (pipeline, sent) VALUES (?1, ?2)",
                    params![pipeline, to_sql(*n)],
                )
                .map_err(|e| sqlite_error(&self.path, e))?;
        }
        Ok(())
    }
}

fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A store read at recovery.
struct StoreView {
    worker: String,
    path: PathBuf,
    conn: Connection,
    snapshots: BTreeMap<u64, SnapshotMeta>,
    progress: BTreeMap<String, u64>,
}

fn read_view(path: &Path, app: &str) -> Result<StoreView, Error> {
    let conn = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // Damage below the rows' checksums (pages, indexes) makes every
    // snapshot, and every later write, suspect.
    let check: String = conn
        .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
        .map_err(|e| sqlite_error(path, e))?;
    if check != "ok" {
        let found = check.replace("*** in database main ***", "");
        let found = found.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(refuse(path, format!("is damaged (SQLite finds: {found})")));
    }
    check_identity(&conn, path, app)?;
    let worker = meta(&conn, path, "worker")?
        .ok_or_else(|| refuse(path, "is not a Wallaroo store (no worker name)"))?;
    let unreadable = |e: rusqlite::Error| sqlite_error(path, e);
    let mut snapshots = BTreeMap::new();
    {
        let mut query = conn
            .prepare("SELECT id, tag, members, rows, digest, positions FROM snapshots")
            .map_err(unreadable)?;
        let rows = query
            .query_map([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(unreadable)?;
        for row in rows {
            let (id, tag, members, rows, digest, positions) = row.map_err(unreadable)?;
            let (Ok(members), Ok(positions)) = (
                serde_json::from_str(&members),
                serde_json::from_str(&positions),
            ) else {
                log::warn!(
                    "resilience store {}: snapshot {id} has a damaged header; skipping it",
                    path.display()
                );
                continue;
            };
            snapshots.insert(
                from_sql(id),
                SnapshotMeta {
                    tag,
                    members,
                    rows: from_sql(rows),
                    digest: digest as u64,
                    positions,
                },
            );
        }
    }
    let mut progress = BTreeMap::new();
    {
        let mut query = conn
            .prepare("SELECT pipeline, sent FROM progress")
            .map_err(unreadable)?;
        let rows = query
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(unreadable)?;
        for row in rows {
            let (pipeline, sent) = row.map_err(unreadable)?;
            progress.insert(pipeline, from_sql(sent));
        }
    }
    Ok(StoreView {
        worker,
        path: path.to_owned(),
        conn,
        snapshots,
        progress,
    })
}

/// Why a snapshot cannot be used: which one, and what is wrong.
struct Damage {
    /// Snapshots at and after this id are unusable.
    from: u64,
    what: String,
}

impl StoreView {
    /// Check that the rows written at snapshot `id` are all there and intact.
    fn verify(&self, id: u64) -> Result<(), Damage> {
        let Some(meta) = self.snapshots.get(&id) else {
            return Err(Damage {
                from: id,
                what: "missing".into(),
            });
        };
        let result: rusqlite::Result<(u64, u64, Option<String>)> = (|| {
            let mut query = self
                .conn
                .prepare("SELECT store, key, value, crc FROM state WHERE snap = ?1")?;
            let mut rows = query.query([to_sql(id)])?;
            let (mut count, mut digest, mut bad) = (0u64, 0u64, None);
            while let Some(row) = rows.next()? {
                let (state_row, crc) = state_row(row)?;
                count += 1;
                digest = digest.wrapping_add(crc);
                if u64::from(state_row.crc()) != crc && bad.is_none() {
                    bad = Some(format!(
                        "a row of state {:?} fails its checksum",
                        state_row.store
                    ));
                }
            }
            Ok((count, digest, bad))
        })();
        let damaged = |what: String| Damage { from: id, what };
        match result {
            Err(e) => Err(damaged(format!("cannot be read ({e})"))),
            Ok((_, _, Some(bad))) => Err(damaged(bad)),
            Ok((count, _, None)) if count != meta.rows => {
                Err(damaged(format!("has {count} of its {} rows", meta.rows)))
            }
            Ok((_, digest, None)) if digest != meta.digest => {
                Err(damaged("its rows do not match its checksum".into()))
            }
            Ok(_) => Ok(()),
        }
    }

    /// The state at snapshot `id`: per key, the newest row at or before it.
    fn load(&self, id: u64, out: &mut Vec<StateRow>) -> Result<(), Damage> {
        let result: rusqlite::Result<Option<(u64, String)>> = (|| {
            let mut query = self.conn.prepare(
                "SELECT store, key, value, crc, snap FROM state AS s WHERE snap <= ?1 \
                 AND snap = (SELECT MAX(snap) FROM state WHERE store = s.store AND key = s.key \
                 AND snap <= ?1)",
            )?;
            let mut rows = query.query([to_sql(id)])?;
            while let Some(row) = rows.next()? {
                let (state_row, crc) = state_row(row)?;
                if u64::from(state_row.crc()) != crc {
                    let snap = from_sql(row.get(4)?);
                    return Ok(Some((
                        snap,
                        format!(
                            "a row of state {:?} written at snapshot {snap} fails its checksum",
                            state_row.store
                        ),
                    )));
                }
                if state_row.value.is_some() {
                    out.push(state_row);
                }
            }
            Ok(None)
        })();
        match result {
            Ok(None) => Ok(()),
            Ok(Some((from, what))) => Err(Damage { from, what }),
            Err(e) => Err(Damage {
                from: id,
                what: format!("cannot be read ({e})"),
            }),
        }
    }
}

fn state_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(StateRow, u64)> {
    Ok((
        StateRow {
            store: row.get(0)?,
            key: row.get(1)?,
            value: row.get(2)?,
        },
        from_sql(row.get(3)?),
    ))
}

/// What a worker recovers from the last complete snapshot.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The snapshot id.
    pub id: u64,
    /// The workers that wrote it.
    pub members: Vec<String>,
    /// The state rows this worker loads from its own store.
    pub rows: Vec<StateRow>,
    /// Rows worker 0 takes from the stores of workers no longer in the
    /// cluster (written to its own store at its next snapshot).
    pub adopted: Vec<StateRow>,
    /// Source positions of every worker, merged by pipeline.
    pub positions: BTreeMap<String, SourcePosition>,
    /// Records of non-replayable sources lost by the crash, by pipeline.
    pub lost: BTreeMap<String, u64>,
}

/// The store files in `dir`.
fn store_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Config(format!(
                "--resilience-dir {}: cannot read it: {e}",
                dir.display()
            )))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(SUFFIX))
        .collect();
    files.sort();
    Ok(files)
}

/// The newest snapshot id at or below `limit` that every worker of its run
/// wrote with the same lineage, and its workers.
fn newest_complete(
    views: &HashMap<String, StoreView>,
    limit: u64,
    excluded: &BTreeSet<u64>,
) -> Option<(u64, Vec<String>)> {
    let ids: BTreeSet<u64> = views
        .values()
        .flat_map(|view| view.snapshots.keys().copied())
        .filter(|id| *id <= limit && !excluded.contains(id))
        .collect();
    for &id in ids.iter().rev() {
        for view in views.values() {
            let Some(meta) = view.snapshots.get(&id) else {
                continue;
            };
            let complete = meta.members.iter().all(|member| {
                views
                    .get(member)
                    .and_then(|other| other.snapshots.get(&id))
                    .is_some_and(|theirs| theirs.tag == meta.tag && theirs.members == meta.members)
            });
            if complete && meta.members.contains(&view.worker) {
                return Some((id, meta.members.clone()));
            }
        }
    }
    None
}

/// Find the newest complete, undamaged snapshot in `dir` and load what
/// worker `me` (of the workers `current`) takes from it. None: nothing to
/// recover (no store, or no complete snapshot).
pub fn recover(
    dir: &Path,
    app: &str,
    me: &str,
    current: &[String],
) -> Result<Option<Recovered>, Error> {
    let mut views = HashMap::new();
    for path in store_files(dir)? {
        let view = read_view(&path, app)?;
        if let Some(previous) = views.insert(view.worker.clone(), view) {
            return Err(refuse(
                &path,
                format!(
                    "has the same worker name as {}; keep one store per worker",
                    previous.path.display()
                ),
            ));
        }
    }
    let mut limit = u64::MAX;
    let mut excluded = BTreeSet::new();
    // Damaged snapshots found on the way: (store, snapshot, what).
    let mut damaged: Vec<(PathBuf, u64, String)> = Vec::new();
    loop {
        let Some((id, members)) = newest_complete(&views, limit, &excluded) else {
            // One rule: damage is never skipped over into a start from
            // scratch (which would silently lose the state).
            if let Some((path, id, what)) = damaged.first() {
                return Err(refuse(
                    path,
                    format!("snapshot {id} is damaged ({what}) and no earlier complete snapshot is intact"),
                ));
            }
            if views.values().any(|view| !view.snapshots.is_empty()) {
                log::warn!(
                    "--resilience-dir {}: no snapshot was completed by every worker of its run \
                     (crashed before the first one); starting from scratch",
                    dir.display()
                );
            }
            for (pipeline, sent) in views.get(me).map(|v| &v.progress).into_iter().flatten() {
                log::warn!(
                    "pipeline {pipeline:?}: its TCP source cannot replay: {sent} records it had \
                     received before the crash are lost (there was no complete snapshot yet)"
                );
            }
            return Ok(None);
        };
        let loads: Vec<&String> = members
            .iter()
            .filter(|member| {
                *member == me
                    || (current.first().is_some_and(|first| first == me)
                        && !current.contains(member))
            })
            .collect();
        let mut recovered = Recovered {
            id,
            members: members.clone(),
            ..Recovered::default()
        };
        let mut damage = None;
        for member in &members {
            let Some(view) = views.get(member) else {
                continue;
            };
            if let Err(d) = view.verify(id) {
                damage = Some((view, d));
                break;
            }
            if loads.contains(&member) {
                let rows = if member == me {
                    &mut recovered.rows
                } else {
                    &mut recovered.adopted
                };
                if let Err(d) = view.load(id, rows) {
                    damage = Some((view, d));
                    break;
                }
            }
        }
        if let Some((view, d)) = damage {
            damaged.push((view.path.clone(), d.from.min(id), d.what.clone()));
            if d.from < id {
                limit = d.from.saturating_sub(1);
            } else {
                excluded.insert(id);
            }
            continue;
        }
        for member in &members {
            let Some(view) = views.get(member) else {
                continue;
            };
            let Some(meta) = view.snapshots.get(&id) else {
                continue;
            };
            for (pipeline, position) in &meta.positions {
                merge_position(&mut recovered.positions, pipeline, position, member == me);
            }
            if member == me {
                for (pipeline, sent) in &view.progress {
                    let at_snapshot = meta.positions.get(pipeline).map_or(0, |p| p.sent);
                    if meta
                        .positions
                        .get(pipeline)
                        .is_some_and(|p| p.kind == "tcp")
                        && *sent > at_snapshot
                    {
                        recovered.lost.insert(pipeline.clone(), sent - at_snapshot);
                    }
                }
            }
        }
        for (path, bad, what) in &damaged {
            log::warn!(
                "resilience store {}: snapshot {bad} is damaged ({what}); recovering from an \
                 earlier snapshot, {id}",
                path.display()
            );
        }
        return Ok(Some(recovered));
    }
}

/// Merge one worker's position of a pipeline into the run's: Kafka
/// partitions are united; the record count is this worker's own (a file
/// source's, wherever it ran).
fn merge_position(
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
                                        *crate::sync::lock(&stats.gave_up) = Some(why);
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
        crate::sync::lock(&self.stats.gave_up).clone()
    }

    fn send(&self, message: Message) {
        let tx = crate::sync::lock(&self.tx).clone();
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
        let tx = crate::sync::lock(&self.tx).clone();
        if let Some(tx) = tx {
            let _ = tx.try_send(Message::Progress(sent));
        }
    }

    /// Write what is queued and stop.
    pub fn finish(&self) {
        crate::sync::lock(&self.tx).take();
        if let Some(thread) = crate::sync::lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(worker: &str) -> Identity {
        Identity {
            app: "app".into(),
            worker: worker.into(),
        }
    }

    fn row(key: &str, value: Option<&str>) -> StateRow {
        StateRow {
            store: "counts".into(),
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    fn snapshot(id: u64, members: &[&str], rows: Vec<StateRow>) -> Snapshot {
        Snapshot {
            id,
            tag: "t".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            rows,
            positions: BTreeMap::new(),
        }
    }

    fn values(recovered: &Recovered) -> BTreeMap<String, String> {
        recovered
            .rows
            .iter()
            .map(|r| {
                (
                    String::from_utf8_lossy(&r.key).into_owned(),
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wallaroo-resilience-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn newest_version_per_key_and_tombstones() {
        let dir = tempdir("versions");
        let mut store = Store::open(&dir, &identity("w0")).unwrap();
        store
            .write(&snapshot(
                1,
                &["w0"],
                vec![row("a", Some("1")), row("b", Some("1"))],
            ))
            .unwrap();
        store
            .write(&snapshot(
                2,
                &["w0"],
                vec![row("a", Some("2")), row("b", None)],
            ))
            .unwrap();
        let got = recover(&dir, "app", "w0", &["w0".into()]).unwrap().unwrap();
        assert_eq!(got.id, 2);
        assert_eq!(values(&got), BTreeMap::from([("a".into(), "2".into())]));
    }

    #[test]
    fn incomplete_snapshots_are_not_used() {
        let dir = tempdir("incomplete");
        let members = ["w0", "w1"];
        let mut w0 = Store::open(&dir, &identity("w0")).unwrap();
        let mut w1 = Store::open(&dir, &identity("w1")).unwrap();
        w0.write(&snapshot(1, &members, vec![row("a", Some("1"))]))
            .unwrap();
        w1.write(&snapshot(1, &members, vec![row("b", Some("1"))]))
            .unwrap();
        w0.write(&snapshot(2, &members, vec![row("a", Some("2"))]))
            .unwrap();
        let current: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        let got = recover(&dir, "app", "w0", &current).unwrap().unwrap();
        assert_eq!(got.id, 1);
        assert_eq!(values(&got), BTreeMap::from([("a".into(), "1".into())]));
        // Alone, worker 0 also takes over the keys of the worker that is gone.
        let got = recover(&dir, "app", "w0", &["w0".into()]).unwrap().unwrap();
        assert_eq!(got.adopted.len(), 1);
        assert_eq!(got.rows.len(), 1);
    }

    #[test]
    fn damaged_newest_snapshot_falls_back() {
        let dir = tempdir("damaged");
        let mut store = Store::open(&dir, &identity("w0")).unwrap();
        store
            .write(&snapshot(1, &["w0"], vec![row("a", Some("1"))]))
            .unwrap();
        store
            .write(&snapshot(2, &["w0"], vec![row("a", Some("2"))]))
            .unwrap();
        store
            .conn
            .execute("UPDATE state SET value = X'00ff' WHERE snap = 2", [])
            .unwrap();
        let got = recover(&dir, "app", "w0", &["w0".into()]).unwrap().unwrap();
        assert_eq!(got.id, 1);
        assert_eq!(values(&got), BTreeMap::from([("a".into(), "1".into())]));
    }

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

    #[test]
    fn damage_with_no_intact_snapshot_left_is_refused_not_skipped() {
        let dir = tempdir("all-damaged");
        let mut store = Store::open(&dir, &identity("w0")).unwrap();
        for id in 1..=2 {
            store
                .write(&snapshot(id, &["w0"], vec![row("a", Some("1"))]))
                .unwrap();
        }
        store
            .conn
            .execute("UPDATE state SET value = X'00ff'", [])
            .unwrap();
        let err = recover(&dir, "app", "w0", &["w0".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no earlier complete snapshot is intact"),
            "{err}"
        );
        assert!(err.contains("move it away: mv "), "{err}");
    }

    #[test]
    fn compaction_keeps_what_recent_snapshots_need() {
        let dir = tempdir("compact");
        let mut store = Store::open(&dir, &identity("w0")).unwrap();
        store
            .write(&snapshot(1, &["w0"], vec![row("old", Some("x"))]))
            .unwrap();
        for id in 2..=16 {
            store
                .write(&snapshot(
                    id,
                    &["w0"],
                    vec![row("a", Some(&id.to_string()))],
                ))
                .unwrap();
        }
        let rows: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM state", [], |r| r.get(0))
            .unwrap();
        assert!(
            rows <= 1 + KEEP as i64 + COMPACT_EVERY as i64,
            "{rows} rows left"
        );
        let got = recover(&dir, "app", "w0", &["w0".into()]).unwrap().unwrap();
        assert_eq!(got.id, 16);
        assert_eq!(values(&got)["old"], "x");
        assert_eq!(values(&got)["a"], "16");
    }

    #[test]
    fn another_application_is_refused() {
        let dir = tempdir("identity");
        Store::open(&dir, &identity("w0")).unwrap();
        let other = Identity {
            app: "other".into(),
            worker: "w0".into(),
        };
        let err = Store::open(&dir, &other).err().unwrap().to_string();
        assert!(err.contains("another application"), "{err}");
        let err = recover(&dir, "other", "w0", &["w0".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another application"), "{err}");
    }

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
