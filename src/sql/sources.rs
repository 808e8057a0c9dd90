//! Source views: the analysts' SQL (`lake.sources_dir`, `queries/sources/` by default) that
//! turns the raw CDC tables — whatever the upstream databases call their columns — into the
//! canonical tables the features read: `books`, `users`, `engagement`.
//!
//! A source is one `.sql` file (the catalog's [`Kind::Source`] rules): a `name` (the table
//! it makes), `input: table(column, …)` lines declaring every raw table and the columns it
//! reads, and one `SELECT`. When a session opens, each source runs once over the current
//! state of its inputs and its result is registered under its name, in dependency order
//! (a source may read another source).
//!
//! Declared inputs are what make a source plan on any lake: a raw table that is absent
//! (nothing landed yet) is an empty table of the declared columns, and a declared column the
//! landed rows never carried is NULL. Such placeholder columns are text; the shipped views
//! `TRY_CAST` what they read, so a column whose values vary or do not parse is NULL in that
//! row rather than an error for the whole table. Every input also has `_key` (the row's key
//! as JSON) and `_ts_ms` (the time of its last change), as every CDC table does.
//!
//! A CDC table landed under a source's name (`land.cdc` mapping a topic straight to
//! `books`) is used as it is and that source is skipped, with a warning.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{SessionContext, lit};
use datafusion::scalar::ScalarValue;

use super::catalog::{self, CatalogError, Kind, Query};
use super::{SqlError, Tables};

/// The source views of the lake's `sources_dir`, parsed (none when it is not configured).
pub fn load(lake: &crate::lake::Lake) -> Result<Vec<Query>, SqlError> {
    match lake.sources_dir() {
        None => Ok(Vec::new()),
        Some(dir) if !dir.is_dir() => Err(SqlError::Source(vec![CatalogError {
            path: dir.to_path_buf(),
            line: 0,
            message: "lake.sources_dir: no such folder (paths are relative to the working \
                      directory; set BOOKREC__LAKE__SOURCES_DIR, or \"\" for no source views)"
                .into(),
        }])),
        Some(dir) => catalog::load_dir_kind(dir, Kind::Source).map_err(SqlError::Source),
    }
}

/// The tables a statement reads (CTE names excluded), located in `q`'s file on error.
pub fn reads(ctx: &SessionContext, q: &Query, sql: &str) -> Result<BTreeSet<String>, CatalogError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let stmt = state
        .sql_to_statement(sql, &dialect)
        .map_err(|e| located(q, &e))?;
    let refs = state
        .resolve_table_references(&stmt)
        .map_err(|e| located(q, &e))?;
    Ok(refs.iter().map(|r| r.table().to_string()).collect())
}

/// A DataFusion error about query `q`, at the file line it names (or the first mention of
/// the table or column it names).
pub fn located(q: &Query, e: &datafusion::error::DataFusionError) -> CatalogError {
    let msg = e.to_string();
    // sqlparser reports "… at Line: N, Column: M"
    let line = msg
        .split("Line: ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok())
        .map(|n| q.file_line(n))
        .or_else(|| {
            // unknown columns/tables: point at the first mention in the file
            let named = msg.split("named ").nth(1).map(|r| {
                r.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches('.')
            });
            let quoted = msg.split('\'').nth(1).or_else(|| msg.split('"').nth(1));
            let name = named
                .filter(|n| !n.is_empty())
                .or(quoted)?
                .rsplit('.')
                .next()?;
            Some(q.line_of(name))
        })
        .unwrap_or(q.sql_line);
    CatalogError {
        path: q.path.clone(),
        line,
        message: msg,
    }
}

/// The names of the tables registered in the session.
pub fn table_names(ctx: &SessionContext) -> BTreeSet<String> {
    ctx.catalog("datafusion")
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names().into_iter().collect())
        .unwrap_or_default()
}

