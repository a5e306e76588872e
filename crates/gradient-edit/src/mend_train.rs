//! MEND's meta-training (methods.md §3.7, EasyEdit's trainer): for each training fact, the edit's
//! gradient factors on the unedited model go through the hypernetwork, the resulting update is
//! applied, and the hypernetwork (and α) learn from `cedit · NLL(target_new | edit and paraphrase
//! prompts) + cloc · KL(pre ‖ post | a locality prompt)` on the edited model.
//!
//! The unedited model never changes during training, so everything below the lowest edited layer
//! is computed on the plain backend and only the edited layers run under autodiff. The order of
//! training facts is a function of `(seed, step)` and all state (hypernetwork, Adam moments,
//! statistics, best-so-far) is checkpointed exactly, so a resumed run ends with the same archive
//! bytes as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{activation, backend::Backend, ElementConversion, Tensor, TensorData};
use kedit_editing::EditCase;
use kedit_models::{CausalLm, Interventions, LanguageModel, ToAutodiff};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::adam::Adam;
use crate::batch::{encode_pair, residual_in, TokenBatch};
use crate::ft::Objective;
use crate::mend::{
    factors_from, write_tensors, Archive, Bytes, Hypernet, Mend, MendHparams, TensorFile,
};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Where the archive goes; the checkpoint is `<out>` with extension `ckpt`.
    pub out: PathBuf,
    /// Optimiser steps (default: the hparams' `max_iters`).
    pub steps: Option<usize>,
    /// Stop after this many steps of this run as if killed (no archive written): how the resume
    /// tests interrupt a run at a known point.
    pub halt_after: Option<usize>,
}

/// Edit success on held-out training-split facts, after one MEND edit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ValMetrics {
    pub es: f64,
    pub ps: f64,
    pub ns: f64,
}

impl ValMetrics {
    /// The harmonic mean of ES, PS and NS (the benchmark's S).
    pub fn score(&self) -> f64 {
        let v = [self.es, self.ps, self.ns];
        if v.iter().any(|&x| x <= 0.0) {
            return 0.0;
        }
        3.0 / v.iter().map(|x| 1.0 / x).sum::<f64>()
    }

    fn key(&self, key: &str) -> f64 {
        match key {
            "edit/acc_val" => self.es,
            _ => self.score(),
        }
    }
}

/// One validation during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValPoint {
    pub step: usize,
    /// Mean training loss over the steps since the previous validation.
    pub loss: f64,
    pub es: f64,
    pub ps: f64,
    pub ns: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub best_step: usize,
    /// Validation with the untrained (identity) hypernetwork: one scaled gradient step.
    pub untrained: ValMetrics,
    pub best: ValMetrics,
    pub train_facts: usize,
    pub val_facts: usize,
    /// Seconds of training over all runs (resumes included).
    pub seconds: f64,
    pub resumed_from: Option<usize>,
    /// False when `halt_after` stopped the run.
    pub finished: bool,
    /// Every validation of the run (resumed runs included), in step order: the curve the best
    /// step was chosen from.
    pub history: Vec<ValPoint>,
}

/// One training fact as token rows.
struct Example {
    /// The edit (prompt, ` target_new`): the gradient the hypernetwork transforms.
    inner: TokenBatch,
    /// Rows `[edit, paraphrase?, locality]`: labels on the first rows (target_new), the
    /// locality row last.
    outer: TokenBatch,
    /// `(row, position)` of the locality row's answer positions (KL positions).
    loc: Vec<(usize, usize)>,
}

/// One validation fact: the edit and the six scored rows.
struct ValExample {
    inner: TokenBatch,
    /// `[prompt+new, prompt+true, para+new, para+true, loc+true, loc+new]` (para rows only
    /// when the case has a paraphrase).
    rows: TokenBatch,
    has_para: bool,
}

/// The locality prompt of case `i` and its answer: its first neighbourhood prompt (another
/// subject, the same relation and true object: what NS scores; or, in EasyEdit's data, an
/// unrelated question with its own answer), else the next case's prompt.
fn locality(cases: &[EditCase], i: usize) -> (String, String) {
    let c = &cases[i];
    match c.neighborhood_prompts.first() {
        Some(p) => (p.clone(), c.neighborhood_target(0).to_owned()),
        None => {
            let o = &cases[(i + 1) % cases.len()].request;
            (o.full_prompt(), o.target_true.clone())
        }
    }
}

