//! The HTTP server under `bookrec collect`, `bookrec serve` and the stream's `/metrics`.
//!
//! `axum::serve` holds a connection as long as its client likes: a slow-loris client that
//! trickles its headers, a body that never ends, an HTTP/2 preface with no SETTINGS, or
//! simply thousands of idle sockets, until the process runs out of file descriptors. Here
//! every connection runs under bounds (`collect.http`, `serve.http`, see [`HttpConfig`]):
//!
//! - **headers** within `header_read_timeout_ms` of the connection's opening (whatever the
//!   protocol: an HTTP/2 preface without a request counts), and again between requests on a
//!   kept-alive HTTP/1.1 connection (hyper's header timer); at most `max_header_bytes` (431);
//! - **the body** whole within `body_read_timeout_ms` of the headers (408 `body_timeout`)
//!   and at most the route's byte limit (413), read before the handler runs;
//! - **idle**: a connection without a request in progress closes after `idle_timeout_ms`;
//! - **connections**: at most `max_connections`, lowered to the open-file limit minus a
//!   reserve; at the cap the oldest connection that has not sent a request yet is closed
//!   for the newcomer (an attacker's sockets make room for real clients), and when every
//!   connection is in use the newcomer gets a 503 and is closed; an accept error (EMFILE)
//!   is counted, logged and retried after a pause, never fatal;
//! - **requests**: at most `max_in_flight` handled at once, beyond it 503 `overloaded`
//!   with `Retry-After` (shed, not queued);
//! - **shutdown**: no new connections; requests in progress get `shutdown_timeout_ms`,
//!   then every connection is closed, whatever its client is doing.
//!
//! Each bound is counted in the server's `/metrics` (`<prefix>_http_*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::HttpConfig;

/// File descriptors kept for everything else the process opens (spool, Kafka, Redis, …).
const FD_RESERVE: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("listener {addr}: {source}")]
    Listener {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The connection and request counters of one server, registered as `<prefix>_http_*`.
pub struct HttpMetrics {
    pub open: IntGauge,
    pub accepted: IntCounter,
    /// connections closed by a bound: `evicted`, `refused`, `header_timeout`, `idle`,
    /// `shutdown`
    pub closed: IntCounterVec,
    /// requests answered by a bound: `overloaded`, `body_timeout`, `body_too_large`
    pub shed: IntCounterVec,
    pub accept_errors: IntCounter,
}

impl HttpMetrics {
    pub fn register(registry: &Registry, prefix: &str) -> Result<HttpMetrics, prometheus::Error> {
        let open = IntGauge::new(
            format!("{prefix}_http_connections_open"),
            "HTTP connections open now",
        )?;
        let accepted = IntCounter::new(
            format!("{prefix}_http_connections_accepted_total"),
            "HTTP connections accepted",
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_http_connections_closed_total"),
                "HTTP connections closed by a limit, by reason",
            ),
            &["reason"],
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_http_requests_shed_total"),
                "HTTP requests answered by a limit instead of the handler, by reason",
            ),
            &["reason"],
        )?;
        let accept_errors = IntCounter::new(
            format!("{prefix}_http_accept_errors_total"),
            "Failed accepts (e.g. out of file descriptors)",
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(accept_errors.clone()))?;
        Ok(HttpMetrics {
            open,
            accepted,
            closed,
            shed,
            accept_errors,
        })
    }
}

/// The connection cap actually used: `configured`, lowered to what the open-file limit
/// leaves after [`FD_RESERVE`].
pub fn effective_max_connections(configured: usize) -> usize {
    match rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        Some(limit) => configured.min(limit.saturating_sub(FD_RESERVE).max(1) as usize),
        None => configured,
    }
}

/// What the request guard needs.
#[derive(Clone)]
struct Guard {
    permits: Arc<Semaphore>,
    body_timeout: Duration,
    max_body_bytes: usize,
    metrics: Arc<HttpMetrics>,
}

