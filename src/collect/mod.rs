//! `bookrec collect`: the HTTP event collector.
//!
//! `POST /api/log` (one event, the seed front end's endpoint) and `POST /api/logs` (a JSON
//! array or NDJSON) validate and stamp events, append valid ones — and dead letters for the
//! invalid ones — to the durable [`spool`], and answer 202 with a per-event verdict. The
//! forwarder sends the spool to Kafka in order (keyed by user, so one user's events keep
//! their order). See the module docs of [`spool`] for the durability argument.

pub mod metrics;
pub mod spool;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use uuid::Uuid;

use crate::bus::{self, BusError, Delivered, Producer};
use crate::config::{CollectConfig, Config};
use crate::event::dedup::Dedup;
use crate::event::{self, ErrorCode, Event, EventError, Limits};
use metrics::Metrics;
use spool::{Record, Spool, SpoolError, SpoolReader, Spooled, Topic};

/// The front-end snippet served at `/tracker.js`.
pub const TRACKER_JS: &str = include_str!("tracker.js");

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("serving HTTP: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// An HTTP error with a stable `code`. 5xx bodies say little; the log says all.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Per-event verdict of a rejected event.
#[derive(Debug, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct IntakeResponse {
    /// Events stored (including duplicates of events stored before).
    pub accepted: usize,
    /// Of `accepted`, how many were already seen (same `event_id`) and not stored again.
    pub duplicates: usize,
    pub rejected: Vec<Rejection>,
}

const KAFKA_UNKNOWN: u8 = 0;
const KAFKA_UP: u8 = 1;
const KAFKA_DOWN: u8 = 2;

struct AppState {
    cfg: CollectConfig,
    limits: Limits,
    spool: Spool,
    dedup: Dedup,
    metrics: Arc<Metrics>,
    kafka: Arc<AtomicU8>,
    forwarder: Arc<ForwarderHealth>,
}

/// Whether the forwarder runs cleanly, and its last failure (for `/readyz`).
#[derive(Default)]
struct ForwarderHealth {
    failing: std::sync::atomic::AtomicBool,
    last_error: std::sync::Mutex<String>,
}

