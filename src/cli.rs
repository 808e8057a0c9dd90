//! The command line: parses arguments, loads the config, sets up logging, runs a subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "bookrec",
    version,
    about = "Recommendation analytics for a book platform, on Apache Arrow and DataFusion",
    long_about = "Recommendation analytics for a book platform, on Apache Arrow and DataFusion.\n\n\
        Configuration: compiled-in defaults (config/default.toml), then --config FILE, then \
        BOOKREC__SECTION__KEY environment variables, then command-line flags."
)]
pub struct Cli {
    /// TOML file overriding the compiled-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTP event collector: validates and stamps events, spools them durably, produces to Kafka.
    Collect {
        /// Listen address (overrides collect.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Prints the effective configuration (secrets redacted) and exits.
    Config,
    /// The recommendation API (serve.listen): the published model blended with the realtime
    /// features; OpenAPI at /api/openapi.json, /metrics, and the demo page at /.
    Serve {
        /// Listen address (overrides serve.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// The main job on the embedded default, no external services: loads Book-Crossing,
    /// replays it through the collector into the in-process bus, lands it in ./lake, runs
    /// the SQL features and ALS, publishes to SQLite, then runs collect + stream + serve in
    /// one process (in-memory feature store) and prints the URLs.
    Demo {
        /// A folder with ratings.csv and books.csv as `scripts/fetch-datasets book-crossing`
        /// writes them
        #[arg(long, value_name = "DIR", default_value = "data/book-crossing")]
        data: PathBuf,
        /// Keep this many of the most-rated books (ALS and similar books stay quick)
        #[arg(long, default_value_t = 3000)]
        max_books: usize,
        /// Set everything up, print the summary, and exit instead of serving
        #[arg(long)]
        no_serve: bool,
    },
    /// Lands Kafka events in the lake as Parquet, exactly once.
    Land {
        /// Process the backlog, write everything, and exit 0 once the lag is zero.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Realtime features: the queries of queries/realtime on micro-batches of the events
    /// topic, applied to Redis (redis.url) exactly once.
    Stream {
        /// Process the backlog and exit 0 once every partition is read and applied.
        #[arg(long)]
        until_caught_up: bool,
        /// First rebuild the features from the lake, up to the lander's committed offsets,
        /// then continue from Kafka at exactly those offsets (into an empty stream.group_id).
        #[arg(long)]
        from_lake: bool,
    },
    /// Parses and plans every query in queries/batch against the lake schema; prints the
    /// dependency order; exits non-zero on any error (reported as file:line).
    Check {
        /// The folder of feature queries (overrides batch.queries_dir)
        #[arg(long, value_name = "DIR")]
        queries: Option<PathBuf>,
    },
    /// One batch run: the feature queries in dependency order, outputs to the lake.
    Batch {
        /// Run only these queries and the ones they read: NAME (or +NAME), NAME+ (and
        /// everything downstream of it), tag:TAG (the queries tagged TAG), als (the ALS
        /// step)
        #[arg(long = "select", value_name = "SELECTOR")]
        select: Vec<String>,
        /// Leave these out (same selectors); a query reading one reads its current output
        /// in the lake
        #[arg(long = "exclude", value_name = "SELECTOR")]
        exclude: Vec<String>,
        /// Override a parameter: NAME=VALUE for every query declaring it, QUERY.NAME=VALUE
        /// for one; typed by its default (a number takes a finite number)
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// The run's cut-off time, RFC 3339 (default: now)
        #[arg(long, value_name = "TS")]
        as_of: Option<String>,
        /// The folder of feature queries (overrides batch.queries_dir)
        #[arg(long, value_name = "DIR")]
        queries: Option<PathBuf>,
        /// Do not train and publish the ALS model at the end (`--select als` runs only it
        /// and what it reads)
        #[arg(long)]
        skip_als: bool,
    },
    /// Runs the data tests of the selected features (all by default) on their current
    /// outputs in the lake; exit 1 when an `error` test fails
    Test {
        /// Features to test: NAME, NAME+, tag:TAG (as `bookrec batch --select`, without
        /// the ones they read)
        #[arg(long = "select", value_name = "SELECTOR")]
        select: Vec<String>,
        #[arg(long = "exclude", value_name = "SELECTOR")]
        exclude: Vec<String>,
        /// `${as_of}` in the tests, RFC 3339 (default: now)
        #[arg(long, value_name = "TS")]
        as_of: Option<String>,
        /// Parameter overrides, as `bookrec batch --param`
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// The folder of feature queries (overrides batch.queries_dir)
        #[arg(long, value_name = "DIR")]
        queries: Option<PathBuf>,
        /// Print the results as JSON
        #[arg(long)]
        json: bool,
    },
    /// Writes the analysts' docs: a static HTML site with a page per feature and source
    /// view (description, parameters, columns, tests, lineage, last runs, SQL) and the
    /// lineage graph; `--serve` serves it afterwards
    Docs {
        /// The site's folder
        #[arg(long, value_name = "DIR", default_value = "target/bookrec-docs")]
        out: PathBuf,
        /// Serve the site on this address until Ctrl-C (e.g. 127.0.0.1:8089)
        #[arg(long, value_name = "ADDR")]
        serve: Option<std::net::SocketAddr>,
        /// The folder of feature queries (overrides batch.queries_dir)
        #[arg(long, value_name = "DIR")]
        queries: Option<PathBuf>,
    },
    /// The batch runs recorded in the store, newest first: trigger, selection, status,
    /// per feature rows, seconds and data tests, the model step
    Runs {
        /// How many (newest first)
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        last: u32,
        /// Print the records as JSON
        #[arg(long)]
        json: bool,
    },
    /// Long-running scheduler of batch runs (cron jobs from config), one run at a time
    /// across machines (a lease in the store).
    Schedule,
    /// Health probe for containers (the image has no curl): GET the URL, exit 0 on a 2xx
    /// answer within the timeout, else 1 with the reason on stderr.
    Probe {
        /// e.g. http://127.0.0.1:8080/readyz
        url: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// One-shot setup of a deployment (the compose file's `init` service; idempotent): creates
    /// the pipeline's topics (events and dead letters with kafka.partitions, the land.cdc
    /// topics compacted with kafka.cdc_partitions) and the lake's S3 bucket when missing.
    /// Retries with backoff while the broker or the S3 server is not up yet.
    Init {
        /// Give up (exit 1, naming what failed) after this long
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Implicit ALS on a file, outside the pipeline.
    Als {
        #[command(subcommand)]
        command: AlsCommand,
    },
    /// Offline evaluation of ALS against popularity and item-kNN baselines: precision,
    /// recall, NDCG, MAP, MRR and coverage at K, as a table or JSON.
    Eval {
        /// Parquet or CSV of (user_id, item_id[, weight][, time])
        #[arg(long, value_name = "FILE")]
        interactions: PathBuf,
        #[arg(long, value_enum, default_value = "kfold")]
        split: SplitKind,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 1)]
        leave_out: usize,
        /// Temporal split: test = interactions at or after this epoch second
        #[arg(long, value_name = "EPOCH_SECS")]
        cutoff: Option<i64>,
        /// Temporal split without --cutoff: the newest share held out
        #[arg(long, default_value_t = 0.2)]
        test_fraction: f64,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        k: u32,
        /// The models to evaluate
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "als,popularity,item-knn"
        )]
        models: Vec<ModelKind>,
        /// Neighbours per item of the item-kNN baseline
        #[arg(long, default_value_t = 100)]
        neighbours: usize,
        /// Grid search over factors × regularization × scaling (× exponent) × alpha on a validation split
        /// of the first fold's training data (temporal split: its newest `--test-fraction` by
        /// time; other splits: a random 20%); the best point is then evaluated
        #[arg(long)]
        search: bool,
        #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
        grid_factors: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.05,0.5")]
        grid_regularization: Vec<f32>,
        /// λ's scaling per row: none, frequency (λ·nᵛ; ALS-WR at ν = 1), confidence
        #[arg(
            long,
            value_delimiter = ',',
            value_enum,
            default_value = "none,frequency,confidence"
        )]
        grid_scaling: Vec<crate::als::RegularizationScaling>,
        /// ν of frequency scaling (λ·nᵛ, 0..=1): 1 is ALS-WR, 0.5 the square root
        #[arg(long, value_delimiter = ',', default_value = "0.5,1")]
        grid_exponent: Vec<f32>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,5,10")]
        grid_alpha: Vec<f32>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// The temporal replay (`--interactions` is a ratings.csv of scripts/fetch-datasets):
        /// ALS trains before the cut-off, the newest --test-fraction is replayed through the
        /// realtime queries, and before each new interaction every recommender (popularity,
        /// als, realtime, blend, blend+fold_in) is asked for its top --k (README "The lift of
        /// realtime")
        #[arg(long)]
        replay: bool,
        /// --replay: events per micro-batch, at most
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_batch: u32,
        /// --replay: tune the blend's weights on this share of events just before the
        /// reported window (0: no tuning); the report shows the configured and the chosen
        #[arg(long, default_value_t = 0.0)]
        validation_fraction: f64,
        #[command(flatten)]
        params: AlsArgs,
        #[command(flatten)]
        columns: ColumnArgs,
    },
    /// Model versions in the recommendation DB.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Lake maintenance.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// A/B experiments (serve.experiments): their report from the logged impressions.
    Experiment {
        #[command(subcommand)]
        command: ExperimentCommand,
    },
    /// Ad-hoc SQL over the lake (tables: events, dead_letters).
    Sql {
        /// The statement, e.g. "SELECT event_type, count(*) FROM events GROUP BY 1"
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        query: Option<String>,
        /// Run a feature file (queries/batch/NAME.sql) as `bookrec batch` would, without
        /// writing its output: its header checked, `${as_of}` and its parameters filled in
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// With --file: `${as_of}`, RFC 3339 (default: now)
        #[arg(long, value_name = "TS", requires = "file")]
        as_of: Option<String>,
        /// With --file: override a parameter, NAME=VALUE (typed by its default)
        #[arg(long = "param", value_name = "NAME=VALUE", requires = "file")]
        params: Vec<String>,
        /// Output format (json = one object per line)
        #[arg(long, value_enum, default_value = "table")]
        format: crate::sql::Format,
        /// Write to FILE instead of standard output (required for parquet on a terminal)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Allow statements that change things (CREATE/DROP, INSERT, COPY … TO, SET);
        /// without it `bookrec sql` only reads
        #[arg(long)]
        allow_writes: bool,
    },
    /// Replays a dataset (ratings CSV from scripts/fetch-datasets) as events into the
    /// collector, or straight into Kafka; prints events/s and latency.
    Replay {
        /// MovieLens or Book-Crossing ratings.csv, e.g. data/ml-1m/ratings.csv
        file: PathBuf,
        /// Collector base URL (default: http://<collect.listen>)
        #[arg(long, value_name = "URL", conflicts_with = "kafka")]
        to: Option<String>,
        /// Produce stamped events straight to kafka.topic instead (event_ts = client_ts)
        #[arg(long)]
        kafka: bool,
        /// With --kafka: event time = now (as the collector would stamp) instead of the
        /// dataset's time
        #[arg(long, requires = "kafka")]
        live: bool,
        /// With --kafka: at most this many events per second (with --live, each event is
        /// stamped when sent: freshness measurements)
        #[arg(long, requires = "kafka", value_name = "EVENTS_PER_SEC")]
        rate: Option<f64>,
        /// One event per request on POST /api/log instead of batches on /api/logs
        #[arg(long, conflicts_with = "kafka")]
        single: bool,
        /// Events per batch request
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
        /// Requests in flight at once
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: u32,
        /// Skip the first N rows
        #[arg(long, value_name = "N", default_value_t = 0)]
        skip: usize,
        /// Replay at most N rows (after --skip)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print the report as JSON
        #[arg(long)]
        json: bool,
    },
}

