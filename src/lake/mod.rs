//! The lake: Parquet files on object storage (local folder, S3-compatible, in-memory), with
//! the layout of ARCHITECTURE.md. The only module that names `object_store`.
//!
//! ```text
//! events/dt=YYYY-MM-DD/hour=HH/part-<topic>-<partition>-<first_offset>-<last_offset>.parquet
//! dlq/land/dt=YYYY-MM-DD/part-<topic>-<partition>-<first_offset>-<last_offset>.parquet
//! ```
//!
//! A data file is written with one atomic put (local: temp file + rename; S3: PUT), so a
//! reader never sees half a file. File names carry the Kafka coordinates of their rows; the
//! lander derives "what has landed" from them (see [`crate::land`]).

pub mod compact;
pub mod layout;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use url::Url;

use crate::config::LakeConfig;

pub use layout::{DataFile, FileKind};

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("lake {url}: opening the store: {source}")]
    Open {
        url: String,
        source: object_store::Error,
    },
    #[error("lake object {path}: {source}")]
    Object {
        path: String,
        source: object_store::Error,
    },
    #[error("lake object {path}: writing Parquet: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("lake object {path}: {reason}")]
    Data { path: String, reason: String },
    #[error("lake bucket {url}: {reason}")]
    Bucket { url: String, reason: String },
}

/// `hdfs://authority/path` → (`hdfs://authority`, `path`): the store is the file system
/// (a namenode `host:port` or an HA name service), the lake a folder in it.
fn hdfs_url(url: &str) -> Result<(String, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(format!(
            "{scheme}:// needs a namenode or name service (hdfs://namenode:8020/path); \
             the default file system of core-site.xml is not read"
        ));
    }
    if path.trim_matches('/').is_empty() {
        return Err(
            "name the lake's folder (hdfs://namenode:8020/bookrec/lake), not the \
             file system's root"
                .into(),
        );
    }
    let parsed = Url::parse(url).map_err(|e| e.to_string())?;
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err("no user, query or fragment: the HDFS user is $HADOOP_USER_NAME".into());
    }
    Ok((format!("{scheme}://{authority}"), path.to_string()))
}

