//! `bookrec replay`: turns a real dataset into behaviour events and sends them to the
//! collector over HTTP (batches or single events) or straight to Kafka. It is the load
//! generator of the collector benchmark and the way to fill the pipeline with real data.
//!
//! Inputs are the CSV files `scripts/fetch-datasets` writes:
//! - MovieLens `ratings.csv` (`user_id,item_id,rating,timestamp`): one `rate` event per
//!   rating, `client_ts` = the rating's timestamp;
//! - Book-Crossing `ratings.csv` (`user_id,isbn,rating`): rating 0 is an implicit
//!   interaction and becomes a `view`, 1–10 a `rate`. The data has no timestamps, so row `i`
//!   gets `client_ts = 2026-01-01T00:00:00Z + i seconds` (deterministic, in file order).
//!
//! Event ids are derived from the dataset row, so replaying the same rows twice is
//! recognised as a retry by the collector's dedup window and by the lake downstream.
//!
//! Through the collector, events are stamped like any client's (`event_ts` is the receive
//! time; the original time stays in `client_ts`). Straight to Kafka (`--kafka`), replay
//! acts as a trusted producer and stamps `event_ts = client_ts`, for temporal replays.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, TimeZone, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::bus::BusError;
use crate::config::KafkaConfig;
use crate::event;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: header {header:?} is neither MovieLens (user_id,item_id,rating,timestamp) nor Book-Crossing (user_id,isbn,rating) ratings; run scripts/fetch-datasets"
    )]
    UnknownFormat { path: PathBuf, header: String },
    #[error("{path}: no column {column} in the header {header:?}")]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: String,
    },
    #[error("{path}: reading CSV: {source}")]
    Csv {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[error("{path}, row {row}: column {column}: {reason}")]
    Row {
        path: PathBuf,
        row: usize,
        column: &'static str,
        reason: String,
    },
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    MovieLens,
    BookCrossing,
}

/// One interaction from a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub row: usize,
    pub user_id: String,
    pub book_id: String,
    pub rating: f64,
    pub ts: DateTime<Utc>,
}

