//! `KEDIT_CUDA_KERNEL=cublas`: products on burn-cuda through cuBLAS's f32 SGEMM, the kernel
//! PyTorch's f32 matmul runs. Burn 0.21 has no cuBLAS path and cubek's f32 kernels reached
//! 12–16 TFLOP/s on an H200 (benchmarks/README.md, "GPU"), so f32 precision cost three TF32
//! products; one SGEMM is f32 by construction (cuBLAS's default math mode uses no tensor cores
//! for f32), so it also turns the 3xTF32 split off.
//!
//! cuBLAS runs on its own stream in CubeCL's context (the device's primary context): the call
//! waits for CubeCL's queued work on the operands' client, runs the SGEMM into an output CubeCL
//! allocated, and waits for it, so CubeCL's later kernels read a finished product. Those two
//! waits cost a host round trip per product; a stream shared with CubeCL would avoid them, and
//! Burn 0.21 does not expose its stream.
//!
//! Loaded at run time (cudarc's dynamic loading): `libcublas.so.13` (or `libcublas.so`) must be
//! on `LD_LIBRARY_PATH`, as the CUDA toolkit's `targets/x86_64-linux/lib` or PyTorch's
//! `nvidia/cublas/lib` has it.

use std::cell::RefCell;

use burn::tensor::{ops::FloatTensor, DType};
use burn_cubecl::kernel::{into_contiguous, matmul::init_matmul_output};
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as drv, sys as drv_sys};

use crate::Gpu;

/// One operand as cuBLAS (column-major) reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Operand {
    /// Whether cuBLAS transposes its column-major reading of the buffer.
    pub transposed: bool,
    /// Its leading dimension.
    pub ld: usize,
    /// Elements between consecutive matrices of the batch (0 for a batch of one).
    pub batch_stride: usize,
}

/// How cuBLAS reads a row-major `[batch.., rows, cols]` view with `strides`, or `None` when the
/// view has no such reading (then it is made contiguous first). The product wants each operand's
/// transpose (cuBLAS is column-major: row-major `C = A B` is column-major `Cᵀ = Bᵀ Aᵀ`): a
/// row-major matrix is its own transpose read column-major (no transpose, leading dimension its
/// row stride), a column-major one (a transposed view) is read with a transpose.
pub(crate) fn operand(shape: &[usize], strides: &[usize]) -> Option<Operand> {
    let d = shape.len();
    let (rows, cols) = (shape[d - 2], shape[d - 1]);
    let (sr, sc) = (strides[d - 2], strides[d - 1]);
    // The batch dimensions must flatten into one stride.
    let batch: usize = shape[..d - 2].iter().product();
    let batch_stride = if batch <= 1 {
        0
    } else {
        for i in 0..d - 3 {
            if shape[i] > 1 && strides[i] != strides[i + 1] * shape[i + 1] {
                return None;
            }
        }
        strides[d - 3]
    };
    let m = if (sc == 1 || cols <= 1) && sr >= cols.max(1) {
        Operand {
            transposed: false,
            ld: sr,
            batch_stride,
        }
    } else if (sr == 1 || rows <= 1) && sc >= rows.max(1) {
        Operand {
            transposed: true,
            ld: sc,
            batch_stride,
        }
    } else {
        return None;
    };
    Some(m)
}

fn int(x: usize, what: &str) -> i32 {
    i32::try_from(x).unwrap_or_else(|_| panic!("cuBLAS: {what} = {x} exceeds a C int"))
}

/// Per thread: the cuBLAS handle and its stream, in the device's primary context. They live as
/// long as the process: destroying them from a thread-local destructor could run after the
/// driver has shut down at exit.
struct Blas {
    device: usize,
    handle: blas_sys::cublasHandle_t,
    stream: drv_sys::CUstream,
}

thread_local! {
    static BLAS: RefCell<Option<Blas>> = const { RefCell::new(None) };
}

