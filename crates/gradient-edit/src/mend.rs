//! MEND (Mitchell et al., 2022; methods.md §3.7): a hypernetwork trained once per model turns the
//! gradient of an edit's loss into a weight update.
//!
//! The gradient of a projection `y = x W` (W `[d_in, d_out]`) is `Σ_t x_t δ_tᵀ` over tokens, with
//! `x_t` the layer input and `δ_t` the gradient at its output. MEND never forms it: per token it
//! standardises `[x_t, δ_t]` with running statistics, passes it through a low-rank MLP initialised
//! to the identity (one per weight shape, shared by the layers, with a scale/shift per layer:
//! the "modes"), splits the output into `(x̃_t, δ̃_t)` and writes
//! `W ← W − α_l Σ_t x̃_t δ̃_tᵀ` with a learned step `α_l` per matrix.
//!
//! kedit edits the MLP output projection (`down_proj`, `c_proj`, `fc_out`) of the listed layers:
//! the matrices its patches carry. EasyEdit's Llama configuration also lists `gate_proj` and
//! `up_proj`; naming them here is an error rather than a silent skip.
//!
//! Sign: the paper writes `W − α∇̃`; EasyEdit's code adds `α∇̃` with `α` initialised positive, so
//! its untrained network first climbs the loss and training must flip `α`. kedit follows the paper,
//! so that the identity-initialised network starts as one step of gradient descent.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use kedit_editing::hparams::{parse_yaml, Hparams, RUN_KEYS};
use kedit_editing::{EditRequest, Editor, Matrix, Patch, PatchEntry};
use kedit_models::layers::matmul;
use kedit_models::{CausalLm, Family, Interventions, LanguageModel, Site, ToAutodiff, Transformer};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{request_pairs, residual_in, TokenBatch};
use crate::ft::Objective;

/// MEND's hyperparameters under EasyEdit's keys (the editing YAML and the training YAML share
/// one block, methods.md §2.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MendHparams {
    /// The edited weights, Hugging Face names (`model.layers.27.mlp.down_proj.weight`).
    pub inner_params: Vec<String>,
    /// Adam's step for the hypernetwork.
    pub lr: f64,
    /// The initial per-matrix edit step α.
    pub edit_lr: f64,
    /// Adam's step for α.
    pub lr_lr: f64,
    /// Weight of the post-edit NLL of the new target (edit and paraphrase prompts).
    pub cedit: f64,
    /// Weight of KL(pre ‖ post) on locality prompts.
    pub cloc: f64,
    /// Weight of the base model's own loss: only with `train_base`, which kedit does not do.
    #[serde(default)]
    pub cbase: f64,
    pub n_hidden: usize,
    pub rank: usize,
    #[serde(default = "default_init")]
    pub init: String,
    #[serde(default = "yes")]
    pub norm: bool,
    #[serde(default = "yes")]
    pub combine: bool,
    #[serde(default = "yes")]
    pub shared: bool,
    #[serde(default = "default_act")]
    pub act: String,
    #[serde(default = "default_mlp_class")]
    pub mlp_class: String,
    #[serde(default)]
    pub one_sided: bool,
    #[serde(default)]
    pub x_only: bool,
    #[serde(default)]
    pub delta_only: bool,
    #[serde(default)]
    pub train_base: bool,
    #[serde(default)]
    pub dropout: f64,
    pub seed: u64,
    /// Edits per optimiser step (their losses are summed into one backward pass).
    #[serde(default = "one")]
    pub accumulate_bs: usize,
    /// Clip of the hypernetwork gradient's global L2 norm.
    pub grad_clip: f64,
    /// Optimiser steps at most (`kedit mend train --steps` overrides).
    pub max_iters: usize,
    /// Validate (and checkpoint) every this many steps.
    pub val_interval: usize,
    /// Stop when the validation key has not improved for this many steps.
    pub early_stop_patience: usize,
    /// `edit/acc_val` (EasyEdit's Llama key: edit success on validation) or `score_val` (the
    /// harmonic mean of validation ES, PS and NS; kedit's default, which also sees locality).
    #[serde(default = "default_key")]
    pub early_stop_key: String,
    /// Validation edits (EasyEdit's `val_steps`).
    #[serde(default = "default_val_steps")]
    pub val_steps: usize,
}

