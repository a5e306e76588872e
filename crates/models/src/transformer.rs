//! The decoder every family shares: embeddings (plus learned positions for GPT-2), blocks of
//! attention and MLP with the editing surface's hooks, a final norm and the unembedding. What a
//! family changes is data, set by its loader (`llama.rs`, `gpt2.rs`, `gptj.rs`): RMSNorm or
//! LayerNorm, biases, SwiGLU or GELU, rotary dimensions, and whether the MLP reads the attention's
//! norm in parallel (GPT-J) or the residual after attention.

use std::collections::HashMap;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::layers::{
    apply_rotary, apply_rotary_rows, batch_ids, causal_mask, gelu_tanh, grouped_attention,
    grouped_attention_rows, layer_norm, presplit_matmul, reshape, rms_norm, rotary_tables, swiglu,
    tf32_split,
};
use crate::load::WeightSource;
use crate::prefix::PrefixCache;
use crate::surface::{Forward, Interventions, Site};
use crate::{CausalLm, TensorMap};

#[derive(Debug, Clone)]
pub enum Norm<B: Backend> {
    Rms(Tensor<B, 1>),
    Layer(Tensor<B, 1>, Tensor<B, 1>),
}

impl<B: Backend> Norm<B> {
    fn apply(&self, x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
        match self {
            Norm::Rms(w) => rms_norm(x, w, eps),
            Norm::Layer(w, b) => layer_norm(x, w, b, eps),
        }
    }

    fn map<B2: Backend>(&self, f: &impl TensorMap<B, B2>) -> Norm<B2> {
        match self {
            Norm::Rms(w) => Norm::Rms(f.map(w.clone())),
            Norm::Layer(w, b) => Norm::Layer(f.map(w.clone()), f.map(b.clone())),
        }
    }
}

/// A projection kept as `[d_in, d_out]` (so a forward is `x @ w`, and the matrices editors
/// rewrite are already keys-to-values), with its bias if the family has one.
#[derive(Debug, Clone)]
pub struct Proj<B: Backend> {
    pub w: Tensor<B, 2>,
    pub b: Option<Tensor<B, 1>>,
    /// `w`'s 3xTF32 split (`hi`, `lo`), kept by [`Transformer::presplit`] for a run of forward
    /// passes over constant weights; dropped when `w` is replaced.
    split: Option<(Tensor<B, 2>, Tensor<B, 2>)>,
}

impl<B: Backend> Proj<B> {
    pub fn new(w: Tensor<B, 2>, b: Option<Tensor<B, 1>>) -> Self {
        Proj { w, b, split: None }
    }

    /// The kept split, unless `w` needs a gradient (fine-tuning it): the split is a constant.
    fn kept_split(&self) -> Option<(&Tensor<B, 2>, &Tensor<B, 2>)> {
        match &self.split {
            Some((hi, lo)) if !self.w.is_require_grad() => Some((hi, lo)),
            _ => None,
        }
    }

