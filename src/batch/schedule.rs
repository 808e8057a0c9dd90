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

use std::str::FromStr;
use std::time::Duration;

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
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

struct Job {
    name: String,
    cron: cron::Schedule,
    select: Vec<String>,
    skip_als: bool,
}

/// What the scheduler did (for tests and logs).
#[derive(Debug, Default, Clone)]
pub struct ScheduleReport {
    pub runs: Vec<(String, DateTime<Utc>, String)>,
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
    let jobs = cfg
        .jobs
        .iter()
        .map(|j| {
            cron::Schedule::from_str(&j.cron)
                .map(|cron| Job {
                    name: j.name.clone(),
                    cron,
                    select: j.select.clone(),
                    skip_als: j.skip_als,
                })
                .map_err(|e| ScheduleError::Cron {
                    job: j.name.clone(),
                    expr: j.cron.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let lease_ttl = Duration::from_secs(cfg.lease_ttl_secs.max(1));
    let tick = Duration::from_millis(cfg.tick_ms.max(10));
    let mut report = ScheduleReport::default();
    tracing::info!(jobs = jobs.len(), %holder, "scheduler started");
    while !cancel.is_cancelled() {
        let now = Utc::now();
        for job in &jobs {
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
            let result = super::runner::run(
                lake,
                Some(store),
                batch,
                &job.select,
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
            report.runs.push((job.name.clone(), due, status));
            store.release_lease("batch", holder).await?;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
    store.release_lease("batch", holder).await?;
    tracing::info!("scheduler stopped");
    Ok(report)
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
