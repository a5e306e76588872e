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
    let a = Mat::<f64>::from_fn(d, d, |i, j| lambda * c[i * d + j] + kkt[(i, j)]);
    let llt = cholesky(a, "λC + KKᵀ")?;
    let x = llt.solve(&km);
    Ok((0..n)
        .map(|j| (0..d).map(|i| x[(i, j)]).collect())
        .collect())
}

/// The Cholesky factor of the symmetric `a` (`what` names it in messages).
///
/// C is singular where no key ever points (units that never fire, e.g. the GELU units of a small
/// model), and rounding can leave such a pivot just below 0: a jitter of 1e-9 of the mean
/// diagonal (raised 100-fold while needed, to 1e-5) changes nothing the keys see and gives those
/// directions a zero update.
fn cholesky(mut a: Mat<f64>, what: &str) -> Result<faer::linalg::solvers::Llt<f64>> {
    let d = a.nrows();
    let mean_diag = (0..d).map(|i| a[(i, i)]).sum::<f64>() / d.max(1) as f64;
    let mut added = 0.0;
    loop {
        match a.llt(faer::Side::Lower) {
            Ok(llt) => return Ok(llt),
            Err(e) if added >= 1e-5 * mean_diag => {
                bail!("{what} is not positive definite ({e:?}): is C from too few samples?")
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
                tracing::warn!(
                    "{what} is singular; added {added:e}·I (C from too few samples, or dead units)"
                );
            }
        }
    }
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
    Ok(row_major_f32(&dw))
}

/// A `ΔW` as the patch stores it: row-major f32.
pub(crate) fn row_major_f32(m: &Mat<f64>) -> Vec<f32> {
    (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |o| m[(i, o)] as f32))
        .collect()
}

/// EMMET's update (Gupta et al. 2024; EasyEdit's `emmet_main.py`), `[d_in, d_out]` row-major f32:
/// `ΔW = A⁻¹ K (Kᵀ A⁻¹ K + μI)⁻¹ Rᵀ` with `A = λC + νI` (`λ` = `mom2_update_weight`, `ν` =
/// `update_norm_lambda`, `μ` = `emmet_lambda`). With `μ = 0` every key's output moves by exactly
/// its residual (`ΔWᵀ K = R`, an equality constraint where MEMIT has a least-squares term), at the
/// least `C`-weighted change; `μ` damps it where `Kᵀ A⁻¹ K` is ill-conditioned, which is where
/// keys nearly coincide: several facts about one subject. EasyEdit inverts both matrices; kedit
/// solves (Cholesky), and for `μ = 0` takes the pseudo-inverse of `Kᵀ A⁻¹ K`, which EasyEdit
/// falls back to when its inverse fails.
pub fn equality_update(
    c: &SecondMoment,
    lambda: f64,
    norm_lambda: f64,
    emmet_lambda: f64,
    keys: &[Vec<f32>],
    resid: &[Vec<f64>],
) -> Result<Vec<f32>> {
    ensure!(keys.len() == resid.len(), "one residual per key");
    let d = c.dim;
    ensure!(c.c.len() == d * d, "covariance is not {d}×{d}");
    ensure!(
        keys.iter().all(|row| row.len() == d),
        "keys must have length {d}"
    );
    let n = keys.len();
    let d_out = resid.first().map_or(0, Vec::len);
    let km = Mat::<f64>::from_fn(d, n, |i, j| keys[j][i] as f64);
    let a = Mat::<f64>::from_fn(d, d, |i, j| {
        lambda * c.c[i * d + j] + if i == j { norm_lambda } else { 0.0 }
    });
    let x = cholesky(a, "λC + νI")?.solve(&km);
    let kx = km.transpose() * &x;
    // Kᵀ A⁻¹ K is symmetric in exact arithmetic; made so in f64 before factoring.
    let sym = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (kx[(i, j)] + kx[(j, i)]));
    let rm = Mat::<f64>::from_fn(n, d_out, |j, o| resid[j][o]);
    if tracing::enabled!(tracing::Level::DEBUG) {
        // How nearly the keys coincide, as the solve sees them: same-subject keys leave an
        // eigenvalue near 0 per extra fact, and in those directions μ outweighs the keys.
        if let Ok(mut ev) = sym.self_adjoint_eigenvalues(faer::Side::Lower) {
            ev.sort_by(f64::total_cmp);
            let shown: Vec<String> = ev.iter().take(16).map(|x| format!("{x:.2e}")).collect();
            tracing::debug!(
                keys = n,
                below_mu = ev.iter().filter(|&&x| x < emmet_lambda).count(),
                "emmet: eigenvalues of Kᵀ A⁻¹ K (the smallest 16): {} against μ {emmet_lambda:e}",
                shown.join(" ")
            );
        }
    }
    let gram = Mat::<f64>::from_fn(n, n, |i, j| {
        sym[(i, j)] + if i == j { emmet_lambda } else { 0.0 }
    });
    // Undamped, two keys of one subject make the matrix singular up to rounding, where a
    // Cholesky factor may exist and be meaningless: the pseudo-inverse instead.
    let y = if emmet_lambda > 0.0 {
        cholesky(gram, "Kᵀ A⁻¹ K + μI")?.solve(&rm)
    } else {
        pseudo_inverse(&gram)? * &rm
    };
    let dw = &x * &y;
    Ok(row_major_f32(&dw))
}

