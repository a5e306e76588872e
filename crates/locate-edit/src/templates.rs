//! Context templates: "{}" plus short prefixes sampled from the model itself (top-k 5), seeded,
//! so that the key and value of an edit do not depend on one exact phrasing.

use anyhow::Result;
use burn::tensor::backend::Backend;
use kedit_models::LanguageModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// EasyEdit's starters; two samples per starter for each group of ten.
const STARTERS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];

/// Template groups `[["{}"], ["<prefix>. {}", ...], ...]`: the bare prompt, then one group per
/// `[length, count]` of `length_params` (EasyEdit's `context_template_length_params`), `length`
/// counting the starter's tokens too. ROME averages keys over all templates alike; MEMIT and
/// PMET average within each group first, so the bare prompt weighs as much as each group.
pub fn context_templates<B: Backend>(
    lm: &LanguageModel<B>,
    length_params: &[[usize; 2]],
    seed: u64,
) -> Result<Vec<Vec<String>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![vec!["{}".to_owned()]];
    for &[length, count] in length_params {
        let mut seqs: Vec<Vec<u32>> = (0..count)
            .map(|i| lm.encode(STARTERS[i * STARTERS.len() / count.max(1) % STARTERS.len()]))
            .collect::<Result<_>>()?;
        let start = seqs.iter().map(Vec::len).min().unwrap_or(0);
        for _ in start..length {
            let logits: Vec<f32> = lm
                .next_token_logits(&seqs)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32");
            let v = logits.len() / seqs.len();
            for (i, s) in seqs.iter_mut().enumerate() {
                if s.len() >= length {
                    continue;
                }
                s.push(top_k_sample(&logits[i * v..(i + 1) * v], 5, &mut rng));
            }
        }
        let mut group = Vec::with_capacity(count);
        for s in seqs {
            let text = lm.decode(&s)?.replace(['{', '}'], " ");
            group.push(format!("{text}. {{}}"));
        }
        out.push(group);
    }
    Ok(out)
}

/// Context templates sampled on first use and kept: ROME, MEMIT and PMET sample them once per
/// process, so every edit of a run sees the same ones.
#[derive(Debug, Clone, Default)]
pub struct TemplateCache(Option<Vec<Vec<String>>>);

impl TemplateCache {
    pub fn get<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        length_params: &[[usize; 2]],
        seed: u64,
    ) -> Result<Vec<Vec<String>>> {
        if self.0.is_none() {
            let t = context_templates(lm, length_params, seed)?;
            tracing::debug!("context templates: {t:?}");
            self.0 = Some(t);
        }
        Ok(self.0.clone().expect("sampled"))
    }
}

/// Sample from the softmax of the `k` largest logits.
fn top_k_sample(logits: &[f32], k: usize, rng: &mut ChaCha8Rng) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
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
