//! Keys changing owner between generations, and the initializer's decision
//! at the end of one: small dataflows every worker of an instance takes part
//! in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use serde::{Deserialize, Serialize};
use timely::communication::Allocate;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::InputHandleCore;
use timely::worker::Worker;

use crate::codec::Codec;
use crate::control::{NextMembership, RunControl};
use crate::errors::Error;
use crate::resources::Resources;
use crate::routing::{canonical_key, RoutingTable};

/// A key's state on its way to its new owner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MovedState {
    /// The worker (index in this instance) that owns the key from now on.
    pub dest: u32,
    /// The state name.
    pub store: String,
    /// The pickled key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The serialized state (the application's `serialize`, else pickle).
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// At the start of a generation: every key this worker holds but no longer
/// owns goes to its owner.
pub(crate) fn hand_over<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    tables: &HashMap<String, Arc<RoutingTable>>,
    names: &[String],
) -> Result<(), Error> {
    let me = names.get(worker.index()).cloned().unwrap_or_default();
    let moves = Python::attach(|py| take_moves(resources, py, tables, names, names, &me, false))?;
    exchange_states(worker, resources, moves)
}

/// At the end of a generation: a worker that leaves sends all its keys to
/// their owners in the next generation (identified by name).
pub(crate) fn hand_over_leaving<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    next_tables: &HashMap<String, Arc<RoutingTable>>,
    names: &[String],
    next_names: &[String],
    leaving: &[String],
) -> Result<(), Error> {
    let me = names.get(worker.index()).cloned().unwrap_or_default();
    let moves = if leaving.contains(&me) {
        Python::attach(|py| take_moves(resources, py, next_tables, next_names, names, &me, true))?
    } else {
        Vec::new()
    };
    exchange_states(worker, resources, moves)
}

/// The next generation's data addresses and worker names, by index.
pub(crate) type NextWorkers = (Vec<String>, Vec<String>);

/// The initializer's decision at the end of a generation, delivered to every
/// worker: the next membership (data addresses and names), or None when the
/// run ends. `proposal` is only given on worker 0.
pub(crate) fn decide<A: Allocate>(
    worker: &mut Worker<A>,
    control: &RunControl,
    proposal: Option<NextMembership>,
) -> Result<Option<NextWorkers>, Error> {
    type Decision = (u32, Option<NextWorkers>);
    let mut input = InputHandleCore::<u64, CapacityContainerBuilder<Vec<Decision>>>::new();
    let received: std::rc::Rc<std::cell::RefCell<Vec<Decision>>> = Default::default();
    let inbox = received.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        input.to_stream(scope).sink(
            Exchange::new(|decision: &Decision| u64::from(decision.0)),
            "decide the next generation",
            move |(input, _frontier)| {
                input.for_each(|_time, data| inbox.borrow_mut().append(data));
            },
        );
    });
    if worker.index() == 0 {
        let next = proposal.map(|next| (next.addresses, next.names));
        for peer in 0..worker.peers() {
            input.send((u32::try_from(peer).unwrap_or(u32::MAX), next.clone()));
        }
    }
    drop(input);
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(reason) = control.peek_abort() {
            return Err(Error::Cluster(reason));
        }
    }
    let decision = received.borrow_mut().pop();
    Ok(decision.and_then(|(_, next)| next))
}

/// Run a small dataflow that delivers `moves` to their workers and installs
/// what this worker receives. Every worker of the instance takes part.
fn exchange_states<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    moves: Vec<MovedState>,
) -> Result<(), Error> {
    let mut input = InputHandleCore::<u64, CapacityContainerBuilder<Vec<MovedState>>>::new();
    let received: std::rc::Rc<std::cell::RefCell<Vec<MovedState>>> = Default::default();
    let inbox = received.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        input.to_stream(scope).sink(
            Exchange::new(|moved: &MovedState| u64::from(moved.dest)),
            "hand over state",
            move |(input, _frontier)| {
                input.for_each(|_time, data| inbox.borrow_mut().append(data));
            },
        );
    });
    let sent = moves.len();
    for moved in moves {
        input.send(moved);
    }
    drop(input);
    while worker.step_or_park(Some(Duration::from_millis(20))) {
        if let Some(reason) = resources.control.peek_abort() {
            return Err(Error::Cluster(reason));
        }
    }
    let received = std::mem::take(&mut *received.borrow_mut());
    if sent > 0 || !received.is_empty() {
        log::info!(
            "handed over the state of {sent} keys, took over {} keys",
            received.len()
        );
    }
    Python::attach(|py| install(resources, py, received))
}

/// Take out of the `resources`' stores the keys whose owner (by `tables` over the
/// worker names `owners`) is not `me` -- or every key with `all` --
/// serialized for the owner's index among `instance` (this timely
/// instance's worker names).
fn take_moves(
    resources: &Resources,
    py: Python<'_>,
    tables: &HashMap<String, Arc<RoutingTable>>,
    owners: &[String],
    instance: &[String],
    me: &str,
    all: bool,
) -> Result<Vec<MovedState>, Error> {
    let codec = Codec::with(
        py,
        resources.serialize.as_ref(),
        resources.deserialize.as_ref(),
    )?;
    let mut moves = Vec::new();
    for (name, store) in &resources.stores {
        let Some(table) = tables.get(name) else {
            continue;
        };
        for (key, state) in store.items(py) {
            let (key, state) = (key.bind(py), state.bind(py));
            let canonical = canonical_key(key).ok_or_else(|| {
                Error::Config(format!("state {name:?}: key {key} cannot be routed"))
            })?;
            let owner = owners
                .get(table.owner(&canonical))
                .map(String::as_str)
                .unwrap_or(me);
            if !all && owner == me {
                continue;
            }
            let dest = instance.iter().position(|n| n == owner).ok_or_else(|| {
                Error::Cluster(format!("worker {owner:?} is not in this generation"))
            })?;
            let (key_bytes, state_bytes) = codec.encode_state(py, key, state).map_err(|e| {
                Error::Config(format!(
                    "state {name:?}: cannot serialize the state of key {key} to hand it \
                     over: {}",
                    crate::errors::format_py_err(py, &e)
                ))
            })?;
            store.remove(py, key)?;
            moves.push(MovedState {
                dest: u32::try_from(dest).unwrap_or(u32::MAX),
                store: name.clone(),
                key: key_bytes,
                state: state_bytes,
            });
        }
    }
    Ok(moves)
}

/// Put states handed over by other workers into the stores.
fn install(resources: &Resources, py: Python<'_>, received: Vec<MovedState>) -> Result<(), Error> {
    let codec = Codec::with(
        py,
        resources.serialize.as_ref(),
        resources.deserialize.as_ref(),
    )?;
    for moved in received {
        let store = resources.stores.get(&moved.store).ok_or_else(|| {
            Error::Cluster(format!(
                "state {:?} handed over is unknown here",
                moved.store
            ))
        })?;
        let (key, state) = codec.decode_state(py, &moved.key, &moved.state)?;
        store.insert(py, &key, &state)?;
    }
    Ok(())
}