    /// `x @ w (+ b)` for `x: [batch, seq, d_in]`, the tokens as rows.
    fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [bs, s, d] = x.dims();
        let y = self.apply_rows(reshape(x, [bs * s, d]));
        let d_out = y.dims()[1];
        reshape(y, [bs, s, d_out])
    }

    /// `x @ w (+ b)` for `x: [rows, d_in]`.
    fn apply_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = match self.kept_split() {
            Some((hi, lo)) => presplit_matmul(x, hi, lo),
            None => crate::layers::matmul(x, self.w.clone()),
        };
        match &self.b {
            Some(b) => y + b.clone().unsqueeze_dim(0),
            None => y,
        }
    }

    fn presplit(&self) -> Proj<B> {
        let (hi, lo) = tf32_split(self.w.clone().detach());
        Proj {
            split: Some((hi, lo)),
            ..self.clone()
        }
    }

    fn set(&mut self, w: Tensor<B, 2>) {
        self.w = w;
        self.split = None;
    }

    fn map<B2: Backend>(&self, f: &impl TensorMap<B, B2>) -> Proj<B2> {
        Proj {
            w: f.map(self.w.clone()),
            b: self.b.as_ref().map(|b| f.map(b.clone())),
            split: self
                .split
                .as_ref()
                .map(|(hi, lo)| (f.map(hi.clone()), f.map(lo.clone()))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Block<B: Backend> {
    pub attn_norm: Norm<B>,
    pub wq: Proj<B>,
    pub wk: Proj<B>,
    pub wv: Proj<B>,
    pub wo: Proj<B>,
    /// `None`: the MLP reads the attention's normed input, in parallel (GPT-J).
    pub mlp_norm: Option<Norm<B>>,
    /// Llama's gate: the key is `SiLU(gate x) · up x`; without it, `GELU(up x)` (GPT-2, GPT-J).
    pub gate: Option<Proj<B>>,
    /// The MLP's first projection (`up_proj`, `c_fc`, `fc_in`).
    pub up: Proj<B>,
    /// The MLP output projection (`down_proj`, `c_proj`, `fc_out`): keys to values.
    pub down: Proj<B>,
}

#[derive(Debug, Clone)]
pub struct Transformer<B: Backend> {
    pub config: ModelConfig,
    pub embed: Tensor<B, 2>,
    /// Learned positions `[n_positions, d_model]` (GPT-2).
    pub positions: Option<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub norm: Norm<B>,
    /// `[d_model, vocab]`; a copy of the transposed embedding when the embeddings are tied.
    pub lm_head: Proj<B>,
}

pub(crate) fn upload<B: Backend, const D: usize>(
    shape: Vec<usize>,
    data: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
pub(crate) fn transpose_host(shape: &[usize], data: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (r, c) = (shape[0], shape[1]);
    let mut out = vec![0f32; data.len()];
    if r == 0 || c == 0 {
        return (vec![c, r], out);
    }
    // A 7B model transposes 6.7 billion values at load: blocks of TILE output rows on every
    // core, each reading TILE contiguous inputs per input row, so neither side strides through
    // memory a value at a time.
    const TILE: usize = 64;
    out.par_chunks_mut(TILE * r)
        .enumerate()
        .for_each(|(b, block)| {
            let (j0, w) = (b * TILE, block.len() / r);
            for i in 0..r {
                for (jj, &v) in data[i * c + j0..i * c + j0 + w].iter().enumerate() {
                    block[jj * r + i] = v;
                }
            }
        });
    (vec![c, r], out)
}

/// How a checkpoint stores a projection's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `nn.Linear`: `[d_out, d_in]`.
    OutIn,
    /// GPT-2's `Conv1D`: `[d_in, d_out]`, used as is.
    InOut,
}

/// A host tensor of the expected shape, or an error naming the file, the tensor and both shapes.
pub(crate) fn read(src: &dyn WeightSource, name: &str, want: &[usize]) -> Result<Vec<f32>> {
    let (shape, data) = src.tensor_shaped(name, want)?;
    if shape != want {
        bail!(
            "{}: tensor {name} has shape {shape:?}, but the config implies {want:?}",
            src.location(name)
        );
    }
    Ok(data)
}

/// A weight as `[d_in, d_out]` on the device.
pub(crate) fn weight<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    [d_in, d_out]: [usize; 2],
    layout: Layout,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    Ok(match layout {
        Layout::OutIn => {
            let data = read(src, name, &[d_out, d_in])?;
            let (shape, data) = transpose_host(&[d_out, d_in], &data);
            upload(shape, data, device)
        }
        Layout::InOut => upload(vec![d_in, d_out], read(src, name, &[d_in, d_out])?, device),
    })
}

pub(crate) fn vector<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    d: usize,
    device: &B::Device,
) -> Result<Tensor<B, 1>> {
    Ok(upload(vec![d], read(src, name, &[d])?, device))
}

/// `{prefix}.weight` (and `{prefix}.bias` when `bias`) as a projection.
pub(crate) fn proj<B: Backend>(
    src: &dyn WeightSource,
    prefix: &str,
    dims: [usize; 2],
    layout: Layout,
    bias: bool,
    device: &B::Device,
) -> Result<Proj<B>> {
    let w = weight(src, &format!("{prefix}.weight"), dims, layout, device)?;
    let b = if bias {
        Some(vector(src, &format!("{prefix}.bias"), dims[1], device)?)
    } else {
        None
    };
    Ok(Proj::new(w, b))
}

/// `{prefix}.weight` and `{prefix}.bias` as a LayerNorm.
pub(crate) fn layer_norm_of<B: Backend>(
    src: &dyn WeightSource,
    prefix: &str,
    d: usize,
    device: &B::Device,
) -> Result<Norm<B>> {
    Ok(Norm::Layer(
        vector(src, &format!("{prefix}.weight"), d, device)?,
        vector(src, &format!("{prefix}.bias"), d, device)?,
    ))
}

/// The token embedding `[vocab, d]` and the output projection: `head` (`[vocab, d]`, with its
/// bias if `head_bias`) when the checkpoint has it and the config does not tie, else the
/// transposed embedding.
pub(crate) fn embeddings<B: Backend>(
    src: &dyn WeightSource,
    config: &ModelConfig,
    embed: &str,
    head: &str,
    head_bias: bool,
    device: &B::Device,
) -> Result<(Tensor<B, 2>, Proj<B>)> {
    let (v, d) = (config.vocab_size, config.hidden_size);
    let data = read(src, embed, &[v, d])?;
    let lm_head = if src.has(&format!("{head}.weight")) && !config.tie_word_embeddings {
        proj(src, head, [d, v], Layout::OutIn, head_bias, device)?
    } else {
        let (s, t) = transpose_host(&[v, d], &data);
        Proj::new(upload(s, t, device), None)
    };
    Ok((upload(vec![v, d], data, device), lm_head))
}

/// What a family's loader returns.
pub(crate) type Loaded<B> = Result<Transformer<B>>;

/// A layer's keys (after rotary) and values `[b, kv_heads, seq, head_dim]`.
type KeysValues<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// How a block's attention sees the sequence.
enum AttnCtx<'a, B: Backend> {
    /// Whole rows from position 0.
    Full {
        rope: &'a (Tensor<B, 2>, Tensor<B, 2>),
        mask: &'a Tensor<B, 2, Bool>,
    },
    /// Suffixes after a cached prefix: this layer's prefix keys and values.
    Suffix {
        rope: &'a (Tensor<B, 3>, Tensor<B, 3>),
        mask: &'a Tensor<B, 3, Bool>,
        kv: &'a KeysValues<B>,
    },
}