/// The sources in dependency order, skipping those whose name is a CDC table's.
pub fn ordered<'a>(
    ctx: &SessionContext,
    sources: &'a [Query],
    cdc_tables: &[String],
) -> Result<Vec<&'a Query>, SqlError> {
    let mut active = Vec::new();
    for q in sources {
        if cdc_tables.contains(&q.name) {
            tracing::warn!(
                source = %q.path.display(),
                table = %q.name,
                "a CDC table has this source's name: the table is used as landed and the \
                 source view is skipped"
            );
        } else {
            active.push(q.clone());
        }
    }
    let mut reads_all = Vec::new();
    let mut errors = Vec::new();
    for q in &active {
        match reads(ctx, q, &q.sql) {
            Ok(r) => reads_all.push(r),
            Err(e) => {
                errors.push(e);
                reads_all.push(BTreeSet::new());
            }
        }
    }
    // a source reads its declared inputs and other sources, nothing else: a feature reads
    // the sources, so a source reading a feature would be a cycle across runs
    for (q, r) in active.iter().zip(&reads_all) {
        for t in r {
            let declared = q.inputs.iter().any(|i| &i.table == t);
            let source = active.iter().any(|s| &s.name == t);
            if !declared && !source {
                errors.push(CatalogError {
                    path: q.path.clone(),
                    line: q.line_of(t),
                    message: format!(
                        "{t} is neither a declared input (`-- input: {t}(column, …)`) nor a \
                         source"
                    ),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(SqlError::Source(errors));
    }
    let known: BTreeSet<String> = active
        .iter()
        .flat_map(|q| q.inputs.iter().map(|i| i.table.clone()))
        .collect();
    let order = catalog::order(&active, &reads_all, &known).map_err(SqlError::Source)?;
    Ok(order
        .into_iter()
        .filter_map(|i| sources.iter().find(|q| q.name == active[i].name))
        .collect())
}

/// Computes and registers the sources (see the module docs); returns their names in the
/// order they ran. `cdc_tables` are the CDC tables the session has.
pub(crate) async fn register(
    ctx: &SessionContext,
    tables: &Tables,
    sources: &[Query],
    cdc_tables: &[String],
) -> Result<Vec<String>, SqlError> {
    let order = ordered(ctx, sources, cdc_tables)?;
    let names: Vec<&str> = order.iter().map(|q| q.name.as_str()).collect();
    for q in &order {
        for input in &q.inputs {
            if names.contains(&input.table.as_str()) {
                continue; // another source, registered before this one
            }
            complete_input(ctx, tables, input).await?;
        }
        let df = ctx
            .sql_with_options(&q.sql, super::read_only())
            .await
            .map_err(|e| SqlError::Source(vec![located(q, &e)]))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df
            .collect()
            .await
            .map_err(|e| SqlError::Source(vec![located(q, &e)]))?;
        let batches = super::conform(&schema, batches)?;
        tables.register(ctx, &q.name, schema, batches).await?;
    }
    Ok(names.into_iter().map(str::to_string).collect())
}

/// Makes `input` readable with every declared column: an empty table of them when absent,
/// NULL text columns added for the declared columns it lacks.
async fn complete_input(
    ctx: &SessionContext,
    tables: &Tables,
    input: &catalog::Input,
) -> Result<(), SqlError> {
    let mut columns: Vec<&str> = input.columns.iter().map(String::as_str).collect();
    columns.extend(["_key", "_ts_ms"]);
    let typed = |c: &str| match c {
        "_ts_ms" => DataType::Int64,
        _ => DataType::Utf8,
    };
    let present = table_names(ctx).contains(&input.table);
    if !present {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(*c, typed(c), true))
                .collect::<Vec<_>>(),
        ));
        return tables.register(ctx, &input.table, schema, Vec::new()).await;
    }
    let query = |e| SqlError::Query(e);
    let mut df = ctx.table(input.table.as_str()).await.map_err(query)?;
    let have: HashMap<String, ()> = df
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), ()))
        .collect();
    let missing: Vec<&str> = columns
        .into_iter()
        .filter(|c| !have.contains_key(*c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for c in &missing {
        let null = match typed(c) {
            DataType::Int64 => ScalarValue::Int64(None),
            _ => ScalarValue::Utf8(None),
        };
        df = df.with_column(c, lit(null)).map_err(query)?;
    }
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = super::conform(&schema, df.collect().await.map_err(query)?)?;
    tables.register(ctx, &input.table, schema, batches).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn source(name: &str, header: &str, sql: &str) -> Query {
        catalog::parse_kind(
            Path::new(&format!("queries/sources/{name}.sql")),
            &format!("-- name: {name}\n{header}\n{sql}\n"),
            Kind::Source,
        )
        .expect("parses")
    }

    /// A query's result as a printed table.
    async fn table_text(ctx: &SessionContext, sql: &str) -> String {
        let rows = ctx
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        arrow::util::pretty::pretty_format_batches(&rows)
            .expect("fmt")
            .to_string()
    }

    #[tokio::test]
    async fn absent_inputs_and_missing_columns_plan_as_empty_and_null() {
        let lake = crate::lake::Lake::in_memory().expect("lake");
        let ctx = SessionContext::new();
        let tables = Tables {
            lake,
            staging: None,
        };
        // a raw table that exists but never carried `category`
        ctx.sql("CREATE TABLE raw_books AS SELECT 'b1' AS _id, 'Dune' AS title")
            .await
            .expect("create")
            .collect()
            .await
            .expect("run");
        let books = source(
            "books",
            "-- input: raw_books(_id, title, category)",
            "SELECT CAST(_id AS VARCHAR) AS book_id, title, category FROM raw_books",
        );
        let users = source(
            "users",
            "-- input: raw_users(id, name)",
            "SELECT CAST(id AS VARCHAR) AS user_id, name FROM raw_users",
        );
        let names = register(&ctx, &tables, &[users, books], &[])
            .await
            .expect("registered");
        assert_eq!(names, vec!["books", "users"]);
        let text = table_text(
            &ctx,
            "SELECT book_id, title, category IS NULL AS c FROM books",
        )
        .await;
        assert!(text.contains("| b1      | Dune  | true |"), "{text}");
        let users = ctx.table("users").await.expect("users");
        let fields: Vec<String> = users
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(fields, vec!["user_id", "name"]);
        assert_eq!(users.count().await.expect("count"), 0);
    }

    /// The shipped books view groups editions into works: a bracketed suffix, case,
    /// punctuation and the author's initials do not matter; a book without a title is a
    /// work of its own.
    #[tokio::test]
    async fn the_shipped_books_view_groups_editions_into_works() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/sources/books.sql");
        let text = std::fs::read_to_string(&path).expect("books.sql");
        let books = catalog::parse_kind(&path, &text, Kind::Source).expect("parses");
        let ctx = SessionContext::new();
        let tables = Tables {
            lake: crate::lake::Lake::in_memory().expect("lake"),
            staging: None,
        };
        ctx.sql(
            "CREATE TABLE book_db_mongo_books AS SELECT * FROM (VALUES \
             ('0439064872', 'Harry Potter and the Chamber of Secrets (Book 2)', 'J. K. Rowling'), \
             ('0439064864', 'Harry Potter and the Chamber of Secrets', 'J.K. Rowling'), \
             ('043965548X', 'Harry Potter and the Prisoner of Azkaban (Book 3)', 'J. K. Rowling'), \
             ('0441172717', 'Dune', 'Frank Herbert'), \
             ('x1', NULL, 'Anon'), ('x2', NULL, 'Anon')) AS v(_id, title, author)",
        )
        .await
        .expect("create")
        .collect()
        .await
        .expect("run");
        register(&ctx, &tables, &[books], &[])
            .await
            .expect("registered");
        let text = table_text(&ctx, "SELECT book_id, work_id FROM books ORDER BY book_id").await;
        for line in [
            "| 0439064864 | harry potter and the chamber of secrets|rowling  |",
            "| 0439064872 | harry potter and the chamber of secrets|rowling  |",
            "| 043965548X | harry potter and the prisoner of azkaban|rowling |",
            "| 0441172717 | dune|herbert                                     |",
            "| x1         | x1                                               |",
            "| x2         | x2                                               |",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[tokio::test]
    async fn undeclared_reads_and_cycles_name_the_file() {
        let ctx = SessionContext::new();
        let bad = source(
            "books",
            "-- input: raw_books(_id)",
            "SELECT _id AS book_id FROM raw_books\nJOIN events USING (_id)",
        );
        let e = ordered(&ctx, std::slice::from_ref(&bad), &[]).expect_err("undeclared");
        let text = e.to_string();
        assert!(
            text.contains("queries/sources/books.sql:4: events is neither a declared input"),
            "{text}"
        );
        // a CDC table of the same name wins: the source is skipped, not an error
        let bad = [bad];
        let skipped = ordered(&ctx, &bad, &["books".to_string()]).expect("skipped");
        assert!(skipped.is_empty());
        let a = source("a", "-- input: raw(x)", "SELECT * FROM b");
        let b = source("b", "-- input: raw(x)", "SELECT * FROM a");
        let e = ordered(&ctx, &[a, b], &[]).expect_err("cycle");
        assert!(e.to_string().contains("dependency cycle"), "{e}");
    }
}