/// ALS parameters on the command line; each overrides the `[als]` config value.
#[derive(Debug, Clone, clap::Args)]
pub struct AlsArgs {
    #[arg(long, value_name = "N")]
    factors: Option<usize>,
    #[arg(long, value_name = "N")]
    iterations: Option<usize>,
    #[arg(long, value_name = "X")]
    regularization: Option<f32>,
    /// none: λ for every row; frequency: λ × the row's interaction count to the power
    /// --regularization-exponent (1: ALS-WR)
    #[arg(long, value_enum)]
    regularization_scaling: Option<crate::als::RegularizationScaling>,
    /// ν of frequency scaling: a row with n interactions gets λ·nᵛ (0..=1)
    #[arg(long, value_name = "X")]
    regularization_exponent: Option<f32>,
    #[arg(long, value_name = "X")]
    alpha: Option<f32>,
    #[arg(long, value_name = "N")]
    cg_steps: Option<usize>,
    #[arg(long, value_enum)]
    solver: Option<crate::als::Solver>,
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Worker threads (0 = one per core)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Train with the configured λ instead of choosing it on a validation window
    /// (`[als.tune]`); implied by --regularization, --regularization-scaling and
    /// --regularization-exponent
    #[arg(long)]
    no_tune: bool,
}

impl AlsArgs {
    /// The config's parameters with these overrides. A regularisation given here is the one
    /// that trains: it turns `[als.tune]` off rather than being silently out-voted.
    fn apply(&self, mut p: crate::als::Params) -> anyhow::Result<crate::als::Params> {
        if self.no_tune
            || self.regularization.is_some()
            || self.regularization_scaling.is_some()
            || self.regularization_exponent.is_some()
        {
            p.tune.enabled = false;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { p.$f = v; } )* };
        }
        set!(
            factors,
            iterations,
            regularization,
            regularization_scaling,
            regularization_exponent,
            alpha,
            cg_steps,
            solver,
            seed,
            threads
        );
        p.validate()?;
        Ok(p)
    }
}

