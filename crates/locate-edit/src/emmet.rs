//! EMMET (Gupta et al. 2024, "A Unified Framework for Model Editing", arXiv 2403.14236; not in
//! methods.md: read from EasyEdit's `easyeditor/models/emmet` at 14cea82): ROME's
//! equality constraint for a batch. MEMIT's targets, keys and layer-by-layer residual, with
//! another update: every key's output must move by exactly its residual, at the least change
//! that C weighs, `ΔW = A⁻¹ K (Kᵀ A⁻¹ K + μI)⁻¹ Rᵀ`, `A = λC + νI` ([`crate::solve::equality_update`]).
//! On one request and one layer (EasyEdit's configs edit one) it is ROME's rank-one update, damped
//! by μ.
//!
//! For the S2RKE question EMMET is the sharpest locate-then-edit case: two facts about one
//! subject arrive with nearly one key, and an equality constraint per key asks one direction of
//! the key space for two different outputs. `Kᵀ A⁻¹ K` is then nearly singular; μ (EasyEdit's
//! `emmet_lambda`) is what keeps the update finite, and decides the compromise.

use anyhow::{bail, Context, Result};

use crate::hparams::MemitHparams;
use crate::memit::{Flavor, Memit, Update, MEMIT};

pub const EMMET: Flavor = Flavor {
    name: "emmet",
    update: Update::Equality,
    ..MEMIT
};

/// An EMMET editor (a [`Memit`] with EMMET's update); its hyperparameters are checked now.
pub fn emmet(hparams: MemitHparams) -> Result<Memit> {
    check(&hparams)?;
    Ok(Memit::with_flavor(hparams, &EMMET))
}

/// EMMET's keys: `emmet_lambda` present and ≥ 0, `update_norm_lambda` ≥ 0 if present.
pub(crate) fn check(h: &MemitHparams) -> Result<()> {
    let mu = h
        .emmet_lambda
        .context("field `emmet_lambda`: EMMET needs it (EasyEdit's value: 0.1)")?;
    if mu.is_nan() || mu < 0.0 {
        bail!("field `emmet_lambda`: must be ≥ 0, got {mu}");
    }
    if let Some(nu) = h.update_norm_lambda {
        if nu.is_nan() || nu < 0.0 {
            bail!("field `update_norm_lambda`: must be ≥ 0, got {nu}");
        }
    }
    Ok(())
}
