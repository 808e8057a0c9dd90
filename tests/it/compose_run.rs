//! docker-compose.yml run as processes (Docker cannot run here): every bookrec service of
//! the file starts with exactly its `command` and `environment` (after compose's merge
//! keys and `${VAR}` interpolation from `.env.example`), its hostnames mapped to local
//! stand-ins — a private tansu for `kafka`, s3s-fs for `minio` (with the file's
//! credentials, and no bucket: the `init` service makes it), a private redis-server for
//! `redis`, a private MariaDB for `mysql` and a private PostgreSQL for `postgres`
//! (`scripts/cdc-lab databases`, set up by the file's own `deploy/mysql/init.sh` and
//! `deploy/postgres/init.sql`), the CDC issue's Kafka Connect worker with real Debezium
//! connectors for `connect` (registered by the file's own `deploy/connect/register.sh`
//! through the worker's REST port) — its published and ops ports to free ones, and the
//! image's `/var/lib/bookrec` to a folder holding `queries/`. Each service is "healthy" when
//! its compose health check (a `bookrec probe` command) passes, and started in `depends_on`
//! order; `init` must exit 0. Then the seed's flow: events posted to the collector and
//! changes in both source databases → landed → the scheduler's missed runs (features, then
//! ALS + publish) → the model and the profiles in the store → the stream's realtime
//! features → `GET /api/recommendations/{user}` with reasons. A key, command, port or value
//! in the file that the binary does not accept fails this test. (MongoDB, the third source,
//! has no server on these machines: its connector file and `deploy/mongo/init.js` are not
//! run here.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::compose::{dependencies, env_example, interpolate, yaml_text};
use crate::debezium::{Databases, Worker};
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
        let out = log.try_clone().expect("log");
        self.child = Some(
            cmd.args(&self.command)
                .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(workdir)
                .stdout(out)
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

    /// A one-shot service (`restart: "no"`): waits for it to exit 0, as
    /// `condition: service_completed_successfully` does.
    fn wait_completed(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("started");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "{} exited {status}:\n{}",
                    self.name,
                    self.log_tail()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
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

/// Runs `program args` with `env` to completion; panics with its output unless it exits 0.
fn run_ok(program: &str, args: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{text}",
        out.status
    );
    text
}

/// The platform's source databases as the file's `mysql` and `postgres` services set them
/// up: the private servers given the file's root password, then its own init scripts.
async fn source_databases(
    root: &Path,
    dir: &Path,
    vars: &HashMap<String, String>,
) -> (Databases, sqlx::MySqlPool, sqlx::PgPool) {
    let dbs = Databases::start(dir);
    let root_pw = &vars["MYSQL_ROOT_PASSWORD"];
    let my_admin =
        sqlx::MySqlPool::connect(&format!("mysql://root@127.0.0.1:{}/mysql", dbs.my_port))
            .await
            .expect("private mariadb");
    sqlx::query(&format!(
        "ALTER USER 'root'@'localhost' IDENTIFIED BY '{root_pw}'"
    ))
    .execute(&my_admin)
    .await
    .expect("root password");
    drop(my_admin);
    // what the mysql image does with /docker-entrypoint-initdb.d/10-init.sh
    let mut env: Vec<(String, String)> = [
        "MYSQL_ROOT_PASSWORD",
        "MYSQL_BOOKREC_PASSWORD",
        "MYSQL_DEBEZIUM_PASSWORD",
    ]
    .iter()
    .map(|k| (k.to_string(), vars[*k].clone()))
    .collect();
    env.push(("MYSQL_HOST".into(), "127.0.0.1".into()));
    env.push(("MYSQL_TCP_PORT".into(), dbs.my_port.to_string()));
    env.push((
        "INIT_SQL".into(),
        root.join("deploy/mysql/init.sql").display().to_string(),
    ));
    let script = root.join("deploy/mysql/init.sh").display().to_string();
    run_ok("sh", &[&script], &env);
    let my = sqlx::MySqlPool::connect(&format!(
        "mysql://root:{root_pw}@127.0.0.1:{}/auth_db",
        dbs.my_port
    ))
    .await
    .expect("auth_db");
    // what the postgres image does with POSTGRES_DB and /docker-entrypoint-initdb.d/10-init.sql
    let pg = dbs.new_pg_database("user_engagement_db").await;
    let pg_url = format!(
        "postgres://postgres@127.0.0.1:{}/user_engagement_db",
        dbs.pg_port
    );
    let sql = root.join("deploy/postgres/init.sql").display().to_string();
    run_ok(
        "psql",
        &["-v", "ON_ERROR_STOP=1", "-q", "-f", &sql, &pg_url],
        &[],
    );
    (dbs, my, pg)
}

/// The file's `connect` and `connect-init`: the Connect worker with the service's
/// environment (the secrets its connector files name) and a REST port, then
/// `deploy/connect/register.sh` — twice, as a re-run after an edit would — on the MySQL and
/// PostgreSQL connector files with their hostnames and ports mapped; waits until both
/// connectors and their tasks run.
async fn connect_and_register(
    root: &Path,
    dir: &Path,
    doc: &serde_yaml::Value,
    vars: &HashMap<String, String>,
    dbs: &Databases,
    brokers: &str,
) -> Worker {
    let rest = free_port();
    let mut env: Vec<(String, String)> = doc["services"]["connect"]["environment"]
        .as_mapping()
        .expect("connect environment")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().expect("key").to_string(),
                interpolate(&yaml_text(v), vars),
            )
        })
        .filter(|(k, _)| k.ends_with("_PASSWORD"))
        .collect();
    assert_eq!(
        env.len(),
        2,
        "the connector secrets of the connect service: {env:?}"
    );
    env.push(("CONNECT_REST_PORT".into(), rest.to_string()));
    let worker = Worker::start_with(&dir.join("worker"), brokers, &[], &env);

    let deploy = dir.join("deploy-connect");
    std::fs::create_dir_all(&deploy).expect("dir");
    std::fs::copy(
        root.join("deploy/connect/register.sh"),
        deploy.join("register.sh"),
    )
    .expect("register.sh");
    for (name, port) in [
        ("auth_db", dbs.my_port),
        ("user_engagement_db", dbs.pg_port),
    ] {
        let text = std::fs::read_to_string(root.join(format!("deploy/connect/{name}.json")))
            .expect("connector file");
        let mut config: serde_json::Map<String, Value> =
            serde_json::from_str(&text).expect("connector JSON");
        for (key, value) in config.iter_mut() {
            let Some(v) = value.as_str() else {
                panic!("{name}.json: {key} is not a string (Connect configs are strings)")
            };
            *value = match key.as_str() {
                "database.hostname" => json!("127.0.0.1"),
                "database.port" => json!(port.to_string()),
                _ => json!(v.replace("kafka:9092", brokers)),
            };
        }
        std::fs::write(
            deploy.join(format!("{name}.json")),
            serde_json::to_string_pretty(&config).expect("json"),
        )
        .expect("write");
    }
    let url = format!("http://127.0.0.1:{rest}");
    let env = [("CONNECT_URL".to_string(), url.clone())];
    let script = deploy.join("register.sh").display().to_string();
    for _ in 0..2 {
        let out = run_ok("sh", &[&script], &env);
        for name in ["auth_db", "user_engagement_db"] {
            assert!(
                out.contains(&format!("connector {name} registered")),
                "{out}"
            );
        }
    }
    let http = reqwest::Client::new();
    let names = until(&http, &format!("{url}/connectors"), |b| {
        b.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(names.as_array().map(Vec::len), Some(2), "{names}");
    for name in ["auth_db", "user_engagement_db"] {
        until(&http, &format!("{url}/connectors/{name}/status"), |b| {
            b["connector"]["state"] == "RUNNING"
                && b["tasks"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["state"] == "RUNNING"))
        })
        .await;
    }
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_files_bookrec_services_run_the_seed_flow_as_processes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let vars = env_example();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file");
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    doc.apply_merge().expect("merge keys");
    let work = tempfile::tempdir().expect("tempdir");

    // --- the stand-ins
    let broker = Broker::start();
    let s3 = S3Server::start_empty(
        "bookrec-lake",
        &vars["MINIO_ROOT_USER"],
        &vars["MINIO_ROOT_PASSWORD"],
    );
    let redis = PrivateRedis::start();
    let (dbs, my, pg) = source_databases(root, &work.path().join("db"), &vars).await;
    // the image's working directory: queries/ where the Dockerfile puts them
    std::os::unix::fs::symlink(root.join("queries"), work.path().join("queries")).expect("queries");
    let workdir = work.path().display().to_string();

    // --- the file's services, mapped
    let mut ports: HashMap<String, u16> = HashMap::new();
    let my_host = format!("@127.0.0.1:{}", dbs.my_port);
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
            .replace("@mysql:3306", &my_host)
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
        ["collect", "init", "land", "schedule", "serve", "stream"],
        "the bookrec services of the file"
    );
    // started in the file's depends_on order: a bookrec service starts only once the bookrec
    // services it depends on are up (healthy, or for init completed); the rest of the file
    // is the stand-ins, already up
    let deps = dependencies(&doc);
    let bookrec_names: Vec<String> = bookrec.keys().cloned().collect();
    let mut up: Vec<String> = Vec::new();
    let may_start = |name: &str, up: &mut Vec<String>| {
        for (d, _) in &deps[name] {
            if bookrec_names.contains(d) {
                assert!(up.contains(d), "{name} depends on {d}, which is not up yet");
            }
        }
        up.push(name.to_string());
    };
    let local = |port: u16| format!("http://127.0.0.1:{}", ports[&port.to_string()]);
    let (collector, api) = (local(5006), local(8080));
    let (land_metrics, schedule_metrics) = (local(9467), local(9468));

    // --- up, in depends_on order: init (topics, bucket), connect + its registration, then
    // the long-running services
    {
        may_start("init", &mut up);
        let init = bookrec.get_mut("init").expect("init");
        init.start(work.path());
        init.wait_completed(Duration::from_secs(120));
        let out = std::fs::read_to_string(&init.log).expect("init log");
        for line in [
            "topic user_behavior_logs created (6 partitions wanted)",
            "topic user_behavior_logs.dlq created",
            "topic auth_db.auth_db.users created (1 partitions wanted)",
            "topic user_engagement_db.public.favorites created (1 partitions wanted)",
            "bucket created",
        ] {
            assert!(out.contains(line), "init said:\n{out}");
        }
        // idempotent: a second run finds everything
        init.start(work.path());
        init.wait_completed(Duration::from_secs(120));
        let out = std::fs::read_to_string(&init.log).expect("init log");
        assert!(!out.contains(" created"), "init again:\n{out}");
        assert!(out.contains("bucket exists"), "{out}");
    }
    assert!(s3.bucket_dir().is_dir(), "init made the bucket");
    let _connect =
        connect_and_register(root, work.path(), &doc, &vars, &dbs, &broker.brokers()).await;
    for name in ["collect", "land", "stream", "serve"] {
        may_start(name, &mut up);
        let s = bookrec.get_mut(name).expect("service");
        s.start(work.path());
        s.wait_healthy(Duration::from_secs(90));
    }

    // --- the front end's events: four taste clusters of ten users (ids 1000–1039, as the
    // platform's numeric user ids), eight of twelve books each
    let http = reqwest::Client::new();
    let mut events = Vec::new();
    for c in 0..4 {
        for u in 0..10 {
            for n in 0..8 {
                let book = (u * 5 + n * 7) % 12;
                events.push(json!({
                    "event_type": if n == 0 { "purchase" } else { "view" },
                    "user_id": format!("{}", 1000 + c * 10 + u),
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
    // --- and changes in the source databases: user 1023 (cluster 2; its events touch
    // b2-{0,2,3,4,5,7,9,10}) favourites b2-1 in PostgreSQL only; auth_db gets user 1023 and
    // ann moves region
    sqlx::query("INSERT INTO favorites (user_id, book_id) VALUES (1023, 'b2-1')")
        .execute(&pg)
        .await
        .expect("favourite");
    for stmt in [
        "INSERT INTO users (id, username, password_hash, gender, region) \
         VALUES (1023, 'dee', 'x', 'f', 'eu')",
        "UPDATE users SET region = 'emea' WHERE username = 'ann'",
    ] {
        sqlx::query(stmt).execute(&my).await.expect(stmt);
    }
    // read by the lander: the events, and the eleven CDC records (the eight seed rows of
    // init.sql / init.sql as snapshots, then three changes); written to the lake when its
    // files roll (5 min) or on SIGTERM, which is what an operator's restart does
    let want = events.len() as f64 + 11.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = metrics(&http, &format!("{land_metrics}/metrics")).await;
        let read = metric(&text, "bookrec_land_records_total").unwrap_or(0.0);
        if read >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "land read {read} of {want} records:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    {
        let land = bookrec.get_mut("land").expect("land");
        land.stop();
        land.start(work.path());
        land.wait_healthy(Duration::from_secs(90));
    }
    // the MySQL change in the lake's canonical `users` (queries/sources/users.sql), asked
    // with `bookrec sql` in the land service's environment
    let users = {
        let land = &bookrec["land"];
        let out = Command::new(env!("CARGO_BIN_EXE_bookrec"))
            .args([
                "sql",
                "--format",
                "json",
                "SELECT user_id, username, region FROM users ORDER BY CAST(user_id AS BIGINT)",
            ])
            .envs(land.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(work.path())
            .output()
            .expect("bookrec sql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let users: Vec<Value> = users
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        users,
        [
            json!({"user_id": "1", "username": "ann", "region": "emea"}),
            json!({"user_id": "2", "username": "bob", "region": "na"}),
            json!({"user_id": "3", "username": "cy", "region": "apac"}),
            json!({"user_id": "1023", "username": "dee", "region": "eu"}),
        ],
        "the users view after the MySQL changes"
    );

    // --- the scheduler: both jobs missed their last time, so each runs once now
    {
        may_start("schedule", &mut up);
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

    // --- the API: the PostgreSQL favourite is in 1023's profile, and the book it named is
    // known to the user now, so the model's list has the cluster's other unseen books but
    // not b2-1
    // a per-user read: the token of .env's SERVE_API_KEY, as the file hands it to serve
    let key = &vars["SERVE_API_KEY"];
    let profile_url = format!("{api}/api/users/1023/profile");
    let denied = http.get(&profile_url).send().await.expect("profile");
    assert_eq!(denied.status(), 401, "a profile without the key");
    let deadline = Instant::now() + Duration::from_secs(90);
    let profile = loop {
        let body: Value = match http.get(&profile_url).bearer_auth(key).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if body["profile"].is_object() {
            break body;
        }
        assert!(Instant::now() < deadline, "last profile: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // the store's feature rows are text
    let saved = &profile["profile"]["saved_favorites"];
    assert!(
        saved.as_f64() == Some(1.0) || saved.as_str() == Some("1"),
        "{profile}"
    );
    let recs = format!("{api}/api/recommendations/1023");
    let body = until(&http, &recs, |b| {
        b["model_version"].is_string() && b["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    let items = body["items"].as_array().expect("items");
    let books: Vec<&str> = items.iter().filter_map(|i| i["book_id"].as_str()).collect();
    assert!(
        books[0].starts_with("b2-"),
        "a book of the user's cluster first: {body}"
    );
    assert!(
        items[0]["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "als")),
        "{body}"
    );
    // the model's own list (reason `als`): the cluster's three other unseen books, not the
    // one favourited in the database (the realtime `similar_to:` source may still bring it
    // back: it knows the recent views, not the saved favourites)
    let from_model: Vec<&str> = items
        .iter()
        .filter(|i| {
            i["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == "als"))
        })
        .filter_map(|i| i["book_id"].as_str())
        .collect();
    assert!(
        !from_model.contains(&"b2-1"),
        "favourited in the database: {body}"
    );
    for unseen in ["b2-6", "b2-8", "b2-11"] {
        assert!(from_model.contains(&unseen), "{unseen}: {body}");
    }
    let r = http
        .post(format!("{collector}/api/log"))
        .json(&json!({"event_type": "view", "user_id": "1023", "book_id": "b1-0"}))
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
}
