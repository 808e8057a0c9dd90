//! `bookrec docs`: a static HTML site of the analysts' SQL — one page per feature and per
//! source view (description, parameters, columns and types, data tests, upstream and
//! downstream, the last runs' rows and seconds, the SQL), and an index with the lineage graph
//! raw tables → source views → features → model → realtime features — written to a folder
//! and optionally served.
//!
//! Columns come from planning every query on the lake (as `bookrec check`: an empty lake is
//! enough), upstream from the tables each query reads, the runs from the lake's run records
//! (`features/_runs/`). A realtime query's inputs are the known tables its SQL names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::runner::{CheckReport, RunError};
use crate::lake::Lake;
use crate::sql::catalog::{self, Kind, Query};

#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("docs: serving {addr}: {reason}")]
    Serve { addr: String, reason: String },
}

/// What `bookrec docs` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocsReport {
    pub dir: PathBuf,
    pub pages: usize,
    pub features: usize,
    pub runs: usize,
}

/// The model step's node: what it reads and what it publishes.
const MODEL: &str = "als";
const MODEL_LISTS: [&str; 2] = ["similar_books", "popular_books"];

/// One run's figures for a feature.
struct RunLine {
    run_id: String,
    status: String,
    rows: Option<u64>,
    seconds: Option<f64>,
    tests: Option<(usize, usize)>,
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The graph: node → (column, page link relative to the site root).
struct Graph {
    nodes: BTreeMap<String, (usize, Option<String>)>,
    /// (from, to)
    edges: BTreeSet<(String, String)>,
}

impl Graph {
    fn upstream(&self, n: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|(_, t)| t == n)
            .map(|(f, _)| f.as_str())
            .collect()
    }
    fn downstream(&self, n: &str) -> Vec<&str> {
        self.edges
            .iter()
            .filter(|(f, _)| f == n)
            .map(|(_, t)| t.as_str())
            .collect()
    }
    /// A link to `n` from a page `depth` folders below the root, or its name.
    fn link(&self, n: &str, depth: usize) -> String {
        match self.nodes.get(n).and_then(|(_, l)| l.as_ref()) {
            Some(href) => format!(
                "<a href=\"{}{}\">{}</a>",
                "../".repeat(depth),
                esc(href),
                esc(n)
            ),
            None => format!("<code>{}</code>", esc(n)),
        }
    }
}