fn limit_response(status: StatusCode, code: &str, message: String, retry: bool) -> Response {
    let mut resp = (
        status,
        axum::Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response();
    if retry {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// A response after which the connection closes: the request's body was not read to its
/// end, so the connection cannot carry another request (a client that reused it would
/// write into a closed socket).
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Sheds requests beyond `max_in_flight` and reads the body whole, within its deadline and
/// size, before the handler runs.
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let Ok(_permit) = g.permits.clone().try_acquire_owned() else {
        g.metrics.shed.with_label_values(&["overloaded"]).inc();
        return limit_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry shortly".into(),
            true,
        );
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > g.max_body_bytes as u64) {
        // refused before a byte of it is read
        g.metrics.shed.with_label_values(&["body_too_large"]).inc();
        return closing(limit_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is {n} bytes, the limit is {} bytes",
                g.max_body_bytes
            ),
            false,
        ));
    }
    let read = axum::body::to_bytes(body, g.max_body_bytes);
    let bytes = match tokio::time::timeout(g.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                g.metrics.shed.with_label_values(&["body_too_large"]).inc();
                return closing(limit_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body exceeds {} bytes", g.max_body_bytes),
                    false,
                ));
            }
            return limit_response(
                StatusCode::BAD_REQUEST,
                "body_read_failed",
                format!("reading the body failed: {e}"),
                false,
            );
        }
        Err(_) => {
            g.metrics.shed.with_label_values(&["body_timeout"]).inc();
            return closing(limit_response(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} ms",
                    g.body_timeout.as_millis()
                ),
                false,
            ));
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// One open connection, as the accept loop sees it.
struct Conn {
    opened: Instant,
    /// set once a request's headers arrived
    proven: Arc<AtomicBool>,
    kill: CancellationToken,
}

#[derive(Default)]
struct Conns {
    next_id: u64,
    open: BTreeMap<u64, Conn>,
}

impl Conns {
    /// Closes the oldest connection that has not sent a request yet; false when there is none.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .open
            .iter()
            .filter(|(_, c)| !c.proven.load(Ordering::SeqCst))
            .min_by_key(|(_, c)| c.opened)
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                c.kill.cancel();
                true
            }
            None => false,
        }
    }
}

fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `router` on `listener` under `cfg`'s bounds until `shutdown`, then closes every
/// connection within `cfg.shutdown_timeout_ms`. `max_body_bytes` bounds every request body.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: &HttpConfig,
    max_body_bytes: usize,
    metrics: Arc<HttpMetrics>,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .map_err(|source| HttpError::Listener {
            addr: "?".into(),
            source,
        })?;
    let max_connections = effective_max_connections(cfg.max_connections);
    if max_connections < cfg.max_connections {
        tracing::info!(%addr, configured = cfg.max_connections, max_connections,
            "connection cap lowered to fit the open-file limit (ulimit -n)");
    }
    let router = router.layer(middleware::from_fn_with_state(
        Guard {
            permits: Arc::new(Semaphore::new(cfg.max_in_flight)),
            body_timeout: Duration::from_millis(cfg.body_read_timeout_ms),
            max_body_bytes,
            metrics: metrics.clone(),
        },
        guard,
    ));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_read_timeout_ms))
        .max_buf_size(cfg.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_millis(cfg.idle_timeout_ms))
        .keep_alive_timeout(Duration::from_millis(cfg.header_read_timeout_ms));
    let builder = Arc::new(builder);
    let conns = Arc::new(Mutex::new(Conns::default()));
    let tracker = TaskTracker::new();
    let limits = ConnLimits {
        header: Duration::from_millis(cfg.header_read_timeout_ms),
        idle: Duration::from_millis(cfg.idle_timeout_ms),
        shutdown: Duration::from_millis(cfg.shutdown_timeout_ms),
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE and friends: make room, pause, go on
                metrics.accept_errors.inc();
                let evicted = lock(&conns).evict_one();
                if evicted {
                    metrics.closed.with_label_values(&["evicted"]).inc();
                }
                tracing::warn!(%addr, error = %e, evicted, "accept failed; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        metrics.accepted.inc();
        let entry = {
            let mut c = lock(&conns);
            let mut evicted = false;
            if c.open.len() >= max_connections {
                evicted = c.evict_one();
            }
            if c.open.len() < max_connections {
                let id = c.next_id;
                c.next_id += 1;
                let proven = Arc::new(AtomicBool::new(false));
                let kill = CancellationToken::new();
                c.open.insert(
                    id,
                    Conn {
                        opened: Instant::now(),
                        proven: proven.clone(),
                        kill: kill.clone(),
                    },
                );
                Some((id, proven, kill, evicted))
            } else {
                None
            }
        };
        let Some((id, proven, kill, evicted)) = entry else {
            metrics.closed.with_label_values(&["refused"]).inc();
            tracker.spawn(refuse(stream));
            continue;
        };
        if evicted {
            metrics.closed.with_label_values(&["evicted"]).inc();
        }
        metrics.open.inc();
        let task = ConnTask {
            builder: builder.clone(),
            router: router.clone(),
            limits,
            proven,
            kill,
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        };
        let (conns, metrics) = (conns.clone(), metrics.clone());
        tracker.spawn(async move {
            task.run(stream, peer).await;
            lock(&conns).open.remove(&id);
            metrics.open.dec();
        });
    }
    drop(listener);
    tracker.close();
    // each connection closes itself within the shutdown timeout; this bound is a backstop
    if tokio::time::timeout(limits.shutdown + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(%addr, "connections still open after the shutdown timeout");
    }
    Ok(())
}

