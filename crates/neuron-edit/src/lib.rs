//! kedit-neuron-edit: KN, knowledge neurons (Dai et al. 2022) as EasyEdit runs them (methods.md
//! §3.6).
//!
//! Attribution: the activation `a` of the MLP's first projection (Llama's `gate_proj`, before the
//! nonlinearity) at the last prompt position; integrated gradients of the probability of the
//! true answer's token from 0 to `a` over `steps` points (`linspace(0, 1, steps)`), per layer;
//! multi-token answers average over their tokens, each read after the model's own greedy tokens.
//! Neurons above `adaptive_threshold` × the largest attribution are kept. Edit: each kept
//! neuron's output row (its row of the MLP output projection, `[d_ff, d_model]`) loses 2 × the
//! embedding of the token the unedited model predicts and gains 2 × the embedding of each target
//! token.

pub mod kn;

pub use kn::{Kn, KnHparams};
