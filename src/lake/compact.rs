//! Compaction of closed event-hour folders, atomic for readers.
//!
//! In a folder, the compactor writes `compact-<id>.parquet` (all rows of the small files,
//! re-sorted), then the manifest `_compacted-<id>.json` naming the files it replaces — the
//! commit point — and only then deletes the replaced files. Every lake reader lists through
//! [`VisibleStore`], which hides a compacted file until its manifest exists and hides the
//! files a manifest replaces. So a reader's listing shows the old set or the new set, never
//! both and never neither. The manifests stay: the lander reads the replaced names from them
//! to know what has landed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use serde::{Deserialize, Serialize};

/// A compaction manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// file name (in the same folder) of the compacted file
    pub output: String,
    /// file names (in the same folder) it replaces
    pub replaced: Vec<String>,
}

pub const MANIFEST_PREFIX: &str = "_compacted-";
pub const COMPACT_PREFIX: &str = "compact-";

fn file_name(p: &Path) -> &str {
    p.filename().unwrap_or_default()
}

fn folder(p: &Path) -> String {
    let s = p.as_ref();
    s.rsplit_once('/')
        .map_or(String::new(), |(d, _)| d.to_string())
}

/// Which objects of a listing are visible, given the manifests among them.
async fn visible(
    inner: &Arc<dyn ObjectStore>,
    objects: Vec<ObjectMeta>,
) -> object_store::Result<Vec<ObjectMeta>> {
    let mut committed: HashMap<String, HashSet<String>> = HashMap::new();
    let mut hidden: HashMap<String, HashSet<String>> = HashMap::new();
    for m in objects
        .iter()
        .filter(|m| file_name(&m.location).starts_with(MANIFEST_PREFIX))
    {
        let bytes = inner.get(&m.location).await?.bytes().await?;
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        let dir = folder(&m.location);
        committed
            .entry(dir.clone())
            .or_default()
            .insert(manifest.output.clone());
        hidden.entry(dir).or_default().extend(manifest.replaced);
    }
    Ok(objects
        .into_iter()
        .filter(|m| {
            let name = file_name(&m.location);
            let dir = folder(&m.location);
            if name.starts_with(COMPACT_PREFIX) {
                return committed.get(&dir).is_some_and(|c| c.contains(name));
            }
            !hidden.get(&dir).is_some_and(|h| h.contains(name))
        })
        .collect())
}

/// An object store whose listings show only committed data (see the module docs).
#[derive(Debug)]
pub struct VisibleStore {
    inner: Arc<dyn ObjectStore>,
    /// where the lake starts: readers (the SQL engine) see nothing outside it — on a
    /// `file://` lake the store is the local file system, and `/etc` is not the lake's
    root: Path,
}

impl VisibleStore {
    pub fn new(inner: Arc<dyn ObjectStore>, root: Path) -> Self {
        VisibleStore { inner, root }
    }

    /// Refuses a path outside the lake.
    fn inside(&self, location: &Path) -> object_store::Result<()> {
        if self.root.as_ref().is_empty() || location.prefix_matches(&self.root) {
            Ok(())
        } else {
            Err(object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: format!("outside the lake (rooted at /{})", self.root).into(),
            })
        }
    }

    /// A listing prefix inside the lake (none: the lake's root).
    fn prefix_inside(&self, prefix: Option<&Path>) -> object_store::Result<Option<Path>> {
        match prefix {
            None if self.root.as_ref().is_empty() => Ok(None),
            None => Ok(Some(self.root.clone())),
            Some(p) => self.inside(p).map(|_| Some(p.clone())),
        }
    }
}

