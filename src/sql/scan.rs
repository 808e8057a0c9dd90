//! The lake's own scan of a Hive-partitioned Parquet folder (`events`, `dead_letters`) for
//! the in-process engine.
//!
//! Why not DataFusion's `ListingTable`: the lake keeps one folder per event hour, so a year
//! of history is ~9k folders of small files (ML-1M lands as 23k files of ~43 rows). The
//! listing table pays, per file, a footer read and a data read (each an object-store request,
//! on a local lake each a blocking-pool task), a pruning predicate and a schema adapter built
//! for that file, a set of per-file metrics, and it hands every file's rows downstream as a
//! batch of their own, so each operator above runs once per 43 rows. This scan:
//!
//! - lists the folder once (through the lake's store, so a compaction in progress stays
//!   invisible) and prunes files by their partition values (`dt`, `hour`) with the query's
//!   partition filters, evaluated once over all files as one batch;
//! - reads each small file (≤ [`WHOLE_FILE_MAX`]) with one request and decodes it in memory,
//!   several files in flight per partition; larger files (a compacted hour of a busy site)
//!   go through the ranged async reader, which fetches only the projected column chunks;
//! - decodes only the projected columns and coalesces the rows of many files into batches
//!   of the session's `batch_size`.
//!
//! Filters on non-partition columns are left to DataFusion's filter above the scan (no
//! row-group statistics pruning: a lake file is one row group of an hour's events, and
//! reading a small file whole costs less than deciding to skip it).
//!
//! A file whose schema differs from the table's (an older lake) is read by column name: a
//! column of another type is cast, a missing nullable column is null; a missing required
//! column is an error naming the file. The Ballista engine keeps the listing table (its
//! executors cannot run this scan).

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, new_null_array,
};
use arrow::compute::BatchCoalescer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderBuilder, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::lake::Lake;

/// Files up to this size are read with one request and decoded in memory.
pub const WHOLE_FILE_MAX: u64 = 1024 * 1024;

/// Small files in flight per scan partition (requests issued ahead of decoding).
const FILES_IN_FLIGHT: usize = 8;

/// One Parquet file of the folder and its partition values (in the table's order).
#[derive(Debug, Clone)]
struct LakeFile {
    path: Path,
    size: u64,
    values: Vec<ScalarValue>,
}

/// What every partition of a scan shares.
#[derive(Debug, Clone)]
struct Spec {
    store: Arc<dyn ObjectStore>,
    folder: String,
    /// Files up to this size are read whole.
    whole_file_max: u64,
    /// The columns stored in the files.
    file_schema: SchemaRef,
    partitions: Vec<(String, DataType)>,
}

/// A lake folder as a table: the files' columns, then the partition columns.
#[derive(Debug)]
pub struct LakeScanTable {
    spec: Arc<Spec>,
    prefix: Path,
    /// The partition columns alone: what partition filters are evaluated against.
    partition_schema: SchemaRef,
    schema: SchemaRef,
}

