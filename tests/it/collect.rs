//! `bookrec collect` against the real broker.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{self, Broker, Collector, brokers, collector_config, read_topic};

fn event(user: usize, seq: usize) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": if seq.is_multiple_of(7) { "click" } else { "view" },
        "user_id": format!("u{user}"),
        "book_id": format!("b{}", (user * 31 + seq) % 97),
        "client_ts": "2026-11-26T07:00:00Z",
        "sent_at": "2026-11-26T07:00:01Z",
        "properties": {"seq": seq},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_arrive_in_kafka_once_in_user_order() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    let cfg = collector_config(&b, spool.path());
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();

    let users = 20;
    let mut posted = Vec::new();
    let mut seq = 0;
    // batches as JSON arrays, as NDJSON, and single events on the seed endpoint
    for round in 0..12u32 {
        let batch: Vec<Value> = (0..50)
            .map(|i| {
                seq += 1;
                event(i % users, seq)
            })
            .collect();
        let resp = if round.is_multiple_of(2) {
            client
                .post(collector.url("/api/logs"))
                .json(&batch)
                .send()
                .await
        } else {
            let body: String = batch.iter().map(|e| format!("{e}\n")).collect();
            client
                .post(collector.url("/api/logs"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
        }
        .expect("post");
        assert_eq!(resp.status(), 202);
        let verdict: Value = resp.json().await.expect("json");
        assert_eq!(verdict["accepted"], 50, "{verdict}");
        assert_eq!(verdict["rejected"], json!([]));
        posted.extend(batch);
    }
    for i in 0..30 {
        seq += 1;
        let e = event(i % users, seq);
        let resp = client
            .post(collector.url("/api/log"))
            .json(&e)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 202);
        posted.push(e);
    }
    collector.wait_drained(Duration::from_secs(60)).await;
    let records = read_topic(&b, &cfg.kafka.topic, Duration::from_secs(60));
    assert_eq!(records.len(), posted.len(), "same count");
    let counts = support::id_counts(&records);
    let want: HashSet<String> = posted
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(counts.keys().cloned().collect::<HashSet<_>>(), want);
    assert!(counts.values().all(|n| *n == 1), "no duplicates");

    // keyed by user; per user, offsets follow the posting order
    let mut last_seq: HashMap<String, (i32, i64)> = HashMap::new();
    for r in &records {
        let key = r.key.clone().expect("keyed");
        assert_eq!(r.value["user_id"].as_str(), Some(key.as_str()));
        let s = r.value["properties"]["seq"].as_i64().expect("seq");
        if let Some((p, prev)) = last_seq.get(&key) {
            assert_eq!(*p, r.partition, "one partition per user");
            assert!(s > *prev, "user {key}: seq {s} after {prev}");
        }
        last_seq.insert(key, (r.partition, s));
        // stamped by the collector, skew-corrected by one second
        assert!(r.value["received_at"].is_string());
        let recv =
            chrono::DateTime::parse_from_rfc3339(r.value["received_at"].as_str().expect("s"))
                .expect("rfc3339");
        let ts = chrono::DateTime::parse_from_rfc3339(r.value["event_ts"].as_str().expect("s"))
            .expect("rfc3339");
        assert_eq!(recv - ts, chrono::Duration::seconds(1));
    }
    collector.stop().await;
}

/// One malformed or hostile request and what the collector must answer.
struct Case {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// the top-level `code`, or the code of the first rejected event
    code: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        path,
        content_type,
        body: body.into(),
        status,
        code,
    }
}

