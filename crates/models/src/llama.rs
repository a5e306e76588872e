//! The Llama family (Llama-2, SmolLM2, Mistral-style GQA): RMSNorm, rotary embeddings in
//! transformers' rotate-half layout, grouped-query attention, SwiGLU MLP.

use std::collections::HashMap;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::config::ModelConfig;
use crate::layers::{
    apply_rotary, apply_rotary_rows, batch_ids, causal_mask, grouped_attention,
    grouped_attention_rows, linear, rms_norm, rotary_tables, silu,
};
use crate::load::WeightSource;
use crate::prefix::PrefixCache;
use crate::surface::{Forward, Interventions, Site};
use crate::{CausalLm, TensorMap};

/// One block. Linear weights are kept as `[d_in, d_out]` so that a forward is `x @ w` and the
/// matrices that editors rewrite are already keys-to-values.
#[derive(Debug, Clone)]
pub struct LlamaBlock<B: Backend> {
    pub attn_norm: Tensor<B, 1>,
    pub wq: Tensor<B, 2>,
    pub wk: Tensor<B, 2>,
    pub wv: Tensor<B, 2>,
    pub wo: Tensor<B, 2>,
    pub mlp_norm: Tensor<B, 1>,
    pub gate: Tensor<B, 2>,
    pub up: Tensor<B, 2>,
    pub down: Tensor<B, 2>,
}

#[derive(Debug, Clone)]
pub struct Llama<B: Backend> {
    pub config: ModelConfig,
    pub embed: Tensor<B, 2>,
    pub blocks: Vec<LlamaBlock<B>>,
    pub norm: Tensor<B, 1>,
    /// `[d_model, vocab]`; a copy of the transposed embedding when the embeddings are tied.
    pub lm_head: Tensor<B, 2>,
}

fn upload<B: Backend, const D: usize>(
    shape: Vec<usize>,
    data: Vec<f32>,
    device: &B::Device,
) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
fn transpose_host(shape: &[usize], data: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (r, c) = (shape[0], shape[1]);
    let mut out = vec![0f32; data.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = data[i * c + j];
        }
    }
    (vec![c, r], out)
}

fn load_linear<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let (shape, data) = src.tensor(name)?;
    if shape != [d_out, d_in] {
        bail!("tensor {name} has shape {shape:?}, expected [{d_out}, {d_in}]");
    }
    let (shape, data) = transpose_host(&shape, &data);
    Ok(upload(shape, data, device))
}

fn load_vector<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    d: usize,
    device: &B::Device,
) -> Result<Tensor<B, 1>> {
    let (shape, data) = src.tensor(name)?;
    if shape != [d] {
        bail!("tensor {name} has shape {shape:?}, expected [{d}]");
    }
    Ok(upload(shape, data, device))
}