fn with_blas<T>(device: usize, f: impl FnOnce(&Blas) -> T) -> T {
    BLAS.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|b| b.device != device) {
            // SAFETY: the device exists (CubeCL opened it for these tensors); its primary
            // context is the one CubeCL allocates in, made current on this thread.
            let blas = unsafe {
                drv::init().expect("CUDA driver");
                let dev = drv::device::get(device as i32).expect("CUDA device");
                let ctx = drv::primary_ctx::retain(dev).expect("primary context");
                drv::ctx::set_current(ctx).expect("set the context current");
                assert!(
                    blas_sys::is_culib_present(),
                    "KEDIT_CUDA_KERNEL=cublas: no libcublas on LD_LIBRARY_PATH"
                );
                let handle = blas::create_handle().expect("cuBLAS handle");
                let stream =
                    drv::stream::create(drv::stream::StreamKind::NonBlocking).expect("CUDA stream");
                blas::set_stream(handle, stream as blas_sys::cudaStream_t).expect("cuBLAS stream");
                // f32 arithmetic, no TF32 (cuBLAS's default; said, not assumed).
                blas_sys::cublasSetMathMode(handle, blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
                    .result()
                    .expect("cuBLAS math mode");
                Blas {
                    device,
                    handle,
                    stream,
                }
            };
            *cell = Some(blas);
        }
        f(cell.as_ref().expect("set above"))
    })
}

/// Whether one operand's batch dimensions suit a strided-batched SGEMM producing `out_batch`:
/// the output's own (one matrix per output matrix) or all ones (one matrix for every output
/// matrix, read with batch stride 0). A broadcast along some batch dimensions only (`[2, 1]`
/// against `[2, 3]`) has no single batch stride.
pub(crate) fn batch_fits(batch: &[usize], out_batch: &[usize]) -> bool {
    batch == out_batch || batch.iter().all(|&s| s == 1)
}

