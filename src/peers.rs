//! The TCP connections between a cluster's processes, handed to timely.
//!
//! timely's own set-up retries a refused connection once a second, so a
//! worker that starts a moment before the process it connects to would lose
//! a second at every start and every generation. Here each process listens
//! on its data address, connects to every process with a lower index
//! (retrying every few milliseconds) and accepts the higher ones. Every
//! connection opens with a handshake that carries the run's token, which the
//! initializer hands out over the (secret-checked) control channel: a
//! connection without it is dropped, never taken for a peer, so nobody who
//! was not admitted to the cluster can feed records to a worker.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::errors::Error;

/// Opens every connection; distinct from timely's so a mismatched build or
/// a stray client is told apart.
const MAGIC: u64 = 0x5741_4c4c_4152_4f4f; // "WALLAROO"
/// How often a refused connection is tried again.
const RETRY: Duration = Duration::from_millis(10);
/// How long a new connection may take to send its whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes read at once; more connections are dropped at once.
const MAX_HANDSHAKES: usize = 64;

/// One connection per other process, by index (`None` at `me`), connected
/// within `timeout`; `token` is the run's.
pub fn connect(
    addresses: &[String],
    me: usize,
    token: u64,
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
        sockets.push(Some(dial(address, index, me, token, deadline)?));
    }
    sockets.push(None);
    sockets.extend(accept(&listener, addresses, me, token, deadline)?);
    Ok(sockets)
}

