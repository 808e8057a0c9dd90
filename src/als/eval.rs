//! Offline evaluation: splits, ranking metrics at K, baselines, and a small parameter search.
//!
//! Protocol (the one the published ML-100k tables use): train on the training part, rank
//! *every* item for each user (full ranking) with the items the user has in training
//! excluded, and compare the top K with the user's held-out items. Users without held-out
//! items are not scored; held-out items the user already has in training are dropped.
//!
//! Metric definitions, per user with held-out set T and ranked list L (|L| ≤ K), averaged over
//! users: precision = hits/K; recall = hits/|T|; NDCG = Σ_hits 1/log2(rank+1) divided by the
//! same sum over the first min(|T|, K) ranks; MAP = Σ_hits precision@rank / min(|T|, K);
//! MRR = 1/rank of the first hit; coverage = distinct recommended items / catalogue size.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::Serialize;

use super::AlsError;
use super::matrix::{Csr, Interactions, Triple};
use super::recommend::{Scored, recommend_users, top_k};
use super::train::{Params, fit};

/// How to hold data out.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Split {
    /// Everything at or after `cutoff` (epoch seconds) is test; without a cutoff, the time
    /// that leaves `test_fraction` of the interactions after it.
    Temporal {
        cutoff: Option<i64>,
        test_fraction: f64,
    },
    /// Each user's last `k` interactions (by time, then input order) are test.
    LeaveLastOut { k: usize },
    /// Each user's newest `fraction` of interactions (rounded up; users with one
    /// interaction keep it for training) are test: the validation split of a publish.
    UserNewest { fraction: f64 },
    /// Interactions shuffled with `seed` into `folds` parts; each part is test once.
    KFold { folds: usize, seed: u64 },
}

/// One train/test split, in the dense indices of the whole data set.
#[derive(Debug, Clone)]
pub struct Fold {
    pub train: Csr,
    /// Held-out items per user (sorted, without the user's training items).
    pub test: Vec<Vec<u32>>,
    pub description: String,
}

pub fn split(data: &Interactions, how: &Split) -> Result<Vec<Fold>, AlsError> {
    let (nu, ni) = (data.users.len(), data.items.len());
    let fold = |train: Vec<&Triple>, test: Vec<&Triple>, description: String| {
        let train = Csr::build(nu, ni, train.iter().map(|t| (t.user, t.item, t.weight)));
        let mut held: Vec<Vec<u32>> = vec![Vec::new(); nu];
        for t in test {
            if !train.contains(t.user as usize, t.item) {
                held[t.user as usize].push(t.item);
            }
        }
        for h in &mut held {
            h.sort_unstable();
            h.dedup();
        }
        Fold {
            train,
            test: held,
            description,
        }
    };
    match how {
        Split::Temporal {
            cutoff,
            test_fraction,
        } => {
            let times = data.times.as_ref().ok_or(AlsError::NoTimes)?;
            let cutoff = match cutoff {
                Some(c) => *c,
                None => quantile_cutoff(times, *test_fraction)?,
            };
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for (t, &ts) in data.triples.iter().zip(times) {
                if ts < cutoff {
                    train.push(t)
                } else {
                    test.push(t)
                }
            }
            Ok(vec![fold(train, test, format!("temporal cutoff {cutoff}"))])
        }
        Split::LeaveLastOut { k } => {
            let (train, test) = newest_per_user(data, |_| *k)?;
            Ok(vec![fold(train, test, format!("leave last {k} out"))])
        }
        Split::UserNewest { fraction } => {
            if !(*fraction > 0.0 && *fraction < 1.0) {
                return Err(AlsError::Param {
                    name: "fraction",
                    reason: "must be between 0 and 1".into(),
                });
            }
            let (train, test) = newest_per_user(data, |n| ((n as f64) * fraction).ceil() as usize)?;
            Ok(vec![fold(
                train,
                test,
                format!("newest {:.0}% per user", fraction * 100.0),
            )])
        }
        Split::KFold { folds, seed } => {
            if *folds < 2 {
                return Err(AlsError::Param {
                    name: "folds",
                    reason: "must be at least 2".into(),
                });
            }
            let mut order: Vec<usize> = (0..data.triples.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(*seed));
            Ok((0..*folds)
                .map(|f| {
                    let (mut train, mut test) = (Vec::new(), Vec::new());
                    for (pos, &n) in order.iter().enumerate() {
                        if pos % folds == f {
                            test.push(&data.triples[n]);
                        } else {
                            train.push(&data.triples[n]);
                        }
                    }
                    fold(train, test, format!("fold {}/{folds}", f + 1))
                })
                .collect())
        }
    }
}

/// The time that leaves `test_fraction` of `times` at or after it.
fn quantile_cutoff(times: &[i64], test_fraction: f64) -> Result<i64, AlsError> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(AlsError::Param {
            name: "test_fraction",
            reason: "must be between 0 and 1".into(),
        });
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = ((sorted.len() as f64) * (1.0 - test_fraction)) as usize;
    sorted
        .get(at.min(sorted.len().saturating_sub(1)))
        .copied()
        .ok_or(AlsError::Param {
            name: "interactions",
            reason: "no interactions to split".into(),
        })
}