/// `a @ b` (f32, `[batch.., m, k] @ [batch.., k, n]`, each operand's batch dimensions the
/// output's or all ones) with one cuBLAS SGEMM (strided-batched); another dtype, or a broadcast
/// along some batch dimensions only, goes to cubek's `Auto` kernel.
pub fn matmul(a: FloatTensor<Gpu>, b: FloatTensor<Gpu>) -> FloatTensor<Gpu> {
    if a.dtype != DType::F32 || b.dtype != DType::F32 {
        return crate::kernel::cuda::auto(a, b);
    }
    let d = a.meta.shape().len();
    let (m, k, n) = (
        a.meta.shape()[d - 2],
        a.meta.shape()[d - 1],
        b.meta.shape()[d - 1],
    );
    // The output's batch dimensions: Burn broadcasts a size-1 dimension against the other's.
    let out_batch: Vec<usize> = (0..d - 2)
        .map(|i| a.meta.shape()[i].max(b.meta.shape()[i]))
        .collect();
    if !batch_fits(&a.meta.shape()[..d - 2], &out_batch)
        || !batch_fits(&b.meta.shape()[..d - 2], &out_batch)
    {
        return crate::kernel::cuda::auto(a, b);
    }
    let batch: usize = out_batch.iter().product();
    // The empty cases before any copy or allocation they would not use.
    if m == 0 || n == 0 || batch == 0 {
        return init_matmul_output(&a, &b, DType::F32);
    }
    if k == 0 {
        // An empty sum; cuBLAS would reject the leading dimensions of empty operands.
        return crate::kernel::cuda::auto(a, b);
    }
    let read = |t: FloatTensor<Gpu>| match operand(t.meta.shape(), t.meta.strides()) {
        Some(op) => (t, op),
        None => {
            let t = into_contiguous(t);
            let op = operand(t.meta.shape(), t.meta.strides()).expect("contiguous reads");
            (t, op)
        }
    };
    let (a, opa) = read(a);
    let (b, opb) = read(b);
    let out = init_matmul_output(&a, &b, DType::F32);
    // The buffers first: resolving them makes this thread's CubeCL stream wait for any other
    // stream that wrote them; then that stream's pending kernels, since cuBLAS's stream does not
    // wait on CubeCL's.
    let ra = a.client.get_resource(a.handle.clone()).expect("lhs buffer");
    let rb = b.client.get_resource(b.handle.clone()).expect("rhs buffer");
    let rc = out
        .client
        .get_resource(out.handle.clone())
        .expect("output buffer");
    burn_cubecl::cubecl::future::block_on(a.client.sync()).expect("CubeCL sync");
    let op = |t: bool| {
        if t {
            blas_sys::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas_sys::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let (alpha, beta) = (1f32, 0f32);
    with_blas(a.device.index, |blas| {
        // SAFETY: the three buffers are alive (held by `ra`, `rb`, `rc` and the tensors) and
        // sized by their shapes and strides, which `operand` read; the product is Cᵀ = Bᵀ Aᵀ in
        // column-major terms, written contiguous `[batch, m, n]`.
        unsafe {
            blas::sgemm_strided_batched(
                blas.handle,
                op(opb.transposed),
                op(opa.transposed),
                int(n, "n"),
                int(m, "m"),
                int(k, "k"),
                &alpha,
                rb.resource().ptr as *const f32,
                int(opb.ld, "rhs leading dimension"),
                opb.batch_stride as i64,
                ra.resource().ptr as *const f32,
                int(opa.ld, "lhs leading dimension"),
                opa.batch_stride as i64,
                &beta,
                rc.resource().ptr as *mut f32,
                int(n, "ldc"),
                if batch > 1 { (m * n) as i64 } else { 0 },
                int(batch, "batch"),
            )
            .expect("cuBLAS SGEMM");
            drv::stream::synchronize(blas.stream).expect("cuBLAS stream");
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_read_as_cublas_reads_them() {
        // Row-major and its transposed view.
        let row = operand(&[3, 5], &[5, 1]).unwrap();
        assert_eq!((row.transposed, row.ld, row.batch_stride), (false, 5, 0));
        let col = operand(&[5, 3], &[1, 5]).unwrap();
        assert_eq!((col.transposed, col.ld), (true, 5));
        // A row slice of a wider matrix keeps its row stride as leading dimension.
        assert_eq!(operand(&[3, 4], &[9, 1]).unwrap().ld, 9);
        // Batches that flatten, with the matrix stride between them.
        let b = operand(&[2, 3, 4, 5], &[60, 20, 5, 1]).unwrap();
        assert_eq!((b.transposed, b.batch_stride), (false, 20));
        let bt = operand(&[2, 3, 5, 4], &[60, 20, 1, 5]).unwrap();
        assert_eq!((bt.transposed, bt.ld, bt.batch_stride), (true, 5, 20));
        // A broadcast batch (stride 0) is a valid strided batch.
        assert_eq!(operand(&[4, 3, 5], &[0, 5, 1]).unwrap().batch_stride, 0);
        // Batches that do not flatten, and neither layout: made contiguous first.
        assert_eq!(operand(&[2, 3, 4, 5], &[20, 40, 5, 1]), None);
        assert_eq!(operand(&[3, 4], &[8, 2]), None);
        // Vectors: a single row or column reads either way without a copy.
        assert!(operand(&[1, 7], &[7, 1]).is_some());
        assert!(operand(&[7, 1], &[1, 1]).is_some());
    }

    #[test]
    fn batches_fit_a_strided_batch_or_go_to_auto() {
        // The output's own batch, or one matrix for all (stride 0), on either side.
        assert!(batch_fits(&[2, 3], &[2, 3]));
        assert!(batch_fits(&[1, 1], &[2, 3]));
        assert!(batch_fits(&[], &[]));
        // A broadcast along one batch dimension only has no single batch stride.
        assert!(!batch_fits(&[2, 1], &[2, 3]));
        assert!(!batch_fits(&[1, 3], &[2, 3]));
    }
}
