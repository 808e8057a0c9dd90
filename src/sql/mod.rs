//! DataFusion over the lake: the session with the lake's tables registered, and ad-hoc
//! queries (`bookrec sql`).
//!
//! Tables: `events` (partition columns `dt` = 'YYYY-MM-DD' and `hour` = 0..23, so filters
//! on them prune whole folders) and `dead_letters` (the lander's). Their schemas are fixed,
//! so queries plan against an empty lake too. In process they are read by the lake's own
//! scan ([`scan`]: one request per small file, rows of many files per batch); on a cluster
//! by DataFusion's listing table.
//!
//! Engines (`batch.engine`): DataFusion in this process (the default), or an Apache
//! DataFusion Ballista cluster (`ballista://host:port`, the scheduler). The SQL and the
//! table definitions are the same; a cluster's executors read the lake themselves, so tables
//! this process computes (the CDC current state, outputs of a run's earlier queries) are
//! staged as Parquet under `_staging/<session>/` in the lake instead of held in memory, and
//! removed when the run ends.

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

use crate::config::Engine;
use crate::lake::Lake;

pub mod catalog;
pub mod cdc_state;
pub mod datatest;
pub mod functions;
pub mod scan;
pub mod sources;

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
    /// the engine could not be reached or set up (`batch.engine`, `DATAFUSION_*`)
    #[error("batch.engine {engine:?}: {reason}")]
    Engine { engine: String, reason: String },
    /// a source view (`lake.sources_dir`) that does not parse, plan or run
    #[error("{}", .0.iter().map(|e| format!("source view {e}")).collect::<Vec<_>>().join("\n"))]
    Source(Vec<catalog::CatalogError>),
}

/// `batches` in the types of `schema`, the plan's schema. DataFusion 55 can produce batches
/// whose types differ from the plan's — a `UNION ALL` of a Parquet scan (`Utf8View`) and an
/// in-memory table (`Utf8`) is planned as `Utf8` but yields the scan's `Utf8View` batches —
/// and a table registered with the plan's schema then refuses them. Such columns are cast.
pub fn conform(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, SqlError> {
    batches
        .into_iter()
        .map(|b| {
            if schema.contains(&b.schema()) {
                return Ok(b);
            }
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|cols| RecordBatch::try_new(schema.clone(), cols))
                .map_err(|e| SqlError::Output {
                    format: "query result",
                    reason: format!("the result's types differ from the plan's: {e}"),
                })?;
            Ok(columns)
        })
        .collect()
}

/// Tables computed in this process, made readable by the session's engine: in memory for
/// the in-process engine; for a cluster, Parquet staged under `_staging/<id>/` in the lake
/// (its executors cannot read this process's memory).
pub struct Tables {
    lake: Lake,
    staging: Option<String>,
}

