//! The recommendation / feature database through sqlx: SQLite (default), MySQL/MariaDB and
//! PostgreSQL with one code path (sqlx's `Any` driver) and portable SQL. The only module
//! that names `sqlx`.
//!
//! Migrations are a numbered list applied once each (`bookrec_migrations`). Feature outputs
//! (`feat_<name>`) are replaced whole in one transaction per run, so a reader sees the last
//! run's rows or the new run's, and a rerun writes the same rows again.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, SchemaRef, TimeUnit};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod models;
pub use models::{ModelVersion, Ranked, RecRow, RecTable};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store.url {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migration {version} ({name}) on {url}: {source}")]
    Migrate {
        version: i64,
        name: &'static str,
        url: String,
        source: sqlx::Error,
    },
    #[error("table {table}: {source}")]
    Table { table: String, source: sqlx::Error },
    #[error("model versions: {reason}")]
    Model { reason: String },
    #[error("table {table}: column {column} has type {data_type}, which the store cannot hold")]
    Unsupported {
        table: String,
        column: String,
        data_type: String,
    },
}

/// Which SQL dialect the URL speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    url: String,
}

/// `(version, name, statements)`: portable DDL, applied in order, once.
const MIGRATIONS: &[(i64, &str, &[&str])] = &[
    (
        1,
        "batch runs",
        &["CREATE TABLE IF NOT EXISTS batch_runs (
        run_id VARCHAR(64) PRIMARY KEY,
        as_of VARCHAR(40) NOT NULL,
        started_at VARCHAR(40) NOT NULL,
        finished_at VARCHAR(40) NOT NULL,
        status VARCHAR(16) NOT NULL,
        outputs TEXT NOT NULL,
        input_watermark TEXT NOT NULL,
        error TEXT
    )"],
    ),
    (
        2,
        "scheduler lease and state",
        &[
            "CREATE TABLE IF NOT EXISTS scheduler_lease (
            name VARCHAR(64) PRIMARY KEY,
            holder VARCHAR(200) NOT NULL,
            expires_at_ms BIGINT NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS schedule_state (
            job VARCHAR(64) PRIMARY KEY,
            last_fire VARCHAR(40) NOT NULL
        )",
        ],
    ),
    (
        3,
        "model versions and published recommendations",
        models::MODEL_TABLES,
    ),
    // (4: exact ids, dialect-specific: `Store::exact_id_statements`)
    (
        5,
        "batch run details: trigger, selection, parameters, model step",
        &["ALTER TABLE batch_runs ADD COLUMN details TEXT"],
    ),
];

