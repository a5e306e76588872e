//! Perplexity on held-out text: what an edit costs the model's language modelling at large. The
//! S2RKE paper's density figures (paper.md §6.4) show it beside NS, unmoved by the edits
//! (≈ 49 at every density); EasyEdit reports it as fluency's companion. Not a CounterFact metric:
//! it is measured on text that names none of the edited facts.
//!
//! The text is cut into windows of `window` tokens, each read from its own start (no carried
//! context), and every token after a window's first is predicted: perplexity =
//! exp(Σ NLL / predicted tokens). Windows, not one sliding context, so that the number depends
//! only on the tokens and `window`, and batches of windows share one forward.

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use kedit_models::{CausalLm, LanguageModel};
use serde::{Deserialize, Serialize};

/// Windows per forward pass.
const BATCH: usize = 8;

/// Tokens per window unless asked otherwise (`kedit perplexity --window`, `kedit edit
/// --perplexity-tokens`).
pub const DEFAULT_WINDOW: usize = 128;

/// Perplexity over some tokens, with what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// exp(nll_sum / predicted).
    pub perplexity: f64,
    /// Summed negative log-likelihood (nats), in f64.
    pub nll_sum: f64,
    /// Tokens predicted (each window's first token is context only).
    pub predicted: usize,
    /// Tokens read.
    pub tokens: usize,
    pub window: usize,
}

/// Perplexity of `lm` on `ids`, cut into windows of `window` tokens (the last one may be
/// shorter; a last window of one token predicts nothing and is dropped).
pub fn perplexity<B: Backend>(
    lm: &LanguageModel<B>,
    ids: &[u32],
    window: usize,
) -> Result<Perplexity> {
    if window < 2 {
        bail!("perplexity: a window of {window} tokens predicts nothing (at least 2)");
    }
    let context = lm.model.config().max_position_embeddings;
    if window > context {
        bail!("perplexity: a window of {window} tokens is longer than the model's context of {context}");
    }
    let windows: Vec<&[u32]> = ids.chunks(window).filter(|w| w.len() >= 2).collect();
    if windows.is_empty() {
        bail!(
            "perplexity: {} tokens make no window of at least 2",
            ids.len()
        );
    }
    let bar = indicatif::ProgressBar::new(windows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "perplexity {bar:40} {pos}/{len} windows eta {eta}",
        )
        .expect("template"),
    );
    let (mut nll_sum, mut predicted) = (0f64, 0usize);
    for batch in windows.chunks(BATCH) {
        let seqs: Vec<Vec<u32>> = batch.iter().map(|w| w.to_vec()).collect();
        let mut positions = Vec::new();
        let mut next = Vec::new();
        for (i, w) in batch.iter().enumerate() {
            for p in 0..w.len() - 1 {
                positions.push((i, p));
                next.push(w[p + 1]);
            }
        }
        let n = next.len();
        let lp = lm.logprobs_at(&seqs, &positions, &next);
        nll_sum -= lp.iter().map(|&x| x as f64).sum::<f64>();
        predicted += n;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Perplexity {
        perplexity: (nll_sum / predicted as f64).exp(),
        nll_sum,
        predicted,
        tokens: windows.iter().map(|w| w.len()).sum(),
        window,
    })
}

/// The last `tokens` tokens of `text` (all of it if it has fewer), and how many it has. The end,
/// because `kedit stats` reads the corpus from its start: with the default corpus (about 300k
/// tokens for SmolLM2's tokenizer) and ROME's 100k samples, the two never share a token.
pub fn tail_ids<B: Backend>(
    lm: &LanguageModel<B>,
    text: &str,
    tokens: usize,
) -> Result<(Vec<u32>, usize)> {
    let ids = lm.encode(text)?;
    let total = ids.len();
    Ok((ids[total.saturating_sub(tokens)..].to_vec(), total))
}