fn example<B: Backend>(lm: &LanguageModel<B>, cases: &[EditCase], i: usize) -> Result<Example> {
    let c = &cases[i];
    let r = &c.request;
    let edit = encode_pair(lm, &r.full_prompt(), &r.target_new)?;
    let mut outer_pairs = vec![edit.clone()];
    if let Some(p) = c.paraphrase_prompts.first() {
        outer_pairs.push(encode_pair(lm, p, &r.target_new)?);
    }
    let mut outer = TokenBatch::of(&outer_pairs, Objective::TargetNew);
    let (lp, lt) = locality(cases, i);
    let (p, t) = encode_pair(lm, &lp, &lt)?;
    // KL where the locality prompt's answer is predicted (what NS scores), not on the words of
    // the prompt, whose distributions an edit barely moves and would dilute the term.
    let loc = (p.len() - 1..p.len() + t.len() - 1)
        .map(|k| (outer.seqs.len(), k))
        .collect();
    outer.seqs.push([p, t[..t.len() - 1].to_vec()].concat());
    Ok(Example {
        inner: TokenBatch::of(&[edit], Objective::TargetNew),
        outer,
        loc,
    })
}

fn val_example<B: Backend>(
    lm: &LanguageModel<B>,
    cases: &[EditCase],
    i: usize,
) -> Result<ValExample> {
    let c = &cases[i];
    let r = &c.request;
    let prompt = r.full_prompt();
    let mut pairs = vec![
        encode_pair(lm, &prompt, &r.target_new)?,
        encode_pair(lm, &prompt, &r.target_true)?,
    ];
    let para = c.paraphrase_prompts.first();
    if let Some(p) = para {
        pairs.push(encode_pair(lm, p, &r.target_new)?);
        pairs.push(encode_pair(lm, p, &r.target_true)?);
    }
    let (lp, lt) = locality(cases, i);
    pairs.push(encode_pair(lm, &lp, &lt)?);
    pairs.push(encode_pair(lm, &lp, &r.target_new)?);
    Ok(ValExample {
        inner: TokenBatch::of(&pairs[..1], Objective::TargetNew),
        rows: TokenBatch::of(&pairs, Objective::TargetNew),
        has_para: para.is_some(),
    })
}

