//! The CDC current state from a state snapshot plus the changes after it equals the fold of
//! the whole history, row for row, and reads only the changes after the snapshot.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use bookrec::lake::Lake;
use bookrec::sql::cdc_state;

/// One landed change: (partition, offset, op, key, after, ts_ms).
type Row = (i32, i64, &'static str, String, Option<String>, i64);

async fn put_changes(lake: &Lake, table: &str, partition: i32, rows: &[Row]) {
    let n = rows.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.5))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.3.clone()),
        )),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.4.clone()))),
        Arc::new(StringArray::from(vec![None::<&str>; n])),
        Arc::new(StringArray::from(vec![Some("db"); n])),
        Arc::new(StringArray::from(vec![Some(table); n])),
        Arc::new(Int32Array::from(vec![partition; n])),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
    ];
    let batch = RecordBatch::try_new(bookrec::lake::cdc_changes_schema(), cols).expect("batch");
    let (first, last) = (rows[0].1, rows[n - 1].1);
    lake.put(
        &format!("cdc/{table}/part-db.{table}-{partition}-{first}-{last}.parquet"),
        bookrec::lake::write_parquet(&batch).expect("parquet"),
    )
    .await
    .expect("put");
}

/// Seeded changes of `keys` users over two partitions: creates, updates (some with the TOAST
/// placeholder), deletes, and a truncate in partition 0.
fn history(
    seed: u64,
    keys: u64,
    n: usize,
    offset0: i64,
    ts0: i64,
    truncate_at: Option<usize>,
) -> [Vec<Row>; 2] {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut parts: [Vec<Row>; 2] = [Vec::new(), Vec::new()];
    for i in 0..n {
        let k = next() % keys;
        let p = (k % 2) as usize;
        let offset = offset0 + parts[p].len() as i64;
        let ts = ts0 + i as i64;
        let key = format!("{{\"id\":{k}}}");
        let (op, after) = match next() % 10 {
            0 => ("d", None),
            1 => (
                "u",
                Some(format!(
                    "{{\"id\":{k},\"name\":\"__debezium_unavailable_value\",\"n\":{i}}}"
                )),
            ),
            _ => (
                "u",
                Some(format!(
                    "{{\"id\":{k},\"name\":\"user {k} v{i}\",\"n\":{i}}}"
                )),
            ),
        };
        parts[p].push((p as i32, offset, op, key, after, ts));
        if truncate_at == Some(i) {
            let offset = offset0 + parts[0].len() as i64;
            parts[0].push((0, offset, "t", String::new(), None, ts));
        }
    }
    parts
}

async fn users(lake: &Lake) -> String {
    let ctx = bookrec::sql::session(lake).await.expect("session");
    let b = bookrec::sql::query(
        &ctx,
        "SELECT _key, id, name, n, _ts_ms FROM users ORDER BY _key",
    )
    .await
    .expect("users");
    arrow::util::pretty::pretty_format_batches(&b)
        .expect("fmt")
        .to_string()
}

#[tokio::test]
async fn a_state_snapshot_plus_later_changes_equals_the_whole_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = Lake::open(&bookrec::config::LakeConfig {
        url: format!("file://{}", dir.path().display()),
        ..bookrec::config::Config::load_with_env(None, Vec::new())
            .expect("defaults")
            .lake
    })
    .expect("lake");
    let [p0, p1] = history(7, 300, 3000, 0, 1_000, Some(1500));
    put_changes(&lake, "users", 0, &p0).await;
    put_changes(&lake, "users", 1, &p1).await;
    let full_before = users(&lake).await;

    let reports = cdc_state::snapshot_all(&lake).await.expect("snapshot");
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].new_changes as usize, p0.len() + p1.len());
    assert_eq!(
        users(&lake).await,
        full_before,
        "the snapshot alone gives the same state"
    );
    // nothing new: no second snapshot
    assert!(
        cdc_state::snapshot_all(&lake)
            .await
            .expect("again")
            .is_empty()
    );

    // more changes after the snapshot, with a truncate in partition 0 whose time clears
    // partition 1's older rows too
    let [q0, q1] = history(11, 400, 2000, 100_000, 10_000, Some(1200));
    put_changes(&lake, "users", 0, &q0).await;
    put_changes(&lake, "users", 1, &q1).await;
    let incremental = users(&lake).await;
    let ctx = bookrec::sql::session(&lake).await.expect("session");
    let (_, through, read) = cdc_state::load(&ctx, &lake, "users").await.expect("load");
    assert_eq!(
        read as usize,
        q0.len() + q1.len(),
        "only the changes after the snapshot"
    );
    assert_eq!(through.get(&0), q0.last().map(|r| &r.1));

    // the same lake without its snapshots folds the whole history
    std::fs::remove_dir_all(dir.path().join("cdc_state")).expect("remove snapshots");
    assert_eq!(users(&lake).await, incremental);
    assert!(incremental.lines().count() > 50, "{incremental}");
}
