//! The current state of the CDC tables, kept incrementally.
//!
//! Folding a table's whole change history each time a session opens costs O(history).
//! `bookrec lake compact` therefore writes a **state snapshot** per CDC table:
//! `cdc_state/<table>/state-<seq>.parquet` (key, row as JSON, ts_ms and partition of the
//! row's last change) and then, as its commit point, `state-<seq>.json` (the manifest: the
//! last Kafka offset folded in per partition, the truncates seen, the row count). Opening a
//! session reads the newest committed snapshot and folds only the changes after its offsets
//! (a filter on `kafka_partition` / `kafka_offset` that Parquet statistics turn into skipped
//! files), so it costs O(table + new changes). Without a snapshot it folds everything, as
//! before. The folding is the same [`CurrentState`] either way, so the two agree row for row
//! (tested). The two newest snapshots are kept (a reader may still be reading the older).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::{SqlError, query};
use crate::lake::Lake;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Lake folder of the state snapshots.
pub const CDC_STATE: &str = "cdc_state";

/// A committed snapshot's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub seq: u64,
    /// Kafka partition → the last offset folded in.
    pub through: BTreeMap<i32, i64>,
    /// `(ts_ms, partition)` of the truncates folded in.
    pub truncates: Vec<(i64, i32)>,
    pub rows: usize,
    /// The snapshot's Parquet file, lake-relative.
    pub file: String,
}

/// What `bookrec lake compact` did to one CDC table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotReport {
    pub table: String,
    pub seq: u64,
    pub rows: usize,
    /// Changes folded in on top of the previous snapshot.
    pub new_changes: u64,
}

fn lake_err(e: impl std::fmt::Display) -> SqlError {
    SqlError::Lake(e.to_string())
}

/// A column as `T` (Utf8View and the like cast first); an error naming it otherwise.
fn column<T: Array + Clone + 'static>(
    b: &RecordBatch,
    i: usize,
    as_type: &DataType,
    what: &str,
) -> Result<T, SqlError> {
    arrow::compute::cast(b.column(i), as_type)
        .ok()
        .and_then(|a| a.as_any().downcast_ref::<T>().cloned())
        .ok_or_else(|| SqlError::Lake(format!("{what}: column {i} is not {as_type}")))
}

fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("row", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("partition", DataType::Int32, false),
    ]))
}

/// The lake-relative names of `table`'s snapshot files (Parquet and manifests).
async fn state_files(lake: &Lake, table: &str) -> Result<Vec<String>, SqlError> {
    Ok(lake
        .list(&format!("{CDC_STATE}/{table}"))
        .await
        .map_err(lake_err)?
        .iter()
        .filter_map(|m| lake.relative(&m.location).map(str::to_string))
        .collect())
}

/// The newest committed snapshot of `table`, if any.
pub async fn latest(lake: &Lake, table: &str) -> Result<Option<Manifest>, SqlError> {
    let mut best: Option<Manifest> = None;
    for rel in state_files(lake, table).await? {
        if !rel.ends_with(".json") {
            continue;
        }
        let bytes = lake.get(&rel).await.map_err(lake_err)?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| SqlError::Lake(format!("{rel}: not a state manifest: {e}")))?;
        if best.as_ref().is_none_or(|b| manifest.seq > b.seq) {
            best = Some(manifest);
        }
    }
    Ok(best)
}

/// Folds `table`'s current state: the newest snapshot, then the changes after it.
/// Returns the state, the offsets folded in per partition and how many changes were read.
pub async fn load(
    ctx: &SessionContext,
    lake: &Lake,
    table: &str,
) -> Result<(CurrentState, BTreeMap<i32, i64>, u64), SqlError> {
    let snapshot = latest(lake, table).await?;
    load_from(ctx, table, lake, snapshot.as_ref()).await
}

