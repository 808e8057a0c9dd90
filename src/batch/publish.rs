//! The end of a batch run: implicit ALS on this run's interaction matrix, the model written
//! to the lake (`models/als/<version>/`), and the recommendation DB given a new version —
//! user recommendations, similar books, popular books — promoted only when its validation
//! NDCG is not worse than the current model's by more than the configured tolerance.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::als::IdMap;
use crate::als::eval::{self, Algorithm, Split};
use crate::als::files::{Columns, factors_batch, interactions_from_batches};
use crate::als::recommend::{Scored, recommend_all, similar_items};
use crate::config::PublishConfig;
use crate::lake::Lake;
use crate::store::{ModelVersion, RecRow, RecTable, Store};

/// The name `bookrec batch --select` and the schedule's jobs use for this step.
pub const STEP: &str = "als";
/// The feature table it trains on.
pub const INPUT: &str = "interactions";
/// Validation metrics are taken at this K.
const VALIDATION_K: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("als step: reading {table}: {reason}")]
    Input { table: String, reason: String },
    #[error("als step: {0}")]
    Als(#[from] crate::als::AlsError),
    #[error("als step: writing {path}: {reason}")]
    Lake { path: String, reason: String },
    #[error("als step: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What the step did (part of the run record).
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub version: String,
    pub promoted: bool,
    pub reason: String,
    pub users: usize,
    pub books: usize,
    pub interactions: usize,
    /// rows of `interactions` left out: a null id, or a weight that is not a finite
    /// number in (0, MAX_WEIGHT] (what an older lake may hold; it never fails a run)
    pub dropped_interactions: u64,
    pub validation: eval::Metrics,
    pub rows: HashMap<String, u64>,
    pub pruned: Vec<String>,
    pub train_seconds: f64,
}

/// The largest interaction weight trained on; anything above (or not finite) is poison
/// from an older lake or a bad query and is left out, counted.
pub const MAX_WEIGHT: f64 = 1e9;

async fn collect(
    ctx: &SessionContext,
    sql: &str,
    table: &str,
) -> Result<Vec<RecordBatch>, PublishError> {
    crate::sql::query(ctx, sql)
        .await
        .map_err(|e| PublishError::Input {
            table: table.to_owned(),
            reason: e.to_string(),
        })
}