fn default_init() -> String {
    "id".into()
}
fn default_act() -> String {
    "relu".into()
}
fn default_mlp_class() -> String {
    "IDMLP".into()
}
fn default_key() -> String {
    "score_val".into()
}
fn default_val_steps() -> usize {
    50
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}

/// EasyEdit's MEND keys that describe its trainer's logging and files, not the algorithm.
const MEND_RUN_KEYS: &[&str] = &[
    "model_class",
    "tokenizer_class",
    "tokenizer_name",
    "archive",
    "no_grad_layers",
    "hidden_dim",
    "model_save_pt",
    "silent",
    "max_epochs",
    "log_interval",
    "eval_log_interval",
    "final_eval",
    "eval_only",
    "half",
    "debug",
    "save",
    "verbose",
    "val_batch_size",
    "opt",
    "results_dir",
    "alg",
];

impl MendHparams {
    /// The defaults for SmolLM2-135M (see hparams/mend-smollm2.yaml for why).
    pub fn smollm2() -> Self {
        Self::from_yaml_str(
            include_str!("../hparams/mend-smollm2.yaml"),
            "mend-smollm2.yaml",
        )
        .expect("bundled hparams")
    }

    /// The layer of each `inner_params` entry, checked against `family`'s MLP output projection.
    pub fn layers(&self, family: Family) -> Result<Vec<usize>> {
        let template = format!("{}.weight", family.mlp_out_module());
        self.inner_params
            .iter()
            .map(|name| {
                let layer = layer_of(name)?;
                if template.replace("{}", &layer.to_string()) != *name {
                    bail!("hparams field `inner_params`: `{name}` is not the MLP output projection of a {family:?} layer (`{template}`); kedit's MEND edits only that matrix");
                }
                Ok(layer)
            })
            .collect()
    }
}

/// The first all-digit component of a dotted parameter name.
fn layer_of(name: &str) -> Result<usize> {
    name.split('.')
        .find_map(|p| p.parse().ok())
        .with_context(|| format!("hparams field `inner_params`: `{name}` names no layer"))
}

impl Hparams for MendHparams {
    fn from_yaml_str(text: &str, file: &str) -> Result<Self> {
        let ignored: Vec<&str> = RUN_KEYS.iter().chain(MEND_RUN_KEYS).copied().collect();
        let h: Self = parse_yaml(text, file, &ignored)?;
        let check = |ok: bool, field: &str, why: &str| -> Result<()> {
            if ok {
                Ok(())
            } else {
                bail!("{file}: field `{field}`: {why}")
            }
        };
        check(!h.inner_params.is_empty(), "inner_params", "empty")?;
        for n in &h.inner_params {
            layer_of(n).with_context(|| file.to_owned())?;
        }
        check(h.init == "id", "init", "only `id` is supported")?;
        check(h.act == "relu", "act", "only `relu` is supported")?;
        check(
            h.mlp_class == "IDMLP",
            "mlp_class",
            "only `IDMLP` is supported",
        )?;
        check(
            h.combine && h.shared,
            "combine",
            "kedit implements combine: true, shared: true (EasyEdit's settings)",
        )?;
        check(
            !(h.one_sided || h.x_only || h.delta_only),
            "one_sided",
            "one-sided variants are not implemented",
        )?;
        check(!h.train_base, "train_base", "only false is supported")?;
        check(h.dropout == 0.0, "dropout", "only 0 is supported")?;
        check(h.rank > 0, "rank", "must be at least 1")?;
        check(h.accumulate_bs > 0, "accumulate_bs", "must be at least 1")?;
        check(h.val_interval > 0, "val_interval", "must be at least 1")?;
        check(
            ["edit/acc_val", "score_val"].contains(&h.early_stop_key.as_str()),
            "early_stop_key",
            "expected `edit/acc_val` or `score_val`",
        )?;
        Ok(h)
    }
}

/// Per edited layer, the gradient factors of one edit at the tokens where both are non-zero
/// (MEND's mask: later tokens have no gradient), row-major on the host.
#[derive(Debug, Clone, Default)]
pub struct Factors {
    /// `[tokens, d_in]` per layer: the MLP key.
    pub x: Vec<Vec<f32>>,
    /// `[tokens, d_out]` per layer: the loss gradient at the MLP output.
    pub delta: Vec<Vec<f32>>,
    /// The batch row of each token, per layer.
    pub rows: Vec<Vec<usize>>,
}

