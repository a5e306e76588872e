//! Building blocks shared by the model families: projections, norms, rotary embeddings, attention.

use std::sync::OnceLock;

use burn::tensor::{activation, backend::Backend, Bool, Int, Tensor, TensorData};

/// Whether [`matmul`] splits its products on `B` (3xTF32): on burn-cuda, whose f32 matmul reads
/// TF32 (cubek's `Auto` strategy, 10 mantissa bits, on every card that has TF32 tensor cores, with
/// no setting to turn it off), unless `KEDIT_CUDA_MATMUL=tf32` or `KEDIT_CUDA_KERNEL` names a
/// kernel that computes in f32 ([`crate::kernel`]). Measured on an H200 (2026-12-04):
/// with plain TF32, greedy continuations of SmolLM2 and of the tiny GPT-2 part from the CPU's at
/// a near-tie; plain TF32 edits ran 2.6x faster than split ones.
pub fn splits_matmul<B: Backend>() -> bool {
    static TF32: OnceLock<bool> = OnceLock::new();
    if !std::any::type_name::<B>().contains("cubecl_cuda") {
        return false;
    }
    #[cfg(feature = "cuda-kernels")]
    if crate::kernel::chosen_is_f32() {
        return false;
    }
    !*TF32.get_or_init(|| std::env::var("KEDIT_CUDA_MATMUL").is_ok_and(|v| v == "tf32"))
}

/// Whether editors split the weights they hold constant once per edit
/// ([`crate::Transformer::presplit`]) rather than at every product: where [`splits_matmul`]
/// holds, unless `KEDIT_CUDA_PRESPLIT=off` (or `0`). The kept halves double the memory of the
/// weights from the edited layer on (a 7B model edited at layer 5: 27 GB of weights, 45 GB
/// more), which an 80 GB card may not have.
pub fn presplits_weights<B: Backend>() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    splits_matmul::<B>()
        && !*OFF.get_or_init(|| {
            std::env::var("KEDIT_CUDA_PRESPLIT").is_ok_and(|v| v == "off" || v == "0")
        })
}

/// One product: through kedit's kernel where it takes it ([`crate::kernel::chosen_matmul`]: a
/// rank-2 product on burn-ndarray, any product with `KEDIT_CUDA_KERNEL` set on burn-cuda), else
/// Burn's matmul.
fn product<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    match crate::kernel::chosen_matmul(a, b) {
        Ok(y) => y,
        Err((a, b)) => a.matmul(b),
    }
}

/// `a @ b` in f32 precision on every backend: [`split_matmul`] where the matmul reads TF32
/// ([`splits_matmul`]), one matmul elsewhere.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if splits_matmul::<B>() {
        split_matmul(a, b)
    } else {
        product(a, b)
    }
}

/// `a @ b` from three TF32 products ("3xTF32"). Each operand is split as `hi + lo` with `hi`
/// holding the top 11 significant bits (Veltkamp's split by 2^13 + 1: exactly representable in
/// TF32, and `lo = x - hi` is exact), and `a @ b ≈ (hi_a @ hi_b + hi_a @ lo_b) + lo_a @ hi_b`,
/// whose error is ~2^-22 relative against one TF32 product's ~2^-11. That is the arithmetic's
/// bound; on an H200 the products measured 1.9e-5–5.2e-5, growing with the inner dimension
/// (`matmul-probe`; benchmarks/README.md, "GPU"), as a CPU emulation of tensor cores that round
/// their accumulator toward zero reproduces (`benchmarks/tf32_accumulation.py`): the kernel's
/// accumulation, not the split, most likely sets the error there.
///
/// Under autodiff only `hi_a @ hi_b` carries gradients, straight through the split (`∂hi/∂x =
/// 1`); the two corrections are constants. The backward pass then runs one product per operand
/// that needs a gradient instead of three (the whole-graph gradient of the split is exactly the
/// same three terms with `lo_a`'s cancelling to zero, and `hi_a @ lo_b`'s 2^-12-relative share
/// is below the TF32 rounding of the incoming gradient either way): four products per
/// differentiated matmul instead of six, and none of the split's tensors kept for the backward.
pub fn split_matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (bh, bl) = tf32_split(b.clone().detach());
    let b_main = main_part(b, &bh, &bl);
    split_products(a, b_main, bh, bl)
}

