//! Implicit-feedback ALS (Hu, Koren & Volinsky 2008).
//!
//! Every observed cell `w > 0` becomes preference 1 with confidence `c = 1 + α·w`; every other
//! cell is preference 0 with confidence 1. Each half-step solves, per user `u`,
//! `(YᵀY + Yᵀ(Cᵤ − I)Y + λI) xᵤ = YᵀCᵤp(u)` — with a few conjugate-gradient steps warm-started
//! from the previous factors (as the `implicit` library does) or exactly by Cholesky.
//!
//! Layout: factors are contiguous rows of `f32` (`rows × factors`), the matrix is read by
//! user (CSR) in one half-step and by item (its transpose) in the other, and the inner loops
//! are plain slices the compiler vectorises. Rows are solved in parallel on a rayon pool;
//! each row's solve depends only on the other side's factors, and the Gram matrix is summed
//! in fixed chunks in a fixed order, so the same seed gives the same model on any number of
//! threads.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::AlsError;
use super::kernel::{self, axpy, dot as kdot};
use super::matrix::Csr;

// The parameters are configuration (`[als]`), so their type lives in `config` (a leaf of the
// module graph); training gives them their meaning and checks them.
pub use crate::config::{AlsParams as Params, RegularizationScaling, Solver};

impl Params {
    /// The parameters' ranges (see [`Params::out_of_range`]), as an ALS error.
    pub fn validate(&self) -> Result<(), AlsError> {
        match self.out_of_range() {
            Some((name, why)) => Err(AlsError::Param {
                name,
                reason: why.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// A trained model: user and item factors as contiguous rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub factors: usize,
    pub user_factors: Vec<f32>,
    pub item_factors: Vec<f32>,
    /// Training loss after each iteration.
    pub loss: Vec<f64>,
}

impl Model {
    pub fn users(&self) -> usize {
        self.user_factors.len() / self.factors
    }

    pub fn items(&self) -> usize {
        self.item_factors.len() / self.factors
    }

    pub fn user(&self, u: usize) -> &[f32] {
        &self.user_factors[u * self.factors..(u + 1) * self.factors]
    }

    pub fn item(&self, i: usize) -> &[f32] {
        &self.item_factors[i * self.factors..(i + 1) * self.factors]
    }
}

/// What a caller sees after each iteration (for a progress bar or a log line).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub iteration: usize,
    pub iterations: usize,
    pub loss: f64,
    pub seconds: f64,
}

/// Trains on `matrix` (users × items, values are the interaction weights `w`).
pub fn fit(
    matrix: &Csr,
    params: &Params,
    progress: &mut dyn FnMut(Progress),
) -> Result<Model, AlsError> {
    params.validate()?;
    if matrix.nnz() == 0 {
        return Err(AlsError::Empty);
    }
    if let Some(bad) = matrix.vals.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(AlsError::Weight(*bad));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads)
        .build()
        .map_err(|e| AlsError::Threads(e.to_string()))?;
    let by_item = matrix.transpose();
    let f = params.factors;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let scale = 0.01 / (f as f32).sqrt();
    let mut init = |n: usize| -> Vec<f32> {
        (0..n * f)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect()
    };
    let mut users = init(matrix.rows);
    let mut items = init(matrix.cols);
    let mut loss = Vec::with_capacity(params.iterations);
    for it in 0..params.iterations {
        let started = std::time::Instant::now();
        let l = pool.install(|| {
            solve_side(matrix, &items, &mut users, params);
            solve_side(&by_item, &users, &mut items, params);
            training_loss(matrix, &users, &items, params)
        });
        loss.push(l);
        progress(Progress {
            iteration: it + 1,
            iterations: params.iterations,
            loss: l,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(Model {
        factors: f,
        user_factors: users,
        item_factors: items,
        loss,
    })
}

/// `YᵀY` (f × f, row-major) summed over fixed chunks of rows in a fixed order.
pub(crate) fn gram(y: &[f32], f: usize) -> Vec<f32> {
    const CHUNK_ROWS: usize = 1024;
    let partials: Vec<Vec<f32>> = y
        .par_chunks(CHUNK_ROWS * f)
        .map(|chunk| {
            let mut g = vec![0f32; f * f];
            for row in chunk.chunks_exact(f) {
                for (a, &ra) in row.iter().enumerate() {
                    axpy::<false>(ra, row, &mut g[a * f..(a + 1) * f]);
                }
            }
            g
        })
        .collect();
    let mut g = vec![0f32; f * f];
    for p in partials {
        for (a, b) in g.iter_mut().zip(p) {
            *a += b;
        }
    }
    g
}

/// Solves every row of `x` against the fixed factors `y`.
fn solve_side(m: &Csr, y: &[f32], x: &mut [f32], params: &Params) {
    let f = params.factors;
    let mut yty = gram(y, f);
    // λI in the shared Gram matrix, or each row's scaled λ beside it (AlsParams::row_lambda)
    let shared = params.shared_lambda();
    for d in 0..f {
        yty[d * f + d] += shared;
    }
    let fast = kernel::fast();
    let row_of = |r: usize| {
        let (cols, vals) = m.row(r);
        Row {
            yty: &yty,
            y,
            f,
            cols,
            vals,
            alpha: params.alpha,
            lambda: params.row_lambda(vals, m.cols),
        }
    };
    match params.solver {
        Solver::Cg => x.par_chunks_mut(f).enumerate().for_each_init(
            || vec![0f32; 3 * f],
            |scratch, (r, xr)| {
                let row = row_of(r);
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX2 and FMA (kernel::fast).
                    unsafe { cg_row_fma(&row, params.cg_steps, xr, scratch) };
                    return;
                }
                let _ = fast;
                cg_row::<false>(&row, params.cg_steps, xr, scratch);
            },
        ),
        Solver::Cholesky => x.par_chunks_mut(f).enumerate().for_each_init(
            || (vec![0f32; f * f], vec![0f32; f]),
            |(a, b), (r, xr)| {
                let row = row_of(r);
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the CPU has AVX2 and FMA (kernel::fast).
                    unsafe { cholesky_row_fma(&row, a, b, xr) };
                    return;
                }
                cholesky_row::<false>(&row, a, b, xr);
            },
        ),
    }
}

/// Solves one row exactly (Cholesky): `x = (YᵀY + λI + Σᵢ α·wᵢ yᵢyᵢᵀ)⁻¹ Σᵢ (1 + α·wᵢ) yᵢ`
/// over the observed `cols` with weights `vals`; `yty` already holds `YᵀY + λI`, and
/// `lambda` is added to its diagonal for this row (ALS-WR's `λ·nᵤ`, else 0). Fold-in
/// ([`super::foldin`]) uses it for a user the model has not seen. `x` keeps its values when
/// the system is not positive definite.
#[allow(clippy::too_many_arguments)]
pub(crate) fn solve_row_exact(
    yty: &[f32],
    y: &[f32],
    f: usize,
    cols: &[u32],
    vals: &[f32],
    alpha: f32,
    lambda: f32,
    x: &mut [f32],
) {
    let row = Row {
        yty,
        y,
        f,
        cols,
        vals,
        alpha,
        lambda,
    };
    let (mut a, mut b) = (vec![0f32; f * f], vec![0f32; f]);
    #[cfg(target_arch = "x86_64")]
    if kernel::fast() {
        // SAFETY: the CPU has AVX2 and FMA (kernel::fast).
        unsafe { cholesky_row_fma(&row, &mut a, &mut b, x) };
        return;
    }
    cholesky_row::<false>(&row, &mut a, &mut b, x);
}

/// One row's problem: the Gram matrix (with λI unless λ scales per row), the other side's
/// factors, the row's observed columns and weights, α, and the row's own extra diagonal
/// (`λ·nᵣ` under ALS-WR, else 0).
struct Row<'a> {
    yty: &'a [f32],
    y: &'a [f32],
    f: usize,
    cols: &'a [u32],
    vals: &'a [f32],
    alpha: f32,
    lambda: f32,
}

impl Row<'_> {
    #[inline(always)]
    fn y(&self, i: u32) -> &[f32] {
        &self.y[i as usize * self.f..(i as usize + 1) * self.f]
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn cg_row_fma(row: &Row, steps: usize, x: &mut [f32], scratch: &mut [f32]) {
    cg_row::<true>(row, steps, x, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn cholesky_row_fma(row: &Row, a: &mut [f32], b: &mut [f32], x: &mut [f32]) {
    cholesky_row::<true>(row, a, b, x)
}

/// `A·v` for one row: `(YᵀY + λI)v + Σᵢ (cᵢ − 1)(yᵢ·v) yᵢ`.
#[inline(always)]
fn apply_a<const FMA: bool>(row: &Row, v: &[f32], out: &mut [f32]) {
    let f = row.f;
    for (a, o) in out.iter_mut().enumerate() {
        *o = kdot::<FMA>(&row.yty[a * f..(a + 1) * f], v) + row.lambda * v[a];
    }
    for (&i, &w) in row.cols.iter().zip(row.vals) {
        let yi = row.y(i);
        axpy::<FMA>(row.alpha * w * kdot::<FMA>(yi, v), yi, out);
    }
}

#[inline(always)]
fn cg_row<const FMA: bool>(row: &Row, steps: usize, x: &mut [f32], scratch: &mut [f32]) {
    let f = row.f;
    let (r, rest) = scratch.split_at_mut(f);
    let (p, ap) = rest.split_at_mut(f);
    // r = b − A·x with b = Σ cᵢ yᵢ, in one pass over the row:
    // r = −(YᵀY + λI)x + Σᵢ (cᵢ − (cᵢ − 1)(yᵢ·x)) yᵢ
    for (a, ri) in r.iter_mut().enumerate() {
        *ri = -kdot::<FMA>(&row.yty[a * f..(a + 1) * f], x) - row.lambda * x[a];
    }
    for (&i, &w) in row.cols.iter().zip(row.vals) {
        let yi = row.y(i);
        let extra = row.alpha * w;
        axpy::<FMA>(1.0 + extra - extra * kdot::<FMA>(yi, x), yi, r);
    }
    p.copy_from_slice(r);
    let mut rs_old = kdot::<FMA>(r, r);
    if rs_old < 1e-20 {
        return;
    }
    for _ in 0..steps {
        apply_a::<FMA>(row, p, ap);
        let pap = kdot::<FMA>(p, ap);
        if pap <= 0.0 || !pap.is_finite() {
            break;
        }
        let step = rs_old / pap;
        axpy::<FMA>(step, p, x);
        axpy::<FMA>(-step, ap, r);
        let rs_new = kdot::<FMA>(r, r);
        if rs_new < 1e-20 {
            break;
        }
        let beta = rs_new / rs_old;
        for (pi, ri) in p.iter_mut().zip(r.iter()) {
            *pi = ri + beta * *pi;
        }
        rs_old = rs_new;
    }
}

#[inline(always)]
fn cholesky_row<const FMA: bool>(row: &Row, a: &mut [f32], b: &mut [f32], x: &mut [f32]) {
    let f = row.f;
    a.copy_from_slice(row.yty);
    for d in 0..f {
        a[d * f + d] += row.lambda;
    }
    b.iter_mut().for_each(|v| *v = 0.0);
    for (&i, &w) in row.cols.iter().zip(row.vals) {
        let yi = row.y(i);
        let extra = row.alpha * w;
        for (d, &yd) in yi.iter().enumerate() {
            axpy::<FMA>(extra * yd, yi, &mut a[d * f..(d + 1) * f]);
        }
        axpy::<FMA>(1.0 + extra, yi, b);
    }
    // in-place Cholesky: A = L·Lᵀ, L in the lower triangle (A is symmetric positive definite
    // when λ > 0; a non-positive pivot leaves the row as it was)
    for j in 0..f {
        let mut d = a[j * f + j] - kdot::<FMA>(&a[j * f..j * f + j], &a[j * f..j * f + j]);
        if d <= 0.0 || !d.is_finite() {
            return;
        }
        d = d.sqrt();
        a[j * f + j] = d;
        for i in j + 1..f {
            let s = a[i * f + j] - kdot::<FMA>(&a[i * f..i * f + j], &a[j * f..j * f + j]);
            a[i * f + j] = s / d;
        }
    }
    // forward: L·z = b, then back: Lᵀ·x = z
    for i in 0..f {
        let s = b[i] - kdot::<FMA>(&a[i * f..i * f + i], &b[..i]);
        b[i] = s / a[i * f + i];
    }
    for i in (0..f).rev() {
        let mut s = b[i];
        for k in i + 1..f {
            s -= a[k * f + i] * x[k];
        }
        x[i] = s / a[i * f + i];
    }
}

/// The weighted squared error of the objective plus the regularisation, divided by the total
/// confidence (`users·items + Σ α·w`), as `implicit` reports it.
fn training_loss(m: &Csr, users: &[f32], items: &[f32], params: &Params) -> f64 {
    let f = params.factors;
    let yty = gram(items, f);
    let alpha = params.alpha;
    let (sum, reg_users): (f64, f64) = users
        .par_chunks(f)
        .enumerate()
        .map_init(
            || vec![0f32; f],
            |tmp, (u, xu)| {
                let (cols, vals) = m.row(u);
                let row = Row {
                    yty: &yty,
                    y: items,
                    f,
                    cols,
                    vals,
                    alpha,
                    lambda: 0.0,
                };
                let weight = params.row_scale(cols.len(), sum_of(vals), m.cols);
                #[cfg(target_arch = "x86_64")]
                if kernel::fast() {
                    // SAFETY: the CPU has AVX2 and FMA (kernel::fast).
                    let (s, r) = unsafe { loss_row_fma(&row, xu, tmp) };
                    return (s, r * weight);
                }
                let (s, r) = loss_row::<false>(&row, xu, tmp);
                (s, r * weight)
            },
        )
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    // scaled λ weighs each item's norm by its own scale (count, confidence)
    let mut item_counts = vec![(0usize, 0f64); m.cols];
    for (&i, &w) in m.idx.iter().zip(&m.vals) {
        item_counts[i as usize].0 += 1;
        item_counts[i as usize].1 += w as f64;
    }
    let reg_items: f64 = items
        .chunks_exact(f)
        .enumerate()
        .map(|(i, y)| {
            let (n, sum) = item_counts[i];
            dot(y, y) as f64 * params.row_scale(n, sum, m.rows)
        })
        .sum();
    let total_conf =
        (m.rows as f64) * (m.cols as f64) + m.vals.iter().map(|w| (alpha * w) as f64).sum::<f64>();
    (sum + params.regularization as f64 * (reg_users + reg_items)) / total_conf
}

fn sum_of(vals: &[f32]) -> f64 {
    vals.iter().map(|&w| w as f64).sum()
}

/// One user's share of the loss: `(xᵤᵀ YᵀY xᵤ + Σᵢ [cᵢ(1 − sᵢ)² − sᵢ²], |xᵤ|²)`.
#[inline(always)]
fn loss_row<const FMA: bool>(row: &Row, xu: &[f32], tmp: &mut [f32]) -> (f64, f64) {
    let f = row.f;
    for (a, t) in tmp.iter_mut().enumerate() {
        *t = kdot::<FMA>(&row.yty[a * f..(a + 1) * f], xu);
    }
    // every cell as if unobserved: Σᵢ (xᵤ·yᵢ)² = xᵤᵀ YᵀY xᵤ, then the observed ones corrected
    let mut l = kdot::<FMA>(xu, tmp) as f64;
    for (&i, &w) in row.cols.iter().zip(row.vals) {
        let s = kdot::<FMA>(xu, row.y(i)) as f64;
        let c = 1.0 + (row.alpha * w) as f64;
        l += c * (1.0 - s) * (1.0 - s) - s * s;
    }
    (l, kdot::<FMA>(xu, xu) as f64)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn loss_row_fma(row: &Row, xu: &[f32], tmp: &mut [f32]) -> (f64, f64) {
    loss_row::<true>(row, xu, tmp)
}

/// Dot product (the portable build; hot loops use [`kernel`] directly).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    kernel::dot::<false>(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Csr {
        // users 0 and 1 share books 0..3; user 2 reads 4..6
        Csr::build(
            3,
            7,
            [
                (0, 0, 1.0),
                (0, 1, 1.0),
                (0, 2, 1.0),
                (1, 1, 1.0),
                (1, 2, 1.0),
                (1, 3, 1.0),
                (2, 4, 1.0),
                (2, 5, 1.0),
                (2, 6, 1.0),
            ]
            .into_iter(),
        )
    }

    #[test]
    fn loss_falls_and_cg_agrees_with_cholesky() {
        let m = small();
        let base = Params {
            factors: 4,
            iterations: 10,
            regularization: 0.1,
            alpha: 10.0,
            ..Params::default()
        };
        let cg = fit(&m, &base, &mut |_| {}).unwrap();
        assert!(
            cg.loss.last().unwrap() < cg.loss.first().unwrap(),
            "{:?}",
            cg.loss
        );
        let exact = fit(
            &m,
            &Params {
                solver: Solver::Cholesky,
                ..base.clone()
            },
            &mut |_| {},
        )
        .unwrap();
        let (a, b) = (cg.loss.last().unwrap(), exact.loss.last().unwrap());
        assert!((a - b).abs() / b < 0.05, "cg {a} vs cholesky {b}");
        assert!(
            exact.loss.windows(2).all(|w| w[1] <= w[0] * 1.0001),
            "{:?}",
            exact.loss
        );
    }

    #[test]
    fn same_seed_same_model_on_any_thread_count() {
        let m = small();
        let one = Params {
            factors: 8,
            threads: 1,
            ..Params::default()
        };
        let a = fit(&m, &one, &mut |_| {}).unwrap();
        let b = fit(
            &m,
            &Params {
                threads: 2,
                ..one.clone()
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(a, b);
        let c = fit(&m, &Params { seed: 7, ..one }, &mut |_| {}).unwrap();
        assert_ne!(a.user_factors, c.user_factors);
    }

    #[test]
    fn bad_parameters_and_weights_are_named() {
        let m = small();
        let err = fit(
            &m,
            &Params {
                factors: 0,
                ..Params::default()
            },
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("factors"), "{err}");
        let neg = Csr::build(1, 1, [(0, 0, -1.0)].into_iter());
        let err = fit(&neg, &Params::default(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");
        let empty = Csr::build(2, 2, std::iter::empty());
        assert!(matches!(
            fit(&empty, &Params::default(), &mut |_| {}),
            Err(AlsError::Empty)
        ));
    }

    #[test]
    fn dot_matches_naive_on_odd_lengths() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }
}
