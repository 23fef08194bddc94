//! Sinks: IO threads that write encoded records. The worker hands them
//! batches through a bounded channel (a slow sink slows the whole pipeline
//! down instead of growing memory); a sink flushes whenever it has caught up
//! and before it ends.

pub mod file;
pub mod kafka;
pub mod many;
pub mod order;
pub mod stdout;
pub mod tcp;

use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::bad_input::BadInput;
use crate::control::RunHandle;
use crate::errors::Error;
use crate::metrics::PipelineMetrics;
use crate::plan::SinkKind;

/// Batches in flight between the worker and a sink.
pub const CHANNEL_BATCHES: usize = 16;

/// One encoded record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Output {
    /// The bytes to write (the message value for Kafka).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The message key, when the encoder returned `(value, key)`.
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    /// The Kafka partition, when the encoder returned `(value, key, partition)`
    /// with one (0.5+); None: the producer's partitioner chooses.
    #[serde(default)]
    pub partition: Option<i32>,
    /// When the source read the record this came from ([`crate::metrics::now_ns`]; 0: unknown).
    #[serde(default)]
    pub read_ns: u64,
    /// Which of the pipeline's sinks it goes to (`to_sinks`; 0 otherwise).
    #[serde(default)]
    pub sink: u16,
    /// Outputs of merged pipelines written on another worker: the making
    /// worker's stream and the output's number in it, so the sink writes
    /// them in the order made (see [`order`]); None: as they come.
    #[serde(default)]
    pub seq: Option<(u64, u64)>,
}

/// What the worker hands a sink thread.
pub enum SinkMessage {
    /// Records to write.
    Batch(Vec<Output>),
    /// Snapshot `id` is being written: push out everything before this (for
    /// Kafka: until the brokers acknowledged it), then answer. The snapshot
    /// is stored only after every sink answered, so output is at-least-once.
    Barrier(u64, Sender<()>),
}

/// What the sink threads share with the run.
#[derive(Clone)]
pub struct SinkContext {
    /// The pipeline name, for logs.
    pub pipeline: String,
    /// Where records a sink cannot deliver are kept.
    pub bad: Arc<BadInput>,
    /// The pipeline's counters.
    pub metrics: Arc<PipelineMetrics>,
    /// How long a TCP sink tries to connect before giving up.
    pub connect_timeout_s: f64,
    /// The run goes on from a snapshot: a file sink appends to what the
    /// crashed run wrote instead of starting the file again.
    pub append: bool,
    /// A Kafka sink in transactional mode: its transactional id.
    pub transactional_id: Option<String>,
    /// The run's control (a failed Kafka commit aborts the run).
    pub control: RunHandle,
}

/// A running sink.
pub struct SinkHandle {
    /// Where the worker sends batches; dropping it ends the sink.
    pub tx: Sender<SinkMessage>,
    /// The sink's thread; joining it waits for the final flush, and gives
    /// why the sink could not deliver everything it accepted, if it could not.
    pub thread: JoinHandle<Option<String>>,
}

/// Something a sink thread writes batches to.
pub trait BatchWriter: Send {
    /// Write one batch; errors are counted and logged by the caller. Returns
    /// how many of its records are delivered by this write (the caller counts
    /// them); a writer that learns of its deliveries later (Kafka: when the
    /// brokers acknowledge them) counts them itself and returns 0.
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<u64>;
    /// Push buffered bytes out.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Name for logs.
    fn label(&self) -> String;
    /// The last flush at the end of the run: everything accepted must be out.
    /// An error fails the run (exit 1); a writer that knows how many records
    /// it lost has counted them as not delivered, and its error says so.
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
            .map_err(|e| std::io::Error::other(format!("final flush failed: {e}")))
    }
    /// Before snapshot `snapshot` is stored: everything accepted must be out
    /// (Kafka: retried until the brokers acknowledge it; the snapshot waits).
    fn sync(&mut self, _snapshot: u64) -> std::io::Result<()> {
        self.flush()
    }
    /// No output came for [`IDLE_POLL`]: a writer that learns of its
    /// deliveries later (Kafka) takes them in, so they count while the
    /// pipeline is quiet, not only at its next batch or the end of the run.
    fn idle(&mut self) {}
}

/// How long a sink thread waits for output before calling
/// [`BatchWriter::idle`].
const IDLE_POLL: Duration = Duration::from_millis(100);

/// A [`BatchWriter`] over any [`Write`].
pub struct StreamWriter<W: Write + Send> {
    /// The destination.
    pub out: W,
    /// Name for logs.
    pub label: String,
}

