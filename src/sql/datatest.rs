//! Data tests declared in a feature's header (`-- test: …`), as dbt's schema tests: each
//! becomes a query returning the offending rows of the feature's result. Pure (text in,
//! SQL out); `batch::datatest` runs them.
//!
//! ```sql
//! -- test: unique(book_id)
//! -- test: not_null(user_id, book_id)
//! -- test: accepted_values(kind, ['view', 'click'])
//! -- test: range(popularity, 0, )
//! -- test: row_count(>= 1) warn
//! -- test: relationships(book_id, books.book_id)
//! -- test: sql(SELECT * FROM ${this} WHERE score > 10 * days)
//! ```
//!
//! A test fails when its query returns a row. A trailing `warn` makes a failure a warning
//! (the run goes on); the default, `error`, stops the run before the feature's output is
//! written. `${this}` is the feature's result; `${as_of}` and the feature's parameters are
//! filled in as in the feature.

use serde::Serialize;

/// How a failing test counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// reported; the run goes on
    Warn,
    /// the run stops: the feature's output is not written, nothing after it runs, no model
    Error,
}

/// What a test checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    Unique(Vec<String>),
    NotNull(Vec<String>),
    /// the column's non-null values are among these SQL literals
    AcceptedValues {
        column: String,
        values: Vec<String>,
    },
    /// the column's non-null values are within the bounds (number literals), each optional
    Range {
        column: String,
        min: Option<String>,
        max: Option<String>,
    },
    /// the result's row count compared with `n`
    RowCount {
        op: &'static str,
        n: i64,
    },
    /// the column's non-null values are in `table.to`
    Relationships {
        column: String,
        table: String,
        to: String,
    },
    /// a query returning the offending rows (`${this}`: the feature's result)
    Sql(String),
}

/// One `-- test:` line.
#[derive(Debug, Clone, PartialEq)]
pub struct DataTest {
    /// the test as written, without its severity
    pub text: String,
    /// its line in the file
    pub line: usize,
    pub severity: Severity,
    pub check: Check,
}

fn ident(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a column name ([a-z0-9_]+)"))
    }
}

fn columns(args: &str) -> Result<Vec<String>, String> {
    let cols = args.split(',').map(ident).collect::<Result<Vec<_>, _>>()?;
    if cols.is_empty() {
        return Err("name at least one column".into());
    }
    Ok(cols)
}

/// A number as a SQL literal (negative ones parenthesized), or None.
fn number(s: &str) -> Option<String> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(if i < 0 {
            format!("({i})")
        } else {
            i.to_string()
        });
    }
    let f = s.parse::<f64>().ok().filter(|f| f.is_finite())?;
    Some(if f < 0.0 {
        format!("({f:?})")
    } else {
        format!("{f:?}")
    })
}

/// `['a', 'b''c', 3]`: each a quoted string (`''` a quote) or a number, as SQL literals.
fn literals(list: &str) -> Result<Vec<String>, String> {
    let inner = list
        .trim()
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .ok_or("write the values as a list: ['a', 'b']")?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '\'' {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        v.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => v.push(ch),
                    None => return Err("a quoted value is not closed".into()),
                }
            }
            out.push(format!("'{}'", v.replace('\'', "''")));
        } else {
            let raw: String = std::iter::from_fn(|| chars.next_if(|&c| c != ',')).collect();
            out.push(number(&raw).ok_or_else(|| {
                format!("{:?}: a value is a quoted string or a number", raw.trim())
            })?);
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(other) => return Err(format!("unexpected {other:?} in the list")),
        }
    }
    if out.is_empty() {
        return Err("the list of values is empty".into());
    }
    Ok(out)
}

