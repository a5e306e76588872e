//! Products through a kernel kedit chooses rather than the one Burn launches. On burn-ndarray,
//! every product runs [`cpu::gemm`]: one GEMM per matrix on the arrays as they lie (no copy of a
//! transposed operand, no hop to a worker thread), which made a ROME edit of SmolLM2 1.6–1.8x
//! faster than Burn 0.21's matmul (benchmarks/README.md). On burn-cuda, in a
//! build with the `cuda-kernels` feature, `KEDIT_CUDA_KERNEL=<name>` runs every
//! [`crate::layers::matmul`] through that cubek kernel (names as `matmul-probe` prints them;
//! `matmul_simple_unit…` kernels compute in plain f32, the `…cmma`/`…mma` ones read TF32), or
//! through cuBLAS's f32 SGEMM with `cublas` ([`crate::cublas`]), in inference and under autodiff
//! alike. Unset, nothing changes. Experimental: Burn 0.21 launches
//! cubek's `Auto` kernel (TF32, about 44 TFLOP/s on an H200) with no setting to choose another;
//! which kernel serves kedit best is measured by `matmul-probe` on the GPU (benchmarks/README.md,
//! "GPU").
//!
//! Under autodiff the product is a custom operation whose backward pass runs the same kernel
//! (`∂a = g @ bᵀ`, `∂b = aᵀ @ g`, as Burn's own matmul). Its wiring is generic and is tested on
//! the CPU with ndarray's matmul as the kernel.

use std::any::{Any, TypeId};

use burn::backend::autodiff::{
    checkpoint::{
        base::Checkpointer,
        strategy::{CheckpointStrategy, NoCheckpointing},
    },
    grads::Gradients,
    ops::{binary, Backward, Ops, OpsKind},
    NodeId,
};
use burn::backend::Autodiff;
use burn::tensor::{backend::Backend, ops::FloatTensor, Tensor, TensorPrimitive};

/// A product on backend `K`'s tensors.
pub type Kernel<K> = fn(FloatTensor<K>, FloatTensor<K>) -> FloatTensor<K>;

/// `a @ b` through `kernel` when `B` is `K` or `Autodiff<K>` and the operands' batch dimensions
/// agree (no broadcasting: its gradient would need a reduction the kernel does not do); else the
/// operands back, untouched.
#[allow(clippy::type_complexity)]
pub fn matmul_with<B: Backend, K: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    kernel: Kernel<K>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if a.dims()[..D - 2] != b.dims()[..D - 2] {
        return Err((a, b));
    }
    let is = |t: TypeId| TypeId::of::<B>() == t;
    if is(TypeId::of::<K>()) {
        let y = kernel(cast::<B, K, D>(a), cast::<B, K, D>(b));
        Ok(uncast::<K, B, D>(y))
    } else if is(TypeId::of::<Autodiff<K>>()) {
        let y = autodiff_matmul::<K, NoCheckpointing>(
            cast::<B, Autodiff<K>, D>(a),
            cast::<B, Autodiff<K>, D>(b),
            kernel,
        );
        Ok(uncast::<Autodiff<K>, B, D>(y))
    } else {
        Err((a, b))
    }
}

/// `B`'s float primitive as `T`'s; the caller checked that `B` is `T`.
pub(crate) fn cast<B: Backend, T: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<T> {
    let p: Box<dyn Any> = Box::new(x.into_primitive().tensor());
    *p.downcast::<FloatTensor<T>>()
        .unwrap_or_else(|_| unreachable!("TypeId said the backends are one"))
}

pub(crate) fn uncast<T: Backend, B: Backend, const D: usize>(y: FloatTensor<T>) -> Tensor<B, D> {
    let p: Box<dyn Any> = Box::new(y);
    let y = p
        .downcast::<FloatTensor<B>>()
        .unwrap_or_else(|_| unreachable!("TypeId said the backends are one"));
    Tensor::from_primitive(TensorPrimitive::Float(*y))
}

/// The kernel's product as an autodiff operation: Burn's own matmul backward, through `kernel`.
struct KernelMatmul<K: Backend>(Kernel<K>);

impl<K: Backend> std::fmt::Debug for KernelMatmul<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelMatmul")
    }
}

