//! Prometheus metrics of `bookrec stream`, served on `stream.metrics_listen` at `/metrics`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, Registry, TextEncoder};

pub struct StreamMetrics {
    registry: Registry,
    /// readiness (`/readyz`): `consumer` (the poll loop turns), `kafka` (the last batch's
    /// polls), `redis` (the last feature-store call)
    pub health: std::sync::Arc<crate::http::Health>,
    pub events: IntCounter,
    pub malformed: IntCounter,
    pub late: IntCounter,
    pub batches: IntCounter,
    pub replays: IntCounter,
    pub ops: IntCounter,
    /// event time → visible in the feature store
    pub freshness: Histogram,
    pub batch_seconds: Histogram,
    /// partitions revoked from or assigned to this member
    pub rebalances: IntCounter,
    /// records read again (after a rebalance or a seek) that were already taken: dropped
    pub redelivered: IntCounter,
    /// applies refused because another member had moved the offsets (batch re-planned)
    pub offset_conflicts: IntCounter,
    /// Redis errors and timeouts of an apply, each retried
    pub apply_retries: IntCounter,
    /// times the feature store was found to have lost this group's state
    pub state_lost: IntCounter,
    /// rebuilds from the lake after a state loss
    pub rebuilds: IntCounter,
    /// the CDC tables (catalogue) re-read from the lake
    pub catalogue_refreshes: IntCounter,
    /// failed re-reads of the catalogue (the tables read before stay)
    pub catalogue_refresh_errors: IntCounter,
}

impl StreamMetrics {
    /// The registry, for the HTTP server's own metrics ([`crate::http::HttpMetrics`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<StreamMetrics, prometheus::Error> {
        let r = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            r.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        Ok(StreamMetrics {
            events: counter(
                "bookrec_stream_events_total",
                "Events applied to the feature store",
            )?,
            malformed: counter(
                "bookrec_stream_malformed_total",
                "Records that are not events (skipped, logged with coordinates)",
            )?,
            late: counter(
                "bookrec_stream_late_total",
                "Events older than the watermark minus the allowed lateness (skipped)",
            )?,
            batches: counter("bookrec_stream_batches_total", "Micro-batches applied")?,
            replays: counter(
                "bookrec_stream_replayed_batches_total",
                "Micro-batches the store already held (nothing changed)",
            )?,
            ops: counter("bookrec_stream_ops_total", "Feature-store updates applied")?,
            freshness: histogram(
                "bookrec_stream_freshness_seconds",
                "Event time to visible in the feature store",
                vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                ],
            )?,
            batch_seconds: histogram(
                "bookrec_stream_batch_seconds",
                "Time to run the queries of one micro-batch and apply the result",
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0],
            )?,
            rebalances: counter(
                "bookrec_stream_rebalances_total",
                "Partition revocations and assignments this member went through",
            )?,
            redelivered: counter(
                "bookrec_stream_redelivered_total",
                "Records read again after a rebalance or seek that were already taken (dropped)",
            )?,
            offset_conflicts: counter(
                "bookrec_stream_offset_conflicts_total",
                "Applies refused because another member moved the offsets (batch re-planned)",
            )?,
            apply_retries: counter(
                "bookrec_stream_apply_retries_total",
                "Redis errors or timeouts while applying a batch (each retried with backoff)",
            )?,
            state_lost: counter(
                "bookrec_stream_state_lost_total",
                "Times the feature store had lost this group's state (empty, flushed, older)",
            )?,
            rebuilds: counter(
                "bookrec_stream_rebuilds_total",
                "Rebuilds of the features from the lake after a state loss",
            )?,
            catalogue_refreshes: counter(
                "bookrec_stream_catalogue_refreshes_total",
                "Re-reads of the CDC tables (the catalogue) from the lake",
            )?,
            catalogue_refresh_errors: counter(
                "bookrec_stream_catalogue_refresh_errors_total",
                "Failed re-reads of the catalogue (the tables read before stay in use)",
            )?,
            health: {
                let h = crate::http::Health::new();
                h.heartbeat("consumer", std::time::Duration::from_secs(120));
                h
            },
            registry: r,
        })
    }

    /// The Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
