//! MEMIT-Merge (arXiv 2502.07322; paper.md §8): MEMIT for batches that hold several facts about
//! one subject. MEMIT writes every request under its subject's key; the keys of one subject's
//! requests nearly coincide (cosine ≈ 0.95 on SmolLM2, `kedit keys`), so its least-squares update
//! can only store one compromise of their separately optimised targets, and the facts overwrite
//! each other. MEMIT-Merge optimises one target offset per subject, against all of that subject's
//! requests at once, so the values written under the shared key agree. Sequential editing (one
//! request per `apply`) is MEMIT itself.

use crate::hparams::MemitHparams;
use crate::memit::{Flavor, Memit, MEMIT};

pub const MEMIT_MERGE: Flavor = Flavor {
    name: "memit-merge",
    merge_subjects: true,
    ..MEMIT
};

/// A MEMIT-Merge editor (a [`Memit`] whose batch targets are merged by subject).
pub fn memit_merge(hparams: MemitHparams) -> Memit {
    Memit::with_flavor(hparams, &MEMIT_MERGE)
}
