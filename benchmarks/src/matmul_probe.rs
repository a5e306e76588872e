//! Which matmul kernel should kedit's CUDA path use? Times every kernel CubeCL's matmul library
//! (cubek) offers, next to Burn's own `matmul` and kedit's 3xTF32 `split_matmul`, on the
//! products one v* step of ROME on `random:llama2-7b` runs, and measures each one's error against
//! an f64 product on the host. Prints one JSON line per (product, kernel) and a markdown table
//! on stderr.
//!
//! Usage: matmul-probe [--m 512] [--reps 10] [--only NAME,…] [--deadline SECONDS]
//!
//! Why: on an H200 kedit's ROME edit of the 7B-shaped model ran 2.4x slower than PyTorch at
//! f32 precision (benchmarks/README.md, "GPU"). Burn 0.21 without its `autotune` feature
//! always launches cubek's `Auto` kernel, which reads f32 as TF32 at about 44 TFLOP/s; kedit's
//! three-product split pays that three times. Whether a kernel computing in plain f32 (cubek's
//! "unit" kernels), or a faster TF32 one (double-buffered, TMA), would do better is what this
//! measures, in one short device call, before anything in kedit depends on the answer.
//!
//! The products: x @ W for each weight shape of a Llama-2-7B block (the forward pass), and
//! g @ Wᵀ with Wᵀ a transposed view (the input gradient in the backward pass, as Burn's
//! autodiff launches it), for M rows (the step's prompt tokens, about 500 with the byte-level
//! tokenizer of the random models; `--m` takes several).

use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData, TensorPrimitive};
use kedit_models::kernel::cuda::{launch_tensors, strategies, Strategy};

type B = kedit_models::Gpu;

const USAGE: &str =
    "matmul-probe: times every cubek matmul kernel, Burn's matmul and kedit's 3xTF32 \
split on the products of a ROME v* step on a Llama-2-7B-shaped model, with each one's error \
against f64 (one JSON line per product and kernel; a markdown table on stderr). Needs an \
NVIDIA GPU.

Usage: matmul-probe [--m 512] [--reps 10] [--only NAME,...] [--deadline SECONDS (150)]
Example: matmul-probe --m 512 --only unit,cyclic > probe.jsonl 2> probe.md";

/// Deterministic values in [-1, 1) (a 32-bit LCG): no RNG crate, the same on every run.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// What a probe row times: Burn's matmul, cuBLAS's f32 SGEMM, kedit's 3xTF32 split, the split
/// with its main product summed over chunks of K outside the kernel, or one cubek kernel.
enum Product {
    Burn,
    Cublas,
    Split,
    /// On the H200, 3xTF32's error grew with K (1.9e-5 at 4096, 5.2e-5 at 11008) where the
    /// split's arithmetic bounds it near 1e-6: if the kernel's accumulation (tensor cores round
    /// toward zero there) is the cause, summing `hi_a @ hi_b` over short runs of K in f32 kernels
    /// brings the error down by about K / chunk. The corrections are 2^-11 smaller: one product.
    SplitChunked(usize),
    Cubek(Strategy),
}

/// [`Product::SplitChunked`]: `Σ_c hi_a[:, c] @ hi_b[c, :] + hi_a @ lo_b + lo_a @ hi_b`.
fn split_chunked(a: Tensor<B, 2>, b: Tensor<B, 2>, chunk: usize) -> Tensor<B, 2> {
    use kedit_models::layers::tf32_split;
    let k = a.dims()[1];
    let (ah, al) = tf32_split(a);
    let (bh, bl) = tf32_split(b);
    let main = (0..k)
        .step_by(chunk)
        .map(|k0| {
            let len = chunk.min(k - k0);
            ah.clone()
                .narrow(1, k0, len)
                .matmul(bh.clone().narrow(0, k0, len))
        })
        .reduce(|s, p| s + p)
        .expect("K > 0");
    main + ah.matmul(bl) + al.matmul(bh)
}

struct Case {
    name: String,
    /// W's shape [rows, cols]; the product is x[m, rows] @ W, or g[m, cols] @ Wᵀ.
    w: [usize; 2],
    transposed: bool,
}

