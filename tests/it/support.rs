//! Shared helpers: the real broker, collectors on ephemeral ports, a consumer that reads a
//! topic back. Every test uses its own topics and temp dirs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bookrec::config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The broker `.ci/run` starts (override with BOOKREC_TEST_KAFKA).
pub fn brokers() -> String {
    std::env::var("BOOKREC_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Config for a collector with its own topics and spool.
pub fn collector_config(brokers: &str, spool_dir: &Path) -> Config {
    let mut c = Config::load_with_env(None, Vec::new()).expect("defaults load");
    c.kafka.brokers = brokers.to_string();
    c.kafka.topic = unique("events");
    c.kafka.dlq_topic = format!("{}.dlq", c.kafka.topic);
    c.kafka.partitions = 3;
    c.collect.spool.dir = spool_dir.to_path_buf();
    c.collect.shutdown_timeout_ms = 20_000;
    c
}

pub struct Collector {
    pub addr: SocketAddr,
    pub cancel: CancellationToken,
    pub handle: JoinHandle<Result<(), bookrec::collect::CollectError>>,
}

impl Collector {
    pub async fn start(config: &Config) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let cfg = config.clone();
        let c = cancel.clone();
        let handle = tokio::spawn(async move { bookrec::collect::run(&cfg, listener, c).await });
        Collector {
            addr,
            cancel,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops intake and waits for the drain.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle
            .await
            .expect("collector task")
            .expect("collector exits cleanly");
    }

    /// Waits until the spool is empty (everything confirmed by Kafka).
    pub async fn wait_drained(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let body: serde_json::Value = client
                .get(self.url("/readyz"))
                .send()
                .await
                .expect("readyz")
                .json()
                .await
                .expect("readyz json");
            if body["spool_depth_records"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "spool not drained in {timeout:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub key: Option<String>,
    pub value: serde_json::Value,
}

/// Every record of `topic` up to its high watermarks (call it once the producer side is
/// drained), sorted by (partition, offset), values parsed as JSON.
pub fn read_topic(brokers: &str, topic: &str, timeout: Duration) -> Vec<Read> {
    let mut cfg = Config::load_with_env(None, Vec::new())
        .expect("defaults")
        .kafka;
    cfg.brokers = brokers.to_string();
    bookrec::bus::consumer::read_topic(&cfg, topic, timeout)
        .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
        .into_iter()
        .map(|r| Read {
            partition: r.partition,
            key: r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            value: r
                .payload
                .map(|p| serde_json::from_slice(&p).expect("record value is JSON"))
                .unwrap_or(serde_json::Value::Null),
        })
        .collect()
}

/// Count of each event_id among records.
pub fn id_counts(records: &[Read]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in records {
        let id = r.value["event_id"]
            .as_str()
            .expect("event_id present")
            .to_string();
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// A private tansu broker (sqlite storage) that a test can stop and start again.
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("tansu");
        if p.exists() {
            return p;
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/tansu");
    assert!(
        p.exists(),
        "tansu not found: run .ci/run (it installs tansu 0.6.0) or set TANSU_BIN"
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Broker {
    pub fn start() -> Broker {
        let mut b = Broker {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            child: None,
        };
        b.resume();
        b
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker process (again) on the same port and storage.
    pub fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).expect("log file");
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker with SIGTERM (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fails fast with a clear message when the shared broker is not running.
pub fn require_broker(brokers: &str) {
    let addr = brokers.split(',').next().unwrap_or_default();
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "no Kafka broker at {brokers}: start it with .ci/run (or set BOOKREC_TEST_KAFKA)"
    );
}

/// A private s3s-fs server (the S3-compatible store of INFRA.md) with one bucket.
pub struct S3Server {
    root: tempfile::TempDir,
    bucket: String,
    port: u16,
    child: Child,
}

pub const S3_KEY: &str = "bookrec-test";
pub const S3_SECRET: &str = "bookrec-test-secret";

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        S3Server::start_with(bucket, S3_KEY, S3_SECRET)
    }

    /// A server that accepts `key` / `secret` (e.g. the credentials a compose file gives).
    pub fn start_with(bucket: &str, key: &str, secret: &str) -> S3Server {
        let server = S3Server::start_empty(bucket, key, secret);
        std::fs::create_dir_all(server.root.path().join(bucket)).expect("bucket dir");
        server
    }

    /// A server without any bucket yet (`bucket` is the one [`S3Server::configure`] names).
    pub fn start_empty(bucket: &str, key: &str, secret: &str) -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let bin = std::env::var("S3S_FS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let home = std::env::var("HOME").unwrap_or_default();
                let p = Path::new(&home).join(".cargo/bin/s3s-fs");
                if p.exists() {
                    p
                } else {
                    PathBuf::from("s3s-fs")
                }
            });
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                key,
                "--secret-key",
                secret,
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (scripts/test installs s3s-fs 0.14.1)",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server {
            root,
            bucket: bucket.to_string(),
            port,
            child,
        }
    }

    /// Points a config's lake S3 settings at this server.
    pub fn configure(&self, c: &mut Config) {
        c.lake.s3_endpoint = format!("http://127.0.0.1:{}", self.port);
        c.lake.s3_allow_http = true;
        c.lake.s3_path_style = true;
        c.lake.s3_access_key_id = S3_KEY.into();
        c.lake.s3_secret_access_key = S3_SECRET.into();
        c.lake.s3_region = "us-east-1".into();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server of a test's own, which the test may stop, pause, restart or flush.
pub struct PrivateRedis {
    pub child: std::process::Child,
    pub url: String,
    pub port: u16,
    /// where it keeps its append-only file, when persistent
    dir: Option<tempfile::TempDir>,
}

impl PrivateRedis {
    /// An empty, non-persistent server on a free port.
    pub fn start() -> PrivateRedis {
        PrivateRedis::spawn(free_port(), None)
    }

    /// An empty, non-persistent server on `port` (e.g. where a stopped one was).
    pub fn start_on(port: u16) -> PrivateRedis {
        PrivateRedis::spawn(port, None)
    }

    /// A server with AOF persistence (`appendfsync always`) in a folder of its own.
    pub fn start_persistent() -> PrivateRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        PrivateRedis::spawn(free_port(), Some(dir))
    }

    fn spawn(port: u16, dir: Option<tempfile::TempDir>) -> PrivateRedis {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--port", &port.to_string()]);
        match &dir {
            Some(d) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(d.path()),
            None => cmd.args(["--appendonly", "no"]),
        };
        let child = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it when missing)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            port,
            dir,
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server and starts it again on the same port: from its append-only file
    /// when persistent, else empty.
    pub fn restart(&mut self) {
        self.stop();
        let fresh = PrivateRedis::spawn(self.port, self.dir.take());
        drop(std::mem::replace(self, fresh));
    }

    /// SIGSTOP / SIGCONT: the server holds connections but answers nothing.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn flushall(&self) {
        let client = redis::Client::open(self.url.as_str()).expect("client");
        let mut con = client.get_connection().expect("connect");
        redis::cmd("FLUSHALL").exec(&mut con).expect("FLUSHALL");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sum of a Prometheus sample over its label sets: `name` is a metric name, or a name
/// with its labels (`x_total{reason="idle"}`).
pub async fn metric(client: &reqwest::Client, metrics_url: &str, name: &str) -> f64 {
    let text = client
        .get(metrics_url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
