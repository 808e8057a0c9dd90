//! Debezium change events → change rows. Pure. (The rows' fold into a table's current
//! state is `sql::cdc_state`.)
//!
//! What [`parse_record`] reads (README "CDC" lists the same with examples):
//! - the JSON converter's records with or without the `{"schema": …, "payload": …}` wrapper,
//!   keys and values independently;
//! - `op` `c` create, `u` update, `d` delete, `r` snapshot read, `t` truncate (the table's
//!   current state is emptied as of that change), `m` logical decoding message; a value
//!   without `op` that carries `ddl` / `tableChanges` is a schema change (`s`). `m` and `s`
//!   are landed as rows of their own and never touch the current state;
//! - `source.snapshot` as a boolean, a string (`"true"`, `"first"`, `"last"`, `"incremental"`,
//!   …) or null; an older connector's snapshot row sent as `c` is landed as `r`;
//! - with the schema present, Kafka Connect / Debezium logical types are decoded into plain
//!   JSON: `Decimal` and `VariableScaleDecimal` → exact decimal strings (`"5.0"`), `Date` →
//!   `"2024-05-01"`, `Time`/`MicroTime`/`NanoTime` → `"13:45:00.25"`,
//!   `Timestamp`/`MicroTimestamp`/`NanoTimestamp` → `"2024-05-01T13:45:00.25"` (no zone: the
//!   source column has none; negative values are before 1970), `ZonedTimestamp` kept as sent
//!   (ISO-8601 with offset), `Json` → the JSON value, `Uuid` kept; integers stay exact beyond
//!   2^53;
//! - relational connectors: `before` / `after` are objects; PostgreSQL's unchanged-TOAST
//!   placeholder `__debezium_unavailable_value` is landed as sent and the current state
//!   (`sql::cdc_state`) keeps the column's previous value;
//! - the MongoDB connector: `after` / `before` are JSON strings of the document in extended
//!   JSON (`$oid` → hex string, `$date` → ISO-8601 UTC string, `$numberLong` / `$numberInt`
//!   → integers, `$numberDouble` → number, `$numberDecimal` → exact string, `$binary` →
//!   base64 string); an update without the full document carries what changed — the old
//!   connector's `patch` (`$set` / `$unset`, or the `$v: 2` `diff` form; a patch without
//!   operators replaces the document) or the change-stream `updateDescription`
//!   (`updatedFields`, `removedFields`, `truncatedArrays`) — landed as `patch` and merged into
//!   the previous document by the current state (`sql::cdc_state`);
//! - [`Shape::Unwrapped`] topics: records already flattened by the `ExtractNewRecordState` /
//!   `ExtractNewDocumentState` transformation, with `__op`, `__deleted`, `__source_ts_ms` /
//!   `__ts_ms` (any field starting `__` is metadata, not a column); a tombstone deletes the
//!   key; without a timestamp field the Kafka record's timestamp is used;
//! - tombstones (a null value) after a delete carry nothing and are skipped.
//!
//! The row key is the Debezium record key (its payload) as compact JSON; without a record
//! key, the `id` / `_id` field of the row (or of a MongoDB update's `filter`). Anything else
//! is a [`CdcError`] with a code, which the lander dead-letters with the record's coordinates.

use base64::Engine as _;
use serde_json::{Map, Value};

/// How a topic's records are shaped (`land.cdc_unwrapped` lists the unwrapped topics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// Debezium's change event envelope (`before`, `after`, `source`, `op`, …).
    #[default]
    Envelope,
    /// One row per record, flattened by `ExtractNewRecordState` / `ExtractNewDocumentState`.
    Unwrapped,
}

/// One change of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `c`, `u`, `d`, `r`, `t` (truncate), `m` (message) or `s` (schema change).
    pub op: String,
    /// When the change happened in the source database (`source.ts_ms`, else `ts_ms`).
    pub ts_ms: i64,
    /// The row key as compact JSON (`{"id":1}`); empty for `t`, `s` and keyless `m`.
    pub key: String,
    /// The row before and after, as compact JSON objects (for `m` / `s`: the message or
    /// the schema change itself, in `after`).
    pub before: Option<String>,
    pub after: Option<String>,
    /// A partial update (MongoDB without the full document), as
    /// `{"set": {path: value}, "unset": [path], "truncate": {path: size}}`; paths are
    /// dotted, array elements by index.
    pub patch: Option<String>,
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

