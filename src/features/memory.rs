//! The in-memory feature store: Redis semantics (hashes, sorted sets, expiry, offsets) behind one mutex, for the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Applied, Expiry, FeatureStore, FeaturesError, Op, Span, offsets_key};

#[derive(Debug, Clone)]
enum Value {
    Hash(BTreeMap<String, f64>),
    /// a hash of text values (a ranked list's reasons)
    Text(BTreeMap<String, String>),
    Zset(BTreeMap<String, f64>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Hash(_) => "hash",
            Value::Text(_) => "hash of text",
            Value::Zset(_) => "sorted set",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    values: HashMap<String, Value>,
    /// epoch milliseconds at which a key expires
    expires: HashMap<String, i64>,
    offsets: HashMap<String, BTreeMap<i32, i64>>,
}

impl State {
    fn live(&mut self, key: &str, now_ms: i64) -> Option<&mut Value> {
        if self.expires.get(key).is_some_and(|&at| at <= now_ms) {
            self.values.remove(key);
            self.expires.remove(key);
        }
        self.values.get_mut(key)
    }

    fn entry(&mut self, key: &str, now_ms: i64, empty: Value) -> Result<&mut Value, FeaturesError> {
        let wanted = empty.kind();
        if self.live(key, now_ms).is_none() {
            self.values.insert(key.to_owned(), empty);
            self.expires.remove(key);
        }
        let v = self.values.get_mut(key).expect("inserted above");
        if v.kind() != wanted {
            return Err(FeaturesError::WrongType {
                key: key.to_owned(),
                found: v.kind(),
                wanted,
            });
        }
        Ok(v)
    }

