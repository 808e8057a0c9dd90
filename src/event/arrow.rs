//! The Arrow schema of landed events and the conversions between events and record batches.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::{Event, EventType};

/// Failures converting between record batches and events, with the column and row.
#[derive(Debug, thiserror::Error)]
pub enum EventArrowError {
    #[error("building the record batch: {0}")]
    Build(#[from] ArrowError),
    #[error("column {column}: missing or not of type {expected}")]
    Column {
        column: &'static str,
        expected: &'static str,
    },
    #[error("row {row}, column {column}: {reason}")]
    Value {
        row: usize,
        column: &'static str,
        reason: String,
    },
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of the `events` table (without the lake's partition columns).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("anonymous_id", DataType::Utf8, true),
        Field::new("session_id", DataType::Utf8, true),
        Field::new("book_id", DataType::Utf8, true),
        Field::new("rating", DataType::Float64, true),
        Field::new("query", DataType::Utf8, true),
        Field::new("client_ts", ts_type(), true),
        Field::new("sent_at", ts_type(), true),
        Field::new("received_at", ts_type(), false),
        Field::new("event_ts", ts_type(), false),
        Field::new("page", DataType::Utf8, true),
        Field::new("referrer", DataType::Utf8, true),
        Field::new("user_agent", DataType::Utf8, true),
        Field::new("properties", DataType::Utf8, true),
    ]))
}

/// Events to one record batch with [`schema`].
pub fn to_record_batch(events: &[Event]) -> Result<RecordBatch, EventArrowError> {
    let n = events.len();
    let strings = |f: &dyn Fn(&Event) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for e in events {
            b.append_option(f(e));
        }
        Arc::new(b.finish())
    };
    let times = |f: &dyn Fn(&Event) -> Option<DateTime<Utc>>| -> ArrayRef {
        let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        for e in events {
            b.append_option(f(e).map(|t| t.timestamp_micros()));
        }
        Arc::new(b.finish())
    };
    let mut ratings = Float64Builder::with_capacity(n);
    for e in events {
        ratings.append_option(e.rating);
    }
    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(ids.iter())),
        strings(&|e| Some(e.event_type.as_str())),
        strings(&|e| e.user_id.as_deref()),
        strings(&|e| e.anonymous_id.as_deref()),
        strings(&|e| e.session_id.as_deref()),
        strings(&|e| e.book_id.as_deref()),
        Arc::new(ratings.finish()),
        strings(&|e| e.query.as_deref()),
        times(&|e| e.client_ts),
        times(&|e| e.sent_at),
        times(&|e| Some(e.received_at)),
        times(&|e| Some(e.event_ts)),
        strings(&|e| e.page.as_deref()),
        strings(&|e| e.referrer.as_deref()),
        strings(&|e| e.user_agent.as_deref()),
        strings(&|e| e.properties.as_deref()),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

fn string_col<'a>(
    batch: &'a RecordBatch,
    column: &'static str,
) -> Result<&'a StringArray, EventArrowError> {
    batch
        .column_by_name(column)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or(EventArrowError::Column {
            column,
            expected: "Utf8",
        })
}

fn ts_col<'a>(
    batch: &'a RecordBatch,
    column: &'static str,
) -> Result<&'a TimestampMicrosecondArray, EventArrowError> {
    batch
        .column_by_name(column)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or(EventArrowError::Column {
            column,
            expected: "Timestamp(µs, UTC)",
        })
}

fn opt_str(a: &StringArray, row: usize) -> Option<String> {
    a.is_valid(row).then(|| a.value(row).to_string())
}

fn opt_ts(
    a: &TimestampMicrosecondArray,
    row: usize,
    column: &'static str,
) -> Result<Option<DateTime<Utc>>, EventArrowError> {
    if a.is_null(row) {
        return Ok(None);
    }
    let micros = a.value(row);
    Utc.timestamp_micros(micros)
        .single()
        .map(Some)
        .ok_or_else(|| EventArrowError::Value {
            row,
            column,
            reason: format!("{micros} µs is out of range"),
        })
}

fn req_ts(
    a: &TimestampMicrosecondArray,
    row: usize,
    column: &'static str,
) -> Result<DateTime<Utc>, EventArrowError> {
    opt_ts(a, row, column)?.ok_or_else(|| EventArrowError::Value {
        row,
        column,
        reason: "is null".into(),
    })
}

/// Record batch (with at least the columns of [`schema`]) back to events.
pub fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Event>, EventArrowError> {
    let event_id = string_col(batch, "event_id")?;
    let event_type = string_col(batch, "event_type")?;
    let user_id = string_col(batch, "user_id")?;
    let anonymous_id = string_col(batch, "anonymous_id")?;
    let session_id = string_col(batch, "session_id")?;
    let book_id = string_col(batch, "book_id")?;
    let rating = batch
        .column_by_name("rating")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .ok_or(EventArrowError::Column {
            column: "rating",
            expected: "Float64",
        })?;
    let query = string_col(batch, "query")?;
    let client_ts = ts_col(batch, "client_ts")?;
    let sent_at = ts_col(batch, "sent_at")?;
    let received_at = ts_col(batch, "received_at")?;
    let event_ts = ts_col(batch, "event_ts")?;
    let page = string_col(batch, "page")?;
    let referrer = string_col(batch, "referrer")?;
    let user_agent = string_col(batch, "user_agent")?;
    let properties = string_col(batch, "properties")?;

    (0..batch.num_rows())
        .map(|row| {
            let id = event_id.value(row);
            Ok(Event {
                event_id: Uuid::parse_str(id).map_err(|e| EventArrowError::Value {
                    row,
                    column: "event_id",
                    reason: format!("{id:?}: {e}"),
                })?,
                event_type: EventType::parse(event_type.value(row)),
                user_id: opt_str(user_id, row),
                anonymous_id: opt_str(anonymous_id, row),
                session_id: opt_str(session_id, row),
                book_id: opt_str(book_id, row),
                rating: rating.is_valid(row).then(|| rating.value(row)),
                query: opt_str(query, row),
                client_ts: opt_ts(client_ts, row, "client_ts")?,
                sent_at: opt_ts(sent_at, row, "sent_at")?,
                received_at: req_ts(received_at, row, "received_at")?,
                event_ts: req_ts(event_ts, row, "event_ts")?,
                page: opt_str(page, row),
                referrer: opt_str(referrer, row),
                user_agent: opt_str(user_agent, row),
                properties: opt_str(properties, row),
            })
        })
        .collect()
}
