//! `bookrec eval --replay`: the lift of the realtime path, measured on a temporal replay.
//!
//! A ratings file of `scripts/fetch-datasets` is cut in time: ALS trains on everything
//! before the cut-off (with its similar and popular lists, as `bookrec batch` publishes
//! them); the later events are then replayed in time order through the shipped realtime
//! queries — the stream's own SQL and sinks ([`crate::realtime::apply_events`]) into an
//! in-process store whose clock is the replay's — and before each held-out interaction the
//! user's top `k` is asked of each recommender:
//!
//! - `popularity`: the most interacted-with books before the cut-off;
//! - `als`: the user's offline list (empty for a user the model does not know);
//! - `realtime`: the realtime list alone (`rec:rt:<user>`, `similar_to_recent.sql`);
//! - `blend`: what `bookrec serve` answers, without fold-in (`serve::blend` over the same
//!   signals: the offline list, similar books of recent views, trending, category interest,
//!   the realtime list, popular books for a user without a list);
//! - `blend+fold_in`: the same with fold-in for users the model does not know.
//!
//! A target is an interaction with a book the user has not interacted with before (in
//! training or earlier in the replay); every list leaves out such seen books before its
//! top `k` is scored. HR@k (the share of targets found in the top k), NDCG@k (one over
//! log2 of the hit's rank plus one), MRR@k and catalogue coverage, for all users and for
//! the users the model does not know.
//!
//! Events are applied in micro-batches in which no user appears twice, so each request sees
//! every earlier event of its user (as a stream that keeps up would), while events of other
//! users may be up to one batch behind. Book-Crossing has no times: its rows are given times
//! in a seeded random order that keeps each user's own order, so that known and unknown
//! users both act after the cut-off.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use chrono::DateTime;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::als::recommend::{recommend_all, similar_items};
use crate::als::{FoldIn, IdMap, Interactions, Triple};
use crate::config::{BlendWeights, Config};
use crate::event::Event;
use crate::features::{FeatureStore, MemoryStore, Read, Span};
use crate::replay::{Dataset, Interaction};
use crate::serve::blend::{self, Signals, UserState};
use crate::store::Ranked;

