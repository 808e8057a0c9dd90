//! The realtime feature store: Redis, or an in-memory store with the same semantics for the
//! embedded default and tests of pure logic. One contract (the [`FeatureStore`] trait) and
//! one contract-test suite (`tests/it/features.rs`) for both. The only module that names
//! `redis`.
//!
//! Writes come as micro-batches: a list of [`Op`]s plus the Kafka offsets the batch covers.
//! [`FeatureStore::apply`] applies both atomically and at most once — a batch whose offsets
//! the store already holds is skipped (a replay changes nothing), and a batch that overlaps
//! them only in part is refused (its consumer did not start at the stored offsets). A batch
//! may start after them: offsets can have gaps. That gives exactly-once updates without
//! Kafka transactions.

use std::collections::BTreeMap;

mod memory;
mod redis_store;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("redis {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis {url}: {op} timed out after {ms} ms")]
    Timeout {
        url: String,
        op: &'static str,
        ms: u64,
    },
    #[error(
        "offsets of group {group}, partition {partition}: the store has {stored}, the batch starts at {from}"
    )]
    OffsetConflict {
        group: String,
        partition: i32,
        stored: i64,
        from: i64,
    },
    #[error(
        "offsets of group {group}, partition {partition}: the store has {}, but this process \
         applied up to {expected}: the store lost state (restarted empty, flushed, or restored \
         an older snapshot)",
        stored.map_or("none".to_string(), |s| s.to_string())
    )]
    StateLost {
        group: String,
        partition: i32,
        stored: Option<i64>,
        expected: i64,
    },
    #[error("key {key}: holds a {found}, not a {wanted}")]
    WrongType {
        key: String,
        found: &'static str,
        wanted: &'static str,
    },
}

/// When a key expires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expiry {
    Never,
    /// this many seconds after the write (renewed by each write)
    AfterSecs(u64),
    /// at this epoch second (deterministic under replay: time buckets)
    AtEpochSecs(i64),
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Records `member` at time `at` (epoch milliseconds) in the sorted set at `key` — the
    /// later of its stored and new time wins — and keeps the `max_len` latest: newest first
    /// (read with [`FeatureStore::top`]), de-duplicated, trimmed, and each member's time kept
    /// (so readers can ignore what is older than a cut-off). Order-independent: a batch
    /// gives the same set whatever order its rows come in.
    PushRecent {
        key: String,
        member: String,
        at: f64,
        max_len: usize,
        expiry: Expiry,
    },
    /// Sets `field` of the hash at `key` to `value` unless it holds a greater one
    /// (high-water marks: the stream's newest event time and last apply time).
    HashMax {
        key: String,
        field: String,
        value: f64,
    },
    /// Adds `delta` to `field` of the hash at `key`.
    HashIncr {
        key: String,
        field: String,
        delta: f64,
        expiry: Expiry,
    },
    /// Adds `delta` to `member`'s score in the sorted set at `key`.
    ZsetIncr {
        key: String,
        member: String,
        delta: f64,
        expiry: Expiry,
    },
    /// Offers `member` with `score` to the ranked list (a sorted set) at `key`: the member
    /// keeps its best score (the greater of stored and offered), and with `reason` its
    /// reason is the best offer's (on equal scores the smaller reason text), kept in the
    /// text hash `reason.0` under the member; the list keeps its `max_len` best members
    /// (the lowest scores go, ties: the smaller member first, as ZREMRANGEBYRANK) and a
    /// trimmed member's reason goes with it. Order-independent and idempotent for a given
    /// set of offers, and trimming loses nothing a later offer could need: a member trimmed
    /// once ranks below `max_len` members whose scores can only rise.
    Best {
        key: String,
        member: String,
        score: f64,
        max_len: usize,
        /// (the reasons' hash key, this offer's reason)
        reason: Option<(String, String)>,
        expiry: Expiry,
    },
}

