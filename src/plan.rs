//! The application plan handed over by `wallaroo.plan.compile_plan`, and the
//! run options from the runner, read into Rust types once at start-up.

use std::path::PathBuf;

use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::Error;
use crate::framing::LengthFormat;
use crate::kafka::ClientSettings;

/// How a source splits its bytes into records.
pub enum Framing {
    /// One record per line.
    Lines,
    /// A header read natively, then that many payload bytes.
    Native(LengthFormat),
    /// A header of `header_length` bytes passed to the decoder's `payload_length`.
    Python {
        /// Header size in bytes.
        header_length: usize,
        /// The decoder's bound `payload_length` method.
        payload_length: Py<PyAny>,
    },
}

/// Where a pipeline reads from.
pub enum SourceKind {
    /// Listen on a TCP address.
    Tcp(TcpSource),
    /// Read a file (plain or .gz).
    File {
        /// The file.
        path: PathBuf,
    },
    /// Consume a Kafka topic.
    Kafka(KafkaSourcePlan),
    /// Values of a generator object (`initial_value()`, then `apply(previous)`).
    Gen {
        /// The generator object.
        generator: Py<PyAny>,
    },
}

/// A TCP source's address (`wallaroo.contract.TcpSource`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct TcpSource {
    /// Address to bind.
    pub host: String,
    /// Port to bind.
    #[pyo3(from_py_with = port)]
    pub port: u16,
    /// Connections read at once (0.6.1 `parallelism`); None: any number.
    pub max_connections: Option<usize>,
}

/// Where a Kafka source starts when the engine has no position of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    /// The group's committed offsets, else the beginning.
    Committed,
    /// The beginning of each partition.
    Earliest,
    /// The end of each partition (only new messages).
    Latest,
}

/// A Kafka source.
#[derive(Clone)]
pub struct KafkaSourcePlan {
    /// The topic.
    pub topic: String,
    /// Brokers, log level, librdkafka settings.
    pub settings: ClientSettings,
    /// The consumer group offsets are committed under.
    pub group_id: String,
    /// Where to start.
    pub start_offset: StartOffset,
    /// Create the topic with this many partitions when it is missing.
    pub create_partitions: Option<i32>,
    /// Crash recovery: the next offset to read per partition (overrides
    /// `start_offset` for the partitions it names).
    pub resume: std::collections::BTreeMap<i32, i64>,
    /// Commit offsets to the group as records are read. Off with crash
    /// recovery: the snapshots hold the offsets, and a partition no
    /// snapshot has read yet must start where the run first started.
    pub commit: bool,
}

/// A Kafka sink (`wallaroo.contract.KafkaSink`).
pub struct KafkaSinkPlan {
    /// The topic.
    pub topic: String,
    /// Brokers, log level, librdkafka settings.
    pub settings: ClientSettings,
    /// librdkafka's `linger.ms`.
    pub max_produce_buffer_ms: u64,
    /// Larger encoded records are bad output (counted, logged, dead-lettered).
    pub max_message_size: usize,
    /// Create the topic with this many partitions when it is missing.
    pub create_partitions: Option<i32>,
    /// Transactional mode (`--kafka-sink-transactions`): output is
    /// committed at each snapshot. The engine completes the transactional id
    /// with the worker's name.
    pub transactions: bool,
}

/// A pipeline's source and decoder.
pub struct SourcePlan {
    /// What to read.
    pub kind: SourceKind,
    /// How to split it into records.
    pub framing: Framing,
    /// The decoder's bound `decode` method.
    pub decode: Py<PyAny>,
}

/// Where a pipeline writes to.
pub enum SinkKind {
    /// Connect to a TCP address.
    Tcp(TcpSink),
    /// Write a file.
    File {
        /// The file (created or truncated).
        path: PathBuf,
    },
    /// Write standard output.
    Stdout,
    /// Produce to a Kafka topic.
    Kafka(KafkaSinkPlan),
    /// Several sinks (`to_sinks`); the encoder returns a list, item `i` for
    /// sink `i`.
    Many(Vec<SinkKind>),
}

