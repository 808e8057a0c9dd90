//! `bookrec serve`: the recommendation API. Reads the recommendation DB (the published
//! model, batch features) and the realtime feature store, blends them ([`blend`]) and
//! answers over HTTP. Also serves the demo page (`/`) and `/tracker.js`.
//!
//! Degrades instead of failing: every backend call has a timeout (DB: `serve.db_timeout_ms`,
//! Redis: `redis.timeout_ms`); when the DB or Redis does not answer, the response says so
//! (`sources`) and carries what the other gives; only when no source answers is a read a
//! 503. Backends that are down at start are connected in the background.
//!
//! Realtime signals count only events newer than the model's data cut-off (its watermark):
//! recent views by their times, category interest and book heat by their minute buckets.
//! What the model has seen is not counted twice.
//!
//! Shared signals (trending books, the current model version, the features' age) are
//! re-read every `serve.refresh_ms` by one background task, not per request; the book
//! catalogue (titles, categories) is read from the lake every `serve.catalogue_refresh_secs`.
//!
//! Files: [`handlers`] (the HTTP routes), [`cache`] (the per-model-version list cache),
//! [`refresh`] (the background tasks: backend connections, the catalogue, the shared
//! signals), [`blend`] (the ranking), `metrics`.

pub mod blend;
mod cache;
pub mod experiment;
mod handlers;
pub mod impressions;
mod metrics;
mod refresh;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::features::{FeatureStore, FeaturesError};
use crate::lake::Lake;
use crate::store::{Store, StoreError};
use cache::ListCache;
use handlers::{
    books, fallback, metrics_text, openapi, page, page_js, popular, profile, recommendations,
    similar, tracker,
};
pub use metrics::ServeMetrics;
pub use refresh::buckets;
use refresh::{catalogue_loop, connect_loop, fold_in_loop, refresh_loop};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve: listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("serve: metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("serve: {0}")]
    Http(#[from] crate::http::HttpError),
}

/// The most books a request may ask for.
pub const MAX_K: usize = 100;
/// The most book ids one request may `exclude`.
pub const MAX_EXCLUDE: usize = 100;

/// One book of the catalogue.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Book {
    pub book_id: String,
    pub title: Option<String>,
    pub author: Option<String>,
    pub category: Option<String>,
    /// the work this edition belongs to (`books.work_id`, queries/sources/books.sql)
    pub work_id: Option<String>,
}