#[cfg(feature = "hdfs")]
fn open_hdfs(authority: &str, cfg: &LakeConfig) -> Result<Arc<dyn ObjectStore>, String> {
    let store = hdfs_native_object_store::HdfsObjectStoreBuilder::new()
        .with_url(authority)
        .with_config(cfg.hdfs_config.clone())
        .build()
        .map_err(|e| format!("opening the HDFS client: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "hdfs"))]
fn open_hdfs(_authority: &str, cfg: &LakeConfig) -> Result<Arc<dyn ObjectStore>, String> {
    let _ = &cfg.hdfs_config;
    Err(
        "this bookrec was built without HDFS support: build it with \
         `cargo build --release --features hdfs`"
            .into(),
    )
}

/// What [`ensure_bucket`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketState {
    /// the lake is not on S3 (a folder is created when the lake opens)
    NotS3,
    Existed,
    Created,
}

/// Creates the S3 bucket of `lake.url` when it is missing (`bookrec init`; MinIO and other
/// S3 servers start without buckets). object_store has no bucket API, so this sends the two
/// S3 requests itself — `HEAD /bucket`, then `PUT /bucket` on a 404 — signed with
/// object_store's SigV4 signer and the lake's credentials, each within `timeout`.
pub async fn ensure_bucket(
    cfg: &LakeConfig,
    timeout: std::time::Duration,
) -> Result<BucketState, LakeError> {
    use object_store::aws::{AwsAuthorizer, AwsCredential};
    use object_store::client::{HttpRequest, HttpRequestBody};

    let Some(rest) = cfg.url.trim().strip_prefix("s3://") else {
        return Ok(BucketState::NotS3);
    };
    let bucket = rest.split('/').next().unwrap_or_default();
    let fail = |reason: String| LakeError::Bucket {
        url: format!("s3://{bucket}"),
        reason,
    };
    if bucket.is_empty() {
        return Err(fail("s3:// needs a bucket".into()));
    }
    let endpoint = if cfg.s3_endpoint.is_empty() {
        format!("https://s3.{}.amazonaws.com", cfg.s3_region)
    } else {
        cfg.s3_endpoint.trim_end_matches('/').to_string()
    };
    let url = if cfg.s3_path_style {
        format!("{endpoint}/{bucket}")
    } else {
        let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", &endpoint));
        format!("{scheme}://{bucket}.{host}")
    };
    if url.starts_with("http://") && !cfg.s3_allow_http {
        return Err(fail(format!(
            "{url} is plain HTTP and lake.s3_allow_http is false"
        )));
    }
    let credential = AwsCredential {
        key_id: cfg.s3_access_key_id.clone(),
        secret_key: cfg.s3_secret_access_key.clone(),
        token: None,
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(format!("HTTP client: {e}")))?;
    let send = |method: reqwest::Method| {
        let mut request = HttpRequest::new(HttpRequestBody::empty());
        *request.method_mut() = method.clone();
        *request.uri_mut() = url
            .parse()
            .map_err(|e| fail(format!("{url} is not a URL: {e}")))?;
        if !credential.key_id.is_empty() {
            AwsAuthorizer::new(&credential, "s3", &cfg.s3_region).authorize(&mut request, None);
        }
        Ok::<_, LakeError>(
            client
                .request(method, &url)
                .headers(request.headers().clone())
                .send(),
        )
    };
    let head = send(reqwest::Method::HEAD)?
        .await
        .map_err(|e| fail(format!("HEAD {url}: {e}")))?;
    match head.status().as_u16() {
        200 => return Ok(BucketState::Existed),
        404 => {}
        code => return Err(fail(format!("HEAD {url} answered {code}"))),
    }
    let put = send(reqwest::Method::PUT)?
        .await
        .map_err(|e| fail(format!("PUT {url}: {e}")))?;
    let code = put.status().as_u16();
    if put.status().is_success() {
        return Ok(BucketState::Created);
    }
    let body = put.text().await.unwrap_or_default();
    // another `init` won the race: the bucket is there, and ours
    if body.contains("BucketAlreadyOwnedByYou") {
        return Ok(BucketState::Existed);
    }
    Err(fail(format!(
        "PUT {url} answered {code}: {}",
        body.chars().take(300).collect::<String>()
    )))
}

/// An opened lake: the store and where the lake starts inside it.
#[derive(Clone, Debug)]
pub struct Lake {
    /// what readers use: listings show committed data only (see [`compact`])
    store: Arc<dyn ObjectStore>,
    /// the store itself, for the lander's and compactor's bookkeeping
    raw: Arc<dyn ObjectStore>,
    /// `scheme://authority` under which the store is registered with DataFusion.
    store_url: Url,
    /// Where the lake starts inside the store.
    root: Path,
    display: String,
    /// `lake.sources_dir`: the source views every SQL session over the lake has
    sources_dir: Option<std::path::PathBuf>,
}

/// fsync of a file and of the folder that names it (the rename that published it).
fn sync_file_and_folder(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Lake {
    /// Opens the lake of `cfg` (its store and its source views' folder).
    pub fn open(cfg: &LakeConfig) -> Result<Lake, LakeError> {
        let dir = cfg.sources_dir.trim();
        let sources = (!dir.is_empty()).then(|| std::path::PathBuf::from(dir));
        Ok(Lake::open_store(cfg)?.with_sources_dir(sources))
    }

    fn open_store(cfg: &LakeConfig) -> Result<Lake, LakeError> {
        let url = cfg.url.trim();
        let bad = |reason: &str| LakeError::Url {
            url: crate::config::redact_url(url),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(bad("file:// needs a path"));
            }
            let dir = std::path::Path::new(path);
            std::fs::create_dir_all(dir).map_err(|e| bad(&format!("creating {path}: {e}")))?;
            let abs = dir
                .canonicalize()
                .map_err(|e| bad(&format!("resolving {path}: {e}")))?;
            let root = Path::from_absolute_path(&abs).map_err(|e| bad(&e.to_string()))?;
            Ok(Lake::with_store(
                Arc::new(LocalFileSystem::new()),
                Url::parse("file:///").map_err(|e| bad(&e.to_string()))?,
                root,
                format!("file://{}", abs.display()),
            ))
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("s3:// needs a bucket"));
            }
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(&cfg.s3_region)
                .with_allow_http(cfg.s3_allow_http)
                .with_virtual_hosted_style_request(!cfg.s3_path_style);
            if !cfg.s3_endpoint.is_empty() {
                b = b.with_endpoint(&cfg.s3_endpoint);
            }
            if !cfg.s3_access_key_id.is_empty() {
                b = b
                    .with_access_key_id(&cfg.s3_access_key_id)
                    .with_secret_access_key(&cfg.s3_secret_access_key);
            }
            let store = b.build().map_err(|source| LakeError::Open {
                url: url.to_string(),
                source,
            })?;
            Ok(Lake::with_store(
                Arc::new(store),
                Url::parse(&format!("s3://{bucket}")).map_err(|e| bad(&e.to_string()))?,
                Path::from(prefix.trim_matches('/')),
                url.to_string(),
            ))
        } else if url.starts_with("hdfs://") || url.starts_with("viewfs://") {
            let (authority, prefix) = hdfs_url(url).map_err(|reason| bad(&reason))?;
            let store = open_hdfs(&authority, cfg).map_err(|reason| bad(&reason))?;
            Ok(Lake::with_store(
                store,
                Url::parse(&authority).map_err(|e| bad(&e.to_string()))?,
                Path::from(prefix.trim_matches('/')),
                url.to_string(),
            ))
        } else if url.starts_with("memory://") {
            Lake::in_memory()
        } else {
            Err(bad(
                "use file://PATH, s3://BUCKET[/PREFIX], hdfs://NAMENODE[:PORT]/PATH or memory://",
            ))
        }
    }

    /// A fresh in-process lake.
    pub fn in_memory() -> Result<Lake, LakeError> {
        let store_url = Url::parse("memory://").map_err(|e| LakeError::Url {
            url: "memory://".into(),
            reason: e.to_string(),
        })?;
        Ok(Lake::with_store(
            Arc::new(InMemory::new()),
            store_url,
            Path::default(),
            "memory://".into(),
        ))
    }

    fn with_store(raw: Arc<dyn ObjectStore>, store_url: Url, root: Path, display: String) -> Lake {
        Lake {
            store: Arc::new(compact::VisibleStore::new(raw.clone(), root.clone())),
            raw,
            store_url,
            root,
            display,
            sources_dir: None,
        }
    }

    /// The folder of source views (`lake.sources_dir`), when one is configured.
    pub fn sources_dir(&self) -> Option<&std::path::Path> {
        self.sources_dir.as_deref()
    }

    /// This lake with `dir` as its source views' folder (`None`: none).
    pub fn with_sources_dir(mut self, dir: Option<std::path::PathBuf>) -> Lake {
        self.sources_dir = dir;
        self
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// `scheme://authority` to register the store under (DataFusion).
    pub fn store_url(&self) -> &Url {
        &self.store_url
    }

    /// The URL of a folder of the lake, as DataFusion's listing tables want it.
    pub fn folder_url(&self, folder: &str) -> String {
        let root = self.root.as_ref().trim_matches('/');
        // the authority: a bucket, or an HDFS namenode with its port
        let host = self.store_url.authority();
        let scheme = self.store_url.scheme();
        let folder = folder.trim_matches('/');
        if root.is_empty() {
            format!("{scheme}://{host}/{folder}/")
        } else {
            format!("{scheme}://{host}/{root}/{folder}/")
        }
    }

    /// Whether a URL (as DataFusion resolves a `LOCATION` or `COPY … TO` target) names a
    /// place inside the lake.
    pub fn contains_url(&self, url: &str) -> bool {
        let Ok(u) = Url::parse(url) else {
            return false;
        };
        if u.scheme() != self.store_url.scheme() || u.authority() != self.store_url.authority() {
            return false;
        }
        let root = self.root.as_ref().trim_matches('/');
        let path = u.path().trim_start_matches('/');
        root.is_empty()
            || path == root
            || path
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// A path inside the lake.
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.root.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// The lake-relative form of a store path.
    pub fn relative<'a>(&self, path: &'a Path) -> Option<&'a str> {
        let s = path.as_ref();
        let root = self.root.as_ref();
        if root.is_empty() {
            return Some(s);
        }
        s.strip_prefix(root).map(|r| r.trim_start_matches('/'))
    }

    /// Writes an object in one atomic put. On a `file://` lake the file and its folder are
    /// then fsynced, so a put that returned survives a power loss: the lander commits Kafka
    /// offsets only after the puts of the files that hold them returned (S3 acknowledges a
    /// PUT once it is durable).
    pub async fn put(&self, relative: &str, data: Bytes) -> Result<(), LakeError> {
        let path = self.path(relative);
        let err = |source| LakeError::Object {
            path: path.to_string(),
            source,
        };
        self.store
            .put(&path, PutPayload::from(data))
            .await
            .map_err(err)?;
        if self.store_url.scheme() == "file" {
            let file = std::path::PathBuf::from(format!("/{}", path.as_ref()));
            let synced = tokio::task::spawn_blocking(move || sync_file_and_folder(&file))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            synced.map_err(|e| {
                err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })
            })?;
        }
        Ok(())
    }

    pub async fn get(&self, relative: &str) -> Result<Bytes, LakeError> {
        let path = self.path(relative);
        let err = |source| LakeError::Object {
            path: path.to_string(),
            source,
        };
        self.store
            .get(&path)
            .await
            .map_err(err)?
            .bytes()
            .await
            .map_err(err)
    }

    /// [`Lake::get`], with `None` for an object that does not exist.
    pub async fn get_opt(&self, relative: &str) -> Result<Option<Bytes>, LakeError> {
        match self.get(relative).await {
            Ok(b) => Ok(Some(b)),
            Err(LakeError::Object {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn delete(&self, relative: &str) -> Result<(), LakeError> {
        let path = self.path(relative);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(LakeError::Object {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Every object under a lake folder (recursively), as readers see it.
    pub async fn list(&self, folder: &str) -> Result<Vec<ObjectMeta>, LakeError> {
        list_all(&self.store, &self.path(folder)).await
    }

    /// Every object under a lake folder, including ones readers do not see.
    async fn list_raw(&self, folder: &str) -> Result<Vec<ObjectMeta>, LakeError> {
        list_all(&self.raw, &self.path(folder)).await
    }

    /// Every data file ever landed under a folder, parsed from the names: the files that
    /// exist (visible or not) and those that compaction manifests say they replaced.
    pub async fn data_files(&self, folder: &str) -> Result<Vec<DataFile>, LakeError> {
        let objects = self.list_raw(folder).await?;
        let mut out = Vec::new();
        for m in &objects {
            let Some(rel) = self.relative(&m.location) else {
                continue;
            };
            if let Some(f) = DataFile::parse(rel) {
                out.push(f);
            } else if let Some((dir, name)) = rel.rsplit_once('/')
                && name.starts_with(compact::MANIFEST_PREFIX)
            {
                let bytes = self.get(rel).await?;
                let manifest: compact::Manifest =
                    serde_json::from_slice(&bytes).map_err(|e| LakeError::Data {
                        path: rel.to_string(),
                        reason: format!("compaction manifest: {e}"),
                    })?;
                out.extend(
                    manifest
                        .replaced
                        .iter()
                        .filter_map(|r| DataFile::parse(&format!("{dir}/{r}"))),
                );
            }
        }
        Ok(out)
    }
}

async fn list_all(
    store: &Arc<dyn ObjectStore>,
    prefix: &Path,
) -> Result<Vec<ObjectMeta>, LakeError> {
    store
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|source| LakeError::Object {
            path: prefix.to_string(),
            source,
        })
}

impl std::fmt::Display for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Schema of the landed `events` files: the event schema plus the Kafka coordinates.
pub fn events_file_schema() -> SchemaRef {
    let mut fields: Vec<Field> = crate::event::arrow::schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("kafka_partition", DataType::Int32, false));
    fields.push(Field::new("kafka_offset", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Schema of a CDC change table (`cdc/<table>/`): one row per Debezium change.
pub fn cdc_changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("op", DataType::Utf8, false),
        Field::new("ts_ms", DataType::Int64, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("before", DataType::Utf8, true),
        Field::new("after", DataType::Utf8, true),
        // a partial update (MongoDB without the full document); absent in files landed
        // before it existed, which read it as null
        Field::new("patch", DataType::Utf8, true),
        Field::new("source_db", DataType::Utf8, true),
        Field::new("source_table", DataType::Utf8, true),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

/// A Debezium snapshot of `source_db.table` as a CDC change batch: one `r` (read) row per
/// `(key JSON, after JSON)`, at `ts_ms`, offsets 0.. in partition 0 — what the CDC lander
/// writes for a connector's initial snapshot (the demo's catalogue, test fixtures).
pub fn cdc_snapshot(
    source_db: &str,
    table: &str,
    ts_ms: i64,
    rows: &[(String, String)],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
    let n = rows.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["r"; n])),
        Arc::new(Int64Array::from(vec![ts_ms; n])),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.as_str()),
        )),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.as_str()),
        )),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from(vec![Some(source_db); n])),
        Arc::new(StringArray::from(vec![Some(table); n])),
        Arc::new(Int32Array::from(vec![0; n])),
        Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(cdc_changes_schema(), cols)
}

