use super::*;
use chrono::Duration;
use proptest::prelude::*;
use serde_json::json;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 7, 0, 0)
        .single()
        .expect("valid date")
}

fn check(v: Value) -> Result<Event, EventError> {
    validate(v, now())
}

fn code(v: Value) -> (ErrorCode, Option<String>) {
    let e = check(v).expect_err("must be rejected");
    assert!(
        e.field
            .as_ref()
            .is_none_or(|f| e.message.contains(f.as_str())),
        "message {:?} must name field {:?}",
        e.message,
        e.field
    );
    (e.code, e.field)
}

#[test]
fn accepts_the_seed_shape_and_stamps_it() {
    let e = check(
        json!({"event_type":"view","user_id":"u1","book_id":"034545104X",
        "client_ts":"2026-11-26T07:00:00Z"}),
    )
    .expect("valid");
    assert_eq!(e.event_type, EventType::View);
    assert_eq!(e.user_id.as_deref(), Some("u1"));
    assert_eq!(e.received_at, now());
    // no sent_at: no skew correction possible, event time is the receive time
    assert_eq!(e.event_ts, now());
    assert_eq!(e.event_id.get_version_num(), 7);
    assert_eq!(e.key(), "u1");
}

#[test]
fn clock_skew_is_corrected_from_sent_at() {
    // device clock is 1 hour behind; the event happened 30 s before it was sent
    let e = check(json!({"event_type":"click","user_id":"u","book_id":"b",
        "client_ts":"2026-11-26T05:59:30Z","sent_at":"2026-11-26T06:00:00Z"}))
    .expect("valid");
    assert_eq!(e.event_ts, now() - Duration::seconds(30));
    // epoch milliseconds work the same
    let ms = Utc
        .with_ymd_and_hms(2026, 11, 26, 6, 0, 0)
        .single()
        .expect("date")
        .timestamp_millis();
    let e = check(json!({"event_type":"click","user_id":"u","book_id":"b",
        "client_ts": ms - 2_500, "sent_at": ms}))
    .expect("valid");
    assert_eq!(e.event_ts, now() - Duration::milliseconds(2_500));
    // inconsistent device times fall back to received_at
    let e = check(json!({"event_type":"click","user_id":"u","book_id":"b",
        "client_ts": ms + 10, "sent_at": ms}))
    .expect("valid");
    assert_eq!(e.event_ts, now());
}