/// Trains on `interactions` as registered in `ctx` (this run's output), writes the model to
/// the lake and publishes to `store`.
#[allow(clippy::too_many_arguments)]
pub async fn train_and_publish(
    ctx: &SessionContext,
    lake: &Lake,
    store: &Store,
    params: &crate::als::Params,
    cfg: &PublishConfig,
    run_id: &str,
    as_of: &DateTime<Utc>,
    watermark: &serde_json::Value,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<PublishReport, PublishError> {
    let usable = format!(
        "user_id IS NOT NULL AND book_id IS NOT NULL AND weight > 0 AND weight <= {MAX_WEIGHT:e}"
    );
    let batches = collect(
        ctx,
        &format!("SELECT user_id, book_id, weight, last_ts FROM interactions WHERE {usable}"),
        INPUT,
    )
    .await?;
    let dropped = collect(
        ctx,
        &format!("SELECT count(*) FROM interactions WHERE NOT coalesce({usable}, false)"),
        INPUT,
    )
    .await?
    .first()
    .and_then(|b| arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::UInt64).ok())
    .and_then(|a| {
        use arrow::array::AsArray;
        let a = a.as_primitive::<arrow::datatypes::UInt64Type>();
        (!a.is_empty()).then(|| a.value(0))
    })
    .unwrap_or(0);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            max_weight = MAX_WEIGHT,
            "publish: interactions with a null id or a weight that is not a finite number in \
             (0, max_weight] were left out of training"
        );
    }
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
    let columns = Columns {
        user: Some("user_id".into()),
        item: Some("book_id".into()),
        weight: Some("weight".into()),
        time: Some("last_ts".into()),
    };
    let loaded = if batches.is_empty() {
        None
    } else {
        Some(interactions_from_batches(
            INPUT, &schema, &batches, &columns,
        )?)
    };
    let Some(loaded) = loaded.filter(|l| !l.data.triples.is_empty()) else {
        return Err(PublishError::Als(crate::als::AlsError::Empty));
    };
    let data = &loaded.data;
    let started = std::time::Instant::now();
    // 0. the regularisation (`[als.tune]`): each candidate trains on all but the newest
    //    share of the interactions by time and is scored on that share
    // one copy of the interactions for the three blocking steps below
    let shared = std::sync::Arc::new(data.clone());
    let (base, data_c) = (params.clone(), shared.clone());
    let (params, tuning) =
        tokio::task::spawn_blocking(move || crate::als::eval::tuned(&data_c, &base))
            .await
            .map_err(|e| crate::als::AlsError::Threads(e.to_string()))??;
    progress(&format!(
        "[als] regularization {}",
        tuning.describe(&params)
    ));
    let params = &params;
    // 1. validation: each user's newest share held out, scored at K = 10
    let (params_c, fraction) = (params.clone(), cfg.validation_fraction);
    let data_c = shared.clone();
    let validation =
        tokio::task::spawn_blocking(move || -> Result<eval::Metrics, crate::als::AlsError> {
            let folds = eval::split(&data_c, &Split::UserNewest { fraction })?;
            let rows = eval::evaluate(
                &folds,
                &[Algorithm::Als(params_c)],
                VALIDATION_K,
                data_c.items.len(),
            )?;
            Ok(rows[0].metrics)
        })
        .await
        .map_err(|e| crate::als::AlsError::Threads(e.to_string()))??;
    progress(&format!(
        "[als] validation NDCG@{VALIDATION_K} {:.4}, precision {:.4} ({} users)",
        validation.ndcg, validation.precision, validation.users
    ));
    // 2. the model on everything
    let (params_c, data_c, k, similar_k) = (params.clone(), shared, cfg.k, cfg.similar_k);
    let (model, recs, similar) = tokio::task::spawn_blocking(move || {
        let matrix = data_c.matrix();
        let model = crate::als::fit(&matrix, &params_c, &mut |_| {})?;
        let recs = recommend_all(&model, &matrix, k);
        let all: Vec<u32> = (0..data_c.items.len() as u32).collect();
        let similar = similar_items(&model, &all, similar_k);
        Ok::<_, crate::als::AlsError>((model, recs, similar))
    })
    .await
    .map_err(|e| crate::als::AlsError::Threads(e.to_string()))??;
    let train_seconds = started.elapsed().as_secs_f64();
    let version = format!("als-{run_id}");
    progress(&format!(
        "[als] trained {version}: {} users × {} books, {} interactions, {} factors, {:.1} s",
        data.users.len(),
        data.items.len(),
        data.triples.len(),
        params.factors,
        train_seconds
    ));
    // 3. the model in the lake
    let metrics_json = serde_json::json!({
        "validation": validation,
        "k": VALIDATION_K,
        "split": format!("newest {fraction} per user"),
        "loss": model.loss,
        "tuning": tuning,
    });
    let meta = serde_json::json!({
        "version": version,
        "run_id": run_id,
        "data_cutoff": crate::event::format_ts(as_of),
        "trained_through": watermark,
        "params": params,
        "metrics": metrics_json,
        "users": data.users.len(),
        "books": data.items.len(),
        "interactions": data.triples.len(),
    });
    let folder = crate::lake::layout::model_folder(&version);
    let lake_err = |path: String| move |reason: String| PublishError::Lake { path, reason };
    for (name, batch) in [
        (
            "user_factors.parquet",
            factors_batch(
                &data.users,
                &loaded.user_type,
                "user_id",
                &model.user_factors,
                model.factors,
            )?,
        ),
        (
            "item_factors.parquet",
            factors_batch(
                &data.items,
                &loaded.item_type,
                "book_id",
                &model.item_factors,
                model.factors,
            )?,
        ),
    ] {
        let path = format!("{folder}/{name}");
        let bytes = crate::lake::write_parquet(&batch).map_err(lake_err(path.clone()))?;
        lake.put(&path, bytes)
            .await
            .map_err(|e| lake_err(path.clone())(e.to_string()))?;
    }
    let path = format!("{folder}/model.json");
    lake.put(&path, bytes::Bytes::from(meta.to_string()))
        .await
        .map_err(|e| lake_err(path.clone())(e.to_string()))?;
    // 4. the rows, under the new version
    let user_rows = ranked_rows(&data.users, &data.items, &recs);
    let similar_rows = ranked_rows(&data.items, &data.items, &similar);
    let popular_rows = popular(ctx, cfg.popular_k).await?;
    // the lists beside the factors: what the stream joins (`similar_books`, `popular_books`)
    for (name, batch) in [
        (
            crate::lake::layout::SIMILAR_BOOKS,
            rows_batch(&similar_rows, "book_id", "similar_book_id"),
        ),
        (
            crate::lake::layout::POPULAR_BOOKS,
            rows_batch(&popular_rows, "category", "book_id"),
        ),
    ] {
        let path = format!("{folder}/{name}");
        let batch = batch.map_err(lake_err(path.clone()))?;
        let bytes = crate::lake::write_parquet(&batch).map_err(lake_err(path.clone()))?;
        lake.put(&path, bytes)
            .await
            .map_err(|e| lake_err(path.clone())(e.to_string()))?;
    }
    let mut rows = HashMap::new();
    rows.insert(
        RecTable::UserBooks.table().to_owned(),
        user_rows.len() as u64,
    );
    rows.insert(
        RecTable::SimilarBooks.table().to_owned(),
        similar_rows.len() as u64,
    );
    rows.insert(
        RecTable::PopularBooks.table().to_owned(),
        popular_rows.len() as u64,
    );
    let record = ModelVersion {
        version: version.clone(),
        created_at: crate::event::format_ts(&Utc::now()),
        status: "loading".into(),
        data_cutoff: crate::event::format_ts(as_of),
        trained_through: watermark.clone(),
        params: serde_json::to_value(params).unwrap_or_default(),
        metrics: metrics_json,
        row_counts: serde_json::to_value(&rows).unwrap_or_default(),
        reason: None,
    };
    store.begin_version(&record).await?;
    store
        .load_rows(RecTable::UserBooks, &version, &user_rows)
        .await?;
    store
        .load_rows(RecTable::SimilarBooks, &version, &similar_rows)
        .await?;
    store
        .load_rows(RecTable::PopularBooks, &version, &popular_rows)
        .await?;
    // 5. the gate, then the switch
    let current = store.current_version().await?;
    let current_ndcg = current
        .as_ref()
        .and_then(|c| c.metrics.pointer("/validation/ndcg"))
        .and_then(serde_json::Value::as_f64);
    let (promoted, reason) = match (&current, current_ndcg) {
        (Some(c), Some(old)) if validation.ndcg < old - cfg.ndcg_tolerance => (
            false,
            format!(
                "validation NDCG@{VALIDATION_K} {:.4} is more than {} below the current {}'s {:.4}",
                validation.ndcg, cfg.ndcg_tolerance, c.version, old
            ),
        ),
        (Some(c), Some(old)) => (
            true,
            format!(
                "validation NDCG@{VALIDATION_K} {:.4} (current {} had {:.4}, tolerance {})",
                validation.ndcg, c.version, old, cfg.ndcg_tolerance
            ),
        ),
        _ => (
            true,
            format!(
                "validation NDCG@{VALIDATION_K} {:.4}; no current model to compare with",
                validation.ndcg
            ),
        ),
    };
    if promoted {
        store.promote(&version, Some(&reason)).await?;
        point_lake_at(lake, &version).await?;
    } else {
        store.reject(&version, &reason).await?;
    }
    let pruned = store.prune_versions(cfg.keep_versions).await?;
    progress(&format!(
        "[als] {version} {}: {reason}",
        if promoted { "promoted" } else { "NOT promoted" }
    ));
    Ok(PublishReport {
        version,
        promoted,
        reason,
        users: data.users.len(),
        books: data.items.len(),
        interactions: data.triples.len(),
        dropped_interactions: dropped,
        validation,
        rows,
        pruned,
        train_seconds,
    })
}