/// Splits the JSON converter's `schema`/`payload` wrapper off.
fn unwrap_payload(v: Value) -> (Option<Value>, Value) {
    match v {
        Value::Object(mut m) if m.contains_key("payload") && m.contains_key("schema") => {
            let schema = m.remove("schema").filter(|s| !s.is_null());
            (schema, m.remove("payload").unwrap_or(Value::Null))
        }
        other => (None, other),
    }
}

/// The schema of a struct's field, by name.
fn field_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    schema?
        .get("fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("field").and_then(Value::as_str) == Some(field))
}

/// MongoDB extended JSON → plain values.
fn plain(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            if let Some(v) = extended(&m) {
                return v;
            }
            Value::Object(m.into_iter().map(|(k, v)| (k, plain(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(plain).collect()),
        other => other,
    }
}

/// One extended-JSON wrapper (`{"$oid": …}`, …) as a plain value, if `m` is one.
fn extended(m: &Map<String, Value>) -> Option<Value> {
    let (k, inner) = m.iter().next()?;
    match (m.len(), k.as_str(), inner) {
        (1, "$oid" | "$numberDecimal" | "$symbol", Value::String(s)) => {
            Some(Value::String(s.clone()))
        }
        (1, "$numberLong" | "$numberInt", Value::String(s)) => Some(
            s.parse::<i64>()
                .map_or(Value::String(s.clone()), Value::from),
        ),
        (1, "$numberDouble", Value::String(s)) => Some(
            s.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::String(s.clone()), Value::Number),
        ),
        (1, "$date", d) => Some(match d {
            Value::Object(inner) => inner
                .get("$numberLong")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i64>().ok())
                .map_or(Value::Null, millis_to_utc),
            Value::Number(n) => n.as_i64().map_or(Value::Null, millis_to_utc),
            other => other.clone(),
        }),
        (_, "$binary", Value::String(s)) if m.len() <= 2 => Some(Value::String(s.clone())),
        (1, "$binary", Value::Object(b)) => b.get("base64").cloned(),
        _ => None,
    }
}

fn millis_to_utc(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms).map_or(Value::from(ms), |t| {
        Value::String(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
    })
}

