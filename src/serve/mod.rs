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

pub mod blend;
mod metrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::features::{FeatureStore, FeaturesError, Read, RedisStore};
use crate::lake::Lake;
use crate::store::{Ranked, Store, StoreError};
pub use metrics::ServeMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve: listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("serve: metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The most books a request may ask for.
pub const MAX_K: usize = 100;

/// One book of the catalogue.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Book {
    pub book_id: String,
    pub title: Option<String>,
    pub author: Option<String>,
    pub category: Option<String>,
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
    snapshot: RwLock<Arc<Snapshot>>,
    metrics: Arc<ServeMetrics>,
    /// similar and popular lists of the current model version (immutable per version)
    cache: std::sync::Mutex<ListCache>,
}

/// Which published list a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum List {
    User,
    Similar,
    Popular,
}

type Listed = Option<(String, Arc<Vec<Ranked>>)>;

#[derive(Default)]
struct ListCache {
    version: String,
    /// (list, k) → key → list
    entries: HashMap<(List, usize), HashMap<String, Listed>>,
    len: usize,
}

/// Entries kept before the cache starts afresh.
const CACHE_MAX: usize = 200_000;

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
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.clone().cancelled_owned())
        .await
        .map_err(|source| ServeError::Listen { addr, source });
    background.cancel();
    r
}

fn app(
    cfg: &Config,
    sources: Sources,
    stop: &CancellationToken,
) -> Result<(Router, Arc<Shared>), ServeError> {
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        db: RwLock::new(sources.db),
        features: RwLock::new(sources.features),
        catalogue: RwLock::new(Arc::new(HashMap::new())),
        categories: RwLock::new(Arc::new(HashMap::new())),
        snapshot: RwLock::new(Arc::new(Snapshot::default())),
        metrics: Arc::new(ServeMetrics::new()?),
        cache: std::sync::Mutex::new(ListCache::default()),
    });
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
        .route("/", get(page))
        .route("/tracker.js", get(tracker))
        .layer(axum::middleware::from_fn_with_state(
            shared.metrics.clone(),
            metrics::track,
        ))
        .with_state(shared.clone());
    Ok((router, shared))
}

