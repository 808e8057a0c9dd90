//! The query catalog: analysts' SQL files with a header, their parameters, and the
//! dependency order. Pure (reads text, no IO).
//!
//! A batch feature is one `.sql` file:
//!
//! ```sql
//! -- name: book_popularity
//! -- description: Views, clicks, … per book over 1/7/30 days, trend, time-decayed score.
//! -- output: lake
//! -- keys: book_id
//! -- param: half_life_days = 7
//! SELECT … FROM events WHERE event_ts <= ${as_of} …
//! ```
//!
//! Header lines are `-- key: value` comments before the statement; `description` may
//! continue on following `--` lines. `output` is `lake`, `db` or `lake, db`. Parameters are
//! written `${name}` in the SQL and replaced by SQL literals: numbers as they are, anything
//! else quoted. `${as_of}` is always defined: the run's cut-off time as a TIMESTAMP literal.
//! Dependencies come from the tables a query reads: another query's `name` makes it a
//! dependency; anything else must be a lake table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Where a feature's result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Outputs {
    pub lake: bool,
    pub db: bool,
}

/// Which folder's rules a file follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `queries/batch/`: `output` is required
    Batch,
    /// `queries/realtime/`: `sink` is required, and the sink's keys are allowed
    Realtime,
    /// `queries/sources/`: a view of the lake's raw (CDC) tables as a canonical table;
    /// `input` lines declare the raw tables and the columns it reads; no `output`, `keys`,
    /// `param` or `${…}` (a source is the current state, not a run's)
    Source,
}

/// The header keys of a realtime query's sink (see `realtime`).
pub const SINK_KEYS: &[&str] = &[
    "sink",
    "key",
    "member",
    "value",
    "max_len",
    "ttl_secs",
    "expire_at",
    "window",
    "reason",
    "reason_key",
];

/// One feature query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub outputs: Outputs,
    pub keys: Vec<String>,
    /// parameter → default (as written)
    pub params: BTreeMap<String, String>,
    /// the SQL text after the header
    pub sql: String,
    /// 1-based line of the file where `sql` starts
    pub sql_line: usize,
    /// realtime sink keys: key → (value, line)
    pub sink: BTreeMap<String, (String, usize)>,
    /// a source's raw inputs: table → the columns it reads, with the header line
    pub inputs: Vec<Input>,
    /// a batch feature's data tests (`-- test: …`), run on its result
    pub tests: Vec<super::datatest::DataTest>,
    /// a batch feature's tags (`-- tags: daily, cold_start`), for `--select tag:NAME`
    pub tags: Vec<String>,
}

/// One `-- input: table(col, …)` line of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub table: String,
    pub columns: Vec<String>,
    pub line: usize,
}

/// `table(col, col, …)`, each name `[a-z0-9_]+` (a raw column may start with `_`).
fn parse_input(value: &str) -> Result<Input, String> {
    let syntax = || format!("input {value:?}: write `input: table(column, column, …)`");
    let (table, rest) = value.split_once('(').ok_or_else(syntax)?;
    let cols = rest.trim().strip_suffix(')').ok_or_else(syntax)?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let table = table.trim();
    if !ident(table) {
        return Err(format!("input table {table:?}: use [a-z0-9_]+"));
    }
    let mut columns = Vec::new();
    for c in cols.split(',').map(str::trim) {
        if !ident(c) {
            return Err(format!("input {table}: column {c:?}: use [a-z0-9_]+"));
        }
        if !columns.iter().any(|x| x == c) {
            columns.push(c.to_string());
        }
    }
    Ok(Input {
        table: table.to_string(),
        columns,
        line: 0,
    })
}

/// An error with the file and line it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct CatalogError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

