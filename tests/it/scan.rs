//! The lake's own scan (`events`, `dead_letters` in process) returns what DataFusion's
//! listing table returns over the same folder: projections, partition pruning (also with
//! OR, IN and casts), filters on other columns, limits, an older file without some
//! columns, and files outside the layout.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch};
use bookrec::event::{Event, EventType};
use bookrec::lake::Lake;
use chrono::{Duration, TimeZone, Utc};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::SessionContext;

const KINDS: [&str; 5] = ["view", "click", "favorite", "purchase", "rate"];

/// 600 events over 5 days, 2 Kafka partitions, a file per partition and hour; one hour's
/// file of partition 1 written without `user_agent` and `properties` (an older lake);
/// objects outside the layout beside them.
async fn lake(dir: &std::path::Path) -> Lake {
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}", dir.display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    let start = Utc
        .with_ymd_and_hms(2026, 11, 20, 0, 0, 0)
        .single()
        .expect("date");
    let mut by_file: std::collections::BTreeMap<(String, u32, i32), Vec<(i64, Event)>> =
        Default::default();
    for i in 0..600i64 {
        let ts = start + Duration::minutes(i * 12);
        let e = Event {
            event_id: uuid::Uuid::new_v4(),
            event_type: EventType::parse(KINDS[(i % 5) as usize]),
            user_id: (i % 7 != 0).then(|| format!("u{}", i % 13)),
            anonymous_id: None,
            session_id: None,
            book_id: Some(format!("b{}", i % 17)),
            rating: (i % 5 == 4).then_some((i % 5) as f64),
            query: None,
            client_ts: Some(ts),
            sent_at: None,
            received_at: ts,
            event_ts: ts,
            page: None,
            referrer: None,
            user_agent: Some(format!("agent {}", i % 3)),
            properties: (i % 2 == 0).then(|| format!("{{\"i\":{i}}}")),
        };
        let (dt, hour) = bookrec::lake::layout::hour_bucket(&ts);
        by_file
            .entry((dt, hour, (i % 2) as i32))
            .or_default()
            .push((i, e));
    }
    let old_hour = ("2026-11-21".to_string(), 5u32, 1i32);
    for ((dt, hour, partition), rows) in by_file {
        let events: Vec<Event> = rows.iter().map(|(_, e)| e.clone()).collect();
        let base = bookrec::event::arrow::to_record_batch(&events).expect("batch");
        let mut cols: Vec<ArrayRef> = base.columns().to_vec();
        cols.push(Arc::new(Int32Array::from(vec![partition; rows.len()])));
        cols.push(Arc::new(Int64Array::from(
            rows.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        )));
        let mut batch =
            RecordBatch::try_new(bookrec::lake::events_file_schema(), cols).expect("batch");
        if (dt.clone(), hour, partition) == old_hour {
            let schema = batch.schema();
            let keep: Vec<usize> = (0..schema.fields().len())
                .filter(|&i| {
                    !["user_agent", "properties"].contains(&schema.field(i).name().as_str())
                })
                .collect();
            batch = batch.project(&keep).expect("project");
        }
        let file = bookrec::lake::DataFile {
            kind: bookrec::lake::FileKind::Events { dt, hour },
            topic: "scan".into(),
            partition,
            first_offset: rows[0].0,
            last_offset: rows[rows.len() - 1].0,
        };
        lake.put(
            &file.relative_path(),
            bookrec::lake::write_parquet(&batch).expect("parquet"),
        )
        .await
        .expect("put");
    }
    // not part of the table: a file beside the partitions, a note in one
    lake.put("events/loose.parquet", bytes::Bytes::from_static(b"PAR1"))
        .await
        .expect("put");
    lake.put(
        "events/dt=2026-11-20/hour=00/notes.txt",
        bytes::Bytes::from_static(b"hi"),
    )
    .await
    .expect("put");
    lake
}

