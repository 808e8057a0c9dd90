//! `bookrec land`: Kafka events → Parquet in the lake, exactly once.
//!
//! A consumer-group member reads `kafka.topic` and buffers events per (Kafka partition,
//! event-time hour). A bucket is written as one Parquet file when it reaches
//! `land.max_file_rows` / `land.max_file_bytes` / `land.max_file_age_ms` (or when all open
//! buckets together exceed `land.max_buffer_bytes`, or on shutdown), named after the Kafka
//! offsets of its rows: `events/dt=…/hour=…/part-<topic>-<partition>-<first>-<last>.parquet`.
//!
//! Exactly once, without Kafka transactions:
//! - within one (partition, hour) bucket, files are written in offset order and each holds
//!   every buffered row of the bucket, so "the bucket's highest landed offset" `M` means
//!   every row of that bucket at or below `M` is in the lake;
//! - on start and on every assignment the lander lists the lake and rebuilds `M` per
//!   (partition, bucket) from the file names, then skips any re-read record whose bucket
//!   already holds its offset: the lake, not the group's offset, decides what has landed;
//! - the group offset is committed after files are durable, and never past the first
//!   offset still buffered in an open bucket, so nothing unlanded is skipped on restart.
//!   A crash between a file write and the commit only causes re-reading, never a duplicate.
//! - on revocation, buffered rows of the revoked partitions are dropped unwritten: the new
//!   owner re-reads them from the committed offset.
//!
//! Records that are not valid events go to `dlq/land/` with topic, partition, offset and the
//! reason (same offset rules, one bucket per partition). Duplicate `event_id`s (e.g. a
//! collector re-sending after a crash) are dropped within `land.dedup_window_secs` /
//! `land.dedup_max_entries`, per process.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::bus::{BusError, KafkaConsumer, Membership, Record};
use crate::config::Config;
use crate::event::dedup::Dedup;
use crate::event::{self, Event};
use crate::lake::layout::{self, DataFile, FileKind};
use crate::lake::{Lake, LakeError, dead_letters_schema, events_file_schema, write_parquet};

#[derive(Debug, thiserror::Error)]
pub enum LandError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("building the Parquet file {path}: {reason}")]
    Build { path: String, reason: String },
    #[error("no partitions of {topic} were assigned within {waited_secs} s (is the topic there?)")]
    NoAssignment { topic: String, waited_secs: u64 },
}

/// What one run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LandReport {
    pub records: u64,
    pub events: u64,
    pub duplicates: u64,
    /// re-read records the lake already held
    pub already_landed: u64,
    pub dead_letters: u64,
    pub files: u64,
    pub bytes: u64,
    /// partitions this member consumed from
    pub partitions: BTreeSet<i32>,
}

/// A bucket key within one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Bucket {
    Hour { dt: String, hour: u32 },
    DeadLetters,
}

struct DeadRow {
    offset: i64,
    key: Option<String>,
    code: String,
    reason: String,
    raw: Option<String>,
}

#[derive(Default)]
struct Buffer {
    events: Vec<(Event, i64)>,
    dead: Vec<DeadRow>,
    first_offset: i64,
    last_offset: i64,
    bytes: usize,
    opened: Option<Instant>,
}

impl Buffer {
    fn rows(&self) -> usize {
        self.events.len() + self.dead.len()
    }

    fn note(&mut self, offset: i64, bytes: usize) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
            self.first_offset = offset;
        }
        self.first_offset = self.first_offset.min(offset);
        self.last_offset = self.last_offset.max(offset);
        self.bytes += bytes;
    }
}

/// Longest raw text kept in a dead letter.
const MAX_DEAD_RAW: usize = 64 * 1024;

struct Lander<'a> {
    cfg: &'a Config,
    lake: &'a Lake,
    rt: tokio::runtime::Handle,
    topic: String,
    /// highest landed offset per (partition, bucket), from the lake
    landed: HashMap<(i32, Bucket), i64>,
    open: HashMap<(i32, Bucket), Buffer>,
    next_offset: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
    assigned: BTreeSet<i32>,
    dedup: Dedup,
    buffered_bytes: usize,
    report: LandReport,
}