impl<K: Backend> Backward<K, 2> for KernelMatmul<K> {
    /// Each operand, kept when the other one needs a gradient.
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs) = ops.state;
        let lhs: Option<FloatTensor<K>> = lhs.map(|id| checkpointer.retrieve_node_output(id));
        let rhs: Option<FloatTensor<K>> = rhs.map(|id| checkpointer.retrieve_node_output(id));
        let kernel = self.0;
        binary::<K, _, _>(
            ops.parents,
            ops.node,
            grads,
            |g| {
                kernel(
                    g,
                    K::float_transpose(rhs.expect("kept for the lhs gradient")),
                )
            },
            |g| {
                kernel(
                    K::float_transpose(lhs.expect("kept for the rhs gradient")),
                    g,
                )
            },
        );
    }
}

fn autodiff_matmul<K: Backend, C: CheckpointStrategy>(
    lhs: FloatTensor<Autodiff<K, C>>,
    rhs: FloatTensor<Autodiff<K, C>>,
    kernel: Kernel<K>,
) -> FloatTensor<Autodiff<K, C>> {
    let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
    match KernelMatmul(kernel)
        .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
            let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
            prep.finish((lhs_state, rhs_state), kernel(lhs.primitive, rhs.primitive))
        }
        OpsKind::UnTracked(prep) => prep.finish(kernel(lhs.primitive, rhs.primitive)),
    }
}

/// The kernel `KEDIT_CUDA_KERNEL` names, read once; `None` when it is unset. A name no kernel
/// has stops the process with the list of names.
#[cfg(feature = "cuda-kernels")]
pub fn chosen() -> Option<&'static (String, cuda::Strategy)> {
    static CHOSEN: std::sync::OnceLock<Option<(String, cuda::Strategy)>> =
        std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let name = std::env::var("KEDIT_CUDA_KERNEL")
                .ok()
                .filter(|v| !v.is_empty())?;
            if name == CUBLAS {
                tracing::info!("KEDIT_CUDA_KERNEL=cublas: matmuls through cuBLAS's f32 SGEMM");
                // The strategy is unused: `chosen_kernel` sends this name to cuBLAS.
                return Some((name, cuda::Strategy::Auto));
            }
            let all = cuda::strategies();
            let found = all.iter().find(|(n, _)| *n == name).cloned();
            if found.is_none() {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                eprintln!(
                    "error: KEDIT_CUDA_KERNEL={name}: no such kernel; one of {CUBLAS}, {}",
                    names.join(", ")
                );
                std::process::exit(2);
            }
            tracing::info!(kernel = %name, "KEDIT_CUDA_KERNEL: matmuls through this cubek kernel");
            found
        })
        .as_ref()
}

/// `KEDIT_CUDA_KERNEL`'s name for cuBLAS's f32 SGEMM ([`crate::cublas`]).
#[cfg(feature = "cuda-kernels")]
pub const CUBLAS: &str = "cublas";

/// Whether the chosen kernel computes in plain f32 (cuBLAS's SGEMM; cubek's unit and naive
/// kernels: no tensor cores, so no TF32), which makes the 3xTF32 split needless.
#[cfg(feature = "cuda-kernels")]
pub fn chosen_is_f32() -> bool {
    chosen().is_some_and(|(n, _)| n == CUBLAS || n.contains("unit") || n.contains("naive"))
}

/// `a @ b` through kedit's kernel (inference or autodiff): the one `KEDIT_CUDA_KERNEL` chose on
/// burn-cuda, [`cpu::gemm`] on burn-ndarray; the operands back otherwise
/// (Burn's matmul then runs them).
#[allow(clippy::type_complexity)]
pub fn chosen_matmul<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    #[cfg(feature = "cuda-kernels")]
    if chosen().is_some() {
        return matmul_with::<B, crate::Gpu, D>(a, b, cuda::chosen_kernel);
    }
    #[cfg(not(feature = "flex"))]
    if !cpu::off() {
        return matmul_with::<B, crate::Cpu, D>(a, b, cpu::gemm);
    }
    Err((a, b))
}

