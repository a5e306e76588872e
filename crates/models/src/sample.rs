//! Top-k sampling with a key-value cache: EasyEdit's `generate_fast` (top-k 5, every row
//! continued to a total length, prompt included), which ROME's and EasyEdit's fluency reads.
//! Each row draws from its own seeded generator, so a row's text does not depend on what it is
//! batched with (up to the float sums of a padded batch).

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::{CausalLm, LanguageModel};

/// Sample from the softmax of the `k` largest logits (ties: the lower id first).
pub fn top_k_sample(logits: &[f32], k: usize, rng: &mut ChaCha8Rng) -> u32 {
    let k = k.clamp(1, logits.len());
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // The k largest in linear time, then only those sorted, rather than the whole vocabulary
    // (49k entries on SmolLM2) per row and token. The order is total (ties by id), so the k and
    // their order are a full sort's: the same draws, token for token.
    let order = |&a: &usize, &b: &usize| logits[b].total_cmp(&logits[a]).then(a.cmp(&b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
    }
    idx.sort_by(order);
    let top = logits[idx[0]] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| (logits[i] as f64 - top).exp())
        .collect();
    let mut r = rng.random::<f64>() * w.iter().sum::<f64>();
    for (i, wi) in idx.iter().zip(&w) {
        if r < *wi {
            return *i as u32;
        }
        r -= wi;
    }
    idx[k - 1] as u32
}

impl<B: Backend> LanguageModel<B> {
    /// Continue each prompt (token ids) until it holds `max_len` tokens, prompt included,
    /// drawing every token from the top `top_k` (`top_k` 1: greedy) with row i's generator
    /// `rngs[i]`; like EasyEdit's `generate_fast`, end-of-sequence does not stop a row. One
    /// batched step per token, from a key-value cache. Returns each row's new tokens.
    pub fn sample(
        &self,
        prompts: &[Vec<u32>],
        max_len: usize,
        top_k: usize,
        rngs: &mut [ChaCha8Rng],
    ) -> Result<Vec<Vec<u32>>> {
        if rngs.len() != prompts.len() {
            bail!("{} prompts but {} generators", prompts.len(), rngs.len());
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            bail!("prompt {i} is empty");
        }
        self.check_context("sample", max_len)?;
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
        let live: Vec<usize> = (0..prompts.len())
            .filter(|&i| prompts[i].len() < max_len)
            .collect();
        if live.is_empty() {
            return Ok(out);
        }
        let model = &self.model;
        let seqs: Vec<Vec<u32>> = live.iter().map(|&i| prompts[i].clone()).collect();
        // The cache holds each prompt but its last token; every step feeds one token per row.
        let prefix_lens: Vec<usize> = seqs.iter().map(|p| p.len() - 1).collect();
        let h = model.embed(model.batch(&seqs));
        let mut cache = model.prefix_cache(0, h, &prefix_lens, 1);
        let mut next: Vec<u32> = seqs.iter().map(|p| *p.last().expect("non-empty")).collect();
        let short = |out: &[Vec<u32>], i: usize| prompts[i].len() + out[i].len() < max_len;
        let d = model.config.hidden_size;
        while live.iter().any(|&i| short(&out, i)) {
            let ids = model.batch(&next.iter().map(|&t| vec![t]).collect::<Vec<_>>());
            let positions = cache.prefix_lens.clone();
            let h = model.embed_at(ids, &positions);
            let hidden = model.decode_step(&mut cache, h);
            let b = next.len();
            let logits: Vec<f32> = model
                .unembed(hidden.reshape([b, d]))
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 logits");
            let v = logits.len() / b;
            for (r, &i) in live.iter().enumerate() {
                let t = top_k_sample(&logits[r * v..(r + 1) * v], top_k, &mut rngs[i]);
                next[r] = t;
                if short(&out, i) {
                    out[i].push(t);
                }
            }
        }
        Ok(out)
    }
}
