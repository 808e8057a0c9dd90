use super::*;

fn apply(
    s: &mut CurrentState,
    op: &str,
    key: &str,
    after: Option<&str>,
    patch: Option<&str>,
    ts_ms: i64,
) {
    let c = ChangeRef {
        op,
        key,
        after,
        patch,
        ts_ms,
    };
    s.apply(&c, 0);
}

#[test]
fn current_state_truncates_and_keeps_toasted_values() {
    let mut s = CurrentState::default();
    apply(
        &mut s,
        "r",
        "1",
        Some(r#"{"id":1,"body":"long text","n":1}"#),
        None,
        1,
    );
    apply(
        &mut s,
        "r",
        "2",
        Some(r#"{"id":2,"body":"other","n":1}"#),
        None,
        1,
    );
    apply(
        &mut s,
        "u",
        "1",
        Some(r#"{"id":1,"body":"__debezium_unavailable_value","n":2}"#),
        None,
        2,
    );
    let rows = s.into_rows();
    assert_eq!(rows[0].1["body"], "long text");
    assert_eq!(rows[0].1["n"], 2);
    let mut s = CurrentState::default();
    apply(&mut s, "c", "1", Some(r#"{"id":1}"#), None, 1);
    apply(&mut s, "t", "", None, None, 2);
    apply(&mut s, "c", "2", Some(r#"{"id":2}"#), None, 3);
    apply(&mut s, "m", "", Some(r#"{"prefix":"x"}"#), None, 4);
    assert_eq!(s.truncate_marks().len(), 1);
    let rows = s.into_rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "2");
}

#[test]
fn mongodb_patches_merge_into_the_previous_document() {
    let mut s = CurrentState::default();
    apply(
        &mut s,
        "c",
        "k",
        Some(r#"{"_id":1,"name":"a","tags":[1,2,3],"addr":{"city":"x","zip":"1"},"gone":true}"#),
        None,
        1,
    );
    apply(
        &mut s,
        "u",
        "k",
        None,
        Some(
            r#"{"set":{"name":"b","addr.city":"y","tags.1":9},"unset":["gone","addr.zip"],"truncate":{}}"#,
        ),
        2,
    );
    apply(
        &mut s,
        "u",
        "k",
        None,
        Some(r#"{"set":{},"unset":[],"truncate":{"tags":2}}"#),
        3,
    );
    let rows = s.into_rows();
    assert_eq!(
        Value::Object(rows[0].1.clone()),
        serde_json::json!({"_id": 1, "name": "b", "tags": [1, 9], "addr": {"city": "y"}})
    );
}

#[test]
fn offsets_not_timestamps_order_a_key_and_truncates_cross_partitions_by_time() {
    let mut s = CurrentState::default();
    let c = |op, key, after, ts_ms| ChangeRef {
        op,
        key,
        after,
        patch: None,
        ts_ms,
    };
    // a snapshot row at 12:00:00.800, then a binlog update stamped 12:00:00 (whole seconds)
    s.apply(&c("r", "1", Some(r#"{"v":"snapshot"}"#), 800), 0);
    s.apply(&c("u", "1", Some(r#"{"v":"live"}"#), 0), 0);
    // partition 1: a row before the truncate in partition 0, one after it
    s.apply(&c("c", "2", Some(r#"{"v":"old"}"#), 900), 1);
    s.apply(&c("c", "3", Some(r#"{"v":"new"}"#), 2000), 1);
    s.apply(&c("t", "", None, 1000), 0);
    s.apply(&c("c", "4", Some(r#"{"v":"after"}"#), 1100), 0);
    let rows: Vec<(String, Value)> = s
        .into_rows()
        .into_iter()
        .map(|(k, m, _)| (k, m["v"].clone()))
        .collect();
    assert_eq!(
        rows,
        vec![("3".into(), "new".into()), ("4".into(), "after".into())]
    );
    let mut s = CurrentState::default();
    s.apply(&c("r", "1", Some(r#"{"v":"snapshot"}"#), 800), 0);
    s.apply(&c("u", "1", Some(r#"{"v":"live"}"#), 0), 0);
    assert_eq!(s.into_rows()[0].1["v"], "live");
}
