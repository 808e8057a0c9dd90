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

use crate::bus::{Bus, BusError, Consumer, Membership, Record};
use crate::config::Config;
use crate::event::dedup::Dedup;
use crate::event::{self, Event};
use crate::lake::layout::{self, DataFile, FileKind};
use crate::lake::{Lake, LakeError, dead_letters_schema, events_file_schema, write_parquet};

pub mod cdc;
pub mod metrics;

#[derive(Debug, thiserror::Error)]
pub enum LandError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("building the Parquet file {path}: {reason}")]
    Build { path: String, reason: String },
    #[error(
        "{topic}/{partition}: the lake holds offsets up to {landed}, but the topic's high \
         watermark is {high}: the topic was recreated or truncated, and its new records would \
         be taken for landed ones. Land it under another topic name, or move its files out of \
         the lake's events/ and dlq/ folders (they are named part-{topic}-{partition}-…)"
    )]
    TopicRecreated {
        topic: String,
        partition: i32,
        landed: i64,
        high: i64,
    },
    #[error("land metrics: {0}")]
    Metrics(String),
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
    /// CDC change rows landed
    pub changes: u64,
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
    Cdc { table: String },
}

/// A topic partition.
type Tp = (String, i32);
/// A bucket of a topic partition.
type Key = (String, i32, Bucket);

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
    changes: Vec<(cdc::Change, i64)>,
    first_offset: i64,
    last_offset: i64,
    bytes: usize,
    opened: Option<Instant>,
}