#[derive(Debug, thiserror::Error)]
pub enum LiftError {
    #[error(transparent)]
    Replay(#[from] crate::replay::ReplayError),
    #[error("{path}: {reason}")]
    Catalogue { path: PathBuf, reason: String },
    #[error("replay: {0}")]
    Split(String),
    #[error(transparent)]
    Als(#[from] crate::als::AlsError),
    #[error(transparent)]
    Stream(#[from] crate::realtime::StreamError),
    #[error(transparent)]
    Features(#[from] crate::features::FeaturesError),
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error("replay: the session: {0}")]
    Session(#[from] datafusion::error::DataFusionError),
}

/// What `bookrec eval --replay` is asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// `ratings.csv` of scripts/fetch-datasets (MovieLens or Book-Crossing); the catalogue
    /// (`items.csv` or `books.csv`) is read beside it for categories
    pub ratings: PathBuf,
    /// the newest share of events replayed (the rest trains the model)
    pub test_fraction: f64,
    pub k: usize,
    /// events per micro-batch, at most
    pub max_batch: usize,
    /// the blend's weights (`serve.weights`)
    pub weights: BlendWeights,
}

/// The recommenders compared, in report order.
pub const RECOMMENDERS: [&str; 5] = ["popularity", "als", "realtime", "blend", "blend+fold_in"];

/// One recommender's scores on one group of users.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub recommender: String,
    /// `all` or `unknown` (users the model was not trained on)
    pub users: String,
    pub targets: u64,
    pub hr: f64,
    pub ndcg: f64,
    pub mrr: f64,
    pub coverage: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: String,
    pub k: usize,
    pub cutoff: String,
    pub train_events: usize,
    pub replayed_events: usize,
    pub batches: usize,
    pub known_users: usize,
    pub books: usize,
    pub rows: Vec<Row>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: trained on {} events before {}, replayed {} in {} micro-batches; {} books",
            self.dataset,
            self.train_events,
            self.cutoff,
            self.replayed_events,
            self.batches,
            self.books
        )?;
        let k = self.k;
        writeln!(
            f,
            "| recommender | users | targets | HR@{k} | NDCG@{k} | MRR@{k} | coverage |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                r.recommender, r.users, r.targets, r.hr, r.ndcg, r.mrr, r.coverage
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Score {
    targets: u64,
    hits: u64,
    ndcg: f64,
    rr: f64,
    shown: HashSet<String>,
}

impl Score {
    fn add(&mut self, list: &[String], target: &str) {
        self.targets += 1;
        if let Some(pos) = list.iter().position(|b| b == target) {
            self.hits += 1;
            self.ndcg += 1.0 / (pos as f64 + 2.0).log2();
            self.rr += 1.0 / (pos as f64 + 1.0);
        }
        self.shown.extend(list.iter().cloned());
    }

    fn row(&self, recommender: &str, users: &str, books: usize) -> Row {
        let n = self.targets.max(1) as f64;
        Row {
            recommender: recommender.to_owned(),
            users: users.to_owned(),
            targets: self.targets,
            hr: self.hits as f64 / n,
            ndcg: self.ndcg / n,
            mrr: self.rr / n,
            coverage: self.shown.len() as f64 / books.max(1) as f64,
        }
    }
}

/// book → category from the catalogue beside `ratings`: MovieLens `items.csv` (the first
/// genre), Book-Crossing `books.csv` (the publisher, as `bookrec demo` does).
fn categories(dataset: Dataset, ratings: &Path) -> Result<HashMap<String, String>, LiftError> {
    let dir = ratings.parent().unwrap_or(Path::new("."));
    let (file, id, cat) = match dataset {
        Dataset::MovieLens => ("items.csv", "item_id", "genres"),
        Dataset::BookCrossing => ("books.csv", "isbn", "publisher"),
    };
    let path = dir.join(file);
    let bad = |reason: String| LiftError::Catalogue {
        path: path.clone(),
        reason,
    };
    let (reader, at) = crate::replay::text_csv(&path, &[id, cat])?;
    let (id_at, cat_at) = (at[0], at[1]);
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let (ids, cats) = (
            batch.column(id_at).as_string::<i32>(),
            batch.column(cat_at).as_string::<i32>(),
        );
        for r in 0..batch.num_rows() {
            if ids.is_null(r) || cats.is_null(r) {
                continue;
            }
            let c = cats.value(r).split('|').next().unwrap_or("").trim();
            if !c.is_empty() {
                out.insert(ids.value(r).to_owned(), c.to_owned());
            }
        }
    }
    Ok(out)
}

/// The interactions in replay order: by time (MovieLens), or for Book-Crossing, whose rows
/// have no time, in a seeded random interleaving that keeps each user's own order.
fn in_time_order(dataset: Dataset, mut its: Vec<Interaction>) -> Vec<Interaction> {
    if dataset == Dataset::BookCrossing {
        let mut slots: Vec<usize> = (0..its.len()).collect();
        slots.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
        // the users' rows are contiguous in the file: each user's k-th row takes the k-th
        // smallest of the user's random slots
        let mut by_user: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, it) in its.iter().enumerate() {
            by_user.entry(it.user_id.clone()).or_default().push(i);
        }
        let base = its.first().map_or(0, |i| i.ts.timestamp());
        for rows in by_user.values() {
            let mut mine: Vec<usize> = rows.iter().map(|&r| slots[r]).collect();
            mine.sort_unstable();
            for (&r, s) in rows.iter().zip(mine) {
                its[r].ts = DateTime::from_timestamp(base + s as i64, 0).unwrap_or_default();
            }
        }
    }
    its.sort_by(|a, b| a.ts.cmp(&b.ts).then(a.row.cmp(&b.row)));
    its
}

/// The lists a model version publishes, kept in memory.
struct Model {
    /// user → the offline list
    users: HashMap<String, Arc<Vec<Ranked>>>,
    similar: HashMap<String, Arc<Vec<Ranked>>>,
    /// category (`""`: all) → popular books
    popular: HashMap<String, Arc<Vec<Ranked>>>,
    fold_in: FoldIn,
    /// user → books seen in training
    seen: HashMap<String, HashSet<String>>,
}

fn train(
    train: &[Interaction],
    category: &HashMap<String, String>,
    params: &crate::als::Params,
    pool: usize,
    similar_k: usize,
) -> Result<Model, LiftError> {
    let mut data = Interactions::default();
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for it in train {
        let (user, item) = (
            data.users.intern(&it.user_id),
            data.items.intern(&it.book_id),
        );
        data.triples.push(Triple {
            user,
            item,
            weight: 1.0,
        });
        seen.entry(it.user_id.clone())
            .or_default()
            .insert(it.book_id.clone());
    }
    let matrix = data.matrix();
    let model = crate::als::fit(&matrix, params, &mut |_| {})?;
    let ranked = |ids: &IdMap, lists: Vec<Vec<crate::als::recommend::Scored>>| {
        lists
            .into_iter()
            .enumerate()
            .map(|(k, list)| {
                let items = list
                    .into_iter()
                    .map(|s| Ranked {
                        item: data.items.id(s.item).to_owned(),
                        score: f64::from(s.score),
                    })
                    .collect();
                (ids.id(k as u32).to_owned(), Arc::new(items))
            })
            .collect::<HashMap<_, _>>()
    };
    let users = ranked(&data.users, recommend_all(&model, &matrix, pool));
    let all: Vec<u32> = (0..data.items.len() as u32).collect();
    let similar = ranked(&data.items, similar_items(&model, &all, similar_k));
    let mut count: HashMap<&str, f64> = HashMap::new();
    for it in train {
        *count.entry(it.book_id.as_str()).or_default() += 1.0;
    }
    let mut by_cat: HashMap<String, Vec<Ranked>> = HashMap::new();
    for (book, n) in &count {
        let r = Ranked {
            item: (*book).to_owned(),
            score: *n,
        };
        by_cat.entry(String::new()).or_default().push(r.clone());
        if let Some(c) = category.get(*book) {
            by_cat.entry(c.clone()).or_default().push(r);
        }
    }
    let popular = by_cat
        .into_iter()
        .map(|(c, mut v)| {
            v.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| a.item.cmp(&b.item))
            });
            v.truncate(pool);
            (c, Arc::new(v))
        })
        .collect();
    let fold_in = FoldIn::new(
        data.items.ids().to_vec(),
        model.item_factors.clone(),
        model.factors,
        params.alpha,
        params.regularization,
        params.regularization_scaling,
    )?;
    Ok(Model {
        users,
        similar,
        popular,
        fold_in,
        seen,
    })
}

