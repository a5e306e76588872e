//! kedit-locate-edit: locate-then-edit methods. Today: ROME and its R-ROME fix.
//!
//! ROME rewrites one MLP output projection with a rank-one update `ΔW = u ⊗ r`: `u` is the
//! (normalised) key the subject produces at that layer, `r` moves the layer's output for that key
//! to a value `v*` found by gradient descent so the model says `target_new`.

pub mod hparams;
pub mod rome;
pub mod templates;

pub use hparams::RomeHparams;
pub use rome::{Rome, Variant};
