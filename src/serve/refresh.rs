//! The background tasks: connecting the backends that were down at start, re-reading the
//! book catalogue from the lake, and re-reading the shared signals (model version, trending
//! books, the stream's progress) every `serve.refresh_ms`, so requests never do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::features::{FeatureStore, FeaturesError, RedisStore};
use crate::lake::Lake;
use crate::store::Store;

/// Connects the DB and Redis when they were not given or are not connected yet.
pub(super) async fn connect_loop(shared: Arc<Shared>, stop: CancellationToken) {
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
                Ok(Ok(s)) => {
                    write(&shared.db, Some(s));
                    shared.health.ok("db");
                    shared.connected.notify_one();
                }
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
                Ok(r) => {
                    write(&shared.features, Some(Arc::new(r) as Arc<dyn FeatureStore>));
                    shared.health.ok("redis");
                    shared.connected.notify_one();
                }
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

/// Keeps the current model version's item factors loaded for fold-in: when the version the
/// snapshot names changes, its `models/als/<version>/item_factors.parquet` and `model.json`
/// (α, λ) are read from the lake; a failed load is logged and retried every 30 s, and the
/// API goes on without fold-in meanwhile (the previous version's factors are dropped: they
/// do not match the new lists).
pub(super) async fn fold_in_loop(shared: Arc<Shared>, lake: Lake, stop: CancellationToken) {
    let every = Duration::from_millis(shared.cfg.serve.refresh_ms);
    let mut failed: Option<(String, std::time::Instant)> = None;
    loop {
        let snap = read(&shared.snapshot);
        let want = snap.model.as_ref().map(|m| m.version.clone());
        if want.is_none() && snap.model_error.is_none() {
            shared.health.ok("model"); // the DB answered: no version is published
        }
        let have = read(&shared.fold_in).map(|m| m.version.clone());
        let retry_later = failed.as_ref().is_some_and(|(v, at)| {
            Some(v) == want.as_ref() && at.elapsed() < Duration::from_secs(30)
        });
        if let Some(version) = want.filter(|w| Some(w) != have.as_ref() && !retry_later) {
            shared.health.fail(
                "model",
                format!("loading the lists and item factors of {version} from the lake"),
            );
            // the similar and popular lists first: a cold API then reads only user lists
            if shared.cfg.serve.preload_lists {
                match load_lists(&lake, &version).await {
                    Ok(lists) => {
                        tracing::info!(%version, similar = lists.similar.len(),
                            popular = lists.popular.len(),
                            "serve: similar and popular lists preloaded");
                        write(&shared.preloaded, Some(Arc::new(lists)));
                    }
                    Err(e) => {
                        // the lists come from the DB meanwhile (cached per version)
                        shared.metrics.backend_error("lake");
                        tracing::warn!(%version, error = %e,
                            "serve: could not preload the lists; reading them from the DB");
                        write(&shared.preloaded, None);
                    }
                }
            }
            match load_fold_in(&lake, &version).await {
                Ok(model) => {
                    tracing::info!(%version, books = model.len(), factors = model.factors(),
                        "serve: fold-in ready for the model version");
                    write(
                        &shared.fold_in,
                        Some(Arc::new(FoldInModel { version, model })),
                    );
                    failed = None;
                }
                Err(e) => {
                    shared.metrics.backend_error("lake");
                    tracing::warn!(%version, error = %e,
                        "serve: no fold-in for this model version yet; retrying in 30 s");
                    write(&shared.fold_in, None);
                    failed = Some((version, std::time::Instant::now()));
                }
            }
            // loaded, or failed and logged (the DB stands in for the lists, the API goes
            // without fold-in): either way the version is served
            shared.health.ok("model");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.model_changed.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// A version's similar and popular lists from its lake folder.
async fn load_lists(lake: &Lake, version: &str) -> Result<PreloadedLists, String> {
    use crate::lake::layout;
    let folder = layout::model_folder(version);
    let mut maps = Vec::new();
    for file in [layout::SIMILAR_BOOKS, layout::POPULAR_BOOKS] {
        let path = format!("{folder}/{file}");
        let bytes = lake.get(&path).await.map_err(|e| e.to_string())?;
        let map = tokio::task::spawn_blocking(move || ranked_lists(&path, bytes))
            .await
            .map_err(|e| e.to_string())??;
        maps.push(map);
    }
    let popular = maps.pop().unwrap_or_default();
    let similar = maps.pop().unwrap_or_default();
    Ok(PreloadedLists {
        version: version.to_owned(),
        similar,
        popular,
    })
}

/// A published list file (`<key>, pos, <item>, score`) → key → items in `pos` order.
fn ranked_lists(
    path: &str,
    bytes: bytes::Bytes,
) -> Result<HashMap<String, Arc<Vec<crate::store::Ranked>>>, String> {
    let batches = crate::lake::read_parquet(bytes).map_err(|e| format!("{path}: {e}"))?;
    let mut rows: HashMap<String, Vec<(i64, crate::store::Ranked)>> = HashMap::new();
    for b in &batches {
        if b.num_columns() != 4 {
            return Err(format!("{path}: {} columns, want 4", b.num_columns()));
        }
        let col = |i: usize, t: &DataType| cast(b.column(i), t).map_err(|e| format!("{path}: {e}"));
        let (key, pos) = (col(0, &DataType::Utf8)?, col(1, &DataType::Int64)?);
        let (item, score) = (col(2, &DataType::Utf8)?, col(3, &DataType::Float64)?);
        let (key, item) = (key.as_string::<i32>(), item.as_string::<i32>());
        let pos = pos.as_primitive::<arrow::datatypes::Int64Type>();
        let score = score.as_primitive::<arrow::datatypes::Float64Type>();
        for r in 0..b.num_rows() {
            if key.is_null(r) || item.is_null(r) {
                continue;
            }
            rows.entry(key.value(r).to_owned()).or_default().push((
                pos.value(r),
                crate::store::Ranked {
                    item: item.value(r).to_owned(),
                    score: score.value(r),
                },
            ));
        }
    }
    Ok(rows
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|(p, _)| *p);
            (k, Arc::new(v.into_iter().map(|(_, r)| r).collect()))
        })
        .collect())
}

async fn load_fold_in(lake: &Lake, version: &str) -> Result<crate::als::FoldIn, String> {
    let folder = format!("models/als/{version}");
    let meta_path = format!("{folder}/model.json");
    let meta = lake.get(&meta_path).await.map_err(|e| e.to_string())?;
    let meta: serde_json::Value =
        serde_json::from_slice(&meta).map_err(|e| format!("{meta_path}: {e}"))?;
    let param = |name: &str| {
        meta.pointer(&format!("/params/{name}"))
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| format!("{meta_path}: no params.{name}"))
    };
    let (alpha, lambda) = (param("alpha")? as f32, param("regularization")? as f32);
    // models published before ALS-WR existed have no scaling (λ for every row), those before
    // the exponent existed scaled by the count itself (ν = 1)
    let scaling: crate::als::RegularizationScaling = meta
        .pointer("/params/regularization_scaling")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("{meta_path}: params.regularization_scaling: {e}"))?
        .unwrap_or_default();
    let exponent = match meta.pointer("/params/regularization_exponent") {
        None => 1.0,
        Some(_) => param("regularization_exponent")? as f32,
    };
    let params = crate::als::Params {
        alpha,
        regularization: lambda,
        regularization_scaling: scaling,
        regularization_exponent: exponent,
        ..crate::als::Params::default()
    };
    let path = format!("{folder}/item_factors.parquet");
    let bytes = lake.get(&path).await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let (ids, factors, f) =
            crate::als::files::read_factors(&path, bytes).map_err(|e| e.to_string())?;
        crate::als::FoldIn::new(ids, factors, f, &params).map_err(|e| format!("{path}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Reads the book catalogue from the lake now and then.
pub(super) async fn catalogue_loop(shared: Arc<Shared>, lake: Lake, stop: CancellationToken) {
    loop {
        match load_catalogue(&lake).await {
            Ok(c) => {
                let categories = c
                    .values()
                    .filter_map(|b| Some((b.book_id.clone(), b.category.clone()?)))
                    .collect();
                write(&shared.categories, Arc::new(categories));
                write(
                    &shared.works,
                    Arc::new(super::blend::editions(c.values().filter_map(|b| {
                        Some((b.book_id.as_str(), b.work_id.as_deref()?))
                    }))),
                );
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
    // an analysts' books view without work_id (older ones) still gives a catalogue
    let has_work = ctx
        .table("books")
        .await
        .is_ok_and(|t| t.schema().has_column_with_unqualified_name("work_id"));
    let sql = format!(
        "SELECT book_id, title, author, category, {} FROM books WHERE book_id IS NOT NULL",
        if has_work {
            "work_id"
        } else {
            "CAST(NULL AS VARCHAR)"
        }
    );
    let batches = crate::sql::query(&ctx, &sql).await?;
    let mut out = HashMap::new();
    for b in &batches {
        let cols: Vec<_> = (0..5)
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
                    work_id: text(4, r),
                },
            );
        }
    }
    Ok(out)
}

fn model_info(v: crate::store::ModelVersion) -> ModelInfo {
    let cutoff_ms = chrono::DateTime::parse_from_rfc3339(&v.data_cutoff)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    ModelInfo {
        version: v.version,
        data_cutoff: v.data_cutoff,
        cutoff_ms,
    }
}

/// The model versions the experiments' variants pin (not `current`).
fn pinned_versions(cfg: &Config) -> std::collections::BTreeSet<&str> {
    cfg.serve
        .experiments
        .iter()
        .flat_map(|e| &e.variants)
        .filter_map(|v| v.model_version.as_deref())
        .filter(|m| *m != "current")
        .collect()
}

pub(super) fn minute(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60
}

/// The minute buckets (epoch seconds) of the `minutes` before now, newest first, that start
/// at or after the cut-off: a bucket that holds the cut-off mixes events the model has seen
/// with newer ones, so it is left out (nothing counted twice; the newest events reach
/// category interest and trending at the next minute, recent views at once).
pub fn buckets(now_ms: i64, minutes: u32, skip: u32, cutoff_ms: i64) -> Vec<i64> {
    (skip..skip + minutes)
        .map(|i| minute(now_ms) - 60 * i64::from(i))
        .filter(|b| *b * 1000 >= cutoff_ms)
        .collect()
}

/// Re-reads the shared signals every `serve.refresh_ms`.
pub(super) async fn refresh_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = Duration::from_millis(shared.cfg.serve.refresh_ms);
    loop {
        let snap = refresh(&shared).await;
        let last = read(&shared.snapshot);
        if snap.pinned_missing != last.pinned_missing && !snap.pinned_missing.is_empty() {
            tracing::warn!(versions = ?snap.pinned_missing, "serve: model versions pinned by \
                experiments have no rows (rejected, pruned or unknown): their variants' users \
                get the current version");
        }
        write(&shared.snapshot, Arc::new(snap));
        // the fold-in loop looks at the new snapshot now (a version it already has costs it
        // two reads), not a tick later
        shared.model_changed.notify_one();
        tokio::select! {
            _ = stop.cancelled() => return,
            // a backend just connected: read the model version at once
            _ = shared.connected.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn refresh(shared: &Shared) -> Snapshot {
    let mut snap = Snapshot::default();
    if let Some(db) = read(&shared.db) {
        match db_call(shared, "model", db.current_version()).await {
            Ok(Some(v)) => snap.model = Some(model_info(v)),
            Ok(None) => {}
            Err(e) => snap.model_error = Some(e),
        }
        let pins = pinned_versions(&shared.cfg);
        if !pins.is_empty() {
            match db_call(shared, "model_versions", db.versions()).await {
                Ok(all) => {
                    for v in all {
                        if pins.contains(v.version.as_str())
                            && matches!(v.status.as_str(), "current" | "retired")
                        {
                            snap.pinned.insert(v.version.clone(), model_info(v));
                        }
                    }
                    snap.pinned_missing = pins
                        .iter()
                        .filter(|p| !snap.pinned.contains_key(**p))
                        .map(|p| p.to_string())
                        .collect();
                }
                // keep what the last refresh knew
                Err(_) => {
                    let last = read(&shared.snapshot);
                    snap.pinned = last.pinned.clone();
                    snap.pinned_missing = last.pinned_missing.clone();
                }
            }
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
}
