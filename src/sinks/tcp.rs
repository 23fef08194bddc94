//! TCP sink: connects to the receiver (retrying until it is there) and writes
//! encoded records as-is. A lost connection is re-established and the batch
//! that failed is written again (at-least-once).

use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{BatchWriter, Output, SinkContext};

/// A reconnecting TCP writer.
pub struct TcpWriter {
    host: String,
    port: u16,
    pipeline: String,
    connect_timeout: Duration,
    stream: Option<BufWriter<TcpStream>>,
    gave_up: bool,
    metrics: std::sync::Arc<crate::metrics::PipelineMetrics>,
}

impl TcpWriter {
    /// A writer that connects on first use.
    pub fn new(host: String, port: u16, ctx: &SinkContext) -> TcpWriter {
        TcpWriter {
            host,
            port,
            pipeline: ctx.pipeline.clone(),
            connect_timeout: Duration::from_secs_f64(ctx.connect_timeout_s.max(0.0)),
            stream: None,
            gave_up: false,
            metrics: ctx.metrics.clone(),
        }
    }

    fn connect(&mut self) -> std::io::Result<&mut BufWriter<TcpStream>> {
        if self.stream.is_none() {
            // After giving up once, each batch gets one attempt instead of a wait.
            let patience = if self.gave_up {
                Duration::ZERO
            } else {
                self.connect_timeout
            };
            let deadline = Instant::now() + patience;
            let mut delay = Duration::from_millis(50);
            let mut warned = false;
            let stream = loop {
                match TcpStream::connect((self.host.as_str(), self.port)) {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() < deadline => {
                        if !warned {
                            log::warn!(
                                "pipeline {:?}: waiting for the TCP sink {}:{} ({e})",
                                self.pipeline,
                                self.host,
                                self.port
                            );
                            warned = true;
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => {
                        self.gave_up = true;
                        return Err(e);
                    }
                }
            };
            self.gave_up = false;
            let _ = stream.set_nodelay(true);
            log::info!(
                "pipeline {:?}: connected to the TCP sink {}:{}",
                self.pipeline,
                self.host,
                self.port
            );
            self.stream = Some(BufWriter::with_capacity(256 * 1024, stream));
        }
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not connected"))
    }

    fn try_write(&mut self, batch: &[Output]) -> std::io::Result<()> {
        let stream = self.connect()?;
        for record in batch {
            stream.write_all(&record.value)?;
        }
        Ok(())
    }
}

impl BatchWriter for TcpWriter {
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<()> {
        match self.try_write(batch) {
            Ok(()) => Ok(()),
            Err(first) if self.stream.is_some() => {
                log::warn!(
                    "pipeline {:?}: TCP sink {}:{} failed ({first}), reconnecting",
                    self.pipeline,
                    self.host,
                    self.port
                );
                self.stream = None;
                crate::metrics::PipelineMetrics::add(&self.metrics.sink_retries, 1);
                self.try_write(batch)
            }
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.stream.as_mut() {
            Some(stream) => stream.flush(),
            None => Ok(()),
        }
    }

    fn label(&self) -> String {
        format!("tcp {}:{}", self.host, self.port)
    }
}