/// Training and validation facts: subjects in file order, every tenth held out for validation
/// (at most `val_steps` facts), so the two share no subject.
pub fn split(cases: &[EditCase], val_steps: usize) -> (Vec<EditCase>, Vec<EditCase>) {
    let mut subjects: Vec<&str> = Vec::new();
    for c in cases {
        if !subjects.contains(&c.subject_id.as_str()) {
            subjects.push(&c.subject_id);
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for c in cases {
        let k = subjects
            .iter()
            .position(|s| *s == c.subject_id)
            .expect("listed");
        if k % 10 == 9 && val.len() < val_steps {
            val.push(c.clone());
        } else {
            train.push(c.clone());
        }
    }
    (train, val)
}

/// The training fact used at flat position `f` of the stream: epoch `f / n` is a permutation of
/// the facts drawn from `(seed, epoch)`.
struct Order {
    seed: u64,
    n: usize,
    epoch: usize,
    perm: Vec<usize>,
}

impl Order {
    fn at(&mut self, f: usize) -> usize {
        let e = f / self.n;
        if self.perm.is_empty() || e != self.epoch {
            self.epoch = e;
            self.perm = (0..self.n).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.seed ^ (e as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.perm.shuffle(&mut rng);
        }
        self.perm[f % self.n]
    }
}

/// Everything a checkpoint restores.
struct State<B: Backend> {
    step: usize,
    current: Archive<B>,
    best: Archive<B>,
    best_step: usize,
    best_key: f64,
    best_val: ValMetrics,
    untrained: ValMetrics,
    adam: Adam<B>,
    seconds: f64,
    history: Vec<ValPoint>,
}

/// The rows of several edits stacked into one batch, with each edit's own low-rank update on
/// its rows (`Action::LowRank`): a batch of independent edits in one forward pass. Statistics
/// are updated edit by edit first when `update_norm` (training).
///
/// `h_in` is the residual stream entering the lowest edited layer for the stacked `rows`; each
/// edit's first row holds its `inner` tokens (prompt and target), so the gradient factors reuse
/// it rather than run the stack below again.
#[allow(clippy::too_many_arguments)]
fn stacked_edits<B: Backend, BB: Backend>(
    lm_model: &kedit_models::Transformer<B>,
    h_in: &Tensor<B, 3>,
    archive: &mut Archive<impl Backend>,
    net: &Hypernet<BB>,
    inner: &[&TokenBatch],
    rows: &[&TokenBatch],
    update_norm: bool,
    device: &BB::Device,
) -> Interventions<BB> {
    let [d_in, d_out] = archive.shape;
    let mut first = Vec::new();
    let mut row0 = 0;
    for r in rows {
        first.push(row0 as i64);
        row0 += r.seqs.len();
    }
    let first = Tensor::<B, 1, burn::tensor::Int>::from_data(
        TensorData::new(first, [inner.len()]),
        &lm_model.device(),
    );
    let f = factors_from(
        lm_model,
        h_in.clone().select(0, first),
        &TokenBatch::stack(inner.iter().copied(), 1.0),
        &archive.layers,
    );
    let width = rows
        .iter()
        .flat_map(|r| r.seqs.iter().map(Vec::len))
        .max()
        .unwrap_or(0);
    let mut iv = Interventions::none();
    let mut row0 = 0;
    for (f, r) in f.split(inner.len(), d_in, d_out).iter().zip(rows) {
        if update_norm {
            // MEND updates its statistics with each edit before standardising it.
            archive.norm.update(f, d_in, d_out);
        }
        let n = r.seqs.len();
        let positions: Vec<(usize, usize)> = (row0..row0 + n)
            .flat_map(|i| (0..width).map(move |p| (i, p)))
            .collect();
        let ups = net.low_rank(&archive.norm, f, archive.shape, device);
        for (&l, ab) in archive.layers.iter().zip(ups) {
            if let Some((a, b)) = ab {
                iv = iv.low_rank(l, positions.clone(), a, b);
            }
        }
        row0 += n;
    }
    iv
}

/// Validation: each fact edited alone (its own update on its rows, 16 facts per forward pass),
/// then ES, PS and NS from the edited model's probabilities.
fn validate<B: Backend>(
    lm: &LanguageModel<B>,
    archive: &Archive<B>,
    val: &[ValExample],
) -> ValMetrics {
    let start = *archive.layers.iter().min().expect("layers");
    let dev = lm.model.device();
    let (mut es, mut ps, mut ns, mut n_ps) = (0.0, 0.0, 0.0, 0.0);
    let mut a = archive.clone();
    for chunk in val.chunks(16) {
        let inner: Vec<&TokenBatch> = chunk.iter().map(|v| &v.inner).collect();
        let rows: Vec<&TokenBatch> = chunk.iter().map(|v| &v.rows).collect();
        let net = archive.net.clone();
        let all = TokenBatch::stack(rows.iter().copied(), 1.0);
        let h_in = residual_in(&lm.model, &all.seqs, start);
        let iv = stacked_edits(&lm.model, &h_in, &mut a, &net, &inner, &rows, false, &dev);
        let fwd = lm.model.forward_from(start, h_in, &iv);
        let nll = all.row_nll(&lm.model, fwd.hidden);
        let win = |a: f64, b: f64| if a < b { 1.0 } else { 0.0 };
        let mut off = 0;
        for v in chunk {
            let k = v.rows.seqs.len();
            let r = &nll[off..off + k];
            es += win(r[0], r[1]);
            if v.has_para {
                ps += win(r[2], r[3]);
                n_ps += 1.0;
            }
            ns += win(r[k - 2], r[k - 1]);
            off += k;
        }
    }
    let n = val.len().max(1) as f64;
    ValMetrics {
        es: es / n,
        ps: if n_ps > 0.0 { ps / n_ps } else { es / n },
        ns: ns / n,
    }
}

/// One optimiser step over `batch` training facts, all in one forward and backward pass;
/// returns the loss.
fn step<B: Backend>(
    lm: &LanguageModel<B>,
    base_ad: &kedit_models::Transformer<Autodiff<B>>,
    state: &mut State<B>,
    batch: &[&Example],
) -> f64 {
    let h = state.current.hparams.clone();
    let start = *state.current.layers.iter().min().expect("layers");
    let dev = lm.model.device();
    let params: Vec<Tensor<Autodiff<B>, 2>> = state
        .current
        .net
        .params
        .iter()
        .map(|p| Tensor::from_inner(p.clone()).require_grad())
        .collect();
    let net = Hypernet {
        params: params.clone(),
    };
    let n = batch.len();
    let inner: Vec<&TokenBatch> = batch.iter().map(|e| &e.inner).collect();
    let rows: Vec<&TokenBatch> = batch.iter().map(|e| &e.outer).collect();
    // Each fact's loss is a mean over its labels (and its KL a mean over its locality tokens);
    // the step's loss is the mean over facts.
    let outer = TokenBatch::stack(rows.iter().copied(), 1.0 / n as f32);
    let (mut loc, mut loc_w, mut row0) = (Vec::new(), Vec::new(), 0);
    for e in batch {
        for &(r, p) in &e.loc {
            loc.push((r + row0, p));
            loc_w.push(1.0 / (e.loc.len() * n) as f32);
        }
        row0 += e.outer.seqs.len();
    }
    let h_in = residual_in(&lm.model, &outer.seqs, start);
    let iv = stacked_edits(
        &lm.model,
        &h_in,
        &mut state.current,
        &net,
        &inner,
        &rows,
        true,
        &dev,
    );
    let pre = lm
        .model
        .forward_from(start, h_in.clone(), &Interventions::none());
    let pre = activation::log_softmax(lm.model.logits_at(pre.hidden, &loc), 1);
    let fwd = base_ad.forward_from(start, Tensor::from_inner(h_in), &iv);
    let post = activation::log_softmax(base_ad.logits_at(fwd.hidden.clone(), &loc), 1);
    let pre = Tensor::<Autodiff<B>, 2>::from_inner(pre);
    let w = Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(loc_w, [loc.len(), 1]), &dev);
    let kl = ((pre.clone().exp() * (pre - post)).sum_dim(1) * w).sum();
    let total = outer.nll(base_ad, fwd.hidden) * h.cedit + kl * h.cloc;
    let lv: f64 = total.clone().into_scalar().elem();
    let grads = total.backward();
    let a = &mut state.current;
    let gs: Vec<Tensor<B, 2>> = params
        .iter()
        .zip(&a.net.params)
        .map(|(p, w)| p.grad(&grads).unwrap_or_else(|| w.zeros_like()))
        .collect();
    let norm: f64 = gs
        .iter()
        .map(|g| -> f64 { g.clone().square().sum().into_scalar().elem() })
        .sum::<f64>()
        .sqrt();
    let clip = if norm > h.grad_clip {
        h.grad_clip / norm
    } else {
        1.0
    };
    state.adam.tick();
    let last = gs.len() - 1;
    for (i, g) in gs.into_iter().enumerate() {
        let lr = if i == last { h.lr_lr } else { h.lr };
        let g = if clip < 1.0 { g * clip } else { g };
        a.net.params[i] = state.adam.update(i, a.net.params[i].clone(), g, lr, 0.0);
    }
    lv
}

fn checkpoint_path(out: &Path) -> PathBuf {
    out.with_extension("ckpt")
}

/// What must match for a checkpoint to be resumed: hyperparameters, data and model.
fn identity(hparams: &MendHparams, data_sha: &str, model_hash: &str) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_string(hparams)?.as_bytes());
    h.update(data_sha.as_bytes());
    h.update(model_hash.as_bytes());
    Ok(format!("{:x}", h.finalize()))
}

