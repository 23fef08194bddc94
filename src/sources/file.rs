//! File source: newline-delimited or length-framed records, plain or gzip.
//! The source ends at end of file; the run ends when every source has.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};
use flate2::read::MultiGzDecoder;

use super::{
    handle_parsed, send_batch, Frame, Parser, PosStyle, SourceContext, SourceHandle, SourceInfo,
    CHANNEL_BATCHES,
};
use crate::errors::Error;
use crate::plan::Framing;

const READ_CHUNK: usize = 1 << 20;

/// Open the file now (so a missing file fails the start) and read it on a thread.
pub fn start(
    path: PathBuf,
    framing: Arc<Framing>,
    ctx: SourceContext,
    after: Option<(u64, u64)>,
) -> Result<SourceHandle, Error> {
    let mut file = File::open(&path).map_err(|e| {
        Error::Config(format!(
            "pipeline {:?}: cannot open input file {}: {e}",
            ctx.pipeline,
            path.display()
        ))
    })?;
    let gzip = path.extension().is_some_and(|ext| ext == "gz");
    if let (Some((offset, _)), false) = (after, gzip) {
        file.seek(SeekFrom::Start(offset)).map_err(|e| {
            Error::Config(format!(
                "pipeline {:?}: cannot seek to byte {offset} of {}: {e}",
                ctx.pipeline,
                path.display()
            ))
        })?;
    }
    let mut reader: Box<dyn Read + Send> = if gzip {
        Box::new(MultiGzDecoder::new(BufReader::with_capacity(
            READ_CHUNK, file,
        )))
    } else {
        Box::new(file)
    };
    if let (Some((offset, _)), true) = (after, gzip) {
        // A compressed stream cannot seek: read up to the position.
        let skipped = std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink())
            .map_err(|e| {
                Error::Config(format!(
                    "pipeline {:?}: cannot read {} up to byte {offset}: {e}",
                    ctx.pipeline,
                    path.display()
                ))
            })?;
        if skipped < offset {
            log::warn!(
                "{}: shorter than the recovered position (byte {offset}); nothing left to read",
                path.display()
            );
        }
    }
    if let Some((offset, index)) = after {
        log::info!(
            "{}: going on after record {index} (byte {offset})",
            path.display()
        );
    }
    let style = if matches!(*framing, Framing::Lines) {
        PosStyle::Lines
    } else {
        PosStyle::Frames
    };
    let info = SourceInfo {
        label: format!("file {}", path.display()),
        style,
    };
    let (tx, rx) = bounded(CHANNEL_BATCHES);
    let thread_info = info.clone();
    let thread = std::thread::Builder::new()
        .name(format!("source {}", ctx.pipeline))
        .spawn(move || read_file(reader, framing, ctx, thread_info, tx, after))
        .map_err(|e| Error::Config(format!("cannot start a source thread: {e}")))?;
    Ok(SourceHandle {
        rx,
        info,
        threads: vec![thread],
        read_everywhere: Default::default(),
    })
}

fn read_file(
    mut reader: Box<dyn Read + Send>,
    framing: Arc<Framing>,
    ctx: SourceContext,
    info: SourceInfo,
    tx: Sender<Vec<Frame>>,
    after: Option<(u64, u64)>,
) {
    let mut parser = Parser::new(framing, ctx.max_frame_bytes, 0);
    // Going on after a recovered record: read from its start and drop it.
    let mut skip = None;
    if let Some((offset, index)) = after {
        parser.start_at(offset, index);
        skip = Some(index);
    }
    let mut batch = Vec::with_capacity(ctx.batch_size);
    // The first batches are small, then double up to the batch size: the
    // first records reach the worker (and their outputs the sink) at once,
    // not after whole batches were read and processed.
    let mut limit = 1;
    loop {
        if ctx.finished() {
            log::info!("{}: stopped before the end of the file", info.label);
            break;
        }
        match parser.read_from(&mut reader, READ_CHUNK) {
            Ok(0) => {
                if let Some(parsed) = parser.finish() {
                    handle_parsed(parsed, &mut batch, &ctx, &info);
                    skip_recovered(&mut batch, &mut skip);
                }
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{}: read failed, the source ends here: {e}", info.label);
                break;
            }
        }
        // Hand a batch over as soon as it reaches its size: a batch is
        // moved, never split (splitting copied what remained of the chunk's
        // records at each hand-over).
        while let Some(parsed) = parser.next_record() {
            if !handle_parsed(parsed, &mut batch, &ctx, &info) {
                log::error!(
                    "{}: cannot find the next frame, the source ends here",
                    info.label
                );
                send_batch(&tx, batch, &ctx);
                return;
            }
            skip_recovered(&mut batch, &mut skip);
            if batch.len() >= limit {
                limit = (limit * 2).min(ctx.batch_size);
                let full = std::mem::replace(&mut batch, Vec::with_capacity(limit));
                if !send_batch(&tx, full, &ctx) {
                    return;
                }
            }
        }
    }
    send_batch(&tx, batch, &ctx);
    log::debug!("{}: end of input", info.label);
}