/// A two's-complement big-endian integer with `scale` decimal places, exactly.
fn decimal_string(bytes: &[u8], scale: i64) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        for b in &mut mag {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    // base 256 → base 10 by repeated division
    let mut digits = Vec::new();
    let mut rest: Vec<u8> = mag.into_iter().skip_while(|b| *b == 0).collect();
    while !rest.is_empty() {
        let mut rem = 0u32;
        let mut next = Vec::with_capacity(rest.len());
        for b in &rest {
            let cur = (rem << 8) | u32::from(*b);
            let q = cur / 10;
            rem = cur % 10;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        digits.push(b'0' + rem as u8);
        rest = next;
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    let mut s = String::from_utf8(digits).unwrap_or_default();
    if scale < 0 {
        s.extend(std::iter::repeat_n('0', scale.unsigned_abs() as usize));
    } else if scale > 0 {
        let scale = scale as usize;
        if s.len() <= scale {
            s = format!("{}{s}", "0".repeat(scale - s.len() + 1));
        }
        s.insert(s.len() - scale, '.');
    }
    if negative && s.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        s.insert(0, '-');
    }
    s
}

/// The largest decimal scale read (PostgreSQL's NUMERIC maximum): a scale from a record's
/// schema sizes the text it becomes.
const MAX_DECIMAL_SCALE: i64 = 16_383;

/// A Connect decimal (base64 two's-complement bytes, `scale`) as exact text.
fn decimal(field: &str, base64: &str, scale: i64) -> Result<Value, CdcError> {
    if scale.unsigned_abs() > MAX_DECIMAL_SCALE.unsigned_abs() {
        return Err(err(
            "invalid_value",
            format!("{field}: decimal scale {scale} is outside ±{MAX_DECIMAL_SCALE}"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|e| err("invalid_value", format!("{field}: not base64: {e}")))?;
    Ok(Value::String(decimal_string(&bytes, scale)))
}

/// `HH:MM:SS[.fraction]` of a duration in nanoseconds (a MySQL TIME may pass 24 h or be
/// negative).
fn time_of_day(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let (secs, frac) = (n / 1_000_000_000, n % 1_000_000_000);
    let base = format!(
        "{sign}{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac == 0 {
        base
    } else {
        let f = format!("{frac:09}");
        format!("{base}.{}", f.trim_end_matches('0'))
    }
}

fn local_timestamp(nanos: i128) -> Option<String> {
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    let t = chrono::DateTime::from_timestamp(secs, sub)?;
    Some(t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string())
}

/// Decodes one value by its Connect schema (logical types, nested structs and arrays).
fn decode(field: &str, schema: Option<&Value>, v: Value) -> Result<Value, CdcError> {
    let Some(schema) = schema else {
        return Ok(v);
    };
    if v.is_null() {
        return Ok(v);
    }
    let name = schema.get("name").and_then(Value::as_str).unwrap_or("");
    let int = |v: &Value| v.as_i64().map(i128::from);
    let decoded = match (name, &v) {
        ("org.apache.kafka.connect.data.Decimal", Value::String(s)) => {
            let scale = schema
                .pointer("/parameters/scale")
                .and_then(|s| match s {
                    Value::String(s) => s.parse::<i64>().ok(),
                    other => other.as_i64(),
                })
                .unwrap_or(0);
            decimal(field, s, scale)?
        }
        ("io.debezium.data.VariableScaleDecimal", Value::Object(m)) => {
            let scale = m.get("scale").and_then(Value::as_i64).unwrap_or(0);
            match m.get("value").and_then(Value::as_str) {
                Some(s) => decimal(field, s, scale)?,
                None => return Err(err("invalid_value", format!("{field}: no value"))),
            }
        }
        ("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date", v) => {
            match v.as_i64().and_then(|d| {
                chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?
                    .checked_add_signed(chrono::TimeDelta::try_days(d)?)
            }) {
                Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
                None => v.clone(),
            }
        }
        ("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time", v) => {
            int(v).map_or(v.clone(), |ms| Value::String(time_of_day(ms * 1_000_000)))
        }
        ("io.debezium.time.MicroTime", v) => {
            int(v).map_or(v.clone(), |us| Value::String(time_of_day(us * 1_000)))
        }
        ("io.debezium.time.NanoTime", v) => {
            int(v).map_or(v.clone(), |ns| Value::String(time_of_day(ns)))
        }
        ("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp", v) => int(v)
            .and_then(|ms| local_timestamp(ms * 1_000_000))
            .map_or(v.clone(), Value::String),
        ("io.debezium.time.MicroTimestamp", v) => int(v)
            .and_then(|us| local_timestamp(us * 1_000))
            .map_or(v.clone(), Value::String),
        ("io.debezium.time.NanoTimestamp", v) => int(v)
            .and_then(local_timestamp)
            .map_or(v.clone(), Value::String),
        ("io.debezium.data.Json", Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| v.clone())
        }
        (_, Value::Object(_)) if schema.get("fields").is_some() => {
            let Value::Object(m) = v else {
                return Ok(Value::Null);
            };
            let mut out = Map::with_capacity(m.len());
            for (k, inner) in m {
                let s = field_schema(Some(schema), &k);
                let d = decode(&format!("{field}.{k}"), s, inner)?;
                out.insert(k, d);
            }
            return Ok(Value::Object(out));
        }
        (_, Value::Array(_)) if schema.get("items").is_some() => {
            let Value::Array(a) = v else {
                return Ok(Value::Null);
            };
            let items = schema.get("items");
            return a
                .into_iter()
                .map(|x| decode(field, items, x))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array);
        }
        _ => return Ok(v),
    };
    Ok(decoded)
}

/// A row image: an object, a JSON string of one (MongoDB), or absent.
fn row_image(
    field: &str,
    v: Option<Value>,
    schema: Option<&Value>,
) -> Result<Option<Map<String, Value>>, CdcError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => match plain(decode(field, schema, Value::Object(m))?) {
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

/// A JSON string field of a MongoDB event (`patch`, `filter`, `updatedFields`) as a value.
fn json_text(field: &str, v: Option<Value>) -> Result<Option<Value>, CdcError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => serde_json::from_str::<Value>(&s)
            .map(|v| Some(plain(v)))
            .map_err(|e| err("invalid_row", format!("{field}: {e}"))),
        Some(other) => Ok(Some(plain(other))),
    }
}

/// What a MongoDB update without the full document says.
enum MongoUpdate {
    /// The old connector's patch without operators: the whole new document.
    Replace(Map<String, Value>),
    /// `{"set": …, "unset": […], "truncate": {…}}`.
    Patch(Value),
}

/// Flattens a `$v: 2` oplog diff (`u` update, `i` insert, `d` delete, `s<field>` nested).
fn flatten_diff(
    prefix: &str,
    diff: &Map<String, Value>,
    set: &mut Map<String, Value>,
    unset: &mut Vec<Value>,
) {
    let path = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    for (op, body) in diff {
        match (op.as_str(), body) {
            ("u" | "i", Value::Object(fields)) => {
                for (k, v) in fields {
                    set.insert(path(k), v.clone());
                }
            }
            ("d", Value::Object(fields)) => {
                unset.extend(fields.keys().map(|k| Value::String(path(k))));
            }
            (o, Value::Object(sub)) if o.len() > 1 && o.starts_with('s') => {
                // array diffs ({"a": true, "u0": …}) name elements as u<index>
                let nested = path(&o[1..]);
                if sub.get("a").is_some_and(|a| a == &Value::Bool(true)) {
                    for (k, v) in sub {
                        if let Some(i) = k.strip_prefix('u').filter(|i| i.parse::<usize>().is_ok())
                        {
                            set.insert(format!("{nested}.{i}"), v.clone());
                        }
                    }
                } else {
                    flatten_diff(&nested, sub, set, unset);
                }
            }
            _ => {}
        }
    }
}

fn mongo_update(env: &mut Map<String, Value>) -> Result<Option<MongoUpdate>, CdcError> {
    if let Some(desc) = env.remove("updateDescription").filter(|d| !d.is_null()) {
        let set = match json_text(
            "updateDescription.updatedFields",
            desc.get("updatedFields").cloned(),
        )? {
            Some(Value::Object(m)) => m,
            None => Map::new(),
            Some(_) => {
                return Err(err(
                    "invalid_row",
                    "updateDescription.updatedFields is not an object",
                ));
            }
        };
        let unset = desc
            .get("removedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut truncate = Map::new();
        for t in desc
            .get("truncatedArrays")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(f), Some(n)) = (
                t.get("field").and_then(Value::as_str),
                t.get("size")
                    .or_else(|| t.get("newSize"))
                    .and_then(Value::as_u64),
            ) {
                truncate.insert(f.to_string(), Value::from(n));
            }
        }
        return Ok(Some(MongoUpdate::Patch(serde_json::json!({
            "set": set, "unset": unset, "truncate": truncate
        }))));
    }
    let Some(patch) = json_text("patch", env.remove("patch"))? else {
        return Ok(None);
    };
    let Value::Object(p) = patch else {
        return Err(err("invalid_row", "patch is not a JSON object"));
    };
    let has_operators = p.keys().any(|k| k.starts_with('$')) || p.contains_key("diff");
    if !has_operators {
        return Ok(Some(MongoUpdate::Replace(p)));
    }
    let mut set = match p.get("$set") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let mut unset: Vec<Value> = match p.get("$unset") {
        Some(Value::Object(m)) => m.keys().map(|k| Value::String(k.clone())).collect(),
        _ => Vec::new(),
    };
    if let Some(Value::Object(diff)) = p.get("diff") {
        flatten_diff("", diff, &mut set, &mut unset);
    }
    Ok(Some(MongoUpdate::Patch(serde_json::json!({
        "set": set, "unset": unset, "truncate": {}
    }))))
}

