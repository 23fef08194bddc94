//! The application plan handed over by `wallaroo.plan.compile_plan`, and the
//! run options from the runner, read into Rust types once at start-up.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

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
    Tcp {
        /// Address to bind.
        host: String,
        /// Port to bind.
        port: u16,
        /// Connections read at once (0.6.1 `parallelism`); None: any number.
        max_connections: Option<usize>,
    },
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

/// A Kafka sink.
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
    Tcp {
        /// Host to connect to.
        host: String,
        /// Port to connect to.
        port: u16,
    },
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
    State {
        /// The state name shared across pipelines.
        state_name: String,
        /// The bound `partition` method; None for `to_stateful`.
        partition: Option<Py<PyAny>>,
        /// Keys must be non-negative ints (`to_state_partition_u64`).
        u64_keys: bool,
        /// `compute_multi`.
        multi: bool,
        /// The keys the application declared, in order.
        keys: Vec<Py<PyAny>>,
        /// Windows: `tick(states, final)` fires what is due on the engine's
        /// timer (see [`crate::ticks`]).
        tick: Option<Py<PyAny>>,
        /// Event-time windows: `compute(data, state, (reader, stream))`, the
        /// record's source partition as a third argument.
        origin: bool,
    },
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

fn item<'py>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    dict.get_item(key)?
        .ok_or_else(|| Error::Config(format!("plan is missing {key:?}")).into())
}

fn string(dict: &Bound<'_, PyDict>, key: &str) -> PyResult<String> {
    item(dict, key)?.extract()
}

fn object(dict: &Bound<'_, PyDict>, key: &str) -> PyResult<Py<PyAny>> {
    Ok(item(dict, key)?.unbind())
}

fn optional<'py>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(dict.get_item(key)?.filter(|v| !v.is_none()))
}

fn port(dict: &Bound<'_, PyDict>, key: &str) -> PyResult<u16> {
    let value: i64 = item(dict, key)?.extract()?;
    u16::try_from(value).map_err(|_| Error::Config(format!("port out of range: {value}")).into())
}

fn client_settings(dict: &Bound<'_, PyDict>) -> PyResult<ClientSettings> {
    Ok(ClientSettings {
        bootstrap: string(dict, "bootstrap")?,
        log_level: string(dict, "log_level")?,
        extra: optional(dict, "config")?
            .map(|v| v.extract::<Vec<(String, String)>>())
            .transpose()?
            .unwrap_or_default(),
    })
}

impl SourcePlan {
    fn from_py(dict: &Bound<'_, PyDict>) -> PyResult<SourcePlan> {
        let kind_name = string(dict, "kind")?;
        let kind = match kind_name.as_str() {
            "tcp" => SourceKind::Tcp {
                host: string(dict, "host")?,
                port: port(dict, "port")?,
                max_connections: optional(dict, "max_connections")?
                    .map(|v| v.extract())
                    .transpose()?,
            },
            "file" => SourceKind::File {
                path: PathBuf::from(string(dict, "path")?),
            },
            "gen" => SourceKind::Gen {
                generator: object(dict, "generator")?,
            },
            "kafka" => SourceKind::Kafka(KafkaSourcePlan {
                topic: string(dict, "topic")?,
                settings: client_settings(dict)?,
                group_id: string(dict, "group_id")?,
                start_offset: match string(dict, "start_offset")?.as_str() {
                    "earliest" => StartOffset::Earliest,
                    "latest" => StartOffset::Latest,
                    _ => StartOffset::Committed,
                },
                create_partitions: optional(dict, "create_partitions")?
                    .map(|v| v.extract())
                    .transpose()?,
                resume: Default::default(),
                commit: true,
            }),
            other => return Err(Error::Config(format!("unknown source kind {other:?}")).into()),
        };
        let lines =
            matches!(kind, SourceKind::File { .. }) && string(dict, "framing")?.as_str() == "lines";
        let framing = if lines || matches!(kind, SourceKind::Kafka(_) | SourceKind::Gen { .. }) {
            Framing::Lines
        } else {
            let header_length: usize = item(dict, "header_length")?.extract()?;
            let native = optional(dict, "length_fmt")?
                .map(|f| f.extract::<String>())
                .transpose()?
                .and_then(|f| LengthFormat::parse(&f))
                .filter(|f| f.size() == header_length);
            match native {
                Some(format) => Framing::Native(format),
                None => Framing::Python {
                    header_length,
                    payload_length: object(dict, "payload_length")?,
                },
            }
        };
        Ok(SourcePlan {
            kind,
            framing,
            decode: object(dict, "decode")?,
        })
    }
}