/// A table of string columns (and the books' schema's other columns as nulls) in memory.
fn register(
    ctx: &SessionContext,
    name: &str,
    schema: arrow::datatypes::SchemaRef,
    columns: Vec<arrow::array::ArrayRef>,
) -> Result<(), LiftError> {
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| LiftError::Split(format!("table {name}: {e}")))?;
    ctx.register_table(
        name,
        Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
    )?;
    Ok(())
}

/// The session the realtime queries run in: `books` (ids and categories), and the model's
/// `similar_books` and `popular_books`.
fn session(model: &Model, category: &HashMap<String, String>) -> Result<SessionContext, LiftError> {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, new_null_array};
    let ctx = SessionContext::new_with_config(crate::sql::session_config()?);
    let schema = crate::sql::books_schema();
    let ids: Vec<&String> = category.keys().collect();
    let n = ids.len();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "book_id" => Arc::new(StringArray::from_iter_values(ids.iter())) as ArrayRef,
            "category" => Arc::new(StringArray::from_iter_values(
                ids.iter().map(|b| &category[*b]),
            )),
            _ => new_null_array(f.data_type(), n),
        })
        .collect();
    register(&ctx, "books", schema, columns)?;
    for (name, key, item, lists) in [
        (
            "similar_books",
            "book_id",
            "similar_book_id",
            &model.similar,
        ),
        ("popular_books", "category", "book_id", &model.popular),
    ] {
        let rows: Vec<(&String, usize, &Ranked)> = lists
            .iter()
            .flat_map(|(k, v)| v.iter().enumerate().map(move |(p, r)| (k, p + 1, r)))
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.1 as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.2.item),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.2.score),
            )),
        ];
        register(
            &ctx,
            name,
            crate::lake::ranked_list_schema(key, item),
            columns,
        )?;
    }
    Ok(ctx)
}

