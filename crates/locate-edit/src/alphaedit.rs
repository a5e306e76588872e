//! AlphaEdit (Fang et al., ICLR 2025), methods.md §3.5: MEMIT's targets, keys and layer-by-layer
//! residual, with another update. Each layer's update is confined to the null space of `C` (the
//! directions the corpus keys barely use: eigenvalues of `C` below `nullspace_threshold`), so
//! that the keys C describes keep their outputs, and is also asked to keep the outputs of every
//! key an earlier edit wrote (`K_p`), since AlphaEdit edits sequentially and never restores:
//!
//! `Δ = solve(P (K Kᵀ + K_p K_pᵀ) + α I, P K Rᵀ)` (`[d_in, d_out]`; `P = U Uᵀ`, `α` = `L2`).
//!
//! For the S2RKE question this is the interesting locate-then-edit method: a second fact about a
//! subject comes with nearly the first fact's key, which `K_p` now asks the update to leave alone.
//!
//! The solution lies in the null space (`(I − P) Δ = 0` follows from the equation), so kedit
//! solves it in the null space's basis `U` (`d × r`):
//! `Δ = U (Uᵀ (K Kᵀ + K_p K_pᵀ) U + α I)⁻¹ Uᵀ K Rᵀ` — the same `Δ`, from a symmetric positive
//! definite `r × r` system (a Cholesky solve, in f64) instead of a general `d × d` one, and with
//! `K_p` kept as `Uᵀ K_p K_pᵀ U`. AlphaEdit solves in f32 on the GPU; kedit in f64 on the CPU, as
//! MEMIT's update.

use anyhow::{bail, ensure, Context, Result};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use crate::hparams::MemitHparams;
use crate::memit::{Flavor, Memit, Update, MEMIT};
use crate::stats::SecondMoment;

pub const ALPHAEDIT: Flavor = Flavor {
    name: "alphaedit",
    update: Update::NullSpace,
    ..MEMIT
};

/// An AlphaEdit editor for the edit layers' `C` (in `hparams.layers` order): the null space of
/// each is found now (one symmetric eigendecomposition per layer, f64).
pub fn alphaedit(hparams: MemitHparams, mom2: &[SecondMoment]) -> Result<Memit> {
    let threshold = hparams
        .nullspace_threshold
        .context("field `nullspace_threshold`: AlphaEdit needs it (EasyEdit's value: 2e-2)")?;
    let l2 = hparams
        .l2
        .context("field `L2`: AlphaEdit needs it (EasyEdit's values: 10 for GPT-2 XL and GPT-J)")?;
    if threshold.is_nan() || threshold <= 0.0 {
        bail!("field `nullspace_threshold`: must be > 0, got {threshold}");
    }
    if l2.is_nan() || l2 <= 0.0 {
        bail!("field `L2`: must be > 0 (it keeps the solve positive definite), got {l2}");
    }
    let spaces = mom2
        .iter()
        .map(|c| {
            let ns = NullSpace::of(c, threshold)?;
            tracing::info!(
                layer = c.layer,
                "alphaedit: null space of C: {} of {} directions (eigenvalues < {threshold:e})",
                ns.rank(),
                c.dim
            );
            if ns.rank() == 0 {
                bail!(
                    "field `nullspace_threshold`: {threshold:e} leaves layer {} no null space (its smallest eigenvalue of C is {:e}); AlphaEdit could write nothing there",
                    c.layer,
                    ns.smallest
                );
            }
            Ok(ns)
        })
        .collect::<Result<Vec<_>>>()?;
    // C itself is not kept: the update reads only the null spaces (at 7B, five layers' C would
    // hold 4.8 GB for nothing).
    Ok(Memit::with_flavor(hparams, &ALPHAEDIT).with_null_spaces(spaces))
}

/// One edit layer's null space and the keys earlier edits wrote there.
#[derive(Debug, Clone)]
pub struct NullSpace {
    pub layer: usize,
    /// `U`, `d × r`: orthonormal eigenvectors of `C` whose eigenvalues are below the threshold.
    basis: Mat<f64>,
    /// `Uᵀ K_p K_pᵀ U` (`r × r`) over the keys of every edit since the editor was made or reset.
    preserved: Mat<f64>,
    /// The smallest eigenvalue of `C`, for messages.
    pub smallest: f64,
}