/// Connects the DB and Redis when they were not given or are not connected yet.
async fn connect_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut missing = false;
        if read(&shared.db).is_none() {
            match tokio::time::timeout(
                Duration::from_secs(5),
                Store::connect_pool(&shared.cfg.store.url, 4),
            )
            .await
            {
                Ok(Ok(s)) => write(&shared.db, Some(s)),
                Ok(Err(e)) => {
                    missing = true;
                    tracing::warn!(error = %e, "serve: recommendation DB not reachable yet")
                }
                Err(_) => missing = true,
            }
        }
        if read(&shared.features).is_none() {
            let timeout = Duration::from_millis(shared.cfg.redis.timeout_ms.max(1000));
            match RedisStore::connect(&shared.cfg.redis.url, timeout).await {
                Ok(r) => write(&shared.features, Some(Arc::new(r) as Arc<dyn FeatureStore>)),
                Err(e) => {
                    missing = true;
                    tracing::warn!(error = %e, "serve: feature store not reachable yet")
                }
            }
        }
        if !missing {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Reads the book catalogue from the lake now and then.
async fn catalogue_loop(shared: Arc<Shared>, lake: Lake, stop: CancellationToken) {
    loop {
        match load_catalogue(&lake).await {
            Ok(c) => {
                let categories = c
                    .values()
                    .filter_map(|b| Some((b.book_id.clone(), b.category.clone()?)))
                    .collect();
                write(&shared.categories, Arc::new(categories));
                write(&shared.catalogue, Arc::new(c));
            }
            Err(e) => tracing::warn!(error = %e, "serve: reading the book catalogue"),
        }
        let every = Duration::from_secs(shared.cfg.serve.catalogue_refresh_secs.max(1));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn load_catalogue(lake: &Lake) -> Result<HashMap<String, Book>, crate::sql::SqlError> {
    let ctx = crate::sql::session(lake).await?;
    let batches = crate::sql::query(
        &ctx,
        "SELECT book_id, title, author, category FROM books WHERE book_id IS NOT NULL",
    )
    .await?;
    let mut out = HashMap::new();
    for b in &batches {
        let cols: Vec<_> = (0..4)
            .map(|i| cast(b.column(i), &DataType::Utf8))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                crate::sql::SqlError::Query(datafusion::error::DataFusionError::ArrowError(
                    Box::new(e),
                    None,
                ))
            })?;
        let text = |c: usize, r: usize| {
            let a = cols[c].as_string::<i32>();
            (!a.is_null(r)).then(|| a.value(r).to_owned())
        };
        for r in 0..b.num_rows() {
            let Some(id) = text(0, r) else { continue };
            out.insert(
                id.clone(),
                Book {
                    book_id: id,
                    title: text(1, r),
                    author: text(2, r),
                    category: text(3, r),
                },
            );
        }
    }
    Ok(out)
}

fn minute(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60
}

/// The minute buckets (epoch seconds) of the `minutes` before now, newest first, that start
/// at or after the cut-off: a bucket that holds the cut-off mixes events the model has seen
/// with newer ones, so it is left out (nothing counted twice; the newest events reach
/// category interest and trending at the next minute, recent views at once).
fn buckets(now_ms: i64, minutes: u32, skip: u32, cutoff_ms: i64) -> Vec<i64> {
    (skip..skip + minutes)
        .map(|i| minute(now_ms) - 60 * i64::from(i))
        .filter(|b| *b * 1000 >= cutoff_ms)
        .collect()
}

/// Re-reads the shared signals every `serve.refresh_ms`.
async fn refresh_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_millis(shared.cfg.serve.refresh_ms);
    loop {
        let snap = refresh(&shared).await;
        write(&shared.snapshot, Arc::new(snap));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn refresh(shared: &Shared) -> Snapshot {
    let mut snap = Snapshot::default();
    if let Some(db) = read(&shared.db) {
        match db_call(shared, "model", db.current_version()).await {
            Ok(Some(v)) => {
                let cutoff_ms = chrono::DateTime::parse_from_rfc3339(&v.data_cutoff)
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(0);
                snap.model = Some(ModelInfo {
                    version: v.version,
                    data_cutoff: v.data_cutoff,
                    cutoff_ms,
                });
            }
            Ok(None) => {}
            Err(e) => snap.model_error = Some(e),
        }
    } else {
        snap.model_error = Some("not connected".into());
    }
    let Some(fs) = read(&shared.features) else {
        snap.realtime_error = Some("not connected".into());
        return snap;
    };
    let now = chrono::Utc::now().timestamp_millis();
    let cutoff = snap.model.as_ref().map_or(0, |m| m.cutoff_ms);
    let w = shared.cfg.serve.trending_window_minutes;
    let heat = |skip| {
        let keys: Vec<String> = buckets(now, w, skip, cutoff)
            .iter()
            .map(|b| format!("rt:heat:{b}"))
            .collect();
        let fs = fs.clone();
        async move {
            let tops = join_all(keys.iter().map(|k| fs.top(k, 500))).await;
            let mut sum: HashMap<String, f64> = HashMap::new();
            for t in tops {
                for (book, n) in t? {
                    *sum.entry(book).or_default() += n;
                }
            }
            Ok::<_, FeaturesError>(sum)
        }
    };
    let progress_key = crate::features::progress_key(&shared.cfg.stream.group_id);
    let (now_heat, before, progress) = tokio::join!(heat(0), heat(w), fs.hash(&progress_key));
    match (now_heat, before, progress) {
        (Ok(h), Ok(b), Ok(p)) => {
            let mut t: Vec<(String, f64)> = h.into_iter().collect();
            t.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            t.truncate(200);
            snap.trending = t;
            snap.trending_before = b;
            let p: HashMap<String, f64> = p.into_iter().collect();
            snap.event_ms = p.get("event_ms").copied();
            snap.applied_ms = p.get("applied_ms").copied();
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            shared.metrics.backend_error("redis");
            snap.realtime_error = Some(e.to_string())
        }
    }
    snap
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

/// A published list (a user's, a book's similar books, popular books), from the cache when
/// the current model version's list was read before: the lists of a version never change,
/// so the cache needs no invalidation but a new version (seen by the refresh task), which
/// empties it. At most [`CACHE_MAX`] lists are kept (then it starts afresh).
async fn listed(
    shared: &Shared,
    db: &Store,
    list: List,
    key: &str,
    k: usize,
) -> Result<Listed, String> {
    let version = read(&shared.snapshot)
        .model
        .as_ref()
        .map(|m| m.version.clone())
        .unwrap_or_default();
    {
        let mut c = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.version != version {
            c.version = version.clone();
            c.entries.clear();
            c.len = 0;
        }
        if let Some(hit) = c.entries.get(&(list, k)).and_then(|m| m.get(key)) {
            return Ok(hit.clone());
        }
    }
    let got = match list {
        List::User => db_call(shared, "user_books", db.user_books(key, k)).await?,
        List::Similar => db_call(shared, "similar_books", db.similar_books(key, k)).await?,
        List::Popular => {
            let category = (!key.is_empty()).then_some(key);
            db_call(shared, "popular_books", db.popular_books(category, k)).await?
        }
    }
    .map(|(v, items)| (v, Arc::new(items)));
    // cache only what the snapshot's version answered (a list of a newer version waits for
    // the snapshot to catch up)
    if !version.is_empty() && got.as_ref().is_none_or(|(v, _)| *v == version) {
        let mut c = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.version == version {
            if c.len >= CACHE_MAX {
                c.entries.clear();
                c.len = 0;
            }
            c.len += 1;
            c.entries
                .entry((list, k))
                .or_default()
                .insert(key.to_owned(), got.clone());
        }
    }
    Ok(got)
}

type Scored = Vec<(String, f64)>;

/// A user's realtime state in one round trip: the latest `n.0` views and `n.1` owned books
/// (with their times), and the category-interest hashes of `cat_buckets`.
async fn user_state(
    shared: &Shared,
    fs: &dyn FeatureStore,
    user_id: &str,
    n: (usize, usize),
    cat_buckets: &[i64],
) -> Result<(Scored, Scored, Vec<Scored>), String> {
    let (recent_key, owned_key) = (
        format!("rt:recent:{user_id}"),
        format!("rt:owned:{user_id}"),
    );
    let cat_keys: Vec<String> = cat_buckets
        .iter()
        .map(|b| format!("rt:cat:{user_id}:{b}"))
        .collect();
    let mut reads = vec![Read::Top(&recent_key, n.0), Read::Top(&owned_key, n.1)];
    reads.extend(cat_keys.iter().map(|k| Read::Hash(k)));
    let mut got = fs_call(shared, fs.read_many(&reads)).await?.into_iter();
    let recent = got.next().unwrap_or_default();
    let owned = got.next().unwrap_or_default();
    Ok((recent, owned, got.collect()))
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

/// A JSON error with a status.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct RecParams {
    k: Option<String>,
    context_book: Option<String>,
    category: Option<String>,
}

fn parse_k(k: Option<&str>) -> Result<usize, String> {
    match k {
        None => Ok(10),
        Some(t) => match t.parse::<usize>() {
            Ok(k) if (1..=MAX_K).contains(&k) => Ok(k),
            _ => Err(format!(
                "query parameter k={t:?}: a whole number from 1 to {MAX_K}"
            )),
        },
    }
}

/// The state of each source for one response.
#[derive(Debug, Default, serde::Serialize)]
struct SourceState {
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl SourceState {
    fn from_errors(connected: bool, errors: &[String]) -> SourceState {
        SourceState {
            available: connected && errors.is_empty(),
            error: if !connected {
                Some("not connected".into())
            } else {
                errors.first().cloned()
            },
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The realtime part of a response: availability and the features' age.
fn realtime_state(snap: &Snapshot, connected: bool, errors: &[String]) -> Value {
    let mut errors = errors.to_vec();
    if let Some(e) = &snap.realtime_error {
        errors.push(e.clone());
    }
    let state = SourceState::from_errors(connected, &errors);
    json!({
        "available": state.available,
        "error": state.error,
        "age_seconds": snap.event_ms.map(|e| ((now_ms() as f64 - e) / 1000.0).max(0.0)),
        "applied_at": snap.applied_ms.and_then(|a| chrono::DateTime::from_timestamp_millis(a as i64)).map(|t| crate::event::format_ts(&t)),
    })
}

async fn recommendations(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    Query(params): Query<RecParams>,
) -> Response {
    let k = match parse_k(params.k.as_deref()) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_k", m),
    };
    let snap = read(&shared.snapshot);
    let catalogue = read(&shared.catalogue);
    let db = read(&shared.db);
    let fs = read(&shared.features);
    let cutoff = snap.model.as_ref().map_or(0, |m| m.cutoff_ms);
    let pool = shared.cfg.publish.k.max(k);
    let (mut db_errors, mut fs_errors) = (Vec::new(), Vec::new());

    // stage 1: the offline list and the user's realtime state, concurrently
    let offline = async {
        match &db {
            Some(db) => Some(listed(&shared, db, List::User, &user_id, pool).await),
            None => None,
        }
    };
    let window = shared.cfg.serve.category_window_minutes;
    let realtime = async {
        let fs = fs.as_ref()?;
        let cat_buckets = buckets(now_ms(), window, 0, cutoff);
        Some(user_state(&shared, fs.as_ref(), &user_id, (50, 500), &cat_buckets).await)
    };
    let (offline, realtime) = tokio::join!(offline, realtime);
    let mut signals = blend::Signals::default();
    let mut model_version = None;
    if let Some(r) = offline {
        match r {
            Ok(Some((version, items))) => {
                model_version = Some(version);
                signals.als = items;
            }
            Ok(None) => {}
            Err(e) => db_errors.push(e),
        }
    }
    let mut recent: Vec<(String, f64)> = Vec::new();
    match realtime {
        Some(Ok((r, owned, cats))) => {
            // only views after the model's data cut-off
            recent = r
                .into_iter()
                .filter(|(_, at)| *at as i64 > cutoff)
                .collect();
            signals.exclude.extend(owned.into_iter().map(|(b, _)| b));
            let mut sum: BTreeMap<String, f64> = BTreeMap::new();
            for (cat, n) in cats.into_iter().flatten() {
                *sum.entry(cat).or_default() += n;
            }
            signals.categories = sum.into_iter().collect();
            signals
                .categories
                .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        }
        Some(Err(e)) => fs_errors.push(e),
        None => {}
    }

    // stage 2: books similar to the seeds, popular books of the interest categories
    let mut seeds: Vec<String> = params.context_book.iter().cloned().collect();
    for (b, _) in &recent {
        if seeds.len() > shared.cfg.serve.recent_views {
            break;
        }
        if !seeds.contains(b) {
            seeds.push(b.clone());
        }
    }
    signals.exclude.extend(seeds.iter().cloned());
    let mut cats: Vec<String> = signals
        .categories
        .iter()
        .take(2)
        .map(|c| c.0.clone())
        .collect();
    if let Some(c) = &params.category
        && !cats.contains(c)
    {
        cats.push(c.clone());
    }
    let cold = signals.als.is_empty();
    if let Some(db) = &db {
        let similar = join_all(
            seeds
                .iter()
                .map(|s| listed(&shared, db, List::Similar, s, 20)),
        );
        let by_category = join_all(
            cats.iter()
                .map(|c| listed(&shared, db, List::Popular, c, 50)),
        );
        let overall = async {
            if cold {
                let category = params.category.as_deref().unwrap_or("");
                Some(listed(&shared, db, List::Popular, category, pool).await)
            } else {
                None
            }
        };
        let (similar, by_category, overall) = tokio::join!(similar, by_category, overall);
        for (seed, r) in seeds.iter().zip(similar) {
            match r {
                Ok(Some((_, items))) => signals.similar.push((seed.clone(), items)),
                Ok(None) => {}
                Err(e) => db_errors.push(e),
            }
        }
        for (cat, r) in cats.iter().zip(by_category) {
            match r {
                Ok(Some((_, items))) => signals.category_books.push((cat.clone(), items)),
                Ok(None) => {}
                Err(e) => db_errors.push(e),
            }
        }
        match overall {
            Some(Ok(Some((_, items)))) => signals.popular = items,
            Some(Err(e)) => db_errors.push(e),
            _ => {}
        }
    }
    // trending, after the cut-off (the snapshot's window already starts there)
    signals.trending = snap.trending.iter().take(50).cloned().collect();
    if cold && signals.popular.is_empty() {
        // no model yet and no DB: popular = trending
        signals.popular = Arc::new(
            signals
                .trending
                .iter()
                .map(|(b, s)| Ranked {
                    item: b.clone(),
                    score: *s,
                })
                .collect(),
        );
    }
    signals.only_category = params.category.clone();
    signals.book_category = read(&shared.categories);
    let db_ok = db.is_some() && db_errors.is_empty();
    let fs_ok = fs.is_some() && fs_errors.is_empty() && snap.realtime_error.is_none();
    if !db_ok && !fs_ok {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_source",
            format!(
                "neither the recommendation DB ({}) nor the feature store ({}) answered",
                db_errors.first().map_or("not connected", String::as_str),
                fs_errors
                    .first()
                    .or(snap.realtime_error.as_ref())
                    .map_or("not connected", String::as_str)
            ),
        );
    }
    let blended = blend::blend(&signals, &shared.cfg.serve.weights, k);
    let items: Vec<ItemOut> = blended
        .iter()
        .map(|i| {
            let b = catalogue.get(&i.book_id);
            ItemOut {
                book_id: &i.book_id,
                title: b.and_then(|b| b.title.as_deref()),
                author: b.and_then(|b| b.author.as_deref()),
                category: b.and_then(|b| b.category.as_deref()),
                score: i.score,
                reasons: &i.reasons,
            }
        })
        .collect();
    let model_version = model_version.or_else(|| snap.model.as_ref().map(|m| m.version.clone()));
    Json(RecResponse {
        user_id: &user_id,
        model_version: model_version.as_deref(),
        model_data_cutoff: snap.model.as_ref().map(|m| m.data_cutoff.as_str()),
        cold_start: cold,
        items,
        realtime: realtime_state(&snap, fs.is_some(), &fs_errors),
        offline: SourceState::from_errors(db.is_some(), &db_errors),
    })
    .into_response()
}

/// One recommended book in a response.
#[derive(serde::Serialize)]
struct ItemOut<'a> {
    book_id: &'a str,
    title: Option<&'a str>,
    author: Option<&'a str>,
    category: Option<&'a str>,
    score: f64,
    reasons: &'a [String],
}

#[derive(serde::Serialize)]
struct RecResponse<'a> {
    user_id: &'a str,
    model_version: Option<&'a str>,
    model_data_cutoff: Option<&'a str>,
    cold_start: bool,
    items: Vec<ItemOut<'a>>,
    realtime: Value,
    offline: SourceState,
}

/// A book with its catalogue fields merged into `extra`.
fn book_json(catalogue: &HashMap<String, Book>, book_id: &str, extra: Value) -> Value {
    let mut v = json!({"book_id": book_id});
    if let Some(b) = catalogue.get(book_id) {
        v["title"] = json!(b.title);
        v["author"] = json!(b.author);
        v["category"] = json!(b.category);
    }
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

#[derive(Debug, Deserialize)]
struct KParams {
    k: Option<String>,
    category: Option<String>,
}

async fn similar(
    State(shared): State<Arc<Shared>>,
    Path(book_id): Path<String>,
    Query(params): Query<KParams>,
) -> Response {
    let k = match parse_k(params.k.as_deref()) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_k", m),
    };
    let Some(db) = read(&shared.db) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "db_unavailable",
            "the recommendation DB is not connected",
        );
    };
    let catalogue = read(&shared.catalogue);
    match listed(&shared, &db, List::Similar, &book_id, k).await {
        Ok(Some((version, items))) => Json(json!({
            "book_id": book_id,
            "model_version": version,
            "items": items.iter().map(|r| book_json(&catalogue, &r.item, json!({"score": r.score}))).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "unknown_book",
            format!("book {book_id:?} has no similar books in the current model"),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "db_unavailable", e),
    }
}

/// Popular books: the model's list (overall or per category); without a DB or a model,
/// the trending books of the feature store.
async fn popular(State(shared): State<Arc<Shared>>, Query(params): Query<KParams>) -> Response {
    let k = match parse_k(params.k.as_deref()) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_k", m),
    };
    let (items, version, source, db_error) =
        popular_items(&shared, params.category.as_deref(), k).await;
    let snap = read(&shared.snapshot);
    if items.is_empty() && db_error.is_some() && snap.realtime_error.is_some() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_source",
            "neither the recommendation DB nor the feature store answered",
        );
    }
    Json(json!({
        "category": params.category,
        "model_version": version,
        "source": source,
        "items": items,
        "offline": SourceState::from_errors(read(&shared.db).is_some(), &db_error.into_iter().collect::<Vec<_>>()),
        "realtime": realtime_state(&snap, read(&shared.features).is_some(), &[]),
    }))
    .into_response()
}

