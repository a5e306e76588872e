//! FT and MEND on the tiny random Llama.
//!
//! One test binary for these files, not one binary each: every binary links and
//! monomorphises Burn for its backends again, and one per file cost CI minutes.

mod common;
mod ft_tiny;
mod mend_tiny;