/// [`load`] from a snapshot the caller has already found.
async fn load_from(
    ctx: &SessionContext,
    table: &str,
    lake: &Lake,
    snapshot: Option<&Manifest>,
) -> Result<(CurrentState, BTreeMap<i32, i64>, u64), SqlError> {
    let (mut state, mut through) = match snapshot {
        None => (CurrentState::default(), BTreeMap::new()),
        Some(m) => {
            let df = ctx
                .read_parquet(
                    lake.folder_url(&m.file).trim_end_matches('/').to_string(),
                    datafusion::prelude::ParquetReadOptions::default(),
                )
                .await
                .map_err(SqlError::Query)?;
            let batches = df.collect().await.map_err(SqlError::Query)?;
            let mut rows = Vec::with_capacity(m.rows);
            for b in &batches {
                let keys: StringArray = column(b, 0, &DataType::Utf8, &m.file)?;
                let texts: StringArray = column(b, 1, &DataType::Utf8, &m.file)?;
                let ts: Int64Array = column(b, 2, &DataType::Int64, &m.file)?;
                let parts: Int32Array = column(b, 3, &DataType::Int32, &m.file)?;
                for i in 0..b.num_rows() {
                    let Ok(serde_json::Value::Object(row)) = serde_json::from_str(texts.value(i))
                    else {
                        return Err(SqlError::Lake(format!(
                            "{}: row {i} is not a JSON object",
                            m.file
                        )));
                    };
                    rows.push(StateRow {
                        key: keys.value(i).to_string(),
                        row,
                        ts_ms: ts.value(i),
                        partition: parts.value(i),
                    });
                }
            }
            (
                CurrentState::from_snapshot(rows, m.truncates.clone()),
                m.through.clone(),
            )
        }
    };
    // only what the snapshot has not folded in; file statistics skip the older files
    let after_snapshot = if through.is_empty() {
        String::new()
    } else {
        let folded: Vec<String> = through
            .iter()
            .map(|(p, o)| format!("(kafka_partition = {p} AND kafka_offset <= {o})"))
            .collect();
        format!("WHERE NOT ({})", folded.join(" OR "))
    };
    let batches = query(
        ctx,
        &format!(
            "SELECT key, op, after, patch, ts_ms, kafka_partition, kafka_offset \
             FROM {table}_changes {after_snapshot} ORDER BY kafka_partition, kafka_offset"
        ),
    )
    .await?;
    let mut read = 0u64;
    for b in &batches {
        let what = format!("{table}_changes");
        let text = |i: usize| column::<StringArray>(b, i, &DataType::Utf8, &what);
        let (keys, ops, afters, patches) = (text(0)?, text(1)?, text(2)?, text(3)?);
        let ts: Int64Array = column(b, 4, &DataType::Int64, &what)?;
        let parts: Int32Array = column(b, 5, &DataType::Int32, &what)?;
        let offsets: Int64Array = column(b, 6, &DataType::Int64, &what)?;
        for i in 0..b.num_rows() {
            let change = ChangeRef {
                op: ops.value(i),
                key: keys.value(i),
                after: afters.is_valid(i).then(|| afters.value(i)),
                patch: patches.is_valid(i).then(|| patches.value(i)),
                ts_ms: ts.value(i),
            };
            state.apply(&change, parts.value(i));
            let o = through.entry(parts.value(i)).or_insert(offsets.value(i));
            *o = (*o).max(offsets.value(i));
            read += 1;
        }
    }
    Ok((state, through, read))
}