fn snapshot_flag(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !matches!(s.as_str(), "false" | ""),
        _ => false,
    }
}

/// The record key as compact JSON (`None` without a key). MongoDB keys hold the id as a
/// JSON string (`{"id": "{\"$oid\": …}"}`, `{"id": "1004"}`): it is read as JSON.
fn record_key(key: Option<&[u8]>, mongo: bool) -> Result<Option<String>, CdcError> {
    let Some(k) = key.filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    let kv: Value =
        serde_json::from_slice(k).map_err(|e| err("invalid_key", format!("key: {e}")))?;
    let (schema, kv) = unwrap_payload(kv);
    let kv = decode("key", schema.as_ref(), kv)?;
    Ok(match plain(kv) {
        Value::Null => None,
        Value::Object(m) => {
            let m: Map<String, Value> = m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) if mongo || s.starts_with('{') => {
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
    })
}

/// Parses one Debezium envelope record. `Ok(None)` for a tombstone.
pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<Change>, CdcError> {
    parse_record(key, value, Shape::Envelope, None)
}

/// Parses one record of a CDC topic of the given shape; `record_ts` is the Kafka record's
/// timestamp (used only where the record itself carries none). `Ok(None)`: nothing to land.
pub fn parse_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    shape: Shape,
    record_ts: Option<i64>,
) -> Result<Option<Change>, CdcError> {
    match shape {
        Shape::Envelope => parse_envelope(key, value, record_ts),
        Shape::Unwrapped => parse_unwrapped(key, value, record_ts),
    }
}

