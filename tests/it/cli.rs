//! The binary's command line.

use std::process::Command;

fn bookrec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bookrec"));
    // a clean environment for config: no inherited BOOKREC__ keys
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BOOKREC__")) {
        c.env_remove(k);
    }
    c
}

#[test]
fn help_lists_the_working_subcommands() {
    let out = bookrec().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in [
        "collect", "config", "land", "batch", "schedule", "als", "eval", "model", "stream",
    ] {
        assert!(text.contains(sub), "{sub} in\n{text}");
    }
    let out = bookrec().args(["collect", "--help"]).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--listen"));
}

#[test]
fn config_prints_the_effective_tree_with_secrets_redacted() {
    let out = bookrec()
        .arg("config")
        .env("BOOKREC__KAFKA__BROKERS", "k9:9092")
        .env("BOOKREC__KAFKA__EXTRA", "{\"sasl.password\"=\"s3cret\"}")
        .env("BOOKREC__REDIS__URL", "redis://:hunter2@cache:6379/0")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("brokers = \"k9:9092\""), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(
        !text.contains("hunter2") && text.contains("redis://:<redacted>@cache:6379/0"),
        "{text}"
    );
    let parsed: toml::Value = toml::from_str(&text).expect("prints TOML");
    assert_eq!(parsed["collect"]["listen"].as_str(), Some("127.0.0.1:5006"));
}

#[test]
fn bad_config_and_args_fail_naming_what_is_wrong() {
    let out = bookrec()
        .arg("config")
        .env("BOOKREC__COLLECT__SPOOL__FSYNC", "sometimes")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("collect.spool.fsync"), "{err}");
    let out = bookrec()
        .args(["collect", "--listen", "nowhere"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = bookrec()
        .args(["--config", "/nonexistent.toml", "config"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn collect_drains_and_exits_zero_on_sigterm() {
    let spool = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    // the broker is unreachable: what was accepted stays in the spool, and exit is still 0
    let mut child = bookrec()
        .args(["collect", "--listen", &format!("127.0.0.1:{port}")])
        .env("BOOKREC__KAFKA__BROKERS", "127.0.0.1:1")
        .env("BOOKREC__COLLECT__SPOOL__DIR", spool.path())
        .env("BOOKREC__COLLECT__SHUTDOWN_TIMEOUT_MS", "300")
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "collector did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // one event accepted over plain HTTP/1.1
    let body = r#"{"event_type":"view","user_id":"u1","book_id":"b1"}"#;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    use std::io::{Read, Write};
    write!(
        conn,
        "POST /api/log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = child.wait().expect("wait");
    assert!(code.success(), "exit status {code}");
    // the accepted event is still in the spool, to be sent on the next start
    let spooled: u64 = std::fs::read_dir(spool.path())
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        spooled > body.len() as u64,
        "spool holds the event ({spooled} bytes)"
    );
}

#[test]
fn sql_only_reads_unless_writes_are_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = format!("file://{}", dir.path().join("lake").display());
    let target = dir.path().join("out.csv");
    let run = |sql: &str, allow: bool| {
        let mut c = bookrec();
        c.args(["sql", sql]).env("BOOKREC__LAKE__URL", &lake);
        if allow {
            c.arg("--allow-writes");
        }
        c.output().expect("run")
    };
    let copy = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        target.display()
    );
    for (sql, needle) in [
        ("CREATE TABLE t AS SELECT 1 AS x", "DDL"),
        ("DROP TABLE events", "DDL"),
        ("SET datafusion.execution.batch_size = 1", "Statement"),
        (copy.as_str(), "DML"),
    ] {
        let out = run(sql, false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} was allowed");
        assert!(
            err.contains(needle) && err.contains("not supported"),
            "{sql}: {err}"
        );
    }
    assert!(!target.exists(), "COPY wrote a file");
    let out = run("SELECT count(*) AS n FROM events", false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // even with --allow-writes, the SQL engine's file system is the lake: a COPY outside
    // it is refused (`--out FILE` writes a result anywhere)
    let out = run(&copy, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "COPY outside the lake was allowed");
    assert!(err.contains("outside the lake"), "{err}");
    assert!(!target.exists(), "COPY wrote outside the lake");
    let inside = dir.path().join("lake").join("exports").join("out.csv");
    let copy_inside = format!(
        "COPY (SELECT 1 AS x) TO '{}' STORED AS CSV",
        inside.display()
    );
    let out = run(&copy_inside, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(inside.exists(), "--allow-writes: COPY wrote nothing");
}

#[tokio::test]
async fn the_sql_engine_cannot_read_files_outside_the_lake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = dir.path().join("secret.csv");
    std::fs::write(&outside, "password\nhunter2\n").expect("write");
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new())
        .expect("defaults")
        .lake;
    cfg.url = format!("file://{}", dir.path().join("lake").display());
    let lake = bookrec::lake::Lake::open(&cfg).expect("lake");
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    for location in [
        outside.display().to_string(),
        format!("file://{}", outside.display()),
        format!("{}/../secret.csv", dir.path().join("lake").display()),
    ] {
        let ddl = format!("CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{location}'");
        let read = async {
            ctx.sql(&ddl).await?.collect().await?;
            ctx.sql("SELECT * FROM s").await?.collect().await
        };
        let result = read.await;
        let _ = ctx.sql("DROP TABLE IF EXISTS s").await;
        match result {
            Ok(batches) => panic!(
                "{location}: read {} batches outside the lake",
                batches.len()
            ),
            Err(e) => assert!(
                e.to_string().contains("outside the lake"),
                "{location}: {e}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_are_recorded_and_listed_by_bookrec_runs() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    crate::batch::fixture_lake(lake_dir.path()).await;
    let db = tempfile::tempdir().expect("db dir");
    let with_env = |c: &mut Command| {
        c.env(
            "BOOKREC__LAKE__URL",
            format!("file://{}", lake_dir.path().display()),
        )
        .env(
            "BOOKREC__STORE__URL",
            format!("sqlite://{}", db.path().join("rec.db").display()),
        )
        .env("BOOKREC__LOG__FILTER", "error");
    };
    let mut empty = bookrec();
    with_env(&mut empty);
    let out = empty.arg("runs").output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no batch run recorded yet"));
    let mut batch = bookrec();
    with_env(&mut batch);
    let out = batch
        .args([
            "batch",
            "--select",
            "tag:cold_start",
            "--param",
            "book_popularity.half_life_days=3",
            "--as-of",
            "2026-11-26T00:00:00Z",
            "--skip-als",
        ])
        .output()
        .expect("batch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut runs = bookrec();
    with_env(&mut runs);
    let out = runs.args(["runs", "--last", "1"]).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "succeeded",
        "trigger cli select [tag:cold_start]",
        "\"book_popularity.half_life_days\":\"3\"",
        "book_popularity",
        "category_popularity",
        "tests 4/4 passed",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    let mut bad = bookrec();
    with_env(&mut bad);
    let out = bad.args(["runs", "--last", "0"]).output().expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--last"));
}
