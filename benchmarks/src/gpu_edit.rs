//! A ROME edit and a MEMIT batch on one model and backend, timed, with the memory-bandwidth floor
//! of ROME's optimisation measured in the same run; writes the workload (templates, requests,
//! hyperparameters) the PyTorch side (`benchmarks/gpu_edit_torch.py`) repeats with the same
//! shapes and step counts. Prints one JSON line.
//!
//! Usage: gpu-edit [--model smollm2|random:llama2-7b|random:gptj-6b|…] [--backend cpu|cuda]
//!                 [--rome-edits N] [--memit-batch K] [--workload FILE]
//!
//! Both editors run as EasyEdit configures them for the 7B models, except the second moment:
//! C = I (ROME without `mom2_adjustment`, EasyEdit's Llama-7B setting; MEMIT with λC + KKᵀ,
//! C = I). Statistics are a one-time cost per model, outside the timed edit on both sides, and a
//! random model has no corpus statistics worth the name; the solve's size is unchanged.
//!
//! The floor: a v* step runs the blocks from the edit layer up and the output head forward and
//! backward (the weights are constants: the backward pass reads each weight once more for the
//! input gradient), so it reads at least 2 × (those weights' bytes); steps × that ÷ the memory
//! bandwidth measured here (an elementwise pass over 1 GiB, read + write) bounds ROME's edit
//! time from below.

use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use kedit_editing::{EditRequest, Editor, Snapshot};
use kedit_locate_edit::stats::SecondMoment;
use kedit_locate_edit::{z, Memit, MemitHparams, Rome, RomeHparams, Variant};
use kedit_models::{LanguageModel, ModelSpec};

const USAGE: &str = "gpu-edit: times ROME edits and a MEMIT batch on one model and backend, \
with ROME's memory-bandwidth floor measured in the same run; writes the workload the PyTorch side \
(benchmarks/gpu_edit_torch.py) repeats. Prints one JSON line.

Usage: gpu-edit [--model smollm2|random:llama2-7b|random:gptj-6b|...] [--backend cpu|cuda]
                [--rome-edits N (5)] [--memit-batch K (100)] [--workload FILE]
Example: gpu-edit --model random:llama2-7b --backend cuda --rome-edits 3 --memit-batch 0";

struct Args {
    model: String,
    backend: String,
    rome_edits: usize,
    memit_batch: usize,
    workload: Option<String>,
}

fn args() -> Result<Option<Args>> {
    let valued = [
        "--model",
        "--backend",
        "--rome-edits",
        "--memit-batch",
        "--workload",
    ];
    let Some(a) = kedit_benchmarks::cli_args(USAGE, &valued, &[])? else {
        return Ok(None);
    };
    let opt = |f: &str| a.iter().position(|x| x == f).and_then(|i| a.get(i + 1));
    let num = |f: &str, d: usize| -> Result<usize> {
        opt(f).map_or(Ok(d), |s| s.parse().with_context(|| format!("{f} {s}")))
    };
    Ok(Some(Args {
        model: opt("--model").cloned().unwrap_or("smollm2".into()),
        backend: opt("--backend").cloned().unwrap_or("cpu".into()),
        rome_edits: num("--rome-edits", 5)?,
        memit_batch: num("--memit-batch", 100)?,
        workload: opt("--workload").cloned(),
    }))
}