/// Writes the lake's pointer to the current model version ([`crate::lake::layout::CURRENT_MODEL`]),
/// after the store promoted it (or rolled back to it): readers of the lake alone — the
/// stream's `similar_books` — follow it.
pub async fn point_lake_at(lake: &Lake, version: &str) -> Result<(), PublishError> {
    let path = crate::lake::layout::CURRENT_MODEL;
    lake.put(path, bytes::Bytes::from(version.to_owned()))
        .await
        .map_err(|e| PublishError::Lake {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// A published list as a lake batch: `<key>, pos, <item>, score`.
fn rows_batch(rows: &[RecRow], key: &str, item: &str) -> Result<RecordBatch, String> {
    use arrow::array::{Float64Array, Int64Array, StringArray};
    RecordBatch::try_new(
        crate::lake::ranked_list_schema(key, item),
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
            std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.pos))),
            std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.item))),
            std::sync::Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.score))),
        ],
    )
    .map_err(|e| e.to_string())
}

/// One row per ranked item: `lists[k]` ranks items for key `k` (a user or a book).
fn ranked_rows(keys: &IdMap, items: &IdMap, lists: &[Vec<Scored>]) -> Vec<RecRow> {
    lists
        .iter()
        .enumerate()
        .flat_map(|(k, list)| {
            let key = keys.id(k as u32);
            list.iter().enumerate().map(move |(p, s)| RecRow {
                key: key.to_owned(),
                pos: p as i64 + 1,
                item: items.id(s.item).to_owned(),
                score: f64::from(s.score),
            })
        })
        .collect()
}

