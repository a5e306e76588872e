//! The batch update of MEMIT and PMET in f64: `ΔW = (λC + K Kᵀ)⁻¹ K Rᵀ` (`[d_in, d_out]`; the
//! papers write its transpose `R Kᵀ (λC + K Kᵀ)⁻¹`). A Cholesky solve, not an explicit inverse:
//! `λC + K Kᵀ` is symmetric positive definite whenever `C` is, however few or repeated the keys
//! (`K Kᵀ` alone has rank ≤ n, far below d_ff); λC carries the rank.

use anyhow::{bail, ensure, Result};
use faer::linalg::solvers::Solve;
use faer::Mat;

use crate::stats::SecondMoment;

/// `X = (λC + K Kᵀ)⁻¹ K` for `C` (`[d, d]`, row-major) and keys `k` (`n` rows of length `d`, the
/// columns of K). Returns X's columns, one per key.
pub fn solve_keys(c: &[f64], d: usize, lambda: f64, k: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    ensure!(c.len() == d * d, "covariance is not {d}×{d}");
    ensure!(
        k.iter().all(|row| row.len() == d),
        "keys must have length {d}"
    );
    let n = k.len();
    let km = Mat::<f64>::from_fn(d, n, |i, j| k[j][i]);
    let kkt = &km * km.transpose();
    let mut a = Mat::<f64>::from_fn(d, d, |i, j| lambda * c[i * d + j] + kkt[(i, j)]);
    let mean_diag = (0..d).map(|i| a[(i, i)]).sum::<f64>() / d as f64;
    let mut added = 0.0;
    // C is singular where no key ever points (units that never fire, e.g. the GELU units of a
    // small model), and rounding can leave such a pivot just below 0: a jitter of 1e-9 of the
    // mean diagonal (raised 100-fold while needed, to 1e-5) changes nothing the keys see and
    // gives those directions a zero update.
    let llt = loop {
        match a.llt(faer::Side::Lower) {
            Ok(llt) => break llt,
            Err(e) if added >= 1e-5 * mean_diag => {
                bail!("λC + KKᵀ is not positive definite ({e:?}): is C from too few samples?")
            }
            Err(_) => {
                let step = if added == 0.0 {
                    1e-9 * mean_diag
                } else {
                    99.0 * added
                };
                for i in 0..d {
                    a[(i, i)] += step;
                }
                added += step;
                tracing::warn!("λC + KKᵀ is singular; added {added:e}·I (C from too few samples, or dead units)");
            }
        }
    };
    let x = llt.solve(&km);
    Ok((0..n)
        .map(|j| (0..d).map(|i| x[(i, j)]).collect())
        .collect())
}

/// `ΔW` (`[d_ff, d_model]`, row-major f32) that maps each key `keys[j]` towards residual
/// `resid[j]` while keeping the keys C describes where they were (MEMIT's eq. 14).
pub fn update(
    c: &SecondMoment,
    lambda: f64,
    keys: &[Vec<f32>],
    resid: &[Vec<f64>],
) -> Result<Vec<f32>> {
    ensure!(keys.len() == resid.len(), "one residual per key");
    let k: Vec<Vec<f64>> = keys
        .iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let x = solve_keys(&c.c, c.dim, lambda, &k)?;
    let n = keys.len();
    let d_out = resid.first().map_or(0, Vec::len);
    let xm = Mat::<f64>::from_fn(c.dim, n, |i, j| x[j][i]);
    let rm = Mat::<f64>::from_fn(n, d_out, |j, o| resid[j][o]);
    let dw = &xm * &rm;
    Ok((0..c.dim)
        .flat_map(|i| (0..d_out).map(move |o| (i, o)))
        .map(|(i, o)| dw[(i, o)] as f32)
        .collect())
}
