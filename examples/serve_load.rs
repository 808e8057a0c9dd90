//! Load generator for `bookrec serve` (scripts/bench-serve runs it).
//!
//! Fills the realtime features of the published model's users in Redis (what the stream
//! would write: five recent views after the model's cut-off, a category bucket, book heat,
//! a realtime list `rec:rt:<user>` of 20 books with reasons), and of 1,000 users the model
//! does not know (five recent views: they are folded in), then asks
//! `GET /api/recommendations/{user}?k=10` — 90% users of the model, 10% unknown — in two
//! phases:
//!
//! 1. open loop at a fixed rate: request i is due at start + i/rate and its latency counts
//!    from then (queueing included: no coordinated omission); twice — "cold": one pass over
//!    the 10,000 request URLs with the API's per-model-version cache of published lists
//!    empty (most lists come from the DB), then "warm": `seconds` more;
//! 2. closed loop: `concurrency` connections back to back: the maximum throughput.
//!
//!     serve_load URL STORE_URL REDIS_URL GROUP [rate=2000] [seconds=20] [concurrency=32]
//!
//! Prints one JSON object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bookrec::features::{Expiry, FeatureStore, Op, RedisStore, Span};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut ms: Vec<f64>, errors: usize, seconds: f64) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    serde_json::json!({
        "requests": ms.len() + errors,
        "errors": errors,
        "rps": (ms.len() + errors) as f64 / seconds,
        "p50_ms": percentile(&ms, 0.5),
        "p90_ms": percentile(&ms, 0.9),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(0.0),
    })
}

async fn one(client: &reqwest::Client, url: &str) -> bool {
    match client.get(url).send().await {
        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

const MAX_IN_FLIGHT: usize = 64;

/// Requests due at start + i/rate for `seconds`; latency from each request's due time.
async fn open_loop(
    client: &reqwest::Client,
    urls: &Arc<Vec<String>>,
    rate: f64,
    seconds: f64,
) -> serde_json::Value {
    let n = (rate * seconds) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    // at most this many requests in flight (connections); a late request waits for one,
    // and its wait counts in its latency
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let (client, urls, slots) = (client.clone(), urls.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let Ok(_slot) = slots.acquire().await else {
                return (false, 0.0);
            };
            let ok = one(&client, &urls[i % urls.len()]).await;
            (ok, due.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut ms = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((true, l)) => ms.push(l),
            _ => errors += 1,
        }
    }
    summary(ms, errors, seconds)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_owned());
    let (base, store_url, redis_url, group) = (
        arg(0, "http://127.0.0.1:8080"),
        arg(1, ""),
        arg(2, ""),
        arg(3, "bench"),
    );
    let rate: f64 = arg(4, "2000").parse()?;
    let seconds: f64 = arg(5, "20").parse()?;
    let concurrency: usize = arg(6, "32").parse()?;

    // the model's users and books
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&store_url).await?;
    let users: Vec<String> = sqlx::query(
        "SELECT DISTINCT r.user_id FROM rec_user_books r JOIN model_current c ON c.version = r.version LIMIT 5000",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .filter_map(|r| r.try_get::<String, _>(0).ok())
    .collect();
    let books: Vec<String> = sqlx::query(
        "SELECT DISTINCT r.book_id FROM rec_similar_books r JOIN model_current c ON c.version = r.version LIMIT 3000",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .filter_map(|r| r.try_get::<String, _>(0).ok())
    .collect();
    if users.is_empty() || books.is_empty() {
        return Err(
            format!("{store_url}: no published model (run bookrec demo --no-serve first)").into(),
        );
    }

    // realtime features, as the stream writes them, newer than the cut-off
    let redis = RedisStore::connect(&redis_url, Duration::from_secs(5)).await?;
    let mut rng = StdRng::seed_from_u64(7);
    let now = chrono::Utc::now();
    let minute = now.timestamp() - now.timestamp() % 60;
    let cold_users: Vec<String> = (0..1000).map(|j| format!("cold-{j}")).collect();
    let everyone: Vec<String> = users.iter().chain(&cold_users).cloned().collect();
    for (offset, chunk) in everyone.chunks(200).enumerate() {
        let offset = offset as i64;
        let mut ops = Vec::new();
        for u in chunk {
            for j in 0..20 {
                let book = books[rng.random_range(0..books.len())].clone();
                let seed = &books[rng.random_range(0..books.len())];
                ops.push(Op::Best {
                    key: format!("rec:rt:{u}"),
                    member: book,
                    score: 20_000.0 - j as f64 * 0.1,
                    max_len: 50,
                    reason: Some((format!("rec:why:{u}"), format!("similar_to:{seed}"))),
                    expiry: Expiry::AfterSecs(3600),
                });
            }
            for j in 0..5 {
                ops.push(Op::PushRecent {
                    key: format!("rt:recent:{u}"),
                    member: books[rng.random_range(0..books.len())].clone(),
                    at: (now.timestamp_millis() - j * 1000) as f64,
                    max_len: 50,
                    expiry: Expiry::AfterSecs(3600),
                });
            }
            ops.push(Op::HashIncr {
                key: format!("rt:cat:{u}:{minute}"),
                field: "bench".into(),
                delta: 3.0,
                expiry: Expiry::AfterSecs(3600),
            });
            ops.push(Op::ZsetIncr {
                key: format!("rt:heat:{minute}"),
                member: books[rng.random_range(0..books.len())].clone(),
                delta: 1.0,
                expiry: Expiry::AfterSecs(3600),
            });
        }
        ops.push(Op::HashMax {
            key: bookrec::features::progress_key(&group),
            field: "event_ms".into(),
            value: now.timestamp_millis() as f64,
        });
        let span = Span {
            partition: 0,
            from: offset,
            to: offset + 1,
        };
        redis.apply(&group, &ops, &[span]).await?;
    }
    let urls: Arc<Vec<String>> = Arc::new(
        (0..10_000)
            .map(|i| {
                let u = if rng.random_range(0..10) == 0 {
                    cold_users[i % cold_users.len()].clone()
                } else {
                    users[rng.random_range(0..users.len())].clone()
                };
                format!("{base}/api/recommendations/{u}?k=10")
            })
            .collect(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(5))
        .build()?;
    // connections up
    for u in urls.iter().take(20) {
        one(&client, u).await;
    }

    // 1: open loop at `rate`: first over lists the API has not read yet (its per-version
    // cache is cold), then again (warm)
    let cold = open_loop(&client, &urls, rate, urls.len() as f64 / rate).await;
    let warm = open_loop(&client, &urls, rate, seconds).await;

    // 2: closed loop, `concurrency` connections
    let until = Instant::now() + Duration::from_secs_f64(seconds / 2.0);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, urls) = (client.clone(), urls.clone());
            tokio::spawn(async move {
                let (mut ms, mut errors, mut i) = (Vec::new(), 0usize, w * 997);
                while Instant::now() < until {
                    let t = Instant::now();
                    if one(&client, &urls[i % urls.len()]).await {
                        ms.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                    i += 1;
                }
                (ms, errors)
            })
        })
        .collect();
    let (mut all, mut errs) = (Vec::new(), 0);
    for w in workers {
        if let Ok((ms, e)) = w.await {
            all.extend(ms);
            errs += e;
        }
    }
    let max = summary(all, errs, started.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "users": users.len(),
            "books": books.len(),
            "fixed_rate": { "target_rps": rate, "cold": cold, "warm": warm },
            "max_throughput": { "concurrency": concurrency, "result": max },
        })
    );
    Ok(())
}
