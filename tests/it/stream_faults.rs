//! `bookrec stream` under the faults an operator meets every week, on the real broker and
//! a private `redis-server` the tests stop, pause, restart and flush: consumer-group
//! rebalances mid-batch, a waiting `--until-caught-up` with no assignment (also `land`),
//! Redis unreachable for a while, Redis losing its data. Each run's features are compared
//! with an uninterrupted run of the embedded mode (in-process bus, in-memory store) over the
//! same records.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bookrec::config::{Config, OnStateLost};
use bookrec::features::{FeatureStore, MemoryStore, RedisStore};
use bookrec::lake::Lake;
use bookrec::realtime::{StreamMetrics, StreamReport};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::land::produce;
use crate::stream::books_lake;
use crate::support::{PrivateRedis, brokers, unique};

const CATEGORIES: [&str; 3] = ["fantasy", "history", "poetry"];

/// A test's data: `n` events of 40 users on 24 books over the last few minutes.
struct Data {
    tag: String,
    users: Vec<String>,
    books: Vec<(String, String)>,
    records: Vec<(String, Vec<u8>)>,
    minutes: BTreeSet<i64>,
}

fn data(n: usize) -> Data {
    let tag = unique("sf").replace('-', "");
    let users: Vec<String> = (0..40).map(|u| format!("{tag}-u{u}")).collect();
    let books: Vec<(String, String)> = (0..24)
        .map(|b| (format!("{tag}-b{b}"), CATEGORIES[b % 3].to_string()))
        .collect();
    let start: DateTime<Utc> = Utc::now() - chrono::Duration::minutes(5);
    let mut minutes = BTreeSet::new();
    let records = (0..n)
        .map(|i| {
            let user = &users[(i * 7) % users.len()];
            let book = &books[(i * 13 + i / 40) % books.len()].0;
            let kind = ["view", "click", "view", "purchase", "view"][i % 5];
            let raw = json!({"event_type": kind, "user_id": user, "book_id": book});
            let mut ev = bookrec::event::validate(raw, Utc::now()).expect("valid");
            ev.event_ts = start + chrono::Duration::milliseconds((i as i64 * 240_000) / n as i64);
            minutes.insert(ev.event_ts.timestamp() / 60 * 60);
            (user.clone(), ev.to_json())
        })
        .collect();
    Data {
        tag,
        users,
        books,
        records,
        minutes,
    }
}

/// Everything the shipped realtime queries wrote for a test's users and books.
#[derive(Debug, PartialEq)]
struct Snapshot {
    recent: BTreeMap<String, Vec<String>>,
    owned: BTreeMap<String, Vec<String>>,
    categories: BTreeMap<(String, i64), Vec<(String, f64)>>,
    heat: BTreeMap<(i64, String), f64>,
}

impl Snapshot {
    fn heat_total(&self) -> f64 {
        self.heat.values().sum()
    }
}

async fn snapshot(store: &dyn FeatureStore, d: &Data) -> Snapshot {
    let mut s = Snapshot {
        recent: BTreeMap::new(),
        owned: BTreeMap::new(),
        categories: BTreeMap::new(),
        heat: BTreeMap::new(),
    };
    let ids = |v: Vec<(String, f64)>| v.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
    for u in &d.users {
        let recent = store.top(&format!("rt:recent:{u}"), 1000).await;
        s.recent.insert(u.clone(), ids(recent.expect("recent")));
        let owned = store.top(&format!("rt:owned:{u}"), 1000).await;
        s.owned.insert(u.clone(), ids(owned.expect("owned")));
        for m in &d.minutes {
            let h = store.hash(&format!("rt:cat:{u}:{m}")).await.expect("cat");
            if !h.is_empty() {
                s.categories.insert((u.clone(), *m), h);
            }
        }
    }
    for m in &d.minutes {
        let top = store
            .top(&format!("rt:heat:{m}"), 100_000)
            .await
            .expect("heat");
        for (book, n) in top {
            if book.starts_with(&d.tag) {
                s.heat.insert((*m, book), n);
            }
        }
    }
    s
}

