//! SQL functions bookrec adds to every in-process session.
//!
//! `json_get(text, key)`: the value at `key` of the JSON object in `text` (the events'
//! `properties` column is one), as text — a string without its quotes, a number or boolean
//! as written, an object or array as compact JSON; NULL when `text` is NULL or not JSON, or
//! the key is absent or null. A key starting with `/` is a JSON Pointer (RFC 6901) into
//! nested values: `json_get(properties, '/experiments/realtime-weight')`. Cast the result
//! for numbers: `CAST(json_get(properties, 'position') AS INT)`.
//!
//! `json_keys(text, key)`: the keys of the JSON object at `key` (a key or a pointer, as
//! above), as a list — `unnest(json_keys(properties, 'experiments'))` makes one row per
//! experiment an impression was in; NULL when there is no object there.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ListBuilder, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use serde_json::Value;

/// Registers bookrec's functions on `ctx`.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(json_get());
    ctx.register_udf(json_keys());
}

/// The rows of a call: the length of its array arguments (1 when all are scalars), and the
/// two text arguments as arrays of that length.
fn text_args(
    name: &str,
    args: &[ColumnarValue],
) -> Result<(usize, ArrayRef, ArrayRef), DataFusionError> {
    let rows = args
        .iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1);
    let [text, key] = args else {
        return Err(DataFusionError::Plan(format!(
            "{name}(text, key) takes two arguments"
        )));
    };
    Ok((rows, text.to_array(rows)?, key.to_array(rows)?))
}

/// An array result as the call's shape (a scalar when every argument was one).
fn shaped(args: &[ColumnarValue], array: ArrayRef) -> Result<ColumnarValue, DataFusionError> {
    Ok(
        if array.len() == 1 && args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(array)
        },
    )
}

fn json_keys() -> ScalarUDF {
    let item = Arc::new(Field::new_list_field(DataType::Utf8, true));
    create_udf(
        "json_keys",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::List(item),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let (rows, text, key) = text_args("json_keys", args)?;
            let (text, key) = (strings(&text)?, strings(&key)?);
            let mut out = ListBuilder::new(StringBuilder::new());
            for n in 0..rows {
                let keys = (!text.is_null(n) && !key.is_null(n))
                    .then(|| object_keys(text.value(n), key.value(n)))
                    .flatten();
                match keys {
                    Some(keys) => {
                        for k in keys {
                            out.values().append_value(k);
                        }
                        out.append(true);
                    }
                    None => out.append(false),
                }
            }
            shaped(args, Arc::new(out.finish()))
        }),
    )
}

/// The keys of the object at `key` of `text`.
fn object_keys(text: &str, key: &str) -> Option<Vec<String>> {
    value_at(text, key)?
        .as_object()
        .map(|o| o.keys().cloned().collect())
}

/// The value at `key` (a key, or a JSON Pointer when it starts with `/`) of the JSON in
/// `text`; `None` when `text` is not JSON or nothing is there.
fn value_at(text: &str, key: &str) -> Option<Value> {
    let mut value: Value = serde_json::from_str(text).ok()?;
    if key.starts_with('/') {
        value.pointer_mut(key).map(Value::take)
    } else {
        value.get_mut(key).map(Value::take)
    }
}

fn json_get() -> ScalarUDF {
    create_udf(
        "json_get",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let (rows, text, key) = text_args("json_get", args)?;
            let (text, key) = (strings(&text)?, strings(&key)?);
            let mut out = StringBuilder::with_capacity(rows, rows * 8);
            for n in 0..rows {
                if text.is_null(n) || key.is_null(n) {
                    out.append_null();
                    continue;
                }
                match lookup(text.value(n), key.value(n)) {
                    Some(v) => out.append_value(v),
                    None => out.append_null(),
                }
            }
            let array: ArrayRef = Arc::new(out.finish());
            Ok(
                if rows == 1 && args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
                } else {
                    ColumnarValue::Array(array)
                },
            )
        }),
    )
}

fn strings(a: &ArrayRef) -> Result<&StringArray, DataFusionError> {
    a.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
        DataFusionError::Execution(format!("json_get: expected text, got {}", a.data_type()))
    })
}

/// The text of the value at `key` (see the module docs).
fn lookup(text: &str, key: &str) -> Option<String> {
    match value_at(text, key)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_reads_keys_and_pointers() {
        let t = r#"{"request_id":"r-1","position":3,"ok":true,"reasons":["als","similar"],
                    "experiments":{"w.1":"b"},"gone":null}"#;
        assert_eq!(lookup(t, "request_id").as_deref(), Some("r-1"));
        assert_eq!(lookup(t, "position").as_deref(), Some("3"));
        assert_eq!(lookup(t, "ok").as_deref(), Some("true"));
        assert_eq!(
            lookup(t, "reasons").as_deref(),
            Some(r#"["als","similar"]"#)
        );
        assert_eq!(lookup(t, "/experiments/w.1").as_deref(), Some("b"));
        assert_eq!(lookup(t, "/reasons/1").as_deref(), Some("similar"));
        assert_eq!(lookup(t, "gone"), None);
        assert_eq!(lookup(t, "absent"), None);
        assert_eq!(lookup("not json", "a"), None);
        assert_eq!(lookup("[1,2]", "a"), None);
    }

    #[tokio::test]
    async fn json_get_in_sql() {
        let ctx = SessionContext::new();
        register(&ctx);
        let df = ctx
            .sql(
                "SELECT json_get(p, 'a') AS a, CAST(json_get(p, '/b/c') AS INT) AS c \
                 FROM (VALUES ('{\"a\":\"x\",\"b\":{\"c\":7}}'), (NULL), ('{}')) AS t(p)",
            )
            .await
            .unwrap();
        let batches = df.collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| x | 7 |"), "{text}");
        assert_eq!(text.matches("|   |   |").count(), 2, "{text}");
        let scalar = ctx
            .sql("SELECT json_get('{\"k\":1}', 'k') AS k")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&scalar)
            .unwrap()
            .to_string();
        assert!(text.contains("| 1 |"), "{text}");
        let keys = ctx
            .sql(
                "SELECT unnest(json_keys(p, 'e')) AS k FROM (VALUES \
                 ('{\"e\":{\"a\":\"x\",\"b\":\"y\"}}'), ('{\"e\":1}'), (NULL)) AS t(p)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&keys)
            .unwrap()
            .to_string();
        assert!(text.contains("| a |") && text.contains("| b |"), "{text}");
        assert_eq!(
            keys.iter().map(|b| b.num_rows()).sum::<usize>(),
            2,
            "{text}"
        );
    }
}
