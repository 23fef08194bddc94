//! Sources: IO threads that read records and send them to the worker in
//! batches through a bounded channel. They never hold the GIL, except to ask
//! a hand-written decoder's `payload_length` about a header.

pub mod file;
pub mod gen;
pub mod kafka;
pub mod position;
pub mod tcp;

pub use position::SourcePosition;

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bad_input::BadInput;
use crate::errors::{format_py_err, Error};
use crate::metrics::PipelineMetrics;
use crate::plan::{Framing, SourceKind};

/// Batches in flight between a source and the worker.
pub const CHANNEL_BATCHES: usize = 16;

/// Where a record came from inside its source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pos {
    /// Connection number (TCP) or partition (Kafka); 0 for files.
    pub stream: u32,
    /// Record number within the stream, from 1.
    pub index: u64,
    /// Byte offset of the record's start within the stream.
    pub offset: u64,
}

/// One record's bytes and where they came from.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    /// The payload handed to `decode`.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Its position.
    pub pos: Pos,
    /// When its batch was read ([`crate::metrics::now_ns`]; 0 with metrics off).
    #[serde(default)]
    pub read_ns: u64,
}

impl Frame {
    /// The stream number of the engine's own marker frames (never a source's).
    const MARKER_STREAM: u32 = u32::MAX;

    /// A marker frame: a timer tick (`end` false) or the end of the pipeline's
    /// input (`end` true), for steps with timers (windows).
    pub fn marker(end: bool) -> Frame {
        Frame {
            payload: Vec::new(),
            pos: Pos {
                stream: Self::MARKER_STREAM,
                index: u64::from(end),
                offset: 0,
            },
            read_ns: 0,
        }
    }

    /// For a marker frame, whether it marks the end of input; None for a record.
    pub fn as_marker(&self) -> Option<bool> {
        (self.pos.stream == Self::MARKER_STREAM && self.payload.is_empty())
            .then_some(self.pos.index == 1)
    }
}

/// How positions of a source are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosStyle {
    /// `line N (byte B)`.
    Lines,
    /// `frame N (byte B)`.
    Frames,
    /// `connection C frame N (byte B)`.
    Connections,
    /// `partition P offset O`.
    Partitions,
}

/// How to name positions of one source in logs and the dead-letter file.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// e.g. `file data.txt`, `tcp 127.0.0.1:7000` or `kafka topic gharchive`.
    pub label: String,
    /// How its positions read.
    pub style: PosStyle,
}

impl SourceInfo {
    /// e.g. `file data.txt line 3 (byte 120)`,
    /// `tcp 127.0.0.1:7000 connection 2 frame 9 (byte 80)`,
    /// `kafka topic t partition 0 offset 17`.
    pub fn describe(&self, pos: &Pos) -> String {
        let label = &self.label;
        match self.style {
            PosStyle::Lines => format!("{label} line {} (byte {})", pos.index, pos.offset),
            PosStyle::Frames => format!("{label} frame {} (byte {})", pos.index, pos.offset),
            PosStyle::Connections => format!(
                "{label} connection {} frame {} (byte {})",
                pos.stream, pos.index, pos.offset
            ),
            PosStyle::Partitions => {
                format!("{label} partition {} offset {}", pos.stream, pos.offset)
            }
        }
    }
}

