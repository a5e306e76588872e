//! The target vector of a locate-then-edit method: offsets δ added at the subject's last token of
//! every rewriting prompt, at one layer, optimised (Adam) until the model says `target_new`.
//! ROME optimises the MLP output (its v*), MEMIT the residual stream (its z), PMET the attention
//! and MLP outputs together; the loss, clamping and early stop are otherwise one procedure
//! (methods.md §3.2–3.4).

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};
use kedit_editing::EditRequest;
use kedit_models::prefix::suffixes;
use kedit_models::{CausalLm, Interventions, LanguageModel, Site, ToAutodiff};

use crate::kv::{host, norm, subject_last, Prompt};

/// What to optimise and how (EasyEdit's `v_*` keys).
#[derive(Debug, Clone)]
pub struct ZSpec {
    pub layer: usize,
    /// One δ per site, all at `layer`.
    pub sites: Vec<Site>,
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    /// PMET's adaptive loss: the NLL weight, cut to a tenth once the target is the argmax at
    /// every target position; then the loop stops when `kl_factor · KL ≤ 0.01` (EasyEdit's
    /// `compute_zs`, the function PMET calls). `None`: ROME's and MEMIT's fixed weight 1.
    pub adaptive_nll: Option<f64>,
}

/// The initial activation at each site (row 0: the bare prompt) and the δ found for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Z {
    pub init: Vec<Vec<f32>>,
    pub delta: Vec<Vec<f32>>,
}

impl Z {
    /// `init + δ` at site `i`.
    pub fn target(&self, i: usize) -> Vec<f32> {
        self.init[i]
            .iter()
            .zip(&self.delta[i])
            .map(|(a, b)| a + b)
            .collect()
    }
}

/// Adam on the host: δ is one vector per site, small next to the forward pass.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn step(&mut self, x: &mut [f32], g: &[f32], t: i32, lr: f32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        for i in 0..x.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let mh = self.m[i] / (1.0 - b1.powi(t));
            let vh = self.v[i] / (1.0 - b2.powi(t));
            x[i] -= lr * mh / (vh.sqrt() + eps);
        }
    }
}

