//! kedit-neuron-edit: KN, knowledge neurons (Dai et al. 2022) as EasyEdit runs them (methods.md
//! §3.6).
//!
//! Attribution: the activation `a` of the MLP's first projection (Llama's `gate_proj`, before the
//! nonlinearity) at the last prompt position; integrated gradients of the probability of the
//! true answer's token from 0 to `a` over `steps` points (`linspace(0, 1, steps)`), per layer;
//! multi-token answers average over their tokens, each read after the model's own greedy tokens.
//! Neurons above `adaptive_threshold` × the largest attribution are kept. Edit: each kept
//! neuron's output row (its row of the MLP output projection, `[d_ff, d_model]`) loses the
//! embeddings of the model's own greedy completion and gains those of the target, as many tokens
//! as the target has: 2 × each for a one-token target, 1 × each for a longer one (EasyEdit's
//! `modify_weights`). Every kept row gets the same vector, so on any text the edit adds
//! `Σ_j a_j × that vector` to the residual stream; neurons that fire strongly everywhere make it
//! large (benchmarks/README.md, "Why one KN edit wrecks perplexity").

pub mod kn;

pub use kn::{Kn, KnHparams};
