//! CDC from real Debezium connectors: Debezium 3.6's PostgreSQL connector (pgoutput) on a
//! private PostgreSQL with `wal_level=logical` and its MySQL connector on a private MariaDB
//! with a ROW binlog, run by a Kafka Connect worker against the test broker
//! (`scripts/cdc-lab`, `tests/debezium/`). A snapshot, then inserts, updates, deletes, a
//! primary-key change, NULLs, DECIMALs, timestamps with and without a zone, an unchanged
//! TOASTed text and a truncate; landed by `bookrec land`; the current state `bookrec sql`
//! shows must equal the databases' tables row for row, and so must the canonical `users`
//! and `engagement` the shipped source views make of them. Then a favourite saved only in
//! the database changes the user's recommendations after the next batch.

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
pub struct Databases {
    dir: PathBuf,
    pub pg_port: u16,
    pub my_port: u16,
}

impl Databases {
    pub fn start(dir: &Path) -> Databases {
        let out = Command::new(lab())
            .arg("databases")
            .arg(dir)
            .output()
            .expect("run scripts/cdc-lab");
        if !out.status.success() {
            // the servers' own logs say why (the script sends their output there)
            let logs: String = ["pg/initdb.log", "pg/log", "my/install.log", "my/log"]
                .iter()
                .map(|f| {
                    let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(8).collect();
                    format!(
                        "--- {f}:\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!(
                "cdc-lab databases ({}): {}{}\n{logs}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
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

impl Databases {
    /// Creates database `db` on the private PostgreSQL and connects to it.
    pub async fn new_pg_database(&self, db: &str) -> sqlx::PgPool {
        let url = |db: &str| format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port);
        let admin = sqlx::PgPool::connect(&url("postgres"))
            .await
            .expect("postgres");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        sqlx::PgPool::connect(&url(db)).await.expect("postgres db")
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        let _ = Command::new(lab()).arg("stop").arg(&self.dir).status();
    }
}

/// The Connect worker; killed on drop.
pub struct Worker(Child);

impl Worker {
    fn start(dir: &Path, bootstrap: &str, connectors: &[PathBuf]) -> Worker {
        Worker::start_with(dir, bootstrap, connectors, &[])
    }

    /// A worker with more environment (e.g. `CONNECT_REST_PORT`, the secrets that
    /// connector configs name as `${env:NAME}`).
    pub fn start_with(
        dir: &Path,
        bootstrap: &str,
        connectors: &[PathBuf],
        env: &[(String, String)],
    ) -> Worker {
        std::fs::create_dir_all(dir).expect("worker dir");
        let mut child = Command::new(lab())
            .arg("worker")
            .arg(dir)
            .arg(bootstrap)
            .args(connectors)
            .envs(env.iter().map(|(k, v)| (k, v)))
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
    rows_in(&ctx, sql).await
}

/// A query's rows as sorted text, in an open session.
async fn rows_in(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Rows, String> {
    let batches = bookrec::sql::query(ctx, sql)
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

// the raw tables, column for column
const PG_BOOKS: &str = "SELECT id::text, title, author, category, price::text, published::text, \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), md5(blurb) \
    FROM books ORDER BY id";
const LAKE_BOOKS: &str = "SELECT CAST(id AS VARCHAR) AS i, title, author, category, price, published, \
    to_char(CAST(updated_at AS TIMESTAMP), '%Y-%m-%d %H:%M:%S%.6f'), md5(blurb) \
    FROM pg_books ORDER BY id";
const PG_RATINGS: &str = "SELECT user_id::text, book_id, rating::text FROM ratings \
    ORDER BY user_id, book_id";
const LAKE_RATINGS: &str = "SELECT CAST(user_id AS VARCHAR) AS u, book_id, rating \
    FROM user_engagement_db_ratings ORDER BY user_id, book_id";
const MY_USERS: &str = "SELECT CAST(id AS CHAR), username, email, CAST(balance AS CHAR), \
    DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f'), CAST(birth_date AS CHAR), region \
    FROM users ORDER BY id";
const LAKE_USERS: &str = "SELECT CAST(id AS VARCHAR) AS i, username, email, balance, \
    to_char(CAST(created_at AS TIMESTAMP), '%Y-%m-%d %H:%M:%S%.6f'), birth_date, region \
    FROM auth_db_users ORDER BY id";
// the canonical tables of the shipped source views (queries/sources/)
const MY_CANONICAL_USERS: &str = "SELECT CAST(id AS CHAR), username, CAST(YEAR(birth_date) AS CHAR), \
    region, DATE_FORMAT(created_at, '%Y-%m-%d %H:%i:%s.%f') FROM users";
const LAKE_CANONICAL_USERS: &str = "SELECT user_id, username, CAST(birth_year AS VARCHAR), region, \
    to_char(signup_ts, '%Y-%m-%d %H:%M:%S%.6f') FROM users";
const PG_ENGAGEMENT: &str = "\
    SELECT user_id::text, book_id, 'favorite', '10000', \
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM favorites \
    UNION ALL SELECT user_id::text, book_id, 'rating', round(rating * 10000)::text, \
        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ratings \
    UNION ALL SELECT user_id::text, book_id, 'progress', round(progress * 10000)::text, \
        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM reading_progress \
        WHERE progress IS NOT NULL";
const LAKE_ENGAGEMENT: &str = "SELECT user_id, book_id, kind, \
    CAST(CAST(round(value * 10000) AS BIGINT) AS VARCHAR), \
    to_char(ts, '%Y-%m-%d %H:%M:%S%.6f') FROM engagement";

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
    let pg = dbs.new_pg_database("user_engagement_db").await;
    for ddl in [
        "CREATE TABLE books (id int PRIMARY KEY, title text NOT NULL, author text, \
         category text, price numeric(8,2), published date, updated_at timestamptz, blurb text)",
        // user_engagement_db as the platform has it (queries/sources/engagement.sql)
        "CREATE TABLE ratings (user_id bigint, book_id text, rating numeric(3,1) NOT NULL, \
         updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id, book_id))",
        "CREATE TABLE favorites (user_id bigint, book_id text, \
         created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id, book_id))",
        "CREATE TABLE reading_progress (user_id bigint, book_id text, progress numeric(5,4), \
         updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id, book_id))",
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
    for stmt in [
        "INSERT INTO ratings VALUES (1, '1', 4.5, '2024-05-01 10:00:00+02'), \
         (1, '2', 3.0, '2024-05-02 00:00:00+00'), (2, '1', 5.0, '2024-05-03 00:00:00.5+00')",
        "INSERT INTO favorites VALUES (1, '1', '2024-05-01 09:00:00+00'), \
         (2, '3', '2024-05-04 12:00:00.25-03')",
        "INSERT INTO reading_progress VALUES (1, '1', 0.4200, '2024-05-05 00:00:00+00'), \
         (3, '2', NULL, '2024-05-06 00:00:00+00')",
    ] {
        sqlx::query(stmt).execute(&pg).await.expect(stmt);
    }

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
        "CREATE TABLE users (id int PRIMARY KEY, username varchar(64) NOT NULL, email varchar(128) NULL, \
         balance decimal(10,2) NOT NULL, created_at datetime(3) NOT NULL, birth_date date NULL, \
         region varchar(32) NULL)",
    )
    .execute(&my)
    .await
    .expect("users");
    sqlx::query(
        "INSERT INTO users VALUES (1, 'ann', 'ann@example.org', 12.50, '2024-01-02 03:04:05.678', '1990-02-03', 'eu'), \
         (2, 'bob', NULL, -3.25, '1969-07-20 20:17:40.000', NULL, NULL), \
         (3, 'cy', 'cy@example.org', 0.00, '2024-05-01 00:00:00.001', '2001-09-11', 'apac')",
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
            (
                "table.include.list",
                "public.books,public.ratings,public.favorites,public.reading_progress".into(),
            ),
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

    // --- the lander: the default mapping's raw tables (under this run's topic prefixes),
    // and the PostgreSQL books as one more raw table
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("defaults");
    cfg.kafka.brokers = b.clone();
    cfg.kafka.topic = unique("events");
    cfg.lake.url = format!("file://{}", dir.path().join("lake").display());
    cfg.land.group_id = unique("debezium-land");
    cfg.land.poll_timeout_ms = 50;
    let defaults = std::mem::take(&mut cfg.land.cdc);
    for (topic, table) in defaults {
        let topic = topic
            .replace("user_engagement_db.", &format!("{pg_prefix}."))
            .replace("auth_db.auth_db.", &format!("{my_prefix}.auth_db."));
        cfg.land.cdc.insert(topic, table);
    }
    cfg.land
        .cdc
        .insert(format!("{pg_prefix}.public.books"), "pg_books".into());

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
                let want = vec![
                    pg_rows(&pg, PG_BOOKS).await,
                    pg_rows(&pg, PG_RATINGS).await,
                    my_rows(&my, MY_USERS).await,
                    my_rows(&my, MY_CANONICAL_USERS).await,
                    pg_rows(&pg, PG_ENGAGEMENT).await,
                ];
                // one session (the CDC fold and the source views) for the five queries
                let lake = Lake::open(&cfg.lake).expect("lake");
                let ctx = bookrec::sql::session(&lake).await;
                let mut got = Vec::new();
                for sql in [
                    LAKE_BOOKS,
                    LAKE_RATINGS,
                    LAKE_USERS,
                    LAKE_CANONICAL_USERS,
                    LAKE_ENGAGEMENT,
                ] {
                    got.push(match &ctx {
                        Ok(ctx) => rows_in(ctx, sql).await,
                        Err(e) => Err(e.to_string()),
                    });
                }
                let matches = got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g.as_ref().is_ok_and(|g| g == w));
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
        "INSERT INTO ratings VALUES (3, '1', 2.5, '2024-06-01 00:00:00+00'), \
         (3, '20', 4.0, '2024-06-02 00:00:00+00')",
        "DELETE FROM favorites WHERE user_id = 1",
        "INSERT INTO favorites VALUES (3, '20', '2024-06-03 08:00:00+00')",
        "UPDATE reading_progress SET progress = 1, updated_at = '2024-06-04 00:00:00+00' \
         WHERE user_id = 1",
    ] {
        sqlx::query(stmt).execute(&pg).await.expect(stmt);
    }
    for stmt in [
        "UPDATE users SET email = NULL, balance = 99999999.99 WHERE id = 1",
        "UPDATE users SET id = 30 WHERE id = 3",
        "DELETE FROM users WHERE id = 2",
        "INSERT INTO users VALUES (4, 'dee', 'dee@example.org', -0.01, '2038-01-19 03:14:08.000', '1900-01-01', 'na')",
    ] {
        sqlx::query(stmt).execute(&my).await.expect(stmt);
    }
    converge("after the live changes").await;

    // what arrived is what Debezium really sends: decoded, TOAST placeholder merged, truncate
    let changes = lake_rows(
        &cfg,
        "SELECT op, count(*) FROM user_engagement_db_ratings_changes GROUP BY op ORDER BY op",
    )
    .await
    .expect("ratings changes");
    assert!(
        changes.iter().any(|r| r[0].as_deref() == Some("t")),
        "a truncate was landed: {changes:?}"
    );
    let placeholders = lake_rows(
        &cfg,
        "SELECT count(*) FROM pg_books_changes WHERE after LIKE '%__debezium_unavailable_value%'",
    )
    .await
    .expect("books changes");
    assert_ne!(
        placeholders[0][0].as_deref(),
        Some("0"),
        "the unchanged TOASTed blurb arrived as Debezium's placeholder"
    );

    // --- a favourite saved only in the database changes the user's recommendations after
    // the next batch: users in four taste clusters (crate::publish), user 1203 of cluster 2
    let lake = Lake::open(&cfg.lake).expect("lake");
    crate::publish::put_clustered_events(&lake, |c, u| (1000 + 100 * c + u).to_string()).await;
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = bookrec::store::Store::connect(&format!(
        "sqlite://{}",
        store_dir.path().join("rec.db").display()
    ))
    .await
    .expect("store");
    let training = crate::publish::training(1.0);
    let batch = |lake: Lake, store: bookrec::store::Store| {
        let training = training.clone();
        async move {
            bookrec::batch::runner::run(
                &lake,
                Some(&store),
                &crate::batch::batch_config(),
                &[],
                crate::batch::as_of(),
                Some(&training),
                &mut |_| {},
            )
            .await
            .expect("batch")
        }
    };
    batch(lake.clone(), store.clone()).await;
    let (_, before) = store
        .user_books("1203", 10)
        .await
        .expect("read")
        .expect("user 1203 has recommendations");
    let favourite = before[0].item.clone();
    assert!(favourite.starts_with("b2-"), "{before:?}");
    // the app saves it (the front end never logs it), an hour before the batch's cut-off
    sqlx::query("INSERT INTO favorites VALUES (1203, $1, '2026-11-25 23:00:00+00')")
        .bind(&favourite)
        .execute(&pg)
        .await
        .expect("favourite");
    converge("after the favourite").await;
    batch(lake.clone(), store.clone()).await;
    let (_, after) = store
        .user_books("1203", 10)
        .await
        .expect("read")
        .expect("user 1203 has recommendations");
    assert!(
        after.iter().all(|r| r.item != favourite),
        "the favourited {favourite} is known to the user now, not recommended: {after:?}"
    );
    assert_ne!(before, after);
    let signal = lake_rows(
        &cfg,
        &format!(
            "SELECT CAST(round(weight, 3) AS VARCHAR) FROM interactions \
             WHERE user_id = '1203' AND book_id = '{favourite}'"
        ),
    )
    .await
    .expect("interactions");
    // w_saved_favorite 4 × the 30-day half-life's decay over one hour
    assert_eq!(signal, vec![vec![Some("3.996".to_string())]]);
    let profile = lake_rows(
        &cfg,
        "SELECT saved_favorites, favorites FROM user_profile WHERE user_id = '1203'",
    )
    .await
    .expect("user_profile");
    assert_eq!(
        profile,
        vec![vec![Some("1".to_string()), Some("0".to_string())]]
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
