//! The metrics HTTP server: axum on a tokio runtime on its own thread.
//!
//! * `/metrics` -- every known worker's metrics in the Prometheus text format;
//! * `/status` -- JSON: the application, its pipelines and steps, the
//!   workers and the keys they hold, current rates, recent bad input;
//! * `/status/history` -- JSON: rates and latency percentiles, one point a
//!   second for the last [`HISTORY_POINTS`] seconds;
//! * `/` and `/static/...` -- the live web page (files of the
//!   `wallaroo/ui_static` package directory, read at start).
//!
//! The initializer (or a single process) serves the whole cluster: other
//! workers' snapshots arrive through the control channel
//! ([`super::report_peer`]). A worker may also serve its own view
//! (`everyone` false). The server never takes the GIL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::clock::unix_seconds;
use super::history::{History, Point};
use super::prometheus::exposition;
use super::registry::Registry;
use super::status::status;
use crate::sync::lock;

/// The page's files, read once when the server starts.
struct Assets {
    files: BTreeMap<String, Vec<u8>>,
}

const FALLBACK_PAGE: &str = "<!doctype html><title>wallaroo metrics</title>\
<p>The web page's files were not found; <a href=\"/metrics\">/metrics</a> and \
<a href=\"/status\">/status</a> work.</p>";

impl Assets {
    fn load(dir: Option<PathBuf>) -> Assets {
        let mut files = BTreeMap::new();
        if let Some(dir) = dir {
            match std::fs::read_dir(&dir) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                            continue;
                        };
                        if content_type(name).is_some() {
                            if let Ok(bytes) = std::fs::read(&path) {
                                files.insert(name.to_owned(), bytes);
                            }
                        }
                    }
                }
                Err(e) => log::warn!(
                    "metrics: cannot read the web page's files in {}: {e}",
                    dir.display()
                ),
            }
        }
        Assets { files }
    }
}

fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit('.').next()?;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    })
}

struct AppState {
    registry: &'static Registry,
    /// Shared with the ticker and the other servers.
    history: Arc<Mutex<History>>,
    everyone: bool,
    assets: Assets,
    /// Host names answered besides IP literals and localhost.
    allowed_hosts: Vec<String>,
    /// Show recent bad input's payload previews on /status.
    previews: bool,
}

impl AppState {
    /// The worker whose series a worker's own view shows (None: everyone's).
    fn only(&self) -> Option<String> {
        (!self.everyone).then(|| self.registry.worker_name())
    }
}

type Shared = State<Arc<AppState>>;

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn index(State(state): Shared) -> Response {
    match state.assets.files.get("index.html") {
        Some(page) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            page.clone(),
        )
            .into_response(),
        None => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            FALLBACK_PAGE,
        )
            .into_response(),
    }
}

async fn asset(State(state): Shared, Path(name): Path<String>) -> Response {
    match (state.assets.files.get(&name), content_type(&name)) {
        (Some(bytes), Some(kind)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes.clone(),
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn prometheus(State(state): Shared) -> Response {
    let registry = state.registry;
    let text = exposition(
        registry.known_workers(state.everyone),
        registry.cluster().len(),
    );
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

async fn status_json(State(state): Shared) -> Response {
    let point = lock(&state.history).latest(state.only().as_deref());
    let mut status = status(state.registry, &point, state.everyone);
    if !state.previews {
        for bad in &mut status.recent_bad_input {
            bad.payload.clear();
        }
        status.payload_previews = false;
    }
    json(&status)
}

/// Whether a request's `Host` names this server: an IP literal, localhost,
/// or a name it was told (a page of another site whose name was rebound to
/// this address -- DNS rebinding -- names that site). No `Host` (HTTP/1.0
/// clients) passes: browsers always send one.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    let name = name.trim_end_matches('.');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

async fn check_host(State(state): Shared, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{0}"));
    if host_allowed(host, &state.allowed_hosts) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers to its IP address, localhost or its own host name only\n",
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct Since {
    since: Option<f64>,
}

async fn history_json(State(state): Shared, Query(query): Query<Since>) -> Response {
    #[derive(Serialize)]
    struct Body {
        worker: String,
        points: Vec<Point>,
    }
    let since = query.since.unwrap_or(0.0);
    json(&Body {
        worker: state.registry.worker_name(),
        points: lock(&state.history).since(since, state.only().as_deref()),
    })
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/static/{name}", get(asset))
        .route("/metrics", get(prometheus))
        .route("/status", get(status_json))
        .route("/status/history", get(history_json))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state)
}

/// Connections served at once; more are closed as soon as they are
/// accepted, so the metrics page can never take the file descriptors the
/// data path needs.
const MAX_CONNECTIONS: usize = 64;
/// A request's headers must be in within this; it is also how long a
/// connection may sit idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this long (after its current request).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a closing connection may take to finish its current request.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// Accept and serve until `shutdown`: one task per connection, at most
/// [`MAX_CONNECTIONS`], each with a header timeout and a lifetime.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    bound: SocketAddr,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused = false;
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("metrics: accepting on {bound}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !refused {
                log::warn!(
                    "metrics: {MAX_CONNECTIONS} connections open on {bound}; closing new ones \
                     until some end"
                );
                refused = true;
            }
            drop(stream);
            continue;
        };
        refused = false;
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            if tokio::time::timeout(CONNECTION_LIFETIME, connection.as_mut())
                .await
                .is_err()
            {
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSING_GRACE, connection).await;
            }
            drop(slot);
        });
    }
}