fn main() -> Result<()> {
    kedit_models::allocator::retain_freed_memory();
    let Some(a) = args()? else {
        return Ok(());
    };
    match a.backend.as_str() {
        "cpu" => run::<kedit_models::Cpu>(&a, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => {
            kedit_models::kernel_cache::init();
            run::<kedit_models::Gpu>(&a, &Default::default())
        }
        other => bail!("--backend {other}: expected cpu, or cuda in a build with --features cuda"),
    }
}

/// Bytes per second of an elementwise pass over 1 GiB of f32 (read once, written once), the best
/// of five after a warm-up.
fn bandwidth<B: Backend>(device: &B::Device) -> f64 {
    let n = 1 << 28;
    let x = Tensor::<B, 1>::ones([n], device);
    let mut best = f64::MAX;
    for i in 0..6 {
        B::sync(device).ok();
        let t = Instant::now();
        let y = x.clone() * 1.5;
        B::sync(device).ok();
        let s = t.elapsed().as_secs_f64();
        drop(y);
        if i > 0 {
            best = best.min(s);
        }
    }
    2.0 * 4.0 * n as f64 / best
}

/// f32 bytes of the weights a v* step reads once: blocks `layer..`, the final norm, the head.
fn step_bytes<B: Backend>(lm: &LanguageModel<B>, layer: usize) -> f64 {
    let c = &lm.model.config;
    let (d, ff) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let mlp = if c.family == kedit_models::Family::Llama {
        3
    } else {
        2
    } * d
        * ff;
    let block = d * q + 2 * d * kv + q * d + mlp + 4 * d;
    4.0 * ((c.num_layers - layer) * block + d * c.vocab_size + 2 * d) as f64
}

/// How this run's products are computed: "3xTF32, presplit" (constant weights split once per
/// edit), "3xTF32" (split at every product, `KEDIT_CUDA_PRESPLIT=off`), "TF32" or "f32", and
/// the cubek kernel `KEDIT_CUDA_KERNEL` chose, if any.
fn matmul_kind<B: Backend>(backend: &str) -> String {
    #[cfg(feature = "cuda-kernels")]
    let (f32_kernel, kernel) = match kedit_models::kernel::chosen().filter(|_| backend == "cuda") {
        Some((name, _)) => (kedit_models::kernel::chosen_is_f32(), format!(" ({name})")),
        None => (false, String::new()),
    };
    #[cfg(not(feature = "cuda-kernels"))]
    let (f32_kernel, kernel) = (false, String::new());
    // Runs before session 15 split every product and are labelled "3xTF32".
    let kind = if kedit_models::layers::presplits_weights::<B>() {
        "3xTF32, presplit"
    } else if kedit_models::layers::splits_matmul::<B>() {
        "3xTF32"
    } else if backend == "cuda" && !f32_kernel {
        "TF32"
    } else {
        "f32"
    };
    format!("{kind}{kernel}")
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn run<B: Backend>(a: &Args, device: &B::Device) -> Result<()> {
    let t = Instant::now();
    let mut lm = LanguageModel::<B>::load(&ModelSpec::parse(&a.model)?, device)?;
    B::sync(device).ok();
    let load_s = t.elapsed().as_secs_f64();
    let n_layers = lm.model.config.num_layers;
    let big = lm.model.config.hidden_size >= 4096;
    let reqs: Vec<EditRequest> = kedit_benchmarks::requests()?;

    // EasyEdit's llama-7b / gpt-j-6B settings where the model has that size; else the bundled
    // SmolLM2 ones.
    let mut rome_h = RomeHparams::smollm2();
    let mut memit_h = MemitHparams::smollm2();
    if big {
        rome_h.layers = vec![5];
        memit_h.layers = (4..=8).collect();
    } else if n_layers <= rome_h.layers[0] {
        // A tiny model, for trying the harness: its first layers.
        rome_h.layers = vec![0];
        memit_h.layers = (0..n_layers - 1).collect();
    }
    rome_h.v_loss_layer = Some(n_layers - 1);
    memit_h.v_loss_layer = Some(n_layers - 1);
    rome_h.mom2_adjustment = false;
    let layer = rome_h.layers[0];

    let bw = bandwidth::<B>(device);
    let bytes = step_bytes(&lm, layer);

    let mut rome = Rome::new(rome_h.clone(), Variant::Original);
    let t = Instant::now();
    rome.key(&lm, &reqs[0])?; // samples the context templates once, as a run does
    let templates_s = t.elapsed().as_secs_f64();
    let templates = kedit_locate_edit::templates::context_templates(
        &lm,
        &rome_h.context_template_length_params,
        rome_h.seed,
    )?;
    let memit_templates = kedit_locate_edit::templates::context_templates(
        &lm,
        &memit_h.context_template_length_params,
        memit_h.seed,
    )?;
    let snapshot = Snapshot::take(&lm.model);
    let (mut times, mut steps, mut positions) = (Vec::new(), Vec::new(), Vec::new());
    for r in &reqs[..a.rome_edits.min(reqs.len())] {
        let s0 = z::STEPS.load(Ordering::Relaxed);
        let t = Instant::now();
        rome.apply(&mut lm, std::slice::from_ref(r))?;
        B::sync(device).ok();
        times.push(t.elapsed().as_secs_f64());
        steps.push(z::STEPS.load(Ordering::Relaxed) - s0);
        positions.push(*z::SUFFIX_POSITIONS.lock().expect("not poisoned"));
        snapshot.clone().restore(&mut lm.model);
    }
    let floors: Vec<f64> = steps.iter().map(|&s| 2.0 * bytes * s as f64 / bw).collect();
    // The products' arithmetic: each v* step multiplies every suffix position (padding
    // included, as run) by each weight above the edit layer twice, forward and for the input
    // gradient (the weights are constants), 2 FLOP each; attention over the cached prefix is
    // left out. Over the edit's time (key and update included), a lower bound on the rate.
    let tflop: Vec<f64> = positions
        .iter()
        .zip(&steps)
        .map(|(&(rows, _), &s)| 4.0 * rows as f64 * (bytes / 4.0) * s as f64 / 1e12)
        .collect();
    let tflop_per_s: Vec<f64> = tflop.iter().zip(&times).map(|(f, t)| f / t).collect();
    let rome_median = median(&times);
    let floor_median = median(&floors);

    let mut memit = serde_json::Value::Null;
    if a.memit_batch > 0 {
        let batch = &reqs[..a.memit_batch.min(reqs.len())];
        let ff = lm.model.config.intermediate_size;
        let mut editor = Memit::new(memit_h.clone()).with_second_moments(
            memit_h
                .layers
                .iter()
                .map(|&l| SecondMoment::identity(l, ff))
                .collect(),
        );
        let s0 = z::STEPS.load(Ordering::Relaxed);
        let t = Instant::now();
        editor.apply(&mut lm, batch)?;
        B::sync(device).ok();
        let s = t.elapsed().as_secs_f64();
        memit = serde_json::json!({"batch": batch.len(), "layers": memit_h.layers, "time_s": s,
            "per_request_s": s / batch.len() as f64,
            "z_steps": z::STEPS.load(Ordering::Relaxed) - s0});
        snapshot.restore(&mut lm.model);
    }

    if let Some(path) = &a.workload {
        let w = serde_json::json!({"model": a.model, "layer": layer, "templates": templates,
            "rome": {"v_num_grad_steps": rome_h.v_num_grad_steps, "v_lr": rome_h.v_lr,
                "v_weight_decay": rome_h.v_weight_decay, "clamp_norm_factor": rome_h.clamp_norm_factor,
                "kl_factor": rome_h.kl_factor, "steps": steps},
            "memit": {"layers": memit_h.layers, "mom2_update_weight": memit_h.mom2_update_weight,
                "v_num_grad_steps": memit_h.v_num_grad_steps, "v_lr": memit_h.v_lr,
                "v_weight_decay": memit_h.v_weight_decay, "clamp_norm_factor": memit_h.clamp_norm_factor,
                "kl_factor": memit_h.kl_factor, "templates": memit_templates, "batch": a.memit_batch},
            "requests": reqs.iter().take(a.memit_batch.max(a.rome_edits)).map(|r| serde_json::json!(
                {"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new})).collect::<Vec<_>>()});
        std::fs::write(path, serde_json::to_string_pretty(&w)?)
            .with_context(|| format!("{path}: cannot write the workload"))?;
    }
    println!(
        "{}",
        serde_json::json!({"benchmark": "gpu-edit", "side": "kedit", "model": a.model,
            "backend": a.backend, "load_s": load_s,
            "matmul": matmul_kind::<B>(&a.backend), "bandwidth_gbs": bw / 1e9,
            "rome": {"layer": layer, "edits": times.len(), "times_s": times, "steps": steps,
                "median_s": rome_median, "templates_s": templates_s,
                "bytes_per_step": 2.0 * bytes, "floor_s": floors, "floor_median_s": floor_median,
                "ratio_to_floor": rome_median / floor_median,
                "suffix_positions": positions, "tflop": tflop, "tflop_per_s": tflop_per_s},
            "memit": memit})
    );
    Ok(())
}