/// Runs the lander until `cancel` (or, with `until_caught_up`, until every assigned
/// partition is read to its high watermark), writing what is buffered before returning.
/// Blocking: call it from a blocking thread inside a tokio runtime.
pub fn run(
    cfg: &Config,
    lake: &Lake,
    cancel: &CancellationToken,
    until_caught_up: bool,
) -> Result<LandReport, LandError> {
    let rt = tokio::runtime::Handle::current();
    let topic = cfg.kafka.topic.clone();
    if cfg.kafka.create_topics {
        rt.block_on(crate::bus::ensure_topics(&cfg.kafka, &[&topic]))?;
    }
    let consumer = KafkaConsumer::new(&cfg.kafka, &cfg.land.group_id, &[&topic])?;
    let mut lander = Lander {
        cfg,
        lake,
        rt,
        topic: topic.clone(),
        landed: HashMap::new(),
        open: HashMap::new(),
        next_offset: HashMap::new(),
        committed: HashMap::new(),
        assigned: BTreeSet::new(),
        dedup: Dedup::new(
            Duration::from_secs(cfg.land.dedup_window_secs),
            cfg.land.dedup_max_entries,
        ),
        buffered_bytes: 0,
        report: LandReport::default(),
    };
    let poll_timeout = Duration::from_millis(cfg.land.poll_timeout_ms.max(1));
    let started = Instant::now();
    let mut last_maintenance = Instant::now();
    let mut ever_assigned = false;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let polled = consumer.poll(poll_timeout);
        for change in consumer.take_rebalances() {
            lander.rebalance(&consumer, change)?;
            ever_assigned = true;
        }
        let idle = match polled {
            Some(Ok(record)) => {
                lander.record(record)?;
                false
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consume error; continuing");
                true
            }
            None => true,
        };
        if last_maintenance.elapsed() >= Duration::from_millis(200) || idle {
            last_maintenance = Instant::now();
            if lander.maintain(&consumer, false)? {
                lander.commit(&consumer);
            }
        }
        if until_caught_up && idle {
            if !ever_assigned {
                let waited = started.elapsed();
                if waited > Duration::from_secs(60) {
                    return Err(LandError::NoAssignment {
                        topic,
                        waited_secs: waited.as_secs(),
                    });
                }
                continue;
            }
            if lander.caught_up(&consumer)? {
                break;
            }
        }
    }
    lander.maintain(&consumer, true)?;
    lander.commit(&consumer);
    Ok(lander.report)
}

