//! The tiny random Llama against transformers' logits, and gradients against finite differences.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, LanguageModel};
use serde_json::Value;

use crate::common;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(p)
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llama/reference.json")).unwrap())
        .unwrap()
}

/// Compare all logits of every reference prompt, relative to the largest reference logit of the
/// row. CPU 1e-4: f32 sums in a different order than PyTorch's drift by ~1e-6 relative per
/// layer. CUDA 2e-3: f32 matmuls may run on TF32 tensor cores (10-bit mantissa, ~5e-4 relative
/// per product).
fn check_logits<B: Backend>(lm: &LanguageModel<B>, dev: TestDevice) {
    let tol = dev.pick(1e-4, 2e-3);
    let e = common::max_rel_logit_error(lm, &reference());
    assert!(
        e <= tol,
        "logits off by {e:e} relative to the row's largest (tolerance {tol:e})"
    );
}

test_device!(safetensors_logits_match_transformers, safetensors_logits);
fn safetensors_logits<B: Backend>(device: &B::Device, dev: TestDevice) {
    let lm = LanguageModel::<B>::load_hf(&fixture("tiny-llama"), device).unwrap();
    check_logits(&lm, dev);
}

test_device!(gguf_logits_match_transformers, gguf_logits);
fn gguf_logits<B: Backend>(device: &B::Device, dev: TestDevice) {
    let lm = LanguageModel::<B>::load_gguf(&fixture("tiny-llama/tiny-llama.gguf"), device).unwrap();
    check_logits(&lm, dev);
    // The rebuilt GGUF tokenizer gives transformers' ids.
    let r = reference();
    for (p, ids) in r["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["ids"].as_array().unwrap())
    {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(lm.encode(p.as_str().unwrap()).unwrap(), want);
    }
}

test_device!(batched_padded_forward_equals_single_prompts, batched_padded);
fn batched_padded<B: Backend>(device: &B::Device, dev: TestDevice) {
    // CPU 1e-4 absolute: the same sums in another order; CUDA 2e-3: other matmul tilings per
    // batch shape on TF32 tensor cores.
    let tol = dev.pick(1e-4, 2e-3);
    let lm = LanguageModel::<B>::load_hf(&fixture("tiny-llama"), device).unwrap();
    let seqs: Vec<Vec<u32>> = [
        "The capital of France is",
        "Rome",
        "Toko Yasuda plays the guitar",
    ]
    .iter()
    .map(|p| lm.encode(p).unwrap())
    .collect();
    let batched: Vec<f32> = lm.next_token_logits(&seqs).into_data().to_vec().unwrap();
    let v = lm.model.config.vocab_size;
    for (i, s) in seqs.iter().enumerate() {
        let single: Vec<f32> = lm
            .next_token_logits(std::slice::from_ref(s))
            .into_data()
            .to_vec()
            .unwrap();
        for j in 0..v {
            assert!(
                (single[j] - batched[i * v + j]).abs() < tol,
                "prompt {i} vocab {j}: {} vs {}",
                single[j],
                batched[i * v + j]
            );
        }
    }
}

// Determinism holds per backend: the same kernels on the same inputs.
test_device!(same_input_gives_bit_identical_logits, bit_identical);
fn bit_identical<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let lm = LanguageModel::<B>::load_hf(&fixture("tiny-llama"), device).unwrap();
    let seqs: Vec<Vec<u32>> = [
        "The capital of France is",
        "Rome",
        "Toko Yasuda plays the guitar",
    ]
    .iter()
    .map(|p| lm.encode(p).unwrap())
    .collect();
    let a: Vec<f32> = lm.next_token_logits(&seqs).into_data().to_vec().unwrap();
    for _ in 0..5 {
        let b: Vec<f32> = lm.next_token_logits(&seqs).into_data().to_vec().unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "logits changed between runs"
        );
    }
}

// `random:llama-tiny` is the tiny fixture's shape with weights from the seed: it loads, runs,
// gives the same logits for the same seed and others for another seed, and its tokenizer's ids
// are valid in it.
test_device!(random_models_are_deterministic_in_the_seed, random_model);
fn random_model<B: Backend>(device: &B::Device, _dev: TestDevice) {
    use kedit_models::ModelSpec;
    let logits = |spec: &str| -> Vec<f32> {
        let lm = LanguageModel::<B>::load(&ModelSpec::parse(spec).unwrap(), device).unwrap();
        let ids = lm.encode("The capital of France is").unwrap();
        assert!(ids
            .iter()
            .all(|&t| (t as usize) < lm.model.config.vocab_size));
        lm.next_token_logits(&[ids])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap()
    };
    let a = logits("random:llama-tiny");
    assert!(a.iter().all(|x| x.is_finite()));
    assert_eq!(a, logits("random:llama-tiny:0"), "same seed, same model");
    assert_ne!(
        a,
        logits("random:llama-tiny:1"),
        "another seed, another model"
    );
    let e = ModelSpec::parse("random:llama-70b")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("random:llama-70b") && e.contains("llama2-7b"),
        "{e}"
    );
}