/// [`split_matmul`] with `b` a constant already split (`hi`, `lo` from [`tf32_split`]): the same
/// products, so the same value to the bit, without the four elementwise passes over `b` that
/// splitting it costs at every call. For weights that do not change across many products (ROME's
/// v* steps), split once by [`crate::Transformer::presplit`]; `b` gets no gradient.
pub fn presplit_matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    hi: &Tensor<B, D>,
    lo: &Tensor<B, D>,
) -> Tensor<B, D> {
    split_products(a, hi.clone(), hi.clone(), lo.clone())
}

/// The operand of the product that carries gradients: `x - lo` is exactly `hi` (the split is
/// exact) with `x`'s gradient; without autodiff, `hi` itself, sparing a pass over `x`.
fn main_part<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    hi: &Tensor<B, D>,
    lo: &Tensor<B, D>,
) -> Tensor<B, D> {
    if B::ad_enabled(&x.device()) {
        x - lo.clone()
    } else {
        hi.clone()
    }
}

fn split_products<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b_main: Tensor<B, D>,
    bh: Tensor<B, D>,
    bl: Tensor<B, D>,
) -> Tensor<B, D> {
    let (ah, al) = tf32_split(a.clone().detach());
    let a_main = main_part(a, &ah, &al);
    product(a_main, b_main) + product(ah, bl) + product(al, bh)
}

/// `x` as `hi + lo`, exactly: `hi` holds the top 11 significant bits (representable in TF32).
pub fn tf32_split<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    // Separate f32 kernels (no fusion in this build), each rounding: the split is exact.
    let c = x.clone() * 8193.0;
    let hi = c.clone() - (c - x.clone());
    let lo = x - hi.clone();
    (hi, lo)
}

/// SiLU as `x / (1 + e^-x)`. Burn 0.21's `activation::silu`/`sigmoid` give gradients that are off
/// by ~1e-2 under `Autodiff` (found by the finite-difference test); these primitive ops are exact.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() / (x.neg().exp() + 1.0)
}

/// `x.reshape(shape)`, without a copy on burn-ndarray when `x` lies row-major ([`crate::fused`]).
pub fn reshape<B: Backend, const D1: usize, const D2: usize>(
    x: Tensor<B, D1>,
    shape: [usize; D2],
) -> Tensor<B, D2> {
    #[cfg(not(feature = "flex"))]
    let x = match crate::fused::reshape(x, shape) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x.reshape(shape)
}

/// `silu(gate) * up` (Llama's MLP): one fused pass on burn-ndarray ([`crate::fused`]), the
/// primitive ops elsewhere; the same values either way.
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(not(feature = "flex"))]
    let (gate, up) = match crate::fused::swiglu(gate, up) {
        Ok(y) => return y,
        Err(operands) => operands,
    };
    silu(gate) * up
}

/// LayerNorm over the last axis (GPT-2, GPT-J): biased variance, as torch computes it.
pub fn layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    w: &Tensor<B, 1>,
    b: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2);
    let x = x - mean;
    let var = x.clone().square().mean_dim(2);
    let x = x * (var + eps).sqrt().recip();
    x * w.clone().unsqueeze_dims::<3>(&[0, 1]) + b.clone().unsqueeze_dims::<3>(&[0, 1])
}

/// GELU with the tanh approximation (`gelu_new`, GPT-2 and GPT-J), from primitive ops.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// Llama's RMSNorm, computed as transformers does: `w * x / sqrt(mean(x²) + eps)`. One fused
/// pass on burn-ndarray ([`crate::fused`]), the same values as the primitive ops.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    #[cfg(not(feature = "flex"))]
    let x = match crate::fused::rms_norm(x, w, eps) {
        Ok(y) => return y,
        Err(x) => x,
    };
    rms_norm_ops(x, w, eps)
}

/// [`rms_norm`] as Burn's primitive ops, on any backend.
pub fn rms_norm_ops<B: Backend>(x: Tensor<B, 3>, w: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let var = x.clone().square().mean_dim(2);
    let x = x * (var + eps).sqrt().recip();
    x * w.clone().unsqueeze_dims::<3>(&[0, 1])
}

