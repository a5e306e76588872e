//! FT-L / FT-M: Adam on the rewrite module's weights, the rest of the model frozen.
//!
//! The weights are plain tensors (not Burn `Module`s, see ARCHITECTURE.md); Adam is `adam.rs`.

use crate::adam::Adam;
use crate::batch::{request_pairs, residual_in, TokenBatch};
use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, ElementConversion, Tensor};
pub use kedit_editing::hparams::Hparams;
use kedit_editing::hparams::{parse_yaml, RUN_KEYS};
use kedit_editing::{EditRequest, Editor, Matrix, Patch, PatchEntry};
use kedit_models::{CausalLm, Interventions, LanguageModel, ToAutodiff};
use serde::{Deserialize, Serialize};

/// `norm_constraint`: EasyEdit writes `false` or an ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NormConstraint {
    Off(bool),
    Epsilon(f64),
}

impl Default for NormConstraint {
    fn default() -> Self {
        NormConstraint::Off(false)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtHparams {
    pub layers: Vec<usize>,
    /// Which projection: the MLP output (`...mlp.down_proj...`, `mlp.c_proj`, `mlp.fc_out`) or the
    /// attention output (`...self_attn.o_proj...`, `attn.c_proj`, `attn.out_proj`).
    pub rewrite_module_tmp: String,
    pub num_steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub norm_constraint: NormConstraint,
    /// Only 0 (EasyEdit's FT configs): a KL term is not implemented.
    #[serde(default)]
    pub kl_factor: f64,
    /// `prompt_last` (FT-L) or `target_new` (FT-M); the method name decides when absent.
    #[serde(default)]
    pub objective_optimization: Option<String>,
    /// Accepted for symmetry with the other methods; FT draws nothing at random.
    #[serde(default)]
    pub seed: u64,
}

impl FtHparams {
    /// The defaults for SmolLM2-135M (see hparams/ft-smollm2.yaml for why).
    pub fn smollm2() -> Self {
        Self::from_yaml_str(
            include_str!("../hparams/ft-smollm2.yaml"),
            "ft-smollm2.yaml",
        )
        .expect("bundled hparams")
    }

    fn matrix(&self) -> Result<Matrix> {
        let m = &self.rewrite_module_tmp;
        if m.contains("attn") {
            if m.contains("o_proj") || m.contains("c_proj") || m.contains("out_proj") {
                return Ok(Matrix::AttnOut);
            }
        } else if m.contains("down_proj") || m.contains("c_proj") || m.contains("fc_out") {
            return Ok(Matrix::MlpOut);
        }
        bail!("field `rewrite_module_tmp`: {m:?} is neither an MLP nor an attention output projection (the matrices kedit edits)")
    }
}

impl Hparams for FtHparams {
    fn from_yaml_str(text: &str, file: &str) -> Result<Self> {
        // FT uses three of the keys other methods ignore.
        let ignored: Vec<&str> = RUN_KEYS
            .iter()
            .copied()
            .filter(|k| !["rewrite_module_tmp", "batch_size", "max_length"].contains(k))
            .collect();
        let h: Self = parse_yaml(text, file, &ignored)?;
        if h.layers.is_empty() {
            bail!("{file}: field `layers`: empty");
        }
        if h.kl_factor != 0.0 {
            bail!("{file}: field `kl_factor`: only 0 is supported (EasyEdit's FT value)");
        }
        if h.batch_size == 0 {
            bail!("{file}: field `batch_size`: must be at least 1");
        }
        if let NormConstraint::Off(true) = h.norm_constraint {
            bail!("{file}: field `norm_constraint`: expected false or a number");
        }
        h.matrix().with_context(|| file.to_owned())?;
        Ok(h)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// FT-L: every target token scored at the last prompt position.
    PromptLast,
    /// FT-M: teacher-forced cross-entropy over the target tokens.
    TargetNew,
}

pub struct Ft {
    pub hparams: FtHparams,
    pub objective: Objective,
}

impl Ft {
    /// `objective` from the method name; a conflicting `objective_optimization` is an error.
    pub fn new(hparams: FtHparams, objective: Objective) -> Result<Self> {
        let want = match objective {
            Objective::PromptLast => "prompt_last",
            Objective::TargetNew => "target_new",
        };
        if let Some(o) = &hparams.objective_optimization {
            if o != want {
                bail!("hparams field `objective_optimization`: {o:?}, but this method is `{want}` (ft-l = prompt_last, ft-m = target_new)");
            }
        }
        Ok(Self { hparams, objective })
    }

    /// Train on `requests`; returns the weight deltas `W − W₀` as patch entries (model untouched).
    fn train<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
        requests: &[EditRequest],
    ) -> Result<Vec<PatchEntry>> {
        let h = &self.hparams;
        let matrix = h.matrix()?;
        let n_layers = lm.model.config.num_layers;
        if let Some(&l) = h.layers.iter().find(|&&l| l >= n_layers) {
            bail!("hparams field `layers`: layer {l} but the model has {n_layers}");
        }
        let data = request_pairs(lm, requests)?;
        let get = |l: usize| match matrix {
            Matrix::MlpOut => lm.model.mlp_out(l),
            Matrix::AttnOut => lm.model.attn_out(l),
        };
        let w0: Vec<Tensor<B, 2>> = h.layers.iter().map(|&l| get(l)).collect();
        let mut w = w0.clone();
        let mut adam = Adam::new(&w0);
        // Every weight but the trained ones is a constant across the steps: split once for
        // 3xTF32 where products are split (CUDA); the trained ones are split per product.
        let start = *h.layers.iter().min().expect("checked non-empty");
        let base = lm.model.presplit_if_split(start).map(&ToAutodiff);
        // Below the lowest trained layer nothing changes: its input is computed once per chunk.
        let chunks: Vec<(TokenBatch, Tensor<B, 3>)> = data
            .chunks(h.batch_size)
            .map(|chunk| {
                let b = TokenBatch::of(chunk, self.objective);
                let h_in = residual_in(&lm.model, &b.seqs, start);
                (b, h_in)
            })
            .collect();
        for step in 0..h.num_steps {
            let mut losses = Vec::new();
            for (batch, h_in) in &chunks {
                let mut model = base.clone();
                let params: Vec<Tensor<Autodiff<B>, 2>> = w
                    .iter()
                    .map(|x| Tensor::from_inner(x.clone()).require_grad())
                    .collect();
                for (&l, p) in h.layers.iter().zip(&params) {
                    match matrix {
                        Matrix::MlpOut => model.set_mlp_out(l, p.clone()),
                        Matrix::AttnOut => model.set_attn_out(l, p.clone()),
                    }
                }
                let fwd = model.forward_from(
                    start,
                    Tensor::from_inner(h_in.clone()),
                    &Interventions::none(),
                );
                let loss = batch.nll(&model, fwd.hidden);
                let lv: f64 = loss.clone().into_scalar().elem();
                losses.push(lv);
                // EasyEdit skips the step on a chunk that is already learnt.
                if lv < 1e-2 {
                    continue;
                }
                let grads = loss.backward();
                adam.tick();
                for (i, p) in params.iter().enumerate() {
                    let g = p
                        .grad(&grads)
                        .context("no gradient for the rewrite module")?;
                    w[i] = adam.update(i, w[i].clone(), g, h.lr, h.weight_decay);
                    if let NormConstraint::Epsilon(e) = h.norm_constraint {
                        let lo = w0[i].clone() - e;
                        let hi = w0[i].clone() + e;
                        w[i] = w[i].clone().max_pair(lo).min_pair(hi);
                    }
                }
            }
            let mean = losses.iter().sum::<f64>() / losses.len() as f64;
            tracing::debug!(step, loss = mean, "ft");
            if mean < 1e-2 {
                break;
            }
        }
        h.layers
            .iter()
            .zip(w.into_iter().zip(w0))
            .map(|(&layer, (w, w0))| {
                let shape = w.dims();
                let delta = (w - w0)
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                Ok(PatchEntry {
                    layer,
                    matrix,
                    shape,
                    delta,
                })
            })
            .collect()
    }
}

impl<B: Backend> Editor<B> for Ft {
    fn name(&self) -> &str {
        match self.objective {
            Objective::PromptLast => "ft-l",
            Objective::TargetNew => "ft-m",
        }
    }

    /// All requests are learnt together (batch editing); sequential editing is one request per
    /// `apply`.
    fn apply(&mut self, lm: &mut LanguageModel<B>, requests: &[EditRequest]) -> Result<Patch> {
        let mut patch =
            Patch::described(<Self as Editor<B>>::name(self), &self.hparams, requests, lm)?;
        patch.entries = self.train(lm, requests)?;
        // Edited through the patch itself, so that a saved patch reproduces the model exactly.
        patch.apply(&mut lm.model)?;
        Ok(patch)
    }
}