impl Factors {
    /// One `Factors` per batch row (for a batch of single-row edits).
    pub fn split(&self, rows: usize, d_in: usize, d_out: usize) -> Vec<Factors> {
        let mut out = vec![Factors::default(); rows];
        for ((x, d), rs) in self.x.iter().zip(&self.delta).zip(&self.rows) {
            for o in out.iter_mut() {
                o.x.push(Vec::new());
                o.delta.push(Vec::new());
                o.rows.push(Vec::new());
            }
            for (t, &r) in rs.iter().enumerate() {
                let o = &mut out[r];
                let last = o.x.len() - 1;
                o.x[last].extend_from_slice(&x[t * d_in..(t + 1) * d_in]);
                o.delta[last].extend_from_slice(&d[t * d_out..(t + 1) * d_out]);
                o.rows[last].push(0);
            }
        }
        out
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 tensor")
}

/// The factors `x_t`, `δ_t` of `batch`'s teacher-forced loss at each of `layers`: the MLP key is
/// captured and a zero row per token is added at the MLP output, whose gradient is `δ_t`.
pub fn factors<B: Backend>(
    model: &Transformer<B>,
    batch: &TokenBatch,
    layers: &[usize],
) -> Factors {
    let start = *layers.iter().min().expect("layers");
    factors_from(model, residual_in(model, &batch.seqs, start), batch, layers)
}

/// [`factors`] from `h_in`, the residual stream entering the lowest edited layer for
/// `batch`'s rows (possibly wider than them: right padding changes nothing).
pub fn factors_from<B: Backend>(
    model: &Transformer<B>,
    h_in: Tensor<B, 3>,
    batch: &TokenBatch,
    layers: &[usize],
) -> Factors {
    let start = *layers.iter().min().expect("layers");
    let ad = model.map(&ToAutodiff);
    let tokens = batch.tokens();
    let (d_ff, d) = (model.config.intermediate_size, model.config.hidden_size);
    let zeros: Vec<Tensor<Autodiff<B>, 2>> = layers
        .iter()
        .map(|_| Tensor::zeros([tokens.len(), d], &model.device()).require_grad())
        .collect();
    let mut iv = Interventions::none();
    for (&l, z) in layers.iter().zip(&zeros) {
        iv = iv
            .capture(l, Site::MlpKey)
            .add_rows(l, Site::MlpOut, tokens.clone(), z.clone());
    }
    let fwd = ad.forward_from(start, Tensor::from_inner(h_in), &iv);
    let grads = batch.nll(&ad, fwd.hidden.clone()).backward();
    let [_, s, _] = fwd.hidden.dims();
    let rows: Vec<i64> = tokens.iter().map(|&(i, p)| (i * s + p) as i64).collect();
    let rows = Tensor::<B, 1, burn::tensor::Int>::from_data(
        TensorData::new(rows, [tokens.len()]),
        &model.device(),
    );
    let mut f = Factors::default();
    for (&l, z) in layers.iter().zip(&zeros) {
        let key = fwd.captured[&(l, Site::MlpKey)].clone().inner();
        let [b, s, _] = key.dims();
        let x = host(key.reshape([b * s, d_ff]).select(0, rows.clone()));
        let delta = host(z.grad(&grads).expect("gradient at the MLP output"));
        let (mut xs, mut ds, mut rs) = (Vec::new(), Vec::new(), Vec::new());
        for (t, &(row, _)) in tokens.iter().enumerate() {
            let (xr, dr) = (&x[t * d_ff..(t + 1) * d_ff], &delta[t * d..(t + 1) * d]);
            if xr.iter().any(|&v| v != 0.0) && dr.iter().any(|&v| v != 0.0) {
                xs.extend_from_slice(xr);
                ds.extend_from_slice(dr);
                rs.push(row);
            }
        }
        f.x.push(xs);
        f.delta.push(ds);
        f.rows.push(rs);
    }
    f
}

/// Running mean and variance (Welford) of `[x_t, δ_t]`, updated during training only. Before two
/// tokens have been seen it leaves its input unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct Normaliser {
    pub k: f64,
    pub mean: Vec<f64>,
    pub s: Vec<f64>,
}

impl Normaliser {
    pub fn new(width: usize) -> Self {
        Self {
            k: 0.0,
            mean: vec![0.0; width],
            s: vec![0.0; width],
        }
    }

