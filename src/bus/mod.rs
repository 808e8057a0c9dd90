//! The event bus. Kafka (rdkafka) is the production backend; this is the only module that
//! names `rdkafka`. `kafka.brokers = "memory://NAME"` selects the in-process bus instead
//! ([`memory`]: the embedded default); [`Bus`] hands out producers and consumers of either.
//!
//! The producer is idempotent with `acks=all`, batches with `linger.ms` and compresses; a
//! message is retried by librdkafka until the broker takes it (`message.timeout.ms = 0`),
//! so a caller that keeps its own durable copy (the collector's spool) never needs to
//! re-send while the process lives, and the broker never sees a duplicate from a retry.

pub mod consumer;
pub mod memory;

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::config::KafkaConfig;

pub use consumer::{Consumer, KafkaConsumer, Membership, Record};
pub use memory::MemoryBus;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    /// The local producer queue is full; wait for deliveries and send again.
    #[error("producer queue full (topic {topic})")]
    QueueFull { topic: String },
    #[error("delivery to topic {topic} failed: {reason}")]
    Delivery { topic: String, reason: String },
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("metadata from {brokers}: {source}")]
    Metadata { brokers: String, source: KafkaError },
    #[error("in-process bus {bus}: group {group} already has a member (one per group)")]
    GroupBusy { bus: String, group: String },
    #[error("in-process bus {bus}: topic {topic} has no partition {partition}")]
    UnknownPartition {
        bus: String,
        topic: String,
        partition: i32,
    },
    /// a consumer waited `kafka.assignment_timeout_secs` without any partition
    #[error(
        "no partition of {topic} was assigned to group {group} within {waited_secs} s \
         (kafka.assignment_timeout_secs): is the topic there, or does another member (perhaps \
         a dead one the broker has not timed out yet) hold every partition?"
    )]
    NoAssignment {
        group: String,
        topic: String,
        waited_secs: u64,
    },
}

/// The bus a configuration names: Kafka, or the in-process bus for `memory://NAME`.
#[derive(Clone)]
pub enum Bus {
    Kafka(KafkaConfig),
    Memory(std::sync::Arc<MemoryBus>),
}

impl Bus {
    pub const MEMORY_SCHEME: &'static str = "memory://";

    /// `cfg.brokers` = `host:port,…` (Kafka) or `memory://NAME` (the process-wide
    /// in-process bus of that name).
    pub fn connect(cfg: &KafkaConfig) -> Bus {
        match cfg.brokers.strip_prefix(Self::MEMORY_SCHEME) {
            Some(name) => Bus::Memory(MemoryBus::named(name, cfg.partitions)),
            None => Bus::Kafka(cfg.clone()),
        }
    }

    /// What to show in logs.
    pub fn describe(&self) -> String {
        match self {
            Bus::Kafka(cfg) => cfg.brokers.clone(),
            Bus::Memory(b) => format!("{}{}", Self::MEMORY_SCHEME, b.name()),
        }
    }

    /// A producer; `max_in_flight_messages` bounds Kafka's local queue.
    pub fn producer(
        &self,
        max_in_flight_messages: usize,
    ) -> Result<std::sync::Arc<dyn Producer>, BusError> {
        Ok(match self {
            Bus::Kafka(cfg) => {
                std::sync::Arc::new(KafkaProducer::new(cfg, max_in_flight_messages)?)
            }
            Bus::Memory(b) => std::sync::Arc::new(b.clone()),
        })
    }

    /// Joins `group` subscribed to `topics`; `extra` are librdkafka settings for this
    /// consumer only (ignored by the in-process bus).
    pub fn consumer(
        &self,
        group: &str,
        topics: &[&str],
        extra: &[(&str, String)],
    ) -> Result<Box<dyn Consumer>, BusError> {
        Ok(match self {
            Bus::Kafka(cfg) => {
                let mut cfg = cfg.clone();
                for (k, v) in extra {
                    cfg.extra
                        .entry((*k).to_owned())
                        .or_insert_with(|| v.clone());
                }
                Box::new(KafkaConsumer::new(&cfg, group, topics)?)
            }
            Bus::Memory(b) => Box::new(b.consumer(group, topics)?),
        })
    }

    /// Creates the topics that do not exist yet.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        match self {
            Bus::Kafka(cfg) => ensure_topics(cfg, topics).await,
            Bus::Memory(b) => {
                b.ensure_topics(topics);
                Ok(())
            }
        }
    }

    /// Creates the topics of `specs` that do not exist yet; returns the names it created.
    pub async fn create_topics(&self, specs: &[TopicSpec]) -> Result<Vec<String>, BusError> {
        match self {
            Bus::Kafka(cfg) => create_topics(cfg, specs).await,
            Bus::Memory(b) => {
                let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                Ok(b.ensure_topics(&names))
            }
        }
    }

    /// The offsets `group` has committed on `topic`, per partition, without joining it.
    pub fn group_offsets(
        &self,
        group: &str,
        topic: &str,
        timeout: Duration,
    ) -> Result<std::collections::BTreeMap<i32, i64>, BusError> {
        match self {
            Bus::Kafka(cfg) => consumer::group_offsets(cfg, group, topic, timeout),
            Bus::Memory(b) => Ok(b.group_offsets(group, topic)),
        }
    }

    /// A whole topic from the start, by partition and offset (tools and tests).
    pub fn read_topic(&self, topic: &str, timeout: Duration) -> Result<Vec<Record>, BusError> {
        match self {
            Bus::Kafka(cfg) => consumer::read_topic(cfg, topic, timeout),
            Bus::Memory(b) => Ok(b.read_topic(topic)),
        }
    }
}