impl NullSpace {
    /// The null space of `c`: its eigenvectors with eigenvalue < `threshold` (AlphaEdit takes
    /// the singular vectors of `C`; for a symmetric positive semi-definite `C` they are these).
    pub fn of(c: &SecondMoment, threshold: f64) -> Result<Self> {
        let d = c.dim;
        ensure!(c.c.len() == d * d, "covariance is not {d}×{d}");
        let a = Mat::<f64>::from_fn(d, d, |i, j| c.c[i * d + j]);
        let evd = a
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| anyhow::anyhow!("eigendecomposition of C at layer {}: {e:?}", c.layer))?;
        let s = evd.S().column_vector();
        let kept: Vec<usize> = (0..d).filter(|&i| s[i] < threshold).collect();
        let u = evd.U();
        let basis = Mat::<f64>::from_fn(d, kept.len(), |i, j| u[(i, kept[j])]);
        let r = kept.len();
        Ok(Self {
            layer: c.layer,
            basis,
            preserved: Mat::zeros(r, r),
            smallest: (0..d).map(|i| s[i]).fold(f64::INFINITY, f64::min),
        })
    }

    /// The null space's dimension `r`.
    pub fn rank(&self) -> usize {
        self.basis.ncols()
    }

    /// `Uᵀ K` for keys given as rows of length `d` (`r × n`).
    fn project(&self, keys: &[Vec<f32>]) -> Result<Mat<f64>> {
        let d = self.basis.nrows();
        ensure!(
            keys.iter().all(|k| k.len() == d),
            "keys must have length {d}"
        );
        let km = Mat::<f64>::from_fn(d, keys.len(), |i, j| keys[j][i] as f64);
        Ok(self.basis.transpose() * &km)
    }

    /// `Δ` (`[d, d_out]`, row-major f32) that maps each `keys[j]` towards `resid[j]` within the
    /// null space, keeping the preserved keys' outputs, with ridge `l2`.
    pub fn update(&self, l2: f64, keys: &[Vec<f32>], resid: &[Vec<f64>]) -> Result<Vec<f32>> {
        ensure!(keys.len() == resid.len(), "one residual per key");
        let r = self.rank();
        let d_out = resid.first().map_or(0, Vec::len);
        let uk = self.project(keys)?;
        let mut a = &uk * uk.transpose() + &self.preserved;
        for i in 0..r {
            a[(i, i)] += l2;
        }
        let rm = Mat::<f64>::from_fn(keys.len(), d_out, |j, o| resid[j][o]);
        let rhs = &uk * &rm;
        let llt = a.llt(Side::Lower).map_err(|e| {
            anyhow::anyhow!("Uᵀ(KKᵀ + K_pK_pᵀ)U + αI is not positive definite: {e:?}")
        })?;
        let y = llt.solve(&rhs);
        Ok(crate::solve::row_major_f32(&(&self.basis * &y)))
    }

    /// Add keys an edit wrote to `K_p`.
    pub fn preserve(&mut self, keys: &[Vec<f32>]) -> Result<()> {
        let uk = self.project(keys)?;
        self.preserved += &uk * uk.transpose();
        Ok(())
    }

    /// Forget the preserved keys (the model was put back as it was).
    pub fn forget(&mut self) {
        let r = self.rank();
        self.preserved = Mat::zeros(r, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::linalg::solvers::Solve;
    use rand::{Rng, SeedableRng};

    /// A `d × d` second moment with eigenvalues spread over [1e-3, 1] and a random basis.
    fn second_moment(d: usize, rng: &mut rand::rngs::StdRng) -> (SecondMoment, Mat<f64>) {
        let g = Mat::<f64>::from_fn(d, d, |_, _| rng.random_range(-1.0..1.0));
        let q = g.qr().compute_Q();
        let lam: Vec<f64> = (0..d)
            .map(|i| 10f64.powf(-3.0 * i as f64 / d as f64))
            .collect();
        let c = Mat::<f64>::from_fn(d, d, |i, j| {
            (0..d).map(|k| q[(i, k)] * lam[k] * q[(j, k)]).sum()
        });
        let m = SecondMoment {
            layer: 0,
            samples: 1,
            dim: d,
            c: (0..d * d).map(|x| c[(x / d, x % d)]).collect(),
        };
        (m, c)
    }

    fn keys(n: usize, d: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect()
    }

    fn col(keys: &[Vec<f32>]) -> Mat<f64> {
        Mat::<f64>::from_fn(keys[0].len(), keys.len(), |i, j| keys[j][i] as f64)
    }

    #[test]
    fn the_basis_solve_is_alphaedits_solve() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (d, d_out, alpha, threshold) = (16, 5, 0.3, 0.05);
        let (m, c) = second_moment(d, &mut rng);
        let mut ns = NullSpace::of(&m, threshold).unwrap();
        assert!(ns.rank() > 0 && ns.rank() < d, "rank {}", ns.rank());
        let earlier = keys(2, d, &mut rng);
        ns.preserve(&earlier).unwrap();
        let k = keys(3, d, &mut rng);
        let resid: Vec<Vec<f64>> = (0..3)
            .map(|_| (0..d_out).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let got = ns.update(alpha, &k, &resid).unwrap();

        // AlphaEdit's own form: P from the eigenvectors of C, the d × d general solve.
        let evd = c.self_adjoint_eigen(Side::Lower).unwrap();
        let s = evd.S().column_vector();
        let small: Vec<usize> = (0..d).filter(|&i| s[i] < threshold).collect();
        let u = Mat::<f64>::from_fn(d, small.len(), |i, j| evd.U()[(i, small[j])]);
        let p = &u * u.transpose();
        let (km, kp) = (col(&k), col(&earlier));
        let mut a = &p * (&km * km.transpose() + &kp * kp.transpose());
        for i in 0..d {
            a[(i, i)] += alpha;
        }
        let rm = Mat::<f64>::from_fn(3, d_out, |j, o| resid[j][o]);
        let want = a.partial_piv_lu().solve(&(&p * &km * &rm));
        let mut worst = 0f64;
        for i in 0..d {
            for o in 0..d_out {
                worst = worst.max((got[i * d_out + o] as f64 - want[(i, o)]).abs());
            }
        }
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn updates_stay_in_the_null_space_and_spare_preserved_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (d, d_out, threshold) = (24, 4, 0.1);
        let (m, c) = second_moment(d, &mut rng);
        let mut ns = NullSpace::of(&m, threshold).unwrap();
        let first = keys(1, d, &mut rng);
        let resid = vec![vec![1.0; d_out]];
        let dw = |ns: &NullSpace, k: &[Vec<f32>]| {
            let v = ns.update(1e-3, k, &resid).unwrap();
            Mat::<f64>::from_fn(d, d_out, |i, o| v[i * d_out + o] as f64)
        };
        // Nothing the corpus keys use is moved: C Δ only sees eigenvalues below the threshold.
        let delta = dw(&ns, &first);
        let moved = (&c * &delta).norm_l2() / delta.norm_l2();
        assert!(moved < threshold, "‖CΔ‖/‖Δ‖ = {moved}");
        // A second key near the first: with the first preserved, the update must leave the
        // first key's output nearly alone (it may not without).
        let second: Vec<Vec<f32>> = vec![first[0]
            .iter()
            .map(|&x| x + 0.2 * rng.random_range(-1.0f32..1.0))
            .collect()];
        let out_at_first = |delta: &Mat<f64>| (delta.transpose() * col(&first)).norm_l2();
        let free = out_at_first(&dw(&ns, &second));
        ns.preserve(&first).unwrap();
        let kept = out_at_first(&dw(&ns, &second));
        assert!(
            kept < 0.2 * free,
            "first key's output moved {kept} (unpreserved: {free})"
        );
        ns.forget();
        let again = out_at_first(&dw(&ns, &second));
        assert!(
            (again - free).abs() < 1e-9 * free.max(1.0),
            "{again} vs {free}"
        );
    }
}
