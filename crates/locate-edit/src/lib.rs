//! kedit-locate-edit: locate-then-edit methods: ROME (and its R-ROME fix), MEMIT (and
//! MEMIT-Merge), PMET, AlphaEdit and EMMET.
//!
//! ROME rewrites one MLP output projection with a rank-one update `ΔW = u ⊗ r`: `u` is the
//! (normalised) key the subject produces at that layer, `r` moves the layer's output for that key
//! to a value `v*` found by gradient descent so the model says `target_new`.
//!
//! Editing a model from Rust with this crate and `kedit-models` alone (compiled, not run, in the
//! tests: it fetches the default model):
//!
//! ```no_run
//! use kedit_editing::{EditRequest, Editor};
//! use kedit_locate_edit::{stats, Rome, RomeHparams, Variant};
//! use kedit_models::{fetch, Cpu, LanguageModel};
//!
//! # fn main() -> anyhow::Result<()> {
//! let mut lm = LanguageModel::<Cpu>::load_gguf(&fetch::smollm2()?, &Default::default())?;
//! let request = EditRequest {
//!     prompt: "The mother tongue of {} is".into(),
//!     subject: "Danielle Darrieux".into(),
//!     relation: "P103".into(),
//!     target_new: "English".into(),
//!     target_true: "French".into(),
//! };
//! let hparams = RomeHparams::smollm2(); // layer 4, mom2_adjustment: true
//! // C = E[k kᵀ] at the edit layer from the WikiText-2 sample kedit carries, cached on disk.
//! let c = stats::load_or_compute(
//!     &lm,
//!     hparams.layers[0],
//!     std::path::Path::new(stats::DEFAULT_CORPUS),
//!     100_000,
//!     &fetch::cache_dir()?.join("stats"),
//! )?;
//! let mut rome = Rome::new(hparams, Variant::Original).with_second_moment(c);
//! let patch = rome.apply(&mut lm, &[request])?; // `lm` is now edited
//! patch.save(std::path::Path::new("darrieux.safetensors"))?; // re-apply later with Patch::load
//! let after = lm.score(&[("The mother tongue of Danielle Darrieux is", " English")])?;
//! println!("mean NLL of the new target: {}", after[0].mean_nll());
//! # Ok(())
//! # }
//! ```

//!
//! MEMIT, PMET, AlphaEdit and EMMET write many facts at once over several layers (`Memit::new`,
//! `pmet::pmet`, `alphaedit::alphaedit`, `emmet::emmet`; MEMIT-Merge and EMMET-Merge share one
//! target per subject in a batch, `memit_merge`, `emmet_merge`); they share with ROME the template
//! prompts and keys (`kv`), the target optimisation (`z`) and the statistics (`stats`), and add
//! an f64 update (`solve`: MEMIT's least squares, EMMET's equality constraints; AlphaEdit's, in
//! the null space of C, in `alphaedit`).

pub mod alphaedit;
pub mod emmet;
pub mod emmet_merge;
pub mod hparams;
pub mod kv;
pub mod memit;
pub mod memit_merge;
pub mod pmet;
pub mod rome;
pub mod solve;
pub mod stats;
pub mod templates;
pub mod z;

pub use alphaedit::alphaedit;
pub use emmet::emmet;
pub use emmet_merge::emmet_merge;
pub use hparams::{MemitHparams, RomeHparams};
pub use memit::Memit;
pub use memit_merge::memit_merge;
pub use pmet::pmet;
pub use rome::{Rome, Variant};
