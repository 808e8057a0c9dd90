//! The in-process bus: Kafka's semantics for one process (the embedded default, `bookrec
//! demo`). Topics of partitions holding records at consecutive offsets, consumer groups with
//! committed offsets, watermarks. One contract-test suite (`tests/it/bus.rs`) runs against it
//! and against the real broker.
//!
//! Choices where Kafka has more: a group has at most one member at a time (a second member
//! is refused with [`BusError::GroupBusy`]; the embedded pipeline runs one of each); topics
//! are created on first produce with `kafka.partitions` partitions, like a broker with
//! auto-create; nothing is durable — the bus lives as long as the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::consumer::{Consumer, Membership, Record};
use super::{BusError, Delivered, DeliveryFuture, Producer};

#[derive(Debug)]
struct Stored {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    timestamp_ms: i64,
}

#[derive(Debug, Default)]
struct Group {
    committed: HashMap<(String, i32), i64>,
    member: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, Vec<Vec<Stored>>>,
    groups: HashMap<String, Group>,
}

/// One in-process bus; see the module doc.
#[derive(Debug)]
pub struct MemoryBus {
    name: String,
    partitions: i32,
    state: Mutex<State>,
    arrived: Condvar,
    next_member: AtomicU64,
    round_robin: AtomicU64,
}

impl MemoryBus {
    pub fn new(name: &str, partitions: i32) -> MemoryBus {
        MemoryBus {
            name: name.to_owned(),
            partitions: partitions.max(1),
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            next_member: AtomicU64::new(1),
            round_robin: AtomicU64::new(0),
        }
    }

    /// The process-wide bus named `name` (`kafka.brokers = "memory://name"`), created on
    /// first use: every component of one process that names it shares it.
    pub fn named(name: &str, partitions: i32) -> Arc<MemoryBus> {
        static BUSES: std::sync::OnceLock<Mutex<HashMap<String, Arc<MemoryBus>>>> =
            std::sync::OnceLock::new();
        let mut all = BUSES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_owned())
            .or_insert_with(|| Arc::new(MemoryBus::new(name, partitions)))
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the topics that do not exist yet; returns the names it created.
    pub fn ensure_topics(&self, topics: &[&str]) -> Vec<String> {
        let mut st = self.lock();
        let mut created = Vec::new();
        for t in topics {
            if !st.topics.contains_key(*t) {
                st.topics.insert(
                    (*t).to_owned(),
                    (0..self.partitions).map(|_| Vec::new()).collect(),
                );
                created.push((*t).to_owned());
            }
        }
        created
    }

