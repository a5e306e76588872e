//! The locate-then-edit tests on the tiny random Llama (ROME, MEMIT, PMET, AlphaEdit, EMMET, the
//! statistics) and ROME on the real default model (`smollm2`, fetched on first use).
//!
//! One test binary for these files, not one binary each: every binary links and
//! monomorphises Burn for its backends again (at opt-level 3 in this crate, Cargo.toml), and
//! one per file cost CI minutes. The GPU pack's SmolLM2 phase runs the `smollm2::` tests.

mod alphaedit;
mod common;
mod emmet;
mod memit;
mod rome_tiny;
mod smollm2;
mod stats;
