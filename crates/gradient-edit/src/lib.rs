//! kedit-gradient-edit: editors that follow the gradient of the edit loss.
//! - FT-L and FT-M (methods.md §3.8, `ft.rs`): fine-tune only the `rewrite_module_tmp` weights of
//!   `layers` with Adam. FT-L scores every target token at the last prompt position (ROME's
//!   fine-tuning baseline); FT-M is teacher-forced cross-entropy over the target tokens
//!   (EasyEdit's `target_new`).
//! - MEND (methods.md §3.7, `mend.rs`, meta-training in `mend_train.rs`): a trained hypernetwork
//!   turns the edit's gradient factors into a low-rank weight update.

pub mod adam;
pub mod batch;
pub mod ft;
pub mod mend;
pub mod mend_train;

pub use ft::{Ft, FtHparams, Objective};
pub use mend::{Archive, Mend, MendHparams};