impl Store {
    /// Connects (creating a SQLite file when needed) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_pool(url, 1).await
    }

    /// Like [`Store::connect`] with up to `sqlite_connections` connections to a SQLite file
    /// (readers: the API). SQLite files are switched to WAL, so readers go on while a batch
    /// publishes. MySQL and PostgreSQL pools have 5 connections.
    pub async fn connect_pool(url: &str, sqlite_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = crate::config::redact_url(url);
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Dialect::MySql
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Connect {
                url: shown,
                source: sqlx::Error::Configuration(
                    "use sqlite://PATH, mysql://… or postgres://…".into(),
                ),
            });
        };
        let mut connect_url = url.replacen("mariadb:", "mysql:", 1);
        if dialect == Dialect::Sqlite {
            if let Some(path) = connect_url
                .strip_prefix("sqlite://")
                .map(|p| p.split('?').next().unwrap_or(p).to_string())
                && let Some(parent) = std::path::Path::new(&path).parent()
                && !parent.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(parent);
            }
            if !connect_url.contains("mode=") {
                connect_url.push_str(if connect_url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite {
                sqlite_connections.max(1)
            } else {
                5
            })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&connect_url)
            .await
            .map_err(|source| StoreError::Connect {
                url: shown.clone(),
                source,
            })?;
        let store = Store {
            pool,
            dialect,
            url: shown,
        };
        if dialect == Dialect::Sqlite && !url.contains(":memory:") {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await
                .map_err(|source| StoreError::Connect {
                    url: store.url.clone(),
                    source,
                })?;
        }
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let err = |version, name, source| StoreError::Migrate {
            version,
            name,
            url: self.url.clone(),
            source,
        };
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bookrec_migrations (
                version BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at VARCHAR(40) NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(|e| err(0, "migrations table", e))?;
        let mut all: Vec<(i64, &str, Vec<String>)> = MIGRATIONS
            .iter()
            .map(|(v, n, stmts)| (*v, *n, stmts.iter().map(|s| s.to_string()).collect()))
            .collect();
        all.push((4, "exact ids", self.exact_id_statements()));
        all.sort_by_key(|(v, _, _)| *v);
        for (version, name, statements) in &all {
            let (version, name) = (version, *name);
            let select = format!(
                "SELECT version FROM bookrec_migrations WHERE version = {}",
                self.placeholders(1, 0)
            );
            let done: Option<AnyRow> = sqlx::query(&select)
                .bind(*version)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| err(*version, name, e))?;
            if done.is_some() {
                continue;
            }
            for stmt in statements {
                sqlx::query(stmt)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| err(*version, name, e))?;
            }
            let insert = format!(
                "INSERT INTO bookrec_migrations (version, name, applied_at) VALUES ({})",
                self.placeholders(3, 0)
            );
            sqlx::query(&insert)
                .bind(*version)
                .bind(name)
                .bind(crate::event::format_ts(&chrono::Utc::now()))
                .execute(&self.pool)
                .await
                .map_err(|e| err(*version, name, e))?;
        }
        Ok(())
    }

    /// The column type of an id (user, book, category): as long as the intake allows
    /// ([`crate::event::MAX_ID_CHARS`]) and compared byte for byte — MySQL/MariaDB's default
    /// collations are case- and accent-insensitive (`u1` = `U1`, `é` = `e`), so ids there
    /// are `utf8mb4_bin`; PostgreSQL's and SQLite's default comparisons are exact.
    pub(crate) fn id_type(&self) -> String {
        let n = crate::event::MAX_ID_CHARS;
        match self.dialect {
            Dialect::MySql => format!("VARCHAR({n}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
            Dialect::Postgres | Dialect::Sqlite => format!("VARCHAR({n})"),
        }
    }

    /// Migration 4: the published lists' id columns become [`Store::id_type`] (SQLite
    /// neither enforces lengths nor folds case: nothing to do).
    fn exact_id_statements(&self) -> Vec<String> {
        let id = self.id_type();
        let tables = [
            ("rec_user_books", "user_id", "book_id"),
            ("rec_similar_books", "book_id", "similar_book_id"),
            ("rec_popular_books", "category", "book_id"),
        ];
        match self.dialect {
            Dialect::Sqlite => Vec::new(),
            Dialect::MySql => tables
                .iter()
                .map(|(t, k, i)| {
                    format!("ALTER TABLE {t} MODIFY {k} {id} NOT NULL, MODIFY {i} {id} NOT NULL")
                })
                .collect(),
            Dialect::Postgres => tables
                .iter()
                .map(|(t, k, i)| {
                    format!(
                        "ALTER TABLE {t} ALTER COLUMN {k} TYPE {id}, ALTER COLUMN {i} TYPE {id}"
                    )
                })
                .collect(),
        }
    }

    /// Runs one statement; an error names `table`.
    async fn execute(&self, table: &str, q: AnyQuery<'_>) -> Result<u64, StoreError> {
        q.execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(|source| StoreError::Table {
                table: table.to_string(),
                source,
            })
    }

    fn placeholders(&self, n: usize, offset: usize) -> String {
        (0..n)
            .map(|i| match self.dialect {
                Dialect::MySql => "?".to_string(),
                _ => format!("${}", offset + i + 1),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Records a batch run.
    #[allow(clippy::too_many_arguments, reason = "one column each")]
    pub async fn record_run(
        &self,
        run_id: &str,
        as_of: &str,
        started_at: &str,
        finished_at: &str,
        status: &str,
        outputs: &str,
        input_watermark: &str,
        error: Option<&str>,
        details: &str,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO batch_runs (run_id, as_of, started_at, finished_at, status, outputs, input_watermark, error, details) VALUES ({})",
            self.placeholders(9, 0)
        );
        let q = sqlx::query(&sql)
            .bind(run_id)
            .bind(as_of)
            .bind(started_at)
            .bind(finished_at)
            .bind(status)
            .bind(outputs)
            .bind(input_watermark)
            .bind(error)
            .bind(details);
        self.execute("batch_runs", q).await.map(|_| ())
    }

    /// The `last` newest runs, newest first, whole (`bookrec runs`).
    pub async fn run_history(&self, last: usize) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!(
            "SELECT run_id, as_of, started_at, finished_at, status, outputs, error, details \
             FROM batch_runs ORDER BY started_at DESC, run_id DESC LIMIT {}",
            last.clamp(1, 100_000)
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::table_err("batch_runs"))?;
        use models::text_at;
        let json = |r: &AnyRow, i: usize| {
            text_at(r, i)
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(RunRow {
                    run_id: text_at(r, 0)?,
                    as_of: text_at(r, 1)?,
                    started_at: text_at(r, 2)?,
                    finished_at: text_at(r, 3)?,
                    status: text_at(r, 4)?,
                    outputs: json(r, 5),
                    error: text_at(r, 6),
                    details: json(r, 7),
                })
            })
            .collect())
    }

    /// Replaces the contents of `feat_<name>` with `batches`, in one transaction (the
    /// table is recreated first when its columns changed).
    pub async fn replace_feature(
        &self,
        name: &str,
        schema: &SchemaRef,
        keys: &[String],
        batches: &[RecordBatch],
    ) -> Result<u64, StoreError> {
        let table = format!("feat_{name}");
        let terr = |source| StoreError::Table {
            table: table.clone(),
            source,
        };
        let mut columns = Vec::new();
        let id_type = self.id_type();
        for f in schema.fields() {
            let sql_type = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    if keys.contains(f.name()) {
                        id_type.as_str()
                    } else {
                        "TEXT"
                    }
                }
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => "BIGINT",
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => {
                    "DOUBLE PRECISION"
                }
                DataType::Timestamp(_, _) | DataType::Date32 => "VARCHAR(40)",
                DataType::Boolean => "BOOLEAN",
                other => {
                    return Err(StoreError::Unsupported {
                        table: table.clone(),
                        column: f.name().clone(),
                        data_type: other.to_string(),
                    });
                }
            };
            columns.push((f.name().clone(), sql_type));
        }
        let want: Vec<String> = columns.iter().map(|(c, _)| c.to_lowercase()).collect();
        // recreate the table when its columns differ from this run's
        let same = self.columns_of(&table).await.is_some_and(|c| c == want);
        let mut tx = self.pool.begin().await.map_err(terr)?;
        if !same {
            sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
                .execute(&mut *tx)
                .await
                .map_err(terr)?;
            let mut ddl = columns
                .iter()
                .map(|(c, t)| format!("{c} {t}"))
                .collect::<Vec<_>>();
            let key_cols: Vec<&String> = keys
                .iter()
                .filter(|k| want.contains(&k.to_lowercase()))
                .collect();
            if !key_cols.is_empty() {
                ddl.push(format!(
                    "PRIMARY KEY ({})",
                    key_cols
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            sqlx::query(&format!("CREATE TABLE {table} ({})", ddl.join(", ")))
                .execute(&mut *tx)
                .await
                .map_err(terr)?;
        } else {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await
                .map_err(terr)?;
        }
        let names = columns
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let ncols = columns.len().max(1);
        let rows_per_stmt = (500 / ncols).max(1);
        let mut written = 0u64;
        for batch in batches {
            let batch = &normalize_types(batch).map_err(|e| StoreError::Unsupported {
                table: table.clone(),
                column: "(cast)".into(),
                data_type: e.to_string(),
            })?;
            let mut start = 0;
            while start < batch.num_rows() {
                let end = (start + rows_per_stmt).min(batch.num_rows());
                let values = (start..end)
                    .map(|r| format!("({})", self.placeholders(ncols, (r - start) * ncols)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!("INSERT INTO {table} ({names}) VALUES {values}");
                let mut q = sqlx::query(&sql);
                for r in start..end {
                    for col in batch.columns() {
                        q = bind_cell(q, col.as_ref(), r);
                    }
                }
                q.execute(&mut *tx).await.map_err(terr)?;
                written += (end - start) as u64;
                start = end;
            }
        }
        tx.commit().await.map_err(terr)?;
        Ok(written)
    }

    /// Lower-case column names of a table, or None when it does not exist.
    async fn columns_of(&self, table: &str) -> Option<Vec<String>> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid")
            }
            Dialect::MySql => format!(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{table}' ORDER BY ordinal_position"
            ),
            Dialect::Postgres => format!(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '{table}' ORDER BY ordinal_position"
            ),
        };
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await.ok()?;
        let cols: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .map(|c| c.to_lowercase())
            .collect();
        (!cols.is_empty()).then_some(cols)
    }

    /// `SELECT` list casting every column of `table` to text, and the column names.
    async fn text_columns(&self, table: &str) -> (String, Vec<String>) {
        let cols = self.columns_of(table).await.unwrap_or_default();
        let select = cols
            .iter()
            .map(|c| match self.dialect {
                Dialect::MySql => format!("CAST({c} AS CHAR(16000))"),
                _ => format!("CAST({c} AS TEXT)"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        (select, cols)
    }

    fn text_cells(row: &AnyRow, n: usize) -> Vec<Option<String>> {
        (0..n).map(|i| models::text_at(row, i)).collect()
    }

    /// All rows of a feature table as text cells (NULL as None), sorted: for comparisons
    /// across databases and for tools.
    pub async fn dump(&self, name: &str) -> Result<Vec<Vec<Option<String>>>, StoreError> {
        let table = format!("feat_{name}");
        let (select, cols) = self.text_columns(&table).await;
        let rows = sqlx::query(&format!("SELECT {select} FROM {table}"))
            .fetch_all(&self.pool)
            .await
            .map_err(|source| StoreError::Table {
                table: table.clone(),
                source,
            })?;
        let mut out: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|r| Self::text_cells(r, cols.len()))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The row of feature table `feat_<name>` whose `key_column` is `key`, as (column, text)
    /// pairs; None when the table or the row does not exist.
    pub async fn feature_row(
        &self,
        name: &str,
        key_column: &str,
        key: &str,
    ) -> Result<Option<Vec<(String, Option<String>)>>, StoreError> {
        let table = format!("feat_{name}");
        let (select, cols) = self.text_columns(&table).await;
        if !cols.iter().any(|c| c == &key_column.to_lowercase()) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {select} FROM {table} WHERE {key_column} = {p}",
            p = self.placeholders(1, 0)
        );
        let row = sqlx::query(&sql)
            .bind(key.to_owned())
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Table {
                table: table.clone(),
                source,
            })?;
        let n = cols.len();
        Ok(row.map(|r| cols.into_iter().zip(Self::text_cells(&r, n)).collect()))
    }

    /// Takes (or renews) the lease `name` for `holder` until now + `ttl`. True when this
    /// holder has it: nobody held it, it expired, or this holder already had it.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = chrono::Utc::now().timestamp_millis();
        let expires = now + ttl.as_millis() as i64;
        let insert = format!(
            "INSERT INTO scheduler_lease (name, holder, expires_at_ms) VALUES ({})",
            self.placeholders(3, 0)
        );
        if sqlx::query(&insert)
            .bind(name)
            .bind(holder)
            .bind(expires)
            .execute(&self.pool)
            .await
            .is_ok()
        {
            return Ok(true);
        }
        let p = |i| self.placeholders(1, i);
        let update = format!(
            "UPDATE scheduler_lease SET holder = {}, expires_at_ms = {} WHERE name = {} AND (holder = {} OR expires_at_ms < {})",
            p(0),
            p(1),
            p(2),
            p(3),
            p(4)
        );
        let q = sqlx::query(&update)
            .bind(holder)
            .bind(expires)
            .bind(name)
            .bind(holder)
            .bind(now);
        Ok(self.execute("scheduler_lease", q).await? == 1)
    }

    /// Gives the lease up (when `holder` has it).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE scheduler_lease SET expires_at_ms = 0 WHERE name = {} AND holder = {}",
            self.placeholders(1, 0),
            self.placeholders(1, 1)
        );
        let q = sqlx::query(&sql).bind(name).bind(holder);
        self.execute("scheduler_lease", q).await.map(|_| ())
    }

    /// The last scheduled time a job was started for.
    pub async fn last_fire(
        &self,
        job: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let sql = format!(
            "SELECT last_fire FROM schedule_state WHERE job = {}",
            self.placeholders(1, 0)
        );
        let row = sqlx::query(&sql)
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::Table {
                table: "schedule_state".into(),
                source,
            })?;
        Ok(row
            .and_then(|r| r.try_get::<String, _>(0).ok())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.to_utc()))
    }

    pub async fn set_last_fire(
        &self,
        job: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        let ts = crate::event::format_ts(&at);
        let update = format!(
            "UPDATE schedule_state SET last_fire = {} WHERE job = {}",
            self.placeholders(1, 0),
            self.placeholders(1, 1)
        );
        let q = sqlx::query(&update).bind(ts.clone()).bind(job);
        if self.execute("schedule_state", q).await? == 0 {
            let insert = format!(
                "INSERT INTO schedule_state (job, last_fire) VALUES ({})",
                self.placeholders(2, 0)
            );
            let q = sqlx::query(&insert).bind(job).bind(ts);
            self.execute("schedule_state", q).await?;
        }
        Ok(())
    }

    /// Runs recorded, oldest first: `(run_id, status, started_at, finished_at)`.
    pub async fn run_times(&self) -> Result<Vec<(String, String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, status, started_at, finished_at FROM batch_runs ORDER BY started_at, run_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::Table {
            table: "batch_runs".into(),
            source,
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.try_get(0).ok()?,
                    r.try_get(1).ok()?,
                    r.try_get(2).ok()?,
                    r.try_get(3).ok()?,
                ))
            })
            .collect())
    }

    /// Runs recorded, newest first: `(run_id, status)`.
    pub async fn runs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut runs: Vec<(String, String)> = self
            .run_times()
            .await?
            .into_iter()
            .map(|(id, status, _, _)| (id, status))
            .collect();
        runs.reverse();
        Ok(runs)
    }
}

