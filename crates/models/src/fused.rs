//! Llama's element-wise chains as single passes on burn-ndarray: SwiGLU (`silu(gate) * up`),
//! RMSNorm and the rotary embedding, forward and backward. Burn 0.21 runs each primitive op of
//! these chains as its own pass over a fresh array (SiLU alone is five going forward and more
//! coming back), on one thread; on SmolLM2's ROME-shaped step the SiLU chain alone cost about
//! 10 % of the step (benchmarks/README.md). The forward passes repeat the primitive ops'
//! arithmetic element by element, in the same order, so they give the same values to the bit
//! as [`crate::layers::silu`], [`crate::layers::rms_norm_ops`] and
//! [`crate::layers::rotary_ops`]; the backward passes are the closed-form derivatives, which
//! agree with Burn's chain to rounding (the tests below bound both). [`reshape`] gives a
//! row-major array its new shape without the copy Burn's reshape makes. `KEDIT_CPU_FUSED=off`
//! runs the primitive ops instead, to compare.
//!
//! Only for burn-ndarray (`Cpu`) and `Autodiff<Cpu>`; every other backend, a norm weight that
//! needs a gradient, or operands of different shapes get `Err` with the operands back and the
//! caller runs the primitive ops.

use std::any::TypeId;

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::NoCheckpointing},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    NodeId,
};
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, ops::FloatTensor, DType, Tensor};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArrayView1, ArrayViewD, Zip};

use crate::kernel::{cast, uncast};
use crate::Cpu;

type Ad = Autodiff<Cpu>;

/// `KEDIT_CPU_FUSED=off`: the primitive ops instead (benchmarks/README.md compares both).
pub fn off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("KEDIT_CPU_FUSED").is_ok_and(|v| v == "off"))
}

enum Path {
    Plain,
    Autodiff,
    Neither,
}

fn path<B: Backend>() -> Path {
    let b = TypeId::of::<B>();
    if off() {
        Path::Neither
    } else if b == TypeId::of::<Cpu>() {
        Path::Plain
    } else if b == TypeId::of::<Ad>() {
        Path::Autodiff
    } else {
        Path::Neither
    }
}

fn f32_view(t: &FloatTensor<Cpu>) -> ArrayViewD<'_, f32> {
    match t {
        NdArrayTensor::F32(s) => s.view(),
        _ => unreachable!("checked f32 before the call"),
    }
}

fn tensor(a: ndarray::ArrayD<f32>) -> FloatTensor<Cpu> {
    NdArrayTensor::from(a.into_shared())
}

/// `silu(gate) * up`, as [`crate::layers::silu`] computes SiLU: `g / (e^-g + 1) * u`.
#[allow(clippy::type_complexity)]
pub fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let fits = gate.dims() == up.dims() && gate.dtype() == DType::F32 && up.dtype() == DType::F32;
    match path::<B>() {
        Path::Plain if fits => {
            let y = swiglu_forward(&cast::<B, Cpu, D>(gate), &cast::<B, Cpu, D>(up));
            Ok(uncast::<Cpu, B, D>(y))
        }
        Path::Autodiff if fits => {
            let (g, u) = (cast::<B, Ad, D>(gate), cast::<B, Ad, D>(up));
            let y = match SwiGlu
                .prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let (y, sigma) = swiglu_forward_keeping_sigma(&g.primitive, &u.primitive);
                    let state = (prep.checkpoint(&g), prep.checkpoint(&u), sigma);
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(swiglu_forward(&g.primitive, &u.primitive)),
            };
            Ok(uncast::<Ad, B, D>(y))
        }
        _ => Err((gate, up)),
    }
}

fn swiglu_forward(gate: &FloatTensor<Cpu>, up: &FloatTensor<Cpu>) -> FloatTensor<Cpu> {
    let y = Zip::from(&f32_view(gate))
        .and(&f32_view(up))
        .map_collect(|&g, &u| g / ((-g).exp() + 1.0) * u);
    tensor(y)
}

/// [`swiglu_forward`], also keeping `σ(g) = 1 / (e^-g + 1)` for the backward pass, which then
/// needs no exponential of its own (the exponentials were most of this op's time).
fn swiglu_forward_keeping_sigma(
    gate: &FloatTensor<Cpu>,
    up: &FloatTensor<Cpu>,
) -> (FloatTensor<Cpu>, FloatTensor<Cpu>) {
    let g = f32_view(gate);
    let mut sigma = ndarray::ArrayD::<f32>::zeros(g.raw_dim());
    let y = Zip::from(&g)
        .and(&f32_view(up))
        .and(&mut sigma)
        .map_collect(|&g, &u, s| {
            let d = (-g).exp() + 1.0;
            *s = 1.0 / d;
            g / d * u
        });
    (tensor(y), tensor(sigma))
}

