//! The impression log: what each recommendation response showed, as `impression` events
//! posted through the collector (`serve.impressions.collect_url`, default
//! `serve.collect_url`, + `/api/logs`), so that impressions are
//! validated, spooled, produced to Kafka and landed in the lake like every behaviour event.
//!
//! One event per shown book: `book_id`, and — moved into `properties` by the collector, as
//! every field outside the core contract — `request_id`, `position` (1 = first), `reasons`,
//! `model_version` and `experiments` (`{name: variant}`). Each event's `event_id` derives
//! from (request id, position), so a batch posted again after a timeout is deduplicated by
//! the collector: exactly once in the lake.
//!
//! A response never waits: [`ImpressionLog::record`] puts the response on a bounded queue
//! (`serve.impressions.queue`) or, when it is full, drops it; one background task batches
//! the queue (`batch_events`, `flush_ms`) and posts each batch with a timeout, retrying with
//! doubling backoff (`attempts`). Every event ends in `bookrec_serve_impression_events_total`
//! under one outcome: `sent`, `dropped_queue_full`, `dropped_unreachable` (the collector did
//! not take the batch after every attempt) or `rejected` (the collector refused the event;
//! the first reason is logged).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ServeMetrics;
use super::experiment::Assignment;
use crate::config::Config;

/// One response's impression.
#[derive(Debug, Clone)]
pub struct Impression {
    pub request_id: Uuid,
    pub user_id: String,
    pub at: DateTime<Utc>,
    pub model_version: Option<String>,
    pub experiments: Vec<Assignment>,
    /// the shown books in order, each with its reasons
    pub items: Vec<(String, Vec<String>)>,
}

impl Impression {
    /// The events of this impression, as the collector takes them.
    pub fn events(&self, sent_at: DateTime<Utc>) -> Vec<Value> {
        let experiments: Map<String, Value> = self
            .experiments
            .iter()
            .map(|a| (a.experiment.clone(), Value::String(a.variant.clone())))
            .collect();
        self.items
            .iter()
            .enumerate()
            .map(|(n, (book, reasons))| {
                let position = n + 1;
                let mut e = json!({
                    "event_id": event_id(self.request_id, position).to_string(),
                    "event_type": "impression",
                    "user_id": self.user_id,
                    "book_id": book,
                    "client_ts": crate::event::format_ts(&self.at),
                    "sent_at": crate::event::format_ts(&sent_at),
                    "request_id": self.request_id.to_string(),
                    "position": position,
                    "reasons": reasons,
                });
                if let Some(v) = &self.model_version {
                    e["model_version"] = Value::String(v.clone());
                }
                if !experiments.is_empty() {
                    e["experiments"] = Value::Object(experiments.clone());
                }
                e
            })
            .collect()
    }
}

/// The event id of the book at `position` of a response: the request id with its last two
/// bytes replaced by the position, as a version-8 UUID (unique per request and position,
/// the same on every retry).
pub fn event_id(request_id: Uuid, position: usize) -> Uuid {
    let mut bytes = *request_id.as_bytes();
    let p = (position.min(u16::MAX as usize) as u16).to_be_bytes();
    bytes[14] = p[0];
    bytes[15] = p[1];
    Uuid::new_v8(bytes)
}

/// The handle the handlers log impressions through.
pub struct ImpressionLog {
    tx: Option<mpsc::Sender<Impression>>,
    metrics: Arc<ServeMetrics>,
}

impl ImpressionLog {
    /// Starts the sender task (when `serve.impressions.enabled`); it stops with `stop`,
    /// posting what is queued first (each post bounded by `timeout_ms`, one attempt).
    pub fn start(cfg: &Config, metrics: Arc<ServeMetrics>, stop: CancellationToken) -> Self {
        let im = &cfg.serve.impressions;
        if !im.enabled {
            return ImpressionLog { tx: None, metrics };
        }
        let (tx, rx) = mpsc::channel(im.queue);
        let base = im.collect_url.as_deref().unwrap_or(&cfg.serve.collect_url);
        let url = format!("{}/api/logs", base.trim_end_matches('/'));
        tokio::spawn(sender(url, im.clone(), rx, metrics.clone(), stop));
        ImpressionLog {
            tx: Some(tx),
            metrics,
        }
    }

    /// Whether impressions are logged at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues an impression; never waits (a full queue drops it, counted).
    pub fn record(&self, impression: Impression) {
        let Some(tx) = &self.tx else { return };
        let n = impression.items.len() as u64;
        if n == 0 {
            return;
        }
        if tx.try_send(impression).is_err() {
            self.metrics.impressions("dropped_queue_full", n);
        }
    }
}

