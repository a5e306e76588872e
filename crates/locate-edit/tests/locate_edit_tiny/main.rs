//! The locate-then-edit tests on the tiny random Llama: ROME, MEMIT, PMET, AlphaEdit, the statistics.
//!
//! One test binary for these files, not one binary each: every binary links and
//! monomorphises Burn for its backends again, and one per file cost CI minutes.

mod alphaedit;
mod common;
mod memit;
mod rome_tiny;
mod stats;