struct Server {
    address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The thread that adds a point to the history every second.
struct Ticker {
    /// Dropped to stop the thread (it wakes at once).
    stop: crossbeam_channel::Sender<()>,
    thread: JoinHandle<()>,
    history: Arc<Mutex<History>>,
}

impl Ticker {
    fn start(registry: &'static Registry) -> std::io::Result<Ticker> {
        let history = Arc::new(Mutex::new(History::default()));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let kept = history.clone();
        let thread = std::thread::Builder::new()
            .name("metrics history".to_owned())
            .spawn(move || {
                let mut next = Instant::now();
                loop {
                    let workers = registry.known_workers(true);
                    lock(&kept).add(&workers, unix_seconds());
                    next += Duration::from_secs(1);
                    let wait = next.saturating_duration_since(Instant::now());
                    if stopped.recv_timeout(wait)
                        != Err(crossbeam_channel::RecvTimeoutError::Timeout)
                    {
                        return;
                    }
                }
            })?;
        Ok(Ticker {
            stop,
            thread,
            history,
        })
    }
}

/// The servers a registry runs and the history they share.
#[derive(Default)]
pub struct Servers {
    running: Vec<Server>,
    ticker: Option<Ticker>,
}

/// Serve on `address` (`host:port`, port 0 for any); returns the bound address.
/// `everyone`: show every worker that reports (the initializer); else this
/// worker only.
pub fn serve(
    registry: &'static Registry,
    address: &str,
    static_dir: Option<PathBuf>,
    everyone: bool,
    allowed_hosts: Vec<String>,
    previews: bool,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let mut servers = lock(&registry.servers);
    let history = match &servers.ticker {
        Some(ticker) => ticker.history.clone(),
        None => {
            let ticker = Ticker::start(registry)?;
            let history = ticker.history.clone();
            servers.ticker = Some(ticker);
            history
        }
    };
    let state = Arc::new(AppState {
        registry,
        history,
        everyone,
        assets: Assets::load(static_dir),
        allowed_hosts,
        previews,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("metrics http {bound}"))
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                accept_loop(listener, router(state), bound, signal).await;
                std::io::Result::Ok(())
            });
            if let Err(e) = served {
                log::error!("metrics: the HTTP server on {bound} stopped: {e}");
            }
        })?;
    servers.running.push(Server {
        address: bound,
        shutdown: Some(shutdown),
        thread: Some(thread),
    });
    Ok(bound)
}

/// Stop every server and the history (waits a moment for open connections).
pub fn stop_all(registry: &Registry) {
    let (running, ticker) = {
        let mut servers = lock(&registry.servers);
        (std::mem::take(&mut servers.running), servers.ticker.take())
    };
    for mut server in running {
        if let Some(shutdown) = server.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = server.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                log::debug!("metrics: {} still has open connections", server.address);
            }
        }
    }
    if let Some(ticker) = ticker {
        drop(ticker.stop);
        let _ = ticker.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_localhost_and_named_hosts_pass() {
        let named = vec!["metrics.internal".to_owned()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:9000",
            "[::1]:9000",
            "10.1.2.3",
            "localhost:80",
            "LOCALHOST",
            "app.localhost",
            "metrics.internal:9000",
            "metrics.internal.",
        ] {
            assert!(host_allowed(Some(host), &named), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9000",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!host_allowed(Some(host), &named), "{host}");
        }
        assert!(host_allowed(None, &named));
    }
}
