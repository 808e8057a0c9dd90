//! `bookrec schedule`: never two runs at once across schedulers; the missed-run policy.

use std::time::Duration;

use bookrec::config::{Config, JobConfig, MissedRunPolicy};
use bookrec::store::Store;
use tokio_util::sync::CancellationToken;

use crate::batch::{batch_config, fixture_lake};

fn schedule(cron: &str, policy: MissedRunPolicy) -> bookrec::config::ScheduleConfig {
    let mut c = Config::load_with_env(None, Vec::new())
        .expect("defaults")
        .schedule;
    c.jobs = vec![JobConfig {
        name: "matrix".into(),
        cron: cron.into(),
        select: vec!["interactions".into()],
        skip_als: true,
        exclude: Vec::new(),
        params: Default::default(),
    }];
    c.missed_run_policy = policy;
    c.tick_ms = 50;
    c.lease_ttl_secs = 5;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_never_run_at_once() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(lake_dir.path()).await;
    let dbs = crate::store::Databases::create().await;
    let url = dbs.urls[2].clone(); // PostgreSQL: two "machines" share it
    let cfg = schedule("* * * * * *", MissedRunPolicy::RunOnce);
    let cancel = CancellationToken::new();
    let mut handles = Vec::new();
    for holder in ["host-a", "host-b"] {
        let store = Store::connect(&url).await.expect("store");
        let (lake, cfg, cancel) = (lake.clone(), cfg.clone(), cancel.clone());
        handles.push(tokio::spawn(async move {
            bookrec::batch::schedule::run(
                &cfg,
                &lake,
                &store,
                &batch_config(),
                None,
                holder,
                cancel,
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    cancel.cancel();
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task").expect("scheduler").runs.len();
    }
    let store = Store::connect(&url).await.expect("store");
    let mut runs = store.run_times().await.expect("runs");
    runs.sort_by(|a, b| a.2.cmp(&b.2));
    assert!(runs.len() >= 3, "a run every second: {runs:?}");
    assert_eq!(runs.len(), total);
    for w in runs.windows(2) {
        assert!(w[1].2 >= w[0].3, "runs overlap: {w:?}");
    }
    // each second fired at most once
    dbs.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_run_runs_once_on_start() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(lake_dir.path()).await;
    let db = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/s.db", db.path().display());
    let store = Store::connect(&url).await.expect("store");
    // yearly, on 1 January: the last slot is long past
    let cfg = schedule("0 0 0 1 1 *", MissedRunPolicy::RunOnce);
    for expected in [1, 0] {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            c.cancel();
        });
        let report =
            bookrec::batch::schedule::run(&cfg, &lake, &store, &batch_config(), None, "me", cancel)
                .await
                .expect("scheduler");
        assert_eq!(report.runs.len(), expected, "{report:?}");
    }
    // with "skip", a fresh store does not catch up
    let db2 = tempfile::tempdir().expect("tempdir");
    let store2 = Store::connect(&format!("sqlite://{}/s.db", db2.path().display()))
        .await
        .expect("store");
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.cancel();
    });
    let report = bookrec::batch::schedule::run(
        &schedule("0 0 0 1 1 *", MissedRunPolicy::Skip),
        &lake,
        &store2,
        &batch_config(),
        None,
        "me",
        cancel,
    )
    .await
    .expect("scheduler");
    assert!(report.runs.is_empty());
}
