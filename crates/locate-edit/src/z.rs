//! The target vector of a locate-then-edit method: offsets δ added at the key position of every
//! rewriting prompt (the subject's last token, or the prompt's last with `fact_token: last`), at
//! one layer, optimised (Adam) until the model says `target_new`.
//! ROME optimises the MLP output (its v*), MEMIT the residual stream (its z), PMET the attention
//! and MLP outputs together; the loss, clamping and early stop are otherwise one procedure
//! (methods.md §3.2–3.4).

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};
use kedit_editing::EditRequest;
use kedit_models::prefix::suffixes;
use kedit_models::{CausalLm, Interventions, LanguageModel, Site, ToAutodiff};

use crate::kv::{host, lookup, norm, FactToken, Prompt};

/// v* optimisation steps run in this process (each one forward and one backward pass), for
/// timing harnesses that relate an edit's time to the work it did.
pub static STEPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The last optimisation's suffix positions per step: (rows × the longest suffix, as run; the
/// suffixes' own tokens, without padding). The step's arithmetic grows with them, for timing
/// harnesses that relate a step's time to its work.
pub static SUFFIX_POSITIONS: std::sync::Mutex<(usize, usize)> = std::sync::Mutex::new((0, 0));

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
    /// Where δ is added in the KL prompt (`{subject} is a`), as in the rewriting prompts.
    pub fact_token: FactToken,
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

/// One request and its rewriting prompts (every context template; the first is the bare prompt).
pub struct Job<'a> {
    pub req: &'a EditRequest,
    pub prompts: Vec<&'a Prompt>,
}

/// Optimise δ for `req` over `prompts` (every context template; the first is the bare prompt).
pub fn optimize<B: Backend>(
    lm: &LanguageModel<B>,
    req: &EditRequest,
    prompts: &[&Prompt],
    spec: &ZSpec,
) -> Result<Z> {
    let job = Job {
        req,
        prompts: prompts.to_vec(),
    };
    Ok(optimize_many(lm, &[job], spec)?.remove(0))
}

