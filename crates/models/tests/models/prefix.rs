//! The prefix-cached suffix forward equals the whole-row forward at the suffix positions, with an
//! intervention at the first suffix token (ROME's v* setting), on the tiny random Llama, GPT-2
//! (learned positions) and GPT-J (partial rotary).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kedit_models::prefix::suffixes;
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, CausalLm, Interventions, Site};

use crate::common::load_tiny;

test_device!(suffix_forward_matches_the_whole_rows, all_families);
fn all_families<B: Backend>(device: &B::Device, dev: TestDevice) {
    // CPU 1e-5 of the largest logit: the same f32 sums split at the prefix. CUDA 2e-3: the
    // split changes matmul shapes and so tilings, on TF32 tensor cores.
    let tol = dev.pick(1e-5, 2e-3);
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        check::<B>(name, device, tol);
    }
}

fn check<B: Backend>(name: &str, device: &B::Device, tol: f32) {
    let lm = load_tiny::<B>(name, device);
    let seqs: Vec<Vec<u32>> = [
        "Some text before. The capital of France is",
        "The capital of France is",
        "A much longer context template sits here. The capital of France is",
        "France is a",
    ]
    .iter()
    .map(|t| lm.encode(t).unwrap())
    .collect();
    // Suffixes start a few tokens from each row's end, at different absolute positions.
    let prefix: Vec<usize> = seqs
        .iter()
        .map(|s| s.len().saturating_sub(4).max(1))
        .collect();
    let suffix_len = seqs
        .iter()
        .zip(&prefix)
        .map(|(s, p)| s.len() - p)
        .max()
        .unwrap();
    let start = 1;
    let m = &lm.model;
    let d = m.config.hidden_size;
    let ids = m.batch(&seqs);
    let iv0 = Interventions::none()
        .capture(start - 1, Site::Residual)
        .stop_after(start - 1);
    let h = m.forward(ids, &iv0).captured[&(start - 1, Site::Residual)].clone();
    let delta = Tensor::<B, 1>::from_data(
        TensorData::new(
            (0..d).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
            [d],
        ),
        &m.device(),
    );

    let full_pos: Vec<(usize, usize)> = prefix.iter().enumerate().map(|(i, &p)| (i, p)).collect();
    let full = m.forward_from(
        start,
        h.clone(),
        &Interventions::none().add(start, Site::MlpOut, full_pos, delta.clone()),
    );
    let cache = m.prefix_cache(start, h.clone(), &prefix, suffix_len);
    let suf_pos: Vec<(usize, usize)> = (0..seqs.len()).map(|i| (i, 0)).collect();
    let suf = m.forward_suffix(
        &cache,
        suffixes(&h, &prefix, suffix_len),
        &Interventions::none().add(start, Site::MlpOut, suf_pos, delta),
    );

    let mut want_at = Vec::new();
    let mut got_at = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        for p in prefix[i]..s.len() {
            want_at.push((i, p));
            got_at.push((i, p - prefix[i]));
        }
    }
    let want = m
        .logits_at(full.hidden, &want_at)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let got = m
        .logits_at(suf.hidden, &got_at)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
    let worst = want
        .iter()
        .zip(&got)
        .fold(0f32, |a, (w, g)| a.max((w - g).abs()));
    assert!(
        worst <= tol * scale,
        "{name}: max |Δlogit| {worst} vs scale {scale}"
    );
}