/// The configuration of a test: its own topic (`partitions`), group, lake and Redis.
async fn config(d: &Data, partitions: i32, redis_url: &str, lake_dir: &std::path::Path) -> Config {
    books_lake(lake_dir, &d.books).await;
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = unique("faults");
    cfg.kafka.partitions = partitions;
    cfg.lake.url = format!("file://{}", lake_dir.display());
    cfg.land.group_id = unique("faults-land");
    cfg.land.cdc.clear(); // the seed's CDC topics are not part of this test
    cfg.stream.group_id = unique("faults-stream");
    cfg.stream.allowed_lateness_secs = 3600;
    cfg.redis.url = redis_url.to_string();
    cfg.redis.timeout_ms = 1000;
    cfg.redis.apply_timeout_ms = 1000;
    cfg
}

/// The features of an uninterrupted run of the embedded mode over `d`'s records.
async fn uninterrupted(cfg: &Config, d: &Data) -> Snapshot {
    let memory = Arc::new(MemoryStore::new());
    let mut mcfg = cfg.clone();
    mcfg.kafka.brokers = format!("memory://{}", unique("bus"));
    produce(&mcfg, &d.records).await;
    let lake = Lake::open(&mcfg.lake).expect("lake");
    let metrics = Arc::new(StreamMetrics::new().expect("metrics"));
    let report = bookrec::realtime::run(
        &mcfg,
        &lake,
        memory.clone(),
        metrics,
        CancellationToken::new(),
        true,
    )
    .await
    .expect("uninterrupted run");
    assert_eq!(report.events as usize, d.records.len(), "{report:?}");
    let s = snapshot(memory.as_ref(), d).await;
    assert_eq!(s.heat_total() as usize, d.records.len());
    s
}

/// A second member joining the stream's group for `stay`, again and again until `stop`:
/// each join and each leave is a rebalance.
fn interloper(cfg: &Config, every: Duration, stay: Duration, stop: Arc<AtomicBool>) {
    let cfg = cfg.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(every);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let bus = bookrec::bus::Bus::connect(&cfg.kafka);
            let member = bus
                .consumer(&cfg.stream.group_id, &[cfg.kafka.topic.as_str()], &[])
                .expect("second member");
            let joined = Instant::now();
            while joined.elapsed() < stay {
                // reads, never commits: what it took, the stream must still apply once
                let _ = member.poll(Duration::from_millis(50));
                let _ = member.take_rebalances();
            }
            drop(member);
        }
    });
}

