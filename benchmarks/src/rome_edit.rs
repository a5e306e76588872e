//! One ROME edit on the default model, as `kedit edit` runs it: bundled hyperparameters (layer 4,
//! at most 25 v* steps with early stop, 21 context templates, C⁻¹k from cached statistics), the editor's
//! templates sampled once beforehand (as a run does once per process). Times `Rome::apply` on
//! the first record of each of the first N subjects of the committed dataset, each on the
//! unedited model. Prints a JSON line with every time, the median and each edit's v* steps.
//!
//! Usage: rome-edit [--edits N]

use std::time::Instant;

use anyhow::Result;
use kedit_editing::{Editor, Snapshot};
use kedit_locate_edit::{stats, Rome, RomeHparams, Variant};
use kedit_models::fetch;

const USAGE: &str = "rome-edit: one ROME edit on SmolLM2 as `kedit edit` runs it, on the first \
record of each of the first N subjects, each on the unedited model; prints a JSON line with \
every time, the median and each edit's v* steps.

Usage: rome-edit [--edits N (5)]
Example: rome-edit --edits 5";

fn main() -> Result<()> {
    kedit_models::allocator::retain_freed_memory();
    let Some(args) = kedit_benchmarks::cli_args(USAGE, &["--edits"], &[])? else {
        return Ok(());
    };
    let n: usize = args
        .iter()
        .position(|a| a == "--edits")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let (mut lm, all) = kedit_benchmarks::smollm2_and_requests()?;
    let reqs = &all[..n.min(all.len())];
    let hparams = RomeHparams::smollm2();
    let mut rome = Rome::new(hparams.clone(), Variant::Original);
    if hparams.mom2_adjustment {
        // Cached by `kedit stats` / `kedit edit`; computed here on first use (not timed).
        let m = stats::load_or_compute(
            &lm,
            hparams.layers[0],
            std::path::Path::new(stats::DEFAULT_CORPUS),
            hparams.mom2_n_samples.unwrap_or(100_000),
            &fetch::cache_dir()?.join("stats"),
        )?;
        rome = rome.with_second_moment(m);
    }
    let t = Instant::now();
    rome.key(&lm, &reqs[0])?; // samples the context templates
    let templates_s = t.elapsed().as_secs_f64();
    let snapshot = Snapshot::take(&lm.model);
    let mut times = Vec::new();
    // v* steps per edit: early stopping makes them differ from fact to fact, and a change in
    // rounding can move them by one; time per step compares builds where time per edit cannot.
    let mut steps = Vec::new();
    let steps_run = || kedit_locate_edit::z::STEPS.load(std::sync::atomic::Ordering::Relaxed);
    for r in reqs {
        let (t, s0) = (Instant::now(), steps_run());
        rome.apply(&mut lm, std::slice::from_ref(r))?;
        times.push(t.elapsed().as_secs_f64());
        steps.push(steps_run() - s0);
        snapshot.clone().restore(&mut lm.model);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{}",
        serde_json::json!({"benchmark": "rome-edit", "model": "SmolLM2-135M-Instruct Q4_1",
            "hparams": "crates/locate-edit/hparams/rome-smollm2.yaml", "edits": times.len(),
            "templates_s": templates_s, "times_s": times, "median_s": median, "steps": steps,
            "openblas": cfg!(feature = "openblas"),
            "openblas_coretype": std::env::var("OPENBLAS_CORETYPE").ok(),
            "cpu_matmul": kedit_benchmarks::cpu_matmul(),
            "cpu_fused": kedit_benchmarks::cpu_fused(),
            "mimalloc_purge_delay": kedit_models::allocator::purge_delay()})
    );
    Ok(())
}
