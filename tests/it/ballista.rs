//! `batch.engine = "ballista://host:port"`: the shipped features run on a real Apache
//! DataFusion Ballista scheduler and executor that the test starts (gRPC and Arrow Flight
//! on loopback ports), and give the same lake outputs as the in-process engine and the
//! values computed by hand; through the library and through the `bookrec batch` command.

use std::process::Command;

use arrow::array::RecordBatch;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use bookrec::config::BatchConfig;
use bookrec::lake::Lake;

use crate::batch::{as_of, assert_hand_computed, fixture_lake, queries_dir};

/// Starts a Ballista scheduler and one executor (2 task slots); returns the scheduler's port.
async fn start_cluster() -> u16 {
    let addr = ballista_scheduler::standalone::new_standalone_scheduler()
        .await
        .expect("ballista scheduler");
    let url = format!("http://localhost:{}", addr.port());
    let mut client = None;
    for _ in 0..100 {
        match SchedulerGrpcClient::connect(url.clone()).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let client = client.expect("the scheduler answers");
    ballista_executor::new_standalone_executor(client, 2, BallistaCodec::default())
        .await
        .expect("ballista executor");
    addr.port()
}

fn on(engine: &str) -> BatchConfig {
    BatchConfig {
        queries_dir: queries_dir(),
        engine: engine.into(),
    }
}

/// Every feature table of the lake's current runs, rows sorted.
async fn outputs(lake: &Lake) -> Vec<(&'static str, RecordBatch)> {
    let ctx = bookrec::sql::session(lake).await.expect("session");
    let mut out = Vec::new();
    for table in [
        "book_popularity",
        "category_popularity",
        "interactions",
        "user_profile",
        "experiment_report",
    ] {
        let batches: Vec<RecordBatch> =
            bookrec::sql::query(&ctx, &format!("SELECT * FROM {table} ORDER BY 1, 2"))
                .await
                .expect("read output");
        let schema = batches
            .first()
            .map(|b| b.schema())
            .expect("the output has a batch");
        out.push((
            table,
            arrow::compute::concat_batches(&schema, &batches).expect("concat"),
        ));
    }
    out
}

/// The same tables, the same rows and values; floating-point values may differ in the last
/// bits, since a cluster sums partial aggregates in another order than one process does.
fn assert_same_outputs(got: &[(&str, RecordBatch)], want: &[(&str, RecordBatch)]) {
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(want) {
        let shown = || {
            format!(
                "{name}: got\n{}\nwant\n{}",
                arrow::util::pretty::pretty_format_batches(std::slice::from_ref(g))
                    .expect("format"),
                arrow::util::pretty::pretty_format_batches(std::slice::from_ref(w))
                    .expect("format")
            )
        };
        assert_eq!(g.schema(), w.schema(), "{}", shown());
        assert_eq!(g.num_rows(), w.num_rows(), "{}", shown());
        for (i, (gc, wc)) in g.columns().iter().zip(w.columns()).enumerate() {
            match (
                gc.as_any().downcast_ref::<arrow::array::Float64Array>(),
                wc.as_any().downcast_ref::<arrow::array::Float64Array>(),
            ) {
                (Some(gf), Some(wf)) => {
                    for (a, b) in gf.iter().zip(wf.iter()) {
                        let same = match (a, b) {
                            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                            (a, b) => a == b,
                        };
                        assert!(same, "column {i}: {a:?} vs {b:?}\n{}", shown());
                    }
                }
                _ => assert_eq!(gc, wc, "column {i}\n{}", shown()),
            }
        }
    }
}

/// A runtime like `bookrec`'s (8 MiB worker stacks: the scheduler and executor serialize
/// and plan the features' plans recursively, in this process).
fn cluster_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn the_features_run_on_a_ballista_cluster_with_the_same_results() {
    cluster_runtime().block_on(features_on_a_cluster());
}

async fn features_on_a_cluster() {
    let port = start_cluster().await;
    let engine = format!("ballista://localhost:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(dir.path()).await;
    // no DB outputs here (the store suite covers those): lake outputs only
    let queries = tempfile::tempdir().expect("tempdir");
    for f in std::fs::read_dir(queries_dir()).expect("queries") {
        let path = f.expect("entry").path();
        let text = std::fs::read_to_string(&path)
            .expect("query")
            .replace("-- output: lake, db", "-- output: lake");
        std::fs::write(queries.path().join(path.file_name().expect("name")), text).expect("copy");
    }
    let run_in = |engine: &str| BatchConfig {
        queries_dir: queries.path().to_path_buf(),
        engine: engine.to_string(),
    };

    let local = bookrec::batch::runner::run(
        &lake,
        None,
        &run_in("datafusion"),
        &[],
        as_of(),
        None,
        &mut |_| {},
    )
    .await
    .expect("in-process run");
    let expected = outputs(&lake).await;

    let mut lines = Vec::new();
    let record = bookrec::batch::runner::run(
        &lake,
        None,
        &run_in(&engine),
        &[],
        as_of(),
        None,
        &mut |l| lines.push(l.to_string()),
    )
    .await
    .expect("ballista run");
    assert_eq!(record.status, "succeeded");
    assert_eq!(record.outputs.len(), 5, "{lines:?}");
    assert_ne!(record.run_id, local.run_id);
    for (a, b) in record.outputs.iter().zip(&local.outputs) {
        assert_eq!((&a.name, a.rows), (&b.name, b.rows));
    }
    assert_eq!(
        record.input_watermark, local.input_watermark,
        "the watermark query ran on the cluster too"
    );
    assert_same_outputs(&outputs(&lake).await, &expected);
    assert_hand_computed(&lake).await;
    // what the engine's session plans: a job for the scheduler, not a local scan
    let (ctx, tables) = bookrec::sql::session_on(
        &lake,
        &bookrec::config::Engine::parse(&engine).expect("engine"),
    )
    .await
    .expect("ballista session");
    let plan = ctx
        .sql("SELECT count(*) FROM events")
        .await
        .expect("plan")
        .create_physical_plan()
        .await
        .expect("physical plan");
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string();
    assert!(shown.contains("DistributedQueryExec"), "{shown}");
    // a join with an empty side finishes (Ballista 55's adaptive planner, which bookrec
    // turns off, never finished one)
    let empty_side = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        bookrec::sql::query(
            &ctx,
            "SELECT e.user_id, x.book_id FROM events e LEFT JOIN \
             (SELECT DISTINCT book_id FROM events WHERE event_type = 'no-such-type') x \
             ON x.book_id = e.book_id",
        ),
    )
    .await
    .expect("a join with an empty side finishes on the cluster")
    .expect("query");
    let rows: usize = empty_side.iter().map(|b| b.num_rows()).sum();
    let all = bookrec::sql::query(&ctx, "SELECT count(*) FROM events")
        .await
        .expect("count");
    let n =
        arrow::compute::cast(all[0].column(0), &arrow::datatypes::DataType::Int64).expect("cast");
    use arrow::array::AsArray;
    assert_eq!(
        rows as i64,
        n.as_primitive::<arrow::datatypes::Int64Type>().value(0)
    );
    // an equality on the hour finds the zero-padded `hour=00/` and `hour=12/` folders, on the
    // cluster as in process
    let local_ctx = bookrec::sql::session(&lake).await.expect("session");
    for c in [&ctx, &local_ctx] {
        let counts = bookrec::sql::query(
            c,
            "SELECT count(*) FILTER (WHERE hour = 0) AS h0, \
                    count(*) FILTER (WHERE hour = 12) AS h12 FROM events",
        )
        .await
        .expect("hour counts");
        let pruned = bookrec::sql::query(c, "SELECT count(*) AS n FROM events WHERE hour = 12")
            .await
            .expect("hour filter");
        let show = |b: &[RecordBatch]| {
            arrow::util::pretty::pretty_format_batches(b)
                .expect("format")
                .to_string()
        };
        let (counts, pruned) = (show(&counts), show(&pruned));
        assert!(counts.contains("| 5  | 1   |"), "{counts}");
        assert!(pruned.contains("| 1 |"), "{pruned}");
    }
    tables.cleanup().await.expect("cleanup");
    let staged = lake.list("_staging").await.expect("list");
    assert!(staged.is_empty(), "staged tables are removed: {staged:?}");

    // the command line, configured through the environment, against the same cluster
    let db = dir.path().join("cli.db");
    let out = Command::new(env!("CARGO_BIN_EXE_bookrec"))
        .args(["batch", "--select", "interactions", "--skip-als", "--as-of"])
        .arg(bookrec::event::format_ts(&as_of()))
        .env(
            "BOOKREC__LAKE__URL",
            format!("file://{}", dir.path().display()),
        )
        .env("BOOKREC__STORE__URL", format!("sqlite://{}", db.display()))
        .env("BOOKREC__BATCH__ENGINE", &engine)
        .env("BOOKREC__BATCH__QUERIES_DIR", queries.path())
        .output()
        .expect("bookrec batch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
            .expect("run record");
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["outputs"][0]["name"], "interactions");
    assert_eq!(record["outputs"][0]["rows"], 6);
    assert_same_outputs(&outputs(&lake).await, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_misspelt_engine_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(dir.path()).await;
    // a port nobody listens on
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let engine = format!("ballista://127.0.0.1:{port}");
    let err =
        bookrec::batch::runner::run(&lake, None, &on(&engine), &[], as_of(), None, &mut |_| {})
            .await
            .expect_err("no scheduler there")
            .to_string();
    assert!(
        err.contains(&format!("batch.engine \"{engine}\"")) && err.contains("scheduler"),
        "{err}"
    );
    for (bad, needle) in [
        ("ballista://localhost", "port"),
        ("spark://localhost:7077", "ballista://HOST:PORT"),
        ("ballista://:50050", "host"),
    ] {
        let err = bookrec::config::Engine::parse(bad)
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains(&format!("{bad:?}")) && err.contains(needle),
            "{err}"
        );
    }
}