/// The answer to a connection beyond the cap when no connection can make room.
async fn refuse(mut stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
        content-type: application/json\r\ncontent-length: 64\r\nconnection: close\r\n\r\n\
        {\"code\":\"overloaded\",\"message\":\"too many connections; retry\"}  ";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

#[derive(Clone, Copy)]
struct ConnLimits {
    header: Duration,
    idle: Duration,
    shutdown: Duration,
}

struct ConnTask {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    limits: ConnLimits,
    proven: Arc<AtomicBool>,
    kill: CancellationToken,
    shutdown: CancellationToken,
    metrics: Arc<HttpMetrics>,
}

/// Decrements the connection's in-progress count when a request ends (or is dropped).
struct Active {
    count: Arc<AtomicUsize>,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnTask {
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let epoch = Instant::now();
        let active = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(AtomicU64::new(0));
        let service = {
            let (router, proven) = (self.router.clone(), self.proven.clone());
            let (active, last) = (active.clone(), last.clone());
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                proven.store(true, Ordering::SeqCst);
                active.fetch_add(1, Ordering::SeqCst);
                let guard = Active {
                    count: active.clone(),
                    last: last.clone(),
                    epoch,
                };
                let svc = hyper_util::service::TowerToHyperService::new(router.clone());
                async move {
                    let r = hyper::service::Service::call(&svc, req).await;
                    drop(guard);
                    r
                }
            })
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut draining: Option<Instant> = None;
        let reason = loop {
            let now = Instant::now();
            let wake = if let Some(deadline) = draining {
                deadline
            } else if !self.proven.load(Ordering::SeqCst) {
                epoch + self.limits.header
            } else if active.load(Ordering::SeqCst) == 0 {
                epoch + Duration::from_millis(last.load(Ordering::SeqCst)) + self.limits.idle
            } else {
                now + self.limits.idle
            };
            tokio::select! {
                r = conn.as_mut() => {
                    let Err(e) = r else { break None };
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    // hyper's own header timer: before the first request, or between
                    // requests on a kept-alive HTTP/1.1 connection (idle)
                    let timed_out = e
                        .downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_timeout);
                    if !timed_out {
                        break None;
                    }
                    break Some(if self.proven.load(Ordering::SeqCst) {
                        "idle"
                    } else {
                        "header_timeout"
                    });
                }
                _ = self.kill.cancelled() => break Some("evicted_closed"),
                _ = self.shutdown.cancelled(), if draining.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    draining = Some(Instant::now() + self.limits.shutdown);
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if draining.is_some() {
                        break Some("shutdown");
                    }
                    if !self.proven.load(Ordering::SeqCst) {
                        break Some("header_timeout");
                    }
                    let idle_since =
                        epoch + Duration::from_millis(last.load(Ordering::SeqCst));
                    if active.load(Ordering::SeqCst) == 0
                        && idle_since.elapsed() >= self.limits.idle
                    {
                        conn.as_mut().graceful_shutdown();
                        // a response still being written gets the shutdown bound
                        draining = Some(Instant::now() + self.limits.shutdown);
                        self.metrics.closed.with_label_values(&["idle"]).inc();
                    }
                }
            }
        };
        // evictions are counted by the accept loop
        if let Some(reason) = reason.filter(|r| *r != "evicted_closed") {
            self.metrics.closed.with_label_values(&[reason]).inc();
        }
    }
}

