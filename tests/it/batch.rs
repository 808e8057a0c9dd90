//! The shipped feature queries on a small hand-made lake, checked against values computed
//! by hand; and broken queries reported with file:line.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use bookrec::event::{Event, EventType};
use bookrec::lake::Lake;
use chrono::{DateTime, Duration, TimeZone, Utc};

pub fn as_of() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0)
        .single()
        .expect("date")
}

/// An event `days_ago` before [`as_of`], stamped as the collector would.
pub fn ev(user: &str, kind: &str, book: &str, days_ago: f64, rating: Option<f64>) -> Event {
    let ts = as_of() - Duration::milliseconds((days_ago * 86_400_000.0) as i64);
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::parse(kind),
        user_id: Some(user.into()),
        anonymous_id: None,
        session_id: None,
        book_id: Some(book.into()),
        rating,
        query: None,
        client_ts: Some(ts),
        sent_at: Some(ts),
        received_at: ts,
        event_ts: ts,
        page: None,
        referrer: None,
        user_agent: None,
        properties: None,
    }
}

/// An impression `serve` logged: `book` at `position` of response `request`, the user in
/// `variant` of experiment `e`.
fn impression(user: &str, book: &str, request: &str, variant: &str, days_ago: f64) -> Event {
    let mut e = ev(user, "impression", book, days_ago, None);
    e.properties = Some(
        serde_json::json!({"experiments": {"e": variant}, "position": 1, "reasons": ["popular"],
                           "request_id": request})
        .to_string(),
    );
    e
}

