//! `bookrec batch` ending in ALS training and publishing to the recommendation DB, on
//! SQLite, MariaDB and PostgreSQL: versions beside each other, an atomic switch that a
//! concurrent reader never sees half-done, pruning, rollback, and the NDCG gate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch};
use bookrec::batch::runner::Training;
use bookrec::event::{Event, EventType};
use bookrec::lake::Lake;
use bookrec::store::{RecTable, Store};
use chrono::Duration;

use crate::batch::{as_of, batch_config, ev};
use crate::store::Databases;

const CLUSTERS: usize = 4;
const USERS_PER_CLUSTER: usize = 25;
const BOOKS_PER_CLUSTER: usize = 12;

/// Users in four taste clusters, each viewing 8 of their cluster's 12 books (a fixed
/// pseudo-random choice) and buying one: a model that learns anything ranks the cluster's
/// unseen books first.
async fn clustered_lake(dir: &std::path::Path) -> Lake {
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}", dir.display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    put_clustered_events(&lake, |c, u| format!("u{c}-{u}")).await;
    lake
}

/// Writes the events of [`clustered_lake`] into `lake`, user `u` of cluster `c` named
/// `user(c, u)`; books are `b<c>-<n>`; each user's events are one burst.
pub async fn put_clustered_events(lake: &Lake, user: impl Fn(usize, usize) -> String) {
    put_clustered(lake, user, |index, _| index % 2900).await
}

/// [`put_clustered_events`], the `n`-th event of the user at event `index` (users in order,
/// 8 events each) `second(index, n)` seconds after the start (below 3000).
async fn put_clustered(
    lake: &Lake,
    user: impl Fn(usize, usize) -> String,
    second: impl Fn(usize, usize) -> usize,
) {
    let mut events = Vec::new();
    let mut state: u64 = 12345;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let start = as_of() - Duration::minutes(50);
    for c in 0..CLUSTERS {
        for u in 0..USERS_PER_CLUSTER {
            let user = user(c, u);
            let mut books: Vec<usize> = (0..BOOKS_PER_CLUSTER).collect();
            for i in (1..books.len()).rev() {
                books.swap(i, next() % (i + 1));
            }
            for (n, b) in books.iter().take(8).enumerate() {
                let kind = if n == 0 { "purchase" } else { "view" };
                let ts = start + Duration::seconds(second(events.len(), n) as i64);
                events.push(Event {
                    event_id: uuid::Uuid::new_v4(),
                    event_type: EventType::parse(kind),
                    user_id: Some(user.clone()),
                    anonymous_id: None,
                    session_id: None,
                    book_id: Some(format!("b{c}-{b}")),
                    rating: None,
                    query: None,
                    client_ts: Some(ts),
                    sent_at: Some(ts),
                    received_at: ts,
                    event_ts: ts,
                    page: None,
                    referrer: None,
                    user_agent: None,
                    properties: None,
                });
            }
        }
    }
    let n = events.len();
    let base = bookrec::event::arrow::to_record_batch(&events).expect("batch");
    let mut cols: Vec<ArrayRef> = base.columns().to_vec();
    cols.push(Arc::new(Int32Array::from(vec![0; n])));
    cols.push(Arc::new(Int64Array::from(
        (0..n as i64).collect::<Vec<_>>(),
    )));
    let batch = RecordBatch::try_new(bookrec::lake::events_file_schema(), cols).expect("batch");
    let (dt, hour) = bookrec::lake::layout::hour_bucket(&start);
    let file = bookrec::lake::DataFile {
        kind: bookrec::lake::FileKind::Events { dt, hour },
        topic: "fixture".into(),
        partition: 0,
        first_offset: 0,
        last_offset: n as i64 - 1,
    };
    lake.put(
        &file.relative_path(),
        bookrec::lake::write_parquet(&batch).expect("parquet"),
    )
    .await
    .expect("put");
}

