//! `bookrec demo`: the main job on the embedded default, in one process, with no external
//! service. Everything goes through the production code paths; only the backends are the
//! embedded ones (in-process bus `memory://demo`, in-memory feature store, SQLite, a local
//! lake).
//!
//! 1. Book-Crossing (`scripts/fetch-datasets book-crossing`) is read; the `max_books` most
//!    rated books are kept (so ALS and the all-pairs similar books stay quick) and users
//!    with at least two of them. Book-Crossing has no genres: the demo uses the publisher as
//!    the book's category.
//! 2. The catalogue is written to the lake as a Debezium snapshot of the MongoDB catalogue
//!    (`cdc/book_db_mongo_books`, documents keyed by `_id`), which the `books` source view
//!    maps to the canonical table, as in production.
//! 3. The ratings are replayed as events over HTTP through `bookrec collect` into the bus,
//!    and landed in the lake by the lander.
//! 4. The SQL features run, ALS trains, and the model is published to SQLite.
//! 5. collect + stream + serve run until Ctrl-C; the page at `/` sends clicks through
//!    `/tracker.js`, and its recommendations follow within a second.
//!
//! The demo owns `./lake/demo` (lake, SQLite, spool) and starts it afresh on every run.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, StringArray};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::features::{FeatureStore, MemoryStore};
use crate::lake::Lake;
use crate::replay::{Dataset, Interaction};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{path}: not found. Fetch Book-Crossing with `scripts/fetch-datasets book-crossing` \
         (it writes data/book-crossing/ratings.csv and books.csv), or pass --data DIR"
    )]
    NoDataset { path: PathBuf },
    #[error("{path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error(transparent)]
    Lake(#[from] crate::lake::LakeError),
    #[error(transparent)]
    Land(#[from] crate::land::LandError),
    #[error(transparent)]
    Batch(#[from] crate::batch::runner::RunError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
    #[error(transparent)]
    Stream(#[from] crate::realtime::StreamError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error("demo: {0}")]
    Step(String),
}

pub struct Options {
    pub data: PathBuf,
    pub max_books: usize,
    /// false: set up, print the summary, exit
    pub serve: bool,
}

/// The demo's folder: lake, SQLite DB and the collector's spool.
pub const HOME: &str = "lake/demo";

/// What the set-up did (printed as JSON).
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub books: usize,
    pub users: usize,
    pub interactions: usize,
    pub accepted: u64,
    pub rejected: u64,
    pub landed_events: u64,
    pub model_version: Option<String>,
    pub seconds: f64,
}

/// The Book-Crossing subset: interactions of the most-rated books and their users.
pub fn subset(interactions: Vec<Interaction>, max_books: usize) -> Vec<Interaction> {
    let mut per_book: HashMap<&str, usize> = HashMap::new();
    for it in &interactions {
        *per_book.entry(it.book_id.as_str()).or_default() += 1;
    }
    let mut ranked: Vec<(&str, usize)> = per_book.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let keep: HashSet<String> = ranked
        .into_iter()
        .take(max_books)
        .map(|(b, _)| b.to_owned())
        .collect();
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for it in interactions.iter().filter(|i| keep.contains(&i.book_id)) {
        *per_user.entry(it.user_id.clone()).or_default() += 1;
    }
    interactions
        .into_iter()
        .filter(|i| keep.contains(&i.book_id) && per_user.get(&i.user_id).is_some_and(|n| *n >= 2))
        .collect()
}

/// Reads `books.csv` (isbn,title,author,year,publisher) for the books in `keep`.
fn read_books(path: &Path, keep: &HashSet<&str>) -> Result<Vec<serde_json::Value>, DemoError> {
    let bad = |reason: String| DemoError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let (reader, at) =
        crate::replay::text_csv(path, &["isbn", "title", "author", "year", "publisher"])
            .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let b = batch.map_err(|e| bad(e.to_string()))?;
        let col = |i: usize| b.column(at[i]).as_string::<i32>();
        let (isbn, title, author, year, publisher) = (col(0), col(1), col(2), col(3), col(4));
        for r in 0..b.num_rows() {
            if isbn.is_null(r) || !keep.contains(isbn.value(r)) {
                continue;
            }
            let text = |a: &StringArray| (!a.is_null(r)).then(|| a.value(r).to_owned());
            let year: Option<i64> = text(year).and_then(|y| y.parse().ok()).filter(|y| *y > 0);
            out.push(json!({
                "_id": isbn.value(r),
                "title": text(title),
                "author": text(author),
                "year": year,
                "publisher": text(publisher),
                "category": text(publisher),
            }));
        }
    }
    Ok(out)
}

/// The catalogue as a Debezium snapshot of the MongoDB collection in
/// `cdc/book_db_mongo_books` (what the CDC lander would write for the default `land.cdc`).
async fn write_catalogue(lake: &Lake, books: &[serde_json::Value]) -> Result<(), DemoError> {
    let n = books.len();
    if n == 0 {
        return Ok(());
    }
    let rows: Vec<(String, String)> = books
        .iter()
        .map(|b| (json!({"id": b["_id"]}).to_string(), b.to_string()))
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    let batch = crate::lake::cdc_snapshot("book_db", "books", now, &rows)
        .map_err(|e| DemoError::Step(format!("catalogue batch: {e}")))?;
    let bytes = crate::lake::write_parquet(&batch)
        .map_err(|e| DemoError::Step(format!("catalogue parquet: {e}")))?;
    lake.put(
        // named after a topic of its own: the lander checks the lake's offsets of the topics
        // it consumes (the default land.cdc has the real catalogue topic) against the bus
        &format!(
            "cdc/book_db_mongo_books/part-demo.catalogue-0-0-{}.parquet",
            n - 1
        ),
        bytes,
    )
    .await?;
    Ok(())
}

/// Points the configuration at the embedded backends under [`HOME`].
pub fn embedded(mut cfg: Config) -> Config {
    let home = std::path::absolute(HOME).unwrap_or_else(|_| PathBuf::from(HOME));
    cfg.kafka.brokers = "memory://demo".into();
    cfg.lake.url = format!("file://{}", home.display());
    cfg.store.url = format!("sqlite://{}", home.join("bookrec.db").display());
    cfg.collect.spool.dir = home.join("spool");
    // one process, no broker round trips: small micro-batches keep the page snappy
    cfg.stream.max_batch_ms = cfg.stream.max_batch_ms.min(50);
    cfg
}

async fn wait_drained(base: &str, timeout: Duration) -> Result<(), DemoError> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        let body: serde_json::Value = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map_err(|e| DemoError::Step(format!("collector readyz: {e}")))?
            .json()
            .await
            .map_err(|e| DemoError::Step(format!("collector readyz: {e}")))?;
        if body["spool_depth_records"] == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Step(format!(
                "the collector's spool did not drain in {timeout:?}: {body}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the demo; see the module doc.
pub async fn run(cfg: Config, opts: Options, cancel: CancellationToken) -> Result<(), DemoError> {
    let started = Instant::now();
    let ratings = opts.data.join("ratings.csv");
    let books_csv = opts.data.join("books.csv");
    if !ratings.exists()
        && opts.data == Path::new("data/book-crossing")
        && Path::new("scripts/fetch-datasets").exists()
    {
        eprintln!("== fetching Book-Crossing (scripts/fetch-datasets book-crossing)");
        let _ = std::process::Command::new("python3")
            .args(["scripts/fetch-datasets", "book-crossing"])
            .status();
    }
    for p in [&ratings, &books_csv] {
        if !p.exists() {
            return Err(DemoError::NoDataset { path: p.clone() });
        }
    }
    let mut cfg = embedded(cfg);
    let _ = std::fs::remove_dir_all(HOME);
    std::fs::create_dir_all(HOME).map_err(|source| DemoError::Io {
        path: HOME.into(),
        source,
    })?;
    let lake = Lake::open(&cfg.lake)?;

    // 1-2: the data set and the catalogue
    let (dataset, all) = crate::replay::load(&ratings, 0, None)?;
    if dataset != Dataset::BookCrossing {
        return Err(DemoError::Dataset {
            path: ratings,
            reason: "not a Book-Crossing ratings file (user_id,isbn,rating)".into(),
        });
    }
    let interactions = subset(all, opts.max_books);
    let kept: HashSet<&str> = interactions.iter().map(|i| i.book_id.as_str()).collect();
    let books = read_books(&books_csv, &kept)?;
    write_catalogue(&lake, &books).await?;
    let mut summary = Summary {
        books: kept.len(),
        users: interactions
            .iter()
            .map(|i| i.user_id.as_str())
            .collect::<HashSet<_>>()
            .len(),
        interactions: interactions.len(),
        ..Summary::default()
    };
    eprintln!(
        "== {} interactions of {} users on {} books ({} in the catalogue)",
        summary.interactions,
        summary.users,
        summary.books,
        books.len()
    );

    // 3: collect (HTTP) → bus → land
    let collect_listener = tokio::net::TcpListener::bind(cfg.collect.listen)
        .await
        .map_err(|source| DemoError::Bind {
            addr: cfg.collect.listen.to_string(),
            source,
        })?;
    let serve_listener = tokio::net::TcpListener::bind(cfg.serve.listen)
        .await
        .map_err(|source| DemoError::Bind {
            addr: cfg.serve.listen.to_string(),
            source,
        })?;
    let collect_addr = collect_listener
        .local_addr()
        .map_err(|e| DemoError::Step(e.to_string()))?;
    let serve_addr = serve_listener
        .local_addr()
        .map_err(|e| DemoError::Step(e.to_string()))?;
    let collect_url = format!("http://{collect_addr}");
    cfg.serve.collect_url = collect_url.clone();
    // the demo page is the collector's one web origin
    cfg.collect.cors_allowed_origins = vec![format!("http://{serve_addr}")];
    // an experiment to show on the page (unless the config brings its own): half the users
    // get the blend without trending books
    if cfg.serve.experiments.is_empty() {
        cfg.serve.experiments = vec![crate::config::ExperimentConfig {
            name: "demo".into(),
            salt: None,
            traffic: 1.0,
            variants: vec![
                crate::config::VariantConfig {
                    name: "control".into(),
                    share: 1.0,
                    weights: Default::default(),
                    exclude_ignored_after: None,
                    model_version: None,
                },
                crate::config::VariantConfig {
                    name: "no-trending".into(),
                    share: 1.0,
                    weights: crate::config::WeightOverrides {
                        trending: Some(0.0),
                        ..Default::default()
                    },
                    exclude_ignored_after: None,
                    model_version: None,
                },
            ],
        }];
    }
    let services = cancel.child_token();
    let collector = {
        let (cfg, stop) = (cfg.clone(), services.clone());
        tokio::spawn(async move { crate::collect::run(&cfg, collect_listener, stop).await })
    };
    eprintln!("== replaying them as events through the collector ({collect_url})");
    let target = crate::replay::Target::Batches {
        base: collect_url.clone(),
        batch_size: 500,
    };
    let replayed = crate::replay::run(dataset, &interactions, &target, 4).await?;
    summary.accepted = replayed.accepted;
    summary.rejected = replayed.rejected;
    wait_drained(&collect_url, Duration::from_secs(120)).await?;
    eprintln!("== landing them in {}", cfg.lake.url);
    let landed = {
        let (cfg, lake) = (cfg.clone(), lake.clone());
        tokio::task::spawn_blocking(move || {
            crate::land::run(&cfg, &lake, &CancellationToken::new(), true)
        })
        .await
        .map_err(|e| DemoError::Step(format!("lander: {e}")))??
    };
    summary.landed_events = landed.events;

    // 4: features, ALS, publish
    eprintln!("== SQL features, ALS, publishing to {}", cfg.store.url);
    let store = crate::store::Store::connect(&cfg.store.url).await?;
    let training = crate::batch::runner::Training::from_config(&cfg);
    let selection = crate::batch::runner::Selection {
        trigger: "demo".into(),
        ..Default::default()
    };
    let record = crate::batch::runner::run_with(
        &lake,
        Some(&store),
        &cfg.batch,
        &selection,
        chrono::Utc::now(),
        Some(&training),
        &mut |line| eprintln!("   {line}"),
    )
    .await?;
    summary.model_version = record.model.as_ref().map(|m| m.version.clone());
    summary.seconds = started.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    if !opts.serve {
        services.cancel();
        collector
            .await
            .map_err(|e| DemoError::Step(format!("collector: {e}")))??;
        return Ok(());
    }

    // 5: collect + stream + serve
    let features: Arc<dyn FeatureStore> = Arc::new(MemoryStore::new());
    let stream = {
        let (cfg, lake, fs, stop) = (
            cfg.clone(),
            lake.clone(),
            features.clone(),
            services.clone(),
        );
        tokio::spawn(async move {
            let metrics = Arc::new(
                crate::realtime::StreamMetrics::new()
                    .map_err(|e| DemoError::Step(format!("stream metrics: {e}")))?,
            );
            crate::realtime::run(&cfg, &lake, fs, metrics, stop, false)
                .await
                .map_err(DemoError::from)
        })
    };
    let server = {
        let (cfg, stop) = (cfg.clone(), services.clone());
        let sources = crate::serve::Sources {
            db: Some(crate::store::Store::connect_pool(&cfg.store.url, 4).await?),
            features: Some(features),
            lake,
        };
        tokio::spawn(async move { crate::serve::run(&cfg, serve_listener, sources, stop).await })
    };
    println!("demo page:        http://{serve_addr}/");
    println!("recommendations:  http://{serve_addr}/api/recommendations/<user_id>");
    println!("OpenAPI:          http://{serve_addr}/api/openapi.json");
    println!("collector:        {collect_url}/api/log");
    println!("(Ctrl-C stops everything)");
    cancel.cancelled().await;
    services.cancel();
    let _ = server.await;
    let _ = stream.await;
    let _ = collector.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(user: &str, book: &str) -> Interaction {
        Interaction {
            row: 0,
            user_id: user.into(),
            book_id: book.into(),
            rating: 0.0,
            ts: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_subset_keeps_the_most_rated_books_and_their_repeat_users() {
        let all = vec![
            it("u1", "a"),
            it("u2", "a"),
            it("u3", "a"),
            it("u1", "b"),
            it("u2", "b"),
            it("u3", "c"),
            it("u4", "a"),
        ];
        let kept = subset(all, 2);
        let pairs: Vec<(&str, &str)> = kept
            .iter()
            .map(|i| (i.user_id.as_str(), i.book_id.as_str()))
            .collect();
        // c is the third book; u3 and u4 have one kept book each
        assert_eq!(pairs, [("u1", "a"), ("u2", "a"), ("u1", "b"), ("u2", "b")]);
    }
}