async fn popular_items(
    shared: &Shared,
    category: Option<&str>,
    k: usize,
) -> (Vec<Value>, Option<String>, &'static str, Option<String>) {
    let catalogue = read(&shared.catalogue);
    let mut db_error = None;
    if let Some(db) = read(&shared.db) {
        match listed(shared, &db, List::Popular, category.unwrap_or(""), k).await {
            Ok(Some((version, items))) if !items.is_empty() => {
                let items = items
                    .iter()
                    .map(|r| book_json(&catalogue, &r.item, json!({"score": r.score})))
                    .collect();
                return (items, Some(version), "model", None);
            }
            Ok(_) => {}
            Err(e) => db_error = Some(e),
        }
    } else {
        db_error = Some("not connected".into());
    }
    let snap = read(&shared.snapshot);
    let items = snap
        .trending
        .iter()
        .filter(|(b, _)| {
            category.is_none_or(|c| catalogue.get(b).and_then(|b| b.category.as_deref()) == Some(c))
        })
        .take(k)
        .map(|(b, s)| {
            let before = snap.trending_before.get(b).copied().unwrap_or(0.0);
            book_json(
                &catalogue,
                b,
                json!({"score": s, "previous_window": before}),
            )
        })
        .collect();
    (items, None, "trending", db_error)
}