#[derive(Debug)]
struct SwiGlu;

impl Backward<Cpu, 2> for SwiGlu {
    /// The gate and the up projection (each gradient needs both), and σ(gate).
    type State = (NodeId, NodeId, FloatTensor<Cpu>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let gate: FloatTensor<Cpu> = ckpt.retrieve_node_output(ops.state.0);
        let up: FloatTensor<Cpu> = ckpt.retrieve_node_output(ops.state.1);
        let dy = grads.consume::<Cpu>(&ops.node);
        let (g, u, dy) = (f32_view(&gate), f32_view(&up), f32_view(&dy));
        let sigma = f32_view(&ops.state.2);
        let [for_gate, for_up] = ops.parents;
        // d silu(g)/dg = σ(1 + g(1 − σ)); d(silu(g)·u)/du = silu(g) = g·σ.
        let (dg, du) = match (&for_gate, &for_up) {
            (Some(_), Some(_)) => {
                let mut du = ndarray::ArrayD::<f32>::zeros(g.raw_dim());
                let dg = Zip::from(&g)
                    .and(&u)
                    .and(&dy)
                    .and(&sigma)
                    .and(&mut du)
                    .map_collect(|&g, &u, &dy, &s, du| {
                        *du = dy * g * s;
                        dy * u * s * (1.0 + g * (1.0 - s))
                    });
                (Some(dg), Some(du))
            }
            (Some(_), None) => {
                let dg = Zip::from(&g)
                    .and(&u)
                    .and(&dy)
                    .and(&sigma)
                    .map_collect(|&g, &u, &dy, &s| dy * u * s * (1.0 + g * (1.0 - s)));
                (Some(dg), None)
            }
            (None, Some(_)) => {
                let du = Zip::from(&g)
                    .and(&dy)
                    .and(&sigma)
                    .map_collect(|&g, &dy, &s| dy * g * s);
                (None, Some(du))
            }
            (None, None) => (None, None),
        };
        if let (Some(node), Some(dg)) = (for_gate, dg) {
            grads.register::<Cpu>(node.id, tensor(dg));
        }
        if let (Some(node), Some(du)) = (for_up, du) {
            grads.register::<Cpu>(node.id, tensor(du));
        }
    }
}

/// Llama's RMSNorm over the last axis of `x: [batch, seq, d]`, as [`crate::layers::rms_norm`]
/// computes it: `x · 1/sqrt(Σx²/d + eps) · w`. `Err` when `w` needs a gradient (no method here
/// trains a norm weight; the primitive ops then give it one).
#[allow(clippy::type_complexity)]
pub fn rms_norm<B: Backend>(
    x: Tensor<B, 3>,
    w: &Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, 3>, Tensor<B, 3>> {
    let d = x.dims()[2];
    let fits = w.dims() == [d] && x.dtype() == DType::F32 && w.dtype() == DType::F32;
    match path::<B>() {
        Path::Plain if fits => {
            let y = rms_forward(&cast::<B, Cpu, 3>(x), &cast::<B, Cpu, 1>(w.clone()), eps);
            Ok(uncast::<Cpu, B, 3>(y))
        }
        Path::Autodiff if fits => {
            let w = cast::<B, Ad, 1>(w.clone());
            if w.is_tracked() {
                return Err(x);
            }
            let x = cast::<B, Ad, 3>(x);
            let y = rms_forward(&x.primitive, &w.primitive, eps);
            let op = RmsNorm {
                w: w.primitive,
                eps,
            };
            let y = match op
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = prep.checkpoint(&x);
                    prep.finish(state, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(uncast::<Ad, B, 3>(y))
        }
        _ => Err(x),
    }
}

/// `1/sqrt(Σx²/d + eps)` of one row, rounded as Burn's ops round it: the squares summed by
/// ndarray's lane sum (its unrolled fold, as `mean_dim` runs it), then divided, shifted, rooted
/// and inverted in f32.
fn inv_rms(row: &[f32], squares: &mut [f32], eps: f32) -> f32 {
    for (s, &v) in squares.iter_mut().zip(row) {
        *s = v * v;
    }
    let mean = ArrayView1::from(&*squares).sum() / row.len() as f32;
    1.0 / (mean + eps).sqrt()
}

/// The rows of `t` (last axis) as one slice in row-major order, copied only when `t` does not
/// already lie that way.
fn row_major<'a>(t: &'a FloatTensor<Cpu>) -> std::borrow::Cow<'a, [f32]> {
    let v = f32_view(t);
    match v.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.as_standard_layout().iter().copied().collect()),
    }
}

