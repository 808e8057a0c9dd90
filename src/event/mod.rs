//! The behaviour event: the JSON contract with the front end, its validation and the
//! clock-skew correction. Pure and IO-free.
//!
//! Intake (`validate`) takes what a client posted and returns a stamped [`Event`] or an
//! [`EventError`] with a stable code and the offending field. The stamped event serializes to
//! the canonical JSON that goes to Kafka (`Event::to_json`) and parses back with
//! [`Event::from_canonical`]; [`arrow`] maps events to and from Arrow record batches.

pub mod arrow;
pub mod dedup;

use chrono::{DateTime, SubsecRound, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Limits applied to one event at intake.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    /// an event whose (clock-corrected) `event_ts` is older than this before its receipt
    /// is rejected (`invalid_timestamp`): one request cannot open hundreds of old lake
    /// partitions
    pub max_event_age_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 32 * 1024,
            max_event_age_secs: 7 * 24 * 3600,
        }
    }
}

/// Longest accepted identifier (user, anonymous, session, book ids), in characters.
pub const MAX_ID_CHARS: usize = 256;
/// The accepted range of `rating` (1–5 stars and Book-Crossing's 0–10 both fit); outside
/// it a rating is `invalid_value`, so one client cannot poison the ALS weights.
pub const RATING_RANGE: std::ops::RangeInclusive<f64> = 0.0..=10.0;

/// Characters an identifier may not hold: control characters, bidirectional overrides
/// and isolates (which make an id display as another), and zero-width characters (which
/// make two ids look alike).
fn forbidden_in_id(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}
/// Longest accepted `event_type`.
pub const MAX_EVENT_TYPE_CHARS: usize = 64;

/// The event types the platform knows. Anything else is kept as [`EventType::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    View,
    Click,
    Favorite,
    Unfavorite,
    AddToCart,
    RemoveFromCart,
    Purchase,
    Rate,
    Read,
    Search,
    /// A recommended book was shown (logged by `bookrec serve`; needs `request_id` and
    /// `position`).
    Impression,
    /// A type outside the known set: kept, never dropped; `book_id` is optional for it.
    Other(String),
}

impl EventType {
    pub const KNOWN: [EventType; 11] = [
        EventType::View,
        EventType::Click,
        EventType::Favorite,
        EventType::Unfavorite,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::Purchase,
        EventType::Rate,
        EventType::Read,
        EventType::Search,
        EventType::Impression,
    ];

    pub fn parse(s: &str) -> EventType {
        match s {
            "view" => EventType::View,
            "click" => EventType::Click,
            "favorite" => EventType::Favorite,
            "unfavorite" => EventType::Unfavorite,
            "add_to_cart" => EventType::AddToCart,
            "remove_from_cart" => EventType::RemoveFromCart,
            "purchase" => EventType::Purchase,
            "rate" => EventType::Rate,
            "read" => EventType::Read,
            "search" => EventType::Search,
            "impression" => EventType::Impression,
            other => EventType::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            EventType::View => "view",
            EventType::Click => "click",
            EventType::Favorite => "favorite",
            EventType::Unfavorite => "unfavorite",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::Purchase => "purchase",
            EventType::Rate => "rate",
            EventType::Read => "read",
            EventType::Search => "search",
            EventType::Impression => "impression",
            EventType::Other(s) => s,
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, EventType::Other(_))
    }

    /// Known types about one book need a `book_id`.
    pub fn needs_book(&self) -> bool {
        self.is_known() && *self != EventType::Search
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A validated, stamped event. Timestamps have microsecond precision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event_id: Uuid,
    pub event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub book_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_ts")]
    pub client_ts: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_ts")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ser_ts")]
    pub received_at: DateTime<Utc>,
    #[serde(serialize_with = "ser_ts")]
    pub event_ts: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Extra JSON, kept verbatim (compact, keys sorted) as a JSON object text.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_raw_json"
    )]
    pub properties: Option<String>,
}