/// Signals shared by every request, re-read in the background.
#[derive(Debug, Default)]
struct Snapshot {
    model: Option<ModelInfo>,
    model_error: Option<String>,
    /// book → heat over the trending window (after the cut-off), highest first
    trending: Vec<(String, f64)>,
    /// the same books' heat over the window before (for the change)
    trending_before: HashMap<String, f64>,
    realtime_error: Option<String>,
    /// the stream's newest event time applied, epoch ms
    event_ms: Option<f64>,
    applied_ms: Option<f64>,
    /// the versions experiments pin (`serve.experiments[].variants[].model_version`) whose
    /// rows are kept (current or retired)
    pinned: HashMap<String, ModelInfo>,
    /// pinned versions without rows: their variants' users get the current version
    pinned_missing: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct ModelInfo {
    version: String,
    data_cutoff: String,
    #[serde(skip)]
    cutoff_ms: i64,
}

struct Shared {
    cfg: Config,
    db: RwLock<Option<Store>>,
    features: RwLock<Option<Arc<dyn FeatureStore>>>,
    catalogue: RwLock<Arc<HashMap<String, Book>>>,
    /// book → category, from the catalogue
    categories: RwLock<Arc<HashMap<String, String>>>,
    /// book → work, for the books whose work has other editions in the catalogue
    works: RwLock<Arc<HashMap<String, String>>>,
    snapshot: RwLock<Arc<Snapshot>>,
    metrics: Arc<ServeMetrics>,
    /// similar and popular lists of the current model version (immutable per version)
    cache: std::sync::Mutex<ListCache>,
    /// the same, per model version an experiment pins (`serve.cache_max_bytes` each)
    pinned_cache: std::sync::Mutex<HashMap<String, ListCache>>,
    /// the current model version's item factors, for fold-in (loaded from the lake)
    fold_in: RwLock<Option<Arc<FoldInModel>>>,
    /// the current model version's similar and popular lists, whole (loaded from the lake
    /// when the version is promoted: a cold API reads no list of them from the DB)
    preloaded: RwLock<Option<Arc<PreloadedLists>>>,
    /// users' lists that miss the cache, read in batches (`cache::user_list_loader`)
    user_lists: cache::UserLists,
    /// `/readyz`: `db` and `redis` connected (once: later outages degrade, they do not take
    /// the API out of rotation), `model` the current version's lists and factors loaded
    /// from the lake (or their load failed: the DB stands in), or no version published
    health: Arc<crate::http::Health>,
    /// the DB was connected: refresh the snapshot now
    connected: tokio::sync::Notify,
    /// a new snapshot was written (it may name another model version: load its lists and
    /// factors now)
    model_changed: tokio::sync::Notify,
    /// what each response showed, posted to the collector in the background
    impressions: impressions::ImpressionLog,
}

/// A model version's similar and popular lists, read from the lake when it is promoted.
struct PreloadedLists {
    version: String,
    /// book → its similar books, best first
    similar: HashMap<String, Arc<Vec<crate::store::Ranked>>>,
    /// category (`""`: the whole catalogue) → its popular books, best first
    popular: HashMap<String, Arc<Vec<crate::store::Ranked>>>,
}

/// A model version's item side, ready to fold in users it was not trained on.
struct FoldInModel {
    version: String,
    model: crate::als::FoldIn,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

/// What the API reads. `None` backends are connected from the config in the background
/// (and retried until they answer); the demo passes its in-memory store.
pub struct Sources {
    pub db: Option<Store>,
    pub features: Option<Arc<dyn FeatureStore>>,
    pub lake: Lake,
}

/// Serves until `cancel`.
pub async fn run(
    cfg: &Config,
    listener: TcpListener,
    sources: Sources,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let background = cancel.child_token();
    let (app, shared) = app(cfg, sources, &background)?;
    tokio::spawn(connect_loop(shared.clone(), background.clone()));
    tokio::spawn(refresh_loop(shared.clone(), background.clone()));
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "recommendation API listening");
    let http_metrics =
        crate::http::HttpMetrics::register(shared.metrics.registry(), "bookrec_serve")?;
    // no route takes a body: 64 KiB is generous
    let r = crate::http::serve(
        listener,
        app,
        &cfg.serve.http,
        64 * 1024,
        Arc::new(http_metrics),
        cancel.clone(),
    )
    .await
    .map_err(ServeError::from);
    background.cancel();
    r
}

fn app(
    cfg: &Config,
    sources: Sources,
    stop: &CancellationToken,
) -> Result<(Router, Arc<Shared>), ServeError> {
    let (user_lists, user_list_asks) = cache::user_lists_channel();
    let health = crate::http::Health::new();
    for (name, given) in [
        ("db", sources.db.is_some()),
        ("redis", sources.features.is_some()),
    ] {
        if given {
            health.ok(name);
        } else {
            health.fail(name, "not connected yet");
        }
    }
    health.fail("model", "the current model version is not read yet");
    let metrics = Arc::new(ServeMetrics::new()?);
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        db: RwLock::new(sources.db),
        features: RwLock::new(sources.features),
        catalogue: RwLock::new(Arc::new(HashMap::new())),
        categories: RwLock::new(Arc::new(HashMap::new())),
        works: RwLock::new(Arc::new(HashMap::new())),
        snapshot: RwLock::new(Arc::new(Snapshot {
            model_error: Some("not read yet".into()),
            ..Snapshot::default()
        })),
        impressions: impressions::ImpressionLog::start(cfg, metrics.clone(), stop.clone()),
        metrics,
        cache: std::sync::Mutex::new(ListCache::default()),
        pinned_cache: std::sync::Mutex::new(HashMap::new()),
        fold_in: RwLock::new(None),
        preloaded: RwLock::new(None),
        user_lists,
        health,
        connected: tokio::sync::Notify::new(),
        model_changed: tokio::sync::Notify::new(),
    });
    tokio::spawn(cache::user_list_loader(
        shared.clone(),
        user_list_asks,
        stop.clone(),
    ));
    tokio::spawn(fold_in_loop(
        shared.clone(),
        sources.lake.clone(),
        stop.clone(),
    ));
    tokio::spawn(catalogue_loop(shared.clone(), sources.lake, stop.clone()));
    let router = Router::new()
        .route("/api/recommendations/{user_id}", get(recommendations))
        .route("/api/similar/{book_id}", get(similar))
        .route("/api/popular", get(popular))
        .route("/api/users/{user_id}/profile", get(profile))
        .route("/api/books", get(books))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(
                |axum::extract::State(shared): axum::extract::State<Arc<Shared>>| async move {
                    crate::http::readyz_response(&shared.health)
                },
            ),
        )
        .route("/", get(page))
        .route("/page.js", get(page_js))
        .route("/tracker.js", get(tracker))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            shared.metrics.clone(),
            metrics::track,
        ))
        .with_state(shared.clone());
    Ok((router, shared))
}

/// A DB call with the serve's timeout; errors as text, counted.
async fn db_call<T>(
    shared: &Shared,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, String> {
    let started = Instant::now();
    let r = match tokio::time::timeout(Duration::from_millis(shared.cfg.serve.db_timeout_ms), f)
        .await
    {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "{what}: timed out after {} ms",
            shared.cfg.serve.db_timeout_ms
        )),
    };
    shared.metrics.backend("db", started.elapsed());
    if r.is_err() {
        shared.metrics.backend_error("db");
    }
    r
}

async fn fs_call<T>(
    shared: &Shared,
    f: impl std::future::Future<Output = Result<T, FeaturesError>>,
) -> Result<T, String> {
    let started = Instant::now();
    let r = f.await.map_err(|e| e.to_string());
    shared.metrics.backend("redis", started.elapsed());
    if r.is_err() {
        shared.metrics.backend_error("redis");
    }
    r
}