/// What every source thread shares with the run.
#[derive(Clone)]
pub struct SourceContext {
    /// The pipeline name, for logs and bad input.
    pub pipeline: String,
    /// Where bad input goes.
    pub bad: Arc<BadInput>,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// Records per batch.
    pub batch_size: usize,
    /// Frames longer than this are bad input.
    pub max_frame_bytes: u64,
    /// Set when the run stops: sources hand over what they have and end.
    pub stop: Arc<AtomicBool>,
    /// This worker's index in the cluster.
    pub worker: usize,
    /// Workers in the cluster.
    pub peers: usize,
    /// Records this source may still hand over (`--max-records`); None: no limit.
    pub remaining: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl SourceContext {
    /// A context for a source's unit tests: one worker alone, batches of
    /// 1000, at most `remaining` records (None: no limit).
    #[cfg(test)]
    pub(crate) fn for_test(remaining: Option<u64>) -> SourceContext {
        SourceContext {
            pipeline: "p".to_owned(),
            bad: Arc::new(BadInput::new(None).expect("bad input without a dead-letter file")),
            metrics: Arc::new(PipelineMetrics::default()),
            batch_size: 1000,
            max_frame_bytes: 1 << 20,
            stop: Arc::new(AtomicBool::new(false)),
            worker: 0,
            peers: 1,
            remaining: remaining.map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n))),
        }
    }

    /// Whether this source should end: the run stops or its record limit is reached.
    pub fn finished(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
            || self
                .remaining
                .as_ref()
                .is_some_and(|r| r.load(std::sync::atomic::Ordering::Relaxed) == 0)
    }
}

/// A running source.
pub struct SourceHandle {
    /// Batches of records; disconnected when the source has ended.
    pub rx: Receiver<Vec<Frame>>,
    /// Names positions.
    pub info: SourceInfo,
    /// The source's threads, joined at the end of the run.
    pub threads: Vec<JoinHandle<()>>,
    /// Set by a source once it knows that every worker of the cluster reads
    /// its own share of the input (a Kafka topic with at least as many
    /// partitions as workers): its batches are then decoded where they are
    /// read instead of spread over the workers.
    pub read_everywhere: Arc<AtomicBool>,
}

/// Start the source of a pipeline.
/// With `resume` (crash recovery) a file source goes on after the last
/// record it handed over and a Kafka source from the stored offsets.
pub fn start(
    kind: SourceKind,
    framing: Framing,
    ctx: SourceContext,
    resume: Option<&SourcePosition>,
) -> Result<SourceHandle, Error> {
    let framing = Arc::new(framing);
    let metrics = ctx.metrics.clone();
    let handle = match kind {
        SourceKind::File { path } => {
            let after = match resume {
                Some(SourcePosition::File(at)) => at.after(),
                _ => None,
            };
            file::start(path, framing, ctx, after)
        }
        SourceKind::Tcp(tcp) => tcp::start(&tcp.host, tcp.port, tcp.max_connections, framing, ctx),
        SourceKind::Gen { generator } => gen::start(generator, ctx, resume.map_or(0, |r| r.sent())),
        SourceKind::Kafka(mut plan) => {
            if let Some(SourcePosition::Kafka(at)) = resume {
                at.resume(&mut plan);
            }
            kafka::start(plan, ctx)
        }
    }?;
    metrics.set_source_label(&handle.info.label);
    Ok(handle)
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// truncated, zero_length, oversize, payload_length_error.
    pub kind: &'static str,
    /// What was wrong.
    pub error: String,
    /// The bytes concerned.
    pub payload: Vec<u8>,
    /// Where.
    pub pos: Pos,
}

/// What the parser found in its buffer.
pub enum Parsed {
    /// A complete record.
    Frame(Frame),
    /// A bad record; parsing goes on after it.
    Bad(BadFrame),
    /// A bad record after which the stream cannot be resynchronised.
    Fatal(BadFrame),
}

/// Splits a byte stream into records, incrementally.
pub struct Parser {
    framing: Arc<Framing>,
    max_frame_bytes: u64,
    /// The bytes not parsed yet are `buf[start..end]`; `buf[end..]` is room
    /// to read into (initialised once, so reads need no zeroing).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    stream: u32,
    index: u64,
    offset: u64,
}

impl Parser {
    /// A parser for one stream (file or connection).
    pub fn new(framing: Arc<Framing>, max_frame_bytes: u64, stream: u32) -> Parser {
        Parser {
            framing,
            max_frame_bytes,
            buf: Vec::new(),
            start: 0,
            end: 0,
            stream,
            index: 0,
            offset: 0,
        }
    }

