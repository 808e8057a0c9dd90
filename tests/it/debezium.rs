//! CDC from real Debezium connectors: Debezium 3.6's PostgreSQL connector (pgoutput) on a
//! private PostgreSQL with `wal_level=logical` and its MySQL connector on a private MariaDB
//! with a ROW binlog, run by a Kafka Connect worker against the test broker
//! (`scripts/cdc-lab`, `tests/debezium/`). A snapshot, then inserts, updates, deletes, a
//! primary-key change, NULLs, DECIMALs, timestamps with and without a zone, an unchanged
//! TOASTed text and a truncate; landed by `bookrec land`; the current state `bookrec sql`
//! shows must equal the databases' tables row for row.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::util::display::array_value_to_string;
use bookrec::config::Config;
use bookrec::lake::Lake;
use sqlx::Row;

use crate::land::land;
use crate::support::{self, brokers, unique};

fn lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cdc-lab")
}

/// The private databases; stopped on drop.
struct Databases {
    dir: PathBuf,
    pg_port: u16,
    my_port: u16,
}

impl Databases {
    fn start(dir: &Path) -> Databases {
        let out = Command::new(lab())
            .arg("databases")
            .arg(dir)
            .output()
            .expect("run scripts/cdc-lab");
        assert!(
            out.status.success(),
            "cdc-lab databases: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let port = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .and_then(|p| p.trim().parse::<u16>().ok())
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        Databases {
            dir: dir.to_path_buf(),
            pg_port: port("PG_PORT"),
            my_port: port("MY_PORT"),
        }
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        let _ = Command::new(lab()).arg("stop").arg(&self.dir).status();
    }
}

/// The Connect worker; killed on drop.
struct Worker(Child);

impl Worker {
    fn start(dir: &Path, bootstrap: &str, connectors: &[PathBuf]) -> Worker {
        let mut child = Command::new(lab())
            .arg("worker")
            .arg(dir)
            .arg(bootstrap)
            .args(connectors)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("worker.log")).expect("log"))
            .spawn()
            .expect("start the Connect worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("bookrec-connect: ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(180)).is_err() {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
            panic!("the Connect worker did not get ready; log (last lines, newest first):\n{tail}");
        }
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_props(path: &Path, props: &[(&str, String)]) -> PathBuf {
    let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(path, text).expect("write properties");
    path.to_path_buf()
}

/// Rows as text, sorted, for comparing a database table with the lake's current state.
type Rows = Vec<Vec<Option<String>>>;

fn sorted(mut rows: Rows) -> Rows {
    rows.sort();
    rows
}

async fn lake_rows(cfg: &Config, sql: &str) -> Result<Rows, String> {
    let lake = Lake::open(&cfg.lake).map_err(|e| e.to_string())?;
    let ctx = bookrec::sql::session(&lake)
        .await
        .map_err(|e| e.to_string())?;
    let batches = bookrec::sql::query(&ctx, sql)
        .await
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        use arrow::array::Array;
                        c.is_valid(i)
                            .then(|| array_value_to_string(c, i).unwrap_or_default())
                    })
                    .collect(),
            );
        }
    }
    Ok(sorted(rows))
}

/// A text no compression shrinks below PostgreSQL's TOAST threshold (~8 KB).
fn toast_text() -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..8000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

const PG_BOOKS: &str = "SELECT id::text, title, author, category, price::text, published::text, \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), md5(blurb) \
    FROM books ORDER BY id";
const LAKE_BOOKS: &str = "SELECT CAST(id AS VARCHAR) AS i, title, author, category, price, published, \
    to_char(CAST(updated_at AS TIMESTAMP), '%Y-%m-%d %H:%M:%S%.6f'), md5(blurb) \
    FROM books ORDER BY id";
const PG_RATINGS: &str = "SELECT user_id::text, book_id::text, rating::text FROM ratings \
    ORDER BY user_id, book_id";
const LAKE_RATINGS: &str = "SELECT CAST(user_id AS VARCHAR) AS u, CAST(book_id AS VARCHAR) AS b, rating \
    FROM ratings ORDER BY user_id, book_id";
