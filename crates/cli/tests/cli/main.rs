//! The `kedit` binary's tests: each drives the built binary (CARGO_BIN_EXE_kedit) as a user would.
//!
//! One test binary for these files, not one binary each: every binary links and
//! monomorphises Burn for its backends again, and one per file cost CI minutes.

mod bad_input;
mod bench;
mod common;
mod edit;
mod mend;