/// kedit's CPU product. Burn 0.21's matmul on burn-ndarray copies each operand that is not
/// contiguous into a fresh 3-D array (its `reshape` clones even where a view would do: the
/// backward's every transposed weight) and runs the GEMM on a rayon worker, even for a single
/// matrix. Here each matrix of a product is one `general_mat_mul` on the calling
/// thread: ndarray hands BLAS (OpenBLAS with `openblas`, matrixmultiply otherwise, each threaded
/// by itself) row- or column-major operands as they are, and only a layout neither can read
/// goes through matrixmultiply's strided path. The sums are the same library's kernel either
/// way; results agree with Burn's matmul to rounding.
#[cfg(not(feature = "flex"))]
pub mod cpu {
    use burn::tensor::ops::{FloatTensor, FloatTensorOps};
    use burn_ndarray::NdArrayTensor;
    use ndarray::{linalg::general_mat_mul, ArrayD, ArrayViewD, ArrayViewMutD, Ix2};

    use crate::Cpu;

    /// `KEDIT_CPU_MATMUL=burn`: Burn's own matmul instead, to compare (benchmarks/README.md).
    pub fn off() -> bool {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OFF.get_or_init(|| std::env::var("KEDIT_CPU_MATMUL").is_ok_and(|v| v == "burn"))
    }

    /// `a @ b` for f32 operands of rank 2 or more whose batch dimensions agree (one GEMM per
    /// matrix: attention's small products); anything else goes to Burn's matmul.
    pub fn gemm(a: FloatTensor<Cpu>, b: FloatTensor<Cpu>) -> FloatTensor<Cpu> {
        if let (NdArrayTensor::F32(x), NdArrayTensor::F32(y)) = (&a, &b) {
            let (x, y) = (x.view(), y.view());
            let r = x.ndim();
            if r >= 2 && y.ndim() == r && x.shape()[..r - 2] == y.shape()[..r - 2] {
                let mut shape = x.shape().to_vec();
                shape[r - 1] = y.shape()[r - 1];
                let mut c = ArrayD::<f32>::zeros(shape);
                products(x, y, c.view_mut());
                return NdArrayTensor::from(c.into_shared());
            }
        }
        Cpu::float_matmul(a, b)
    }

    /// `c = x @ y`, matrix by matrix over the leading (batch) axes.
    fn products(x: ArrayViewD<'_, f32>, y: ArrayViewD<'_, f32>, c: ArrayViewMutD<'_, f32>) {
        match (
            x.view().into_dimensionality::<Ix2>(),
            y.view().into_dimensionality::<Ix2>(),
        ) {
            (Ok(x), Ok(y)) => {
                let mut c = c.into_dimensionality::<Ix2>().expect("rank 2 like x");
                general_mat_mul(1.0, &x, &y, 0.0, &mut c);
            }
            _ => {
                let mut c = c;
                for ((x, y), c) in x.outer_iter().zip(y.outer_iter()).zip(c.outer_iter_mut()) {
                    products(x, y, c);
                }
            }
        }
    }
}

/// cubek's matmul kernels, launched one by one on Burn's CUDA tensors.
#[cfg(feature = "cuda-kernels")]
pub mod cuda {
    use burn::tensor::{ops::FloatTensor, Tensor, TensorPrimitive};
    use burn_cubecl::{kernel::matmul::init_matmul_output, tensor::CubeTensor, CubeRuntime};
    use cubek::matmul::{
        components::tile::TileMatmulKind,
        definition::{MatmulElems, MatmulGlobalElems},
        launch::launch_ref,
        routines::{
            double_buffering::DoubleBufferingArgs, double_unit::DoubleUnitSelectionArgs,
            ordered_double_buffering::OrderedSelectionArgs, simple::SimpleArgs,
            simple_unit::SimpleUnitSelectionArgs, BlueprintStrategy, TileSizeSelection,
        },
    };
    use cubek::std::InputBinding;

    pub use cubek::matmul::launch::Strategy;

    use crate::Gpu;

