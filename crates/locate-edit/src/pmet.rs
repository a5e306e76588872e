//! PMET (Li et al. 2024), methods.md §3.4: MEMIT's batch update with a more precise target. The
//! attention and MLP outputs at the subject's last token of the last edit layer get one δ each,
//! optimised jointly with an adaptive NLL weight; only the MLP part is the target the FFN updates
//! reach (attention is optimised, not written, as in the released configs), and the residual is
//! spread by the square root of the layers left.

use crate::hparams::MemitHparams;
use crate::memit::{Flavor, Memit, Update};
use kedit_models::Site;

pub const PMET: Flavor = Flavor {
    name: "pmet",
    z_sites: &[Site::AttnOut, Site::MlpOut],
    target: 1,
    adaptive: true,
    spread: |left| (left as f64).sqrt(),
    merge_subjects: false,
    update: Update::LeastSquares,
};

/// A PMET editor (a [`Memit`] with PMET's flavour).
pub fn pmet(hparams: MemitHparams) -> Memit {
    Memit::with_flavor(hparams, &PMET)
}
