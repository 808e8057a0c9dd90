//! Micro-benchmarks of the collector's per-event CPU work: validation and stamping, the
//! canonical JSON for Kafka, and the Arrow conversion the lake uses.
//!
//!     cargo bench --bench event

use std::hint::black_box;

use bookrec::event::{self, Limits};
use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn raw_events(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"event_id":"{}","event_type":"view","user_id":"u{}","book_id":"03454510{:02}X","client_ts":"2026-11-26T07:00:00.123Z","sent_at":"2026-11-26T07:00:01Z","page":"/books/{}","properties":{{"ab":"b","pos":{}}}}}"#,
                uuid::Uuid::from_u128(i as u128 + 1),
                i % 1000,
                i % 100,
                i,
                i % 10
            )
            .into_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let raws = raw_events(1000);
    let now = Utc::now();
    let limits = Limits::default();
    let mut g = c.benchmark_group("event");
    g.throughput(Throughput::Elements(raws.len() as u64));
    g.bench_function("validate_and_stamp", |b| {
        b.iter(|| {
            for r in &raws {
                black_box(event::validate_bytes(r, now, &limits).ok());
            }
        })
    });
    let events: Vec<event::Event> = raws
        .iter()
        .filter_map(|r| event::validate_bytes(r, now, &limits).ok())
        .collect();
    g.bench_function("canonical_json", |b| {
        b.iter(|| {
            for e in &events {
                black_box(e.to_json());
            }
        })
    });
    g.bench_function("to_record_batch", |b| {
        b.iter(|| black_box(event::arrow::to_record_batch(&events).ok()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
