//! Fold-in: a factor for a user the model was not trained on, from a handful of interactions,
//! against a published model's item factors — the implicit-ALS user step, solved exactly:
//!
//! `(YᵀY + λI + Σᵢ α·wᵢ yᵢyᵢᵀ) xᵤ = Σᵢ (1 + α·wᵢ) yᵢ`  (= `(YᵀCᵤY + λI)xᵤ = YᵀCᵤpᵤ`)
//!
//! `YᵀY + λI` is computed once per model ([`FoldIn::new`]); a user costs the `f × f` system
//! of their few interactions (one Cholesky: f³/3 ≈ 90k multiply-adds for f = 64) plus one
//! pass over the item factors to rank (`items × f`). `benches/fold_in.rs` measures both.

use std::collections::{HashMap, HashSet};

use super::AlsError;
use super::kernel::scores_dispatch;
use super::recommend::{Scored, top_k};
use super::train::{Params, gram, solve_row_exact};

/// A model's item side, ready to fold users in.
#[derive(Debug, Clone)]
pub struct FoldIn {
    f: usize,
    ids: Vec<String>,
    index: HashMap<String, u32>,
    /// `items × f`, row-major
    items: Vec<f32>,
    /// `YᵀY + λI` (`YᵀY` alone under frequency scaling), `f × f`
    yty: Vec<f32>,
    /// the model's regularisation: under frequency scaling a user with n interactions gets
    /// `λ·nᵛ` on the diagonal (under confidence scaling `λ·(items + α·Σw)ᵛ`:
    /// [`Params::row_lambda`])
    params: Params,
}