impl<B: Backend> Transformer<B> {
    /// Load a Hugging Face checkpoint of `config.family` (GGUF files give Llama names too).
    pub fn load(config: ModelConfig, src: &dyn WeightSource, device: &B::Device) -> Result<Self> {
        match config.family {
            crate::Family::Llama => crate::llama::load(config, src, device),
            crate::Family::Gpt2 => crate::gpt2::load(config, src, device),
            crate::Family::GptJ => crate::gptj::load(config, src, device),
        }
    }

    /// The same weights on another backend (e.g. `Autodiff<B>`), tensor by tensor.
    pub fn map<B2: Backend>(&self, f: &impl TensorMap<B, B2>) -> Transformer<B2> {
        Transformer {
            config: self.config.clone(),
            embed: f.map(self.embed.clone()),
            positions: self.positions.as_ref().map(|p| f.map(p.clone())),
            norm: self.norm.map(f),
            lm_head: self.lm_head.map(f),
            blocks: self
                .blocks
                .iter()
                .map(|b| Block {
                    attn_norm: b.attn_norm.map(f),
                    wq: b.wq.map(f),
                    wk: b.wk.map(f),
                    wv: b.wv.map(f),
                    wo: b.wo.map(f),
                    mlp_norm: b.mlp_norm.as_ref().map(|n| n.map(f)),
                    gate: b.gate.as_ref().map(|g| g.map(f)),
                    up: b.up.map(f),
                    down: b.down.map(f),
                })
                .collect(),
        }
    }

