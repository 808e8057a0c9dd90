//! `bookrec schedule`: batch runs on cron expressions, one at a time across machines.
//!
//! Each job (`[[schedule.jobs]]`: a name, a cron expression with seconds, the queries it
//! selects) fires at its times. Before a run the scheduler takes the lease `batch` in the
//! store (one row; whoever holds an unexpired lease runs, everyone else waits), so two
//! schedulers on two machines never run at once; the lease is renewed while the run goes on
//! and released after it.
//!
//! Missed runs (the scheduler was down, or another run took longer than the interval): with
//! `missed_run_policy = "run_once"` (default) a job whose latest scheduled time passed
//! without a run runs once as soon as it can — one catch-up run, not one per missed slot;
//! with `"skip"` it waits for its next time. The last fire time per job is kept in the store.
//!
//! SIGTERM: no new run starts; a running one finishes (its outputs switch atomically either
//! way), then the lease is released and the process exits 0.
//!
//! A store that fails (down, a timeout) does not stop the scheduler: the error is logged,
//! counted (`bookrec_schedule_store_errors_total`) and shown in `/readyz` (`store`), and the
//! tick is retried with backoff (1 s doubling to 60 s) until the store answers again.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{MissedRunPolicy, ScheduleConfig};
use crate::lake::Lake;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule.jobs[{job}].cron {expr:?}: {reason}")]
    Cron {
        job: String,
        expr: String,
        reason: String,
    },
    #[error("schedule.jobs {job:?}: params: {reason}")]
    Params { job: String, reason: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("schedule metrics: {0}")]
    Metrics(String),
}

struct Job {
    name: String,
    cron: cron::Schedule,
    selection: super::runner::Selection,
    skip_als: bool,
}

/// What the scheduler did (for tests and logs).
#[derive(Debug, Default, Clone)]
pub struct ScheduleReport {
    pub runs: Vec<(String, DateTime<Utc>, String)>,
}

/// Prometheus metrics of `bookrec schedule` (on `schedule.metrics_listen`).
pub struct ScheduleMetrics {
    registry: Registry,
    /// runs by job and status (`succeeded`, `failed`)
    pub runs: IntCounterVec,
    pub run_seconds: HistogramVec,
    /// unix time of each job's last run that succeeded
    pub last_success: GaugeVec,
    /// the validation NDCG of the last model trained, and whether it was promoted
    pub model_ndcg: Gauge,
    pub models: IntCounterVec,
    /// 1 for the version this scheduler promoted last (label `version`)
    pub model_version: IntGaugeVec,
    pub store_errors: IntCounter,
}

