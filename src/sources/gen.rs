//! Generator source (0.5.4/0.6 `GenSourceConfig`): `initial_value()` gives the
//! first record, `apply(previous)` each next one; None from either ends the
//! source. Values are pickled here and unpickled by the plan's decoder, so
//! they travel as frames like any other source's records.

use crossbeam_channel::{bounded, Sender};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{send_batch, Frame, Pos, PosStyle, SourceContext, SourceHandle, SourceInfo};
use crate::errors::{format_py_err, Error};

/// Run the generator on a thread; with `skip`, the first `skip` values (handed
/// over before a crash) are made again and dropped.
pub fn start(generator: Py<PyAny>, ctx: SourceContext, skip: u64) -> Result<SourceHandle, Error> {
    let info = SourceInfo {
        label: format!("generator of pipeline {}", ctx.pipeline),
        style: PosStyle::Frames,
    };
    let (tx, rx) = bounded(super::CHANNEL_BATCHES);
    let thread_info = info.clone();
    let thread = std::thread::Builder::new()
        .name(format!("source {}", ctx.pipeline))
        .spawn(move || generate(&generator, &ctx, &thread_info, &tx, skip))
        .map_err(|e| Error::Config(format!("cannot start a source thread: {e}")))?;
    Ok(SourceHandle {
        rx,
        info,
        threads: vec![thread],
        read_everywhere: Default::default(),
    })
}

/// `Gen::index` once the generator has ended.
const ENDED: u64 = u64::MAX;

/// The generator's state between batches.
struct Gen {
    previous: Option<Py<PyAny>>,
    index: u64,
}

fn generate(
    generator: &Py<PyAny>,
    ctx: &SourceContext,
    info: &SourceInfo,
    tx: &Sender<Vec<Frame>>,
    skip: u64,
) {
    let dumps = match Python::attach(|py| -> PyResult<Py<PyAny>> {
        Ok(py.import("pickle")?.getattr("dumps")?.unbind())
    }) {
        Ok(dumps) => dumps,
        Err(err) => {
            log::error!("{}: cannot import pickle: {err}", info.label);
            return;
        }
    };
    let mut state = Gen {
        previous: None,
        index: 0,
    };
    loop {
        if ctx.finished() {
            break;
        }
        let batch =
            Python::attach(|py| next_batch(py, generator, &dumps, ctx, info, &mut state, skip));
        let ended = state.index == ENDED;
        if !send_batch(tx, batch, ctx) || ended {
            break;
        }
    }
    log::debug!("{}: end of input", info.label);
}

fn next_batch(
    py: Python<'_>,
    generator: &Py<PyAny>,
    dumps: &Py<PyAny>,
    ctx: &SourceContext,
    info: &SourceInfo,
    state: &mut Gen,
    skip: u64,
) -> Vec<Frame> {
    let generator = generator.bind(py);
    let mut batch = Vec::with_capacity(ctx.batch_size);
    while batch.len() < ctx.batch_size {
        let value = match &state.previous {
            None if state.index == 0 => generator.call_method0("initial_value"),
            None => break,
            Some(previous) => generator.call_method1("apply", (previous.bind(py),)),
        };
        let value = match value {
            Ok(value) if !value.is_none() => value,
            Ok(_) => {
                state.previous = None;
                state.index = ENDED;
                break;
            }
            Err(err) => {
                log::error!(
                    "{}: the generator failed, the source ends here: {}",
                    info.label,
                    format_py_err(py, &err)
                );
                state.previous = None;
                state.index = ENDED;
                break;
            }
        };
        state.index += 1;
        if state.index > skip {
            match dumps.bind(py).call1((&value,)) {
                Ok(bytes) => match bytes.cast::<PyBytes>() {
                    Ok(bytes) => batch.push(Frame {
                        payload: bytes.as_bytes().to_vec(),
                        pos: Pos {
                            stream: 0,
                            index: state.index,
                            offset: 0,
                        },
                        read_ns: 0,
                    }),
                    Err(_) => log::error!("{}: pickle.dumps returned no bytes", info.label),
                },
                Err(err) => {
                    log::error!(
                        "{}: value {} cannot be pickled: {}",
                        info.label,
                        state.index,
                        format_py_err(py, &err)
                    );
                }
            }
        }
        state.previous = Some(value.unbind());
    }
    batch
}