pub fn training(tolerance: f64) -> Training {
    let cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    let mut t = Training::from_config(&cfg);
    t.params.factors = 8;
    t.params.iterations = 8;
    t.params.regularization = 0.1;
    t.params.alpha = 10.0;
    t.publish.k = 5;
    t.publish.similar_k = 3;
    t.publish.popular_k = 4;
    t.publish.keep_versions = 2;
    t.publish.ndcg_tolerance = tolerance;
    // these tests train the point they set ([als.tune] has its own test below)
    t.params.tune.enabled = false;
    t
}

/// `[als.tune]` as shipped: the candidates train on all but the newest 20% of the
/// interactions and the best on that share trains the published model; model.json says
/// which and why (serve's fold-in reads the point from its `params`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn als_tune_chooses_the_regularisation_on_the_newest_interactions_and_records_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}/lake", dir.path().display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    // every user's n-th event in round n: each user has older and newer interactions
    put_clustered(
        &lake,
        |c, u| format!("u{c}-{u}"),
        |index, n| n * 300 + index / 8,
    )
    .await;
    let store = Store::connect(&format!(
        "sqlite://{}/rec.db?mode=rwc",
        dir.path().display()
    ))
    .await
    .expect("store");
    let mut t = training(0.02);
    t.params.tune = cfg.als.tune.clone();
    assert!(t.params.tune.enabled, "config/default.toml ships tuning on");
    // a configured point far off: the search must be able to leave it
    t.params.regularization = 1.0e4;
    let run = batch(&lake, &store, &t).await;
    let m = run.model.expect("als step ran");
    assert!(m.promoted, "{}", m.reason);
    let meta: serde_json::Value = serde_json::from_slice(
        &lake
            .get(&format!("models/als/{}/model.json", m.version))
            .await
            .expect("model.json"),
    )
    .expect("json");
    let tuning = &meta["metrics"]["tuning"];
    let trials = tuning["trials"].as_array().expect("trials");
    assert_eq!(
        trials.len(),
        1 + cfg.als.tune.candidates.len(),
        "the configured point and each candidate: {tuning}"
    );
    assert!(
        tuning["validation"]
            .as_str()
            .is_some_and(|v| v.starts_with("temporal validation")),
        "{tuning}"
    );
    // 100 users, each with interactions on both sides of the window's start
    assert_eq!(tuning["users"], 100, "{tuning}");
    let ndcg: Vec<f64> = trials
        .iter()
        .map(|t| t["metrics"]["ndcg"].as_f64().expect("ndcg"))
        .collect();
    assert!(
        ndcg.windows(2).all(|w| w[0] >= w[1]),
        "best first: {ndcg:?}"
    );
    // the published model trained with the best point, not the configured one
    for key in [
        "regularization",
        "regularization_scaling",
        "regularization_exponent",
    ] {
        assert_eq!(meta["params"][key], trials[0]["params"][key], "{key}");
    }
}

async fn batch(lake: &Lake, store: &Store, t: &Training) -> bookrec::batch::runner::RunRecord {
    bookrec::batch::runner::run(
        lake,
        Some(store),
        &batch_config(),
        &["als".to_string()],
        as_of(),
        Some(t),
        &mut |_| {},
    )
    .await
    .expect("batch with the als step")
}