    /// Appends one record; the partition is the key's hash, or round robin without a key.
    pub fn append(&self, topic: &str, key: &[u8], value: &[u8]) -> Delivered {
        let mut st = self.lock();
        let parts = st
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| (0..self.partitions).map(|_| Vec::new()).collect());
        let n = parts.len() as u64;
        let partition = if key.is_empty() {
            self.round_robin.fetch_add(1, Ordering::Relaxed) % n
        } else {
            u64::from(crc32fast::hash(key)) % n
        } as usize;
        let log = &mut parts[partition];
        log.push(Stored {
            key: (!key.is_empty()).then(|| key.to_vec()),
            payload: value.to_vec(),
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        });
        let offset = log.len() as i64 - 1;
        drop(st);
        self.arrived.notify_all();
        Delivered {
            partition: partition as i32,
            offset,
        }
    }

    /// A group's committed offsets on `topic`, per partition.
    pub fn group_offsets(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        self.lock()
            .groups
            .get(group)
            .map(|g| {
                g.committed
                    .iter()
                    .filter(|((t, _), _)| t == topic)
                    .map(|((_, p), o)| (*p, *o))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every record of `topic`, by partition and offset.
    pub fn read_topic(&self, topic: &str) -> Vec<Record> {
        let st = self.lock();
        let Some(parts) = st.topics.get(topic) else {
            return Vec::new();
        };
        parts
            .iter()
            .enumerate()
            .flat_map(|(p, log)| {
                log.iter()
                    .enumerate()
                    .map(move |(o, s)| record(topic, p as i32, o as i64, s))
            })
            .collect()
    }

    /// Joins `group` as its only member, subscribed to `topics`.
    pub fn consumer(
        self: &Arc<Self>,
        group: &str,
        topics: &[&str],
    ) -> Result<MemoryConsumer, BusError> {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        let g = st.groups.entry(group.to_owned()).or_default();
        if g.member.is_some() {
            return Err(BusError::GroupBusy {
                bus: self.name.clone(),
                group: group.to_owned(),
            });
        }
        g.member = Some(id);
        Ok(MemoryConsumer {
            bus: self.clone(),
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            inner: Mutex::new(Inner::default()),
        })
    }
}

fn record(topic: &str, partition: i32, offset: i64, s: &Stored) -> Record {
    Record {
        topic: topic.to_owned(),
        partition,
        offset,
        key: s.key.clone(),
        payload: Some(s.payload.clone()),
        timestamp_ms: Some(s.timestamp_ms),
    }
}

impl Producer for Arc<MemoryBus> {
    fn send(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<DeliveryFuture, BusError> {
        let d = self.append(topic, key, value);
        Ok(futures::future::ready(Ok(d)).boxed())
    }

    fn reachable(&self, _timeout: Duration) -> BoxFuture<'static, bool> {
        futures::future::ready(true).boxed()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// owned partitions and the next offset to read from each
    positions: BTreeMap<(String, i32), i64>,
    events: Vec<Membership>,
    /// where the next poll starts looking (fairness across partitions)
    cursor: usize,
}

/// The only member of one group on a [`MemoryBus`].
#[derive(Debug)]
pub struct MemoryConsumer {
    bus: Arc<MemoryBus>,
    group: String,
    topics: Vec<String>,
    inner: Mutex<Inner>,
}

impl MemoryConsumer {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the partitions of subscribed topics that appeared since the last call, from
    /// the group's committed offsets (or the start).
    fn refresh(&self, st: &State, inner: &mut Inner) {
        let mut new = Vec::new();
        for t in &self.topics {
            let Some(parts) = st.topics.get(t) else {
                continue;
            };
            for p in 0..parts.len() as i32 {
                let tp = (t.clone(), p);
                if !inner.positions.contains_key(&tp) {
                    let from = st
                        .groups
                        .get(&self.group)
                        .and_then(|g| g.committed.get(&tp).copied())
                        .unwrap_or(0);
                    inner.positions.insert(tp.clone(), from);
                    new.push(tp);
                }
            }
        }
        if !new.is_empty() {
            inner.events.push(Membership::Assigned(new));
        }
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        if let Some(g) = self.bus.lock().groups.get_mut(&self.group) {
            g.member = None;
        }
    }
}

impl Consumer for MemoryConsumer {
    fn poll(&self, timeout: Duration) -> Option<Result<Record, BusError>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.bus.lock();
        loop {
            {
                let mut inner = self.inner();
                self.refresh(&st, &mut inner);
                let owned: Vec<(String, i32)> = inner.positions.keys().cloned().collect();
                for i in 0..owned.len() {
                    let tp = &owned[(inner.cursor + i) % owned.len()];
                    let at = inner.positions[tp];
                    let log = &st.topics[&tp.0][tp.1 as usize];
                    if let Some(s) = log.get(at as usize) {
                        let r = record(&tp.0, tp.1, at, s);
                        inner.positions.insert(tp.clone(), at + 1);
                        inner.cursor = (inner.cursor + i + 1) % owned.len();
                        return Some(Ok(r));
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .bus
                .arrived
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), BusError> {
        let mut inner = self.inner();
        if let Some(at) = inner.positions.get_mut(&(topic.to_owned(), partition)) {
            *at = offset.unwrap_or(0).max(0);
        }
        Ok(())
    }

    fn take_rebalances(&self) -> Vec<Membership> {
        let st = self.bus.lock();
        let mut inner = self.inner();
        self.refresh(&st, &mut inner);
        std::mem::take(&mut inner.events)
    }

    fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), BusError> {
        let mut st = self.bus.lock();
        let g = st.groups.entry(self.group.clone()).or_default();
        for (t, p, o) in offsets {
            g.committed.insert((t.clone(), *p), *o);
        }
        Ok(())
    }

    fn commit_async(&self, offsets: &[(String, i32, i64)]) -> Result<(), BusError> {
        self.commit(offsets)
    }

    fn assignment(&self) -> Result<Vec<(String, i32)>, BusError> {
        let st = self.bus.lock();
        let mut inner = self.inner();
        self.refresh(&st, &mut inner);
        Ok(inner.positions.keys().cloned().collect())
    }

    fn committed(&self, _timeout: Duration) -> Result<Vec<(String, i32, Option<i64>)>, BusError> {
        let st = self.bus.lock();
        let mut inner = self.inner();
        self.refresh(&st, &mut inner);
        let g = st.groups.get(&self.group);
        Ok(inner
            .positions
            .keys()
            .map(|tp| {
                let c = g.and_then(|g| g.committed.get(tp).copied());
                (tp.0.clone(), tp.1, c)
            })
            .collect())
    }

    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        _timeout: Duration,
    ) -> Result<(i64, i64), BusError> {
        let st = self.bus.lock();
        let high = st
            .topics
            .get(topic)
            .and_then(|p| p.get(partition as usize))
            .map(|l| l.len() as i64)
            .ok_or_else(|| BusError::UnknownPartition {
                bus: self.bus.name.clone(),
                topic: topic.to_owned(),
                partition,
            })?;
        Ok((0, high))
    }
}
