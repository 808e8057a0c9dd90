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

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("registering lake table {table} at {url}: {source}")]
    Register {
        table: &'static str,
        url: String,
        source: DataFusionError,
    },
    #[error("{0}")]
    Query(DataFusionError),
    #[error("writing {format} output: {reason}")]
    Output {
        format: &'static str,
        reason: String,
    },
}

/// A lake table: its name, folder, file schema and Hive partition columns.
struct LakeTable {
    name: &'static str,
    folder: &'static str,
    schema: SchemaRef,
    partitions: Vec<(String, DataType)>,
}

fn lake_tables() -> Vec<LakeTable> {
    vec![
        LakeTable {
            name: "events",
            folder: "events",
            schema: crate::lake::events_file_schema(),
            partitions: vec![
                ("dt".into(), DataType::Utf8),
                ("hour".into(), DataType::Int32),
            ],
        },
        LakeTable {
            name: "dead_letters",
            folder: "dlq/land",
            schema: crate::lake::dead_letters_schema(),
            partitions: vec![("dt".into(), DataType::Utf8)],
        },
    ]
}

/// A DataFusion session with the lake's store and tables registered.
pub fn session(lake: &Lake) -> Result<SessionContext, SqlError> {
    let ctx = SessionContext::new();
    ctx.register_object_store(lake.store_url(), lake.store());
    for t in lake_tables() {
        let url = lake.folder_url(t.folder);
        let register = |source| SqlError::Register {
            table: t.name,
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
        ctx.register_table(t.name, Arc::new(table))
            .map_err(register)?;
    }
    Ok(ctx)
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
