//! The HTTP handlers: recommendations, similar and popular books, the catalogue, profiles,
//! the OpenAPI document, metrics, the demo page and `/tracker.js`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};

use super::blend::UserState;
use super::cache::{List, listed};
use super::refresh::buckets;
use super::*;
use crate::features::{FeatureStore, Read};
use crate::store::Ranked;

type Scored = Vec<(String, f64)>;

/// A user's realtime state in one round trip: the latest `n.0` views and `n.1` owned books
/// (with their times), the category-interest hashes of `cat_buckets`, the `n.2` best books
/// of the realtime list with their reasons, and the `shown_books` hashes of `shown_days`
/// (returned beside the state).
async fn user_state(
    shared: &Shared,
    fs: &dyn FeatureStore,
    user_id: &str,
    n: (usize, usize, usize),
    cat_buckets: &[i64],
    shown_days: &[i64],
) -> Result<(UserState, Vec<Vec<(String, f64)>>), String> {
    let (recent_key, owned_key) = (
        format!("rt:recent:{user_id}"),
        format!("rt:owned:{user_id}"),
    );
    let (list_key, why_key) = blend::realtime_list_keys(user_id);
    let cat_keys: Vec<String> = cat_buckets
        .iter()
        .map(|b| format!("rt:cat:{user_id}:{b}"))
        .collect();
    let mut reads = vec![
        Read::Top(&recent_key, n.0),
        Read::Top(&owned_key, n.1),
        Read::Top(&list_key, n.2),
        Read::Texts(&why_key),
    ];
    reads.extend(cat_keys.iter().map(|k| Read::Hash(k)));
    let shown_keys: Vec<String> = shown_days
        .iter()
        .map(|d| format!("rt:shown:{user_id}:{d}"))
        .collect();
    reads.extend(shown_keys.iter().map(|k| Read::Hash(k)));
    let mut got = fs_call(shared, fs.read_many(&reads)).await?.into_iter();
    let mut next = || got.next().unwrap_or_default();
    let (recent, owned) = (next().scores, next().scores);
    let (list, why) = (next().scores, next().texts);
    let why: HashMap<String, String> = why.into_iter().collect();
    let list = list
        .into_iter()
        .map(|(b, score)| {
            let reason = why.get(&b).cloned().unwrap_or_default();
            (b, score, reason)
        })
        .collect();
    let cats = got
        .by_ref()
        .take(cat_keys.len())
        .map(|r| r.scores)
        .collect();
    let shown = got.map(|r| r.scores).collect();
    Ok((
        UserState {
            recent,
            owned,
            cats,
            list,
        },
        shown,
    ))
}

/// `None` when the request carries one of `serve.api_keys` as a bearer token (compared in
/// constant time), else the 401 to answer.
fn unauthorized(shared: &Shared, headers: &axum::http::HeaderMap) -> Option<Response> {
    let keys = &shared.cfg.serve.api_keys;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| crate::config::is_one_of(g.as_bytes(), keys));
    if ok {
        return None;
    }
    let message = if keys.is_empty() {
        "this read needs an API key, and none is configured (serve.api_keys)"
    } else {
        "this read needs an API key: send Authorization: Bearer <key>"
    };
    let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    Some(resp)
}

/// A 400 `invalid_id` when `value` breaks the id rules ([`crate::event::check_id`]):
/// checked before any backend call, so a scan of junk ids costs no DB or Redis round trip
/// and leaves nothing in the list cache.
fn invalid_id(field: &str, value: &str) -> Option<Response> {
    crate::event::check_id(field, value)
        .err()
        .map(|e| error(StatusCode::BAD_REQUEST, "invalid_id", e.message))
}

/// Unmatched paths: an API path with an empty id segment (`/api/users//profile`) is a
/// 400 `invalid_id`; anything else a JSON 404.
pub(super) async fn fallback(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") && (path.contains("//") || path.ends_with('/')) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{path}: an id in the path is empty"),
        );
    }
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {path}"),
    )
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
pub(super) struct RecParams {
    k: Option<String>,
    context_book: Option<String>,
    category: Option<String>,
    /// book ids never to return, comma-separated
    exclude: Option<String>,
    /// `0`/`false`: do not log this response as an impression (a preview or a poll that
    /// the user may not see)
    impression: Option<String>,
}