/// Where a delivered record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// Completes when the broker has acknowledged (or definitively refused) one record.
pub type DeliveryFuture = BoxFuture<'static, Result<Delivered, BusError>>;

/// Producer side of the bus.
pub trait Producer: Send + Sync + 'static {
    /// Enqueues one record without blocking. `Err(BusError::QueueFull)` means "try again
    /// after some deliveries complete".
    fn send(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<DeliveryFuture, BusError>;

    /// True when the backend answered a metadata request within `timeout`.
    fn reachable(&self, timeout: Duration) -> BoxFuture<'static, bool>;
}

/// librdkafka settings shared by every client, with `extra` passed through.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers)
        .set("client.id", &cfg.client_id)
        // tansu and most clusters: keep the log quiet about transient disconnects
        .set("log.connection.close", "false");
    for (k, v) in &cfg.extra {
        cc.set(k, v);
    }
    cc
}

/// librdkafka reports a down broker many times a second; this context logs such errors
/// as one warning per 30 s (the rest at debug level), so an outage does not flood the log.
#[derive(Default)]
pub struct QuietContext {
    last_warn_ms: std::sync::atomic::AtomicU64,
}

impl QuietContext {
    const WARN_EVERY_MS: u64 = 30_000;

    fn should_warn(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= Self::WARN_EVERY_MS
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
                if self.should_warn() =>
            {
                tracing::warn!(target: "librdkafka", facility = fac, "{message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.should_warn() {
            tracing::warn!(target: "librdkafka", %error, "{reason} (repeats are logged at debug level for 30 s)");
        } else {
            tracing::debug!(target: "librdkafka", %error, "{reason}");
        }
    }
}

pub struct KafkaProducer {
    producer: FutureProducer<QuietContext>,
}

impl KafkaProducer {
    pub fn new(cfg: &KafkaConfig, max_in_flight_messages: usize) -> Result<Self, BusError> {
        let mut cc = client_config(cfg);
        cc.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", cfg.compression.as_str())
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("batch.size", cfg.batch_size_bytes.to_string())
            // retry until the broker takes it: the caller's spool is the durable copy
            .set("message.timeout.ms", "0")
            .set(
                "queue.buffering.max.messages",
                max_in_flight_messages.max(1).to_string(),
            );
        let producer: FutureProducer<QuietContext> = cc
            .create_with_context(QuietContext::default())
            .map_err(|source| BusError::Client {
                brokers: cfg.brokers.clone(),
                source,
            })?;
        Ok(KafkaProducer { producer })
    }
}

impl Producer for KafkaProducer {
    fn send(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<DeliveryFuture, BusError> {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(value);
        if !key.is_empty() {
            record = record.key(key);
        }
        match self.producer.send_result(record) {
            Ok(fut) => {
                let topic = topic.to_string();
                Ok(async move {
                    match fut.await {
                        Ok(Ok(d)) => Ok(Delivered {
                            partition: d.partition,
                            offset: d.offset,
                        }),
                        Ok(Err((e, _msg))) => Err(BusError::Delivery {
                            topic,
                            reason: e.to_string(),
                        }),
                        Err(_canceled) => Err(BusError::Delivery {
                            topic,
                            reason: "producer closed before delivery".into(),
                        }),
                    }
                }
                .boxed())
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(BusError::QueueFull {
                    topic: topic.to_string(),
                })
            }
            Err((e, _)) => Err(BusError::Delivery {
                topic: topic.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn reachable(&self, timeout: Duration) -> BoxFuture<'static, bool> {
        let producer = self.producer.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, timeout).is_ok()
            })
            .await
            .unwrap_or(false)
        }
        .boxed()
    }
}

/// A topic as bookrec creates it: name, partitions and topic-level configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub config: Vec<(&'static str, &'static str)>,
}

/// Every topic of the pipeline, as `bookrec init` and the services create them: the events
/// topic and its dead letters with `kafka.partitions`, and each Debezium topic `land.cdc`
/// maps with `kafka.cdc_partitions` (1 keeps a table's changes in one order) and
/// `cleanup.policy=compact` (the latest change of a row is all a re-read needs).
pub fn pipeline_topics<'a>(
    cfg: &KafkaConfig,
    cdc_topics: impl IntoIterator<Item = &'a str>,
) -> Vec<TopicSpec> {
    let mut specs: Vec<TopicSpec> = [&cfg.topic, &cfg.dlq_topic]
        .into_iter()
        .map(|t| TopicSpec {
            name: t.clone(),
            partitions: cfg.partitions,
            config: Vec::new(),
        })
        .collect();
    specs.extend(cdc_topics.into_iter().map(|t| TopicSpec {
        name: t.to_string(),
        partitions: cfg.cdc_partitions,
        config: vec![("cleanup.policy", "compact")],
    }));
    specs
}

/// Creates the topics that do not exist yet (the broker may not auto-create on produce),
/// each with `kafka.partitions`.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<(), BusError> {
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|t| TopicSpec {
            name: (*t).to_string(),
            partitions: cfg.partitions,
            config: Vec::new(),
        })
        .collect();
    create_topics(cfg, &specs).await.map(|_| ())
}

/// Creates the topics of `specs` that do not exist yet; returns the names it created (a
/// topic that exists is left as it is, whatever its partitions).
pub async fn create_topics(
    cfg: &KafkaConfig,
    specs: &[TopicSpec],
) -> Result<Vec<String>, BusError> {
    let admin: AdminClient<QuietContext> = client_config(cfg)
        .create_with_context(QuietContext::default())
        .map_err(|source| BusError::Client {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(cfg.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let names = || {
        specs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let results =
        admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| BusError::CreateTopic {
                topic: names(),
                reason: e.to_string(),
            })?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(created)
}