/// Stable machine-readable reasons for rejecting an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    NotAnObject,
    EventTooLarge,
    MissingEventType,
    MissingUser,
    MissingBookId,
    MissingRating,
    MissingQuery,
    InvalidType,
    InvalidValue,
    InvalidEventId,
    InvalidTimestamp,
    ReservedField,
    ConflictingField,
    MissingField,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::EventTooLarge,
        ErrorCode::MissingEventType,
        ErrorCode::MissingUser,
        ErrorCode::MissingBookId,
        ErrorCode::MissingRating,
        ErrorCode::MissingQuery,
        ErrorCode::InvalidType,
        ErrorCode::InvalidValue,
        ErrorCode::InvalidEventId,
        ErrorCode::InvalidTimestamp,
        ErrorCode::ReservedField,
        ErrorCode::ConflictingField,
        ErrorCode::MissingField,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::EventTooLarge => "event_too_large",
            ErrorCode::MissingEventType => "missing_event_type",
            ErrorCode::MissingUser => "missing_user",
            ErrorCode::MissingBookId => "missing_book_id",
            ErrorCode::MissingRating => "missing_rating",
            ErrorCode::MissingQuery => "missing_query",
            ErrorCode::InvalidType => "invalid_type",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::InvalidEventId => "invalid_event_id",
            ErrorCode::InvalidTimestamp => "invalid_timestamp",
            ErrorCode::ReservedField => "reserved_field",
            ErrorCode::ConflictingField => "conflicting_field",
            ErrorCode::MissingField => "missing_field",
        }
    }
}

/// Why an event was rejected: a stable code, the field (when one is to blame) and a message
/// that names it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EventError {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

impl EventError {
    pub fn new(code: ErrorCode, field: Option<&str>, message: impl Into<String>) -> Self {
        EventError {
            code,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    fn field(code: ErrorCode, field: &str, message: impl std::fmt::Display) -> Self {
        EventError::new(code, Some(field), format!("{field}: {message}"))
    }
}

/// Fields the collector assigns; a client may not send them.
const SERVER_FIELDS: [&str; 2] = ["received_at", "event_ts"];

const KNOWN_FIELDS: [&str; 16] = [
    "event_id",
    "event_type",
    "user_id",
    "anonymous_id",
    "session_id",
    "book_id",
    "rating",
    "query",
    "client_ts",
    "sent_at",
    "received_at",
    "event_ts",
    "page",
    "referrer",
    "user_agent",
    "properties",
];

/// Validates one raw JSON event text as posted by a client and stamps it.
pub fn validate_bytes(
    raw: &[u8],
    received_at: DateTime<Utc>,
    limits: &Limits,
) -> Result<Event, EventError> {
    validate_bytes_origin(raw, received_at, limits).map(|(e, _)| e)
}

/// Who chose an event's `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// the client sent it: a retry carries it again, so it is worth remembering
    Client,
    /// the collector assigned it: nobody can retry it
    Server,
}

/// [`validate_bytes`], also saying who chose the `event_id`.
pub fn validate_bytes_origin(
    raw: &[u8],
    received_at: DateTime<Utc>,
    limits: &Limits,
) -> Result<(Event, IdOrigin), EventError> {
    if raw.len() > limits.max_event_bytes {
        return Err(EventError::new(
            ErrorCode::EventTooLarge,
            None,
            format!(
                "event is {} bytes, the limit is {} bytes",
                raw.len(),
                limits.max_event_bytes
            ),
        ));
    }
    let value: Value = serde_json::from_slice(raw)
        .map_err(|e| EventError::new(ErrorCode::InvalidJson, None, format!("invalid JSON: {e}")))?;
    let origin = match value.get("event_id") {
        None | Some(Value::Null) => IdOrigin::Server,
        Some(_) => IdOrigin::Client,
    };
    let event = validate(value, received_at)?;
    let oldest = truncate_micros(received_at)
        - chrono::Duration::seconds(limits.max_event_age_secs.min(i64::MAX as u64) as i64);
    if event.event_ts < oldest {
        return Err(EventError::field(
            ErrorCode::InvalidTimestamp,
            "client_ts",
            format!(
                "puts the event at {}, more than {} s before it was received (the limit is \
                 collect.max_event_age_secs)",
                format_ts(&event.event_ts),
                limits.max_event_age_secs
            ),
        ));
    }
    Ok((event, origin))
}

/// Validates one parsed client event and stamps it with `received_at`.
pub fn validate(value: Value, received_at: DateTime<Utc>) -> Result<Event, EventError> {
    let Value::Object(obj) = value else {
        return Err(EventError::new(
            ErrorCode::NotAnObject,
            None,
            format!("an event must be a JSON object, got {}", type_name(&value)),
        ));
    };
    for field in SERVER_FIELDS {
        if obj.contains_key(field) {
            return Err(EventError::field(
                ErrorCode::ReservedField,
                field,
                "is assigned by the collector and may not be sent",
            ));
        }
    }
    let received_at = truncate_micros(received_at);
    let mut event = parse_fields(obj, received_at, received_at)?;
    event.event_ts = corrected_event_ts(event.client_ts, event.sent_at, received_at);
    Ok(event)
}

impl Event {
    /// The canonical JSON (the Kafka record value).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data cannot fail; an empty vec would be caught by from_canonical.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses canonical JSON produced by [`Event::to_json`] (e.g. a Kafka record value).
    /// Applies the same field rules as intake, and requires the stamped fields.
    pub fn from_canonical(raw: &[u8]) -> Result<Event, EventError> {
        let value: Value = serde_json::from_slice(raw).map_err(|e| {
            EventError::new(ErrorCode::InvalidJson, None, format!("invalid JSON: {e}"))
        })?;
        let Value::Object(mut obj) = value else {
            return Err(EventError::new(
                ErrorCode::NotAnObject,
                None,
                "an event must be a JSON object",
            ));
        };
        let mut stamped = [None, None];
        for (slot, field) in stamped.iter_mut().zip(SERVER_FIELDS) {
            let v = obj.remove(field).ok_or_else(|| {
                EventError::field(
                    ErrorCode::InvalidValue,
                    field,
                    "is required in a stamped event",
                )
            })?;
            *slot = Some(parse_ts(field, &v)?);
        }
        let [Some(received_at), Some(event_ts)] = stamped else {
            return Err(EventError::new(
                ErrorCode::InvalidValue,
                None,
                "stamped fields missing",
            ));
        };
        if !obj.contains_key("event_id") {
            return Err(EventError::field(
                ErrorCode::InvalidEventId,
                "event_id",
                "is required in a stamped event",
            ));
        }
        parse_fields(obj, received_at, event_ts)
    }