/// Writes a new state snapshot of every CDC table (`bookrec lake compact`), unless a
/// table has no change since its last one.
pub async fn snapshot_all(lake: &Lake) -> Result<Vec<SnapshotReport>, SqlError> {
    let ctx = SessionContext::new_with_config(super::session_config()?);
    ctx.register_object_store(lake.store_url(), lake.store());
    let tables = super::register_cdc_changes(&ctx, lake).await?;
    let mut reports = Vec::new();
    for table in tables {
        let previous = latest(lake, &table).await?;
        let (state, through, read) = load_from(&ctx, &table, lake, previous.as_ref()).await?;
        if read == 0 && previous.is_some() {
            continue;
        }
        let seq = previous.as_ref().map_or(1, |m| m.seq + 1);
        let truncates = state.truncate_marks().to_vec();
        let rows = state.into_state_rows();
        let n = rows.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.key))),
            Arc::new(StringArray::from_iter_values(
                rows.iter()
                    .map(|r| serde_json::to_string(&r.row).unwrap_or_default()),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.ts_ms))),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.partition),
            )),
        ];
        let batch = RecordBatch::try_new(state_schema(), columns).map_err(lake_err)?;
        let file = format!("{CDC_STATE}/{table}/state-{seq:020}.parquet");
        let bytes = crate::lake::write_parquet(&batch).map_err(lake_err)?;
        lake.put(&file, bytes).await.map_err(lake_err)?;
        let manifest = Manifest {
            seq,
            through,
            truncates,
            rows: n,
            file,
        };
        let json = serde_json::to_vec(&manifest).map_err(lake_err)?;
        // the commit point: a snapshot without its manifest is never read
        lake.put(
            &format!("{CDC_STATE}/{table}/state-{seq:020}.json"),
            json.into(),
        )
        .await
        .map_err(lake_err)?;
        // keep this one and the one before (a reader may be reading it)
        for rel in state_files(lake, &table).await? {
            let old = rel
                .rsplit_once("state-")
                .and_then(|(_, s)| s.split('.').next())
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s + 1 < seq);
            if old {
                lake.delete(&rel).await.map_err(lake_err)?;
            }
        }
        reports.push(SnapshotReport {
            table,
            seq,
            rows: n,
            new_changes: read,
        });
    }
    Ok(reports)
}

// ---- the fold ------------------------------------------------------------------------

/// PostgreSQL's placeholder for an unchanged TOASTed column (text columns).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";
/// The same placeholder in a `bytea` column (base64 of the text).
const UNAVAILABLE_BYTES: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// A table's current state folded from its changes.
///
/// Feed each Kafka partition's changes in offset order (partitions one after another):
/// Debezium keeps a key's changes in one partition, in order, whereas its timestamps are
/// not an order (MySQL's binlog has whole seconds, a snapshot row carries the snapshot's
/// time). A truncate clears its own partition's rows at once and, when the rows are taken,
/// every other partition's row whose last change is not later than the truncate.
#[derive(Debug, Default)]
pub struct CurrentState {
    /// key → (row, ts_ms of its last change, partition)
    rows: HashMap<String, (Map<String, Value>, i64, i32)>,
    /// (ts_ms, partition) of each truncate
    truncated: Vec<(i64, i32)>,
    /// Partial updates for a key with no previous state (applied to an empty row).
    pub patches_without_base: u64,
    /// Changes whose `after` / `patch` text is not a JSON object (skipped).
    pub unreadable: u64,
}

fn is_unavailable(v: &Value) -> bool {
    match v {
        Value::String(s) => s == UNAVAILABLE || s == UNAVAILABLE_BYTES,
        Value::Array(a) => a.len() == 1 && is_unavailable(&a[0]),
        _ => false,
    }
}

