//! Context templates: "{}" plus short prefixes sampled from the model itself (top-k 5), seeded,
//! so that the key and value of an edit do not depend on one exact phrasing.

use anyhow::Result;
use burn::tensor::backend::Backend;
use kedit_models::sample::top_k_sample;
use kedit_models::LanguageModel;
use rand::SeedableRng;
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