impl ForwarderHealth {
    fn failed(&self, error: String) {
        self.failing.store(true, Ordering::SeqCst);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    fn recovered(&self, metrics: &Metrics) {
        if self.failing.swap(false, Ordering::SeqCst) {
            metrics.forwarder_up.set(1);
            tracing::info!("forwarder: delivering again");
        }
    }

    fn describe(&self) -> String {
        if self.failing.load(Ordering::SeqCst) {
            format!(
                "retrying: {}",
                self.last_error.lock().unwrap_or_else(|p| p.into_inner())
            )
        } else {
            "ok".into()
        }
    }
}

/// Runs the collector on `listener` until `cancel` fires, then drains: stops intake, sends
/// what the spool holds to Kafka (up to `collect.shutdown_timeout_ms`), checkpoints, returns.
pub async fn run(
    config: &Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> Result<(), CollectError> {
    let cfg = config.collect.clone();
    let (spool, writer, reader) = Spool::open(&cfg.spool)?;
    let metrics = Arc::new(Metrics::new()?);
    let bus = bus::Bus::connect(&config.kafka);
    let producer: Arc<dyn Producer> = bus.producer(cfg.spool.max_in_flight)?;
    let kafka = Arc::new(AtomicU8::new(KAFKA_UNKNOWN));
    let background = CancellationToken::new();

    let topics_ready = CancellationToken::new();
    tokio::spawn(ensure_topics_loop(
        bus.clone(),
        config.kafka.clone(),
        topics_ready.clone(),
        background.clone(),
    ));
    tokio::spawn(probe_loop(
        producer.clone(),
        kafka.clone(),
        metrics.clone(),
        background.clone(),
    ));
    let forwarder_stop = CancellationToken::new();
    let health = Arc::new(ForwarderHealth::default());
    metrics.forwarder_up.set(1);
    let forwarder = tokio::spawn(supervise_forwarder(
        Forwarder {
            spool: spool.clone(),
            producer: producer.clone(),
            topics: [config.kafka.topic.clone(), config.kafka.dlq_topic.clone()],
            metrics: metrics.clone(),
            max_in_flight: cfg.spool.max_in_flight,
            health: health.clone(),
        },
        reader,
        topics_ready,
        forwarder_stop.clone(),
    ));

    let state = Arc::new(AppState {
        limits: Limits {
            max_event_bytes: cfg.max_event_bytes,
            max_event_age_secs: cfg.max_event_age_secs,
        },
        dedup: Dedup::new(
            Duration::from_secs(cfg.dedup_window_secs),
            cfg.dedup_max_entries,
        )
        .with_client_quota(cfg.dedup_max_per_client),
        cfg: cfg.clone(),
        spool: spool.clone(),
        metrics: metrics.clone(),
        kafka,
        forwarder: health,
    });
    let app = router(state);
    let addr = listener.local_addr().map_err(CollectError::Serve)?;
    tracing::info!(%addr, brokers = %bus.describe(), topic = %config.kafka.topic,
        spool = %cfg.spool.dir.display(), "collector listening");
    let http_metrics = Arc::new(crate::http::HttpMetrics::register(
        metrics.registry(),
        "bookrec_collect",
    )?);
    crate::http::serve(
        listener,
        app,
        &cfg.http,
        cfg.max_batch_bytes,
        http_metrics,
        cancel,
    )
    .await?;

    // Intake has stopped: give the forwarder time to empty the spool.
    let deadline = Instant::now() + Duration::from_millis(cfg.shutdown_timeout_ms);
    let durable = *spool.durable().borrow();
    while spool.state().acked_seq.load(Ordering::SeqCst) < durable && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = spool.state().depth_records.load(Ordering::SeqCst);
    if left > 0 {
        tracing::warn!(
            records = left,
            "shutting down with records still in the spool; they are sent on the next start"
        );
    }
    forwarder_stop.cancel();
    background.cancel();
    if forwarder.await.is_err() {
        tracing::error!("the forwarder's supervisor ended abnormally");
    }
    writer.close()?;
    tracing::info!("collector stopped");
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    let cors = cors_layer(&state.cfg.cors_allowed_origins);
    let mut app = Router::new()
        .route("/api/log", post(post_log))
        .route("/api/logs", post(post_logs))
        .route("/tracker.js", get(tracker_js))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn tracker_js() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        TRACKER_JS,
    )
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let kafka = match state.kafka.load(Ordering::SeqCst) {
        KAFKA_UP => "up",
        KAFKA_DOWN => "down",
        _ => "unknown",
    };
    let s = state.spool.state();
    let full = state.spool.would_overflow(state.cfg.max_event_bytes as u64);
    let spool = if s.failed.load(Ordering::SeqCst) {
        "stopped".to_string()
    } else if s.unavailable.load(Ordering::SeqCst) {
        format!("unavailable: {}", s.last_error())
    } else if full {
        "full".to_string()
    } else {
        "ok".to_string()
    };
    let spool_ok = spool == "ok";
    // a failing forwarder does not stop intake (the spool holds the events), so it is
    // reported here without making the collector unready
    let body = json!({
        "ready": spool_ok,
        "kafka": kafka,
        "spool": spool,
        "forwarder": state.forwarder.describe(),
        "spool_depth_records": s.depth_records.load(Ordering::SeqCst),
        "spool_depth_bytes": s.depth_bytes.load(Ordering::SeqCst),
        "spool_quarantined": s.quarantined.load(Ordering::SeqCst),
    });
    let status = if spool_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let s = state.spool.state();
    let m = &state.metrics;
    m.spool_depth_records
        .set(s.depth_records.load(Ordering::SeqCst) as i64);
    m.spool_depth_bytes
        .set(s.depth_bytes.load(Ordering::SeqCst) as i64);
    m.spool_writable
        .set(i64::from(!s.unavailable.load(Ordering::SeqCst)));
    metrics::sync_counter(&m.spool_write_errors, s.write_errors.load(Ordering::SeqCst));
    metrics::sync_counter(&m.spool_quarantined, s.quarantined.load(Ordering::SeqCst));
    metrics::sync_counter(&m.spool_lost_records, s.lost_records.load(Ordering::SeqCst));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
}

/// What the body's content type says about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`: an object, or (batch endpoint) an array.
    Json,
    /// NDJSON/JSON Lines, or `text/plain` (what `navigator.sendBeacon` sends for a string,
    /// without a CORS preflight): one object per line, or a JSON array.
    Lines,
}

fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let unsupported = |what: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {what} is not accepted; use application/json, \
                 application/x-ndjson or text/plain"
            ),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("(missing)"));
    };
    let text = value.to_str().map_err(|_| unsupported("(not ASCII)"))?;
    let mime = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(BodyKind::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines"
        | "text/plain" => Ok(BodyKind::Lines),
        _ => Err(unsupported(&format!("{text:?}"))),
    }
}

/// The request body, which `crate::http` has already read whole, within
/// `collect.max_batch_bytes` (413 beyond, checked on `Content-Length` first) and
/// `collect.http.body_read_timeout_ms`.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_read_failed",
            format!("reading the body failed: {e}"),
        )
    })
}

/// One item of a request: its position and raw text.
pub struct Item<'a> {
    pub index: usize,
    pub raw: &'a [u8],
}

/// Splits a batch body into raw event texts: a JSON array, or one JSON value per line.
pub fn split_batch(body: &[u8], kind: BodyKind) -> Result<Vec<Item<'_>>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_batch",
            "the body holds no events",
        )),
        Some(b'[') => {
            let text = std::str::from_utf8(body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("the body is not UTF-8 (byte {})", e.valid_up_to()),
                )
            })?;
            let items: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(text).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_json",
                        format!("the body is not a JSON array of events: {e}"),
                    )
                })?;
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(index, raw)| Item {
                    index,
                    raw: raw.get().as_bytes(),
                })
                .collect())
        }
        Some(b'{') if kind == BodyKind::Json => Ok(vec![Item {
            index: 0,
            raw: trim_ascii(body),
        }]),
        Some(_) => Ok(body
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(index, line)| Item {
                index,
                raw: trim_ascii(line),
            })
            .filter(|item| !item.raw.is_empty())
            .collect()),
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// The dead-letter record for a rejected item.
fn dead_letter(
    endpoint: &str,
    index: usize,
    error: &EventError,
    raw: &[u8],
    received_at: &chrono::DateTime<Utc>,
    max_raw: usize,
) -> Record {
    let (kept, truncated) = within_escaped(raw, max_raw);
    let value = json!({
        "code": error.code.as_str(),
        "field": error.field,
        "message": error.message,
        "endpoint": endpoint,
        "index": index,
        "received_at": event::format_ts(received_at),
        "raw": kept,
        "raw_bytes": raw.len(),
        "raw_truncated": truncated,
    });
    Record {
        topic: Topic::DeadLetter,
        key: Vec::new(),
        value: value.to_string().into_bytes(),
    }
}

/// The longest prefix of `raw` (as text, invalid UTF-8 replaced) whose JSON-escaped form
/// takes at most `max` bytes, and whether it was cut: a body of control characters or
/// quotes (6 or 2 bytes each once escaped) cannot make a dead letter larger than the limit.
fn within_escaped(raw: &[u8], max: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(raw);
    let mut used = 0usize;
    for (i, c) in text.char_indices() {
        let cost = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if used + cost > max {
            return (text[..i].to_string(), true);
        }
        used += cost;
    }
    (text.into_owned(), false)
}

