//! ROME (Meng et al. 2022), as methods.md §3.2 describes it, and R-ROME (Gupta et al. 2024),
//! which uses the template-averaged key in the update's denominator too.

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};
use kedit_editing::{EditRequest, Editor, Matrix, Patch, PatchEntry};
use kedit_models::prefix::suffixes;
use kedit_models::{CausalLm, Interventions, LanguageModel, Site, ToAutodiff};

use crate::hparams::RomeHparams;
use crate::stats::SecondMoment;
use crate::templates::context_templates;

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
    templates: Option<Vec<String>>,
    /// `C = E[k kᵀ]` at the edit layer, for `mom2_adjustment`.
    mom2: Option<SecondMoment>,
}

/// Where the subject's last token sits in `text_with_slot` once `{}` is filled.
fn subject_last<B: Backend>(
    lm: &LanguageModel<B>,
    text_with_slot: &str,
    subject: &str,
) -> Result<(Vec<u32>, usize)> {
    let at = text_with_slot
        .find("{}")
        .with_context(|| format!("prompt {text_with_slot:?} has no {{}}"))?;
    let prefix = format!("{}{subject}", &text_with_slot[..at]);
    let full = text_with_slot.replacen("{}", subject, 1);
    let ids = lm.encode(&full)?;
    let n = lm.encode(&prefix)?.len();
    if n == 0 || n > ids.len() {
        bail!("subject {subject:?} not found in the tokens of {full:?}");
    }
    Ok((ids, n - 1))
}

fn host(t: Tensor<impl Backend, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

fn norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>().sqrt()
}

impl Rome {
    pub fn new(hparams: RomeHparams, variant: Variant) -> Self {
        Self {
            hparams,
            variant,
            templates: None,
            mom2: None,
        }
    }

    /// Supply the second moment of the edit layer (needed when `mom2_adjustment` is true).
    pub fn with_second_moment(mut self, m: SecondMoment) -> Self {
        self.mom2 = Some(m);
        self
    }

    fn templates<B: Backend>(&mut self, lm: &LanguageModel<B>) -> Result<Vec<String>> {
        if self.templates.is_none() {
            let t = context_templates(
                lm,
                &self.hparams.context_template_length_params,
                self.hparams.seed,
            )?;
            tracing::debug!("context templates: {t:?}");
            self.templates = Some(t);
        }
        Ok(self.templates.clone().unwrap())
    }

