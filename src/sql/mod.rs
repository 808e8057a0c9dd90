//! DataFusion over the lake: the session with the lake's tables registered, and ad-hoc
//! queries (`bookrec sql`).
//!
//! Tables: `events` (partition columns `dt` = 'YYYY-MM-DD' and `hour` = 0..23, so filters
//! on them prune whole folders) and `dead_letters` (the lander's). Their schemas are fixed,
//! so queries plan against an empty lake too.

use std::io::Write;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::lake::Lake;

pub mod catalog;
pub mod publish;
pub mod runner;
pub mod schedule;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("registering lake table {table} at {url}: {source}")]
    Register {
        table: String,
        url: String,
        source: DataFusionError,
    },
    #[error("{0}")]
    Query(DataFusionError),
    #[error("listing the lake: {0}")]
    Lake(String),
    #[error("writing {format} output: {reason}")]
    Output {
        format: &'static str,
        reason: String,
    },
}

/// A lake table: its name, folder, file schema and Hive partition columns.
struct LakeTable {
    name: String,
    folder: String,
    schema: SchemaRef,
    partitions: Vec<(String, DataType)>,
}

fn lake_tables() -> Vec<LakeTable> {
    vec![
        LakeTable {
            name: "events".into(),
            folder: "events".into(),
            schema: crate::lake::events_file_schema(),
            partitions: vec![
                ("dt".into(), DataType::Utf8),
                ("hour".into(), DataType::Int32),
            ],
        },
        LakeTable {
            name: "dead_letters".into(),
            folder: "dlq/land".into(),
            schema: crate::lake::dead_letters_schema(),
            partitions: vec![("dt".into(), DataType::Utf8)],
        },
    ]
}

/// A DataFusion session with the lake's store and tables registered: `events`,
/// `dead_letters`, and per CDC table `<table>_changes` (every change) and `<table>` (the
/// current state, computed when the session opens).
pub async fn session(lake: &Lake) -> Result<SessionContext, SqlError> {
    let ctx = SessionContext::new();
    ctx.register_object_store(lake.store_url(), lake.store());
    let mut tables = lake_tables();
    let cdc_tables: std::collections::BTreeSet<String> = lake
        .data_files(crate::lake::layout::CDC)
        .await
        .map_err(|e| SqlError::Lake(e.to_string()))?
        .into_iter()
        .filter_map(|f| match f.kind {
            crate::lake::FileKind::Cdc { table } => Some(table),
            _ => None,
        })
        .collect();
    for table in &cdc_tables {
        tables.push(LakeTable {
            name: format!("{table}_changes"),
            folder: format!("cdc/{table}"),
            schema: crate::lake::cdc_changes_schema(),
            partitions: vec![],
        });
    }
    for t in tables {
        let url = lake.folder_url(&t.folder);
        let register = |source| SqlError::Register {
            table: t.name.clone(),
            url: url.clone(),
            source,
        };
        let table_url = ListingTableUrl::parse(&url).map_err(register)?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(t.partitions.clone());
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(t.schema.clone());
        let table = ListingTable::try_new(config).map_err(register)?;
        ctx.register_table(t.name.as_str(), Arc::new(table))
            .map_err(register)?;
    }
    register_features(&ctx, lake).await?;
    if !cdc_tables.contains("books") {
        // the catalogue contract, empty until CDC (or the demo's loader) fills it
        let t = datafusion::datasource::MemTable::try_new(books_schema(), vec![vec![]]).map_err(
            |source| SqlError::Register {
                table: "books".into(),
                url: "(empty catalogue)".into(),
                source,
            },
        )?;
        ctx.register_table("books", Arc::new(t))
            .map_err(|source| SqlError::Register {
                table: "books".into(),
                url: "(empty catalogue)".into(),
                source,
            })?;
    }
    for table in &cdc_tables {
        let current = current_state(&ctx, table).await?;
        ctx.register_table(table.as_str(), Arc::new(current))
            .map_err(|source| SqlError::Register {
                table: table.clone(),
                url: "cdc current state".into(),
                source,
            })?;
    }
    Ok(ctx)
}

/// The columns feature queries may use from `books`. The CDC source (or the demo's
/// loader) provides at least these; more columns are fine.
pub fn books_schema() -> SchemaRef {
    Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("book_id", DataType::Utf8, false),
        arrow::datatypes::Field::new("title", DataType::Utf8, true),
        arrow::datatypes::Field::new("author", DataType::Utf8, true),
        arrow::datatypes::Field::new("publisher", DataType::Utf8, true),
        arrow::datatypes::Field::new("year", DataType::Int64, true),
        arrow::datatypes::Field::new("category", DataType::Utf8, true),
    ]))
}

