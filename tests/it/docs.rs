//! `bookrec docs`: the site built from the shipped queries over a lake with runs, served,
//! and checked in headless Chromium — the index renders the lineage graph, every link of
//! every page resolves, a feature page shows its columns, tests, lineage and last runs.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::batch::{as_of, batch_config, fixture_lake};
use crate::demo::Driver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_site_renders_and_its_links_resolve_in_chromium() {
    let lake_dir = tempfile::tempdir().expect("tempdir");
    let lake = fixture_lake(lake_dir.path()).await;
    let mut cfg = batch_config();
    // no DB here: lake outputs only
    let queries = tempfile::tempdir().expect("queries");
    for f in std::fs::read_dir(&cfg.queries_dir).expect("queries") {
        let path = f.expect("entry").path();
        let text = std::fs::read_to_string(&path)
            .expect("query")
            .replace("-- output: lake, db", "-- output: lake");
        std::fs::write(queries.path().join(path.file_name().expect("name")), text).expect("copy");
    }
    cfg.queries_dir = queries.path().to_path_buf();
    let record = bookrec::batch::runner::run(&lake, None, &cfg, &[], as_of(), None, &mut |_| {})
        .await
        .expect("batch");
    let site = tempfile::tempdir().expect("site");
    let realtime = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/realtime");
    let report = bookrec::batch::docs::build(&lake, queries.path(), &realtime, site.path())
        .await
        .expect("docs");
    assert_eq!(report.features, 5, "{report:?}");
    assert_eq!(report.runs, 1, "{report:?}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let server = tokio::spawn(bookrec::batch::docs::serve(
        site.path().to_path_buf(),
        listener,
        stop.clone(),
    ));

    let driver = Driver::start().await;
    let goto = |url: String| {
        let driver = &driver;
        async move {
            driver
                .call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
                .await;
        }
    };
    // every link of a page, fetched from the page: (href, status)
    let links = r#"
        // an SVG link's href is an SVGAnimatedString: resolve its value against the page
        const hrefs = [...document.querySelectorAll('a[href]')].map(a =>
            typeof a.href === 'string' ? a.href : new URL(a.href.baseVal, location.href).href);
        const got = [];
        for (const h of hrefs) {
            const r = await fetch(h);
            got.push([h, r.status]);
        }
        return got;"#;
    let check_links = |page: String| {
        let driver = &driver;
        async move {
            let got = driver
                .call(
                    reqwest::Method::POST,
                    "/execute/async",
                    Some(json!({
                        "script": format!(
                            "const done = arguments[arguments.length - 1]; \
                             (async () => {{ {links} }})().then(done);"
                        ),
                        "args": []
                    })),
                )
                .await;
            let got = got.as_array().cloned().unwrap_or_default();
            assert!(!got.is_empty(), "{page}: no links");
            for l in &got {
                assert_eq!(l[1], json!(200), "{page}: {l}");
            }
            got.len()
        }
    };

    goto(format!("{base}/")).await;
    let index: Value = driver
        .script(
            "return {title: document.title, \
             nodes: document.querySelectorAll('#lineage .node').length, \
             edges: document.querySelectorAll('#lineage .edge').length, \
             features: document.querySelectorAll('#features tr').length - 1, \
             realtime: document.querySelectorAll('#realtime tr').length - 1, \
             width: document.querySelector('#lineage').getBoundingClientRect().width};",
        )
        .await;
    assert!(
        index["title"]
            .as_str()
            .is_some_and(|t| t.contains("bookrec docs")),
        "{index}"
    );
    assert!(index["nodes"].as_u64() >= Some(18), "{index}");
    assert!(index["edges"].as_u64() >= Some(15), "{index}");
    assert_eq!(index["features"], json!(5), "{index}");
    assert_eq!(index["realtime"], json!(6), "{index}");
    assert!(
        index["width"].as_f64() > Some(500.0),
        "the graph renders: {index}"
    );
    // the model consumes interactions; a realtime feature reads events
    let edge = |from: &str, to: &str| {
        format!(
            "document.querySelector('#lineage .edge[data-from=\"{from}\"][data-to=\"{to}\"]') !== null"
        )
    };
    for (from, to) in [
        ("interactions", "als"),
        ("events", "interactions"),
        ("books", "category_popularity"),
        ("events", "realtime:book_heat"),
    ] {
        let found = driver.script(&format!("return {};", edge(from, to))).await;
        assert_eq!(found, json!(true), "{from} -> {to}");
    }
    let n = check_links(format!("{base}/")).await;
    assert!(n >= 8, "index links: {n}");

    // a feature page, reached by its link in the graph
    driver
        .click("#lineage a[href='features/interactions.html']")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let page: Value = driver
        .script(
            "return {h1: document.querySelector('h1').textContent, \
             columns: [...document.querySelectorAll('table.columns tr td:first-child')].map(t => t.textContent), \
             tests: document.querySelectorAll('table.tests tr').length - 1, \
             runs: [...document.querySelectorAll('table.runs tr td')].map(t => t.textContent), \
             upstream: document.querySelector('.upstream').textContent, \
             downstream: document.querySelector('.downstream').textContent};",
        )
        .await;
    assert_eq!(page["h1"], "interactions", "{page}");
    let columns: Vec<&str> = page["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        columns,
        vec!["user_id", "book_id", "weight", "last_ts"],
        "{page}"
    );
    assert_eq!(page["tests"], json!(4), "{page}");
    let runs = page["runs"].to_string();
    assert!(
        runs.contains(&record.run_id) && runs.contains("4/4"),
        "{page}"
    );
    let rows = record
        .outputs
        .iter()
        .find(|o| o.name == "interactions")
        .expect("ran")
        .rows;
    assert!(runs.contains(&format!("\"{rows}\"")), "{page}");
    assert!(
        page["upstream"]
            .as_str()
            .is_some_and(|u| u.contains("events")),
        "{page}"
    );
    assert!(
        page["downstream"]
            .as_str()
            .is_some_and(|d| d.contains("als")),
        "{page}"
    );
    // every page's links resolve
    for f in std::fs::read_dir(site.path().join("features"))
        .expect("features")
        .chain(std::fs::read_dir(site.path().join("sources")).expect("sources"))
    {
        let path = f.expect("page").path();
        let rel = path.strip_prefix(site.path()).expect("relative");
        let url = format!("{base}/{}", rel.display());
        goto(url.clone()).await;
        check_links(url).await;
    }
    drop(driver);
    stop.cancel();
    server.await.expect("join").expect("served");
}