impl fmt::Display for VisibleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Visible({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for VisibleStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inside(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inside(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inside(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inside(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let root = self.root.clone();
        let checked = locations
            .map(move |l| {
                let l = l?;
                if root.as_ref().is_empty() || l.prefix_matches(&root) {
                    Ok(l)
                } else {
                    Err(object_store::Error::PermissionDenied {
                        path: l.to_string(),
                        source: "outside the lake".into(),
                    })
                }
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = self.prefix_inside(prefix);
        stream::once(async move {
            let prefix = prefix?;
            let all: Vec<ObjectMeta> = inner.list(prefix.as_ref()).try_collect().await?;
            visible(&inner, all).await
        })
        .map_ok(|v| stream::iter(v.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let prefix = self.prefix_inside(prefix)?;
        let mut r = self.inner.list_with_delimiter(prefix.as_ref()).await?;
        r.objects = visible(&self.inner, r.objects).await?;
        Ok(r)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inside(from)?;
        self.inside(to)?;
        self.inner.copy_opts(from, to, options).await
    }
}

/// What a compaction run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CompactReport {
    pub folders_compacted: u64,
    pub files_replaced: u64,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// folders skipped because their hour is not closed yet
    pub folders_open: u64,
}

impl super::Lake {
    /// Merges the files of every closed event-hour folder (its hour ended more than `grace`
    /// ago) that holds more than one file into one, atomically for readers.
    pub async fn compact_events(
        &self,
        grace: std::time::Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<CompactReport, super::LakeError> {
        use super::LakeError;
        let prefix = self.path(super::layout::EVENTS);
        let all = self.list_raw(super::layout::EVENTS).await?;
        let visible_now = visible(&self.raw, all)
            .await
            .map_err(|source| LakeError::Object {
                path: prefix.to_string(),
                source,
            })?;
        let mut by_folder: std::collections::BTreeMap<String, Vec<ObjectMeta>> = Default::default();
        for m in visible_now {
            let name = file_name(&m.location);
            if name.ends_with(".parquet") {
                by_folder.entry(folder(&m.location)).or_default().push(m);
            }
        }
        let mut report = CompactReport::default();
        for (dir, files) in by_folder {
            if files.len() < 2 {
                continue;
            }
            let Some(hour_end) =
                hour_end_of(self.relative(&Path::from(dir.as_str())).unwrap_or(""))
            else {
                continue;
            };
            let closed_at =
                hour_end + chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::hours(2));
            if closed_at > now {
                report.folders_open += 1;
                continue;
            }
            self.compact_folder(&dir, &files, &mut report).await?;
        }
        Ok(report)
    }

    async fn compact_folder(
        &self,
        dir: &str,
        files: &[ObjectMeta],
        report: &mut CompactReport,
    ) -> Result<(), super::LakeError> {
        use super::LakeError;
        let mut batches = Vec::new();
        for f in files {
            let bytes = self
                .raw
                .get(&f.location)
                .await
                .map_err(|source| LakeError::Object {
                    path: f.location.to_string(),
                    source,
                })?
                .bytes()
                .await
                .map_err(|source| LakeError::Object {
                    path: f.location.to_string(),
                    source,
                })?;
            report.bytes_before += bytes.len() as u64;
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|source| LakeError::Parquet {
                        path: f.location.to_string(),
                        source,
                    })?;
            for b in reader {
                batches.push(b.map_err(|e| LakeError::Data {
                    path: f.location.to_string(),
                    reason: e.to_string(),
                })?);
            }
        }
        let data_err = |reason: String| LakeError::Data {
            path: dir.to_string(),
            reason,
        };
        let schema = super::events_file_schema();
        let merged = arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| data_err(e.to_string()))?;
        let sorted = sort_for_queries(&merged).map_err(data_err)?;
        let id = uuid::Uuid::now_v7();
        let output = format!("{COMPACT_PREFIX}{id}.parquet");
        let bytes = super::write_parquet(&sorted).map_err(data_err)?;
        report.bytes_after += bytes.len() as u64;
        let dir_path = Path::from(dir);
        let put = |name: &str, data: Bytes| {
            let path = dir_path.clone().join(name);
            let raw = self.raw.clone();
            async move {
                raw.put(&path, PutPayload::from(data))
                    .await
                    .map_err(|source| LakeError::Object {
                        path: path.to_string(),
                        source,
                    })
            }
        };
        put(&output, bytes).await?;
        let manifest = Manifest {
            output: output.clone(),
            replaced: files
                .iter()
                .map(|f| file_name(&f.location).to_string())
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| data_err(e.to_string()))?;
        // the commit point: from here on readers see the compacted file only
        put(&format!("{MANIFEST_PREFIX}{id}.json"), Bytes::from(text)).await?;
        for f in files {
            match self.raw.delete(&f.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(LakeError::Object {
                        path: f.location.to_string(),
                        source,
                    });
                }
            }
        }
        report.folders_compacted += 1;
        report.files_replaced += files.len() as u64;
        report.rows += sorted.num_rows() as u64;
        Ok(())
    }
}

/// The end of the hour an `events/dt=…/hour=…` folder holds.
fn hour_end_of(relative_dir: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let rest = relative_dir.strip_prefix("events/")?;
    let (dt, hour) = rest.split_once('/')?;
    let date = chrono::NaiveDate::parse_from_str(dt.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
    let hour: u32 = hour.strip_prefix("hour=")?.parse().ok()?;
    let start = date.and_hms_opt(hour, 0, 0)?.and_utc();
    Some(start + chrono::Duration::hours(1))
}

/// Rows ordered by event type, user, then time (the lander's order).
fn sort_for_queries(
    batch: &arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, String> {
    use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| format!("column {name} missing"))
    };
    let columns = vec![
        SortColumn {
            values: col("event_type")?,
            options: None,
        },
        SortColumn {
            values: col("user_id")?,
            options: None,
        },
        SortColumn {
            values: col("event_ts")?,
            options: None,
        },
    ];
    let idx = lexsort_to_indices(&columns, None).map_err(|e| e.to_string())?;
    take_record_batch(batch, &idx).map_err(|e| e.to_string())
}
