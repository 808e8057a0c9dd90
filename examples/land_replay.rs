//! Builds a lake from a ratings file the way production does — events stamped at their
//! dataset time, produced to the events topic, landed by the lander — in one process over
//! the in-process bus (`memory://`), optionally scaled: `--scale N` replays every user N
//! times (copy k of user `u` is `u~k`, with its own event ids, at the same times), so the
//! lake has N× the events over the same hours and books. With the `items.csv` beside the
//! ratings (MovieLens, `scripts/fetch-datasets`), the catalogue lands too, as a CDC snapshot
//! of `books` (book_id = item_id, title, year, category = the first genre). The batch
//! benchmark's input (`scripts/bench-batch`).
//!
//!     cargo run --release --example land_replay -- data/ml-1m/ratings.csv /tmp/lake [--scale 10]

use std::time::Instant;

use bookrec::config::Config;
use bookrec::replay::{Interaction, Target};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: land_replay <ratings.csv> <lake dir> [--scale N]";
    let (Some(ratings), Some(lake_dir)) = (args.first(), args.get(1)) else {
        anyhow::bail!(usage);
    };
    let scale: usize = match args.get(2).map(String::as_str) {
        None => 1,
        Some("--scale") => args
            .get(3)
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| anyhow::anyhow!("--scale needs a whole number ≥ 1; {usage}"))?,
        Some(other) => anyhow::bail!("unexpected argument {other:?}; {usage}"),
    };
    let mut cfg = Config::load_with_env(None, Vec::new())?;
    cfg.kafka.brokers = "memory://land-replay".into();
    cfg.lake.url = format!("file://{lake_dir}");
    cfg.log.filter = "warn".into();
    let lake = bookrec::lake::Lake::open(&cfg.lake)?;
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    let (dataset, base) = bookrec::replay::load(std::path::Path::new(ratings), 0, None)?;
    let rows = base.len();
    let target = Target::Kafka {
        cfg: Box::new(cfg.kafka.clone()),
        live: false,
        rate: None,
    };
    let mut produced = 0;
    rt.block_on(async {
        for copy in 0..scale {
            let scaled: Vec<Interaction> = base
                .iter()
                .map(|it| Interaction {
                    row: it.row + copy * rows,
                    user_id: if copy == 0 {
                        it.user_id.clone()
                    } else {
                        format!("{}~{copy}", it.user_id)
                    },
                    ..it.clone()
                })
                .collect();
            let report = bookrec::replay::run(dataset, &scaled, &target, 1).await?;
            produced += report.accepted;
        }
        anyhow::Ok(())
    })?;
    let produce_s = started.elapsed().as_secs_f64();
    let landed = rt.block_on(async {
        let (cfg, lake) = (cfg.clone(), lake.clone());
        tokio::task::spawn_blocking(move || {
            bookrec::land::run(&cfg, &lake, &CancellationToken::new(), true)
        })
        .await
    })??;
    let items = std::path::Path::new(ratings).with_file_name("items.csv");
    let books = if items.exists() {
        let rows = catalogue(&items)?;
        let batch = bookrec::lake::cdc_snapshot("book_db", "books", 0, &rows)?;
        rt.block_on(lake.put(
            &format!(
                "cdc/books/part-book_db.books-0-0-{}.parquet",
                rows.len().saturating_sub(1)
            ),
            bookrec::lake::write_parquet(&batch).map_err(anyhow::Error::msg)?,
        ))?;
        rows.len()
    } else {
        0
    };
    let files = rt.block_on(lake.list("events"))?.len();
    println!(
        "{}",
        serde_json::json!({
            "rows": rows,
            "scale": scale,
            "produced": produced,
            "landed": landed.events,
            "files": files,
            "books": books,
            "produce_seconds": produce_s,
            "total_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// MovieLens items as Debezium row images of `books`: (key JSON, row JSON).
fn catalogue(items: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    use arrow::array::{Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(
        ["item_id", "title", "year", "genres"]
            .map(|n| Field::new(n, DataType::Utf8, true))
            .to_vec(),
    ));
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(std::fs::File::open(items)?)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let col = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{}: column {i} is not text", items.display()))
        };
        let (id, title, year, genres) = (col(0)?, col(1)?, col(2)?, col(3)?);
        for r in 0..batch.num_rows() {
            let text = |a: &StringArray| a.is_valid(r).then(|| a.value(r).to_string());
            let row = serde_json::json!({
                "book_id": id.value(r),
                "title": text(&title),
                "author": null,
                "publisher": null,
                "year": text(&year).and_then(|y| y.parse::<i64>().ok()),
                "category": text(&genres).and_then(|g| g.split('|').next().map(str::to_string)),
            });
            out.push((
                serde_json::json!({ "book_id": id.value(r) }).to_string(),
                row.to_string(),
            ));
        }
    }
    Ok(out)
}
