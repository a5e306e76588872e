//! ROME (Meng et al. 2022), as methods.md §3.2 describes it, and R-ROME (Gupta et al. 2024),
//! which uses the template-averaged key in the update's denominator too.

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use kedit_editing::{EditRequest, Editor, LayerKeys, Matrix, Patch, PatchEntry};
use kedit_models::{CausalLm, LanguageModel, Site};

use crate::hparams::RomeHparams;
use crate::kv::{host, norm, request_keys, template_prompts, Average, Prompt};
use crate::stats::SecondMoment;
use crate::templates::TemplateCache;
use crate::z::{self, ZSpec};

/// Which key goes into the denominator of the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The original: the key of the bare prompt. It can differ enough from the averaged key `u`
    /// that `k·u` gets tiny and the update explodes ("disabling edits").
    Original,
    /// R-ROME: the template-averaged key, the same one `u` comes from. The default.
    RRome,
}

pub struct Rome {
    pub hparams: RomeHparams,
    pub variant: Variant,
    /// Sampled once per editor (and seed), as ROME caches them per process.
    templates: TemplateCache,
    /// `C = E[k kᵀ]` at the edit layer, for `mom2_adjustment`.
    mom2: Option<SecondMoment>,
}

impl Rome {
    pub fn new(hparams: RomeHparams, variant: Variant) -> Self {
        Self {
            hparams,
            variant,
            templates: TemplateCache::default(),
            mom2: None,
        }
    }

    /// Supply the second moment of the edit layer (needed when `mom2_adjustment` is true).
    pub fn with_second_moment(mut self, m: SecondMoment) -> Self {
        self.mom2 = Some(m);
        self
    }

    /// The prompts of every context template (the bare prompt first), their keys, and the mean
    /// key: what ROME writes under.
    #[allow(clippy::type_complexity)]
    fn template_keys<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        req: &EditRequest,
    ) -> Result<(Vec<Prompt>, Vec<Vec<f32>>, Vec<f32>)> {
        let groups = self.templates.get(
            lm,
            &self.hparams.context_template_length_params,
            self.hparams.seed,
        )?;
        let prompts = template_prompts(lm, &groups, req, self.hparams.fact_token())?;
        let (mut k_avg, mut keys) = request_keys(
            lm,
            self.hparams.layers[0],
            std::slice::from_ref(&prompts),
            Average::Flat,
        );
        Ok((
            prompts.into_iter().flatten().collect(),
            keys.remove(0),
            k_avg.remove(0),
        ))
    }

    /// The key ROME writes a request under (template-averaged MLP key at the edit layer).
    pub fn key<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        req: &EditRequest,
    ) -> Result<Vec<f32>> {
        Ok(self.template_keys(lm, req)?.2)
    }

    /// The rank-one delta `[d_ff, d_model]` for one request on the current model.
    pub fn compute_delta<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        req: &EditRequest,
    ) -> Result<PatchEntry> {
        let h = self.hparams.clone();
        let layer = h.layers[0];
        if h.mom2_adjustment && self.mom2.as_ref().is_none_or(|m| m.layer != layer) {
            bail!("hparams field `mom2_adjustment`: true needs the second moment of layer {layer} (Rome::with_second_moment; `kedit edit` loads it)");
        }
        if layer >= lm.model.config.num_layers {
            bail!(
                "hparams field `layers`: layer {layer} but the model has {}",
                lm.model.config.num_layers
            );
        }
        let (prompts, keys, k_avg) = self.template_keys(lm, req)?;
        let d_ff = k_avg.len();
        // u: the template-averaged key, normalised.
        // With `mom2_adjustment`, u = C⁻¹k: the direction that changes this key's output most while
        // disturbing typical keys least.
        let u_raw = match (&self.mom2, h.mom2_adjustment) {
            (Some(m), true) => m.solve(&k_avg)?,
            _ => k_avg.clone(),
        };
        let u_norm = norm(&u_raw);
        let u: Vec<f32> = u_raw.iter().map(|x| x / u_norm).collect();

        // v*: the MLP output at the subject that makes the model say `target_new`.
        let spec = ZSpec {
            layer,
            sites: vec![Site::MlpOut],
            steps: h.v_num_grad_steps,
            lr: h.v_lr,
            weight_decay: h.v_weight_decay,
            clamp_norm_factor: h.clamp_norm_factor,
            kl_factor: h.kl_factor,
            fact_token: h.fact_token(),
            adaptive_nll: None,
        };
        let v_star = z::optimize(lm, req, &prompts.iter().collect::<Vec<_>>(), &spec)?.target(0);

        // r = (v* - W k) / (k · u), with k the bare-prompt key (Original) or the averaged one.
        let k = match self.variant {
            Variant::Original => keys[0].clone(),
            Variant::RRome => k_avg,
        };
        let w = lm.model.mlp_out(layer);
        let dev = w.device();
        let d_model = w.dims()[1];
        let k_t = Tensor::<B, 2>::from_data(TensorData::new(k.clone(), [1, d_ff]), &dev);
        let cur_out = host(kedit_models::layers::matmul(k_t, w).reshape([d_model]));
        let denom: f32 = k.iter().zip(&u).map(|(a, b)| a * b).sum();
        let right: Vec<f32> = v_star
            .iter()
            .zip(&cur_out)
            .map(|(v, c)| (v - c) / denom)
            .collect();
        let mut delta = Vec::with_capacity(d_ff * d_model);
        for ui in &u {
            delta.extend(right.iter().map(|r| ui * r));
        }
        Ok(PatchEntry {
            layer,
            matrix: Matrix::MlpOut,
            shape: [d_ff, d_model],
            delta,
        })
    }
}

impl<B: Backend> Editor<B> for Rome {
    fn name(&self) -> &str {
        match self.variant {
            Variant::Original => "rome",
            Variant::RRome => "r-rome",
        }
    }

    fn prepare(&mut self, lm: &LanguageModel<B>) -> Result<()> {
        let h = &self.hparams;
        self.templates
            .get(lm, &h.context_template_length_params, h.seed)
            .map(drop)
    }

    /// Requests are applied one after another, each on the model the previous one left.
    fn apply(&mut self, lm: &mut LanguageModel<B>, requests: &[EditRequest]) -> Result<Patch> {
        let mut patch =
            Patch::described(<Self as Editor<B>>::name(self), &self.hparams, requests, lm)?;
        for req in requests {
            let entry = self.compute_delta(lm, req)?;
            // The model is edited through the patch itself, so that a saved patch reproduces it.
            let one = Patch {
                entries: vec![entry.clone()],
                metadata: Default::default(),
            };
            one.apply(&mut lm.model)?;
            patch.entries.push(entry);
        }
        Ok(patch)
    }

    fn layer_keys(&mut self, lm: &LanguageModel<B>, request: &EditRequest) -> Result<LayerKeys> {
        Ok(vec![(
            self.hparams.layers[0],
            Rome::key(self, lm, request)?,
        )])
    }
}
