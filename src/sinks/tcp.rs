//! TCP sink: connects to the receiver (retrying with back-off until it is
//! there, up to the connect timeout, while the pipeline is held back) and
//! writes encoded records as-is. A lost connection is re-established and the
//! batch that failed is written again (at-least-once). After giving up, the
//! records it cannot write are counted as not delivered and the run fails.

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
            let started = Instant::now();
            let mut delay = Duration::from_millis(50);
            let mut attempts = 0u64;
            let mut last_said = None::<Instant>;
            let stream = loop {
                attempts += 1;
                match TcpStream::connect((self.host.as_str(), self.port)) {
                    Ok(stream) => break stream,
                    Err(e) if started.elapsed() < patience => {
                        // Said at once, then every 10 s: the pipeline is held back meanwhile.
                        if last_said.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            log::warn!(
                                "pipeline {:?}: waiting for the TCP sink {}:{} ({e}); the \
                                 pipeline is held back, giving up after {:.0} s",
                                self.pipeline,
                                self.host,
                                self.port,
                                patience.as_secs_f64()
                            );
                            last_said = Some(Instant::now());
                        }
                        crate::metrics::PipelineMetrics::add(&self.metrics.sink_retries, 1);
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
                "pipeline {:?}: connected to the TCP sink {}:{}{}",
                self.pipeline,
                self.host,
                self.port,
                if attempts > 1 {
                    format!(
                        " after {attempts} attempts ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    )
                } else {
                    String::new()
                }
            );
            self.stream = Some(BufWriter::with_capacity(256 * 1024, stream));
        }
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not connected"))
    }

    /// Write a whole batch and push it out (nothing of an earlier batch
    /// waits in the buffer when a connection fails).
    fn try_write(&mut self, batch: &[Output]) -> std::io::Result<()> {
        let stream = self.connect()?;
        if peer_closed(stream.get_ref()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the receiver closed the connection",
            ));
        }
        for record in batch {
            stream.write_all(&record.value)?;
        }
        stream.flush()
    }
}

/// Whether the receiver has closed its end (a receiver never sends, so a
/// readable socket means end of stream or an error): checked before each
/// batch, so a batch is not written into a connection already gone.
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

impl BatchWriter for TcpWriter {
    /// A lost connection is made again (waiting up to the connect timeout,
    /// the pipeline held back meanwhile) and the whole batch written again:
    /// at-least-once.
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<u64> {
        let delivered = batch.len() as u64;
        match self.try_write(batch) {
            Ok(()) => Ok(delivered),
            Err(first) if self.stream.is_some() => {
                log::warn!(
                    "pipeline {:?}: TCP sink {}:{} lost its connection ({first}); \
                     reconnecting, the batch is written again",
                    self.pipeline,
                    self.host,
                    self.port
                );
                self.stream = None;
                crate::metrics::PipelineMetrics::add(&self.metrics.sink_retries, 1);
                self.try_write(batch).map(|()| delivered)
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
