//! The tiny random Llama against transformers' logits, and gradients against finite differences.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use kedit_models::LanguageModel;
use serde_json::Value;

mod common;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(p)
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llama/reference.json")).unwrap())
        .unwrap()
}

/// Compare all logits of every reference prompt. Tolerance: 1e-4 of the largest reference logit
/// of the row: f32 sums in a different order than PyTorch's drift by ~1e-6 relative per layer.
fn check_logits<B: Backend>(lm: &LanguageModel<B>) {
    let e = common::max_rel_logit_error(lm, &reference());
    assert!(
        e <= 1e-4,
        "logits off by {e:e} relative to the row's largest"
    );
}

#[test]
fn safetensors_logits_match_transformers() {
    let lm = LanguageModel::<NdArray<f32>>::load_hf(&fixture("tiny-llama"), &Default::default())
        .unwrap();
    check_logits(&lm);
}

#[test]
fn gguf_logits_match_transformers() {
    let lm = LanguageModel::<NdArray<f32>>::load_gguf(
        &fixture("tiny-llama/tiny-llama.gguf"),
        &Default::default(),
    )
    .unwrap();
    check_logits(&lm);
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

#[test]
fn batched_padded_forward_equals_single_prompts() {
    let lm = LanguageModel::<NdArray<f32>>::load_hf(&fixture("tiny-llama"), &Default::default())
        .unwrap();
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
                (single[j] - batched[i * v + j]).abs() < 1e-4,
                "prompt {i} vocab {j}: {} vs {}",
                single[j],
                batched[i * v + j]
            );
        }
    }
}

#[test]
fn same_input_gives_bit_identical_logits() {
    let lm =
        LanguageModel::<kedit_models::Cpu>::load_hf(&fixture("tiny-llama"), &Default::default())
            .unwrap();
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
