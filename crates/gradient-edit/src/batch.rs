//! Token batches and the teacher-forced loss that FT and MEND share, and the residual stream
//! entering the lowest edited layer (nothing below it changes, so it is computed once).

use anyhow::{bail, Result};
use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};
use kedit_editing::EditRequest;
use kedit_models::{CausalLm, Interventions, LanguageModel, Site, Transformer};

use crate::ft::Objective;

/// Rows of a chunk of `(prompt, target)` token pairs, the positions whose next token is a label,
/// the labels and their weights (the mean over the chunk of each request's mean over its target
/// tokens, EasyEdit's reduction).
#[derive(Debug, Clone, Default)]
pub struct TokenBatch {
    pub seqs: Vec<Vec<u32>>,
    pub pos: Vec<(usize, usize)>,
    pub labels: Vec<i64>,
    pub weights: Vec<f32>,
}

impl TokenBatch {
    pub fn of(chunk: &[(Vec<u32>, Vec<u32>)], objective: Objective) -> Self {
        let mut b = Self::default();
        for (i, (prompt, target)) in chunk.iter().enumerate() {
            let w = 1.0 / (target.len() * chunk.len()) as f32;
            for (j, &t) in target.iter().enumerate() {
                let p = match objective {
                    Objective::PromptLast => prompt.len() - 1,
                    Objective::TargetNew => prompt.len() - 1 + j,
                };
                b.pos.push((i, p));
                b.labels.push(t as i64);
                b.weights.push(w);
            }
            match objective {
                Objective::PromptLast => b.seqs.push(prompt.clone()),
                Objective::TargetNew => b
                    .seqs
                    .push([prompt.clone(), target[..target.len() - 1].to_vec()].concat()),
            }
        }
        b
    }

    /// The batches one under the other (rows renumbered), each label's weight times `scale`.
    pub fn stack<'a>(parts: impl IntoIterator<Item = &'a TokenBatch>, scale: f32) -> Self {
        let mut b = Self::default();
        for p in parts {
            let off = b.seqs.len();
            b.seqs.extend(p.seqs.iter().cloned());
            b.pos.extend(p.pos.iter().map(|&(r, q)| (r + off, q)));
            b.labels.extend(&p.labels);
            b.weights.extend(p.weights.iter().map(|w| w * scale));
        }
        b
    }

    /// The weighted negative log-likelihood of the labels, from final hidden states.
    pub fn nll<B: Backend>(&self, model: &Transformer<B>, hidden: Tensor<B, 3>) -> Tensor<B, 1> {
        let dev = model.device();
        let n = self.labels.len();
        let logp = activation::log_softmax(model.logits_at(hidden, &self.pos), 1);
        let labels =
            Tensor::<B, 2, Int>::from_data(TensorData::new(self.labels.clone(), [n, 1]), &dev);
        let weights =
            Tensor::<B, 2>::from_data(TensorData::new(self.weights.clone(), [n, 1]), &dev);
        (logp.gather(1, labels) * weights).sum().neg()
    }

    /// Each row's mean negative log-likelihood over its labels (unweighted), on the host.
    pub fn row_nll<B: Backend>(&self, model: &Transformer<B>, hidden: Tensor<B, 3>) -> Vec<f64> {
        let dev = model.device();
        let n = self.labels.len();
        let logp = activation::log_softmax(model.logits_at(hidden, &self.pos), 1);
        let labels =
            Tensor::<B, 2, Int>::from_data(TensorData::new(self.labels.clone(), [n, 1]), &dev);
        let picked = logp
            .gather(1, labels)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32");
        let mut sum = vec![0f64; self.seqs.len()];
        let mut count = vec![0f64; self.seqs.len()];
        for (&(row, _), &lp) in self.pos.iter().zip(&picked) {
            sum[row] -= lp as f64;
            count[row] += 1.0;
        }
        sum.iter().zip(&count).map(|(s, c)| s / c).collect()
    }

    /// Every real (non-padding) token `(row, position)`.
    pub fn tokens(&self) -> Vec<(usize, usize)> {
        self.seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..s.len()).map(move |p| (i, p)))
            .collect()
    }
}

/// `prompt` and ` target` (one leading space, as the metrics score targets) as tokens.
pub fn encode_pair<B: Backend>(
    lm: &LanguageModel<B>,
    prompt: &str,
    target: &str,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let p = lm.encode(prompt)?;
    let t = lm.encode(&format!(" {}", target.trim_start()))?;
    if p.is_empty() || t.is_empty() {
        bail!("prompt {prompt:?}: empty prompt or target");
    }
    Ok((p, t))
}

/// Each request's full prompt and ` target_new` as tokens.
pub fn request_pairs<B: Backend>(
    lm: &LanguageModel<B>,
    requests: &[EditRequest],
) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
    requests
        .iter()
        .map(|r| encode_pair(lm, &r.full_prompt(), &r.target_new))
        .collect()
}

/// The residual stream entering block `start` for the right-padded `seqs`.
pub fn residual_in<B: Backend>(
    model: &Transformer<B>,
    seqs: &[Vec<u32>],
    start: usize,
) -> Tensor<B, 3> {
    let ids = model.batch(seqs);
    if start == 0 {
        return model.embed(ids);
    }
    let iv = Interventions::none()
        .capture(start - 1, Site::Residual)
        .stop_after(start - 1);
    model.forward(ids, &iv).captured[&(start - 1, Site::Residual)].clone()
}
