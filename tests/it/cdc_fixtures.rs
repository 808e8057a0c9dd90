//! Debezium's MongoDB connector cannot run here (no mongod): its record shapes are tested
//! with the published examples in `tests/fixtures/debezium/mongodb/`, each naming where it
//! came from. Every record goes through the lander's parser and the current-state fold; the
//! fold must give the fixture's `expect` rows.

use std::path::Path;

use bookrec::land::cdc::{Shape, parse_record};
use bookrec::sql::cdc_state::{ChangeRef, CurrentState};
use serde_json::Value;

#[test]
fn published_mongodb_change_events_give_the_documented_state() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/debezium/mongodb");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let name = file.display().to_string();
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect(&name);
        assert!(
            fixture["source"]
                .as_str()
                .is_some_and(|s| s.contains("https://")),
            "{name}: every fixture says where it came from"
        );
        let shape = match fixture["shape"].as_str() {
            Some("unwrapped") => Shape::Unwrapped,
            _ => Shape::Envelope,
        };
        let mut state = CurrentState::default();
        for (i, r) in fixture["records"]
            .as_array()
            .expect("records")
            .iter()
            .enumerate()
        {
            let bytes = |v: &Value| (!v.is_null()).then(|| v.to_string().into_bytes());
            let key = bytes(&r["key"]);
            let value = bytes(&r["value"]);
            let change = parse_record(key.as_deref(), value.as_deref(), shape, Some(1))
                .unwrap_or_else(|e| panic!("{name} record {i}: {e}"));
            assert_eq!(
                change.as_ref().map(|c| c.op.as_str()),
                r["expect_op"].as_str(),
                "{name} record {i}"
            );
            if let Some(c) = change {
                let change = ChangeRef {
                    op: &c.op,
                    key: &c.key,
                    after: c.after.as_deref(),
                    patch: c.patch.as_deref(),
                    ts_ms: c.ts_ms,
                };
                state.apply(&change, 0);
            }
        }
        let got: Vec<Value> = state
            .into_rows()
            .into_iter()
            .map(|(_, row, _)| Value::Object(row))
            .collect();
        assert_eq!(&Value::Array(got), &fixture["expect"], "{name}");
    }
}