/// Drop the record numbered `skip` (already handed over before a crash) when
/// it is the one just added to the batch.
fn skip_recovered(batch: &mut Vec<Frame>, skip: &mut Option<u64>) {
    if let (Some(index), Some(last)) = (*skip, batch.last()) {
        if last.pos.index == index {
            batch.pop();
            *skip = None;
        }
    }
}

/// Where a file source stood: it goes on after the last record it handed over.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FilePosition {
    /// Records this worker's source handed to the dataflow, since the lineage began.
    pub sent: u64,
    /// Byte offset of the last record handed over (its start).
    #[serde(default)]
    pub offset: u64,
    /// Record number of the last record handed over (from 1; 0: none).
    #[serde(default)]
    pub index: u64,
}

impl FilePosition {
    /// Note the records of a batch handed to the dataflow.
    pub fn advance(&mut self, frames: &[Frame]) {
        self.sent += frames.len() as u64;
        if let Some(last) = frames.last() {
            self.offset = last.pos.offset;
            self.index = last.pos.index;
        }
    }

    /// Take the furthest of two workers' positions (only one worker reads a
    /// file); else keep this worker's own count.
    pub fn merge(&mut self, other: &FilePosition, mine: bool) {
        if other.index >= self.index {
            *self = other.clone();
        } else if mine {
            self.sent = other.sent;
        }
    }

    /// Where [`start`] goes on: `(byte offset, record number)` of the last
    /// record handed over; None when none was.
    pub fn after(&self) -> Option<(u64, u64)> {
        (self.index > 0).then_some((self.offset, self.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_batches_are_small_then_double_up_to_the_batch_size() {
        let path = std::env::temp_dir().join(format!("wallaroo-file-{}.txt", std::process::id()));
        let lines: Vec<String> = (0..3000).map(|i| format!("line {i}")).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let ctx = SourceContext::for_test(None);
        let handle = start(path.clone(), Arc::new(Framing::Lines), ctx, None).unwrap();
        let batches: Vec<Vec<Frame>> = handle.rx.iter().collect();
        std::fs::remove_file(&path).unwrap();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 977],
            "the first record is handed over alone, then batches double"
        );
        let read: Vec<&[u8]> = batches.iter().flatten().map(|f| &f.payload[..]).collect();
        let want: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        assert_eq!(read, want);
    }

    #[test]
    fn going_on_after_a_recovered_record_drops_it_and_keeps_the_ramp() {
        let path =
            std::env::temp_dir().join(format!("wallaroo-file-skip-{}.txt", std::process::id()));
        let lines: Vec<String> = (0..3000).map(|i| format!("line {i}")).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        // Record number 1001 (from 1) is `lines[1000]`, handed over before.
        let offset: usize = lines[..1000].iter().map(|l| l.len() + 1).sum();
        let ctx = SourceContext::for_test(None);
        let after = Some((offset as u64, 1001));
        let handle = start(path.clone(), Arc::new(Framing::Lines), ctx, after).unwrap();
        let batches: Vec<Vec<Frame>> = handle.rx.iter().collect();
        std::fs::remove_file(&path).unwrap();
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 976]);
        let read: Vec<&[u8]> = batches.iter().flatten().map(|f| &f.payload[..]).collect();
        let want: Vec<&[u8]> = lines[1001..].iter().map(|l| l.as_bytes()).collect();
        assert_eq!(read, want);
        assert_eq!(batches[0][0].pos.index, 1002);
    }
}
