//! Bad input: counted, logged with where it came from, kept.
//!
//! The last [`RECENT_LIMIT`] records stay in memory (with a preview of their
//! payload, not the payload); with `--dead-letter PATH` every one is appended
//! to PATH as a whole JSON line with its whole payload (written at once, so a
//! crash loses none of them).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Serialize;

use crate::errors::{shorten, Error};
use crate::sync::lock;

/// How many bad records are kept in memory.
pub const RECENT_LIMIT: usize = 1000;

/// Characters of a payload's preview.
const PREVIEW_CHARS: usize = 200;
/// Characters of an error message kept in memory (the dead-letter file
/// keeps it whole).
const ERROR_CHARS: usize = 2000;

/// One bad record as kept in memory: its payload only as a preview, so the
/// [`RECENT_LIMIT`] records kept take a few MB however large the payloads
/// (the dead-letter file keeps every byte).
#[derive(Debug, Clone)]
pub struct BadRecord {
    /// Seconds since the epoch.
    pub time: f64,
    /// The pipeline whose source produced it.
    pub pipeline: String,
    /// Which source and where in it.
    pub position: String,
    /// What was wrong: truncated, zero_length, oversize, decode_error, ...
    pub kind: String,
    /// The error message or traceback (shortened).
    pub error: String,
    /// The bytes as text (lossy, shortened).
    pub payload_preview: String,
    /// The payload's length.
    pub payload_bytes: usize,
}

/// One line of the dead-letter file.
#[derive(Serialize)]
struct DeadLetterLine<'a> {
    time: f64,
    pipeline: &'a str,
    position: &'a str,
    kind: &'a str,
    error: &'a str,
    /// The bytes, base64 encoded.
    payload_base64: String,
    /// The bytes as text (lossy, shortened), for people reading the file.
    payload_preview: &'a str,
}

/// `payload` as text for people: lossy UTF-8 of its start, shortened.
fn preview(payload: &[u8]) -> String {
    // A character takes at most 4 bytes: enough bytes for the preview.
    let start = &payload[..payload.len().min(PREVIEW_CHARS * 4 + 4)];
    shorten(&String::from_utf8_lossy(start), PREVIEW_CHARS)
}

#[derive(Default)]
struct Inner {
    counts: BTreeMap<String, u64>,
    by_pipeline: BTreeMap<(String, String), u64>,
    recent: VecDeque<BadRecord>,
    file: Option<DeadLetter>,
}

/// The dead-letter file: whole JSON lines or nothing.
struct DeadLetter {
    file: File,
    path: std::path::PathBuf,
    /// Records that could not be written.
    failed: u64,
    /// Failed since the last record that was written.
    failing: u64,
}

impl DeadLetter {
    /// Append `line` in one piece; a write cut short (a full disk) is cut
    /// off again, so the file never holds a torn line.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        let before = self.file.metadata()?.len();
        let written = self.file.write_all(line).and_then(|_| self.file.flush());
        if written.is_err() {
            let _ = self.file.set_len(before);
        }
        written
    }

    /// Write one record, counting and logging (not every time) a failure.
    fn keep(&mut self, record: &DeadLetterLine<'_>) {
        let mut line = serde_json::to_vec(record).unwrap_or_default();
        line.push(b'\n');
        match self.append(&line) {
            Ok(()) => {
                if self.failing > 0 {
                    log::warn!(
                        "dead-letter file {}: writing again, after {} bad records could not \
                         be written",
                        self.path.display(),
                        self.failing
                    );
                }
                self.failing = 0;
            }
            Err(e) => {
                if self.failing == 0 {
                    log::error!(
                        "dead-letter file {}: cannot write a bad record ({e}); such records are \
                         counted (summary, metric wallaroo_dead_letter_failed_total)",
                        self.path.display()
                    );
                }
                self.failing += 1;
                self.failed += 1;
            }
        }
    }
}

/// Log lines per kind of bad input allowed in one [`LOG_WINDOW`].
const LOG_BURST: u32 = 20;
/// The window of the log throttle.
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Per kind: window start, lines logged in it, lines not logged.
type LogWindows = HashMap<String, (Instant, u32, u64)>;

/// The shared bad-input record of a run.
#[derive(Default)]
pub struct BadInput {
    log_windows: Mutex<LogWindows>,
    inner: Mutex<Inner>,
}

