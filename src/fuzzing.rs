//! The fuzz harnesses: what `fuzz/` (cargo fuzz, libFuzzer) runs on random input, and what
//! the test suite replays over the kept corpora (`fuzz/corpus/<target>/`) on every run. Each
//! harness feeds bytes to one input parser of the pipeline and checks what must hold for
//! any input: no panic, and the stated properties. See FUZZING.md.

use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};

use crate::collect::{BodyKind, split_batch};
use crate::event::{self, Limits};
use crate::land::cdc;
use crate::sql::catalog::{self, Kind};
use crate::sql::cdc_state::{ChangeRef, CurrentState};

/// A harness: takes any bytes, panics on a broken property.
pub type Harness = fn(&[u8]);

/// The harnesses by target name (the names of `fuzz/fuzz_targets/*.rs`).
pub const TARGETS: [(&str, Harness); 4] = [
    ("event", event),
    ("batch", batch),
    ("cdc", cdc),
    ("query", query),
];

fn received_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// The event parser and validator: an accepted event serializes to JSON that parses, and
/// its ids pass the id rules.
pub fn event(data: &[u8]) {
    let limits = Limits::default();
    if let Ok((ev, _origin)) = event::validate_bytes_origin(data, received_at(), &limits) {
        let json = ev.to_json();
        let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&json);
        assert!(
            parsed.is_ok(),
            "an accepted event serialized to invalid JSON"
        );
        assert!(event::check_id("user_id", ev.key()).is_ok() || ev.key().is_empty());
    }
}

/// The batch splitter (JSON array, NDJSON, `text/plain`): items are slices of the body, in
/// order, none empty; then every item goes through the validator.
pub fn batch(data: &[u8]) {
    for kind in [BodyKind::Json, BodyKind::Lines] {
        let Ok(items) = split_batch(data, kind) else {
            continue;
        };
        let range = data.as_ptr_range();
        let mut last = None;
        for item in &items {
            assert!(!item.raw.is_empty(), "an empty item");
            let r = item.raw.as_ptr_range();
            assert!(
                r.start >= range.start && r.end <= range.end,
                "an item outside the body"
            );
            assert!(last < Some(item.index), "item indexes out of order");
            last = Some(item.index);
            event(item.raw);
        }
    }
}

/// The Debezium envelope parser: the first byte says how many of the following bytes are
/// the record key, the rest is the value.
pub fn cdc(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(n).min(rest.len()));
    // every shape, with and without a key; what parses is folded into a current state
    let mut state = CurrentState::default();
    for shape in [cdc::Shape::Envelope, cdc::Shape::Unwrapped] {
        for (k, v) in [(Some(key), value), (None, rest)] {
            if let Ok(Some(c)) = cdc::parse_record(k, Some(v), shape, Some(0)) {
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
    }
    let _ = state.into_rows();
}

/// The query-file header parser, under both kinds' rules.
pub fn query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [Kind::Batch, Kind::Realtime] {
        let _ = catalog::parse_kind(Path::new("fuzz.sql"), text, kind);
    }
}
