//! The blend: offline and realtime signals → one ranked list with reasons. Pure.
//!
//! Each source's scores are scaled to 0..1 (divided by the source's largest) and weighted
//! by [`BlendWeights`]:
//!
//! - `als`: the user's offline list (reason `als`);
//! - `fold_in`: for a user the model does not know, the list folded in from their recent
//!   events against the model's item factors (reason `fold_in`);
//! - `similar`: books similar to a seed — the context book, then the user's recent views,
//!   newest first, the i-th seed counting 1/(1+i) — the best seed counts (reason
//!   `similar_to:<seed>` for each seed that proposes the book);
//! - `realtime`: the user's realtime list (`rec:rt:<user>`, written by the stream's ranked
//!   queries; scores are log2 evidence), each book counting `2^(score − best)` — 1 for the
//!   list's best — with the list's reason for it (`similar_to:<book>`, `popular_in:<c>`);
//! - `trending`: book heat over the trending window (reason `trending`);
//! - `category`: the user's short-term category interest, as a share of their recent
//!   events; any candidate in such a category gets `weight × share`, and the category's
//!   popular books become candidates with `weight × share × scaled popularity` (reason
//!   `category:<c>`);
//! - `popular`: only when there is no offline list (cold start), popular books (reason
//!   `popular`).
//!
//! Excluded books (owned, the seeds themselves) never appear, nor does another edition of
//! one (`book_work`: the catalogue's `work_id`); a list holds one edition per work, the
//! best-scored. With `only_category` only that category's books appear. Ties break by book
//! id, so the same signals give the same list.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::BlendWeights;
use crate::store::Ranked;

/// Everything one request's blend reads.
#[derive(Debug, Default, Clone)]
pub struct Signals {
    pub als: Arc<Vec<Ranked>>,
    /// the fold-in list of a user without an offline list
    pub fold_in: Vec<Ranked>,
    /// (seed book, its similar books), most important seed first
    pub similar: Vec<(String, Arc<Vec<Ranked>>)>,
    /// the realtime list: (book, log2 score, reason), best first
    pub realtime: Vec<(String, f64, String)>,
    pub trending: Vec<(String, f64)>,
    /// short-term interest per category (events in the window)
    pub categories: Vec<(String, f64)>,
    /// popular books of the interest (or requested) categories
    pub category_books: Vec<(String, Arc<Vec<Ranked>>)>,
    pub popular: Arc<Vec<Ranked>>,
    pub exclude: HashSet<String>,
    /// book → category (the catalogue's, shared by every request)
    pub book_category: Arc<HashMap<String, String>>,
    /// book → work, for books whose work has several editions (absent: its own work)
    pub book_work: Arc<HashMap<String, String>>,
    pub only_category: Option<String>,
}

/// The day buckets of `shown_books` (queries/realtime/shown_books.sql) that a request reads:
/// the UTC days of the last `days` days, newest first, as epoch seconds.
pub fn shown_days(now_ms: i64, days: usize) -> Vec<i64> {
    let today = now_ms.div_euclid(86_400_000) * 86_400;
    (0..days as i64).map(|d| today - d * 86_400).collect()
}

/// Books the user was shown and ignored: each day's impression counts (`shown[d]`, the day
/// `d` days before today) weighted by 2^(−d / `half_life_days`) and summed per book; a book
/// whose sum reaches `after` is ignored unless the user viewed or clicked it (it is in
/// `recent`). `after` ≤ 0: none.
pub fn ignored(
    shown: &[Vec<(String, f64)>],
    recent: &[(String, f64)],
    half_life_days: f64,
    after: f64,
) -> Vec<String> {
    if after <= 0.0 {
        return Vec::new();
    }
    let mut sums: HashMap<&str, f64> = HashMap::new();
    for (age, day) in shown.iter().enumerate() {
        let w = (-(age as f64) / half_life_days).exp2();
        for (book, n) in day {
            *sums.entry(book.as_str()).or_default() += n * w;
        }
    }
    let engaged: HashSet<&str> = recent.iter().map(|(b, _)| b.as_str()).collect();
    let mut out: Vec<String> = sums
        .into_iter()
        .filter(|(b, n)| *n >= after && !engaged.contains(b))
        .map(|(b, _)| b.to_string())
        .collect();
    out.sort();
    out
}