/// Books for the demo page: popular ones first, then the rest of the catalogue by id.
async fn books(State(shared): State<Arc<Shared>>, Query(params): Query<KParams>) -> Response {
    let k = match parse_k(params.k.as_deref()) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_k", m),
    };
    let (mut items, _, _, _) = popular_items(&shared, params.category.as_deref(), k).await;
    let catalogue = read(&shared.catalogue);
    if items.len() < k {
        let have: HashSet<String> = items
            .iter()
            .filter_map(|i| i["book_id"].as_str().map(str::to_owned))
            .collect();
        let mut rest: Vec<&Book> = catalogue
            .values()
            .filter(|b| !have.contains(&b.book_id))
            .filter(|b| {
                params
                    .category
                    .as_deref()
                    .is_none_or(|c| b.category.as_deref() == Some(c))
            })
            .collect();
        rest.sort_by(|a, b| a.book_id.cmp(&b.book_id));
        items.extend(
            rest.into_iter()
                .take(k - items.len())
                .map(|b| book_json(&catalogue, &b.book_id, json!({}))),
        );
    }
    Json(json!({"items": items})).into_response()
}

/// The batch profile (`feat_user_profile`) and the realtime features of one user.
async fn profile(State(shared): State<Arc<Shared>>, Path(user_id): Path<String>) -> Response {
    let snap = read(&shared.snapshot);
    let catalogue = read(&shared.catalogue);
    let db = read(&shared.db);
    let fs = read(&shared.features);
    let (mut db_errors, mut fs_errors) = (Vec::new(), Vec::new());
    let batch = async {
        match &db {
            Some(db) => Some(
                db_call(
                    &shared,
                    "user_profile",
                    db.feature_row("user_profile", "user_id", &user_id),
                )
                .await,
            ),
            None => None,
        }
    };
    let hour = buckets(now_ms(), 60, 0, 0);
    let realtime = async {
        let fs = fs.as_ref()?;
        Some(user_state(&shared, fs.as_ref(), &user_id, (20, 100), &hour).await)
    };
    let (batch, realtime) = tokio::join!(batch, realtime);
    let profile = match batch {
        Some(Ok(Some(row))) => Some(
            row.into_iter()
                .map(|(c, v)| (c, json!(v)))
                .collect::<serde_json::Map<_, _>>(),
        ),
        Some(Err(e)) => {
            db_errors.push(e);
            None
        }
        _ => None,
    };
    let mut rt = json!(null);
    match realtime {
        Some(Err(e)) => fs_errors.push(e),
        None => {}
        Some(Ok((recent, owned, cats))) => {
            let times = |v: Scored| {
                v.into_iter()
                    .map(|(b, at)| {
                        let at = chrono::DateTime::from_timestamp_millis(at as i64)
                            .map(|t| crate::event::format_ts(&t));
                        book_json(&catalogue, &b, json!({ "at": at }))
                    })
                    .collect::<Vec<_>>()
            };
            let (recent, owned) = (times(recent), times(owned));
            let (mut m5, mut h1): (BTreeMap<String, f64>, BTreeMap<String, f64>) =
                Default::default();
            // the hour's buckets, newest first: the first five are the last five minutes
            for (i, h) in cats.into_iter().enumerate() {
                for (cat, n) in h {
                    if i < 5 {
                        *m5.entry(cat.clone()).or_default() += n;
                    }
                    *h1.entry(cat).or_default() += n;
                }
            }
            rt = json!({
                "recent_books": recent,
                "owned_books": owned,
                "category_interest": {"5m": m5, "1h": h1},
            });
        }
    }
    if profile.is_none() && rt.is_null() && !(db_errors.is_empty() && db.is_some()) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_source",
            "neither the recommendation DB nor the feature store answered",
        );
    }
    Json(json!({
        "user_id": user_id,
        "profile": profile,
        "realtime": rt,
        "sources": {
            "offline": SourceState::from_errors(db.is_some(), &db_errors),
            "realtime": realtime_state(&snap, fs.is_some(), &fs_errors),
        },
    }))
    .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.text(),
    )
        .into_response()
}