/// cos and sin tables `[seq, head_dim]` for positions `0..seq` in transformers' "rotate half"
/// layout (the two halves of a head hold the same frequencies). Only the first `rotary_dim / 2`
/// dimensions of each half rotate (frequencies `θ^(-2i/rotary_dim)`); the rest pass through
/// (cos 1, sin 0): GPT-J's partial rotary once its interleaved dimensions are reordered at load.
pub fn rotary_tables<B: Backend>(
    seq: usize,
    head_dim: usize,
    rotary_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let half = head_dim / 2;
    // transformers computes inv_freq and the angles in f32; do the same so that long positions
    // round the same way.
    let inv: Vec<Option<f32>> = (0..half)
        .map(|i| {
            (i < rotary_dim / 2)
                .then(|| 1.0 / (theta as f32).powf((2 * i) as f32 / rotary_dim as f32))
        })
        .collect();
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for p in 0..seq {
        // Both halves of the head repeat the same frequencies.
        for f in inv.iter().chain(&inv) {
            let a = f.map(|f| p as f32 * f);
            cos.push(a.map_or(1.0, f32::cos));
            sin.push(a.map_or(0.0, f32::sin));
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [seq, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [seq, head_dim]), device),
    )
}

/// Apply rotary embeddings to `x: [batch, heads, seq, head_dim]` with tables `[seq, head_dim]`.
pub fn apply_rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Tensor<B, 4> {
    let [b, _, s, d] = x.dims();
    let rows = |t: &Tensor<B, 2>| t.clone().unsqueeze_dim::<3>(0).expand([b, s, d]);
    apply_rotary_rows(x, &rows(cos), &rows(sin))
}

/// Rotary embeddings with a table per row: `x: [batch, heads, seq, head_dim]`,
/// `cos, sin: [batch, seq, head_dim]` (rows at different positions). One fused pass on
/// burn-ndarray ([`crate::fused`]), the same values as the primitive ops.
pub fn apply_rotary_rows<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 3>,
    sin: &Tensor<B, 3>,
) -> Tensor<B, 4> {
    #[cfg(not(feature = "flex"))]
    let x = match crate::fused::rotary(x, cos, sin) {
        Ok(y) => return y,
        Err(x) => x,
    };
    rotary_ops(x, cos, sin)
}

/// [`apply_rotary_rows`] as Burn's primitive ops, on any backend.
pub fn rotary_ops<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 3>,
    sin: &Tensor<B, 3>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.clone().unsqueeze_dim::<4>(1).expand([b, h, s, d]);
    let sin = sin.clone().unsqueeze_dim::<4>(1).expand([b, h, s, d]);
    x * cos + rotated * sin
}

/// Causal mask `[rows, seq]` (true = masked) for `groups` query heads stacked per key head.
pub fn causal_mask<B: Backend>(
    seq: usize,
    groups: usize,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let mut m = Vec::with_capacity(groups * seq * seq);
    for _ in 0..groups {
        for i in 0..seq {
            m.extend((0..seq).map(|j| j > i));
        }
    }
    Tensor::from_data(TensorData::new(m, [groups * seq, seq]), device)
}

/// Scaled dot-product attention with grouped keys: `q: [b, kv_heads, groups*seq, hd]`,
/// `k, v: [b, kv_heads, seq, hd]`. Query heads that share a key head are stacked along the row
/// axis so the keys are never copied.
pub fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 2, Bool>,
) -> Tensor<B, 4> {
    let [b, kvh, rows, _] = q.dims();
    let seq = k.dims()[2];
    let mask = mask
        .clone()
        .unsqueeze_dims::<4>(&[0, 1])
        .expand([b, kvh, rows, seq]);
    masked_attention(q, k, v, mask)
}

/// [`grouped_attention`] with a mask per row `[b, rows, seq]`.
pub fn grouped_attention_rows<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 3, Bool>,
) -> Tensor<B, 4> {
    let [b, kvh, rows, _] = q.dims();
    let seq = k.dims()[2];
    let mask = mask
        .clone()
        .unsqueeze_dim::<4>(1)
        .expand([b, kvh, rows, seq]);
    masked_attention(q, k, v, mask)
}