fn at(path: &Path, line: usize, message: impl Into<String>) -> CatalogError {
    CatalogError {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Parses one batch query file's text.
pub fn parse(path: &Path, text: &str) -> Result<Query, CatalogError> {
    parse_kind(path, text, Kind::Batch)
}

/// Parses one file's text under the rules of `kind`.
pub fn parse_kind(path: &Path, text: &str, kind: Kind) -> Result<Query, CatalogError> {
    let mut name = None;
    let mut sink = BTreeMap::new();
    let mut description = String::new();
    let mut outputs = None;
    let mut keys = Vec::new();
    let mut params = BTreeMap::new();
    let mut inputs: Vec<Input> = Vec::new();
    let mut tests = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    let mut last_key = String::new();
    let mut sql_line = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--") else {
            sql_line = n;
            break;
        };
        // an indented comment line continues the description (it may hold a colon)
        let continued = last_key == "description" && comment.starts_with("  ");
        let comment = comment.trim();
        let Some((key, value)) = comment.split_once(':').filter(|(k, _)| {
            !continued && !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        }) else {
            if last_key == "description" && !comment.is_empty() {
                description.push(' ');
                description.push_str(comment);
            }
            continue;
        };
        let value = value.trim();
        last_key = key.to_string();
        match key {
            "input" if kind == Kind::Source => {
                let mut input = parse_input(value).map_err(|m| at(path, n, m))?;
                if inputs.iter().any(|i| i.table == input.table) {
                    return Err(at(
                        path,
                        n,
                        format!("input {} is declared twice", input.table),
                    ));
                }
                input.line = n;
                inputs.push(input);
            }
            "test" | "tags" if kind != Kind::Batch => {
                return Err(at(
                    path,
                    n,
                    format!("`{key}` belongs to a batch feature (queries/batch/)"),
                ));
            }
            "test" => tests.push(super::datatest::parse(value, n).map_err(|m| at(path, n, m))?),
            "tags" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !t
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        return Err(at(path, n, format!("tag {t:?}: use [a-z0-9_]+")));
                    }
                    if !tags.iter().any(|x| x == t) {
                        tags.push(t.to_string());
                    }
                }
            }
            "output" | "keys" | "param" if kind == Kind::Source => {
                return Err(at(
                    path,
                    n,
                    format!(
                        "a source has no `{key}`: it is a view of the current state (see \
                         queries/README.md)"
                    ),
                ));
            }
            "name" => {
                if value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    return Err(at(path, n, format!("name {value:?}: use [a-z0-9_]+")));
                }
                name = Some(value.to_string());
            }
            "description" => description = value.to_string(),
            "output" => {
                let mut o = Outputs {
                    lake: false,
                    db: false,
                };
                for part in value.split(',').map(str::trim) {
                    match part {
                        "lake" => o.lake = true,
                        "db" => o.db = true,
                        other => {
                            return Err(at(
                                path,
                                n,
                                format!("output {other:?}: use lake, db or both"),
                            ));
                        }
                    }
                }
                outputs = Some(o);
            }
            "keys" => {
                keys = value
                    .split(',')
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
                    .collect()
            }
            "param" => {
                let Some((p, default)) = value.split_once('=') else {
                    return Err(at(path, n, "param: write `param: name = default`"));
                };
                let p = p.trim();
                if p == "as_of" {
                    return Err(at(path, n, "as_of is set by the run, not a parameter"));
                }
                params.insert(p.to_string(), default.trim().to_string());
            }
            other if kind == Kind::Realtime && SINK_KEYS.contains(&other) => {
                sink.insert(other.to_string(), (value.to_string(), n));
            }
            other => return Err(at(path, n, format!("unknown header key {other:?}"))),
        }
    }
    if sql_line == 0 {
        return Err(at(path, 1, "the file holds no SQL statement"));
    }
    let name = name.ok_or_else(|| at(path, 1, "the header needs `-- name: …`"))?;
    let outputs = match kind {
        Kind::Batch => {
            outputs.ok_or_else(|| at(path, 1, "the header needs `-- output: lake|db`"))?
        }
        Kind::Realtime => {
            if outputs.is_some() {
                return Err(at(
                    path,
                    1,
                    "a realtime query has a `sink`, not an `output`",
                ));
            }
            if !sink.contains_key("sink") {
                return Err(at(path, 1, "the header needs `-- sink: recent|hash|zset`"));
            }
            Outputs {
                lake: false,
                db: false,
            }
        }
        Kind::Source => {
            if inputs.is_empty() {
                return Err(at(
                    path,
                    1,
                    "the header needs `-- input: table(column, …)` for each raw table it reads",
                ));
            }
            Outputs {
                lake: false,
                db: false,
            }
        }
    };
    let sql: String = text
        .lines()
        .skip(sql_line - 1)
        .collect::<Vec<_>>()
        .join("\n");
    // every ${param} must be declared
    for (offset, used) in placeholders(&sql) {
        if kind == Kind::Source {
            let line = sql_line + sql[..offset].matches('\n').count();
            return Err(at(
                path,
                line,
                format!(
                    "${{{used}}}: a source takes no parameters (it is the current state; \
                     time cut-offs belong in the features)"
                ),
            ));
        }
        if used != "as_of" && !params.contains_key(&used) {
            let line = sql_line + sql[..offset].matches('\n').count();
            return Err(at(
                path,
                line,
                format!("${{{used}}} is not a declared param"),
            ));
        }
    }
    // a SQL test may use ${this}, ${as_of} and the declared params
    for t in &tests {
        if let super::datatest::Check::Sql(text) = &t.check {
            for (_, used) in placeholders(text) {
                if used != "this" && used != "as_of" && !params.contains_key(&used) {
                    return Err(at(
                        path,
                        t.line,
                        format!("${{{used}}} is not a declared param (nor this or as_of)"),
                    ));
                }
            }
        }
    }
    Ok(Query {
        name,
        path: path.to_path_buf(),
        description,
        outputs,
        keys,
        params,
        sql,
        sql_line,
        sink,
        inputs,
        tests,
        tags,
    })
}