    /// Add every token of `f` (all layers share one transform, so one set of statistics).
    pub fn update(&mut self, f: &Factors, d_in: usize, d_out: usize) {
        for (x, d) in f.x.iter().zip(&f.delta) {
            for t in 0..x.len() / d_in {
                self.k += 1.0;
                let row = x[t * d_in..(t + 1) * d_in]
                    .iter()
                    .chain(&d[t * d_out..(t + 1) * d_out]);
                for (j, &v) in row.enumerate() {
                    let v = v as f64;
                    let m = self.mean[j];
                    let m2 = m + (v - m) / self.k;
                    self.s[j] += (v - m) * (v - m2);
                    self.mean[j] = m2;
                }
            }
        }
    }

    /// `[tokens, d_in + d_out]`: each token's `[x, δ]`, standardised when statistics exist.
    fn input(&self, x: &[f32], d: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
        let w = d_in + d_out;
        let n = x.len() / d_in;
        let scale: Option<Vec<(f64, f64)>> = (self.k >= 2.0).then(|| {
            (0..w)
                .map(|j| (self.mean[j], (self.s[j] / (self.k - 1.0)).sqrt() + 1e-7))
                .collect()
        });
        let mut out = Vec::with_capacity(n * w);
        for t in 0..n {
            let row = x[t * d_in..(t + 1) * d_in]
                .iter()
                .chain(&d[t * d_out..(t + 1) * d_out]);
            for (j, &v) in row.enumerate() {
                out.push(match &scale {
                    Some(sc) => ((v as f64 - sc[j].0) / sc[j].1) as f32,
                    None => v,
                });
            }
        }
        out
    }
}

/// Tensors per low-rank layer: `v [w, r]`, `u [r, w]`, `bias [1, w]`, `mode_scale [modes, w]`,
/// `mode_shift [modes, w]`; then `edit_lrs [1, modes]`.
const PER_LAYER: usize = 5;
const PARTS: [&str; PER_LAYER] = ["v", "u", "bias", "mode_scale", "mode_shift"];

/// The names of the hypernetwork's tensors, in `Hypernet::params` order.
pub fn param_names(n_hidden: usize) -> Vec<String> {
    (0..=n_hidden)
        .flat_map(|j| PARTS.iter().map(move |p| format!("mlp.{j}.{p}")))
        .chain(["edit_lrs".to_owned()])
        .collect()
}

/// The gradient transform (IDMLP, `combine`, `shared`) and the edit steps, as plain tensors so
/// that the same code runs on `B` (editing) and `Autodiff<B>` (training).
#[derive(Debug, Clone)]
pub struct Hypernet<B: Backend> {
    pub params: Vec<Tensor<B, 2>>,
}

impl<B: Backend> Hypernet<B> {
    /// Identity initialisation: `u = 0` (so every layer adds `relu(0) = 0`), `v ~ N(0, 1)` from
    /// `seed`, scales 1, shifts and biases 0, every `α = edit_lr`.
    pub fn init(h: &MendHparams, width: usize, modes: usize, device: &B::Device) -> Self {
        let r = h.rank.min(width);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(h.seed);
        let mut params = Vec::new();
        let t = |data: Vec<f32>, shape: [usize; 2]| {
            Tensor::<B, 2>::from_data(TensorData::new(data, shape), device)
        };
        for _ in 0..=h.n_hidden {
            let v: Vec<f32> = (0..width * r)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect();
            params.push(t(v, [width, r]));
            params.push(Tensor::zeros([r, width], device));
            params.push(Tensor::zeros([1, width], device));
            params.push(Tensor::ones([modes, width], device));
            params.push(Tensor::zeros([modes, width], device));
        }
        params.push(t(vec![h.edit_lr as f32; modes], [1, modes]));
        Self { params }
    }

    pub fn names(&self) -> Vec<String> {
        param_names((self.params.len() - 1) / PER_LAYER - 1)
    }

    /// `z [tokens, w]` through every layer for edited matrix `mode`:
    /// `z + relu((z v u + bias) ⊙ scale_mode + shift_mode)`.
    pub fn transform(&self, mut z: Tensor<B, 2>, mode: usize) -> Tensor<B, 2> {
        for layer in self.params[..self.params.len() - 1].chunks(PER_LAYER) {
            let [v, u, bias, scale, shift] = layer else {
                unreachable!("chunks of PER_LAYER")
            };
            let pre = matmul(matmul(z.clone(), v.clone()), u.clone()) + bias.clone();
            let pre = pre * scale.clone().narrow(0, mode, 1) + shift.clone().narrow(0, mode, 1);
            // clamp, not relu: at 0 (where the identity initialisation starts) its gradient
            // passes, as torch's clamp's does.
            z = z + pre.clamp_min(0.0);
        }
        z
    }

