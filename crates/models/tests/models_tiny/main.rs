//! The model tests on tiny random checkpoints, against transformers' reference outputs (fixtures/).
//!
//! One test binary for these files, not one binary each: every binary links and
//! monomorphises Burn for its backends again, and one per file cost CI minutes.

mod common;
mod decode;
mod families;
mod gradients;
mod prefix;
mod presplit;
mod tiny_llama;