    /// Start at byte `offset` of the stream, where record number `index`
    /// (from 1) begins.
    pub fn start_at(&mut self, offset: u64, index: u64) {
        self.offset = offset;
        self.index = index.saturating_sub(1);
    }

    /// Append bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.room(bytes.len()).copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Read up to `max` bytes of the stream from `reader` straight into the
    /// buffer (no copy through a chunk); what `Read::read` returns.
    pub fn read_from(&mut self, reader: &mut impl Read, max: usize) -> std::io::Result<usize> {
        let n = reader.read(self.room(max))?;
        self.end += n;
        Ok(n)
    }

    /// `len` bytes of room after the unparsed bytes: those move to the front
    /// first (they are at most one partial record, as the caller drains the
    /// parser after each read, so each byte moves about once).
    fn room(&mut self, len: usize) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + len {
            self.buf.resize(self.end + len, 0);
        }
        &mut self.buf[self.end..self.end + len]
    }

    fn pos(&self) -> Pos {
        Pos {
            stream: self.stream,
            index: self.index + 1,
            offset: self.offset,
        }
    }

    fn take(&mut self, skip: usize, len: usize) -> Frame {
        let begin = self.start + skip;
        let frame = Frame {
            payload: self.buf[begin..begin + len].to_vec(),
            pos: self.pos(),
            read_ns: 0,
        };
        self.consume(skip + len);
        frame
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
        self.index += 1;
    }

    fn bad(&mut self, kind: &'static str, error: String, len: usize) -> BadFrame {
        let bad = BadFrame {
            kind,
            error,
            payload: self.buf[self.start..self.start + len].to_vec(),
            pos: self.pos(),
        };
        self.consume(len);
        bad
    }

    /// The next complete record in the buffer, if any.
    pub fn next_record(&mut self) -> Option<Parsed> {
        let available = self.end - self.start;
        match &*self.framing {
            Framing::Lines => {
                let newline = memchr::memchr(b'\n', &self.buf[self.start..self.end])?;
                let mut len = newline;
                if len > 0 && self.buf[self.start + len - 1] == b'\r' {
                    len -= 1;
                }
                let frame = self.take(0, len);
                // The line ending belongs to the record that it ends.
                let ending = newline + 1 - len;
                self.start += ending;
                self.offset += ending as u64;
                Some(Parsed::Frame(frame))
            }
            framing => {
                let header_length = match framing {
                    Framing::Native(format) => format.size(),
                    Framing::Python { header_length, .. } => *header_length,
                    Framing::Lines => unreachable!("handled above"),
                };
                if available < header_length {
                    return None;
                }
                let header = &self.buf[self.start..self.start + header_length];
                let length = match frame_length(framing, header) {
                    Ok(length) => length,
                    Err(error) => {
                        return Some(Parsed::Fatal(self.bad(
                            "payload_length_error",
                            error,
                            header_length,
                        )))
                    }
                };
                if length == 0 {
                    return Some(Parsed::Bad(self.bad(
                        "zero_length",
                        "frame header gives a payload length of 0".to_owned(),
                        header_length,
                    )));
                }
                if length > self.max_frame_bytes {
                    return Some(Parsed::Fatal(self.bad(
                        "oversize",
                        format!(
                            "frame header gives a payload length of {length} bytes, more than the \
                             limit of {} (--max-frame-bytes); the rest of the stream is skipped",
                            self.max_frame_bytes
                        ),
                        header_length,
                    )));
                }
                let length = length as usize;
                if available < header_length + length {
                    return None;
                }
                Some(Parsed::Frame(self.take(header_length, length)))
            }
        }
    }

    /// The stream ended: what is left in the buffer, as a last line or a truncated frame.
    pub fn finish(&mut self) -> Option<Parsed> {
        let available = self.end - self.start;
        if available == 0 {
            return None;
        }
        if matches!(&*self.framing, Framing::Lines) {
            return Some(Parsed::Frame(self.take(0, available)));
        }
        Some(Parsed::Bad(self.bad(
            "truncated",
            format!("the stream ended inside a frame ({available} bytes of it were read)"),
            available,
        )))
    }
}