/// A TCP sink's address (`wallaroo.contract.TcpSink`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct TcpSink {
    /// Host to connect to.
    pub host: String,
    /// Port to connect to.
    #[pyo3(from_py_with = port)]
    pub port: u16,
}

/// A pipeline's sink and encoder.
pub struct SinkPlan {
    /// Where to write.
    pub kind: SinkKind,
    /// Pipelines with the same group write through one sink (the sources of
    /// a merged 0.6 pipeline).
    pub group: Option<String>,
    /// The encoder's bound `encode` method.
    pub encode: Py<PyAny>,
}

/// How a step calls its Python function.
pub enum StepKind {
    /// `compute(data)` -> output or None.
    Map,
    /// `compute_multi(data)` -> list or None.
    Multi,
    /// `compute(data, state)` -> `(output, changed)`; `multi` when the output is a list.
    State(StateStep),
}

/// What a state step adds to a step (`wallaroo.contract.StateStep`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct StateStep {
    /// The state name shared across pipelines.
    pub state_name: String,
    /// The bound `partition` method; None for `to_stateful`.
    pub partition: Option<Py<PyAny>>,
    /// Keys must be non-negative ints (`to_state_partition_u64`).
    #[pyo3(item("u64"))]
    pub u64_keys: bool,
    /// `compute_multi` (kind `state_multi`).
    #[pyo3(item("kind"), from_py_with = state_multi)]
    pub multi: bool,
    /// The keys the application declared, in order.
    pub keys: Vec<Py<PyAny>>,
    /// Windows: `tick(states, final)` fires what is due on the engine's
    /// timer (see [`crate::ticks`]).
    pub tick: Option<Py<PyAny>>,
    /// Event-time windows: `share()` -> what this worker's stage knows of
    /// the source partitions; in a cluster it goes with every timer tick to
    /// every worker, whose `tick` then gets `(end, shared)` for `end`.
    pub share: Option<Py<PyAny>>,
    /// Event-time windows: `compute(data, state, (reader, stream))`, the
    /// record's source partition as a third argument.
    pub origin: bool,
}

/// One step of a pipeline.
pub struct StepPlan {
    /// The name from `name()`.
    pub name: String,
    /// The bound `compute` / `compute_multi` method.
    pub func: Py<PyAny>,
    /// How to call it.
    pub kind: StepKind,
}

/// One pipeline: source, steps, optional sink (`wallaroo.contract.PipelinePlan`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct PipelinePlan {
    /// The pipeline name.
    pub name: String,
    /// Its source.
    #[pyo3(from_py_with = source_plan)]
    pub source: SourcePlan,
    /// Its steps in order.
    #[pyo3(from_py_with = step_plans)]
    pub steps: Vec<StepPlan>,
    /// Its sink (a pipeline may end without one).
    #[pyo3(from_py_with = sink_plan)]
    pub sink: Option<SinkPlan>,
}

/// The whole application (`wallaroo.contract.Plan`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct Plan {
    /// The application name.
    pub name: String,
    /// Its pipelines.
    #[pyo3(from_py_with = pipeline_plans)]
    pub pipelines: Vec<PipelinePlan>,
    /// State name -> state class.
    #[pyo3(from_py_with = state_classes)]
    pub states: Vec<(String, Py<PyAny>)>,
    /// The application's own `serialize`, for records crossing workers.
    pub serialize: Option<Py<PyAny>>,
    /// The application's own `deserialize`.
    pub deserialize: Option<Py<PyAny>>,
}

/// What to do when user code fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop the run with an error (after flushing what finished).
    Stop,
    /// Count, log and go on with the next record.
    Skip,
}