/// The key of a user's realtime list and of its reasons (queries/realtime/similar_to_recent.sql).
pub fn realtime_list_keys(user_id: &str) -> (String, String) {
    (format!("rec:rt:{user_id}"), format!("rec:why:{user_id}"))
}

/// book → work for every book whose work has more than one edition, from (book, work)
/// pairs (a book alone in its work needs no entry: it is its own work).
pub fn editions<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) -> HashMap<String, String> {
    let mut size: HashMap<&str, usize> = HashMap::new();
    for (_, w) in pairs.clone() {
        *size.entry(w).or_default() += 1;
    }
    pairs
        .filter(|(_, w)| size.get(w).is_some_and(|n| *n > 1))
        .map(|(b, w)| (b.to_owned(), w.to_owned()))
        .collect()
}

/// A user's realtime state as the stream keeps it (read in one round trip by `serve`, or
/// from an in-process store by the replay evaluation).
#[derive(Debug, Default, Clone)]
pub struct UserState {
    /// the latest views (book, epoch ms), newest first
    pub recent: Vec<(String, f64)>,
    /// owned books (book, epoch ms)
    pub owned: Vec<(String, f64)>,
    /// the category-interest hash of each bucket read
    pub cats: Vec<Vec<(String, f64)>>,
    /// the realtime list `rec:rt:<user>`: (book, log2 score, reason), best first
    pub list: Vec<(String, f64, String)>,
}

/// What a request asks beyond its user.
#[derive(Debug, Default, Clone)]
pub struct Ask<'a> {
    pub context_book: Option<&'a str>,
    pub category: Option<&'a str>,
    /// the model's data cut-off (epoch ms): only later views are seeds
    pub cutoff_ms: i64,
    /// seeds taken from the recent views, at most
    pub recent_views: usize,
    /// fold-in weights of a recent view and of an owned book
    pub fold_in_weights: (f32, f32),
}

/// The first half of a blend: the signals a user's offline list and realtime state give
/// directly, and the published lists still to read for them — each seed's similar books,
/// each interest category's popular books, and (`cold`) the popular books overall or of
/// the asked category — and what fold-in solves from. Pure: `serve` reads the lists from
/// the DB, the replay evaluation from memory; both then call [`blend`].
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub signals: Signals,
    /// the context book, then the recent views after the cut-off, newest first
    pub seeds: Vec<String>,
    /// the two strongest interest categories, then the asked one
    pub categories: Vec<String>,
    /// no offline list: popular books (and fold-in) stand in
    pub cold: bool,
    /// a cold user's recent views and owned books with their fold-in weights
    pub fold_events: Vec<(String, f32)>,
}