impl Buffer {
    fn rows(&self) -> usize {
        self.events.len() + self.dead.len() + self.changes.len()
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
    events_topic: String,
    /// CDC topic → table and the shape of its records
    cdc_tables: HashMap<String, (String, cdc::Shape)>,
    /// highest landed offset per bucket, from the lake
    landed: HashMap<Key, i64>,
    open: HashMap<Key, Buffer>,
    next_offset: HashMap<Tp, i64>,
    committed: HashMap<Tp, i64>,
    assigned: BTreeSet<Tp>,
    dedup: Dedup,
    buffered_bytes: usize,
    report: LandReport,
}

/// What `bookrec land` shows its operator: metrics and the readiness checks (`consumer`: the
/// loop turns; `kafka`: the broker answered the last lag probe and the last poll).
pub struct Observed {
    pub metrics: std::sync::Arc<metrics::LandMetrics>,
    pub health: std::sync::Arc<crate::http::Health>,
}

impl Observed {
    pub fn new() -> Result<Observed, prometheus::Error> {
        Ok(Observed {
            metrics: std::sync::Arc::new(metrics::LandMetrics::new()?),
            health: crate::http::Health::new(),
        })
    }
}

/// How often the lag gauge is measured (one watermark request per assigned partition).
const LAG_EVERY: Duration = Duration::from_secs(10);

/// Runs the lander until `cancel` (or, with `until_caught_up`, until every assigned
/// partition is read to its high watermark), writing what is buffered before returning.
/// Blocking: call it from a blocking thread inside a tokio runtime.
pub fn run(
    cfg: &Config,
    lake: &Lake,
    cancel: &CancellationToken,
    until_caught_up: bool,
) -> Result<LandReport, LandError> {
    let observed = Observed::new().map_err(|e| LandError::Metrics(e.to_string()))?;
    run_observed(cfg, lake, cancel, until_caught_up, &observed)
}

/// [`run`], reporting to `observed` as it goes.
pub fn run_observed(
    cfg: &Config,
    lake: &Lake,
    cancel: &CancellationToken,
    until_caught_up: bool,
    observed: &Observed,
) -> Result<LandReport, LandError> {
    let (metrics, health) = (&observed.metrics, &observed.health);
    // a poll lasts poll_timeout_ms, a rebalance or a file write a few seconds
    health.heartbeat("consumer", Duration::from_secs(120));
    let rt = tokio::runtime::Handle::current();
    let events_topic = cfg.kafka.topic.clone();
    let mut topics: Vec<&str> = vec![&events_topic];
    topics.extend(cfg.land.cdc.keys().map(String::as_str));
    let bus = Bus::connect(&cfg.kafka);
    if cfg.kafka.create_topics {
        let specs =
            crate::bus::pipeline_topics(&cfg.kafka, cfg.land.cdc.keys().map(String::as_str));
        rt.block_on(bus.create_topics(&specs))?;
    }
    let consumer = bus.consumer(&cfg.land.group_id, &topics, &[])?;
    let consumer = consumer.as_ref();
    let mut lander = Lander {
        cfg,
        lake,
        rt,
        events_topic: events_topic.clone(),
        cdc_tables: cfg
            .land
            .cdc
            .iter()
            .map(|(topic, table)| {
                let shape = if cfg.land.cdc_unwrapped.contains(topic) {
                    cdc::Shape::Unwrapped
                } else {
                    cdc::Shape::Envelope
                };
                (topic.clone(), (table.clone(), shape))
            })
            .collect(),
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
    let mut last_maintenance = Instant::now();
    let mut last_lag: Option<Instant> = None;
    // an empty assignment is said every few seconds (`--until-caught-up`: it gives up after
    // kafka.assignment_timeout_secs), so a waiting lander is never silent
    let mut unassigned_since = Some(Instant::now());
    let mut last_wait_log = Instant::now();
    let wait_log_every = if until_caught_up {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    };
    let assignment_timeout = Duration::from_secs(cfg.kafka.assignment_timeout_secs);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let polled = consumer.poll(poll_timeout);
        health.ok("consumer");
        for change in consumer.take_rebalances() {
            lander.rebalance(consumer, change)?;
        }
        let idle = match polled {
            Some(Ok(record)) => {
                lander.record(record)?;
                health.ok("kafka");
                false
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consume error; continuing");
                metrics.consume_errors.inc();
                health.fail("kafka", &e);
                true
            }
            None => true,
        };
        if last_maintenance.elapsed() >= Duration::from_millis(200) || idle {
            last_maintenance = Instant::now();
            if lander.maintain(false)? && lander.commit(consumer) {
                metrics
                    .last_commit
                    .set(chrono::Utc::now().timestamp_millis() as f64 / 1e3);
            }
            metrics.publish(&lander.report);
            metrics.assigned.set(lander.assigned.len() as i64);
            metrics.buffered_bytes.set(lander.buffered_bytes as i64);
        }
        if lander.assigned.is_empty() && last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
            // no partition to measure: still ask the broker, so that /readyz reports a broker
            // that is gone (librdkafka reports transport errors to its log, not to poll)
            last_lag = Some(Instant::now());
            match consumer.watermarks(&events_topic, 0, Duration::from_secs(5)) {
                Ok(_) => health.ok("kafka"),
                Err(e) => {
                    tracing::warn!(error = %e, "land: the broker does not answer; will retry");
                    health.fail("kafka", &e);
                }
            }
        } else if last_lag.is_none_or(|t| t.elapsed() >= LAG_EVERY) {
            last_lag = Some(Instant::now());
            match lander.lag(consumer) {
                Ok(lag) => {
                    metrics.lag.set(lag);
                    health.ok("kafka");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "measuring the lag; will retry");
                    health.fail("kafka", &e);
                }
            }
        }
        if lander.assigned.is_empty() {
            let waited = unassigned_since.get_or_insert_with(Instant::now).elapsed();
            if last_wait_log.elapsed() >= wait_log_every {
                last_wait_log = Instant::now();
                tracing::info!(group = %cfg.land.group_id, topics = ?topics,
                    waited_secs = waited.as_secs(), "land: waiting for a partition assignment \
                    (another member may hold every partition, or the broker still counts a dead \
                    member until its session times out)");
            }
            if until_caught_up && waited >= assignment_timeout {
                return Err(crate::bus::BusError::NoAssignment {
                    group: cfg.land.group_id.clone(),
                    topic: events_topic,
                    waited_secs: waited.as_secs(),
                }
                .into());
            }
            continue;
        }
        unassigned_since = None;
        if until_caught_up && idle {
            match lander.caught_up(consumer) {
                Ok(true) => break,
                Ok(false) if last_wait_log.elapsed() >= wait_log_every => {
                    last_wait_log = Instant::now();
                    tracing::info!(group = %cfg.land.group_id, behind = ?lander.behind(consumer),
                        "land: catching up: (topic, partition, next offset, high watermark)");
                }
                Ok(false) => {}
                // a slow broker answering the watermark request late is not fatal
                Err(e) => tracing::warn!(error = %e, "checking the lag; will retry"),
            }
        }
    }
    lander.maintain(true)?;
    lander.commit(consumer);
    metrics.publish(&lander.report);
    Ok(lander.report)
}