/// Options of one run (`wallaroo.contract.RunOptions`: every key required,
/// None where optional).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct Options {
    /// Policy for failures of user code.
    #[pyo3(from_py_with = on_error)]
    pub on_error: OnError,
    /// Where to keep bad input (JSON lines), if anywhere.
    pub dead_letter: Option<PathBuf>,
    /// Records per batch read by file sources.
    pub batch_size: usize,
    /// Length of an epoch in milliseconds.
    pub epoch_ms: u64,
    /// Frames longer than this are bad input.
    pub max_frame_bytes: u64,
    /// How long a TCP sink keeps trying to connect before giving up.
    pub sink_connect_timeout_s: f64,
    /// This process's place in a cluster; None for a single process.
    pub cluster: Option<Membership>,
    /// Each source ends after this many records (a bounded run).
    pub max_records: Option<u64>,
    /// Crash recovery: where snapshots are kept, and how.
    pub resilience: Option<ResilienceOptions>,
}

/// A dict of the Python contract (`wallaroo.contract`) that does not read
/// as the engine's struct: `what` and the key missing or of the wrong type.
pub fn contract_error(py: Python<'_>, what: &str, err: PyErr) -> PyErr {
    // The derived extraction names the field that failed, and chains the
    // key error or the wrong type of a nested dict as the cause.
    let mut why = Vec::new();
    let mut next = Some(err);
    while let Some(err) = next {
        why.push(if err.is_instance_of::<pyo3::exceptions::PyKeyError>(py) {
            format!("missing key {}", err.value(py))
        } else {
            err.value(py).to_string()
        });
        next = err.cause(py);
    }
    let why = why.join(": ");
    Error::Config(format!(
        "{what}: not what the engine reads (wallaroo.contract): {why}"
    ))
    .into()
}

fn on_error(value: &Bound<'_, PyAny>) -> PyResult<OnError> {
    match value.extract::<String>()?.as_str() {
        "stop" => Ok(OnError::Stop),
        "skip" => Ok(OnError::Skip),
        other => {
            Err(Error::Config(format!("on_error must be 'stop' or 'skip', got {other:?}")).into())
        }
    }
}

/// `--resilience-dir` and its settings (`wallaroo.contract.ResilienceOptions`).
#[derive(Debug, Clone, FromPyObject)]
#[pyo3(from_item_all)]
pub struct ResilienceOptions {
    /// The directory of the workers' stores.
    pub dir: PathBuf,
    /// Time between snapshots.
    pub interval_ms: u64,
    /// How long snapshots may keep failing before the run stops.
    pub give_up_ms: u64,
    /// This worker's name (its store's name).
    pub worker: String,
    /// The application's fingerprint: a store of another application is refused.
    pub app: String,
}

/// This process's place in a timely cluster (`wallaroo.contract.Membership`).
#[derive(Debug, Clone, FromPyObject)]
#[pyo3(from_item_all)]
pub struct Membership {
    /// This process's index.
    pub index: usize,
    /// Every process's data address, by index.
    pub addresses: Vec<String>,
    /// Every process's worker name, by index.
    pub names: Vec<String>,
    /// Handed out by the initializer over the control channel; the data
    /// connections between workers must present it.
    pub token: u64,
}

/// `value` read as `T`; when it does not read, the error names `what` (a
/// source, sink or step) and chains why as its cause.
fn read<'py, T: FromPyObjectOwned<'py>>(value: &Bound<'py, PyAny>, what: &str) -> PyResult<T> {
    value
        .extract::<T>()
        .map_err(|err| named(value.py(), what, err.into()))
}

fn named(py: Python<'_>, what: &str, cause: PyErr) -> PyErr {
    let err: PyErr = Error::Config(what.to_owned()).into();
    err.set_cause(py, Some(cause));
    err
}

fn unknown(what: &str, kind: &str) -> PyErr {
    Error::Config(format!("unknown {what} kind {kind:?}")).into()
}

fn port(value: &Bound<'_, PyAny>) -> PyResult<u16> {
    let value: i64 = value.extract()?;
    u16::try_from(value).map_err(|_| Error::Config(format!("port out of range: {value}")).into())
}

