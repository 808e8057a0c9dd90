//! A realtime query's sink: how its result rows become feature-store [`Op`]s. Pure.
//!
//! Header keys (besides `name` and `description`):
//!
//! - `sink: recent | hash | zset | ranked` — the latest members with their times (a sorted
//!   set scored by time: newest first, de-duplicated, trimmed), a hash of counters, a sorted
//!   set of scores, or a ranked list (a sorted set keeping each member's best score and the
//!   `max_len` best members — [`Op::Best`] — with each member's reason in a text hash);
//! - `key: rt:recent:{user_id}` — the key pattern, `{column}` taken from each row;
//! - `member: book_id` — the column holding the list member, hash field or set member;
//! - `value: n` — (hash, zset) the column added to the field's or member's value; (recent)
//!   the column with the member's time in epoch milliseconds (the later time wins);
//! - `max_len: 50` — (recent, ranked) the list keeps this many members;
//! - `reason: reason` — (ranked) the column with each row's reason (free text, at most
//!   200 characters), kept for the member's best row in the hash named by
//! - `reason_key: rec:why:{user_id}` — (ranked, with `reason`) the reasons' key pattern;
//!   its text before the first `{column}` must not begin the list key's (or the other way
//!   round), so no id can make one user's reasons collide with another's list;
//! - `ttl_secs: 2592000` — the key expires this long after its last write, or
//! - `expire_at: expire_at` — the column with the epoch second the key expires at (time
//!   buckets of a window: deterministic under replay);
//! - `window: …` — documentation of the window the keys implement (free text).

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};

use crate::features::{Expiry, Op};
use crate::sql::catalog::{CatalogError, Query};

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Recent { max_len: usize },
    Hash,
    Zset,
    Ranked { max_len: usize },
}