/// Popular books from this run's interaction matrix: summed (decayed, type-weighted)
/// interaction weight per book, overall (category "") and per category of `books`.
async fn popular(ctx: &SessionContext, k: usize) -> Result<Vec<RecRow>, PublishError> {
    let sql = format!(
        "WITH per_book AS (
             SELECT book_id, sum(weight) AS score FROM interactions GROUP BY book_id
         ),
         ranked AS (
             SELECT '' AS category, book_id, score,
                    row_number() OVER (ORDER BY score DESC, book_id) AS pos
             FROM per_book
             UNION ALL
             SELECT b.category, p.book_id, p.score,
                    row_number() OVER (PARTITION BY b.category ORDER BY p.score DESC, p.book_id) AS pos
             FROM per_book p JOIN books b ON p.book_id = b.book_id
             WHERE b.category IS NOT NULL AND b.category <> ''
         )
         SELECT category, book_id, score, pos FROM ranked WHERE pos <= {k}"
    );
    let batches = collect(ctx, &sql, "interactions, books").await?;
    let mut out = Vec::new();
    for b in &batches {
        let text = |i: usize| arrow::compute::cast(b.column(i), &DataType::Utf8);
        let num = |i: usize, t: &DataType| arrow::compute::cast(b.column(i), t);
        let cast_err = |e: arrow::error::ArrowError| PublishError::Input {
            table: "interactions".into(),
            reason: e.to_string(),
        };
        let (cat, book) = (text(0).map_err(cast_err)?, text(1).map_err(cast_err)?);
        let score = num(2, &DataType::Float64).map_err(cast_err)?;
        let pos = num(3, &DataType::Int64).map_err(cast_err)?;
        let (cat, book) = (cat.as_string::<i32>(), book.as_string::<i32>());
        let (score, pos) = (
            score.as_primitive::<Float64Type>(),
            pos.as_primitive::<arrow::datatypes::Int64Type>(),
        );
        for r in 0..b.num_rows() {
            if book.is_null(r) {
                continue;
            }
            out.push(RecRow {
                key: if cat.is_null(r) {
                    String::new()
                } else {
                    cat.value(r).to_owned()
                },
                pos: pos.value(r),
                item: book.value(r).to_owned(),
                score: score.value(r),
            });
        }
    }
    Ok(out)
}
