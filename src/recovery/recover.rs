//! Finding the newest snapshot that every worker of its run completed and
//! that is intact, and loading what this worker takes from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::snapshot::StateRow;
use super::store::{check_identity, from_sql, meta, open, refuse, sqlite_error, to_sql, SUFFIX};
use crate::errors::Error;
use crate::sources::SourcePosition;

/// A snapshot's record in a store.
#[derive(Debug, Clone)]
struct SnapshotMeta {
    tag: String,
    members: Vec<String>,
    rows: u64,
    digest: u64,
    positions: BTreeMap<String, SourcePosition>,
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
                recovered
                    .positions
                    .entry(pipeline.clone())
                    .or_insert_with(|| position.emptied())
                    .merge(position, member == me);
            }
            if member == me {
                for (pipeline, sent) in &view.progress {
                    let at_snapshot = meta.positions.get(pipeline).map_or(0, |p| p.sent());
                    if meta.positions.get(pipeline).is_some_and(|p| !p.replays())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::fixtures::{row, snapshot};
    use crate::recovery::store::{COMPACT_EVERY, KEEP};
    use crate::recovery::{Identity, Store};

    fn identity(worker: &str) -> Identity {
        Identity {
            app: "app".into(),
            worker: worker.into(),
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

    /// A store written before positions were typed (every field whatever
    /// the kind) recovers the same positions.
    #[test]
    fn positions_of_an_earlier_store_are_recovered() {
        use crate::sources::file::FilePosition;
        use crate::sources::kafka::KafkaPosition;
        use crate::sources::position::Counted;

        let dir = tempdir("old-positions");
        let mut store = Store::open(&dir, &identity("w0")).unwrap();
        store
            .write(&snapshot(1, &["w0"], vec![row("a", Some("1"))]))
            .unwrap();
        let earlier = r#"{"lines":{"kind":"file","sent":7,"offset":120,"index":7,"partitions":{}},"topic":{"kind":"kafka","sent":5,"offset":0,"index":0,"partitions":{"0":10,"3":2}},"socket":{"kind":"tcp","sent":9,"offset":0,"index":0,"partitions":{}}}"#;
        store
            .conn
            .execute("UPDATE snapshots SET positions = ?1", [earlier])
            .unwrap();
        let got = recover(&dir, "app", "w0", &["w0".into()]).unwrap().unwrap();
        assert_eq!(
            got.positions,
            BTreeMap::from([
                (
                    "lines".to_string(),
                    SourcePosition::File(FilePosition {
                        sent: 7,
                        offset: 120,
                        index: 7
                    })
                ),
                (
                    "topic".to_string(),
                    SourcePosition::Kafka(KafkaPosition {
                        sent: 5,
                        partitions: BTreeMap::from([(0, 10), (3, 2)])
                    })
                ),
                (
                    "socket".to_string(),
                    SourcePosition::Tcp(Counted { sent: 9 })
                ),
            ])
        );
    }
}