/// Splits each user's interactions by time (then input order): the newest `held(n)` of the
/// user's `n` go to test, always leaving at least one for training.
#[allow(clippy::type_complexity)]
fn newest_per_user(
    data: &Interactions,
    held: impl Fn(usize) -> usize,
) -> Result<(Vec<&Triple>, Vec<&Triple>), AlsError> {
    let times = data.times.as_ref().ok_or(AlsError::NoTimes)?;
    let mut by_user: Vec<Vec<usize>> = vec![Vec::new(); data.users.len()];
    for (n, t) in data.triples.iter().enumerate() {
        by_user[t.user as usize].push(n);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for rows in &mut by_user {
        rows.sort_by_key(|&n| (times[n], n));
        let keep = rows
            .len()
            .saturating_sub(held(rows.len()))
            .max(1.min(rows.len()));
        let (a, b) = rows.split_at(keep);
        train.extend(a.iter().map(|&n| &data.triples[n]));
        test.extend(b.iter().map(|&n| &data.triples[n]));
    }
    Ok((train, test))
}

/// Ranking quality at K, averaged over the evaluated users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
    pub mrr: f64,
    pub coverage: f64,
    pub users: usize,
}

impl Metrics {
    /// The mean of several folds' metrics (users summed).
    pub fn mean(all: &[Metrics]) -> Metrics {
        let n = all.len().max(1) as f64;
        let avg = |g: fn(&Metrics) -> f64| all.iter().map(g).sum::<f64>() / n;
        Metrics {
            precision: avg(|m| m.precision),
            recall: avg(|m| m.recall),
            ndcg: avg(|m| m.ndcg),
            map: avg(|m| m.map),
            mrr: avg(|m| m.mrr),
            coverage: avg(|m| m.coverage),
            users: all.iter().map(|m| m.users).sum(),
        }
    }
}

/// Scores ranked lists (`recs[u]`) against held-out sets (`test[u]`, sorted).
pub fn metrics(recs: &[Vec<Scored>], test: &[Vec<u32>], k: usize, catalogue: usize) -> Metrics {
    let mut m = Metrics::default();
    let mut covered: HashSet<u32> = HashSet::new();
    for (list, held) in recs.iter().zip(test) {
        if held.is_empty() {
            continue;
        }
        m.users += 1;
        let (mut hits, mut dcg, mut ap, mut rr) = (0usize, 0f64, 0f64, 0f64);
        for (pos, s) in list.iter().take(k).enumerate() {
            covered.insert(s.item);
            if held.binary_search(&s.item).is_ok() {
                hits += 1;
                dcg += 1.0 / ((pos + 2) as f64).log2();
                ap += hits as f64 / (pos + 1) as f64;
                if rr == 0.0 {
                    rr = 1.0 / (pos + 1) as f64;
                }
            }
        }
        let ideal = held.len().min(k);
        let idcg: f64 = (0..ideal).map(|p| 1.0 / ((p + 2) as f64).log2()).sum();
        m.precision += hits as f64 / k as f64;
        m.recall += hits as f64 / held.len() as f64;
        m.ndcg += dcg / idcg;
        m.map += ap / ideal as f64;
        m.mrr += rr;
    }
    if m.users > 0 {
        let n = m.users as f64;
        m.precision /= n;
        m.recall /= n;
        m.ndcg /= n;
        m.map /= n;
        m.mrr /= n;
    }
    m.coverage = covered.len() as f64 / catalogue.max(1) as f64;
    m
}

/// A recommender under evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum Algorithm {
    Als(Params),
    /// Most-interacted items first (the cold-start fallback).
    Popularity,
    /// Item-based kNN: cosine on the binary matrix, `neighbours` kept per item.
    ItemKnn {
        neighbours: usize,
    },
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Als(_) => "als",
            Algorithm::Popularity => "popularity",
            Algorithm::ItemKnn { .. } => "item_knn",
        }
    }

    /// Top-`k`, training items excluded, for each user of `train` with held-out items in
    /// `test` (the users [`metrics`] scores); the other users' lists stay empty. Ranking the
    /// whole catalogue for users nobody scores is most of a large data set's evaluation time
    /// (Book-Crossing: 105,000 users × 340,000 books).
    pub fn recommend(
        &self,
        train: &Csr,
        test: &[Vec<u32>],
        k: usize,
    ) -> Result<Vec<Vec<Scored>>, AlsError> {
        let scored = |u: usize| test.get(u).is_some_and(|t| !t.is_empty());
        match self {
            Algorithm::Als(p) => {
                let model = fit(train, p, &mut |_| {})?;
                let users: Vec<u32> = (0..train.rows as u32)
                    .filter(|&u| scored(u as usize))
                    .collect();
                let mut lists = vec![Vec::new(); train.rows];
                for (u, list) in users.iter().zip(recommend_users(&model, train, &users, k)) {
                    lists[*u as usize] = list;
                }
                Ok(lists)
            }
            Algorithm::Popularity => {
                let mut counts = vec![0f32; train.cols];
                for &i in &train.idx {
                    counts[i as usize] += 1.0;
                }
                Ok(masked_top_k(train, k, scored, |_, scores| {
                    scores.copy_from_slice(&counts)
                }))
            }
            Algorithm::ItemKnn { neighbours } => {
                let sims = item_neighbours(train, *neighbours);
                Ok(masked_top_k(train, k, scored, |u, scores| {
                    scores.iter_mut().for_each(|s| *s = 0.0);
                    for &j in train.row(u).0 {
                        for &(i, s) in &sims[j as usize] {
                            scores[i as usize] += s;
                        }
                    }
                }))
            }
        }
    }
}