/// Liveness and readiness of a background process (`land`, `stream`, `schedule`), served by
/// its ops listener ([`spawn_ops`]) as `/readyz`. A check is either a heartbeat (the loop
/// that must keep turning says so at least every `max_age`) or a dependency that reports
/// its last failure until it works again; ready = every check fine.
#[derive(Default)]
pub struct Health {
    checks: Mutex<BTreeMap<&'static str, Check>>,
}

struct Check {
    /// for a heartbeat: the longest silence that is still fine
    max_age: Option<Duration>,
    last_ok: Instant,
    problem: Option<String>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    fn with(&self, name: &'static str, f: impl FnOnce(&mut Check)) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let check = checks.entry(name).or_insert_with(|| Check {
            max_age: None,
            last_ok: Instant::now(),
            problem: None,
        });
        f(check);
    }

    /// Declares the heartbeat `name`: not ready when [`Health::ok`] has not been called for
    /// `max_age`.
    pub fn heartbeat(&self, name: &'static str, max_age: Duration) {
        self.with(name, |c| c.max_age = Some(max_age));
    }

    /// `name` works (a heartbeat beats; a failing dependency recovered).
    pub fn ok(&self, name: &'static str) {
        self.with(name, |c| {
            c.last_ok = Instant::now();
            c.problem = None;
        });
    }

    /// `name` failed: not ready, with `problem` shown, until [`Health::ok`].
    pub fn fail(&self, name: &'static str, problem: impl std::fmt::Display) {
        let problem = problem.to_string();
        self.with(name, |c| c.problem = Some(problem));
    }

    /// Whether every check is fine, and each check's state.
    pub fn report(&self) -> (bool, BTreeMap<&'static str, String>) {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready = true;
        let mut out = BTreeMap::new();
        for (name, c) in checks.iter() {
            let silent = c.last_ok.elapsed();
            let state = if let Some(p) = &c.problem {
                format!("failing: {p}")
            } else if c.max_age.is_some_and(|m| silent > m) {
                format!("stalled: no progress for {} s", silent.as_secs())
            } else {
                "ok".to_string()
            };
            ready &= state == "ok";
            out.insert(*name, state);
        }
        (ready, out)
    }
}

/// `/metrics`, `/healthz` (the process answers) and `/readyz` (200 when every check of
/// `health` is fine, else 503; JSON `{"status", "checks"}`) of a background process.
pub fn ops_router(registry: Registry, health: Arc<Health>) -> Router {
    use axum::routing::get;
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut buf = Vec::new();
                    let encoder = prometheus::TextEncoder::new();
                    match prometheus::Encoder::encode(&encoder, &registry.gather(), &mut buf) {
                        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf)
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move { readyz_response(&health) }
            }),
        )
}

/// `/readyz`'s answer: 200 when every check of `health` is fine, else 503; JSON
/// `{"status", "checks"}` (each check's problem, or "ok").
pub fn readyz_response(health: &Health) -> axum::response::Response {
    let (ready, checks) = health.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "checks": checks,
    });
    (status, axum::Json(body)).into_response()
}

/// Binds `listen` (the config key `key` names it in errors) and serves [`ops_router`] under
/// `cfg`'s bounds until `shutdown`, its own HTTP counters registered as `<prefix>_http_*`.
/// An empty `listen` serves nothing.
pub async fn spawn_ops(
    key: &str,
    listen: &str,
    prefix: &str,
    registry: Registry,
    health: Arc<Health>,
    cfg: &HttpConfig,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    if listen.is_empty() {
        return Ok(());
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| HttpError::Listener {
            addr: format!("{key} {listen}"),
            source,
        })?;
    let metrics = Arc::new(HttpMetrics::register(&registry, prefix)?);
    let app = ops_router(registry, health);
    let cfg = cfg.clone();
    let key = key.to_string();
    tokio::spawn(async move {
        // a handful of scrapers and probes: a small body limit, the configured bounds
        if let Err(e) = serve(listener, app, &cfg, 1024, metrics, shutdown).await {
            tracing::error!(error = %e, key, "ops listener stopped");
        }
    });
    Ok(())
}
