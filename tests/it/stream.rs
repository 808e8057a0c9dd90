//! `bookrec stream` against the real broker and real Redis: the shipped realtime queries
//! give the values computed by hand; a stream process killed mid-run and restarted ends
//! with the same features as an uninterrupted run of the embedded mode (in-process bus,
//! in-memory store); malformed and late records are counted and skipped.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::StringArray;
use bookrec::config::Config;
use bookrec::features::{FeatureStore, MemoryStore, RedisStore};
use bookrec::lake::Lake;
use chrono::{DateTime, Timelike, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::features::redis_url;
use crate::land::produce;
use crate::support::{brokers, unique};

/// A lake holding only a book catalogue (one Debezium change per book).
pub async fn books_lake(dir: &Path, books: &[(String, String)]) -> Lake {
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}", dir.display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    let n = books.len();
    let rows: Vec<(String, String)> = books
        .iter()
        .map(|(id, cat)| {
            (
                json!({ "book_id": id }).to_string(),
                json!({"book_id": id, "title": id, "author": format!("{cat} writer"), "category": cat})
                    .to_string(),
            )
        })
        .collect();
    let batch = bookrec::lake::cdc_snapshot("book_db", "books", 0, &rows).expect("batch");
    lake.put(
        &format!("cdc/books/part-book_db.books-0-0-{}.parquet", n - 1),
        bookrec::lake::write_parquet(&batch).expect("parquet"),
    )
    .await
    .expect("put");
    lake
}