impl<W: Write + Send> BatchWriter for StreamWriter<W> {
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<u64> {
        for record in batch {
            self.out.write_all(&record.value)?;
        }
        Ok(batch.len() as u64)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

/// Start the sink of a pipeline.
pub fn start(kind: SinkKind, ctx: SinkContext) -> Result<SinkHandle, Error> {
    let writer = open_writer(kind, &ctx)?;
    ctx.metrics.set_sink_label(&writer.label());
    let (tx, rx) = bounded(CHANNEL_BATCHES);
    let thread = std::thread::Builder::new()
        .name(format!("sink {}", ctx.pipeline))
        .spawn(move || write_loop(rx, writer, ctx))
        .map_err(|e| Error::Config(format!("cannot start a sink thread: {e}")))?;
    Ok(SinkHandle { tx, thread })
}

fn open_writer(kind: SinkKind, ctx: &SinkContext) -> Result<Box<dyn BatchWriter>, Error> {
    Ok(match kind {
        SinkKind::File { path } => Box::new(file::open(&path, ctx)?),
        SinkKind::Stdout => Box::new(stdout::open()),
        SinkKind::Tcp(tcp) => Box::new(tcp::TcpWriter::new(tcp.host, tcp.port, ctx)),
        SinkKind::Kafka(plan) => Box::new(kafka::KafkaWriter::new(plan, ctx)?),
        SinkKind::Many(kinds) => Box::new(many::ManyWriter::new(
            kinds
                .into_iter()
                .map(|kind| open_writer(kind, ctx))
                .collect::<Result<_, _>>()?,
        )),
    })
}

/// Write one batch, counting what was and was not delivered; `failing`:
/// records not delivered since the last batch that was.
fn write(writer: &mut dyn BatchWriter, batch: Vec<Output>, ctx: &SinkContext, failing: &mut usize) {
    let bytes: usize = batch.iter().map(|r| r.value.len()).sum();
    match writer.write_batch(&batch) {
        Ok(delivered) => {
            PipelineMetrics::add(&ctx.metrics.bytes_out, bytes as u64);
            ctx.metrics
                .sink_wrote(delivered, batch.iter().map(|r| r.read_ns));
            if *failing > 0 {
                log::warn!(
                    "pipeline {:?}: {}: delivering again, after {failing} records not \
                     delivered",
                    ctx.pipeline,
                    writer.label()
                );
            }
            *failing = 0;
        }
        Err(e) => {
            PipelineMetrics::add(&ctx.metrics.sink_errors, batch.len() as u64);
            if *failing == 0 {
                log::error!(
                    "pipeline {:?}: {}: write failed, {} records not delivered (counted \
                     in the summary; the run will exit 1): {e}",
                    ctx.pipeline,
                    writer.label(),
                    batch.len()
                );
            }
            *failing += batch.len();
        }
    }
}

/// Write what the worker sends until it hangs up; why the final flush
/// failed, if it did (the run then fails).
fn write_loop(
    rx: Receiver<SinkMessage>,
    mut writer: Box<dyn BatchWriter>,
    ctx: SinkContext,
) -> Option<String> {
    // Records not delivered since the last batch that was.
    let mut failing = 0usize;
    let mut order = order::Reorder::default();
    loop {
        let message = match rx.recv_timeout(IDLE_POLL) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                writer.idle();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let batch = match message {
            SinkMessage::Batch(batch) => order.release(batch),
            SinkMessage::Barrier(snapshot, ack) => {
                let held = order.drain();
                if !held.is_empty() {
                    write(&mut *writer, held, &ctx, &mut failing);
                }
                match writer.sync(snapshot) {
                    Ok(()) => {
                        let _ = ack.send(());
                    }
                    Err(e) => log::error!(
                        "pipeline {:?}: {}: cannot push output out before a snapshot; the \
                         snapshot is not stored: {e}",
                        ctx.pipeline,
                        writer.label()
                    ),
                }
                continue;
            }
        };
        write(&mut *writer, batch, &ctx, &mut failing);
        if rx.is_empty() {
            if let Err(e) = writer.flush() {
                log::error!(
                    "pipeline {:?}: {}: flush failed: {e}",
                    ctx.pipeline,
                    writer.label()
                );
            }
        }
    }
    let held = order.drain();
    if !held.is_empty() {
        write(&mut *writer, held, &ctx, &mut failing);
    }
    let failure = writer
        .finish()
        .err()
        .map(|e| format!("pipeline {:?}: {}: {e}", ctx.pipeline, writer.label()));
    if let Some(failure) = &failure {
        log::error!("{failure}");
    }
    failure
}
