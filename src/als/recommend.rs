//! Ranking with a trained model: top-K books per user (seen books excluded) and top-K similar
//! books per book (cosine on the item factors). Both score every candidate (full ranking) and
//! keep the best K with a partial selection; rows run in parallel.

use rayon::prelude::*;

use super::matrix::Csr;
use super::train::{Model, dot};

/// One ranked item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub item: u32,
    pub score: f32,
}

/// Ordered so that greater = better: higher score, then lower item index.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Better(Scored);

impl Eq for Better {}

impl PartialOrd for Better {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Better {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .score
            .total_cmp(&other.0.score)
            .then(other.0.item.cmp(&self.0.item))
    }
}

/// The best `k` of `scores` (NaN and -inf never chosen), best first, ties by item index.
/// A bounded heap: O(n log k) time and O(k) memory, however many items there are.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Scored> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if k == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Reverse<Better>> = BinaryHeap::with_capacity(k + 1);
    for (i, &score) in scores.iter().enumerate() {
        if !score.is_finite() {
            continue;
        }
        let cand = Better(Scored {
            item: i as u32,
            score,
        });
        if heap.len() < k {
            heap.push(Reverse(cand));
        } else if heap.peek().is_some_and(|worst| cand > worst.0) {
            heap.pop();
            heap.push(Reverse(cand));
        }
    }
    // ascending by Reverse = descending by Better: best first
    heap.into_sorted_vec().into_iter().map(|r| r.0.0).collect()
}

/// Scores of every item for user `u` into `out`.
pub fn score_user(model: &Model, u: usize, out: &mut [f32]) {
    super::kernel::scores_dispatch(model.user(u), &model.item_factors, model.factors, out);
}

/// Top-`k` items for each user `0..model.users()`, items in `seen` (user × item) excluded.
pub fn recommend_all(model: &Model, seen: &Csr, k: usize) -> Vec<Vec<Scored>> {
    let users: Vec<u32> = (0..model.users() as u32).collect();
    recommend_users(model, seen, &users, k)
}

/// Top-`k` items for each user in `users`, items in `seen` (user × item) excluded.
pub fn recommend_users(model: &Model, seen: &Csr, users: &[u32], k: usize) -> Vec<Vec<Scored>> {
    users
        .par_iter()
        .map_init(
            || vec![0f32; model.items()],
            |scores, &u| {
                let u = u as usize;
                score_user(model, u, scores);
                if u < seen.rows {
                    for &i in seen.row(u).0 {
                        scores[i as usize] = f32::NEG_INFINITY;
                    }
                }
                top_k(scores, k)
            },
        )
        .collect()
}

/// Item factors scaled to unit length (zero rows stay zero).
pub fn normalized_items(model: &Model) -> Vec<f32> {
    let mut out = model.item_factors.clone();
    for row in out.chunks_exact_mut(model.factors) {
        let n = dot(row, row).sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    }
    out
}

/// Top-`k` most similar items (cosine on item factors) for each item in `items`.
pub fn similar_items(model: &Model, items: &[u32], k: usize) -> Vec<Vec<Scored>> {
    let f = model.factors;
    let unit = normalized_items(model);
    let n = model.items();
    items
        .par_iter()
        .map_init(
            || vec![0f32; n],
            |scores, &i| {
                let yi = &unit[i as usize * f..(i as usize + 1) * f];
                super::kernel::scores_dispatch(yi, &unit, f, scores);
                scores[i as usize] = f32::NEG_INFINITY;
                top_k(scores, k)
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::train::{Params, fit};
    use proptest::prelude::*;

    #[test]
    fn overlapping_shelves_recommend_each_other() {
        // A {1,2,3} and B {2,3,4} overlap; C {5,6,7} and D {6,7,8} overlap
        let shelves = [[1, 2, 3], [2, 3, 4], [5, 6, 7], [6, 7, 8]];
        let m = Csr::build(
            4,
            9,
            shelves
                .iter()
                .enumerate()
                .flat_map(|(u, s)| s.iter().map(move |&i| (u as u32, i, 1.0))),
        );
        // two factors for two groups: the model must generalise, it cannot memorise
        let p = Params {
            factors: 2,
            iterations: 20,
            regularization: 0.1,
            alpha: 10.0,
            ..Params::default()
        };
        let model = fit(&m, &p, &mut |_| {}).unwrap();
        let recs = recommend_all(&model, &m, 1);
        let top: Vec<u32> = recs.iter().map(|r| r[0].item).collect();
        assert_eq!(top, vec![4, 1, 8, 5]);
        let sim = similar_items(&model, &[1, 5], 1);
        assert!([2, 3, 4].contains(&sim[0][0].item), "{sim:?}");
        assert!([6, 7, 8].contains(&sim[1][0].item), "{sim:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn lists_hold_at_most_k_unseen_distinct_items_with_finite_scores(
            cells in proptest::collection::vec((0u32..12, 0u32..20, 0.1f32..5.0), 1..120),
            k in 1usize..25,
            factors in 1usize..9,
        ) {
            let m = Csr::build(12, 20, cells.into_iter());
            let p = Params { factors, iterations: 3, ..Params::default() };
            let model = fit(&m, &p, &mut |_| {}).unwrap();
            for (u, list) in recommend_all(&model, &m, k).iter().enumerate() {
                prop_assert!(list.len() <= k);
                prop_assert_eq!(list.len(), k.min(20 - m.row(u).0.len()));
                let mut items: Vec<u32> = list.iter().map(|s| s.item).collect();
                prop_assert!(list.iter().all(|s| s.score.is_finite() && !m.contains(u, s.item)));
                prop_assert!(list.windows(2).all(|w| w[0].score >= w[1].score));
                items.sort_unstable();
                items.dedup();
                prop_assert_eq!(items.len(), list.len());
            }
        }
    }

    #[test]
    fn top_k_is_ordered_skips_non_finite_and_breaks_ties_by_index() {
        let s = [0.5, f32::NEG_INFINITY, 0.9, f32::NAN, 0.5, 0.1];
        let t = top_k(&s, 3);
        let items: Vec<u32> = t.iter().map(|x| x.item).collect();
        assert_eq!(items, vec![2, 0, 4]);
        assert_eq!(top_k(&s, 10).len(), 4);
        assert!(top_k(&s, 0).is_empty());
    }
}