pub fn plan(als: Arc<Vec<Ranked>>, state: Option<UserState>, ask: &Ask) -> Plan {
    let mut signals = Signals {
        als,
        only_category: ask.category.map(str::to_owned),
        ..Signals::default()
    };
    let cold = signals.als.is_empty();
    let mut recent = Vec::new();
    let mut fold_events = Vec::new();
    if let Some(UserState {
        recent: r,
        owned,
        cats,
        list,
    }) = state
    {
        signals.realtime = list;
        let (wv, wo) = ask.fold_in_weights;
        // only a user without an offline list is folded in
        if cold {
            fold_events.extend(r.iter().map(|(b, _)| (b.clone(), wv)));
            fold_events.extend(owned.iter().map(|(b, _)| (b.clone(), wo)));
        }
        // only views after the model's data cut-off
        recent = r
            .into_iter()
            .filter(|(_, at)| *at as i64 > ask.cutoff_ms)
            .collect();
        signals.exclude.extend(owned.into_iter().map(|(b, _)| b));
        let mut sum: std::collections::BTreeMap<String, f64> = Default::default();
        for (cat, n) in cats.into_iter().flatten() {
            *sum.entry(cat).or_default() += n;
        }
        signals.categories = sum.into_iter().collect();
        signals
            .categories
            .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    }
    let mut seeds: Vec<String> = ask.context_book.iter().map(|b| b.to_string()).collect();
    for (b, _) in &recent {
        if seeds.len() > ask.recent_views {
            break;
        }
        if !seeds.contains(b) {
            seeds.push(b.clone());
        }
    }
    signals.exclude.extend(seeds.iter().cloned());
    let mut categories: Vec<String> = signals
        .categories
        .iter()
        .take(2)
        .map(|c| c.0.clone())
        .collect();
    if let Some(c) = ask.category
        && !categories.iter().any(|x| x == c)
    {
        categories.push(c.to_owned());
    }
    Plan {
        signals,
        seeds,
        categories,
        cold,
        fold_events,
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Item {
    pub book_id: String,
    pub score: f64,
    /// strongest first
    pub reasons: Vec<String>,
}

/// Why a book is a candidate (strings are made only for the books returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why<'a> {
    Als,
    FoldIn,
    /// index of the seed in `Signals::similar`
    Similar(usize),
    /// index in `Signals::realtime`
    Realtime(usize),
    Trending,
    Category(&'a str),
    Popular,
}

impl Why<'_> {
    fn text(self, s: &Signals) -> String {
        match self {
            Why::Als => "als".into(),
            Why::FoldIn => "fold_in".into(),
            Why::Similar(i) => format!("similar_to:{}", s.similar[i].0),
            Why::Realtime(i) => match s.realtime[i].2.as_str() {
                "" => "realtime".into(),
                why => why.into(),
            },
            Why::Trending => "trending".into(),
            Why::Category(c) => format!("category:{c}"),
            Why::Popular => "popular".into(),
        }
    }
}

/// A candidate's contributions: the best one per reason (a handful: a short list).
#[derive(Default)]
struct Candidate<'a> {
    parts: Vec<(Why<'a>, f64)>,
}

impl<'a> Candidate<'a> {
    fn add(&mut self, why: Why<'a>, value: f64) {
        if value > 0.0 {
            match self.parts.iter_mut().find(|p| p.0 == why) {
                Some(p) => p.1 = p.1.max(value),
                None => self.parts.push((why, value)),
            }
        }
    }
}

fn scaled<'a, I>(scores: I) -> impl Fn(f64) -> f64
where
    I: IntoIterator<Item = &'a f64>,
{
    let max = scores.into_iter().copied().fold(0.0_f64, f64::max);
    move |s| if max > 0.0 { (s / max).max(0.0) } else { 0.0 }
}

/// The top `k` books with scores and reasons.
pub fn blend<'a>(s: &'a Signals, w: &BlendWeights, k: usize) -> Vec<Item> {
    let mut c: HashMap<&str, Candidate> = HashMap::with_capacity(256);
    fn put<'a>(c: &mut HashMap<&'a str, Candidate<'a>>, book: &'a str, why: Why<'a>, v: f64) {
        c.entry(book).or_default().add(why, v);
    }
    let als = scaled(s.als.iter().map(|r| &r.score));
    for r in s.als.iter() {
        put(&mut c, &r.item, Why::Als, w.als * als(r.score));
    }
    let fold_in = scaled(s.fold_in.iter().map(|r| &r.score));
    for r in &s.fold_in {
        put(&mut c, &r.item, Why::FoldIn, w.fold_in * fold_in(r.score));
    }
    // seed i counts 1/(1+i); each seed that proposes a book is a reason, the best counts
    for (i, (_, list)) in s.similar.iter().enumerate() {
        for r in list.iter() {
            put(
                &mut c,
                &r.item,
                Why::Similar(i),
                w.similar * r.score.max(0.0) / (1 + i) as f64,
            );
        }
    }
    // log2 scores: each relative to the list's best
    let best = s
        .realtime
        .iter()
        .map(|r| r.1)
        .filter(|x| x.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    for (i, (book, score, _)) in s.realtime.iter().enumerate() {
        if score.is_finite() {
            put(
                &mut c,
                book,
                Why::Realtime(i),
                w.realtime * (score - best).exp2(),
            );
        }
    }
    let trending = scaled(s.trending.iter().map(|t| &t.1));
    for (book, heat) in &s.trending {
        put(&mut c, book, Why::Trending, w.trending * trending(*heat));
    }
    let total: f64 = s.categories.iter().map(|c| c.1.max(0.0)).sum();
    let share = |cat: &str| -> f64 {
        if total <= 0.0 {
            return 0.0;
        }
        s.categories
            .iter()
            .find(|c| c.0 == cat)
            .map_or(0.0, |c| c.1.max(0.0) / total)
    };
    for (cat, books) in &s.category_books {
        let sh = share(cat);
        let pop = scaled(books.iter().map(|r| &r.score));
        for r in books.iter() {
            put(
                &mut c,
                &r.item,
                Why::Category(cat),
                w.category * sh * pop(r.score),
            );
        }
    }
    if s.als.is_empty() {
        let pop = scaled(s.popular.iter().map(|r| &r.score));
        for r in s.popular.iter() {
            put(&mut c, &r.item, Why::Popular, w.popular * pop(r.score));
        }
    }
    let work = |book: &'a str| -> &'a str { s.book_work.get(book).map_or(book, String::as_str) };
    // another edition of a seen book is seen
    let seen_works: HashSet<&str> = s.exclude.iter().map(|b| work(b)).collect();
    let mut scored: Vec<(&str, f64, Candidate)> = c
        .into_iter()
        .filter(|(book, _)| !s.exclude.contains(*book) && !seen_works.contains(work(book)))
        .filter_map(|(book, mut cand)| {
            let cat = s.book_category.get(book);
            if let Some(want) = &s.only_category
                && cat != Some(want)
            {
                return None;
            }
            // the category boost reaches every candidate of an interest category
            if let Some(cat) = cat {
                let sh = share(cat);
                if sh > 0.0 {
                    cand.add(Why::Category(cat), w.category * sh);
                }
            }
            let score: f64 = cand.parts.iter().map(|p| p.1).sum();
            (score > 0.0).then_some((book, score, cand))
        })
        .collect();
    let order = |a: &(&str, f64, Candidate), b: &(&str, f64, Candidate)| {
        b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0))
    };
    scored.sort_by(order);
    // one edition per work: the best-scored
    if !s.book_work.is_empty() {
        let mut works = HashSet::new();
        scored.retain(|(book, _, _)| works.insert(work(book)));
    }
    scored.truncate(k);
    scored
        .into_iter()
        .map(|(book, score, cand)| {
            let mut parts: Vec<(String, f64)> = cand
                .parts
                .into_iter()
                .map(|(w, v)| (w.text(s), v))
                .collect();
            parts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            // two sources may give one reason (the realtime list's similar_to:<b> and the
            // seed's): it is named once, at its strongest
            let mut named = HashSet::new();
            parts.retain(|p| named.insert(p.0.clone()));
            Item {
                book_id: book.to_owned(),
                score,
                reasons: parts.into_iter().map(|p| p.0).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn ignored_books_decay_and_engagement_clears_them() {
        let day = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
            pairs.iter().map(|(b, n)| (b.to_string(), *n)).collect()
        };
        // today: a ×2, b ×1; yesterday: a ×2, b ×2, c ×4; half-life 1 day
        // a = 2 + 1 = 3, b = 1 + 1 = 2, c = 2
        let shown = vec![
            day(&[("a", 2.0), ("b", 1.0)]),
            day(&[("a", 2.0), ("b", 2.0), ("c", 4.0)]),
        ];
        assert_eq!(ignored(&shown, &[], 1.0, 3.0), vec!["a"]);
        assert_eq!(ignored(&shown, &[], 1.0, 2.0), vec!["a", "b", "c"]);
        // a book the user viewed or clicked is not ignored
        let recent = vec![("a".to_string(), 1.0)];
        assert_eq!(ignored(&shown, &recent, 1.0, 2.0), vec!["b", "c"]);
        assert!(ignored(&shown, &[], 1.0, 0.0).is_empty());
        // day buckets: today's UTC midnight, then the days before
        assert_eq!(
            shown_days(86_400_000 * 3 + 5, 2),
            vec![86_400 * 3, 86_400 * 2]
        );
    }
    use super::*;

    fn ranked(items: &[(&str, f64)]) -> Arc<Vec<Ranked>> {
        Arc::new(
            items
                .iter()
                .map(|(b, s)| Ranked {
                    item: b.to_string(),
                    score: *s,
                })
                .collect(),
        )
    }

    fn weights() -> BlendWeights {
        BlendWeights {
            als: 1.0,
            fold_in: 1.0,
            similar: 0.8,
            realtime: 0.6,
            trending: 0.3,
            category: 0.4,
            popular: 0.5,
        }
    }

    #[test]
    fn the_realtime_list_counts_relative_to_its_best_with_its_reasons() {
        let s = Signals {
            realtime: vec![
                ("x".into(), 20001.0, "similar_to:a".into()),
                ("y".into(), 20000.0, "popular_in:fantasy".into()),
                ("owned".into(), 20002.0, "similar_to:a".into()),
                ("z".into(), f64::NAN, "broken".into()),
            ],
            similar: vec![("a".into(), ranked(&[("x", 0.5)]))],
            exclude: ["owned".to_string()].into_iter().collect(),
            ..Signals::default()
        };
        let got = blend(&s, &weights(), 10);
        let books: Vec<&str> = got.iter().map(|i| i.book_id.as_str()).collect();
        assert_eq!(books, ["x", "y"]);
        // x: 0.6 × 2^(20001 − 20002) from the list + 0.8 × 0.5 as a seed's similar book,
        // one reason named once
        assert!((got[0].score - (0.3 + 0.4)).abs() < 1e-9, "{got:?}");
        assert_eq!(got[0].reasons, ["similar_to:a"]);
        assert!((got[1].score - 0.15).abs() < 1e-9, "{got:?}");
        assert_eq!(got[1].reasons, ["popular_in:fantasy"]);
    }

    #[test]
    fn a_fold_in_list_ranks_with_its_own_reason_and_keeps_out_the_seen() {
        let s = Signals {
            fold_in: ranked(&[("x", 0.9), ("y", 0.3), ("seen", 2.0)]).to_vec(),
            exclude: ["seen".to_string()].into_iter().collect(),
            ..Signals::default()
        };
        let got = blend(&s, &weights(), 10);
        let books: Vec<&str> = got.iter().map(|i| i.book_id.as_str()).collect();
        assert_eq!(books, ["x", "y"]);
        assert_eq!(got[0].reasons, ["fold_in"]);
        // scaled by the list's best (the excluded one too): 0.9 / 2.0
        assert!((got[0].score - 0.45).abs() < 1e-9, "{got:?}");
    }

    /// Two editions of one work: only the better-scored one, and none at all when the user
    /// has another edition.
    #[test]
    fn one_edition_per_work_and_other_editions_of_seen_books_are_seen() {
        let works: HashMap<String, String> = [
            ("hp2-a", "hp2|rowling"),
            ("hp2-b", "hp2|rowling"),
            ("hp3-a", "hp3|rowling"),
            ("hp3-b", "hp3|rowling"),
        ]
        .iter()
        .map(|(b, w)| (b.to_string(), w.to_string()))
        .collect();
        let s = Signals {
            als: ranked(&[
                ("hp3-b", 4.0),
                ("hp3-a", 3.5),
                ("hp2-b", 3.0),
                ("dune", 2.0),
            ]),
            exclude: ["hp2-a".to_string()].into_iter().collect(),
            book_work: Arc::new(works),
            ..Signals::default()
        };
        let got = blend(&s, &weights(), 10);
        let books: Vec<&str> = got.iter().map(|i| i.book_id.as_str()).collect();
        assert_eq!(books, ["hp3-b", "dune"]);
    }

    #[test]
    fn offline_list_alone_keeps_its_order_scaled() {
        let s = Signals {
            als: ranked(&[("a", 4.0), ("b", 2.0), ("c", 1.0)]),
            ..Signals::default()
        };
        let out = blend(&s, &weights(), 2);
        assert_eq!(
            out,
            vec![
                Item {
                    book_id: "a".into(),
                    score: 1.0,
                    reasons: vec!["als".into()]
                },
                Item {
                    book_id: "b".into(),
                    score: 0.5,
                    reasons: vec!["als".into()]
                },
            ]
        );
    }

    #[test]
    fn realtime_signals_add_up_with_reasons_and_exclusions() {
        let mut s = Signals {
            als: ranked(&[("a", 1.0), ("b", 0.5)]),
            // seed "v1" (newest) proposes b and x; seed "v2" proposes x and owned
            similar: vec![
                ("v1".into(), ranked(&[("b", 0.9), ("x", 0.5)])),
                ("v2".into(), ranked(&[("x", 1.0), ("owned", 1.0)])),
            ],
            trending: vec![("t".into(), 10.0), ("a".into(), 5.0)],
            categories: vec![("fantasy".into(), 3.0), ("history".into(), 1.0)],
            category_books: vec![("fantasy".into(), ranked(&[("f1", 2.0), ("x", 1.0)]))],
            exclude: ["owned".to_string(), "v1".to_string()]
                .into_iter()
                .collect(),
            ..Signals::default()
        };
        s.book_category = Arc::new(
            [("x", "fantasy"), ("b", "history"), ("f1", "fantasy")]
                .iter()
                .map(|(b, c)| (b.to_string(), c.to_string()))
                .collect(),
        );
        let out = blend(&s, &weights(), 10);
        let get = |b: &str| out.iter().find(|i| i.book_id == b).cloned();
        assert!(get("owned").is_none() && get("v1").is_none());
        // b: als 0.5 + similar 0.8×0.9 + history boost 0.4×0.25
        let b = get("b").expect("b");
        assert!((b.score - (0.5 + 0.72 + 0.1)).abs() < 1e-9, "{b:?}");
        assert_eq!(b.reasons, ["similar_to:v1", "als", "category:history"]);
        // x: seed v1 gives 0.8×0.5, seed v2 gives 0.8×1.0/2 (equal), fantasy 0.4×0.75
        let x = get("x").expect("x");
        assert!((x.score - (0.4 + 0.4 + 0.3)).abs() < 1e-9, "{x:?}");
        assert_eq!(x.reasons[0], "similar_to:v1");
        assert!(x.reasons.contains(&"similar_to:v2".to_string()));
        assert!(x.reasons.contains(&"category:fantasy".to_string()));
        // t: trending only (0.3); a: als 1.0 + trending 0.15
        assert_eq!(get("t").expect("t").reasons, ["trending"]);
        assert!((get("a").expect("a").score - 1.15).abs() < 1e-9);
        // f1: top of its interest category: 0.4 × 0.75 × 1.0
        assert!((get("f1").expect("f1").score - 0.3).abs() < 1e-9);
        // sorted by score, ties by id
        for w in out.windows(2) {
            assert!(
                w[0].score > w[1].score
                    || (w[0].score == w[1].score && w[0].book_id < w[1].book_id)
            );
        }
        // only one category
        s.only_category = Some("fantasy".into());
        let only: Vec<String> = blend(&s, &weights(), 10)
            .into_iter()
            .map(|i| i.book_id)
            .collect();
        assert_eq!(only, ["x", "f1"]);
    }

    #[test]
    fn cold_start_falls_back_to_popular_books() {
        let s = Signals {
            popular: ranked(&[("p1", 10.0), ("p2", 5.0)]),
            ..Signals::default()
        };
        let out = blend(&s, &weights(), 5);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].reasons, ["popular"]);
        assert!((out[1].score - 0.25).abs() < 1e-9);
        // with an offline list, popular books are not mixed in
        let warm = Signals {
            als: ranked(&[("a", 1.0)]),
            ..s
        };
        assert_eq!(blend(&warm, &weights(), 5).len(), 1);
    }
}