fn masked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 4, Bool>,
) -> Tensor<B, 4> {
    let hd = q.dims()[3];
    let scores = matmul(q, k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    matmul(activation::softmax(scores, 3), v)
}

/// Token ids of a right-padded batch.
pub fn batch_ids<B: Backend>(seqs: &[Vec<u32>], pad: u32, device: &B::Device) -> Tensor<B, 2, Int> {
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        ids.extend(s.iter().map(|&t| t as i64));
        ids.extend(std::iter::repeat_n(pad as i64, len - s.len()));
    }
    Tensor::from_data(TensorData::new(ids, [seqs.len(), len]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a TF32 tensor core reads of an f32: the top 10 mantissa bits (truncated, the
    /// pessimistic case; rounding to nearest is closer).
    fn tf32(x: f32) -> f32 {
        f32::from_bits(x.to_bits() & !0x1fff)
    }

    #[test]
    fn tf32_split_is_exact_and_three_tf32_products_reach_f32_precision() {
        let dev = Default::default();
        let n = 64;
        // A deterministic spread of magnitudes and signs.
        let vals = |seed: u32| -> Vec<f32> {
            (0..n * n)
                .map(|i| {
                    let t = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as f32;
                    (t / u32::MAX as f32 - 0.5) * 10f32.powi((i % 5) as i32 - 2)
                })
                .collect()
        };
        let (a, b) = (vals(1), vals(7));
        let t = |v: &[f32]| {
            Tensor::<crate::Cpu, 2>::from_data(TensorData::new(v.to_vec(), [n, n]), &dev)
        };
        let host = |x: Tensor<crate::Cpu, 2>| x.into_data().to_vec::<f32>().unwrap();
        let (ah, al) = tf32_split(t(&a));
        let (ah, al) = (host(ah), host(al));
        for ((x, h), l) in a.iter().zip(&ah).zip(&al) {
            assert_eq!(tf32(*h), *h, "hi of {x} is not TF32: {h}");
            assert_eq!(h + l, *x, "hi + lo of {x}");
        }
        let (bh, bl) = tf32_split(t(&b));
        let (bh, bl) = (host(bh), host(bl));
        // The products as a TF32 tensor core forms them (inputs read as TF32, f64 here for the
        // sums), against the exact product of the f32 inputs.
        let prod = |x: &[f32], y: &[f32], i: usize, j: usize| -> f64 {
            (0..n)
                .map(|k| tf32(x[i * n + k]) as f64 * tf32(y[k * n + j]) as f64)
                .sum()
        };
        let (mut err_split, mut err_tf32, mut norm) = (0f64, 0f64, 0f64);
        for i in 0..n {
            for j in 0..n {
                let exact: f64 = (0..n)
                    .map(|k| a[i * n + k] as f64 * b[k * n + j] as f64)
                    .sum();
                let split = prod(&ah, &bh, i, j) + prod(&ah, &bl, i, j) + prod(&al, &bh, i, j);
                err_split += (split - exact).powi(2);
                err_tf32 += (prod(&a, &b, i, j) - exact).powi(2);
                norm += exact * exact;
            }
        }
        let (e3, e1) = ((err_split / norm).sqrt(), (err_tf32 / norm).sqrt());
        // f32 rounding is 6e-8; one TF32 product ~1e-3 relative.
        assert!(e3 < 1e-6, "3xTF32 relative error {e3:e}");
        assert!(
            e1 > 1e-4,
            "plain TF32 relative error {e1:e}: the emulation reads full f32"
        );
    }

    /// Under autodiff, [`split_matmul`]'s value is the inference path's to the bit and its
    /// gradients are one product's, to within the weight's dropped low part (2^-12 relative).
    #[test]
    fn split_matmul_keeps_its_value_and_passes_gradients_straight_through() {
        type Ad = burn::backend::Autodiff<crate::Cpu>;
        let dev = Default::default();
        let (m, k, n) = (5, 7, 3);
        let vals = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    let t = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as f32;
                    t / u32::MAX as f32 - 0.5
                })
                .collect()
        };
        let (av, bv, rv) = (vals(m * k, 3), vals(k * n, 11), vals(m * n, 5));
        let host = |x: Tensor<crate::Cpu, 2>| x.into_data().to_vec::<f32>().unwrap();
        let t = |v: &[f32], s: [usize; 2]| {
            Tensor::<crate::Cpu, 2>::from_data(TensorData::new(v.to_vec(), s), &dev)
        };
        let plain = host(split_matmul(t(&av, [m, k]), t(&bv, [k, n])));
        let exact = host(t(&av, [m, k]).matmul(t(&bv, [k, n])));
        for (p, e) in plain.iter().zip(&exact) {
            assert!((p - e).abs() < 1e-6, "split {p} vs one product {e}");
        }
        // Both operands tracked (a weight being trained), then only the activation (a frozen
        // weight): the same value, and each tracked operand's gradient of sum(r ⊙ a @ b).
        for b_tracked in [true, false] {
            let a = Tensor::<Ad, 2>::from_inner(t(&av, [m, k])).require_grad();
            let b = Tensor::<Ad, 2>::from_inner(t(&bv, [k, n]));
            let b = if b_tracked { b.require_grad() } else { b };
            let r = Tensor::<Ad, 2>::from_inner(t(&rv, [m, n]));
            let y = split_matmul(a.clone(), b.clone());
            assert_eq!(
                host(y.clone().inner()),
                plain,
                "autodiff value, b tracked {b_tracked}"
            );
            let grads = (y * r.clone()).sum().backward();
            let ga = host(a.grad(&grads).expect("a's gradient"));
            let want_a = host(r.clone().inner().matmul(t(&bv, [k, n]).transpose()));
            let close = |g: &[f32], w: &[f32], what: &str| {
                let scale = w.iter().fold(0f32, |s, x| s.max(x.abs()));
                for (x, y) in g.iter().zip(w) {
                    assert!((x - y).abs() <= 1e-3 * scale, "{what}: {x} vs {y}");
                }
            };
            close(&ga, &want_a, "∂/∂a");
            match b.grad(&grads) {
                Some(gb) if b_tracked => {
                    let want_b = host(t(&av, [m, k]).transpose().matmul(r.inner()));
                    close(&host(gb), &want_b, "∂/∂b");
                }
                None if !b_tracked => {}
                g => panic!("b tracked {b_tracked}, gradient {:?}", g.is_some()),
            }
        }
    }

    /// A weight split once gives [`split_matmul`]'s value and activation gradient to the bit,
    /// in inference and under autodiff.
    #[test]
    fn presplit_matmul_is_split_matmul_to_the_bit() {
        type Ad = burn::backend::Autodiff<crate::Cpu>;
        let dev = Default::default();
        let (m, k, n) = (6, 9, 4);
        let vals = |len: usize, seed: u32| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    let t = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as f32;
                    (t / u32::MAX as f32 - 0.5) * 10f32.powi((i % 3) as i32 - 1)
                })
                .collect()
        };
        let (av, bv, rv) = (vals(m * k, 2), vals(k * n, 13), vals(m * n, 8));
        let t = |v: &[f32], s: [usize; 2]| {
            Tensor::<crate::Cpu, 2>::from_data(TensorData::new(v.to_vec(), s), &dev)
        };
        let bits = |x: Tensor<crate::Cpu, 2>| -> Vec<u32> {
            let v = x.into_data().to_vec::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        let (hi, lo) = tf32_split(t(&bv, [k, n]));
        let want = bits(split_matmul(t(&av, [m, k]), t(&bv, [k, n])));
        assert_eq!(bits(presplit_matmul(t(&av, [m, k]), &hi, &lo)), want);
        // The split is not a no-op on these values: `lo` carries bits.
        assert!(bits(lo.clone()).iter().any(|&x| x != 0));

        let run = |pre: bool| {
            let a = Tensor::<Ad, 2>::from_inner(t(&av, [m, k])).require_grad();
            let r = Tensor::<Ad, 2>::from_inner(t(&rv, [m, n]));
            let y = if pre {
                let (h, l) = (
                    Tensor::<Ad, 2>::from_inner(hi.clone()),
                    Tensor::<Ad, 2>::from_inner(lo.clone()),
                );
                presplit_matmul(a.clone(), &h, &l)
            } else {
                split_matmul(a.clone(), Tensor::from_inner(t(&bv, [k, n])))
            };
            let grads = (y.clone() * r).sum().backward();
            (bits(y.inner()), bits(a.grad(&grads).expect("a's gradient")))
        };
        let (y_pre, g_pre) = run(true);
        let (y_split, g_split) = run(false);
        assert_eq!(y_pre, want, "autodiff value");
        assert_eq!(y_split, want, "split_matmul's autodiff value");
        assert_eq!(g_pre, g_split, "∂/∂a");
    }

    #[test]
    fn matmul_is_one_product_on_the_cpu() {
        assert!(!splits_matmul::<crate::Cpu>());
        assert!(!splits_matmul::<burn::backend::Autodiff<crate::Cpu>>());
    }

    // A type-name test, no GPU needed: it fails if Burn renames the CUDA runtime.
    #[cfg(feature = "cuda")]
    #[test]
    fn matmul_is_split_on_cuda() {
        assert!(splits_matmul::<crate::Gpu>());
        assert!(splits_matmul::<burn::backend::Autodiff<crate::Gpu>>());
    }
}
