//! Checking and running the batch feature queries as a DAG on DataFusion.
//!
//! Lake outputs are written per run: `features/<name>/run=<run_id>/part-0.parquet`, then the
//! pointer `features/<name>/_current` (one atomic put) switches readers to the new run, so a
//! reader sees the previous run's output or this one's, never a mix. A run record goes to
//! `features/_runs/<run_id>.json` (start, end, status, rows per output, input watermark).
//! Reruns with the same `--as-of` produce the same outputs.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use chrono::{DateTime, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::lake::Lake;
use crate::sql::catalog::{self, CatalogError, Query};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Catalog(Vec<CatalogError>),
    #[error("{0}")]
    Session(#[from] crate::sql::SqlError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{path}: writing output: {reason}")]
    Output { path: String, reason: String },
    #[error("--select {0}: no query has that name (nor is it the als step)")]
    UnknownSelect(String),
    #[error("{0}")]
    Param(String),
    #[error(
        "data tests of {feature} failed (its output is not written; nothing after it runs):\n{report}"
    )]
    TestsFailed {
        feature: String,
        report: String,
        tests: Vec<super::datatest::TestResult>,
    },
    #[error("{0}")]
    Publish(#[from] super::publish::PublishError),
}

/// The ALS step's settings: when given (with a store), a run whose selection includes the
/// step (an empty selection, or `als`) ends by training and publishing.
#[derive(Debug, Clone)]
pub struct Training {
    pub params: crate::als::Params,
    pub publish: crate::config::PublishConfig,
}

impl Training {
    /// The configured `[als]` and `[publish]` settings.
    pub fn from_config(cfg: &crate::config::Config) -> Training {
        Training {
            params: cfg.als.clone(),
            publish: cfg.publish.clone(),
        }
    }
}

use crate::sql::sources::located;

/// Tables a query reads (CTE names excluded).
fn reads(
    ctx: &SessionContext,
    q: &Query,
    as_of: &DateTime<Utc>,
) -> Result<BTreeSet<String>, CatalogError> {
    crate::sql::sources::reads(ctx, q, &q.render(as_of, &HashMap::new()))
}

/// What each of `queries` reads, in order; every query's error reported at once.
fn reads_of(
    ctx: &SessionContext,
    queries: &[Query],
    as_of: &DateTime<Utc>,
) -> Result<Vec<BTreeSet<String>>, RunError> {
    let (reads, errors): (Vec<_>, Vec<_>) = queries
        .iter()
        .map(|q| reads(ctx, q, as_of))
        .partition(Result::is_ok);
    if errors.is_empty() {
        Ok(reads.into_iter().flatten().collect())
    } else {
        Err(RunError::Catalog(
            errors.into_iter().filter_map(Result::err).collect(),
        ))
    }
}

/// The tables each query reads, by query name.
type Reads = HashMap<String, BTreeSet<String>>;

/// The queries of `dir` in dependency order, checked against the lake's tables, and what
/// each reads.
async fn ordered(
    ctx: &SessionContext,
    dir: &Path,
    as_of: &DateTime<Utc>,
) -> Result<(Vec<Query>, Reads), RunError> {
    let queries = catalog::load_dir(dir).map_err(RunError::Catalog)?;
    let all_reads = reads_of(ctx, &queries, as_of)?;
    let known = crate::sql::sources::table_names(ctx);
    let order = catalog::order(&queries, &all_reads, &known).map_err(RunError::Catalog)?;
    let reads = queries
        .iter()
        .map(|q| q.name.clone())
        .zip(all_reads)
        .collect();
    Ok((
        order.into_iter().map(|i| queries[i].clone()).collect(),
        reads,
    ))
}

/// What `bookrec check` found.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// source views and feature queries, in one dependency order
    pub order: Vec<String>,
    /// which of `order` are source views (`lake.sources_dir`)
    pub sources: Vec<String>,
    /// the tables each of `order` reads
    #[serde(skip)]
    pub reads: std::collections::BTreeMap<String, BTreeSet<String>>,
    /// each feature's result columns: (name, type, nullable)
    #[serde(skip)]
    pub columns: std::collections::BTreeMap<String, Vec<(String, String, bool)>>,
    /// the parsed features and sources, by name
    #[serde(skip)]
    pub queries: std::collections::BTreeMap<String, Query>,
}