/// Parses the value of a `-- test:` line.
pub fn parse(value: &str, line: usize) -> Result<DataTest, String> {
    let value = value.trim();
    let syntax = || {
        format!(
            "test {value:?}: write NAME(ARGS) [warn|error], NAME one of unique, not_null, \
             accepted_values, range, row_count, relationships, sql"
        )
    };
    let open = value.find('(').ok_or_else(syntax)?;
    let close = value.rfind(')').filter(|c| *c > open).ok_or_else(syntax)?;
    let name = value[..open].trim();
    let args = &value[open + 1..close];
    let severity = match value[close + 1..].trim() {
        "" | "error" => Severity::Error,
        "warn" => Severity::Warn,
        other => {
            return Err(format!(
                "test {value:?}: {other:?}: the severity is warn or error"
            ));
        }
    };
    let at = |m: String| format!("test {name}: {m}");
    let check = match name {
        "unique" => Check::Unique(columns(args).map_err(at)?),
        "not_null" => Check::NotNull(columns(args).map_err(at)?),
        "accepted_values" => {
            let (col, list) = args
                .split_once(',')
                .ok_or_else(|| at("write accepted_values(column, ['a', 'b'])".into()))?;
            Check::AcceptedValues {
                column: ident(col).map_err(at)?,
                values: literals(list).map_err(at)?,
            }
        }
        "range" => {
            let parts: Vec<&str> = args.split(',').collect();
            let [col, min, max] = parts[..] else {
                return Err(at(
                    "write range(column, min, max); leave a bound empty for none".into(),
                ));
            };
            let bound = |b: &str| -> Result<Option<String>, String> {
                if b.trim().is_empty() {
                    Ok(None)
                } else {
                    number(b)
                        .map(Some)
                        .ok_or_else(|| at(format!("bound {:?} is not a finite number", b.trim())))
                }
            };
            let (min, max) = (bound(min)?, bound(max)?);
            if min.is_none() && max.is_none() {
                return Err(at("give at least one bound".into()));
            }
            Check::Range {
                column: ident(col).map_err(at)?,
                min,
                max,
            }
        }
        "row_count" => {
            let a = args.trim();
            let op = [">=", "<=", "!=", "=", ">", "<"]
                .into_iter()
                .find(|op| a.starts_with(op))
                .ok_or_else(|| at("write row_count(>= 1) (>=, >, =, !=, <, <=)".into()))?;
            let n = a[op.len()..]
                .trim()
                .parse::<i64>()
                .map_err(|_| at(format!("{:?} is not a whole number", a[op.len()..].trim())))?;
            Check::RowCount { op, n }
        }
        "relationships" => {
            let (col, target) = args
                .split_once(',')
                .ok_or_else(|| at("write relationships(column, table.column)".into()))?;
            let (table, to) = target
                .trim()
                .split_once('.')
                .ok_or_else(|| at("write relationships(column, table.column)".into()))?;
            Check::Relationships {
                column: ident(col).map_err(at)?,
                table: ident(table).map_err(at)?,
                to: ident(to).map_err(at)?,
            }
        }
        "sql" => {
            let sql = args.trim();
            if sql.is_empty() {
                return Err(at("write sql(SELECT … FROM ${this} WHERE …)".into()));
            }
            Check::Sql(sql.to_string())
        }
        _ => return Err(syntax()),
    };
    Ok(DataTest {
        text: value[..=close].to_string(),
        line,
        severity,
        check,
    })
}

impl DataTest {
    /// The query returning the offending rows of `table`; a `sql(…)` test's text comes back
    /// with `${this}` replaced (its other placeholders are the feature's to fill in).
    pub fn offending(&self, table: &str) -> String {
        let q = |c: &str| format!("\"{c}\"");
        match &self.check {
            Check::Unique(cols) => {
                let list = cols.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
                format!(
                    "SELECT {list}, count(*) AS duplicates FROM {table} GROUP BY {list} \
                     HAVING count(*) > 1"
                )
            }
            Check::NotNull(cols) => format!(
                "SELECT * FROM {table} WHERE {}",
                cols.iter()
                    .map(|c| format!("{} IS NULL", q(c)))
                    .collect::<Vec<_>>()
                    .join(" OR ")
            ),
            Check::AcceptedValues { column, values } => format!(
                "SELECT * FROM {table} WHERE {c} IS NOT NULL AND {c} NOT IN ({})",
                values.join(", "),
                c = q(column)
            ),
            Check::Range { column, min, max } => {
                let c = q(column);
                let mut out_of = Vec::new();
                if let Some(m) = min {
                    out_of.push(format!("{c} < {m}"));
                }
                if let Some(m) = max {
                    out_of.push(format!("{c} > {m}"));
                }
                format!("SELECT * FROM {table} WHERE {}", out_of.join(" OR "))
            }
            Check::RowCount { op, n } => {
                format!("SELECT count(*) AS row_count FROM {table} HAVING NOT (count(*) {op} {n})")
            }
            Check::Relationships {
                column,
                table: other,
                to,
            } => format!(
                "SELECT * FROM {table} WHERE {c} IS NOT NULL AND {c} NOT IN \
                 (SELECT {t} FROM {other} WHERE {t} IS NOT NULL)",
                c = q(column),
                t = q(to)
            ),
            Check::Sql(sql) => sql.replace("${this}", table),
        }
    }

