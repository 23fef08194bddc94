//! The TCP connections between a cluster's processes, handed to timely.
//!
//! timely's own set-up retries a refused connection once a second, so a
//! worker that starts a moment before the process it connects to would lose
//! a second at every start and every generation. Here each process listens
//! on its data address, connects to every process with a lower index
//! (retrying every few milliseconds) and accepts the higher ones; a
//! connection that does not open with the handshake is dropped, not taken
//! for a peer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::errors::Error;

/// Opens every connection; distinct from timely's so a mismatched build or
/// a stray client is told apart.
const MAGIC: u64 = 0x5741_4c4c_4152_4f4f; // "WALLAROO"
/// How often a refused connection is tried again.
const RETRY: Duration = Duration::from_millis(10);
/// How long a new connection may take to send its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// One connection per other process, by index (`None` at `me`), connected
/// within `timeout`.
pub fn connect(
    addresses: &[String],
    me: usize,
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>, Error> {
    let deadline = Instant::now() + timeout;
    let mine = addresses
        .get(me)
        .ok_or_else(|| Error::Cluster(format!("worker {me} has no data address")))?;
    let listener = TcpListener::bind(mine.as_str())
        .map_err(|e| Error::Cluster(format!("cannot listen on data address {mine}: {e}")))?;
    let mut sockets: Vec<Option<TcpStream>> = Vec::with_capacity(addresses.len());
    for (index, address) in addresses.iter().enumerate().take(me) {
        sockets.push(Some(dial(address, index, me, deadline)?));
    }
    sockets.push(None);
    sockets.extend(accept(&listener, addresses, me, deadline)?);
    Ok(sockets)
}

/// Connect to worker `index` at `address` and introduce ourselves as `me`.
fn dial(address: &str, index: usize, me: usize, deadline: Instant) -> Result<TcpStream, Error> {
    loop {
        match TcpStream::connect(address) {
            Ok(mut stream) => {
                stream
                    .set_nodelay(true)
                    .and_then(|()| stream.write_all(&handshake(me)))
                    .map_err(|e| Error::Cluster(format!("worker {index} at {address}: {e}")))?;
                return Ok(stream);
            }
            Err(err) if Instant::now() >= deadline => {
                return Err(Error::Cluster(format!(
                    "cannot connect to worker {index} at {address}: {err}"
                )))
            }
            Err(_) => std::thread::sleep(RETRY),
        }
    }
}

/// Accept the workers after `me`, each introduced by its handshake.
fn accept(
    listener: &TcpListener,
    addresses: &[String],
    me: usize,
    deadline: Instant,
) -> Result<Vec<Option<TcpStream>>, Error> {
    let later = addresses.len() - me - 1;
    let mut accepted: Vec<Option<TcpStream>> = (0..later).map(|_| None).collect();
    let mut missing = later;
    let cluster_error = |e: std::io::Error| Error::Cluster(format!("data address: {e}"));
    listener.set_nonblocking(true).map_err(cluster_error)?;
    while missing > 0 {
        let (mut stream, from) = match listener.accept() {
            Ok(connection) => connection,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let waiting: Vec<&str> = accepted
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_none())
                        .filter_map(|(i, _)| addresses.get(me + 1 + i).map(String::as_str))
                        .collect();
                    return Err(Error::Cluster(format!(
                        "workers at {} did not connect",
                        waiting.join(", ")
                    )));
                }
                std::thread::sleep(RETRY);
                continue;
            }
            Err(err) => return Err(cluster_error(err)),
        };
        let index = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|()| read_handshake(&mut stream))
            .ok()
            .flatten();
        let slot = index
            .and_then(|i| i.checked_sub(me + 1))
            .and_then(|i| accepted.get_mut(i));
        match slot {
            Some(slot @ None) => {
                stream
                    .set_read_timeout(None)
                    .and_then(|()| stream.set_nodelay(true))
                    .map_err(cluster_error)?;
                *slot = Some(stream);
                missing -= 1;
            }
            _ => log::warn!("data address: dropped a connection from {from} (not a worker)"),
        }
    }
    Ok(accepted)
}

fn handshake(me: usize) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&MAGIC.to_le_bytes());
    bytes[8..].copy_from_slice(&(me as u64).to_le_bytes());
    bytes
}

/// The index a connection introduced itself with; None when it is not a worker.
fn read_handshake(stream: &mut TcpStream) -> std::io::Result<Option<usize>> {
    let mut bytes = [0u8; 16];
    stream.read_exact(&mut bytes)?;
    let (magic, index) = bytes.split_at(8);
    let magic = u64::from_le_bytes(magic.try_into().unwrap_or_default());
    let index = u64::from_le_bytes(index.try_into().unwrap_or_default());
    Ok((magic == MAGIC)
        .then(|| usize::try_from(index).ok())
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    }

    #[test]
    fn three_processes_connect_whatever_order_they_start_in() {
        let addresses: Vec<String> = (0..3).map(|_| free_address()).collect();
        let mut threads = Vec::new();
        for me in [2, 1, 0] {
            let addresses = addresses.clone();
            threads.push(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30 * (2 - me) as u64));
                connect(&addresses, me, Duration::from_secs(10)).map(|s| (me, s))
            }));
        }
        for thread in threads {
            let (me, sockets) = thread.join().expect("thread").expect("connect");
            assert_eq!(sockets.len(), 3);
            for (index, socket) in sockets.iter().enumerate() {
                assert_eq!(socket.is_none(), index == me);
            }
        }
    }

    #[test]
    fn a_stranger_is_dropped_and_the_worker_still_accepted() {
        let addresses: Vec<String> = (0..2).map(|_| free_address()).collect();
        let first = {
            let addresses = addresses.clone();
            std::thread::spawn(move || connect(&addresses, 0, Duration::from_secs(10)))
        };
        let stranger = loop {
            if let Ok(mut stream) = TcpStream::connect(&addresses[0]) {
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
                break stream;
            }
            std::thread::sleep(RETRY);
        };
        let second = connect(&addresses, 1, Duration::from_secs(10)).expect("second");
        let first = first.join().expect("thread").expect("first");
        assert!(first[1].is_some() && second[0].is_some());
        drop(stranger);
    }

    #[test]
    fn a_missing_worker_is_named_after_the_timeout() {
        let addresses: Vec<String> = (0..2).map(|_| free_address()).collect();
        let err = connect(&addresses, 0, Duration::from_millis(100)).expect_err("nobody came");
        assert!(err.to_string().contains(&addresses[1]), "{err}");
    }
}