/// Micro-batches of `events` in order, none holding a user twice, at most `max` each.
fn batches(events: Vec<Event>, max: usize) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    let mut users: HashSet<String> = HashSet::new();
    let mut current = Vec::new();
    for e in events {
        let user = e.user_id.clone().unwrap_or_default();
        if current.len() >= max.max(1) || users.contains(&user) {
            out.push(std::mem::take(&mut current));
            users.clear();
        }
        users.insert(user);
        current.push(e);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Trending books at `now_ms`: book heat summed over the window's minute buckets (as
/// `serve` computes it), the top 50.
async fn trending(
    store: &dyn FeatureStore,
    now_ms: i64,
    minutes: u32,
    cutoff_ms: i64,
) -> Result<Vec<(String, f64)>, LiftError> {
    let keys: Vec<String> = crate::serve::buckets(now_ms, minutes, 0, cutoff_ms)
        .iter()
        .map(|b| format!("rt:heat:{b}"))
        .collect();
    let reads: Vec<Read> = keys.iter().map(|k| Read::Top(k, 10_000)).collect();
    let mut sum: HashMap<String, f64> = HashMap::new();
    for r in store.read_many(&reads).await? {
        for (b, n) in r.scores {
            *sum.entry(b).or_default() += n;
        }
    }
    let mut v: Vec<(String, f64)> = sum.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(50);
    Ok(v)
}

/// A user's realtime state at `now_ms` (the keys `serve` reads).
async fn user_state(
    store: &dyn FeatureStore,
    user: &str,
    now_ms: i64,
    minutes: u32,
    cutoff_ms: i64,
    pool: usize,
) -> Result<UserState, LiftError> {
    let (recent, owned) = (format!("rt:recent:{user}"), format!("rt:owned:{user}"));
    let (list, why) = blend::realtime_list_keys(user);
    let cats: Vec<String> = crate::serve::buckets(now_ms, minutes, 0, cutoff_ms)
        .iter()
        .map(|b| format!("rt:cat:{user}:{b}"))
        .collect();
    let mut reads = vec![
        Read::Top(&recent, 50),
        Read::Top(&owned, 500),
        Read::Top(&list, pool),
        Read::Texts(&why),
    ];
    reads.extend(cats.iter().map(|k| Read::Hash(k)));
    let mut got = store.read_many(&reads).await?.into_iter();
    let mut next = || got.next().unwrap_or_default();
    let (recent, owned, list, why) = (next().scores, next().scores, next().scores, next().texts);
    let why: HashMap<String, String> = why.into_iter().collect();
    Ok(UserState {
        recent,
        owned,
        list: list
            .into_iter()
            .map(|(b, s)| {
                let r = why.get(&b).cloned().unwrap_or_default();
                (b, s, r)
            })
            .collect(),
        cats: got.map(|r| r.scores).collect(),
    })
}

/// Runs the replay evaluation; `progress` gets a line now and then.
pub async fn run(
    cfg: &Config,
    params: &crate::als::Params,
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, LiftError> {
    if !(opts.test_fraction > 0.0 && opts.test_fraction < 1.0) {
        return Err(LiftError::Split(format!(
            "--test-fraction {}: between 0 and 1",
            opts.test_fraction
        )));
    }
    let (dataset, its) = crate::replay::load(&opts.ratings, 0, None)?;
    let category = categories(dataset, &opts.ratings)?;
    let its = in_time_order(dataset, its);
    let cut = ((1.0 - opts.test_fraction) * its.len() as f64) as usize;
    let Some(cutoff) = its.get(cut).map(|i| i.ts) else {
        return Err(LiftError::Split(format!(
            "{}: too few rows",
            opts.ratings.display()
        )));
    };
    // everything before the cut-off time trains (ties go to the replay)
    let cut = its.partition_point(|i| i.ts < cutoff);
    let (before, after) = its.split_at(cut);
    let cutoff_ms = cutoff.timestamp_millis();
    let pool = cfg.publish.k.max(opts.k);
    progress(&format!(
        "[replay] training ALS on {} events before {cutoff}",
        before.len()
    ));
    let model = {
        let (before, category, params) = (before.to_vec(), category.clone(), params.clone());
        let similar_k = cfg.publish.similar_k;
        tokio::task::spawn_blocking(move || train(&before, &category, &params, pool, similar_k))
            .await
            .map_err(|e| LiftError::Split(e.to_string()))??
    };
    let ctx = session(&model, &category)?;
    let features = crate::realtime::load(&cfg.stream.queries_dir, &ctx).await?;
    let clock = Arc::new(AtomicI64::new(cutoff_ms));
    let store = MemoryStore::with_clock(clock.clone());
    let mut events = Vec::with_capacity(after.len());
    for it in after {
        let raw = crate::replay::client_event(dataset, it);
        // a row the contract refuses is left out of the replay, as the collector would
        if let Ok(mut e) = crate::event::validate(raw, it.ts) {
            e.event_ts = it.ts;
            events.push(e);
        }
    }
    let replayed = events.len();
    let batches = batches(events, opts.max_batch);
    progress(&format!(
        "[replay] replaying {replayed} events in {} micro-batches",
        batches.len()
    ));
    let serve = &cfg.serve;
    let ask = blend::Ask {
        context_book: None,
        category: None,
        cutoff_ms,
        recent_views: serve.recent_views,
        fold_in_weights: (
            serve.fold_in_view_weight as f32,
            serve.fold_in_owned_weight as f32,
        ),
    };
    let no_fold_in = BlendWeights {
        fold_in: 0.0,
        ..opts.weights
    };
    let mut scores: HashMap<(&str, bool), Score> = HashMap::new();
    let mut seen_now: HashMap<String, HashSet<String>> = HashMap::new();
    let book_category: Arc<HashMap<String, String>> = Arc::new(category.clone());
    let empty = Arc::new(Vec::new());
    let mut trend: (i64, Vec<(String, f64)>) = (i64::MIN, Vec::new());
    let mut offset = 0i64;
    let total = batches.len();
    for (n, batch) in batches.into_iter().enumerate() {
        for e in &batch {
            let (Some(user), Some(book)) = (&e.user_id, &e.book_id) else {
                continue;
            };
            let trained = model.seen.get(user);
            let window = seen_now.entry(user.clone()).or_default();
            if trained.is_some_and(|s| s.contains(book)) || window.contains(book) {
                continue; // not a new book: not a next-item target
            }
            let now = e.event_ts.timestamp_millis();
            clock.store(now, Ordering::Relaxed);
            let minute = now.div_euclid(60_000);
            if minute != trend.0 {
                let t = trending(&store, now, serve.trending_window_minutes, cutoff_ms).await?;
                trend = (minute, t);
            }
            let state = user_state(
                &store,
                user,
                now,
                serve.category_window_minutes,
                cutoff_ms,
                pool,
            )
            .await?;
            let list = state.list.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
            let als = model
                .users
                .get(user)
                .cloned()
                .unwrap_or_else(|| empty.clone());
            let plan = blend::plan(als.clone(), Some(state), &ask);
            let mut signals: Signals = plan.signals;
            for seed in &plan.seeds {
                if let Some(l) = model.similar.get(seed) {
                    signals.similar.push((seed.clone(), l.clone()));
                }
            }
            for c in &plan.categories {
                if let Some(l) = model.popular.get(c) {
                    signals.category_books.push((c.clone(), l.clone()));
                }
            }
            if plan.cold {
                signals.popular = model.popular.get("").cloned().unwrap_or_default();
            }
            signals.trending = trend.1.clone();
            signals.book_category = book_category.clone();
            let unseen = |books: Vec<String>| -> Vec<String> {
                books
                    .into_iter()
                    .filter(|b| !trained.is_some_and(|s| s.contains(b)) && !window.contains(b))
                    .take(opts.k)
                    .collect()
            };
            let ids = |v: &[Ranked]| v.iter().map(|r| r.item.clone()).collect::<Vec<_>>();
            let items = |v: Vec<blend::Item>| v.into_iter().map(|i| i.book_id).collect::<Vec<_>>();
            let blended = items(blend::blend(&signals, &no_fold_in, pool));
            if plan.cold && !plan.fold_events.is_empty() {
                let pairs: Vec<(&str, f32)> = plan
                    .fold_events
                    .iter()
                    .map(|(b, w)| (b.as_str(), *w))
                    .collect();
                signals.fold_in = model
                    .fold_in
                    .recommend(&pairs, pool)
                    .into_iter()
                    .map(|(item, s)| Ranked {
                        item,
                        score: f64::from(s),
                    })
                    .collect();
            }
            let with_fold_in = items(blend::blend(&signals, &opts.weights, pool));
            let popular = model.popular.get("").map(|l| ids(l)).unwrap_or_default();
            let lists = [
                unseen(popular),
                unseen(ids(&als)),
                unseen(list),
                unseen(blended),
                unseen(with_fold_in),
            ];
            let unknown = trained.is_none();
            for (name, l) in RECOMMENDERS.iter().zip(&lists) {
                scores.entry((name, false)).or_default().add(l, book);
                if unknown {
                    scores.entry((name, true)).or_default().add(l, book);
                }
            }
            window.insert(book.clone());
        }
        let newest = batch.iter().map(|e| e.event_ts.timestamp_millis()).max();
        clock.store(newest.unwrap_or(cutoff_ms), Ordering::Relaxed);
        let len = batch.len() as i64;
        let span = Span {
            partition: 0,
            from: offset,
            to: offset + len,
        };
        offset += len;
        crate::realtime::apply_events(&ctx, &features, &store, "replay", batch, span).await?;
        if (n + 1) % 200 == 0 {
            progress(&format!("[replay] {} / {total} micro-batches", n + 1));
        }
    }
    let books: HashSet<&str> = its.iter().map(|i| i.book_id.as_str()).collect();
    let mut rows = Vec::new();
    for unknown in [false, true] {
        for name in RECOMMENDERS {
            if let Some(s) = scores.get(&(name, unknown)) {
                let users = if unknown { "unknown" } else { "all" };
                rows.push(s.row(name, users, books.len()));
            }
        }
    }
    Ok(Report {
        dataset: format!(
            "{} ({})",
            opts.ratings.display(),
            match dataset {
                Dataset::MovieLens => "MovieLens",
                Dataset::BookCrossing => "Book-Crossing",
            }
        ),
        k: opts.k,
        cutoff: crate::event::format_ts(&cutoff),
        train_events: before.len(),
        replayed_events: replayed,
        batches: total,
        known_users: model.users.len(),
        books: books.len(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn ev(user: &str, n: i64) -> Event {
        let raw =
            serde_json::json!({"event_type": "view", "user_id": user, "book_id": format!("b{n}")});
        crate::event::validate(raw, Utc::now()).expect("valid")
    }

    #[test]
    fn micro_batches_never_hold_a_user_twice() {
        let events = vec![ev("a", 1), ev("b", 2), ev("a", 3), ev("c", 4), ev("d", 5)];
        let got: Vec<Vec<String>> = batches(events, 2)
            .into_iter()
            .map(|b| b.into_iter().filter_map(|e| e.book_id).collect())
            .collect();
        assert_eq!(got, [vec!["b1", "b2"], vec!["b3", "b4"], vec!["b5"]]);
    }

    #[test]
    fn scores_are_hit_rate_ndcg_and_reciprocal_rank() {
        let mut s = Score::default();
        let list: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        s.add(&list, "y"); // rank 2
        s.add(&list, "q"); // a miss
        let r = s.row("t", "all", 6);
        assert_eq!(r.targets, 2);
        assert!((r.hr - 0.5).abs() < 1e-12);
        assert!((r.ndcg - 0.5 / 3f64.log2()).abs() < 1e-12);
        assert!((r.mrr - 0.25).abs() < 1e-12);
        assert!((r.coverage - 0.5).abs() < 1e-12);
    }
}
