//! GPT-J: one LayerNorm whose output feeds attention and the MLP in parallel
//! (`h + attn(ln(h)) + mlp(ln(h))`), rotary embeddings on the first `rotary_dim` dimensions of
//! each head in GPT-J's interleaved layout, GELU (tanh) MLP `fc_in`/`fc_out` with biases,
//! attention without biases, an untied `lm_head` with a bias.

use burn::tensor::backend::Backend;

use crate::config::ModelConfig;
use crate::load::WeightSource;
use crate::transformer::{
    embeddings, layer_norm_of, proj, read, transpose_host, upload, Block, Layout, Loaded, Proj,
    Transformer,
};

pub fn load<B: Backend>(c: ModelConfig, src: &dyn WeightSource, device: &B::Device) -> Loaded<B> {
    let (d, ff) = (c.hidden_size, c.intermediate_size);
    let (embed, lm_head) = embeddings(src, &c, "transformer.wte.weight", "lm_head", true, device)?;
    let linear = |name: String, dims, bias| proj(src, &name, dims, Layout::OutIn, bias, device);
    let order = rotary_order(c.head_dim, c.rotary_dim);
    let mut blocks = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("transformer.h.{i}");
        blocks.push(Block {
            attn_norm: layer_norm_of(src, &format!("{p}.ln_1"), d, device)?,
            wq: rotary_rows(src, &format!("{p}.attn.q_proj.weight"), &c, &order, device)?,
            wk: rotary_rows(src, &format!("{p}.attn.k_proj.weight"), &c, &order, device)?,
            wv: linear(format!("{p}.attn.v_proj"), [d, d], false)?,
            wo: linear(format!("{p}.attn.out_proj"), [d, d], false)?,
            mlp_norm: None,
            gate: None,
            up: linear(format!("{p}.mlp.fc_in"), [d, ff], true)?,
            down: linear(format!("{p}.mlp.fc_out"), [ff, d], true)?,
        });
    }
    Ok(Transformer {
        norm: layer_norm_of(src, "transformer.ln_f", d, device)?,
        config: c,
        embed,
        positions: None,
        blocks,
        lm_head,
    })
}

/// Where each output dimension of a head comes from so that GPT-J's interleaved rotary becomes
/// the shared rotate-half rotary: pair `(2i, 2i+1)` moves to `(i, i + head_dim/2)`, and the
/// dimensions past `rotary_dim` fill the rest of each half in order (they do not rotate). Queries
/// and keys are permuted alike, so every attention score is unchanged.
fn rotary_order(head_dim: usize, rotary_dim: usize) -> Vec<usize> {
    let (half, r) = (head_dim / 2, rotary_dim / 2);
    let pass = |k: usize| rotary_dim + k;
    let first = (0..half).map(|j| if j < r { 2 * j } else { pass(j - r) });
    let second = (0..half).map(|j| {
        if j < r {
            2 * j + 1
        } else {
            pass(half - r + j - r)
        }
    });
    first.chain(second).collect()
}

/// A query or key projection (`[d, d]`, `nn.Linear`) with each head's outputs reordered.
fn rotary_rows<B: Backend>(
    src: &dyn WeightSource,
    name: &str,
    c: &ModelConfig,
    order: &[usize],
    device: &B::Device,
) -> anyhow::Result<Proj<B>> {
    let d = c.hidden_size;
    let w = read(src, name, &[d, d])?;
    let hd = c.head_dim;
    let mut rows = Vec::with_capacity(d * d);
    for head in 0..c.num_heads {
        for &j in order {
            let r = head * hd + j;
            rows.extend_from_slice(&w[r * d..(r + 1) * d]);
        }
    }
    let (shape, data) = transpose_host(&[d, d], &rows);
    Ok(Proj::new(upload(shape, data, device), None))
}