impl BadInput {
    /// A record keeping every bad input in `dead_letter` when given.
    pub fn new(dead_letter: Option<&Path>) -> Result<BadInput, Error> {
        let file = dead_letter
            .map(|path| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(|file| DeadLetter {
                        file,
                        path: path.to_path_buf(),
                        failed: 0,
                        failing: 0,
                    })
                    .map_err(|e| {
                        Error::Config(format!(
                            "cannot open dead-letter file {}: {e}",
                            path.display()
                        ))
                    })
            })
            .transpose()?;
        Ok(BadInput {
            log_windows: Mutex::default(),
            inner: Mutex::new(Inner {
                file,
                ..Inner::default()
            }),
        })
    }

    /// Count, log and keep one bad record.
    pub fn record(&self, pipeline: &str, position: &str, kind: &str, error: &str, payload: &[u8]) {
        if self.should_log(kind) {
            log::warn!(
                "bad input ({kind}) in pipeline {pipeline:?} at {position}: {}",
                shorten(error.lines().last().unwrap_or(error), 300)
            );
        }
        self.keep(pipeline, position, kind, error, payload);
    }

    /// Count and keep one bad record (in memory and in the dead-letter
    /// file) without logging it: the caller logged it when
    /// [`BadInput::should_log`] said so.
    pub fn keep(&self, pipeline: &str, position: &str, kind: &str, error: &str, payload: &[u8]) {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let payload_preview = preview(payload);
        let mut inner = lock(&self.inner);
        if let Some(file) = inner.file.as_mut() {
            file.keep(&DeadLetterLine {
                time,
                pipeline,
                position,
                kind,
                error,
                payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
                payload_preview: &payload_preview,
            });
        }
        let record = BadRecord {
            time,
            pipeline: pipeline.to_owned(),
            position: position.to_owned(),
            kind: kind.to_owned(),
            error: shorten(error, ERROR_CHARS),
            payload_preview,
            payload_bytes: payload.len(),
        };
        *inner.counts.entry(kind.to_owned()).or_insert(0) += 1;
        *inner
            .by_pipeline
            .entry((pipeline.to_owned(), kind.to_owned()))
            .or_insert(0) += 1;
        if inner.recent.len() == RECENT_LIMIT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(record);
    }

    /// Whether to log one more bad record of `kind`: at most
    /// [`LOG_BURST`] lines per kind every [`LOG_WINDOW`], then one line
    /// saying how many were not logged (all are counted and kept).
    pub fn should_log(&self, kind: &str) -> bool {
        let mut windows = lock(&self.log_windows);
        let now = Instant::now();
        let window = windows.entry(kind.to_owned()).or_insert((now, 0, 0));
        if now.duration_since(window.0) >= LOG_WINDOW {
            if window.2 > 0 {
                log::warn!(
                    "{} more bad input ({kind}) not logged in the last {}s (all counted and kept)",
                    window.2,
                    LOG_WINDOW.as_secs()
                );
            }
            *window = (now, 0, 0);
        }
        if window.1 < LOG_BURST {
            window.1 += 1;
            true
        } else {
            window.2 += 1;
            false
        }
    }

    /// Bad records so far, by kind.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.inner).counts.clone()
    }

    /// Bad records that could not be written to the dead-letter file.
    pub fn dead_letter_failed(&self) -> u64 {
        let inner = lock(&self.inner);
        inner.file.as_ref().map_or(0, |file| file.failed)
    }

    /// Bad records so far, by pipeline and kind.
    pub fn counts_by_pipeline(&self) -> Vec<(String, String, u64)> {
        let inner = lock(&self.inner);
        inner
            .by_pipeline
            .iter()
            .map(|((pipeline, kind), n)| (pipeline.clone(), kind.clone(), *n))
            .collect()
    }

    /// The `n` newest bad records, oldest first.
    pub fn newest(&self, n: usize) -> Vec<BadRecord> {
        let inner = lock(&self.inner);
        let skip = inner.recent.len().saturating_sub(n);
        inner.recent.iter().skip(skip).cloned().collect()
    }

    /// The most recent bad records, oldest first.
    pub fn recent(&self) -> Vec<BadRecord> {
        lock(&self.inner).recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keeps_recent_and_writes_dead_letter() {
        let dir = std::env::temp_dir().join(format!("wallaroo-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dead.jsonl");
        let bad = BadInput::new(Some(&path)).unwrap();
        bad.record(
            "p",
            "file x line 3",
            "decode_error",
            "ValueError: no",
            b"{oops",
        );
        bad.record("p", "file x line 4", "truncated", "", b"\x00\x01");
        assert_eq!(bad.counts().get("decode_error"), Some(&1));
        assert_eq!(bad.recent().len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["position"], "file x line 3");
        assert_eq!(first["payload_base64"], "e29vcHM=");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_keeps_a_preview_of_large_payloads_and_the_file_all_of_it() {
        let dir = std::env::temp_dir().join(format!("wallaroo-bad-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dead.jsonl");
        let bad = BadInput::new(Some(&path)).unwrap();
        let payload = vec![b'x'; 1 << 20];
        bad.record("p", "here", "decode_error", &"e".repeat(100_000), &payload);
        let kept = &bad.recent()[0];
        assert_eq!(kept.payload_bytes, 1 << 20);
        assert!(kept.payload_preview.len() <= PREVIEW_CHARS + 3);
        assert!(kept.error.len() <= ERROR_CHARS + 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        let whole = base64::engine::general_purpose::STANDARD
            .decode(line["payload_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(whole, payload);
        assert_eq!(line["error"].as_str().unwrap().len(), 100_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_keeps_only_the_last_records() {
        let bad = BadInput::new(None).unwrap();
        for i in 0..(RECENT_LIMIT + 5) {
            bad.record("p", &format!("line {i}"), "decode_error", "e", b"x");
        }
        let recent = bad.recent();
        assert_eq!(recent.len(), RECENT_LIMIT);
        assert_eq!(recent[0].position, "line 5");
        assert_eq!(bad.counts()["decode_error"], (RECENT_LIMIT + 5) as u64);
    }
}