    /// The same model with the weights of blocks `from..` and of the output head split for
    /// 3xTF32 once ([`crate::layers::presplit_matmul`]) instead of at every product: for a run
    /// of passes over constant weights (ROME's v* steps) where [`crate::layers::splits_matmul`]
    /// holds. Same values to the bit as splitting at every product; costs twice those weights'
    /// memory while it lives. A weight made to need a gradient, or replaced, is split per
    /// product again.
    pub fn presplit(&self, from: usize) -> Self {
        let mut m = self.clone();
        for b in &mut m.blocks[from..] {
            for p in [
                &mut b.wq,
                &mut b.wk,
                &mut b.wv,
                &mut b.wo,
                &mut b.up,
                &mut b.down,
            ] {
                *p = p.presplit();
            }
            if let Some(g) = &mut b.gate {
                *g = g.presplit();
            }
        }
        m.lm_head = m.lm_head.presplit();
        m
    }

    /// [`Self::presplit`] where [`crate::layers::presplits_weights`] holds on `B`, else the
    /// model as it is (a copy of its handles, not of its weights).
    pub fn presplit_if_split(&self, from: usize) -> Self {
        if crate::layers::presplits_weights::<B>() {
            self.presplit(from)
        } else {
            self.clone()
        }
    }

    /// One block. Returns the residual output and, with `keep_kv`, this layer's keys (after
    /// rotary) and values `[b, kv_heads, seq, head_dim]`.
    fn block(
        &self,
        l: usize,
        h: Tensor<B, 3>,
        ctx: &AttnCtx<'_, B>,
        keep_kv: bool,
        iv: &Interventions<B>,
        captured: &mut HashMap<(usize, Site), Tensor<B, 3>>,
    ) -> (Tensor<B, 3>, Option<KeysValues<B>>) {
        let c = &self.config;
        let w = &self.blocks[l];
        let [b, s, _] = h.dims();
        let (nh, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let groups = nh / kvh;
        let x = w.attn_norm.apply(h.clone(), c.norm_eps);
        let heads = |t: Tensor<B, 3>, n: usize| reshape(t, [b, s, n, hd]).swap_dims(1, 2);
        let q = heads(w.wq.apply(x.clone()), nh);
        let k = heads(w.wk.apply(x.clone()), kvh);
        let v = heads(w.wv.apply(x.clone()), kvh);
        let rotary = c.rotary_dim > 0;
        // Query head i reads key head i / groups (transformers' repeat_kv): stack each group's
        // queries along the rows instead of copying keys.
        let (k, a) = match ctx {
            AttnCtx::Full { rope, mask } => {
                let (q, k) = if rotary {
                    (
                        apply_rotary(q, &rope.0, &rope.1),
                        apply_rotary(k, &rope.0, &rope.1),
                    )
                } else {
                    (q, k)
                };
                let q = reshape(q, [b, kvh, groups * s, hd]);
                (k.clone(), grouped_attention(q, k, v.clone(), mask))
            }
            AttnCtx::Suffix { rope, mask, kv } => {
                let (q, k) = if rotary {
                    (
                        apply_rotary_rows(q, &rope.0, &rope.1),
                        apply_rotary_rows(k, &rope.0, &rope.1),
                    )
                } else {
                    (q, k)
                };
                let q = reshape(q, [b, kvh, groups * s, hd]);
                let keys = Tensor::cat(vec![kv.0.clone(), k.clone()], 2);
                let values = Tensor::cat(vec![kv.1.clone(), v.clone()], 2);
                (k, grouped_attention_rows(q, keys, values, mask))
            }
        };
        let kv = keep_kv.then_some((k, v));
        let a = reshape(reshape(a, [b, nh, s, hd]).swap_dims(1, 2), [b, s, nh * hd]);
        let a = iv.visit(l, Site::AttnOut, w.wo.apply(a), captured);
        // Sequential blocks norm the residual after attention; GPT-J's MLP reads `x` in parallel.
        let (h, x) = match &w.mlp_norm {
            Some(n) => {
                let h = h + a;
                let x = n.apply(h.clone(), c.norm_eps);
                (h, x)
            }
            None => (h + a, x),
        };
        let key = match &w.gate {
            Some(g) => {
                let gate = iv.visit(l, Site::MlpGate, g.apply(x.clone()), captured);
                swiglu(gate, w.up.apply(x))
            }
            None => gelu_tanh(iv.visit(l, Site::MlpGate, w.up.apply(x), captured)),
        };
        let key = iv.visit(l, Site::MlpKey, key, captured);
        let m = iv.visit_mlp_out(l, w.down.apply(key.clone()), key, captured);
        (iv.visit(l, Site::Residual, h + m, captured), kv)
    }

    /// The keys and values of each row's first `prefix_lens[i]` tokens at every layer from
    /// `start`, from the residual stream `h` entering `start` (whole right-padded rows).
    pub fn prefix_cache(
        &self,
        start: usize,
        h: Tensor<B, 3>,
        prefix_lens: &[usize],
        suffix_len: usize,
    ) -> PrefixCache<B> {
        let c = &self.config;
        let seq = h.dims()[1];
        let device = h.device();
        let rope = rotary_tables::<B>(seq, c.head_dim, c.rotary_dim, c.rope_theta, &device);
        let mask = causal_mask::<B>(seq, c.num_heads / c.num_kv_heads, &device);
        let mut cache = PrefixCache {
            start,
            prefix_lens: prefix_lens.to_vec(),
            suffix_len,
            kv: Vec::new(),
        };
        let p = cache.width();
        let ctx = AttnCtx::Full {
            rope: &rope,
            mask: &mask,
        };
        let mut h = h;
        let none = Interventions::none();
        for l in start..c.num_layers {
            let (next, kv) = self.block(l, h, &ctx, true, &none, &mut HashMap::new());
            let (k, v) = kv.expect("kept");
            cache.kv.push((k.narrow(2, 0, p), v.narrow(2, 0, p)));
            h = next;
        }
        cache
    }

    /// Run blocks `cache.start..` on the suffixes `h: [b, S, d]` (the residual stream entering
    /// `cache.start` at each row's positions `prefix_len..prefix_len + S`, see
    /// [`crate::prefix::suffixes`]), attending to the cached prefixes. Intervention and logit
    /// positions are suffix positions. Equals `forward_from` on the whole rows at those positions.
    pub fn forward_suffix(
        &self,
        cache: &PrefixCache<B>,
        h: Tensor<B, 3>,
        iv: &Interventions<B>,
    ) -> Forward<B> {
        let c = &self.config;
        let device = h.device();
        let rope = cache.rotary(c.head_dim, c.rotary_dim, c.rope_theta, &device);
        let mask = cache.mask(c.num_heads / c.num_kv_heads, &device);
        self.run_blocks(cache.start, h, iv, |l| AttnCtx::Suffix {
            rope: &rope,
            mask: &mask,
            kv: &cache.kv[l - cache.start],
        })
    }

    /// One step of cached decoding: `h: [b, 1, d]`, each row's next token embedded at its
    /// position `cache.prefix_lens[i]` ([`Self::embed_at`]), through every block against
    /// `cache` (which must start at block 0); the tokens' keys and values then join the cache.
    /// Returns the final norm's output `[b, 1, d]`. Equals a whole-row forward at those
    /// positions (`cargo test -p kedit-models --test models decode`).
    pub fn decode_step(&self, cache: &mut PrefixCache<B>, h: Tensor<B, 3>) -> Tensor<B, 3> {
        assert_eq!(
            cache.start, 0,
            "decode_step: the cache must hold every block"
        );
        assert_eq!(cache.suffix_len, 1, "decode_step: one token per row");
        let c = &self.config;
        let device = h.device();
        let rope = cache.rotary(c.head_dim, c.rotary_dim, c.rope_theta, &device);
        let mask = cache.mask(c.num_heads / c.num_kv_heads, &device);
        let none = Interventions::none();
        let mut h = h;
        let mut new = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let ctx = AttnCtx::Suffix {
                rope: &rope,
                mask: &mask,
                kv: &cache.kv[l],
            };
            let (next, kv) = self.block(l, h, &ctx, true, &none, &mut HashMap::new());
            new.push(kv.expect("kept"));
            h = next;
        }
        cache.append(new);
        self.norm.apply(h, c.norm_eps)
    }

