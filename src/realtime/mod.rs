//! `bookrec stream`: the analysts' realtime SQL (`queries/realtime/`) run by DataFusion on
//! micro-batches of `user_behavior_logs`, each batch's results applied to the feature store
//! together with the offsets it covers, atomically and once (see [`crate::features`]).
//!
//! The loop: a consumer thread polls Kafka and cuts a micro-batch when it holds
//! `stream.max_batch_events` records or `stream.max_batch_ms` passed since its first one.
//! Records below the offsets the feature store holds are skipped (a restart resumes exactly
//! there, whatever Kafka's committed offsets say). Malformed records are counted and logged
//! with their coordinates and skipped; events older than the watermark (the newest event time
//! seen minus `stream.allowed_lateness_secs`) are counted as late and skipped. The batch's
//! events become the table `events` (the catalogue tables such as `books` come from the
//! lake), every query runs, and their rows become ops. Kafka offsets are committed after the
//! apply, as a hint for where to start reading.

pub mod metrics;
pub mod sink;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Membership, Record};
use crate::config::Config;
use crate::event::Event;
use crate::features::{Applied, FeatureStore, FeaturesError, Op, Span};
use crate::lake::Lake;
use crate::sql::catalog::{self, CatalogError, Kind, Query};
pub use metrics::StreamMetrics;
pub use sink::Sink;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Catalog(Vec<CatalogError>),
    #[error("{0}")]
    Session(#[from] crate::sql::SqlError),
    #[error("{0}")]
    Bus(#[from] crate::bus::BusError),
    #[error("{0}")]
    Features(#[from] crate::features::FeaturesError),
    #[error("{path}: running on the batch at {topic}/{partition}@{offset}: {reason}")]
    Query {
        path: String,
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("the consumer thread stopped: {0}")]
    Consumer(String),
    #[error(
        "{reason}; stream.on_state_lost = \"exit\": rebuild with `bookrec stream --from-lake` \
         under a new stream.group_id, or set stream.on_state_lost = \"rebuild\""
    )]
    StateLost { reason: String },
    #[error("the feature store failed for {secs} s (stream.redis_retry_max_secs): {source}")]
    Unavailable {
        secs: u64,
        source: crate::features::FeaturesError,
    },
    #[error(
        "--from-lake: the feature store already holds offsets of group {group}; a rebuild starts \
         from an empty group (set stream.group_id to a new one)"
    )]
    NotEmpty { group: String },
}

/// One realtime feature: its query and its sink.
#[derive(Debug, Clone)]
pub struct Feature {
    pub query: Query,
    pub sink: Sink,
}

impl Feature {
    /// Runs the query on what `events` holds now and turns its rows into ops; an error
    /// names the file and the Kafka coordinates of the batch (`at`).
    async fn ops(
        &self,
        ctx: &SessionContext,
        at: (&str, i32, i64),
    ) -> Result<Vec<crate::features::Op>, StreamError> {
        let fail = |reason: String| StreamError::Query {
            path: self.query.path.display().to_string(),
            topic: at.0.to_owned(),
            partition: at.1,
            offset: at.2,
            reason,
        };
        let sql = self.query.render(&chrono::Utc::now(), &HashMap::new());
        let out = crate::sql::query_read_only(ctx, &sql)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (ops, _skipped) = self.sink.ops(&out).map_err(fail)?;
        Ok(ops)
    }
}

