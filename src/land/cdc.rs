//! Debezium change events → change rows. Pure.
//!
//! Accepted shapes (the seed's sources are MySQL `auth_db` / `user_engagement_db` and MongoDB
//! `book_db_mongo`):
//! - the JSON converter with or without the `{"schema": …, "payload": …}` wrapper;
//! - `op` `c` (create), `u` (update), `d` (delete), `r` (snapshot read);
//! - relational connectors: `before` / `after` are objects;
//! - the MongoDB connector: `after` (and `before`, when present) is a JSON *string* of the
//!   document in extended JSON (`{"$oid": …}`, `{"$date": …}`, `{"$numberLong": …}` are
//!   turned into plain values);
//! - tombstones (a null value after a delete) carry nothing and are skipped.
//!
//! The row key is the Debezium record key (its payload) as compact JSON; without a record
//! key, the `id` / `_id` field of the row.

use serde_json::{Map, Value};

/// One change of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `c`, `u`, `d` or `r`.
    pub op: String,
    /// When the change happened in the source database (`source.ts_ms`, else `ts_ms`).
    pub ts_ms: i64,
    /// The row key as compact JSON (`{"id":1}`).
    pub key: String,
    /// The row before and after, as compact JSON objects.
    pub before: Option<String>,
    pub after: Option<String>,
    pub source_db: Option<String>,
    pub source_table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CdcError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> CdcError {
    CdcError {
        code,
        message: message.into(),
    }
}

