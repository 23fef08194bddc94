//! Several worker processes as one timely dataflow cluster.
//!
//! Membership comes from the runner's rendezvous (`wallaroo.cluster`); the
//! processes connect to each other ([`crate::peers`]) and timely runs over
//! those connections, one timely instance per *generation* (a membership: it
//! changes when a worker joins or leaves). Each generation hands over the
//! keys whose owner changed ([`handover`]), then runs the worker loop
//! ([`crate::worker`]) over the pipelines' cluster dataflow
//! ([`crate::pipeline`]). A worker that loses a peer exits, or with crash
//! recovery starts again ([`restart`]).

pub mod handover;
pub mod restart;

use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use timely::communication::allocator::zero_copy::bytes_slab::BytesRefill;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{GenericBuilder, Process};
use timely::communication::Allocate;
use timely::worker::Worker;
use timely::WorkerConfig;

use crate::control::{NextMembership, RunControl, RunHandle};
use crate::errors::Error;
use crate::plan::{Membership, Options, Plan};
use crate::resources::{Resources, Totals};
use crate::worker;
pub use restart::restart_process;

/// How a generation ended.
enum GenerationEnd {
    /// The sources ended (or the run was stopped); `true` when by a signal.
    Finished(bool),
    /// The membership changes; the next generation starts.
    Reconfigure(NextMembership),
}

/// Why the cluster broke: the reason the control channel gave (it names the
/// lost worker), waiting a moment for it, else `fallback`.
fn lost_peer_reason(control: &RunControl, fallback: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(reason) = control.peek_abort() {
            return reason;
        }
        if std::time::Instant::now() >= deadline {
            return fallback.to_owned();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Panics in timely's threads mean a peer's connection broke: unwinding
/// through timely's shared queues would panic again and abort the process
/// with a backtrace, so report the lost worker in one line and exit (with
/// crash recovery, `restart`: start again from the last complete snapshot).
fn exit_on_lost_peer(control: RunHandle, restart: bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_timely = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("timely"));
        if !in_timely {
            default(info);
            return;
        }
        let detail = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("connection lost");
        let reason = lost_peer_reason(
            &control,
            &format!("lost the connection to another worker ({detail})"),
        );
        if restart {
            restart_process(&reason);
        }
        eprintln!("error: cluster: {reason}");
        std::process::exit(1);
    }));
}

