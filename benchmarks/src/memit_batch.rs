//! MEMIT batch edits on the default model, as `kedit edit --method memit --batch` runs them:
//! bundled hyperparameters, statistics cached beforehand (not timed), templates sampled once.
//! For each batch size, one `Memit::apply` of the first record of that many distinct subjects of
//! the committed dataset, on the unedited model; the time is split into the targets (z, one
//! optimisation per request) and the layer updates (keys, residuals, f64 solves). Prints one JSON
//! line per size.
//!
//! Usage: memit-batch [--sizes 1,10,100]

use std::time::Instant;

use anyhow::Result;
use kedit_editing::{Editor, Snapshot};
use kedit_locate_edit::{stats, Memit, MemitHparams};
use kedit_models::fetch;

const USAGE: &str = "memit-batch: MEMIT batch edits on SmolLM2 as `kedit edit --method memit \
--batch` runs them, one apply per batch size on the unedited model, the time split into targets \
and layer updates; prints one JSON line per size.

Usage: memit-batch [--sizes 1,10,100]
Example: memit-batch --sizes 1,10";

fn main() -> Result<()> {
    kedit_models::allocator::retain_freed_memory();
    let Some(args) = kedit_benchmarks::cli_args(USAGE, &["--sizes"], &[])? else {
        return Ok(());
    };
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map_or("1,10,100", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let (mut lm, reqs) = kedit_benchmarks::smollm2_and_requests()?;
    let hparams = MemitHparams::smollm2();
    let m = stats::load_or_compute_layers(
        &lm,
        &hparams.layers,
        std::path::Path::new(stats::DEFAULT_CORPUS),
        hparams.mom2_n_samples.unwrap_or(100_000),
        &fetch::cache_dir()?.join("stats"),
    )?;
    let mut memit = Memit::new(hparams).with_second_moments(m);
    memit.layer_keys(&lm, &reqs[0])?; // samples the context templates
    let snapshot = Snapshot::take(&lm.model);
    for n in sizes {
        let t = Instant::now();
        memit.apply(&mut lm, &reqs[..n.min(reqs.len())])?;
        let total = t.elapsed().as_secs_f64();
        snapshot.clone().restore(&mut lm.model);
        let (targets_s, update_s) = memit.last_timing.unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({"benchmark": "memit-batch", "model": "SmolLM2-135M-Instruct Q4_1",
                "hparams": "crates/locate-edit/hparams/memit-smollm2.yaml", "requests": n,
                "total_s": total, "per_request_s": total / n as f64, "targets_s": targets_s,
                "update_s": update_s, "openblas": cfg!(feature = "openblas"),
                "openblas_coretype": std::env::var("OPENBLAS_CORETYPE").ok()})
        );
    }
    Ok(())
}
