//! File sink: encoded records written as-is to a file (created or
//! truncated; appended to when a run goes on from a snapshot).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::{SinkContext, StreamWriter};
use crate::errors::Error;

/// Create the file now, so a bad path fails the start.
pub fn open(path: &Path, ctx: &SinkContext) -> Result<StreamWriter<BufWriter<File>>, Error> {
    let file = if ctx.append {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    } else {
        File::create(path)
    };
    let file = file.map_err(|e| {
        Error::Config(format!(
            "pipeline {:?}: cannot create output file {}: {e}",
            ctx.pipeline,
            path.display()
        ))
    })?;
    Ok(StreamWriter {
        out: BufWriter::with_capacity(1 << 20, file),
        label: format!("file {}", path.display()),
    })
}