fn save_checkpoint<B: Backend>(path: &Path, s: &State<B>, id: &str) -> Result<()> {
    let mut tensors = Vec::new();
    for (prefix, a) in [("cur.", &s.current), ("best.", &s.best)] {
        for (n, shape, b) in a.tensors() {
            tensors.push((format!("{prefix}{n}"), shape, b));
        }
    }
    for (i, (m, v)) in s.adam.m.iter().zip(&s.adam.v).enumerate() {
        for (k, t) in [("m", m), ("v", v)] {
            tensors.push((
                format!("adam.{k}.{i}"),
                t.dims().to_vec(),
                Bytes::F32(
                    t.clone()
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .expect("f32"),
                ),
            ));
        }
    }
    let mut meta = s.current.meta()?;
    meta.insert("checkpoint".into(), id.into());
    meta.insert("step".into(), s.step.to_string());
    meta.insert("adam_t".into(), s.adam.t.to_string());
    meta.insert("best_step".into(), s.best_step.to_string());
    meta.insert("best_key".into(), serde_json::to_string(&s.best_key)?);
    meta.insert("best_val".into(), serde_json::to_string(&s.best_val)?);
    meta.insert("untrained".into(), serde_json::to_string(&s.untrained)?);
    meta.insert("seconds".into(), serde_json::to_string(&s.seconds)?);
    meta.insert("history".into(), serde_json::to_string(&s.history)?);
    write_tensors(path, &tensors, &meta)
}

