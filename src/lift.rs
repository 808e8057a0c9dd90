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
//! in a seeded random order that keeps each user's own order (one a minute), so that known and unknown
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

use crate::als::recommend::{recommend_users, similar_items};
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
    /// the newest share of events replayed and reported (the rest trains the model)
    pub test_fraction: f64,
    /// the share of events just before the reported ones on which the blend's weights are
    /// tuned (0: none)
    pub validation_fraction: f64,
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
    /// the share of list slots holding another edition of a work the user has seen, or a
    /// second edition of a work already in the list (0 without a catalogue of editions)
    pub repeated_works: f64,
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
    /// works with more than one edition in the catalogue (Book-Crossing)
    pub works_with_editions: usize,
    /// the ALS regularisation of the reported window's model and how it was chosen
    pub als: String,
    /// the configured blend weights (rows `blend`, `blend+fold_in`)
    pub weights: BlendWeights,
    /// the weights tuned on the validation window, when one was replayed
    pub tuning: Option<Tuning>,
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
        if self.works_with_editions > 0 {
            writeln!(
                f,
                "{} works have several editions (the books source view's work_id)",
                self.works_with_editions
            )?;
        }
        writeln!(f, "als regularization: {}", self.als)?;
        writeln!(f, "configured weights: {}", weights_text(&self.weights))?;
        if let Some(t) = &self.tuning {
            writeln!(
                f,
                "tuned on the validation window (trained before {}, {} events replayed, {} \
                 targets, {} blends scored): blend+fold_in HR@{k} {:.4} → {:.4}, NDCG@{k} \
                 {:.4} → {:.4}; chosen: {}",
                t.cutoff,
                t.replayed_events,
                t.targets,
                t.evaluations,
                t.hr_from,
                t.hr_chosen,
                t.ndcg_from,
                t.ndcg_chosen,
                weights_text(&t.chosen)
            )?;
        }
        // the works column only where there are editions to repeat
        let works = self.works_with_editions > 0;
        let (head, rule) = if works {
            (" works repeated |", "---|")
        } else {
            ("", "")
        };
        writeln!(
            f,
            "| recommender | users | targets | HR@{k} | NDCG@{k} | MRR@{k} | coverage |{head}"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|{rule}")?;
        for r in &self.rows {
            write!(
                f,
                "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                r.recommender, r.users, r.targets, r.hr, r.ndcg, r.mrr, r.coverage
            )?;
            if works {
                write!(f, " {:.4} |", r.repeated_works)?;
            }
            writeln!(f)?;
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
    /// list slots scored, and those holding another edition of a work the user has seen or
    /// a second edition of a work already in the list
    slots: u64,
    repeated: u64,
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
        self.slots += list.len() as u64;
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
            repeated_works: self.repeated as f64 / self.slots.max(1) as f64,
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

/// Book-Crossing's rows are given times this far apart (one a minute: its 1.15 million
/// rows span about two years, ~1,400 a day — a small book platform's pace; the realtime
/// windows and the warm-up week see a day's traffic at that pace).
const BX_SPACING_SECS: i64 = 60;

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
                its[r].ts = DateTime::from_timestamp(base + BX_SPACING_SECS * s as i64, 0)
                    .unwrap_or_default();
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
    /// the regularisation that trained and how it was chosen (`[als.tune]`)
    als: String,
}

/// `users` and `items`: the users whose offline lists and the books whose similar lists the
/// replay can read (those with events in it): a catalogue-wide similar-books table of
/// Book-Crossing's 340,000 books would cost more than the whole replay.
fn train(
    train: &[Interaction],
    category: &HashMap<String, String>,
    params: &crate::als::Params,
    (pool, similar_k): (usize, usize),
    (users, items): (&HashSet<String>, &HashSet<String>),
) -> Result<Model, LiftError> {
    let mut data = Interactions::default();
    let mut times = Vec::with_capacity(train.len());
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for it in train {
        times.push(it.ts.timestamp());
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
    data.times = Some(times);
    // as `bookrec batch` trains: `[als.tune]` picks the regularisation on the training part's
    // newest share (the replayed window is never seen)
    let (params, tuning) = crate::als::eval::tuned(&data, params)?;
    let params = &params;
    let als = tuning.describe(params);
    let matrix = data.matrix();
    let model = crate::als::fit(&matrix, params, &mut |_| {})?;
    let ranked = |ids: &IdMap, which: &[u32], lists: Vec<Vec<crate::als::recommend::Scored>>| {
        lists
            .into_iter()
            .zip(which)
            .map(|(list, &k)| {
                let items = list
                    .into_iter()
                    .map(|s| Ranked {
                        item: data.items.id(s.item).to_owned(),
                        score: f64::from(s.score),
                    })
                    .collect();
                (ids.id(k).to_owned(), Arc::new(items))
            })
            .collect::<HashMap<_, _>>()
    };
    let which = |ids: &IdMap, keep: &HashSet<String>| -> Vec<u32> {
        let mut v: Vec<u32> = keep.iter().filter_map(|id| ids.get(id)).collect();
        v.sort_unstable();
        v
    };
    let (wanted_users, wanted_items) = (which(&data.users, users), which(&data.items, items));
    let users = ranked(
        &data.users,
        &wanted_users,
        recommend_users(&model, &matrix, &wanted_users, pool),
    );
    let similar = ranked(
        &data.items,
        &wanted_items,
        similar_items(&model, &wanted_items, similar_k),
    );
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
        params,
    )?;
    Ok(Model {
        users,
        similar,
        popular,
        fold_in,
        seen,
        als,
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

/// Before a replayed window, the events of this long before its cut-off are applied to the
/// realtime store first (no one is asked), so the window starts with the features a running
/// stream would hold rather than an empty store: the realtime list's TTL
/// (queries/realtime/similar_to_recent.sql).
const WARMUP_SECS: i64 = 7 * 24 * 3600;

/// The values each tuned weight may take; `als` is not tuned (it is the unit the others are
/// measured in: scaling every weight alike changes no list).
const GRID: [f64; 10] = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0];
/// Coordinate-ascent rounds over the tuned weights, at most.
const ROUNDS: usize = 3;
/// The tuned weights' names, in the order [`tuned_weight`] numbers them.
const TUNED: [&str; 6] = [
    "fold_in", "similar", "realtime", "trending", "category", "popular",
];

fn tuned_weight(w: &mut BlendWeights, i: usize) -> Option<&mut f64> {
    Some(match i {
        0 => &mut w.fold_in,
        1 => &mut w.similar,
        2 => &mut w.realtime,
        3 => &mut w.trending,
        4 => &mut w.category,
        5 => &mut w.popular,
        _ => return None,
    })
}

/// `als=1 fold_in=… …`: the weights as `serve.weights` keys.
pub fn weights_text(w: &BlendWeights) -> String {
    let mut w = *w;
    let mut out = format!("als={}", w.als);
    for (i, name) in TUNED.iter().enumerate() {
        if let Some(v) = tuned_weight(&mut w, i) {
            out.push_str(&format!(" {name}={v}"));
        }
    }
    out
}

/// What tuning the blend's weights on the validation window found.
#[derive(Debug, Clone, Serialize)]
pub struct Tuning {
    /// the validation window's model was trained on the events before this
    pub cutoff: String,
    pub replayed_events: usize,
    pub targets: u64,
    /// the weights the tuning started from (the configuration's) and their scores
    pub from: BlendWeights,
    pub hr_from: f64,
    pub ndcg_from: f64,
    /// the weights chosen (`blend+fold_in`'s HR@k, then NDCG@k, on the validation window)
    pub chosen: BlendWeights,
    pub hr_chosen: f64,
    pub ndcg_chosen: f64,
    /// blends of the whole window scored while searching
    pub evaluations: usize,
}

/// One request of the replay: what every recommender is scored on.
struct Request {
    target: String,
    /// popularity, als, realtime: each one's top k unseen books
    fixed: [Vec<String>; 3],
    /// the blend's signals, without fold-in (`book_work`: the catalogue's editions)
    signals: Signals,
    /// the fold-in list (empty for a user the model knows)
    fold_in: Vec<Ranked>,
}

/// One user's requests, in time order.
struct UserRequests {
    user: String,
    known: bool,
    requests: Vec<Request>,
}

/// One replayed window: the model trained before it and every request asked in it.
struct Window {
    model: Model,
    users: Vec<UserRequests>,
    cutoff: DateTime<chrono::Utc>,
    train_events: usize,
    replayed: usize,
    batches: usize,
    targets: u64,
}

/// How a list is made from a recorded request.
#[derive(Debug, Clone, Copy)]
enum Ranker {
    /// `Request::fixed[i]`
    Fixed(usize),
    Blend {
        weights: BlendWeights,
        fold_in: bool,
        /// one edition per work, and another edition of a seen book counts as seen
        works: bool,
    },
}

impl Score {
    fn merge(mut self, o: Score) -> Score {
        self.targets += o.targets;
        self.hits += o.hits;
        self.ndcg += o.ndcg;
        self.rr += o.rr;
        self.shown.extend(o.shown);
        self.slots += o.slots;
        self.repeated += o.repeated;
        self
    }
}

/// Scores one ranker over a window: (all users, users the model does not know).
fn score(
    win: &mut Window,
    ranker: Ranker,
    k: usize,
    pool: usize,
    editions: &Arc<HashMap<String, String>>,
) -> (Score, Score) {
    use rayon::prelude::*;
    let model = &win.model;
    let no_works: Arc<HashMap<String, String>> = Arc::default();
    win.users
        .par_iter_mut()
        .map(|u| {
            let (mut all, mut unknown) = (Score::default(), Score::default());
            let trained = model.seen.get(&u.user);
            let mut window: HashSet<String> = HashSet::new();
            let work = |b: &str| editions.get(b).cloned();
            // works of the books the user has seen (kept for every ranker: the share of
            // slots repeating a work is reported for all)
            let mut seen_works: HashSet<String> = trained
                .iter()
                .flat_map(|s| s.iter())
                .filter_map(|b| work(b))
                .collect();
            for r in &mut u.requests {
                let list = match ranker {
                    Ranker::Fixed(i) => r.fixed[i].clone(),
                    Ranker::Blend {
                        weights,
                        fold_in,
                        works,
                    } => {
                        if fold_in {
                            r.signals.fold_in = std::mem::take(&mut r.fold_in);
                        }
                        if !works {
                            r.signals.book_work = no_works.clone();
                        }
                        let list: Vec<String> = blend::blend(&r.signals, &weights, pool)
                            .into_iter()
                            .map(|i| i.book_id)
                            .filter(|b| {
                                let seen = trained.is_some_and(|s| s.contains(b))
                                    || window.contains(b)
                                    || (works
                                        && editions.get(b).is_some_and(|w| seen_works.contains(w)));
                                !seen
                            })
                            .take(k)
                            .collect();
                        if fold_in {
                            r.fold_in = std::mem::take(&mut r.signals.fold_in);
                        }
                        r.signals.book_work = editions.clone();
                        list
                    }
                };
                let repeated = if editions.is_empty() {
                    0
                } else {
                    let mut in_list = HashSet::new();
                    list.iter()
                        .filter(|b| {
                            work(b).is_some_and(|w| seen_works.contains(&w) || !in_list.insert(w))
                        })
                        .count()
                };
                all.repeated += repeated as u64;
                if !u.known {
                    unknown.repeated += repeated as u64;
                }
                all.add(&list, &r.target);
                if !u.known {
                    unknown.add(&list, &r.target);
                }
                if let Some(w) = work(&r.target) {
                    seen_works.insert(w);
                }
                window.insert(r.target.clone());
            }
            (all, unknown)
        })
        .reduce(
            || (Score::default(), Score::default()),
            |a, b| (a.0.merge(b.0), a.1.merge(b.1)),
        )
}

/// The replay's events of `its` (rows the event contract refuses are left out, as the
/// collector would).
fn events_of(dataset: Dataset, its: &[Interaction]) -> Vec<Event> {
    its.iter()
        .filter_map(|it| {
            let raw = crate::replay::client_event(dataset, it);
            let mut e = crate::event::validate(raw, it.ts).ok()?;
            e.event_ts = it.ts;
            Some(e)
        })
        .collect()
}

/// book → work for the books of the catalogue beside `ratings` that share their work with
/// another edition, through the `books` source view of `lake.sources_dir` (the analysts'
/// `work_id`) over the catalogue as the CDC lander lands it. Book-Crossing only: MovieLens
/// has no authors, and films of one title are different works.
async fn editions(
    cfg: &Config,
    dataset: Dataset,
    ratings: &Path,
) -> Result<HashMap<String, String>, LiftError> {
    use arrow::array::{ArrayRef, new_null_array};
    use arrow::datatypes::{DataType, Field, Schema};
    let dir = cfg.lake.sources_dir.trim();
    if dataset != Dataset::BookCrossing || dir.is_empty() {
        return Ok(HashMap::new());
    }
    let sources =
        crate::sql::catalog::load_dir_kind(Path::new(dir), crate::sql::catalog::Kind::Source)
            .map_err(crate::sql::SqlError::Source)?;
    let Some(view) = sources.iter().find(|q| q.name == "books") else {
        return Ok(HashMap::new());
    };
    let path = ratings.parent().unwrap_or(Path::new(".")).join("books.csv");
    let bad = |reason: String| LiftError::Catalogue {
        path: path.clone(),
        reason,
    };
    // the CSV's columns under the names the MongoDB documents carry (as `bookrec demo`
    // lands them: the publisher is the category)
    fn csv_of(column: &str) -> Option<&str> {
        match column {
            "_id" => Some("isbn"),
            "title" | "author" | "year" | "publisher" => Some(column),
            "category" => Some("publisher"),
            _ => None,
        }
    }
    let ctx = SessionContext::new_with_config(crate::sql::session_config()?);
    for input in &view.inputs {
        let want: Vec<&str> = input.columns.iter().filter_map(|c| csv_of(c)).collect();
        let (reader, at) = crate::replay::text_csv(&path, &want)?;
        let schema = Arc::new(Schema::new(
            input
                .columns
                .iter()
                .map(|c| Field::new(c, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let columns: Vec<ArrayRef> = input
                .columns
                .iter()
                .map(
                    |c| match csv_of(c).and_then(|n| want.iter().position(|w| *w == n)) {
                        Some(i) => batch.column(at[i]).clone(),
                        None => new_null_array(&DataType::Utf8, batch.num_rows()),
                    },
                )
                .collect();
            batches.push(
                RecordBatch::try_new(schema.clone(), columns).map_err(|e| bad(e.to_string()))?,
            );
        }
        ctx.register_table(
            input.table.as_str(),
            Arc::new(MemTable::try_new(schema, vec![batches])?),
        )?;
    }
    let out = ctx.sql(&view.sql).await?.collect().await?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for b in &out {
        let (Ok(ids), Ok(works)) = (
            arrow::compute::cast(
                b.column_by_name("book_id")
                    .ok_or_else(|| bad("the books view has no book_id".into()))?,
                &DataType::Utf8,
            ),
            arrow::compute::cast(
                b.column_by_name("work_id")
                    .ok_or_else(|| bad("the books view has no work_id".into()))?,
                &DataType::Utf8,
            ),
        ) else {
            return Err(bad("book_id and work_id must be text".into()));
        };
        let (ids, works) = (ids.as_string::<i32>(), works.as_string::<i32>());
        for r in 0..b.num_rows() {
            if !ids.is_null(r) && !works.is_null(r) {
                pairs.push((ids.value(r).to_owned(), works.value(r).to_owned()));
            }
        }
    }
    Ok(blend::editions(
        pairs.iter().map(|(b, w)| (b.as_str(), w.as_str())),
    ))
}

/// What every replayed window shares: the run's settings, the events in time order and the
/// catalogue.
struct Replay<'a> {
    cfg: &'a Config,
    params: &'a crate::als::Params,
    opts: &'a Options,
    dataset: Dataset,
    its: &'a [Interaction],
    category: &'a HashMap<String, String>,
    editions: &'a Arc<HashMap<String, String>>,
}

/// Trains on `its[..start]`, applies the warm-up, then replays `its[start..end]` and records
/// every request.
async fn replay_window(
    r: &Replay<'_>,
    (start, end): (usize, usize),
    progress: &mut dyn FnMut(&str),
) -> Result<Window, LiftError> {
    let Replay {
        cfg,
        params,
        opts,
        dataset,
        its,
        category,
        editions,
    } = *r;
    let (before, after) = (&its[..start], &its[start..end]);
    let Some(cutoff) = after.first().map(|i| i.ts) else {
        return Err(LiftError::Split("an empty window".into()));
    };
    let cutoff_ms = cutoff.timestamp_millis();
    let pool = cfg.publish.k.max(opts.k);
    progress(&format!(
        "[replay] training ALS on {} events before {cutoff}",
        before.len()
    ));
    let warm_from = before.partition_point(|i| i.ts.timestamp() < cutoff.timestamp() - WARMUP_SECS);
    let (users, items): (HashSet<String>, HashSet<String>) = (
        after.iter().map(|i| i.user_id.clone()).collect(),
        its[warm_from..end]
            .iter()
            .map(|i| i.book_id.clone())
            .collect(),
    );
    let model = {
        let (before, category, params) = (before.to_vec(), category.clone(), params.clone());
        let sizes = (pool, cfg.publish.similar_k);
        tokio::task::spawn_blocking(move || {
            train(&before, &category, &params, sizes, (&users, &items))
        })
        .await
        .map_err(|e| LiftError::Split(e.to_string()))??
    };
    progress(&format!("[replay] ALS regularization {}", model.als));
    let ctx = session(&model, category)?;
    let features = crate::realtime::load(&cfg.stream.queries_dir, &ctx).await?;
    let clock = Arc::new(AtomicI64::new(cutoff_ms));
    let store = MemoryStore::with_clock(clock.clone());
    let mut offset = 0i64;
    let mut apply = async |batch: Vec<Event>| -> Result<(), LiftError> {
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
        Ok(())
    };
    let warm = events_of(dataset, &before[warm_from..]);
    progress(&format!(
        "[replay] warming the realtime store with the {} events of the week before",
        warm.len()
    ));
    for chunk in warm.chunks(opts.max_batch.max(1)) {
        apply(chunk.to_vec()).await?;
    }
    let events = events_of(dataset, after);
    let replayed = events.len();
    let batches = batches(events, opts.max_batch);
    let total = batches.len();
    progress(&format!(
        "[replay] replaying {replayed} events in {total} micro-batches"
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
    let mut users: Vec<UserRequests> = Vec::new();
    let mut user_at: HashMap<String, usize> = HashMap::new();
    let mut seen_now: HashMap<String, HashSet<String>> = HashMap::new();
    let book_category: Arc<HashMap<String, String>> = Arc::new(category.clone());
    let empty = Arc::new(Vec::new());
    let mut trend: (i64, Vec<(String, f64)>) = (i64::MIN, Vec::new());
    let mut targets = 0u64;
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
            signals.book_work = editions.clone();
            let fold_in = if plan.cold && !plan.fold_events.is_empty() {
                let pairs: Vec<(&str, f32)> = plan
                    .fold_events
                    .iter()
                    .map(|(b, w)| (b.as_str(), *w))
                    .collect();
                model
                    .fold_in
                    .recommend(&pairs, pool)
                    .into_iter()
                    .map(|(item, s)| Ranked {
                        item,
                        score: f64::from(s),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let unseen = |books: Vec<String>| -> Vec<String> {
                books
                    .into_iter()
                    .filter(|b| !trained.is_some_and(|s| s.contains(b)) && !window.contains(b))
                    .take(opts.k)
                    .collect()
            };
            let ids = |v: &[Ranked]| v.iter().map(|r| r.item.clone()).collect::<Vec<_>>();
            let popular = model.popular.get("").map(|l| ids(l)).unwrap_or_default();
            let request = Request {
                target: book.clone(),
                fixed: [unseen(popular), unseen(ids(&als)), unseen(list)],
                signals,
                fold_in,
            };
            let at = *user_at.entry(user.clone()).or_insert_with(|| {
                users.push(UserRequests {
                    user: user.clone(),
                    known: trained.is_some(),
                    requests: Vec::new(),
                });
                users.len() - 1
            });
            users[at].requests.push(request);
            targets += 1;
            window.insert(book.clone());
        }
        apply(batch).await?;
        if (n + 1) % 500 == 0 {
            progress(&format!("[replay] {} / {total} micro-batches", n + 1));
        }
    }
    Ok(Window {
        model,
        users,
        cutoff,
        train_events: before.len(),
        replayed,
        batches: total,
        targets,
    })
}

/// Coordinate ascent over the tuned weights on a window: each weight in turn takes the
/// grid's value that most raises `blend+fold_in`'s HR@k (then NDCG@k); a change must be a
/// strict gain, so ties keep the starting weights.
fn tune(
    win: &mut Window,
    from: BlendWeights,
    k: usize,
    pool: usize,
    editions: &Arc<HashMap<String, String>>,
    progress: &mut dyn FnMut(&str),
) -> Tuning {
    let mut evaluations = 0usize;
    let mut eval = |win: &mut Window, w: BlendWeights| {
        evaluations += 1;
        let ranker = Ranker::Blend {
            weights: w,
            fold_in: true,
            works: true,
        };
        let s = score(win, ranker, k, pool, editions).0.row("", "", 1);
        (s.hr, s.ndcg)
    };
    let start = eval(win, from);
    let (mut best, mut best_score) = (from, start);
    for round in 0..ROUNDS {
        let mut changed = false;
        for i in 0..TUNED.len() {
            for v in GRID {
                let mut w = best;
                match tuned_weight(&mut w, i) {
                    Some(x) if *x != v => *x = v,
                    _ => continue,
                }
                let s = eval(win, w);
                if s.0 > best_score.0 + 1e-12
                    || (s.0 >= best_score.0 - 1e-12 && s.1 > best_score.1 + 1e-12)
                {
                    (best, best_score, changed) = (w, s, true);
                }
            }
        }
        progress(&format!(
            "[replay] tuning round {}: HR@{k} {:.4} with {}",
            round + 1,
            best_score.0,
            weights_text(&best)
        ));
        if !changed {
            break;
        }
    }
    Tuning {
        cutoff: crate::event::format_ts(&win.cutoff),
        replayed_events: win.replayed,
        targets: win.targets,
        from,
        hr_from: start.0,
        ndcg_from: start.1,
        chosen: best,
        hr_chosen: best_score.0,
        ndcg_chosen: best_score.1,
        evaluations,
    }
}

/// Runs the replay evaluation; `progress` gets a line now and then.
///
/// With a validation window (`validation_fraction` > 0), the events just before the
/// reported window are replayed first (the model trained on what precedes them), the
/// blend's weights are tuned on them, and the report's window is scored with both the
/// configured and the chosen weights: the choice never sees the reported events.
pub async fn run(
    cfg: &Config,
    params: &crate::als::Params,
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, LiftError> {
    let fraction_ok = |f: f64| (0.0..1.0).contains(&f);
    if !(opts.test_fraction > 0.0 && fraction_ok(opts.test_fraction)) {
        return Err(LiftError::Split(format!(
            "--test-fraction {}: between 0 and 1",
            opts.test_fraction
        )));
    }
    if !fraction_ok(opts.validation_fraction)
        || opts.test_fraction + opts.validation_fraction >= 1.0
    {
        return Err(LiftError::Split(format!(
            "--validation-fraction {}: from 0, and with --test-fraction {} below 1",
            opts.validation_fraction, opts.test_fraction
        )));
    }
    let (dataset, its) = crate::replay::load(&opts.ratings, 0, None)?;
    let category = categories(dataset, &opts.ratings)?;
    let editions = Arc::new(editions(cfg, dataset, &opts.ratings).await?);
    let its = in_time_order(dataset, its);
    // the first row of the newest `fraction`; everything before its time trains (ties go
    // to the replay)
    let start_of = |fraction: f64| -> Result<usize, LiftError> {
        let cut = ((1.0 - fraction) * its.len() as f64) as usize;
        let t = its
            .get(cut)
            .map(|i| i.ts)
            .ok_or_else(|| LiftError::Split(format!("{}: too few rows", opts.ratings.display())))?;
        Ok(its.partition_point(|i| i.ts < t))
    };
    let test_start = start_of(opts.test_fraction)?;
    let pool = cfg.publish.k.max(opts.k);
    let replay = Replay {
        cfg,
        params,
        opts,
        dataset,
        its: &its,
        category: &category,
        editions: &editions,
    };
    let tuning = if opts.validation_fraction > 0.0 {
        let start = start_of(opts.test_fraction + opts.validation_fraction)?;
        if start >= test_start {
            return Err(LiftError::Split(format!(
                "--validation-fraction {}: the validation window holds no events",
                opts.validation_fraction
            )));
        }
        progress("[replay] the validation window");
        let mut win = replay_window(&replay, (start, test_start), progress).await?;
        Some(tune(
            &mut win,
            opts.weights,
            opts.k,
            pool,
            &editions,
            progress,
        ))
    } else {
        None
    };
    progress("[replay] the reported window");
    let mut win = replay_window(&replay, (test_start, its.len()), progress).await?;
    let blend_with = |weights: BlendWeights, fold_in: bool, works: bool| Ranker::Blend {
        weights,
        fold_in,
        works,
    };
    let mut rankers: Vec<(String, Ranker)> = vec![
        (RECOMMENDERS[0].into(), Ranker::Fixed(0)),
        (RECOMMENDERS[1].into(), Ranker::Fixed(1)),
        (RECOMMENDERS[2].into(), Ranker::Fixed(2)),
        (
            RECOMMENDERS[3].into(),
            blend_with(opts.weights, false, true),
        ),
        (RECOMMENDERS[4].into(), blend_with(opts.weights, true, true)),
    ];
    let reported = match &tuning {
        Some(t) if t.chosen != opts.weights => {
            rankers.push(("blend (tuned)".into(), blend_with(t.chosen, false, true)));
            rankers.push((
                "blend+fold_in (tuned)".into(),
                blend_with(t.chosen, true, true),
            ));
            t.chosen
        }
        _ => opts.weights,
    };
    if !editions.is_empty() {
        rankers.push((
            "blend+fold_in (editions apart)".into(),
            blend_with(reported, true, false),
        ));
    }
    let books: HashSet<&str> = its.iter().map(|i| i.book_id.as_str()).collect();
    let mut all = Vec::new();
    let mut unknown = Vec::new();
    for (name, ranker) in rankers {
        let (a, u) = score(&mut win, ranker, opts.k, pool, &editions);
        all.push(a.row(&name, "all", books.len()));
        if u.targets > 0 {
            unknown.push(u.row(&name, "unknown", books.len()));
        }
    }
    all.extend(unknown);
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
        cutoff: crate::event::format_ts(&win.cutoff),
        train_events: win.train_events,
        replayed_events: win.replayed,
        batches: win.batches,
        known_users: win.model.seen.len(),
        books: books.len(),
        works_with_editions: editions.values().collect::<HashSet<_>>().len(),
        als: win.model.als.clone(),
        weights: opts.weights,
        tuning,
        rows: all,
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