fn frame_length(framing: &Framing, header: &[u8]) -> Result<u64, String> {
    match framing {
        Framing::Native(format) => format
            .read(header)
            .ok_or_else(|| "frame header gives a negative payload length".to_owned()),
        Framing::Python { payload_length, .. } => Python::attach(|py| {
            let result = payload_length
                .bind(py)
                .call1((PyBytes::new(py, header),))
                .map_err(|e| format_py_err(py, &e))?;
            let length: i64 = result
                .extract()
                .map_err(|_| format!("payload_length() returned {result}, not an int"))?;
            u64::try_from(length).map_err(|_| format!("payload_length() returned {length}"))
        }),
        Framing::Lines => Err("line framing has no header".to_owned()),
    }
}

/// Pass parsed records on: frames into `batch`, bad ones to the bad-input record.
/// Returns false when the stream cannot go on.
pub fn drain_parser(
    parser: &mut Parser,
    batch: &mut Vec<Frame>,
    ctx: &SourceContext,
    info: &SourceInfo,
) -> bool {
    while let Some(parsed) = parser.next_record() {
        if !handle_parsed(parsed, batch, ctx, info) {
            return false;
        }
    }
    true
}

/// Count a batch and hand it to the worker (blocking while the worker is
/// behind), cut at the source's `--max-records` limit. False when the run no
/// longer takes input (the batch was not accepted).
pub fn send_batch(tx: &Sender<Vec<Frame>>, mut batch: Vec<Frame>, ctx: &SourceContext) -> bool {
    if let Some(remaining) = &ctx.remaining {
        use std::sync::atomic::Ordering;
        let left = remaining.load(Ordering::Relaxed);
        if batch.len() as u64 >= left {
            batch.truncate(usize::try_from(left).unwrap_or(usize::MAX));
            remaining.store(0, Ordering::Relaxed);
            if !batch.is_empty() {
                log::info!(
                    "pipeline {:?}: --max-records reached, the source ends",
                    ctx.pipeline
                );
            }
        } else {
            remaining.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        }
    }
    if batch.is_empty() {
        return true;
    }
    PipelineMetrics::add(&ctx.metrics.records_in, batch.len() as u64);
    // One clock read per batch: the source-to-sink latency starts here.
    let read_ns = if ctx.metrics.detailed {
        crate::metrics::now_ns()
    } else {
        0
    };
    let bytes: usize = batch
        .iter_mut()
        .map(|f| {
            f.read_ns = read_ns;
            f.payload.len()
        })
        .sum();
    PipelineMetrics::add(&ctx.metrics.bytes_in, bytes as u64);
    tx.send(batch).is_ok()
}

/// Record one parsed item; false when it was fatal for the stream.
pub fn handle_parsed(
    parsed: Parsed,
    batch: &mut Vec<Frame>,
    ctx: &SourceContext,
    info: &SourceInfo,
) -> bool {
    match parsed {
        Parsed::Frame(frame) => {
            batch.push(frame);
            true
        }
        Parsed::Bad(bad) => {
            record_bad(&bad, ctx, info);
            true
        }
        Parsed::Fatal(bad) => {
            record_bad(&bad, ctx, info);
            false
        }
    }
}