    fn expire(&mut self, key: &str, expiry: Expiry, now_ms: i64) {
        match expiry {
            Expiry::Never => {}
            Expiry::AfterSecs(s) => {
                self.expires
                    .insert(key.to_owned(), now_ms + s as i64 * 1000);
            }
            Expiry::AtEpochSecs(at) => {
                self.expires.insert(key.to_owned(), at * 1000);
            }
        }
    }
}

/// Redis semantics in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// the time expiry is judged by (epoch ms); `None`: the wall clock
    clock: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store whose "now" (for expiry: TTLs and time-bucket keys) is what `clock` holds,
    /// in epoch milliseconds: replaying events of another time, keys expire as they would
    /// have then.
    pub fn with_clock(clock: std::sync::Arc<std::sync::atomic::AtomicI64>) -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            clock: Some(clock),
        }
    }

    fn now(&self) -> i64 {
        match &self.clock {
            Some(c) => c.load(std::sync::atomic::Ordering::Relaxed),
            None => now_ms(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // a panic while holding the lock cannot leave a half-applied batch visible: apply
        // validates everything first and writes into a copy it swaps in
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[async_trait::async_trait]
impl FeatureStore for MemoryStore {
    async fn apply_expecting(
        &self,
        group: &str,
        ops: &[Op],
        spans: &[Span],
        expect: &[(i32, i64)],
    ) -> Result<Applied, FeaturesError> {
        let now = self.now();
        let mut guard = self.lock();
        let stored = guard
            .offsets
            .get(&offsets_key(group))
            .cloned()
            .unwrap_or_default();
        for &(partition, expected) in expect {
            let have = stored.get(&partition).copied();
            if have.is_none_or(|h| h < expected) {
                return Err(FeaturesError::StateLost {
                    group: group.to_owned(),
                    partition,
                    stored: have,
                    expected,
                });
            }
        }
        for s in spans {
            if let Some(&have) = stored.get(&s.partition) {
                if have >= s.to {
                    return Ok(Applied::AlreadyApplied);
                }
                if have > s.from {
                    return Err(FeaturesError::OffsetConflict {
                        group: group.to_owned(),
                        partition: s.partition,
                        stored: have,
                        from: s.from,
                    });
                }
            }
        }
        // all or nothing: apply to the touched keys' copies, then swap them in
        let mut scratch = State::default();
        for key in ops.iter().flat_map(Op::keys) {
            if !scratch.values.contains_key(key)
                && let Some(v) = guard.live(key, now).cloned()
            {
                scratch.values.insert(key.to_owned(), v);
                if let Some(&at) = guard.expires.get(key) {
                    scratch.expires.insert(key.to_owned(), at);
                }
            }
        }
        for op in ops {
            match op {
                Op::PushRecent {
                    key,
                    member,
                    at,
                    max_len,
                    expiry,
                } => {
                    if let Value::Zset(z) = scratch.entry(key, now, Value::Zset(BTreeMap::new()))? {
                        // ZADD GT, then ZREMRANGEBYRANK 0 -(max_len+1): the lowest ranks
                        // (score, then member, ascending) go
                        let s = z.entry(member.clone()).or_insert(*at);
                        *s = s.max(*at);
                        if z.len() > *max_len {
                            let mut ranked: Vec<(f64, String)> =
                                z.iter().map(|(m, s)| (*s, m.clone())).collect();
                            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
                            for (_, m) in &ranked[..ranked.len() - max_len] {
                                z.remove(m);
                            }
                        }
                    }
                    scratch.expire(key, *expiry, now);
                }
                Op::HashMax { key, field, value } => {
                    if let Value::Hash(h) = scratch.entry(key, now, Value::Hash(BTreeMap::new()))? {
                        let v = h.entry(field.clone()).or_insert(*value);
                        *v = v.max(*value);
                    }
                }
                Op::HashIncr {
                    key,
                    field,
                    delta,
                    expiry,
                } => {
                    if let Value::Hash(h) = scratch.entry(key, now, Value::Hash(BTreeMap::new()))? {
                        *h.entry(field.clone()).or_insert(0.0) += delta;
                    }
                    scratch.expire(key, *expiry, now);
                }
                Op::ZsetIncr {
                    key,
                    member,
                    delta,
                    expiry,
                } => {
                    if let Value::Zset(z) = scratch.entry(key, now, Value::Zset(BTreeMap::new()))? {
                        *z.entry(member.clone()).or_insert(0.0) += delta;
                    }
                    scratch.expire(key, *expiry, now);
                }
                Op::Best {
                    key,
                    member,
                    score,
                    max_len,
                    reason,
                    expiry,
                } => {
                    let old_reason = match reason {
                        Some((rk, _)) => {
                            match scratch.entry(rk, now, Value::Text(BTreeMap::new()))? {
                                Value::Text(t) => t.get(member).cloned(),
                                _ => None,
                            }
                        }
                        None => None,
                    };
                    let mut take = false;
                    let mut trimmed = Vec::new();
                    if let Value::Zset(z) = scratch.entry(key, now, Value::Zset(BTreeMap::new()))? {
                        take = match z.get(member) {
                            None => true,
                            Some(&c) if *score > c => true,
                            // equal scores: the smaller reason text wins
                            Some(&c) if *score == c => match (reason, &old_reason) {
                                (Some((_, why)), Some(old)) => why < old,
                                (Some(_), None) => true,
                                _ => false,
                            },
                            _ => false,
                        };
                        if take {
                            z.insert(member.clone(), *score);
                        }
                        if z.len() > *max_len {
                            let mut ranked: Vec<(f64, String)> =
                                z.iter().map(|(m, s)| (*s, m.clone())).collect();
                            ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
                            for (_, m) in ranked.drain(..ranked.len() - max_len) {
                                z.remove(&m);
                                trimmed.push(m);
                            }
                        }
                    }
                    if let Some((rk, why)) = reason {
                        if let Value::Text(t) =
                            scratch.entry(rk, now, Value::Text(BTreeMap::new()))?
                        {
                            if take {
                                t.insert(member.clone(), why.clone());
                            }
                            for m in &trimmed {
                                t.remove(m);
                            }
                        }
                        scratch.expire(rk, *expiry, now);
                    }
                    scratch.expire(key, *expiry, now);
                }
            }
        }
        for (k, v) in scratch.values {
            guard.expires.remove(&k);
            guard.values.insert(k, v);
        }
        for (k, at) in scratch.expires {
            guard.expires.insert(k, at);
        }
        let offsets = guard.offsets.entry(offsets_key(group)).or_default();
        for s in spans {
            offsets.insert(s.partition, s.to);
        }
        Ok(Applied::Applied)
    }

    async fn offsets(&self, group: &str) -> Result<BTreeMap<i32, i64>, FeaturesError> {
        Ok(self
            .lock()
            .offsets
            .get(&offsets_key(group))
            .cloned()
            .unwrap_or_default())
    }

    async fn hash(&self, key: &str) -> Result<Vec<(String, f64)>, FeaturesError> {
        match self.lock().live(key, self.now()) {
            None => Ok(Vec::new()),
            Some(Value::Hash(h)) => Ok(h.iter().map(|(k, v)| (k.clone(), *v)).collect()),
            Some(other) => Err(FeaturesError::WrongType {
                key: key.to_owned(),
                found: other.kind(),
                wanted: "hash",
            }),
        }
    }

    async fn texts(&self, key: &str) -> Result<Vec<(String, String)>, FeaturesError> {
        match self.lock().live(key, self.now()) {
            None => Ok(Vec::new()),
            Some(Value::Text(t)) => Ok(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(other) => Err(FeaturesError::WrongType {
                key: key.to_owned(),
                found: other.kind(),
                wanted: "hash of text",
            }),
        }
    }

    async fn top(&self, key: &str, n: usize) -> Result<Vec<(String, f64)>, FeaturesError> {
        match self.lock().live(key, self.now()) {
            None => Ok(Vec::new()),
            Some(Value::Zset(z)) => {
                let mut v: Vec<(String, f64)> = z.iter().map(|(k, s)| (k.clone(), *s)).collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
                v.truncate(n);
                Ok(v)
            }
            Some(other) => Err(FeaturesError::WrongType {
                key: key.to_owned(),
                found: other.kind(),
                wanted: "sorted set",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    #[tokio::test]
    async fn a_store_on_a_replay_clock_expires_keys_by_that_clock() {
        // 2001-01-01: a time bucket of then lives while the clock says then
        let then = 978_307_200_000_i64;
        let clock = Arc::new(AtomicI64::new(then));
        let store = MemoryStore::with_clock(clock.clone());
        let op = Op::HashIncr {
            key: "rt:cat:u1:978307200".into(),
            field: "fantasy".into(),
            delta: 1.0,
            expiry: Expiry::AtEpochSecs(then / 1000 + 3660),
        };
        let span = Span {
            partition: 0,
            from: 0,
            to: 1,
        };
        store.apply("g", &[op], &[span]).await.expect("apply");
        let read = || store.hash("rt:cat:u1:978307200");
        assert_eq!(read().await.expect("hash").len(), 1);
        clock.store(then + 3_659_000, Ordering::Relaxed);
        assert_eq!(read().await.expect("hash").len(), 1);
        clock.store(then + 3_660_000, Ordering::Relaxed);
        assert!(read().await.expect("hash").is_empty());
    }
}
