//! The vector kernels of training and ranking, written once and compiled twice: plainly
//! (SSE2, any x86-64 or other CPU) and for AVX2 + FMA, chosen at run time. The inner loops are
//! plain slice loops with independent accumulators that the compiler vectorises; `FMA` turns
//! the multiply-adds into fused ones (only in the AVX2 + FMA build, where they are one
//! instruction — elsewhere `mul_add` would be a library call).

/// True when the AVX2 + FMA builds can run here (checked once, cached by std).
#[inline]
pub fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Dot product: eight independent lanes in the portable build; in the AVX2 + FMA build,
/// four 8-lane registers so consecutive fused multiply-adds do not wait on each other.
#[inline(always)]
pub fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA = true is only instantiated inside `#[target_feature(enable =
        // "avx2,fma")]` functions, called after `fast()` said the CPU has both.
        return unsafe { avx::dot(a, b) };
    }
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = madd::<FMA>(x[k], y[k], acc[k]);
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s = madd::<FMA>(*x, *y, s);
    }
    s
}

/// `y += a·x`
#[inline(always)]
pub fn axpy<const FMA: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: as in `dot`.
        unsafe { avx::axpy(a, x, y) };
        return;
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = madd::<FMA>(a, *xi, *yi);
    }
}

/// The AVX2 + FMA kernels: inlined into `#[target_feature(enable = "avx2,fma")]` callers.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2 and FMA, and the caller must be compiled with them.
    #[inline(always)]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: every load reads 8 floats at i <= n - 8 of both slices.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pa.add(i));
                let y = _mm256_loadu_ps(pb.add(i));
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                i += 8;
            }
            let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            let mut s = _mm_cvtss_f32(h);
            while i < n {
                s = (*pa.add(i)).mul_add(*pb.add(i), s);
                i += 1;
            }
            s
        }
    }

    /// # Safety
    /// As [`dot`].
    #[inline(always)]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        // SAFETY: every load/store touches 8 floats at i <= n - 8 of both slices.
        unsafe {
            let va = _mm256_set1_ps(a);
            while i + 8 <= n {
                let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
                _mm256_storeu_ps(py.add(i), r);
                i += 8;
            }
            while i < n {
                *py.add(i) = a.mul_add(*px.add(i), *py.add(i));
                i += 1;
            }
        }
    }
}

/// `out[j] = x · rows[j]` for every `f`-wide row of `rows`.
#[inline(always)]
pub fn scores<const FMA: bool>(x: &[f32], rows: &[f32], f: usize, out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(f)) {
        *o = dot::<FMA>(x, r);
    }
}

/// [`scores`], on the fastest build this CPU runs.
pub fn scores_dispatch(x: &[f32], rows: &[f32], f: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fast() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `fast`).
        unsafe { scores_fma(x, rows, f, out) };
        return;
    }
    scores::<false>(x, rows, f, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn scores_fma(x: &[f32], rows: &[f32], f: usize, out: &mut [f32]) {
    scores::<true>(x, rows, f, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_builds_agree_with_a_naive_loop() {
        let a: Vec<f32> = (0..67).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..67).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot::<false>(&a, &b) - naive).abs() < 1e-4);
        assert!((dot::<true>(&a, &b) - naive).abs() < 1e-4);
        let rows: Vec<f32> = a.iter().chain(&b).copied().take(134).collect();
        let mut out = [0f32; 2];
        scores_dispatch(&a, &rows, 67, &mut out);
        assert!((out[1] - naive).abs() < 1e-4);
        let mut y = b.clone();
        axpy::<true>(2.0, &a, &mut y);
        assert!((y[5] - (b[5] + 2.0 * a[5])).abs() < 1e-6);
    }
}
