//! TCP source: listens, accepts any number of connections, splits each into
//! frames by the decoder's header. Ends when the run stops, after handing over
//! what its connections had already sent.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

use super::{
    drain_parser, handle_parsed, send_batch, Frame, Parser, PosStyle, SourceContext, SourceHandle,
    SourceInfo, CHANNEL_BATCHES,
};
use crate::errors::Error;
use crate::plan::Framing;

const POLL: Duration = Duration::from_millis(50);
/// Bytes read from a connection at a time, at most.
const READ_CHUNK: usize = 256 * 1024;

/// Bind now (so a busy port fails the start) and accept on a thread.
pub fn start(
    host: &str,
    port: u16,
    max_connections: Option<usize>,
    framing: Arc<Framing>,
    ctx: SourceContext,
) -> Result<SourceHandle, Error> {
    let listener = TcpListener::bind((host, port)).map_err(|e| {
        Error::Config(format!(
            "pipeline {:?}: cannot listen on {host}:{port}: {e}",
            ctx.pipeline
        ))
    })?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| format!("{host}:{port}"));
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Config(format!("cannot set up the listener on {local}: {e}")))?;
    log::info!(
        "pipeline {:?}: listening for TCP input on {local}",
        ctx.pipeline
    );
    let info = SourceInfo {
        label: format!("tcp {local}"),
        style: PosStyle::Connections,
    };
    let (tx, rx) = bounded(CHANNEL_BATCHES);
    let thread_info = info.clone();
    let thread = std::thread::Builder::new()
        .name(format!("accept {}", ctx.pipeline))
        .spawn(move || accept_loop(listener, max_connections, framing, ctx, thread_info, tx))
        .map_err(|e| Error::Config(format!("cannot start a source thread: {e}")))?;
    Ok(SourceHandle {
        rx,
        info,
        threads: vec![thread],
        read_everywhere: Default::default(),
    })
}

/// Accept connections (at most `max_connections` open at once: the others
/// wait in the listen backlog, as 0.6.1's pre-created source actors made
/// them) and read each on its own thread.
fn accept_loop(
    listener: TcpListener,
    max_connections: Option<usize>,
    framing: Arc<Framing>,
    ctx: SourceContext,
    info: SourceInfo,
    tx: Sender<Vec<Frame>>,
) {
    let mut connections = Vec::new();
    let mut next_id = 0u32;
    while !ctx.finished() {
        if max_connections.is_some_and(|max| connections.len() >= max) {
            std::thread::sleep(POLL);
            connections.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                next_id += 1;
                log::info!("{} connection {next_id}: accepted from {peer}", info.label);
                let (framing, ctx, info, tx) =
                    (framing.clone(), ctx.clone(), info.clone(), tx.clone());
                let id = next_id;
                match std::thread::Builder::new()
                    .name(format!("tcp {} #{id}", ctx.pipeline))
                    .spawn(move || read_connection(stream, id, framing, ctx, info, tx))
                {
                    Ok(handle) => connections.push(handle),
                    Err(e) => log::error!("cannot start a thread for connection {id}: {e}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(POLL)
            }
            Err(e) => {
                log::warn!("{}: accept failed: {e}", info.label);
                std::thread::sleep(POLL);
            }
        }
        connections.retain(|c| !c.is_finished());
    }
    drop(tx);
    for connection in connections {
        let _ = connection.join();
    }
}

fn read_connection(
    mut stream: TcpStream,
    id: u32,
    framing: Arc<Framing>,
    ctx: SourceContext,
    info: SourceInfo,
    tx: Sender<Vec<Frame>>,
) {
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(POLL)))
    {
        log::error!(
            "{} connection {id}: cannot set a read timeout: {e}",
            info.label
        );
        return;
    }
    let mut parser = Parser::new(framing, ctx.max_frame_bytes, id);
    loop {
        let mut batch = Vec::new();
        match parser.read_from(&mut stream, READ_CHUNK) {
            Ok(0) => {
                if let Some(parsed) = parser.finish() {
                    handle_parsed(parsed, &mut batch, &ctx, &info);
                }
                send_batch(&tx, batch, &ctx);
                log::info!("{} connection {id}: closed by the peer", info.label);
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                // Nothing pending: when stopping, everything sent so far is in.
                if ctx.finished() {
                    if let Some(parsed) = parser.finish() {
                        handle_parsed(parsed, &mut batch, &ctx, &info);
                        send_batch(&tx, batch, &ctx);
                    }
                    log::info!("{} connection {id}: closed at shutdown", info.label);
                    return;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(parsed) = parser.finish() {
                    handle_parsed(parsed, &mut batch, &ctx, &info);
                    send_batch(&tx, batch, &ctx);
                }
                log::warn!("{} connection {id}: read failed: {e}", info.label);
                return;
            }
        }
        let ok = drain_parser(&mut parser, &mut batch, &ctx, &info);
        if !send_batch(&tx, batch, &ctx) {
            return;
        }
        if !ok {
            log::error!(
                "{} connection {id}: cannot find the next frame, closing the connection",
                info.label
            );
            return;
        }
    }
}