    /// Token embeddings of `ids: [b, 1]` with row i at position `positions[i]` (GPT-2's learned
    /// positions; rotary models take theirs in attention).
    pub fn embed_at(&self, ids: Tensor<B, 2, Int>, positions: &[usize]) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        assert_eq!((s, positions.len()), (1, b), "embed_at: one token per row");
        let d = self.config.hidden_size;
        let tokens = reshape(self.embed.clone().select(0, ids.reshape([b])), [b, 1, d]);
        match &self.positions {
            Some(p) => {
                let idx: Vec<i64> = positions.iter().map(|&x| x as i64).collect();
                let idx =
                    Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [b]), &tokens.device());
                tokens + reshape(p.clone().select(0, idx), [b, 1, d])
            }
            None => tokens,
        }
    }

    /// Blocks `start..` with each layer's attention context, honouring `stop_after`; the final
    /// norm when the whole stack ran.
    fn run_blocks<'a>(
        &self,
        start: usize,
        mut h: Tensor<B, 3>,
        iv: &Interventions<B>,
        ctx: impl Fn(usize) -> AttnCtx<'a, B>,
    ) -> Forward<B>
    where
        B: 'a,
    {
        let c = &self.config;
        let mut captured = HashMap::new();
        for l in start..c.num_layers {
            h = self.block(l, h, &ctx(l), false, iv, &mut captured).0;
            if iv.stop_after == Some(l) {
                return Forward {
                    hidden: h,
                    captured,
                };
            }
        }
        Forward {
            hidden: self.norm.apply(h, c.norm_eps),
            captured,
        }
    }
}