fn main() -> Result<()> {
    kedit_models::allocator::retain_freed_memory();
    let valued = ["--m", "--reps", "--only", "--deadline"];
    let Some(a) = kedit_benchmarks::cli_args(USAGE, &valued, &[])? else {
        return Ok(());
    };
    let opt = |f: &str| a.iter().position(|x| x == f).and_then(|i| a.get(i + 1));
    let ms: Vec<usize> = match opt("--m") {
        Some(s) => s
            .split(',')
            .map(|x| x.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--m {s}: {e}"))?,
        None => vec![512],
    };
    let reps: usize = match opt("--reps") {
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("--reps {s}: {e}"))?,
        None => 10,
    };
    let only: Option<Vec<String>> = opt("--only").map(|s| s.split(',').map(String::from).collect());
    let deadline: f64 = match opt("--deadline") {
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("--deadline {s}: {e}"))?,
        None => 150.0,
    };
    if ms.contains(&0) || reps == 0 {
        bail!("--m and --reps must be positive");
    }
    if !std::path::Path::new("/dev/nvidiactl").exists() {
        bail!("matmul-probe needs an NVIDIA GPU: /dev/nvidiactl is not here");
    }
    let start = Instant::now();
    let dev = Default::default();
    let (d, ff) = (4096, 11008);
    // The MLP's products first: they are two thirds of a block's arithmetic.
    let cases: Vec<Case> = [("up", [d, ff]), ("down", [ff, d]), ("attn", [d, d])]
        .into_iter()
        .flat_map(|(layer, w)| {
            [(false, "x@W"), (true, "g@Wᵀ")].map(|(transposed, product)| Case {
                name: format!("{layer} {product}"),
                w,
                transposed,
            })
        })
        .collect();
    let mut kernels: Vec<(String, Product)> = vec![
        ("burn matmul".into(), Product::Burn),
        ("cublas (f32 SGEMM)".into(), Product::Cublas),
        ("kedit split_matmul (3xTF32)".into(), Product::Split),
    ];
    kernels.extend([256, 1024].map(|c| {
        (
            format!("split, main in K-chunks of {c}"),
            Product::SplitChunked(c),
        )
    }));
    kernels.extend(
        strategies()
            .into_iter()
            .map(|(n, s)| (n, Product::Cubek(s))),
    );
    if let Some(only) = &only {
        kernels.retain(|(n, _)| only.iter().any(|o| n.contains(o.as_str())));
    }
    let mut table = String::from(
        "| product | M | kernel | ms | TFLOP/s | rel. error |\n|---|---|---|---|---|---|\n",
    );
    for &m in &ms {
        for (ci, c) in cases.iter().enumerate() {
            let [wr, wc] = c.w;
            let (k, n) = if c.transposed { (wc, wr) } else { (wr, wc) };
            let wv = values(wr * wc, 7 + ci as u64);
            let xv = values(m * k, 1000 + ci as u64);
            let w = Tensor::<B, 2>::from_data(TensorData::new(wv.clone(), [wr, wc]), &dev);
            let rhs = if c.transposed {
                w.clone().transpose()
            } else {
                w.clone()
            };
            let x = Tensor::<B, 2>::from_data(TensorData::new(xv.clone(), [m, k]), &dev);
            // f64 reference for the first rows.
            let rows = m.min(4);
            let rhs_at = |kk: usize, j: usize| {
                if c.transposed {
                    wv[j * wc + kk]
                } else {
                    wv[kk * wc + j]
                }
            };
            let mut reference = vec![0f64; rows * n];
            for i in 0..rows {
                for kk in 0..k {
                    let xi = xv[i * k + kk] as f64;
                    for j in 0..n {
                        reference[i * n + j] += xi * rhs_at(kk, j) as f64;
                    }
                }
            }
            let run = |kernel: &Product| -> Result<Tensor<B, 2>, String> {
                match kernel {
                    Product::Cubek(s) => launch_tensors(s, x.clone(), rhs.clone()),
                    Product::Split => {
                        Ok(kedit_models::layers::split_matmul(x.clone(), rhs.clone()))
                    }
                    Product::SplitChunked(c) => Ok(split_chunked(x.clone(), rhs.clone(), *c)),
                    Product::Burn => Ok(x.clone().matmul(rhs.clone())),
                    Product::Cublas => Ok(Tensor::from_primitive(TensorPrimitive::Float(
                        kedit_models::cublas::matmul(
                            x.clone().into_primitive().tensor(),
                            rhs.clone().into_primitive().tensor(),
                        ),
                    ))),
                }
            };
            for (name, kernel) in &kernels {
                if start.elapsed().as_secs_f64() > deadline {
                    eprintln!(
                        "--deadline {deadline} s reached: {} M={m} {name} and after not run",
                        c.name
                    );
                    eprint!("{table}");
                    return Ok(());
                }
                // The first launch compiles the kernel (or fails to set up on this card).
                let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(kernel)))
                    .unwrap_or_else(|_| Err("panicked".into()));
                // (ms per product, relative error against f64), or why it did not run.
                let outcome: Result<(f64, f64), String> = match first {
                    Err(e) => {
                        let e: String = e.chars().take(120).collect();
                        eprintln!("{} M={m} {name}: {e}", c.name);
                        Err(e)
                    }
                    Ok(y) => {
                        let got = y.narrow(0, 0, rows).into_data().to_vec::<f32>().unwrap();
                        let (mut num, mut den) = (0f64, 0f64);
                        for (g, r) in got.iter().zip(&reference) {
                            num += (*g as f64 - r).powi(2);
                            den += r * r;
                        }
                        B::sync(&dev).ok();
                        let t = Instant::now();
                        for _ in 0..reps {
                            let _ = run(kernel);
                        }
                        B::sync(&dev).ok();
                        Ok((
                            t.elapsed().as_secs_f64() * 1e3 / reps as f64,
                            (num / den).sqrt(),
                        ))
                    }
                };
                let tflops = |ms: f64| 2.0 * (m * k * n) as f64 / (ms / 1e3) / 1e12;
                let (ms, rel, error) = match &outcome {
                    Ok((ms, rel)) => (Some(*ms), Some(format!("{rel:.2e}")), None),
                    Err(e) => (None, None, Some(e)),
                };
                let line = serde_json::json!({"benchmark": "matmul-probe", "product": c.name,
                    "m": m, "k": k, "n": n, "transposed_rhs": c.transposed, "kernel": name,
                    "ms": ms, "tflops": ms.map(tflops), "rel_error": rel, "error": error});
                println!("{line}");
                if let Ok((ms, rel)) = outcome {
                    table.push_str(&format!(
                        "| {} | {m} | {name} | {ms:.3} | {:.1} | {rel:.2e} |\n",
                        c.name,
                        tflops(ms)
                    ));
                }
            }
        }
    }
    eprint!("{table}");
    Ok(())
}
