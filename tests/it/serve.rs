//! `bookrec serve` end to end on real services: events over HTTP → collector → Kafka (tansu)
//! → lake (lander) and Redis (stream) → batch (features, ALS, SQLite) → the API answers with
//! the expected reasons; realtime signals count only after the model's cut-off; owned books
//! drop out; a cold user gets popular books and books similar to their views. Then Redis is
//! stopped: still 200, the offline list, and a flag saying realtime is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bookrec::features::RedisStore;
use bookrec::lake::Lake;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::stream::books_lake;
use crate::support::{Collector, PrivateRedis, brokers, collector_config, unique};

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn reasons(body: &Value) -> Vec<(String, Vec<String>)> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["book_id"].as_str().unwrap_or_default().to_owned(),
                        i["reasons"]
                            .as_array()
                            .map(|r| {
                                r.iter()
                                    .filter_map(|x| x.as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `url` until `ok` holds (10 s at most); returns the last body.
async fn until(client: &reqwest::Client, url: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(client, url).await;
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{url}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `bookrec serve` on a free port, connecting its DB and Redis from `cfg`.
async fn start_api(
    cfg: &bookrec::config::Config,
    lake: &Lake,
    stop: &CancellationToken,
) -> (
    String,
    tokio::task::JoinHandle<Result<(), bookrec::serve::ServeError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (cfg, lake, stop) = (cfg.clone(), lake.clone(), stop.clone());
    let handle = tokio::spawn(async move {
        let sources = bookrec::serve::Sources {
            db: None,
            features: None,
            lake,
        };
        bookrec::serve::run(&cfg, listener, sources, stop).await
    });
    (url, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_blended_recommendations_and_redis_down_degrades() {
    let mut redis = PrivateRedis::start();
    let tag = unique("srv").replace('-', "");
    let f: Vec<String> = (0..6).map(|i| format!("{tag}-f{i}")).collect();
    let h: Vec<String> = (0..6).map(|i| format!("{tag}-h{i}")).collect();
    let books: Vec<(String, String)> = f
        .iter()
        .map(|b| (b.clone(), "fantasy".to_string()))
        .chain(h.iter().map(|b| (b.clone(), "history".to_string())))
        .collect();
    let lake_dir = tempfile::tempdir().expect("lake dir");
    let spool = tempfile::tempdir().expect("spool");
    let db_dir = tempfile::tempdir().expect("db dir");
    books_lake(lake_dir.path(), &books).await;
    let mut cfg = collector_config(&brokers(), spool.path());
    cfg.kafka.partitions = 1;
    cfg.lake.url = format!("file://{}", lake_dir.path().display());
    cfg.land.group_id = unique("land");
    cfg.land.cdc.clear(); // the seed's CDC topics are not part of this test
    cfg.stream.group_id = unique("stream");
    cfg.stream.max_batch_ms = 100;
    cfg.redis.url = redis.url.clone();
    cfg.store.url = format!("sqlite://{}", db_dir.path().join("rec.db").display());
    cfg.serve.refresh_ms = 200;
    cfg.serve.api_keys = vec!["other-key".into(), "the-test-key".into()];
    cfg.als.factors = 8;
    let user = |i: usize| format!("{tag}-u{i}");

    // the history: even users read 4 of the 6 fantasy books, odd users 4 of the history ones
    let collector = Collector::start(&cfg).await;
    // impressions go to this collector; an experiment with two blends splits the users
    cfg.serve.collect_url = collector.url("");
    cfg.serve.impressions.flush_ms = 50;
    cfg.serve.experiments = vec![bookrec::config::ExperimentConfig {
        name: "blend-test".into(),
        salt: None,
        traffic: 1.0,
        variants: vec![
            bookrec::config::VariantConfig {
                name: "control".into(),
                share: 1.0,
                weights: Default::default(),
                exclude_ignored_after: None,
                model_version: None,
            },
            bookrec::config::VariantConfig {
                name: "more-similar".into(),
                share: 1.0,
                weights: bookrec::config::WeightOverrides {
                    similar: Some(6.0),
                    popular: Some(2.0),
                    ..Default::default()
                },
                exclude_ignored_after: None,
                model_version: None,
            },
        ],
    }];
    let http = reqwest::Client::new();
    let mut events = Vec::new();
    for u in 0..20 {
        let shelf = if u % 2 == 0 { &f } else { &h };
        for j in 0..4 {
            let b = &shelf[(u + j) % 6];
            events.push(json!({"event_type": "view", "user_id": user(u), "book_id": b}));
            events.push(json!({"event_type": "purchase", "user_id": user(u), "book_id": b}));
        }
    }
    let r = http
        .post(collector.url("/api/logs"))
        .json(&events)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    collector.wait_drained(Duration::from_secs(60)).await;
    let lake = Lake::open(&cfg.lake).expect("lake");
    let landed = {
        let (cfg, lake) = (cfg.clone(), lake.clone());
        tokio::task::spawn_blocking(move || {
            bookrec::land::run(&cfg, &lake, &CancellationToken::new(), true)
        })
        .await
        .expect("lander thread")
        .expect("land")
    };
    assert_eq!(landed.events, 160);
    let store = bookrec::store::Store::connect(&cfg.store.url)
        .await
        .expect("sqlite");
    let training = bookrec::batch::runner::Training::from_config(&cfg);
    let run = bookrec::batch::runner::run(
        &lake,
        Some(&store),
        &cfg.batch,
        &[],
        chrono::Utc::now(),
        Some(&training),
        &mut |_| {},
    )
    .await
    .expect("batch");
    let version = run.model.expect("a model").version;
    // events from now on are newer than the model's cut-off
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // the stream (from the start of the topic: the history too) and the API
    let stop = CancellationToken::new();
    let fs = Arc::new(
        RedisStore::connect(&cfg.redis.url, Duration::from_secs(2))
            .await
            .expect("redis"),
    );
    let stream = {
        let (cfg, lake, stop) = (cfg.clone(), lake.clone(), stop.clone());
        let metrics = Arc::new(bookrec::realtime::StreamMetrics::new().expect("metrics"));
        tokio::spawn(
            async move { bookrec::realtime::run(&cfg, &lake, fs, metrics, stop, false).await },
        )
    };
    let (api, server) = start_api(&cfg, &lake, &stop).await;

    // ready once the DB and Redis are connected and the promoted version's lists and item
    // factors are loaded from the lake: the first request after that already has the model
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let (s, body) = get(&http, &format!("{api}/readyz")).await;
        if s == 200 {
            break body;
        }
        assert_eq!(s, 503, "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        ready["checks"],
        json!({"db": "ok", "model": "ok", "redis": "ok"}),
        "{ready}"
    );
    let (_, first) = get(&http, &format!("{api}/api/recommendations/{}", user(2))).await;
    assert_eq!(first["model_version"], json!(version.clone()), "{first}");

    // u0 (fantasy): the offline list; the history views of u0 are older than the cut-off,
    // so no "similar_to" although the stream has them in Redis
    let recs = format!("{api}/api/recommendations/{}", user(0));
    let body = until(&http, &recs, |b| {
        b["model_version"] == json!(version.clone()) && b["realtime"]["available"] == true
    })
    .await;
    let items = reasons(&body);
    assert!(!items.is_empty(), "{body}");
    let owned0: Vec<&String> = (0..4).map(|j| &f[j % 6]).collect();
    assert!(
        items.iter().all(|(b, _)| !owned0.contains(&b)),
        "seen books: {body}"
    );
    assert!(f.contains(&items[0].0), "a fantasy book first: {body}");
    assert!(items[0].1.contains(&"als".to_string()), "{body}");
    // ?exclude= leaves those books out; more than 100 ids, or a bad id, is a 400
    let first = items[0].0.clone();
    let (s, ex) = get(&http, &format!("{recs}?exclude={first}")).await;
    assert_eq!(s, 200, "{ex}");
    assert!(!reasons(&ex).is_empty(), "{ex}");
    assert!(reasons(&ex).iter().all(|(b, _)| b != &first), "{ex}");
    let many = (0..101)
        .map(|i| format!("b{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (s, bad) = get(&http, &format!("{recs}?exclude={many}")).await;
    assert_eq!(
        (s, bad["error"]["code"].clone()),
        (400, json!("bad_exclude")),
        "{bad}"
    );
    let (s, bad) = get(&http, &format!("{recs}?exclude=fine,%01x")).await;
    assert_eq!(
        (s, bad["error"]["code"].clone()),
        (400, json!("invalid_id")),
        "{bad}"
    );
    assert!(
        items
            .iter()
            .all(|(_, r)| r.iter().all(|x| !x.starts_with("similar_to:"))),
        "views before the cut-off count: {body}"
    );
    assert_eq!(body["cold_start"], false);

    // u0 views a history book now: books similar to it come with that reason
    let post = |ev: Value| {
        let (http, url) = (http.clone(), collector.url("/api/log"));
        async move {
            let r = http.post(url).json(&ev).send().await.expect("post");
            assert_eq!(r.status(), 202);
        }
    };
    post(json!({"event_type": "view", "user_id": user(0), "book_id": h[0]})).await;
    let reason = format!("similar_to:{}", h[0]);
    let body = until(&http, &recs, |b| {
        reasons(b).iter().any(|(_, r)| r.contains(&reason))
    })
    .await;
    let items = reasons(&body);
    assert!(
        items.iter().all(|(b, _)| b != &h[0]),
        "the viewed book itself: {body}"
    );
    // where the view is the strongest reason, the book is a history book
    let led: Vec<&String> = items
        .iter()
        .filter(|(_, r)| r[0] == reason)
        .map(|(b, _)| b)
        .collect();
    assert!(!led.is_empty(), "{body}");
    assert!(led.iter().all(|b| h.contains(b)), "{body}");
    // … and a purchase takes a book out
    let bought = led[0].clone();
    post(json!({"event_type": "purchase", "user_id": user(0), "book_id": bought})).await;
    until(&http, &recs, |b| {
        reasons(b).iter().all(|(x, _)| x != &bought)
    })
    .await;

    // a cold user: popular books, then books similar to what they view
    let cold = format!("{api}/api/recommendations/{tag}-newbie?k=5");
    let body = until(&http, &cold, |b| !reasons(b).is_empty()).await;
    assert_eq!(body["cold_start"], true);
    assert!(
        reasons(&body)
            .iter()
            .all(|(_, r)| r.contains(&"popular".to_string())),
        "{body}"
    );
    post(json!({"event_type": "view", "user_id": format!("{tag}-newbie"), "book_id": f[1]})).await;
    let reason = format!("similar_to:{}", f[1]);
    let body = until(&http, &cold, |b| {
        reasons(b).iter().any(|(_, r)| r.contains(&reason))
    })
    .await;
    assert!(f.contains(&reasons(&body)[0].0), "{body}");
    // … and, folded in from that one view against the model's item factors (the user is
    // not in the model), the books the model gives such a reader: fantasy, reason fold_in
    let fold = "fold_in".to_string();
    let body = until(&http, &cold, |b| {
        reasons(b).iter().any(|(_, r)| r.contains(&fold))
    })
    .await;
    let folded: Vec<String> = reasons(&body)
        .into_iter()
        .filter(|(_, r)| r.contains(&fold))
        .map(|(b, _)| b)
        .collect();
    assert!(f.contains(&folded[0]), "a fantasy book first: {body}");
    assert!(!folded.contains(&f[1]), "the viewed book itself: {body}");
    assert_eq!(body["cold_start"], true, "{body}");

    // the other reads
    let (s, body) = get(&http, &format!("{api}/api/similar/{}?k=3", f[0])).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(3));
    assert!(
        f.contains(
            &body["items"][0]["book_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        )
    );
    let (s, body) = get(&http, &format!("{api}/api/similar/{tag}-nope")).await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (404, json!("unknown_book"))
    );
    let (s, body) = get(&http, &format!("{api}/api/popular?category=history&k=3")).await;
    assert_eq!((s, body["source"].clone()), (200, json!("model")), "{body}");
    assert!(
        body["items"]
            .as_array()
            .is_some_and(|i| !i.is_empty() && i.iter().all(|b| b["category"] == "history"))
    );
    // a user's profile is personal data: 401 without one of serve.api_keys, or a wrong one
    let profile_url = format!("{api}/api/users/{}/profile", user(0));
    for auth in [None, Some("Bearer wrong-key"), Some("the-test-key")] {
        let mut req = http.get(&profile_url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.expect("request");
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(
            r.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
    let r = http
        .get(&profile_url)
        .bearer_auth("the-test-key")
        .send()
        .await
        .expect("request");
    let s = r.status().as_u16();
    let body: Value = r.json().await.expect("json");
    assert_eq!(s, 200);
    assert_eq!(body["profile"]["user_id"], json!(user(0)), "{body}");
    assert_eq!(
        body["realtime"]["recent_books"][0]["book_id"],
        json!(h[0]),
        "{body}"
    );
    assert!(
        body["realtime"]["owned_books"]
            .as_array()
            .is_some_and(|o| o.iter().any(|b| b["book_id"] == json!(bought)))
    );
    let (s, body) = get(&http, &format!("{recs}?k=0")).await;
    assert_eq!((s, body["error"]["code"].clone()), (400, json!("bad_k")));
    // ids are checked before any backend call: empty, too long, invisible or edge spaces
    let long = "x".repeat(300);
    for path in [
        "/api/users//profile".to_string(),
        "/api/recommendations/".to_string(),
        "/api/similar/%20b1".to_string(),
        format!("/api/recommendations/{long}"),
        "/api/recommendations/u%E2%80%AE1".to_string(),
        "/api/recommendations/u1?context_book=b%E2%80%8B1".to_string(),
    ] {
        let (s, body) = get(&http, &format!("{api}{path}")).await;
        assert_eq!(
            (s, body["error"]["code"].clone()),
            (400, json!("invalid_id")),
            "{path}: {body}"
        );
    }
    let (s, body) = get(&http, &format!("{api}/api/nothing-here")).await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let (s, doc) = get(&http, &format!("{api}/api/openapi.json")).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/api/recommendations/{user_id}"].is_object());
    let metrics = http
        .get(format!("{api}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("bookrec_serve_request_seconds_bucket{route=\"/api/recommendations/{user_id}\",status=\"2xx\""),
        "{metrics}"
    );

    // impressions and the experiment report: 400 simulated users ask once each; each is in a
    // variant (the response says which) and clicks the first book with a probability that
    // depends on it (0.1 control, 0.5 more-similar), half the clickers add it to the cart
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut shown, mut clicks) = (0usize, Vec::new());
    let mut split = std::collections::HashMap::new();
    let mut last_response = None;
    let sent = |http: reqwest::Client, api: String| async move {
        crate::support::metric(
            &http,
            &format!("{api}/metrics"),
            "bookrec_serve_impression_events_total{outcome=\"sent\"}",
        )
        .await
    };
    let sent_before = sent(http.clone(), api.clone()).await;
    for i in 0..400 {
        let who = format!("{tag}-x{i}");
        let (s, body) = get(&http, &format!("{api}/api/recommendations/{who}?k=5")).await;
        assert_eq!(s, 200, "{body}");
        let variant = body["experiments"][0]["variant"]
            .as_str()
            .expect("every user is in the experiment")
            .to_owned();
        assert_eq!(body["experiments"][0]["experiment"], "blend-test", "{body}");
        *split.entry(variant.clone()).or_insert(0usize) += 1;
        let items = reasons(&body);
        assert!(!items.is_empty(), "{body}");
        shown += items.len();
        let request_id = body["request_id"].as_str().expect("request_id").to_owned();
        last_response = Some((request_id.clone(), items.len()));
        let p = if variant == "control" { 0.1 } else { 0.5 };
        if rng.random::<f64>() < p {
            clicks.push(
                json!({"event_type": "click", "user_id": who, "book_id": items[0].0,
                               "request_id": request_id, "position": 1}),
            );
            if rng.random::<bool>() {
                clicks.push(json!({"event_type": "add_to_cart", "user_id": who,
                                   "book_id": items[0].0}));
            }
        }
    }
    // users split about evenly (the bucketing's shares are unit-tested on 100k users)
    assert!(split.values().all(|&n| n > 150), "{split:?}");
    let r = http
        .post(collector.url("/api/logs"))
        .json(&clicks)
        .send()
        .await
        .expect("post clicks");
    assert_eq!(r.status(), 202);
    // every impression of those responses is posted (fire and forget, counted when sent;
    // in queue order, so the last response's landing below means all of them landed)
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent(http.clone(), api.clone()).await < sent_before + shown as f64 {
        assert!(Instant::now() < deadline, "impressions were not all sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for outcome in ["dropped_queue_full", "dropped_unreachable", "rejected"] {
        let name = format!("bookrec_serve_impression_events_total{{outcome=\"{outcome}\"}}");
        let n = crate::support::metric(&http, &format!("{api}/metrics"), &name).await;
        assert_eq!(n, 0.0, "{outcome}");
    }
    collector.wait_drained(Duration::from_secs(60)).await;
    {
        let (cfg, lake) = (cfg.clone(), lake.clone());
        tokio::task::spawn_blocking(move || {
            bookrec::land::run(&cfg, &lake, &CancellationToken::new(), true)
        })
        .await
        .expect("lander thread")
        .expect("land");
    }
    // in the lake: one impression per shown book of a response, under its request_id
    let (request_id, n) = last_response.expect("a response");
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    let landed = bookrec::sql::query_read_only(
        &ctx,
        &format!(
            "SELECT count(*) AS n, count(DISTINCT json_get(properties, 'position')) AS positions \
             FROM events WHERE event_type = 'impression' \
             AND json_get(properties, 'request_id') = '{request_id}' \
             AND json_get(properties, '/experiments/blend-test') IS NOT NULL"
        ),
    )
    .await
    .expect("query");
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&landed)
        .expect("format")
        .to_string();
    assert!(text.contains(&format!("| {n} | {n} ")), "{text}");
    let report = bookrec::batch::experiment::report(
        &lake,
        &cfg.batch.queries_dir,
        "blend-test",
        &["control".to_string(), "more-similar".to_string()],
        &chrono::Utc::now(),
        &std::collections::HashMap::new(),
    )
    .await
    .expect("report");
    eprintln!("{report}");
    assert_eq!(report.control, "control", "{report}");
    assert_eq!(report.variants.len(), 2, "{report}");
    let clicked: i64 = report.variants.iter().map(|v| v.clicks).sum();
    let posted = clicks.iter().filter(|c| c["event_type"] == "click").count() as i64;
    assert_eq!(clicked, posted, "every click is attributed: {report}");
    let ctr = report
        .comparisons
        .iter()
        .find(|c| c.metric == "ctr")
        .expect("a ctr comparison");
    assert!(ctr.difference > 0.0 && ctr.significant, "{report}");
    assert!(
        report.variants.iter().all(|v| v.conversions > 0),
        "cart adds are attributed: {report}"
    );

    // impression-aware ranking (a second API with it on): books shown twice and neither
    // viewed nor clicked are left out once the stream has counted their impressions
    let mut hiding = cfg.clone();
    hiding.serve.exclude_ignored_after = 2.0;
    hiding.serve.experiments.clear();
    let (hide_api, _hide) = start_api(&hiding, &lake, &stop).await;
    let who = format!("{hide_api}/api/recommendations/{tag}-ignorer?k=3");
    let shown_first = reasons(&until(&http, &who, |b| reasons(b).len() == 3).await);
    let (s, again) = get(&http, &who).await;
    assert_eq!(s, 200, "{again}");
    let ignored: Vec<String> = shown_first
        .iter()
        .filter(|(b, _)| reasons(&again).iter().any(|(x, _)| x == b))
        .map(|(b, _)| b.clone())
        .collect();
    assert!(!ignored.is_empty(), "{again}");
    let body = until(&http, &format!("{who}&impression=0"), |b| {
        !reasons(b).is_empty() && reasons(b).iter().all(|(x, _)| !ignored.contains(x))
    })
    .await;
    assert_eq!(body["cold_start"], true, "{body}");

    // a variant pinned to an older kept version: a second model is published (v2 current,
    // v1 retired with its rows); an API whose experiment pins v1 for one variant, an
    // unknown version for another, serves those users v1's lists, and the others v2
    let mut again = training.clone();
    again.publish.ndcg_tolerance = 1.0e9; // same data: promote whatever it scores
    let v2 = bookrec::batch::runner::run(
        &lake,
        Some(&store),
        &cfg.batch,
        &[],
        chrono::Utc::now(),
        Some(&again),
        &mut |_| {},
    )
    .await
    .expect("second batch")
    .model
    .expect("a second model");
    assert!(v2.promoted, "{v2:?}");
    let mut pinning = cfg.clone();
    pinning.serve.experiments = vec![bookrec::config::ExperimentConfig {
        name: "pin-test".into(),
        salt: None,
        traffic: 1.0,
        variants: ["old", "gone", "new"]
            .iter()
            .zip([version.as_str(), "als-no-such-version", "current"])
            .map(|(name, pin)| bookrec::config::VariantConfig {
                name: name.to_string(),
                share: 1.0,
                weights: Default::default(),
                exclude_ignored_after: None,
                model_version: Some(pin.to_string()),
            })
            .collect(),
    }];
    let (pin_api, _pin) = start_api(&pinning, &lake, &stop).await;
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for u in 0..20 {
        let url = format!("{pin_api}/api/recommendations/{}?impression=0", user(u));
        let body = until(&http, &url, |b| b["model_version"].is_string()).await;
        let variant = body["experiments"][0]["variant"]
            .as_str()
            .expect("a variant")
            .to_string();
        let model = body["model_version"]
            .as_str()
            .expect("a version")
            .to_string();
        assert!(
            reasons(&body)
                .iter()
                .any(|(_, r)| r.contains(&"als".to_string())),
            "a known user gets their published list: {body}"
        );
        served.entry(variant).or_default().insert(model);
    }
    let one = |v: &str| BTreeSet::from([v.to_string()]);
    assert_eq!(served.get("old"), Some(&one(&version)), "{served:?}");
    assert_eq!(served.get("gone"), Some(&one(&v2.version)), "{served:?}");
    assert_eq!(served.get("new"), Some(&one(&v2.version)), "{served:?}");

    // the DB unreachable (a second API on a dead DB URL): 200 from Redis alone, flagged
    let mut dead_db = cfg.clone();
    dead_db.store.url = "postgres://postgres@127.0.0.1:1/nothing".into();
    let (no_db_api, no_db) = start_api(&dead_db, &lake, &stop).await;
    let body = until(
        &http,
        &format!("{no_db_api}/api/recommendations/{}", user(0)),
        |b| b["realtime"]["available"] == true && !reasons(b).is_empty(),
    )
    .await;
    assert_eq!(body["offline"]["available"], false, "{body}");
    assert!(body["offline"]["error"].is_string(), "{body}");
    // it answers, degraded, but is not ready: a load balancer keeps it out of rotation
    let (s, ready) = get(&http, &format!("{no_db_api}/readyz")).await;
    assert_eq!(
        (s, ready["status"].clone()),
        (503, json!("not ready")),
        "{ready}"
    );
    assert_eq!(
        ready["checks"]["db"],
        json!("failing: not connected yet"),
        "{ready}"
    );
    let (s, body) = get(&http, &format!("{no_db_api}/api/popular")).await;
    assert_eq!(
        (s, body["source"].clone()),
        (200, json!("trending")),
        "{body}"
    );
    let (s, _) = get(&http, &format!("{no_db_api}/api/similar/{}", f[0])).await;
    assert_eq!(s, 503, "similar books need the DB");

    // Redis stops: 200, the offline list, realtime flagged missing, quickly
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let started = Instant::now();
        let (s, body) = get(&http, &recs).await;
        assert_eq!(s, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a slow answer with Redis down"
        );
        if body["realtime"]["available"] == false {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "realtime still reported available: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body["realtime"]["error"].is_string(), "{body}");
    assert_eq!(body["offline"]["available"], true);
    let items = reasons(&body);
    assert!(
        !items.is_empty() && items[0].1.contains(&"als".to_string()),
        "{body}"
    );

    stop.cancel();
    let _ = server.await;
    let _ = no_db.await;
    let _ = stream.await;
    collector.stop().await;
}