/// How long the processes of a new generation may take to connect to each other.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker that joins may take to connect; after that the grow
/// is rolled back.
const GROW_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Run this process's worker of the cluster, one timely instance per
/// generation (the membership changes when a worker joins or leaves); the
/// calling (main) thread waits, watching for signals.
pub(crate) fn execute(
    plan: Plan,
    options: Options,
    membership: Membership,
    stop: Arc<AtomicBool>,
    control: RunHandle,
) -> Result<Totals, Error> {
    exit_on_lost_peer(control.clone(), options.resilience.is_some());
    let peers = membership.addresses.len();
    let resources = Arc::new(Resources::new(
        plan,
        &options,
        membership.index,
        peers,
        stop.clone(),
        control.clone(),
    )?);
    let options = Arc::new(options);
    let mut current = membership;
    // The membership before a grow, until the grown generation is connected.
    let mut grown_from: Option<Membership> = None;
    let outcome = loop {
        control.begin_generation();
        let timeout = match grown_from {
            Some(_) => GROW_CONNECT_TIMEOUT,
            None => CONNECT_TIMEOUT,
        };
        let sockets = match crate::peers::connect(
            &current.addresses,
            current.index,
            current.token,
            timeout,
        ) {
            Ok(sockets) => sockets,
            Err(error) => match grown_from.take() {
                // Nothing moved yet (keys move once connected): the
                // cluster goes on as it was, on every worker alike.
                Some(previous) => {
                    log::warn!(
                        "{error}: the new worker never connected; the cluster goes back \
                             to {} workers ({})",
                        previous.names.len(),
                        previous.names.join(", ")
                    );
                    current = previous;
                    continue;
                }
                None => break Err(error),
            },
        };
        control.connected();
        match run_instance(&resources, &options, &current, sockets, &stop) {
            Ok(GenerationEnd::Finished(interrupted)) => break Ok(interrupted),
            Ok(GenerationEnd::Reconfigure(next)) => match next.index {
                Some(index) => {
                    log::info!(
                        "the cluster now has {} workers ({}); this is worker {index}",
                        next.names.len(),
                        next.names.join(", ")
                    );
                    let next = Membership {
                        index,
                        addresses: next.addresses,
                        names: next.names,
                        token: current.token,
                    };
                    let grew = next.names.len() > current.names.len();
                    let previous = std::mem::replace(&mut current, next);
                    grown_from = grew.then_some(previous);
                }
                None => {
                    log::info!("left the cluster: this worker's keys were handed over");
                    break Ok(false);
                }
            },
            Err(error) => break Err(error),
        }
    };
    // The worker thread of the last instance may still be dropping its
    // reference for a moment.
    let mut resources = resources;
    for _ in 0..50 {
        match Arc::try_unwrap(resources) {
            Ok(owned) => return owned.finish(outcome, current.index, current.addresses.len()),
            Err(shared) => {
                resources = shared;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    outcome.and(Err(Error::Cluster(
        "the worker did not release the run's resources".to_owned(),
    )))
}

/// One timely instance: connect to the generation's workers, run the
/// generation, disconnect.
fn run_instance(
    resources: &Arc<Resources>,
    options: &Arc<Options>,
    membership: &Membership,
    sockets: Vec<Option<std::net::TcpStream>>,
    stop: &Arc<AtomicBool>,
) -> Result<GenerationEnd, Error> {
    let refill = BytesRefill {
        logic: Arc::new(|size| Box::new(vec![0_u8; size]) as Box<dyn DerefMut<Target = [u8]>>),
        limit: None,
    };
    let (builders, network) = initialize_networking_from_sockets::<_, Process>(
        sockets,
        membership.index,
        1,
        refill,
        Arc::new(|_| None),
    )
    .map_err(|e| Error::Cluster(format!("cannot connect the cluster: {e}")))?;
    let builders = builders.into_iter().map(GenericBuilder::ZeroCopy).collect();
    let (result_tx, result_rx) = crossbeam_channel::bounded(1);
    let control = resources.control.clone();
    let (resources, options) = (resources.clone(), options.clone());
    let names = membership.names.clone();
    let guards = timely::execute::execute_from(
        builders,
        Box::new(network),
        WorkerConfig::default(),
        move |worker| {
            let result = generation(worker, &resources, &options, &names);
            let _ = result_tx.send(result);
        },
    )
    .map_err(|e| Error::Cluster(format!("cannot connect the cluster: {e}")))?;
    let result = loop {
        match result_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => break result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                break Err(Error::Cluster(lost_peer_reason(
                    &control,
                    "the worker stopped without a result (a peer was lost)",
                )))
            }
        }
        // Runs the runner's signal handlers, which request a clean stop.
        if let Err(signal) = Python::attach(|py| py.check_signals()) {
            log::info!("stopping ({signal}): finishing what the sources have read");
            stop.store(true, Ordering::Relaxed);
        }
    };
    match result {
        Ok(end) => {
            // A clean end on every worker: the connections close in order.
            drop(guards);
            Ok(end)
        }
        Err(error) => {
            // Peers may be gone; joining the network threads could wait forever.
            std::mem::forget(guards);
            Err(error)
        }
    }
}

/// One generation on this worker: take over the keys it now owns, run the
/// worker loop, learn the initializer's decision (the next membership or the
/// end), and hand the keys of a leaving worker to their next owners.
/// `names` are the generation's worker names.
fn generation<A: Allocate>(
    worker: &mut Worker<A>,
    resources: &Resources,
    options: &Options,
    names: &[String],
) -> Result<GenerationEnd, Error> {
    let (index, peers) = (worker.index(), worker.peers());
    let tables = resources.tables(peers);
    handover::hand_over(worker, resources, &tables, names)?;
    let ran = worker::run_generation(worker, resources, options, &tables, false)?;
    // Whether the run goes on with another membership is the initializer's
    // word, for every worker alike (a worker without sources of its own sees
    // its dataflow end either way); a worker that failed still takes part.
    let proposal = ran.proposal.filter(|_| index == 0 && ran.failed.is_none());
    let decided = handover::decide(worker, &resources.control, proposal)?;
    resources.control.take_reconfigure();
    if let Some(failure) = ran.failed {
        return Err(Error::Step(failure));
    }
    Ok(match decided {
        None => GenerationEnd::Finished(ran.interrupted),
        Some((addresses, next_names)) => {
            let me = names.get(index).cloned().unwrap_or_default();
            let leaving: Vec<String> = names
                .iter()
                .filter(|name| !next_names.contains(name))
                .cloned()
                .collect();
            // Workers that leave hand their keys to their next owners while
            // every worker of this generation is still here.
            let next_tables = resources.tables(next_names.len());
            handover::hand_over_leaving(
                worker,
                resources,
                &next_tables,
                names,
                &next_names,
                &leaving,
            )?;
            GenerationEnd::Reconfigure(NextMembership {
                index: next_names.iter().position(|name| *name == me),
                addresses,
                names: next_names,
            })
        }
    })
}