/// Parses and plans the source views and every query (with default parameters) in one
/// dependency order; each query's output schema is registered (empty) for the ones after
/// it. Reports every error.
pub async fn check(lake: &Lake, dir: &Path) -> Result<CheckReport, RunError> {
    // opening the session plans and runs the sources (an empty lake is enough: absent raw
    // tables are empty tables of their declared columns)
    let ctx = crate::sql::session(lake).await?;
    let as_of = Utc::now();
    let cdc: Vec<String> = crate::sql::cdc_table_names(lake)
        .await?
        .into_iter()
        .collect();
    let all_sources = crate::sql::sources::load(lake)?;
    let sources: Vec<Query> = crate::sql::sources::ordered(&ctx, &all_sources, &cdc)?
        .into_iter()
        .cloned()
        .collect();
    let features = catalog::load_dir(dir).map_err(RunError::Catalog)?;
    let mut errors = Vec::new();
    for f in &features {
        if let Some(s) = sources.iter().find(|s| s.name == f.name) {
            errors.push(CatalogError {
                path: f.path.clone(),
                line: 1,
                message: format!(
                    "name {} is already the source view {}",
                    f.name,
                    s.path.display()
                ),
            });
        }
    }
    if !errors.is_empty() {
        return Err(RunError::Catalog(errors));
    }
    // one graph: the sources' reads, then the features'
    let nodes: Vec<Query> = sources.iter().chain(&features).cloned().collect();
    let all_reads = reads_of(&ctx, &nodes, &as_of)?;
    let known = crate::sql::sources::table_names(&ctx);
    let order = catalog::order(&nodes, &all_reads, &known).map_err(RunError::Catalog)?;
    let queries: Vec<&Query> = order.iter().map(|i| &nodes[*i]).collect();
    let mut columns = std::collections::BTreeMap::new();
    for q in &queries {
        if sources.iter().any(|s| s.name == q.name) {
            continue; // planned and run when the session opened
        }
        let sql = q.render(&as_of, &HashMap::new());
        match crate::sql::plan_read_only(&ctx, &sql).await {
            Ok(df) => {
                let schema = Arc::new(df.schema().as_arrow().clone());
                columns.insert(
                    q.name.clone(),
                    schema
                        .fields()
                        .iter()
                        .map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable()))
                        .collect::<Vec<_>>(),
                );
                if let Ok(t) = MemTable::try_new(schema, vec![vec![]]) {
                    let _ = ctx.register_table(q.name.as_str(), Arc::new(t));
                }
                // its data tests plan against its result's columns
                for t in &q.tests {
                    let test_sql = q.render_text(&t.offending(&q.name), &as_of, &HashMap::new());
                    if let Err(e) = crate::sql::plan_read_only(&ctx, &test_sql).await {
                        errors.push(CatalogError {
                            path: q.path.clone(),
                            line: t.line,
                            message: format!("test {}: {e}", t.text),
                        });
                    }
                }
            }
            Err(e) => errors.push(located(q, &e)),
        }
    }
    if errors.is_empty() {
        Ok(CheckReport {
            order: queries.iter().map(|q| q.name.clone()).collect(),
            sources: sources.iter().map(|q| q.name.clone()).collect(),
            reads: nodes
                .iter()
                .map(|q| q.name.clone())
                .zip(all_reads)
                .collect(),
            columns,
            queries: nodes.iter().map(|q| (q.name.clone(), q.clone())).collect(),
        })
    } else {
        Err(RunError::Catalog(errors))
    }
}

/// One output of a run.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub name: String,
    pub rows: usize,
    /// the whole step: query, lake and DB writes
    pub seconds: f64,
    /// planning, executing and collecting the query's result (before any write)
    pub query_seconds: f64,
    pub lake_path: Option<String>,
    pub db_table: Option<String>,
    /// its data tests' results (warnings included; a failing `error` test fails the run)
    pub tests: Vec<super::datatest::TestResult>,
    /// `succeeded`, `tests_failed` (an `error` test failed: nothing written) or `failed`
    pub status: String,
}