/// Validates, dedups and spools a request's items; the verdict per item.
async fn intake(
    state: &AppState,
    endpoint: &str,
    items: &[Item<'_>],
) -> Result<IntakeResponse, ApiError> {
    let received_at = Utc::now();
    let mut records = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    let mut events: Vec<Event> = Vec::with_capacity(items.len());
    let mut origins = Vec::with_capacity(items.len());
    for item in items {
        match event::validate_bytes_origin(item.raw, received_at, &state.limits) {
            Ok((ev, origin)) => {
                events.push(ev);
                origins.push(origin);
            }
            Err(err) => {
                records.push(dead_letter(
                    endpoint,
                    item.index,
                    &err,
                    item.raw,
                    &received_at,
                    state.cfg.max_event_bytes,
                ));
                state
                    .metrics
                    .rejected
                    .with_label_values(&[err.code.as_str()])
                    .inc();
                rejected.push(Rejection {
                    index: item.index,
                    code: err.code.as_str(),
                    message: err.message,
                });
            }
        }
    }
    // only ids a client chose are remembered (a server-assigned id cannot come again), each
    // under its client's key, so one client cannot flush the others' ids
    let mut fresh = vec![true; events.len()];
    let client_ids: Vec<(usize, (Uuid, &str))> = events
        .iter()
        .zip(&origins)
        .enumerate()
        .filter(|(_, (_, o))| **o == event::IdOrigin::Client)
        .map(|(i, (e, _))| (i, (e.event_id, e.key())))
        .collect();
    let verdicts = state.dedup.insert_new_for(
        &client_ids.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        Instant::now(),
    );
    for ((i, _), v) in client_ids.iter().zip(verdicts) {
        fresh[*i] = v;
    }
    let mut new_ids = Vec::new();
    let mut duplicates = 0;
    for (ev, is_new) in events.iter().zip(&fresh) {
        if *is_new {
            new_ids.push(ev.event_id);
            records.push(Record {
                topic: Topic::Events,
                key: ev.key().as_bytes().to_vec(),
                value: ev.to_json(),
            });
        } else {
            duplicates += 1;
        }
    }
    let n_records = records.len() as u64;
    if !records.is_empty()
        && let Err(e) = state.spool.append(records).await
    {
        state.dedup.forget(&new_ids);
        return Err(match e {
            SpoolError::Full { .. } => {
                state.metrics.spool_full.inc();
                ApiError {
                    retry_after_secs: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "spool_full",
                        "the collector cannot take more events right now; retry later",
                    )
                }
            }
            SpoolError::Unavailable { .. } => {
                state.metrics.spool_unavailable.inc();
                ApiError {
                    retry_after_secs: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "spool_unavailable",
                        "the collector cannot store events right now; retry later",
                    )
                }
            }
            other => {
                tracing::error!(error = %other, "spool append failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the event could not be stored",
                )
            }
        });
    }
    state.metrics.spooled.inc_by(n_records);
    state.metrics.accepted.inc_by(events.len() as u64);
    state.metrics.duplicates.inc_by(duplicates);
    Ok(IntakeResponse {
        accepted: events.len(),
        duplicates: duplicates as usize,
        rejected,
    })
}

/// Who may write. A request with an `Origin` (a browser) must come from one of
/// `collect.cors_allowed_origins` — checked on every request, including `text/plain`
/// beacons that skip the CORS preflight — else 403 `forbidden_origin`. A request without
/// one (a server-side sender) must carry one of `collect.write_keys` as `X-Write-Key` when
/// any are configured, else 401 `unauthorized`. Browser writes stay unauthenticated on
/// purpose: the page cannot keep a secret.
fn admit(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let allowed = &state.cfg.cors_allowed_origins;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = allowed
            .iter()
            .any(|a| a == "*" || a.as_bytes() == origin.as_bytes());
        if !ok {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "origin {:?} is not in collect.cors_allowed_origins",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
        return Ok(());
    }
    let keys = &state.cfg.write_keys;
    if keys.is_empty() {
        return Ok(());
    }
    let given = headers
        .get("x-write-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let ok = crate::config::is_one_of(given, keys.values());
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a server-side sender needs one of collect.write_keys in X-Write-Key",
        ))
    }
}

async fn post_log(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admit(&state, &headers)?;
    body_kind(&headers)?;
    let bytes = read_body(body).await?;
    let raw = trim_ascii(&bytes);
    if raw.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the body holds no event",
        ));
    }
    let items = [Item { index: 0, raw }];
    let verdict = intake(&state, "/api/log", &items).await?;
    let status = if verdict.rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, axum::Json(verdict)).into_response())
}