fn record_bad(bad: &BadFrame, ctx: &SourceContext, info: &SourceInfo) {
    ctx.bad.record(
        &ctx.pipeline,
        &info.describe(&bad.pos),
        bad.kind,
        &bad.error,
        &bad.payload,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::LengthFormat;

    fn native() -> Arc<Framing> {
        Arc::new(Framing::Native(LengthFormat::parse(">I").unwrap()))
    }

    fn frames(parser: &mut Parser) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(Parsed::Frame(f)) = parser.next_record() {
            out.push(f.payload);
        }
        out
    }

    #[test]
    fn lines_split_on_newlines_and_keep_a_last_partial_line() {
        let mut parser = Parser::new(Arc::new(Framing::Lines), 100, 0);
        parser.feed(b"ab\r\ncd\n\nef");
        assert_eq!(
            frames(&mut parser),
            vec![b"ab".to_vec(), b"cd".to_vec(), b"".to_vec()]
        );
        match parser.finish() {
            Some(Parsed::Frame(f)) => {
                assert_eq!(f.payload, b"ef");
                assert_eq!(f.pos.index, 4);
                assert_eq!(f.pos.offset, 8);
            }
            _ => panic!("expected the last line"),
        }
    }

    #[test]
    fn lines_across_reads_keep_positions_and_partial_lines() {
        // Reads of 5 bytes cut lines anywhere; the partial rest moves to the
        // front of the buffer before each read.
        let data = b"first\nsecond line\r\n\nthird\nlast";
        let mut reader = &data[..];
        let mut parser = Parser::new(Arc::new(Framing::Lines), 100, 0);
        let mut got = Vec::new();
        while parser.read_from(&mut reader, 5).unwrap() > 0 {
            while let Some(Parsed::Frame(f)) = parser.next_record() {
                got.push((f.payload, f.pos.index, f.pos.offset));
            }
        }
        if let Some(Parsed::Frame(f)) = parser.finish() {
            got.push((f.payload, f.pos.index, f.pos.offset));
        }
        let want: Vec<(Vec<u8>, u64, u64)> = vec![
            (b"first".to_vec(), 1, 0),
            (b"second line".to_vec(), 2, 6),
            (b"".to_vec(), 3, 19),
            (b"third".to_vec(), 4, 20),
            (b"last".to_vec(), 5, 26),
        ];
        assert_eq!(got, want);
        // Bounded by the longest line (13 bytes with its ending) and one read.
        assert!(
            parser.buf.len() <= 13 + 5,
            "the buffer grew to {}",
            parser.buf.len()
        );
    }

    #[test]
    fn length_frames_across_feeds() {
        let mut parser = Parser::new(native(), 100, 1);
        parser.feed(&[0, 0, 0, 3, b'a']);
        assert!(parser.next_record().is_none());
        parser.feed(&[b'b', b'c', 0, 0, 0, 1, b'z']);
        assert_eq!(frames(&mut parser), vec![b"abc".to_vec(), b"z".to_vec()]);
        assert!(parser.finish().is_none());
    }

    #[test]
    fn zero_length_is_bad_and_parsing_goes_on() {
        let mut parser = Parser::new(native(), 100, 0);
        parser.feed(&[0, 0, 0, 0, 0, 0, 0, 1, b'x']);
        assert!(matches!(parser.next_record(), Some(Parsed::Bad(b)) if b.kind == "zero_length"));
        assert_eq!(frames(&mut parser), vec![b"x".to_vec()]);
    }

    #[test]
    fn oversize_is_fatal_and_truncated_is_reported_at_the_end() {
        let mut parser = Parser::new(native(), 10, 0);
        parser.feed(&[0, 0, 1, 0]);
        assert!(matches!(parser.next_record(), Some(Parsed::Fatal(b)) if b.kind == "oversize"));
        let mut parser = Parser::new(native(), 10, 0);
        parser.feed(&[0, 0, 0, 5, b'a']);
        assert!(parser.next_record().is_none());
        match parser.finish() {
            Some(Parsed::Bad(b)) => {
                assert_eq!(b.kind, "truncated");
                assert_eq!(b.payload, vec![0, 0, 0, 5, b'a']);
            }
            _ => panic!("expected a truncated frame"),
        }
    }
}