impl ScheduleMetrics {
    pub fn new() -> Result<ScheduleMetrics, prometheus::Error> {
        let r = Registry::new();
        let runs = IntCounterVec::new(
            Opts::new(
                "bookrec_schedule_runs_total",
                "Batch runs by job and status",
            ),
            &["job", "status"],
        )?;
        let run_seconds = HistogramVec::new(
            HistogramOpts::new("bookrec_schedule_run_seconds", "Batch run durations").buckets(
                vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ],
            ),
            &["job"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "bookrec_schedule_last_success_timestamp_seconds",
                "Unix time of each job's last successful run",
            ),
            &["job"],
        )?;
        let model_ndcg = Gauge::new(
            "bookrec_model_validation_ndcg",
            "Validation NDCG@k of the last model trained",
        )?;
        let models = IntCounterVec::new(
            Opts::new(
                "bookrec_model_trainings_total",
                "Models trained, by outcome (promoted, kept_previous)",
            ),
            &["outcome"],
        )?;
        let model_version = IntGaugeVec::new(
            Opts::new(
                "bookrec_model_version",
                "The model version this scheduler promoted last (value 1, label version)",
            ),
            &["version"],
        )?;
        let store_errors = IntCounter::new(
            "bookrec_schedule_store_errors_total",
            "Scheduler ticks that failed on the store (retried with backoff)",
        )?;
        r.register(Box::new(runs.clone()))?;
        r.register(Box::new(run_seconds.clone()))?;
        r.register(Box::new(last_success.clone()))?;
        r.register(Box::new(model_ndcg.clone()))?;
        r.register(Box::new(models.clone()))?;
        r.register(Box::new(model_version.clone()))?;
        r.register(Box::new(store_errors.clone()))?;
        Ok(ScheduleMetrics {
            registry: r,
            runs,
            run_seconds,
            last_success,
            model_ndcg,
            models,
            model_version,
            store_errors,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// What `bookrec schedule` shows its operator: metrics and the readiness checks
/// (`scheduler`: the loop turns; `store`: the last tick reached the store).
pub struct Observed {
    pub metrics: Arc<ScheduleMetrics>,
    pub health: Arc<crate::http::Health>,
}

impl Observed {
    pub fn new() -> Result<Observed, prometheus::Error> {
        Ok(Observed {
            metrics: Arc::new(ScheduleMetrics::new()?),
            health: crate::http::Health::new(),
        })
    }
}

/// Runs until `cancel`. `batch` names the queries folder and the engine.
pub async fn run(
    cfg: &ScheduleConfig,
    lake: &Lake,
    store: &Store,
    batch: &crate::config::BatchConfig,
    training: Option<&super::runner::Training>,
    holder: &str,
    cancel: CancellationToken,
) -> Result<ScheduleReport, ScheduleError> {
    let observed = Observed::new().map_err(|e| ScheduleError::Metrics(e.to_string()))?;
    run_observed(cfg, lake, store, batch, training, holder, cancel, &observed).await
}

/// [`run`], reporting to `observed` as it goes.
#[allow(clippy::too_many_arguments)]
pub async fn run_observed(
    cfg: &ScheduleConfig,
    lake: &Lake,
    store: &Store,
    batch: &crate::config::BatchConfig,
    training: Option<&super::runner::Training>,
    holder: &str,
    cancel: CancellationToken,
    observed: &Observed,
) -> Result<ScheduleReport, ScheduleError> {
    let jobs = cfg
        .jobs
        .iter()
        .map(|j| {
            let params =
                super::runner::Params::from_map(&j.params).map_err(|e| ScheduleError::Params {
                    job: j.name.clone(),
                    reason: e.to_string(),
                })?;
            cron::Schedule::from_str(&j.cron)
                .map(|cron| Job {
                    name: j.name.clone(),
                    cron,
                    selection: super::runner::Selection {
                        select: j.select.clone(),
                        exclude: j.exclude.clone(),
                        params,
                        trigger: format!("schedule:{}", j.name),
                    },
                    skip_als: j.skip_als,
                })
                .map_err(|e| ScheduleError::Cron {
                    job: j.name.clone(),
                    expr: j.cron.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tick = Duration::from_millis(cfg.tick_ms.max(10));
    let mut report = ScheduleReport::default();
    let health = &observed.health;
    // a tick is quick; a run may last long, and the loop waits for it
    health.heartbeat("scheduler", tick * 4 + Duration::from_secs(60));
    tracing::info!(jobs = jobs.len(), %holder, "scheduler started");
    let mut backoff = Duration::from_secs(1);
    while !cancel.is_cancelled() {
        health.ok("scheduler");
        let pause = match tick_jobs(
            cfg,
            &jobs,
            lake,
            store,
            batch,
            training,
            holder,
            &cancel,
            observed,
            &mut report,
        )
        .await
        {
            Ok(()) => {
                health.ok("store");
                backoff = Duration::from_secs(1);
                tick
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in_secs = backoff.as_secs(),
                    "scheduler: the store failed; retrying");
                observed.metrics.store_errors.inc();
                health.fail("store", &e);
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                pause
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Err(e) = store.release_lease("batch", holder).await {
        // it expires by itself after lease_ttl_secs
        tracing::warn!(error = %e, "scheduler: releasing the lease");
    }
    tracing::info!("scheduler stopped");
    Ok(report)
}

/// One pass over the jobs: each that is due runs (under the lease).
#[allow(clippy::too_many_arguments)]
async fn tick_jobs(
    cfg: &ScheduleConfig,
    jobs: &[Job],
    lake: &Lake,
    store: &Store,
    batch: &crate::config::BatchConfig,
    training: Option<&super::runner::Training>,
    holder: &str,
    cancel: &CancellationToken,
    observed: &Observed,
    report: &mut ScheduleReport,
) -> Result<(), ScheduleError> {
    let lease_ttl = Duration::from_secs(cfg.lease_ttl_secs.max(1));
    let tick = Duration::from_millis(cfg.tick_ms.max(10));
    let metrics = &observed.metrics;
    let now = Utc::now();
    for job in jobs {
        if cancel.is_cancelled() {
            break;
        }
        // the latest scheduled time at or before now
        let Some(due) = latest_fire(&job.cron, now) else {
            continue;
        };
        let last = store.last_fire(&job.name).await?;
        let missed = match last {
            None => cfg.missed_run_policy == MissedRunPolicy::RunOnce,
            Some(l) => due > l,
        };
        if !missed {
            continue;
        }
        if last.is_some_and(|l| due > l)
            && cfg.missed_run_policy == MissedRunPolicy::Skip
            && now - due > chrono::Duration::from_std(tick * 2).unwrap_or_default()
        {
            // a slot passed while nobody ran it: skip, wait for the next one
            store.set_last_fire(&job.name, due).await?;
            continue;
        }
        if !store.acquire_lease("batch", holder, lease_ttl).await? {
            continue; // another scheduler is running
        }
        // someone may have run this slot while we waited for the lease
        if store.last_fire(&job.name).await?.is_some_and(|l| l >= due) {
            store.release_lease("batch", holder).await?;
            continue;
        }
        store.set_last_fire(&job.name, due).await?;
        tracing::info!(job = %job.name, due = %due, "batch run starting");
        let started = std::time::Instant::now();
        let renew = CancellationToken::new();
        let renewer = {
            let store = store.clone();
            let holder = holder.to_string();
            let renew = renew.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = renew.cancelled() => return,
                        _ = tokio::time::sleep(lease_ttl / 3) => {
                            let _ = store.acquire_lease("batch", &holder, lease_ttl).await;
                        }
                    }
                }
            })
        };
        let result = super::runner::run_with(
            lake,
            Some(store),
            batch,
            &job.selection,
            Utc::now(),
            training.filter(|_| !job.skip_als),
            &mut |l| tracing::info!(job = %job.name, "{l}"),
        )
        .await;
        renew.cancel();
        let _ = renewer.await;
        let status = match &result {
            Ok(r) => r.status.clone(),
            Err(e) => {
                tracing::error!(job = %job.name, error = %e, "batch run failed");
                "failed".to_string()
            }
        };
        metrics
            .run_seconds
            .with_label_values(&[job.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        metrics
            .runs
            .with_label_values(&[job.name.as_str(), status.as_str()])
            .inc();
        if status == "succeeded" {
            metrics
                .last_success
                .with_label_values(&[job.name.as_str()])
                .set(Utc::now().timestamp_millis() as f64 / 1e3);
        }
        if let Some(model) = result.as_ref().ok().and_then(|r| r.model.as_ref()) {
            metrics.model_ndcg.set(model.validation.ndcg);
            let outcome = if model.promoted {
                "promoted"
            } else {
                "kept_previous"
            };
            metrics.models.with_label_values(&[outcome]).inc();
            if model.promoted {
                metrics.model_version.reset();
                metrics
                    .model_version
                    .with_label_values(&[model.version.as_str()])
                    .set(1);
            }
        }
        report.runs.push((job.name.clone(), due, status));
        store.release_lease("batch", holder).await?;
    }
    Ok(())
}

/// The latest time at or before `now` the schedule fires.
fn latest_fire(cron: &cron::Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.after(&(now + chrono::Duration::milliseconds(1)))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_fire_is_the_last_slot_before_now() {
        let hourly = cron::Schedule::from_str("0 0 * * * *").expect("cron");
        let now = DateTime::parse_from_rfc3339("2026-11-26T07:42:10Z")
            .expect("ts")
            .to_utc();
        assert_eq!(
            latest_fire(&hourly, now).map(|t| t.to_rfc3339()),
            Some("2026-11-26T07:00:00+00:00".into())
        );
        let yearly = cron::Schedule::from_str("0 0 0 1 1 *").expect("cron");
        assert_eq!(
            latest_fire(&yearly, now).map(|t| t.to_rfc3339()),
            Some("2026-01-01T00:00:00+00:00".into())
        );
        let exact = DateTime::parse_from_rfc3339("2026-11-26T07:00:00Z")
            .expect("ts")
            .to_utc();
        assert_eq!(latest_fire(&hourly, exact), Some(exact));
    }
}