/// The words of `sql` outside `--` comments.
fn words_of(sql: &str) -> BTreeSet<String> {
    let code: String = sql
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    code.to_ascii_lowercase()
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn graph(check: &CheckReport, realtime: &[Query]) -> Graph {
    let mut g = Graph {
        nodes: BTreeMap::new(),
        edges: BTreeSet::new(),
    };
    for name in &check.order {
        let (col, dir) = if check.sources.contains(name) {
            (1, "sources")
        } else {
            (2, "features")
        };
        g.nodes
            .insert(name.clone(), (col, Some(format!("{dir}/{name}.html"))));
    }
    for (name, reads) in &check.reads {
        for r in reads {
            g.nodes.entry(r.clone()).or_insert((0, None));
            g.edges.insert((r.clone(), name.clone()));
        }
    }
    if g.nodes.contains_key(super::publish::INPUT) {
        g.nodes.insert(MODEL.into(), (3, None));
        g.edges
            .insert((super::publish::INPUT.to_string(), MODEL.to_string()));
        for l in MODEL_LISTS {
            g.nodes.insert(l.into(), (3, None));
            g.edges.insert((MODEL.to_string(), l.to_string()));
        }
    }
    let known: Vec<String> = g.nodes.keys().cloned().collect();
    for q in realtime {
        let node = format!("realtime:{}", q.name);
        g.nodes.insert(node.clone(), (4, None));
        let words = words_of(&q.sql);
        let mut read_any = false;
        for k in &known {
            if words.contains(k) {
                g.edges.insert((k.clone(), node.clone()));
                read_any = true;
            }
        }
        if !read_any || words.contains("events") {
            g.nodes.entry("events".into()).or_insert((0, None));
            g.edges.insert(("events".into(), node));
        }
    }
    g
}

/// The lineage graph as inline SVG: a column per stage, a box per node (a link when it has
/// a page), an edge per read.
fn svg(g: &Graph) -> String {
    const W: usize = 240;
    const H: usize = 26;
    const GAP_X: usize = 60;
    const GAP_Y: usize = 12;
    let mut pos: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut rows = [0usize; 5];
    for (n, (col, _)) in &g.nodes {
        let c = (*col).min(4);
        pos.insert(n, (20 + c * (W + GAP_X), 40 + rows[c] * (H + GAP_Y)));
        rows[c] += 1;
    }
    let height = 60 + rows.iter().max().copied().unwrap_or(1) * (H + GAP_Y);
    let width = 40 + 5 * (W + GAP_X);
    let mut out = format!(
        "<svg id=\"lineage\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" \
         height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
         aria-label=\"lineage: raw tables, sources, features, model, realtime\">"
    );
    for (c, title) in [
        "raw tables",
        "source views",
        "features",
        "model",
        "realtime",
    ]
    .iter()
    .enumerate()
    {
        let _ = write!(
            out,
            "<text class=\"stage\" x=\"{}\" y=\"22\">{title}</text>",
            20 + c * (W + GAP_X)
        );
    }
    for (f, t) in &g.edges {
        if let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(f.as_str()), pos.get(t.as_str())) {
            let (sx, sy, ex, ey) = (x1 + W, y1 + H / 2, x2, y2 + H / 2);
            let mid = (sx + ex) / 2;
            let _ = write!(
                out,
                "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" \
                 d=\"M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}\"/>",
                esc(f),
                esc(t)
            );
        }
    }
    for (n, (_, link)) in &g.nodes {
        let Some(&(x, y)) = pos.get(n.as_str()) else {
            continue;
        };
        let label = n.strip_prefix("realtime:").unwrap_or(n);
        let node = format!(
            "<g class=\"node\" data-name=\"{}\"><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" \
             height=\"{H}\" rx=\"5\"/><text x=\"{}\" y=\"{}\">{}</text></g>",
            esc(n),
            x + 8,
            y + 17,
            esc(label)
        );
        match link {
            Some(href) => {
                let _ = write!(out, "<a href=\"{}\">{node}</a>", esc(href));
            }
            None => out.push_str(&node),
        }
    }
    out.push_str("</svg>");
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}\
th{background:#f3f3f3}pre{background:#f6f8fa;padding:1rem;overflow:auto}code{background:#f3f3f3;padding:0 .2rem}\
#lineage rect{fill:#eef4ff;stroke:#5577aa}#lineage text{font-size:12px}#lineage .stage{font-weight:bold}\
#lineage .edge{fill:none;stroke:#99a;stroke-width:1.2}#lineage a rect{fill:#dde9ff}\
.fail{color:#a00}.warn{color:#a60}nav a{margin-right:1rem}";

fn page(title: &str, depth: usize, body: &str) -> String {
    let up = "../".repeat(depth);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} — bookrec docs</title><link rel=\"stylesheet\" href=\"{up}style.css\"></head>\
         <body><nav><a href=\"{up}index.html\">bookrec docs</a></nav>{body}</body></html>\n",
        esc(title)
    )
}

fn runs_of(records: &[serde_json::Value], name: &str) -> Vec<RunLine> {
    records
        .iter()
        .filter_map(|r| {
            let out = r["outputs"]
                .as_array()?
                .iter()
                .find(|o| o["name"] == name)
                .cloned();
            let failed_here = r["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("of {name} failed")));
            if out.is_none() && !failed_here {
                return None;
            }
            let tests = out
                .as_ref()
                .and_then(|o| o["tests"].as_array())
                .map(|t| (t.iter().filter(|x| x["passed"] == true).count(), t.len()));
            Some(RunLine {
                run_id: r["run_id"].as_str().unwrap_or("?").to_string(),
                status: if failed_here {
                    "tests failed".into()
                } else {
                    r["status"].as_str().unwrap_or("?").to_string()
                },
                rows: out.as_ref().and_then(|o| o["rows"].as_u64()),
                seconds: out.as_ref().and_then(|o| o["seconds"].as_f64()),
                tests,
            })
        })
        .collect()
}

fn columns_table(cols: Option<&Vec<(String, String, bool)>>) -> String {
    let mut out = String::from(
        "<h2>Columns</h2><table class=\"columns\"><tr><th>column</th><th>type</th>\
         <th>nullable</th></tr>",
    );
    for (n, t, null) in cols.into_iter().flatten() {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(n),
            esc(t),
            if *null { "yes" } else { "no" }
        );
    }
    out.push_str("</table>");
    out
}

