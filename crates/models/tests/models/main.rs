//! The model tests against transformers' reference outputs (fixtures/): on tiny random
//! checkpoints, and on the real default model (`smollm2`, fetched on first use).
//!
//! One test binary for these files, not one binary each: every binary links and
//! monomorphises Burn for its backends again (at opt-level 3 in this crate, Cargo.toml), and
//! one per file cost CI minutes. The GPU pack's SmolLM2 phase runs the `smollm2::` tests.

mod common;
mod decode;
mod families;
mod gradients;
mod prefix;
mod presplit;
mod smollm2;
mod tiny_llama;