/// Per user that `wanted` says: fill scores, hide the user's training items, keep the top
/// `k` (an empty list for the others).
fn masked_top_k(
    train: &Csr,
    k: usize,
    wanted: impl Fn(usize) -> bool + Sync,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<Vec<Scored>> {
    (0..train.rows)
        .into_par_iter()
        .map_init(
            || vec![0f32; train.cols],
            |scores, u| {
                if !wanted(u) {
                    return Vec::new();
                }
                fill(u, scores);
                for &i in train.row(u).0 {
                    scores[i as usize] = f32::NEG_INFINITY;
                }
                top_k(scores, k)
            },
        )
        .collect()
}

/// For each item, its `keep` most cosine-similar items on the binary user × item matrix.
fn item_neighbours(train: &Csr, keep: usize) -> Vec<Vec<(u32, f32)>> {
    let by_item = train.transpose();
    let norms: Vec<f32> = (0..by_item.rows)
        .map(|i| (by_item.row(i).0.len() as f32).sqrt())
        .collect();
    (0..by_item.rows)
        .into_par_iter()
        .map_init(
            || vec![0f32; by_item.rows],
            |acc, i| {
                let mut touched: Vec<u32> = Vec::new();
                for &u in by_item.row(i).0 {
                    for &j in train.row(u as usize).0 {
                        if acc[j as usize] == 0.0 {
                            touched.push(j);
                        }
                        acc[j as usize] += 1.0;
                    }
                }
                let mut sims: Vec<(u32, f32)> = touched
                    .iter()
                    .filter(|&&j| j as usize != i)
                    .map(|&j| (j, acc[j as usize] / (norms[i] * norms[j as usize])))
                    .collect();
                for &j in &touched {
                    acc[j as usize] = 0.0;
                }
                sims.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                sims.truncate(keep);
                sims
            },
        )
        .collect()
}

/// One row of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub algorithm: Algorithm,
    pub metrics: Metrics,
    /// Per fold, in order.
    pub folds: Vec<Metrics>,
    pub seconds: f64,
}

/// Evaluates each algorithm on every fold.
pub fn evaluate(
    folds: &[Fold],
    algorithms: &[Algorithm],
    k: usize,
    catalogue: usize,
) -> Result<Vec<Row>, AlsError> {
    algorithms
        .iter()
        .map(|a| {
            let started = std::time::Instant::now();
            let per_fold = folds
                .iter()
                .map(|f| {
                    let recs = a.recommend(&f.train, &f.test, k)?;
                    Ok(metrics(&recs, &f.test, k, catalogue))
                })
                .collect::<Result<Vec<_>, AlsError>>()?;
            Ok(Row {
                algorithm: a.clone(),
                metrics: Metrics::mean(&per_fold),
                folds: per_fold,
                seconds: started.elapsed().as_secs_f64(),
            })
        })
        .collect()
}

/// The grid of a parameter search.
#[derive(Debug, Clone, Serialize)]
pub struct Grid {
    pub factors: Vec<usize>,
    pub regularization: Vec<f32>,
    /// λ's scaling per row (none, frequency = ALS-WR); each λ of the grid is tried with each
    pub scaling: Vec<super::RegularizationScaling>,
    /// ν of frequency scaling (λ·nᵛ); each frequency point is tried with each (empty: the
    /// base parameters' ν); `none` points ignore it
    pub exponent: Vec<f32>,
    pub alpha: Vec<f32>,
}

/// One tried point of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub params: Params,
    pub metrics: Metrics,
}

/// The validation split a search ranks its points on, carved out of a split's training part
/// so that the test data is never touched.
///
/// A search should validate the way its split tests: a temporal split's parameters are chosen
/// on a temporal window (the newest share of the training time, scored like bench-als's test:
/// each user known before the window, their later items not seen before), a random split's on
/// a random holdout. A random holdout under a temporal test chose heavy plain λ on ML-1M
/// (0.2618 on the test) over ALS-WR (0.2854): random holdouts reward smoothing towards what a
/// user already watched, a temporal window rewards predicting what comes next.
pub fn random_validation(train: &Csr, seed: u64) -> Fold {
    let mut cells: Vec<(u32, u32, f32)> = (0..train.rows)
        .flat_map(|u| {
            let (c, v) = train.row(u);
            c.iter().zip(v).map(move |(&i, &w)| (u as u32, i, w))
        })
        .collect();
    cells.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x5eed));
    let holdout = cells.len() / 5;
    let inner = Csr::build(train.rows, train.cols, cells[holdout..].iter().copied());
    let mut valid: Vec<Vec<u32>> = vec![Vec::new(); train.rows];
    for &(u, i, _) in &cells[..holdout] {
        valid[u as usize].push(i);
    }
    valid.iter_mut().for_each(|v| {
        v.sort_unstable();
        v.dedup();
    });
    Fold {
        train: inner,
        test: valid,
        description: "random 20% of the training interactions".into(),
    }
}