fn parse_envelope(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    record_ts: Option<i64>,
) -> Result<Option<Change>, CdcError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let v: Value =
        serde_json::from_slice(value).map_err(|e| err("invalid_json", format!("value: {e}")))?;
    let (schema, payload) = unwrap_payload(v);
    let Value::Object(mut env) = payload else {
        return Err(err("not_an_envelope", "the value is not a JSON object"));
    };
    let source = env.remove("source").unwrap_or(Value::Null);
    let text = |f: &str| source.get(f).and_then(Value::as_str).map(str::to_string);
    let mongo = text("connector").as_deref() == Some("mongodb");
    let mut op = match env.remove("op") {
        Some(Value::String(op)) if ["c", "u", "d", "r", "t", "m"].contains(&op.as_str()) => op,
        Some(other) => {
            return Err(err(
                "invalid_op",
                format!("op must be one of c, u, d, r, t, m; got {other}"),
            ));
        }
        None if env.contains_key("ddl") || env.contains_key("tableChanges") => "s".to_string(),
        None => return Err(err("missing_op", "the envelope has no op")),
    };
    let ts_ms = source
        .get("ts_ms")
        .and_then(Value::as_i64)
        .or_else(|| env.get("ts_ms").and_then(Value::as_i64))
        .or(record_ts)
        .ok_or_else(|| err("missing_ts", "neither source.ts_ms nor ts_ms is present"))?;
    if op == "c" && snapshot_flag(source.get("snapshot")) {
        op = "r".to_string();
    }
    let mut change = Change {
        op: op.clone(),
        ts_ms,
        key: String::new(),
        before: None,
        after: None,
        patch: None,
        source_db: text("db"),
        source_table: text("table").or_else(|| text("collection")),
    };
    match op.as_str() {
        "t" => return Ok(Some(change)),
        "m" | "s" => {
            // the message (prefix, content) or the schema change (ddl, tableChanges)
            let body = match env.remove("message") {
                Some(m) if op == "m" => m,
                _ => Value::Object(env),
            };
            change.key = record_key(key, false)?.unwrap_or_default();
            change.after = Some(body.to_string());
            return Ok(Some(change));
        }
        _ => {}
    }
    let before = row_image(
        "before",
        env.remove("before"),
        field_schema(schema.as_ref(), "before"),
    )?;
    let mut after = row_image(
        "after",
        env.remove("after"),
        field_schema(schema.as_ref(), "after"),
    )?;
    let filter = if mongo || env.contains_key("patch") || env.contains_key("updateDescription") {
        json_text("filter", env.remove("filter"))?
    } else {
        None
    };
    if op == "u" && after.is_none() {
        match mongo_update(&mut env)? {
            Some(MongoUpdate::Replace(doc)) => after = Some(doc),
            Some(MongoUpdate::Patch(p)) => change.patch = Some(p.to_string()),
            None => {}
        }
    }
    if op != "d" && after.is_none() && change.patch.is_none() {
        return Err(err(
            "missing_after",
            format!("op {op} without an after image or a patch"),
        ));
    }
    let filter_id = match &filter {
        Some(Value::Object(f)) => id_of(f),
        _ => None,
    };
    change.key = record_key(key, mongo)?
        .or_else(|| after.as_ref().and_then(id_of))
        .or_else(|| before.as_ref().and_then(id_of))
        .or(filter_id)
        .ok_or_else(|| err("missing_key", "no record key and no id/_id in the row"))?;
    change.before = before.map(|m| Value::Object(m).to_string());
    change.after = after.map(|m| Value::Object(m).to_string());
    Ok(Some(change))
}

