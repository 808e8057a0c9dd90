use super::*;

fn after(c: &Change) -> Value {
    serde_json::from_str(c.after.as_deref().expect("after")).expect("json")
}

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
        "source":{"db":"book_db_mongo","collection":"books","ts_ms":5,"connector":"mongodb"},"op":"r"}"#;
    let k = br#"{"id":"{\"$oid\": \"65a1\"}"}"#;
    let c = parse(Some(k), Some(v)).expect("ok").expect("change");
    assert_eq!(c.key, r#"{"id":"65a1"}"#);
    let a = after(&c);
    assert_eq!(a["_id"], "65a1");
    assert_eq!(a["pages"], 474);
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

#[test]
fn decimals_are_exact_strings() {
    assert_eq!(decimal_string(&[0x32], 1), "5.0");
    assert_eq!(decimal_string(&[0x00], 2), "0.00");
    assert_eq!(decimal_string(&[0xff], 0), "-1");
    assert_eq!(decimal_string(&[0xff, 0x38], 2), "-2.00"); // -200
    assert_eq!(decimal_string(&[0x05], 3), "0.005");
    assert_eq!(decimal_string(&[0x01, 0x00], -2), "25600");
    // 2^80 + 1: beyond i64 and f64
    let mut big = vec![0x01];
    big.extend([0u8; 9]);
    big.push(0x01);
    assert_eq!(decimal_string(&big, 0), "1208925819614629174706177");
    assert_eq!(decimal_string(&[0x80], 0), "-128");
}

#[test]
fn logical_types_decode_with_the_schema() {
    let v = serde_json::json!({
        "schema": {"type": "struct", "fields": [
            {"field": "after", "type": "struct", "fields": [
                {"field": "id", "type": "int64"},
                {"field": "price", "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal",
                 "parameters": {"scale": "2", "connect.decimal.precision": "8"}},
                {"field": "amount", "type": "struct", "name": "io.debezium.data.VariableScaleDecimal",
                 "fields": [{"field": "scale", "type": "int32"}, {"field": "value", "type": "bytes"}]},
                {"field": "born", "type": "int32", "name": "io.debezium.time.Date"},
                {"field": "at", "type": "int64", "name": "io.debezium.time.MicroTime"},
                {"field": "t_ms", "type": "int32", "name": "io.debezium.time.Time"},
                {"field": "t_ns", "type": "int64", "name": "io.debezium.time.NanoTime"},
                {"field": "created", "type": "int64", "name": "io.debezium.time.Timestamp"},
                {"field": "old", "type": "int64", "name": "io.debezium.time.MicroTimestamp"},
                {"field": "ns", "type": "int64", "name": "io.debezium.time.NanoTimestamp"},
                {"field": "zoned", "type": "string", "name": "io.debezium.time.ZonedTimestamp"},
                {"field": "doc", "type": "string", "name": "io.debezium.data.Json"},
                {"field": "uid", "type": "string", "name": "io.debezium.data.Uuid"},
                {"field": "huge", "type": "int64"}
            ]}
        ]},
        "payload": {
            "after": {
                "id": 1, "price": "MDk=", "amount": {"scale": 3, "value": "AeI="},
                "born": -1, "at": 49_500_250_000_i64, "t_ms": 1000, "t_ns": 1_500_000_001_i64,
                "created": 1_714_571_100_250_i64, "old": -1_000_000_i64, "ns": 1_i64,
                "zoned": "2024-05-01T13:45:00.25Z", "doc": "{\"a\":[1,2]}",
                "uid": "6f1c0b0e-0d7a-4e0b-9a59-3c3c2f1f7a10", "huge": 9_007_199_254_740_993_i64
            },
            "source": {"ts_ms": 1, "snapshot": "false"}, "op": "c"
        }
    });
    let c = parse(Some(br#"{"id":1}"#), Some(v.to_string().as_bytes()))
        .expect("ok")
        .expect("change");
    let a = after(&c);
    assert_eq!(a["price"], "123.45"); // 0x3039 = 12345
    assert_eq!(a["amount"], "0.482"); // 0x01e2 = 482
    assert_eq!(a["born"], "1969-12-31");
    assert_eq!(a["at"], "13:45:00.25");
    assert_eq!(a["t_ms"], "00:00:01");
    assert_eq!(a["t_ns"], "00:00:01.500000001");
    assert_eq!(a["created"], "2024-05-01T13:45:00.250");
    assert_eq!(a["old"], "1969-12-31T23:59:59");
    assert_eq!(a["ns"], "1970-01-01T00:00:00.000000001");
    assert_eq!(a["zoned"], "2024-05-01T13:45:00.25Z");
    assert_eq!(a["doc"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(a["uid"], "6f1c0b0e-0d7a-4e0b-9a59-3c3c2f1f7a10");
    assert!(
        c.after
            .as_deref()
            .is_some_and(|s| s.contains("9007199254740993"))
    );
    assert_eq!(c.op, "c", "snapshot \"false\" is not a snapshot");
}

#[test]
fn truncate_messages_schema_changes_and_snapshot_flags() {
    let t = br#"{"op":"t","source":{"ts_ms":5,"db":"d","table":"books"}}"#;
    let c = parse(None, Some(t)).expect("ok").expect("change");
    assert_eq!((c.op.as_str(), c.key.as_str()), ("t", ""));
    let m = br#"{"op":"m","source":{"ts_ms":6},"message":{"prefix":"p","content":"aGk="}}"#;
    let c = parse(None, Some(m)).expect("ok").expect("change");
    assert_eq!(c.op, "m");
    assert_eq!(after(&c)["prefix"], "p");
    let s = br#"{"source":{"ts_ms":7,"db":"auth_db"},"databaseName":"auth_db","ddl":"CREATE TABLE users (id INT)","tableChanges":[]}"#;
    let c = parse(None, Some(s)).expect("ok").expect("change");
    assert_eq!(c.op, "s");
    assert!(
        after(&c)["ddl"]
            .as_str()
            .is_some_and(|d| d.starts_with("CREATE"))
    );
    for (flag, op) in [
        ("true", "r"),
        ("\"true\"", "r"),
        ("\"first\"", "r"),
        ("\"last_in_data_collection\"", "r"),
        ("\"false\"", "c"),
        ("false", "c"),
        ("null", "c"),
    ] {
        let v =
            format!(r#"{{"op":"c","after":{{"id":1}},"source":{{"ts_ms":1,"snapshot":{flag}}}}}"#);
        let c = parse(None, Some(v.as_bytes()))
            .expect("ok")
            .expect("change");
        assert_eq!(c.op, op, "snapshot {flag}");
    }
}

#[test]
fn mongodb_diff_patches_and_replacements() {
    let v = br#"{"op":"u","source":{"ts_ms":1,"connector":"mongodb"},"after":null,
        "patch":"{\"$v\": 2, \"diff\": {\"u\": {\"name\": \"n\"}, \"d\": {\"old\": false}, \"saddr\": {\"i\": {\"zip\": \"9\"}}}}",
        "filter":"{\"_id\": {\"$oid\": \"abc\"}}"}"#;
    let c = parse(None, Some(v)).expect("ok").expect("change");
    assert_eq!(c.key, r#"{"_id":"abc"}"#);
    let p: Value = serde_json::from_str(c.patch.as_deref().expect("patch")).expect("json");
    assert_eq!(p["set"], serde_json::json!({"name": "n", "addr.zip": "9"}));
    assert_eq!(p["unset"], serde_json::json!(["old"]));
    let r = br#"{"op":"u","source":{"ts_ms":1,"connector":"mongodb"},
        "patch":"{\"_id\": {\"$oid\": \"abc\"}, \"name\": \"whole\"}","filter":"{\"_id\": {\"$oid\": \"abc\"}}"}"#;
    let c = parse(None, Some(r)).expect("ok").expect("change");
    assert_eq!(after(&c)["name"], "whole");
    assert_eq!(c.patch, None);
}

#[test]
fn unwrapped_records() {
    let v = br#"{"id":3,"title":"T","__op":"u","__source_ts_ms":77,"__table":"books","__deleted":"false"}"#;
    let c = parse_record(Some(br#"{"id":3}"#), Some(v), Shape::Unwrapped, Some(1))
        .expect("ok")
        .expect("change");
    assert_eq!((c.op.as_str(), c.ts_ms), ("u", 77));
    assert_eq!(after(&c), serde_json::json!({"id": 3, "title": "T"}));
    assert_eq!(c.source_table.as_deref(), Some("books"));
    let d = br#"{"id":3,"__deleted":"true"}"#;
    let c = parse_record(None, Some(d), Shape::Unwrapped, Some(9))
        .expect("ok")
        .expect("change");
    assert_eq!(
        (c.op.as_str(), c.ts_ms, c.key.as_str()),
        ("d", 9, r#"{"id":3}"#)
    );
    let c = parse_record(Some(br#"{"id":3}"#), None, Shape::Unwrapped, Some(10))
        .expect("ok")
        .expect("tombstone delete");
    assert_eq!(c.op, "d");
    assert_eq!(
        parse_record(None, Some(br#"{"id":1}"#), Shape::Unwrapped, None)
            .expect_err("no ts")
            .code,
        "missing_ts"
    );
}

#[test]
fn an_absurd_decimal_scale_is_an_error_not_a_huge_string() {
    for scale in ["1000000000", "-9223372036854775808"] {
        let v = format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"field":"after","type":"struct","fields":[
                {{"field":"p","type":"bytes","name":"org.apache.kafka.connect.data.Decimal",
                  "parameters":{{"scale":"{scale}"}}}}]}}]}},
              "payload":{{"op":"c","after":{{"id":1,"p":"AQ=="}},"source":{{"ts_ms":1}}}}}}"#
        );
        let e = parse(None, Some(v.as_bytes())).expect_err("absurd scale");
        assert_eq!(e.code, "invalid_value", "{e}");
    }
}