/// Schema of the lander's dead letters.
pub fn dead_letters_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("code", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, true),
        Field::new(
            "landed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// The schema of a published list in the lake ([`layout::SIMILAR_BOOKS`],
/// [`layout::POPULAR_BOOKS`]): `<key>, pos, <item>, score`.
pub fn ranked_list_schema(key: &str, item: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(key, DataType::Utf8, false),
        Field::new("pos", DataType::Int64, false),
        Field::new(item, DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
    ]))
}

/// The batches of one Parquet file held in memory.
pub fn read_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, String> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| e.to_string())?
        .map(|b| b.map_err(|e| e.to_string()))
        .collect()
}

/// One Parquet file in memory: Snappy, page statistics.
pub fn write_parquet(batch: &RecordBatch) -> Result<Bytes, String> {
    // Snappy, not zstd: lake files are small (one per Kafka partition and event hour), and
    // the Parquet reader builds a zstd compression and decompression context for every
    // column chunk it reads: on ML-1M's 23k hourly files that setup was ~20% of a full
    // scan's CPU (BENCHMARKS.md, batch). Snappy's codec has no such state.
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("bookrec {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut out = Vec::new();
    let mut w =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdfs_urls_name_a_file_system_and_a_folder_in_it() {
        assert_eq!(
            hdfs_url("hdfs://namenode:8020/bookrec/lake").expect("url"),
            ("hdfs://namenode:8020".into(), "bookrec/lake".into())
        );
        // an HA name service has no port
        assert_eq!(
            hdfs_url("hdfs://ns1/lake/").expect("url"),
            ("hdfs://ns1".into(), "lake/".into())
        );
        assert_eq!(
            hdfs_url("viewfs://cluster/data/lake").expect("url").0,
            "viewfs://cluster"
        );
        for (bad, says) in [
            ("hdfs:///lake", "needs a namenode"),
            ("hdfs://namenode:8020", "name the lake's folder"),
            ("hdfs://namenode:8020/", "name the lake's folder"),
            ("hdfs://alice@namenode:8020/lake", "HADOOP_USER_NAME"),
            ("hdfs://namenode:8020/lake?x=1", "no user, query"),
            ("hdfs://namenode:notaport/lake", "invalid port"),
        ] {
            let e = hdfs_url(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    fn config(env: &[(&str, &str)]) -> crate::config::Config {
        crate::config::Config::load_with_env(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect("config")
    }

    #[test]
    fn the_hdfs_client_settings_come_from_config() {
        let c = config(&[
            ("BOOKREC__LAKE__URL", "hdfs://ns1/bookrec/lake"),
            (
                "BOOKREC__LAKE__HDFS_CONFIG",
                r#"{"dfs.ha.namenodes.ns1"="nn1,nn2","dfs.namenode.rpc-address.ns1.nn1"="nn1:8020"}"#,
            ),
        ]);
        assert_eq!(c.lake.hdfs_config.len(), 2);
        assert_eq!(c.lake.hdfs_config["dfs.ha.namenodes.ns1"], "nn1,nn2");
        // a bad URL is an error naming lake.url, with or without HDFS support
        let bad = config(&[("BOOKREC__LAKE__URL", "hdfs://ns1")]);
        let e = Lake::open(&bad.lake).expect_err("no folder").to_string();
        assert!(e.contains("lake.url") && e.contains("folder"), "{e}");
    }

    /// Without the `hdfs` feature an hdfs:// lake is refused with the way to get one.
    #[cfg(not(feature = "hdfs"))]
    #[test]
    fn without_the_feature_an_hdfs_lake_says_how_to_build_one() {
        let c = config(&[("BOOKREC__LAKE__URL", "hdfs://namenode:8020/bookrec/lake")]);
        let e = Lake::open(&c.lake)
            .expect_err("no HDFS support")
            .to_string();
        assert!(e.contains("--features hdfs"), "{e}");
    }

    /// With it, the lake opens without talking to the namenode (the client connects on
    /// first use), and its SQL locations carry the namenode's port.
    #[cfg(feature = "hdfs")]
    #[test]
    fn with_the_feature_an_hdfs_lake_opens_and_names_its_folders() {
        let c = config(&[("BOOKREC__LAKE__URL", "hdfs://127.0.0.1:1/bookrec/lake")]);
        let lake = Lake::open(&c.lake).expect("HDFS lake");
        assert_eq!(lake.store_url().as_str(), "hdfs://127.0.0.1:1");
        assert_eq!(
            lake.folder_url("events"),
            "hdfs://127.0.0.1:1/bookrec/lake/events/"
        );
        assert!(lake.contains_url("hdfs://127.0.0.1:1/bookrec/lake/features/x/"));
        assert!(!lake.contains_url("hdfs://127.0.0.1:2/bookrec/lake/features/x/"));
        assert!(!lake.contains_url("hdfs://127.0.0.1:1/elsewhere/"));
    }
}