fn neighbours(g: &Graph, name: &str) -> String {
    let list = |ns: Vec<&str>| {
        if ns.is_empty() {
            "—".to_string()
        } else {
            ns.iter()
                .map(|n| g.link(n, 1))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "<h2>Lineage</h2><p>Upstream: <span class=\"upstream\">{}</span></p>\
         <p>Downstream: <span class=\"downstream\">{}</span></p>",
        list(g.upstream(name)),
        list(
            g.downstream(name)
                .into_iter()
                .map(|n| n.strip_prefix("realtime:").unwrap_or(n))
                .collect()
        )
    )
}

fn feature_page(q: &Query, check: &CheckReport, g: &Graph, runs: &[serde_json::Value]) -> String {
    let mut b = format!(
        "<h1>{}</h1><p class=\"description\">{}</p><p>File <code>{}</code>; output {}{}{}</p>",
        esc(&q.name),
        esc(&q.description),
        esc(&q.path.display().to_string()),
        match (q.outputs.lake, q.outputs.db) {
            (true, true) => "lake and DB",
            (true, false) => "lake",
            (false, true) => "DB",
            _ => "none",
        },
        if q.keys.is_empty() {
            String::new()
        } else {
            format!("; keys <code>{}</code>", esc(&q.keys.join(", ")))
        },
        if q.tags.is_empty() {
            String::new()
        } else {
            format!("; tags <code>{}</code>", esc(&q.tags.join(", ")))
        },
    );
    b.push_str("<h2>Parameters</h2>");
    if q.params.is_empty() {
        b.push_str("<p>none (only <code>${as_of}</code>)</p>");
    } else {
        b.push_str("<table class=\"params\"><tr><th>parameter</th><th>default</th></tr>");
        for (p, d) in &q.params {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                esc(p),
                esc(d)
            );
        }
        b.push_str("</table>");
    }
    b.push_str(&columns_table(check.columns.get(&q.name)));
    b.push_str("<h2>Data tests</h2>");
    if q.tests.is_empty() {
        b.push_str("<p>none</p>");
    } else {
        b.push_str("<table class=\"tests\"><tr><th>test</th><th>severity</th><th>line</th></tr>");
        for t in &q.tests {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{:?}</td><td>{}</td></tr>",
                esc(&t.text),
                t.severity,
                t.line
            );
        }
        b.push_str("</table>");
    }
    b.push_str(&neighbours(g, &q.name));
    b.push_str("<h2>Last runs</h2>");
    let lines = runs_of(runs, &q.name);
    if lines.is_empty() {
        b.push_str("<p>no run recorded in the lake yet</p>");
    } else {
        b.push_str(
            "<table class=\"runs\"><tr><th>run</th><th>status</th><th>rows</th>\
             <th>seconds</th><th>tests passed</th></tr>",
        );
        for l in lines {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.run_id),
                esc(&l.status),
                l.rows.map_or("—".into(), |r| r.to_string()),
                l.seconds.map_or("—".into(), |s| format!("{s:.2}")),
                l.tests.map_or("—".into(), |(p, n)| format!("{p}/{n}"))
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(b, "<h2>SQL</h2><pre>{}</pre>", esc(&q.sql));
    page(&q.name, 1, &b)
}

fn source_page(q: &Query, check: &CheckReport, g: &Graph) -> String {
    let mut b = format!(
        "<h1>{} <small>(source view)</small></h1><p class=\"description\">{}</p>\
         <p>File <code>{}</code></p><h2>Raw inputs</h2><ul>",
        esc(&q.name),
        esc(&q.description),
        esc(&q.path.display().to_string())
    );
    for i in &q.inputs {
        let _ = write!(
            b,
            "<li><code>{}</code>: {}</li>",
            esc(&i.table),
            esc(&i.columns.join(", "))
        );
    }
    b.push_str("</ul>");
    b.push_str(&columns_table(check.columns.get(&q.name)));
    b.push_str(&neighbours(g, &q.name));
    let _ = write!(b, "<h2>SQL</h2><pre>{}</pre>", esc(&q.sql));
    page(&q.name, 1, &b)
}