/// A reader that checks, until stopped, that every read through the current pointer sees
/// exactly one version, whole: the row count recorded for it.
fn spawn_reader(store: Store, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut reads = 0;
        while !stop.load(Ordering::Relaxed) {
            let seen = store.visible_rows(RecTable::UserBooks).await.expect("read");
            assert!(seen.len() <= 1, "a read saw several versions: {seen:?}");
            if let Some((version, rows)) = seen.first() {
                let all = store.versions().await.expect("versions");
                let v = all.iter().find(|v| &v.version == version).expect("known");
                let expected = v.row_counts["rec_user_books"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("count in {v:?}"));
                assert_eq!(*rows, expected, "{version} seen partially");
                reads += 1;
            }
        }
        reads
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_versions_atomically_prunes_rolls_back_and_gates_on_sqlite_mariadb_postgres() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = clustered_lake(lake_dir.path()).await;
    let dbs = Databases::create().await;
    for url in &dbs.urls {
        let store = Store::connect(url).await.expect("store");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = spawn_reader(store.clone(), stop.clone());

        // first publish: promoted (nothing to compare with)
        let t = training(0.02);
        let first = batch(&lake, &store, &t).await;
        let m1 = first.model.clone().expect("als step ran");
        assert!(m1.promoted, "{url}: {}", m1.reason);
        assert!(
            m1.validation.ndcg > 0.5,
            "{url}: clustered data is easy: validation {:?}",
            m1.validation
        );
        // each user's 5 recommendations are unseen books of the user's own cluster
        let (version, recs) = store
            .user_books("u2-3", 10)
            .await
            .expect("read")
            .expect("user known");
        assert_eq!(version, m1.version);
        // 12 books − 8 seen = 4 unseen in the cluster come first; k = 5
        assert_eq!(recs.len(), 5, "{url}: {recs:?}");
        assert!(
            recs[..4].iter().all(|r| r.item.starts_with("b2-")),
            "{url}: {recs:?}"
        );
        // many users in one statement: the same lists, unknown users absent
        let keys = ["u2-3", "nobody", "u1-0"].map(String::from);
        let many = store.user_books_many(&keys, 3).await.expect("read many");
        assert_eq!(many.len(), 2, "{url}: {many:?}");
        for key in ["u2-3", "u1-0"] {
            let one = store
                .user_books(key, 3)
                .await
                .expect("read")
                .expect("known");
            let got = &many[key];
            assert_eq!(got.0, one.0, "{url}");
            assert_eq!(
                got.1.iter().map(|r| &r.item).collect::<Vec<_>>(),
                one.1.iter().map(|r| &r.item).collect::<Vec<_>>(),
                "{url}: {key}"
            );
        }
        let (_, similar) = store
            .similar_books("b1-0", 3)
            .await
            .expect("read")
            .expect("book");
        assert_eq!(similar.len(), 3);
        assert!(
            similar.iter().all(|r| r.item.starts_with("b1-")),
            "{url}: {similar:?}"
        );
        let (_, popular) = store
            .popular_books(None, 10)
            .await
            .expect("read")
            .expect("popular");
        assert_eq!(popular.len(), 4);
        assert!(popular.windows(2).all(|w| w[0].score >= w[1].score));

        // the model is in the lake with its metadata
        let meta: serde_json::Value = serde_json::from_slice(
            &lake
                .get(&format!("models/als/{}/model.json", m1.version))
                .await
                .expect("model.json"),
        )
        .expect("json");
        assert_eq!(meta["params"]["factors"], 8);
        assert_eq!(meta["trained_through"], first.input_watermark);
        assert!(meta["data_cutoff"].as_str().is_some());
        // … with its similar and popular lists, the rows the store has, and the lake's
        // pointer names it: a session over the lake joins the current model's lists
        let pointer = lake
            .get(bookrec::lake::layout::CURRENT_MODEL)
            .await
            .expect("pointer");
        assert_eq!(String::from_utf8_lossy(&pointer), m1.version);
        let ctx = bookrec::sql::session(&lake).await.expect("session");
        let rows = bookrec::sql::query(
            &ctx,
            "SELECT similar_book_id, score FROM similar_books WHERE book_id = 'b1-0' ORDER BY pos LIMIT 3",
        )
        .await
        .expect("similar_books");
        let from_lake: Vec<(String, f64)> = rows
            .iter()
            .flat_map(|b| {
                let (ids, scores) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_primitive::<arrow::datatypes::Float64Type>(),
                );
                (0..b.num_rows()).map(move |r| (ids.value(r).to_string(), scores.value(r)))
            })
            .collect();
        let from_store: Vec<(String, f64)> =
            similar.iter().map(|r| (r.item.clone(), r.score)).collect();
        // (the store keeps scores to 12 significant digits)
        assert_eq!(from_lake.len(), from_store.len(), "{url}");
        for (a, b) in from_lake.iter().zip(&from_store) {
            assert!(
                a.0 == b.0 && (a.1 - b.1).abs() < 1e-9,
                "{url}: {a:?} against {b:?}"
            );
        }
        let rows = bookrec::sql::query(
            &ctx,
            "SELECT count(*) FROM popular_books WHERE category = ''",
        )
        .await
        .expect("popular_books");
        assert_eq!(
            rows[0]
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            popular.len() as i64
        );

        // two more publishes: the oldest is pruned (keep 2), the reader saw only whole versions
        let m2 = batch(&lake, &store, &t).await.model.expect("als");
        let m3 = batch(&lake, &store, &t).await.model.expect("als");
        assert!(m2.promoted && m3.promoted);
        assert_eq!(m3.pruned, vec![m1.version.clone()], "{url}");
        // a kept older version is still read by name (an experiment's pin); a pruned one
        // has nothing
        let (v, pinned) = store
            .ranked_in(RecTable::UserBooks, &m2.version, "u2-3", 3)
            .await
            .expect("read pinned")
            .expect("kept");
        assert_eq!(
            (v.as_str(), pinned.len()),
            (m2.version.as_str(), 3),
            "{url}"
        );
        let similar = store
            .ranked_in(RecTable::SimilarBooks, &m2.version, "b2-0", 2)
            .await
            .expect("read pinned similar");
        assert!(
            similar.is_some_and(|(v, l)| v == m2.version && l.len() == 2),
            "{url}"
        );
        assert!(
            store
                .ranked_in(RecTable::UserBooks, &m1.version, "u2-3", 3)
                .await
                .expect("read pruned")
                .is_none(),
            "{url}"
        );
        stop.store(true, Ordering::Relaxed);
        let reads = reader.await.expect("reader saw only whole versions");
        assert!(reads > 0, "{url}: the reader never read");

        // rollback: back to m2; m1 is gone and cannot be switched to
        let (from, to) = store.rollback(None).await.expect("rollback");
        assert_eq!(
            (from.as_str(), to.as_str()),
            (m3.version.as_str(), m2.version.as_str())
        );
        assert_eq!(
            store
                .current_version()
                .await
                .expect("current")
                .expect("some")
                .version,
            m2.version
        );
        let err = store.rollback(Some(&m1.version)).await.expect_err("pruned");
        assert!(err.to_string().contains("pruned"), "{err}");

        // the gate: a model made useless (1 factor, huge regularization) is not promoted
        let mut bad = training(0.0);
        bad.params.factors = 1;
        bad.params.regularization = 1.0e6;
        let rejected = batch(&lake, &store, &bad).await.model.expect("als");
        assert!(!rejected.promoted, "{url}: {:?}", rejected);
        assert!(
            rejected.reason.contains("below the current"),
            "{}",
            rejected.reason
        );
        assert_eq!(
            store
                .current_version()
                .await
                .expect("current")
                .expect("some")
                .version,
            m2.version
        );
        let versions = store.versions().await.expect("versions");
        let r = versions
            .iter()
            .find(|v| v.version == rejected.version)
            .expect("recorded");
        assert_eq!(r.status, "rejected");
        assert_eq!(r.reason.as_deref(), Some(rejected.reason.as_str()));
        assert!(store.visible_rows(RecTable::UserBooks).await.expect("rows")[0].0 == m2.version);
    }
    dbs.drop_all().await;
}