/// `exclude=id1,id2`: each a valid id, at most [`MAX_EXCLUDE`] (empty items are skipped);
/// an error is (code, message) for a 400.
fn parse_exclude(value: Option<&str>) -> Result<Vec<String>, (&'static str, String)> {
    let ids: Vec<&str> = value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > super::MAX_EXCLUDE {
        return Err((
            "bad_exclude",
            format!(
                "query parameter exclude: {} book ids, at most {}",
                ids.len(),
                super::MAX_EXCLUDE
            ),
        ));
    }
    for id in &ids {
        crate::event::check_id("exclude", id).map_err(|e| ("invalid_id", e.message))?;
    }
    Ok(ids.into_iter().map(str::to_owned).collect())
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

pub(super) async fn recommendations(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    Query(params): Query<RecParams>,
    headers: axum::http::HeaderMap,
) -> Response {
    if shared.cfg.serve.recommendations_need_key
        && let Some(denied) = unauthorized(&shared, &headers)
    {
        return denied;
    }
    let k = match parse_k(params.k.as_deref()) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_k", m),
    };
    let ids = [
        ("user_id", Some(&user_id)),
        ("context_book", params.context_book.as_ref()),
        ("category", params.category.as_ref()),
    ];
    for (field, value) in ids {
        if let Some(bad) = value.and_then(|v| invalid_id(field, v)) {
            return bad;
        }
    }
    let exclude = match parse_exclude(params.exclude.as_deref()) {
        Ok(e) => e,
        Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, message),
    };
    let log_impression = match params.impression.as_deref() {
        None | Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_impression",
                format!("query parameter impression={other:?}: 1, true, 0 or false"),
            );
        }
    };
    // the user's variants and the blend weights they make
    let (experiments, settings) = super::experiment::assign(
        &shared.cfg.serve.experiments,
        super::experiment::Settings {
            weights: shared.cfg.serve.weights,
            exclude_ignored_after: shared.cfg.serve.exclude_ignored_after,
            model_version: None,
        },
        &user_id,
    );
    let weights = settings.weights;
    let snap = read(&shared.snapshot);
    let catalogue = read(&shared.catalogue);
    let db = read(&shared.db);
    let fs = read(&shared.features);
    // a variant pinned to a kept version other than the current one reads that version's
    // lists, from its cut-off; a pin without rows falls back to the current version
    let pinned = settings
        .model_version
        .as_deref()
        .and_then(|v| snap.pinned.get(v))
        .filter(|m| snap.model.as_ref().is_none_or(|c| c.version != m.version));
    let pin = pinned.map(|m| m.version.as_str());
    let model = pinned.or(snap.model.as_ref());
    let cutoff = model.map_or(0, |m| m.cutoff_ms);
    // read deeper by what is excluded, so k books remain (ignored books: up to 50 more)
    let pool = shared.cfg.publish.k.max(k)
        + exclude.len()
        + if settings.exclude_ignored_after > 0.0 {
            50
        } else {
            0
        };
    let (mut db_errors, mut fs_errors) = (Vec::new(), Vec::new());

    // stage 1: the offline list and the user's realtime state, concurrently
    let offline = async {
        match &db {
            Some(db) => Some(listed(&shared, db, List::User, &user_id, pool, pin).await),
            None => None,
        }
    };
    let window = shared.cfg.serve.category_window_minutes;
    let realtime = async {
        let fs = fs.as_ref()?;
        let cat_buckets = buckets(now_ms(), window, 0, cutoff);
        let n = (50, 500, shared.cfg.publish.k.max(k));
        // impression-aware ranking on: the last 7 days of shown books (their keys' life)
        let shown_days = if settings.exclude_ignored_after > 0.0 {
            blend::shown_days(now_ms(), 7)
        } else {
            Vec::new()
        };
        Some(user_state(&shared, fs.as_ref(), &user_id, n, &cat_buckets, &shown_days).await)
    };
    let (offline, realtime) = tokio::join!(offline, realtime);
    let mut model_version = None;
    let mut als = Arc::new(Vec::new());
    if let Some(r) = offline {
        match r {
            Ok(Some((version, items))) => {
                model_version = Some(version);
                als = items;
            }
            Ok(None) => {}
            Err(e) => db_errors.push(e),
        }
    }
    let mut ignored = Vec::new();
    let state = match realtime {
        Some(Ok((state, shown))) => {
            ignored = blend::ignored(
                &shown,
                &state.recent,
                shared.cfg.serve.ignored_half_life_days,
                settings.exclude_ignored_after,
            );
            Some(state)
        }
        Some(Err(e)) => {
            fs_errors.push(e);
            None
        }
        None => None,
    };
    // stage 2: books similar to the seeds, popular books of the interest categories
    let ask = blend::Ask {
        context_book: params.context_book.as_deref(),
        category: params.category.as_deref(),
        cutoff_ms: cutoff,
        recent_views: shared.cfg.serve.recent_views,
        fold_in_weights: (
            shared.cfg.serve.fold_in_view_weight as f32,
            shared.cfg.serve.fold_in_owned_weight as f32,
        ),
    };
    let blend::Plan {
        mut signals,
        seeds,
        categories: cats,
        cold,
        fold_events,
    } = blend::plan(als, state, &ask);
    // a source turned off (weight 0) costs nothing: no solve; the loaded factors are the
    // current version's, so a pinned version does no fold-in
    if cold && !fold_events.is_empty() && weights.fold_in > 0.0 && pin.is_none() {
        signals.fold_in = fold_in(&shared, &snap, &fold_events, pool);
    }
    if let Some(db) = &db {
        let similar = join_all(
            seeds
                .iter()
                .map(|s| listed(&shared, db, List::Similar, s, 20, pin)),
        );
        let by_category = join_all(
            cats.iter()
                .map(|c| listed(&shared, db, List::Popular, c, 50, pin)),
        );
        let overall = async {
            if cold {
                let category = params.category.as_deref().unwrap_or("");
                Some(listed(&shared, db, List::Popular, category, pool, pin).await)
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
    signals.book_category = read(&shared.categories);
    signals.book_work = read(&shared.works);
    // explicit exclusions count as seen: their other editions are left out too; so do the
    // books shown to the user and ignored (impression-aware ranking)
    signals.exclude.extend(exclude);
    signals.exclude.extend(ignored);
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
    let blended = blend::blend(&signals, &weights, k);
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
    let model_version = model_version.or_else(|| model.map(|m| m.version.clone()));
    let request_id = uuid::Uuid::now_v7();
    if log_impression && shared.impressions.enabled() {
        shared.impressions.record(super::impressions::Impression {
            request_id,
            user_id: user_id.clone(),
            at: chrono::Utc::now(),
            model_version: model_version.clone(),
            experiments: experiments.clone(),
            items: blended
                .iter()
                .map(|i| (i.book_id.clone(), i.reasons.clone()))
                .collect(),
        });
    }
    Json(RecResponse {
        request_id: request_id.to_string(),
        experiments,
        user_id: &user_id,
        model_version: model_version.as_deref(),
        model_data_cutoff: model.map(|m| m.data_cutoff.as_str()),
        cold_start: cold,
        items,
        realtime: realtime_state(&snap, fs.is_some(), &fs_errors),
        offline: SourceState::from_errors(db.is_some(), &db_errors),
    })
    .into_response()
}

/// The fold-in list of a user the model does not know, from their recent views and owned
/// books, against the current model version's item factors (empty when those are not loaded
/// yet, belong to another version, or know none of the user's books).
fn fold_in(
    shared: &Shared,
    snap: &Snapshot,
    events: &[(String, f32)],
    k: usize,
) -> Vec<crate::store::Ranked> {
    let Some(fm) = read(&shared.fold_in) else {
        return Vec::new();
    };
    if snap.model.as_ref().map(|m| m.version.as_str()) != Some(fm.version.as_str()) {
        return Vec::new();
    }
    let pairs: Vec<(&str, f32)> = events.iter().map(|(b, w)| (b.as_str(), *w)).collect();
    let started = std::time::Instant::now();
    let list = fm.model.recommend(&pairs, k);
    shared.metrics.fold_in(started.elapsed(), !list.is_empty());
    list.into_iter()
        .map(|(item, score)| crate::store::Ranked {
            item,
            score: f64::from(score),
        })
        .collect()
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
    /// this response's id: clicks on its books carry it (with their `position`), and its
    /// impression events are logged under it
    request_id: String,
    /// the user's variant of each experiment they are in
    experiments: Vec<super::experiment::Assignment>,
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
pub(super) struct KParams {
    k: Option<String>,
    category: Option<String>,
}

pub(super) async fn similar(
    State(shared): State<Arc<Shared>>,
    Path(book_id): Path<String>,
    Query(params): Query<KParams>,
) -> Response {
    let k = match parse_k(params.k.as_deref()) {
        Ok(k) => k,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_k", m),
    };
    if let Some(bad) = invalid_id("book_id", &book_id) {
        return bad;
    }
    let Some(db) = read(&shared.db) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "db_unavailable",
            "the recommendation DB is not connected",
        );
    };
    let catalogue = read(&shared.catalogue);
    match listed(&shared, &db, List::Similar, &book_id, k, None).await {
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
pub(super) async fn popular(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<KParams>,
) -> Response {
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
        match listed(shared, &db, List::Popular, category.unwrap_or(""), k, None).await {
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
pub(super) async fn books(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<KParams>,
) -> Response {
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
pub(super) async fn profile(
    State(shared): State<Arc<Shared>>,
    Path(user_id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(bad) = invalid_id("user_id", &user_id) {
        return bad;
    }
    if let Some(denied) = unauthorized(&shared, &headers) {
        return denied;
    }
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
        Some(
            user_state(&shared, fs.as_ref(), &user_id, (20, 100, 0), &hour, &[])
                .await
                .map(|(state, _)| state),
        )
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
        Some(Ok(UserState {
            recent,
            owned,
            cats,
            ..
        })) => {
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

pub(super) async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

pub(super) async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.text(),
    )
        .into_response()
}

/// The demo page, under a Content-Security-Policy: scripts only from this origin (no inline
/// script, no eval), requests only to this origin and the collector, no plugins, no framing.
/// With the page rendering every id, title and reason as text, data cannot become script.
pub(super) async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let collector = url::Url::parse(&shared.cfg.serve.collect_url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .unwrap_or_default();
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self'; connect-src 'self' {collector}; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let mut resp = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

pub(super) async fn page_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("page.js"),
    )
        .into_response()
}

pub(super) async fn tracker(State(shared): State<Arc<Shared>>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

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