impl LakeScanTable {
    pub fn new(
        lake: &Lake,
        folder: &str,
        file_schema: SchemaRef,
        partitions: Vec<(String, DataType)>,
    ) -> LakeScanTable {
        let partition_schema = Arc::new(Schema::new(
            partitions
                .iter()
                .map(|(name, t)| Field::new(name, t.clone(), false))
                .collect::<Vec<_>>(),
        ));
        let fields: Vec<Field> = file_schema
            .fields()
            .iter()
            .chain(partition_schema.fields())
            .map(|f| f.as_ref().clone())
            .collect();
        LakeScanTable {
            spec: Arc::new(Spec {
                store: lake.store(),
                folder: folder.to_string(),
                whole_file_max: WHOLE_FILE_MAX,
                file_schema,
                partitions,
            }),
            prefix: lake.path(folder),
            partition_schema,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// Reads files up to `bytes` whole, larger ones by ranges (default [`WHOLE_FILE_MAX`]).
    pub fn with_whole_file_max(mut self, bytes: u64) -> LakeScanTable {
        Arc::make_mut(&mut self.spec).whole_file_max = bytes;
        self
    }

    /// The folder's Parquet files with their partition values; files outside the
    /// `name=value/…` layout are not part of the table.
    async fn files(&self) -> Result<Vec<LakeFile>> {
        let objects: Vec<object_store::ObjectMeta> = self
            .spec
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| {
                DataFusionError::Execution(format!("listing lake folder {}: {e}", self.prefix))
            })?;
        let prefix = self.prefix.as_ref();
        let mut files = Vec::with_capacity(objects.len());
        'objects: for m in objects {
            let location = m.location.as_ref();
            if m.size == 0 || !location.ends_with(".parquet") {
                continue;
            }
            let Some(rel) = location
                .strip_prefix(prefix)
                .map(|r| r.trim_start_matches('/'))
            else {
                continue;
            };
            let dirs: Vec<&str> = rel.split('/').collect();
            if dirs.len() != self.spec.partitions.len() + 1 {
                continue;
            }
            let mut values = Vec::with_capacity(self.spec.partitions.len());
            for ((name, t), dir) in self.spec.partitions.iter().zip(&dirs) {
                let Some(v) = dir
                    .strip_prefix(name.as_str())
                    .and_then(|r| r.strip_prefix('='))
                else {
                    continue 'objects;
                };
                match ScalarValue::try_from_string(v.to_string(), t) {
                    Ok(v) if !v.is_null() => values.push(v),
                    _ => continue 'objects,
                }
            }
            files.push(LakeFile {
                path: m.location,
                size: m.size,
                values,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Whether a filter reads only partition columns (DataFusion's own test, as its
    /// listing table uses it), so the files can be pruned with it exactly.
    fn partition_only(&self, e: &Expr) -> bool {
        let names: Vec<&str> = self
            .spec
            .partitions
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        expr_applicable_for_cols(&names, e)
    }

    /// Keeps the files whose partition values pass every partition-only filter: each filter
    /// is evaluated once, over a batch with one row per file.
    fn prune(
        &self,
        state: &dyn Session,
        files: Vec<LakeFile>,
        filters: &[Expr],
    ) -> Result<Vec<LakeFile>> {
        let filters: Vec<&Expr> = filters.iter().filter(|e| self.partition_only(e)).collect();
        if filters.is_empty() || files.is_empty() {
            return Ok(files);
        }
        let schema = self.partition_schema.clone();
        let columns = (0..self.spec.partitions.len())
            .map(|i| ScalarValue::iter_to_array(files.iter().map(|f| f.values[i].clone())))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let df_schema = DFSchema::try_from(schema)?;
        let mut keep = BooleanArray::from(vec![true; files.len()]);
        for f in filters {
            let expr = state.create_physical_expr((*f).clone(), &df_schema)?;
            let v = expr.evaluate(&batch)?.into_array(files.len())?;
            let v = v
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| {
                    DataFusionError::Internal(format!("partition filter {f} is not boolean"))
                })?
                .clone();
            // a null (unknown) result does not select the file, as in a WHERE clause
            let v = if v.null_count() > 0 {
                arrow::compute::prep_null_mask_filter(&v)
            } else {
                v
            };
            keep = arrow::compute::and(&keep, &v)?;
        }
        Ok(files
            .into_iter()
            .zip(keep.values().iter())
            .filter_map(|(f, k)| k.then_some(f))
            .collect())
    }
}

#[async_trait]
impl TableProvider for LakeScanTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|e| {
                if self.partition_only(e) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = self.prune(state, self.files().await?, filters)?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        let n = state
            .config()
            .target_partitions()
            .clamp(1, files.len().max(1));
        Ok(Arc::new(LakeScanExec::new(
            self.spec.clone(),
            split(files, n),
            projection,
            schema,
            limit,
        )))
    }
}

/// Splits the files (in path order, so each partition reads neighbouring hours) into `n`
/// contiguous groups of about the same bytes.
fn split(files: Vec<LakeFile>, n: usize) -> Vec<Vec<LakeFile>> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let per = total.div_ceil(n as u64).max(1);
    let mut groups: Vec<Vec<LakeFile>> = vec![Vec::new(); n];
    let mut seen = 0u64;
    for f in files {
        let i = ((seen / per) as usize).min(n - 1);
        seen += f.size;
        groups[i].push(f);
    }
    groups
}

/// The physical scan: one partition per file group.
#[derive(Debug)]
pub struct LakeScanExec {
    spec: Arc<Spec>,
    groups: Vec<Vec<LakeFile>>,
    /// Table column indexes to produce.
    projection: Vec<usize>,
    schema: SchemaRef,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl LakeScanExec {
    fn new(
        spec: Arc<Spec>,
        groups: Vec<Vec<LakeFile>>,
        projection: Vec<usize>,
        schema: SchemaRef,
        limit: Option<usize>,
    ) -> LakeScanExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(groups.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        LakeScanExec {
            spec,
            groups,
            projection,
            schema,
            limit,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for LakeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(
            f,
            "LakeScanExec: folder={}, files={files}, partitions={}, projection=[{}]",
            self.spec.folder,
            self.groups.len(),
            columns.join(", ")
        )?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LakeScanExec {
    fn name(&self) -> &str {
        "LakeScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "LakeScanExec has no children".into(),
            ))
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!(
                "LakeScanExec: partition {partition} of {}",
                self.groups.len()
            ))
        })?;
        let reader = PartitionReader {
            spec: self.spec.clone(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            batch_size: context.session_config().batch_size(),
            files_scanned: MetricBuilder::new(&self.metrics).counter("files_scanned", partition),
            bytes_scanned: MetricBuilder::new(&self.metrics).counter("bytes_scanned", partition),
        };
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema.clone(), 2);
        let mut out = Output {
            coalescer: BatchCoalescer::new(reader.schema.clone(), reader.batch_size),
            left: self.limit.unwrap_or(usize::MAX),
            tx: builder.tx(),
            baseline,
        };
        builder.spawn(async move {
            let reader = Arc::new(reader);
            let mut opened = futures::stream::iter(files)
                .map(|f| {
                    let reader = reader.clone();
                    async move { reader.open(f).await }
                })
                .buffered(FILES_IN_FLIGHT);
            while let Some(file) = opened.next().await {
                let more = match file? {
                    Opened::Decoded(batches) => {
                        let mut more = true;
                        for b in batches {
                            more = out.push(b).await?;
                            if !more {
                                break;
                            }
                        }
                        more
                    }
                    Opened::Streaming(mut batches) => {
                        let mut more = true;
                        while let Some(b) = batches.next().await {
                            more = out.push(b?).await?;
                            if !more {
                                break;
                            }
                        }
                        more
                    }
                };
                if !more {
                    break;
                }
            }
            out.finish().await
        });
        Ok(builder.build())
    }
}

/// A scan partition's output: rows coalesced into batches of the session's size, up to the
/// limit, sent to the consumer.
struct Output {
    coalescer: BatchCoalescer,
    left: usize,
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    baseline: BaselineMetrics,
}

impl Output {
    /// Takes a file's batch; false once the limit is reached or the consumer is gone.
    async fn push(&mut self, batch: RecordBatch) -> Result<bool> {
        let timer = self.baseline.elapsed_compute().timer();
        let batch = if batch.num_rows() > self.left {
            batch.slice(0, self.left)
        } else {
            batch
        };
        self.left -= batch.num_rows();
        self.coalescer.push_batch(batch)?;
        timer.done();
        Ok(self.send_completed().await && self.left > 0)
    }