    /// The kernels cubek offers for a dense f32 matmul (the candidates Burn's autotune weighs),
    /// each with its name.
    pub fn strategies() -> Vec<(String, Strategy)> {
        use BlueprintStrategy::Inferred;
        let simple = |multi_rows, tile_matmul| SimpleArgs {
            multi_rows,
            tile_matmul,
        };
        let double = |specialized, tile_matmul| DoubleBufferingArgs {
            specialized,
            tile_matmul,
        };
        let ordered = |row_count, tile_matmul| OrderedSelectionArgs {
            partition_k: Some(2),
            row_count: Some(row_count),
            rows_per_plane: Some(2),
            tile_matmul,
        };
        let (cmma, mma) = (TileMatmulKind::Cmma, TileMatmulKind::Mma);
        let mut v = vec![Strategy::Auto, Strategy::Naive];
        for tile_size in [
            TileSizeSelection::MaxTileSize,
            TileSizeSelection::MinTileSize,
        ] {
            v.push(Strategy::SimpleUnit(Inferred(SimpleUnitSelectionArgs {
                tile_size,
            })));
            v.push(Strategy::DoubleUnit(Inferred(DoubleUnitSelectionArgs {
                tile_size,
            })));
        }
        for multi_rows in [false, true] {
            v.push(Strategy::SimpleCyclicCmma(Inferred(simple(
                multi_rows, cmma,
            ))));
            v.push(Strategy::SimpleCyclicMma(Inferred(simple(multi_rows, mma))));
            v.push(Strategy::SimpleTmaCmma(Inferred(simple(multi_rows, cmma))));
            v.push(Strategy::SimpleTmaMma(Inferred(simple(multi_rows, mma))));
        }
        for rows in [4, 8] {
            v.push(Strategy::OrderedDoubleCmma(Inferred(ordered(rows, cmma))));
            v.push(Strategy::OrderedDoubleMma(Inferred(ordered(rows, mma))));
        }
        for specialized in [false, true] {
            v.push(Strategy::DoubleCyclicCmma(Inferred(double(
                specialized,
                cmma,
            ))));
            v.push(Strategy::DoubleCyclicMma(Inferred(double(
                specialized,
                mma,
            ))));
        }
        v.push(Strategy::SpecializedCyclicCmma(Inferred(().into())));
        v.push(Strategy::SpecializedCyclicMma(Inferred(().into())));
        v.push(Strategy::SpecializedTmaCmma(Inferred(().into())));
        v.push(Strategy::SpecializedTmaMma(Inferred(().into())));
        v.into_iter().map(|s| (s.to_string(), s)).collect()
    }