/// The `kind` every source, sink and step has.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Tagged {
    kind: String,
}

/// A step's name and function (`wallaroo.contract.Step`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct StepHead {
    kind: String,
    name: String,
    func: Py<PyAny>,
}

/// `wallaroo.contract.FileSource`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct FileSource {
    path: PathBuf,
    /// `"length"`: framed by the decoder's header; `"lines"`: one record a line.
    #[pyo3(from_py_with = length_framed)]
    framing: bool,
}

/// `wallaroo.contract.GenSource`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct GenSource {
    generator: Py<PyAny>,
}

/// `wallaroo.contract.KafkaSource` (less the client settings).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct KafkaSource {
    topic: String,
    group_id: String,
    #[pyo3(from_py_with = start_offset)]
    start_offset: StartOffset,
    create_partitions: Option<i32>,
}

/// `wallaroo.contract.KafkaSink` (less the client settings).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct KafkaSink {
    topic: String,
    max_produce_buffer_ms: u64,
    max_message_size: usize,
    create_partitions: Option<i32>,
    transactions: bool,
}

/// `wallaroo.contract.ManySink`: the sinks of `to_sinks` (the engine
/// reads their kinds; their encoders are the fan-out's).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct ManySink<'py> {
    sinks: Vec<Bound<'py, PyAny>>,
}

/// A pipeline's name, for the errors of its parts.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Named {
    name: String,
}

/// `wallaroo.contract.FileSink`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct FileSink {
    path: PathBuf,
}

/// What every sink has (`wallaroo.contract.Sink`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Encoder {
    encode: Py<PyAny>,
    group: Option<String>,
}

/// A decoder of lines (`wallaroo.contract.Decoder`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Decoder {
    decode: Py<PyAny>,
}

/// A decoder of framed records (`wallaroo.contract.FramedDecoder`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct FramedDecoder {
    decode: Py<PyAny>,
    header_length: usize,
    payload_length: Py<PyAny>,
    length_fmt: Option<String>,
}

fn length_framed(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    match value.extract::<String>()?.as_str() {
        "length" => Ok(true),
        "lines" => Ok(false),
        other => Err(Error::Config(format!(
            "framing must be 'lines' or 'length', got {other:?}"
        ))
        .into()),
    }
}

fn start_offset(value: &Bound<'_, PyAny>) -> PyResult<StartOffset> {
    match value.extract::<String>()?.as_str() {
        "committed" => Ok(StartOffset::Committed),
        "earliest" => Ok(StartOffset::Earliest),
        "latest" => Ok(StartOffset::Latest),
        other => Err(Error::Config(format!(
            "start_offset must be 'committed', 'earliest' or 'latest', got {other:?}"
        ))
        .into()),
    }
}

fn state_multi(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(value.extract::<String>()? == "state_multi")
}

/// How a source's records are framed, and its decoder.
fn decoder(value: &Bound<'_, PyAny>, framed: bool) -> PyResult<(Framing, Py<PyAny>)> {
    if !framed {
        let Decoder { decode } = value.extract()?;
        return Ok((Framing::Lines, decode));
    }
    let FramedDecoder {
        decode,
        header_length,
        payload_length,
        length_fmt,
    } = value.extract()?;
    let native = length_fmt
        .as_deref()
        .and_then(LengthFormat::parse)
        .filter(|format| format.size() == header_length);
    let framing = match native {
        Some(format) => Framing::Native(format),
        None => Framing::Python {
            header_length,
            payload_length,
        },
    };
    Ok((framing, decode))
}