/// Removes the JSON converter's `schema`/`payload` wrapper.
fn unwrap_payload(v: Value) -> Value {
    match v {
        Value::Object(mut m) if m.contains_key("payload") && m.contains_key("schema") => {
            m.remove("payload").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// MongoDB extended JSON → plain values.
fn plain(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if let (1, Some((k, inner))) = (m.len(), m.iter().next()) {
                match (k.as_str(), inner.clone()) {
                    ("$oid", Value::String(s)) | ("$numberDecimal", Value::String(s)) => {
                        return Value::String(s);
                    }
                    ("$numberLong", Value::String(s)) | ("$numberInt", Value::String(s)) => {
                        return s
                            .parse::<i64>()
                            .map(Value::from)
                            .unwrap_or(Value::String(s));
                    }
                    ("$numberDouble", Value::String(s)) => {
                        return s
                            .parse::<f64>()
                            .ok()
                            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                            .unwrap_or(Value::String(s));
                    }
                    ("$date", d) => {
                        return match d {
                            Value::Object(inner) => inner
                                .get("$numberLong")
                                .and_then(Value::as_str)
                                .and_then(|s| s.parse::<i64>().ok())
                                .map(Value::from)
                                .unwrap_or(Value::Null),
                            other => other,
                        };
                    }
                    _ => {}
                }
            }
            Value::Object(m.into_iter().map(|(k, v)| (k, plain(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(plain).collect()),
        other => other,
    }
}

/// A row image: an object, a JSON string of one (MongoDB), or absent.
fn row_image(field: &str, v: Option<Value>) -> Result<Option<Map<String, Value>>, CdcError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => match plain(Value::Object(m)) {
            Value::Object(m) => Ok(Some(m)),
            _ => Ok(None),
        },
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => match plain(Value::Object(m)) {
                Value::Object(m) => Ok(Some(m)),
                _ => Ok(None),
            },
            Ok(_) => Err(err(
                "invalid_row",
                format!("{field}: the JSON string is not an object"),
            )),
            Err(e) => Err(err("invalid_row", format!("{field}: {e}"))),
        },
        Some(_) => Err(err(
            "invalid_row",
            format!("{field} must be an object or a JSON string of one"),
        )),
    }
}

fn id_of(row: &Map<String, Value>) -> Option<String> {
    for k in ["id", "_id"] {
        if let Some(v) = row.get(k) {
            let mut m = Map::new();
            m.insert(k.to_string(), v.clone());
            return Some(Value::Object(m).to_string());
        }
    }
    None
}

/// Parses one Debezium record. `Ok(None)` for a tombstone.
pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<Change>, CdcError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let v: Value =
        serde_json::from_slice(value).map_err(|e| err("invalid_json", format!("value: {e}")))?;
    let Value::Object(mut env) = unwrap_payload(v) else {
        return Err(err("not_an_envelope", "the value is not a JSON object"));
    };
    let op = match env.remove("op") {
        Some(Value::String(op)) if ["c", "u", "d", "r"].contains(&op.as_str()) => op,
        Some(other) => {
            return Err(err(
                "invalid_op",
                format!("op must be one of c, u, d, r; got {other}"),
            ));
        }
        None => return Err(err("missing_op", "the envelope has no op")),
    };
    let source = env.remove("source").unwrap_or(Value::Null);
    let ts_ms = source
        .get("ts_ms")
        .and_then(Value::as_i64)
        .or_else(|| env.get("ts_ms").and_then(Value::as_i64))
        .ok_or_else(|| err("missing_ts", "neither source.ts_ms nor ts_ms is present"))?;
    let before = row_image("before", env.remove("before"))?;
    let after = row_image("after", env.remove("after"))?;
    if op != "d" && after.is_none() {
        return Err(err(
            "missing_after",
            format!("op {op} without an after image"),
        ));
    }
    let record_key = match key.filter(|k| !k.is_empty()) {
        Some(k) => {
            let kv: Value =
                serde_json::from_slice(k).map_err(|e| err("invalid_key", format!("key: {e}")))?;
            match plain(unwrap_payload(kv)) {
                Value::Null => None,
                Value::Object(m) => {
                    // MongoDB keys hold the id as a JSON string: {"id": "{\"$oid\": …}"}
                    let m: Map<String, Value> = m
                        .into_iter()
                        .map(|(k, v)| match v {
                            Value::String(s) if s.starts_with('{') => {
                                let inner = serde_json::from_str::<Value>(&s)
                                    .map(plain)
                                    .unwrap_or(Value::String(s));
                                (k, inner)
                            }
                            other => (k, other),
                        })
                        .collect();
                    Some(Value::Object(m).to_string())
                }
                other => Some(other.to_string()),
            }
        }
        None => None,
    };
    let key = record_key
        .or_else(|| after.as_ref().and_then(id_of))
        .or_else(|| before.as_ref().and_then(id_of))
        .ok_or_else(|| err("missing_key", "no record key and no id/_id in the row"))?;
    let text = |f: &str| source.get(f).and_then(Value::as_str).map(str::to_string);
    Ok(Some(Change {
        op,
        ts_ms,
        key,
        before: before.map(|m| Value::Object(m).to_string()),
        after: after.map(|m| Value::Object(m).to_string()),
        source_db: text("db"),
        source_table: text("table").or_else(|| text("collection")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_envelope_with_schema_wrapper() {
        let v = br#"{"schema":{"type":"struct"},"payload":{"before":null,
            "after":{"id":7,"title":"Dune","author":"Herbert"},
            "source":{"db":"book_db","table":"books","ts_ms":1700000000000},
            "op":"c","ts_ms":1700000000500}}"#;
        let k = br#"{"schema":{},"payload":{"id":7}}"#;
        let c = parse(Some(k), Some(v)).expect("ok").expect("change");
        assert_eq!(c.op, "c");
        assert_eq!(c.key, r#"{"id":7}"#);
        assert_eq!(c.ts_ms, 1_700_000_000_000);
        assert_eq!(c.source_table.as_deref(), Some("books"));
        assert!(c.after.as_deref().is_some_and(|a| a.contains("Dune")));
    }

    #[test]
    fn mongodb_after_is_a_json_string() {
        let v = br#"{"after":"{\"_id\": {\"$oid\": \"65a1\"}, \"title\": \"Emma\", \"pages\": {\"$numberLong\": \"474\"}}",
            "source":{"db":"book_db_mongo","collection":"books","ts_ms":5},"op":"r"}"#;
        let k = br#"{"id":"{\"$oid\": \"65a1\"}"}"#;
        let c = parse(Some(k), Some(v)).expect("ok").expect("change");
        assert_eq!(c.key, r#"{"id":"65a1"}"#);
        let after: Value = serde_json::from_str(c.after.as_deref().expect("after")).expect("json");
        assert_eq!(after["_id"], "65a1");
        assert_eq!(after["pages"], 474);
        assert_eq!(c.source_table.as_deref(), Some("books"));
    }

    #[test]
    fn deletes_tombstones_and_errors() {
        let d = br#"{"before":{"id":7,"title":"Dune"},"after":null,"op":"d","ts_ms":9}"#;
        let c = parse(None, Some(d)).expect("ok").expect("change");
        assert_eq!((c.op.as_str(), c.key.as_str()), ("d", r#"{"id":7}"#));
        assert_eq!(parse(Some(br#"{"id":7}"#), None).expect("tombstone"), None);
        for (bad, code) in [
            (&br#"nope"#[..], "invalid_json"),
            (br#"{"after":{"id":1},"ts_ms":1}"#, "missing_op"),
            (br#"{"after":{"id":1},"op":"x","ts_ms":1}"#, "invalid_op"),
            (br#"{"after":{"id":1},"op":"c"}"#, "missing_ts"),
            (br#"{"op":"u","ts_ms":1}"#, "missing_after"),
            (
                br#"{"after":{"title":"no id"},"op":"c","ts_ms":1}"#,
                "missing_key",
            ),
            (br#"{"after":7,"op":"c","ts_ms":1}"#, "invalid_row"),
        ] {
            assert_eq!(parse(None, Some(bad)).expect_err("bad").code, code);
        }
    }
}