    /// Per edited layer, the transformed factors as a low-rank update `ΔW = a b`:
    /// `a = [x̃_t]ᵀ` (`[d_in, tokens]`) and `b = −α_l [δ̃_t]` (`[tokens, d_out]`); `None` where the
    /// edit has no token with a gradient.
    pub fn low_rank(
        &self,
        norm: &Normaliser,
        f: &Factors,
        [d_in, d_out]: [usize; 2],
        device: &B::Device,
    ) -> Vec<Option<(Tensor<B, 2>, Tensor<B, 2>)>> {
        let lrs = self.params.last().expect("edit_lrs");
        f.x.iter()
            .zip(&f.delta)
            .enumerate()
            .map(|(mode, (x, d))| {
                let n = x.len() / d_in;
                if n == 0 {
                    return None;
                }
                let z = Tensor::<B, 2>::from_data(
                    TensorData::new(norm.input(x, d, d_in, d_out), [n, d_in + d_out]),
                    device,
                );
                let out = self.transform(z, mode);
                let xt = out.clone().narrow(1, 0, d_in);
                let dt = out.narrow(1, d_in, d_out);
                Some((xt.transpose(), dt * lrs.clone().narrow(1, mode, 1).neg()))
            })
            .collect()
    }

    /// `ΔW = −α_l Σ_t x̃_t δ̃_tᵀ` (`[d_in, d_out]`) for each edited layer.
    pub fn updates(
        &self,
        norm: &Normaliser,
        f: &Factors,
        shape: [usize; 2],
        device: &B::Device,
    ) -> Vec<Tensor<B, 2>> {
        self.low_rank(norm, f, shape, device)
            .into_iter()
            .map(|ab| match ab {
                Some((a, b)) => matmul(a, b),
                None => Tensor::zeros(shape, device),
            })
            .collect()
    }
}

/// A safetensors file of f32/f64 tensors with kedit's metadata under one key (canonical JSON:
/// safetensors keeps metadata in a HashMap, so several keys would make the bytes vary), written
/// to a temporary file and renamed so a kill never leaves half a file.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Bytes)],
    meta: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let (raw, dt) = match b {
                Bytes::F32(v) => (
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::F32,
                ),
                Bytes::F64(v) => (
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    safetensors::Dtype::F64,
                ),
            };
            (n.clone(), raw, s.clone(), dt)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, s, dt)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let header =
        std::collections::HashMap::from([("kedit".to_owned(), serde_json::to_string(meta)?)]);
    let out = safetensors::serialize(views, Some(header))?;
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, out).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

#[derive(Debug, Clone)]
pub(crate) enum Bytes {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The tensors and metadata of a file written by [`write_tensors`].
pub(crate) struct TensorFile {
    pub tensors: BTreeMap<String, (Vec<usize>, Bytes)>,
    pub meta: BTreeMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        let data =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&data)
            .map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let meta: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("kedit"))
            .map(|j| serde_json::from_str(j))
            .transpose()?
            .with_context(|| {
                format!("{}: not a kedit file (no `kedit` metadata)", path.display())
            })?;
        let st = safetensors::SafeTensors::deserialize(&data)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let b = view.data();
            let bytes = match view.dtype() {
                safetensors::Dtype::F32 => Bytes::F32(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                ),
                safetensors::Dtype::F64 => Bytes::F64(
                    b.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                ),
                other => bail!(
                    "{}: tensor {name}: unexpected dtype {other:?}",
                    path.display()
                ),
            };
            tensors.insert(name, (view.shape().to_vec(), bytes));
        }
        Ok(Self { tensors, meta })
    }

    pub fn f32<B: Backend>(
        &self,
        name: &str,
        path: &Path,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        match self.tensors.get(name) {
            Some((s, Bytes::F32(v))) if s.len() == 2 => Ok(Tensor::from_data(
                TensorData::new(v.clone(), [s[0], s[1]]),
                device,
            )),
            _ => bail!(
                "{}: tensor `{name}` is missing or not a 2-D f32 tensor",
                path.display()
            ),
        }
    }

    pub fn f64(&self, name: &str, path: &Path) -> Result<Vec<f64>> {
        match self.tensors.get(name) {
            Some((_, Bytes::F64(v))) => Ok(v.clone()),
            _ => bail!("{}: tensor `{name}` is missing or not f64", path.display()),
        }
    }
}

