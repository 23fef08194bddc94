//! Engine errors and their one mapping to Python exceptions.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyTracebackMethods;

create_exception!(
    _engine,
    EngineError,
    PyException,
    "Base class of errors raised by the wallaroo engine."
);
create_exception!(
    _engine,
    ConfigError,
    EngineError,
    "A source, sink or option cannot be set up (bad address, missing file, ...)."
);
create_exception!(
    _engine,
    ClusterError,
    EngineError,
    "The cluster could not form or lost a worker."
);
create_exception!(
    _engine,
    StepError,
    EngineError,
    "User code raised or returned something the engine cannot use; the run stopped."
);

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source, sink or option could not be set up.
    #[error("{0}")]
    Config(String),
    /// The cluster could not form or lost a worker.
    #[error("{0}")]
    Cluster(String),
    /// A step failed and the on-error policy says stop.
    #[error("{0}")]
    Step(StepFailure),
    /// A Python exception outside any step (KeyboardInterrupt is handled before).
    #[error("{0}")]
    Python(PyErr),
}

/// A failure of user code, with where it happened.
#[derive(Debug, Clone)]
pub struct StepFailure {
    /// The pipeline the step belongs to.
    pub pipeline: String,
    /// The step's name (or "decoder", "encoder", "partition function").
    pub step: String,
    /// A shortened repr of the record the step was given.
    pub record: String,
    /// Where the record came from (source and position).
    pub position: String,
    /// The Python traceback, or the description of what was wrong.
    pub detail: String,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pipeline {:?}, step {:?} failed on record {} (from {})\n{}",
            self.pipeline,
            self.step,
            self.record,
            self.position,
            self.detail.trim_end()
        )
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::Python(err)
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Config(msg) => ConfigError::new_err(msg),
            Error::Cluster(msg) => ClusterError::new_err(msg),
            Error::Step(failure) => StepError::new_err(failure.to_string()),
            Error::Python(err) => err,
        }
    }
}

/// The traceback and message of a Python exception, as Python prints them.
pub fn format_py_err(py: Python<'_>, err: &PyErr) -> String {
    let mut text = String::new();
    if let Some(tb) = err.traceback(py) {
        if let Ok(formatted) = tb.format() {
            text.push_str(&formatted);
        }
    }
    let value = err.value(py);
    let type_name = value
        .get_type()
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    match value.str() {
        Ok(msg) if !msg.to_string().is_empty() => text.push_str(&format!("{type_name}: {msg}")),
        _ => text.push_str(&type_name),
    }
    text
}

/// A repr of `obj` cut to `limit` characters, for error messages and logs.
pub fn short_repr(obj: &Bound<'_, PyAny>, limit: usize) -> String {
    let repr = obj
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "<unrepresentable>".to_owned());
    shorten(&repr, limit)
}

/// `text` cut to `limit` characters with an ellipsis.
pub fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit).collect();
    cut.push_str("...");
    cut
}

/// Add the exception classes to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StepError", py.get_type::<StepError>())?;
    m.add("ClusterError", py.get_type::<ClusterError>())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_keeps_short_text_and_cuts_long_text() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc...");
    }
}
