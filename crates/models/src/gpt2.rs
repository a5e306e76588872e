//! GPT-2: learned absolute positions, LayerNorm before attention and before the MLP, one fused
//! `c_attn` projection for queries, keys and values, GELU (tanh) MLP, biases everywhere, output
//! tied to the token embedding. Its `Conv1D` weights are stored `[d_in, d_out]` already.

use burn::tensor::backend::Backend;

use crate::config::ModelConfig;
use crate::load::WeightSource;
use crate::transformer::{
    embeddings, layer_norm_of, proj, read, upload, Block, Layout, Loaded, Proj, Transformer,
};

pub fn load<B: Backend>(c: ModelConfig, src: &dyn WeightSource, device: &B::Device) -> Loaded<B> {
    let (d, ff) = (c.hidden_size, c.intermediate_size);
    // Hub checkpoints saved from `GPT2Model` name tensors without the `transformer.` prefix.
    let root = if src.has("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let (embed, lm_head) = embeddings(
        src,
        &c,
        &format!("{root}wte.weight"),
        "lm_head",
        false,
        device,
    )?;
    let wpe = format!("{root}wpe.weight");
    let positions = upload(
        vec![c.max_position_embeddings, d],
        read(src, &wpe, &[c.max_position_embeddings, d])?,
        device,
    );
    let conv = |name: String, dims| proj(src, &name, dims, Layout::InOut, true, device);
    let mut blocks = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("{root}h.{i}");
        let [wq, wk, wv] = split_qkv(src, &format!("{p}.attn.c_attn"), d, device)?;
        blocks.push(Block {
            attn_norm: layer_norm_of(src, &format!("{p}.ln_1"), d, device)?,
            wq,
            wk,
            wv,
            wo: conv(format!("{p}.attn.c_proj"), [d, d])?,
            mlp_norm: Some(layer_norm_of(src, &format!("{p}.ln_2"), d, device)?),
            gate: None,
            up: conv(format!("{p}.mlp.c_fc"), [d, ff])?,
            down: conv(format!("{p}.mlp.c_proj"), [ff, d])?,
        });
    }
    Ok(Transformer {
        norm: layer_norm_of(src, &format!("{root}ln_f"), d, device)?,
        config: c,
        embed,
        positions: Some(positions),
        blocks,
        lm_head,
    })
}

/// `c_attn` (`[d, 3d]` and `[3d]`) cut into the query, key and value projections.
fn split_qkv<B: Backend>(
    src: &dyn WeightSource,
    prefix: &str,
    d: usize,
    device: &B::Device,
) -> anyhow::Result<[Proj<B>; 3]> {
    let w = read(src, &format!("{prefix}.weight"), &[d, 3 * d])?;
    let b = read(src, &format!("{prefix}.bias"), &[3 * d])?;
    Ok(std::array::from_fn(|part| {
        let cols: Vec<f32> = w
            .chunks_exact(3 * d)
            .flat_map(|row| row[part * d..(part + 1) * d].iter().copied())
            .collect();
        Proj::new(
            upload(vec![d, d], cols, device),
            Some(upload(
                vec![d],
                b[part * d..(part + 1) * d].to_vec(),
                device,
            )),
        )
    }))
}
