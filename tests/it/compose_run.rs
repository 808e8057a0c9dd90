//! docker-compose.yml run as processes (Docker cannot run here): every bookrec service of
//! the file starts with exactly its `command` and `environment` (after compose's merge
//! keys and `${VAR}` interpolation from `.env.example`), its hostnames mapped to local
//! stand-ins — a private tansu for `kafka`, s3s-fs for `minio` (with the file's
//! credentials), a private redis-server for `redis`, the machine's MariaDB for `mysql` (the
//! user and database `deploy/mysql/init.sql` makes) — its published and ops ports to free
//! ones, and the image's `/var/lib/bookrec` to a folder holding `queries/`. Each service is
//! "healthy" when its compose health check (a `bookrec probe` command) passes, and started
//! in `depends_on` order. Then the seed's flow: events posted to the collector → landed →
//! the scheduler's missed runs (features, then ALS + publish) → the model in the store →
//! the stream's realtime features → `GET /api/recommendations/{user}` with reasons. A key,
//! command, port or value in the file that the binary does not accept fails this test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::compose::{env_example, interpolate, yaml_text};
use crate::support::{Broker, PrivateRedis, S3Server, free_port};

struct Service {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    health: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Service {
    fn start(&mut self, workdir: &Path) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bookrec"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("BOOKREC__")) {
            cmd.env_remove(k);
        }
        let log = std::fs::File::create(&self.log).expect("log");
        self.child = Some(
            cmd.args(&self.command)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(workdir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn bookrec"),
        );
    }