const MY_USERS: &str = "SELECT CAST(id AS CHAR), name, email, CAST(balance AS CHAR), \
    DATE_FORMAT(created, '%Y-%m-%d %H:%i:%s.%f'), CAST(born AS CHAR) FROM users ORDER BY id";
const LAKE_USERS: &str = "SELECT CAST(id AS VARCHAR) AS i, name, email, balance, \
    to_char(CAST(created AS TIMESTAMP), '%Y-%m-%d %H:%M:%S%.6f'), born FROM users ORDER BY id";

async fn pg_rows(pool: &sqlx::PgPool, sql: &str) -> Rows {
    sorted(
        sqlx::query(sql)
            .fetch_all(pool)
            .await
            .expect("postgres rows")
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<Option<String>, _>(i).expect("text"))
                    .collect()
            })
            .collect(),
    )
}

async fn my_rows(pool: &sqlx::MySqlPool, sql: &str) -> Rows {
    sorted(
        sqlx::query(sql)
            .fetch_all(pool)
            .await
            .expect("mariadb rows")
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<Option<String>, _>(i).expect("text"))
                    .collect()
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_debezium_postgres_and_mysql_connectors_land_the_current_state() {
    let b = brokers();
    support::require_broker(&b);
    let dir = tempfile::tempdir().expect("tempdir");
    let dbs = Databases::start(&dir.path().join("db"));

    // --- the sources: user_engagement_db on PostgreSQL, auth_db on MariaDB
    let pg_admin = sqlx::PgPool::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        dbs.pg_port
    ))
    .await
    .expect("postgres");
    sqlx::query("CREATE DATABASE user_engagement_db")
        .execute(&pg_admin)
        .await
        .expect("create database");
    let pg = sqlx::PgPool::connect(&format!(
        "postgres://postgres@127.0.0.1:{}/user_engagement_db",
        dbs.pg_port
    ))
    .await
    .expect("postgres db");
    for ddl in [
        "CREATE TABLE books (id int PRIMARY KEY, title text NOT NULL, author text, \
         category text, price numeric(8,2), published date, updated_at timestamptz, blurb text)",
        "CREATE TABLE ratings (user_id int, book_id int, rating numeric(2,1) NOT NULL, \
         PRIMARY KEY (user_id, book_id))",
    ] {
        sqlx::query(ddl).execute(&pg).await.expect("ddl");
    }
    let blurb = toast_text();
    sqlx::query(
        "INSERT INTO books VALUES \
         (1, 'Dune', 'Herbert', 'scifi', 9.99, '1965-08-01', '2024-05-01 10:00:00.123456+02', $1), \
         (2, 'Emma', 'Austen', 'classic', 5.00, '1815-12-23', '2024-05-01 10:00:00+00', 'short'), \
         (3, 'Ubik', 'Dick', NULL, NULL, NULL, NULL, NULL)",
    )
    .bind(&blurb)
    .execute(&pg)
    .await
    .expect("books");
    sqlx::query("INSERT INTO ratings VALUES (1, 1, 4.5), (1, 2, 3.0), (2, 1, 5.0)")
        .execute(&pg)
        .await
        .expect("ratings");

    let my_root = format!("mysql://root@127.0.0.1:{}", dbs.my_port);
    let my_admin = sqlx::MySqlPool::connect(&format!("{my_root}/mysql"))
        .await
        .expect("mariadb");
    sqlx::query("CREATE DATABASE auth_db")
        .execute(&my_admin)
        .await
        .expect("create database");
    let my = sqlx::MySqlPool::connect(&format!("{my_root}/auth_db"))
        .await
        .expect("mariadb db");
    sqlx::query(
        "CREATE TABLE users (id int PRIMARY KEY, name varchar(64) NOT NULL, email varchar(128) NULL, \
         balance decimal(10,2) NOT NULL, created datetime(3) NOT NULL, born date NULL)",
    )
    .execute(&my)
    .await
    .expect("users");
    sqlx::query(
        "INSERT INTO users VALUES (1, 'ann', 'ann@example.org', 12.50, '2024-01-02 03:04:05.678', '1990-02-03'), \
         (2, 'bob', NULL, -3.25, '1969-07-20 20:17:40.000', NULL), \
         (3, 'cy', 'cy@example.org', 0.00, '2024-05-01 00:00:00.001', '2001-09-11')",
    )
    .execute(&my)
    .await
    .expect("users rows");

    // --- the connectors
    let pg_prefix = unique("user_engagement_db").replace('-', "_");
    let my_prefix = unique("auth_db").replace('-', "_");
    let work = dir.path().join("connect");
    std::fs::create_dir_all(&work).expect("dir");
    let pg_conn = write_props(
        &work.join("pg.properties"),
        &[
            ("name", "user-engagement".into()),
            (
                "connector.class",
                "io.debezium.connector.postgresql.PostgresConnector".into(),
            ),
            ("plugin.name", "pgoutput".into()),
            ("database.hostname", "127.0.0.1".into()),
            ("database.port", dbs.pg_port.to_string()),
            ("database.user", "postgres".into()),
            ("database.password", String::new()),
            ("database.dbname", "user_engagement_db".into()),
            ("topic.prefix", pg_prefix.clone()),
            ("table.include.list", "public.books,public.ratings".into()),
            ("slot.name", "bookrec_test".into()),
            ("publication.autocreate.mode", "filtered".into()),
            // Debezium skips truncates unless told otherwise
            ("skipped.operations", "none".into()),
            ("topic.creation.default.replication.factor", "1".into()),
            ("topic.creation.default.partitions", "1".into()),
        ],
    );
    let my_conn = write_props(
        &work.join("mysql.properties"),
        &[
            ("name", "auth".into()),
            (
                "connector.class",
                "io.debezium.connector.mysql.MySqlConnector".into(),
            ),
            ("database.hostname", "127.0.0.1".into()),
            ("database.port", dbs.my_port.to_string()),
            ("database.user", "root".into()),
            ("database.password", String::new()),
            ("database.server.id", "5401".into()),
            ("topic.prefix", my_prefix.clone()),
            ("database.include.list", "auth_db".into()),
            (
                "schema.history.internal",
                "io.debezium.storage.file.history.FileSchemaHistory".into(),
            ),
            (
                "schema.history.internal.file.filename",
                work.join("history.dat").display().to_string(),
            ),
            ("include.schema.changes", "false".into()),
            ("topic.creation.default.replication.factor", "1".into()),
            ("topic.creation.default.partitions", "1".into()),
        ],
    );
    let _worker = Worker::start(&work, &b, &[pg_conn, my_conn]);

    // --- the lander, mapping the three topics to tables
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("defaults");
    cfg.kafka.brokers = b.clone();
    cfg.kafka.topic = unique("events");
    cfg.lake.url = format!("file://{}", dir.path().join("lake").display());
    cfg.land.group_id = unique("debezium-land");
    cfg.land.poll_timeout_ms = 50;
    cfg.land
        .cdc
        .insert(format!("{pg_prefix}.public.books"), "books".into());
    cfg.land
        .cdc
        .insert(format!("{pg_prefix}.public.ratings"), "ratings".into());
    cfg.land
        .cdc
        .insert(format!("{my_prefix}.auth_db.users"), "users".into());

    // waits until the lake's current state equals the databases' tables
    let converge = |what: &'static str| {
        let cfg = cfg.clone();
        let pg = pg.clone();
        let my = my.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let report = land(&cfg).await;
                assert_eq!(report.dead_letters, 0, "{what}: dead-lettered: {report:?}");
                let want = (
                    pg_rows(&pg, PG_BOOKS).await,
                    pg_rows(&pg, PG_RATINGS).await,
                    my_rows(&my, MY_USERS).await,
                );
                let got = (
                    lake_rows(&cfg, LAKE_BOOKS).await,
                    lake_rows(&cfg, LAKE_RATINGS).await,
                    lake_rows(&cfg, LAKE_USERS).await,
                );
                let matches = matches!(&got, (Ok(b), Ok(r), Ok(u))
                    if *b == want.0 && *r == want.1 && *u == want.2);
                if matches {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: the lake's current state never matched the databases\n\
                     want {want:#?}\ngot {got:#?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    converge("after the snapshot").await;

    // --- live changes
    for stmt in [
        // an update that leaves the TOASTed blurb alone: Debezium sends the placeholder
        "UPDATE books SET price = 10.49, updated_at = '2024-06-01 12:30:00-05' WHERE id = 1",
        "UPDATE books SET category = 'scifi', price = 1234.5 WHERE id = 3",
        "INSERT INTO books VALUES (4, 'Beloved', 'Morrison', 'fiction', 0.01, '1987-09-02', \
         '1999-12-31 23:59:59.999999+00', NULL)",
        "DELETE FROM books WHERE id = 2",
        // a primary-key change: delete + tombstone + create
        "UPDATE books SET id = 20 WHERE id = 4",
        "UPDATE books SET author = NULL WHERE id = 20",
        "TRUNCATE ratings",
        "INSERT INTO ratings VALUES (3, 1, 2.5), (3, 20, 4.0)",
    ] {
        sqlx::query(stmt).execute(&pg).await.expect(stmt);
    }
    for stmt in [
        "UPDATE users SET email = NULL, balance = 99999999.99 WHERE id = 1",
        "UPDATE users SET id = 30 WHERE id = 3",
        "DELETE FROM users WHERE id = 2",
        "INSERT INTO users VALUES (4, 'dee', 'dee@example.org', -0.01, '2038-01-19 03:14:08.000', '1900-01-01')",
    ] {
        sqlx::query(stmt).execute(&my).await.expect(stmt);
    }
    converge("after the live changes").await;

    // what arrived is what Debezium really sends: decoded, TOAST placeholder merged, truncate
    let changes = lake_rows(
        &cfg,
        "SELECT op, count(*) FROM ratings_changes GROUP BY op ORDER BY op",
    )
    .await
    .expect("ratings changes");
    assert!(
        changes.iter().any(|r| r[0].as_deref() == Some("t")),
        "a truncate was landed: {changes:?}"
    );
    let placeholders = lake_rows(
        &cfg,
        "SELECT count(*) FROM books_changes WHERE after LIKE '%__debezium_unavailable_value%'",
    )
    .await
    .expect("books changes");
    assert_ne!(
        placeholders[0][0].as_deref(),
        Some("0"),
        "the unchanged TOASTed blurb arrived as Debezium's placeholder"
    );

    // what Debezium really sent, kept as seeds of the `cdc` fuzz target when asked:
    // BOOKREC_DEBEZIUM_CAPTURE=fuzz/corpus/cdc (a few records per topic and op)
    if let Ok(dir) = std::env::var("BOOKREC_DEBEZIUM_CAPTURE") {
        let mut kcfg = cfg.kafka.clone();
        kcfg.brokers = b.clone();
        for topic in cfg.land.cdc.keys() {
            let records = bookrec::bus::consumer::read_topic(&kcfg, topic, Duration::from_secs(30))
                .expect("read the topic");
            let mut per_op: std::collections::HashMap<String, usize> = Default::default();
            for r in records {
                let key = r.key.unwrap_or_default();
                let value = r.payload.unwrap_or_default();
                let op = serde_json::from_slice::<serde_json::Value>(&value)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/payload/op")
                            .and_then(|o| o.as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "tombstone".into());
                let n = per_op.entry(op.clone()).or_default();
                *n += 1;
                if *n > 3 || key.len() > 255 {
                    continue;
                }
                let mut seed = vec![key.len() as u8];
                seed.extend_from_slice(&key);
                seed.extend_from_slice(&value);
                let table = topic.rsplit('.').next().unwrap_or("t");
                std::fs::write(
                    Path::new(&dir).join(format!("debezium-{table}-{op}-{n}")),
                    seed,
                )
                .expect("write seed");
            }
        }
    }
}