    /// The tables the test reads besides the feature's result.
    pub fn reads(&self) -> Vec<String> {
        match &self.check {
            Check::Relationships { table, .. } => vec![table.clone()],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_parses_to_a_query_of_offending_rows() {
        let t = parse("unique(book_id, kind)", 3).expect("unique");
        assert_eq!((t.line, t.severity), (3, Severity::Error));
        assert_eq!(
            t.offending("f"),
            "SELECT \"book_id\", \"kind\", count(*) AS duplicates FROM f GROUP BY \
             \"book_id\", \"kind\" HAVING count(*) > 1"
        );
        let t = parse("not_null(user_id, book_id) warn", 1).expect("not_null");
        assert_eq!(t.severity, Severity::Warn);
        assert_eq!(t.text, "not_null(user_id, book_id)");
        assert_eq!(
            t.offending("f"),
            "SELECT * FROM f WHERE \"user_id\" IS NULL OR \"book_id\" IS NULL"
        );
        let t = parse("accepted_values(kind, ['view', 'it''s', 3, -1.5])", 1).expect("values");
        assert_eq!(
            t.offending("f"),
            "SELECT * FROM f WHERE \"kind\" IS NOT NULL AND \"kind\" NOT IN \
             ('view', 'it''s', 3, (-1.5))"
        );
        let t = parse("range(popularity, 0, )", 1).expect("range");
        assert_eq!(t.offending("f"), "SELECT * FROM f WHERE \"popularity\" < 0");
        let t = parse("range(share, , 1)", 1).expect("range max");
        assert_eq!(t.offending("f"), "SELECT * FROM f WHERE \"share\" > 1");
        let t = parse("row_count(>= 1)", 1).expect("row_count");
        assert_eq!(
            t.offending("f"),
            "SELECT count(*) AS row_count FROM f HAVING NOT (count(*) >= 1)"
        );
        let t = parse("relationships(book_id, books.book_id)", 1).expect("rel");
        assert_eq!(t.reads(), vec!["books".to_string()]);
        assert!(
            t.offending("f")
                .contains("NOT IN (SELECT \"book_id\" FROM books")
        );
        let t = parse("sql(SELECT * FROM ${this} WHERE (a) > (b))", 1).expect("sql");
        assert_eq!(t.offending("f"), "SELECT * FROM f WHERE (a) > (b)");
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        for (bad, says) in [
            ("unique", "NAME(ARGS)"),
            ("unique(Book)", "not a column name"),
            ("unique()", "not a column name"),
            ("colour(x)", "NAME(ARGS)"),
            ("unique(a) fatal", "warn or error"),
            ("accepted_values(kind, 'a')", "as a list"),
            ("accepted_values(kind, ['a])", "not closed"),
            ("accepted_values(kind, [x])", "quoted string or a number"),
            ("accepted_values(kind, [])", "empty"),
            ("range(x, 1)", "range(column, min, max)"),
            ("range(x, , )", "at least one bound"),
            ("range(x, NaN, )", "finite"),
            ("row_count(~ 1)", ">="),
            ("row_count(>= lots)", "whole number"),
            ("relationships(book_id, books)", "table.column"),
            ("sql()", "SELECT"),
        ] {
            let e = parse(bad, 1).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
