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

use crate::bus::{Bus, Record};
use crate::config::Config;
use crate::event::Event;
use crate::features::{Applied, FeatureStore, Op, Span};
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
        let out = crate::sql::query(ctx, &sql)
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
        match ctx.sql(&sql).await {
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

enum Msg {
    Batch(Vec<Record>),
    CaughtUp,
}

/// Runs until `cancel`, or with `until_caught_up` until every assigned partition is read to
/// its high watermark and applied.
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
    let mut next: BTreeMap<i32, i64> = store.offsets(&group).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(2);
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<Vec<(String, i32, i64)>>();
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
    let poller = tokio::task::spawn_blocking(move || -> Result<(), StreamError> {
        let mut consumed: HashMap<(String, i32), i64> = HashMap::new();
        // Kafka commits are a hint (the truth is in the feature store): the latest offsets,
        // sent without waiting, at most once a second
        let mut to_commit: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut last_commit = Instant::now();
        while !stop.is_cancelled() {
            for c in commit_rx.try_iter() {
                to_commit.extend(c.into_iter().map(|(t, p, o)| ((t, p), o)));
            }
            if !to_commit.is_empty() && last_commit.elapsed() >= Duration::from_secs(1) {
                let offsets: Vec<(String, i32, i64)> = std::mem::take(&mut to_commit)
                    .into_iter()
                    .map(|((t, p), o)| (t, p, o))
                    .collect();
                consumer.commit_async(&offsets)?;
                last_commit = Instant::now();
            }
            let mut batch = Vec::new();
            let started = Instant::now();
            while batch.len() < max_events && started.elapsed() < max_wait {
                match consumer.poll(Duration::from_millis(20)) {
                    Some(Ok(r)) => {
                        consumed.insert((r.topic.clone(), r.partition), r.offset + 1);
                        batch.push(r);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "stream: poll"),
                    None if batch.is_empty() && started.elapsed() > max_wait / 2 => break,
                    None => {}
                }
            }
            let _ = consumer.take_rebalances();
            if !batch.is_empty() {
                if tx.blocking_send(Msg::Batch(batch)).is_err() {
                    return Ok(());
                }
                continue;
            }
            let assigned = consumer.assignment()?;
            if !assigned.is_empty() {
                // where each partition is: what this run read, else the group's commit
                let committed = consumer.committed(Duration::from_secs(10))?;
                let mut done = true;
                for (topic, p) in &assigned {
                    let (_, high) = consumer.watermarks(topic, *p, Duration::from_secs(10))?;
                    let at = consumed.get(&(topic.clone(), *p)).copied().or_else(|| {
                        committed
                            .iter()
                            .find(|(t, q, _)| t == topic && q == p)
                            .and_then(|c| c.2)
                    });
                    if high > 0 && at.is_none_or(|a| a < high) {
                        done = false;
                    }
                }
                if done && tx.blocking_send(Msg::CaughtUp).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    });
    let mut report = StreamReport::default();
    let mut freshness: Vec<f64> = Vec::new();
    // the newest event time seen (in this process: a restart rebuilds it from what it reads)
    let mut watermark: Option<chrono::DateTime<chrono::Utc>> = None;
    let lateness = chrono::Duration::seconds(cfg.stream.allowed_lateness_secs as i64);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = cancel.cancelled() => None,
        };
        let records = match msg {
            Some(Msg::Batch(r)) => r,
            Some(Msg::CaughtUp) if until_caught_up => break,
            Some(Msg::CaughtUp) => continue,
            None => break,
        };
        report.records += records.len() as u64;
        let mut spans: BTreeMap<i32, Span> = BTreeMap::new();
        let mut events: Vec<Event> = Vec::new();
        let first = records[0].clone();
        for r in &records {
            if next.get(&r.partition).is_some_and(|&n| r.offset < n) {
                report.skipped += 1;
                continue;
            }
            let s = spans.entry(r.partition).or_insert(Span {
                partition: r.partition,
                from: r.offset,
                to: r.offset + 1,
            });
            s.to = s.to.max(r.offset + 1);
            let parsed = match &r.payload {
                Some(p) => Event::from_canonical(p).map_err(|e| e.message),
                None => Err("empty record".to_string()),
            };
            match parsed {
                Ok(e) if watermark.is_some_and(|w| e.event_ts < w - lateness) => {
                    report.late += 1;
                    metrics.late.inc();
                    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                        event_ts = %e.event_ts, "stream: event later than the allowed lateness, skipped");
                }
                Ok(e) => {
                    watermark = watermark.max(Some(e.event_ts));
                    events.push(e);
                }
                Err(reason) => {
                    report.malformed += 1;
                    metrics.malformed.inc();
                    tracing::warn!(topic = %r.topic, partition = r.partition, offset = r.offset,
                        %reason, "stream: malformed record skipped");
                }
            }
        }
        if spans.is_empty() {
            continue;
        }
        let batch_started = Instant::now();
        let batch =
            crate::event::arrow::to_record_batch(&events).map_err(|e| StreamError::Query {
                path: "events".into(),
                topic: first.topic.clone(),
                partition: first.partition,
                offset: first.offset,
                reason: e.to_string(),
            })?;
        register_events(&ctx, vec![batch])?;
        let mut ops = Vec::new();
        for f in &features {
            ops.append(
                &mut f
                    .ops(&ctx, (&first.topic, first.partition, first.offset))
                    .await?,
            );
        }
        let spans: Vec<Span> = spans.into_values().collect();
        // high-water marks for readers (the features' age), in the same atomic apply
        let progress = crate::features::progress_key(&group);
        if let Some(newest) = events.iter().map(|e| e.event_ts).max() {
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
        match store.apply(&group, &ops, &spans).await? {
            Applied::Applied => {
                report.ops += ops.len() as u64;
                metrics.ops.inc_by(ops.len() as u64);
            }
            Applied::AlreadyApplied => {
                report.replays += 1;
                metrics.replays.inc();
            }
        }
        let now = chrono::Utc::now();
        for e in &events {
            let secs = (now - e.event_ts).num_microseconds().unwrap_or(0) as f64 / 1e6;
            metrics.freshness.observe(secs);
            freshness.push(secs);
        }
        let busy = batch_started.elapsed().as_secs_f64();
        metrics.batch_seconds.observe(busy);
        report.busy_seconds += busy;
        metrics.events.inc_by(events.len() as u64);
        metrics.batches.inc();
        report.events += events.len() as u64;
        report.batches += 1;
        for s in &spans {
            next.insert(s.partition, s.to);
        }
        let _ = commit_tx.send(
            spans
                .iter()
                .map(|s| (cfg.kafka.topic.clone(), s.partition, s.to))
                .collect(),
        );
    }
    cancel.cancel();
    drop(rx);
    poller
        .await
        .map_err(|e| StreamError::Consumer(e.to_string()))??;
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