/// Runs the stream in this process until its offsets in `store` cover every record of the
/// topic, then stops it.
async fn stream_until_applied(
    cfg: &Config,
    store: Arc<dyn FeatureStore>,
    observer: &RedisStore,
    metrics: Arc<StreamMetrics>,
    n: usize,
    limit: Duration,
) -> StreamReport {
    let cancel = CancellationToken::new();
    let run = spawn_stream(cfg, store, metrics, &cancel);
    let started = Instant::now();
    loop {
        let covered: i64 = match observer.offsets(&cfg.stream.group_id).await {
            Ok(o) => o.values().sum(),
            Err(_) => 0,
        };
        if covered as usize >= n {
            break;
        }
        assert!(
            !run.is_finished(),
            "the stream ended early: {:?}",
            run.await
        );
        assert!(
            started.elapsed() < limit,
            "not applied within {limit:?}: {covered} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    run.await.expect("join").expect("stream run")
}

type Running = tokio::task::JoinHandle<Result<StreamReport, bookrec::realtime::StreamError>>;

/// `bookrec stream` (long-running) in this process, into `store`, until `cancel`.
fn spawn_stream(
    cfg: &Config,
    store: Arc<dyn FeatureStore>,
    metrics: Arc<StreamMetrics>,
    cancel: &CancellationToken,
) -> Running {
    let (cfg, cancel) = (cfg.clone(), cancel.clone());
    let lake = Lake::open(&cfg.lake).expect("lake");
    tokio::spawn(
        async move { bookrec::realtime::run(&cfg, &lake, store, metrics, cancel, false).await },
    )
}

/// Waits (90 s at most) until the group's offsets in the store cover `n` records.
async fn applied(observer: &RedisStore, group: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while observer
        .offsets(group)
        .await
        .map(|o| o.values().sum::<i64>())
        .unwrap_or(0)
        < n
    {
        assert!(Instant::now() < deadline, "{n} records not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis(url: &str) -> RedisStore {
    RedisStore::connect(url, Duration::from_secs(5))
        .await
        .expect("redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalances_mid_batch_do_not_double_count() {
    let d = data(2000);
    let server = PrivateRedis::start();
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&d, 3, &server.url, lake_dir.path()).await;
    let expected = uninterrupted(&cfg, &d).await;

    // a long micro-batch, a second member joining and leaving the group every few seconds,
    // and the events arriving in waves meanwhile: batches in flight see revocations,
    // re-assignments and re-fetches, again and again
    cfg.stream.max_batch_ms = 12_000;
    cfg.stream.max_batch_events = 100_000;
    let stop = Arc::new(AtomicBool::new(false));
    interloper(
        &cfg,
        Duration::from_millis(2500),
        Duration::from_millis(1500),
        stop.clone(),
    );
    {
        let (cfg, records) = (cfg.clone(), d.records.clone());
        tokio::spawn(async move {
            for wave in records.chunks(400) {
                produce(&cfg, wave).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
    }
    let observer = redis(&server.url).await;
    let store = Arc::new(redis(&server.url).await);
    let metrics = Arc::new(StreamMetrics::new().expect("metrics"));
    let report = stream_until_applied(
        &cfg,
        store.clone(),
        &observer,
        metrics.clone(),
        d.records.len(),
        Duration::from_secs(180),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let got = snapshot(store.as_ref(), &d).await;
    assert_eq!(got.heat_total() as usize, d.records.len(), "{report:?}");
    assert_eq!(got, expected, "{report:?}");
    let text = metrics.text();
    let rebalances = counter(&text, "bookrec_stream_rebalances_total");
    assert!(rebalances >= 6, "{text}");
}

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_for_a_while_is_retried_and_a_persistent_failure_ends_the_run() {
    let d = data(600);
    let server = PrivateRedis::start();
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&d, 2, &server.url, lake_dir.path()).await;
    cfg.stream.max_batch_events = 50;
    cfg.stream.max_batch_ms = 100;
    let expected = uninterrupted(&cfg, &d).await;
    produce(&cfg, &d.records[..300]).await;
    let observer = redis(&server.url).await;
    let store = Arc::new(redis(&server.url).await);
    let metrics = Arc::new(StreamMetrics::new().expect("metrics"));
    let cancel = CancellationToken::new();
    let run = spawn_stream(&cfg, store.clone(), metrics.clone(), &cancel);
    applied(&observer, &cfg.stream.group_id, 300).await;
    // Redis answers nothing for 4 s while the second half arrives
    server.pause(true);
    produce(&cfg, &d.records[300..]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !run.is_finished(),
        "a Redis outage of seconds ended the run"
    );
    server.pause(false);
    applied(&observer, &cfg.stream.group_id, 600).await;
    cancel.cancel();
    run.await
        .expect("join")
        .expect("the run survived the outage");
    assert_eq!(snapshot(store.as_ref(), &d).await, expected);
    let text = metrics.text();
    assert!(
        counter(&text, "bookrec_stream_apply_retries_total") >= 1,
        "{text}"
    );
    assert_eq!(counter(&text, "bookrec_stream_state_lost_total"), 0);

    // past stream.redis_retry_max_secs, the run ends with an error that says so
    let mut server = server;
    cfg.stream.redis_retry_max_secs = 3;
    cfg.stream.group_id = unique("faults-stream");
    let lake = Lake::open(&cfg.lake).expect("lake");
    let store = Arc::new(redis(&server.url).await);
    server.stop();
    let started = Instant::now();
    let err = bookrec::realtime::run(
        &cfg,
        &lake,
        store,
        Arc::new(StreamMetrics::new().expect("metrics")),
        CancellationToken::new(),
        true,
    )
    .await
    .expect_err("Redis is gone");
    assert!(err.to_string().contains("redis_retry_max_secs"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_redis_state_is_detected_and_rebuilt_from_the_lake_or_ends_the_run() {
    let d = data(800);
    let mut server = PrivateRedis::start();
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&d, 2, &server.url, lake_dir.path()).await;
    cfg.stream.max_batch_events = 50;
    cfg.stream.max_batch_ms = 100;
    let expected = uninterrupted(&cfg, &d).await;

    // the first half is landed (the lake is what a rebuild reads) and streamed
    produce(&cfg, &d.records[..400]).await;
    let lake = Lake::open(&cfg.lake).expect("lake");
    {
        let (cfg, lake) = (cfg.clone(), lake.clone());
        tokio::task::spawn_blocking(move || {
            bookrec::land::run(&cfg, &lake, &CancellationToken::new(), true)
        })
        .await
        .expect("join")
        .expect("land");
    }
    let observer = redis(&server.url).await;
    let store = Arc::new(redis(&server.url).await);
    let metrics = Arc::new(StreamMetrics::new().expect("metrics"));
    let cancel = CancellationToken::new();
    let run = spawn_stream(&cfg, store.clone(), metrics.clone(), &cancel);
    applied(&observer, &cfg.stream.group_id, 400).await;
    // Redis is flushed under the running stream; then the second half arrives
    server.flushall();
    produce(&cfg, &d.records[400..]).await;
    applied(&observer, &cfg.stream.group_id, 800).await;
    cancel.cancel();
    let report = run.await.expect("join").expect("run");
    assert_eq!(snapshot(store.as_ref(), &d).await, expected, "{report:?}");
    let text = metrics.text();
    assert_eq!(
        counter(&text, "bookrec_stream_state_lost_total"),
        1,
        "{text}"
    );
    assert_eq!(counter(&text, "bookrec_stream_rebuilds_total"), 1, "{text}");

    // Redis restarts empty under a stream configured to exit: it stops with the reason
    let mut exit_cfg = cfg.clone();
    exit_cfg.stream.on_state_lost = OnStateLost::Exit;
    let cancel = CancellationToken::new();
    let run = spawn_stream(
        &exit_cfg,
        store.clone(),
        Arc::new(StreamMetrics::new().expect("metrics")),
        &cancel,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    let one_more = data(1);
    let mut more = one_more.records.clone();
    more[0].0 = d.users[0].clone();
    produce(&cfg, &more).await;
    let ended = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the stream noticed within a minute")
        .expect("join");
    let err = ended.expect_err("state lost with on_state_lost = exit");
    assert!(
        err.to_string().contains("lost state") && err.to_string().contains("on_state_lost"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn until_caught_up_without_an_assignment_says_so_and_gives_up() {
    let d = data(10);
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&d, 1, "redis://127.0.0.1:6379", lake_dir.path()).await;
    // a topic that is not there: the group's assignment stays empty (as when another member,
    // perhaps a dead one the broker still counts, holds every partition)
    cfg.kafka.topic = unique("absent");
    for (sub, prefix) in [("stream", "stream"), ("land", "land")] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_bookrec"))
            .args([sub, "--until-caught-up"])
            .env("BOOKREC__KAFKA__BROKERS", &cfg.kafka.brokers)
            .env("BOOKREC__KAFKA__TOPIC", &cfg.kafka.topic)
            .env("BOOKREC__KAFKA__CREATE_TOPICS", "false")
            .env("BOOKREC__KAFKA__ASSIGNMENT_TIMEOUT_SECS", "12")
            .env("BOOKREC__LAKE__URL", &cfg.lake.url)
            .env("BOOKREC__STREAM__GROUP_ID", &cfg.stream.group_id)
            .env("BOOKREC__STREAM__METRICS_LISTEN", "")
            .env("BOOKREC__LAND__METRICS_LISTEN", "")
            .env("BOOKREC__LAND__CDC", "{}")
            .env("BOOKREC__LAND__GROUP_ID", &cfg.land.group_id)
            .env("BOOKREC__LOG__FILTER", "info")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let logs = format!("{stdout}{stderr}");
        assert!(!out.status.success(), "{sub}: {logs}");
        assert!(
            logs.matches(&format!("{prefix}: waiting for a partition assignment"))
                .count()
                >= 2,
            "{sub}: {logs}"
        );
        assert!(
            logs.contains("no partition of") && logs.contains("assignment_timeout_secs"),
            "{sub}: {logs}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{sub}");
    }
}

/// The soak: `BOOKREC_SOAK_EVENTS` events (default 20,000; BENCHMARKS.md records a 200k
/// run) with a second member joining and leaving every few seconds and Redis restarted
/// twice — once from its append-only file, once empty — under the running stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_rebalances_and_redis_restarts_end_with_the_uninterrupted_features() {
    let n: usize = std::env::var("BOOKREC_SOAK_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let d = data(n);
    let mut server = PrivateRedis::start_persistent();
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(&d, 4, &server.url, lake_dir.path()).await;
    cfg.stream.max_batch_events = 2000;
    cfg.stream.max_batch_ms = 1000;
    let expected = uninterrupted(&cfg, &d).await;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    interloper(
        &cfg,
        Duration::from_secs(3),
        Duration::from_secs(2),
        stop.clone(),
    );
    let observer = redis(&server.url).await;
    let store = Arc::new(redis(&server.url).await);
    let metrics = Arc::new(StreamMetrics::new().expect("metrics"));
    let cancel = CancellationToken::new();
    let run = spawn_stream(&cfg, store.clone(), metrics.clone(), &cancel);
    let covered = || async {
        observer
            .offsets(&cfg.stream.group_id)
            .await
            .map(|o| o.values().sum::<i64>())
            .unwrap_or(0)
    };
    // the events arrive in thirds; Redis restarts after each of the first two
    for (i, third) in d.records.chunks(n.div_ceil(3)).enumerate() {
        produce(&cfg, third).await;
        let wanted = (((i + 1) * n.div_ceil(3)).min(n) as i64) * 2 / 3;
        let deadline = Instant::now() + Duration::from_secs(600);
        while covered().await < wanted {
            assert!(!run.is_finished(), "the stream ended: {:?}", run.await);
            assert!(Instant::now() < deadline, "soak stalled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match i {
            0 => server.restart(), // from its append-only file: nothing lost, calls retried
            1 => {
                server.stop(); // empty: the state is lost and rebuilt
                server = PrivateRedis::start_on(server.port);
            }
            _ => {}
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while (covered().await as usize) < n {
        assert!(!run.is_finished(), "the stream ended: {:?}", run.await);
        assert!(Instant::now() < deadline, "soak did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    cancel.cancel();
    let report = run.await.expect("join").expect("run");
    let got = snapshot(store.as_ref(), &d).await;
    assert_eq!(got.heat_total() as usize, n);
    assert_eq!(got, expected, "{report:?}");
    let text = metrics.text();
    for name in [
        "bookrec_stream_rebalances_total",
        "bookrec_stream_apply_retries_total",
        "bookrec_stream_state_lost_total",
        "bookrec_stream_rebuilds_total",
    ] {
        assert!(counter(&text, name) >= 1, "{name}: {text}");
    }
    eprintln!(
        "soak: {n} events in {:.1} s; {}",
        started.elapsed().as_secs_f64(),
        text.lines()
            .filter(|l| l.starts_with("bookrec_stream_") && l.contains("_total "))
            .collect::<Vec<_>>()
            .join("; ")
    );
}