/// The temporal validation window of a temporal split at `cutoff`: of the interactions before
/// `cutoff`, the newest `fraction` (by time) validate, the rest train; only users with
/// training interactions are scored, on items new to them.
pub fn temporal_validation(
    data: &Interactions,
    cutoff: Option<i64>,
    fraction: f64,
) -> Result<Fold, AlsError> {
    let times = data.times.as_ref().ok_or(AlsError::NoTimes)?;
    let cutoff = match cutoff {
        Some(c) => c,
        None => quantile_cutoff(times, fraction)?,
    };
    let before: Vec<i64> = times.iter().copied().filter(|&t| t < cutoff).collect();
    let inner_cutoff = quantile_cutoff(&before, fraction)?;
    let (mut train, mut later) = (Vec::new(), Vec::new());
    for (t, &ts) in data.triples.iter().zip(times) {
        if ts < inner_cutoff {
            train.push((t.user, t.item, t.weight));
        } else if ts < cutoff {
            later.push((t.user, t.item));
        }
    }
    let (nu, ni) = (data.users.len(), data.items.len());
    let train = Csr::build(nu, ni, train.into_iter());
    let mut valid: Vec<Vec<u32>> = vec![Vec::new(); nu];
    for (u, i) in later {
        let row = u as usize;
        if train.row(row).0.is_empty() || train.contains(row, i) {
            continue;
        }
        valid[row].push(i);
    }
    valid.iter_mut().for_each(|v| {
        v.sort_unstable();
        v.dedup();
    });
    Ok(Fold {
        train,
        test: valid,
        description: format!("temporal validation {inner_cutoff}..{cutoff}"),
    })
}

/// The validation split of an evaluation's first fold: under a temporal test the newest
/// `fraction` of the time before the test window ([`temporal_validation`]), under any other
/// split a random 20% of the first fold's training part ([`random_validation`]).
pub fn split_validation(
    data: &Interactions,
    how: &Split,
    first: &Fold,
    fraction: f64,
    seed: u64,
) -> Result<Fold, AlsError> {
    match how {
        Split::Temporal {
            cutoff,
            test_fraction,
        } => {
            let cutoff = match cutoff {
                Some(c) => *c,
                None => quantile_cutoff(
                    data.times.as_ref().ok_or(AlsError::NoTimes)?,
                    *test_fraction,
                )?,
            };
            temporal_validation(data, Some(cutoff), fraction)
        }
        _ => Ok(random_validation(&first.train, seed)),
    }
}