    async fn send_completed(&mut self) -> bool {
        while let Some(b) = self.coalescer.next_completed_batch() {
            let b = b.record_output(&self.baseline);
            if self.tx.send(Ok(b)).await.is_err() {
                return false; // the consumer is gone
            }
        }
        true
    }

    async fn finish(mut self) -> Result<()> {
        self.coalescer.finish_buffered_batch()?;
        self.send_completed().await;
        self.baseline.done();
        Ok(())
    }
}

/// A file ready to hand over its rows.
enum Opened {
    /// a small file, read whole and decoded
    Decoded(Vec<RecordBatch>),
    /// a large file: footer read, projected column chunks fetched as the stream is polled
    Streaming(futures::stream::BoxStream<'static, Result<RecordBatch>>),
}

/// Reads the files of one scan partition.
struct PartitionReader {
    spec: Arc<Spec>,
    projection: Vec<usize>,
    schema: SchemaRef,
    batch_size: usize,
    files_scanned: Count,
    bytes_scanned: Count,
}

impl PartitionReader {
    /// One file, opened: its projected rows with the partition columns in the table's
    /// types, decoded (small files) or as a stream (large files).
    async fn open(self: Arc<Self>, file: LakeFile) -> Result<Opened> {
        let path = file.path.clone();
        let at = move |e: &dyn fmt::Display| {
            DataFusionError::Execution(format!("reading lake file {path}: {e}"))
        };
        self.files_scanned.add(1);
        if file.size <= self.spec.whole_file_max {
            // one request: `get_ranges` opens and reads a local file in one blocking task
            // (`get` would take two)
            let whole = std::iter::once(0..file.size).collect::<Vec<_>>();
            let bytes = self
                .spec
                .store
                .get_ranges(&file.path, &whole)
                .await
                .map_err(|e| at(&e))?
                .into_iter()
                .next()
                .unwrap_or_else(Bytes::new);
            self.bytes_scanned.add(bytes.len());
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| at(&e))?;
            let (builder, columns) = self.configure(builder);
            let reader = builder.build().map_err(|e| at(&e))?;
            let batches = reader
                .map(|b| self.assemble(&file, &columns, b))
                .collect::<Result<Vec<_>>>()?;
            Ok(Opened::Decoded(batches))
        } else {
            let object = RangedReader {
                store: self.spec.store.clone(),
                path: file.path.clone(),
                size: file.size,
            };
            let builder = ParquetRecordBatchStreamBuilder::new(object)
                .await
                .map_err(|e| at(&e))?;
            let (builder, columns) = self.configure(builder);
            let stream = builder.build().map_err(|e| at(&e))?;
            self.bytes_scanned.add(file.size as usize);
            let this = self.clone();
            Ok(Opened::Streaming(
                stream
                    .map(move |b| this.assemble(&file, &columns, b))
                    .boxed(),
            ))
        }
    }