/// Reads up to `limit` interactions after the first `skip` rows of a ratings CSV written by
/// `scripts/fetch-datasets`.
pub fn load(
    path: &Path,
    skip: usize,
    limit: Option<usize>,
) -> Result<(Dataset, Vec<Interaction>), ReplayError> {
    let header = header_line(path)?;
    let dataset = match header.as_str() {
        "user_id,item_id,rating,timestamp" => Dataset::MovieLens,
        "user_id,isbn,rating" => Dataset::BookCrossing,
        _ => {
            return Err(ReplayError::UnknownFormat {
                path: path.to_path_buf(),
                header,
            });
        }
    };
    let (reader, _) = text_csv(path, &[])?;
    let base = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut row = 0usize;
    for batch in reader {
        let batch = batch.map_err(|source| ReplayError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
        let col = |i: usize| {
            batch
                .columns()
                .get(i)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let (Some(users), Some(items), Some(ratings)) = (col(0), col(1), col(2)) else {
            continue;
        };
        let times = col(3);
        for i in 0..batch.num_rows() {
            if out.len() >= limit {
                return Ok((dataset, out));
            }
            row += 1; // 1-based data row (after the header)
            if row <= skip {
                continue;
            }
            let bad = |column: &'static str, reason: String| ReplayError::Row {
                path: path.to_path_buf(),
                row,
                column,
                reason,
            };
            let rating: f64 = ratings
                .value(i)
                .parse()
                .map_err(|e| bad("rating", format!("{:?}: {e}", ratings.value(i))))?;
            let ts = match (dataset, times) {
                (Dataset::MovieLens, Some(t)) => {
                    let secs: i64 = t
                        .value(i)
                        .parse()
                        .map_err(|e| bad("timestamp", format!("{:?}: {e}", t.value(i))))?;
                    Utc.timestamp_opt(secs, 0)
                        .single()
                        .ok_or_else(|| bad("timestamp", format!("{secs} out of range")))?
                }
                _ => base + chrono::Duration::seconds(row as i64),
            };
            if users.is_null(i) || items.is_null(i) {
                return Err(bad("user_id", "empty id".into()));
            }
            out.push(Interaction {
                row,
                user_id: users.value(i).to_string(),
                book_id: items.value(i).to_string(),
                rating,
                ts,
            });
        }
    }
    Ok((dataset, out))
}

/// The first line of a CSV, trimmed.
fn header_line(path: &Path) -> Result<String, ReplayError> {
    let io = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = String::new();
    BufReader::new(File::open(path).map_err(io)?)
        .read_line(&mut header)
        .map_err(io)?;
    Ok(header.trim().to_string())
}

/// A CSV written by `scripts/fetch-datasets` (a header, then rows) read with every column
/// as text: the reader, and the position of each column of `want` (a column the header
/// lacks is an error naming the header).
pub fn text_csv(
    path: &Path,
    want: &[&str],
) -> Result<(arrow::csv::Reader<File>, Vec<usize>), ReplayError> {
    let io = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let header = header_line(path)?;
    let names: Vec<&str> = header.split(',').collect();
    let mut at = Vec::with_capacity(want.len());
    for w in want {
        match names.iter().position(|n| n == w) {
            Some(i) => at.push(i),
            None => {
                return Err(ReplayError::MissingColumn {
                    path: path.to_path_buf(),
                    column: (*w).to_owned(),
                    header,
                });
            }
        }
    }
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(65_536)
        .build(File::open(path).map_err(io)?)
        .map_err(|source| ReplayError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((reader, at))
}

/// A deterministic event id for a dataset row.
fn event_id(dataset: Dataset, row: usize) -> Uuid {
    let tag: u128 = match dataset {
        Dataset::MovieLens => 0x6d6c,
        Dataset::BookCrossing => 0x6278,
    };
    // version 8 ("custom"): dataset tag and row number, no hashing needed
    let raw = (tag << 64) | row as u128;
    Uuid::new_v8(raw.to_be_bytes())
}

/// The event a client would post for an interaction.
pub fn client_event(dataset: Dataset, it: &Interaction) -> Value {
    let (kind, rating) = match dataset {
        Dataset::BookCrossing if it.rating == 0.0 => ("view", None),
        _ => ("rate", Some(it.rating)),
    };
    let mut v = json!({
        "event_id": event_id(dataset, it.row).to_string(),
        "event_type": kind,
        "user_id": it.user_id,
        "book_id": it.book_id,
        "client_ts": event::format_ts(&it.ts),
    });
    if let (Some(r), Some(obj)) = (rating, v.as_object_mut()) {
        obj.insert("rating".into(), json!(r));
    }
    v
}

/// Where replayed events go.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST {base}/api/logs` with `batch_size` events per request.
    Batches { base: String, batch_size: usize },
    /// `POST {base}/api/log`, one event per request.
    Single { base: String },
    /// Produce stamped events straight to Kafka. `live`: event time = now (as if the
    /// collector received them now) instead of the dataset's time.
    /// Straight into Kafka. `live`: event time = when sent (else the dataset's time);
    /// `rate`: at most this many events per second (paced; default as fast as possible).
    Kafka {
        cfg: Box<KafkaConfig>,
        live: bool,
        rate: Option<f64>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub events: usize,
    pub requests: usize,
    pub accepted: u64,
    /// of `accepted`, already seen by the collector (same event_id) and not stored again
    pub duplicates: u64,
    pub rejected: u64,
    pub failed_requests: usize,
    pub seconds: f64,
    pub events_per_sec: f64,
    /// per request (HTTP) or per record delivery (Kafka)
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} events in {:.2} s = {:.0} events/s; {} requests, latency p50 {:.2} ms, p99 {:.2} ms; accepted {} ({} duplicates), rejected {}, failed requests {}",
            self.mode,
            self.events,
            self.seconds,
            self.events_per_sec,
            self.requests,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.accepted,
            self.duplicates,
            self.rejected,
            self.failed_requests
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Sends the interactions to `target` with `concurrency` requests in flight. Bodies are
/// serialized before the clock starts, so the figures measure the receiver.
pub async fn run(
    dataset: Dataset,
    interactions: &[Interaction],
    target: &Target,
    concurrency: usize,
) -> Result<Report, ReplayError> {
    match target {
        Target::Batches { base, batch_size } => {
            let bodies: Vec<(usize, Vec<u8>)> = interactions
                .chunks((*batch_size).max(1))
                .map(|chunk| {
                    let events: Vec<Value> =
                        chunk.iter().map(|it| client_event(dataset, it)).collect();
                    (chunk.len(), serde_json::to_vec(&events).unwrap_or_default())
                })
                .collect();
            post_all(
                "http-batch",
                format!("{}/api/logs", base.trim_end_matches('/')),
                bodies,
                concurrency,
            )
            .await
        }
        Target::Single { base } => {
            let bodies: Vec<(usize, Vec<u8>)> = interactions
                .iter()
                .map(|it| (1, client_event(dataset, it).to_string().into_bytes()))
                .collect();
            post_all(
                "http-single",
                format!("{}/api/log", base.trim_end_matches('/')),
                bodies,
                concurrency,
            )
            .await
        }
        Target::Kafka { cfg, live, rate } => {
            produce_all(dataset, interactions, cfg, *live, *rate).await
        }
    }
}

/// The collector's answer to one request.
struct Verdict {
    accepted: u64,
    rejected: u64,
    duplicates: u64,
}

async fn post_all(
    mode: &'static str,
    url: String,
    bodies: Vec<(usize, Vec<u8>)>,
    concurrency: usize,
) -> Result<Report, ReplayError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .timeout(Duration::from_secs(60))
        .build()?;
    let events: usize = bodies.iter().map(|(n, _)| n).sum();
    let requests = bodies.len();
    let start = Instant::now();
    let results: Vec<(Duration, Option<Verdict>)> = futures::stream::iter(bodies)
        .map(|(_, body)| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let t0 = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let verdict = match resp {
                    Ok(r) => r.json::<Value>().await.ok().map(|v| Verdict {
                        accepted: v["accepted"].as_u64().unwrap_or(0),
                        rejected: v["rejected"].as_array().map_or(0, |a| a.len() as u64),
                        duplicates: v["duplicates"].as_u64().unwrap_or(0),
                    }),
                    Err(e) => {
                        tracing::warn!(error = %e, "request failed");
                        None
                    }
                };
                (t0.elapsed(), verdict)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let seconds = start.elapsed().as_secs_f64();
    let mut latencies: Vec<Duration> = results.iter().map(|(d, _)| *d).collect();
    latencies.sort();
    let verdicts = || results.iter().filter_map(|(_, v)| v.as_ref());
    let accepted = verdicts().map(|v| v.accepted).sum();
    let rejected = verdicts().map(|v| v.rejected).sum();
    let duplicates = verdicts().map(|v| v.duplicates).sum();
    let failed_requests = results.iter().filter(|(_, v)| v.is_none()).count();
    Ok(Report {
        mode,
        events,
        requests,
        accepted,
        duplicates,
        rejected,
        failed_requests,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
    })
}

/// Stamped events straight to Kafka: the raw producer rate, and temporal replays.
async fn produce_all(
    dataset: Dataset,
    interactions: &[Interaction],
    cfg: &KafkaConfig,
    live: bool,
    rate: Option<f64>,
) -> Result<Report, ReplayError> {
    let bus = crate::bus::Bus::connect(cfg);
    bus.ensure_topics(&[&cfg.topic]).await?;
    let received_at = Utc::now();
    let events: Vec<event::Event> = interactions
        .iter()
        .filter_map(|it| {
            let mut ev = event::validate(client_event(dataset, it), received_at).ok()?;
            if !live {
                ev.event_ts = ev.client_ts.unwrap_or(ev.received_at);
            }
            Some(ev)
        })
        .collect();
    // paced and live: each event is stamped when it is sent (freshness is measured from it)
    let stamp_at_send = live && rate.is_some();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    if !stamp_at_send {
        records = events
            .iter()
            .map(|ev| (ev.key().to_string(), ev.to_json()))
            .collect();
    }
    let in_flight = 100_000;
    let producer = bus.producer(in_flight)?;
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(events.len());
    let mut failed = 0usize;
    let mut tally = |(d, r): (Duration, Result<_, BusError>)| {
        latencies.push(d);
        if r.is_err() {
            failed += 1;
        }
    };
    for (n, ev) in events.iter().enumerate() {
        if let Some(rate) = rate
            && n % 64 == 0
        {
            let due = Duration::from_secs_f64(n as f64 / rate);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let stamped;
        let (key, value) = if stamp_at_send {
            let mut ev = ev.clone();
            let now = Utc::now();
            ev.event_ts = now;
            ev.received_at = now;
            stamped = (ev.key().to_string(), ev.to_json());
            (&stamped.0, &stamped.1)
        } else {
            (&records[n].0, &records[n].1)
        };
        loop {
            match producer.send(&cfg.topic, key.as_bytes(), value) {
                Ok(fut) => {
                    let t0 = Instant::now();
                    pending.push(async move {
                        let r = fut.await;
                        (t0.elapsed(), r)
                    });
                    break;
                }
                Err(BusError::QueueFull { .. }) => {
                    if let Some(done) = pending.next().await {
                        tally(done);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    while let Some(done) = pending.next().await {
        tally(done);
    }
    let seconds = start.elapsed().as_secs_f64();
    latencies.sort();
    Ok(Report {
        mode: "kafka-direct",
        events: events.len(),
        requests: events.len(),
        accepted: (events.len() - failed) as u64,
        duplicates: 0,
        rejected: (interactions.len() - events.len()) as u64,
        failed_requests: failed,
        seconds,
        events_per_sec: events.len() as f64 / seconds.max(1e-9),
        latency_p50_ms: percentile(&latencies, 0.5),
        latency_p99_ms: percentile(&latencies, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasets_become_valid_events_with_stable_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ml = dir.path().join("ml.csv");
        std::fs::write(
            &ml,
            "user_id,item_id,rating,timestamp\n1m_1,\"Girl, Interrupted (1999)\",4.0,978300760\n",
        )
        .expect("write");
        let (ds, rows) = load(&ml, 0, None).expect("load");
        assert_eq!(ds, Dataset::MovieLens);
        assert_eq!(rows[0].book_id, "Girl, Interrupted (1999)");
        let e = event::validate(client_event(ds, &rows[0]), Utc::now()).expect("valid");
        assert_eq!(e.event_type, event::EventType::Rate);
        assert_eq!(e.rating, Some(4.0));
        assert_eq!(e.client_ts.map(|t| t.timestamp()), Some(978_300_760));
        assert_eq!(e.event_id, event_id(ds, 1));

        let bx = dir.path().join("bx.csv");
        std::fs::write(
            &bx,
            "user_id,isbn,rating\n276725,034545104X,0\n276726,0155061224,5\n",
        )
        .expect("write");
        let (ds, rows) = load(&bx, 0, Some(5)).expect("load");
        assert_eq!(ds, Dataset::BookCrossing);
        let kinds: Vec<Value> = rows
            .iter()
            .map(|r| client_event(ds, r)["event_type"].clone())
            .collect();
        assert_eq!(kinds, vec![json!("view"), json!("rate")]);
        assert!(
            rows[1].ts > rows[0].ts,
            "deterministic increasing replay time"
        );
        assert_ne!(event_id(ds, 1), event_id(Dataset::MovieLens, 1));
        let (_, skipped) = load(&bx, 1, None).expect("load");
        assert_eq!(
            skipped,
            rows[1..].to_vec(),
            "skip keeps row numbers and times"
        );

        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "a,b\n1,2\n").expect("write");
        let err = load(&bad, 0, None).expect_err("unknown format").to_string();
        assert!(err.contains("bad.csv") && err.contains("a,b"), "{err}");
        let broken = dir.path().join("broken.csv");
        std::fs::write(&broken, "user_id,isbn,rating\nu,b,x\n").expect("write");
        let err = load(&broken, 0, None).expect_err("bad rating").to_string();
        assert!(err.contains("row 1") && err.contains("rating"), "{err}");
    }
}