#[tokio::test]
async fn an_empty_lake_runs_the_features_and_skips_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}", dir.path().join("lake").display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    let store = Store::connect(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .expect("store");
    let record = bookrec::batch::runner::run(
        &lake,
        Some(&store),
        &batch_config(),
        &[],
        as_of(),
        Some(&training(0.02)),
        &mut |_| {},
    )
    .await
    .expect("an empty lake is not an error");
    assert_eq!(record.status, "succeeded");
    assert!(record.model.is_none());
    assert!(store.current_version().await.expect("current").is_none());
}

/// What an older lake (or a bad query) may hold cannot fail a run: a `rate` event with an
/// absurd rating written straight into the lake counts nothing in `interactions`, and
/// interaction weights that are not finite are left out of training and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_ratings_and_weights_in_the_lake_never_fail_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = clustered_lake(&dir.path().join("lake")).await;
    // two rate events the intake would refuse, as an older version may have landed them
    let ts = as_of() - Duration::minutes(10);
    let poison: Vec<Event> = [1e300, f64::INFINITY]
        .iter()
        .enumerate()
        .map(|(i, r)| ev("u0-0", "rate", &format!("b0-{i}"), 10.0 / 1440.0, Some(*r)))
        .collect();
    let base = bookrec::event::arrow::to_record_batch(&poison).expect("batch");
    let mut cols: Vec<ArrayRef> = base.columns().to_vec();
    cols.push(Arc::new(Int32Array::from(vec![1; 2])));
    cols.push(Arc::new(Int64Array::from(vec![0, 1])));
    let poisoned = RecordBatch::try_new(bookrec::lake::events_file_schema(), cols).expect("batch");
    let (dt, hour) = bookrec::lake::layout::hour_bucket(&ts);
    let file = bookrec::lake::DataFile {
        kind: bookrec::lake::FileKind::Events { dt, hour },
        topic: "fixture".into(),
        partition: 1,
        first_offset: 0,
        last_offset: 1,
    };
    lake.put(
        &file.relative_path(),
        bookrec::lake::write_parquet(&poisoned).expect("parquet"),
    )
    .await
    .expect("put");
    let store = Store::connect(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .expect("store");
    let record = batch(&lake, &store, &training(1.0)).await;
    let model = record.model.expect("published");
    assert_eq!(model.dropped_interactions, 0);
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    let max = bookrec::sql::query(&ctx, "SELECT max(weight) FROM interactions")
        .await
        .expect("query");
    let max =
        arrow::compute::cast(max[0].column(0), &arrow::datatypes::DataType::Float64).expect("f64");
    let max = max
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .expect("f64")
        .value(0);
    assert!(max.is_finite() && max < 100.0, "{max}");

    // an interactions query that yields infinite weights: left out, counted, the run succeeds
    let queries = tempfile::tempdir().expect("queries");
    std::fs::write(
        queries.path().join("interactions.sql"),
        "-- name: interactions\n-- output: lake\n-- keys: user_id, book_id\n\
         SELECT user_id, book_id, \
         CASE WHEN user_id = 'u0-0' THEN CAST(1e308 AS DOUBLE) * 10 ELSE 1.0 END AS weight, \
         max(event_ts) AS last_ts FROM events WHERE event_ts <= ${as_of} \
         GROUP BY user_id, book_id\n",
    )
    .expect("write");
    let record = bookrec::batch::runner::run(
        &lake,
        Some(&store),
        &bookrec::config::BatchConfig {
            queries_dir: queries.path().to_path_buf(),
            engine: "datafusion".into(),
        },
        &[],
        as_of(),
        Some(&training(1.0)),
        &mut |_| {},
    )
    .await
    .expect("infinite weights do not fail the run");
    let model = record.model.expect("published");
    let pairs = bookrec::sql::query(
        &ctx,
        "SELECT count(DISTINCT book_id) FROM events WHERE user_id = 'u0-0'",
    )
    .await
    .expect("query");
    let pairs =
        arrow::compute::cast(pairs[0].column(0), &arrow::datatypes::DataType::UInt64).expect("u64");
    let pairs = pairs
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .expect("u64")
        .value(0);
    assert_eq!(model.dropped_interactions, pairs, "{model:?}");
}
