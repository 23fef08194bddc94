//! Standard output sink: encoded records written as-is.

use std::io::{BufWriter, Stdout};

use super::StreamWriter;

/// A writer on the process's standard output.
pub fn open() -> StreamWriter<BufWriter<Stdout>> {
    StreamWriter {
        out: BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        label: "stdout".to_owned(),
    }
}