impl FeaturesError {
    /// A connection error or a timeout: the call may succeed if tried again (an apply is
    /// idempotent, so retrying one is safe).
    pub fn is_transient(&self) -> bool {
        match self {
            FeaturesError::Timeout { .. } => true,
            FeaturesError::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
                    || source.is_timeout()
                    || matches!(
                        source.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::MasterDown
                                | redis::ServerErrorKind::ClusterDown
                        )
                    )
            }
            _ => false,
        }
    }
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::PushRecent { key, .. }
            | Op::HashIncr { key, .. }
            | Op::ZsetIncr { key, .. }
            | Op::HashMax { key, .. }
            | Op::Best { key, .. } => key,
        }
    }

    /// Every key the op writes: its own and, for [`Op::Best`] with reasons, the reasons' hash.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let extra = match self {
            Op::Best {
                reason: Some((rk, _)),
                ..
            } => Some(rk.as_str()),
            _ => None,
        };
        std::iter::once(self.key()).chain(extra)
    }
}

/// The offsets one batch covers in one partition: `from` is its first offset, `to` the
/// next offset to consume after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// What [`FeatureStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// the store already holds these offsets: nothing changed
    AlreadyApplied,
}

#[async_trait::async_trait]
pub trait FeatureStore: Send + Sync {
    /// Applies `ops` and records `spans` under `group`, atomically; see the module doc.
    async fn apply(
        &self,
        group: &str,
        ops: &[Op],
        spans: &[Span],
    ) -> Result<Applied, FeaturesError> {
        self.apply_expecting(group, ops, spans, &[]).await
    }
    /// [`FeatureStore::apply`], after checking in the same atomic step that the store still
    /// holds at least the offsets `expect` names per partition (what the caller applied or
    /// read before). A partition whose stored offset is gone or lower fails the call with
    /// [`FeaturesError::StateLost`] and nothing is written: the store restarted empty, was
    /// flushed, or went back to an older snapshot, and applying on top would build features
    /// from a partial history.
    async fn apply_expecting(
        &self,
        group: &str,
        ops: &[Op],
        spans: &[Span],
        expect: &[(i32, i64)],
    ) -> Result<Applied, FeaturesError>;
    /// The next offset to consume per partition, as recorded by `apply`.
    async fn offsets(&self, group: &str) -> Result<BTreeMap<i32, i64>, FeaturesError>;
    /// A hash's fields and values, sorted by field.
    async fn hash(&self, key: &str) -> Result<Vec<(String, f64)>, FeaturesError>;
    /// The `n` highest-scored members of a sorted set, highest first (ties: the greater
    /// member first, as Redis's ZREVRANGE); for `PushRecent` sets, the newest first with
    /// their times.
    async fn top(&self, key: &str, n: usize) -> Result<Vec<(String, f64)>, FeaturesError>;
    /// A text hash's fields and values (the reasons of an [`Op::Best`] list), sorted by field.
    async fn texts(&self, key: &str) -> Result<Vec<(String, String)>, FeaturesError>;
    /// Several reads at once, answers in order (Redis: one pipelined round trip).
    async fn read_many(&self, reads: &[Read<'_>]) -> Result<Vec<Reply>, FeaturesError> {
        let mut out = Vec::with_capacity(reads.len());
        for r in reads {
            out.push(match r {
                Read::Top(key, n) => Reply::scores(self.top(key, *n).await?),
                Read::Hash(key) => Reply::scores(self.hash(key).await?),
                Read::Texts(key) => Reply {
                    scores: Vec::new(),
                    texts: self.texts(key).await?,
                },
            });
        }
        Ok(out)
    }
}

/// One read of [`FeatureStore::read_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read<'a> {
    /// as [`FeatureStore::top`]
    Top(&'a str, usize),
    /// as [`FeatureStore::hash`]
    Hash(&'a str),
    /// as [`FeatureStore::texts`]
    Texts(&'a str),
}

/// The answer to one [`Read`]: `scores` for `Top` and `Hash`, `texts` for `Texts`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub scores: Vec<(String, f64)>,
    pub texts: Vec<(String, String)>,
}

impl Reply {
    pub fn scores(scores: Vec<(String, f64)>) -> Reply {
        Reply {
            scores,
            texts: Vec::new(),
        }
    }
}

/// The key under which a group's offsets live.
pub fn offsets_key(group: &str) -> String {
    format!("bookrec:offsets:{group}")
}

/// The hash where a stream group keeps its high-water marks (`event_ms`: the newest event
/// time applied; `applied_ms`: when the last batch was applied), for readers to tell the
/// features' age.
pub fn progress_key(group: &str) -> String {
    format!("bookrec:progress:{group}")
}
