//! One contract-test suite for the event bus, run against the real broker (tansu, started by
//! `.ci/run`) and against the in-process bus of the embedded default (`memory://NAME`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bookrec::bus::{Bus, Consumer, Membership, Record};
use bookrec::config::Config;

use crate::support::{brokers, unique};

fn config(brokers: &str) -> Config {
    let mut cfg = Config::load_with_env(None, Vec::new()).expect("defaults");
    cfg.kafka.brokers = brokers.to_string();
    cfg.kafka.topic = unique("bus");
    cfg.kafka.partitions = 3;
    cfg
}

/// Polls until `n` records arrived (or a minute passed), collecting rebalances.
fn read_n(c: &dyn Consumer, n: usize) -> (Vec<Record>, Vec<Membership>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut out, mut changes) = (Vec::new(), Vec::new());
    while out.len() < n && Instant::now() < deadline {
        if let Some(r) = c.poll(Duration::from_millis(100)) {
            out.push(r.expect("record"));
        }
        changes.extend(c.take_rebalances());
    }
    (out, changes)
}

async fn send_all(bus: &Bus, topic: &str, records: &[(String, String)]) -> Vec<(i32, i64)> {
    let p = bus.producer(10_000).expect("producer");
    let futs: Vec<_> = records
        .iter()
        .map(|(k, v)| p.send(topic, k.as_bytes(), v.as_bytes()).expect("send"))
        .collect();
    futures::future::join_all(futs)
        .await
        .into_iter()
        .map(|d| {
            let d = d.expect("delivered");
            (d.partition, d.offset)
        })
        .collect()
}

async fn contract(cfg: Config) {
    let bus = Bus::connect(&cfg.kafka);
    let topic = cfg.kafka.topic.clone();
    bus.ensure_topics(&[&topic]).await.expect("create");
    bus.ensure_topics(&[&topic]).await.expect("create again");

    // keyed records: one key, one partition; offsets consecutive per partition from 0
    let first: Vec<(String, String)> = (0..30)
        .map(|i| (format!("k{}", i % 10), format!("v{i}")))
        .collect();
    let delivered = send_all(&bus, &topic, &first).await;
    let mut by_key: BTreeMap<&str, i32> = BTreeMap::new();
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for ((k, _), (p, o)) in first.iter().zip(&delivered) {
        assert_eq!(
            *by_key.entry(k).or_insert(*p),
            *p,
            "key {k} moved partition"
        );
        per_partition.entry(*p).or_default().push(*o);
    }
    for offsets in per_partition.values_mut() {
        offsets.sort();
        assert_eq!(*offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    }

    // a new group reads everything from the start, in order per partition
    let group = unique("bus-group");
    let c = bus.consumer(&group, &[&topic], &[]).expect("join");
    let (records, changes) = read_n(c.as_ref(), 30);
    assert_eq!(records.len(), 30);
    let assigned: Vec<(String, i32)> = changes
        .iter()
        .filter_map(|m| match m {
            Membership::Assigned(p) => Some(p.clone()),
            Membership::Revoked(_) => None,
        })
        .flatten()
        .collect();
    assert_eq!(assigned.len(), 3, "{changes:?}");
    let mut sorted = c.assignment().expect("assignment");
    sorted.sort();
    assert_eq!(
        sorted,
        (0..3).map(|p| (topic.clone(), p)).collect::<Vec<_>>()
    );
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        let want = next.get(&r.partition).copied().unwrap_or(0);
        assert_eq!(r.offset, want, "partition {} out of order", r.partition);
        next.insert(r.partition, r.offset + 1);
        let sent = &first[delivered
            .iter()
            .position(|d| *d == (r.partition, r.offset))
            .expect("a delivered record")];
        assert_eq!(r.key.as_deref(), Some(sent.0.as_bytes()));
        assert_eq!(r.payload.as_deref(), Some(sent.1.as_bytes()));
        assert!(r.timestamp_ms.is_some());
    }
    for (p, n) in &next {
        let (low, high) = c
            .watermarks(&topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!((low, high), (0, *n));
    }
    assert!(
        c.poll(Duration::from_millis(300)).is_none(),
        "nothing more to read"
    );

    // commits are what the group resumes from, and readable without joining
    let offsets: Vec<(String, i32, i64)> =
        next.iter().map(|(p, o)| (topic.clone(), *p, *o)).collect();
    c.commit(&offsets).expect("commit");
    let committed = c.committed(Duration::from_secs(10)).expect("committed");
    for (t, p, o) in &committed {
        assert_eq!(t, &topic);
        assert_eq!(*o, next.get(p).copied());
    }
    assert_eq!(
        bus.group_offsets(&group, &topic, Duration::from_secs(10))
            .expect("group offsets"),
        next
    );
    drop(c);
    let more: Vec<(String, String)> = (30..35)
        .map(|i| (format!("k{}", i % 10), format!("v{i}")))
        .collect();
    send_all(&bus, &topic, &more).await;
    let c = bus.consumer(&group, &[&topic], &[]).expect("rejoin");
    let (records, _) = read_n(c.as_ref(), 5);
    let mut values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone().unwrap_or_default()).expect("utf8"))
        .collect();
    values.sort();
    assert_eq!(values, ["v30", "v31", "v32", "v33", "v34"]);
    assert!(c.poll(Duration::from_millis(300)).is_none());
    drop(c);

    // the whole topic, for tools
    let all = bus
        .read_topic(&topic, Duration::from_secs(30))
        .expect("read");
    assert_eq!(all.len(), 35);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_the_bus_contract() {
    contract(config(&brokers())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_bus_keeps_the_bus_contract() {
    contract(config(&format!("memory://{}", unique("bus")))).await;
}

#[tokio::test]
async fn the_in_process_bus_has_one_member_per_group() {
    let bus = Bus::connect(&config(&format!("memory://{}", unique("bus"))).kafka);
    let first = bus.consumer("g", &["t"], &[]).expect("first member");
    let second = bus
        .consumer("g", &["t"], &[])
        .err()
        .expect("a second member is refused");
    assert!(
        second.to_string().contains("group g already has a member"),
        "{second}"
    );
    drop(first);
    bus.consumer("g", &["t"], &[])
        .expect("joins once the first has left");
}
