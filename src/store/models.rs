//! Model versions in the recommendation DB.
//!
//! Every published model writes its rows under its own `version` beside the ones already
//! there (`rec_user_books`, `rec_similar_books`, `rec_popular_books`), and becomes visible
//! only when the one-row pointer `model_current` is switched to it in a transaction. Readers
//! join the pointer in the same statement, so each read sees one whole version — the old or
//! the new, never a mix or a half-written one. The last `keep` versions keep their rows, so
//! `rollback` is just the pointer switched back.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// The three published tables, each keyed by (version, key, pos).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecTable {
    /// top-K books per user: key = user_id
    UserBooks,
    /// top-K similar books per book: key = book_id
    SimilarBooks,
    /// top-K popular books overall (key "") and per category (key = category)
    PopularBooks,
}

impl RecTable {
    pub const ALL: [RecTable; 3] = [
        RecTable::UserBooks,
        RecTable::SimilarBooks,
        RecTable::PopularBooks,
    ];

    pub fn table(self) -> &'static str {
        match self {
            RecTable::UserBooks => "rec_user_books",
            RecTable::SimilarBooks => "rec_similar_books",
            RecTable::PopularBooks => "rec_popular_books",
        }
    }

    fn key(self) -> &'static str {
        match self {
            RecTable::UserBooks => "user_id",
            RecTable::SimilarBooks => "book_id",
            RecTable::PopularBooks => "category",
        }
    }

    fn item(self) -> &'static str {
        match self {
            RecTable::UserBooks | RecTable::PopularBooks => "book_id",
            RecTable::SimilarBooks => "similar_book_id",
        }
    }
}

/// The DDL of migration 3.
pub(super) const MODEL_TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS model_versions (
        version VARCHAR(64) PRIMARY KEY,
        created_at VARCHAR(40) NOT NULL,
        status VARCHAR(16) NOT NULL,
        data_cutoff VARCHAR(40) NOT NULL,
        trained_through TEXT NOT NULL,
        params TEXT NOT NULL,
        metrics TEXT NOT NULL,
        row_counts TEXT NOT NULL,
        reason TEXT
    )",
    "CREATE TABLE IF NOT EXISTS model_current (
        id INT PRIMARY KEY,
        version VARCHAR(64) NOT NULL,
        switched_at VARCHAR(40) NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS rec_user_books (
        version VARCHAR(64) NOT NULL,
        user_id VARCHAR(255) NOT NULL,
        pos INT NOT NULL,
        book_id VARCHAR(255) NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (version, user_id, pos)
    )",
    "CREATE TABLE IF NOT EXISTS rec_similar_books (
        version VARCHAR(64) NOT NULL,
        book_id VARCHAR(255) NOT NULL,
        pos INT NOT NULL,
        similar_book_id VARCHAR(255) NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (version, book_id, pos)
    )",
    "CREATE TABLE IF NOT EXISTS rec_popular_books (
        version VARCHAR(64) NOT NULL,
        category VARCHAR(255) NOT NULL,
        pos INT NOT NULL,
        book_id VARCHAR(255) NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (version, category, pos)
    )",
];

/// One published row: `key` (user, book or category), position from 1, the item, its score.
#[derive(Debug, Clone, PartialEq)]
pub struct RecRow {
    pub key: String,
    pub pos: i64,
    pub item: String,
    pub score: f64,
}

/// A row of `model_versions`. `status`: loading → current | rejected; current → retired
/// (a newer one was promoted, or rolled back) → pruned (rows deleted, history kept).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelVersion {
    pub version: String,
    pub created_at: String,
    pub status: String,
    pub data_cutoff: String,
    pub trained_through: serde_json::Value,
    pub params: serde_json::Value,
    pub metrics: serde_json::Value,
    pub row_counts: serde_json::Value,
    pub reason: Option<String>,
}

/// An item read back through the current version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Ranked {
    pub item: String,
    pub score: f64,
}

/// A text cell. SQLite reports the TEXT columns of some statements to sqlx as BLOB, so
/// bytes are accepted too (as UTF-8).
pub(super) fn text_at(row: &AnyRow, i: usize) -> Option<String> {
    match row.try_get::<Option<String>, _>(i) {
        Ok(v) => v,
        Err(_) => row
            .try_get::<Option<Vec<u8>>, _>(i)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok()),
    }
}

fn json(text: Option<String>) -> serde_json::Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

impl Store {
    pub(super) fn table_err(table: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Table {
            table: table.to_string(),
            source,
        }
    }