async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}

async fn tracker(State(shared): State<Arc<Shared>>) -> Response {
    let js = include_str!("tracker.js").replace(
        "__COLLECT_URL__",
        &serde_json::to_string(&shared.cfg.serve.collect_url).unwrap_or_default(),
    );
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        js,
    )
        .into_response()
}

/// Route label for the latency histogram.
pub(crate) fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_stop_at_the_cutoff() {
        let now = 1_000_000 * 60_000 + 30_000; // 30 s into a minute
        assert_eq!(
            buckets(now, 3, 0, 0),
            vec![60_000_000, 59_999_940, 59_999_880]
        );
        assert_eq!(buckets(now, 3, 3, 0)[0], 59_999_820);
        // a cut-off 90 s ago (the start of the minute before) keeps this minute and that one;
        // 89 s ago, the minute before holds it and is left out
        assert_eq!(
            buckets(now, 3, 0, now - 90_000),
            vec![60_000_000, 59_999_940]
        );
        assert_eq!(buckets(now, 3, 0, now - 89_000), vec![60_000_000]);
    }

    #[test]
    fn k_is_checked() {
        assert_eq!(parse_k(None).ok(), Some(10));
        assert_eq!(parse_k(Some("5")).ok(), Some(5));
        assert!(parse_k(Some("0")).is_err());
        assert!(parse_k(Some("x")).is_err());
        assert!(parse_k(Some("101")).is_err());
    }

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: Value = serde_json::from_str(include_str!("openapi.json")).expect("json");
        for p in [
            "/api/recommendations/{user_id}",
            "/api/similar/{book_id}",
            "/api/popular",
            "/api/users/{user_id}/profile",
            "/api/books",
        ] {
            assert!(doc["paths"][p]["get"].is_object(), "{p} missing");
        }
    }
}