fn shaped(like: &FloatTensor<Cpu>, data: Vec<f32>) -> FloatTensor<Cpu> {
    let shape = f32_view(like).raw_dim();
    tensor(ndarray::ArrayD::from_shape_vec(shape, data).expect("same element count"))
}

fn rms_forward(x: &FloatTensor<Cpu>, w: &FloatTensor<Cpu>, eps: f64) -> FloatTensor<Cpu> {
    let (xs, w) = (row_major(x), row_major(w));
    let d = w.len();
    let mut y = vec![0f32; xs.len()];
    let mut squares = vec![0f32; d];
    for (xr, yr) in xs.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let r = inv_rms(xr, &mut squares, eps as f32);
        for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(w.iter()) {
            *y = x * r * w;
        }
    }
    shaped(x, y)
}

#[derive(Debug)]
struct RmsNorm {
    w: FloatTensor<Cpu>,
    eps: f64,
}

impl Backward<Cpu, 1> for RmsNorm {
    /// The input.
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let x: FloatTensor<Cpu> = ckpt.retrieve_node_output(ops.state);
        let dy = grads.consume::<Cpu>(&ops.node);
        let [Some(node)] = ops.parents else { return };
        let (xs, dys, w) = (row_major(&x), row_major(&dy), row_major(&self.w));
        let d = w.len();
        let mut dx = vec![0f32; xs.len()];
        let mut scratch = vec![0f32; d];
        // y = x·r·w, r = (Σx²/d + eps)^-½: dx = r·(dy·w) − x·r³·Σ(dy·w·x)/d.
        for ((xr, dyr), dxr) in xs
            .chunks_exact(d)
            .zip(dys.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let r = inv_rms(xr, &mut scratch, self.eps as f32);
            for (((s, &x), &dy), &w) in scratch.iter_mut().zip(xr).zip(dyr).zip(w.iter()) {
                *s = dy * w * x;
            }
            let c = r * r * r * (ArrayView1::from(&scratch[..]).sum() / d as f32);
            for (((dx, &x), &dy), &w) in dxr.iter_mut().zip(xr).zip(dyr).zip(w.iter()) {
                *dx = r * (dy * w) - x * c;
            }
        }
        grads.register::<Cpu>(node.id, shaped(&x, dx));
    }
}

/// Rotary embeddings ("rotate half") on `x: [batch, heads, seq, head_dim]` with per-row tables
/// `cos, sin: [batch, seq, head_dim]`, as [`crate::layers::apply_rotary_rows`] computes them:
/// `x·cos + rotate_half(x)·sin`. `Err` when a table needs a gradient.
#[allow(clippy::type_complexity)]
pub fn rotary<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 3>,
    sin: &Tensor<B, 3>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [b, _, s, d] = x.dims();
    let fits = cos.dims() == [b, s, d]
        && sin.dims() == [b, s, d]
        && d % 2 == 0
        && [x.dtype(), cos.dtype(), sin.dtype()] == [DType::F32; 3];
    match path::<B>() {
        Path::Plain if fits => {
            let (c, sn) = (
                cast::<B, Cpu, 3>(cos.clone()),
                cast::<B, Cpu, 3>(sin.clone()),
            );
            let y = rotate(&cast::<B, Cpu, 4>(x), &c, &sn, false);
            Ok(uncast::<Cpu, B, 4>(y))
        }
        Path::Autodiff if fits => {
            let (c, sn) = (cast::<B, Ad, 3>(cos.clone()), cast::<B, Ad, 3>(sin.clone()));
            if c.is_tracked() || sn.is_tracked() {
                return Err(x);
            }
            let x = cast::<B, Ad, 4>(x);
            let op = Rotary {
                cos: c.primitive,
                sin: sn.primitive,
            };
            let y = rotate(&x.primitive, &op.cos, &op.sin, false);
            let y = op
                .prepare::<NoCheckpointing>([x.node.clone()])
                .compute_bound()
                .stateless(y);
            Ok(uncast::<Ad, B, 4>(y))
        }
        _ => Err(x),
    }
}