    /// The Kafka key: the user (or anonymous id), so one user's events keep their order.
    pub fn key(&self) -> &str {
        self.user_id
            .as_deref()
            .or(self.anonymous_id.as_deref())
            .unwrap_or_default()
    }
}

/// `event_ts = received_at − (sent_at − client_ts)`: the device's clock offset cancels out.
/// Falls back to `received_at` when either device time is missing or they are inconsistent
/// (the event claims to have happened after it was sent).
pub fn corrected_event_ts(
    client_ts: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> DateTime<Utc> {
    match (client_ts, sent_at) {
        (Some(c), Some(s)) if s >= c => {
            let corrected = received_at - (s - c);
            if corrected.timestamp_millis() >= MIN_TS_MS {
                corrected
            } else {
                received_at
            }
        }
        _ => received_at,
    }
}

fn parse_fields(
    mut obj: Map<String, Value>,
    received_at: DateTime<Utc>,
    event_ts: DateTime<Utc>,
) -> Result<Event, EventError> {
    let event_id = match obj.remove("event_id") {
        None | Some(Value::Null) => Uuid::now_v7(),
        Some(Value::String(s)) => {
            let id = Uuid::parse_str(&s).map_err(|e| {
                EventError::field(
                    ErrorCode::InvalidEventId,
                    "event_id",
                    format!("{s:?} is not a UUID: {e}"),
                )
            })?;
            if id.is_nil() || id == Uuid::max() {
                return Err(EventError::field(
                    ErrorCode::InvalidEventId,
                    "event_id",
                    format!("{s:?} is a reserved UUID (nil or max), not an id"),
                ));
            }
            id
        }
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidEventId,
                "event_id",
                format!("must be a UUID string, got {}", type_name(&other)),
            ));
        }
    };
    let event_type = match obj.remove("event_type") {
        None | Some(Value::Null) => {
            return Err(EventError::field(
                ErrorCode::MissingEventType,
                "event_type",
                "is required",
            ));
        }
        Some(Value::String(s)) => parse_event_type(&s)?,
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidType,
                "event_type",
                format!("must be a string, got {}", type_name(&other)),
            ));
        }
    };
    let user_id = take_id(&mut obj, "user_id")?;
    let anonymous_id = take_id(&mut obj, "anonymous_id")?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(EventError::new(
            ErrorCode::MissingUser,
            Some("user_id"),
            "user_id or anonymous_id is required",
        ));
    }
    let session_id = take_id(&mut obj, "session_id")?;
    let book_id = take_id(&mut obj, "book_id")?;
    if book_id.is_none() && event_type.needs_book() {
        return Err(EventError::field(
            ErrorCode::MissingBookId,
            "book_id",
            format!("is required for {} events", event_type.as_str()),
        ));
    }
    let rating = match obj.remove("rating") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(r) if RATING_RANGE.contains(&r) => Some(r),
            Some(r) if r.is_finite() => {
                return Err(EventError::field(
                    ErrorCode::InvalidValue,
                    "rating",
                    format!(
                        "{n} is outside {}..={}",
                        RATING_RANGE.start(),
                        RATING_RANGE.end()
                    ),
                ));
            }
            _ => {
                return Err(EventError::field(
                    ErrorCode::InvalidValue,
                    "rating",
                    format!("{n} is not a finite number"),
                ));
            }
        },
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidType,
                "rating",
                format!("must be a number, got {}", type_name(&other)),
            ));
        }
    };
    if rating.is_none() && event_type == EventType::Rate {
        return Err(EventError::field(
            ErrorCode::MissingRating,
            "rating",
            "is required for rate events",
        ));
    }
    let query = take_string(&mut obj, "query")?;
    if event_type == EventType::Search && query.as_deref().is_none_or(|q| q.trim().is_empty()) {
        return Err(EventError::field(
            ErrorCode::MissingQuery,
            "query",
            "is required (non-empty) for search events",
        ));
    }
    let client_ts = take_ts(&mut obj, "client_ts")?;
    let sent_at = take_ts(&mut obj, "sent_at")?;
    let page = take_string(&mut obj, "page")?;
    let referrer = take_string(&mut obj, "referrer")?;
    let user_agent = take_string(&mut obj, "user_agent")?;
    let mut properties = match obj.remove("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidType,
                "properties",
                format!("must be a JSON object, got {}", type_name(&other)),
            ));
        }
    };
    // Unknown top-level fields are kept: they move into `properties`.
    for (key, value) in obj {
        debug_assert!(!KNOWN_FIELDS.contains(&key.as_str()));
        let props = properties.get_or_insert_with(Map::new);
        if props.contains_key(&key) {
            return Err(EventError::field(
                ErrorCode::ConflictingField,
                &key,
                "appears both at the top level and in properties",
            ));
        }
        props.insert(key, value);
    }
    check_attribution(&event_type, properties.as_ref())?;
    let properties = properties.map(|p| Value::Object(p).to_string());
    Ok(Event {
        event_id,
        event_type,
        user_id,
        anonymous_id,
        session_id,
        book_id,
        rating,
        query,
        client_ts,
        sent_at,
        received_at,
        event_ts,
        page,
        referrer,
        user_agent,
        properties,
    })
}