/// `${name}` occurrences: (byte offset, name).
fn placeholders(sql: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut rest = sql;
    let mut base = 0;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        if let Some(j) = after.find('}') {
            out.push((base + i, after[..j].trim().to_string()));
            base += i + 2 + j + 1;
            rest = &after[j + 1..];
        } else {
            break;
        }
    }
    out
}

/// A number as a SQL literal (parenthesized when negative: `x -${p}` must not become the
/// comment `x --5`); None when `value` is not a finite number.
fn number_literal(value: &str) -> Option<String> {
    let v = value.trim();
    let text = if let Ok(i) = v.parse::<i64>() {
        i.to_string()
    } else {
        let f = v.parse::<f64>().ok().filter(|f| f.is_finite())?;
        format!("{f:?}")
    };
    Some(if text.starts_with('-') {
        format!("({text})")
    } else {
        text
    })
}

/// A string as a SQL literal: quoted, its quotes doubled (it cannot end its quote).
fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A default as written in the header: a finite number, or text (one pair of surrounding
/// single quotes is the quoting, `''` inside it a quote).
fn default_literal(default: &str) -> String {
    if let Some(n) = number_literal(default) {
        return n;
    }
    let d = default.trim();
    let unquoted = d
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .map_or_else(|| d.to_string(), |x| x.replace("''", "'"));
    string_literal(&unquoted)
}

/// The most characters a parameter's value may have.
pub const MAX_PARAM_LEN: usize = 1000;

/// `NAME=VALUE` (every query that declares NAME) or `QUERY.NAME=VALUE` (that query only),
/// as given on the command line.
pub fn parse_param(arg: &str) -> Result<(Option<String>, String, String), String> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("--param {arg:?}: write NAME=VALUE or QUERY.NAME=VALUE"))?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let (query, name) = match key.trim().split_once('.') {
        Some((q, n)) => (Some(q.to_string()), n.to_string()),
        None => (None, key.trim().to_string()),
    };
    if !ident(&name) || query.as_deref().is_some_and(|q| !ident(q)) {
        return Err(format!(
            "--param {arg:?}: a name is [a-z0-9_]+ (QUERY.NAME for one query)"
        ));
    }
    Ok((query, name, value.to_string()))
}

