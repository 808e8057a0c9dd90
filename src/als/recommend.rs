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

/// The best `k` of `scores` (NaN and -inf never chosen), best first, ties by item index.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Scored> {
    let mut cand: Vec<Scored> = scores
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .map(|(i, &s)| Scored {
            item: i as u32,
            score: s,
        })
        .collect();
    let order = |a: &Scored, b: &Scored| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item));
    if cand.len() > k && k > 0 {
        cand.select_nth_unstable_by(k - 1, order);
        cand.truncate(k);
    }
    cand.truncate(k);
    cand.sort_unstable_by(order);
    cand
}

/// Scores of every item for user `u` into `out`.
pub fn score_user(model: &Model, u: usize, out: &mut [f32]) {
    let xu = model.user(u);
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot(xu, model.item(i));
    }
}

/// Top-`k` items for each user `0..model.users()`, items in `seen` (user × item) excluded.
pub fn recommend_all(model: &Model, seen: &Csr, k: usize) -> Vec<Vec<Scored>> {
    (0..model.users())
        .into_par_iter()
        .map_init(
            || vec![0f32; model.items()],
            |scores, u| {
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
                for (j, s) in scores.iter_mut().enumerate() {
                    *s = dot(yi, &unit[j * f..(j + 1) * f]);
                }
                scores[i as usize] = f32::NEG_INFINITY;
                top_k(scores, k)
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