impl FoldIn {
    /// `ids[i]` names row `i` of `items` (`ids.len() × f` factors); `params` are the model's
    /// training parameters (alpha and the regularisation are read; `factors` is `f`).
    pub fn new(
        ids: Vec<String>,
        items: Vec<f32>,
        f: usize,
        params: &Params,
    ) -> Result<FoldIn, AlsError> {
        let (alpha, regularization) = (params.alpha, params.regularization);
        let bad = |reason: String| AlsError::Param {
            name: "fold_in",
            reason,
        };
        if f == 0 || items.len() != ids.len() * f {
            return Err(bad(format!(
                "{} factors for {} items of {f} factors",
                items.len(),
                ids.len()
            )));
        }
        if !(alpha.is_finite()
            && alpha >= 0.0
            && regularization.is_finite()
            && regularization > 0.0)
        {
            return Err(bad(format!(
                "alpha {alpha} must be >= 0 and regularization {regularization} > 0"
            )));
        }
        let params = Params {
            factors: f,
            ..params.clone()
        };
        if let Some((name, reason)) = params.out_of_range() {
            return Err(AlsError::Param {
                name,
                reason: reason.into(),
            });
        }
        if let Some(i) = items.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("item {} has a non-finite factor", ids[i / f])));
        }
        let mut yty = gram(&items, f);
        let shared = params.shared_lambda();
        for d in 0..f {
            yty[d * f + d] += shared;
        }
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Ok(FoldIn {
            f,
            ids,
            index,
            items,
            yty,
            params,
        })
    }

    pub fn factors(&self) -> usize {
        self.f
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The row of a book the model knows.
    pub fn index(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn id(&self, item: u32) -> &str {
        &self.ids[item as usize]
    }

    /// The user's factor from `(item, weight)` interactions (weights > 0; an item given
    /// twice counts with the sum of its weights). Zeros when there are none.
    pub fn user_factor(&self, interactions: &[(u32, f32)]) -> Vec<f32> {
        let mut merged: Vec<(u32, f32)> = interactions
            .iter()
            .copied()
            .filter(|(i, w)| (*i as usize) < self.ids.len() && w.is_finite() && *w > 0.0)
            .collect();
        merged.sort_by_key(|(i, _)| *i);
        merged.dedup_by(|next, kept| {
            if next.0 == kept.0 {
                kept.1 += next.1;
                true
            } else {
                false
            }
        });
        let mut x = vec![0f32; self.f];
        if merged.is_empty() {
            return x;
        }
        let (cols, vals): (Vec<u32>, Vec<f32>) = merged.into_iter().unzip();
        solve_row_exact(
            &self.yty,
            &self.items,
            self.f,
            &cols,
            &vals,
            self.params.alpha,
            self.params.row_lambda(&vals, self.ids.len()),
            &mut x,
        );
        x
    }

    /// The best `k` items for the factor `x` (score `x·yᵢ`), `seen` left out.
    pub fn rank(&self, x: &[f32], k: usize, seen: &HashSet<u32>) -> Vec<Scored> {
        let mut scores = vec![0f32; self.ids.len()];
        scores_dispatch(x, &self.items, self.f, &mut scores);
        for &i in seen {
            if let Some(s) = scores.get_mut(i as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        top_k(&scores, k)
    }

    /// Fold-in by book id: the top `k` books for a user with these `(book, weight)`
    /// interactions, the books they interacted with left out. Books the model does not know
    /// are ignored; empty when none is known.
    pub fn recommend(&self, interactions: &[(&str, f32)], k: usize) -> Vec<(String, f32)> {
        let known: Vec<(u32, f32)> = interactions
            .iter()
            .filter_map(|(b, w)| Some((self.index(b)?, *w)))
            .collect();
        if known.is_empty() {
            return Vec::new();
        }
        let x = self.user_factor(&known);
        let seen: HashSet<u32> = known.iter().map(|(i, _)| *i).collect();
        self.rank(&x, k, &seen)
            .into_iter()
            .map(|s| (self.id(s.item).to_string(), s.score))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::RegularizationScaling;

    /// The model parameters fold-in reads.
    fn model(alpha: f32, regularization: f32, scaling: RegularizationScaling) -> Params {
        Params {
            alpha,
            regularization,
            regularization_scaling: scaling,
            ..Params::default()
        }
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * (1.0 + b.abs())
    }

    /// f = 2, three items, by hand: A = YᵀY + λI + Σ α·w·y·yᵀ, b = Σ (1 + α·w)·y, x = A⁻¹b
    /// by Cramer's rule.
    #[test]
    fn the_factor_is_the_solution_of_the_users_normal_equations() {
        // YᵀY = [[2,1],[1,2]]; + λI = [[2.5,1],[1,2.5]]
        // + α·1·a·aᵀ = [[2,0],[0,0]]; + α·3·c·cᵀ = [[6,6],[6,6]] → A = [[10.5,7],[7,8.5]]
        // b = (1+2)·(1,0) + (1+6)·(1,1) = (10, 7)
        let (fold, x, want) = by_hand_scaled(RegularizationScaling::None, 0.5);
        // duplicates add up: (c, 1) + (c, 2) is (c, 3)
        let again = fold.user_factor(&[(0, 1.0), (2, 1.0), (2, 2.0)]);
        assert!(close(again[0], want[0]) && close(again[1], want[1]));
        // ranking: b is the only unseen item, its score x·(0,1)
        let ranked = fold.rank(&x, 5, &[0, 2].into_iter().collect());
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].item, 1);
        assert!(close(ranked[0].score, x[1]));
    }

    /// Folding in a trained user's own interactions gives (nearly) the factor training gave
    /// them: the same equations against the same item factors (training's last user step
    /// used the item factors of one step before, so after convergence they agree closely).
    #[test]
    fn a_trained_user_folded_in_again_gets_their_own_factor_back() {
        folded_in_again(RegularizationScaling::None, 1.0, 50.0, 1e-3);
    }

    /// The same under ALS-WR: the user's λ·nᵤ comes from the interactions folded in. (A
    /// smaller λ leaves f32 a less well-conditioned system: agreement to 0.5 %.)
    #[test]
    fn under_als_wr_too() {
        folded_in_again(RegularizationScaling::Frequency, 1.0, 0.5, 5e-3);
    }

    /// And under frequency scaling with ν = 0.5 (the user's λ·√nᵤ).
    #[test]
    fn under_square_root_scaling_too() {
        folded_in_again(RegularizationScaling::Frequency, 0.5, 3.0, 5e-3);
    }

    /// The by-hand system of the first test under frequency scaling, ν = 0.5: no λ in the
    /// shared Gram matrix, λ·√2 on the diagonal of the user's two interactions.
    #[test]
    fn frequency_scaling_puts_lambda_times_n_to_the_nu_on_the_users_diagonal() {
        by_hand_scaled(RegularizationScaling::Frequency, 0.5 * 2f32.sqrt());
    }

    /// The same under confidence scaling, ν = 0.5: λ·(3 items + α·(1 + 3))^0.5 = 0.5·√11.
    #[test]
    fn confidence_scaling_puts_lambda_times_the_rows_confidence_on_the_diagonal() {
        by_hand_scaled(RegularizationScaling::Confidence, 0.5 * 11f32.sqrt());
    }

    /// Items a = (1,0), b = (0,1), c = (1,1); α = 2, λ = 0.5, ν = 0.5; the user has a with
    /// weight 1 and c with weight 3, and `l` is the λ the scaling puts on their diagonal.
    /// Asserts the user's factor against the by-hand solve; returns the model, the factor and
    /// the solve.
    fn by_hand_scaled(scaling: RegularizationScaling, l: f32) -> (FoldIn, Vec<f32>, [f32; 2]) {
        let y = vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let params = Params {
            regularization_exponent: 0.5,
            ..model(2.0, 0.5, scaling)
        };
        let fold =
            FoldIn::new(vec!["a".into(), "b".into(), "c".into()], y, 2, &params).expect("model");
        let x = fold.user_factor(&[(0, 1.0), (2, 3.0)]);
        // YᵀY = [[2,1],[1,2]]; + l·I; + α·1·a·aᵀ = [[2,0],[0,0]]; + α·3·c·cᵀ = [[6,6],[6,6]]
        let (a11, a12, a22) = (10.0 + l, 7.0f32, 8.0 + l);
        let (b1, b2) = (10.0f32, 7.0f32);
        let det = a11 * a22 - a12 * a12;
        let want = [(b1 * a22 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det];
        assert!(
            close(x[0], want[0]) && close(x[1], want[1]),
            "{scaling:?}: {x:?} vs {want:?}"
        );
        (fold, x, want)
    }

    /// And a trained user folded in again under confidence scaling.
    #[test]
    fn under_confidence_scaling_too() {
        folded_in_again(RegularizationScaling::Confidence, 1.0, 0.05, 5e-3);
    }

    fn folded_in_again(
        scaling: RegularizationScaling,
        exponent: f32,
        regularization: f32,
        tolerance: f32,
    ) {
        use crate::als::{Csr, Params, Solver, Triple, fit};
        let mut triples = Vec::new();
        for u in 0..30u32 {
            for j in 0..6u32 {
                triples.push(Triple {
                    user: u,
                    item: (u * 7 + j * 3) % 25,
                    weight: 1.0 + (j % 3) as f32,
                });
            }
        }
        let matrix = Csr::from_triples(30, 25, &triples);
        let params = Params {
            factors: 8,
            iterations: 40,
            solver: Solver::Cholesky,
            threads: 1,
            regularization,
            regularization_scaling: scaling,
            regularization_exponent: exponent,
            ..Params::default()
        };
        let model = fit(&matrix, &params, &mut |_| {}).expect("fit");
        let fold = FoldIn::new(
            (0..25).map(|i| format!("i{i}")).collect(),
            model.item_factors.clone(),
            model.factors,
            &params,
        )
        .expect("fold-in");
        for u in [0usize, 13, 29] {
            let (cols, vals) = matrix.row(u);
            let events: Vec<(u32, f32)> = cols.iter().copied().zip(vals.iter().copied()).collect();
            let x = fold.user_factor(&events);
            let norm = model.user(u).iter().map(|v| v * v).sum::<f32>().sqrt();
            let diff = x
                .iter()
                .zip(model.user(u))
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            assert!(
                norm > 0.0 && diff <= tolerance * norm,
                "user {u}: |Δ| {diff} vs |x| {norm}"
            );
        }
    }

    /// The published item factors (what `bookrec batch` writes to the lake) read back.
    #[test]
    fn published_factors_read_back_as_they_were() {
        let mut ids = crate::als::IdMap::new();
        for b in ["b1", "b2", "b3"] {
            ids.intern(b);
        }
        let factors = vec![0.5, -1.0, 2.0, 0.25, 3.0, 1.5];
        let batch = crate::als::files::factors_batch(
            &ids,
            &arrow::datatypes::DataType::Utf8,
            "book_id",
            &factors,
            2,
        )
        .expect("batch");
        let bytes = crate::lake::write_parquet(&batch).expect("parquet");
        let (got_ids, got, f) = crate::als::files::read_factors("t", bytes).expect("read");
        assert_eq!(got_ids, ["b1", "b2", "b3"]);
        assert_eq!(got, factors);
        assert_eq!(f, 2);
        let e = crate::als::files::read_factors("x.parquet", bytes::Bytes::from_static(b"nope"))
            .expect_err("not parquet");
        assert!(e.to_string().starts_with("x.parquet: "), "{e}");
    }

    #[test]
    fn unknown_books_are_ignored_and_bad_models_refused() {
        let none = model(1.0, 0.1, RegularizationScaling::None);
        let fold = FoldIn::new(
            vec!["a".into(), "b".into()],
            vec![1.0, 0.0, 0.0, 1.0],
            2,
            &none,
        )
        .expect("model");
        assert!(fold.recommend(&[("zz", 1.0)], 5).is_empty());
        let got = fold.recommend(&[("a", 1.0), ("zz", 1.0)], 5);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "b");
        assert!(FoldIn::new(vec!["a".into()], vec![1.0], 2, &none).is_err());
        assert!(FoldIn::new(vec!["a".into()], vec![1.0, f32::NAN], 2, &none).is_err());
        let zero = model(1.0, 0.0, RegularizationScaling::None);
        assert!(FoldIn::new(vec!["a".into()], vec![1.0, 0.0], 2, &zero).is_err());
        let exponent = Params {
            regularization_exponent: 1.5,
            ..model(1.0, 0.1, RegularizationScaling::Frequency)
        };
        assert!(FoldIn::new(vec!["a".into()], vec![1.0, 0.0], 2, &exponent).is_err());
    }
}