/// The lake's newest run records (`features/_runs/*.json`), newest first.
async fn recent_runs(lake: &Lake, n: usize) -> Vec<serde_json::Value> {
    let Ok(mut files) = lake.list("features/_runs").await else {
        return Vec::new();
    };
    files.sort_by(|a, b| b.location.as_ref().cmp(a.location.as_ref()));
    let mut out = Vec::new();
    for f in files.iter().take(n) {
        let rel = f.location.as_ref();
        let rel = rel
            .find("features/_runs/")
            .map_or(rel, |i| &rel[i..])
            .to_string();
        if let Ok(bytes) = lake.get(&rel).await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            out.push(v);
        }
    }
    out
}

fn write(dir: &Path, rel: &str, text: &str) -> Result<(), DocsError> {
    let path = dir.join(rel);
    let io = |source| DocsError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(&path, text).map_err(io)
}

/// Writes the site for the features of `batch_dir` and the realtime queries of
/// `realtime_dir` into `out`.
pub async fn build(
    lake: &Lake,
    batch_dir: &Path,
    realtime_dir: &Path,
    out: &Path,
) -> Result<DocsReport, DocsError> {
    let check = super::runner::check(lake, batch_dir).await?;
    let realtime = if realtime_dir.is_dir() {
        catalog::load_dir_kind(realtime_dir, Kind::Realtime).map_err(RunError::Catalog)?
    } else {
        Vec::new()
    };
    let g = graph(&check, &realtime);
    let runs = recent_runs(lake, 10).await;
    write(out, "style.css", CSS)?;
    let mut pages = 1;
    let mut features = 0;
    for name in &check.order {
        let Some(q) = check.queries.get(name) else {
            continue;
        };
        if check.sources.contains(name) {
            write(
                out,
                &format!("sources/{name}.html"),
                &source_page(q, &check, &g),
            )?;
        } else {
            write(
                out,
                &format!("features/{name}.html"),
                &feature_page(q, &check, &g, &runs),
            )?;
            features += 1;
        }
        pages += 1;
    }
    // the index: lineage, features, sources, realtime
    let mut b = String::from("<h1>bookrec: features and lineage</h1>");
    let _ = write!(
        b,
        "<p>{} features, {} source views, {} realtime features; generated {} from \
         <code>{}</code>.</p>{}",
        features,
        check.sources.len(),
        realtime.len(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        esc(&batch_dir.display().to_string()),
        svg(&g)
    );
    b.push_str(
        "<h2>Features</h2><table id=\"features\"><tr><th>feature</th><th>description</th>\
         <th>tags</th><th>tests</th><th>last run rows</th><th>seconds</th></tr>",
    );
    for name in check.order.iter().filter(|n| !check.sources.contains(n)) {
        let Some(q) = check.queries.get(name) else {
            continue;
        };
        let last = runs_of(&runs, name).into_iter().next();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            g.link(name, 0),
            esc(&q.description),
            esc(&q.tags.join(", ")),
            q.tests.len(),
            last.as_ref()
                .and_then(|l| l.rows)
                .map_or("—".into(), |r| r.to_string()),
            last.as_ref()
                .and_then(|l| l.seconds)
                .map_or("—".into(), |s| format!("{s:.2}"))
        );
    }
    b.push_str("</table><h2>Source views</h2><ul>");
    for s in &check.sources {
        let _ = write!(b, "<li>{}</li>", g.link(s, 0));
    }
    b.push_str(
        "</ul><h2>Realtime features</h2><table id=\"realtime\"><tr><th>feature</th>\
                <th>description</th><th>sink</th></tr>",
    );
    for q in &realtime {
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&q.name),
            esc(&q.description),
            esc(q.sink.get("sink").map_or("", |(v, _)| v.as_str()))
        );
    }
    b.push_str("</table>");
    write(out, "index.html", &page("features and lineage", 0, &b))?;
    Ok(DocsReport {
        dir: out.to_path_buf(),
        pages,
        features,
        runs: runs.len(),
    })
}

/// Serves `dir` (the site) on `listener` until `cancel`.
pub async fn serve(
    dir: PathBuf,
    listener: tokio::net::TcpListener,
    cancel: CancellationToken,
) -> Result<(), DocsError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let app = axum::Router::new().fallback_service(
        tower_http::services::ServeDir::new(&dir).append_index_html_on_directories(true),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(|e| DocsError::Serve {
            addr,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn realtime_reads_are_the_known_tables_its_sql_names() {
        let w = words_of(
            "SELECT b.category -- not users\nFROM events e JOIN books b ON e.book_id = b.book_id",
        );
        assert!(w.contains("events") && w.contains("books") && !w.contains("users"));
    }
}