    /// Registers a new version (status `loading`): its rows can be written, nobody reads them.
    pub async fn begin_version(&self, v: &ModelVersion) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO model_versions (version, created_at, status, data_cutoff, trained_through, params, metrics, row_counts, reason) VALUES ({})",
            self.placeholders(9, 0)
        );
        let q = sqlx::query(&sql)
            .bind(v.version.clone())
            .bind(v.created_at.clone())
            .bind("loading")
            .bind(v.data_cutoff.clone())
            .bind(v.trained_through.to_string())
            .bind(v.params.to_string())
            .bind(v.metrics.to_string())
            .bind(v.row_counts.to_string())
            .bind(v.reason.clone());
        self.execute("model_versions", q).await.map(|_| ())
    }

    /// Writes rows of `version` into `table` (in transactions of a few thousand rows; they
    /// stay invisible until the version is promoted).
    pub async fn load_rows(
        &self,
        table: RecTable,
        version: &str,
        rows: &[RecRow],
    ) -> Result<u64, StoreError> {
        let name = table.table();
        let err = Self::table_err(name);
        const PER_STMT: usize = 100;
        const PER_TX: usize = 20_000;
        for tx_rows in rows.chunks(PER_TX) {
            let mut tx = self.pool.begin().await.map_err(&err)?;
            for chunk in tx_rows.chunks(PER_STMT) {
                let values = (0..chunk.len())
                    .map(|r| format!("({})", self.placeholders(5, r * 5)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "INSERT INTO {name} (version, {}, pos, {}, score) VALUES {values}",
                    table.key(),
                    table.item()
                );
                let mut q = sqlx::query(&sql);
                for r in chunk {
                    q = q
                        .bind(version.to_owned())
                        .bind(r.key.clone())
                        .bind(r.pos)
                        .bind(r.item.clone())
                        .bind(super::round12(r.score));
                }
                q.execute(&mut *tx).await.map_err(&err)?;
            }
            tx.commit().await.map_err(&err)?;
        }
        Ok(rows.len() as u64)
    }

    fn version_of(row: &AnyRow) -> Option<ModelVersion> {
        Some(ModelVersion {
            version: text_at(row, 0)?,
            created_at: text_at(row, 1)?,
            status: text_at(row, 2)?,
            data_cutoff: text_at(row, 3)?,
            trained_through: json(text_at(row, 4)),
            params: json(text_at(row, 5)),
            metrics: json(text_at(row, 6)),
            row_counts: json(text_at(row, 7)),
            reason: text_at(row, 8),
        })
    }

    const VERSION_COLUMNS: &'static str = "version, created_at, status, data_cutoff, trained_through, params, metrics, row_counts, reason";

    /// Every version, newest first.
    pub async fn versions(&self) -> Result<Vec<ModelVersion>, StoreError> {
        let sql = format!(
            "SELECT {} FROM model_versions ORDER BY created_at DESC, version DESC",
            Self::VERSION_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::table_err("model_versions"))?;
        Ok(rows.iter().filter_map(Self::version_of).collect())
    }

    /// The version readers see now.
    pub async fn current_version(&self) -> Result<Option<ModelVersion>, StoreError> {
        let sql = format!(
            "SELECT {} FROM model_versions WHERE version = (SELECT version FROM model_current WHERE id = 1)",
            Self::VERSION_COLUMNS
        );
        let row = sqlx::query(&sql)
            .fetch_optional(&self.pool)
            .await
            .map_err(Self::table_err("model_current"))?;
        Ok(row.as_ref().and_then(Self::version_of))
    }

    /// Points readers at `version` (one transaction), retiring the previous current one.
    pub async fn promote(&self, version: &str, reason: Option<&str>) -> Result<(), StoreError> {
        self.switch(version, "retired", reason).await
    }

    async fn switch(
        &self,
        version: &str,
        old_status: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let err = Self::table_err("model_current");
        let now = crate::event::format_ts(&chrono::Utc::now());
        let p = |n, o| self.placeholders(n, o);
        let mut tx = self.pool.begin().await.map_err(&err)?;
        sqlx::query(&format!(
            "UPDATE model_versions SET status = {} WHERE status = 'current' AND version <> {}",
            p(1, 0),
            p(1, 1)
        ))
        .bind(old_status.to_owned())
        .bind(version.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        sqlx::query(&format!(
            "UPDATE model_versions SET status = 'current', reason = {} WHERE version = {}",
            p(1, 0),
            p(1, 1)
        ))
        .bind(reason.map(str::to_owned))
        .bind(version.to_owned())
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        let updated = sqlx::query(&format!(
            "UPDATE model_current SET version = {}, switched_at = {} WHERE id = 1",
            p(1, 0),
            p(1, 1)
        ))
        .bind(version.to_owned())
        .bind(now.clone())
        .execute(&mut *tx)
        .await
        .map_err(&err)?
        .rows_affected();
        if updated == 0 {
            sqlx::query(&format!(
                "INSERT INTO model_current (id, version, switched_at) VALUES (1, {})",
                p(2, 0)
            ))
            .bind(version.to_owned())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)
    }

    /// Marks a loaded version as not promoted, with the reason, and deletes its rows.
    pub async fn reject(&self, version: &str, reason: &str) -> Result<(), StoreError> {
        self.delete_rows(version).await?;
        self.set_status(version, "rejected", Some(reason)).await
    }

    async fn set_status(
        &self,
        version: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE model_versions SET status = {}, reason = {} WHERE version = {}",
            self.placeholders(1, 0),
            self.placeholders(1, 1),
            self.placeholders(1, 2)
        );
        let q = sqlx::query(&sql)
            .bind(status.to_owned())
            .bind(reason.map(str::to_owned))
            .bind(version.to_owned());
        self.execute("model_versions", q).await.map(|_| ())
    }

    async fn delete_rows(&self, version: &str) -> Result<(), StoreError> {
        for t in RecTable::ALL {
            let sql = format!(
                "DELETE FROM {} WHERE version = {}",
                t.table(),
                self.placeholders(1, 0)
            );
            self.execute(t.table(), sqlx::query(&sql).bind(version.to_owned()))
                .await?;
        }
        Ok(())
    }

    /// Keeps the rows of the `keep` newest current/retired versions; older ones (and any
    /// version left `loading` by a crash) lose their rows. Returns the versions pruned.
    pub async fn prune_versions(&self, keep: usize) -> Result<Vec<String>, StoreError> {
        let current = self.current_version().await?.map(|v| v.version);
        let mut kept = 0usize;
        let mut pruned = Vec::new();
        for v in self.versions().await? {
            let live = v.status == "current" || v.status == "retired";
            if Some(&v.version) == current.as_ref() {
                kept += 1;
                continue;
            }
            if live && kept < keep {
                kept += 1;
                continue;
            }
            if live || v.status == "loading" {
                self.delete_rows(&v.version).await?;
                let reason = format!("pruned: beyond the {keep} kept versions");
                let reason = if v.status == "loading" {
                    "abandoned while loading"
                } else {
                    &reason
                };
                self.set_status(&v.version, "pruned", Some(reason)).await?;
                pruned.push(v.version);
            }
        }
        Ok(pruned)
    }

    /// Switches readers back to `to`, or to the newest retired version older than the
    /// current one. Returns `(from, to)`.
    pub async fn rollback(&self, to: Option<&str>) -> Result<(String, String), StoreError> {
        let current = self.current_version().await?.ok_or(StoreError::Model {
            reason: "no model has been published: nothing to roll back".into(),
        })?;
        let versions = self.versions().await?;
        let target = match to {
            Some(t) => {
                versions
                    .iter()
                    .find(|v| v.version == t)
                    .ok_or_else(|| StoreError::Model {
                        reason: format!("version {t} is not in model_versions"),
                    })?
            }
            None => versions
                .iter()
                .find(|v| v.status == "retired" && v.created_at < current.created_at)
                .ok_or_else(|| StoreError::Model {
                    reason: format!(
                        "no retired version older than the current {} is kept",
                        current.version
                    ),
                })?,
        };
        if target.status != "retired" {
            return Err(StoreError::Model {
                reason: format!(
                    "version {} is {}: only a retired version (rows kept) can be switched to",
                    target.version, target.status
                ),
            });
        }
        let reason = format!("rolled back from {}", current.version);
        self.switch(&target.version, "retired", Some(&reason))
            .await?;
        Ok((current.version, target.version.clone()))
    }

    async fn ranked(
        &self,
        table: RecTable,
        key: &str,
        k: usize,
    ) -> Result<Option<(String, Vec<Ranked>)>, StoreError> {
        self.ranked_at(table, None, key, k).await
    }

    /// A list of a given version (whatever the current one is): what an experiment's
    /// variant pinned to an older kept version reads. None when the version has no such
    /// list (unknown key, or the version's rows were pruned).
    pub async fn ranked_in(
        &self,
        table: RecTable,
        version: &str,
        key: &str,
        k: usize,
    ) -> Result<Option<(String, Vec<Ranked>)>, StoreError> {
        self.ranked_at(table, Some(version), key, k).await
    }

    /// `key`'s top `k` of `table` under `version`, or the current version when None.
    async fn ranked_at(
        &self,
        table: RecTable,
        version: Option<&str>,
        key: &str,
        k: usize,
    ) -> Result<Option<(String, Vec<Ranked>)>, StoreError> {
        let (from, which) = match version {
            None => (
                "JOIN model_current c ON c.version = r.version".to_string(),
                "c.id = 1".to_string(),
            ),
            Some(_) => (
                String::new(),
                format!("r.version = {}", self.placeholders(1, 1)),
            ),
        };
        let sql = format!(
            "SELECT r.version, r.{item}, r.score FROM {t} r {from} \
             WHERE r.{key} = {p} AND {which} ORDER BY r.pos LIMIT {k}",
            item = table.item(),
            t = table.table(),
            key = table.key(),
            p = self.placeholders(1, 0),
        );
        let mut q = sqlx::query(&sql).bind(key.to_owned());
        if let Some(v) = version {
            q = q.bind(v.to_owned());
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(Self::table_err(table.table()))?;
        let Some(version) = rows.first().and_then(|r| text_at(r, 0)) else {
            return Ok(None);
        };
        let items = rows
            .iter()
            .filter_map(|r| {
                Some(Ranked {
                    item: text_at(r, 1)?,
                    score: r.try_get(2).ok()?,
                })
            })
            .collect();
        Ok(Some((version, items)))
    }

    /// [`Store::ranked`] for many keys in one statement: key → (version, its top `k`); a key
    /// without a list is absent. One round trip instead of one per key (what a cold API
    /// needs when many users ask at once).
    async fn ranked_many(
        &self,
        table: RecTable,
        keys: &[String],
        k: usize,
    ) -> Result<HashMap<String, (String, Vec<Ranked>)>, StoreError> {
        let mut out: HashMap<String, (String, Vec<Ranked>)> = HashMap::new();
        if keys.is_empty() {
            return Ok(out);
        }
        let sql = format!(
            "SELECT r.version, r.{key}, r.{item}, r.score FROM {t} r JOIN model_current c ON c.version = r.version \
             WHERE c.id = 1 AND r.{key} IN ({p}) AND r.pos <= {k} ORDER BY r.{key}, r.pos",
            item = table.item(),
            t = table.table(),
            key = table.key(),
            p = self.placeholders(keys.len(), 0),
        );
        let mut q = sqlx::query(&sql);
        for key in keys {
            q = q.bind(key.clone());
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(Self::table_err(table.table()))?;
        for r in &rows {
            let (Some(version), Some(key), Some(item)) =
                (text_at(r, 0), text_at(r, 1), text_at(r, 2))
            else {
                continue;
            };
            let Ok(score) = r.try_get(3) else { continue };
            out.entry(key)
                .or_insert_with(|| (version, Vec::new()))
                .1
                .push(Ranked { item, score });
        }
        Ok(out)
    }

    /// Many users' top `k` under the current version in one statement: user → (version,
    /// items); an unknown user is absent.
    pub async fn user_books_many(
        &self,
        user_ids: &[String],
        k: usize,
    ) -> Result<HashMap<String, (String, Vec<Ranked>)>, StoreError> {
        self.ranked_many(RecTable::UserBooks, user_ids, k).await
    }

    /// A user's top `k` under the current version: `(version, items)`, None when unknown.
    pub async fn user_books(
        &self,
        user_id: &str,
        k: usize,
    ) -> Result<Option<(String, Vec<Ranked>)>, StoreError> {
        self.ranked(RecTable::UserBooks, user_id, k).await
    }

    pub async fn similar_books(
        &self,
        book_id: &str,
        k: usize,
    ) -> Result<Option<(String, Vec<Ranked>)>, StoreError> {
        self.ranked(RecTable::SimilarBooks, book_id, k).await
    }

    /// Popular books overall (`category` None) or in a category.
    pub async fn popular_books(
        &self,
        category: Option<&str>,
        k: usize,
    ) -> Result<Option<(String, Vec<Ranked>)>, StoreError> {
        self.ranked(RecTable::PopularBooks, category.unwrap_or(""), k)
            .await
    }

    /// Rows of each table visible through the current pointer, per version, in one
    /// statement each: what a reader sees (operators' check; the publish test's probe).
    pub async fn visible_rows(&self, table: RecTable) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = format!(
            "SELECT r.version, COUNT(*) FROM {t} r JOIN model_current c ON c.version = r.version \
             WHERE c.id = 1 GROUP BY r.version",
            t = table.table()
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(Self::table_err(table.table()))?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((text_at(r, 0)?, r.try_get(1).ok()?)))
            .collect())
    }
}