/// Which input columns hold the user, the item, the weight and the time.
#[derive(Debug, Clone, clap::Args)]
pub struct ColumnArgs {
    /// User id column (default: user_id)
    #[arg(long, value_name = "NAME")]
    user_col: Option<String>,
    /// Item id column (default: item_id, else book_id)
    #[arg(long, value_name = "NAME")]
    item_col: Option<String>,
    /// Weight column (default: weight when present, else every row weighs 1)
    #[arg(long, value_name = "NAME")]
    weight_col: Option<String>,
    /// Time column, epoch seconds or a timestamp (default: last_ts, timestamp, event_ts or ts)
    #[arg(long, value_name = "NAME")]
    time_col: Option<String>,
}

impl ColumnArgs {
    fn columns(&self) -> crate::als::files::Columns {
        crate::als::files::Columns {
            user: self.user_col.clone(),
            item: self.item_col.clone(),
            weight: self.weight_col.clone(),
            time: self.time_col.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitKind {
    /// One global time cut-off (--cutoff, or the time leaving --test-fraction after it)
    Temporal,
    /// Each user's last --leave-out interactions
    LeaveLastOut,
    /// Random --folds-fold cross-validation
    Kfold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    Als,
    Popularity,
    ItemKnn,
}

#[derive(Debug, Subcommand)]
pub enum AlsCommand {
    /// Trains on a Parquet or CSV file of (user_id, item_id[, weight]) and writes
    /// recommendations.parquet, similar_items.parquet, the factors and model.json to --out.
    Fit {
        #[arg(long, value_name = "FILE")]
        interactions: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Recommendations per user
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        k: u32,
        /// Similar items per item
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        similar_k: u32,
        #[command(flatten)]
        params: AlsArgs,
        #[command(flatten)]
        columns: ColumnArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Lists the versions, newest first (status, validation NDCG, reason), as JSON lines.
    List,
    /// Switches readers back to the previous kept version (or --to VERSION).
    Rollback {
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Per variant of experiment NAME: users, impressions, clicks, conversions, CTR and
    /// conversion rate with 95% intervals (queries/batch/experiment_report.sql), and each
    /// variant against the first (the control): difference, z-test, significance at 5%.
    Report {
        /// The experiment's name
        name: String,
        /// The report's end time, RFC 3339 (default: now)
        #[arg(long, value_name = "TS")]
        as_of: Option<String>,
        /// Override a parameter of the query, e.g. --param attribution_hours=48
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// The folder of feature queries (overrides batch.queries_dir)
        #[arg(long, value_name = "DIR")]
        queries: Option<PathBuf>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LakeCommand {
    /// Merges the small files of closed event-hour partitions into one file each,
    /// atomically for readers (old set or new set, never both or neither), and writes a
    /// state snapshot of each CDC table with changes since its last one (sessions then
    /// fold only the changes after it).
    Compact {
        /// An hour is closed this many hours after it ends (late events land until then)
        #[arg(long, default_value_t = 2)]
        grace_hours: u64,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_redacted_toml()?);
            Ok(())
        }
        Command::Replay {
            file,
            to,
            kafka,
            live,
            rate,
            single,
            batch_size,
            concurrency,
            skip,
            limit,
            json,
        } => {
            init_logging(&config)?;
            let (dataset, rows) = crate::replay::load(&file, skip, limit)?;
            let base = to.unwrap_or_else(|| format!("http://{}", config.collect.listen));
            let target = if kafka {
                crate::replay::Target::Kafka {
                    cfg: Box::new(config.kafka.clone()),
                    live,
                    rate: rate.filter(|r| *r > 0.0),
                }
            } else if single {
                crate::replay::Target::Single { base }
            } else {
                crate::replay::Target::Batches {
                    base,
                    batch_size: batch_size as usize,
                }
            };
            let report = runtime()?.block_on(crate::replay::run(
                dataset,
                &rows,
                &target,
                concurrency as usize,
            ))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{report}");
            }
            if report.failed_requests > 0 {
                anyhow::bail!("{} requests failed", report.failed_requests);
            }
            Ok(())
        }
        Command::Land { until_caught_up } => {
            init_logging(&config)?;
            let lake = crate::lake::Lake::open(&config.lake)?;
            let report = runtime()?.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                let observed = crate::land::Observed::new()?;
                crate::http::spawn_ops(
                    "land.metrics_listen",
                    &config.land.metrics_listen,
                    "bookrec_land",
                    observed.metrics.registry().clone(),
                    observed.health.clone(),
                    &config.serve.http,
                    cancel.clone(),
                )
                .await?;
                let cfg = config.clone();
                tokio::task::spawn_blocking(move || {
                    crate::land::run_observed(&cfg, &lake, &cancel, until_caught_up, &observed)
                })
                .await
                .context("lander thread")?
                .map_err(anyhow::Error::from)
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Stream {
            until_caught_up,
            from_lake,
        } => {
            init_logging(&config)?;
            let lake = crate::lake::Lake::open(&config.lake)?;
            let report = runtime()?.block_on(async {
                // Redis may come up after the stream (or be restarting): connecting is retried
                // with backoff for up to stream.redis_retry_max_secs, each failure logged
                let deadline = std::time::Instant::now()
                    + Duration::from_secs(config.stream.redis_retry_max_secs);
                let store = retry_until(
                    deadline,
                    "stream: cannot reach the feature store yet",
                    || {
                        crate::features::RedisStore::connect(
                            &config.redis.url,
                            Duration::from_millis(config.redis.timeout_ms),
                        )
                    },
                )
                .await?
                .with_apply_timeout(std::time::Duration::from_millis(
                    config.redis.apply_timeout_ms,
                ));
                if from_lake {
                    let rebuilt =
                        crate::realtime::rebuild_from_lake(&config, &lake, &store).await?;
                    eprintln!("{}", serde_json::to_string(&rebuilt)?);
                }
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                let metrics = std::sync::Arc::new(crate::realtime::StreamMetrics::new()?);
                crate::http::spawn_ops(
                    "stream.metrics_listen",
                    &config.stream.metrics_listen,
                    "bookrec_stream",
                    metrics.registry().clone(),
                    metrics.health.clone(),
                    &config.serve.http,
                    cancel.clone(),
                )
                .await?;
                crate::realtime::run(
                    &config,
                    &lake,
                    std::sync::Arc::new(store),
                    metrics,
                    cancel,
                    until_caught_up,
                )
                .await
                .map_err(anyhow::Error::from)
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Check { queries } => {
            let dir = queries.unwrap_or(config.batch.queries_dir.clone());
            let lake = crate::lake::Lake::open(&config.lake)?;
            let report = runtime()?.block_on(crate::batch::runner::check(&lake, &dir))?;
            println!(
                "{} queries OK ({} source views), in dependency order:",
                report.order.len(),
                report.sources.len()
            );
            for (i, name) in report.order.iter().enumerate() {
                let kind = if report.sources.contains(name) {
                    " (source view)"
                } else {
                    ""
                };
                println!("  {}. {name}{kind}", i + 1);
            }
            Ok(())
        }
        Command::Docs {
            out,
            serve,
            queries,
        } => {
            init_logging(&config)?;
            let dir = queries.unwrap_or_else(|| config.batch.queries_dir.clone());
            let lake = crate::lake::Lake::open(&config.lake)?;
            runtime()?.block_on(async {
                let report =
                    crate::batch::docs::build(&lake, &dir, &config.stream.queries_dir, &out)
                        .await?;
                println!("{}", serde_json::to_string(&report)?);
                if let Some(addr) = serve {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("--serve {addr}: cannot listen"))?;
                    eprintln!("serving {} on http://{addr}/ (Ctrl-C stops)", out.display());
                    let cancel = tokio_util::sync::CancellationToken::new();
                    let stop = cancel.clone();
                    tokio::spawn(async move {
                        let _ = tokio::signal::ctrl_c().await;
                        stop.cancel();
                    });
                    crate::batch::docs::serve(out.clone(), listener, cancel).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::Runs { last, json } => {
            init_logging(&config)?;
            let runs = runtime()?.block_on(async {
                let store = crate::store::Store::connect(&config.store.url).await?;
                store
                    .run_history(last as usize)
                    .await
                    .map_err(anyhow::Error::from)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", runs_table(&runs));
            }
            Ok(())
        }
        Command::Test {
            select,
            exclude,
            as_of,
            params,
            queries,
            json,
        } => {
            init_logging(&config)?;
            let dir = queries.unwrap_or_else(|| config.batch.queries_dir.clone());
            let as_of = as_of_arg(as_of)?;
            let params = crate::batch::runner::Params::parse(&params)?;
            let lake = crate::lake::Lake::open(&config.lake)?;
            let report = runtime()?.block_on(crate::batch::datatest::run_on_lake(
                &lake, &dir, &select, &exclude, &as_of, &params,
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for (_, results) in &report.features {
                    for r in results {
                        println!("{r}");
                    }
                }
                println!(
                    "{} passed, {} warned, {} failed",
                    report.passed(),
                    report.warned(),
                    report.failed()
                );
            }
            if report.failed() > 0 {
                anyhow::bail!("{} data test(s) failed", report.failed());
            }
            Ok(())
        }
        Command::Batch {
            select,
            exclude,
            params,
            as_of,
            queries,
            skip_als,
        } => {
            init_logging(&config)?;
            let mut batch = config.batch.clone();
            if let Some(dir) = queries {
                batch.queries_dir = dir;
            }
            let as_of = as_of_arg(as_of)?;
            let selection = crate::batch::runner::Selection {
                select,
                exclude,
                params: crate::batch::runner::Params::parse(&params)?,
                trigger: "cli".into(),
            };
            let lake = crate::lake::Lake::open(&config.lake)?;
            let record = runtime()?.block_on(async {
                let store = crate::store::Store::connect(&config.store.url).await?;
                let training = crate::batch::runner::Training::from_config(&config);
                crate::batch::runner::run_with(
                    &lake,
                    Some(&store),
                    &batch,
                    &selection,
                    as_of,
                    (!skip_als).then_some(&training),
                    &mut batch_progress(),
                )
                .await
                .map_err(anyhow::Error::from)
            })?;
            println!("{}", serde_json::to_string(&record)?);
            Ok(())
        }
        Command::Probe { url, timeout_ms } => runtime()?.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_millis(timeout_ms))
                .build()
                .context("http client")?;
            let response = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("probe {url}"))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                let body = response.text().await.unwrap_or_default();
                anyhow::bail!(
                    "probe {url}: {status}: {}",
                    body.chars().take(500).collect::<String>()
                )
            }
        }),
        Command::Init { wait_secs } => {
            init_logging(&config)?;
            runtime()?.block_on(init_deployment(&config, Duration::from_secs(wait_secs)))
        }
        Command::Schedule => {
            init_logging(&config)?;
            let lake = crate::lake::Lake::open(&config.lake)?;
            runtime()?.block_on(async {
                let store = crate::store::Store::connect(&config.store.url).await?;
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                let holder = format!(
                    "{}:{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
                    std::process::id()
                );
                let observed = crate::batch::schedule::Observed::new()?;
                crate::http::spawn_ops(
                    "schedule.metrics_listen",
                    &config.schedule.metrics_listen,
                    "bookrec_schedule",
                    observed.metrics.registry().clone(),
                    observed.health.clone(),
                    &config.serve.http,
                    cancel.clone(),
                )
                .await?;
                crate::batch::schedule::run_observed(
                    &config.schedule,
                    &lake,
                    &store,
                    &config.batch,
                    Some(&crate::batch::runner::Training::from_config(&config)),
                    &holder,
                    cancel,
                    &observed,
                )
                .await?;
                Ok::<(), anyhow::Error>(())
            })
        }
        Command::Als {
            command:
                AlsCommand::Fit {
                    interactions,
                    out,
                    k,
                    similar_k,
                    params,
                    columns,
                },
        } => {
            init_logging(&config)?;
            let params = params.apply(config.als.clone())?;
            let mut bar = iteration_bar(params.iterations);
            let report = crate::als::files::fit_to_dir(
                &interactions,
                &columns.columns(),
                &params,
                k as usize,
                similar_k as usize,
                &out,
                &mut |p| bar(p),
            )?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Eval {
            interactions,
            split,
            folds,
            leave_out,
            cutoff,
            test_fraction,
            k,
            models,
            neighbours,
            search,
            grid_factors,
            grid_regularization,
            grid_scaling,
            grid_exponent,
            grid_alpha,
            json,
            replay,
            max_batch,
            validation_fraction,
            params,
            columns,
        } => {
            use crate::als::eval;
            init_logging(&config)?;
            let mut params = params.apply(config.als.clone())?;
            if replay {
                let opts = crate::lift::Options {
                    ratings: interactions,
                    test_fraction,
                    k: k as usize,
                    max_batch: max_batch as usize,
                    validation_fraction,
                    weights: config.serve.weights,
                };
                let report = runtime()?.block_on(crate::lift::run(
                    &config,
                    &params,
                    &opts,
                    &mut |line| eprintln!("{line}"),
                ))?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{report}");
                }
                return Ok(());
            }
            let loaded = crate::als::files::read_interactions(&interactions, &columns.columns())?;
            let how = match split {
                SplitKind::Temporal => eval::Split::Temporal {
                    cutoff,
                    test_fraction,
                },
                SplitKind::LeaveLastOut => eval::Split::LeaveLastOut { k: leave_out },
                SplitKind::Kfold => eval::Split::KFold {
                    folds,
                    seed: params.seed,
                },
            };
            let parts = eval::split(&loaded.data, &how).with_context(|| {
                format!(
                    "{} (time column: --time-col, else last_ts, timestamp, event_ts or ts)",
                    interactions.display()
                )
            })?;
            let k = k as usize;
            let trials = if search {
                let grid = eval::Grid {
                    factors: grid_factors,
                    regularization: grid_regularization,
                    scaling: grid_scaling,
                    exponent: grid_exponent,
                    alpha: grid_alpha,
                };
                // a temporal test is validated on a temporal window (its newest
                // --test-fraction), any other on a random holdout of the first fold's training
                let validation = eval::split_validation(
                    &loaded.data,
                    &how,
                    &parts[0],
                    test_fraction,
                    params.seed,
                )?;
                let trials = eval::search(&validation, &params, &grid, k)?;
                if let Some(best) = trials.first() {
                    params = best.params.clone();
                }
                Some((trials, validation.description))
            } else {
                None
            };
            // without --search, ALS trains as `bookrec batch` would: `[als.tune]` chooses its
            // regularisation on the first fold's validation split (the test is never seen)
            let tuning = if !search && params.tune.enabled && models.contains(&ModelKind::Als) {
                let validation = eval::split_validation(
                    &loaded.data,
                    &how,
                    &parts[0],
                    params.tune.validation_fraction,
                    params.seed,
                )?;
                let (chosen, tuning) = eval::tune_on(&validation, &params)?;
                params = chosen;
                Some(tuning)
            } else {
                None
            };
            let algorithms: Vec<eval::Algorithm> = models
                .iter()
                .map(|m| match m {
                    ModelKind::Als => eval::Algorithm::Als(params.clone()),
                    ModelKind::Popularity => eval::Algorithm::Popularity,
                    ModelKind::ItemKnn => eval::Algorithm::ItemKnn { neighbours },
                })
                .collect();
            let catalogue = loaded.data.items.len();
            let rows = eval::evaluate(&parts, &algorithms, k, catalogue)?;
            let report = eval::Report {
                split: how,
                folds: parts.iter().map(|p| p.description.clone()).collect(),
                k,
                users: loaded.data.users.len(),
                items: catalogue,
                interactions: loaded.data.triples.len(),
                rows,
                validation: trials.as_ref().map(|(_, v)| v.clone()),
                search: trials.map(|(t, _)| t),
                tuning,
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
        Command::Model { command } => runtime()?.block_on(async {
            let store = crate::store::Store::connect(&config.store.url).await?;
            match command {
                ModelCommand::List => {
                    for v in store.versions().await? {
                        println!("{}", serde_json::to_string(&v)?);
                    }
                }
                ModelCommand::Rollback { to } => {
                    let (from, to) = store.rollback(to.as_deref()).await?;
                    // the lake's pointer follows, for the stream's `similar_books`
                    let lake = crate::lake::Lake::open(&config.lake)?;
                    crate::batch::publish::point_lake_at(&lake, &to).await?;
                    println!("{}", serde_json::json!({ "from": from, "to": to }));
                }
            }
            Ok(())
        }),
        Command::Experiment {
            command:
                ExperimentCommand::Report {
                    name,
                    as_of,
                    params,
                    queries,
                    json,
                },
        } => {
            let as_of = as_of_arg(as_of)?;
            let mut overrides = std::collections::HashMap::new();
            for p in &params {
                let Some((k, v)) = p.split_once('=') else {
                    anyhow::bail!("--param {p:?}: expected NAME=VALUE");
                };
                overrides.insert(k.trim().to_string(), v.trim().to_string());
            }
            let order: Vec<String> = config
                .serve
                .experiments
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.variants.iter().map(|v| v.name.clone()).collect())
                .unwrap_or_default();
            let dir = queries.unwrap_or_else(|| config.batch.queries_dir.clone());
            let lake = crate::lake::Lake::open(&config.lake)?;
            let report = runtime()?.block_on(crate::batch::experiment::report(
                &lake, &dir, &name, &order, &as_of, &overrides,
            ))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
        Command::Lake {
            command: LakeCommand::Compact { grace_hours },
        } => {
            init_logging(&config)?;
            let lake = crate::lake::Lake::open(&config.lake)?;
            let (report, cdc) = runtime()?.block_on(async {
                let report = lake
                    .compact_events(
                        std::time::Duration::from_secs(grace_hours * 3600),
                        chrono::Utc::now(),
                    )
                    .await?;
                let cdc = crate::sql::cdc_state::snapshot_all(&lake).await?;
                anyhow::Ok((report, cdc))
            })?;
            let mut out = serde_json::to_value(&report)?;
            if let Some(o) = out.as_object_mut() {
                o.insert("cdc_state".into(), serde_json::to_value(&cdc)?);
            }
            println!("{out}");
            Ok(())
        }
        Command::Sql {
            query,
            file,
            as_of,
            params,
            format,
            out,
            allow_writes,
        } => {
            let query = match (query, file) {
                (Some(q), _) => q,
                (None, Some(path)) => feature_sql(&path, as_of, &params)?,
                (None, None) => anyhow::bail!("give a statement or --file FILE"),
            };
            let lake = crate::lake::Lake::open(&config.lake)?;
            let batches = runtime()?.block_on(async {
                let ctx = crate::sql::session(&lake).await?;
                if allow_writes {
                    crate::sql::query_in_lake(&ctx, &query, &lake).await
                } else {
                    // an empty result keeps its columns (csv header, arrow/parquet schema)
                    let df = crate::sql::plan_read_only(&ctx, &query)
                        .await
                        .map_err(crate::sql::SqlError::Query)?;
                    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
                    let mut batches = df.collect().await.map_err(crate::sql::SqlError::Query)?;
                    if batches.is_empty() {
                        batches.push(arrow::array::RecordBatch::new_empty(schema));
                    }
                    Ok(batches)
                }
            })?;
            match out {
                Some(path) => {
                    let mut f = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    crate::sql::write(&batches, format, &mut f)?;
                }
                None => {
                    use std::io::IsTerminal;
                    if format == crate::sql::Format::Parquet && std::io::stdout().is_terminal() {
                        anyhow::bail!(
                            "--format parquet writes binary: pass --out FILE or redirect stdout"
                        );
                    }
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    crate::sql::write(&batches, format, &mut lock)?;
                }
            }
            Ok(())
        }
        Command::Serve { listen } => {
            if let Some(addr) = listen {
                config.serve.listen = addr;
            }
            init_logging(&config)?;
            let lake = crate::lake::Lake::open(&config.lake)?;
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.serve.listen)
                    .await
                    .with_context(|| format!("serve.listen {}", config.serve.listen))?;
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                let sources = crate::serve::Sources {
                    db: None,
                    features: None,
                    lake,
                };
                crate::serve::run(&config, listener, sources, cancel).await?;
                Ok(())
            })
        }
        Command::Demo {
            data,
            max_books,
            no_serve,
        } => {
            init_logging(&config)?;
            let opts = crate::demo::Options {
                data,
                max_books,
                serve: !no_serve,
            };
            runtime()?.block_on(async {
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                crate::demo::run(config, opts, cancel).await
            })?;
            Ok(())
        }
        Command::Collect { listen } => {
            if let Some(addr) = listen {
                config.collect.listen = addr;
            }
            init_logging(&config)?;
            runtime()?.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.collect.listen)
                    .await
                    .map_err(|source| crate::collect::CollectError::Bind {
                        addr: config.collect.listen,
                        source,
                    })?;
                let cancel = CancellationToken::new();
                tokio::spawn(cancel_on_signal(cancel.clone()));
                crate::collect::run(&config, listener, cancel).await?;
                Ok(())
            })
        }
    }
}

/// Per-iteration progress of a fit: a bar on a TTY, a log line otherwise.
fn iteration_bar(iterations: usize) -> impl FnMut(crate::als::Progress) {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(iterations as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("als {bar:30} {pos}/{len} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    move |p: crate::als::Progress| match &bar {
        Some(b) => {
            b.set_position(p.iteration as u64);
            b.set_message(format!("loss {:.6}", p.loss));
            if p.iteration == p.iterations {
                b.finish();
            }
        }
        None => tracing::info!(
            iteration = p.iteration,
            of = p.iterations,
            loss = p.loss,
            seconds = p.seconds,
            "als iteration"
        ),
    }
}

/// The async runtime. Worker threads get 8 MiB of stack rather than tokio's 2: planning and
/// (for a Ballista cluster) serializing an analyst's query recurse over its plan, and a query
/// of a few CTEs, joins and unions is deep enough to overflow 2 MiB in a debug build.
/// `bookrec init`: the topics, then the bucket, each retried with backoff (0.2 s doubling
/// to 10 s) until `wait` has passed; prints one line per thing made or found.
async fn init_deployment(config: &Config, wait: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    let bus = crate::bus::Bus::connect(&config.kafka);
    let specs =
        crate::bus::pipeline_topics(&config.kafka, config.land.cdc.keys().map(String::as_str));
    let created = retry_until(deadline, "creating topics", || bus.create_topics(&specs)).await?;
    for spec in &specs {
        let verb = if created.contains(&spec.name) {
            "created"
        } else {
            "exists"
        };
        println!(
            "topic {} {verb} ({} partitions wanted)",
            spec.name, spec.partitions
        );
    }
    let bucket = retry_until(deadline, "creating the lake bucket", || {
        crate::lake::ensure_bucket(&config.lake, Duration::from_secs(10))
    })
    .await?;
    let lake = crate::config::redact_url(&config.lake.url);
    match bucket {
        crate::lake::BucketState::NotS3 => println!("lake {lake}: not on S3, nothing to create"),
        crate::lake::BucketState::Existed => println!("lake {lake}: bucket exists"),
        crate::lake::BucketState::Created => println!("lake {lake}: bucket created"),
    }
    Ok(())
}

async fn retry_until<T, E, F, Fut>(
    deadline: std::time::Instant,
    what: &str,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "{what}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{what}: gave up"))),
        }
    }
}

