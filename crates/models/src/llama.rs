//! The Llama family (Llama-2, SmolLM2, Mistral-style GQA): RMSNorm, rotary embeddings in
//! transformers' rotate-half layout, grouped-query attention, SwiGLU MLP, no biases.

use burn::tensor::backend::Backend;

use crate::config::ModelConfig;
use crate::load::WeightSource;
use crate::transformer::{embeddings, proj, vector, Block, Layout, Loaded, Norm, Transformer};

pub fn load<B: Backend>(c: ModelConfig, src: &dyn WeightSource, device: &B::Device) -> Loaded<B> {
    let (d, ff) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let (embed, lm_head) = embeddings(
        src,
        &c,
        "model.embed_tokens.weight",
        "lm_head",
        false,
        device,
    )?;
    let linear = |name: String, dims| proj(src, &name, dims, Layout::OutIn, false, device);
    let mut blocks = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        blocks.push(Block {
            attn_norm: Norm::Rms(vector(
                src,
                &format!("{p}.input_layernorm.weight"),
                d,
                device,
            )?),
            wq: linear(format!("{p}.self_attn.q_proj"), [d, q])?,
            wk: linear(format!("{p}.self_attn.k_proj"), [d, kv])?,
            wv: linear(format!("{p}.self_attn.v_proj"), [d, kv])?,
            wo: linear(format!("{p}.self_attn.o_proj"), [q, d])?,
            mlp_norm: Some(Norm::Rms(vector(
                src,
                &format!("{p}.post_attention_layernorm.weight"),
                d,
                device,
            )?)),
            gate: Some(linear(format!("{p}.mlp.gate_proj"), [d, ff])?),
            up: linear(format!("{p}.mlp.up_proj"), [d, ff])?,
            down: linear(format!("{p}.mlp.down_proj"), [ff, d])?,
        });
    }
    Ok(Transformer {
        norm: Norm::Rms(vector(src, "model.norm.weight", d, device)?),
        config: c,
        embed,
        positions: None,
        blocks,
        lm_head,
    })
}
