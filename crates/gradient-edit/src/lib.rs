//! kedit-gradient-edit: editors that follow the gradient of the edit loss directly. Today: FT-L and
//! FT-M (methods.md §3.8): fine-tune only the `rewrite_module_tmp` weights of `layers` with Adam.
//! FT-L scores every target token at the last prompt position (ROME's fine-tuning baseline);
//! FT-M is teacher-forced cross-entropy over the target tokens (EasyEdit's `target_new`).

pub mod ft;

pub use ft::{Ft, FtHparams, Objective};