impl<B: Backend> CausalLm<B> for Transformer<B> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> B::Device {
        self.embed.device()
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let d = self.config.hidden_size;
        let tokens = reshape(
            self.embed.clone().select(0, ids.reshape([b * s])),
            [b, s, d],
        );
        match &self.positions {
            Some(p) => tokens + p.clone().narrow(0, 0, s).unsqueeze_dim::<3>(0),
            None => tokens,
        }
    }

    fn forward_from(&self, start: usize, h: Tensor<B, 3>, iv: &Interventions<B>) -> Forward<B> {
        let c = &self.config;
        let seq = h.dims()[1];
        let device = h.device();
        let rope = rotary_tables::<B>(seq, c.head_dim, c.rotary_dim, c.rope_theta, &device);
        let mask = causal_mask::<B>(seq, c.num_heads / c.num_kv_heads, &device);
        self.run_blocks(start, h, iv, |_| AttnCtx::Full {
            rope: &rope,
            mask: &mask,
        })
    }

    fn unembed(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        self.lm_head.apply_rows(hidden)
    }

    fn batch(&self, seqs: &[Vec<u32>]) -> Tensor<B, 2, Int> {
        batch_ids(seqs, self.config.eos_token_id.unwrap_or(0), &self.device())
    }

    fn mlp_out(&self, layer: usize) -> Tensor<B, 2> {
        self.blocks[layer].down.w.clone()
    }

    fn set_mlp_out(&mut self, layer: usize, w: Tensor<B, 2>) {
        assert_eq!(
            w.dims(),
            self.blocks[layer].down.w.dims(),
            "set_mlp_out: shape mismatch"
        );
        self.blocks[layer].down.set(w);
    }

    fn attn_out(&self, layer: usize) -> Tensor<B, 2> {
        self.blocks[layer].wo.w.clone()
    }

    fn set_attn_out(&mut self, layer: usize, w: Tensor<B, 2>) {
        assert_eq!(
            w.dims(),
            self.blocks[layer].wo.w.dims(),
            "set_attn_out: shape mismatch"
        );
        self.blocks[layer].wo.set(w);
    }
}

#[cfg(test)]
mod tests {
    use super::transpose_host;

    #[test]
    fn tiled_transpose_moves_every_value() {
        // Shapes around the tile width, a partial last tile and an empty one.
        for (r, c) in [(3, 130), (64, 64), (1, 1), (129, 7), (0, 5)] {
            let data: Vec<f32> = (0..r * c).map(|x| x as f32).collect();
            let (shape, t) = transpose_host(&[r, c], &data);
            assert_eq!(shape, vec![c, r]);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], data[i * c + j], "({r}×{c}) at ({i}, {j})");
                }
            }
        }
    }
}
