//! Why a KN edit can wreck perplexity: the neurons it picks for one request, how strongly each
//! fires on held-out text, and the held-out perplexity after the whole edit, after it without the
//! "loud" neurons (mean |activation| on that text above `--loud`), and after the loud ones alone.
//!
//! KN writes the same vector (target minus greedy-token embeddings) into every kept neuron's
//! output row, so on any text the edit adds `Σ_j a_j(token) × vector` to the residual stream: a
//! neuron that fires everywhere writes the target's embedding everywhere.
//!
//! ```text
//! cargo run -p kedit-neuron-edit --example kn_loud_neurons -- \
//!     ~/.cache/kedit/models/SmolLM2-135M-Instruct.Q4_1.gguf fixtures/s2rke-wikidata-deep.json s12r5
//! ```
//! Arguments: GGUF model, S2RKE-format file, case id, then optionally held-out tokens (2048, the
//! tail of kedit's WikiText-2 text, as `kedit bench --perplexity-tokens`) and the loud threshold
//! (10).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::Tensor;
use kedit_editing::{requests::load_cases, Editor};
use kedit_eval::perplexity::{perplexity, tail_ids, DEFAULT_WINDOW};
use kedit_models::{CausalLm, Cpu, Interventions, LanguageModel, Site};
use kedit_neuron_edit::{Kn, KnHparams};

const WIKITEXT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/wikitext/wikitext-2-raw.wiki.test.raw"
);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: kn_loud_neurons MODEL.gguf DATA.json CASE_ID [TOKENS] [LOUD]");
    }
    let tokens: usize = args
        .get(3)
        .map_or(Ok(2048), |s| s.parse())
        .context("TOKENS")?;
    let loud_above: f32 = args
        .get(4)
        .map_or(Ok(10.0), |s| s.parse())
        .context("LOUD")?;
    let dev = Default::default();
    let load = || LanguageModel::<Cpu>::load_gguf(Path::new(&args[0]), &dev);
    let mut lm = load()?;
    let case = load_cases(Path::new(&args[1]))?
        .into_iter()
        .find(|c| c.case_id == args[2])
        .with_context(|| format!("{}: no case {}", args[1], args[2]))?;
    let req = case.request;
    println!(
        "{}: {:?} -> {:?} (was {:?})",
        case.case_id,
        req.full_prompt(),
        req.target_new,
        req.target_true
    );

    // Edit a second copy once; its patch names the kept neurons (their rows are the nonzero
    // ones), so the integrated gradients run once.
    let mut edited = load()?;
    let patch = Kn::new(KnHparams::smollm2()).apply(&mut edited, std::slice::from_ref(&req))?;
    let neurons: Vec<(usize, usize)> = patch
        .entries
        .iter()
        .flat_map(|e| {
            e.delta
                .chunks(e.shape[1])
                .enumerate()
                .filter(|(_, row)| row.iter().any(|x| *x != 0.0))
                .map(move |(j, _)| (e.layer, j))
        })
        .collect();
    if neurons.is_empty() {
        bail!("{}: KN edited no neuron", case.case_id);
    }
    let text = std::fs::read_to_string(WIKITEXT).context(WIKITEXT)?;
    let held_out = tail_ids(&lm, &text, tokens)?.0;

    // Each neuron's mean |activation| (its MLP key: what multiplies its output row) over the
    // held-out windows, read as the perplexity reads them.
    let layers: BTreeSet<usize> = neurons.iter().map(|n| n.0).collect();
    let mut iv = Interventions::none();
    for &l in &layers {
        iv = iv.capture(l, Site::MlpKey);
    }
    let mut sum = vec![0f64; neurons.len()];
    let mut count = 0usize;
    for w in held_out.chunks(DEFAULT_WINDOW) {
        let fwd = lm.model.forward(lm.model.batch(&[w.to_vec()]), &iv);
        for (i, &(l, j)) in neurons.iter().enumerate() {
            let k: Tensor<Cpu, 3> = fwd.captured[&(l, Site::MlpKey)].clone();
            let col: Vec<f32> = k
                .narrow(2, j, 1)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            sum[i] += col.iter().map(|x| x.abs() as f64).sum::<f64>();
        }
        count += w.len();
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    let loud: BTreeSet<(usize, usize)> = neurons
        .iter()
        .zip(&mean)
        .filter(|(_, m)| **m > loud_above)
        .map(|(n, _)| *n)
        .collect();
    let mut by_layer = vec![0; lm.model.config.num_layers];
    for &(l, _) in &neurons {
        by_layer[l] += 1;
    }
    println!("{} neurons; per layer {by_layer:?}", neurons.len());
    for ((l, j), m) in neurons.iter().zip(&mean).filter(|(n, _)| loud.contains(n)) {
        println!("loud: layer {l} neuron {j}: mean |a| {m:.1}");
    }
    let typical = {
        let mut m = mean.clone();
        m.sort_by(f32::total_cmp);
        m[m.len() / 2]
    };
    println!("median mean |a| over the kept neurons {typical:.3}");

    let ppl =
        |lm: &LanguageModel<Cpu>| perplexity(lm, &held_out, DEFAULT_WINDOW).map(|p| p.perplexity);
    println!("perplexity, unedited: {:.4e}", ppl(&lm)?);
    println!("perplexity, the KN edit: {:.4e}", ppl(&edited)?);
    for keep_loud in [false, true] {
        let mut part = patch.clone();
        for e in &mut part.entries {
            let d = e.shape[1];
            for j in 0..e.shape[0] {
                if loud.contains(&(e.layer, j)) != keep_loud {
                    e.delta[j * d..(j + 1) * d].fill(0.0);
                }
            }
        }
        let applied = part.apply(&mut lm.model)?;
        let what = if keep_loud { "only the" } else { "without the" };
        println!(
            "perplexity, {what} {} loud neurons: {:.4e}",
            loud.len(),
            ppl(&lm)?
        );
        applied.revert(&mut lm.model);
    }
    Ok(())
}