    /// SIGTERM and wait: what `docker compose restart` does first.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs the service's compose health check (`["CMD", "bookrec", "probe", URL]`) until
    /// it passes.
    fn wait_healthy(&mut self, within: Duration) {
        let args = match self.health.first().map(String::as_str) {
            Some("CMD") => &self.health[1..],
            _ => panic!("{}: health check {:?} is not a CMD", self.name, self.health),
        };
        assert_eq!(
            args.first().map(String::as_str),
            Some("bookrec"),
            "{}",
            self.name
        );
        let deadline = Instant::now() + within;
        loop {
            let ok = Command::new(env!("CARGO_BIN_EXE_bookrec"))
                .args(&args[1..])
                .stderr(Stdio::null())
                .status()
                .expect("probe")
                .success();
            if ok {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "{} never became healthy:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A metric's value in a Prometheus text page (its full name with labels).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(http: &reqwest::Client, url: &str) -> String {
    match http.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// GETs `url` until `check` holds of the JSON answer; returns it.
async fn until(http: &reqwest::Client, url: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body: Value = match http.get(url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if check(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "last answer from {url}: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_files_bookrec_services_run_the_seed_flow_as_processes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vars = env_example();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    doc.apply_merge().expect("merge keys");

    // --- the stand-ins
    let broker = Broker::start();
    let s3 = S3Server::start_with(
        "bookrec-lake",
        &vars["MINIO_ROOT_USER"],
        &vars["MINIO_ROOT_PASSWORD"],
    );
    let redis = PrivateRedis::start();
    // MariaDB as `mysql`: recommendation_db and its user, as deploy/mysql/init.sql makes them
    let admin = sqlx::MySqlPool::connect("mysql://root@127.0.0.1:3306/mysql")
        .await
        .expect("mariadb");
    let password = &vars["MYSQL_BOOKREC_PASSWORD"];
    for stmt in [
        "DROP DATABASE IF EXISTS recommendation_db".to_string(),
        "CREATE DATABASE recommendation_db".to_string(),
        format!("CREATE USER IF NOT EXISTS 'bookrec'@'%' IDENTIFIED BY '{password}'"),
        format!("CREATE USER IF NOT EXISTS 'bookrec'@'localhost' IDENTIFIED BY '{password}'"),
        format!("ALTER USER 'bookrec'@'%' IDENTIFIED BY '{password}'"),
        format!("ALTER USER 'bookrec'@'localhost' IDENTIFIED BY '{password}'"),
        "GRANT ALL PRIVILEGES ON recommendation_db.* TO 'bookrec'@'%'".to_string(),
        "GRANT ALL PRIVILEGES ON recommendation_db.* TO 'bookrec'@'localhost'".to_string(),
    ] {
        sqlx::query(&stmt).execute(&admin).await.expect(&stmt);
    }
    // the image's working directory: queries/ where the Dockerfile puts them
    let work = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(root.join("queries"), work.path().join("queries")).expect("queries");
    let workdir = work.path().display().to_string();

    // --- the file's services, mapped
    let mut ports: HashMap<String, u16> = HashMap::new();
    let mut map = |value: &str| -> String {
        // the file's own listen addresses first (0.0.0.0:PORT → a free local port), then
        // the hostnames of the infrastructure
        let mut v = interpolate(value, &vars);
        while let Some(i) = v.find("0.0.0.0:") {
            let rest = &v[i + "0.0.0.0:".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let local = *ports.entry(digits.clone()).or_insert_with(free_port);
            v = format!("{}127.0.0.1:{local}{}", &v[..i], &rest[digits.len()..]);
        }
        // a health check's 127.0.0.1:PORT is the service's own listener
        for (port, local) in &ports {
            v = v.replace(
                &format!("//127.0.0.1:{port}/"),
                &format!("//127.0.0.1:{local}/"),
            );
        }
        v.replace("kafka:9092", &broker.brokers())
            .replace("http://minio:9000", &s3.endpoint())
            .replace("redis://redis:6379", &redis.url)
            .replace("@mysql:3306", "@127.0.0.1:3306")
            .replace("/var/lib/bookrec", &workdir)
    };
    let services = doc["services"].as_mapping().expect("services");
    let mut bookrec: HashMap<String, Service> = HashMap::new();
    for (name, s) in services {
        let name = name.as_str().expect("name").to_string();
        if s["image"].as_str() != Some("bookrec:latest") {
            continue;
        }
        let env = s["environment"]
            .as_mapping()
            .expect("environment")
            .iter()
            .map(|(k, v)| (k.as_str().expect("key").to_string(), map(&yaml_text(v))))
            .collect();
        let command = strings(&s["command"]).iter().map(|c| map(c)).collect();
        let health = strings(&s["healthcheck"]["test"])
            .iter()
            .map(|c| map(c))
            .collect();
        let log = work.path().join(format!("{name}.log"));
        bookrec.insert(
            name.clone(),
            Service {
                name,
                command,
                env,
                health,
                child: None,
                log,
            },
        );
    }
    let mut names: Vec<&String> = bookrec.keys().collect();
    names.sort();
    assert_eq!(
        names,
        ["collect", "land", "schedule", "serve", "stream"],
        "the bookrec services of the file"
    );
    let local = |port: u16| format!("http://127.0.0.1:{}", ports[&port.to_string()]);
    let (collector, api) = (local(5006), local(8080));
    let (land_metrics, schedule_metrics) = (local(9467), local(9468));

    // --- up, in depends_on order (the stand-ins are the infrastructure)
    for name in ["collect", "land", "stream", "serve"] {
        let s = bookrec.get_mut(name).expect("service");
        s.start(work.path());
        s.wait_healthy(Duration::from_secs(90));
    }

    // --- the front end's events: four taste clusters of ten users, eight of twelve books
    let http = reqwest::Client::new();
    let mut events = Vec::new();
    for c in 0..4 {
        for u in 0..10 {
            for n in 0..8 {
                let book = (u * 5 + n * 7) % 12;
                events.push(json!({
                    "event_type": if n == 0 { "purchase" } else { "view" },
                    "user_id": format!("u{c}-{u}"),
                    "book_id": format!("b{c}-{book}"),
                }));
            }
        }
    }
    let r = http
        .post(format!("{collector}/api/logs"))
        .json(&events)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    let n = events.len() as f64;
    // read by the lander; written to the lake when its files roll (5 min) or on SIGTERM,
    // which is what an operator's restart does
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(
        &metrics(&http, &format!("{land_metrics}/metrics")).await,
        "bookrec_land_records_total",
    )
    .unwrap_or(0.0)
        < n
    {
        assert!(Instant::now() < deadline, "land never read the events");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    {
        let land = bookrec.get_mut("land").expect("land");
        land.stop();
        land.start(work.path());
        land.wait_healthy(Duration::from_secs(90));
    }

    // --- the scheduler: both jobs missed their last time, so each runs once now
    {
        let s = bookrec.get_mut("schedule").expect("schedule");
        s.start(work.path());
        s.wait_healthy(Duration::from_secs(90));
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = metrics(&http, &format!("{schedule_metrics}/metrics")).await;
        let ok = |job: &str| {
            metric(
                &text,
                &format!("bookrec_schedule_runs_total{{job=\"{job}\",status=\"succeeded\"}}"),
            )
            .unwrap_or(0.0)
        };
        assert!(
            metric(
                &text,
                "bookrec_schedule_runs_total{job=\"als\",status=\"failed\"}"
            )
            .is_none(),
            "the ALS run failed:\n{}",
            bookrec["schedule"].log_tail()
        );
        if ok("features") >= 1.0 && ok("als") >= 1.0 {
            assert!(metric(&text, "bookrec_model_validation_ndcg").is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled runs:\n{text}\n{}",
            bookrec["schedule"].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // --- the API: the model's list for u2-3, with reasons; then a view now adds the
    // realtime reason from the stream's features
    let recs = format!("{api}/api/recommendations/u2-3");
    let body = until(&http, &recs, |b| {
        b["model_version"].is_string() && b["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    let items = body["items"].as_array().expect("items");
    assert!(
        items[0]["book_id"]
            .as_str()
            .is_some_and(|b| b.starts_with("b2-")),
        "a book of the user's cluster first: {body}"
    );
    assert!(
        items[0]["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "als")),
        "{body}"
    );
    let r = http
        .post(format!("{collector}/api/log"))
        .json(&json!({"event_type": "view", "user_id": "u2-3", "book_id": "b1-0"}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    until(&http, &recs, |b| {
        b["items"].as_array().is_some_and(|items| {
            items.iter().any(|i| {
                i["reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == "similar_to:b1-0"))
            })
        })
    })
    .await;
    drop(bookrec);
    drop(admin);
}
