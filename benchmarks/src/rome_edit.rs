//! One ROME edit on the default model, as `kedit edit` runs it: bundled hyperparameters (layer 4,
//! at most 25 v* steps with early stop, 21 context templates, no covariance), the editor's
//! templates sampled once beforehand (as a run does once per process). Times `Rome::apply` on
//! the first record of each of the first N subjects of the committed dataset, each on the
//! unedited model. Prints a JSON line with every time and the median.
//!
//! Usage: rome-edit [--edits N]

use std::time::Instant;

use anyhow::Result;
use kedit_editing::{requests::load_cases, Editor, Snapshot};
use kedit_locate_edit::{Rome, RomeHparams, Variant};
use kedit_models::{fetch, Cpu, LanguageModel};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--edits")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let mut lm = LanguageModel::<Cpu>::load_gguf(&fetch::smollm2()?, &Default::default())?;
    let cases = load_cases(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/s2rke-wikidata.json"
    )))?;
    let mut seen = std::collections::HashSet::new();
    let reqs: Vec<_> = cases
        .iter()
        .filter(|c| seen.insert(c.subject_id.clone()))
        .take(n)
        .map(|c| c.request.clone())
        .collect();
    let mut rome = Rome::new(RomeHparams::smollm2(), Variant::Original);
    let t = Instant::now();
    rome.key(&lm, &reqs[0])?; // samples the context templates
    let templates_s = t.elapsed().as_secs_f64();
    let snapshot = Snapshot::take(&lm.model);
    let mut times = Vec::new();
    for r in &reqs {
        let t = Instant::now();
        rome.apply(&mut lm, std::slice::from_ref(r))?;
        times.push(t.elapsed().as_secs_f64());
        snapshot.clone().restore(&mut lm.model);
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{}",
        serde_json::json!({"benchmark": "rome-edit", "model": "SmolLM2-135M-Instruct Q4_1",
            "hparams": "crates/locate-edit/hparams/rome-smollm2.yaml", "edits": times.len(),
            "templates_s": templates_s, "times_s": times, "median_s": median,
            "openblas": cfg!(feature = "openblas")})
    );
    Ok(())
}