/// `x·cos + rotate_half(x)·sin` with `rotate_half([x1, x2]) = [−x2, x1]`, into a new row-major
/// array; with `transpose`, that linear map's transpose (the backward pass, on `dy`):
/// `[x1·cos1 + x2·sin2, x2·cos2 − x1·sin1]`.
fn rotate(
    x: &FloatTensor<Cpu>,
    cos: &FloatTensor<Cpu>,
    sin: &FloatTensor<Cpu>,
    transpose: bool,
) -> FloatTensor<Cpu> {
    let x = f32_view(x)
        .into_dimensionality::<ndarray::Ix4>()
        .expect("rank 4");
    let cos = f32_view(cos)
        .into_dimensionality::<ndarray::Ix3>()
        .expect("rank 3");
    let sin = f32_view(sin)
        .into_dimensionality::<ndarray::Ix3>()
        .expect("rank 3");
    let (nb, nh, ns, d) = x.dim();
    let half = d / 2;
    let mut y = ndarray::Array4::<f32>::zeros((nb, nh, ns, d));
    for ((bi, hi, si), yr) in (0..nb)
        .flat_map(|b| (0..nh).flat_map(move |h| (0..ns).map(move |s| (b, h, s))))
        .zip(y.as_slice_mut().expect("new array").chunks_exact_mut(d))
    {
        let xr = x.slice(ndarray::s![bi, hi, si, ..]);
        let (c, sn) = (
            cos.slice(ndarray::s![bi, si, ..]),
            sin.slice(ndarray::s![bi, si, ..]),
        );
        for i in 0..half {
            let (j, x1, x2) = (i + half, xr[i], xr[i + half]);
            // Burn's order going forward: x·cos, then (−x2)·sin or x1·sin, then the sum.
            (yr[i], yr[j]) = if transpose {
                (x1 * c[i] + x2 * sn[j], x2 * c[j] + (-x1) * sn[i])
            } else {
                (x1 * c[i] + (-x2) * sn[i], x2 * c[j] + x1 * sn[j])
            };
        }
    }
    tensor(y.into_dyn())
}

#[derive(Debug)]
struct Rotary {
    cos: FloatTensor<Cpu>,
    sin: FloatTensor<Cpu>,
}

impl Backward<Cpu, 1> for Rotary {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Cpu>(&ops.node);
        let [Some(node)] = ops.parents else { return };
        // y = x·cos + R(x)·sin is linear in x: dx = dy·cos + Rᵀ(dy·sin).
        grads.register::<Cpu>(node.id, rotate(&dy, &self.cos, &self.sin, true));
    }
}

/// `x` reshaped without a copy when its elements lie in row-major order. Burn 0.21's reshape
/// on burn-ndarray always copies (it turns ndarray's borrowed view into a fresh array), and
/// every projection reshapes its input and output, going forward and coming back.
pub fn reshape<B: Backend, const D1: usize, const D2: usize>(
    x: Tensor<B, D1>,
    shape: [usize; D2],
) -> Result<Tensor<B, D2>, Tensor<B, D1>> {
    let fits = x.dtype() == DType::F32
        && x.dims().iter().product::<usize>() == shape.iter().product::<usize>();
    match path::<B>() {
        Path::Plain if fits => match view_as(cast::<B, Cpu, D1>(x.clone()), &shape) {
            Some(y) => Ok(uncast::<Cpu, B, D2>(y)),
            None => Err(x),
        },
        Path::Autodiff if fits => {
            let xa = cast::<B, Ad, D1>(x.clone());
            let Some(y) = view_as(xa.primitive.clone(), &shape) else {
                return Err(x);
            };
            let op = Reshape(x.dims().to_vec());
            let y = op
                .prepare::<NoCheckpointing>([xa.node.clone()])
                .compute_bound()
                .stateless(y);
            Ok(uncast::<Ad, B, D2>(y))
        }
        _ => Err(x),
    }
}

/// The same buffer under `shape`, when the array is row-major; `None` otherwise.
fn view_as(x: FloatTensor<Cpu>, shape: &[usize]) -> Option<FloatTensor<Cpu>> {
    let NdArrayTensor::F32(storage) = x else {
        return None;
    };
    if !storage.view().is_standard_layout() {
        return None;
    }
    let a = storage.into_shared();
    Some(NdArrayTensor::from(
        a.into_shape_with_order(ndarray::IxDyn(shape)).ok()?,
    ))
}

#[derive(Debug)]
struct Reshape(Vec<usize>);