fn load_checkpoint<B: Backend>(path: &Path, id: &str, device: &B::Device) -> Result<State<B>> {
    let file = TensorFile::read(path)?;
    let get = |k: &str| {
        file.meta
            .get(k)
            .with_context(|| format!("{}: checkpoint metadata has no `{k}`", path.display()))
    };
    if get("checkpoint")? != id {
        bail!(
            "{}: checkpoint of another training run (other hparams, data or model); delete it or choose another --out",
            path.display()
        );
    }
    // The metadata is the checkpoint's; the archives in training carry none of their own.
    let mut current = Archive::from_file(&file, "cur.", path, device)?;
    let mut best = Archive::from_file(&file, "best.", path, device)?;
    current.info.clear();
    best.info.clear();
    let n = current.net.params.len();
    let adam_t: i32 = get("adam_t")?.parse()?;
    let mut adam = Adam::new(&current.net.params);
    adam.t = adam_t;
    for i in 0..n {
        adam.m[i] = file.f32::<B>(&format!("adam.m.{i}"), path, device)?;
        adam.v[i] = file.f32::<B>(&format!("adam.v.{i}"), path, device)?;
    }
    Ok(State {
        step: get("step")?.parse()?,
        best_step: get("best_step")?.parse()?,
        best_key: serde_json::from_str(get("best_key")?)?,
        best_val: serde_json::from_str(get("best_val")?)?,
        untrained: serde_json::from_str(get("untrained")?)?,
        seconds: serde_json::from_str(get("seconds")?)?,
        history: serde_json::from_str(get("history")?)?,
        current,
        best,
        adam,
    })
}

