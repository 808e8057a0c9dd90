//! `bookrec experiment report NAME`: one A/B experiment's rows of the analysts' query
//! `queries/batch/experiment_report.sql` (per variant: users, impressions, clicks,
//! conversions, rates with 95% intervals), and each variant compared with the first (the
//! control, in the order of `serve.experiments`, else by name): the differences in
//! click-through and conversion rate, a two-proportion z-test on each, and whether the
//! difference is significant at 5%.
//!
//! The test treats impressions as independent trials. Impressions of one user are
//! correlated, so with few users the p-value is optimistic; the users per variant are in the
//! report to judge by.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use serde::Serialize;

use crate::lake::Lake;
use crate::sql::catalog::{self, Kind};

/// The query the report runs (a file of `batch.queries_dir`).
pub const QUERY: &str = "experiment_report";

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("experiment report: {0}")]
    Catalog(String),
    #[error("experiment report: {path}: {source}")]
    Sql {
        path: String,
        source: crate::sql::SqlError,
    },
    #[error("experiment report: {path}: column {column}: {reason}")]
    Column {
        path: String,
        column: &'static str,
        reason: String,
    },
    #[error(
        "experiment report: no impressions of experiment {name:?} in the window (experiments \
         seen: {seen}); is it in serve.experiments, and does serve log impressions?"
    )]
    NoData { name: String, seen: String },
}

/// One variant's row of the query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantRow {
    pub variant: String,
    pub users: i64,
    pub responses: i64,
    pub impressions: i64,
    pub clicks: i64,
    pub conversions: i64,
    pub ctr: f64,
    pub ctr_low: f64,
    pub ctr_high: f64,
    pub conversion_rate: f64,
}

/// A variant against the control on one rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub variant: String,
    pub metric: &'static str,
    /// variant's rate − control's rate
    pub difference: f64,
    pub z: f64,
    pub p_value: f64,
    pub significant: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub experiment: String,
    pub control: String,
    pub variants: Vec<VariantRow>,
    pub comparisons: Vec<Comparison>,
}

/// Runs the report query at `as_of` (parameters overridden by `params`) and compares the
/// variants of `name`; `order` is the configured variant order (the first is the control).
pub async fn report(
    lake: &Lake,
    queries_dir: &Path,
    name: &str,
    order: &[String],
    as_of: &chrono::DateTime<chrono::Utc>,
    params: &HashMap<String, String>,
) -> Result<Report, ExperimentError> {
    let path = queries_dir.join(format!("{QUERY}.sql"));
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ExperimentError::Catalog(format!("{shown}: {e}")))?;
    let query = catalog::parse_kind(&path, &text, Kind::Batch)
        .map_err(|e| ExperimentError::Catalog(e.to_string()))?;
    query
        .check_params(params)
        .map_err(|e| ExperimentError::Catalog(e.to_string()))?;
    let sql_err = |source| ExperimentError::Sql {
        path: shown.clone(),
        source,
    };
    let ctx = crate::sql::session(lake).await.map_err(sql_err)?;
    let batches = crate::sql::query_read_only(&ctx, &query.render(as_of, params))
        .await
        .map_err(sql_err)?;
    let (rows, seen) = rows_of(&batches, name, &shown)?;
    if rows.is_empty() {
        return Err(ExperimentError::NoData {
            name: name.to_string(),
            seen: if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            },
        });
    }
    Ok(compare(name, rows, order))
}

/// The rows of experiment `name`, and every experiment name seen.
fn rows_of(
    batches: &[RecordBatch],
    name: &str,
    path: &str,
) -> Result<(Vec<VariantRow>, Vec<String>), ExperimentError> {
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for b in batches {
        let col = |column: &'static str| {
            b.column_by_name(column)
                .ok_or_else(|| ExperimentError::Column {
                    path: path.to_string(),
                    column,
                    reason: "missing (the report needs it)".into(),
                })
        };
        let cast = |column: &'static str, to: DataType| {
            datafusion::arrow::compute::cast(col(column)?, &to).map_err(|e| {
                ExperimentError::Column {
                    path: path.to_string(),
                    column,
                    reason: e.to_string(),
                }
            })
        };
        let text = |column| cast(column, DataType::Utf8);
        let int = |column| cast(column, DataType::Int64);
        let float = |column| cast(column, DataType::Float64);
        let (exp, var) = (text("experiment")?, text("variant")?);
        let (exp, var) = (exp.as_string::<i32>(), var.as_string::<i32>());
        let ints: Vec<_> = ["users", "responses", "impressions", "clicks", "conversions"]
            .into_iter()
            .map(int)
            .collect::<Result<_, _>>()?;
        let floats: Vec<_> = ["ctr", "ctr_low", "ctr_high", "conversion_rate"]
            .into_iter()
            .map(float)
            .collect::<Result<_, _>>()?;
        let i = |c: usize, r: usize| ints[c].as_primitive::<Int64Type>().value(r);
        let f = |c: usize, r: usize| floats[c].as_primitive::<Float64Type>().value(r);
        for r in 0..b.num_rows() {
            if exp.is_null(r) || var.is_null(r) {
                continue;
            }
            seen.insert(exp.value(r).to_string());
            if exp.value(r) != name {
                continue;
            }
            rows.push(VariantRow {
                variant: var.value(r).to_string(),
                users: i(0, r),
                responses: i(1, r),
                impressions: i(2, r),
                clicks: i(3, r),
                conversions: i(4, r),
                ctr: f(0, r),
                ctr_low: f(1, r),
                ctr_high: f(2, r),
                conversion_rate: f(3, r),
            });
        }
    }
    Ok((rows, seen.into_iter().collect()))
}