fn hostile_cases() -> Vec<Case> {
    const J: Option<&str> = Some("application/json");
    const ND: Option<&str> = Some("application/x-ndjson");
    let ok = r#"{"event_type":"view","user_id":"u","book_id":"b"}"#;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big_event = format!(
        r#"{{"event_type":"view","user_id":"u","book_id":"b","page":"{}"}}"#,
        "x".repeat(40 * 1024)
    );
    let too_many: Vec<Value> = (0..501).map(|i| event(i, i)).collect();
    let huge_body = format!("[{}]", vec![ok; 30_000].join(","));
    vec![
        case(
            "no content type",
            "/api/log",
            None,
            ok,
            415,
            "unsupported_media_type",
        ),
        case(
            "form content type",
            "/api/log",
            Some("application/x-www-form-urlencoded"),
            ok,
            415,
            "unsupported_media_type",
        ),
        case(
            "xml",
            "/api/logs",
            Some("application/xml"),
            "<e/>",
            415,
            "unsupported_media_type",
        ),
        case("empty body", "/api/log", J, "", 400, "empty_body"),
        case(
            "whitespace body",
            "/api/logs",
            J,
            "  \n ",
            400,
            "empty_batch",
        ),
        case("empty array", "/api/logs", J, "[]", 400, "empty_batch"),
        case(
            "truncated json",
            "/api/log",
            J,
            r#"{"event_type":"view""#,
            400,
            "invalid_json",
        ),
        case(
            "truncated array",
            "/api/logs",
            J,
            r#"[{"event_type":"view"}"#,
            400,
            "invalid_json",
        ),
        case(
            "not utf-8",
            "/api/log",
            J,
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
            "invalid_json",
        ),
        case(
            "not utf-8 array",
            "/api/logs",
            J,
            vec![b'[', 0xff, b']'],
            400,
            "invalid_json",
        ),
        case(
            "deeply nested event",
            "/api/log",
            J,
            deep.clone(),
            400,
            "invalid_json",
        ),
        case(
            "deeply nested element",
            "/api/logs",
            J,
            format!("[{deep},{ok}]"),
            202,
            "invalid_json",
        ),
        case("a string", "/api/log", J, r#""view""#, 400, "not_an_object"),
        case("a number", "/api/log", J, "42", 400, "not_an_object"),
        case("null", "/api/log", J, "null", 400, "not_an_object"),
        case(
            "array on single endpoint",
            "/api/log",
            J,
            format!("[{ok}]"),
            400,
            "not_an_object",
        ),
        case(
            "missing event_type",
            "/api/log",
            J,
            r#"{"user_id":"u","book_id":"b"}"#,
            400,
            "missing_event_type",
        ),
        case(
            "missing user",
            "/api/log",
            J,
            r#"{"event_type":"view","book_id":"b"}"#,
            400,
            "missing_user",
        ),
        case(
            "missing book",
            "/api/log",
            J,
            r#"{"event_type":"purchase","user_id":"u"}"#,
            400,
            "missing_book_id",
        ),
        case(
            "rate without rating",
            "/api/log",
            J,
            r#"{"event_type":"rate","user_id":"u","book_id":"b"}"#,
            400,
            "missing_rating",
        ),
        case(
            "search without query",
            "/api/log",
            J,
            r#"{"event_type":"search","user_id":"u"}"#,
            400,
            "missing_query",
        ),
        case(
            "impression without request_id",
            "/api/log",
            J,
            r#"{"event_type":"impression","user_id":"u","book_id":"b","position":1}"#,
            400,
            "missing_field",
        ),
        case(
            "click at position 0",
            "/api/log",
            J,
            r#"{"event_type":"click","user_id":"u","book_id":"b","request_id":"r","position":0}"#,
            400,
            "invalid_value",
        ),
        case(
            "user id object",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":{"a":1},"book_id":"b"}"#,
            400,
            "invalid_type",
        ),
        case(
            "rating string",
            "/api/log",
            J,
            r#"{"event_type":"rate","user_id":"u","book_id":"b","rating":"5"}"#,
            400,
            "invalid_type",
        ),
        case(
            "float book id",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","book_id":1.5}"#,
            400,
            "invalid_type",
        ),
        case(
            "bad timestamp",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","book_id":"b","client_ts":"26/11/2026"}"#,
            400,
            "invalid_timestamp",
        ),
        case(
            "timestamp bool",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","book_id":"b","sent_at":true}"#,
            400,
            "invalid_timestamp",
        ),
        case(
            "timestamp year 3000",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","book_id":"b","client_ts":"3000-01-01T00:00:00Z"}"#,
            400,
            "invalid_timestamp",
        ),
        case(
            "bad event id",
            "/api/log",
            J,
            r#"{"event_id":"123","event_type":"view","user_id":"u","book_id":"b"}"#,
            400,
            "invalid_event_id",
        ),
        case(
            "control chars in id",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u\u0000x","book_id":"b"}"#,
            400,
            "invalid_value",
        ),
        case(
            "id too long",
            "/api/log",
            J,
            format!(
                r#"{{"event_type":"view","user_id":"{}","book_id":"b"}}"#,
                "u".repeat(300)
            ),
            400,
            "invalid_value",
        ),
        case(
            "script in event type",
            "/api/log",
            J,
            r#"{"event_type":"<script>","user_id":"u","book_id":"b"}"#,
            400,
            "invalid_value",
        ),
        case(
            "forged received_at",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","book_id":"b","received_at":"2020-01-01T00:00:00Z"}"#,
            400,
            "reserved_field",
        ),
        case(
            "properties not an object",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","book_id":"b","properties":"x"}"#,
            400,
            "invalid_type",
        ),
        case(
            "oversize event",
            "/api/log",
            J,
            big_event.clone(),
            400,
            "event_too_large",
        ),
        case(
            "oversize event in batch",
            "/api/logs",
            J,
            format!("[{big_event},{ok}]"),
            202,
            "event_too_large",
        ),
        case(
            "one bad line of ndjson",
            "/api/logs",
            ND,
            format!("{ok}\n{{oops\n{ok}\n"),
            202,
            "invalid_json",
        ),
        case(
            "bad element among good",
            "/api/logs",
            J,
            format!(r#"[{ok},{{"event_type":"view"}},{ok}]"#),
            202,
            "missing_user",
        ),
        case(
            "too many events",
            "/api/logs",
            J,
            serde_json::to_vec(&too_many).expect("json"),
            413,
            "too_many_events",
        ),
        case(
            "body over the limit",
            "/api/logs",
            J,
            huge_body,
            413,
            "payload_too_large",
        ),
        case(
            "duplicate keys",
            "/api/log",
            J,
            r#"{"event_type":"view","user_id":"u","user_id":"v","book_id":"b"}"#,
            202,
            "",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_bodies_get_stable_codes_and_dead_letters() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    let cfg = collector_config(&b, spool.path());
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let cases = hostile_cases();
    assert!(cases.len() >= 30, "at least 30 cases");
    let mut expected_dead_letters = 0;
    let mut expected_events = 0;
    for c in &cases {
        let mut req = client.post(collector.url(c.path)).body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        if c.code == "payload_too_large" {
            // the body was not read to its end: the connection must not be reused
            assert_eq!(
                resp.headers()
                    .get("connection")
                    .and_then(|v| v.to_str().ok()),
                Some("close"),
                "{}",
                c.name
            );
        }
        let text = resp.text().await.expect("body");
        assert_eq!(status, c.status, "{}: {text}", c.name);
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {text}", c.name));
        let code = body["code"]
            .as_str()
            .or_else(|| body["rejected"][0]["code"].as_str())
            .unwrap_or("");
        assert_eq!(code, c.code, "{}: {body}", c.name);
        if let Some(rejected) = body["rejected"].as_array() {
            expected_dead_letters += rejected.len();
            expected_events += body["accepted"].as_u64().unwrap_or(0) as usize;
            for r in rejected {
                assert!(r["index"].is_u64(), "{}: index in {r}", c.name);
                assert!(!r["message"].as_str().unwrap_or("").is_empty());
            }
        } else if c.code == "invalid_json" {
            expected_dead_letters += 1; // the unparseable body itself
        }
    }
    // the per-event index points at the bad element
    let resp: Value = client
        .post(collector.url("/api/logs"))
        .json(&json!([event(1, 1), {"event_type": "view"}, event(2, 2)]))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["accepted"], 2);
    assert_eq!(resp["rejected"][0]["index"], 1);
    assert!(
        resp["rejected"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("user_id"))
    );
    expected_dead_letters += 1;
    expected_events += 2;

    collector.wait_drained(Duration::from_secs(60)).await;
    let dlq = read_topic(&b, &cfg.kafka.dlq_topic, Duration::from_secs(30));
    assert_eq!(dlq.len(), expected_dead_letters);
    for d in &dlq {
        assert!(d.value["code"].is_string(), "{}", d.value);
        assert!(d.value["message"].is_string());
        assert!(d.value["raw"].is_string());
    }
    let events = read_topic(&b, &cfg.kafka.topic, Duration::from_secs(30));
    assert_eq!(events.len(), expected_events);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_event_id_is_accepted_once() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    let cfg = collector_config(&b, spool.path());
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let e = event(1, 1);
    for attempt in 0..3 {
        let v: Value = client
            .post(collector.url("/api/log"))
            .json(&e)
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(v["accepted"], 1);
        assert_eq!(v["duplicates"], if attempt == 0 { 0 } else { 1 });
    }
    collector.wait_drained(Duration::from_secs(30)).await;
    let records = read_topic(&b, &cfg.kafka.topic, Duration::from_secs(20));
    assert_eq!(records.len(), 1);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_mid_load_loses_nothing_and_duplicates_nothing() {
    let mut broker = Broker::start();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = collector_config(&broker.brokers(), spool.path());
    cfg.collect.spool.fsync = bookrec::config::FsyncPolicy::Interval;
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let mut accepted: Vec<String> = Vec::new();
    let mut seq = 0;
    for round in 0..30 {
        if round == 10 {
            broker.stop();
        }
        if round == 20 {
            // while the broker was down, the accepted events waited in the spool
            let ready: Value = client
                .get(collector.url("/readyz"))
                .send()
                .await
                .expect("readyz")
                .json()
                .await
                .expect("json");
            assert!(
                ready["spool_depth_records"].as_u64().unwrap_or(0) >= 300,
                "events spooled while the broker was down: {ready}"
            );
            broker.resume();
        }
        let batch: Vec<Value> = (0..40)
            .map(|i| {
                seq += 1;
                event(i % 13, seq)
            })
            .collect();
        let resp = client
            .post(collector.url("/api/logs"))
            .json(&batch)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 202, "round {round}: the spool takes writes");
        accepted.extend(
            batch
                .iter()
                .map(|e| e["event_id"].as_str().expect("id").to_string()),
        );
        tokio::time::sleep(Duration::from_millis(if (10..20).contains(&round) {
            150
        } else {
            30
        }))
        .await;
    }
    collector.wait_drained(Duration::from_secs(120)).await;
    let records = read_topic(&broker.brokers(), &cfg.kafka.topic, Duration::from_secs(60));
    let counts = support::id_counts(&records);
    let missing = accepted
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count();
    let dup = counts.values().filter(|n| **n > 1).count();
    assert_eq!(missing, 0, "every accepted event arrived");
    assert_eq!(dup, 0, "no event arrived twice");
    assert_eq!(records.len(), accepted.len());
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_with_retry_after_and_readyz_says_so() {
    // nothing listens on this port: everything stays in the spool
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = collector_config("127.0.0.1:1", spool.path());
    cfg.collect.spool.max_bytes = 64 * 1024;
    cfg.collect.max_event_bytes = 4096;
    cfg.collect.shutdown_timeout_ms = 100;
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let ready = client
        .get(collector.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "ready: the spool can take writes");
    let mut saw_503 = false;
    for i in 0..200 {
        let batch: Vec<Value> = (0..20).map(|j| event(j, i * 20 + j)).collect();
        let resp = client
            .post(collector.url("/api/logs"))
            .json(&batch)
            .send()
            .await
            .expect("post");
        if resp.status() == 503 {
            assert!(resp.headers().contains_key("retry-after"));
            let v: Value = resp.json().await.expect("json");
            assert_eq!(v["code"], "spool_full");
            saw_503 = true;
            break;
        }
        assert_eq!(resp.status(), 202);
    }
    assert!(saw_503, "the spool filled up");
    // not ready while full; the Kafka probe reports the broker down within its timeout
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ready = client
            .get(collector.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), 503);
        let v: Value = ready.json().await.expect("json");
        assert_eq!(v["spool"], "full");
        if v["kafka"] == "down" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kafka still {}",
            v["kafka"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_events_survive_a_restart_and_drain_later() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    // first life: the broker is unreachable, events only reach the spool
    let mut cfg = collector_config("127.0.0.1:1", spool.path());
    cfg.collect.shutdown_timeout_ms = 100;
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let batch: Vec<Value> = (0..25).map(|i| event(i, i)).collect();
    let resp = client
        .post(collector.url("/api/logs"))
        .json(&batch)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 202);
    collector.stop().await;
    // second life: same spool, real broker
    cfg.kafka.brokers = b.clone();
    let collector = Collector::start(&cfg).await;
    collector.wait_drained(Duration::from_secs(60)).await;
    let records = read_topic(&b, &cfg.kafka.topic, Duration::from_secs(30));
    assert_eq!(records.len(), 25);
    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_cors_and_tracker() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = collector_config(&b, spool.path());
    cfg.collect.cors_allowed_origins = vec!["http://shop.example".into()];
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(collector.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    let js = client
        .get(collector.url("/tracker.js"))
        .send()
        .await
        .expect("tracker");
    assert!(
        js.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/javascript")
    );
    let text = js.text().await.expect("text");
    assert!(text.contains("sendBeacon") && text.contains("keepalive"));
    // CORS preflight from an allowed origin, and none for another
    let pre = client
        .request(reqwest::Method::OPTIONS, collector.url("/api/logs"))
        .header("origin", "http://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        pre.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("http://shop.example")
    );
    let other = client
        .request(reqwest::Method::OPTIONS, collector.url("/api/logs"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // a beacon-style text/plain NDJSON post, then the counters
    let resp = client
        .post(collector.url("/api/logs"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(format!(
            "{}\n{}",
            event(1, 1),
            json!({"event_type": "view"})
        ))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 202);
    collector.wait_drained(Duration::from_secs(30)).await;
    let metrics = client
        .get(collector.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        "bookrec_collect_accepted_total 1",
        "bookrec_collect_rejected_total{code=\"missing_user\"} 1",
        "bookrec_collect_spooled_total 2",
        "bookrec_collect_spool_depth_records 0",
        "bookrec_collect_produce_latency_seconds_count 2",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    collector.stop().await;
}

/// Who may write: browsers from the allowed origins (checked on every request, beacons
/// included), server-side senders with a write key; dead letters never grow past the limit
/// by escaping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_write_keys_and_bounded_dead_letters() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = collector_config(&b, spool.path());
    cfg.collect.cors_allowed_origins = vec!["http://shop.example".into()];
    cfg.collect.write_keys = [("backend".to_string(), "k-backend".to_string())].into();
    cfg.collect.max_event_bytes = 2048;
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let post = |origin: Option<&str>, key: Option<&str>, body: String| {
        let mut r = client
            .post(collector.url("/api/logs"))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(k) = key {
            r = r.header("x-write-key", k);
        }
        r.send()
    };
    let one = || event(1, 1).to_string();
    let status = |r: reqwest::Response| r.status().as_u16();
    // a beacon from another site (no preflight for text/plain): refused
    let r = post(Some("http://evil.example"), None, one())
        .await
        .expect("post");
    assert_eq!(status(r), 403);
    // the allowed origin needs no key
    let r = post(Some("http://shop.example"), None, one())
        .await
        .expect("post");
    assert_eq!(status(r), 202);
    // a server-side sender: no key, a wrong key, the key
    let r = post(None, None, one()).await.expect("post");
    assert_eq!(status(r), 401);
    let r = post(None, Some("wrong"), one()).await.expect("post");
    assert_eq!(status(r), 401);
    let r = post(None, Some("k-backend"), one()).await.expect("post");
    assert_eq!(status(r), 202);
    // an invalid event made of characters that escape to 6 bytes each: its dead letter
    // keeps at most max_event_bytes of escaped text
    let nasty = format!(
        "{{\"event_type\":\"view\",\"user_id\":\"u\",\"book_id\":\"b\",\"x\":\"{}\"}}",
        "\u{1}".repeat(1000)
    );
    let r = post(None, Some("k-backend"), nasty).await.expect("post");
    assert_eq!(status(r), 202);
    collector.wait_drained(Duration::from_secs(30)).await;
    let dlq = read_topic(&b, &cfg.kafka.dlq_topic, Duration::from_secs(30));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let letter = &dlq[0].value;
    let raw = letter["raw"].as_str().expect("raw");
    assert_eq!(letter["raw_truncated"], json!(true), "{letter}");
    assert!(
        serde_json::to_string(raw).expect("json").len() <= 2048 + 2,
        "{}",
        raw.len()
    );
    collector.stop().await;
}