/// The most positions a recommendation list has (`serve`'s largest `k`, with room).
pub const MAX_POSITION: u64 = 1000;

/// `request_id` and `position` (top level or in `properties`: they are kept in
/// `properties`) tie an impression, and a click on a recommended book, to the response that
/// showed it: when present, `request_id` is an id and `position` a whole number from 1 (the
/// first book) to [`MAX_POSITION`]; an `impression` needs both.
fn check_attribution(
    event_type: &EventType,
    properties: Option<&Map<String, Value>>,
) -> Result<(), EventError> {
    let get = |k: &str| properties.and_then(|p| p.get(k)).filter(|v| !v.is_null());
    match get("request_id") {
        None => {}
        Some(Value::String(s)) => check_id("request_id", s)?,
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidType,
                "request_id",
                format!("must be a string, got {}", type_name(other)),
            ));
        }
    }
    match get("position") {
        None => {}
        Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=MAX_POSITION).contains(&p)) => {}
        Some(Value::Number(n)) => {
            return Err(EventError::field(
                ErrorCode::InvalidValue,
                "position",
                format!("{n} is not a whole number from 1 to {MAX_POSITION}"),
            ));
        }
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidType,
                "position",
                format!("must be a number, got {}", type_name(other)),
            ));
        }
    }
    if *event_type == EventType::Impression {
        for field in ["request_id", "position"] {
            if get(field).is_none() {
                return Err(EventError::field(
                    ErrorCode::MissingField,
                    field,
                    "is required for impression events",
                ));
            }
        }
    }
    Ok(())
}

fn parse_event_type(s: &str) -> Result<EventType, EventError> {
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() {
        return Err(EventError::field(
            ErrorCode::MissingEventType,
            "event_type",
            "is empty",
        ));
    }
    if t.chars().count() > MAX_EVENT_TYPE_CHARS {
        return Err(EventError::field(
            ErrorCode::InvalidValue,
            "event_type",
            format!("is longer than {MAX_EVENT_TYPE_CHARS} characters"),
        ));
    }
    if let Some(bad) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(EventError::field(
            ErrorCode::InvalidValue,
            "event_type",
            format!("contains {bad:?}; use letters, digits and _ - . :"),
        ));
    }
    Ok(EventType::parse(&t))
}

