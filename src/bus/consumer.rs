//! Consumer side of the bus: a Kafka consumer-group member that reports rebalances to its
//! owner, commits explicitly, and tells how far behind it is.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{BusError, QuietContext, client_config};
use crate::config::KafkaConfig;

/// One record, copied out of librdkafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Broker/producer timestamp, epoch milliseconds, when the record has one.
    pub timestamp_ms: Option<i64>,
}

impl From<&rdkafka::message::BorrowedMessage<'_>> for Record {
    fn from(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// A change of the partitions this member owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

/// Collects rebalances for the owner to handle between polls.
#[derive(Default)]
pub struct GroupContext {
    quiet: QuietContext,
    events: Mutex<Vec<Membership>>,
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason)
    }
}

impl ConsumerContext for QuietContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.push(Membership::Revoked(partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.push(Membership::Assigned(partitions(tpl))),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl GroupContext {
    fn push(&self, event: Membership) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}

/// A consumer-group member, as the lander and the stream use it: Kafka's
/// ([`KafkaConsumer`]) or the in-process bus's ([`super::memory::MemoryConsumer`]).
pub trait Consumer: Send + Sync {
    /// The next record, or `None` when nothing arrived within `timeout`. Rebalances happen
    /// inside this call; collect them with [`Consumer::take_rebalances`].
    fn poll(&self, timeout: Duration) -> Option<Result<Record, BusError>>;
    fn take_rebalances(&self) -> Vec<Membership>;
    /// Commits `next_offset` (the next record to read) per partition.
    fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), BusError>;
    /// Like [`Consumer::commit`], without waiting for the broker's answer (for offsets
    /// that are only a hint, such as the stream's: its truth is in the feature store).
    fn commit_async(&self, offsets: &[(String, i32, i64)]) -> Result<(), BusError>;
    /// Moves the read position of an owned partition: the next poll of it returns
    /// `offset` (`None`: the earliest record kept). Works once the partition is being
    /// fetched (after a record of it arrived), as Kafka's seek does.
    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), BusError>;
    /// The partitions this member owns now.
    fn assignment(&self) -> Result<Vec<(String, i32)>, BusError>;
    /// The group's committed offset per owned partition (`None` when it has none).
    fn committed(&self, timeout: Duration) -> Result<Vec<(String, i32, Option<i64>)>, BusError>;
    /// `(low, high)` watermarks of a partition.
    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<(i64, i64), BusError>;
}

pub struct KafkaConsumer {
    consumer: BaseConsumer<GroupContext>,
    brokers: String,
}

impl KafkaConsumer {
    /// Joins `group_id` and subscribes to `topics`. Offsets are committed only by
    /// [`KafkaConsumer::commit`]; a group without offsets starts at the earliest record.
    pub fn new(cfg: &KafkaConfig, group_id: &str, topics: &[&str]) -> Result<Self, BusError> {
        let client = |source| BusError::Client {
            brokers: cfg.brokers.clone(),
            source,
        };
        let mut cc = client_config(cfg);
        cc.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000");
        let consumer: BaseConsumer<GroupContext> = cc
            .create_with_context(GroupContext::default())
            .map_err(client)?;
        consumer.subscribe(topics).map_err(client)?;
        Ok(KafkaConsumer {
            consumer,
            brokers: cfg.brokers.clone(),
        })
    }

    fn err(&self, source: KafkaError) -> BusError {
        BusError::Client {
            brokers: self.brokers.clone(),
            source,
        }
    }

    fn commit_mode(
        &self,
        offsets: &[(String, i32, i64)],
        mode: CommitMode,
    ) -> Result<(), BusError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                .map_err(|e| self.err(e))?;
        }
        self.consumer.commit(&tpl, mode).map_err(|e| self.err(e))
    }
}

impl Consumer for KafkaConsumer {
    fn poll(&self, timeout: Duration) -> Option<Result<Record, BusError>> {
        self.consumer
            .poll(timeout)
            .map(|r| r.map(|m| Record::from(&m)).map_err(|e| self.err(e)))
    }

    fn take_rebalances(&self) -> Vec<Membership> {
        std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), BusError> {
        self.commit_mode(offsets, CommitMode::Sync)
    }

    fn commit_async(&self, offsets: &[(String, i32, i64)]) -> Result<(), BusError> {
        self.commit_mode(offsets, CommitMode::Async)
    }

    fn seek(&self, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), BusError> {
        let to = offset.map_or(Offset::Beginning, Offset::Offset);
        self.consumer
            .seek(topic, partition, to, Duration::from_secs(10))
            .map_err(|e| self.err(e))
    }

    fn assignment(&self) -> Result<Vec<(String, i32)>, BusError> {
        let tpl = self.consumer.assignment().map_err(|e| self.err(e))?;
        Ok(partitions(&tpl))
    }

    fn committed(&self, timeout: Duration) -> Result<Vec<(String, i32, Option<i64>)>, BusError> {
        let tpl = self.consumer.committed(timeout).map_err(|e| self.err(e))?;
        let out = tpl
            .elements()
            .iter()
            .map(|e| {
                let off = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.topic().to_string(), e.partition(), off)
            })
            .collect();
        // drop the list before the consumer (rdkafka pitfall: otherwise the drop can hang)
        drop(tpl);
        Ok(out)
    }

    fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<(i64, i64), BusError> {
        self.consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| self.err(e))
    }
}

/// A client under `group` that does not join it (nothing subscribed, no commits), and the
/// partitions of `topic`.
fn topic_client(
    cfg: &KafkaConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<(BaseConsumer<QuietContext>, Vec<i32>), BusError> {
    let mut cc = client_config(cfg);
    cc.set("group.id", group).set("enable.auto.commit", "false");
    let consumer: BaseConsumer<QuietContext> = cc
        .create_with_context(QuietContext::default())
        .map_err(|source| BusError::Client {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| BusError::Metadata {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    let partitions = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect();
    Ok((consumer, partitions))
}

/// Reads a whole topic from the start with a fresh, non-committing consumer: partitions in
/// order, up to the high watermarks at call time. For tools and tests.
pub fn read_topic(
    cfg: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, BusError> {
    let client = |source| BusError::Client {
        brokers: cfg.brokers.clone(),
        source,
    };
    let reader = format!("bookrec-reader-{}", uuid::Uuid::new_v4());
    let (consumer, partitions) = topic_client(cfg, &reader, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut highs = std::collections::HashMap::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(client)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(client)?;
            highs.insert(p, high);
        }
    }
    consumer.assign(&tpl).map_err(client)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + timeout;
    let mut done: std::collections::HashSet<i32> = std::collections::HashSet::new();
    while done.len() < highs.len() && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.map_err(client)?;
            if m.offset() + 1 >= highs.get(&m.partition()).copied().unwrap_or(0) {
                done.insert(m.partition());
            }
            out.push(Record::from(&m));
        }
    }
    drop(tpl);
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// The offsets `group` has committed on `topic`, per partition (partitions without a commit
/// are left out), read without joining the group: a running member is not disturbed.
pub fn group_offsets(
    cfg: &KafkaConfig,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<i32, i64>, BusError> {
    let client = |source| BusError::Client {
        brokers: cfg.brokers.clone(),
        source,
    };
    let (consumer, partitions) = topic_client(cfg, group, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).map_err(client)?;
    let out = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    drop(committed);
    Ok(out)
}