async fn rows(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let batches = bookrec::sql::query(ctx, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_scan_returns_what_the_listing_table_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = lake(dir.path()).await;
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    // the same folder through DataFusion's listing table
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            ("dt".into(), arrow::datatypes::DataType::Utf8),
            ("hour".into(), arrow::datatypes::DataType::Int32),
        ]);
    ctx.register_listing_table(
        "listed",
        format!("file://{}/events/", dir.path().display()),
        options,
        Some(bookrec::lake::events_file_schema()),
        None,
    )
    .await
    .expect("listing table");

    let queries = [
        "SELECT * FROM {t}",
        "SELECT count(*) AS n, count(user_id) AS u, count(properties) AS p, count(user_agent) AS a FROM {t}",
        "SELECT dt, hour, count(*) AS n FROM {t} GROUP BY dt, hour",
        "SELECT event_id, dt FROM {t} WHERE dt = '2026-11-21'",
        "SELECT event_id FROM {t} WHERE dt >= '2026-11-21' AND dt < '2026-11-23' AND hour BETWEEN 3 AND 9",
        "SELECT event_id, hour FROM {t} WHERE hour IN (0, 5, 23) OR dt = '2026-11-24'",
        "SELECT event_id FROM {t} WHERE dt = '2026-11-21' OR user_id = 'u3'",
        "SELECT user_id, sum(rating) AS r, max(event_ts) AS last FROM {t} WHERE event_ts < TIMESTAMP '2026-11-22T07:30:00Z' GROUP BY user_id",
        "SELECT kafka_partition, kafka_offset, user_agent, properties FROM {t} WHERE dt = '2026-11-21' AND hour = 5",
        "SELECT count(*) AS n FROM {t} WHERE dt <= CAST(CAST(TIMESTAMP '2026-11-22T00:00:00Z' AS DATE) AS VARCHAR)",
        "SELECT count(*) AS n FROM {t} WHERE dt = '1999-01-01'",
        "SELECT hour FROM {t} WHERE hour > 100",
    ];
    // DataFusion's listing table turns `hour = 5` into the folder prefix `hour=5/` and so
    // misses the lake's `hour=05/`: its reference answer filters on a range instead
    let reference = |q: &str, t: &str| {
        q.replace("{t}", t)
            .replace("hour = 5", "hour IN (5, 6) AND hour < 6")
    };
    for q in queries {
        let ours = rows(&ctx, &q.replace("{t}", "events")).await;
        let theirs = rows(&ctx, &reference(q, "listed")).await;
        assert_eq!(ours, theirs, "{q}");
        assert!(
            ours.len() > 3 || q.contains("1999") || q.contains("100"),
            "{q}: {ours:?}"
        );
    }
    // the same through the ranged reader that large files take (footer, then the projected
    // column chunks), here for every file
    let ranged = bookrec::sql::scan::LakeScanTable::new(
        &lake,
        "events",
        bookrec::lake::events_file_schema(),
        vec![
            ("dt".into(), arrow::datatypes::DataType::Utf8),
            ("hour".into(), arrow::datatypes::DataType::Int32),
        ],
    )
    .with_whole_file_max(0);
    ctx.register_table("ranged", Arc::new(ranged))
        .expect("register");
    for q in queries {
        let ours = rows(&ctx, &q.replace("{t}", "ranged")).await;
        let theirs = rows(&ctx, &reference(q, "listed")).await;
        assert_eq!(ours, theirs, "{q}");
    }
    // every event, once
    assert_eq!(
        rows(&ctx, "SELECT count(*) AS n FROM events").await,
        rows(&ctx, "SELECT 600 AS n").await
    );
    // the older file's missing columns read as null, its other columns as written
    let old = rows(
        &ctx,
        "SELECT count(*) AS n, count(user_agent) AS ua, count(event_id) AS ids FROM events \
         WHERE dt = '2026-11-21' AND hour = 5 AND kafka_partition = 1",
    )
    .await;
    assert_eq!(old, rows(&ctx, "SELECT 3 AS n, 0 AS ua, 3 AS ids").await);

    // the plan is the lake scan, pruned to the selected folders
    let plan = rows(
        &ctx,
        "EXPLAIN SELECT count(*) FROM events WHERE dt = '2026-11-21' AND hour < 2",
    )
    .await
    .join("\n");
    assert!(
        plan.contains("LakeScanExec: folder=events, files=4"),
        "{plan}"
    );
    let analyzed = rows(
        &ctx,
        "EXPLAIN ANALYZE SELECT count(*) FROM events WHERE dt = '2026-11-21'",
    )
    .await
    .join("\n");
    for metric in ["output_rows=120", "output_batches=1", "files_scanned=48"] {
        assert!(analyzed.contains(metric), "{metric}: {analyzed}");
    }
    // a limit stops early and still gives rows of the table
    let limited = bookrec::sql::query(&ctx, "SELECT event_id FROM events LIMIT 7")
        .await
        .expect("limit");
    assert_eq!(limited.iter().map(RecordBatch::num_rows).sum::<usize>(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_lake_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = lake(dir.path()).await;
    let bad = "events/dt=2026-11-22/hour=03/part-scan-0-1-1.parquet";
    lake.put(bad, bytes::Bytes::from_static(b"not parquet at all"))
        .await
        .expect("put");
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    let err = bookrec::sql::query(&ctx, "SELECT count(*) FROM events")
        .await
        .expect_err("a broken file fails the query")
        .to_string();
    assert!(err.contains("part-scan-0-1-1.parquet"), "{err}");
    // queries that do not read that folder still run
    let n = rows(
        &ctx,
        "SELECT count(*) AS n FROM events WHERE dt = '2026-11-21'",
    )
    .await;
    assert_eq!(n, rows(&ctx, "SELECT 120 AS n").await);
}