impl Tables {
    /// Registers `batches` as table `name` (replacing an earlier one).
    pub async fn register(
        &self,
        ctx: &SessionContext,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<(), SqlError> {
        let register = |url: &str| {
            let table = name.to_string();
            let url = url.to_string();
            move |source| SqlError::Register { table, url, source }
        };
        let table: Arc<dyn datafusion::catalog::TableProvider> = match &self.staging {
            None => Arc::new(
                datafusion::datasource::MemTable::try_new(schema, vec![batches])
                    .map_err(register("(in memory)"))?,
            ),
            Some(folder) => {
                let folder = format!("{folder}/{name}");
                let all = arrow::compute::concat_batches(&schema, &batches).map_err(|e| {
                    SqlError::Output {
                        format: "staged table",
                        reason: format!("{name}: {e}"),
                    }
                })?;
                let bytes =
                    crate::lake::write_parquet(&all).map_err(|reason| SqlError::Output {
                        format: "staged table",
                        reason: format!("{name}: {reason}"),
                    })?;
                self.lake
                    .put(&format!("{folder}/part-0.parquet"), bytes)
                    .await
                    .map_err(|e| SqlError::Lake(e.to_string()))?;
                let url = self.lake.folder_url(&folder);
                Arc::new(
                    listing_table(ctx, &url, Some(schema), Vec::new())
                        .await
                        .map_err(register(&url))?,
                )
            }
        };
        ctx.deregister_table(name)
            .map_err(register("(deregister)"))?;
        ctx.register_table(name, table)
            .map_err(register("(register)"))?;
        Ok(())
    }

    /// Removes what was staged (a no-op in process).
    pub async fn cleanup(&self) -> Result<(), SqlError> {
        let Some(folder) = &self.staging else {
            return Ok(());
        };
        let objects = self
            .lake
            .list(folder)
            .await
            .map_err(|e| SqlError::Lake(e.to_string()))?;
        for m in objects {
            if let Some(rel) = self.lake.relative(&m.location) {
                self.lake
                    .delete(rel)
                    .await
                    .map_err(|e| SqlError::Lake(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// The session's Parquet reading options (`datafusion.execution.parquet.*`), which a
/// table's format must carry: `ParquetFormat::default()` would ignore them.
fn parquet_format(ctx: &SessionContext) -> Arc<ParquetFormat> {
    Arc::new(ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone()))
}

/// A Parquet listing table over a lake folder: with the given schema, or the files' own
/// when `None`.
async fn listing_table(
    ctx: &SessionContext,
    url: &str,
    schema: Option<SchemaRef>,
    partitions: Vec<(String, DataType)>,
) -> Result<ListingTable, DataFusionError> {
    let table_url = ListingTableUrl::parse(url)?;
    let options = ListingOptions::new(parquet_format(ctx))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partitions);
    let config = ListingTableConfig::new(table_url).with_listing_options(options);
    let config = match schema {
        Some(schema) => config.with_schema(schema),
        None => config.infer_schema(&ctx.state()).await?,
    };
    ListingTable::try_new(config)
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

/// A DataFusion session (in process) with the lake's store and tables registered: `events`,
/// `dead_letters`, and per CDC table `<table>_changes` (every change) and `<table>` (the
/// current state, computed when the session opens).
pub async fn session(lake: &Lake) -> Result<SessionContext, SqlError> {
    session_on(lake, &Engine::InProcess)
        .await
        .map(|(ctx, _)| ctx)
}

/// DataFusion settings for the lake: DataFusion's defaults, then bookrec's defaults for a
/// lake of many small files, then DataFusion's own `DATAFUSION_*` environment variables
/// (e.g. `DATAFUSION_EXECUTION_TARGET_PARTITIONS=8` for
/// `datafusion.execution.target_partitions`), which win.
///
/// bookrec's defaults, measured on ML-1M's 23k hourly files (BENCHMARKS.md, batch):
/// - `collect_statistics = false`: planning would read every file's footer to gather
///   statistics that these aggregations do not use, and read them again to scan;
/// - `parquet.enable_page_index = false`: a lake file is one row group of a few pages, and
///   the page index costs another read per file for no pruning;
/// - `parquet.bloom_filter_on_read = false`: the lake writes no bloom filters;
/// - `target_partitions` = twice the cores: opening a small file waits on I/O (each read is
///   a blocking-pool task), so more scans in flight keep the cores busy.
pub fn session_config() -> Result<datafusion::prelude::SessionConfig, SqlError> {
    let mut config = datafusion::prelude::SessionConfig::new();
    {
        let options = config.options_mut();
        options.execution.collect_statistics = false;
        options.execution.target_partitions = 2 * options.execution.target_partitions.max(1);
        options.execution.parquet.enable_page_index = false;
        options.execution.parquet.bloom_filter_on_read = false;
    }
    // the environment overrides, key by key (the names ConfigOptions::from_env reads); a
    // value DataFusion cannot parse is an error naming the variable
    let keys = datafusion::common::config::ConfigOptions::new().entries();
    for entry in keys {
        let env = entry.key.to_uppercase().replace('.', "_");
        let Some(value) = std::env::var_os(&env) else {
            continue;
        };
        let value = value.to_string_lossy();
        config
            .options_mut()
            .set(&entry.key, &value)
            .map_err(|e| SqlError::Engine {
                engine: "datafusion".into(),
                reason: format!("{env}={value:?}: {e}"),
            })?;
    }
    Ok(config)
}

/// A session on `engine` with the lake's tables, and where this process's own tables go.
pub async fn session_on(
    lake: &Lake,
    engine: &Engine,
) -> Result<(SessionContext, Tables), SqlError> {
    let config = session_config()?;
    let (ctx, staging) = match engine {
        Engine::InProcess => {
            let ctx = SessionContext::new_with_config(config);
            // bookrec's own functions (json_get); a Ballista cluster's executors know only
            // DataFusion's built-ins, so queries sent there cannot use them
            functions::register(&ctx);
            (ctx, None)
        }
        Engine::Ballista { host, port } => {
            if lake.store_url().scheme() == "memory" {
                return Err(SqlError::Engine {
                    engine: engine.to_string(),
                    reason: "a cluster cannot read an in-process lake (lake.url = memory://); \
                             use a folder the executors share or an S3 bucket"
                        .into(),
                });
            }
            // fail here, clearly, rather than at the first query
            let probe = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await;
            let unreachable = match probe {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer within 5 s".to_string()),
            };
            if let Some(reason) = unreachable {
                return Err(SqlError::Engine {
                    engine: engine.to_string(),
                    reason: format!(
                        "cannot reach the Ballista scheduler at {host}:{port}: {reason}"
                    ),
                });
            }
            use ballista::prelude::{SessionConfigExt, SessionContextExt};
            // the static distributed planner: Ballista 55's adaptive planner (AQE, on by
            // default) never finishes a job whose join has an empty side (a report with no
            // clicks yet, a lake without ratings); the static one plans the same stages
            // up front and finishes (tests/it/ballista.rs runs such a join)
            let config = config
                .upgrade_for_ballista()
                .with_ballista_adaptive_query_planner(false);
            let state = datafusion::execution::SessionStateBuilder::new()
                .with_config(config)
                .with_default_features()
                .build();
            let ctx = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state)
                .await
                .map_err(|e| SqlError::Engine {
                    engine: engine.to_string(),
                    reason: e.to_string(),
                })?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            (ctx, Some(format!("_staging/{id}")))
        }
    };
    let tables = Tables {
        lake: lake.clone(),
        staging,
    };
    ctx.register_object_store(lake.store_url(), lake.store());
    for t in lake_tables() {
        let url = lake.folder_url(&t.folder);
        let register = |source| SqlError::Register {
            table: t.name.clone(),
            url: url.clone(),
            source,
        };
        // in process, the partitioned folders get the lake's own scan (see `scan`); a
        // cluster's executors know only DataFusion's listing table
        let table: Arc<dyn datafusion::catalog::TableProvider> =
            if *engine == Engine::InProcess && !t.partitions.is_empty() {
                Arc::new(scan::LakeScanTable::new(
                    lake,
                    &t.folder,
                    t.schema,
                    t.partitions,
                ))
            } else if t.partitions.iter().all(|(_, ty)| *ty == DataType::Utf8) {
                Arc::new(
                    listing_table(&ctx, &url, Some(t.schema), t.partitions)
                        .await
                        .map_err(register)?,
                )
            } else {
                // the listing table would turn `hour = 5` into the folder prefix `hour=5/`
                // and miss the lake's `hour=05/`: it reads the partition values as text, and
                // the table casts them to their types
                let text = t
                    .partitions
                    .iter()
                    .map(|(n, _)| (n.clone(), DataType::Utf8))
                    .collect();
                let listed = listing_table(&ctx, &url, Some(t.schema.clone()), text)
                    .await
                    .map_err(register)?;
                let mut columns: Vec<datafusion::prelude::Expr> = t
                    .schema
                    .fields()
                    .iter()
                    .map(|f| datafusion::prelude::col(f.name()))
                    .collect();
                columns.extend(t.partitions.iter().map(|(n, ty)| {
                    datafusion::prelude::cast(datafusion::prelude::col(n), ty.clone()).alias(n)
                }));
                ctx.read_table(Arc::new(listed))
                    .and_then(|df| df.select(columns))
                    .map_err(register)?
                    .into_view()
            };
        ctx.register_table(t.name.as_str(), table)
            .map_err(register)?;
    }
    let sources = sources::load(lake)?;
    let cdc_tables = register_cdc_changes(&ctx, lake).await?;
    register_features(&ctx, lake).await?;
    register_model_lists(&ctx, &tables, lake).await?;
    for table in &cdc_tables {
        let (schema, batches) = current_state(&ctx, lake, table).await?;
        tables.register(&ctx, table, schema, batches).await?;
    }
    let made = sources::register(&ctx, &tables, &sources, &cdc_tables).await?;
    if !cdc_tables.iter().chain(&made).any(|t| t == "books") {
        // the catalogue contract, empty until CDC (or the demo's loader) fills it
        tables
            .register(&ctx, "books", books_schema(), Vec::new())
            .await?;
    }
    Ok((ctx, tables))
}

/// Re-reads the CDC tables' current state into an in-process session ([`session`]): the
/// current state `<table>` of every CDC table the lake holds now (new ones too), each
/// replacing the earlier one, then the source views over them (their files read again);
/// queries already running keep what they started with. The fold runs in a fresh session
/// (a session caches the lake's file listings, so its own `<table>_changes` would not see
/// new files). What `bookrec stream` runs every `stream.catalogue_refresh_secs`. Returns
/// the CDC tables.
pub async fn refresh_cdc_tables(
    ctx: &SessionContext,
    lake: &Lake,
) -> Result<Vec<String>, SqlError> {
    let fresh = SessionContext::new_with_config(session_config()?);
    fresh.register_object_store(lake.store_url(), lake.store());
    let tables = register_cdc_changes(&fresh, lake).await?;
    let own = Tables {
        lake: lake.clone(),
        staging: None,
    };
    let sources = sources::load(lake)?;
    for table in &tables {
        let (schema, batches) = current_state(&fresh, lake, table).await?;
        own.register(ctx, table, schema, batches).await?;
    }
    sources::register(ctx, &own, &sources, &tables).await?;
    Ok(tables)
}

/// Registers the current model version's published lists ([`crate::lake::layout::CURRENT_MODEL`])
/// as `similar_books` (`book_id, pos, similar_book_id, score`) and `popular_books`
/// (`category, pos, book_id, score`; category `''` is the whole catalogue), each empty
/// before a model is promoted (or for a version published before the lists were in the
/// lake), so realtime queries that join them always plan. Returns the version, if any.
pub async fn register_model_lists(
    ctx: &SessionContext,
    tables: &Tables,
    lake: &Lake,
) -> Result<Option<String>, SqlError> {
    use crate::lake::layout;
    let lake_err = |e: crate::lake::LakeError| SqlError::Lake(e.to_string());
    let version = lake
        .get_opt(layout::CURRENT_MODEL)
        .await
        .map_err(lake_err)?
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|v| !v.is_empty());
    for (name, file, key, item) in [
        (
            "similar_books",
            layout::SIMILAR_BOOKS,
            "book_id",
            "similar_book_id",
        ),
        (
            "popular_books",
            layout::POPULAR_BOOKS,
            "category",
            "book_id",
        ),
    ] {
        let schema = crate::lake::ranked_list_schema(key, item);
        let mut batches = Vec::new();
        if let Some(v) = &version {
            let path = format!("{}/{file}", layout::model_folder(v));
            if let Some(bytes) = lake.get_opt(&path).await.map_err(lake_err)? {
                batches = crate::lake::read_parquet(bytes)
                    .map_err(|reason| SqlError::Lake(format!("{path}: {reason}")))?;
                if let Some(b) = batches.first()
                    && b.schema().fields() != schema.fields()
                {
                    return Err(SqlError::Lake(format!(
                        "{path}: columns {:?}, want {:?}",
                        b.schema().fields(),
                        schema.fields()
                    )));
                }
            }
        }
        tables.register(ctx, name, schema, batches).await?;
    }
    Ok(version)
}

/// [`register_model_lists`] again on an in-process session ([`session`]), for a long-running
/// reader (the stream) to follow promotions and rollbacks.
pub async fn refresh_model_lists(
    ctx: &SessionContext,
    lake: &Lake,
) -> Result<Option<String>, SqlError> {
    let own = Tables {
        lake: lake.clone(),
        staging: None,
    };
    register_model_lists(ctx, &own, lake).await
}

/// The CDC tables the lake holds changes of.
pub async fn cdc_table_names(lake: &Lake) -> Result<std::collections::BTreeSet<String>, SqlError> {
    Ok(lake
        .data_files(crate::lake::layout::CDC)
        .await
        .map_err(|e| SqlError::Lake(e.to_string()))?
        .into_iter()
        .filter_map(|f| match f.kind {
            crate::lake::FileKind::Cdc { table } => Some(table),
            _ => None,
        })
        .collect())
}

/// Registers `<table>_changes` for every CDC table (and nothing else); returns the tables.
async fn register_cdc_changes(ctx: &SessionContext, lake: &Lake) -> Result<Vec<String>, SqlError> {
    let tables = cdc_table_names(lake).await?;
    for table in &tables {
        let url = lake.folder_url(&format!("{}/{table}", crate::lake::layout::CDC));
        let name = format!("{table}_changes");
        let register = |source| SqlError::Register {
            table: name.clone(),
            url: url.clone(),
            source,
        };
        let listed = listing_table(ctx, &url, Some(crate::lake::cdc_changes_schema()), vec![])
            .await
            .map_err(register)?;
        ctx.deregister_table(name.as_str()).map_err(register)?;
        ctx.register_table(name.as_str(), Arc::new(listed))
            .map_err(register)?;
    }
    Ok(tables.into_iter().collect())
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
        let table = listing_table(ctx, &url, None, Vec::new())
            .await
            .map_err(register)?;
        ctx.register_table(name, Arc::new(table))
            .map_err(register)?;
    }
    Ok(())
}

/// The current state of a CDC table: its changes folded in each partition's offset order
/// by [`cdc_state::CurrentState`] — deletes and truncates applied, unchanged TOAST
/// columns and MongoDB partial updates merged into the previous row — starting from the
/// newest state snapshot ([`cdc_state`]); the row's JSON fields as columns (types inferred
/// from the data), plus `_key` and `_ts_ms`.
async fn current_state(
    ctx: &SessionContext,
    lake: &Lake,
    table: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>), SqlError> {
    let (state, _, _) = cdc_state::load(ctx, lake, table).await?;
    if state.unreadable > 0 || state.patches_without_base > 0 {
        tracing::warn!(
            table,
            unreadable = state.unreadable,
            patches_without_base = state.patches_without_base,
            "cdc current state: changes that could not be applied in full"
        );
    }
    let rows = state.into_rows();
    let mut ndjson = Vec::new();
    // the JSON kinds each field holds: a source without a schema may send `9` in one change
    // and `"9"` in another; such a column is read as text (with a warning) rather than
    // failing every session
    let mut kinds: std::collections::BTreeMap<String, std::collections::BTreeSet<&'static str>> =
        Default::default();
    for (key, mut obj, ts) in rows {
        for (field, v) in &obj {
            let kind = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::Bool(_) => "boolean",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
            };
            kinds.entry(field.clone()).or_default().insert(kind);
        }
        obj.insert("_key".into(), serde_json::Value::String(key));
        obj.insert("_ts_ms".into(), serde_json::Value::from(ts));
        ndjson.extend_from_slice(serde_json::Value::Object(obj).to_string().as_bytes());
        ndjson.push(b'\n');
    }
    let json_err = |e: arrow::error::ArrowError| SqlError::Output {
        format: "cdc current state",
        reason: format!("{table}: {e}"),
    };
    let (schema, _) = arrow::json::reader::infer_json_schema(std::io::Cursor::new(&ndjson), None)
        .map_err(json_err)?;
    let varying: Vec<String> = kinds
        .iter()
        .filter(|(_, k)| k.len() > 1)
        .map(|(f, k)| format!("{f} ({})", k.iter().copied().collect::<Vec<_>>().join(", ")))
        .collect();
    if !varying.is_empty() {
        tracing::warn!(table, fields = ?varying, "cdc current state: fields whose values vary in \
            type between changes are read as text");
    }
    let schema = Arc::new(schema);
    let reader = arrow::json::ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .build(std::io::Cursor::new(&ndjson))
        .map_err(json_err)?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(json_err)?;
    Ok((schema, batches))
}

/// What analysts' SQL may do: read. DDL (`CREATE …`, `DROP …`), DML and `COPY … TO`
/// (which would write files wherever the process may) and statements such as `SET` are
/// refused with a DataFusion error naming what is not allowed.
pub fn read_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Plans `sql` as analysts' SQL is planned: [`read_only`].
pub async fn plan_read_only(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::dataframe::DataFrame, DataFusionError> {
    ctx.sql_with_options(sql, read_only()).await
}

/// Runs one read-only statement ([`read_only`]) and collects the result: `bookrec sql`,
/// the batch features, the realtime queries.
pub async fn query_read_only(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<RecordBatch>, SqlError> {
    let df = plan_read_only(ctx, sql).await.map_err(SqlError::Query)?;
    df.collect().await.map_err(SqlError::Query)
}

/// Runs one statement of this program's own (it may define views) and collects the result.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let df = ctx.sql(sql).await.map_err(SqlError::Query)?;
    df.collect().await.map_err(SqlError::Query)
}

/// Runs one statement that may write (`bookrec sql --allow-writes`), confined to the lake:
/// a `COPY … TO` or `CREATE EXTERNAL TABLE … LOCATION` outside it is refused before it runs,
/// with the target named (the store refuses such paths too, less clearly).
pub async fn query_in_lake(
    ctx: &SessionContext,
    sql: &str,
    lake: &Lake,
) -> Result<Vec<RecordBatch>, SqlError> {
    use datafusion::datasource::listing::ListingTableUrl;
    use datafusion::logical_expr::{DdlStatement, LogicalPlan};
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(SqlError::Query)?;
    let targets = match &plan {
        LogicalPlan::Copy(c) => vec![c.output_url.clone()],
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(t)) => t.locations.clone(),
        _ => Vec::new(),
    };
    for target in targets {
        let resolved = ListingTableUrl::parse(&target).map_err(SqlError::Query)?;
        if !lake.contains_url(resolved.as_str()) {
            return Err(SqlError::Query(DataFusionError::Plan(format!(
                "{target} ({resolved}) is outside the lake ({}); the SQL engine reads and \
                 writes only inside it (bookrec sql --out FILE writes a result anywhere)",
                lake
            ))));
        }
    }
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(SqlError::Query)?;
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
    /// an Arrow IPC stream (pyarrow: `pa.ipc.open_stream(data).read_pandas()`)
    Arrow,
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
        Format::Arrow => {
            let schema = batches.first().map_or_else(
                || Arc::new(arrow::datatypes::Schema::empty()),
                RecordBatch::schema,
            );
            let mut w = arrow::ipc::writer::StreamWriter::try_new(out, &schema)
                .map_err(|e| err("arrow")(&e))?;
            for b in batches {
                w.write(b).map_err(|e| err("arrow")(&e))?;
            }
            w.finish().map_err(|e| err("arrow")(&e))
        }
    }
}