#[test]
fn rejections_name_the_field() {
    let cases: Vec<(Value, ErrorCode, Option<&str>)> = vec![
        (json!([1]), ErrorCode::NotAnObject, None),
        (
            json!({"user_id":"u"}),
            ErrorCode::MissingEventType,
            Some("event_type"),
        ),
        (
            json!({"event_type":7,"user_id":"u"}),
            ErrorCode::InvalidType,
            Some("event_type"),
        ),
        (
            json!({"event_type":"view","book_id":"b"}),
            ErrorCode::MissingUser,
            Some("user_id"),
        ),
        (
            json!({"event_type":"view","user_id":"u"}),
            ErrorCode::MissingBookId,
            Some("book_id"),
        ),
        (
            json!({"event_type":"rate","user_id":"u","book_id":"b"}),
            ErrorCode::MissingRating,
            Some("rating"),
        ),
        (
            json!({"event_type":"rate","user_id":"u","book_id":"b","rating":"5"}),
            ErrorCode::InvalidType,
            Some("rating"),
        ),
        (
            json!({"event_type":"search","user_id":"u"}),
            ErrorCode::MissingQuery,
            Some("query"),
        ),
        (
            json!({"event_type":"view","user_id":true,"book_id":"b"}),
            ErrorCode::InvalidType,
            Some("user_id"),
        ),
        (
            json!({"event_type":"view","user_id":"","book_id":"b"}),
            ErrorCode::InvalidValue,
            Some("user_id"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":1.5}),
            ErrorCode::InvalidType,
            Some("book_id"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":"b","client_ts":"yesterday"}),
            ErrorCode::InvalidTimestamp,
            Some("client_ts"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":"b","sent_at":-5}),
            ErrorCode::InvalidTimestamp,
            Some("sent_at"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":"b","event_id":"nope"}),
            ErrorCode::InvalidEventId,
            Some("event_id"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":"b","received_at":0}),
            ErrorCode::ReservedField,
            Some("received_at"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":"b","properties":[1]}),
            ErrorCode::InvalidType,
            Some("properties"),
        ),
        (
            json!({"event_type":"view","user_id":"u","book_id":"b","x":1,"properties":{"x":2}}),
            ErrorCode::ConflictingField,
            Some("x"),
        ),
        (
            json!({"event_type":"vi ew","user_id":"u","book_id":"b"}),
            ErrorCode::InvalidValue,
            Some("event_type"),
        ),
    ];
    for (input, want_code, want_field) in cases {
        let (got_code, got_field) = code(input.clone());
        assert_eq!(got_code, want_code, "for {input}");
        assert_eq!(got_field.as_deref(), want_field, "for {input}");
    }
}

#[test]
fn unknown_types_and_fields_are_kept() {
    let e = check(
        json!({"event_type":"Share","anonymous_id":"a1","channel":"mail",
        "properties":{"ab":"b"}}),
    )
    .expect("valid");
    assert_eq!(e.event_type, EventType::Other("share".into()));
    assert!(e.book_id.is_none());
    assert_eq!(
        e.properties.as_deref(),
        Some(r#"{"ab":"b","channel":"mail"}"#)
    );
    assert_eq!(e.key(), "a1");
}

#[test]
fn impressions_and_clicks_carry_their_request() {
    let e = check(
        json!({"event_type":"impression","user_id":"u1","book_id":"b1",
        "request_id":"r-1","position":3,"reasons":["als"]}),
    )
    .expect("valid impression");
    assert_eq!(e.event_type, EventType::Impression);
    let props: Value = serde_json::from_str(e.properties.as_deref().unwrap()).unwrap();
    assert_eq!(
        (props["request_id"].as_str(), props["position"].as_u64()),
        (Some("r-1"), Some(3))
    );
    // a click may say which response and slot it came from, top level or in properties
    check(json!({"event_type":"click","user_id":"u1","book_id":"b1",
        "properties":{"request_id":"r-1","position":1}}))
    .expect("attributed click");
    check(json!({"event_type":"click","user_id":"u1","book_id":"b1"})).expect("plain click");
    let bad = [
        (
            json!({"event_type":"impression","user_id":"u","book_id":"b","position":1}),
            (ErrorCode::MissingField, "request_id"),
        ),
        (
            json!({"event_type":"impression","user_id":"u","book_id":"b","request_id":"r"}),
            (ErrorCode::MissingField, "position"),
        ),
        (
            json!({"event_type":"impression","user_id":"u","request_id":"r","position":1}),
            (ErrorCode::MissingBookId, "book_id"),
        ),
        (
            json!({"event_type":"click","user_id":"u","book_id":"b","position":0}),
            (ErrorCode::InvalidValue, "position"),
        ),
        (
            json!({"event_type":"click","user_id":"u","book_id":"b","position":2.5}),
            (ErrorCode::InvalidValue, "position"),
        ),
        (
            json!({"event_type":"click","user_id":"u","book_id":"b","position":"1"}),
            (ErrorCode::InvalidType, "position"),
        ),
        (
            json!({"event_type":"click","user_id":"u","book_id":"b","request_id":7}),
            (ErrorCode::InvalidType, "request_id"),
        ),
        (
            json!({"event_type":"click","user_id":"u","book_id":"b","request_id":"a\u{202e}b"}),
            (ErrorCode::InvalidValue, "request_id"),
        ),
    ];
    for (v, (want, field)) in bad {
        assert_eq!(code(v.clone()), (want, Some(field.to_string())), "{v}");
    }
}

#[test]
fn numeric_ids_are_accepted_as_strings() {
    let e = check(json!({"event_type":"view","user_id":42,"book_id":7})).expect("valid");
    assert_eq!(e.user_id.as_deref(), Some("42"));
    assert_eq!(e.book_id.as_deref(), Some("7"));
}

#[test]
fn oversize_and_bad_json_bytes() {
    let limits = Limits {
        max_event_bytes: 64,
        ..Limits::default()
    };
    let big = format!(
        r#"{{"event_type":"view","user_id":"u","book_id":"{}"}}"#,
        "x".repeat(100)
    );
    let e = validate_bytes(big.as_bytes(), now(), &limits).expect_err("too big");
    assert_eq!(e.code, ErrorCode::EventTooLarge);
    let e = validate_bytes(b"{\"event_type\":", now(), &limits).expect_err("bad json");
    assert_eq!(e.code, ErrorCode::InvalidJson);
}

#[test]
fn canonical_json_requires_stamps() {
    let e = Event::from_canonical(br#"{"event_type":"view","user_id":"u","book_id":"b"}"#)
        .expect_err("not stamped");
    assert_eq!(e.field.as_deref(), Some("received_at"));
}

fn opt_id() -> impl Strategy<Value = Option<String>> {
    // inner spaces are fine; leading or trailing ones are refused
    proptest::option::of("[a-zA-Z0-9_\\-:.]([a-zA-Z0-9_\\-:. ]{0,38}[a-zA-Z0-9_\\-:.])?")
}

fn opt_ts() -> impl Strategy<Value = Option<i64>> {
    // microseconds between 1990 and 2090
    proptest::option::of(631_152_000_000_000i64..3_786_825_600_000_000i64)
}

prop_compose! {
    /// A valid client event as JSON, with every optional field sometimes present.
    fn client_event()(
        kind in prop_oneof![
            Just("view".to_string()), Just("click".to_string()), Just("rate".to_string()),
            Just("search".to_string()), Just("purchase".to_string()), "[a-z_]{1,20}"
        ],
        id in proptest::option::of(any::<u128>()),
        user in opt_id(), anon in opt_id(), session in opt_id(),
        book in "[0-9X]{1,13}", rating in 0.0f64..10.0, query in "[a-z ]{0,20}q",
        client in opt_ts(), sent in opt_ts(),
        page in proptest::option::of(".{0,30}"), referrer in proptest::option::of(".{0,30}"),
        ua in proptest::option::of(".{0,30}"),
        props in proptest::option::of(proptest::collection::btree_map("[a-z]{1,8}", any::<i32>(), 0..4)),
        as_millis in any::<bool>(),
    ) -> Value {
        let mut m = Map::new();
        m.insert("event_type".into(), json!(kind));
        if let Some(id) = id { m.insert("event_id".into(), json!(Uuid::from_u128(id).to_string())); }
        match (&user, &anon) {
            (None, None) => { m.insert("user_id".into(), json!("fallback")); }
            _ => {
                if let Some(u) = user { m.insert("user_id".into(), json!(u)); }
                if let Some(a) = anon { m.insert("anonymous_id".into(), json!(a)); }
            }
        }
        if let Some(s) = session { m.insert("session_id".into(), json!(s)); }
        m.insert("book_id".into(), json!(book));
        m.insert("rating".into(), json!(rating));
        m.insert("query".into(), json!(query));
        let ts = |us: i64| if as_millis { json!(us / 1000) } else {
            json!(format_ts(&Utc.timestamp_micros(us).single().expect("in range")))
        };
        if let Some(c) = client { m.insert("client_ts".into(), ts(c)); }
        if let Some(s) = sent { m.insert("sent_at".into(), ts(s)); }
        if let Some(p) = page { m.insert("page".into(), json!(p)); }
        if let Some(r) = referrer { m.insert("referrer".into(), json!(r)); }
        if let Some(u) = ua { m.insert("user_agent".into(), json!(u)); }
        if let Some(p) = props { m.insert("properties".into(), json!(p)); }
        Value::Object(m)
    }
}

proptest! {
    #[test]
    fn valid_events_round_trip_json_and_arrow(raw in client_event(), recv_us in 946_684_800_000_000i64..4_000_000_000_000_000i64) {
        let received = Utc.timestamp_micros(recv_us).single().expect("in range");
        let event = validate(raw, received).expect("generated events are valid");
        // JSON -> event -> canonical JSON -> event
        let again = Event::from_canonical(&event.to_json()).expect("canonical parses");
        prop_assert_eq!(&again, &event);
        // event -> Arrow row -> event
        let batch = super::arrow::to_record_batch(std::slice::from_ref(&event)).expect("batch");
        prop_assert_eq!(batch.num_rows(), 1);
        let back = super::arrow::from_record_batch(&batch).expect("rows");
        prop_assert_eq!(&back[0], &event);
        // the event time never lies after the receive time
        prop_assert!(event.event_ts <= event.received_at);
    }

    #[test]
    fn arbitrary_json_never_panics(s in ".{0,200}") {
        let _ = validate_bytes(s.as_bytes(), now(), &Limits::default());
    }
}

#[test]
fn poisoned_values_are_refused_with_their_field() {
    let code = |v: serde_json::Value| {
        validate(v, now())
            .map(|_| ())
            .map_err(|e| (e.code, e.field))
    };
    let bad = |field: &str, c: ErrorCode| Err((c, Some(field.to_string())));
    for r in [1e300, 10.5, -1.0] {
        assert_eq!(
            code(json!({"event_type":"rate","user_id":"u","book_id":"b","rating": r})),
            bad("rating", ErrorCode::InvalidValue),
            "{r}"
        );
    }
    assert!(code(json!({"event_type":"rate","user_id":"u","book_id":"b","rating": 10})).is_ok());
    for id in [
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ] {
        assert_eq!(
            code(json!({"event_type":"view","user_id":"u","book_id":"b","event_id": id})),
            bad("event_id", ErrorCode::InvalidEventId)
        );
    }
    for id in [
        "u\u{202E}1",
        "u\u{200B}1",
        "\u{FEFF}u",
        " u1",
        "u1 ",
        "u\u{7}",
    ] {
        assert_eq!(
            code(json!({"event_type":"view","user_id": id,"book_id":"b"})),
            bad("user_id", ErrorCode::InvalidValue),
            "{id:?}"
        );
    }
    assert!(code(json!({"event_type":"view","user_id":"é-Ü 1","book_id":"b"})).is_ok());
}

#[test]
fn events_older_than_the_age_limit_are_refused() {
    let limits = Limits::default();
    let at = now();
    let raw = |days: i64| {
        let c = at - chrono::Duration::days(days);
        json!({"event_type":"view","user_id":"u","book_id":"b",
            "client_ts": format_ts(&c), "sent_at": format_ts(&at)})
        .to_string()
    };
    assert!(validate_bytes(raw(6).as_bytes(), at, &limits).is_ok());
    let e = validate_bytes(raw(8).as_bytes(), at, &limits).expect_err("too old");
    assert_eq!(e.code, ErrorCode::InvalidTimestamp);
    assert!(e.message.contains("max_event_age_secs"), "{}", e.message);
}