/// Registers each batch feature's current run (`features/<name>/_current`) as `<name>`.
async fn register_features(ctx: &SessionContext, lake: &Lake) -> Result<(), SqlError> {
    let objects = lake
        .list("features")
        .await
        .map_err(|e| SqlError::Lake(e.to_string()))?;
    for m in objects {
        let Some(rel) = lake.relative(&m.location).map(str::to_string) else {
            continue;
        };
        let Some(name) = rel
            .strip_prefix("features/")
            .and_then(|r| r.strip_suffix("/_current"))
        else {
            continue;
        };
        let pointer = lake
            .get(&rel)
            .await
            .map_err(|e| SqlError::Lake(e.to_string()))?;
        let run = String::from_utf8_lossy(&pointer).trim().to_string();
        let url = lake.folder_url(&format!("features/{name}/{run}"));
        let register = |source| SqlError::Register {
            table: name.to_string(),
            url: url.clone(),
            source,
        };
        let table_url = ListingTableUrl::parse(&url).map_err(register)?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await
            .map_err(register)?;
        let table = ListingTable::try_new(config).map_err(register)?;
        ctx.register_table(name, Arc::new(table))
            .map_err(register)?;
    }
    Ok(())
}

/// The current state of a CDC table: per key the latest change (source time, then Kafka
/// offset), deletes removed, the row's JSON fields as columns (types inferred from the
/// data), plus `_key` and `_ts_ms`.
async fn current_state(
    ctx: &SessionContext,
    table: &str,
) -> Result<datafusion::datasource::MemTable, SqlError> {
    let batches = query(
        ctx,
        &format!(
            "SELECT key, op, after, ts_ms FROM {table}_changes \
             ORDER BY ts_ms, kafka_partition, kafka_offset"
        ),
    )
    .await?;
    let mut latest: std::collections::HashMap<String, (String, Option<String>, i64)> =
        std::collections::HashMap::new();
    for b in &batches {
        let col = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
        };
        let ts = b
            .column(3)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>();
        let (Some(keys), Some(ops), Some(afters), Some(ts)) = (col(0), col(1), col(2), ts) else {
            continue;
        };
        for i in 0..b.num_rows() {
            use arrow::array::Array;
            let after = afters.is_valid(i).then(|| afters.value(i).to_string());
            latest.insert(
                keys.value(i).to_string(),
                (ops.value(i).to_string(), after, ts.value(i)),
            );
        }
    }
    let mut rows: Vec<(String, String, i64)> = latest
        .into_iter()
        .filter(|(_, (op, _, _))| op != "d")
        .filter_map(|(k, (_, after, ts))| after.map(|a| (k, a, ts)))
        .collect();
    rows.sort();
    let mut ndjson = Vec::new();
    for (key, after, ts) in &rows {
        let mut obj = match serde_json::from_str::<serde_json::Value>(after) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => continue,
        };
        obj.insert("_key".into(), serde_json::Value::String(key.clone()));
        obj.insert("_ts_ms".into(), serde_json::Value::from(*ts));
        ndjson.extend_from_slice(serde_json::Value::Object(obj).to_string().as_bytes());
        ndjson.push(b'\n');
    }
    let json_err = |e: arrow::error::ArrowError| SqlError::Output {
        format: "cdc current state",
        reason: format!("{table}: {e}"),
    };
    let (schema, _) = arrow::json::reader::infer_json_schema(std::io::Cursor::new(&ndjson), None)
        .map_err(json_err)?;
    let schema = Arc::new(schema);
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .build(std::io::Cursor::new(&ndjson))
        .map_err(json_err)?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(json_err)?;
    datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(|source| {
        SqlError::Register {
            table: table.to_string(),
            url: "cdc current state".into(),
            source,
        }
    })
}

/// Runs one statement and collects the result.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let df = ctx.sql(sql).await.map_err(SqlError::Query)?;
    df.collect().await.map_err(SqlError::Query)
}

/// Output formats of `bookrec sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    /// one JSON object per line
    Json,
    Parquet,
}

/// Writes batches in `format`.
pub fn write(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> Result<(), SqlError> {
    let err = |format: &'static str| {
        move |e: &dyn std::fmt::Display| SqlError::Output {
            format,
            reason: e.to_string(),
        }
    };
    match format {
        Format::Table => {
            let text = arrow::util::pretty::pretty_format_batches(batches)
                .map_err(|e| err("table")(&e))?;
            writeln!(out, "{text}").map_err(|e| err("table")(&e))
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for b in batches {
                w.write(b).map_err(|e| err("csv")(&e))?;
            }
            Ok(())
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b).map_err(|e| err("json")(&e))?;
            }
            w.finish().map_err(|e| err("json")(&e))
        }
        Format::Parquet => {
            let Some(first) = batches.first() else {
                return Ok(());
            };
            let concat = arrow::compute::concat_batches(&first.schema(), batches)
                .map_err(|e| err("parquet")(&e))?;
            let bytes = crate::lake::write_parquet(&concat).map_err(|e| err("parquet")(&e))?;
            out.write_all(&bytes).map_err(|e| err("parquet")(&e))
        }
    }
}