impl Lander<'_> {
    fn rebalance(&mut self, consumer: &dyn Consumer, change: Membership) -> Result<(), LandError> {
        match change {
            Membership::Revoked(parts) => {
                for tp in parts {
                    // unwritten rows go back to Kafka: the next owner re-reads them
                    let dropped: Vec<Key> = self
                        .open
                        .keys()
                        .filter(|(t, p, _)| *t == tp.0 && *p == tp.1)
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
                    self.landed
                        .retain(|(t, p, _), _| !(*t == tp.0 && *p == tp.1));
                    self.assigned.remove(&tp);
                    self.next_offset.remove(&tp);
                    self.committed.remove(&tp);
                }
                tracing::info!(partitions = ?self.assigned, "partitions revoked");
            }
            Membership::Assigned(parts) => {
                self.load_landed(&parts)?;
                self.check_not_recreated(consumer, &parts)?;
                for tp in parts {
                    self.assigned.insert(tp);
                }
                if let Ok(committed) = consumer.committed(Duration::from_secs(10)) {
                    for (t, p, off) in committed {
                        if let Some(o) = off {
                            self.committed.insert((t, p), o);
                        }
                    }
                }
                tracing::info!(partitions = ?self.assigned, "partitions assigned");
            }
        }
        Ok(())
    }

    /// A partition whose lake files hold offsets at or past its high watermark was recreated
    /// (or truncated): its new records would carry offsets the lake already names and be
    /// skipped as landed. That is reported and ends the run instead (an error with the
    /// coordinates), never a silent drop.
    fn check_not_recreated(&self, consumer: &dyn Consumer, parts: &[Tp]) -> Result<(), LandError> {
        for (topic, partition) in parts {
            let landed = self
                .landed
                .iter()
                .filter(|((t, p, _), _)| t == topic && p == partition)
                .map(|(_, m)| *m)
                .max();
            let Some(landed) = landed.filter(|m| *m >= 0) else {
                continue;
            };
            let high = match consumer.watermarks(topic, *partition, Duration::from_secs(10)) {
                Ok((_, high)) => high,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %topic, partition,
                        "land: reading the high watermark to check for a recreated topic");
                    continue;
                }
            };
            if landed >= high {
                return Err(LandError::TopicRecreated {
                    topic: topic.clone(),
                    partition: *partition,
                    landed,
                    high,
                });
            }
        }
        Ok(())
    }

    /// Rebuilds "highest landed offset per bucket" for these partitions from the lake.
    fn load_landed(&mut self, parts: &[Tp]) -> Result<(), LandError> {
        let mut files = self.rt.block_on(self.lake.data_files(layout::EVENTS))?;
        files.extend(
            self.rt
                .block_on(self.lake.data_files(layout::DEAD_LETTERS))?,
        );
        if !self.cdc_tables.is_empty() {
            files.extend(self.rt.block_on(self.lake.data_files(layout::CDC))?);
        }
        for f in files {
            if !parts
                .iter()
                .any(|(t, p)| *t == f.topic && *p == f.partition)
            {
                continue;
            }
            let bucket = match f.kind {
                FileKind::Events { dt, hour } => Bucket::Hour { dt, hour },
                FileKind::DeadLetters { .. } => Bucket::DeadLetters,
                FileKind::Cdc { table } => Bucket::Cdc { table },
            };
            let m = self
                .landed
                .entry((f.topic, f.partition, bucket))
                .or_insert(-1);
            *m = (*m).max(f.last_offset);
        }
        Ok(())
    }

    fn already_landed(&self, key: &Key, offset: i64) -> bool {
        self.landed.get(key).is_some_and(|m| *m >= offset)
    }

    fn record(&mut self, r: Record) -> Result<(), LandError> {
        self.report.records += 1;
        if r.topic == self.events_topic {
            self.report.partitions.insert(r.partition);
        }
        self.next_offset
            .insert((r.topic.clone(), r.partition), r.offset + 1);
        let size = r.payload.as_ref().map_or(0, Vec::len) + 64;
        if let Some((table, shape)) = self.cdc_tables.get(&r.topic).cloned() {
            return self.cdc_record(r, table, shape, size);
        }
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
                let key = (r.topic.clone(), r.partition, Bucket::Hour { dt, hour });
                if self.already_landed(&key, r.offset) {
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
                self.flush_if_full(&key)
            }
            Err((code, reason)) => self.dead_letter(r, code, reason, size),
        }
    }

    fn cdc_record(
        &mut self,
        r: Record,
        table: String,
        shape: cdc::Shape,
        size: usize,
    ) -> Result<(), LandError> {
        match cdc::parse_record(
            r.key.as_deref(),
            r.payload.as_deref(),
            shape,
            r.timestamp_ms,
        ) {
            Ok(None) => Ok(()), // a tombstone after a delete
            Ok(Some(change)) => {
                let key = (r.topic.clone(), r.partition, Bucket::Cdc { table });
                if self.already_landed(&key, r.offset) {
                    self.report.already_landed += 1;
                    return Ok(());
                }
                let buf = self.open.entry(key.clone()).or_default();
                buf.note(r.offset, size);
                buf.changes.push((change, r.offset));
                self.buffered_bytes += size;
                self.flush_if_full(&key)
            }
            Err(e) => self.dead_letter(r, e.code.to_string(), e.message, size),
        }
    }

    fn dead_letter(
        &mut self,
        r: Record,
        code: String,
        reason: String,
        size: usize,
    ) -> Result<(), LandError> {
        let key = (r.topic.clone(), r.partition, Bucket::DeadLetters);
        if self.already_landed(&key, r.offset) {
            self.report.already_landed += 1;
            return Ok(());
        }
        tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
            %code, %reason, "not a valid record; dead-lettered");
        let raw = r.payload.as_ref().map(|p| {
            let kept = &p[..p.len().min(MAX_DEAD_RAW)];
            String::from_utf8_lossy(kept).into_owned()
        });
        let buf = self.open.entry(key.clone()).or_default();
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
        self.flush_if_full(&key)
    }

    fn flush_if_full(&mut self, key: &Key) -> Result<(), LandError> {
        let full = self.open.get(key).is_some_and(|b| {
            b.rows() >= self.cfg.land.max_file_rows || b.bytes >= self.cfg.land.max_file_bytes
        });
        if full {
            self.flush(key)?;
        }
        Ok(())
    }

    /// Writes buckets that are old enough (all of them when `all`), and the largest ones
    /// while the buffer is over its limit. Returns whether anything was written.
    fn maintain(&mut self, all: bool) -> Result<bool, LandError> {
        let max_age = Duration::from_millis(self.cfg.land.max_file_age_ms);
        let mut due: Vec<Key> = self
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
            let mut by_size: Vec<(Key, usize)> = self
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
    /// Commits the offsets that are safe to commit; whether a commit succeeded.
    fn commit(&mut self, consumer: &dyn Consumer) -> bool {
        let mut offsets = Vec::new();
        for tp in &self.assigned {
            let Some(next) = self.next_offset.get(tp).copied() else {
                continue;
            };
            let safe = self
                .open
                .iter()
                .filter(|((t, p, _), _)| *t == tp.0 && *p == tp.1)
                .map(|(_, b)| b.first_offset)
                .min()
                .unwrap_or(next);
            if self.committed.get(tp).is_none_or(|c| *c < safe) {
                offsets.push((tp.0.clone(), tp.1, safe));
            }
        }
        if offsets.is_empty() {
            return false;
        }
        match consumer.commit(&offsets) {
            Ok(()) => {
                for (t, p, o) in offsets {
                    self.committed.insert((t, p), o);
                }
                true
            }
            // not fatal: the lake decides what has landed; a later commit catches up
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed");
                false
            }
        }
    }

    /// A partition's next offset to read (else the group's commit, else the low
    /// watermark) and its high watermark: one request to the broker.
    fn position(
        &self,
        consumer: &dyn Consumer,
        tp: &Tp,
    ) -> Result<(i64, i64), crate::bus::BusError> {
        let (low, high) = consumer.watermarks(&tp.0, tp.1, Duration::from_secs(10))?;
        let at = self
            .next_offset
            .get(tp)
            .or(self.committed.get(tp))
            .copied()
            .unwrap_or(low);
        Ok((at, high))
    }

    /// Records behind the high watermarks of the assigned partitions.
    fn lag(&self, consumer: &dyn Consumer) -> Result<i64, crate::bus::BusError> {
        let mut lag = 0;
        for tp in &self.assigned {
            let (at, high) = self.position(consumer, tp)?;
            lag += (high - at).max(0);
        }
        Ok(lag)
    }

    /// The assigned partitions not read to their high watermark: (topic, partition, next
    /// offset, high watermark), for the catching-up log.
    fn behind(&self, consumer: &dyn Consumer) -> Vec<(String, i32, i64, i64)> {
        self.assigned
            .iter()
            .filter_map(|tp| {
                let (at, high) = self.position(consumer, tp).ok()?;
                (at < high).then(|| (tp.0.clone(), tp.1, at, high))
            })
            .collect()
    }

    /// Whether every assigned partition is read to its high watermark; asks the broker
    /// only until the first one that is not (this runs at every idle poll).
    fn caught_up(&mut self, consumer: &dyn Consumer) -> Result<bool, LandError> {
        if self.assigned.is_empty() {
            return Ok(false);
        }
        for tp in &self.assigned {
            let (at, high) = self.position(consumer, tp)?;
            if at < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn flush(&mut self, key: &Key) -> Result<(), LandError> {
        let Some(mut buf) = self.open.remove(key) else {
            return Ok(());
        };
        self.buffered_bytes -= buf.bytes;
        if buf.rows() == 0 {
            return Ok(());
        }
        let (topic, partition, bucket) = key;
        let kind = match bucket {
            Bucket::Hour { dt, hour } => FileKind::Events {
                dt: dt.clone(),
                hour: *hour,
            },
            Bucket::DeadLetters => FileKind::DeadLetters {
                dt: layout::hour_bucket(&Utc::now()).0,
            },
            Bucket::Cdc { table } => FileKind::Cdc {
                table: table.clone(),
            },
        };
        let file = DataFile {
            kind,
            topic: topic.clone(),
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
            Bucket::DeadLetters => dead_batch(topic, *partition, &buf.dead),
            Bucket::Cdc { .. } => changes_batch(*partition, &buf.changes),
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
        self.report.changes += buf.changes.len() as u64;
        tracing::debug!(%path, rows = buf.rows(), bytes = n, "landed");
        Ok(())
    }
}

fn changes_batch(partition: i32, rows: &[(cdc::Change, i64)]) -> Result<RecordBatch, String> {
    let s = |f: &dyn Fn(&cdc::Change) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from_iter(rows.iter().map(|(c, _)| f(c))))
    };
    let columns: Vec<ArrayRef> = vec![
        s(&|c| Some(c.op.as_str())),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|(c, _)| c.ts_ms),
        )),
        s(&|c| Some(c.key.as_str())),
        s(&|c| c.before.as_deref()),
        s(&|c| c.after.as_deref()),
        s(&|c| c.patch.as_deref()),
        s(&|c| c.source_db.as_deref()),
        s(&|c| c.source_table.as_deref()),
        Arc::new(Int32Array::from(vec![partition; rows.len()])),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, o)| *o))),
    ];
    RecordBatch::try_new(crate::lake::cdc_changes_schema(), columns).map_err(|e| e.to_string())
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
