//! The collector's spool under real faults: a full disk (a small tmpfs), a corrupt frame
//! written to disk, and a segment the forwarder cannot open — each against the real broker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Broker, Collector, brokers, collector_config, read_topic};

fn event(n: usize) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "event_type": "view",
        "user_id": format!("u{}", n % 7),
        "book_id": format!("b{n}"),
    })
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk");
        std::fs::create_dir_all(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} failed: this test needs root (CI runs as root)",
            path.display()
        );
        SmallDisk { _dir: dir, path }
    }

    /// Fills the disk up, leaving `leave` bytes free; returns the filler's path.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![7u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = f.flush();
        let len = f.metadata().expect("meta").len();
        f.set_len(len.saturating_sub(leave))
            .expect("truncate filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn readyz(client: &reqwest::Client, c: &Collector) -> (u16, Value) {
    let r = client.get(c.url("/readyz")).send().await.expect("readyz");
    let status = r.status().as_u16();
    (status, r.json().await.expect("readyz json"))
}

async fn metric(client: &reqwest::Client, c: &Collector, name: &str) -> f64 {
    support::metric(client, &c.url("/metrics"), name).await
}

/// Posts events `ns` one request each, asserts each 202, returns their ids.
async fn post_accepted(
    client: &reqwest::Client,
    c: &Collector,
    ns: std::ops::Range<usize>,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in ns {
        let ev = event(n);
        let r = client
            .post(c.url("/api/log"))
            .json(&ev)
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 202);
        ids.push(ev["event_id"].as_str().expect("id").to_string());
    }
    ids
}