/// `bookrec batch`'s progress: on a terminal a bar over the features (`[i/n] name …` lines
/// move it, failures and other lines print above it), else the lines on stderr.
fn batch_progress() -> impl FnMut(&str) + Send {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("batch {bar:30} {pos}/{len} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    move |line: &str| {
        let Some(b) = &bar else {
            eprintln!("{line}");
            return;
        };
        let step = line
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(n, rest)| {
                let (done, total) = n.split_once('/')?;
                Some((done.parse::<u64>().ok()?, total.parse::<u64>().ok()?, rest))
            });
        match step {
            Some((done, total, rest)) if !rest.contains("FAILED") => {
                b.set_length(total);
                b.set_position(done);
                b.set_message(rest.split(" (").next().unwrap_or("").trim().to_string());
                if done == total {
                    b.finish();
                }
            }
            _ => b.println(line),
        }
    }
}

/// `bookrec runs` as text: a line per run, then a line per feature.
fn runs_table(runs: &[crate::store::RunRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("no batch run recorded yet\n");
    }
    for r in runs {
        let d = &r.details;
        let list = |k: &str| {
            d[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        let seconds = chrono::DateTime::parse_from_rfc3339(&r.finished_at)
            .ok()
            .zip(chrono::DateTime::parse_from_rfc3339(&r.started_at).ok())
            .map(|(f, s)| (f - s).num_milliseconds() as f64 / 1000.0);
        let _ = writeln!(
            out,
            "{} {:<9} {} as_of {} trigger {} select [{}] exclude [{}] params {}{}",
            r.run_id,
            r.status,
            seconds.map_or("?".into(), |s| format!("{s:.1} s")),
            r.as_of,
            d["trigger"].as_str().unwrap_or("?"),
            list("select"),
            list("exclude"),
            d["params"],
            match &d["model"] {
                serde_json::Value::Null => String::new(),
                m => format!(
                    " model {} {}",
                    m["version"].as_str().unwrap_or("?"),
                    if m["promoted"].as_bool() == Some(true) {
                        "promoted"
                    } else {
                        "not promoted"
                    }
                ),
            }
        );
        for o in r.outputs.as_array().into_iter().flatten() {
            let tests = o["tests"].as_array().cloned().unwrap_or_default();
            let failed = tests.iter().filter(|t| t["passed"] == false).count();
            let _ = writeln!(
                out,
                "  {:<24} {:<12} {:>10} rows {:>8.2} s  tests {}/{} passed{}",
                o["name"].as_str().unwrap_or("?"),
                o["status"].as_str().unwrap_or("succeeded"),
                o["rows"],
                o["seconds"].as_f64().unwrap_or(0.0),
                tests.len() - failed,
                tests.len(),
                if failed > 0 { " (warnings)" } else { "" }
            );
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {}", e.lines().next().unwrap_or(""));
        }
    }
    out
}

/// A feature file's SQL as `bookrec batch` runs it: header checked, parameters (typed by
/// their defaults) and `${as_of}` filled in.
fn feature_sql(path: &Path, as_of: Option<String>, params: &[String]) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?;
    let q = crate::sql::catalog::parse(path, &text)?;
    let params = crate::batch::runner::Params::parse(params)?;
    params.check(std::slice::from_ref(&q))?;
    Ok(q.render(&as_of_arg(as_of)?, &params.for_query(&q)?))
}

/// `--as-of TS` (RFC 3339), default now.
fn as_of_arg(as_of: Option<String>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(match as_of {
        Some(ts) => chrono::DateTime::parse_from_rfc3339(&ts)
            .with_context(|| format!("--as-of {ts:?}: not an RFC 3339 timestamp"))?
            .to_utc(),
        None => chrono::Utc::now(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .with_context(|| format!("log.filter {:?}", config.log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("initialising logging: {e}"))
}

/// Cancels on SIGTERM or Ctrl-C: services stop intake and drain.
async fn cancel_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: draining");
    cancel.cancel();
}