impl Lander<'_> {
    fn rebalance(&mut self, consumer: &KafkaConsumer, change: Membership) -> Result<(), LandError> {
        match change {
            Membership::Revoked(parts) => {
                for (_, p) in parts {
                    // unwritten rows go back to Kafka: the next owner re-reads them
                    let dropped: Vec<_> = self
                        .open
                        .keys()
                        .filter(|(bp, _)| *bp == p)
                        .cloned()
                        .collect();
                    for k in dropped {
                        if let Some(b) = self.open.remove(&k) {
                            self.buffered_bytes -= b.bytes;
                            // not landed: if this member gets the partition back and
                            // re-reads them, they are not duplicates
                            let ids: Vec<_> = b.events.iter().map(|(e, _)| e.event_id).collect();
                            self.dedup.forget(&ids);
                        }
                    }
                    self.assigned.remove(&p);
                    self.next_offset.remove(&p);
                    self.committed.remove(&p);
                    self.landed.retain(|(bp, _), _| *bp != p);
                }
                tracing::info!(partitions = ?self.assigned, "partitions revoked");
            }
            Membership::Assigned(parts) => {
                let new: Vec<i32> = parts
                    .iter()
                    .filter(|(t, _)| *t == self.topic)
                    .map(|(_, p)| *p)
                    .collect();
                self.load_landed(&new)?;
                for p in &new {
                    self.assigned.insert(*p);
                }
                if let Ok(committed) = consumer.committed(Duration::from_secs(10)) {
                    for (_, p, off) in committed {
                        if let Some(o) = off {
                            self.committed.insert(p, o);
                        }
                    }
                }
                tracing::info!(partitions = ?self.assigned, "partitions assigned");
            }
        }
        Ok(())
    }

    /// Rebuilds "highest landed offset per bucket" for these partitions from the lake.
    fn load_landed(&mut self, partitions: &[i32]) -> Result<(), LandError> {
        let mut files = self.rt.block_on(self.lake.data_files(layout::EVENTS))?;
        files.extend(
            self.rt
                .block_on(self.lake.data_files(layout::DEAD_LETTERS))?,
        );
        for f in files {
            if f.topic != self.topic || !partitions.contains(&f.partition) {
                continue;
            }
            let bucket = match f.kind {
                FileKind::Events { dt, hour } => Bucket::Hour { dt, hour },
                FileKind::DeadLetters { .. } => Bucket::DeadLetters,
            };
            let m = self.landed.entry((f.partition, bucket)).or_insert(-1);
            *m = (*m).max(f.last_offset);
        }
        Ok(())
    }

    fn record(&mut self, r: Record) -> Result<(), LandError> {
        self.report.records += 1;
        self.report.partitions.insert(r.partition);
        self.next_offset.insert(r.partition, r.offset + 1);
        let size = r.payload.as_ref().map_or(0, Vec::len) + 64;
        let parsed = match &r.payload {
            None => Err((
                "empty_value".to_string(),
                "the record has no value".to_string(),
            )),
            Some(p) => {
                Event::from_canonical(p).map_err(|e| (e.code.as_str().to_string(), e.message))
            }
        };
        match parsed {
            Ok(ev) => {
                let (dt, hour) = layout::hour_bucket(&ev.event_ts);
                let key = (r.partition, Bucket::Hour { dt, hour });
                if self.landed.get(&key).is_some_and(|m| *m >= r.offset) {
                    self.report.already_landed += 1;
                    return Ok(());
                }
                if !self.dedup.insert_new(&[ev.event_id], Instant::now())[0] {
                    self.report.duplicates += 1;
                    return Ok(());
                }
                let buf = self.open.entry(key.clone()).or_default();
                buf.note(r.offset, size);
                buf.events.push((ev, r.offset));
                self.buffered_bytes += size;
                let full = buf.rows() >= self.cfg.land.max_file_rows
                    || buf.bytes >= self.cfg.land.max_file_bytes;
                if full {
                    self.flush(&key)?;
                }
            }
            Err((code, reason)) => {
                let key = (r.partition, Bucket::DeadLetters);
                if self.landed.get(&key).is_some_and(|m| *m >= r.offset) {
                    self.report.already_landed += 1;
                    return Ok(());
                }
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    %code, %reason, "not an event; dead-lettered");
                let raw = r.payload.as_ref().map(|p| {
                    let kept = &p[..p.len().min(MAX_DEAD_RAW)];
                    String::from_utf8_lossy(kept).into_owned()
                });
                let buf = self.open.entry(key).or_default();
                buf.note(r.offset, size);
                buf.dead.push(DeadRow {
                    offset: r.offset,
                    key: r
                        .key
                        .as_ref()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    code,
                    reason,
                    raw,
                });
                self.buffered_bytes += size;
            }
        }
        Ok(())
    }

    /// Writes buckets that are old enough (all of them when `all`), and the largest ones
    /// while the buffer is over its limit. Returns whether anything was written.
    fn maintain(&mut self, _consumer: &KafkaConsumer, all: bool) -> Result<bool, LandError> {
        let max_age = Duration::from_millis(self.cfg.land.max_file_age_ms);
        let mut due: Vec<(i32, Bucket)> = self
            .open
            .iter()
            .filter(|(_, b)| all || b.opened.is_some_and(|t| t.elapsed() >= max_age))
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        let mut wrote = !due.is_empty();
        for k in due {
            self.flush(&k)?;
        }
        if self.buffered_bytes > self.cfg.land.max_buffer_bytes {
            let mut by_size: Vec<((i32, Bucket), usize)> = self
                .open
                .iter()
                .map(|(k, b)| (k.clone(), b.bytes))
                .collect();
            by_size.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
            for (k, _) in by_size {
                if self.buffered_bytes <= self.cfg.land.max_buffer_bytes / 2 {
                    break;
                }
                self.flush(&k)?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Commits, per partition, the first offset that is not yet in the lake.
    fn commit(&mut self, consumer: &KafkaConsumer) {
        let mut offsets = Vec::new();
        for p in &self.assigned {
            let Some(next) = self.next_offset.get(p).copied() else {
                continue;
            };
            let safe = self
                .open
                .iter()
                .filter(|((bp, _), _)| bp == p)
                .map(|(_, b)| b.first_offset)
                .min()
                .unwrap_or(next);
            if self.committed.get(p).is_none_or(|c| *c < safe) {
                offsets.push((self.topic.clone(), *p, safe));
            }
        }
        if offsets.is_empty() {
            return;
        }
        match consumer.commit(&offsets) {
            Ok(()) => {
                for (_, p, o) in offsets {
                    self.committed.insert(p, o);
                }
            }
            // not fatal: the lake decides what has landed; a later commit catches up
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }

    fn caught_up(&mut self, consumer: &KafkaConsumer) -> Result<bool, LandError> {
        if self.assigned.is_empty() {
            return Ok(false);
        }
        for p in self.assigned.clone() {
            let (low, high) = consumer.watermarks(&self.topic, p, Duration::from_secs(10))?;
            let position = self
                .next_offset
                .get(&p)
                .or(self.committed.get(&p))
                .copied()
                .unwrap_or(low);
            if position < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn flush(&mut self, key: &(i32, Bucket)) -> Result<(), LandError> {
        let Some(mut buf) = self.open.remove(key) else {
            return Ok(());
        };
        self.buffered_bytes -= buf.bytes;
        if buf.rows() == 0 {
            return Ok(());
        }
        let (partition, bucket) = key;
        let kind = match bucket {
            Bucket::Hour { dt, hour } => FileKind::Events {
                dt: dt.clone(),
                hour: *hour,
            },
            Bucket::DeadLetters => FileKind::DeadLetters {
                dt: layout::hour_bucket(&Utc::now()).0,
            },
        };
        let file = DataFile {
            kind,
            topic: self.topic.clone(),
            partition: *partition,
            first_offset: buf.first_offset,
            last_offset: buf.last_offset,
        };
        let path = file.relative_path();
        let batch = match bucket {
            Bucket::Hour { .. } => {
                // row order for query speed: by type, then user, then time
                buf.events.sort_by(|(a, _), (b, _)| {
                    (a.event_type.as_str(), a.key(), a.event_ts).cmp(&(
                        b.event_type.as_str(),
                        b.key(),
                        b.event_ts,
                    ))
                });
                events_batch(*partition, &buf.events)
            }
            Bucket::DeadLetters => dead_batch(&self.topic, *partition, &buf.dead),
        }
        .map_err(|reason| LandError::Build {
            path: path.clone(),
            reason,
        })?;
        let bytes = write_parquet(&batch).map_err(|reason| LandError::Build {
            path: path.clone(),
            reason,
        })?;
        let n = bytes.len() as u64;
        self.rt.block_on(self.lake.put(&path, bytes))?;
        self.landed.insert(key.clone(), buf.last_offset);
        self.report.files += 1;
        self.report.bytes += n;
        self.report.events += buf.events.len() as u64;
        self.report.dead_letters += buf.dead.len() as u64;
        tracing::debug!(%path, rows = buf.rows(), bytes = n, "landed");
        Ok(())
    }
}

fn events_batch(partition: i32, rows: &[(Event, i64)]) -> Result<RecordBatch, String> {
    let events: Vec<Event> = rows.iter().map(|(e, _)| e.clone()).collect();
    let base = event::arrow::to_record_batch(&events).map_err(|e| e.to_string())?;
    let mut columns: Vec<ArrayRef> = base.columns().to_vec();
    columns.push(Arc::new(Int32Array::from(vec![partition; rows.len()])));
    columns.push(Arc::new(Int64Array::from_iter_values(
        rows.iter().map(|(_, o)| *o),
    )));
    RecordBatch::try_new(events_file_schema(), columns).map_err(|e| e.to_string())
}

fn dead_batch(topic: &str, partition: i32, rows: &[DeadRow]) -> Result<RecordBatch, String> {
    let now = Utc::now().timestamp_micros();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| topic))),
        Arc::new(Int32Array::from(vec![partition; rows.len()])),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.key.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.code.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.raw.as_deref()),
        )),
        Arc::new(TimestampMicrosecondArray::from(vec![now; rows.len()]).with_timezone("UTC")),
    ];
    RecordBatch::try_new(dead_letters_schema(), columns).map_err(|e| e.to_string())
}