/// Puts a promoted model's published lists in the lake (what `bookrec batch` writes):
/// `similar` as (book, similar book, score), `popular` as (category, book, score).
pub async fn model_lists(
    lake: &Lake,
    similar: &[(String, String, f64)],
    popular: &[(String, String, f64)],
) {
    use arrow::array::{Float64Array, Int64Array};
    use bookrec::lake::layout;
    let version = unique("als");
    for (file, key, item, rows) in [
        (layout::SIMILAR_BOOKS, "book_id", "similar_book_id", similar),
        (layout::POPULAR_BOOKS, "category", "book_id", popular),
    ] {
        let batch = arrow::array::RecordBatch::try_new(
            bookrec::lake::ranked_list_schema(key, item),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                Arc::new(Int64Array::from_iter_values(
                    (1..=rows.len() as i64).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .expect("batch");
        lake.put(
            &format!("{}/{file}", layout::model_folder(&version)),
            bookrec::lake::write_parquet(&batch).expect("parquet"),
        )
        .await
        .expect("put");
    }
    lake.put(layout::CURRENT_MODEL, version.into_bytes().into())
        .await
        .expect("pointer");
}

/// A user's realtime list and its reasons, best first: (book, score, reason).
pub async fn realtime_list(store: &dyn FeatureStore, user: &str) -> Vec<(String, f64, String)> {
    let why: HashMap<String, String> = store
        .texts(&format!("rec:why:{user}"))
        .await
        .expect("reasons")
        .into_iter()
        .collect();
    store
        .top(&format!("rec:rt:{user}"), 1000)
        .await
        .expect("list")
        .into_iter()
        .map(|(b, s)| {
            let r = why.get(&b).cloned().unwrap_or_default();
            (b, s, r)
        })
        .collect()
}

/// Two lists alike: the same books in the same order with the same reasons, scores within
/// `tol`.
fn same_list(a: &[(String, f64, String)], b: &[(String, f64, String)], tol: f64, what: &str) {
    let names = |l: &[(String, f64, String)]| -> Vec<(String, String)> {
        l.iter().map(|(b, _, r)| (b.clone(), r.clone())).collect()
    };
    assert_eq!(names(a), names(b), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x.1 - y.1).abs() <= tol, "{what}: {x:?} against {y:?}");
    }
}

struct Ev {
    user: String,
    kind: &'static str,
    book: String,
    ts: DateTime<Utc>,
}

fn minute(ts: &DateTime<Utc>) -> i64 {
    ts.timestamp() - i64::from(ts.second())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_features_match_hand_computed_values_and_survive_a_kill() {
    let tag = unique("rt").replace('-', "");
    let books: Vec<(String, String)> = [("b1", "fantasy"), ("b2", "history"), ("b3", "fantasy")]
        .iter()
        .map(|(b, c)| (format!("{tag}-{b}"), c.to_string()))
        .collect();
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let model_lake = books_lake(lake_dir.path(), &books).await;
    // the current model's lists, for the realtime list (similar_to_recent.sql)
    let b = |i: usize| books[i].0.clone();
    let similar = vec![
        (b(0), b(2), 0.9),
        (b(0), b(1), 0.4),
        (b(1), b(0), 0.5),
        (b(2), b(0), 0.8),
        (b(2), b(1), 0.2),
    ];
    let popular = vec![
        (String::new(), b(0), 10.0),
        ("fantasy".to_string(), b(0), 10.0),
        ("fantasy".to_string(), b(2), 5.0),
        ("history".to_string(), b(1), 3.0),
    ];
    model_lists(&model_lake, &similar, &popular).await;

    // 3 users, 60 events over 3 minutes, ending a minute ago; one book not in the catalogue
    let start = Utc::now() - chrono::Duration::minutes(4);
    let mut events = Vec::new();
    for i in 0..60usize {
        let book = if i % 7 == 6 {
            format!("{tag}-nocat")
        } else {
            books[i % 3].0.clone()
        };
        events.push(Ev {
            user: format!("{tag}-u{}", i % 3),
            kind: ["view", "click", "purchase", "view"][i % 4],
            book,
            ts: start + chrono::Duration::seconds(i as i64 * 3),
        });
    }
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = unique("stream");
    cfg.kafka.partitions = 1;
    cfg.lake.url = format!("file://{}", lake_dir.path().display());
    cfg.stream.max_batch_events = 5;
    cfg.stream.max_batch_ms = 100;
    cfg.stream.allowed_lateness_secs = 600;
    cfg.redis.url = redis_url();
    cfg.redis.timeout_ms = 5000;
    let mut records: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let raw = json!({"event_type": e.kind, "user_id": e.user, "book_id": e.book,
                "client_ts": bookrec::event::format_ts(&e.ts)});
            let mut ev = bookrec::event::validate(raw, Utc::now()).expect("valid");
            ev.event_ts = e.ts;
            (e.user.clone(), ev.to_json())
        })
        .collect();
    // a malformed record and an event an hour older than the watermark allows
    records.push(("x".into(), b"{not json".to_vec()));
    let raw =
        json!({"event_type": "view", "user_id": format!("{tag}-late"), "book_id": books[0].0});
    let mut late = bookrec::event::validate(raw, Utc::now()).expect("valid");
    late.event_ts = start - chrono::Duration::hours(1);
    records.push((format!("{tag}-late"), late.to_json()));
    produce(&cfg, &records).await;

    // by hand
    let mut recent: HashMap<String, Vec<String>> = HashMap::new();
    let mut cats: BTreeMap<(String, i64), BTreeMap<String, f64>> = BTreeMap::new();
    let mut heat: BTreeMap<(i64, String), f64> = BTreeMap::new();
    let category: HashMap<&str, &str> = books
        .iter()
        .map(|(b, c)| (b.as_str(), c.as_str()))
        .collect();
    for e in &events {
        if e.kind == "view" || e.kind == "click" {
            let l = recent.entry(e.user.clone()).or_default();
            l.retain(|b| b != &e.book);
            l.insert(0, e.book.clone());
        }
        if let Some(c) = category.get(e.book.as_str()) {
            *cats
                .entry((e.user.clone(), minute(&e.ts)))
                .or_default()
                .entry(c.to_string())
                .or_default() += 1.0;
        }
        *heat.entry((minute(&e.ts), e.book.clone())).or_default() += 1.0;
    }
    // the realtime list by hand: per event, each similar book (log2(w × similarity)) and
    // each other popular book of its category (log2(0.5 × w × popularity / the category's
    // best)), plus the event time in days (half-life 24 h); a book keeps its best row
    let mut lists: BTreeMap<String, BTreeMap<String, (f64, String)>> = BTreeMap::new();
    for e in &events {
        let w = match e.kind {
            "view" => 1.0,
            "click" => 2.0,
            _ => 8.0,
        };
        let t = e.ts.timestamp_micros() as f64 / 1e6 / 86400.0;
        let mut rows: Vec<(String, f64, String)> = similar
            .iter()
            .filter(|s| s.0 == e.book)
            .map(|s| {
                (
                    s.1.clone(),
                    t + (w * s.2).log2(),
                    format!("similar_to:{}", e.book),
                )
            })
            .collect();
        if let Some(c) = category.get(e.book.as_str()) {
            let top = popular
                .iter()
                .filter(|p| p.0 == *c)
                .map(|p| p.2)
                .fold(0.0, f64::max);
            rows.extend(
                popular
                    .iter()
                    .filter(|p| p.0 == *c && p.1 != e.book)
                    .map(|p| {
                        (
                            p.1.clone(),
                            t + (0.5 * w * p.2 / top).log2(),
                            format!("popular_in:{c}"),
                        )
                    }),
            );
        }
        let l = lists.entry(e.user.clone()).or_default();
        for (book, score, why) in rows {
            let kept = l.entry(book).or_insert((f64::NEG_INFINITY, String::new()));
            if score > kept.0 || (score == kept.0 && why < kept.1) {
                *kept = (score, why);
            }
        }
    }
    let lists: BTreeMap<String, Vec<(String, f64, String)>> = lists
        .into_iter()
        .map(|(u, l)| {
            let mut v: Vec<(String, f64, String)> =
                l.into_iter().map(|(b, (s, r))| (b, s, r)).collect();
            v.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| y.0.cmp(&x.0)));
            (u, v)
        })
        .collect();
    assert_eq!(lists.len(), 3);

    async fn read(
        store: &dyn FeatureStore,
        recent: &HashMap<String, Vec<String>>,
        cats: &BTreeMap<(String, i64), BTreeMap<String, f64>>,
        heat: &BTreeMap<(i64, String), f64>,
    ) -> (
        HashMap<String, Vec<String>>,
        BTreeMap<(String, i64), BTreeMap<String, f64>>,
        BTreeMap<(i64, String), f64>,
    ) {
        let mut r = HashMap::new();
        for u in recent.keys() {
            r.insert(
                u.clone(),
                store
                    .top(&format!("rt:recent:{u}"), 100)
                    .await
                    .expect("recent")
                    .into_iter()
                    .map(|(b, _)| b)
                    .collect(),
            );
        }
        let mut c = BTreeMap::new();
        for (u, b) in cats.keys() {
            let h = store.hash(&format!("rt:cat:{u}:{b}")).await.expect("hash");
            c.insert((u.clone(), *b), h.into_iter().collect());
        }
        let mut h = BTreeMap::new();
        for (b, book) in heat.keys() {
            let top = store
                .top(&format!("rt:heat:{b}"), 10_000)
                .await
                .expect("top");
            if let Some((_, s)) = top.iter().find(|(m, _)| m == book) {
                h.insert((*b, book.clone()), *s);
            }
        }
        (r, c, h)
    }

    // the embedded mode: the same records on the in-process bus, uninterrupted, into the
    // in-memory store
    let memory = Arc::new(MemoryStore::new());
    let lake = Lake::open(&cfg.lake).expect("lake");
    let mut mcfg = cfg.clone();
    mcfg.stream.group_id = unique("stream-mem");
    mcfg.kafka.brokers = format!("memory://{}", unique("bus"));
    produce(&mcfg, &records).await;
    let metrics = Arc::new(bookrec::realtime::StreamMetrics::new().expect("metrics"));
    let report = bookrec::realtime::run(
        &mcfg,
        &lake,
        memory.clone(),
        metrics.clone(),
        CancellationToken::new(),
        true,
    )
    .await
    .expect("stream into memory");
    assert_eq!((report.malformed, report.late), (1, 1), "{report:?}");
    assert_eq!(report.events, 60, "{report:?}");
    let text = metrics.text();
    for line in [
        "bookrec_stream_freshness_seconds_count 60",
        "bookrec_stream_late_total 1",
        "bookrec_stream_malformed_total 1",
        "bookrec_stream_events_total 60",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    let from_memory = read(memory.as_ref(), &recent, &cats, &heat).await;
    assert_eq!(from_memory.0, recent);
    assert_eq!(from_memory.1, cats);
    assert_eq!(from_memory.2, heat);
    for (u, want) in &lists {
        let got = realtime_list(memory.as_ref(), u).await;
        same_list(&got, want, 1e-6, &format!("memory rec:rt:{u}"));
    }

    // into Redis with `bookrec stream`, killed (SIGKILL) once offsets are stored, restarted
    let group = unique("stream-redis");
    let env = [
        ("BOOKREC__KAFKA__BROKERS", cfg.kafka.brokers.clone()),
        ("BOOKREC__KAFKA__TOPIC", cfg.kafka.topic.clone()),
        ("BOOKREC__LAKE__URL", cfg.lake.url.clone()),
        ("BOOKREC__STREAM__GROUP_ID", group.clone()),
        ("BOOKREC__STREAM__MAX_BATCH_EVENTS", "3".into()),
        ("BOOKREC__STREAM__MAX_BATCH_MS", "100".into()),
        ("BOOKREC__STREAM__ALLOWED_LATENESS_SECS", "600".into()),
        ("BOOKREC__REDIS__URL", cfg.redis.url.clone()),
        ("BOOKREC__LOG__FILTER", "warn".into()),
        ("BOOKREC__STREAM__METRICS_LISTEN", "".into()),
    ];
    let redis = RedisStore::connect(&cfg.redis.url, Duration::from_secs(5))
        .await
        .expect("redis");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bookrec"))
        .arg("stream")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut seen = 0;
    for _ in 0..600 {
        seen = redis
            .offsets(&group)
            .await
            .expect("offsets")
            .get(&0)
            .copied()
            .unwrap_or(0);
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert!(seen > 0, "the stream applied nothing before the kill");
    let out = Command::new(env!("CARGO_BIN_EXE_bookrec"))
        .args(["stream", "--until-caught-up"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_redis = read(&redis, &recent, &cats, &heat).await;
    assert_eq!(from_redis.0, recent);
    assert_eq!(from_redis.1, cats);
    assert_eq!(from_redis.2, heat);
    // the realtime list after a kill and a restart: as by hand, and as the uninterrupted
    // embedded run, score for score
    for (u, want) in &lists {
        let got = realtime_list(&redis, u).await;
        same_list(&got, want, 1e-6, &format!("redis rec:rt:{u}"));
        same_list(&got, &realtime_list(memory.as_ref(), u).await, 0.0, u);
    }
    assert_eq!(redis.offsets(&group).await.expect("offsets")[&0], 62);
}

/// Reads a CSV written by scripts/fetch-datasets into text columns.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    use arrow::array::Array;
    let format = arrow::csv::reader::Format::default().with_header(true);
    let (schema, _) = format
        .infer_schema(std::fs::File::open(path).expect("open"), Some(100))
        .expect("schema");
    let text = Arc::new(arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| arrow::datatypes::Field::new(f.name(), arrow::datatypes::DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::csv::ReaderBuilder::new(text)
        .with_format(format)
        .build(std::fs::File::open(path).expect("open"))
        .expect("reader");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        for r in 0..b.num_rows() {
            out.push(
                (0..b.num_columns())
                    .map(|c| {
                        let a = b
                            .column(c)
                            .as_any()
                            .downcast_ref::<StringArray>()
                            .expect("utf8");
                        if a.is_null(r) {
                            String::new()
                        } else {
                            a.value(r).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_equals_the_same_queries_over_the_landed_lake_on_an_ml100k_slice() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ml-100k");
    assert!(
        data.join("ratings.csv").exists(),
        "run scripts/fetch-datasets ml-100k"
    );
    let tag = unique("ml").replace('-', "");
    // the first 1,500 ratings by time, moved to the last half hour (order kept), as views,
    // clicks (rating 4) and purchases (rating 5)
    let mut ratings = csv_rows(&data.join("ratings.csv"));
    ratings.sort_by_key(|r| (r[3].parse::<i64>().unwrap_or(0), r[0].clone(), r[1].clone()));
    ratings.truncate(1500);
    let genres: HashMap<String, String> = csv_rows(&data.join("items.csv"))
        .into_iter()
        .map(|r| {
            (
                r[0].clone(),
                r[3].split('|').next().unwrap_or("").to_string(),
            )
        })
        .collect();
    let start = Utc::now() - chrono::Duration::minutes(30);
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = unique("stream-ml");
    cfg.kafka.partitions = 2;
    cfg.land.group_id = unique("land-ml");
    cfg.land.cdc.clear(); // the seed's CDC topics are not part of this test
    cfg.land.poll_timeout_ms = 50;
    cfg.stream.max_batch_events = 200;
    cfg.stream.max_batch_ms = 100;
    cfg.stream.allowed_lateness_secs = 7200;
    let lake_dir = tempfile::tempdir().expect("tempdir");
    cfg.lake.url = format!("file://{}", lake_dir.path().display());
    let mut books: Vec<(String, String)> = Vec::new();
    let mut seen_books = std::collections::HashSet::new();
    let mut records = Vec::new();
    for (i, r) in ratings.iter().enumerate() {
        let (user, item) = (format!("{tag}-u{}", r[0]), format!("{tag}-i{}", r[1]));
        if seen_books.insert(item.clone()) {
            let g = genres.get(&r[1]).map(String::as_str).unwrap_or("");
            if !g.is_empty() {
                books.push((item.clone(), g.to_string()));
            }
        }
        let kind = match r[2].as_str() {
            "5" => "purchase",
            "4" => "click",
            _ => "view",
        };
        let ts = start + chrono::Duration::seconds(i as i64);
        let raw = json!({"event_type": kind, "user_id": user, "book_id": item,
            "client_ts": bookrec::event::format_ts(&ts)});
        let mut ev = bookrec::event::validate(raw, Utc::now()).expect("valid");
        ev.event_ts = ts;
        records.push((user, ev.to_json()));
    }
    let model_lake = books_lake(lake_dir.path(), &books).await;
    // a model's lists: each book's 5 next books by id (similarity 1/(1+j)); the books of
    // each genre by their number of ratings in the slice
    let mut ids: Vec<String> = seen_books.iter().cloned().collect();
    ids.sort();
    let mut similar = Vec::new();
    for (i, b) in ids.iter().enumerate() {
        for j in 1..=5 {
            similar.push((
                b.clone(),
                ids[(i + j) % ids.len()].clone(),
                1.0 / (1 + j) as f64,
            ));
        }
    }
    let mut count: BTreeMap<(String, String), f64> = BTreeMap::new();
    let genre_of: HashMap<&String, &String> = books.iter().map(|(b, g)| (b, g)).collect();
    for r in &ratings {
        let item = format!("{tag}-i{}", r[1]);
        if let Some(g) = genre_of.get(&item) {
            *count.entry(((*g).clone(), item)).or_default() += 1.0;
        }
    }
    let popular: Vec<(String, String, f64)> =
        count.into_iter().map(|((g, b), n)| (g, b, n)).collect();
    model_lists(&model_lake, &similar, &popular).await;
    produce(&cfg, &records).await;
    // land it (the lander commits only what is in the lake)
    let lcfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let lake = Lake::open(&lcfg.lake).expect("lake");
        bookrec::land::run(&lcfg, &lake, &CancellationToken::new(), true)
    })
    .await
    .expect("thread")
    .expect("land");
    let lake = Lake::open(&cfg.lake).expect("lake");

    // A: rebuilt from the lake (then the stream continues: nothing is left to read)
    let memory = Arc::new(MemoryStore::new());
    let mut acfg = cfg.clone();
    acfg.stream.group_id = unique("rebuild");
    let rebuilt = bookrec::realtime::rebuild_from_lake(&acfg, &lake, memory.as_ref())
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.events, 1500, "{rebuilt:?}");
    assert_eq!(rebuilt.landed.values().sum::<i64>(), 1500);
    let metrics = || Arc::new(bookrec::realtime::StreamMetrics::new().expect("metrics"));
    let after = bookrec::realtime::run(
        &acfg,
        &lake,
        memory.clone(),
        metrics(),
        CancellationToken::new(),
        true,
    )
    .await
    .expect("continue");
    assert_eq!(
        after.events, 0,
        "the rebuild ended where Kafka's backlog ends: {after:?}"
    );
    let err = bookrec::realtime::rebuild_from_lake(&acfg, &lake, memory.as_ref())
        .await
        .expect_err("not empty");
    assert!(err.to_string().contains(&acfg.stream.group_id), "{err}");

    // B: streamed from Kafka into Redis
    let redis = Arc::new(
        RedisStore::connect(&redis_url(), Duration::from_secs(5))
            .await
            .expect("redis"),
    );
    let mut bcfg = cfg.clone();
    bcfg.stream.group_id = unique("live");
    let live = bookrec::realtime::run(
        &bcfg,
        &lake,
        redis.clone(),
        metrics(),
        CancellationToken::new(),
        true,
    )
    .await
    .expect("stream");
    assert_eq!(live.events, 1500, "{live:?}");

    // C: the realtime list's query once over every landed event — what a batch computes
    // over the same events — into a fresh store
    let query = bookrec::sql::catalog::load_dir_kind(
        &cfg.stream.queries_dir,
        bookrec::sql::catalog::Kind::Realtime,
    )
    .expect("queries")
    .into_iter()
    .find(|q| q.name == "similar_to_recent")
    .expect("the shipped realtime list");
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    let rows = bookrec::sql::query(&ctx, &query.render(&Utc::now(), &HashMap::new()))
        .await
        .expect("the list over the lake");
    let sink = bookrec::realtime::sink::Sink::from_query(&query).expect("sink");
    let (ops, skipped) = sink.ops(&rows).expect("ops");
    assert_eq!(skipped, 0);
    let once = MemoryStore::new();
    once.apply("once", &ops, &[]).await.expect("apply");

    // the same features, key by key
    let users: std::collections::BTreeSet<&String> = records.iter().map(|(u, _)| u).collect();
    let mut compared = 0;
    let mut trimmed = 0;
    for u in &users {
        // the realtime list: streamed in micro-batches of 200 (Redis), rebuilt from the lake,
        // and computed once over everything — the same books, reasons and scores
        let streamed = realtime_list(redis.as_ref(), u).await;
        assert!(!streamed.is_empty(), "{u} has no realtime list");
        same_list(
            &streamed,
            &realtime_list(&once, u).await,
            0.0,
            &format!("batch rec:rt:{u}"),
        );
        same_list(
            &streamed,
            &realtime_list(memory.as_ref(), u).await,
            0.0,
            &format!("rebuilt rec:rt:{u}"),
        );
        compared += streamed.len();
        trimmed += usize::from(streamed.len() == 50);
        let key = format!("rt:recent:{u}");
        assert_eq!(
            redis.top(&key, 100).await.expect("recent"),
            memory.top(&key, 100).await.expect("recent"),
            "{key}"
        );
        for m in 0..32 {
            let bucket = minute(&start) + 60 * m;
            let key = format!("rt:cat:{u}:{bucket}");
            let (a, b) = (
                redis.hash(&key).await.expect("hash"),
                memory.hash(&key).await.expect("hash"),
            );
            assert_eq!(a, b, "{key}");
            compared += a.len();
        }
    }
    for m in 0..32 {
        let key = format!("rt:heat:{}", minute(&start) + 60 * m);
        let mine = |v: Vec<(String, f64)>| -> Vec<(String, f64)> {
            v.into_iter().filter(|(b, _)| b.starts_with(&tag)).collect()
        };
        let (a, b) = (
            mine(redis.top(&key, 100_000).await.expect("top")),
            mine(memory.top(&key, 100_000).await.expect("top")),
        );
        assert_eq!(a, b, "{key}");
        compared += a.len();
    }
    assert!(compared > 500, "only {compared} values compared");
    assert!(
        trimmed > 5,
        "only {trimmed} lists reached 50 books: trimming untested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stream_picks_up_catalogue_changes_without_a_restart() {
    let tag = unique("cat").replace('-', "");
    let (b1, b2) = (format!("{tag}-b1"), format!("{tag}-b2"));
    let lake_dir = tempfile::tempdir().expect("tempdir");
    // the catalogue knows b1 only
    let lake = books_lake(lake_dir.path(), &[(b1.clone(), "fantasy".into())]).await;
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.kafka.brokers = format!("memory://{}", unique("bus"));
    cfg.kafka.topic = unique("stream");
    cfg.kafka.partitions = 1;
    cfg.lake.url = format!("file://{}", lake_dir.path().display());
    cfg.stream.group_id = unique("stream-cat");
    cfg.stream.max_batch_ms = 50;
    cfg.stream.catalogue_refresh_secs = 1;
    let store = Arc::new(MemoryStore::new());
    let metrics = Arc::new(bookrec::realtime::StreamMetrics::new().expect("metrics"));
    let cancel = CancellationToken::new();
    let running = {
        let (cfg, lake, store, metrics, cancel) = (
            cfg.clone(),
            lake.clone(),
            store.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        tokio::spawn(async move {
            bookrec::realtime::run(&cfg, &lake, store, metrics, cancel, false).await
        })
    };
    let event = |user: &str, book: &str| {
        let raw = json!({"event_type": "view", "user_id": user, "book_id": book});
        let ev = bookrec::event::validate(raw, Utc::now()).expect("valid");
        let bucket = minute(&ev.event_ts);
        ((user.to_string(), ev.to_json()), bucket)
    };
    let categories = |user: String, bucket: i64| {
        let store = store.clone();
        async move {
            store
                .hash(&format!("rt:cat:{user}:{bucket}"))
                .await
                .expect("hash")
        }
    };
    // before the change: b2 has no category, so its view counts in no category
    let (first, bucket1) = event(&format!("{tag}-u1"), &b2);
    produce(&cfg, &[first]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metrics.events.get() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream took no event"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(categories(format!("{tag}-u1"), bucket1).await.is_empty());

    // the catalogue changes in the lake: b2 is now poetry (a later Debezium change)
    let row = json!({"book_id": b2, "title": "B2", "author": "x", "category": "poetry"});
    let batch = bookrec::lake::cdc_snapshot(
        "book_db",
        "books",
        1,
        &[(json!({ "book_id": b2 }).to_string(), row.to_string())],
    )
    .expect("batch");
    lake.put(
        "cdc/books/part-book_db.books-1-0-0.parquet",
        bookrec::lake::write_parquet(&batch).expect("parquet"),
    )
    .await
    .expect("put");
    let refreshed = metrics.catalogue_refreshes.get();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metrics.catalogue_refreshes.get() < refreshed + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the catalogue was never re-read ({} errors)",
            metrics.catalogue_refresh_errors.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (second, bucket2) = event(&format!("{tag}-u2"), &b2);
    produce(&cfg, &[second]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = categories(format!("{tag}-u2"), bucket2).await;
        if h.iter().any(|(c, n)| c == "poetry" && *n == 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new category never reached the features: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metrics.catalogue_refresh_errors.get(), 0);
    cancel.cancel();
    running.await.expect("join").expect("stream run");
}