/// The record of one batch run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub as_of: String,
    pub started_at: String,
    pub finished_at: String,
    pub status: String,
    pub outputs: Vec<OutputReport>,
    /// the newest event time and the highest Kafka offset per partition among the input
    /// events (at or before as_of)
    pub input_watermark: serde_json::Value,
    pub error: Option<String>,
    /// the ALS step, when it ran
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<super::publish::PublishReport>,
    /// what started it (`cli`, `schedule:JOB`, `demo`, `api`)
    pub trigger: String,
    pub select: Vec<String>,
    pub exclude: Vec<String>,
    /// parameter overrides: `NAME` or `QUERY.NAME` → value
    pub params: std::collections::BTreeMap<String, String>,
}

/// Runs the selected queries of `batch.queries_dir` (all when `select` is empty; a
/// selected query brings the queries it reads) in dependency order on `batch.engine`.
/// `progress` receives one line per query.
pub async fn run(
    lake: &Lake,
    store: Option<&crate::store::Store>,
    batch: &crate::config::BatchConfig,
    select: &[String],
    as_of: DateTime<Utc>,
    training: Option<&Training>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RunRecord, RunError> {
    let selection = Selection {
        select: select.to_vec(),
        ..Selection::default()
    };
    run_with(lake, store, batch, &selection, as_of, training, progress).await
}

/// [`run`] with a [`Selection`]: selectors, exclusions and parameter overrides.
pub async fn run_with(
    lake: &Lake,
    store: Option<&crate::store::Store>,
    batch: &crate::config::BatchConfig,
    selection: &Selection,
    as_of: DateTime<Utc>,
    training: Option<&Training>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RunRecord, RunError> {
    let engine = crate::config::Engine::parse(&batch.engine)?;
    let (ctx, tables) = crate::sql::session_on(lake, &engine).await?;
    let result = run_on(
        &ctx,
        &tables,
        lake,
        store,
        &batch.queries_dir,
        selection,
        as_of,
        training,
        progress,
    )
    .await;
    // staged tables go whatever happened; a run that failed reports its own error first
    let cleaned = tables.cleanup().await;
    let record = result?;
    cleaned?;
    Ok(record)
}

#[allow(clippy::too_many_arguments)]
async fn run_on(
    ctx: &SessionContext,
    tables: &crate::sql::Tables,
    lake: &Lake,
    store: Option<&crate::store::Store>,
    dir: &Path,
    selection: &Selection,
    as_of: DateTime<Utc>,
    training: Option<&Training>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RunRecord, RunError> {
    use super::publish;
    let (queries, reads) = ordered(ctx, dir, &as_of).await?;
    let select = &selection.select;
    let train_step = select.is_empty() || select.iter().any(|s| s == publish::STEP);
    let train_step = train_step && training.is_some() && store.is_some();
    let train_step = train_step && !selection.exclude.iter().any(|s| s == publish::STEP);
    let mut select: Vec<String> = select
        .iter()
        .filter(|s| s.as_str() != publish::STEP)
        .cloned()
        .collect();
    if train_step && !select.is_empty() {
        select.push(publish::INPUT.to_owned());
    }
    let exclude: Vec<String> = selection
        .exclude
        .iter()
        .filter(|s| s.as_str() != publish::STEP)
        .cloned()
        .collect();
    let wanted = selected(&queries, &reads, &select, &exclude)?;
    let train_step = train_step && wanted.contains(publish::INPUT);
    selection.params.check(&queries)?;
    let started = Utc::now();
    let run_id = format!(
        "{}-{}",
        started.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let watermark = input_watermark(ctx, &as_of).await;
    let mut record = RunRecord {
        run_id: run_id.clone(),
        as_of: crate::event::format_ts(&as_of),
        started_at: crate::event::format_ts(&started),
        finished_at: String::new(),
        status: "running".into(),
        outputs: Vec::new(),
        input_watermark: watermark,
        error: None,
        model: None,
        trigger: if selection.trigger.is_empty() {
            "api".into()
        } else {
            selection.trigger.clone()
        },
        select: selection.select.clone(),
        exclude: selection.exclude.clone(),
        params: selection.params.as_map(),
    };
    let total = wanted.len();
    let mut done = 0;
    let mut failure = None;
    for q in queries.iter().filter(|q| wanted.contains(&q.name)) {
        done += 1;
        let t0 = Instant::now();
        let params = selection.params.for_query(q)?;
        match run_one(ctx, tables, lake, store, q, &as_of, &run_id, &params).await {
            Ok(out) => {
                progress(&format!(
                    "[{done}/{total}] {} ({}): {} rows in {:.2} s{}",
                    q.name,
                    q.path.display(),
                    out.rows,
                    t0.elapsed().as_secs_f64(),
                    if out.tests.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", tests {}/{} passed",
                            out.tests.iter().filter(|t| t.passed).count(),
                            out.tests.len()
                        )
                    }
                ));
                for t in out.tests.iter().filter(|t| !t.passed) {
                    progress(&t.to_string());
                }
                record.outputs.push(out);
            }
            Err(e) => {
                progress(&format!("[{done}/{total}] {} FAILED", q.name));
                let (status, tests) = match &e {
                    RunError::TestsFailed { tests, .. } => ("tests_failed", tests.clone()),
                    _ => ("failed", Vec::new()),
                };
                record.outputs.push(OutputReport {
                    name: q.name.clone(),
                    rows: 0,
                    seconds: t0.elapsed().as_secs_f64(),
                    query_seconds: 0.0,
                    lake_path: None,
                    db_table: None,
                    tests,
                    status: status.into(),
                });
                failure = Some(e);
                break;
            }
        }
    }
    if failure.is_none()
        && train_step
        && let (Some(t), Some(store)) = (training, store)
    {
        let t0 = Instant::now();
        match publish::train_and_publish(
            ctx,
            lake,
            store,
            &t.params,
            &t.publish,
            &run_id,
            &as_of,
            &record.input_watermark,
            progress,
        )
        .await
        {
            Ok(report) => {
                progress(&format!(
                    "[als] published {} in {:.2} s",
                    report.version,
                    t0.elapsed().as_secs_f64()
                ));
                record.model = Some(report);
            }
            // nothing to train on yet (a new lake): the features stand, no model is published
            Err(super::publish::PublishError::Als(crate::als::AlsError::Empty)) => {
                progress("[als] skipped: the interaction matrix is empty (no model published)");
            }
            Err(e) => {
                progress("[als] FAILED");
                failure = Some(e.into());
            }
        }
    }
    record.finished_at = crate::event::format_ts(&Utc::now());
    record.status = if failure.is_some() {
        "failed"
    } else {
        "succeeded"
    }
    .into();
    record.error = failure.as_ref().map(ToString::to_string);
    let text = serde_json::to_vec_pretty(&record).map_err(|e| RunError::Output {
        path: "features/_runs".into(),
        reason: e.to_string(),
    })?;
    let path = format!("features/_runs/{run_id}.json");
    lake.put(&path, bytes::Bytes::from(text))
        .await
        .map_err(|e| RunError::Output {
            path,
            reason: e.to_string(),
        })?;
    if let Some(store) = store {
        let outputs = serde_json::to_string(&record.outputs).unwrap_or_default();
        store
            .record_run(
                &record.run_id,
                &record.as_of,
                &record.started_at,
                &record.finished_at,
                &record.status,
                &outputs,
                &record.input_watermark.to_string(),
                record.error.as_deref(),
                &serde_json::json!({
                    "trigger": record.trigger,
                    "select": record.select,
                    "exclude": record.exclude,
                    "params": record.params,
                    "model": record.model,
                })
                .to_string(),
            )
            .await
            .map_err(|e| RunError::Output {
                path: "batch_runs".into(),
                reason: e.to_string(),
            })?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(record),
    }
}

/// The selected queries and everything they read, transitively.
fn closure(reads: &Reads, seeds: BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = seeds.into_iter().collect();
    while let Some(n) = todo.pop() {
        if !out.insert(n.clone()) {
            continue;
        }
        for r in reads.get(&n).into_iter().flatten() {
            if reads.contains_key(r) {
                todo.push(r.clone());
            }
        }
    }
    out
}

/// What one selector names: `name` or `+name` (the query; its ancestors come anyway),
/// `name+` (and every query downstream of it), `tag:T` (the queries tagged T).
fn matches(queries: &[Query], reads: &Reads, selector: &str) -> Result<BTreeSet<String>, RunError> {
    let unknown = || RunError::UnknownSelect(selector.to_string());
    let s = selector.trim().trim_start_matches('+');
    let (s, downstream) = match s.strip_suffix('+') {
        Some(x) => (x, true),
        None => (s, false),
    };
    let mut seeds: BTreeSet<String> = match s.strip_prefix("tag:") {
        Some(tag) => queries
            .iter()
            .filter(|q| q.tags.iter().any(|t| t == tag))
            .map(|q| q.name.clone())
            .collect(),
        None => queries
            .iter()
            .filter(|q| q.name == s)
            .map(|q| q.name.clone())
            .collect(),
    };
    if seeds.is_empty() {
        return Err(unknown());
    }
    if downstream {
        // whatever reads a seed, transitively
        loop {
            let more: Vec<String> = reads
                .iter()
                .filter(|(n, r)| !seeds.contains(*n) && r.iter().any(|x| seeds.contains(x)))
                .map(|(n, _)| n.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            seeds.extend(more);
        }
    }
    Ok(seeds)
}

/// The queries a run runs: the selected ones (all when none is) and the queries they read,
/// transitively, minus the excluded ones (a query reading an excluded one reads its current
/// output in the lake).
fn selected(
    queries: &[Query],
    reads: &Reads,
    select: &[String],
    exclude: &[String],
) -> Result<BTreeSet<String>, RunError> {
    let mut wanted = if select.is_empty() {
        queries.iter().map(|q| q.name.clone()).collect()
    } else {
        let mut seeds = BTreeSet::new();
        for s in select {
            seeds.extend(matches(queries, reads, s)?);
        }
        closure(reads, seeds)
    };
    for x in exclude {
        for n in matches(queries, reads, x)? {
            wanted.remove(&n);
        }
    }
    Ok(wanted)
}

/// The features `bookrec test` tests: those the selectors name (without the queries they
/// read), minus the excluded ones; None: all.
pub(super) async fn test_selection(
    ctx: &SessionContext,
    dir: &Path,
    select: &[String],
    exclude: &[String],
) -> Result<Option<BTreeSet<String>>, RunError> {
    if select.is_empty() && exclude.is_empty() {
        return Ok(None);
    }
    let (queries, reads) = ordered(ctx, dir, &Utc::now()).await?;
    let mut out: BTreeSet<String> = if select.is_empty() {
        queries.iter().map(|q| q.name.clone()).collect()
    } else {
        let mut s = BTreeSet::new();
        for x in select {
            s.extend(matches(&queries, &reads, x)?);
        }
        s
    };
    for x in exclude {
        for n in matches(&queries, &reads, x)? {
            out.remove(&n);
        }
    }
    Ok(Some(out))
}

/// What a run selects: selectors (see [`matches`]; `als` is the ALS step), exclusions, and
/// parameter overrides.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub select: Vec<String>,
    pub exclude: Vec<String>,
    pub params: Params,
    /// what started the run, for its record: `cli`, `schedule:JOB`, `demo`; empty: `api`
    pub trigger: String,
}

/// Parameter overrides of a run: `NAME=VALUE` for every query that declares NAME,
/// `QUERY.NAME=VALUE` for that query only (it wins over the first form).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub all: std::collections::BTreeMap<String, String>,
    pub per_query: std::collections::BTreeMap<(String, String), String>,
}

impl Params {
    /// From `--param` arguments.
    pub fn parse(args: &[String]) -> Result<Params, RunError> {
        let mut p = Params::default();
        for a in args {
            let (query, name, value) = catalog::parse_param(a).map_err(RunError::Param)?;
            match query {
                Some(q) => p.per_query.insert((q, name), value),
                None => p.all.insert(name, value),
            };
        }
        Ok(p)
    }

    /// As `NAME` / `QUERY.NAME` → value (the run record's form).
    pub fn as_map(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = self.all.clone();
        for ((q, n), v) in &self.per_query {
            out.insert(format!("{q}.{n}"), v.clone());
        }
        out
    }

    /// From a scheduled job's `params` table (keys `NAME` or `QUERY.NAME`).
    pub fn from_map(map: &std::collections::BTreeMap<String, String>) -> Result<Params, RunError> {
        let args: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Params::parse(&args)
    }

    /// Every override names a declared parameter of some query (a `QUERY.NAME` one, of
    /// that query).
    pub fn check(&self, queries: &[Query]) -> Result<(), RunError> {
        for name in self.all.keys() {
            if !queries.iter().any(|q| q.params.contains_key(name)) {
                return Err(RunError::Param(format!(
                    "--param {name}: no query declares it"
                )));
            }
        }
        for (q, name) in self.per_query.keys() {
            match queries.iter().find(|x| &x.name == q) {
                None => return Err(RunError::Param(format!("--param {q}.{name}: no query {q}"))),
                Some(x) if !x.params.contains_key(name) => {
                    return Err(RunError::Param(format!(
                        "--param {q}.{name}: {} declares no {name}",
                        x.path.display()
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The overrides that apply to `q`, checked against its parameters' types.
    pub fn for_query(&self, q: &Query) -> Result<HashMap<String, String>, RunError> {
        let mut out: HashMap<String, String> = self
            .all
            .iter()
            .filter(|(n, _)| q.params.contains_key(*n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        for ((query, name), v) in &self.per_query {
            if query == &q.name {
                out.insert(name.clone(), v.clone());
            }
        }
        q.check_params(&out)
            .map_err(|e| RunError::Param(format!("--param: {e}")))?;
        Ok(out)
    }
}

#[allow(clippy::too_many_arguments, reason = "the run's context, one each")]
async fn run_one(
    ctx: &SessionContext,
    tables: &crate::sql::Tables,
    lake: &Lake,
    store: Option<&crate::store::Store>,
    q: &Query,
    as_of: &DateTime<Utc>,
    run_id: &str,
    params: &HashMap<String, String>,
) -> Result<OutputReport, RunError> {
    let t0 = Instant::now();
    let sql = q.render(as_of, params);
    let fail = |e: datafusion::error::DataFusionError| RunError::Catalog(vec![located(q, &e)]);
    let df = crate::sql::plan_read_only(ctx, &sql).await.map_err(fail)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = crate::sql::conform(&schema, df.collect().await.map_err(fail)?)?;
    let query_seconds = t0.elapsed().as_secs_f64();
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    // later queries of this run read this result
    tables
        .register(ctx, &q.name, schema.clone(), batches.clone())
        .await?;
    // the data tests, on the result, before anything is written: a failing `error` test
    // leaves the previous run's output current
    let tests = super::datatest::run(ctx, q, &q.name, as_of, params).await;
    if tests.iter().any(super::datatest::TestResult::blocks) {
        return Err(RunError::TestsFailed {
            feature: q.name.clone(),
            report: tests
                .iter()
                .filter(|t| !t.passed)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            tests,
        });
    }
    let mut lake_path = None;
    if q.outputs.lake {
        let folder = format!("features/{}/run={run_id}", q.name);
        let out_err = |reason: String| RunError::Output {
            path: format!("{folder}/part-0.parquet"),
            reason,
        };
        let all = arrow::compute::concat_batches(&schema, &batches)
            .map_err(|e| out_err(e.to_string()))?;
        let bytes = crate::lake::write_parquet(&all).map_err(out_err)?;
        lake.put(&format!("{folder}/part-0.parquet"), bytes)
            .await
            .map_err(|e| out_err(e.to_string()))?;
        // the switch: readers follow _current
        lake.put(
            &format!("features/{}/_current", q.name),
            bytes::Bytes::from(format!("run={run_id}")),
        )
        .await
        .map_err(|e| out_err(e.to_string()))?;
        lake_path = Some(folder);
    }
    let mut db_table = None;
    if q.outputs.db {
        let Some(store) = store else {
            return Err(RunError::Output {
                path: q.path.display().to_string(),
                reason: "output: db, but no store is configured".into(),
            });
        };
        store
            .replace_feature(&q.name, &schema, &q.keys, &batches)
            .await
            .map_err(|e| RunError::Output {
                path: format!("feat_{}", q.name),
                reason: e.to_string(),
            })?;
        db_table = Some(format!("feat_{}", q.name));
    }
    Ok(OutputReport {
        name: q.name.clone(),
        rows,
        db_table,
        seconds: t0.elapsed().as_secs_f64(),
        query_seconds,
        lake_path,
        tests,
        status: "succeeded".into(),
    })
}

async fn input_watermark(ctx: &SessionContext, as_of: &DateTime<Utc>) -> serde_json::Value {
    let sql = format!(
        "SELECT kafka_partition, max(kafka_offset) AS last_offset, max(event_ts) AS last_event_ts \
         FROM events WHERE event_ts <= TIMESTAMP '{}' GROUP BY kafka_partition ORDER BY 1",
        as_of.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let Ok(batches) = crate::sql::query(ctx, &sql).await else {
        return serde_json::Value::Null;
    };
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for b in &batches {
            if w.write(b).is_err() {
                return serde_json::Value::Null;
            }
        }
        if w.finish().is_err() {
            return serde_json::Value::Null;
        }
    }
    serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
}