/// The fixture: 6 events of 3 users on 2 books, 2 impressions (which no feature but the
/// experiment report counts), and the 2 books via CDC.
pub async fn fixture_lake(dir: &Path) -> Lake {
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}", dir.display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    let events = [
        ev("u1", "view", "b1", 1.0, None),
        ev("u1", "purchase", "b1", 30.0, None),
        ev("u2", "click", "b1", 0.5, None),
        ev("u2", "view", "b2", 10.0, None),
        ev("u1", "unfavorite", "b2", 2.0, None),
        ev("u3", "rate", "b2", 60.0, Some(4.0)),
        impression("u1", "b2", "r1", "a", 0.2),
        impression("u2", "b2", "r2", "b", 0.3),
    ];
    for (offset, e) in events.iter().enumerate() {
        let base = bookrec::event::arrow::to_record_batch(std::slice::from_ref(e)).expect("batch");
        let mut cols: Vec<ArrayRef> = base.columns().to_vec();
        cols.push(Arc::new(Int32Array::from(vec![0])));
        cols.push(Arc::new(Int64Array::from(vec![offset as i64])));
        let batch = RecordBatch::try_new(bookrec::lake::events_file_schema(), cols).expect("batch");
        let (dt, hour) = bookrec::lake::layout::hour_bucket(&e.event_ts);
        let file = bookrec::lake::DataFile {
            kind: bookrec::lake::FileKind::Events { dt, hour },
            topic: "fixture".into(),
            partition: 0,
            first_offset: offset as i64,
            last_offset: offset as i64,
        };
        lake.put(
            &file.relative_path(),
            bookrec::lake::write_parquet(&batch).expect("parquet"),
        )
        .await
        .expect("put");
    }
    // the catalogue as the MongoDB connector lands it (`_id`; the `books` source view maps
    // it), and what users saved in user_engagement_db: u3 favourited b1 (never logged), u2
    // is half through b2, u4 is known only by a saved rating
    let iso = |days: f64| {
        (as_of() - Duration::milliseconds((days * 86_400_000.0) as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let raw: [(&str, Vec<serde_json::Value>); 4] = [
        (
            "book_db_mongo_books",
            vec![
                serde_json::json!({"_id":"b1","title":"One","author":"A","publisher":"P","year":2001,"category":"fantasy"}),
                serde_json::json!({"_id":"b2","title":"Two","author":"B","publisher":"P","year":"1999","category":"history"}),
            ],
        ),
        (
            "user_engagement_db_favorites",
            vec![serde_json::json!({"user_id":"u3","book_id":"b1","created_at":iso(2.0)})],
        ),
        (
            "user_engagement_db_ratings",
            vec![
                serde_json::json!({"user_id":"u4","book_id":"b2","rating":"8.0","updated_at":iso(5.0)}),
            ],
        ),
        (
            "user_engagement_db_reading_progress",
            vec![
                serde_json::json!({"user_id":"u2","book_id":"b2","progress":"0.5000","updated_at":iso(1.0)}),
            ],
        ),
    ];
    for (table, docs) in raw {
        let rows: Vec<(String, String)> = docs
            .iter()
            .map(|d| {
                let key = match d.get("_id") {
                    Some(id) => serde_json::json!({ "id": id }),
                    None => serde_json::json!({"user_id": d["user_id"], "book_id": d["book_id"]}),
                };
                (key.to_string(), d.to_string())
            })
            .collect();
        let batch = bookrec::lake::cdc_snapshot("fixture", table, 0, &rows).expect("batch");
        lake.put(
            &format!(
                "cdc/{table}/part-fixture.{table}-0-0-{}.parquet",
                rows.len() - 1
            ),
            bookrec::lake::write_parquet(&batch).expect("parquet"),
        )
        .await
        .expect("put");
    }
    lake
}

pub fn queries_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/batch")
}

/// The shipped queries on the in-process engine.
pub fn batch_config() -> bookrec::config::BatchConfig {
    bookrec::config::BatchConfig {
        queries_dir: queries_dir(),
        engine: "datafusion".into(),
    }
}

async fn rows(lake: &Lake, sql: &str) -> Vec<RecordBatch> {
    let ctx = bookrec::sql::session(lake).await.expect("session");
    bookrec::sql::query(&ctx, sql).await.expect("query")
}

fn f64s(b: &[RecordBatch], col: usize) -> Vec<f64> {
    b.iter()
        .flat_map(|b| {
            let a = b.column(col);
            if let Some(f) = a.as_any().downcast_ref::<Float64Array>() {
                (0..f.len()).map(|i| f.value(i)).collect::<Vec<_>>()
            } else if let Some(i) = a.as_any().downcast_ref::<Int64Array>() {
                (0..i.len()).map(|k| i.value(k) as f64).collect()
            } else {
                panic!("column {col} is {:?}", a.data_type())
            }
        })
        .collect()
}

fn strs(b: &[RecordBatch], col: usize) -> Vec<String> {
    b.iter()
        .flat_map(|b| {
            let a = arrow::compute::cast(b.column(col), &arrow::datatypes::DataType::Utf8)
                .expect("cast");
            let s = a
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone();
            (0..s.len())
                .map(move |i| s.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

/// The shipped features' lake outputs on the fixture, against values computed by hand.
pub async fn assert_hand_computed(lake: &Lake) {
    let h = |days: f64, half: f64| 2f64.powf(-days / half);

    // interactions: weight = Σ type weight × 2^(−age/30); (u1,b2) has only an unfavourite;
    // saved signals: progress 8 × 0.5, favourite 4, rating 1 × 8
    let b = rows(
        lake,
        "SELECT user_id, book_id, weight FROM interactions ORDER BY user_id, book_id",
    )
    .await;
    assert_eq!(strs(&b, 0), ["u1", "u2", "u2", "u3", "u3", "u4"]);
    assert_eq!(strs(&b, 1), ["b1", "b1", "b2", "b1", "b2", "b2"]);
    close(
        &f64s(&b, 2),
        &[
            1.0 * h(1.0, 30.0) + 10.0 * h(30.0, 30.0),
            2.0 * h(0.5, 30.0),
            h(10.0, 30.0) + 8.0 * 0.5 * h(1.0, 30.0),
            4.0 * h(2.0, 30.0),
            4.0 * h(60.0, 30.0),
            8.0 * h(5.0, 30.0),
        ],
    );

    // book popularity: windows, trend and decayed score (half-life 7)
    let b = rows(lake, "SELECT book_id, views_1d, views_7d, clicks_1d, purchases_30d, trend_7d, popularity FROM book_popularity ORDER BY book_id").await;
    assert_eq!(strs(&b, 0), ["b1", "b2"]);
    close(&f64s(&b, 1), &[0.0, 0.0]);
    close(&f64s(&b, 2), &[1.0, 0.0]);
    close(&f64s(&b, 3), &[1.0, 0.0]);
    close(&f64s(&b, 4), &[0.0, 0.0]); // the purchase is exactly 30 days old
    close(&f64s(&b, 5), &[3.0, 1.0]); // b1: (2+1)/(0+1); b2: (1+1)/(1+1)
    close(
        &f64s(&b, 6),
        &[
            h(1.0, 7.0) + 2.0 * h(0.5, 7.0) + 10.0 * h(30.0, 7.0),
            h(10.0, 7.0),
        ],
    );

    // category popularity
    let b = rows(lake, "SELECT category, events_7d, users_7d, popularity, popularity_rank FROM category_popularity ORDER BY popularity_rank").await;
    assert_eq!(strs(&b, 0), ["fantasy", "history"]);
    close(&f64s(&b, 1), &[2.0, 1.0]);
    close(&f64s(&b, 2), &[2.0, 1.0]);
    close(
        &f64s(&b, 3),
        &[
            h(1.0, 7.0) + h(0.5, 7.0) + h(30.0, 7.0),
            h(10.0, 7.0) + h(2.0, 7.0) + h(60.0, 7.0),
        ],
    );

    // user profile: a logged event weighs 1 in the shares, a saved favourite 4, a saved
    // rating 2, reading progress 3; u4 is known only by what they saved
    let b = rows(lake, "SELECT user_id, events, views, purchases, recency_days, top_categories, top_authors, saved_favorites, saved_ratings, books_in_progress FROM user_profile ORDER BY user_id").await;
    assert_eq!(strs(&b, 0), ["u1", "u2", "u3", "u4"]);
    close(&f64s(&b, 1), &[3.0, 2.0, 1.0, 0.0]);
    close(&f64s(&b, 2), &[1.0, 1.0, 0.0, 0.0]);
    close(&f64s(&b, 3), &[1.0, 0.0, 0.0, 0.0]);
    close(&f64s(&b, 4), &[1.0, 0.5, 2.0, 5.0]);
    assert_eq!(
        strs(&b, 5),
        [
            "fantasy:0.667,history:0.333",
            "history:0.8,fantasy:0.2",
            "fantasy:0.8,history:0.2",
            "history:1.0"
        ]
    );
    assert_eq!(strs(&b, 6)[0], "A:0.667,B:0.333");
    close(&f64s(&b, 7), &[0.0, 0.0, 1.0, 0.0]);
    close(&f64s(&b, 8), &[0.0, 0.0, 0.0, 1.0]);
    close(&f64s(&b, 9), &[0.0, 1.0, 0.0, 0.0]);
}

#[tokio::test]
async fn shipped_features_match_hand_computed_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(dir.path()).await;
    let check = bookrec::batch::runner::check(&lake, &queries_dir())
        .await
        .expect("every shipped query plans");
    // the three source views and the four features, in one dependency order
    assert_eq!(check.sources, ["books", "engagement", "users"]);
    assert_eq!(
        check.order,
        [
            "book_popularity",
            "books",
            "category_popularity",
            "engagement",
            "experiment_report",
            "interactions",
            "user_profile",
            "users"
        ]
    );
    let store =
        bookrec::store::Store::connect(&format!("sqlite://{}/bookrec.db", dir.path().display()))
            .await
            .expect("sqlite store");
    let record = bookrec::batch::runner::run(
        &lake,
        Some(&store),
        &batch_config(),
        &[],
        as_of(),
        None,
        &mut |_| {},
    )
    .await
    .expect("batch run");
    assert_eq!(record.status, "succeeded");
    assert_hand_computed(&lake).await;

    // experiment_report: the two impressions, one per variant, unclicked
    let b = rows(
        &lake,
        "SELECT experiment, variant, users, responses, impressions, clicks, conversions, ctr \
         FROM experiment_report ORDER BY variant",
    )
    .await;
    assert_eq!(strs(&b, 0), ["e", "e"]);
    assert_eq!(strs(&b, 1), ["a", "b"]);
    for c in 2..7 {
        let want = if c < 5 { [1.0, 1.0] } else { [0.0, 0.0] };
        assert_eq!(f64s(&b, c), want, "column {c}");
    }
    close(&f64s(&b, 7), &[0.0, 0.0]);

    // a rerun with the same as_of gives the same outputs, switched atomically
    let again = bookrec::batch::runner::run(
        &lake,
        Some(&store),
        &batch_config(),
        &["interactions".into()],
        as_of(),
        None,
        &mut |_| {},
    )
    .await
    .expect("rerun");
    assert_eq!(again.outputs.len(), 1, "only the selected query");
    let b2 = rows(
        &lake,
        "SELECT user_id, book_id, weight FROM interactions ORDER BY user_id, book_id",
    )
    .await;
    assert_eq!(strs(&b2, 0), ["u1", "u2", "u2", "u3", "u3", "u4"]);
    let runs = lake.list("features/_runs").await.expect("runs");
    assert_eq!(runs.len(), 2, "one run record per run");
}

fn write_query(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write");
}

#[tokio::test]
async fn broken_queries_are_reported_with_file_and_line() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(lake_dir.path()).await;
    let cases: Vec<(&str, &str, &str, usize, &str)> = vec![
        (
            "syntax.sql",
            "-- name: syntax\n-- output: lake\nSELECT book_id,\n  count(*\nFROM events GROUP BY book_id\n",
            "syntax.sql",
            5,
            "",
        ),
        (
            "column.sql",
            "-- name: column\n-- output: lake\nSELECT book_id,\n       no_such_column\nFROM events\n",
            "column.sql",
            4,
            "no_such_column",
        ),
        (
            "unknown.sql",
            "-- name: unknown\n-- output: lake\nSELECT *\nFROM nowhere\n",
            "unknown.sql",
            4,
            "unknown table nowhere",
        ),
    ];
    for (file, text, want_file, want_line, needle) in cases {
        let q = tempfile::tempdir().expect("tempdir");
        write_query(q.path(), file, text);
        let err = bookrec::batch::runner::check(&lake, q.path())
            .await
            .expect_err("broken")
            .to_string();
        let prefix = format!("{}:{want_line}:", q.path().join(want_file).display());
        assert!(err.starts_with(&prefix), "want {prefix} in: {err}");
        assert!(err.contains(needle), "{err}");
    }
    // a cycle names both files
    let q = tempfile::tempdir().expect("tempdir");
    write_query(
        q.path(),
        "a.sql",
        "-- name: a\n-- output: lake\nSELECT * FROM b\n",
    );
    write_query(
        q.path(),
        "b.sql",
        "-- name: b\n-- output: lake\nSELECT *\nFROM a\n",
    );
    let err = bookrec::batch::runner::check(&lake, q.path())
        .await
        .expect_err("cycle")
        .to_string();
    assert!(
        err.contains("a.sql:3:") && err.contains("b.sql:4:"),
        "{err}"
    );
    assert!(err.contains("cycle"), "{err}");
}

/// A CDC table whose field types vary between records (`price: 9` in one, `"9"` in
/// another, as a schemaless source may send) still opens: the column is read as text.
#[tokio::test]
async fn a_cdc_table_with_varying_field_types_still_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new()).expect("cfg");
    cfg.lake.url = format!("file://{}", dir.path().display());
    let lake = Lake::open(&cfg.lake).expect("lake");
    let changes: Vec<(String, String)> = [
        (1, serde_json::json!(9)),
        (2, serde_json::json!("9.5")),
        (3, serde_json::json!(true)),
        (4, serde_json::json!(null)),
    ]
    .iter()
    .map(|(id, price)| {
        (
            serde_json::json!({ "id": id }).to_string(),
            serde_json::json!({ "id": id, "price": price }).to_string(),
        )
    })
    .collect();
    let batch = bookrec::lake::cdc_snapshot("shop", "prices", 0, &changes).expect("batch");
    lake.put(
        "cdc/prices/part-shop.prices-0-0-3.parquet",
        bookrec::lake::write_parquet(&batch).expect("parquet"),
    )
    .await
    .expect("put");
    let got = rows(
        &lake,
        "SELECT CAST(id AS VARCHAR) AS id, CAST(price AS VARCHAR) AS price FROM prices ORDER BY id",
    )
    .await;
    let text = arrow::util::pretty::pretty_format_batches(&got)
        .expect("format")
        .to_string();
    for line in [
        "| 1  | 9     |",
        "| 2  | 9.5   |",
        "| 3  | true  |",
        "| 4  |       |",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

/// A copy of the shipped queries in a temporary folder, `edit` applied to each file's text
/// (name → text), plus `extra` files.
fn queries_copy(
    edit: impl Fn(&str, String) -> String,
    extra: &[(&str, &str)],
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in std::fs::read_dir(queries_dir()).expect("queries") {
        let path = f.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        // no DB here: lake outputs only
        let text = std::fs::read_to_string(&path)
            .expect("query")
            .replace("-- output: lake, db", "-- output: lake");
        std::fs::write(
            dir.path().join(path.file_name().expect("file name")),
            edit(&name, text),
        )
        .expect("write");
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(format!("{name}.sql")), text).expect("write extra");
    }
    dir
}

/// The shipped queries with one more test in `feature`'s header.
fn with_test(feature: &str, test: &str) -> tempfile::TempDir {
    queries_copy(
        |name, t| {
            if name == feature {
                t.replacen("-- tags:", &format!("-- test: {test}\n-- tags:"), 1)
            } else {
                t
            }
        },
        &[],
    )
}

async fn run_selected(
    lake: &Lake,
    dir: &Path,
    selection: &bookrec::batch::runner::Selection,
) -> Result<bookrec::batch::runner::RunRecord, bookrec::batch::runner::RunError> {
    let cfg = bookrec::config::BatchConfig {
        queries_dir: dir.to_path_buf(),
        engine: "datafusion".into(),
    };
    bookrec::batch::runner::run_with(lake, None, &cfg, selection, as_of(), None, &mut |_| {}).await
}

#[tokio::test]
async fn data_tests_selectors_and_params_shape_a_run() {
    use bookrec::batch::runner::{Params, RunError, Selection};
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(lake_dir.path()).await;
    let all = Selection::default();

    // the shipped tests pass on the fixture, and each output reports them
    let shipped = queries_copy(|_, t| t, &[]);
    let record = run_selected(&lake, shipped.path(), &all)
        .await
        .expect("run");
    for o in &record.outputs {
        assert!(o.tests.len() >= 4, "{}: {:?}", o.name, o.tests);
        assert!(
            o.tests.iter().all(|t| t.passed),
            "{}: {:?}",
            o.name,
            o.tests
        );
    }
    let current = |name: &str| {
        std::fs::read_to_string(lake_dir.path().join(format!("features/{name}/_current")))
            .expect("current")
    };
    let before = current("interactions");

    // an `error` test that fails: the run stops, names the file, line and rows; the
    // feature's previous output stays current
    let failing = with_test("interactions", "accepted_values(book_id, ['b1'])");
    let err = run_selected(&lake, failing.path(), &all)
        .await
        .expect_err("a failing test");
    let RunError::TestsFailed {
        feature, report, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(feature, "interactions");
    let file = failing.path().join("interactions.sql");
    let line = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .position(|l| l.contains("accepted_values(book_id"))
        .expect("line")
        + 1;
    assert!(
        report.contains(&format!(
            "FAIL {}:{line}: test accepted_values(book_id, ['b1'])",
            file.display()
        )),
        "{report}"
    );
    assert!(report.contains("offending row(s), e.g."), "{report}");
    assert!(report.contains("b2"), "a sample row: {report}");
    assert_eq!(
        current("interactions"),
        before,
        "the failed output is not current"
    );
    // the run record keeps the failed feature, its status and its tests' results
    let failed_record = std::fs::read_dir(lake_dir.path().join("features/_runs"))
        .expect("runs")
        .filter_map(|e| std::fs::read_to_string(e.expect("entry").path()).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .find(|r| r["status"] == "failed")
        .expect("a failed run record");
    let last = failed_record["outputs"]
        .as_array()
        .and_then(|o| o.last())
        .expect("outputs");
    assert_eq!(
        (&last["name"], &last["status"]),
        (
            &serde_json::json!("interactions"),
            &serde_json::json!("tests_failed")
        ),
        "{failed_record}"
    );
    assert!(
        last["tests"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["passed"] == false)),
        "{failed_record}"
    );

    // the same test as `warn`: the run goes on and reports it
    let warning = with_test("interactions", "accepted_values(book_id, ['b1']) warn");
    let record = run_selected(&lake, warning.path(), &all)
        .await
        .expect("warned run");
    let inter = record
        .outputs
        .iter()
        .find(|o| o.name == "interactions")
        .expect("interactions ran");
    assert!(
        inter.tests.iter().any(|t| !t.passed && t.failing_rows > 0),
        "{:?}",
        inter.tests
    );
    assert_ne!(current("interactions"), before);

    // selectors: tags, name+ (downstream), exclusions
    let extra = queries_copy(
        |_, t| t,
        &[(
            "heavy_users",
            "-- name: heavy_users\n-- output: lake\n-- test: unique(user_id)\n\
             SELECT user_id, sum(weight) AS w FROM interactions GROUP BY user_id\n",
        )],
    );
    let names = |r: &bookrec::batch::runner::RunRecord| {
        r.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>()
    };
    let sel = |select: &[&str], exclude: &[&str]| Selection {
        select: select.iter().map(|s| s.to_string()).collect(),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        params: Params::default(),
        trigger: String::new(),
    };
    let r = run_selected(&lake, extra.path(), &sel(&["tag:cold_start"], &[]))
        .await
        .expect("tag");
    assert_eq!(names(&r), vec!["book_popularity", "category_popularity"]);
    let r = run_selected(&lake, extra.path(), &sel(&["interactions+"], &[]))
        .await
        .expect("downstream");
    assert_eq!(names(&r), vec!["interactions", "heavy_users"]);
    // a selected feature brings what it reads; an excluded one is read from the lake
    let r = run_selected(
        &lake,
        extra.path(),
        &sel(&["heavy_users"], &["interactions"]),
    )
    .await
    .expect("exclude");
    assert_eq!(names(&r), vec!["heavy_users"]);
    let r = run_selected(
        &lake,
        extra.path(),
        &sel(&[], &["tag:daily", "tag:experiments"]),
    )
    .await
    .expect("exclude tags");
    assert_eq!(names(&r), vec!["heavy_users"]);
    for bad in ["tag:nope", "nope+"] {
        let e = run_selected(&lake, extra.path(), &sel(&[bad], &[]))
            .await
            .expect_err(bad);
        assert!(e.to_string().contains(bad), "{e}");
    }

    // params: typed by the default, per query or for all that declare it
    let with = |args: &[&str]| Selection {
        select: vec!["interactions".into()],
        exclude: Vec::new(),
        params: Params::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params parse"),
        trigger: String::new(),
    };
    let base = run_selected(&lake, shipped.path(), &with(&[]))
        .await
        .expect("base");
    let base_sum = sum_weight(&lake).await;
    let heavier = run_selected(&lake, shipped.path(), &with(&["interactions.w_view=100"]))
        .await
        .expect("override");
    assert_eq!(base.outputs[0].rows, heavier.outputs[0].rows);
    assert!(sum_weight(&lake).await > base_sum, "views weigh more");
    for (args, says) in [
        (vec!["w_view=NaN"], "finite number"),
        (vec!["interactions.w_view=inf"], "finite number"),
        (vec!["no_such_param=1"], "no query declares it"),
        (vec!["nope.w_view=1"], "no query nope"),
        (vec!["w_view"], "NAME=VALUE"),
    ] {
        let e = match Params::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()) {
            Err(e) => e,
            Ok(p) => run_selected(
                &lake,
                shipped.path(),
                &Selection {
                    select: vec!["interactions".into()],
                    exclude: Vec::new(),
                    params: p,
                    trigger: String::new(),
                },
            )
            .await
            .expect_err("a bad param"),
        };
        assert!(e.to_string().contains(says), "{args:?}: {e}");
    }

    // `bookrec test`: the lake's current outputs, exit 1 on a failing `error` test
    let cli = |dir: &Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bookrec"))
            .arg("test")
            .args(args)
            .env(
                "BOOKREC__LAKE__URL",
                format!("file://{}", lake_dir.path().display()),
            )
            .env("BOOKREC__BATCH__QUERIES_DIR", dir)
            .env("BOOKREC__LOG__FILTER", "error")
            .env_remove("BOOKREC__STORE__URL")
            .output()
            .expect("run bookrec test")
    };
    let out = cli(shipped.path(), &["--as-of", "2026-11-26T00:00:00Z"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("PASS ") && text.contains(" 0 failed"),
        "{text}"
    );
    let out = cli(failing.path(), &["--select", "interactions"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAIL ") && text.contains("1 failed"),
        "{text}"
    );
    assert!(
        !text.contains("book_popularity"),
        "only the selection: {text}"
    );
    let out = cli(failing.path(), &["--select", "interactions", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(json["features"][0][0], "interactions", "{json}");

    // `bookrec check` plans the tests too: a column the result lacks is named at its line
    let broken = with_test("user_profile", "unique(no_such_column)");
    let e = bookrec::batch::runner::check(&lake, broken.path())
        .await
        .expect_err("a test on a missing column");
    let file = broken.path().join("user_profile.sql");
    let line = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .position(|l| l.contains("no_such_column"))
        .expect("line")
        + 1;
    assert!(
        e.to_string().contains(&format!(
            "{}:{line}: test unique(no_such_column)",
            file.display()
        )),
        "{e}"
    );
}

async fn sum_weight(lake: &Lake) -> f64 {
    let ctx = bookrec::sql::session(lake).await.expect("session");
    let b = bookrec::sql::query(&ctx, "SELECT sum(weight) FROM interactions")
        .await
        .expect("sum");
    b[0].column(0)
        .as_any()
        .downcast_ref::<arrow::array::Float64Array>()
        .expect("f64")
        .value(0)
}