/// Grid search on a validation split (see [`random_validation`], [`temporal_validation`]),
/// ranked by NDCG@k, best first.
pub fn search(
    validation: &Fold,
    base: &Params,
    grid: &Grid,
    k: usize,
) -> Result<Vec<Trial>, AlsError> {
    let scalings = if grid.scaling.is_empty() {
        vec![base.regularization_scaling]
    } else {
        grid.scaling.clone()
    };
    // ν only matters to a scaled λ
    let exponents = |scaling| {
        if scaling == super::RegularizationScaling::None || grid.exponent.is_empty() {
            vec![base.regularization_exponent]
        } else {
            grid.exponent.clone()
        }
    };
    let mut points = Vec::new();
    for &factors in &grid.factors {
        for &regularization_scaling in &scalings {
            for regularization_exponent in exponents(regularization_scaling) {
                for &regularization in &grid.regularization {
                    for &alpha in &grid.alpha {
                        points.push(Params {
                            factors,
                            regularization,
                            regularization_scaling,
                            regularization_exponent,
                            alpha,
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    rank((&validation.train, &validation.test), points, k)
}

/// Trains each point on `validation`'s training part and scores it on its held-out part,
/// best NDCG@k first (ties keep the given order: the earlier point wins). A point out of
/// range is an error naming it, before anything trains.
fn rank(
    (inner, valid): (&Csr, &[Vec<u32>]),
    points: Vec<Params>,
    k: usize,
) -> Result<Vec<Trial>, AlsError> {
    for params in &points {
        if let Some((name, reason)) = params.out_of_range() {
            return Err(AlsError::Param {
                name,
                reason: format!("grid point {params:?}: {reason}"),
            });
        }
    }
    let mut trials = Vec::with_capacity(points.len());
    for params in points {
        let recs = Algorithm::Als(params.clone()).recommend(inner, valid, k)?;
        trials.push(Trial {
            params,
            metrics: metrics(&recs, valid, k, inner.cols),
        });
    }
    // a stable sort: among equal scores the earlier point (the configured one first) wins
    trials.sort_by(|a, b| b.metrics.ndcg.total_cmp(&a.metrics.ndcg));
    Ok(trials)
}

/// NDCG@k of `[als.tune]`'s choice, as in `bookrec batch`'s promotion check.
pub const TUNE_K: usize = 10;

/// How a fit's regularisation was chosen (`[als.tune]`): recorded beside the model.
#[derive(Debug, Clone, Serialize)]
pub struct Tuning {
    /// the validation split, or why none was used (tuning off, nothing to validate on)
    pub validation: String,
    /// users scored on the validation split
    pub users: usize,
    /// every tried point with its validation metrics, best first (empty when not tuned)
    pub trials: Vec<Trial>,
    pub seconds: f64,
}

impl Tuning {
    /// One line for logs and reports: the point that trained and how it was chosen.
    pub fn describe(&self, chosen: &Params) -> String {
        let point = regularization_label(chosen);
        match self.trials.first() {
            Some(best) => format!(
                "{point} (als.tune: NDCG@{TUNE_K} {:.4} on {}, {} users, best of {}, {:.1} s)",
                best.metrics.ndcg,
                self.validation,
                self.users,
                self.trials.len(),
                self.seconds
            ),
            None => format!("{point} ({})", self.validation),
        }
    }
}

const NOT_TUNED: &str = "not tuned (als.tune.enabled = false, or a regularisation was given)";

fn untuned(base: &Params, why: String) -> (Params, Tuning) {
    let tuning = Tuning {
        validation: why,
        users: 0,
        trials: Vec::new(),
        seconds: 0.0,
    };
    (base.clone(), tuning)
}

/// The validation split `[als.tune]` ranks on for a fit on all of `data`: the newest
/// `fraction` of the interactions by time (each user known before it, scored on items new to
/// them, as [`temporal_validation`]), or a random 20% when the data has no times.
pub fn tune_validation(data: &Interactions, fraction: f64, seed: u64) -> Result<Fold, AlsError> {
    match data.times.as_deref().and_then(|t| t.iter().max()) {
        Some(&newest) => temporal_validation(data, Some(newest.saturating_add(1)), fraction),
        None => Ok(random_validation(&data.matrix(), seed)),
    }
}

/// The parameters a fit trains with: `base` when `base.tune` is off, else the best by
/// NDCG@[`TUNE_K`] on `validation` of `base`'s own point and `base.tune.candidates` (the
/// configured point wins ties and is kept when no user can be validated).
pub fn tune_on(validation: &Fold, base: &Params) -> Result<(Params, Tuning), AlsError> {
    let started = std::time::Instant::now();
    if !base.tune.enabled {
        return Ok(untuned(base, NOT_TUNED.into()));
    }
    let mut scored: Vec<usize> = (0..validation.test.len())
        .filter(|&u| !validation.test[u].is_empty())
        .collect();
    let users = scored.len();
    if users == 0 {
        return Ok(untuned(
            base,
            format!(
                "not tuned: no user to score on {} (the configured point trains)",
                validation.description
            ),
        ));
    }
    // at most `max_users` scored (a seeded sample): ranking the whole catalogue is the
    // part of a point's cost that grows with the users
    let (sampled, description, users) = if users > base.tune.max_users {
        scored.shuffle(&mut StdRng::seed_from_u64(base.seed ^ 0x7e57));
        let mut test = vec![Vec::new(); validation.test.len()];
        for &u in &scored[..base.tune.max_users] {
            test[u] = validation.test[u].clone();
        }
        let description = format!(
            "{} ({} of its {users} users, sampled)",
            validation.description, base.tune.max_users
        );
        (Some(test), description, base.tune.max_users)
    } else {
        (None, validation.description.clone(), users)
    };
    let test = sampled.as_deref().unwrap_or(&validation.test);
    let mut points = vec![base.clone()];
    for c in &base.tune.candidates {
        let p = c.apply(base);
        if !points.contains(&p) {
            points.push(p);
        }
    }
    let trials = rank((&validation.train, test), points, TUNE_K)?;
    let chosen = trials
        .first()
        .map_or_else(|| base.clone(), |t| t.params.clone());
    Ok((
        chosen,
        Tuning {
            validation: description,
            users,
            trials,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// [`tune_on`] on [`tune_validation`] of `data` (the data a fit then trains on in full).
pub fn tuned(data: &Interactions, base: &Params) -> Result<(Params, Tuning), AlsError> {
    if !base.tune.enabled {
        return Ok(untuned(base, NOT_TUNED.into()));
    }
    let validation = tune_validation(data, base.tune.validation_fraction, base.seed)?;
    tune_on(&validation, base)
}

/// An evaluation report: one row per algorithm, the search trials when a search ran.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub split: Split,
    pub folds: Vec<String>,
    pub k: usize,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    pub rows: Vec<Row>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Vec<Trial>>,
    /// The validation split the search ranked on (its fold description).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    /// How `[als.tune]` chose the ALS row's regularisation (without `--search`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuning: Option<Tuning>,
}

/// A point's regularisation as the tables print it: `λ none`, `λ frequency^ν`, ….
pub fn regularization_label(p: &Params) -> String {
    match p.regularization_scaling {
        super::RegularizationScaling::None => format!("{} none", p.regularization),
        other => format!(
            "{} {}^{}",
            p.regularization,
            format!("{other:?}").to_lowercase(),
            p.regularization_exponent
        ),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} users, {} items, {} interactions; {} ({} fold(s)); metrics @{}",
            self.users,
            self.items,
            self.interactions,
            self.folds.first().map(String::as_str).unwrap_or("-"),
            self.folds.len(),
            self.k
        )?;
        if let Some(trials) = &self.search {
            writeln!(
                f,
                "search on {} (validation NDCG@{}), best first:",
                self.validation.as_deref().unwrap_or("a validation split"),
                self.k
            )?;
            for t in trials.iter().take(5) {
                writeln!(
                    f,
                    "  factors={:<4} regularization={:<22} alpha={:<6} ndcg={:.4} \
                     precision={:.4}",
                    t.params.factors,
                    regularization_label(&t.params),
                    t.params.alpha,
                    t.metrics.ndcg,
                    t.metrics.precision
                )?;
            }
        }
        if let Some(t) = &self.tuning {
            writeln!(f, "als.tune: {} ({} users)", t.validation, t.users)?;
            for (n, trial) in t.trials.iter().enumerate() {
                writeln!(
                    f,
                    "  {} regularization={:<22} ndcg@{TUNE_K}={:.4}",
                    if n == 0 { "chosen" } else { "      " },
                    regularization_label(&trial.params),
                    trial.metrics.ndcg
                )?;
            }
        }
        writeln!(
            f,
            "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "model", "precision", "recall", "ndcg", "map", "mrr", "coverage", "seconds"
        )?;
        for r in &self.rows {
            let m = &r.metrics;
            writeln!(
                f,
                "{:<11} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>8.2}",
                r.algorithm.name(),
                m.precision,
                m.recall,
                m.ndcg,
                m.map,
                m.mrr,
                m.coverage,
                r.seconds
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::matrix::IdMap;

    #[test]
    fn metrics_by_hand() {
        // user 0: held {1, 5}, list [1, 2, 5] → hits at ranks 1 and 3
        // user 1: held {9},    list [3, 4, 8] → no hit
        // user 2: nothing held → not scored
        let s = |i| Scored {
            item: i,
            score: 1.0,
        };
        let recs = vec![vec![s(1), s(2), s(5)], vec![s(3), s(4), s(8)], vec![s(7)]];
        let test = vec![vec![1, 5], vec![9], vec![]];
        let m = metrics(&recs, &test, 3, 10);
        let dcg0 = 1.0 + 1.0 / 4f64.log2();
        let idcg0 = 1.0 + 1.0 / 3f64.log2();
        assert_eq!(m.users, 2);
        assert!((m.precision - (2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((m.recall - 0.5).abs() < 1e-12);
        assert!((m.ndcg - dcg0 / idcg0 / 2.0).abs() < 1e-12);
        assert!((m.map - (1.0 + 2.0 / 3.0) / 2.0 / 2.0).abs() < 1e-12);
        assert!((m.mrr - 0.5).abs() < 1e-12);
        assert!((m.coverage - 6.0 / 10.0).abs() < 1e-12);
    }

    fn data(rows: &[(&str, &str, i64)]) -> Interactions {
        let (mut users, mut items) = (IdMap::new(), IdMap::new());
        let triples = rows
            .iter()
            .map(|(u, i, _)| Triple {
                user: users.intern(u),
                item: items.intern(i),
                weight: 1.0,
            })
            .collect();
        Interactions {
            users,
            items,
            triples,
            times: Some(rows.iter().map(|r| r.2).collect()),
        }
    }

    #[test]
    fn splits_hold_out_what_they_say() {
        let d = data(&[
            ("a", "x", 1),
            ("a", "y", 5),
            ("a", "z", 9),
            ("b", "x", 2),
            ("b", "w", 8),
        ]);
        let t = &split(
            &d,
            &Split::Temporal {
                cutoff: Some(6),
                test_fraction: 0.2,
            },
        )
        .unwrap()[0];
        assert_eq!(t.train.nnz(), 3);
        assert_eq!(t.test, vec![vec![2], vec![3]]);
        let l = &split(&d, &Split::LeaveLastOut { k: 1 }).unwrap()[0];
        assert_eq!(l.test, vec![vec![2], vec![3]]);
        let folds = split(&d, &Split::KFold { folds: 5, seed: 1 }).unwrap();
        let held: usize = folds
            .iter()
            .map(|f| f.test.iter().map(Vec::len).sum::<usize>())
            .sum();
        assert_eq!((folds.len(), held), (5, 5));
        assert!(folds.iter().all(|f| f.train.nnz() == 4));
    }

    #[test]
    fn temporal_validation_stays_before_the_test_window() {
        // users: a (times 1, 5, 9, 11), b (2, 8, 12), c (7 only: unknown before the window)
        let d = data(&[
            ("a", "x", 1),
            ("a", "y", 5),
            ("a", "z", 9),
            ("a", "v", 11),
            ("b", "x", 2),
            ("b", "w", 8),
            ("b", "y", 12),
            ("c", "x", 7),
        ]);
        // test window from 10 on; of the 6 earlier interactions the newest half (time ≥ 7)
        // validate
        let v = temporal_validation(&d, Some(10), 0.5).unwrap();
        assert_eq!(v.description, "temporal validation 7..10");
        assert_eq!(v.train.nnz(), 3, "times 1, 2, 5 train");
        // a gets z (9), b gets w (8); c had nothing before 7, so it is not scored; nothing at
        // or after 10 (v, y of b) is seen
        let (z, w) = (d.items.get("z").unwrap(), d.items.get("w").unwrap());
        let (a, b) = (d.users.get("a").unwrap(), d.users.get("b").unwrap());
        assert_eq!(v.test[a as usize], vec![z]);
        assert_eq!(v.test[b as usize], vec![w]);
        assert_eq!(v.test.iter().map(Vec::len).sum::<usize>(), 2);
        // without a cut-off the test window is the newest `fraction` itself
        let auto = temporal_validation(&d, None, 0.5).unwrap();
        assert!(auto.description.ends_with("..8"), "{}", auto.description);
        assert!(matches!(
            temporal_validation(&d, Some(10), 1.5),
            Err(AlsError::Param { .. })
        ));
        // the search ranks its grid on that window
        let grid = Grid {
            factors: vec![2],
            regularization: vec![0.1, 1.0],
            scaling: vec![],
            exponent: vec![],
            alpha: vec![1.0],
        };
        let base = Params {
            iterations: 2,
            ..Params::default()
        };
        let trials = search(&v, &base, &grid, 2).unwrap();
        assert_eq!(trials.len(), 2);
        assert!(trials.iter().all(|t| t.metrics.users == 2));
    }

    #[test]
    fn baselines_rank_as_expected() {
        // x is the most popular; c's neighbour items come from a and b, who share x and y
        let d = data(&[
            ("a", "x", 0),
            ("a", "y", 0),
            ("b", "x", 0),
            ("b", "y", 0),
            ("b", "z", 0),
            ("c", "x", 0),
            ("d", "q", 0),
        ]);
        let m = d.matrix();
        // every user is scored except b (nothing held out): b's lists stay empty
        let mut held = vec![vec![0]; m.rows];
        held[d.users.get("b").unwrap() as usize].clear();
        let pop = Algorithm::Popularity.recommend(&m, &held, 1).unwrap();
        assert_eq!(pop[3][0].item, d.items.get("x").unwrap());
        let knn = Algorithm::ItemKnn { neighbours: 10 }
            .recommend(&m, &held, 2)
            .unwrap();
        let b = d.users.get("b").unwrap() as usize;
        assert!(pop[b].is_empty() && knn[b].is_empty());
        let als = Algorithm::Als(Params {
            factors: 2,
            iterations: 2,
            ..Params::default()
        })
        .recommend(&m, &held, 2)
        .unwrap();
        assert!(als[b].is_empty() && als.iter().filter(|l| !l.is_empty()).count() == 3);
        let c: Vec<&str> = knn[2].iter().map(|s| d.items.id(s.item)).collect();
        assert_eq!(c, vec!["y", "z"]);
        // a has x and y: z is the only neighbour with a positive score
        assert_eq!(d.items.id(knn[0][0].item), "z");
        assert!(knn[0][0].score > 0.0 && knn[0][1].score == 0.0);
    }

    /// Two tastes over 24 users and 12 items, with times: each user's later interactions stay
    /// in their taste, so the newest share is predictable from the rest.
    fn tastes() -> Interactions {
        let mut rows = Vec::new();
        for u in 0..24 {
            let base = if u % 2 == 0 { 0 } else { 6 };
            for (n, i) in (0..6).filter(|i| (i + u) % 3 != 0).enumerate() {
                rows.push((
                    format!("u{u}"),
                    format!("i{}", base + i),
                    (n * 24 + u) as i64,
                ));
            }
        }
        let rows: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), i.as_str(), *t))
            .collect();
        data(&rows)
    }

    fn tune_base(candidates: &[(crate::als::RegularizationScaling, f32)]) -> Params {
        let mut p = Params {
            factors: 4,
            iterations: 4,
            regularization: 50.0,
            threads: 1,
            ..Params::default()
        };
        p.tune.candidates = candidates
            .iter()
            .map(
                |&(regularization_scaling, regularization)| crate::config::TunePoint {
                    regularization,
                    regularization_scaling,
                    regularization_exponent: 1.0,
                },
            )
            .collect();
        p
    }

    #[test]
    fn tune_chooses_the_point_that_validates_best() {
        use crate::als::RegularizationScaling as S;
        let d = tastes();
        // the configured point again (tried once), two others
        let base = tune_base(&[(S::None, 50.0), (S::None, 0.5), (S::Frequency, 2.0)]);
        let (chosen, tuning) = tuned(&d, &base).unwrap();
        assert_eq!(
            tuning.trials.len(),
            3,
            "the configured point is not trained twice"
        );
        assert!(
            tuning.validation.starts_with("temporal validation"),
            "{}",
            tuning.validation
        );
        assert!(tuning.users > 0);
        // by hand: each point trained on the validation split's training part and scored
        let v = tune_validation(&d, base.tune.validation_fraction, base.seed).unwrap();
        assert_eq!(
            tuning.users,
            v.test.iter().filter(|t| !t.is_empty()).count()
        );
        let mut best: Option<(f64, Params)> = None;
        for p in [
            base.clone(),
            base.tune.candidates[1].apply(&base),
            base.tune.candidates[2].apply(&base),
        ] {
            let recs = Algorithm::Als(p.clone())
                .recommend(&v.train, &v.test, TUNE_K)
                .unwrap();
            let ndcg = metrics(&recs, &v.test, TUNE_K, v.train.cols).ndcg;
            let trial = tuning
                .trials
                .iter()
                .find(|t| t.params == p)
                .expect("each point tried");
            assert_eq!(trial.metrics.ndcg, ndcg, "{}", regularization_label(&p));
            if best.as_ref().is_none_or(|(b, _)| ndcg > *b) {
                best = Some((ndcg, p));
            }
        }
        let (best_ndcg, best) = best.unwrap();
        assert_eq!(chosen, best, "the first of the best wins");
        assert_eq!(tuning.trials[0].metrics.ndcg, best_ndcg);
        assert!(
            tuning
                .trials
                .windows(2)
                .all(|w| w[0].metrics.ndcg >= w[1].metrics.ndcg)
        );
        // only the regularisation moves
        assert_eq!(
            (chosen.factors, chosen.alpha, chosen.iterations),
            (4, base.alpha, 4)
        );
        let line = tuning.describe(&chosen);
        assert!(line.starts_with(&regularization_label(&chosen)), "{line}");
        assert!(
            line.contains(&format!("{} users, best of 3", tuning.users)),
            "{line}"
        );
    }

    #[test]
    fn tune_keeps_the_configured_point_when_off_or_unable_to_validate() {
        use crate::als::RegularizationScaling as S;
        let d = tastes();
        let mut off = tune_base(&[(S::None, 0.5)]);
        off.tune.enabled = false;
        let (p, t) = tuned(&d, &off).unwrap();
        assert_eq!(p, off);
        assert!(t.trials.is_empty() && t.validation.starts_with("not tuned"));
        assert_eq!(
            t.describe(&p),
            "50 none (not tuned (als.tune.enabled = false, or a regularisation was given))"
        );
        // every user appears for the first time in the validation window: nobody to score
        let fresh = data(&[("a", "x", 1), ("b", "y", 2), ("c", "x", 3), ("d", "y", 4)]);
        let on = tune_base(&[(S::None, 0.5)]);
        let (p, t) = tuned(&fresh, &on).unwrap();
        assert_eq!(p, on);
        assert!(
            t.trials.is_empty() && t.validation.contains("no user to score"),
            "{}",
            t.validation
        );
        // one instant for everything: nothing is older than the window
        let instant = data(&[("a", "x", 5), ("a", "y", 5), ("b", "x", 5)]);
        let (p, t) = tuned(&instant, &on).unwrap();
        assert_eq!(p, on);
        assert!(t.trials.is_empty(), "{}", t.validation);
        // without times: a random holdout
        let untimed = Interactions {
            times: None,
            ..tastes()
        };
        let (_, t) = tuned(&untimed, &on).unwrap();
        assert_eq!(t.validation, "random 20% of the training interactions");
        assert_eq!(t.trials.len(), 2);
    }

    #[test]
    fn tune_scores_a_seeded_sample_of_at_most_max_users() {
        use crate::als::RegularizationScaling as S;
        let d = tastes();
        let mut p = tune_base(&[(S::None, 0.5)]);
        let (_, all) = tuned(&d, &p).unwrap();
        assert!(all.users > 3);
        p.tune.max_users = 3;
        let (_, a) = tuned(&d, &p).unwrap();
        let (_, b) = tuned(&d, &p).unwrap();
        assert_eq!(a.users, 3);
        assert!(
            a.validation
                .ends_with(&format!("(3 of its {} users, sampled)", all.users))
        );
        assert!(a.trials.iter().all(|t| t.metrics.users == 3));
        let ndcg = |t: &Tuning| t.trials.iter().map(|t| t.metrics.ndcg).collect::<Vec<_>>();
        assert_eq!(ndcg(&a), ndcg(&b), "the same seed, the same sample");
    }

    #[test]
    fn tune_settings_are_range_checked_with_their_key() {
        use crate::als::RegularizationScaling as S;
        let mut p = tune_base(&[(S::None, -1.0)]);
        assert_eq!(p.out_of_range().map(|e| e.0), Some("tune.candidates"));
        p = tune_base(&[(S::Frequency, 1.0)]);
        p.tune.candidates[0].regularization_exponent = 2.0;
        assert_eq!(p.out_of_range().map(|e| e.0), Some("tune.candidates"));
        p = tune_base(&[(S::None, 1.0); 17]);
        assert_eq!(p.out_of_range().map(|e| e.0), Some("tune.candidates"));
        p = tune_base(&[]);
        p.tune.max_users = 0;
        assert_eq!(p.out_of_range().map(|e| e.0), Some("tune.max_users"));
        for bad in [0.0, 0.6, f64::NAN] {
            p = tune_base(&[]);
            p.tune.validation_fraction = bad;
            assert_eq!(
                p.out_of_range().map(|e| e.0),
                Some("tune.validation_fraction")
            );
        }
    }
}