/// The parent container of a dotted path and the last segment, creating objects on the way.
fn walk<'a>(root: &'a mut Value, path: &str, create: bool) -> Option<(&'a mut Value, String)> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop()?.to_string();
    let mut cur = root;
    for p in parts {
        cur = match cur {
            Value::Object(m) => {
                if create && !m.contains_key(p) {
                    m.insert(p.to_string(), Value::Object(Map::new()));
                }
                m.get_mut(p)?
            }
            Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some((cur, last))
}

fn apply_patch(row: &mut Map<String, Value>, patch: &Value) {
    let mut doc = Value::Object(std::mem::take(row));
    // MongoDB reports arrays truncated by the update, then the fields it set and removed
    if let Some(Value::Object(t)) = patch.get("truncate") {
        for (path, n) in t {
            let n = n.as_u64().unwrap_or(0) as usize;
            if let Some((Value::Object(m), last)) = walk(&mut doc, path, false)
                && let Some(Value::Array(a)) = m.get_mut(&last)
            {
                a.truncate(n);
            }
        }
    }
    if let Some(Value::Object(set)) = patch.get("set") {
        for (path, v) in set {
            match walk(&mut doc, path, true) {
                Some((Value::Object(m), last)) => {
                    m.insert(last, v.clone());
                }
                Some((Value::Array(a), last)) => {
                    if let Ok(i) = last.parse::<usize>() {
                        if i < a.len() {
                            a[i] = v.clone();
                        } else if i < a.len() + 10_000 {
                            a.resize(i, Value::Null);
                            a.push(v.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for path in patch
        .get("unset")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some((Value::Object(m), last)) = walk(&mut doc, path, false) {
            m.remove(&last);
        }
    }
    if let Value::Object(m) = doc {
        *row = m;
    }
}

impl CurrentState {
    /// Applies one change of `partition` (in that partition's offset order).
    pub fn apply(&mut self, change: &ChangeRef<'_>, partition: i32) {
        let ChangeRef {
            op,
            key,
            after,
            patch,
            ts_ms: ts,
        } = *change;
        match op {
            "t" => {
                self.rows.retain(|_, r| r.2 != partition);
                self.truncated.push((ts, partition));
            }
            "m" | "s" => {}
            "d" => {
                self.rows.remove(key);
            }
            _ => {
                if let Some(after) = after {
                    let Ok(Value::Object(mut new)) = serde_json::from_str::<Value>(after) else {
                        self.unreadable += 1;
                        return;
                    };
                    let prev = self.rows.get(key).map(|r| &r.0);
                    for (field, v) in new.iter_mut() {
                        if is_unavailable(v) {
                            *v = prev
                                .and_then(|p| p.get(field))
                                .cloned()
                                .unwrap_or(Value::Null);
                        }
                    }
                    self.rows.insert(key.to_string(), (new, ts, partition));
                } else if let Some(patch) = patch {
                    let Ok(p) = serde_json::from_str::<Value>(patch) else {
                        self.unreadable += 1;
                        return;
                    };
                    if !self.rows.contains_key(key) {
                        self.patches_without_base += 1;
                    }
                    let entry = self
                        .rows
                        .entry(key.to_string())
                        .or_insert_with(|| (Map::new(), ts, partition));
                    apply_patch(&mut entry.0, &p);
                    entry.1 = ts;
                    entry.2 = partition;
                }
            }
        }
    }

    /// The rows, by key: `(key, row, ts_ms of its last change)`.
    pub fn into_rows(self) -> Vec<(String, Map<String, Value>, i64)> {
        self.into_state_rows()
            .into_iter()
            .map(|r| (r.key, r.row, r.ts_ms))
            .collect()
    }

    /// The rows with their partition, by key: what a state snapshot keeps.
    pub fn into_state_rows(self) -> Vec<StateRow> {
        let truncated = self.truncated;
        let mut rows: Vec<StateRow> = self
            .rows
            .into_iter()
            .filter(|(_, (_, ts, p))| !truncated.iter().any(|(t, tp)| tp != p && *ts <= *t))
            .map(|(key, (row, ts_ms, partition))| StateRow {
                key,
                row,
                ts_ms,
                partition,
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Starts from a snapshot: its rows and the truncates it had seen.
    pub fn from_snapshot(rows: Vec<StateRow>, truncated: Vec<(i64, i32)>) -> CurrentState {
        CurrentState {
            rows: rows
                .into_iter()
                .map(|r| (r.key, (r.row, r.ts_ms, r.partition)))
                .collect(),
            truncated,
            ..CurrentState::default()
        }
    }

    /// `(ts_ms, partition)` of every truncate applied.
    pub fn truncate_marks(&self) -> &[(i64, i32)] {
        &self.truncated
    }
}

/// One row of a current state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    pub key: String,
    pub row: Map<String, Value>,
    /// of the row's last change
    pub ts_ms: i64,
    pub partition: i32,
}

/// The parts of a landed change the current state needs.
#[derive(Debug, Clone, Copy)]
pub struct ChangeRef<'a> {
    pub op: &'a str,
    pub key: &'a str,
    pub after: Option<&'a str>,
    pub patch: Option<&'a str>,
    pub ts_ms: i64,
}

#[cfg(test)]
mod tests;