fn parse_unwrapped(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    record_ts: Option<i64>,
) -> Result<Option<Change>, CdcError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        // with the transformation, a tombstone is how a delete may arrive
        let Some(key) = record_key(key, false)? else {
            return Ok(None);
        };
        let ts_ms = record_ts
            .ok_or_else(|| err("missing_ts", "a tombstone without a Kafka record timestamp"))?;
        return Ok(Some(Change {
            op: "d".into(),
            ts_ms,
            key,
            before: None,
            after: None,
            patch: None,
            source_db: None,
            source_table: None,
        }));
    };
    let v: Value =
        serde_json::from_slice(value).map_err(|e| err("invalid_json", format!("value: {e}")))?;
    let (schema, payload) = unwrap_payload(v);
    let Value::Object(m) = payload else {
        return Err(err("not_a_row", "the value is not a JSON object"));
    };
    let mut meta = Map::new();
    let mut row = Map::new();
    for (k, v) in m {
        if let Some(name) = k.strip_prefix("__") {
            meta.insert(name.to_string(), v);
        } else {
            row.insert(k, v);
        }
    }
    let row = match plain(decode("row", schema.as_ref(), Value::Object(row))?) {
        Value::Object(r) => r,
        _ => Map::new(),
    };
    let text = |f: &str| meta.get(f).and_then(Value::as_str).map(str::to_string);
    let deleted = match meta.get("deleted") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    let op = match text("op") {
        _ if deleted => "d".to_string(),
        Some(op) if ["c", "u", "d", "r"].contains(&op.as_str()) => op,
        Some(other) => {
            return Err(err(
                "invalid_op",
                format!("__op must be one of c, u, d, r; got {other:?}"),
            ));
        }
        None => "u".to_string(),
    };
    let ts_ms = ["source_ts_ms", "ts_ms"]
        .iter()
        .find_map(|f| match meta.get(*f) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        })
        .or(record_ts)
        .ok_or_else(|| {
            err(
                "missing_ts",
                "no __source_ts_ms / __ts_ms field and no Kafka record timestamp",
            )
        })?;
    let key = record_key(key, false)?
        .or_else(|| id_of(&row))
        .ok_or_else(|| err("missing_key", "no record key and no id/_id in the row"))?;
    let (before, after) = if op == "d" {
        (Some(Value::Object(row).to_string()), None)
    } else {
        (None, Some(Value::Object(row).to_string()))
    };
    Ok(Some(Change {
        op,
        ts_ms,
        key,
        before,
        after,
        patch: None,
        source_db: text("source_db").or_else(|| text("db")),
        source_table: ["source_table", "table", "source_collection", "collection"]
            .iter()
            .find_map(|f| text(f)),
    }))
}

#[cfg(test)]
mod tests;