async fn post_logs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    admit(&state, &headers)?;
    let kind = body_kind(&headers)?;
    let bytes = read_body(body).await?;
    let items = match split_batch(&bytes, kind) {
        Ok(items) => items,
        Err(err) => {
            if err.code == "invalid_json" {
                // Keep the evidence: the unparseable body goes to the dead-letter topic.
                let e = EventError::new(ErrorCode::InvalidJson, None, err.message.clone());
                let dlq = dead_letter(
                    "/api/logs",
                    0,
                    &e,
                    &bytes,
                    &Utc::now(),
                    state.cfg.max_event_bytes,
                );
                state
                    .metrics
                    .rejected
                    .with_label_values(&[ErrorCode::InvalidJson.as_str()])
                    .inc();
                if let Err(spool_err) = state.spool.append(vec![dlq]).await {
                    tracing::warn!(error = %spool_err, "could not dead-letter an invalid body");
                }
            }
            return Err(err);
        }
    };
    if items.len() > state.cfg.max_batch_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!(
                "the batch holds {} events, the limit is {}",
                items.len(),
                state.cfg.max_batch_events
            ),
        ));
    }
    if items.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_batch",
            "the batch holds no events",
        ));
    }
    let verdict = intake(&state, "/api/logs", &items).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(verdict)).into_response())
}

/// Creates the topics, retrying with backoff until it works or the collector stops.
async fn ensure_topics_loop(
    bus: bus::Bus,
    cfg: crate::config::KafkaConfig,
    ready: CancellationToken,
    stop: CancellationToken,
) {
    if !cfg.create_topics {
        ready.cancel();
        return;
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        match bus.ensure_topics(&[&cfg.topic, &cfg.dlq_topic]).await {
            Ok(()) => {
                ready.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                "creating topics"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Keeps the Kafka reachability flag (for `/readyz` and `/metrics`) fresh.
async fn probe_loop(
    producer: Arc<dyn Producer>,
    flag: Arc<AtomicU8>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let up = producer.reachable(Duration::from_secs(2)).await;
        flag.store(if up { KAFKA_UP } else { KAFKA_DOWN }, Ordering::SeqCst);
        metrics.kafka_up.set(i64::from(up));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(if up { 5 } else { 1 })) => {}
        }
    }
}

#[derive(Clone)]
struct Forwarder {
    spool: Spool,
    producer: Arc<dyn Producer>,
    topics: [String; 2],
    metrics: Arc<Metrics>,
    max_in_flight: usize,
    health: Arc<ForwarderHealth>,
}

struct InFlight {
    seq: u64,
    bytes: u64,
    written_ms: u64,
    topic: Topic,
    result: Result<Delivered, BusError>,
}

type InFlightQueue = FuturesOrdered<futures::future::BoxFuture<'static, InFlight>>;

impl Forwarder {
    /// Handles one completion in order. Returns the sequence number to resend from when
    /// Kafka refused a record.
    fn complete(&self, done: InFlight) -> Option<u64> {
        match done.result {
            Ok(_) => {
                self.spool.ack(done.seq, 1, done.bytes);
                self.health.recovered(&self.metrics);
                let label = if done.topic == Topic::Events {
                    "events"
                } else {
                    "dlq"
                };
                self.metrics.delivered.with_label_values(&[label]).inc();
                let now_ms = Utc::now().timestamp_millis().max(0) as u64;
                self.metrics
                    .produce_latency
                    .observe(now_ms.saturating_sub(done.written_ms) as f64 / 1000.0);
                None
            }
            Err(e) => {
                self.metrics.delivery_errors.inc();
                tracing::warn!(seq = done.seq, error = %e, "delivery failed; resending from the spool");
                Some(done.seq)
            }
        }
    }

    fn send(
        &self,
        frame: &Spooled,
    ) -> Result<futures::future::BoxFuture<'static, InFlight>, BusError> {
        let topic = &self.topics[frame.record.topic as usize];
        let fut = self
            .producer
            .send(topic, &frame.record.key, &frame.record.value)?;
        let (seq, bytes, written_ms, kind) = (
            frame.seq,
            frame.frame_bytes,
            frame.written_ms,
            frame.record.topic,
        );
        Ok(Box::pin(async move {
            InFlight {
                seq,
                bytes,
                written_ms,
                topic: kind,
                result: fut.await,
            }
        }))
    }
}