fn source_plan(value: &Bound<'_, PyAny>) -> PyResult<SourcePlan> {
    let Tagged { kind } = read(value, "the source")?;
    let what = format!("the {kind} source");
    let (kind, framed) = match kind.as_str() {
        "tcp" => (SourceKind::Tcp(read(value, &what)?), true),
        "file" => {
            let FileSource { path, framing } = read(value, &what)?;
            (SourceKind::File { path }, framing)
        }
        "gen" => {
            let GenSource { generator } = read(value, &what)?;
            (SourceKind::Gen { generator }, false)
        }
        "kafka" => {
            let kafka: KafkaSource = read(value, &what)?;
            let plan = KafkaSourcePlan {
                topic: kafka.topic,
                settings: read(value, &what)?,
                group_id: kafka.group_id,
                start_offset: kafka.start_offset,
                create_partitions: kafka.create_partitions,
                resume: Default::default(),
                commit: true,
            };
            (SourceKind::Kafka(plan), false)
        }
        other => return Err(unknown("source", other)),
    };
    let (framing, decode) = decoder(value, framed).map_err(|err| named(value.py(), &what, err))?;
    Ok(SourcePlan {
        kind,
        framing,
        decode,
    })
}

/// A sink's kind, and what errors call it.
fn sink_kind(value: &Bound<'_, PyAny>, what: &str) -> PyResult<(SinkKind, String)> {
    let Tagged { kind } = read(value, what)?;
    let what = format!("{what} ({kind})");
    let sink = match kind.as_str() {
        "many" => {
            let ManySink { sinks } = read(value, &what)?;
            let kinds = sinks
                .iter()
                .enumerate()
                .map(|(i, sink)| Ok(sink_kind(sink, &format!("{what}, sink {}", i + 1))?.0))
                .collect::<PyResult<_>>()?;
            SinkKind::Many(kinds)
        }
        "tcp" => SinkKind::Tcp(read(value, &what)?),
        "file" => {
            let FileSink { path } = read(value, &what)?;
            SinkKind::File { path }
        }
        "stdout" => SinkKind::Stdout,
        "kafka" => {
            let kafka: KafkaSink = read(value, &what)?;
            SinkKind::Kafka(KafkaSinkPlan {
                topic: kafka.topic,
                settings: read(value, &what)?,
                max_produce_buffer_ms: kafka.max_produce_buffer_ms,
                max_message_size: kafka.max_message_size,
                create_partitions: kafka.create_partitions,
                transactions: kafka.transactions,
            })
        }
        other => return Err(unknown("sink", other)),
    };
    Ok((sink, what))
}

fn sink_plan(value: &Bound<'_, PyAny>) -> PyResult<Option<SinkPlan>> {
    if value.is_none() {
        return Ok(None);
    }
    let (kind, what) = sink_kind(value, "the sink")?;
    let Encoder { encode, group } = read(value, &what)?;
    Ok(Some(SinkPlan {
        kind,
        group,
        encode,
    }))
}

fn step_plans(value: &Bound<'_, PyAny>) -> PyResult<Vec<StepPlan>> {
    let steps: Vec<Bound<'_, PyAny>> = value.extract()?;
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let StepHead { kind, name, func } = read(step, &format!("step {}", i + 1))?;
            let what = format!("step {} {name:?} ({kind})", i + 1);
            let kind = match kind.as_str() {
                "map" => StepKind::Map,
                "multi" => StepKind::Multi,
                "state" | "state_multi" => StepKind::State(read(step, &what)?),
                other => return Err(unknown("step", other)),
            };
            Ok(StepPlan { name, func, kind })
        })
        .collect()
}

/// The pipelines, each error naming its pipeline.
fn pipeline_plans(value: &Bound<'_, PyAny>) -> PyResult<Vec<PipelinePlan>> {
    let pipelines: Vec<Bound<'_, PyAny>> = value.extract()?;
    pipelines
        .iter()
        .enumerate()
        .map(|(i, pipeline)| {
            let name = pipeline.extract::<Named>().map_or_else(
                |_| format!("pipeline {}", i + 1),
                |Named { name }| format!("pipeline {name:?}"),
            );
            read(pipeline, &name)
        })
        .collect()
}

fn state_classes(value: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Py<PyAny>)>> {
    value
        .cast::<PyDict>()?
        .iter()
        .map(|(name, class)| Ok((name.extract()?, class.unbind())))
        .collect()
}