/// What identifies the model an archive was trained for: its dimensions and the bytes of every
/// matrix MEND edits (SHA-256).
pub fn model_hash<B: Backend>(model: &Transformer<B>, layers: &[usize]) -> String {
    let c = &model.config;
    let mut h = Sha256::new();
    h.update(
        format!(
            "{:?} {} {} {} {}",
            c.family, c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers
        )
        .as_bytes(),
    );
    for &l in layers {
        for v in host(model.mlp_out(l)) {
            h.update(v.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// A trained (or freshly initialised) MEND: the hypernetwork, its input statistics, and what it
/// was trained for.
#[derive(Debug, Clone)]
pub struct Archive<B: Backend> {
    pub hparams: MendHparams,
    pub layers: Vec<usize>,
    /// `[d_in, d_out]` of every edited matrix.
    pub shape: [usize; 2],
    pub model_hash: String,
    pub net: Hypernet<B>,
    pub norm: Normaliser,
    /// How it was trained: steps, best step, validation metrics, seconds, data.
    pub info: BTreeMap<String, String>,
}

const ARCHIVE_FORMAT: &str = "kedit-mend-archive-1";

impl<B: Backend> Archive<B> {
    /// The untrained archive for `lm`: identity transform, no statistics, `α = edit_lr`.
    pub fn init(lm: &LanguageModel<B>, hparams: MendHparams) -> Result<Self> {
        let c = &lm.model.config;
        let layers = hparams.layers(c.family)?;
        if let Some(&l) = layers.iter().find(|&&l| l >= c.num_layers) {
            bail!(
                "hparams field `inner_params`: layer {l} but the model has {}",
                c.num_layers
            );
        }
        let shape = [c.intermediate_size, c.hidden_size];
        let width = shape[0] + shape[1];
        Ok(Self {
            net: Hypernet::init(&hparams, width, layers.len(), &lm.model.device()),
            norm: Normaliser::new(width),
            model_hash: model_hash(&lm.model, &layers),
            hparams,
            layers,
            shape,
            info: BTreeMap::new(),
        })
    }

    pub(crate) fn tensors(&self) -> Vec<(String, Vec<usize>, Bytes)> {
        let mut out: Vec<(String, Vec<usize>, Bytes)> = self
            .net
            .names()
            .into_iter()
            .zip(&self.net.params)
            .map(|(n, p)| (n, p.dims().to_vec(), Bytes::F32(host(p.clone()))))
            .collect();
        let w = self.norm.mean.len();
        out.push(("norm.k".into(), vec![1], Bytes::F64(vec![self.norm.k])));
        out.push((
            "norm.mean".into(),
            vec![w],
            Bytes::F64(self.norm.mean.clone()),
        ));
        out.push(("norm.s".into(), vec![w], Bytes::F64(self.norm.s.clone())));
        out
    }

    pub(crate) fn meta(&self) -> Result<BTreeMap<String, String>> {
        let mut m = self.info.clone();
        m.insert("format".into(), ARCHIVE_FORMAT.into());
        m.insert("hparams".into(), serde_json::to_string(&self.hparams)?);
        m.insert("layers".into(), serde_json::to_string(&self.layers)?);
        m.insert("shape".into(), serde_json::to_string(&self.shape)?);
        m.insert("model_hash".into(), self.model_hash.clone());
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_tensors(path, &self.tensors(), &self.meta()?)
    }

    /// Read an archive from a file written by [`Archive::save`] (or a checkpoint's tensors
    /// under `prefix`), without checking it against a model.
    pub(crate) fn from_file(
        file: &TensorFile,
        prefix: &str,
        path: &Path,
        device: &B::Device,
    ) -> Result<Self> {
        let meta = &file.meta;
        let field = |k: &str| {
            meta.get(k).with_context(|| {
                format!(
                    "{}: not a MEND archive (no `{k}` in its metadata)",
                    path.display()
                )
            })
        };
        if field("format")? != ARCHIVE_FORMAT {
            bail!(
                "{}: not a MEND archive (format {:?})",
                path.display(),
                field("format")?
            );
        }
        let hparams: MendHparams = serde_json::from_str(field("hparams")?)
            .with_context(|| format!("{}: metadata field `hparams`", path.display()))?;
        let layers: Vec<usize> = serde_json::from_str(field("layers")?)?;
        let shape: [usize; 2] = serde_json::from_str(field("shape")?)?;
        let width = shape[0] + shape[1];
        let params = param_names(hparams.n_hidden)
            .iter()
            .map(|n| file.f32::<B>(&format!("{prefix}{n}"), path, device))
            .collect::<Result<Vec<_>>>()?;
        let norm = Normaliser {
            k: file.f64(&format!("{prefix}norm.k"), path)?[0],
            mean: file.f64(&format!("{prefix}norm.mean"), path)?,
            s: file.f64(&format!("{prefix}norm.s"), path)?,
        };
        if norm.mean.len() != width || params[0].dims()[0] != width {
            bail!(
                "{}: tensors do not match the archive's shape {shape:?}",
                path.display()
            );
        }
        let info = meta
            .iter()
            .filter(|(k, _)| {
                !["format", "hparams", "layers", "shape", "model_hash"].contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Self {
            hparams,
            layers,
            shape,
            model_hash: field("model_hash")?.clone(),
            net: Hypernet { params },
            norm,
            info,
        })
    }

    /// Load `path` for `lm`: an archive trained for another model or other shapes is a one-line
    /// error naming the file.
    pub fn load(path: &Path, lm: &LanguageModel<B>) -> Result<Self> {
        let file = TensorFile::read(path)?;
        let a = Self::from_file(&file, "", path, &lm.model.device())?;
        let c = &lm.model.config;
        let want = [c.intermediate_size, c.hidden_size];
        if a.shape != want {
            bail!(
                "{}: MEND archive for matrices {:?}, but this model's MLP output projection is {want:?}",
                path.display(),
                a.shape
            );
        }
        if let Some(&l) = a.layers.iter().find(|&&l| l >= c.num_layers) {
            bail!(
                "{}: MEND archive edits layer {l}, but the model has {}",
                path.display(),
                c.num_layers
            );
        }
        let hash = model_hash(&lm.model, &a.layers);
        if hash != a.model_hash {
            bail!(
                "{}: MEND archive trained for another model (model hash {}…, this model {}…); train one for it with `kedit mend train`",
                path.display(),
                &a.model_hash[..12],
                &hash[..12]
            );
        }
        Ok(a)
    }
}

/// MEND as an editor: one `apply` with N requests is one batch edit (all their tokens' factors in
/// one update); sequential editing is repeated `apply` on the edited model.
pub struct Mend<B: Backend> {
    pub archive: Archive<B>,
}

impl<B: Backend> Mend<B> {
    pub fn new(archive: Archive<B>) -> Self {
        Self { archive }
    }

    /// The teacher-forced batch of `requests` (prompt, then ` target_new`).
    pub fn batch(lm: &LanguageModel<B>, requests: &[EditRequest]) -> Result<TokenBatch> {
        Ok(TokenBatch::of(
            &request_pairs(lm, requests)?,
            Objective::TargetNew,
        ))
    }

    /// The patch entries of an edit of `lm` as it is.
    pub fn entries(
        &self,
        lm: &LanguageModel<B>,
        requests: &[EditRequest],
    ) -> Result<Vec<PatchEntry>> {
        let a = &self.archive;
        let f = factors(&lm.model, &Self::batch(lm, requests)?, &a.layers);
        a.net
            .updates(&a.norm, &f, a.shape, &lm.model.device())
            .into_iter()
            .zip(&a.layers)
            .map(|(d, &layer)| {
                Ok(PatchEntry {
                    layer,
                    matrix: Matrix::MlpOut,
                    shape: a.shape,
                    delta: host(d),
                })
            })
            .collect()
    }
}

impl<B: Backend> Editor<B> for Mend<B> {
    fn name(&self) -> &str {
        "mend"
    }

    fn apply(&mut self, lm: &mut LanguageModel<B>, requests: &[EditRequest]) -> Result<Patch> {
        let mut patch = Patch::described("mend", &self.archive.hparams, requests, lm)?;
        patch
            .metadata
            .insert("archive_model_hash".into(), self.archive.model_hash.clone());
        patch.entries = self.entries(lm, requests)?;
        patch.apply(&mut lm.model)?;
        Ok(patch)
    }
}
