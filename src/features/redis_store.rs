//! The Redis feature store. A batch is one Lua script: it checks the group's offsets and
//! the types of every key first (a script that fails half-way is not rolled back by Redis,
//! so nothing is written before everything is known to succeed), then applies the ops and
//! records the new offsets. Redis runs a script atomically: readers see a batch whole or not.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::{Applied, Expiry, FeatureStore, FeaturesError, Op, Read, Reply, Span, offsets_key};

const APPLY: &str = r#"
-- KEYS[1] = offsets hash; KEYS[2..] = the ops' keys
-- ARGV: nexpect, (partition, offset) * nexpect, nspans, (partition, from, to) * nspans,
--       then per op: code, key index, a, b, c, expiry kind, expiry, reasons key index
--       (0: none), reason
local i = 1
local nexpect = tonumber(ARGV[i]); i = i + 1
for e = 1, nexpect do
  local part, want = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  local stored = redis.call('HGET', KEYS[1], part)
  if (not stored) or tonumber(stored) < want then return {4, part, stored or ''} end
end
local nspans = tonumber(ARGV[i]); i = i + 1
local spans = {}
for s = 1, nspans do
  local part, from, to = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]); i = i + 3
  local stored = redis.call('HGET', KEYS[1], part)
  if stored then
    stored = tonumber(stored)
    if stored >= to then return {0, part, stored} end
    if stored > from then return {2, part, stored} end
  end
  spans[#spans + 1] = {part, to}
end
local first_op = i
local want = {R = 'zset', H = 'hash', M = 'hash', Z = 'zset', B = 'zset'}
while i <= #ARGV do
  local k = KEYS[tonumber(ARGV[i + 1])]
  local t = redis.call('TYPE', k).ok
  if t ~= 'none' and t ~= want[ARGV[i]] then return {3, k, t} end
  local r = tonumber(ARGV[i + 7])
  if r > 0 then
    t = redis.call('TYPE', KEYS[r]).ok
    if t ~= 'none' and t ~= 'hash' then return {3, KEYS[r], t} end
  end
  i = i + 9
end
-- byte order, as Rust compares strings (Lua's < follows the server's locale)
local function less(x, y)
  for j = 1, math.min(#x, #y) do
    local p, q = string.byte(x, j), string.byte(y, j)
    if p ~= q then return p < q end
  end
  return #x < #y
end
i = first_op
while i <= #ARGV do
  local code, k, a, b, c = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local ek, ev = ARGV[i + 5], ARGV[i + 6]
  local r, why = tonumber(ARGV[i + 7]), ARGV[i + 8]
  local rk = nil
  if r > 0 then rk = KEYS[r] end
  i = i + 9
  if code == 'R' then
    redis.call('ZADD', k, 'GT', b, a)
    redis.call('ZREMRANGEBYRANK', k, 0, -(tonumber(c) + 1))
  elseif code == 'H' then
    redis.call('HINCRBYFLOAT', k, a, b)
  elseif code == 'M' then
    local cur = redis.call('HGET', k, a)
    if (not cur) or tonumber(cur) < tonumber(b) then redis.call('HSET', k, a, b) end
  elseif code == 'B' then
    local cur = redis.call('ZSCORE', k, a)
    local take = (not cur) or tonumber(cur) < tonumber(b)
    if (not take) and tonumber(cur) == tonumber(b) and rk then
      local old = redis.call('HGET', rk, a)
      take = (not old) or less(why, old)
    end
    if take then
      redis.call('ZADD', k, b, a)
      if rk then redis.call('HSET', rk, a, why) end
    end
    local over = redis.call('ZCARD', k) - tonumber(c)
    if over > 0 then
      local gone = redis.call('ZRANGE', k, 0, over - 1)
      redis.call('ZREMRANGEBYRANK', k, 0, over - 1)
      if rk then redis.call('HDEL', rk, unpack(gone)) end
    end
  else
    redis.call('ZINCRBY', k, b, a)
  end
  if ek == 'I' then
    redis.call('EXPIRE', k, ev)
    if rk then redis.call('EXPIRE', rk, ev) end
  elseif ek == 'A' then
    redis.call('EXPIREAT', k, ev)
    if rk then redis.call('EXPIREAT', rk, ev) end
  end
end
for _, s in ipairs(spans) do
  redis.call('HSET', KEYS[1], s[1], s[2])
end
return {1, '', 0}
"#;

/// Redis through a reconnecting multiplexed connection; every call has a timeout.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    script: redis::Script,
    url: String,
    timeout: Duration,
    /// an apply's own timeout: a batch's script can take far longer than a read
    apply_timeout: Duration,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`); each call gives up after `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<RedisStore, FeaturesError> {
        let shown = crate::config::redact_url(url);
        let err = |source| FeaturesError::Redis {
            url: shown.clone(),
            source,
        };
        let client = redis::Client::open(url).map_err(err)?;
        let conn = tokio::time::timeout(timeout, ConnectionManager::new(client))
            .await
            .map_err(|_| FeaturesError::Timeout {
                url: shown.clone(),
                op: "connect",
                ms: timeout.as_millis() as u64,
            })?
            .map_err(err)?;
        Ok(RedisStore {
            conn,
            script: redis::Script::new(APPLY),
            url: shown,
            timeout,
            apply_timeout: timeout,
        })
    }

    /// Gives each apply `timeout` (instead of the reads' timeout): a large batch's script
    /// takes longer than a read.
    pub fn with_apply_timeout(mut self, timeout: Duration) -> RedisStore {
        self.apply_timeout = timeout;
        self
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FeaturesError> {
        self.timed_for(op, self.timeout, f).await
    }

    async fn timed_for<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FeaturesError> {
        match tokio::time::timeout(timeout, f).await {
            Ok(r) => r.map_err(|source| FeaturesError::Redis {
                url: self.url.clone(),
                source,
            }),
            Err(_) => Err(FeaturesError::Timeout {
                url: self.url.clone(),
                op,
                ms: timeout.as_millis() as u64,
            }),
        }
    }
}

fn expiry_args(e: Expiry) -> (&'static str, String) {
    match e {
        Expiry::Never => ("N", String::new()),
        Expiry::AfterSecs(s) => ("I", s.max(1).to_string()),
        Expiry::AtEpochSecs(at) => ("A", at.to_string()),
    }
}

/// A float as Redis reads it back exactly.
fn num(x: f64) -> String {
    format!("{x:?}")
}

#[async_trait::async_trait]
impl FeatureStore for RedisStore {
    async fn apply_expecting(
        &self,
        group: &str,
        ops: &[Op],
        spans: &[Span],
        expect: &[(i32, i64)],
    ) -> Result<Applied, FeaturesError> {
        let mut inv = self.script.prepare_invoke();
        inv.key(offsets_key(group));
        inv.arg(expect.len());
        for (partition, offset) in expect {
            inv.arg(*partition).arg(*offset);
        }
        inv.arg(spans.len());
        for s in spans {
            inv.arg(s.partition).arg(s.from).arg(s.to);
        }
        // each key once in KEYS; ops name theirs by index
        fn index_of<'a>(
            keys: &mut std::collections::HashMap<&'a str, usize>,
            key: &'a str,
            inv: &mut redis::ScriptInvocation,
        ) -> usize {
            let next = keys.len() + 2;
            *keys.entry(key).or_insert_with(|| {
                inv.key(key);
                next
            })
        }
        let mut keys: std::collections::HashMap<&str, usize> = Default::default();
        for op in ops {
            let idx = index_of(&mut keys, op.key(), &mut inv);
            let (reason_idx, why) = match op {
                Op::Best {
                    reason: Some((rk, why)),
                    ..
                } => (index_of(&mut keys, rk, &mut inv), why.as_str()),
                _ => (0, ""),
            };
            let (code, a, b, c, expiry) = match op {
                Op::PushRecent {
                    member,
                    at,
                    max_len,
                    expiry,
                    ..
                } => ("R", member.clone(), num(*at), max_len.to_string(), *expiry),
                Op::HashMax { field, value, .. } => (
                    "M",
                    field.clone(),
                    num(*value),
                    String::new(),
                    Expiry::Never,
                ),
                Op::HashIncr {
                    field,
                    delta,
                    expiry,
                    ..
                } => ("H", field.clone(), num(*delta), String::new(), *expiry),
                Op::ZsetIncr {
                    member,
                    delta,
                    expiry,
                    ..
                } => ("Z", member.clone(), num(*delta), String::new(), *expiry),
                Op::Best {
                    member,
                    score,
                    max_len,
                    expiry,
                    ..
                } => (
                    "B",
                    member.clone(),
                    num(*score),
                    max_len.to_string(),
                    *expiry,
                ),
            };
            let (ek, ev) = expiry_args(expiry);
            inv.arg(code).arg(idx).arg(a).arg(b).arg(c).arg(ek).arg(ev);
            inv.arg(reason_idx).arg(why);
        }
        let mut conn = self.conn.clone();
        let (status, what, stored): (i64, String, String) = self
            .timed_for("apply", self.apply_timeout, inv.invoke_async(&mut conn))
            .await?;
        match status {
            1 => Ok(Applied::Applied),
            0 => Ok(Applied::AlreadyApplied),
            4 => {
                let partition = what.parse().unwrap_or(-1);
                Err(FeaturesError::StateLost {
                    group: group.to_owned(),
                    partition,
                    stored: stored.parse().ok(),
                    expected: expect
                        .iter()
                        .find(|(p, _)| *p == partition)
                        .map_or(-1, |(_, o)| *o),
                })
            }
            2 => {
                let partition = what.parse().unwrap_or(-1);
                let from = spans
                    .iter()
                    .find(|s| s.partition == partition)
                    .map(|s| s.from)
                    .unwrap_or(-1);
                Err(FeaturesError::OffsetConflict {
                    group: group.to_owned(),
                    partition,
                    stored: stored.parse().unwrap_or(-1),
                    from,
                })
            }
            _ => {
                let kind = |t: &str| match t {
                    "list" => "list",
                    "hash" => "hash",
                    "zset" => "sorted set",
                    "string" => "string",
                    "set" => "set",
                    _ => "value of another type",
                };
                let wanted = match ops.iter().find(|o| o.key() == what) {
                    Some(Op::HashIncr { .. } | Op::HashMax { .. }) => "hash",
                    Some(_) => "sorted set",
                    None => "hash", // a ranked list's reasons
                };
                Err(FeaturesError::WrongType {
                    found: kind(&stored),
                    key: what,
                    wanted,
                })
            }
        }
    }

    async fn offsets(&self, group: &str) -> Result<BTreeMap<i32, i64>, FeaturesError> {
        let mut conn = self.conn.clone();
        let raw: BTreeMap<i32, i64> = self
            .timed("offsets", conn.hgetall(offsets_key(group)))
            .await?;
        Ok(raw)
    }

    async fn hash(&self, key: &str) -> Result<Vec<(String, f64)>, FeaturesError> {
        let mut conn = self.conn.clone();
        let raw: BTreeMap<String, f64> = self.timed("hash", conn.hgetall(key)).await?;
        Ok(raw.into_iter().collect())
    }

    async fn texts(&self, key: &str) -> Result<Vec<(String, String)>, FeaturesError> {
        let mut conn = self.conn.clone();
        let raw: BTreeMap<String, String> = self.timed("texts", conn.hgetall(key)).await?;
        Ok(raw.into_iter().collect())
    }

    async fn top(&self, key: &str, n: usize) -> Result<Vec<(String, f64)>, FeaturesError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        self.timed("top", conn.zrevrange_withscores(key, 0, n as isize - 1))
            .await
    }

    async fn read_many(&self, reads: &[Read<'_>]) -> Result<Vec<Reply>, FeaturesError> {
        if reads.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for r in reads {
            match r {
                Read::Top(key, n) => {
                    pipe.zrevrange_withscores(*key, 0, (*n as isize).max(1) - 1);
                }
                Read::Hash(key) | Read::Texts(key) => {
                    pipe.hgetall(*key);
                }
            }
        }
        let mut conn = self.conn.clone();
        // every answer is a list of (text, text) pairs; scores are parsed per read
        let raw: Vec<Vec<(String, String)>> =
            self.timed("read_many", pipe.query_async(&mut conn)).await?;
        let mut out = Vec::with_capacity(raw.len());
        for (r, mut v) in reads.iter().zip(raw) {
            // ZREVRANGE answers in rank order; hashes are sorted by field
            if !matches!(r, Read::Top(..)) {
                v.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push(match r {
                Read::Top(_, 0) => Reply::default(),
                Read::Top(key, _) | Read::Hash(key) => {
                    let mut scores = Vec::with_capacity(v.len());
                    for (m, x) in v {
                        let x = x.parse::<f64>().map_err(|_| FeaturesError::WrongType {
                            key: (*key).to_owned(),
                            found: "text value",
                            wanted: "number",
                        })?;
                        scores.push((m, x));
                    }
                    Reply::scores(scores)
                }
                Read::Texts(_) => Reply {
                    scores: Vec::new(),
                    texts: v,
                },
            });
        }
        Ok(out)
    }
}
