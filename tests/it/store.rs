//! The same batch on SQLite, MariaDB and PostgreSQL yields the same database outputs.

use bookrec::store::Store;
use sqlx::Connection;

use crate::batch::{as_of, batch_config, fixture_lake};
use crate::support::unique;

/// A fresh database on each server (dropped at the end), and a SQLite file.
pub struct Databases {
    pub urls: Vec<String>,
    mysql_db: String,
    pg_db: String,
    _dir: tempfile::TempDir,
}

const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";
const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl Databases {
    pub async fn create() -> Databases {
        let name = unique("bookrec_it").replace('-', "_");
        let mut my = sqlx::MySqlConnection::connect(MYSQL_ADMIN)
            .await
            .expect("MariaDB on 127.0.0.1:3306 (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut my)
            .await
            .expect("create mysql db");
        let mut pg = sqlx::PgConnection::connect(PG_ADMIN)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut pg)
            .await
            .expect("create pg db");
        let dir = tempfile::tempdir().expect("tempdir");
        Databases {
            urls: vec![
                format!("sqlite://{}/bookrec.db", dir.path().display()),
                format!("mysql://root@127.0.0.1:3306/{name}"),
                format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ],
            mysql_db: name.clone(),
            pg_db: name,
            _dir: dir,
        }
    }

    pub async fn drop_all(self) {
        if let Ok(mut my) = sqlx::MySqlConnection::connect(MYSQL_ADMIN).await {
            let _ = sqlx::query(&format!("DROP DATABASE {}", self.mysql_db))
                .execute(&mut my)
                .await;
        }
        if let Ok(mut pg) = sqlx::PgConnection::connect(PG_ADMIN).await {
            let _ = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.pg_db))
                .execute(&mut pg)
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_gives_the_same_outputs_on_sqlite_mariadb_and_postgres() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(lake_dir.path()).await;
    let dbs = Databases::create().await;
    let mut dumps = Vec::new();
    for url in &dbs.urls {
        let store = Store::connect(url).await.expect("connect + migrate");
        // twice: reruns are idempotent
        for _ in 0..2 {
            let record = bookrec::batch::runner::run(
                &lake,
                Some(&store),
                &batch_config(),
                &[],
                as_of(),
                None,
                &mut |_| {},
            )
            .await
            .expect("batch");
            assert!(record.outputs.iter().any(|o| o.db_table.is_some()));
        }
        // connecting again does not re-apply migrations
        let again = Store::connect(url).await.expect("reconnect");
        let runs = again.runs().await.expect("runs");
        assert_eq!(runs.len(), 2, "{url}: {runs:?}");
        assert!(runs.iter().all(|(_, s)| s == "succeeded"));
        // the run history: newest first, whole (trigger, selection, params, tests)
        let selection = bookrec::batch::runner::Selection {
            select: vec!["tag:cold_start".into()],
            exclude: vec!["category_popularity".into()],
            params: bookrec::batch::runner::Params::parse(&["half_life_days=14".into()])
                .expect("params"),
            trigger: "cli".into(),
        };
        let third = bookrec::batch::runner::run_with(
            &lake,
            Some(&again),
            &batch_config(),
            &selection,
            as_of(),
            None,
            &mut |_| {},
        )
        .await
        .expect("selected batch");
        let history = again.run_history(2).await.expect("history");
        assert_eq!(history.len(), 2, "{url}");
        let h = &history[0];
        assert_eq!(h.run_id, third.run_id, "{url}: newest first");
        assert_eq!(h.details["trigger"], "cli", "{url}: {h:?}");
        assert_eq!(h.details["select"][0], "tag:cold_start", "{url}");
        assert_eq!(h.details["exclude"][0], "category_popularity", "{url}");
        assert_eq!(h.details["params"]["half_life_days"], "14", "{url}");
        assert_eq!(h.outputs[0]["name"], "book_popularity", "{url}: {h:?}");
        assert!(
            h.outputs[0]["tests"]
                .as_array()
                .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["passed"] == true)),
            "{url}: {h:?}"
        );
        assert_eq!(history[1].details["trigger"], "api", "{url}");
        let mut tables = Vec::new();
        for name in ["book_popularity", "category_popularity", "user_profile"] {
            let rows = again.dump(name).await.expect("dump");
            assert!(!rows.is_empty(), "{url}: {name}");
            tables.push(rows);
        }
        dumps.push((url.clone(), tables));
    }
    let (first_url, first) = &dumps[0];
    for (url, tables) in &dumps[1..] {
        for (i, t) in tables.iter().enumerate() {
            let norm = |rows: &Vec<Vec<Option<String>>>| -> Vec<Vec<Option<String>>> {
                rows.iter()
                    .map(|r| r.iter().map(|c| c.as_deref().map(normalize)).collect())
                    .collect()
            };
            assert_eq!(norm(t), norm(&first[i]), "{url} differs from {first_url}");
        }
    }
    dbs.drop_all().await;
}

/// Databases print the same number differently (1 vs 1.0, 0.5 vs .5): compare as numbers
/// when a cell is one.
fn normalize(s: &str) -> String {
    match s.parse::<f64>() {
        Ok(x) => format!("{x:.9}"),
        Err(_) => s.to_string(),
    }
}

/// Ids stay exact on every database: `u1` and `U1`, `é` and `e` are different users, and
/// the longest id the intake accepts (in multi-byte characters) fits and reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_exact_on_sqlite_mariadb_and_postgres() {
    use bookrec::store::{ModelVersion, RecRow, RecTable};
    let dbs = Databases::create().await;
    let longest = "é".repeat(bookrec::event::MAX_ID_CHARS);
    let users = ["u1", "U1", "é", "e", longest.as_str()];
    for url in &dbs.urls {
        let store = Store::connect(url).await.expect("connect");
        let v = ModelVersion {
            version: "v-exact".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            status: "loading".into(),
            data_cutoff: "2026-12-01T00:00:00Z".into(),
            trained_through: serde_json::json!({}),
            params: serde_json::json!({}),
            metrics: serde_json::json!({}),
            row_counts: serde_json::json!({}),
            reason: None,
        };
        store.begin_version(&v).await.expect("begin");
        let rows: Vec<RecRow> = users
            .iter()
            .enumerate()
            .map(|(i, u)| RecRow {
                key: u.to_string(),
                pos: 1,
                item: format!("book-{i}"),
                score: 1.0,
            })
            .collect();
        store
            .load_rows(RecTable::UserBooks, "v-exact", &rows)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        store.promote("v-exact", None).await.expect("promote");
        for r in &rows {
            let (_, items) = store
                .user_books(&r.key, 5)
                .await
                .expect("read")
                .unwrap_or_else(|| panic!("{url}: {:?} not found", r.key));
            let got: Vec<&str> = items.iter().map(|i| i.item.as_str()).collect();
            assert_eq!(got, vec![r.item.as_str()], "{url}: {:?}", r.key);
        }
    }
    dbs.drop_all().await;
}
