//! Running a feature's data tests (`-- test: …`, see `sql::datatest`) on its result: right
//! after the feature in `bookrec batch` (before its output is written), or alone on the
//! lake's current outputs with `bookrec test`.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use chrono::{DateTime, Utc};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::sql::catalog::Query;
use crate::sql::datatest::Severity;

/// The offending rows a failure shows.
const SAMPLE_ROWS: usize = 5;

/// One test's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// the feature's file and the test's line
    pub at: String,
    pub test: String,
    pub severity: Severity,
    pub passed: bool,
    /// rows the test's query returned
    pub failing_rows: u64,
    /// up to 5 of them, as a table
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sample: String,
    /// the test's query did not run (a column the result lacks, …): a failure
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TestResult {
    /// `t` of `q`, not run yet (failed until it passes).
    fn of(q: &Query, t: &crate::sql::datatest::DataTest) -> TestResult {
        TestResult {
            at: format!("{}:{}", q.path.display(), t.line),
            test: t.text.clone(),
            severity: t.severity,
            passed: false,
            failing_rows: 0,
            sample: String::new(),
            error: None,
        }
    }

    /// Failed, and its severity stops the run.
    pub fn blocks(&self) -> bool {
        !self.passed && self.severity == Severity::Error
    }
}

impl std::fmt::Display for TestResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match (self.passed, self.severity) {
            (true, _) => "PASS",
            (false, Severity::Warn) => "WARN",
            (false, Severity::Error) => "FAIL",
        };
        write!(f, "{word} {}: test {}", self.at, self.test)?;
        if let Some(e) = &self.error {
            write!(f, ": the test's query failed: {e}")?;
        } else if !self.passed {
            write!(f, ": {} offending row(s)", self.failing_rows)?;
            if !self.sample.is_empty() {
                write!(f, ", e.g.\n{}", self.sample)?;
            }
        }
        Ok(())
    }
}

/// Runs `q`'s tests on `table` (its result, registered in `ctx`), with `as_of` and the
/// run's parameters filled in as in the feature.
pub async fn run(
    ctx: &SessionContext,
    q: &Query,
    table: &str,
    as_of: &DateTime<Utc>,
    params: &HashMap<String, String>,
) -> Vec<TestResult> {
    let mut out = Vec::with_capacity(q.tests.len());
    for t in &q.tests {
        let sql = q.render_text(&t.offending(table), as_of, params);
        let mut result = TestResult::of(q, t);
        let counted = crate::sql::query_read_only(
            ctx,
            &format!("SELECT count(*) AS n FROM ({sql}) AS offending"),
        )
        .await;
        match counted.map(|b| count_of(&b)) {
            Ok(n) => {
                result.failing_rows = n;
                result.passed = n == 0;
                if n > 0 {
                    let rows = crate::sql::query_read_only(
                        ctx,
                        &format!("SELECT * FROM ({sql}) AS offending LIMIT {SAMPLE_ROWS}"),
                    )
                    .await;
                    if let Ok(rows) = rows {
                        result.sample = arrow::util::pretty::pretty_format_batches(&rows)
                            .map(|t| t.to_string())
                            .unwrap_or_default();
                    }
                }
            }
            Err(e) => result.error = Some(e.to_string()),
        }
        out.push(result);
    }
    out
}

fn count_of(batches: &[RecordBatch]) -> u64 {
    batches
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).ok())
        .map(|a| {
            a.as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
                .max(0) as u64
        })
        .unwrap_or(0)
}

/// What `bookrec test` found.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// feature → its tests' results
    pub features: Vec<(String, Vec<TestResult>)>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.all().filter(|r| r.passed).count()
    }
    pub fn warned(&self) -> usize {
        self.all()
            .filter(|r| !r.passed && r.severity == Severity::Warn)
            .count()
    }
    pub fn failed(&self) -> usize {
        self.all().filter(|r| r.blocks()).count()
    }
    fn all(&self) -> impl Iterator<Item = &TestResult> {
        self.features.iter().flat_map(|(_, r)| r)
    }
}

/// `bookrec test`: the tests of the features the selectors name (all when none is given;
/// without the features they read) on the
/// lake's current outputs of those features, at `as_of` with their default parameters
/// overridden by `params`.
pub async fn run_on_lake(
    lake: &crate::lake::Lake,
    dir: &Path,
    select: &[String],
    exclude: &[String],
    as_of: &DateTime<Utc>,
    params: &super::runner::Params,
) -> Result<TestReport, super::runner::RunError> {
    let ctx = crate::sql::session(lake).await?;
    let selected = super::runner::test_selection(&ctx, dir, select, exclude).await?;
    let queries = crate::sql::catalog::load_dir(dir).map_err(super::runner::RunError::Catalog)?;
    let mut features = Vec::new();
    for q in &queries {
        if selected.as_ref().is_some_and(|s| !s.contains(&q.name)) || q.tests.is_empty() {
            continue;
        }
        let p = params.for_query(q)?;
        let results = if ctx.table_exist(q.name.as_str()).unwrap_or(false) {
            run(&ctx, q, &q.name, as_of, &p).await
        } else {
            // never run (or its output is only in the DB): every test says so
            q.tests
                .iter()
                .map(|t| TestResult {
                    error: Some(format!(
                        "the lake has no output of {} (run `bookrec batch --select {}`)",
                        q.name, q.name
                    )),
                    ..TestResult::of(q, t)
                })
                .collect()
        };
        features.push((q.name.clone(), results));
    }
    Ok(TestReport { features })
}