impl Query {
    /// Checks `overrides` against the declared parameters: each must be declared, a
    /// parameter whose default is a number takes a finite number (NaN and infinities are
    /// refused), any other takes text (rendered quoted); at most [`MAX_PARAM_LEN`]
    /// characters.
    pub fn check_params(&self, overrides: &HashMap<String, String>) -> Result<(), CatalogError> {
        let mut names: Vec<&String> = overrides.keys().collect();
        names.sort();
        for p in names {
            let value = &overrides[p];
            let Some(default) = self.params.get(p) else {
                let has = self.params.keys().cloned().collect::<Vec<_>>().join(", ");
                return Err(at(
                    &self.path,
                    1,
                    format!(
                        "no parameter {p:?} (it has: {})",
                        if has.is_empty() { "none" } else { &has }
                    ),
                ));
            };
            if value.chars().count() > MAX_PARAM_LEN {
                return Err(at(
                    &self.path,
                    1,
                    format!("param {p}: the value is longer than {MAX_PARAM_LEN} characters"),
                ));
            }
            if number_literal(default).is_some() && number_literal(value).is_none() {
                return Err(at(
                    &self.path,
                    1,
                    format!(
                        "param {p} = {value:?}: a finite number, like its default {default} \
                         (NaN and infinities are refused)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Query {
    /// The SQL with parameters (defaults overridden by `overrides`) and `as_of` filled in.
    pub fn render(
        &self,
        as_of: &chrono::DateTime<chrono::Utc>,
        overrides: &HashMap<String, String>,
    ) -> String {
        self.render_text(&self.sql, as_of, overrides)
    }

    /// `text` with this query's parameters and `as_of` filled in, in one pass: a value is
    /// never scanned again (a `${…}` inside a value stays as it is). A value of a numeric
    /// parameter is a number literal when it is a finite number, else quoted text (which
    /// planning then refuses where a number is needed: [`Query::check_params`] says it
    /// first); any other value is quoted text.
    pub fn render_text(
        &self,
        text: &str,
        as_of: &chrono::DateTime<chrono::Utc>,
        overrides: &HashMap<String, String>,
    ) -> String {
        let as_of = format!(
            "TIMESTAMP '{}'",
            as_of.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            let Some(j) = rest[i + 2..].find('}') else {
                break;
            };
            let name = rest[i + 2..i + 2 + j].trim();
            out.push_str(&rest[..i]);
            let value = if name == "as_of" {
                Some(as_of.clone())
            } else {
                self.params
                    .get(name)
                    .map(|default| match overrides.get(name) {
                        Some(v) if number_literal(default).is_some() => {
                            number_literal(v).unwrap_or_else(|| string_literal(v))
                        }
                        Some(v) => string_literal(v),
                        None => default_literal(default),
                    })
            };
            match value {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[i..i + 2 + j + 1]),
            }
            rest = &rest[i + 2 + j + 1..];
        }
        out.push_str(rest);
        out
    }

    /// The file line of a 1-based line within `sql`.
    pub fn file_line(&self, sql_line: usize) -> usize {
        self.sql_line + sql_line.saturating_sub(1)
    }

    /// The first file line where `table` appears as a word, for error messages.
    pub fn line_of(&self, table: &str) -> usize {
        for (i, line) in self.sql.lines().enumerate() {
            let lower = line.to_ascii_lowercase();
            let t = table.to_ascii_lowercase();
            let mut from = 0;
            while let Some(pos) = lower[from..].find(&t) {
                let s = from + pos;
                let e = s + t.len();
                let word =
                    |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if !word(lower[..s].chars().last()) && !word(lower[e..].chars().next()) {
                    return self.sql_line + i;
                }
                from = e;
            }
        }
        self.sql_line
    }
}

/// Loads every batch `*.sql` file of a folder, sorted by file name; names must be unique.
pub fn load_dir(dir: &Path) -> Result<Vec<Query>, Vec<CatalogError>> {
    load_dir_kind(dir, Kind::Batch)
}

/// [`load_dir`] under the rules of `kind`.
pub fn load_dir_kind(dir: &Path, kind: Kind) -> Result<Vec<Query>, Vec<CatalogError>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(vec![at(dir, 0, format!("cannot read the folder: {e}"))]),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    let mut queries = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p) {
            Ok(text) => match parse_kind(&p, &text, kind) {
                Ok(q) => queries.push(q),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(at(&p, 0, format!("cannot read: {e}"))),
        }
    }
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for q in &queries {
        if let Some(first) = seen.insert(q.name.clone(), q.path.clone()) {
            errors.push(at(
                &q.path,
                1,
                format!("name {} is already used by {}", q.name, first.display()),
            ));
        }
    }
    if errors.is_empty() {
        Ok(queries)
    } else {
        Err(errors)
    }
}

/// Orders queries so each comes after the queries it reads. `reads[i]` are the table names
/// query `i` references; `known_tables` are the lake's. Unknown tables and cycles are errors
/// naming the file and line.
pub fn order(
    queries: &[Query],
    reads: &[BTreeSet<String>],
    known_tables: &BTreeSet<String>,
) -> Result<Vec<usize>, Vec<CatalogError>> {
    let index: HashMap<&str, usize> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| (q.name.as_str(), i))
        .collect();
    let mut errors = Vec::new();
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); queries.len()];
    for (i, tables) in reads.iter().enumerate() {
        for t in tables {
            if let Some(&j) = index.get(t.as_str()) {
                if j == i {
                    errors.push(at(
                        &queries[i].path,
                        queries[i].line_of(t),
                        format!("{} reads its own output", queries[i].name),
                    ));
                } else {
                    deps[i].insert(j);
                }
            } else if !known_tables.contains(t) {
                errors.push(at(
                    &queries[i].path,
                    queries[i].line_of(t),
                    format!(
                        "unknown table {t}: not a lake table ({}) nor a query name",
                        known_tables.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Kahn's algorithm, ties by name for a stable order
    let mut indegree: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
    let mut ready: BTreeSet<(String, usize)> = indegree
        .iter()
        .enumerate()
        .filter(|(_, d)| **d == 0)
        .map(|(i, _)| (queries[i].name.clone(), i))
        .collect();
    let mut out = Vec::new();
    while let Some(first) = ready.iter().next().cloned() {
        ready.remove(&first);
        let i = first.1;
        out.push(i);
        for (k, d) in deps.iter().enumerate() {
            if d.contains(&i) {
                indegree[k] -= 1;
                if indegree[k] == 0 {
                    ready.insert((queries[k].name.clone(), k));
                }
            }
        }
    }
    if out.len() < queries.len() {
        let stuck: Vec<usize> = (0..queries.len()).filter(|i| !out.contains(i)).collect();
        let names: Vec<&str> = stuck.iter().map(|i| queries[*i].name.as_str()).collect();
        for &i in &stuck {
            let on: Vec<&str> = deps[i]
                .iter()
                .filter(|j| stuck.contains(j))
                .map(|j| queries[*j].name.as_str())
                .collect();
            let line = on
                .first()
                .map_or(queries[i].sql_line, |t| queries[i].line_of(t));
            errors.push(at(
                &queries[i].path,
                line,
                format!(
                    "dependency cycle among {}: reads {}",
                    names.join(", "),
                    on.join(", ")
                ),
            ));
        }
        return Err(errors);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, sql: &str) -> Query {
        parse(
            Path::new(&format!("queries/batch/{name}.sql")),
            &format!("-- name: {name}\n-- output: lake\n{sql}\n"),
        )
        .expect("parses")
    }

    #[test]
    fn header_params_and_rendering() {
        let text = "-- name: pop\n-- description: Book popularity,\n--   decayed.\n-- output: lake, db\n-- keys: book_id\n-- param: half_life_days = 7\n-- param: kind = view\n\nSELECT ${half_life_days} AS h, ${kind} AS k, ${as_of} AS t\n";
        let q = parse(Path::new("pop.sql"), text).expect("parses");
        assert_eq!(q.description, "Book popularity, decayed.");
        assert_eq!(
            q.outputs,
            Outputs {
                lake: true,
                db: true
            }
        );
        assert_eq!(q.keys, vec!["book_id"]);
        assert_eq!(q.sql_line, 9);
        let as_of = chrono::DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z")
            .expect("ts")
            .to_utc();
        let mut o = HashMap::new();
        o.insert("kind".to_string(), "it's".to_string());
        assert_eq!(
            q.render(&as_of, &o),
            "SELECT 7 AS h, 'it''s' AS k, TIMESTAMP '2026-11-26T00:00:00.000000Z' AS t"
        );
        q.check_params(&o).expect("text takes anything");
        // a string cannot end its quote; `${…}` inside a value is not expanded
        o.insert(
            "kind".to_string(),
            "x' OR 1=1 -- ${half_life_days}".to_string(),
        );
        o.insert("half_life_days".to_string(), "-3".to_string());
        assert_eq!(
            q.render(&as_of, &o),
            "SELECT (-3) AS h, 'x'' OR 1=1 -- ${half_life_days}' AS k, \
             TIMESTAMP '2026-11-26T00:00:00.000000Z' AS t"
        );
        // typed by the default: a number takes a finite number only
        for bad in [
            "NaN",
            "inf",
            "-Infinity",
            "1e999",
            "seven",
            "7; DROP TABLE x",
        ] {
            let o = HashMap::from([("half_life_days".to_string(), bad.to_string())]);
            let e = q.check_params(&o).expect_err(bad);
            assert!(e.message.contains("finite number"), "{bad}: {e}");
        }
        let o = HashMap::from([("half_life_days".to_string(), "14.5".to_string())]);
        q.check_params(&o).expect("a number");
        assert!(q.render(&as_of, &o).starts_with("SELECT 14.5 AS h"));
        let o = HashMap::from([("colour".to_string(), "red".to_string())]);
        let e = q.check_params(&o).expect_err("undeclared");
        assert!(e.message.contains("half_life_days, kind"), "{e}");
        let o = HashMap::from([("kind".to_string(), "x".repeat(MAX_PARAM_LEN + 1))]);
        assert!(q.check_params(&o).is_err());
        // a quoted default is text
        let t = "-- name: t\n-- output: lake\n-- param: s = 'a''b'\nSELECT ${s}";
        let q = parse(Path::new("t.sql"), t).expect("parses");
        assert_eq!(q.render(&as_of, &HashMap::new()), "SELECT 'a''b'");
        assert_eq!(
            parse_param("book_popularity.half_life_days=14"),
            Ok((
                Some("book_popularity".into()),
                "half_life_days".into(),
                "14".into()
            ))
        );
        assert_eq!(
            parse_param("kind=a=b"),
            Ok((None, "kind".into(), "a=b".into()))
        );
        assert!(parse_param("Bad Name=1").is_err());
        assert!(parse_param("no-equals").is_err());
    }

    #[test]
    fn header_errors_point_at_the_line() {
        let e = parse(
            Path::new("a.sql"),
            "-- name: a\n-- output: lake\n-- colour: red\nSELECT 1",
        )
        .expect_err("unknown key");
        assert_eq!((e.line, e.to_string().starts_with("a.sql:3:")), (3, true));
        let e = parse(
            Path::new("a.sql"),
            "-- name: a\n-- output: lake\n\nSELECT\n  ${nope}",
        )
        .expect_err("undeclared");
        assert_eq!(e.line, 5);
        let e = parse(Path::new("a.sql"), "-- output: lake\nSELECT 1").expect_err("no name");
        assert!(e.message.contains("name"));
    }

    #[test]
    fn a_source_declares_its_inputs_and_takes_no_params() {
        let ok = parse_kind(
            Path::new("books.sql"),
            "-- name: books\n-- input: raw_books(_id, title, _id)\n-- input: raw_b(x)\nSELECT 1",
            Kind::Source,
        )
        .expect("parses");
        assert_eq!(ok.inputs.len(), 2);
        assert_eq!(ok.inputs[0].columns, vec!["_id", "title"]);
        assert_eq!(
            (ok.inputs[1].table.as_str(), ok.inputs[1].line),
            ("raw_b", 3)
        );
        for (text, line, needle) in [
            ("-- name: b\nSELECT 1", 1, "input"),
            ("-- name: b\n-- input: raw\nSELECT 1", 2, "table(column"),
            (
                "-- name: b\n-- input: raw(a b)\nSELECT 1",
                2,
                "column \"a b\"",
            ),
            (
                "-- name: b\n-- input: r(a)\n-- input: r(b)\nSELECT 1",
                3,
                "twice",
            ),
            (
                "-- name: b\n-- input: r(a)\n-- output: lake\nSELECT 1",
                3,
                "no `output`",
            ),
            (
                "-- name: b\n-- input: r(a)\n-- param: x = 1\nSELECT 1",
                3,
                "no `param`",
            ),
            (
                "-- name: b\n-- input: r(a)\nSELECT 1\nWHERE t < ${as_of}",
                4,
                "no parameters",
            ),
        ] {
            let e = parse_kind(Path::new("b.sql"), text, Kind::Source).expect_err(text);
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
        // `input` is a source's key only
        let e = parse(
            Path::new("f.sql"),
            "-- name: f\n-- output: lake\n-- input: r(a)\nSELECT 1",
        )
        .expect_err("batch");
        assert!(e.message.contains("unknown header key"), "{e}");
    }

    #[test]
    fn order_follows_reads_and_reports_unknowns_and_cycles() {
        let qs = vec![
            q("b", "SELECT * FROM a"),
            q("a", "SELECT * FROM events"),
            q("c", "SELECT * FROM b JOIN a USING (x)"),
        ];
        let known: BTreeSet<String> = ["events".to_string()].into();
        let reads: Vec<BTreeSet<String>> = vec![
            ["a".to_string()].into(),
            ["events".to_string()].into(),
            ["a".to_string(), "b".to_string()].into(),
        ];
        let ord = order(&qs, &reads, &known).expect("acyclic");
        let names: Vec<&str> = ord.iter().map(|i| qs[*i].name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);

        let unknown = order(&qs[..1], &[["nope".to_string()].into()], &known).expect_err("unknown");
        assert!(unknown[0].message.contains("unknown table nope"));

        let cyc = vec![q("x", "SELECT * FROM y"), q("y", "SELECT *\nFROM x")];
        let errs = order(
            &cyc,
            &[["y".to_string()].into(), ["x".to_string()].into()],
            &known,
        )
        .expect_err("cycle");
        assert_eq!(errs.len(), 2);
        assert!(errs[0].message.contains("cycle"));
        assert_eq!(errs[1].line, 4, "y.sql line of `FROM x`");
    }
}