/// Meta-train MEND for `lm` on the S2RKE-format file `data` (split by subject into training and
/// validation facts), validating and checkpointing every `val_interval` steps, stopping early
/// after `early_stop_patience` steps without improvement; the best archive (by validation) is
/// written to `opt.out`. Resumes from `opt.out`'s checkpoint when one exists.
pub fn train<B: Backend>(
    lm: &LanguageModel<B>,
    data: &Path,
    hparams: MendHparams,
    opt: &TrainOptions,
) -> Result<TrainSummary> {
    let bytes = std::fs::read(data).with_context(|| format!("{}: cannot read", data.display()))?;
    let data_sha = format!("{:x}", Sha256::digest(&bytes));
    let cases = kedit_editing::requests::load_cases(data)?;
    let (train_cases, val_cases) = split(&cases, hparams.val_steps);
    if train_cases.is_empty() || val_cases.is_empty() {
        bail!(
            "{}: {} training and {} validation facts; MEND needs both (at least 10 subjects)",
            data.display(),
            train_cases.len(),
            val_cases.len()
        );
    }
    let train_ex = (0..train_cases.len())
        .map(|i| example(lm, &train_cases, i))
        .collect::<Result<Vec<_>>>()?;
    let val_ex = (0..val_cases.len())
        .map(|i| val_example(lm, &val_cases, i))
        .collect::<Result<Vec<_>>>()?;
    let fresh = Archive::init(lm, hparams.clone())?;
    let id = identity(&hparams, &data_sha, &fresh.model_hash)?;
    let ckpt = checkpoint_path(&opt.out);
    let dev = lm.model.device();
    let mut resumed_from = None;
    let mut state = if ckpt.exists() {
        let s = load_checkpoint::<B>(&ckpt, &id, &dev)?;
        tracing::info!(
            step = s.step,
            "resuming MEND training from {}",
            ckpt.display()
        );
        resumed_from = Some(s.step);
        s
    } else {
        let untrained = validate(lm, &fresh, &val_ex);
        tracing::info!(?untrained, "validation before training");
        State {
            step: 0,
            adam: Adam::new(&fresh.net.params),
            best: fresh.clone(),
            current: fresh,
            // As in EasyEdit's trainer, only trained states (validated every `val_interval`
            // steps) compete; the keys lie in [0, 1].
            best_step: 0,
            best_key: -1.0,
            best_val: untrained,
            untrained,
            seconds: 0.0,
            history: Vec::new(),
        }
    };
    let steps = opt.steps.unwrap_or(hparams.max_iters);
    let acc = hparams.accumulate_bs;
    let mut order = Order {
        seed: hparams.seed,
        n: train_ex.len(),
        epoch: 0,
        perm: Vec::new(),
    };
    let base_ad = lm.model.map(&ToAutodiff);
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "mend train {bar:40} {pos}/{len} steps eta {eta} {msg}",
        )
        .expect("template"),
    );
    bar.set_position(state.step as u64);
    let mut clock = Instant::now();
    let mut run_steps = 0;
    let mut finished = true;
    let mut loss_sum = 0.0;
    while state.step < steps {
        if opt.halt_after == Some(run_steps) {
            finished = false;
            break;
        }
        let batch: Vec<&Example> = (0..acc)
            .map(|j| &train_ex[order.at(state.step * acc + j)])
            .collect();
        loss_sum += step(lm, &base_ad, &mut state, &batch);
        state.step += 1;
        run_steps += 1;
        bar.inc(1);
        if state.step % hparams.val_interval == 0 || state.step == steps {
            let v = validate(lm, &state.current, &val_ex);
            let key = v.key(&hparams.early_stop_key);
            let done = (state.step - 1) % hparams.val_interval + 1;
            let mean_loss = loss_sum / done.min(run_steps) as f64;
            loss_sum = 0.0;
            tracing::info!(
                step = state.step,
                loss = format!("{mean_loss:.4}"),
                es = format!("{:.3}", v.es),
                ps = format!("{:.3}", v.ps),
                ns = format!("{:.3}", v.ns),
                "mend validation"
            );
            state.history.push(ValPoint {
                step: state.step,
                loss: mean_loss,
                es: v.es,
                ps: v.ps,
                ns: v.ns,
            });
            bar.set_message(format!(
                "loss {mean_loss:.3} val ES {:.2} PS {:.2} NS {:.2}",
                v.es, v.ps, v.ns
            ));
            if key > state.best_key {
                state.best_key = key;
                state.best_val = v;
                state.best_step = state.step;
                state.best = state.current.clone();
            }
            state.seconds += clock.elapsed().as_secs_f64();
            clock = Instant::now();
            save_checkpoint(&ckpt, &state, &id)?;
            if state.step - state.best_step >= hparams.early_stop_patience {
                tracing::info!(step = state.step, best = state.best_step, "early stop");
                break;
            }
        }
    }
    bar.finish_and_clear();
    state.seconds += clock.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps: state.step,
        best_step: state.best_step,
        untrained: state.untrained,
        best: state.best_val,
        train_facts: train_ex.len(),
        val_facts: val_ex.len(),
        seconds: state.seconds,
        resumed_from,
        finished,
        history: state.history.clone(),
    };
    if !finished {
        return Ok(summary);
    }
    let mut best = state.best;
    // What the archive says of its training; no timings, so equal runs give equal bytes.
    best.info.insert("data_sha256".into(), data_sha);
    best.info.insert("steps".into(), state.step.to_string());
    best.info
        .insert("best_step".into(), state.best_step.to_string());
    best.info
        .insert("val".into(), serde_json::to_string(&state.best_val)?);
    best.info.insert(
        "untrained_val".into(),
        serde_json::to_string(&state.untrained)?,
    );
    best.save(&opt.out)?;
    std::fs::remove_file(&ckpt).ok();
    Ok(summary)
}

/// A MEND editor from a trained archive file, checked against `lm`.
pub fn editor<B: Backend>(archive: &Path, lm: &LanguageModel<B>) -> Result<Mend<B>> {
    Ok(Mend::new(Archive::load(archive, lm)?))
}

/// Where `kedit mend train` puts, and `kedit edit --method mend` finds, the archive for `lm` and
/// `hparams` when no path is given: `<cache>/mend/<model hash>-<hparams hash>.safetensors`.
pub fn default_archive<B: Backend>(
    cache: &Path,
    lm: &LanguageModel<B>,
    hparams: &MendHparams,
) -> Result<PathBuf> {
    let layers = hparams.layers(lm.model.config.family)?;
    kedit_editing::hparams::check_layers(
        "hparams",
        "inner_params",
        &layers,
        lm.model.config.num_layers,
    )?;
    let model = crate::mend::model_hash(&lm.model, &layers);
    let hp = format!(
        "{:x}",
        Sha256::digest(serde_json::to_string(hparams)?.as_bytes())
    );
    Ok(cache
        .join("mend")
        .join(format!("{}-{}.safetensors", &model[..16], &hp[..8])))
}