/// Runs the forwarder until `stop`, restarting it (with a new reader at the first
/// unconfirmed record, after a backoff) whenever it fails or panics: it never stays dead.
/// Each failure is logged, counted and shown in `/readyz` until a delivery succeeds.
async fn supervise_forwarder(
    f: Forwarder,
    reader: SpoolReader,
    topics_ready: CancellationToken,
    stop: CancellationToken,
) {
    let mut reader = Some(reader);
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let failure = match reader.take().map_or_else(|| f.spool.reader(), Ok) {
            Ok(r) => {
                let task = tokio::spawn(forward(f.clone(), r, topics_ready.clone(), stop.clone()));
                match task.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("the forwarder panicked: {e}"),
                }
            }
            Err(e) => format!("reopening the spool: {e}"),
        };
        if stop.is_cancelled() {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            // it ran a good while: a new failure starts the backoff over
            backoff = Duration::from_millis(200);
        }
        f.metrics.forwarder_restarts.inc();
        f.metrics.forwarder_up.set(0);
        tracing::error!(error = %failure, retry_in_ms = backoff.as_millis() as u64,
            "forwarder failed; restarting it");
        f.health.failed(failure);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Sends the spool to Kafka in order until `stop`.
async fn forward(
    f: Forwarder,
    mut reader: SpoolReader,
    topics_ready: CancellationToken,
    stop: CancellationToken,
) -> Result<(), SpoolError> {
    tokio::select! {
        _ = topics_ready.cancelled() => {}
        _ = stop.cancelled() => return Ok(()),
    }
    let mut durable = f.spool.durable();
    let mut inflight: InFlightQueue = FuturesOrdered::new();
    let mut backoff = Duration::from_millis(100);
    'outer: loop {
        let target = *durable.borrow_and_update();
        let room = f.max_in_flight.saturating_sub(inflight.len());
        let mut rewind = None;
        if reader.next_seq() <= target && room > 0 {
            let n = room.min(2048);
            let (r, batch) = tokio::task::spawn_blocking(move || {
                let batch = reader.read(n, target);
                (reader, batch)
            })
            .await
            .map_err(|_| SpoolError::Stopped)?;
            reader = r;
            let batch = batch?;
            let progressed = !batch.is_empty();
            for frame in &batch {
                loop {
                    match f.send(frame) {
                        Ok(fut) => {
                            inflight.push_back(fut);
                            break;
                        }
                        Err(BusError::QueueFull { .. }) if !inflight.is_empty() => {
                            if let Some(done) = inflight.next().await {
                                rewind = f.complete(done);
                            }
                            if rewind.is_some() {
                                break;
                            }
                        }
                        Err(BusError::QueueFull { .. }) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(e) => {
                            tracing::warn!(seq = frame.seq, error = %e, "send failed");
                            rewind = Some(frame.seq);
                            break;
                        }
                    }
                }
                if rewind.is_some() {
                    break;
                }
            }
            if rewind.is_none() && progressed {
                continue 'outer;
            }
        }
        if rewind.is_none() {
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    rewind = f.complete(done);
                    if rewind.is_none() {
                        backoff = Duration::from_millis(100);
                    }
                }
                changed = durable.changed() => {
                    if changed.is_err() {
                        // writer gone: only in-flight completions remain
                        match inflight.next().await {
                            Some(done) => rewind = f.complete(done),
                            None => return Ok(()),
                        }
                    }
                }
                _ = stop.cancelled() => return Ok(()),
            }
        }
        if let Some(seq) = rewind {
            // Records after the refused one may have been delivered; they are sent again
            // (event_id dedups them downstream). Wait for everything in flight first.
            while inflight.next().await.is_some() {}
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            reader.seek(seq)?;
        }
    }
}