/// One recorded batch run (`batch_runs`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub as_of: String,
    pub started_at: String,
    pub finished_at: String,
    pub status: String,
    /// per feature: rows, seconds, outputs, data test results
    pub outputs: serde_json::Value,
    pub error: Option<String>,
    /// trigger, selection, parameters, the model step (null for runs recorded before)
    pub details: serde_json::Value,
}

/// Integers as Int64 and floats as Float64, the two numeric types bound to the database.
fn normalize_types(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => arrow::compute::cast(c, &DataType::Int64),
            DataType::Float32 | DataType::Decimal128(_, _) => {
                arrow::compute::cast(c, &DataType::Float64)
            }
            _ => Ok(c.clone()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds one Arrow cell. Floats are rounded to 12 significant digits so that the three
/// databases (whose float text forms differ) hold the same values.
fn bind_cell<'q>(q: AnyQuery<'q>, col: &dyn Array, row: usize) -> AnyQuery<'q> {
    if col.is_null(row) {
        return match col.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => q.bind(None::<i64>),
            DataType::Float32 | DataType::Float64 => q.bind(None::<f64>),
            DataType::Boolean => q.bind(None::<bool>),
            _ => q.bind(None::<String>),
        };
    }
    match col.data_type() {
        DataType::Int64 => q.bind(col.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => q.bind(i64::from(col.as_primitive::<Int32Type>().value(row))),
        DataType::Float64 => q.bind(round12(col.as_primitive::<Float64Type>().value(row))),
        DataType::Boolean => q.bind(col.as_boolean().value(row)),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let us = col
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row);
            let ts = chrono::DateTime::from_timestamp_micros(us).unwrap_or_default();
            q.bind(crate::event::format_ts(&ts))
        }
        _ => {
            let text = arrow::util::display::array_value_to_string(col, row).unwrap_or_default();
            q.bind(text)
        }
    }
}

fn round12(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 12 - x.abs().log10().ceil() as i32;
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
