//! One ROME-shaped optimisation step on the default model: 21 prompts of about 20 tokens,
//! forward, NLL of a target after each prompt, backward to a delta added at layer 4's MLP
//! output at each prompt's last token. Prints a JSON line with the median wall time.
//!
//! Usage: fwd-bwd [--repeats N] [--from-layer]  (`--from-layer` also times a step that starts
//! from the cached residual stream entering layer 4, as ROME can).

use std::time::Instant;

use anyhow::Result;
use burn::backend::Autodiff;
use burn::tensor::{activation, Int, Tensor, TensorData};
use kedit_models::{fetch, CausalLm, Cpu, Interventions, LanguageModel, Site, ToAutodiff};

// Linked for its global allocator, the one the `kedit` binary uses.
use kedit_benchmarks as _;

type Ad = Autodiff<Cpu>;

#[cfg(feature = "flex")]
const BACKEND: &str = "kedit (burn-flex)";
#[cfg(all(not(feature = "flex"), feature = "openblas"))]
const BACKEND: &str = "kedit (burn-ndarray + OpenBLAS)";
#[cfg(all(not(feature = "flex"), not(feature = "openblas")))]
const BACKEND: &str = "kedit (burn-ndarray, matrixmultiply)";

const USAGE: &str = "fwd-bwd: one ROME-shaped forward+backward step on SmolLM2 (21 prompts, \
a delta at layer 4's MLP output), timed; prints a JSON line with the median wall time.

Usage: fwd-bwd [--repeats N (5)] [--forward-only] [--from-layer]
Example: fwd-bwd --repeats 5 --from-layer";

fn main() -> Result<()> {
    kedit_models::allocator::retain_freed_memory();
    let Some(args) =
        kedit_benchmarks::cli_args(USAGE, &["--repeats"], &["--forward-only", "--from-layer"])?
    else {
        return Ok(());
    };
    let repeats: usize = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts.json"
    ))?)?;
    let layer = spec["layer"].as_u64().unwrap() as usize;
    let dev = Default::default();
    let lm = LanguageModel::<Cpu>::load_gguf(&fetch::smollm2()?, &dev)?;
    let target = lm.encode(spec["target"].as_str().unwrap())?;
    let mut seqs = Vec::new();
    let mut last = Vec::new();
    let mut tgt_pos = Vec::new();
    let mut tgt_ids = Vec::new();
    for (i, p) in spec["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = lm.encode(p.as_str().unwrap())?;
        last.push((i, ids.len() - 1));
        for (j, &t) in target.iter().enumerate() {
            tgt_pos.push((i, ids.len() - 1 + j));
            tgt_ids.push(t as i64);
        }
        seqs.push([ids, target.clone()].concat());
    }
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let model = lm.model.map(&ToAutodiff);
    let d = model.config.hidden_size;
    let ids = model.batch(&seqs);
    let n = tgt_ids.len();
    let tgt = Tensor::<Ad, 2, Int>::from_data(TensorData::new(tgt_ids, [n, 1]), &dev);

    let loss_of = |hidden: Tensor<Ad, 3>| {
        let logp = activation::log_softmax(model.logits_at(hidden, &tgt_pos), 1);
        logp.gather(1, tgt.clone()).mean().neg()
    };
    let step = |from_layer: bool, h0: &Tensor<Ad, 3>| -> f64 {
        let delta = Tensor::<Ad, 1>::zeros([d], &dev).require_grad();
        let iv = Interventions::none().add(layer, Site::MlpOut, last.clone(), delta.clone());
        let fwd = if from_layer {
            model.forward_from(layer, h0.clone(), &iv)
        } else {
            model.forward(ids.clone(), &iv)
        };
        let grads = loss_of(fwd.hidden).backward();
        let g = delta.grad(&grads).unwrap();
        g.abs().sum().into_scalar() as f64
    };
    // The residual stream entering `layer`, computed once without gradient tracking.
    let h0 = {
        let fwd = lm.model.forward(
            lm.model.batch(&seqs),
            &Interventions::none().capture(layer - 1, Site::Residual),
        );
        Tensor::<Ad, 3>::from_inner(fwd.captured[&(layer - 1, Site::Residual)].clone())
    };
    let mut results = serde_json::Map::new();
    if args.iter().any(|a| a == "--forward-only") {
        let plain_ids = lm.model.batch(&seqs);
        let mut times = Vec::new();
        for _ in 0..repeats + 1 {
            let t = Instant::now();
            let fwd = lm.model.forward(plain_ids.clone(), &Interventions::none());
            let _ = lm.model.logits_at(fwd.hidden, &tgt_pos).into_data();
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        results.insert(
            "forward_only".into(),
            serde_json::json!({"median_s": times[times.len() / 2], "times_s": times}),
        );
    }
    for (name, from_layer) in [("full", false), ("from_layer", true)] {
        if from_layer && !args.iter().any(|a| a == "--from-layer") {
            continue;
        }
        step(from_layer, &h0); // warm-up
        let mut times = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            let g = step(from_layer, &h0);
            times.push(t.elapsed().as_secs_f64());
            assert!(g.is_finite() && g > 0.0, "gradient must be non-zero");
        }
        times.sort_by(f64::total_cmp);
        results.insert(
            name.into(),
            serde_json::json!({"median_s": times[times.len() / 2], "times_s": times}),
        );
    }
    let out = serde_json::json!({
        "framework": BACKEND, "prompts": seqs.len(), "tokens": tokens,
        "padded_len": seqs.iter().map(Vec::len).max(), "layer": layer, "results": results,
        "rayon_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        // OpenBLAS takes its kernels from this when it is set (some machines set it).
        "openblas_coretype": std::env::var("OPENBLAS_CORETYPE").ok(),
        "cpu_matmul": kedit_benchmarks::cpu_matmul(),
        "cpu_fused": kedit_benchmarks::cpu_fused(),
        "mimalloc_purge_delay": kedit_models::allocator::purge_delay(),
    });
    println!("{out}");
    Ok(())
}