impl SinkPlan {
    fn from_py(dict: &Bound<'_, PyDict>) -> PyResult<SinkPlan> {
        Ok(SinkPlan {
            kind: Self::kind_from_py(dict)?,
            group: optional(dict, "group")?.map(|v| v.extract()).transpose()?,
            encode: object(dict, "encode")?,
        })
    }

    fn kind_from_py(dict: &Bound<'_, PyDict>) -> PyResult<SinkKind> {
        Ok(match string(dict, "kind")?.as_str() {
            "many" => SinkKind::Many(
                item(dict, "sinks")?
                    .cast_into::<PyList>()?
                    .iter()
                    .map(|sink| Self::kind_from_py(&sink.cast_into::<PyDict>()?))
                    .collect::<PyResult<_>>()?,
            ),
            "tcp" => SinkKind::Tcp {
                host: string(dict, "host")?,
                port: port(dict, "port")?,
            },
            "file" => SinkKind::File {
                path: PathBuf::from(string(dict, "path")?),
            },
            "stdout" => SinkKind::Stdout,
            "kafka" => SinkKind::Kafka(KafkaSinkPlan {
                topic: string(dict, "topic")?,
                settings: client_settings(dict)?,
                max_produce_buffer_ms: item(dict, "max_produce_buffer_ms")?.extract()?,
                max_message_size: item(dict, "max_message_size")?.extract()?,
                create_partitions: optional(dict, "create_partitions")?
                    .map(|v| v.extract())
                    .transpose()?,
                transactions: optional(dict, "transactions")?.map_or(Ok(false), |v| v.extract())?,
            }),
            other => return Err(Error::Config(format!("unknown sink kind {other:?}")).into()),
        })
    }
}

impl StepPlan {
    fn from_py(dict: &Bound<'_, PyDict>) -> PyResult<StepPlan> {
        let kind_name = string(dict, "kind")?;
        let kind = match kind_name.as_str() {
            "map" => StepKind::Map,
            "multi" => StepKind::Multi,
            "state" | "state_multi" => StepKind::State {
                state_name: string(dict, "state_name")?,
                partition: optional(dict, "partition")?.map(Bound::unbind),
                u64_keys: item(dict, "u64")?.extract()?,
                multi: kind_name == "state_multi",
                keys: item(dict, "keys")?.extract()?,
                tick: optional(dict, "tick")?.map(Bound::unbind),
                origin: optional(dict, "origin")?.map_or(Ok(false), |v| v.extract())?,
            },
            other => return Err(Error::Config(format!("unknown step kind {other:?}")).into()),
        };
        Ok(StepPlan {
            name: string(dict, "name")?,
            func: object(dict, "func")?,
            kind,
        })
    }
}

fn source_plan(value: &Bound<'_, PyAny>) -> PyResult<SourcePlan> {
    SourcePlan::from_py(value.cast::<PyDict>()?)
}

fn step_plans(value: &Bound<'_, PyAny>) -> PyResult<Vec<StepPlan>> {
    value
        .cast::<PyList>()?
        .iter()
        .map(|step| StepPlan::from_py(&step.cast_into::<PyDict>()?))
        .collect()
}

fn sink_plan(value: &Bound<'_, PyAny>) -> PyResult<Option<SinkPlan>> {
    if value.is_none() {
        return Ok(None);
    }
    SinkPlan::from_py(value.cast::<PyDict>()?).map(Some)
}

fn state_classes(value: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Py<PyAny>)>> {
    value
        .cast::<PyDict>()?
        .iter()
        .map(|(name, class)| Ok((name.extract()?, class.unbind())))
        .collect()
}