/// The pseudo-inverse of a symmetric positive semi-definite `m`: eigenvalues below
/// `n · ε · max` count as zero (NumPy's and PyTorch's default cut-off).
fn pseudo_inverse(m: &Mat<f64>) -> Result<Mat<f64>> {
    let n = m.nrows();
    let evd = m
        .self_adjoint_eigen(faer::Side::Lower)
        .map_err(|e| anyhow::anyhow!("eigendecomposition of Kᵀ A⁻¹ K: {e:?}"))?;
    let s = evd.S().column_vector();
    let top = (0..n).map(|i| s[i].abs()).fold(0.0, f64::max);
    let cut = n as f64 * f64::EPSILON * top;
    let u = evd.U();
    Ok(Mat::<f64>::from_fn(n, n, |i, j| {
        (0..n)
            .filter(|&k| s[k] > cut)
            .map(|k| u[(i, k)] * u[(j, k)] / s[k])
            .sum()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn moment(d: usize, rng: &mut rand::rngs::StdRng) -> SecondMoment {
        // E[kkᵀ] over 4d random keys: positive definite, not the identity.
        let samples: Vec<Vec<f64>> = (0..4 * d)
            .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let c = (0..d * d)
            .map(|x| {
                samples.iter().map(|k| k[x / d] * k[x % d]).sum::<f64>() / samples.len() as f64
            })
            .collect();
        SecondMoment {
            layer: 0,
            samples: samples.len(),
            dim: d,
            c,
        }
    }

    fn random(n: usize, d: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect()
    }

    /// `ΔWᵀ k_j` for each key.
    fn outputs(dw: &[f32], keys: &[Vec<f32>], d_out: usize) -> Vec<Vec<f64>> {
        keys.iter()
            .map(|k| {
                (0..d_out)
                    .map(|o| {
                        k.iter()
                            .enumerate()
                            .map(|(i, &x)| x as f64 * dw[i * d_out + o] as f64)
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    fn worst(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn emmet_without_damping_meets_every_key_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (d, d_out, n) = (20, 6, 4);
        let c = moment(d, &mut rng);
        let keys = random(n, d, &mut rng);
        let resid: Vec<Vec<f64>> = random(n, d_out, &mut rng)
            .into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect();
        let dw = equality_update(&c, 50.0, 0.0, 0.0, &keys, &resid).unwrap();
        let got = outputs(&dw, &keys, d_out);
        assert!(worst(&got, &resid) < 1e-4, "{}", worst(&got, &resid));
        // MEMIT's least-squares update with the same λ falls short of the residuals.
        let ls = update(&c, 50.0, &keys, &resid).unwrap();
        assert!(worst(&outputs(&ls, &keys, d_out), &resid) > 1e-2);
        // Damping shrinks each key's output towards 0, more with more damping.
        let norm = |v: &[Vec<f64>]| v.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let damped: Vec<f64> = [1e-2, 1.0]
            .iter()
            .map(|&mu| {
                norm(&outputs(
                    &equality_update(&c, 50.0, 0.0, mu, &keys, &resid).unwrap(),
                    &keys,
                    d_out,
                ))
            })
            .collect();
        assert!(
            damped[1] < damped[0] && damped[0] < norm(&resid),
            "{damped:?} vs {}",
            norm(&resid)
        );
    }

    #[test]
    fn emmet_on_one_key_is_romes_rank_one_update() {
        // For one key, ΔW = C⁻¹k rᵀ / (kᵀC⁻¹k): ROME's update (methods.md §3.1), λ cancelling.
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (d, d_out) = (12, 3);
        let c = moment(d, &mut rng);
        let k = random(1, d, &mut rng);
        let r = vec![vec![0.5, -1.0, 2.0]];
        let dw = equality_update(&c, 1e4, 0.0, 0.0, &k, &r).unwrap();
        let cm = Mat::<f64>::from_fn(d, d, |i, j| c.c[i * d + j]);
        let kv = Mat::<f64>::from_fn(d, 1, |i, _| k[0][i] as f64);
        let cik = cm.partial_piv_lu().solve(&kv);
        let denom = (kv.transpose() * &cik)[(0, 0)];
        let mut diff = 0f64;
        for i in 0..d {
            for o in 0..d_out {
                let want = cik[(i, 0)] * r[0][o] / denom;
                diff = diff.max((dw[i * d_out + o] as f64 - want).abs() / want.abs().max(1e-3));
            }
        }
        assert!(diff < 1e-4, "largest relative difference {diff}");
    }

    #[test]
    fn emmet_with_two_equal_keys_takes_the_pseudo_inverse() {
        // Two facts under one key and μ = 0: Kᵀ A⁻¹ K is singular; the pseudo-inverse writes the
        // mean of the two residuals (the least-squares compromise), finite, as EasyEdit's pinv.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (d, d_out) = (10, 2);
        let c = moment(d, &mut rng);
        let k = random(1, d, &mut rng);
        let keys = vec![k[0].clone(), k[0].clone()];
        let resid = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let dw = equality_update(&c, 10.0, 0.0, 0.0, &keys, &resid).unwrap();
        assert!(dw.iter().all(|x| x.is_finite()));
        let got = outputs(&dw, &keys[..1], d_out);
        assert!(worst(&got, &[vec![0.5, 0.5]]) < 1e-4, "{got:?}");
    }
}