impl Backward<Cpu, 1> for Reshape {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Cpu>(&ops.node);
        let [Some(node)] = ops.parents else { return };
        let dx = match view_as(dy.clone(), &self.0) {
            Some(dx) => dx,
            None => {
                let shape = burn::tensor::Shape::from(self.0);
                <Cpu as burn::tensor::ops::FloatTensorOps<Cpu>>::float_reshape(dy, shape)
            }
        };
        grads.register::<Cpu>(node.id, dx);
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;

    use super::*;
    use crate::layers::{rms_norm_ops, rotary_ops, silu};

    /// Values in [-scale/2, scale/2), deterministic.
    fn vals(len: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let u = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as f32;
                (u / u32::MAX as f32 - 0.5) * scale
            })
            .collect()
    }

    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// Largest |a − b| over the largest |b|.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        diff / scale
    }

    const SHAPE: [usize; 3] = [2, 5, 48];

    fn t3<B: Backend>(seed: u32, scale: f32) -> Tensor<B, 3> {
        let n = SHAPE.iter().product();
        Tensor::from_data(
            TensorData::new(vals(n, seed, scale), SHAPE),
            &Default::default(),
        )
    }

    /// Tracked or not, as asked.
    fn leaf(t: Tensor<Ad, 3>, tracked: bool) -> Tensor<Ad, 3> {
        if tracked {
            t.require_grad()
        } else {
            t
        }
    }

    #[test]
    fn swiglu_is_the_primitive_ops_to_the_bit_and_its_gradients_to_rounding() {
        // Gates out to ±40: e^-g overflows to inf for the most negative ones.
        let (g, u) = (t3::<Cpu>(1, 80.0), t3::<Cpu>(2, 4.0));
        let fused = swiglu(g.clone(), u.clone()).expect("Cpu takes the fused pass");
        assert_eq!(host(fused), host(silu(g.clone()) * u.clone()));
        let (gt, ut) = (g.clone().swap_dims(0, 1), u.clone().swap_dims(0, 1));
        let fused = swiglu(gt.clone(), ut.clone()).expect("Cpu takes the fused pass");
        assert_eq!(host(fused), host(silu(gt) * ut));
        // Mismatched shapes and other backends are declined.
        assert!(swiglu(g.clone().narrow(2, 0, 4), u.clone()).is_err());

        let r = t3::<Ad>(3, 2.0);
        for (tg, tu) in [(true, true), (true, false), (false, true)] {
            let (xg, xu) = (leaf(t3(1, 80.0), tg), leaf(t3(2, 4.0), tu));
            let (yg, yu) = (leaf(t3(1, 80.0), tg), leaf(t3(2, 4.0), tu));
            let got = swiglu(xg.clone(), xu.clone()).expect("Autodiff<Cpu> takes it");
            let want = silu(yg.clone()) * yu.clone();
            assert_eq!(host(got.clone()), host(want.clone()));
            let (g_got, g_want) = (
                (got * r.clone()).sum().backward(),
                (want * r.clone()).sum().backward(),
            );
            for (x, y, tracked, name) in [(&xg, &yg, tg, "gate"), (&xu, &yu, tu, "up")] {
                match (x.grad(&g_got), y.grad(&g_want)) {
                    // The closed form rounds differently from the chain of primitive ops.
                    (Some(a), Some(b)) => {
                        let e = rel(&host(a), &host(b));
                        assert!(e < 1e-6, "∂/∂{name}: relative error {e}");
                    }
                    (None, None) => assert!(!tracked, "{name} tracked but no gradient"),
                    _ => panic!("∂/∂{name}: one side has a gradient, the other not"),
                }
            }
        }
    }

    #[test]
    fn rms_norm_is_the_primitive_ops_to_the_bit_and_its_gradient_to_rounding() {
        let dev = Default::default();
        let w = Tensor::<Cpu, 1>::from_data(TensorData::new(vals(48, 4, 3.0), [48]), &dev);
        let x = t3::<Cpu>(5, 6.0);
        let fused = rms_norm(x.clone(), &w, 1e-5).expect("Cpu takes the fused pass");
        assert_eq!(host(fused), host(rms_norm_ops(x.clone(), &w, 1e-5)));
        // Rows that do not lie in row-major order.
        let xt = x.swap_dims(0, 1);
        let fused = rms_norm(xt.clone(), &w, 1e-5).expect("Cpu takes the fused pass");
        assert_eq!(host(fused), host(rms_norm_ops(xt, &w, 1e-5)));

        let wa = Tensor::<Ad, 1>::from_inner(w);
        let r = t3::<Ad>(6, 2.0);
        let (xa, xb) = (leaf(t3(5, 6.0), true), leaf(t3(5, 6.0), true));
        let got = rms_norm(xa.clone(), &wa, 1e-5).expect("Autodiff<Cpu> takes it");
        let want = rms_norm_ops(xb.clone(), &wa, 1e-5);
        assert_eq!(host(got.clone()), host(want.clone()));
        let a = host(xa.grad(&(got * r.clone()).sum().backward()).unwrap());
        let b = host(xb.grad(&(want * r.clone()).sum().backward()).unwrap());
        let e = rel(&a, &b);
        assert!(e < 1e-6, "∂/∂x: relative error {e}");
        // A norm weight that needs a gradient is left to the primitive ops.
        assert!(rms_norm(t3::<Ad>(5, 6.0), &wa.require_grad(), 1e-5).is_err());
    }

    #[test]
    fn rotary_is_the_primitive_ops_to_the_bit_and_its_gradient_to_rounding() {
        // x as the model makes it: [b, seq, heads, hd] with heads swapped forward (not row-major).
        let x = |seed| t3::<Ad>(seed, 4.0).reshape([2, 5, 4, 12]).swap_dims(1, 2);
        // Random tables whose halves differ, so that a transpose mixing them up is caught; the
        // sine table broadcast over the batch, as apply_rotary expands it.
        let cos = t3::<Ad>(7, 2.0).narrow(2, 0, 12);
        let sin = t3::<Ad>(8, 2.0)
            .narrow(0, 0, 1)
            .narrow(2, 0, 12)
            .expand([2, 5, 12]);
        let plain = rotary(x(9).inner(), &cos.clone().inner(), &sin.clone().inner())
            .expect("Cpu takes the fused pass");
        let want = rotary_ops(x(9).inner(), &cos.clone().inner(), &sin.clone().inner());
        assert_eq!(host(plain), host(want));

        let r = t3::<Ad>(10, 2.0).reshape([2, 4, 5, 12]);
        let (xa, xb) = (x(9).require_grad(), x(9).require_grad());
        let got = rotary(xa.clone(), &cos, &sin).expect("Autodiff<Cpu> takes it");
        let want = rotary_ops(xb.clone(), &cos, &sin);
        assert_eq!(host(got.clone()), host(want.clone()));
        let a = host(xa.grad(&(got * r.clone()).sum().backward()).unwrap());
        let b = host(xb.grad(&(want * r).sum().backward()).unwrap());
        let e = rel(&a, &b);
        assert!(e < 1e-6, "∂/∂x: relative error {e}");
        // Tables that need a gradient are left to the primitive ops.
        assert!(rotary(x(9), &cos.require_grad(), &sin).is_err());
    }

    #[test]
    fn reshape_shares_the_buffer_safely_and_passes_gradients_back() {
        let x = t3::<Cpu>(11, 2.0);
        let y = reshape(x.clone(), [10, 48]).expect("row-major: no copy");
        assert_eq!(host(y.clone()), host(x.clone()));
        let ptr = |t: FloatTensor<Cpu>| f32_view(&t).as_ptr();
        let (px, py) = (
            ptr(x.clone().into_primitive().tensor()),
            ptr(y.clone().into_primitive().tensor()),
        );
        assert_eq!(px, py, "the same buffer");
        // Burn's in-place ops must not write through the shared buffer into `x`.
        let before = host(x.clone());
        let _z = y.add_scalar(1.0).mul_scalar(2.0);
        assert_eq!(host(x.clone()), before);
        // Not row-major: declined (Burn's reshape copies it).
        assert!(reshape(x.clone().swap_dims(0, 1), [10, 48]).is_err());

        let r = Tensor::<Ad, 2>::from_inner(t3::<Cpu>(12, 2.0).reshape([10, 48]));
        let (xa, xb) = (
            t3::<Ad>(11, 2.0).require_grad(),
            t3::<Ad>(11, 2.0).require_grad(),
        );
        let got = reshape(xa.clone(), [10, 48]).expect("Autodiff<Cpu> takes it");
        let want = xb.clone().reshape([10, 48]);
        let a = host(xa.grad(&(got * r.clone()).sum().backward()).unwrap());
        let b = host(xb.grad(&(want * r).sum().backward()).unwrap());
        assert_eq!(a, b);
    }
}