async fn sender(
    url: String,
    cfg: crate::config::ImpressionsConfig,
    mut rx: mpsc::Receiver<Impression>,
    metrics: Arc<ServeMetrics>,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            // reqwest fails to build only without a TLS backend or resolver: say so once;
            // impressions then count as dropped when they are queued and never sent
            tracing::error!(error = %e, "impressions: cannot build the HTTP client; none are sent");
            return;
        }
    };
    let flush = Duration::from_millis(cfg.flush_ms);
    let mut pending: Vec<Value> = Vec::new();
    // when the oldest pending event must go out
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let stopping = tokio::select! {
            got = rx.recv() => match got {
                Some(i) => {
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + flush);
                    pending.extend(i.events(Utc::now()));
                    false
                }
                None => true,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => false,
            _ = stop.cancelled() => true,
        };
        if stopping {
            // what is queued gets one attempt each, then the task ends
            rx.close();
            while let Ok(i) = rx.try_recv() {
                pending.extend(i.events(Utc::now()));
            }
            while !pending.is_empty() {
                let take = pending.len().min(cfg.batch_events);
                post(&client, &url, pending.drain(..take).collect(), 1, &metrics).await;
            }
            return;
        }
        let due = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
        while pending.len() >= cfg.batch_events || (due && !pending.is_empty()) {
            let take = pending.len().min(cfg.batch_events);
            let batch: Vec<Value> = pending.drain(..take).collect();
            post(&client, &url, batch, cfg.attempts, &metrics).await;
        }
        if pending.is_empty() {
            deadline = None;
        }
    }
}

/// Posts one batch, retrying with doubling backoff; counts every event's outcome.
async fn post(
    client: &reqwest::Client,
    url: &str,
    batch: Vec<Value>,
    attempts: u32,
    metrics: &ServeMetrics,
) {
    let n = batch.len() as u64;
    let body = Value::Array(batch).to_string();
    let mut backoff = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let verdict: Value = resp.json().await.unwrap_or(Value::Null);
                let rejected = verdict["rejected"].as_array().map_or(0, |r| r.len() as u64);
                if rejected > 0 {
                    tracing::warn!(
                        rejected,
                        first = %verdict["rejected"][0],
                        "impressions: the collector rejected events"
                    );
                    metrics.impressions("rejected", rejected);
                }
                metrics.impressions("sent", n.saturating_sub(rejected));
                return;
            }
            // a 4xx other than 408/429 will not change on a retry
            Ok(resp)
                if resp.status().is_client_error()
                    && !matches!(resp.status().as_u16(), 408 | 429) =>
            {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                tracing::warn!(%status, body = %text.chars().take(300).collect::<String>(), %url, "impressions: the collector refused a batch");
                metrics.impressions("rejected", n);
                return;
            }
            Ok(resp) => last = format!("HTTP {}", resp.status()),
            Err(e) => last = e.to_string(),
        }
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    tracing::warn!(events = n, %url, error = %last, "impressions: the collector did not take a batch; dropped");
    metrics.impressions("dropped_unreachable", n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_response_and_ids_are_stable() {
        let request_id = Uuid::now_v7();
        let imp = Impression {
            request_id,
            user_id: "u1".into(),
            at: Utc::now(),
            model_version: Some("v1".into()),
            experiments: vec![Assignment {
                experiment: "e".into(),
                variant: "b".into(),
            }],
            items: vec![
                ("b1".into(), vec!["als".into()]),
                ("b2".into(), vec!["similar".into(), "trending".into()]),
            ],
        };
        let events = imp.events(Utc::now());
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["position"], 2);
        assert_eq!(events[1]["book_id"], "b2");
        assert_eq!(events[1]["experiments"]["e"], "b");
        assert_eq!(events[0]["request_id"], request_id.to_string());
        // the same ids on a retry, different per position, all valid events
        assert_eq!(imp.events(Utc::now())[0]["event_id"], events[0]["event_id"]);
        assert_ne!(events[0]["event_id"], events[1]["event_id"]);
        for e in &events {
            let raw = e.to_string();
            let ev = crate::event::validate_bytes(
                raw.as_bytes(),
                Utc::now(),
                &crate::event::Limits::default(),
            )
            .unwrap();
            let props: Value = serde_json::from_str(ev.properties.as_deref().unwrap()).unwrap();
            assert_eq!(props["request_id"], request_id.to_string());
            assert_eq!(props["model_version"], "v1");
        }
    }
}
