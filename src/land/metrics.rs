//! Prometheus metrics of `bookrec land`, served on `land.metrics_listen` with `/readyz`.

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use super::LandReport;

pub struct LandMetrics {
    registry: Registry,
    records: IntCounter,
    events: IntCounter,
    duplicates: IntCounter,
    already_landed: IntCounter,
    dead_letters: IntCounter,
    changes: IntCounter,
    files: IntCounter,
    bytes: IntCounter,
    /// records behind the high watermarks of the assigned partitions
    pub lag: IntGauge,
    pub assigned: IntGauge,
    pub buffered_bytes: IntGauge,
    /// unix time of the last offset commit that succeeded
    pub last_commit: Gauge,
    pub commit_errors: IntCounter,
    pub consume_errors: IntCounter,
    /// the report as last published, to add only what is new
    published: std::sync::Mutex<LandReport>,
}

impl LandMetrics {
    pub fn new() -> Result<LandMetrics, prometheus::Error> {
        let r = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let last_commit = Gauge::new(
            "bookrec_land_last_commit_timestamp_seconds",
            "Unix time of the last offset commit that succeeded",
        )?;
        r.register(Box::new(last_commit.clone()))?;
        Ok(LandMetrics {
            records: counter("bookrec_land_records_total", "Kafka records read")?,
            events: counter("bookrec_land_events_total", "Events written to the lake")?,
            duplicates: counter(
                "bookrec_land_duplicates_total",
                "Events dropped as duplicates of an event_id landed before",
            )?,
            already_landed: counter(
                "bookrec_land_already_landed_total",
                "Records read again that the lake already held",
            )?,
            dead_letters: counter(
                "bookrec_land_dead_letters_total",
                "Records written to the lake's dead letters (dlq/land/)",
            )?,
            changes: counter("bookrec_land_changes_total", "CDC change rows written")?,
            files: counter("bookrec_land_files_total", "Parquet files written")?,
            bytes: counter("bookrec_land_bytes_total", "Parquet bytes written")?,
            lag: gauge(
                "bookrec_land_lag_records",
                "Records behind the high watermarks of the assigned partitions",
            )?,
            assigned: gauge(
                "bookrec_land_assigned_partitions",
                "Partitions this member consumes",
            )?,
            buffered_bytes: gauge(
                "bookrec_land_buffered_bytes",
                "Bytes read and not yet written to the lake",
            )?,
            last_commit,
            commit_errors: counter(
                "bookrec_land_commit_errors_total",
                "Offset commits that failed (retried with the next)",
            )?,
            consume_errors: counter(
                "bookrec_land_consume_errors_total",
                "Errors the consumer reported (the lander goes on)",
            )?,
            published: Default::default(),
            registry: r,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds what `report` counted since the last call.
    pub fn publish(&self, report: &LandReport) {
        let mut last = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let add = |c: &IntCounter, now: u64, before: u64| c.inc_by(now.saturating_sub(before));
        add(&self.records, report.records, last.records);
        add(&self.events, report.events, last.events);
        add(&self.duplicates, report.duplicates, last.duplicates);
        add(
            &self.already_landed,
            report.already_landed,
            last.already_landed,
        );
        add(&self.dead_letters, report.dead_letters, last.dead_letters);
        add(&self.changes, report.changes, last.changes);
        add(&self.files, report.files, last.files);
        add(&self.bytes, report.bytes, last.bytes);
        *last = report.clone();
    }
}
