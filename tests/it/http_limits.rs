//! The HTTP servers' bounds (`crate::http`) against real sockets: slow-loris clients against a
//! collector process with a 1,024-descriptor limit, an HTTP/2 preface that never sends
//! SETTINGS, oversized headers, trickled bodies, idle keep-alive, request shedding, the
//! shutdown bound, and the API server's connection cap.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Collector, brokers, collector_config, free_port, metric};

fn event() -> serde_json::Value {
    json!({
        "event_type": "view",
        "user_id": "u1",
        "book_id": "b1",
    })
}

/// Lets this test process hold thousands of sockets.
fn raise_own_fd_limit(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    let soft = want.min(hard);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: cur.maximum,
        },
    )
    .expect("raise the test's own open-file limit");
}

/// Reads until the peer closes (or `within` passes): true when it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_slow_loris_sockets_do_not_starve_a_collector_limited_to_1024_files() {
    let b = brokers();
    support::require_broker(&b);
    raise_own_fd_limit(8192);
    let spool = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    let topic = support::unique("loris");
    // the real binary, with the process's open-file limit at 1,024 and the default limits
    let mut child = Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(env!("CARGO_BIN_EXE_bookrec"))
        .arg("collect")
        .env("BOOKREC__COLLECT__LISTEN", format!("127.0.0.1:{port}"))
        .env("BOOKREC__COLLECT__SPOOL__DIR", spool.path())
        .env("BOOKREC__KAFKA__BROKERS", &b)
        .env("BOOKREC__KAFKA__TOPIC", &topic)
        .env("BOOKREC__KAFKA__DLQ_TOPIC", format!("{topic}.dlq"))
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("start bookrec collect under prlimit");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "collector did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = client
        .post(format!("{base}/api/log"))
        .json(&event())
        .send()
        .await
        .expect("a request before the attack");
    assert_eq!(before.status(), 202);

    // 2,000 sockets, each with a request line and part of its headers, trickling more
    let mut attackers = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(mut s) => {
                let _ = s
                    .write_all(b"POST /api/log HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .await;
                attackers.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            for s in attackers.iter_mut() {
                let _ = s.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        attackers.len()
    });

    // while they are all held open: a normal request is answered within a second
    let mut latencies = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let resp = client
            .post(format!("{base}/api/log"))
            .json(&event())
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} during the attack: {e}"));
        latencies.push(t.elapsed());
        assert_eq!(resp.status(), 202, "request {i} during the attack");
    }
    latencies.sort();
    assert!(
        latencies[2] < Duration::from_secs(1),
        "median {:?} of {latencies:?} (refused connects: {refused})",
        latencies[2]
    );
    assert!(
        latencies[4] < Duration::from_secs(2),
        "slowest request during the attack took {:?}",
        latencies[4]
    );
    // nothing else was harmed: alive, ready, within its cap, and it says what it did
    assert!(child.try_wait().expect("child").is_none(), "collector died");
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let metrics = format!("{base}/metrics");
    // an evicted connection leaves the cap at once but counts as open until its task has
    // closed the socket, which a loaded machine may take a moment to get to
    let settle = Instant::now() + Duration::from_secs(10);
    let open = loop {
        let open = metric(&client, &metrics, "bookrec_collect_http_connections_open").await;
        if open <= 960.0 || Instant::now() > settle {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(open <= 960.0, "{open} connections open above the cap");
    let evicted = metric(
        &client,
        &metrics,
        "bookrec_collect_http_connections_closed_total{reason=\"evicted\"}",
    )
    .await;
    assert!(evicted > 0.0, "no connection was evicted");

    // shutdown with the attackers still trickling: bounded by the shutdown timeouts
    let t = Instant::now();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let exited = loop {
        if let Some(status) = child.try_wait().expect("child") {
            break status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "collector still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "collector exit status {exited}");
    let _ = trickle.await;
    let log_text = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(!log_text.contains("panicked"), "{log_text}");
}

fn tight_collector(spool: &std::path::Path) -> bookrec::config::Config {
    let mut cfg = collector_config(&brokers(), spool);
    cfg.collect.http.header_read_timeout_ms = 1000;
    cfg.collect.http.body_read_timeout_ms = 1000;
    cfg.collect.http.idle_timeout_ms = 1500;
    cfg.collect.http.max_in_flight = 2;
    cfg.collect.http.shutdown_timeout_ms = 1000;
    cfg.collect.shutdown_timeout_ms = 1000;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_big_headers_slow_bodies_and_idle_connections_are_cut() {
    support::require_broker(&brokers());
    let spool = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&tight_collector(spool.path())).await;
    let addr = collector.addr;

    // an HTTP/2 preface and nothing else: closed after the header timeout
    let mut h2 = TcpStream::connect(addr).await.expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    let t = Instant::now();
    assert!(
        closed_within(&mut h2, Duration::from_secs(5)).await,
        "an HTTP/2 preface without SETTINGS was held open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );

    // a connection that says nothing at all
    let mut mute = TcpStream::connect(addr).await.expect("connect");
    assert!(closed_within(&mut mute, Duration::from_secs(5)).await);

    // headers over 16 KiB: 431
    let mut big = TcpStream::connect(addr).await.expect("connect");
    let filler = "a".repeat(17 * 1024);
    big.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), big.read(&mut answer))
        .await
        .expect("an answer")
        .expect("read");
    let head = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // a body that trickles: 408 body_timeout after about body_read_timeout_ms
    let slow = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = slow.into_split();
    writer
        .write_all(
            b"POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .expect("write");
    let t = Instant::now();
    let trickler = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let mut got = vec![0u8; 512];
    let (_, (n, answered_after)) = tokio::join!(trickler, async {
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut got)).await;
        (n, t.elapsed())
    });
    let n = n.expect("an answer within 5 s").expect("read");
    let text = String::from_utf8_lossy(&got[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(
        answered_after < Duration::from_secs(3),
        "408 after {answered_after:?}"
    );

    // a kept-alive connection that goes quiet is closed
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = vec![0u8; 256];
    let n = idle.read(&mut first).await.expect("read");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle keep-alive connection was held open"
    );

    // beyond max_in_flight (2): shed with 503 overloaded and Retry-After
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        .await
        .expect("write");
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let shed = client
        .post(collector.url("/api/log"))
        .json(&event())
        .send()
        .await
        .expect("post");
    assert_eq!(shed.status(), 503);
    assert_eq!(
        shed.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: serde_json::Value = shed.json().await.expect("json");
    assert_eq!(body["code"], "overloaded");
    drop(holders);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ok = client
        .post(collector.url("/api/log"))
        .json(&event())
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 202);
    let metrics = collector.url("/metrics");
    for reason in ["header_timeout", "idle"] {
        let n = metric(
            &client,
            &metrics,
            &format!("bookrec_collect_http_connections_closed_total{{reason=\"{reason}\"}}"),
        )
        .await;
        assert!(n > 0.0, "no connection closed for {reason}");
    }
    for reason in ["overloaded", "body_timeout"] {
        let n = metric(
            &client,
            &metrics,
            &format!("bookrec_collect_http_requests_shed_total{{reason=\"{reason}\"}}"),
        )
        .await;
        assert!(n > 0.0, "no request shed for {reason}");
    }

    // shutdown does not wait for a body that never ends
    let mut endless = TcpStream::connect(addr).await.expect("connect");
    endless
        .write_all(
            b"POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
        )
        .await
        .expect("write");
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), collector.stop())
        .await
        .expect("the collector stopped within 10 s with a body still trickling");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_keeps_answering_past_its_connection_cap() {
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("defaults");
    cfg.serve.http.max_connections = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    cfg.lake.url = format!("file://{}", dir.path().join("lake").display());
    cfg.store.url = format!("sqlite://{}", dir.path().join("rec.db").display());
    cfg.redis.url = "redis://127.0.0.1:1".into();
    let lake = bookrec::lake::Lake::open(&cfg.lake).expect("lake");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = {
        let (cfg, stop) = (cfg.clone(), stop.clone());
        tokio::spawn(async move {
            let sources = bookrec::serve::Sources {
                db: None,
                features: None,
                lake,
            };
            bookrec::serve::run(&cfg, listener, sources, stop).await
        })
    };
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s
            .write_all(b"GET /api/popular HTTP/1.1\r\nHost: x\r\n")
            .await;
        held.push(s);
    }
    let client = reqwest::Client::new();
    let t = Instant::now();
    let resp = client
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("healthz past the cap");
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let open = metric(
        &client,
        &format!("http://{addr}/metrics"),
        "bookrec_serve_http_connections_open",
    )
    .await;
    assert!(open <= 50.0, "{open}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("serve stopped within 10 s")
        .expect("task")
        .expect("serve");
    drop(held);
}