impl<B: Backend> Llama<B> {
    pub fn load(config: ModelConfig, src: &dyn WeightSource, device: &B::Device) -> Result<Self> {
        let c = &config;
        let (d, ff, hd) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (embed_shape, embed_data) = src.tensor("model.embed_tokens.weight")?;
        if embed_shape != [c.vocab_size, d] {
            bail!(
                "tensor model.embed_tokens.weight has shape {embed_shape:?}, expected [{}, {d}]",
                c.vocab_size
            );
        }
        let lm_head = if src.has("lm_head.weight") && !c.tie_word_embeddings {
            load_linear(src, "lm_head.weight", d, c.vocab_size, device)?
        } else {
            let (s, t) = transpose_host(&embed_shape, &embed_data);
            upload(s, t, device)
        };
        let embed = upload(embed_shape, embed_data, device);
        let mut blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            blocks.push(LlamaBlock {
                attn_norm: load_vector(src, &format!("{p}.input_layernorm.weight"), d, device)?,
                wq: load_linear(
                    src,
                    &format!("{p}.self_attn.q_proj.weight"),
                    d,
                    c.num_heads * hd,
                    device,
                )?,
                wk: load_linear(
                    src,
                    &format!("{p}.self_attn.k_proj.weight"),
                    d,
                    c.num_kv_heads * hd,
                    device,
                )?,
                wv: load_linear(
                    src,
                    &format!("{p}.self_attn.v_proj.weight"),
                    d,
                    c.num_kv_heads * hd,
                    device,
                )?,
                wo: load_linear(
                    src,
                    &format!("{p}.self_attn.o_proj.weight"),
                    c.num_heads * hd,
                    d,
                    device,
                )?,
                mlp_norm: load_vector(
                    src,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                    device,
                )?,
                gate: load_linear(src, &format!("{p}.mlp.gate_proj.weight"), d, ff, device)?,
                up: load_linear(src, &format!("{p}.mlp.up_proj.weight"), d, ff, device)?,
                down: load_linear(src, &format!("{p}.mlp.down_proj.weight"), ff, d, device)?,
            });
        }
        let norm = load_vector(src, "model.norm.weight", d, device)?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
        })
    }

    /// The same weights on another backend (e.g. `Autodiff<B>`), tensor by tensor.
    pub fn map<B2: Backend>(&self, f: &impl TensorMap<B, B2>) -> Llama<B2> {
        Llama {
            config: self.config.clone(),
            embed: f.map(self.embed.clone()),
            norm: f.map(self.norm.clone()),
            lm_head: f.map(self.lm_head.clone()),
            blocks: self
                .blocks
                .iter()
                .map(|b| LlamaBlock {
                    attn_norm: f.map(b.attn_norm.clone()),
                    wq: f.map(b.wq.clone()),
                    wk: f.map(b.wk.clone()),
                    wv: f.map(b.wv.clone()),
                    wo: f.map(b.wo.clone()),
                    mlp_norm: f.map(b.mlp_norm.clone()),
                    gate: f.map(b.gate.clone()),
                    up: f.map(b.up.clone()),
                    down: f.map(b.down.clone()),
                })
                .collect(),
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
        let x = rms_norm(h.clone(), &w.attn_norm, c.norm_eps);
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = heads(linear(x.clone(), &w.wq, None), nh);
        let k = heads(linear(x.clone(), &w.wk, None), kvh);
        let v = heads(linear(x, &w.wv, None), kvh);
        // Query head i reads key head i / groups (transformers' repeat_kv): stack each group's
        // queries along the rows instead of copying keys.
        let (k, a) = match ctx {
            AttnCtx::Full { rope, mask } => {
                let q = apply_rotary(q, &rope.0, &rope.1).reshape([b, kvh, groups * s, hd]);
                let k = apply_rotary(k, &rope.0, &rope.1);
                (k.clone(), grouped_attention(q, k, v.clone(), mask))
            }
            AttnCtx::Suffix { rope, mask, kv } => {
                let q = apply_rotary_rows(q, &rope.0, &rope.1).reshape([b, kvh, groups * s, hd]);
                let k = apply_rotary_rows(k, &rope.0, &rope.1);
                let keys = Tensor::cat(vec![kv.0.clone(), k.clone()], 2);
                let values = Tensor::cat(vec![kv.1.clone(), v.clone()], 2);
                (k, grouped_attention_rows(q, keys, values, mask))
            }
        };
        let kv = keep_kv.then_some((k, v));
        let a = a
            .reshape([b, nh, s, hd])
            .swap_dims(1, 2)
            .reshape([b, s, nh * hd]);
        let a = iv.visit(l, Site::AttnOut, linear(a, &w.wo, None), captured);
        let h = h + a;
        let x = rms_norm(h.clone(), &w.mlp_norm, c.norm_eps);
        let gate = iv.visit(l, Site::MlpGate, linear(x.clone(), &w.gate, None), captured);
        let key = silu(gate) * linear(x, &w.up, None);
        let key = iv.visit(l, Site::MlpKey, key, captured);
        let m = iv.visit(l, Site::MlpOut, linear(key, &w.down, None), captured);
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
        let rope = rotary_tables::<B>(seq, c.head_dim, c.rope_theta, &device);
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
        let rope = cache.rotary(c.head_dim, c.rope_theta, &device);
        let mask = cache.mask(c.num_heads / c.num_kv_heads, &device);
        self.run_blocks(cache.start, h, iv, |l| AttnCtx::Suffix {
            rope: &rope,
            mask: &mask,
            kv: &cache.kv[l - cache.start],
        })
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
            hidden: rms_norm(h, &self.norm, c.norm_eps),
            captured,
        }
    }
}

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

impl<B: Backend> CausalLm<B> for Llama<B> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> B::Device {
        self.embed.device()
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        let d = self.config.hidden_size;
        self.embed
            .clone()
            .select(0, ids.reshape([b * s]))
            .reshape([b, s, d])
    }

    fn forward_from(&self, start: usize, h: Tensor<B, 3>, iv: &Interventions<B>) -> Forward<B> {
        let c = &self.config;
        let seq = h.dims()[1];
        let device = h.device();
        let rope = rotary_tables::<B>(seq, c.head_dim, c.rope_theta, &device);
        let mask = causal_mask::<B>(seq, c.num_heads / c.num_kv_heads, &device);
        self.run_blocks(start, h, iv, |_| AttnCtx::Full {
            rope: &rope,
            mask: &mask,
        })
    }

    fn unembed(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        hidden.matmul(self.lm_head.clone())
    }

    fn batch(&self, seqs: &[Vec<u32>]) -> Tensor<B, 2, Int> {
        batch_ids(seqs, self.config.eos_token_id.unwrap_or(0), &self.device())
    }

    fn mlp_out(&self, layer: usize) -> Tensor<B, 2> {
        self.blocks[layer].down.clone()
    }

    fn set_mlp_out(&mut self, layer: usize, w: Tensor<B, 2>) {
        assert_eq!(
            w.dims(),
            self.blocks[layer].down.dims(),
            "set_mlp_out: shape mismatch"
        );
        self.blocks[layer].down = w;
    }

    fn attn_out(&self, layer: usize) -> Tensor<B, 2> {
        self.blocks[layer].wo.clone()
    }

    fn set_attn_out(&mut self, layer: usize, w: Tensor<B, 2>) {
        assert_eq!(
            w.dims(),
            self.blocks[layer].wo.dims(),
            "set_attn_out: shape mismatch"
        );
        self.blocks[layer].wo = w;
    }
}