/// Loads `queries/realtime/*.sql` and checks each against the micro-batch schema (the events
/// schema) and the catalogue tables of `ctx`: every error with its file and line.
pub async fn load(dir: &Path, ctx: &SessionContext) -> Result<Vec<Feature>, StreamError> {
    let queries = catalog::load_dir_kind(dir, Kind::Realtime).map_err(StreamError::Catalog)?;
    register_events(ctx, Vec::new())?;
    let mut features = Vec::new();
    let mut errors = Vec::new();
    for q in queries {
        let sink = match Sink::from_query(&q) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let sql = q.render(&chrono::Utc::now(), &HashMap::new());
        match crate::sql::plan_read_only(ctx, &sql).await {
            Ok(df) => {
                let schema = df.schema().as_arrow().clone();
                match sink.check(&q, &schema) {
                    Ok(()) => features.push(Feature { query: q, sink }),
                    Err(e) => errors.push(e),
                }
            }
            Err(e) => errors.push(CatalogError {
                path: q.path.clone(),
                line: q.sql_line,
                message: e.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(features)
    } else {
        Err(StreamError::Catalog(errors))
    }
}

fn register_events(
    ctx: &SessionContext,
    events: Vec<arrow::array::RecordBatch>,
) -> Result<(), StreamError> {
    let schema = crate::event::arrow::schema();
    let table = MemTable::try_new(schema, vec![events])
        .map_err(|e| StreamError::Session(crate::sql::SqlError::Query(e)))?;
    let _ = ctx.deregister_table("events");
    ctx.register_table("events", Arc::new(table))
        .map_err(|e| StreamError::Session(crate::sql::SqlError::Query(e)))?;
    Ok(())
}

/// What a rebuild from the lake did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RebuildReport {
    /// per partition: the lander's committed offset, below which every record is in the lake
    pub landed: BTreeMap<i32, i64>,
    pub events: u64,
    pub ops: u64,
}

/// `bookrec stream --from-lake`: runs the realtime queries once over the lake's events below
/// the lander's committed offsets (everything below them is durable in the lake: the lander
/// commits only what it has written), applies the result, then records exactly those offsets
/// so that [`run`] continues from Kafka where the lake ends. Lateness does not apply (the
/// lake holds what was landed). The group must have no offsets yet; a rebuild that fails
/// half-way is started again with a new group.
pub async fn rebuild_from_lake(
    cfg: &Config,
    lake: &Lake,
    store: &dyn FeatureStore,
) -> Result<RebuildReport, StreamError> {
    let group = &cfg.stream.group_id;
    if !store.offsets(group).await?.is_empty() {
        return Err(StreamError::NotEmpty {
            group: group.clone(),
        });
    }
    let landed = Bus::connect(&cfg.kafka).group_offsets(
        &cfg.land.group_id,
        &cfg.kafka.topic,
        Duration::from_secs(10),
    )?;
    let ctx = crate::sql::session(lake).await?;
    let session_err = |e| StreamError::Session(crate::sql::SqlError::Query(e));
    // the lake's events, kept aside while the queries are checked against a micro-batch
    let lake_events = ctx.deregister_table("events").map_err(session_err)?;
    let features = load(&cfg.stream.queries_dir, &ctx).await?;
    let mut report = RebuildReport {
        landed: landed.clone(),
        ..RebuildReport::default()
    };
    if let Some(t) = lake_events {
        // `events` = the landed events below the committed offsets
        ctx.deregister_table("events").map_err(session_err)?;
        ctx.register_table("lake_events", t).map_err(session_err)?;
        let cols: Vec<String> = crate::event::arrow::schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let filter = if landed.is_empty() {
            "FALSE".to_string()
        } else {
            landed
                .iter()
                .map(|(p, o)| format!("(kafka_partition = {p} AND kafka_offset < {o})"))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        let view = format!(
            "CREATE VIEW events AS SELECT {} FROM lake_events WHERE {filter}",
            cols.join(", ")
        );
        crate::sql::query(&ctx, &view).await?;
        let counted = crate::sql::query(&ctx, "SELECT count(*) FROM events").await?;
        report.events = counted
            .first()
            .and_then(|b| {
                arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).ok()
            })
            .map(|a| {
                use arrow::array::AsArray;
                a.as_primitive::<arrow::datatypes::Int64Type>().value(0) as u64
            })
            .unwrap_or(0);
        for f in &features {
            let ops = f.ops(&ctx, (&cfg.kafka.topic, -1, -1)).await?;
            for chunk in ops.chunks(10_000) {
                store.apply(group, chunk, &[]).await?;
            }
            report.ops += ops.len() as u64;
        }
    }
    let spans: Vec<Span> = landed
        .iter()
        .map(|(p, o)| Span {
            partition: *p,
            from: 0,
            to: *o,
        })
        .collect();
    store.apply(group, &[], &spans).await?;
    Ok(report)
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamReport {
    pub batches: u64,
    pub records: u64,
    pub events: u64,
    pub malformed: u64,
    pub late: u64,
    /// records below the stored offsets (already applied before)
    pub skipped: u64,
    pub ops: u64,
    pub replays: u64,
    /// time spent running queries and applying (not waiting for Kafka)
    pub busy_seconds: f64,
    /// event time → applied, seconds: (p50, p99, max) over the events of this run
    pub freshness_seconds: (f64, f64, f64),
}

/// From the poller to the applier.
enum Msg {
    /// the records of one micro-batch, read in `epoch` (a re-read after a state loss starts
    /// a new epoch; batches of an older one are dropped)
    Batch {
        epoch: u64,
        records: Vec<Record>,
    },
    CaughtUp,
}

/// From the applier to the poller.
enum Control {
    /// Kafka commits (a hint: the truth is in the feature store)
    Commit(Vec<(String, i32, i64)>),
    /// the feature store went back to these offsets (absent: nothing applied): drop what is
    /// in flight and read every owned partition again from there, as `epoch`
    Reread {
        epoch: u64,
        offsets: BTreeMap<i32, i64>,
    },
}

/// How often a waiting `--until-caught-up` says what it waits for.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// The poller's view of the partitions it owns: per partition the next offset to take. A
/// record below it was taken before (in this batch, a batch sent earlier, or applied: it
/// comes again after a rebalance, when librdkafka re-fetches from the committed offset) and
/// is dropped; a record above it means the consumer is ahead of what the feature store holds
/// (Kafka's commit is only a hint), so the partition is sought back once.
#[derive(Default)]
struct Positions {
    next: HashMap<(String, i32), i64>,
    /// seeks tried for a partition's current position (a real gap in the offsets, e.g. a
    /// compacted topic, is accepted after one)
    seeks: HashMap<(String, i32), u32>,
    /// partitions assigned while the feature store did not answer, with the last time it
    /// was asked: none of their records is taken until it answers (taking what comes would
    /// start such a partition at Kafka's committed offset, a hint, and skip what the store
    /// lacks when it lost its state meanwhile)
    unknown: HashMap<(String, i32), Option<Instant>>,
}

enum Verdict {
    Take,
    /// already taken
    Again,
    /// ahead of the position: seek back to it
    SeekTo(i64),
}

impl Positions {
    fn check(&mut self, r: &Record) -> Verdict {
        let tp = (r.topic.clone(), r.partition);
        match self.next.get(&tp).copied() {
            Some(n) if r.offset < n => Verdict::Again,
            Some(n) if r.offset > n && self.seeks.get(&tp).copied().unwrap_or(0) < 3 => {
                *self.seeks.entry(tp).or_default() += 1;
                Verdict::SeekTo(n)
            }
            _ => {
                if let Some(n) = self.next.get(&tp)
                    && r.offset > *n
                {
                    tracing::warn!(topic = %r.topic, partition = r.partition, from = *n,
                        to = r.offset, "stream: offsets missing from the topic (compacted, or \
                        deleted by retention): reading on from the next record");
                }
                self.seeks.remove(&tp);
                self.next.insert(tp, r.offset + 1);
                Verdict::Take
            }
        }
    }
}

/// How often the poller asks the feature store again where a partition of unknown start
/// begins.
const UNKNOWN_RETRY: Duration = Duration::from_secs(1);

/// For a record of a partition whose start is unknown: asks the store (at most every
/// [`UNKNOWN_RETRY`]) and, when it answers, records the partition's position. True when the
/// position is known now (the record goes through [`Positions::check`]).
fn start_of(
    positions: &mut Positions,
    r: &Record,
    rt: &tokio::runtime::Handle,
    store: &Arc<dyn FeatureStore>,
    group: &str,
) -> bool {
    let tp = (r.topic.clone(), r.partition);
    let Some(asked) = positions.unknown.get_mut(&tp) else {
        return true;
    };
    if asked.is_some_and(|t| t.elapsed() < UNKNOWN_RETRY) {
        return false;
    }
    *asked = Some(Instant::now());
    match stored_offsets(rt, store, group) {
        Some(s) => {
            positions.unknown.remove(&tp);
            positions
                .next
                .insert(tp, s.get(&r.partition).copied().unwrap_or(0));
            true
        }
        None => false,
    }
}

/// The feature store's offsets of `group`, for the poller (a blocking thread). `None` when
/// the store does not answer within 10 s.
fn stored_offsets(
    rt: &tokio::runtime::Handle,
    store: &Arc<dyn FeatureStore>,
    group: &str,
) -> Option<BTreeMap<i32, i64>> {
    let read = tokio::time::timeout(Duration::from_secs(10), store.offsets(group));
    match rt.block_on(read) {
        Ok(Ok(o)) => Some(o),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "stream: reading the stored offsets after an assignment");
            None
        }
        Err(_) => {
            tracing::warn!("stream: reading the stored offsets after an assignment: no answer");
            None
        }
    }
}

/// Runs until `cancel`, or with `until_caught_up` until every assigned partition is read to
/// its high watermark and applied.
///
/// Exactly once under rebalances: the poller keeps per partition the next offset to take
/// ([`Positions`]: a record re-fetched after a rebalance is not taken twice), cuts the batch
/// in flight at a rebalance, and starts a newly assigned partition at the feature store's
/// offset;
/// the applier skips records below the offsets applied, re-plans a batch whose offsets
/// another member moved, and checks in the apply itself that the store still holds what
/// this process applied (a loss of state is handled per `stream.on_state_lost`). Redis
/// errors retry the same batch (an apply is idempotent) for up to
/// `stream.redis_retry_max_secs`.
pub async fn run(
    cfg: &Config,
    lake: &Lake,
    store: Arc<dyn FeatureStore>,
    metrics: Arc<StreamMetrics>,
    cancel: CancellationToken,
    until_caught_up: bool,
) -> Result<StreamReport, StreamError> {
    let ctx = crate::sql::session(lake).await?;
    let features = load(&cfg.stream.queries_dir, &ctx).await?;
    let group = cfg.stream.group_id.clone();
    // the catalogue (CDC tables) re-read in the background; a failure keeps the old tables
    let refresher = {
        let (ctx, lake, metrics) = (ctx.clone(), lake.clone(), metrics.clone());
        let every = Duration::from_secs(cfg.stream.catalogue_refresh_secs.max(1));
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                // a re-read that outlasts its interval (at least a minute) is given up
                let limit = every.max(Duration::from_secs(60));
                // the catalogue, then the current model's lists (a promotion or rollback
                // is followed within one interval)
                let reread = async {
                    let tables = crate::sql::refresh_cdc_tables(&ctx, &lake).await?;
                    let version = crate::sql::refresh_model_lists(&ctx, &lake).await?;
                    Ok::<_, crate::sql::SqlError>((tables, version))
                };
                let result = tokio::select! {
                    r = tokio::time::timeout(limit, reread) => r,
                    _ = stop.cancelled() => return,
                };
                match result {
                    Ok(Ok((tables, version))) => {
                        metrics.catalogue_refreshes.inc();
                        tracing::debug!(
                            ?tables,
                            ?version,
                            "stream: catalogue and model lists re-read"
                        );
                    }
                    Ok(Err(e)) => {
                        metrics.catalogue_refresh_errors.inc();
                        tracing::warn!(error = %e, "stream: re-reading the catalogue failed; \
                            keeping the tables read before");
                    }
                    Err(_) => {
                        metrics.catalogue_refresh_errors.inc();
                        tracing::warn!(
                            secs = limit.as_secs(),
                            "stream: re-reading the \
                            catalogue timed out; keeping the tables read before"
                        );
                    }
                }
            }
        })
    };
    let _refresher = AbortOnDrop(refresher);
    let mut next: BTreeMap<i32, i64> = retrying(cfg, &metrics, &cancel, "reading offsets", || {
        store.offsets(&group)
    })
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(2);
    let (control_tx, control_rx) = std::sync::mpsc::channel::<Control>();
    let consumer = Bus::connect(&cfg.kafka).consumer(
        &group,
        &[cfg.kafka.topic.as_str()],
        &[(
            "fetch.wait.max.ms",
            cfg.stream.fetch_wait_max_ms.to_string(),
        )],
    )?;
    let max_events = cfg.stream.max_batch_events;
    let max_wait = Duration::from_millis(cfg.stream.max_batch_ms);
    let cancel = cancel.child_token();
    let stop = cancel.clone();
    let poll_store = store.clone();
    let poll_group = group.clone();
    let poll_metrics = metrics.clone();
    let topic = cfg.kafka.topic.clone();
    let assignment_timeout = Duration::from_secs(cfg.kafka.assignment_timeout_secs);
    let rt = tokio::runtime::Handle::current();
    let poller = tokio::task::spawn_blocking(move || -> Result<(), StreamError> {
        let metrics = poll_metrics;
        let mut positions = Positions::default();
        let mut epoch = 0u64;
        // Kafka commits are a hint (the truth is in the feature store): the latest offsets,
        // sent without waiting, at most once a second
        let mut to_commit: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut last_commit = Instant::now();
        let mut unassigned_since: Option<Instant> = Some(Instant::now());
        let mut last_wait_log = Instant::now();
        while !stop.is_cancelled() {
            for c in control_rx.try_iter() {
                match c {
                    Control::Commit(c) => {
                        to_commit.extend(c.into_iter().map(|(t, p, o)| ((t, p), o)));
                    }
                    Control::Reread { epoch: e, offsets } => {
                        epoch = e;
                        to_commit.clear();
                        positions.seeks.clear();
                        // every partition owned now: those read so far, those whose start
                        // was unknown, and any the assignment holds beside them
                        let mut owned: std::collections::BTreeSet<(String, i32)> =
                            positions.next.keys().cloned().collect();
                        owned.extend(positions.unknown.drain().map(|(tp, _)| tp));
                        match consumer.assignment() {
                            Ok(a) => owned.extend(a),
                            Err(e) => tracing::warn!(error = %e,
                                "stream: reading the assignment to read again; using the \
                                 partitions read so far"),
                        }
                        for (t, p) in owned {
                            let at = offsets.get(&p).copied();
                            positions.next.insert((t.clone(), p), at.unwrap_or(0));
                            // now, not only when a record shows the gap: the partition may
                            // be idle at its end
                            if let Err(e) = consumer.seek(&t, p, at) {
                                tracing::warn!(error = %e, partition = p,
                                    "stream: seek failed; will retry at the next record");
                            }
                        }
                    }
                }
            }
            if !to_commit.is_empty() && last_commit.elapsed() >= Duration::from_secs(1) {
                let offsets: Vec<(String, i32, i64)> = std::mem::take(&mut to_commit)
                    .into_iter()
                    .filter(|((t, p), _)| positions.next.contains_key(&(t.clone(), *p)))
                    .map(|((t, p), o)| (t, p, o))
                    .collect();
                if let Err(e) = consumer.commit_async(&offsets) {
                    tracing::warn!(error = %e, "stream: committing offsets (a hint); continuing");
                }
                last_commit = Instant::now();
            }
            metrics.health.ok("consumer");
            let mut poll_error = None;
            let mut batch: Vec<Record> = Vec::new();
            let started = Instant::now();
            let mut cut = false;
            while !cut && batch.len() < max_events && started.elapsed() < max_wait {
                let polled = consumer.poll(Duration::from_millis(20));
                // rebalances happen inside poll: handle them before the record it returned,
                // and cut the batch there. Its records were read while their partitions
                // were this member's; if the next owner applies some of them first, the
                // store refuses the overlap and the applier re-plans from its offsets.
                // (Dropping a revoked partition's records instead would starve the stream
                // when rebalances come faster than `stream.max_batch_ms`.)
                for change in consumer.take_rebalances() {
                    metrics.rebalances.inc();
                    cut = true;
                    match change {
                        Membership::Revoked(parts) => {
                            for tp in &parts {
                                positions.next.remove(tp);
                                positions.seeks.remove(tp);
                                positions.unknown.remove(tp);
                            }
                            tracing::info!(partitions = ?parts, in_flight = batch.len(),
                                "stream: partitions revoked; the batch in flight is cut here");
                        }
                        Membership::Assigned(parts) => {
                            let stored = stored_offsets(&rt, &poll_store, &poll_group);
                            for tp in &parts {
                                match stored.as_ref() {
                                    // the store is the truth: start where it ends, or at the
                                    // start when it holds nothing for the partition
                                    Some(s) => {
                                        positions
                                            .next
                                            .insert(tp.clone(), s.get(&tp.1).copied().unwrap_or(0));
                                        positions.unknown.remove(tp);
                                    }
                                    // unknown: ask again at its first record
                                    None => {
                                        positions.next.remove(tp);
                                        positions.unknown.insert(tp.clone(), None);
                                    }
                                }
                                positions.seeks.remove(tp);
                            }
                            tracing::info!(partitions = ?parts, "stream: partitions assigned");
                        }
                    }
                }
                let polled = match polled {
                    Some(Ok(r))
                        if positions
                            .unknown
                            .contains_key(&(r.topic.clone(), r.partition)) =>
                    {
                        match start_of(&mut positions, &r, &rt, &poll_store, &poll_group) {
                            true => Some(Ok(r)),
                            // not yet: read it again later (never past what the store lacks)
                            false => {
                                if let Err(e) = consumer.seek(&r.topic, r.partition, Some(r.offset))
                                {
                                    tracing::warn!(error = %e, topic = %r.topic, partition = r.partition,
                                        "stream: seek failed; will retry at the next record");
                                }
                                None
                            }
                        }
                    }
                    other => other,
                };
                match polled {
                    Some(Ok(r)) => match positions.check(&r) {
                        Verdict::Take => batch.push(r),
                        Verdict::Again => metrics.redelivered.inc(),
                        Verdict::SeekTo(at) => {
                            tracing::info!(topic = %r.topic, partition = r.partition, from = r.offset,
                                to = at, "stream: the consumer is ahead of the feature store; seeking back");
                            if let Err(e) = consumer.seek(&r.topic, r.partition, Some(at)) {
                                tracing::warn!(error = %e, topic = %r.topic, partition = r.partition,
                                    "stream: seek failed; will retry at the next record");
                            }
                        }
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "stream: poll");
                        poll_error = Some(e);
                    }
                    None if batch.is_empty() && started.elapsed() > max_wait / 2 => break,
                    None => {}
                }
            }
            match poll_error {
                Some(e) => metrics.health.fail("kafka", e),
                None if !batch.is_empty() => metrics.health.ok("kafka"),
                None => {}
            }
            if !batch.is_empty() {
                if tx
                    .blocking_send(Msg::Batch {
                        epoch,
                        records: batch,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                continue;
            }
            let assigned = match consumer.assignment() {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "stream: reading the assignment; will retry");
                    continue;
                }
            };
            if assigned.is_empty() {
                let since = *unassigned_since.get_or_insert_with(Instant::now);
                let waited = since.elapsed();
                if last_wait_log.elapsed() >= WAIT_LOG_EVERY {
                    last_wait_log = Instant::now();
                    tracing::info!(group = %poll_group, topic = %topic, waited_secs = waited.as_secs(),
                        "stream: waiting for a partition assignment (another member may hold every \
                         partition, or the broker still counts a dead member until its session \
                         times out)");
                }
                if until_caught_up && waited >= assignment_timeout {
                    return Err(crate::bus::BusError::NoAssignment {
                        group: poll_group,
                        topic,
                        waited_secs: waited.as_secs(),
                    }
                    .into());
                }
                continue;
            }
            unassigned_since = None;
            // where each partition is: what this member takes next, else the group's commit
            let committed = consumer
                .committed(Duration::from_secs(10))
                .unwrap_or_default();
            let mut behind = Vec::new();
            for (t, p) in &assigned {
                let high = match consumer.watermarks(t, *p, Duration::from_secs(10)) {
                    Ok((_, high)) => high,
                    Err(e) => {
                        tracing::warn!(error = %e, partition = p, "stream: watermarks; will retry");
                        behind.push((*p, -1, -1));
                        continue;
                    }
                };
                let at = positions.next.get(&(t.clone(), *p)).copied().or_else(|| {
                    committed
                        .iter()
                        .find(|(ct, q, _)| ct == t && q == p)
                        .and_then(|c| c.2)
                });
                if high > 0 && at.is_none_or(|a| a < high) {
                    behind.push((*p, at.unwrap_or(-1), high));
                }
            }
            if behind.is_empty() {
                if tx.blocking_send(Msg::CaughtUp).is_err() {
                    return Ok(());
                }
            } else if until_caught_up && last_wait_log.elapsed() >= WAIT_LOG_EVERY {
                last_wait_log = Instant::now();
                tracing::info!(group = %poll_group, topic = %topic,
                    behind = ?behind, "stream: catching up: (partition, next offset, high watermark)");
            }
        }
        Ok(())
    });
    let mut report = StreamReport::default();
    let mut freshness: Vec<f64> = Vec::new();
    // the newest event time seen (in this process: a restart rebuilds it from what it reads)
    let mut watermark: Option<chrono::DateTime<chrono::Utc>> = None;
    let lateness = chrono::Duration::seconds(cfg.stream.allowed_lateness_secs as i64);
    let mut epoch = 0u64;
    let result: Result<(), StreamError> = async {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = cancel.cancelled() => None,
            };
            let records = match msg {
                Some(Msg::Batch { epoch: e, records }) if e == epoch => records,
                // read before the store went back: read again
                Some(Msg::Batch { .. }) => continue,
                Some(Msg::CaughtUp) if until_caught_up => break,
                Some(Msg::CaughtUp) => continue,
                None => break,
            };
            let batch_started = Instant::now();
            let before = watermark;
            let mut conflicts = 0;
            let (prepared, ops, applied) = loop {
                watermark = before;
                let p = prepare(&records, &next, &mut watermark, lateness);
                if p.spans.is_empty() {
                    break (p, Vec::new(), None);
                }
                let ops = batch_ops(&ctx, &features, &group, &p).await?;
                // the store must still hold what this process applied (or read at start)
                let expect: Vec<(i32, i64)> = next.iter().map(|(p, o)| (*p, *o)).collect();
                let apply = || store.apply_expecting(&group, &ops, &p.spans, &expect);
                match retrying(cfg, &metrics, &cancel, "applying a batch", apply).await {
                    Ok(a) => break (p, ops, Some(a)),
                    Err(StreamError::Features(FeaturesError::OffsetConflict {
                        partition,
                        stored,
                        from,
                        ..
                    })) if conflicts < 10 => {
                        // another member applied part of these offsets (a rebalance moved the
                        // partition while this batch was in flight): plan it again from the
                        // store's offsets
                        conflicts += 1;
                        metrics.offset_conflicts.inc();
                        tracing::info!(
                            partition,
                            stored,
                            from,
                            "stream: another member moved \
                            the offsets; re-planning the batch from the store's"
                        );
                        let stored = retrying(cfg, &metrics, &cancel, "reading offsets", || {
                            store.offsets(&group)
                        })
                        .await?;
                        for (p, o) in stored {
                            let n = next.entry(p).or_insert(o);
                            *n = (*n).max(o);
                        }
                    }
                    Err(StreamError::Features(lost @ FeaturesError::StateLost { .. })) => {
                        metrics.state_lost.inc();
                        tracing::error!(error = %lost, policy = ?cfg.stream.on_state_lost,
                            "stream: the feature store lost this group's state; stopped applying");
                        next = recover(cfg, lake, store.as_ref(), &metrics, &cancel, lost).await?;
                        epoch += 1;
                        watermark = None;
                        let _ = control_tx.send(Control::Reread {
                            epoch,
                            offsets: next.clone(),
                        });
                        break (Prepared::default(), Vec::new(), None);
                    }
                    Err(e) => return Err(e),
                }
            };
            report.records += prepared.records;
            report.skipped += prepared.skipped;
            report.malformed += prepared.malformed;
            report.late += prepared.late;
            metrics.malformed.inc_by(prepared.malformed);
            metrics.late.inc_by(prepared.late);
            match applied {
                None => continue,
                Some(Applied::Applied) => {
                    report.ops += ops.len() as u64;
                    metrics.ops.inc_by(ops.len() as u64);
                }
                Some(Applied::AlreadyApplied) => {
                    report.replays += 1;
                    metrics.replays.inc();
                }
            }
            let now = chrono::Utc::now();
            for e in &prepared.events {
                let secs = (now - e.event_ts).num_microseconds().unwrap_or(0) as f64 / 1e6;
                metrics.freshness.observe(secs);
                freshness.push(secs);
            }
            let busy = batch_started.elapsed().as_secs_f64();
            metrics.batch_seconds.observe(busy);
            report.busy_seconds += busy;
            metrics.events.inc_by(prepared.events.len() as u64);
            metrics.batches.inc();
            report.events += prepared.events.len() as u64;
            report.batches += 1;
            for s in &prepared.spans {
                let n = next.entry(s.partition).or_insert(s.to);
                *n = (*n).max(s.to);
            }
            let _ = control_tx.send(Control::Commit(
                prepared
                    .spans
                    .iter()
                    .map(|s| (cfg.kafka.topic.clone(), s.partition, s.to))
                    .collect(),
            ));
        }
        Ok(())
    }
    .await;
    cancel.cancel();
    drop(rx);
    let polled = poller
        .await
        .map_err(|e| StreamError::Consumer(e.to_string()))?;
    result?;
    polled?;
    freshness.sort_by(f64::total_cmp);
    let q = |p: f64| {
        freshness
            .get(((freshness.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    report.freshness_seconds = (q(0.5), q(0.99), freshness.last().copied().unwrap_or(0.0));
    Ok(report)
}

/// A micro-batch's records sorted out: the events to run the queries on, the offsets they
/// cover, and what was left out.
#[derive(Default)]
struct Prepared {
    events: Vec<Event>,
    spans: Vec<Span>,
    first: Option<(String, i32, i64)>,
    records: u64,
    skipped: u64,
    malformed: u64,
    late: u64,
}

/// Sorts a batch's records: below the offsets applied (`next`) skipped; malformed and late
/// ones counted, logged with their coordinates and left out (their offsets still count as
/// covered).
fn prepare(
    records: &[Record],
    next: &BTreeMap<i32, i64>,
    watermark: &mut Option<chrono::DateTime<chrono::Utc>>,
    lateness: chrono::Duration,
) -> Prepared {
    let mut p = Prepared {
        records: records.len() as u64,
        ..Prepared::default()
    };
    let mut spans: BTreeMap<i32, Span> = BTreeMap::new();
    let mut seen: std::collections::HashSet<(i32, i64)> = std::collections::HashSet::new();
    for r in records {
        if next.get(&r.partition).is_some_and(|&n| r.offset < n)
            || !seen.insert((r.partition, r.offset))
        {
            p.skipped += 1;
            continue;
        }
        p.first
            .get_or_insert_with(|| (r.topic.clone(), r.partition, r.offset));
        let s = spans.entry(r.partition).or_insert(Span {
            partition: r.partition,
            from: r.offset,
            to: r.offset + 1,
        });
        s.from = s.from.min(r.offset);
        s.to = s.to.max(r.offset + 1);
        let parsed = match &r.payload {
            Some(bytes) => Event::from_canonical(bytes).map_err(|e| e.message),
            None => Err("empty record".to_string()),
        };
        match parsed {
            Ok(e) if watermark.is_some_and(|w| e.event_ts < w - lateness) => {
                p.late += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    event_ts = %e.event_ts, "stream: event later than the allowed lateness, skipped");
            }
            Ok(e) => {
                *watermark = (*watermark).max(Some(e.event_ts));
                p.events.push(e);
            }
            Err(reason) => {
                p.malformed += 1;
                tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                    %reason, "stream: malformed record skipped");
            }
        }
    }
    p.spans = spans.into_values().collect();
    p
}

/// Runs every feature on a prepared batch: its ops, plus the group's high-water marks.
async fn batch_ops(
    ctx: &SessionContext,
    features: &[Feature],
    group: &str,
    p: &Prepared,
) -> Result<Vec<Op>, StreamError> {
    let (topic, partition, offset) = p.first.clone().unwrap_or_default();
    let batch =
        crate::event::arrow::to_record_batch(&p.events).map_err(|e| StreamError::Query {
            path: "events".into(),
            topic: topic.clone(),
            partition,
            offset,
            reason: e.to_string(),
        })?;
    register_events(ctx, vec![batch])?;
    let mut ops = Vec::new();
    for f in features {
        ops.append(&mut f.ops(ctx, (&topic, partition, offset)).await?);
    }
    // high-water marks for readers (the features' age), in the same atomic apply
    let progress = crate::features::progress_key(group);
    if let Some(newest) = p.events.iter().map(|e| e.event_ts).max() {
        ops.push(Op::HashMax {
            key: progress.clone(),
            field: "event_ms".into(),
            value: newest.timestamp_millis() as f64,
        });
    }
    ops.push(Op::HashMax {
        key: progress,
        field: "applied_ms".into(),
        value: chrono::Utc::now().timestamp_millis() as f64,
    });
    Ok(ops)
}

/// One micro-batch of the stream, in process: every feature's query over `events`, the ops
/// applied with `span` under `group` in one atomic apply (as `bookrec stream` does for a
/// batch it read from Kafka, without the consumer). What the replay evaluation drives, so
/// its realtime features come from the same SQL and sinks as production.
pub async fn apply_events(
    ctx: &SessionContext,
    features: &[Feature],
    store: &dyn FeatureStore,
    group: &str,
    events: Vec<Event>,
    span: Span,
) -> Result<Applied, StreamError> {
    let p = Prepared {
        events,
        spans: vec![span],
        first: Some(("replay".to_owned(), span.partition, span.from)),
        records: 0,
        skipped: 0,
        malformed: 0,
        late: 0,
    };
    let ops = batch_ops(ctx, features, group, &p).await?;
    store
        .apply(group, &ops, &p.spans)
        .await
        .map_err(StreamError::Features)
}

/// Calls the store until it answers: a transient error (connection, timeout) is retried
/// with backoff (0.1 s doubling to 5 s), counted and logged, for up to
/// `stream.redis_retry_max_secs`; any other error, or cancellation, ends it.
async fn retrying<T, F, Fut>(
    cfg: &Config,
    metrics: &StreamMetrics,
    cancel: &CancellationToken,
    what: &'static str,
    mut call: F,
) -> Result<T, StreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, FeaturesError>>,
{
    let started = Instant::now();
    let limit = Duration::from_secs(cfg.stream.redis_retry_max_secs);
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => {
                metrics.health.ok("redis");
                if started.elapsed() > Duration::from_secs(1) {
                    tracing::info!(
                        what,
                        after_secs = started.elapsed().as_secs_f64(),
                        "stream: the feature store answers again"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.is_transient() && started.elapsed() < limit => {
                metrics.apply_retries.inc();
                metrics.health.fail("redis", &e);
                tracing::warn!(error = %e, what, retry_in_ms = backoff.as_millis() as u64,
                    failing_for_secs = started.elapsed().as_secs(),
                    "stream: the feature store did not answer; retrying the same call");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(StreamError::Features(e)),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) if e.is_transient() => {
                return Err(StreamError::Unavailable {
                    secs: started.elapsed().as_secs(),
                    source: e,
                });
            }
            Err(e) => return Err(StreamError::Features(e)),
        }
    }
}

/// After a loss of state: per `stream.on_state_lost`, either the error that ends the run,
/// or the store rebuilt (from the lake when it holds nothing of the group; an older snapshot
/// is consistent and is resumed from) and the offsets to read Kafka again from.
async fn recover(
    cfg: &Config,
    lake: &Lake,
    store: &dyn FeatureStore,
    metrics: &StreamMetrics,
    cancel: &CancellationToken,
    lost: FeaturesError,
) -> Result<BTreeMap<i32, i64>, StreamError> {
    if cfg.stream.on_state_lost == crate::config::OnStateLost::Exit {
        return Err(StreamError::StateLost {
            reason: lost.to_string(),
        });
    }
    let group = &cfg.stream.group_id;
    let stored = retrying(cfg, metrics, cancel, "reading offsets", || {
        store.offsets(group)
    })
    .await?;
    if !stored.is_empty() {
        tracing::warn!(group = %group, offsets = ?stored, "stream: the feature store went back \
            to an older state (its offsets and features together): reading Kafka again from there");
        return Ok(stored);
    }
    tracing::warn!(group = %group, "stream: the feature store holds nothing of this group: \
        rebuilding from the lake, then reading Kafka from the lander's offsets");
    let report = rebuild_from_lake(cfg, lake, store).await?;
    metrics.rebuilds.inc();
    tracing::info!(events = report.events, ops = report.ops, landed = ?report.landed,
        "stream: rebuilt from the lake");
    retrying(cfg, metrics, cancel, "reading offsets", || {
        store.offsets(group)
    })
    .await
}

/// Aborts a background task when the run that started it ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