/// An identifier: a non-empty string or an integer (stringified), no control characters.
fn take_id(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, EventError> {
    let s = match obj.remove(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(other) => {
            return Err(EventError::field(
                ErrorCode::InvalidType,
                field,
                format!("must be a string or an integer, got {}", type_name(&other)),
            ));
        }
    };
    check_id(field, &s)?;
    Ok(Some(s))
}

/// The rules every identifier follows (user, anonymous, session and book ids), wherever it
/// comes from — an event, a URL path, a query parameter: non-empty, at most
/// [`MAX_ID_CHARS`] characters, no control, bidirectional-override or zero-width characters,
/// no leading or trailing whitespace. Every store keeps such an id exactly.
pub fn check_id(field: &str, s: &str) -> Result<(), EventError> {
    if s.is_empty() {
        return Err(EventError::field(
            ErrorCode::InvalidValue,
            field,
            "is empty",
        ));
    }
    if s.chars().count() > MAX_ID_CHARS {
        return Err(EventError::field(
            ErrorCode::InvalidValue,
            field,
            format!("is longer than {MAX_ID_CHARS} characters"),
        ));
    }
    if let Some(c) = s.chars().find(|c| forbidden_in_id(*c)) {
        return Err(EventError::field(
            ErrorCode::InvalidValue,
            field,
            format!(
                "contains U+{:04X}: control, bidirectional-override and zero-width characters \
                 are not allowed in ids",
                c as u32
            ),
        ));
    }
    if s.trim() != s {
        // rejected rather than trimmed: "u1" and "u1 " must not silently become one user
        return Err(EventError::field(
            ErrorCode::InvalidValue,
            field,
            "has leading or trailing whitespace",
        ));
    }
    Ok(())
}

fn take_string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, EventError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(EventError::field(
            ErrorCode::InvalidType,
            field,
            format!("must be a string, got {}", type_name(&other)),
        )),
    }
}

fn take_ts(obj: &mut Map<String, Value>, field: &str) -> Result<Option<DateTime<Utc>>, EventError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_ts(field, &v).map(Some),
    }
}

/// Earliest and latest accepted timestamps: 1970-01-01 and 2100-01-01.
const MIN_TS_MS: i64 = 0;
const MAX_TS_MS: i64 = 4_102_444_800_000;

/// An RFC 3339 string or integer epoch milliseconds, truncated to microseconds.
pub fn parse_ts(field: &str, v: &Value) -> Result<DateTime<Utc>, EventError> {
    let ts = match v {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| {
                EventError::field(
                    ErrorCode::InvalidTimestamp,
                    field,
                    format!("{s:?} is not an RFC 3339 timestamp: {e}"),
                )
            })?,
        Value::Number(n) => {
            let ms = n.as_i64().ok_or_else(|| {
                EventError::field(
                    ErrorCode::InvalidTimestamp,
                    field,
                    format!("{n} is not an integer number of epoch milliseconds"),
                )
            })?;
            Utc.timestamp_millis_opt(ms).single().ok_or_else(|| {
                EventError::field(
                    ErrorCode::InvalidTimestamp,
                    field,
                    format!("{ms} is out of range"),
                )
            })?
        }
        other => {
            return Err(EventError::field(
                ErrorCode::InvalidTimestamp,
                field,
                format!(
                    "must be an RFC 3339 string or epoch milliseconds, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let ms = ts.timestamp_millis();
    if !(MIN_TS_MS..MAX_TS_MS).contains(&ms) {
        return Err(EventError::field(
            ErrorCode::InvalidTimestamp,
            field,
            format!("{} is outside 1970..2100", format_ts(&ts)),
        ));
    }
    Ok(truncate_micros(ts))
}

pub fn truncate_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    ts.trunc_subsecs(6)
}

/// RFC 3339 with microseconds and `Z`, the canonical form.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn ser_ts<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(ts))
}

fn ser_opt_ts<S: serde::Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => ser_ts(ts, s),
        None => s.serialize_none(),
    }
}

fn ser_raw_json<S: serde::Serializer>(json: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match json {
        Some(text) => {
            let raw = serde_json::value::RawValue::from_string(text.clone())
                .map_err(serde::ser::Error::custom)?;
            raw.serialize(s)
        }
        None => s.serialize_none(),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod tests;