/// The longest reason text a ranked sink keeps (a longer one is cut at a character
/// boundary): reasons travel in every API response.
pub const MAX_REASON_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq)]
enum KeyPart {
    Text(String),
    Column(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExpirySpec {
    Never,
    AfterSecs(u64),
    AtColumn(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sink {
    pub kind: SinkKind,
    key: Vec<KeyPart>,
    pub member: String,
    pub value: Option<String>,
    pub expiry: ExpirySpec,
    pub window: Option<String>,
    /// (ranked) the reason column and the reasons' key pattern
    reason: Option<(String, Vec<KeyPart>)>,
}

fn err(q: &Query, line: usize, message: impl Into<String>) -> CatalogError {
    CatalogError {
        path: q.path.clone(),
        line,
        message: message.into(),
    }
}

impl Sink {
    /// Reads the sink from a realtime query's header; errors name the file and line.
    pub fn from_query(q: &Query) -> Result<Sink, CatalogError> {
        let get = |k: &str| q.sink.get(k).cloned();
        let (kind_text, kind_line) = get("sink").ok_or_else(|| err(q, 1, "no `-- sink:`"))?;
        let number = |k: &str| -> Result<Option<u64>, CatalogError> {
            match get(k) {
                None => Ok(None),
                Some((v, line)) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| err(q, line, format!("{k} {v:?}: a whole number > 0"))),
            }
        };
        let kind = match kind_text.as_str() {
            "recent" => SinkKind::Recent {
                max_len: number("max_len")?.unwrap_or(50) as usize,
            },
            "hash" => SinkKind::Hash,
            "zset" => SinkKind::Zset,
            "ranked" => SinkKind::Ranked {
                max_len: number("max_len")?.unwrap_or(50) as usize,
            },
            other => {
                return Err(err(
                    q,
                    kind_line,
                    format!("sink {other:?}: use recent, hash, zset or ranked"),
                ));
            }
        };
        let (pattern, key_line) = get("key").ok_or_else(|| err(q, 1, "no `-- key:` pattern"))?;
        let key = parse_pattern(&pattern).map_err(|m| err(q, key_line, m))?;
        let (member, _) = get("member").ok_or_else(|| err(q, 1, "no `-- member:` column"))?;
        let value = get("value").map(|v| v.0);
        if value.is_none() {
            let what = match kind {
                SinkKind::Recent { .. } => "the column with each member's time, epoch ms",
                SinkKind::Ranked { .. } => "the column with each member's score",
                _ => "the column added",
            };
            return Err(err(
                q,
                kind_line,
                format!("sink {kind_text} needs `-- value:` ({what})"),
            ));
        }
        let expiry = match (number("ttl_secs")?, get("expire_at")) {
            (Some(_), Some((_, line))) => {
                return Err(err(q, line, "use ttl_secs or expire_at, not both"));
            }
            (Some(s), None) => ExpirySpec::AfterSecs(s),
            (None, Some((c, _))) => ExpirySpec::AtColumn(c),
            (None, None) => ExpirySpec::Never,
        };
        let reason = match (get("reason"), get("reason_key")) {
            (None, None) => None,
            (Some((_, line)), _) | (None, Some((_, line)))
                if !matches!(kind, SinkKind::Ranked { .. }) =>
            {
                return Err(err(
                    q,
                    line,
                    "reason and reason_key belong to a ranked sink",
                ));
            }
            (Some((column, _)), Some((pattern, line))) => {
                let parts = parse_pattern(&pattern).map_err(|m| err(q, line, m))?;
                let (a, b) = (lead(&key), lead(&parts));
                if a.starts_with(b) || b.starts_with(a) {
                    return Err(err(
                        q,
                        line,
                        format!(
                            "reason_key {pattern:?} and key {:?} begin alike ({b:?}, {a:?}):                              an id could make one's key the other's; give them distinct                              prefixes such as rec:rt: and rec:why:",
                            pattern_text(&key)
                        ),
                    ));
                }
                Some((column, parts))
            }
            (Some((_, line)), None) => {
                return Err(err(
                    q,
                    line,
                    "reason needs `-- reason_key:` (the reasons' hash key pattern)",
                ));
            }
            (None, Some((_, line))) => {
                return Err(err(q, line, "reason_key needs `-- reason:` (the column)"));
            }
        };
        Ok(Sink {
            kind,
            key,
            member,
            value,
            expiry,
            window: get("window").map(|w| w.0),
            reason,
        })
    }

    /// The columns the sink reads from each row.
    pub fn columns(&self) -> Vec<&str> {
        let mut c: Vec<&str> = self
            .key
            .iter()
            .filter_map(|p| match p {
                KeyPart::Column(c) => Some(c.as_str()),
                KeyPart::Text(_) => None,
            })
            .collect();
        c.push(&self.member);
        if let Some(v) = &self.value {
            c.push(v);
        }
        if let ExpirySpec::AtColumn(e) = &self.expiry {
            c.push(e);
        }
        if let Some((r, parts)) = &self.reason {
            c.push(r);
            c.extend(parts.iter().filter_map(|p| match p {
                KeyPart::Column(c) => Some(c.as_str()),
                KeyPart::Text(_) => None,
            }));
        }
        c
    }

    /// Checks the query's result schema has every column the sink reads.
    pub fn check(&self, q: &Query, schema: &Schema) -> Result<(), CatalogError> {
        for c in self.columns() {
            if schema.field_with_name(c).is_err() {
                let line = [
                    "key",
                    "member",
                    "value",
                    "expire_at",
                    "reason",
                    "reason_key",
                ]
                .iter()
                .filter_map(|k| q.sink.get(*k))
                .find(|(v, _)| v.contains(c))
                .map(|(_, l)| *l)
                .unwrap_or(1);
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(err(
                    q,
                    line,
                    format!(
                        "the sink reads column {c}, which the query does not return ({})",
                        have.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The ops for result `batches`, in row order. Rows with a null key part or member are
    /// skipped and counted (second value).
    pub fn ops(&self, batches: &[RecordBatch]) -> Result<(Vec<Op>, usize), String> {
        let mut ops = Vec::new();
        let mut skipped = 0;
        for b in batches {
            let text = |c: &str| -> Result<arrow::array::ArrayRef, String> {
                let a = b
                    .column_by_name(c)
                    .ok_or_else(|| format!("column {c} missing"))?;
                cast(a, &DataType::Utf8).map_err(|e| format!("column {c}: {e}"))
            };
            let number = |c: &str, t: &DataType| -> Result<arrow::array::ArrayRef, String> {
                let a = b
                    .column_by_name(c)
                    .ok_or_else(|| format!("column {c} missing"))?;
                cast(a, t).map_err(|e| format!("column {c}: {e}"))
            };
            let columns =
                |pattern: &[KeyPart]| -> Result<Vec<arrow::array::ArrayRef>, String> {
                    pattern
                        .iter()
                        .map(|p| match p {
                            KeyPart::Column(c) => text(c),
                            KeyPart::Text(t) => Ok(std::sync::Arc::new(
                                arrow::array::StringArray::from(vec![t.as_str(); b.num_rows()]),
                            )
                                as arrow::array::ArrayRef),
                        })
                        .collect()
                };
            let parts = columns(&self.key)?;
            let reason = match &self.reason {
                Some((column, pattern)) => Some((text(column)?, columns(pattern)?)),
                None => None,
            };
            let member = text(&self.member)?;
            let value = match &self.value {
                Some(v) => Some(number(v, &DataType::Float64)?),
                None => None,
            };
            let expire = match &self.expiry {
                ExpirySpec::AtColumn(c) => Some(number(c, &DataType::Int64)?),
                _ => None,
            };
            for r in 0..b.num_rows() {
                let Some(key) = row_key(&parts, r) else {
                    skipped += 1;
                    continue;
                };
                let m = member.as_string::<i32>();
                if m.is_null(r) {
                    skipped += 1;
                    continue;
                }
                let expiry = match (&self.expiry, &expire) {
                    (ExpirySpec::AfterSecs(s), _) => Expiry::AfterSecs(*s),
                    (ExpirySpec::AtColumn(_), Some(e)) if !e.is_null(r) => {
                        Expiry::AtEpochSecs(e.as_primitive::<Int64Type>().value(r))
                    }
                    _ => Expiry::Never,
                };
                let number = value
                    .as_ref()
                    .filter(|v| !v.is_null(r))
                    .map(|v| v.as_primitive::<Float64Type>().value(r));
                let delta = number.unwrap_or(0.0);
                let member = m.value(r).to_owned();
                ops.push(match self.kind {
                    SinkKind::Recent { max_len } => Op::PushRecent {
                        key,
                        member,
                        at: delta,
                        max_len,
                        expiry,
                    },
                    SinkKind::Hash => Op::HashIncr {
                        key,
                        field: member,
                        delta,
                        expiry,
                    },
                    SinkKind::Zset => Op::ZsetIncr {
                        key,
                        member,
                        delta,
                        expiry,
                    },
                    SinkKind::Ranked { max_len } => {
                        // a row without a finite score offers nothing
                        let Some(score) = number.filter(|x| x.is_finite()) else {
                            skipped += 1;
                            continue;
                        };
                        let reason = match &reason {
                            None => None,
                            Some((why, pattern)) => {
                                let Some(rk) = row_key(pattern, r) else {
                                    skipped += 1;
                                    continue;
                                };
                                let why = why.as_string::<i32>();
                                let text = if why.is_null(r) { "" } else { why.value(r) };
                                Some((rk, cut(text, MAX_REASON_CHARS).to_owned()))
                            }
                        };
                        Op::Best {
                            key,
                            member,
                            score,
                            max_len,
                            reason,
                            expiry,
                        }
                    }
                });
            }
        }
        if matches!(self.kind, SinkKind::Ranked { .. }) {
            ops = best_offers(ops);
        }
        Ok((ops, skipped))
    }
}

/// Row `r`'s key from its parts (each a text column), `None` when a part is null.
fn row_key(parts: &[arrow::array::ArrayRef], r: usize) -> Option<String> {
    let mut key = String::new();
    for p in parts {
        let p = p.as_string::<i32>();
        if p.is_null(r) {
            return None;
        }
        key.push_str(p.value(r));
    }
    Some(key)
}

/// At most `n` characters of `s`.
fn cut(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// One [`Op::Best`] per (key, member): the best offer (greatest score; equal scores, the
/// smaller reason), in the order members first appear. What the store would keep anyway:
/// fewer ops, the same result.
fn best_offers(ops: Vec<Op>) -> Vec<Op> {
    let mut at: std::collections::HashMap<(String, String), usize> = Default::default();
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let Op::Best {
            key, member, score, ..
        } = &op
        else {
            out.push(op);
            continue;
        };
        match at.get(&(key.clone(), member.clone())) {
            None => {
                at.insert((key.clone(), member.clone()), out.len());
                out.push(op);
            }
            Some(&i) => {
                if let Op::Best {
                    score: kept,
                    reason: kept_reason,
                    ..
                } = &out[i]
                {
                    let better = *score > *kept
                        || (*score == *kept
                            && match (&op, kept_reason) {
                                (
                                    Op::Best {
                                        reason: Some((_, why)),
                                        ..
                                    },
                                    Some((_, old)),
                                ) => why < old,
                                _ => false,
                            });
                    if better {
                        out[i] = op;
                    }
                }
            }
        }
    }
    out
}

/// The fixed text before a pattern's first column.
fn lead(parts: &[KeyPart]) -> &str {
    match parts.first() {
        Some(KeyPart::Text(t)) => t,
        _ => "",
    }
}

/// A pattern written back as text.
fn pattern_text(parts: &[KeyPart]) -> String {
    parts
        .iter()
        .map(|p| match p {
            KeyPart::Text(t) => t.clone(),
            KeyPart::Column(c) => format!("{{{c}}}"),
        })
        .collect()
}

/// `rt:cat:{user_id}:{bucket}` → text and column parts.
fn parse_pattern(p: &str) -> Result<Vec<KeyPart>, String> {
    let mut out = Vec::new();
    let mut rest = p;
    while let Some(i) = rest.find('{') {
        if i > 0 {
            out.push(KeyPart::Text(rest[..i].to_owned()));
        }
        let after = &rest[i + 1..];
        let j = after
            .find('}')
            .ok_or_else(|| format!("key {p:?}: a {{ without its }}"))?;
        let col = after[..j].trim();
        if col.is_empty() {
            return Err(format!("key {p:?}: an empty {{}}"));
        }
        out.push(KeyPart::Column(col.to_owned()));
        rest = &after[j + 1..];
    }
    if !rest.is_empty() {
        out.push(KeyPart::Text(rest.to_owned()));
    }
    if !out.iter().any(|k| matches!(k, KeyPart::Column(_))) {
        return Err(format!("key {p:?}: name at least one {{column}}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::catalog::{Kind, parse_kind};
    use arrow::array::{Int64Array, StringArray};
    use std::path::Path;
    use std::sync::Arc;

    fn query(header: &str) -> Query {
        parse_kind(
            Path::new("queries/realtime/x.sql"),
            &format!("-- name: x\n{header}\nSELECT 1"),
            Kind::Realtime,
        )
        .expect("parses")
    }

    #[test]
    fn rows_become_ops_in_order_with_keys_and_expiry() {
        let q = query(
            "-- sink: hash\n-- key: rt:cat:{user_id}:{bucket}\n-- member: category\n-- value: n\n-- expire_at: exp",
        );
        let sink = Sink::from_query(&q).expect("sink");
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                arrow::datatypes::Field::new("user_id", DataType::Utf8, true),
                arrow::datatypes::Field::new("bucket", DataType::Int64, false),
                arrow::datatypes::Field::new("category", DataType::Utf8, true),
                arrow::datatypes::Field::new("n", DataType::Int64, false),
                arrow::datatypes::Field::new("exp", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("u1"), None])),
                Arc::new(Int64Array::from(vec![60, 60])),
                Arc::new(StringArray::from(vec![Some("fantasy"), Some("x")])),
                Arc::new(Int64Array::from(vec![2, 1])),
                Arc::new(Int64Array::from(vec![420, 420])),
            ],
        )
        .expect("batch");
        sink.check(&q, &batch.schema()).expect("columns present");
        let (ops, skipped) = sink.ops(&[batch]).expect("ops");
        assert_eq!(skipped, 1);
        assert_eq!(
            ops,
            vec![Op::HashIncr {
                key: "rt:cat:u1:60".into(),
                field: "fantasy".into(),
                delta: 2.0,
                expiry: Expiry::AtEpochSecs(420),
            }]
        );
    }

    #[test]
    fn a_ranked_sink_offers_each_member_once_with_its_best_row_and_reason() {
        let q = query(
            "-- sink: ranked\n-- key: rec:rt:{user_id}\n-- member: book_id\n-- value: score\n-- reason: why\n-- reason_key: rec:why:{user_id}\n-- max_len: 2\n-- ttl_secs: 60",
        );
        let sink = Sink::from_query(&q).expect("sink");
        let long = "x".repeat(MAX_REASON_CHARS + 5);
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                arrow::datatypes::Field::new("user_id", DataType::Utf8, true),
                arrow::datatypes::Field::new("book_id", DataType::Utf8, true),
                arrow::datatypes::Field::new("score", DataType::Float64, true),
                arrow::datatypes::Field::new("why", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("u1"),
                    Some("u1"),
                    Some("u1"),
                    Some("u1"),
                    Some("u2"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("b1"),
                    Some("b1"),
                    Some("b1"),
                    Some("b2"),
                    Some("b9"),
                ])),
                Arc::new(arrow::array::Float64Array::from(vec![
                    Some(1.0),
                    Some(3.0),
                    Some(3.0),
                    Some(f64::NAN),
                    Some(2.0),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("similar_to:b7"),
                    Some("similar_to:b8"),
                    Some("popular_in:fantasy"),
                    Some("x"),
                    Some(long.as_str()),
                ])),
            ],
        )
        .expect("batch");
        sink.check(&q, &batch.schema()).expect("columns present");
        let (ops, skipped) = sink.ops(&[batch]).expect("ops");
        assert_eq!(skipped, 1, "the NaN score offers nothing");
        let best = |user: &str, book: &str, score: f64, why: &str| Op::Best {
            key: format!("rec:rt:{user}"),
            member: book.into(),
            score,
            max_len: 2,
            reason: Some((format!("rec:why:{user}"), why.into())),
            expiry: Expiry::AfterSecs(60),
        };
        assert_eq!(
            ops,
            vec![
                // the best score, and on the tie the smaller reason
                best("u1", "b1", 3.0, "popular_in:fantasy"),
                best("u2", "b9", 2.0, &long[..MAX_REASON_CHARS]),
            ]
        );
    }

    #[test]
    fn header_mistakes_name_the_line() {
        let bad = |h: &str| {
            let q = query(h);
            Sink::from_query(&q).expect_err("bad").to_string()
        };
        assert!(
            bad("-- sink: list\n-- key: k:{a}\n-- member: a").contains("x.sql:2: sink \"list\"")
        );
        let ranked = "-- sink: ranked\n-- key: rec:rt:{u}\n-- member: b\n-- value: s\n-- reason: r";
        assert!(bad(ranked).contains("x.sql:6: reason needs `-- reason_key:`"));
        assert!(
            bad(&format!("{ranked}\n-- reason_key: rec:rt:why:{{u}}")).contains("x.sql:7"),
            "a reasons key the list key's prefix begins is refused"
        );
        assert!(
            bad("-- sink: zset\n-- key: k:{a}\n-- member: a\n-- value: v\n-- reason: r")
                .contains("belong to a ranked sink")
        );
        assert!(bad("-- sink: zset\n-- key: k:{a}\n-- member: a").contains("needs `-- value:`"));
        assert!(bad("-- sink: recent\n-- key: constant\n-- member: a").contains("x.sql:3"));
        assert!(
            bad("-- sink: recent\n-- key: k:{a}\n-- member: a\n-- value: t\n-- max_len: 0")
                .contains("x.sql:6")
        );
        assert!(bad("-- sink: recent\n-- key: k:{a}\n-- member: a").contains("each member's time"));
        let q = query("-- sink: recent\n-- key: k:{user_id}\n-- member: book\n-- value: at");
        let sink = Sink::from_query(&q).expect("sink");
        let schema = Schema::new(vec![arrow::datatypes::Field::new(
            "user_id",
            DataType::Utf8,
            true,
        )]);
        let e = sink
            .check(&q, &schema)
            .expect_err("no book column")
            .to_string();
        assert!(e.contains("x.sql:4") && e.contains("column book"), "{e}");
        let e = parse_kind(Path::new("y.sql"), "-- name: y\nSELECT 1", Kind::Realtime)
            .expect_err("no sink")
            .to_string();
        assert!(e.contains("sink"), "{e}");
    }
}