/// [`optimize`] for several requests in one batch: every request keeps its own δ, Adam state,
/// loss weight and stopping step (its δ only moves its own rows, and the summed loss gives each δ
/// exactly its own gradient), so the results are those of one request at a time up to the order
/// of float sums; the forward and backward passes are shared.
pub fn optimize_many<B: Backend>(
    lm: &LanguageModel<B>,
    jobs: &[Job<'_>],
    spec: &ZSpec,
) -> Result<Vec<Z>> {
    let own: Vec<usize> = (0..jobs.len()).collect();
    optimize_shared(lm, jobs, &own, spec)
}

/// [`optimize_many`] with one δ shared by several requests (MEMIT-Merge: the requests of one
/// subject, whose keys nearly coincide, get one offset that makes the model say every one of
/// their targets). `shared[r]` numbers request `r`'s δ, `0..`; a shared δ minimises the mean of
/// its requests' losses and stops when that mean does, or after `steps` per request sharing it:
/// one offset must carry k facts, and with SmolLM2's 25 steps a subject's 5 facts were still at
/// a mean loss of 1.7 (0.08 after 70 steps; benchmarks/README.md), while each request keeps the
/// step budget it has alone. Each request's target is its own initial activation plus its δ.
/// With every number distinct this is exactly [`optimize_many`].
pub fn optimize_shared<B: Backend>(
    lm: &LanguageModel<B>,
    jobs: &[Job<'_>],
    shared: &[usize],
    spec: &ZSpec,
) -> Result<Vec<Z>> {
    let layer = spec.layer;
    let r_n = jobs.len();
    if shared.len() != r_n {
        bail!("{} requests but {} δ numbers", r_n, shared.len());
    }
    // g_n δs; size[g]: how many requests share δ g.
    let g_n = shared.iter().max().map_or(0, |m| m + 1);
    let mut size = vec![0usize; g_n];
    for &g in shared {
        size[g] += 1;
    }
    if size.contains(&0) {
        bail!("δ numbers {shared:?} skip one");
    }
    // Rows: each request's rewriting prompts (template + prompt + target minus its last token),
    // then its KL prompt.
    let mut seqs = Vec::new();
    let mut prefix = Vec::new();
    let mut row_owner = Vec::new();
    let mut first_row = Vec::with_capacity(r_n);
    let mut kl_rows = Vec::with_capacity(r_n);
    let mut label_pos = Vec::new();
    let mut labels = Vec::new();
    let mut label_owner = Vec::new();
    let mut counts = vec![0usize; r_n];
    for (r, job) in jobs.iter().enumerate() {
        let target = lm.encode(&format!(" {}", job.req.target_new.trim_start()))?;
        if target.is_empty() {
            bail!("target_new {:?} has no tokens", job.req.target_new);
        }
        first_row.push(seqs.len());
        for p in &job.prompts {
            for (j, &t) in target.iter().enumerate() {
                label_pos.push((seqs.len(), p.ids.len() - 1 + j));
                labels.push(t as i64);
                label_owner.push(r);
            }
            counts[r] += target.len();
            seqs.push([p.ids.clone(), target[..target.len() - 1].to_vec()].concat());
            prefix.push(p.lookup);
            row_owner.push(shared[r] as i64);
        }
        let kl = lookup(lm, "{} is a", &job.req.subject, spec.fact_token)?;
        kl_rows.push(seqs.len());
        seqs.push(kl.ids);
        prefix.push(kl.lookup);
        row_owner.push(shared[r] as i64);
    }

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
    // Nothing before a row's key position changes while δ is optimised: keep those tokens'
    // keys and values and run only the suffixes (δ and logits at suffix positions).
    let suffix_len = seqs
        .iter()
        .zip(&prefix)
        .map(|(s, p)| s.len() - p)
        .max()
        .expect("rows");
    if let Ok(mut p) = SUFFIX_POSITIONS.lock() {
        let tokens = seqs.iter().zip(&prefix).map(|(s, p)| s.len() - p).sum();
        *p = (seqs.len() * suffix_len, tokens);
    }
    let cache = model.prefix_cache(layer, h_in.clone(), &prefix, suffix_len);
    let h_suf = suffixes(&h_in, &prefix, suffix_len);
    let delta_pos: Vec<(usize, usize)> = (0..seqs.len()).map(|i| (i, 0)).collect();
    let mut capture = Interventions::none();
    for &site in &spec.sites {
        capture = capture.capture(layer, site);
    }
    let init = model.forward_suffix(&cache, h_suf.clone(), &capture);
    let d = model.config.hidden_size;
    // inits[site][request]: the activation at the bare prompt's key position.
    let inits: Vec<Vec<Vec<f32>>> = spec
        .sites
        .iter()
        .map(|&site| {
            let a = host(
                init.captured[&(layer, site)]
                    .clone()
                    .narrow(1, 0, 1)
                    .reshape([seqs.len() * d]),
            );
            first_row
                .iter()
                .map(|&row| a[row * d..(row + 1) * d].to_vec())
                .collect()
        })
        .collect();
    let kl_pos: Vec<(usize, usize)> = kl_rows.iter().map(|&r| (r, 0)).collect();
    let kl_init = activation::log_softmax(model.logits_at(init.hidden, &kl_pos), 1);

    // The weights are constants across the steps: where products are split for 3xTF32 (CUDA),
    // split them once here rather than at every product of every step.
    let ad = model.presplit_if_split(layer).map(&ToAutodiff);
    let cache = cache.map(&ToAutodiff);
    let dev = model.device();
    let h_suf = Tensor::<Autodiff<B>, 3>::from_inner(h_suf);
    let kl_init = Tensor::<Autodiff<B>, 2>::from_inner(kl_init);
    let n = labels.len();
    let labels_t =
        Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(labels.clone(), [n, 1]), &dev);
    let owner_t =
        Tensor::<Autodiff<B>, 1, Int>::from_data(TensorData::new(row_owner, [seqs.len()]), &dev);
    // init_norms[site][δ]: the mean over the requests sharing it (one request: its own).
    let init_norms: Vec<Vec<f32>> = inits
        .iter()
        .map(|per| {
            let mut sum = vec![0f32; g_n];
            for (r, x) in per.iter().enumerate() {
                sum[shared[r]] += norm(x);
            }
            sum.iter().zip(&size).map(|(s, &c)| s / c as f32).collect()
        })
        .collect();
    let wd: Vec<Vec<f32>> = init_norms
        .iter()
        .map(|per| {
            per.iter()
                .map(|n0| (spec.weight_decay / (*n0 as f64).powi(2)) as f32)
                .collect()
        })
        .collect();

    // The label positions of every rewriting prompt, then each request's KL position.
    let logit_pos: Vec<(usize, usize)> = label_pos
        .iter()
        .map(|&(i, p)| (i, p - prefix[i]))
        .chain(kl_pos.iter().map(|&(i, _)| (i, 0)))
        .collect();
    let k = spec.sites.len();
    // deltas[site][δ]
    let mut deltas = vec![vec![vec![0f32; d]; g_n]; k];
    let mut adams: Vec<Vec<Adam>> = (0..k)
        .map(|_| {
            (0..g_n)
                .map(|_| Adam {
                    m: vec![0.0; d],
                    v: vec![0.0; d],
                })
                .collect()
        })
        .collect();
    let base = spec.adaptive_nll.unwrap_or(1.0);
    let mut nll_factor = vec![base; g_n];
    let mut active = vec![true; g_n];
    let budget: Vec<usize> = size.iter().map(|&c| spec.steps * c).collect();
    for step in 0..budget.iter().copied().max().unwrap_or(0) {
        STEPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dts: Vec<Tensor<Autodiff<B>, 2>> = deltas
            .iter()
            .map(|per| {
                Tensor::from_data(TensorData::new(per.concat(), [g_n, d]), &dev).require_grad()
            })
            .collect();
        let mut iv = Interventions::none();
        for (&site, dt) in spec.sites.iter().zip(&dts) {
            let rows = dt.clone().select(0, owner_t.clone());
            iv = iv.add_rows(layer, site, delta_pos.clone(), rows);
        }
        let fwd = ad.forward_suffix(&cache, h_suf.clone(), &iv);
        let logp = activation::log_softmax(ad.logits_at(fwd.hidden, &logit_pos), 1);
        let target_logp = logp.clone().narrow(0, 0, n);
        let gathered = target_logp.clone().gather(1, labels_t.clone()).reshape([n]);
        // Each request's NLL is the mean over its label positions (every rewriting prompt has
        // the same number of target tokens: the mean over prompts of the per-prompt mean), times
        // its δ's current NLL weight, over the number of requests sharing the δ; finished δs
        // weigh 0.
        let w: Vec<f32> = label_owner
            .iter()
            .map(|&r| {
                let g = shared[r];
                if active[g] {
                    nll_factor[g] as f32 / (counts[r] * size[g]) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let w_t = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(w, [n]), &dev);
        let nll_total = (gathered.clone() * w_t).sum().neg();
        let kl_cur = logp.narrow(0, n, r_n);
        let kl_each = (kl_cur.clone().exp() * (kl_cur - kl_init.clone()))
            .sum_dim(1)
            .reshape([r_n]);
        let kw: Vec<f32> = shared
            .iter()
            .map(|&g| {
                if active[g] {
                    spec.kl_factor as f32 / size[g] as f32
                } else {
                    0.0
                }
            })
            .collect();
        let kw_t = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(kw, [r_n]), &dev);
        let loss = nll_total + (kl_each.clone() * kw_t).sum();

        let lp = host(gathered);
        // Per δ: the mean over its requests of their weighted KL and of their NLL.
        let mut kl_v = vec![0f32; g_n];
        for (r, x) in host(kl_each).iter().enumerate() {
            kl_v[shared[r]] += x * spec.kl_factor as f32 / size[shared[r]] as f32;
        }
        let mut nll = vec![0f32; g_n];
        for (l, &r) in label_owner.iter().enumerate() {
            nll[shared[r]] -= lp[l] / (counts[r] * size[shared[r]]) as f32;
        }
        let correct: Option<Vec<bool>> = spec.adaptive_nll.map(|_| {
            let argmax: Vec<i64> = target_logp
                .inner()
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec()
                .expect("i64");
            let mut ok = vec![true; g_n];
            for (l, &r) in label_owner.iter().enumerate() {
                ok[shared[r]] &= argmax[l] == labels[l];
            }
            ok
        });
        // The weight decay `c·‖δ‖/‖init‖²` is added on the host: autodiff's sqrt has no gradient
        // at δ = 0 (the first step), where PyTorch's norm uses the subgradient 0.
        let dn: Vec<Vec<f32>> = deltas
            .iter()
            .map(|per| per.iter().map(|x| norm(x)).collect())
            .collect();
        let mut update = vec![false; g_n];
        for r in 0..g_n {
            if !active[r] {
                continue;
            }
            let decay: f32 = (0..k).map(|s| wd[s][r] * dn[s][r]).sum();
            let loss_r = nll[r] * nll_factor[r] as f32 + kl_v[r] + decay;
            tracing::trace!(step, delta = r, loss = loss_r, kl = kl_v[r], "z");
            let mut stop = loss_r < 5e-2;
            if let (Some(ok), false) = (&correct, stop) {
                if ok[r] {
                    nll_factor[r] = 0.1 * base;
                    stop = kl_v[r] <= 0.01;
                } else {
                    nll_factor[r] = base;
                }
            }
            if stop || step + 1 == budget[r] {
                active[r] = false;
            } else {
                update[r] = true;
            }
        }
        if !update.contains(&true) {
            break;
        }
        let grads = loss.backward();
        for (s, dt) in dts.iter().enumerate() {
            let g = host(
                dt.grad(&grads)
                    .context("no gradient for delta")?
                    .reshape([g_n * d]),
            );
            for r in (0..g_n).filter(|&r| update[r]) {
                let mut g_r = g[r * d..(r + 1) * d].to_vec();
                if dn[s][r] > 0.0 {
                    g_r.iter_mut()
                        .zip(&deltas[s][r])
                        .for_each(|(gi, di)| *gi += wd[s][r] * di / dn[s][r]);
                }
                adams[s][r].step(&mut deltas[s][r], &g_r, (step + 1) as i32, spec.lr as f32);
                let max_norm = spec.clamp_norm_factor as f32 * init_norms[s][r];
                let n_r = norm(&deltas[s][r]);
                if n_r > max_norm {
                    deltas[s][r].iter_mut().for_each(|x| *x *= max_norm / n_r);
                }
            }
        }
    }
    Ok((0..r_n)
        .map(|r| {
            let g = shared[r];
            let z = Z {
                init: (0..k).map(|s| inits[s][r].clone()).collect(),
                delta: (0..k).map(|s| deltas[s][g].clone()).collect(),
            };
            tracing::debug!(
                target = %jobs[r].req.target_new,
                delta_norm = ?z.delta.iter().map(|x| norm(x)).collect::<Vec<_>>(),
                init_norm = ?(0..k).map(|s| init_norms[s][g]).collect::<Vec<_>>(),
                "z done"
            );
            z
        })
        .collect())
}