/// Optimise δ for `req` over `prompts` (every context template; the first is the bare prompt).
pub fn optimize<B: Backend>(
    lm: &LanguageModel<B>,
    req: &EditRequest,
    prompts: &[&Prompt],
    spec: &ZSpec,
) -> Result<Z> {
    let layer = spec.layer;
    let target = lm.encode(&format!(" {}", req.target_new.trim_start()))?;
    if target.is_empty() {
        bail!("target_new {:?} has no tokens", req.target_new);
    }
    // Rewriting prompts: template + prompt + target minus its last token; then the KL prompt.
    let mut seqs = Vec::new();
    let mut prefix = Vec::new();
    let mut label_pos = Vec::new();
    let mut labels = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for (j, &t) in target.iter().enumerate() {
            label_pos.push((i, p.ids.len() - 1 + j));
            labels.push(t as i64);
        }
        seqs.push([p.ids.clone(), target[..target.len() - 1].to_vec()].concat());
        prefix.push(p.subject_last);
    }
    let kl = subject_last(lm, "{} is a", &req.subject)?;
    let kl_row = seqs.len();
    seqs.push(kl.ids);
    prefix.push(kl.subject_last);

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
    // Nothing before a row's subject-last token changes while δ is optimised: keep those tokens'
    // keys and values and run only the suffixes (δ and logits at suffix positions).
    let suffix_len = seqs
        .iter()
        .zip(&prefix)
        .map(|(s, p)| s.len() - p)
        .max()
        .expect("rows");
    let cache = model.prefix_cache(layer, h_in.clone(), &prefix, suffix_len);
    let h_suf = suffixes(&h_in, &prefix, suffix_len);
    let delta_pos: Vec<(usize, usize)> = (0..seqs.len()).map(|i| (i, 0)).collect();
    let mut capture = Interventions::none();
    for &site in &spec.sites {
        capture = capture.capture(layer, site);
    }
    let init = model.forward_suffix(&cache, h_suf.clone(), &capture);
    let d = model.config.hidden_size;
    let inits: Vec<Vec<f32>> = spec
        .sites
        .iter()
        .map(|&site| {
            host(
                init.captured[&(layer, site)]
                    .clone()
                    .narrow(0, 0, 1)
                    .narrow(1, 0, 1)
                    .reshape([d]),
            )
        })
        .collect();
    let kl_init = activation::log_softmax(model.logits_at(init.hidden, &[(kl_row, 0)]), 1);

    let ad = model.map(&ToAutodiff);
    let cache = cache.map(&ToAutodiff);
    let dev = model.device();
    let h_suf = Tensor::<Autodiff<B>, 3>::from_inner(h_suf);
    let kl_init = Tensor::<Autodiff<B>, 2>::from_inner(kl_init);
    let n = labels.len();
    let labels_t =
        Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(labels.clone(), [n, 1]), &dev);
    let init_norms: Vec<f32> = inits.iter().map(|x| norm(x)).collect();

    // The label positions of every rewriting prompt, then the KL prompt's subject position.
    let logit_pos: Vec<(usize, usize)> = label_pos
        .iter()
        .map(|&(i, p)| (i, p - prefix[i]))
        .chain([(kl_row, 0)])
        .collect();
    let k = spec.sites.len();
    let mut deltas = vec![vec![0f32; d]; k];
    let mut adams: Vec<Adam> = (0..k)
        .map(|_| Adam {
            m: vec![0.0; d],
            v: vec![0.0; d],
        })
        .collect();
    let mut nll_factor = spec.adaptive_nll.unwrap_or(1.0);
    for step in 0..spec.steps {
        let dts: Vec<Tensor<Autodiff<B>, 1>> = deltas
            .iter()
            .map(|x| Tensor::from_data(TensorData::new(x.clone(), [d]), &dev).require_grad())
            .collect();
        let mut iv = Interventions::none();
        for (&site, dt) in spec.sites.iter().zip(&dts) {
            iv = iv.add(layer, site, delta_pos.clone(), dt.clone());
        }
        let fwd = ad.forward_suffix(&cache, h_suf.clone(), &iv);
        let logp = activation::log_softmax(ad.logits_at(fwd.hidden, &logit_pos), 1);
        // Every rewriting prompt has the same number of target tokens, so the mean over all label
        // positions is the mean over prompts of the per-prompt mean NLL.
        let target_logp = logp.clone().narrow(0, 0, n);
        let nll = target_logp.clone().gather(1, labels_t.clone()).mean().neg();
        let kl_cur = logp.narrow(0, n, 1);
        let kl = (kl_cur.clone().exp() * (kl_cur - kl_init.clone())).sum();
        let kl_v = host(kl.clone())[0] * spec.kl_factor as f32;
        let loss = nll.clone() * nll_factor + kl * spec.kl_factor;
        // The weight decay `c·‖δ‖/‖init‖²` is added on the host: autodiff's sqrt has no gradient
        // at δ = 0 (the first step), where PyTorch's norm uses the subgradient 0.
        let wd: Vec<f32> = init_norms
            .iter()
            .map(|n0| (spec.weight_decay / (*n0 as f64).powi(2)) as f32)
            .collect();
        let dn: Vec<f32> = deltas.iter().map(|x| norm(x)).collect();
        let loss_v = host(loss.clone())[0] + wd.iter().zip(&dn).map(|(c, n)| c * n).sum::<f32>();
        tracing::trace!(step, loss = loss_v, kl = kl_v, "z");
        if loss_v < 5e-2 {
            break;
        }
        if let Some(base) = spec.adaptive_nll {
            let argmax: Vec<i64> = target_logp
                .inner()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec()
                .expect("i64");
            if argmax == labels {
                nll_factor = 0.1 * base;
                if kl_v <= 0.01 {
                    break;
                }
            } else {
                nll_factor = base;
            }
        }
        if step + 1 == spec.steps {
            break;
        }
        let grads = loss.backward();
        for (i, dt) in dts.iter().enumerate() {
            let mut g = host(dt.grad(&grads).context("no gradient for delta")?);
            if dn[i] > 0.0 {
                g.iter_mut()
                    .zip(&deltas[i])
                    .for_each(|(gi, di)| *gi += wd[i] * di / dn[i]);
            }
            adams[i].step(&mut deltas[i], &g, (step + 1) as i32, spec.lr as f32);
            let max_norm = spec.clamp_norm_factor as f32 * init_norms[i];
            let dn = norm(&deltas[i]);
            if dn > max_norm {
                deltas[i].iter_mut().for_each(|x| *x *= max_norm / dn);
            }
        }
    }
    tracing::debug!(
        target = %req.target_new,
        delta_norm = ?deltas.iter().map(|x| norm(x)).collect::<Vec<_>>(),
        init_norm = ?init_norms,
        "z done"
    );
    Ok(Z {
        init: inits,
        delta: deltas,
    })
}