    /// The MLP keys at `layer` at the subject's last token of each prompt, `[n][d_ff]`.
    fn keys<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
        prompts: &[(Vec<u32>, usize)],
    ) -> Vec<Vec<f32>> {
        let layer = self.hparams.layers[0];
        let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| p.0.clone()).collect();
        let iv = Interventions::none()
            .capture(layer, Site::MlpKey)
            .stop_after(layer);
        let fwd = lm.model.forward(lm.model.batch(&seqs), &iv);
        let k = fwd.captured[&(layer, Site::MlpKey)].clone();
        let [b, s, d] = k.dims();
        let flat = k.reshape([b * s, d]);
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| host(flat.clone().narrow(0, i * s + p.1, 1).reshape([d])))
            .collect()
    }

    /// The prompts (ids, subject position) of every context template, their keys, and the mean
    /// key: what ROME writes under. Template 0 is the bare prompt.
    #[allow(clippy::type_complexity)]
    fn template_keys<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        req: &EditRequest,
    ) -> Result<(Vec<(Vec<u32>, usize)>, Vec<Vec<f32>>, Vec<f32>)> {
        let templates = self.templates(lm)?;
        let prompts: Vec<(Vec<u32>, usize)> = templates
            .iter()
            .map(|t| subject_last(lm, &t.replacen("{}", &req.prompt, 1), &req.subject))
            .collect::<Result<_>>()?;
        let keys = self.keys(lm, &prompts);
        let d_ff = keys[0].len();
        let k_avg: Vec<f32> = (0..d_ff)
            .map(|j| keys.iter().map(|k| k[j]).sum::<f32>() / keys.len() as f32)
            .collect();
        Ok((prompts, keys, k_avg))
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

        let v_star = self.compute_v(lm, req, &prompts)?;

        // r = (v* - W k) / (k · u), with k the bare-prompt key (Original) or the averaged one.
        let k = match self.variant {
            Variant::Original => keys[0].clone(),
            Variant::RRome => k_avg,
        };
        let w = lm.model.mlp_out(layer);
        let dev = w.device();
        let d_model = w.dims()[1];
        let k_t = Tensor::<B, 2>::from_data(TensorData::new(k.clone(), [1, d_ff]), &dev);
        let cur_out = host(k_t.matmul(w).reshape([d_model]));
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

    /// v*: the MLP output at the subject that makes the model say `target_new`.
    fn compute_v<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
        req: &EditRequest,
        prompts: &[(Vec<u32>, usize)],
    ) -> Result<Vec<f32>> {
        let h = &self.hparams;
        let layer = h.layers[0];
        let target = lm.encode(&format!(" {}", req.target_new.trim_start()))?;
        if target.is_empty() {
            bail!("target_new {:?} has no tokens", req.target_new);
        }
        // Rewriting prompts: template + prompt + target minus its last token; then the KL prompt.
        let mut seqs = Vec::new();
        let mut delta_pos = Vec::new();
        let mut label_pos = Vec::new();
        let mut labels = Vec::new();
        for (i, (ids, pos)) in prompts.iter().enumerate() {
            for (j, &t) in target.iter().enumerate() {
                label_pos.push((i, ids.len() - 1 + j));
                labels.push(t as i64);
            }
            seqs.push([ids.clone(), target[..target.len() - 1].to_vec()].concat());
            delta_pos.push((i, *pos));
        }
        let (kl_ids, kl_pos) = subject_last(lm, "{} is a", &req.subject)?;
        let kl_row = seqs.len();
        seqs.push(kl_ids);
        delta_pos.push((kl_row, kl_pos));

        // Everything below `layer` is fixed: compute its output once, without gradients.
        let model = &lm.model;
        let ids = model.batch(&seqs);
        let h_in = if layer == 0 {
            model.embed(ids)
        } else {
            let iv = Interventions::none()
                .capture(layer - 1, Site::Residual)
                .stop_after(layer - 1);
            model.forward(ids, &iv).captured[&(layer - 1, Site::Residual)].clone()
        };
        // Nothing before a row's subject-last token changes while δ is optimised: keep those
        // tokens' keys and values and run only the suffixes (delta and logits at suffix
        // positions; about a third of the tokens).
        let prefix: Vec<usize> = delta_pos.iter().map(|&(_, p)| p).collect();
        let suffix_len = seqs
            .iter()
            .zip(&prefix)
            .map(|(s, p)| s.len() - p)
            .max()
            .expect("rows");
        let cache = model.prefix_cache(layer, h_in.clone(), &prefix, suffix_len);
        let h_suf = suffixes(&h_in, &prefix, suffix_len);
        let delta_pos: Vec<(usize, usize)> = (0..seqs.len()).map(|i| (i, 0)).collect();
        let init = model.forward_suffix(
            &cache,
            h_suf.clone(),
            &Interventions::none().capture(layer, Site::MlpOut),
        );
        let d = model.config.hidden_size;
        let target_init = host(
            init.captured[&(layer, Site::MlpOut)]
                .clone()
                .narrow(0, 0, 1)
                .narrow(1, 0, 1)
                .reshape([d]),
        );
        let kl_init = activation::log_softmax(model.logits_at(init.hidden, &[(kl_row, 0)]), 1);

        let ad = model.map(&ToAutodiff);
        let cache = cache.map(&ToAutodiff);
        let dev = model.device();
        let h_suf = Tensor::<Autodiff<B>, 3>::from_inner(h_suf);
        let kl_init = Tensor::<Autodiff<B>, 2>::from_inner(kl_init);
        let n = labels.len();
        let labels =
            Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(labels, [n, 1]), &dev);
        let init_norm = norm(&target_init);
        let max_norm = h.clamp_norm_factor as f32 * init_norm;

        // The label positions of every rewriting prompt, then the KL prompt's subject position.
        let logit_pos: Vec<(usize, usize)> = label_pos
            .iter()
            .map(|&(i, p)| (i, p - prefix[i]))
            .chain([(kl_row, 0)])
            .collect();
        let mut delta = vec![0f32; d];
        let (mut m, mut v) = (vec![0f32; d], vec![0f32; d]);
        let (b1, b2, eps, lr) = (0.9f32, 0.999f32, 1e-8f32, h.v_lr as f32);
        for step in 0..h.v_num_grad_steps {
            let dt = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(delta.clone(), [d]), &dev)
                .require_grad();
            let iv = Interventions::none().add(layer, Site::MlpOut, delta_pos.clone(), dt.clone());
            let fwd = ad.forward_suffix(&cache, h_suf.clone(), &iv);
            let logp = activation::log_softmax(ad.logits_at(fwd.hidden, &logit_pos), 1);
            // Every rewriting prompt has the same number of target tokens, so the mean over all
            // label positions is ROME's mean over prompts of the per-prompt mean NLL.
            let nll = logp
                .clone()
                .narrow(0, 0, n)
                .gather(1, labels.clone())
                .mean()
                .neg();
            let kl_cur = logp.narrow(0, n, 1);
            let kl = (kl_cur.clone().exp() * (kl_cur - kl_init.clone())).sum();
            let loss = nll + kl * h.kl_factor;
            // The weight decay `c·‖δ‖` is added on the host: autodiff's sqrt has no gradient at
            // δ = 0 (the first step), where PyTorch's norm uses the subgradient 0.
            let wd_coef = (h.v_weight_decay / (init_norm as f64).powi(2)) as f32;
            let dn = norm(&delta);
            let loss_v = host(loss.clone())[0] + wd_coef * dn;
            tracing::debug!(step, loss = loss_v, "rome v*");
            if loss_v < 5e-2 || step + 1 == h.v_num_grad_steps {
                break;
            }
            let mut g = host(dt.grad(&loss.backward()).context("no gradient for delta")?);
            if dn > 0.0 {
                g.iter_mut()
                    .zip(&delta)
                    .for_each(|(gi, di)| *gi += wd_coef * di / dn);
            }
            let t = (step + 1) as i32;
            for i in 0..d {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                delta[i] -= lr * mh / (vh.sqrt() + eps);
            }
            let dn = norm(&delta);
            if dn > max_norm {
                delta.iter_mut().for_each(|x| *x *= max_norm / dn);
            }
        }
        Ok(target_init.iter().zip(&delta).map(|(a, b)| a + b).collect())
    }
}

impl<B: Backend> Editor<B> for Rome {
    fn name(&self) -> &str {
        match self.variant {
            Variant::Original => "rome",
            Variant::RRome => "r-rome",
        }
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

    fn key(&mut self, lm: &LanguageModel<B>, request: &EditRequest) -> Result<Option<Vec<f32>>> {
        Ok(Some(Rome::key(self, lm, request)?))
    }
}