/// Connect to worker `index` at `address` and introduce ourselves as `me`.
fn dial(
    address: &str,
    index: usize,
    me: usize,
    token: u64,
    deadline: Instant,
) -> Result<TcpStream, Error> {
    loop {
        match TcpStream::connect(address) {
            Ok(mut stream) => {
                stream
                    .set_nodelay(true)
                    .and_then(|()| stream.write_all(&handshake(token, me)))
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

/// Accept the workers after `me`, each introduced by its handshake. Each
/// handshake is read on its own thread under [`HANDSHAKE_TIMEOUT`] in all,
/// so a stranger that sends slowly (or nothing) delays nobody and is dropped.
fn accept(
    listener: &TcpListener,
    addresses: &[String],
    me: usize,
    token: u64,
    deadline: Instant,
) -> Result<Vec<Option<TcpStream>>, Error> {
    let later = addresses.len() - me - 1;
    let mut accepted: Vec<Option<TcpStream>> = (0..later).map(|_| None).collect();
    let mut missing = later;
    let cluster_error = |e: std::io::Error| Error::Cluster(format!("data address: {e}"));
    listener.set_nonblocking(true).map_err(cluster_error)?;
    let (introduced, introductions) = crossbeam_channel::unbounded();
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while missing > 0 {
        match listener.accept() {
            Ok((stream, from)) => {
                if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= MAX_HANDSHAKES {
                    log::warn!("data address: dropped a connection from {from} (too many at once)");
                    continue;
                }
                in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (introduced, in_flight) = (introduced.clone(), in_flight.clone());
                let spawned = std::thread::Builder::new()
                    .name("data handshake".to_owned())
                    .spawn(move || {
                        let mut stream = stream;
                        let index = stream
                            .set_nonblocking(false)
                            .and_then(|()| read_handshake(&mut stream, token))
                            .ok()
                            .flatten();
                        in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = introduced.send((index, stream, from));
                    });
                if let Err(e) = spawned {
                    log::warn!("data address: dropped a connection from {from}: {e}");
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(cluster_error(err)),
        }
        while let Ok((index, stream, from)) = introductions.try_recv() {
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
        if missing == 0 {
            break;
        }
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
    }
    Ok(accepted)
}

/// Magic, token, index: three little-endian u64.
const HANDSHAKE_BYTES: usize = 24;

fn handshake(token: u64, me: usize) -> [u8; HANDSHAKE_BYTES] {
    let mut bytes = [0u8; HANDSHAKE_BYTES];
    for (chunk, word) in bytes.chunks_mut(8).zip([MAGIC, token, me as u64]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    bytes
}

/// The index a connection introduced itself with within
/// [`HANDSHAKE_TIMEOUT`] in all (however slowly it sends); None when it is
/// not a worker of this run.
fn read_handshake(stream: &mut TcpStream, token: u64) -> std::io::Result<Option<usize>> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut bytes = [0u8; HANDSHAKE_BYTES];
    let mut filled = 0;
    while filled < HANDSHAKE_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut bytes[filled..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut words = bytes
        .chunks(8)
        .map(|chunk| u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
    let (magic, theirs, index) = (words.next(), words.next(), words.next());
    if magic != Some(MAGIC) || theirs != Some(token) {
        return Ok(None);
    }
    Ok(index.and_then(|i| usize::try_from(i).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: u64 = 0x1234_5678_9abc_def0;

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
                connect(&addresses, me, TOKEN, Duration::from_secs(10)).map(|s| (me, s))
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
    fn strangers_are_dropped_and_the_worker_still_accepted() {
        let addresses: Vec<String> = (0..2).map(|_| free_address()).collect();
        let first = {
            let addresses = addresses.clone();
            std::thread::spawn(move || connect(&addresses, 0, TOKEN, Duration::from_secs(10)))
        };
        let stranger = |hello: &[u8]| loop {
            if let Ok(mut stream) = TcpStream::connect(&addresses[0]) {
                stream.write_all(hello).expect("write");
                break stream;
            }
            std::thread::sleep(RETRY);
        };
        // Not the protocol; then a worker's handshake with another run's token.
        let http = stranger(b"GET / HTTP/1.0\r\nHost: worker\r\n\r\n");
        let impostor = stranger(&handshake(TOKEN + 1, 1));
        let mut second = connect(&addresses, 1, TOKEN, Duration::from_secs(10)).expect("second");
        let mut first = first.join().expect("thread").expect("first");
        // The connection worker 0 kept is the real worker 1's.
        let ours = second[0].as_mut().expect("to worker 0");
        ours.write_all(b"hi").expect("write");
        let mut got = [0u8; 2];
        let theirs = first[1].as_mut().expect("from worker 1");
        theirs.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hi");
        drop((http, impostor));
    }

    #[test]
    fn dripping_strangers_do_not_hold_the_handshake() {
        let addresses: Vec<String> = (0..2).map(|_| free_address()).collect();
        let (done, result) = crossbeam_channel::bounded(1);
        {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                let _ = done.send(connect(&addresses, 0, TOKEN, Duration::from_secs(10)));
            });
        }
        // Three strangers send a byte of a handshake every 2 s (a whole one
        // would take 48 s) until the worker is connected.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drips: Vec<_> = (0..3)
            .map(|_| {
                let (address, stop) = (addresses[0].clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut stream = loop {
                        if let Ok(stream) = TcpStream::connect(&address) {
                            break stream;
                        }
                        std::thread::sleep(RETRY);
                    };
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && stream.write_all(&[0]).is_ok()
                    {
                        std::thread::sleep(Duration::from_secs(2));
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let second = connect(&addresses, 1, TOKEN, Duration::from_secs(10));
        let first = result.recv_timeout(Duration::from_secs(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for drip in drips {
            drip.join().expect("drip");
        }
        assert!(second.is_ok(), "{:?}", second.err());
        match first {
            Ok(Ok(sockets)) => assert!(sockets[1].is_some()),
            Ok(Err(e)) => panic!("worker 0 failed: {e}"),
            Err(_) => panic!("worker 0 still waits on the strangers"),
        }
    }

    #[test]
    fn a_missing_worker_is_named_after_the_timeout() {
        let addresses: Vec<String> = (0..2).map(|_| free_address()).collect();
        let err =
            connect(&addresses, 0, TOKEN, Duration::from_millis(100)).expect_err("nobody came");
        assert!(err.to_string().contains(&addresses[1]), "{err}");
    }
}