    /// `lhs @ rhs` with one cubek kernel, as Burn's matmul launches it (f32 in, f32 out); the
    /// kernel's setup error when it cannot take these shapes or strides on this card.
    pub fn launch<R: CubeRuntime>(
        strategy: &Strategy,
        lhs: CubeTensor<R>,
        rhs: CubeTensor<R>,
    ) -> Result<CubeTensor<R>, String> {
        let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
        let client = out.client.clone();
        let (ld, rd) = (lhs.dtype.into(), rhs.dtype.into());
        let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
            lhs: ld,
            rhs: rd,
            out: out.dtype.into(),
        });
        launch_ref(
            strategy,
            &client,
            InputBinding::new(lhs.binding(), ld),
            InputBinding::new(rhs.binding(), rd),
            out.clone().binding(),
            &mut dtypes,
        )
        .map_err(|e| format!("{e:?}"))?;
        Ok(out)
    }

    /// [`launch`] on Burn tensors of any rank.
    pub fn launch_tensors<const D: usize>(
        strategy: &Strategy,
        a: Tensor<Gpu, D>,
        b: Tensor<Gpu, D>,
    ) -> Result<Tensor<Gpu, D>, String> {
        launch(
            strategy,
            a.into_primitive().tensor(),
            b.into_primitive().tensor(),
        )
        .map(|y| Tensor::from_primitive(TensorPrimitive::Float(y)))
    }

    /// The chosen kernel; cubek's `Auto` where it cannot take the shapes (said once).
    pub(super) fn chosen_kernel(a: FloatTensor<Gpu>, b: FloatTensor<Gpu>) -> FloatTensor<Gpu> {
        let (name, strategy) = super::chosen().expect("called only with a kernel chosen");
        if name == super::CUBLAS {
            return crate::cublas::matmul(a, b);
        }
        launch(strategy, a.clone(), b.clone()).unwrap_or_else(|e| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    kernel = %name,
                    error = %e,
                    "KEDIT_CUDA_KERNEL cannot take a product; cubek's Auto runs it (said once)"
                )
            });
            auto(a, b)
        })
    }

    /// cubek's `Auto` kernel, Burn's own choice, which takes every shape.
    pub(crate) fn auto(a: FloatTensor<Gpu>, b: FloatTensor<Gpu>) -> FloatTensor<Gpu> {
        launch(&Strategy::Auto, a, b).expect("cubek's Auto kernel launches")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Cpu = crate::Cpu;
    type Ad = Autodiff<Cpu>;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// ndarray's matmul, counted.
    fn counted(a: FloatTensor<Cpu>, b: FloatTensor<Cpu>) -> FloatTensor<Cpu> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        <Cpu as burn::tensor::ops::FloatTensorOps<Cpu>>::float_matmul(a, b)
    }

    fn vals(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as f32 / u32::MAX as f32
                    - 0.5
            })
            .collect()
    }

    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    /// One test, not several: they share the call counter.
    #[test]
    fn kernel_matmul_matches_burns_matmul_and_its_gradients() {
        let dev = Default::default();
        // Inference: the kernel's product, bit for bit.
        let a = Tensor::<Cpu, 3>::from_data(TensorData::new(vals(2 * 3 * 4, 1), [2, 3, 4]), &dev);
        let b = Tensor::<Cpu, 3>::from_data(TensorData::new(vals(2 * 4 * 5, 2), [2, 4, 5]), &dev);
        let before = CALLS.load(Ordering::SeqCst);
        let y = matmul_with::<Cpu, Cpu, 3>(a.clone(), b.clone(), counted).expect("Cpu is K");
        assert_eq!(CALLS.load(Ordering::SeqCst) - before, 1);
        assert_eq!(host(y), host(a.clone().matmul(b.clone())));
        // A broadcast batch dimension is declined.
        let b1 = b.clone().narrow(0, 0, 1);
        assert!(matmul_with::<Cpu, Cpu, 3>(a.clone(), b1, counted).is_err());
        // Another backend is declined.
        assert!(matmul_with::<Cpu, Ad, 3>(a.clone(), b.clone(), |x, _| x).is_err());

        // Autodiff, each operand tracked or not: value and gradients equal Burn's matmul's, and
        // the backward pass goes through the kernel once per tracked operand.
        let r = Tensor::<Cpu, 3>::from_data(TensorData::new(vals(2 * 3 * 5, 3), [2, 3, 5]), &dev);
        for (ta, tb) in [(true, true), (true, false), (false, true)] {
            let leaf = |t: &Tensor<Cpu, 3>, tracked: bool| {
                let x = Tensor::<Ad, 3>::from_inner(t.clone());
                if tracked {
                    x.require_grad()
                } else {
                    x
                }
            };
            let (xa, xb) = (leaf(&a, ta), leaf(&b, tb));
            let (ya, yb) = (leaf(&a, ta), leaf(&b, tb));
            let rr = Tensor::<Ad, 3>::from_inner(r.clone());
            let before = CALLS.load(Ordering::SeqCst);
            let got = matmul_with::<Ad, Cpu, 3>(xa.clone(), xb.clone(), counted)
                .expect("Ad is Autodiff<K>");
            let want = ya.clone().matmul(yb.clone());
            assert_eq!(host(got.clone()), host(want.clone()));
            let g_got = (got * rr.clone()).sum().backward();
            let g_want = (want * rr.clone()).sum().backward();
            assert_eq!(
                CALLS.load(Ordering::SeqCst) - before,
                1 + ta as usize + tb as usize,
                "kernel calls with a tracked {ta}, b tracked {tb}"
            );
            for (x, y, tracked, name) in [(&xa, &ya, ta, "a"), (&xb, &yb, tb, "b")] {
                match (x.grad(&g_got), y.grad(&g_want)) {
                    (Some(g), Some(w)) => assert_eq!(host(g), host(w), "∂/∂{name}"),
                    (None, None) => assert!(!tracked, "{name} tracked but no gradient"),
                    _ => panic!("∂/∂{name}: one side has a gradient, the other not"),
                }
            }
        }
    }

    /// Largest |x - y| over two equal-length slices.
    fn max_diff(x: &[f32], y: &[f32]) -> f32 {
        assert_eq!(x.len(), y.len());
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    /// kedit's CPU GEMM reads the operands' strides (a transposed or sliced weight is not copied
    /// first), so each layout is checked against Burn's matmul, which copies to contiguous.
    #[cfg(not(feature = "flex"))]
    #[test]
    fn cpu_gemm_is_burns_matmul_in_every_layout() {
        use crate::layers::matmul;
        let dev = Default::default();
        let t = |r: usize, c: usize, seed| {
            Tensor::<Cpu, 2>::from_data(TensorData::new(vals(r * c, seed), [r, c]), &dev)
        };
        let burn = |a: &Tensor<Cpu, 2>, b: &Tensor<Cpu, 2>| host(a.clone().matmul(b.clone()));
        let (m, k, n) = (37, 70, 29);
        let cases = [
            ("contiguous", t(m, k, 1), t(k, n, 2)),
            ("a transposed", t(k, m, 3).transpose(), t(k, n, 4)),
            ("b transposed", t(m, k, 5), t(n, k, 6).transpose()),
            (
                "both transposed",
                t(k, m, 7).transpose(),
                t(n, k, 8).transpose(),
            ),
            // A column slice: rows stride past the slice's width.
            ("a sliced", t(m, k + 9, 9).narrow(1, 4, k), t(k, n, 10)),
        ];
        for (name, a, b) in cases {
            let want = burn(&a, &b);
            // Kahan-free sums of 70 products of values in [-0.5, 0.5] agree to ~1e-6 whatever
            // the blocking; a misread stride would be off by O(1).
            let got = host(matmul(a.clone(), b.clone()));
            assert!(
                max_diff(&got, &want) < 1e-5,
                "{name}: {}",
                max_diff(&got, &want)
            );
            let direct = cpu::gemm(a.into_primitive().tensor(), b.into_primitive().tensor());
            let direct = host(Tensor::<Cpu, 2>::from_primitive(TensorPrimitive::Float(
                direct,
            )));
            assert!(max_diff(&direct, &want) < 1e-5, "{name}, cpu::gemm");
        }
        // Batched, as attention multiplies: each matrix its own GEMM, operands as they lie
        // (keys transposed, values with heads swapped forward).
        let t4 = |d: [usize; 4], seed| {
            let n = d.iter().product();
            Tensor::<Cpu, 4>::from_data(TensorData::new(vals(n, seed), d), &dev)
        };
        let q = t4([2, 3, 7, 5], 15);
        let keys = t4([2, 3, 6, 5], 16).swap_dims(2, 3);
        let values = t4([2, 6, 3, 5], 17).swap_dims(1, 2);
        let probs = t4([2, 3, 7, 6], 18);
        for (name, a, b) in [("scores", q, keys), ("mix", probs, values)] {
            let want = host(a.clone().matmul(b.clone()));
            let got = cpu::gemm(a.into_primitive().tensor(), b.into_primitive().tensor());
            let got = host(Tensor::<Cpu, 4>::from_primitive(TensorPrimitive::Float(
                got,
            )));
            assert!(
                max_diff(&got, &want) < 1e-5,
                "batched {name}: {}",
                max_diff(&got, &want)
            );
        }

        // An empty inner dimension: zeros (Burn's own matmul divides by zero there).
        let (a, b) = (t(m, 0, 11), t(0, n, 12));
        let y = cpu::gemm(a.into_primitive().tensor(), b.into_primitive().tensor());
        let y = Tensor::<Cpu, 2>::from_primitive(TensorPrimitive::Float(y));
        assert_eq!(y.dims(), [m, n]);
        assert!(host(y).iter().all(|&v| v == 0.0));

        // Under autodiff, through `layers::matmul` (the model's products): value and both
        // gradients, the backward's transposed operands included.
        let (a, b) = (t(m, k, 13), t(k, n, 14));
        let r = Tensor::<Ad, 2>::from_inner(t(m, n, 15));
        let leaf = |x: &Tensor<Cpu, 2>| Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
        let (xa, xb, ya, yb) = (leaf(&a), leaf(&b), leaf(&a), leaf(&b));
        let got = matmul(xa.clone(), xb.clone());
        let want = ya.clone().matmul(yb.clone());
        assert!(max_diff(&host(got.clone()), &host(want.clone())) < 1e-5);
        let (g_got, g_want) = (
            (got * r.clone()).sum().backward(),
            (want * r).sum().backward(),
        );
        for (x, y, name) in [(&xa, &ya, "a"), (&xb, &yb, "b")] {
            let (g, w) = (
                host(x.grad(&g_got).unwrap()),
                host(y.grad(&g_want).unwrap()),
            );
            assert!(max_diff(&g, &w) < 1e-5, "∂/∂{name}: {}", max_diff(&g, &w));
        }
    }
}