fn ids_in(topic_records: &[support::Read]) -> std::collections::HashSet<String> {
    topic_records
        .iter()
        .filter_map(|r| r.value["event_id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_intake_recovers_by_itself_when_space_returns() {
    let b = brokers();
    support::require_broker(&b);
    let disk = SmallDisk::mount("2m");
    let cfg = collector_config(&b, &disk.path.join("spool"));
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let mut accepted = post_accepted(&client, &collector, 0..20).await;

    // the disk fills up (one page left: a batch is written in part, then fails)
    let filler = disk.fill(4096);
    let batch: Vec<Value> = (100..160).map(event).collect();
    let refused_ids: Vec<String> = batch
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_string())
        .collect();
    let r = client
        .post(collector.url("/api/logs"))
        .json(&batch)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "spool_unavailable");
    let (status, ready) = readyz(&client, &collector).await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["spool"]
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable")),
        "{ready}"
    );
    assert!(
        metric(
            &client,
            &collector,
            "bookrec_collect_spool_write_errors_total"
        )
        .await
            >= 1.0
    );
    assert!(
        metric(
            &client,
            &collector,
            "bookrec_collect_spool_unavailable_total"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(&client, &collector, "bookrec_collect_spool_writable").await,
        0.0
    );

    // space returns: ready again without a restart and without any request
    std::fs::remove_file(&filler).expect("free the disk");
    let t = Instant::now();
    loop {
        let (status, ready) = readyz(&client, &collector).await;
        if status == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not ready 10 s after space returned: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted.extend(post_accepted(&client, &collector, 200..220).await);
    collector.wait_drained(Duration::from_secs(60)).await;
    assert_eq!(
        metric(
            &client,
            &collector,
            "bookrec_collect_spool_quarantined_total"
        )
        .await,
        0.0,
        "the failed write left a damaged frame behind"
    );
    let topic = cfg.kafka.topic.clone();
    collector.stop().await;
    let landed = ids_in(&read_topic(&b, &topic, Duration::from_secs(30)));
    for id in &accepted {
        assert!(
            landed.contains(id),
            "acknowledged event {id} is not in Kafka"
        );
    }
    for id in &refused_ids {
        assert!(!landed.contains(id), "refused event {id} reached Kafka");
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("segment-"))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_frame_is_quarantined_and_the_records_after_it_reach_kafka() {
    let b = brokers();
    support::require_broker(&b);
    let spool = tempfile::tempdir().expect("tempdir");
    // first life: Kafka unreachable, so the records stay in the spool
    let mut cfg = collector_config("127.0.0.1:1", spool.path());
    cfg.collect.shutdown_timeout_ms = 500;
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let ids = post_accepted(&client, &collector, 0..10).await;
    collector.stop().await;

    // a bit flips inside the fifth frame (each request is one frame, in order)
    let segs = segments(spool.path());
    assert_eq!(segs.len(), 1, "{segs:?}");
    let bytes = std::fs::read(&segs[0]).expect("segment");
    let mut offsets = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        offsets.push(pos);
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
        pos += 8 + len as usize;
    }
    assert_eq!(offsets.len(), 10);
    let mut damaged = bytes.clone();
    damaged[offsets[4] + 40] ^= 0x55;
    std::fs::write(&segs[0], &damaged).expect("damage");

    // second life, with the broker: everything but the damaged record arrives
    cfg.kafka.brokers = b.clone();
    let collector = Collector::start(&cfg).await;
    collector.wait_drained(Duration::from_secs(60)).await;
    assert_eq!(
        metric(
            &client,
            &collector,
            "bookrec_collect_spool_quarantined_total"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &client,
            &collector,
            "bookrec_collect_spool_lost_records_total"
        )
        .await,
        1.0
    );
    let quarantined: Vec<String> = std::fs::read_dir(spool.path().join("quarantine"))
        .expect("quarantine dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let seg_name = segs[0]
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert_eq!(
        quarantined,
        vec![format!("{seg_name}.at-{}", offsets[4])],
        "the quarantined copy names its segment and offset"
    );
    let topic = cfg.kafka.topic.clone();
    collector.stop().await;
    let landed = ids_in(&read_topic(&b, &topic, Duration::from_secs(30)));
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(landed.contains(id), i != 4, "event {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_survives_a_segment_it_cannot_read_and_reports_it() {
    let mut broker = Broker::start();
    broker.stop();
    let spool = tempfile::tempdir().expect("tempdir");
    let mut cfg = collector_config(&broker.brokers(), spool.path());
    cfg.collect.spool.segment_bytes = 2048;
    cfg.collect.spool.max_in_flight = 5;
    let collector = Collector::start(&cfg).await;
    let client = reqwest::Client::new();
    let ids = post_accepted(&client, &collector, 0..30).await;
    // the second segment becomes unreadable (a symlink to itself: ELOOP, even for root)
    let segs = segments(spool.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let aside = spool.path().join("aside");
    std::fs::rename(&segs[1], &aside).expect("move aside");
    std::os::unix::fs::symlink(&segs[1], &segs[1]).expect("symlink loop");
    broker.resume();

    let t = Instant::now();
    loop {
        let (_, ready) = readyz(&client, &collector).await;
        if ready["forwarder"]
            .as_str()
            .is_some_and(|s| s.starts_with("retrying"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the forwarder's failure is not reported: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metric(
            &client,
            &collector,
            "bookrec_collect_forwarder_restarts_total"
        )
        .await
            >= 1.0
    );
    // intake goes on meanwhile
    let r = client
        .post(collector.url("/api/log"))
        .json(&event(99))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);

    // the operator repairs the file: forwarding resumes by itself
    std::fs::remove_file(&segs[1]).expect("remove the loop");
    std::fs::rename(&aside, &segs[1]).expect("restore");
    collector.wait_drained(Duration::from_secs(90)).await;
    let (_, ready) = readyz(&client, &collector).await;
    assert_eq!(ready["forwarder"], "ok", "{ready}");
    assert_eq!(
        metric(&client, &collector, "bookrec_collect_forwarder_up").await,
        1.0
    );
    let topic = cfg.kafka.topic.clone();
    let brokers = broker.brokers();
    collector.stop().await;
    let landed = ids_in(&read_topic(&brokers, &topic, Duration::from_secs(30)));
    for id in &ids {
        assert!(landed.contains(id), "event {id} never reached Kafka");
    }
}
