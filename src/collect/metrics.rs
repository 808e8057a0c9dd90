//! Prometheus metrics of the collector (one registry per collector instance).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub accepted: IntCounter,
    pub duplicates: IntCounter,
    pub rejected: IntCounterVec,
    pub spooled: IntCounter,
    pub spool_depth_records: IntGauge,
    pub spool_depth_bytes: IntGauge,
    pub spool_full: IntCounter,
    pub delivered: IntCounterVec,
    pub delivery_errors: IntCounter,
    pub produce_latency: Histogram,
    pub requests: HistogramVec,
    pub kafka_up: IntGauge,
    pub spool_unavailable: IntCounter,
    pub spool_write_errors: IntCounter,
    pub spool_quarantined: IntCounter,
    pub spool_lost_records: IntCounter,
    pub spool_writable: IntGauge,
    pub forwarder_restarts: IntCounter,
    pub forwarder_up: IntGauge,
}

/// Brings a counter up to `value` (a total kept elsewhere, e.g. in the spool's state).
pub fn sync_counter(c: &IntCounter, value: u64) {
    let current = c.get();
    if value > current {
        c.inc_by(value - current);
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// The registry, for the HTTP server's own metrics ([`crate::http::HttpMetrics`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let rejected = IntCounterVec::new(
            Opts::new(
                "bookrec_collect_rejected_total",
                "Events rejected, by error code",
            ),
            &["code"],
        )?;
        r.register(Box::new(rejected.clone()))?;
        let delivered = IntCounterVec::new(
            Opts::new(
                "bookrec_collect_delivered_total",
                "Records confirmed by Kafka, by topic kind",
            ),
            &["topic"],
        )?;
        r.register(Box::new(delivered.clone()))?;
        let produce_latency = Histogram::with_opts(
            HistogramOpts::new(
                "bookrec_collect_produce_latency_seconds",
                "From spool append to Kafka acknowledgement",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )?;
        r.register(Box::new(produce_latency.clone()))?;
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "bookrec_collect_request_duration_seconds",
                "HTTP request latency, by route and status",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["route", "status"],
        )?;
        r.register(Box::new(requests.clone()))?;
        Ok(Metrics {
            accepted: counter(&r, "bookrec_collect_accepted_total", "Events accepted")?,
            duplicates: counter(
                &r,
                "bookrec_collect_duplicates_total",
                "Events acknowledged again without producing (same event_id within the window)",
            )?,
            spooled: counter(
                &r,
                "bookrec_collect_spooled_total",
                "Records appended to the durable spool (events and dead letters)",
            )?,
            spool_depth_records: gauge(
                &r,
                "bookrec_collect_spool_depth_records",
                "Spooled records not yet confirmed by Kafka",
            )?,
            spool_depth_bytes: gauge(
                &r,
                "bookrec_collect_spool_depth_bytes",
                "Spooled bytes not yet confirmed by Kafka",
            )?,
            spool_full: counter(
                &r,
                "bookrec_collect_spool_full_total",
                "Requests refused with 503 because the spool was full",
            )?,
            delivery_errors: counter(
                &r,
                "bookrec_collect_delivery_errors_total",
                "Deliveries Kafka refused (the records are re-sent from the spool)",
            )?,
            kafka_up: gauge(
                &r,
                "bookrec_collect_kafka_up",
                "1 when the last metadata request to Kafka succeeded",
            )?,
            spool_unavailable: counter(
                &r,
                "bookrec_collect_spool_unavailable_total",
                "Requests refused with 503 spool_unavailable (the spool could not be written)",
            )?,
            spool_write_errors: counter(
                &r,
                "bookrec_collect_spool_write_errors_total",
                "Spool write, fsync, checkpoint and roll errors",
            )?,
            spool_quarantined: counter(
                &r,
                "bookrec_collect_spool_quarantined_total",
                "Corrupt spool regions moved to quarantine/",
            )?,
            spool_lost_records: counter(
                &r,
                "bookrec_collect_spool_lost_records_total",
                "Spooled records lost inside corrupt regions",
            )?,
            spool_writable: gauge(
                &r,
                "bookrec_collect_spool_writable",
                "1 while the spool takes writes",
            )?,
            forwarder_restarts: counter(
                &r,
                "bookrec_collect_forwarder_restarts_total",
                "Times the forwarder failed and was restarted",
            )?,
            forwarder_up: gauge(
                &r,
                "bookrec_collect_forwarder_up",
                "1 while the forwarder runs without a failure",
            )?,
            rejected,
            delivered,
            produce_latency,
            requests,
            registry: r,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
