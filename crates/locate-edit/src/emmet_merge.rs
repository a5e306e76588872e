//! EMMET-Merge: EMMET ([`crate::emmet`]) with MEMIT-Merge's targets ([`crate::memit_merge`]), one
//! target offset per subject in a batch. Neither paper proposes it; kedit combines them because
//! EMMET's same-subject failure is the one merging addresses at its root. A subject's requests
//! whose prompts begin with the subject have the same key, and EMMET asks that one key for each
//! request's own output: constraints no update can meet, so it writes their compromise. With
//! one offset per subject the outputs asked of a shared key are one output, and the equality
//! constraints are consistent again. With one request per subject it is EMMET bit for bit.

use anyhow::Result;

use crate::emmet::{check, EMMET};
use crate::hparams::MemitHparams;
use crate::memit::{Flavor, Memit};

pub const EMMET_MERGE: Flavor = Flavor {
    name: "emmet-merge",
    merge_subjects: true,
    ..EMMET
};

/// An EMMET-Merge editor (a [`Memit`] with EMMET's update and targets merged by subject); its
/// hyperparameters are EMMET's, checked now.
pub fn emmet_merge(hparams: MemitHparams) -> Result<Memit> {
    check(&hparams)?;
    Ok(Memit::with_flavor(hparams, &EMMET_MERGE))
}