/// Orders the variants (configured order first, then by name) and compares each with the
/// first.
pub fn compare(name: &str, mut rows: Vec<VariantRow>, order: &[String]) -> Report {
    let rank = |v: &str| order.iter().position(|o| o == v).unwrap_or(usize::MAX);
    rows.sort_by(|a, b| {
        rank(&a.variant)
            .cmp(&rank(&b.variant))
            .then_with(|| a.variant.cmp(&b.variant))
    });
    let mut comparisons = Vec::new();
    if let Some((control, others)) = rows.split_first() {
        for v in others {
            for (metric, (x1, x0)) in [
                ("ctr", (v.clicks, control.clicks)),
                ("conversion_rate", (v.conversions, control.conversions)),
            ] {
                let (difference, z, p_value) =
                    two_proportion(x1, v.impressions, x0, control.impressions);
                comparisons.push(Comparison {
                    variant: v.variant.clone(),
                    metric,
                    difference,
                    z,
                    p_value,
                    significant: p_value < 0.05,
                });
            }
        }
    }
    Report {
        experiment: name.to_string(),
        control: rows.first().map(|r| r.variant.clone()).unwrap_or_default(),
        variants: rows,
        comparisons,
    }
}

/// Two-proportion z-test (pooled): (p₁ − p₀, z, two-sided p-value).
pub fn two_proportion(x1: i64, n1: i64, x0: i64, n0: i64) -> (f64, f64, f64) {
    if n1 <= 0 || n0 <= 0 {
        return (0.0, 0.0, 1.0);
    }
    let (p1, p0) = (x1 as f64 / n1 as f64, x0 as f64 / n0 as f64);
    let pooled = (x1 + x0) as f64 / (n1 + n0) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n0 as f64)).sqrt();
    if se == 0.0 {
        return (p1 - p0, 0.0, 1.0);
    }
    let z = (p1 - p0) / se;
    (p1 - p0, z, erfc(z.abs() / std::f64::consts::SQRT_2))
}

/// The complementary error function (Numerical Recipes' erfcc: fractional error below
/// 1.2e-7 everywhere), enough for a p-value.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "experiment {} (control: {})",
            self.experiment, self.control
        )?;
        writeln!(
            f,
            "{:<16} {:>7} {:>9} {:>11} {:>7} {:>11} {:>8} {:>19} {:>9}",
            "variant",
            "users",
            "responses",
            "impressions",
            "clicks",
            "conversions",
            "ctr",
            "ctr 95% CI",
            "conv rate"
        )?;
        for v in &self.variants {
            writeln!(
                f,
                "{:<16} {:>7} {:>9} {:>11} {:>7} {:>11} {:>8.4} {:>19} {:>9.4}",
                v.variant,
                v.users,
                v.responses,
                v.impressions,
                v.clicks,
                v.conversions,
                v.ctr,
                format!("[{:.4}, {:.4}]", v.ctr_low, v.ctr_high),
                v.conversion_rate
            )?;
        }
        for c in &self.comparisons {
            writeln!(
                f,
                "{} vs {}: {} {:+.4} (z = {:.2}, p = {:.4}){}",
                c.variant,
                self.control,
                c.metric,
                c.difference,
                c.z,
                c.p_value,
                if c.significant {
                    ", significant at 5%"
                } else {
                    ", not significant"
                }
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_and_the_z_test_match_known_values() {
        // erfc(1/√2) = 0.3173105 (the two-sided p of |z| = 1), erfc(1.96/√2) = 0.0499958
        assert!((erfc(1.0 / std::f64::consts::SQRT_2) - 0.317_310_5).abs() < 1e-6);
        assert!((erfc(1.96 / std::f64::consts::SQRT_2) - 0.049_995_8).abs() < 1e-6);
        assert!((erfc(-1.0) - (2.0 - erfc(1.0))).abs() < 1e-12);
        // 120/1000 vs 100/1000: pooled p 0.11, se 0.013994, z 1.4292, p 0.1529
        let (d, z, p) = two_proportion(120, 1000, 100, 1000);
        assert!((d - 0.02).abs() < 1e-12);
        assert!((z - 1.4292).abs() < 1e-3, "{z}");
        assert!((p - 0.1529).abs() < 1e-3, "{p}");
        assert_eq!(two_proportion(0, 0, 1, 10), (0.0, 0.0, 1.0));
    }

    #[test]
    fn variants_follow_the_configured_order() {
        let row = |variant: &str, clicks| VariantRow {
            variant: variant.into(),
            users: 100,
            responses: 100,
            impressions: 1000,
            clicks,
            conversions: 0,
            ctr: clicks as f64 / 1000.0,
            ctr_low: 0.0,
            ctr_high: 0.0,
            conversion_rate: 0.0,
        };
        let r = compare(
            "e",
            vec![row("b", 200), row("a", 100)],
            &["a".to_string(), "b".to_string()],
        );
        assert_eq!(r.control, "a");
        assert_eq!(r.comparisons[0].variant, "b");
        assert!(r.comparisons[0].difference > 0.0 && r.comparisons[0].significant);
        let text = r.to_string();
        assert!(text.contains("b vs a: ctr +0.1000"), "{text}");
    }
}
