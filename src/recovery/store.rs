//! A worker's own store: one SQLite database, one transaction per
//! snapshot, compacted now and then; and the errors a store is refused with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::snapshot::{Identity, Snapshot, StateRow, FORMAT};
use crate::errors::Error;

/// Snapshots kept behind the newest (older versions are compacted away): a
/// worker's newest snapshot may be ahead of the newest complete one, and a
/// damaged newest one falls back to the one before.
pub(super) const KEEP: u64 = 4;
/// Compact every this many snapshots.
pub(super) const COMPACT_EVERY: u64 = 8;
/// File name suffix of a store.
pub(super) const SUFFIX: &str = ".sqlite";

/// A store whose content cannot be used: refused, with how to start
/// without it.
pub(super) fn refuse(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Config(format!(
        "resilience store {p}: {what}; refusing to start from it. To start without its \
         snapshots, move it away: mv {p} {p}.damaged",
        p = path.display()
    ))
}

/// A store that cannot be opened or written (not its content): the
/// directory, the disk or permissions; no "move it away" where it is not
/// the file's fault.
pub(super) fn store_io_error(path: &Path, err: impl std::fmt::Display) -> Error {
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
pub(super) fn sqlite_error(path: &Path, err: rusqlite::Error) -> Error {
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

pub(super) fn open(path: &Path, flags: OpenFlags) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite_error(path, e))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| sqlite_error(path, e))?;
    Ok(conn)
}

pub(super) fn meta(conn: &Connection, path: &Path, key: &str) -> Result<Option<String>, Error> {
    conn.query_row("SELECT v FROM meta WHERE k = ?1", [key], |row| row.get(0))
        .optional()
        .map_err(|e| sqlite_error(path, e))
}

/// Refuse a store written by another application or another store format.
pub(super) fn check_identity(conn: &Connection, path: &Path, app: &str) -> Result<(), Error> {
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
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
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

pub(super) fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
