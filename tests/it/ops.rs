//! The ops listeners of the background processes (`land.metrics_listen`,
//! `stream.metrics_listen`, `schedule.metrics_listen`): `/healthz`, `/readyz` and `/metrics`
//! of the real binaries against the real broker, Redis and PostgreSQL — ready when working,
//! 503 naming the failing dependency while it fails (the process goes on), ready again after.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::land::{land_config, lander_env, produce_events};
use crate::support::{self, Broker, PrivateRedis, brokers, free_port, unique};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(sub: &str, env: &[(&str, String)]) -> Killed {
    Killed(
        Command::new(env!("CARGO_BIN_EXE_bookrec"))
            .arg(sub)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn bookrec"),
    )
}

/// `GET` → (status, body); `None` while nothing listens.
async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Polls `/readyz` until its status is `want` and `check(body)` holds; returns the body.
async fn ready_until(base: &str, want: u16, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some((status, body)) = get(&format!("{base}/readyz")).await {
            let v: Value = serde_json::from_str(&body).expect("readyz is JSON");
            if status == want && check(&v) {
                return v;
            }
            last = Some((status, v));
        }
        assert!(Instant::now() < deadline, "{what}: last /readyz {last:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of an unlabelled metric in `/metrics` (`None` while nothing listens).
async fn metric(base: &str, name: &str) -> Option<f64> {
    let (status, text) = get(&format!("{base}/metrics")).await?;
    assert_eq!(status, 200);
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{text}")),
    )
}

async fn metric_until(base: &str, name: &str, at_least: f64) {
    metric_holds(base, name, |v| v >= at_least).await
}

async fn metric_holds(base: &str, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = metric(base, name).await;
        if v.is_some_and(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn land_and_stream_report_health_readiness_and_metrics() {
    let b = brokers();
    support::require_broker(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = land_config(&b, &format!("file://{}", dir.path().display()));
    produce_events(&cfg, 50).await;

    let land_port = free_port();
    let land_base = format!("http://127.0.0.1:{land_port}");
    let _land = spawn(
        "land",
        &lander_env(
            &cfg,
            &[
                (
                    "BOOKREC__LAND__METRICS_LISTEN",
                    &format!("127.0.0.1:{land_port}"),
                ),
                ("BOOKREC__LAND__MAX_FILE_AGE_MS", "500"),
            ],
        ),
    );
    let v = ready_until(&land_base, 200, "land ready", |v| {
        v["checks"]["consumer"] == "ok"
    })
    .await;
    assert_eq!(v["status"], "ready");
    assert_eq!(
        get(&format!("{land_base}/healthz")).await,
        Some((200, "ok".to_string()))
    );
    metric_until(&land_base, "bookrec_land_events_total", 50.0).await;
    metric_until(&land_base, "bookrec_land_files_total", 1.0).await;
    metric_until(
        &land_base,
        "bookrec_land_last_commit_timestamp_seconds",
        1.0,
    )
    .await;
    // measured every 10 s
    metric_holds(&land_base, "bookrec_land_lag_records", |v| v == 0.0).await;

    // the stream: ready while Redis answers; a paused Redis makes it not ready, naming it
    let redis = PrivateRedis::start();
    let stream_port = free_port();
    let stream_base = format!("http://127.0.0.1:{stream_port}");
    let _stream = spawn(
        "stream",
        &[
            ("BOOKREC__KAFKA__BROKERS", cfg.kafka.brokers.clone()),
            ("BOOKREC__KAFKA__TOPIC", cfg.kafka.topic.clone()),
            ("BOOKREC__LAKE__URL", cfg.lake.url.clone()),
            ("BOOKREC__STREAM__GROUP_ID", unique("ops-stream")),
            ("BOOKREC__STREAM__ALLOWED_LATENESS_SECS", "86400".into()),
            ("BOOKREC__REDIS__URL", redis.url.clone()),
            ("BOOKREC__REDIS__TIMEOUT_MS", "500".into()),
            ("BOOKREC__LOG__FILTER", "warn".into()),
            (
                "BOOKREC__STREAM__METRICS_LISTEN",
                format!("127.0.0.1:{stream_port}"),
            ),
        ],
    );
    metric_until(&stream_base, "bookrec_stream_events_total", 50.0).await;
    ready_until(&stream_base, 200, "stream ready", |v| {
        v["checks"]["redis"] == "ok"
    })
    .await;
    redis.pause(true);
    produce_events(&cfg, 10).await;
    let v = ready_until(&stream_base, 503, "stream not ready without Redis", |v| {
        v["checks"]["redis"]
            .as_str()
            .is_some_and(|s| s.starts_with("failing"))
    })
    .await;
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["checks"]["consumer"], "ok", "{v}");
    redis.pause(false);
    ready_until(&stream_base, 200, "stream ready again", |v| {
        v["checks"]["redis"] == "ok"
    })
    .await;
    metric_until(&stream_base, "bookrec_stream_events_total", 60.0).await;
}

/// A lander that starts while the broker is down has no partition to measure a lag on; it
/// still asks the broker every 10 s, so `/readyz` names Kafka as failing (it once said
/// "ready" here, librdkafka reporting its transport errors only to its log), and it lands
/// once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lander_without_a_broker_is_not_ready_and_lands_once_it_is_back() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = land_config(
        &broker.brokers(),
        &format!("file://{}", dir.path().display()),
    );
    produce_events(&cfg, 20).await;
    broker.stop();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _land = spawn(
        "land",
        &lander_env(
            &cfg,
            &[
                (
                    "BOOKREC__LAND__METRICS_LISTEN",
                    &format!("127.0.0.1:{port}"),
                ),
                // the topic is there; creating it would wait for the broker first
                ("BOOKREC__KAFKA__CREATE_TOPICS", "false"),
                ("BOOKREC__LAND__MAX_FILE_AGE_MS", "500"),
            ],
        ),
    );
    let v = ready_until(&base, 503, "land not ready without a broker", |v| {
        v["checks"]["kafka"]
            .as_str()
            .is_some_and(|s| s.starts_with("failing"))
    })
    .await;
    assert_eq!(v["checks"]["consumer"], "ok", "the loop turns: {v}");
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        Some((200, "ok".to_string())),
        "alive: an orchestrator must not kill it for a broker outage"
    );
    broker.resume();
    ready_until(&base, 200, "land ready with the broker back", |v| {
        v["checks"]["kafka"] == "ok"
    })
    .await;
    metric_until(&base, "bookrec_land_events_total", 20.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_outlives_a_lost_store_and_says_so() {
    let db = unique("ops_sched").replace('-', "_");
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("postgres");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("create");
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    bookrec::store::Store::connect(&url).await.expect("migrate");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _schedule = spawn(
        "schedule",
        &[
            ("BOOKREC__STORE__URL", url.clone()),
            (
                "BOOKREC__LAKE__URL",
                format!("file://{}", dir.path().display()),
            ),
            ("BOOKREC__SCHEDULE__TICK_MS", "200".into()),
            ("BOOKREC__SCHEDULE__MISSED_RUN_POLICY", "skip".into()),
            (
                "BOOKREC__SCHEDULE__JOBS",
                r#"[{name = "yearly", cron = "0 0 0 1 1 *", select = [], skip_als = true}]"#.into(),
            ),
            (
                "BOOKREC__SCHEDULE__METRICS_LISTEN",
                format!("127.0.0.1:{port}"),
            ),
            ("BOOKREC__LOG__FILTER", "warn".into()),
        ],
    );
    ready_until(&base, 200, "scheduler ready", |v| {
        v["checks"]["store"] == "ok"
    })
    .await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop");
    let v = ready_until(&base, 503, "scheduler not ready without its store", |v| {
        v["checks"]["store"]
            .as_str()
            .is_some_and(|s| s.starts_with("failing"))
    })
    .await;
    assert_eq!(v["checks"]["scheduler"], "ok", "the loop goes on: {v}");
    metric_until(&base, "bookrec_schedule_store_errors_total", 1.0).await;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .expect("recreate");
    bookrec::store::Store::connect(&url)
        .await
        .expect("migrate again");
    ready_until(&base, 200, "scheduler ready again", |v| {
        v["checks"]["store"] == "ok"
    })
    .await;
    drop(_schedule);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop");
}