    /// A file's reader set to decode the projected columns in batches of the session's
    /// size; and where each output column comes from.
    fn configure<T>(&self, builder: ArrowReaderBuilder<T>) -> (ArrowReaderBuilder<T>, Vec<Source>) {
        let (mask, columns) = self.plan(builder.schema(), builder.parquet_schema());
        let builder = builder
            .with_projection(mask)
            .with_batch_size(self.batch_size);
        (builder, columns)
    }

    /// Which of the file's root columns to decode, and where each output column comes from.
    fn plan(
        &self,
        file: &SchemaRef,
        parquet: &parquet::schema::types::SchemaDescriptor,
    ) -> (ProjectionMask, Vec<Source>) {
        let stored = self.spec.file_schema.fields().len();
        let mut roots: Vec<usize> = Vec::new();
        let mut wanted: Vec<Option<usize>> = Vec::new();
        for &i in &self.projection {
            if i >= stored {
                wanted.push(None);
                continue;
            }
            let name = self.spec.file_schema.field(i).name();
            let found = file.index_of(name).ok();
            if let Some(j) = found {
                roots.push(j);
            }
            wanted.push(found);
        }
        roots.sort_unstable();
        roots.dedup();
        let columns = self
            .projection
            .iter()
            .zip(wanted)
            .map(|(&i, found)| {
                if i >= stored {
                    Source::Partition(i - stored)
                } else {
                    match found.and_then(|j| roots.binary_search(&j).ok()) {
                        Some(k) => Source::File(k),
                        None => Source::Missing,
                    }
                }
            })
            .collect();
        (ProjectionMask::roots(parquet, roots), columns)
    }

    /// A decoded batch of `file` (or the decoder's error), in the table's columns; errors
    /// name the file.
    fn assemble<E: fmt::Display>(
        &self,
        file: &LakeFile,
        columns: &[Source],
        batch: std::result::Result<RecordBatch, E>,
    ) -> Result<RecordBatch> {
        batch
            .map_err(|e| e.to_string())
            .and_then(|b| self.fill(file, columns, b))
            .map_err(|e| {
                DataFusionError::Execution(format!("reading lake file {}: {e}", file.path))
            })
    }

    fn fill(
        &self,
        file: &LakeFile,
        columns: &[Source],
        batch: RecordBatch,
    ) -> std::result::Result<RecordBatch, String> {
        let rows = batch.num_rows();
        let mut out: Vec<ArrayRef> = Vec::with_capacity(columns.len());
        for (source, field) in columns.iter().zip(self.schema.fields()) {
            let array = match source {
                Source::File(k) => {
                    let a = batch.column(*k);
                    if a.data_type() == field.data_type() {
                        a.clone()
                    } else {
                        arrow::compute::cast(a, field.data_type())
                            .map_err(|e| format!("column {}: {e}", field.name()))?
                    }
                }
                Source::Partition(p) => file.values[*p]
                    .to_array_of_size(rows)
                    .map_err(|e| e.to_string())?,
                Source::Missing if field.is_nullable() => new_null_array(field.data_type(), rows),
                Source::Missing => {
                    return Err(format!("the file has no column {}", field.name()));
                }
            };
            out.push(array);
        }
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            out,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| e.to_string())
    }
}

/// Where an output column comes from.
enum Source {
    /// the k-th decoded column
    File(usize),
    /// the i-th partition value
    Partition(usize),
    /// not in this file
    Missing,
}

/// A large lake file read by ranges: the footer, then the projected column chunks.
struct RangedReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl AsyncFileReader for RangedReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        Box::pin(async move {
            let mut got = self.get_byte_ranges(vec![range]).await?;
            got.pop()
                .ok_or_else(|| parquet::errors::ParquetError::General("no bytes returned".into()))
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        Box::pin(async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        })
    }
}
