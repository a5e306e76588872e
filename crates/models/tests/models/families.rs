//! GPT-2 and GPT-J against transformers on tiny random checkpoints (logits and greedy
//! continuations), the f16 sharded GPT-2 against its f32 copy, and one-line load errors.

use std::path::{Path, PathBuf};

use crate::common::{ids_of, max_rel_logit_error};
use burn::tensor::backend::Backend;
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};
use serde_json::Value;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(p)
}

fn reference(dir: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("reference.json")).unwrap())
        .unwrap()
}

fn load(dir: &Path) -> LanguageModel<Cpu> {
    LanguageModel::load_hf(dir, &Default::default()).unwrap()
}

// Tolerance relative to the row's largest logit. CPU 1e-4: f32 sums in another order than
// PyTorch's drift by ~1e-6 relative per layer. CUDA 2e-3: f32 matmuls may run on TF32 tensor
// cores (10-bit mantissa, ~5e-4 relative per product).
test_device!(
    gpt2_and_gptj_logits_and_greedy_continuations_match_transformers,
    logits_and_greedy
);
fn logits_and_greedy<B: Backend>(device: &B::Device, dev: TestDevice) {
    let tol = dev.pick(1e-4, 2e-3);
    for name in ["tiny-gpt2", "tiny-gptj"] {
        let lm = LanguageModel::<B>::load_hf(&fixture(name), device).unwrap();
        let r = reference(name);
        let e = max_rel_logit_error(&lm, &r);
        assert!(e <= tol, "{name}: logits off by {e:e} (relative)");
        for (p, want) in r["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r["greedy"].as_array().unwrap())
        {
            let want = ids_of(want);
            let got = lm.generate(&[p.as_str().unwrap()], want.len()).unwrap();
            // kedit stops at EOS; transformers pads after it.
            let eos = lm.model.config.eos_token_id;
            let end = want
                .iter()
                .position(|t| Some(*t) == eos)
                .map_or(want.len(), |i| i + 1);
            assert_eq!(got[0], want[..end], "{name}: greedy continuation of {p}");
        }
    }
}

/// The f16 copy in two shards. Its weights are the f32 ones rounded to f16 (relative error
/// ≤ 2⁻¹¹), so its logits differ from the f32 copy's by what that rounding does to them:
/// transformers measured it on the same checkpoint (`max_abs_diff_from_f32`). kedit must (a)
/// match transformers' own logits of the f16 checkpoint like any checkpoint (1e-4 relative), and
/// (b) stay within 1.5 × transformers' f16-vs-f32 difference of the f32 reference.
#[test]
fn gpt2_f16_sharded_loads_like_its_f32_copy() {
    let dir = fixture("tiny-gpt2-f16");
    let shards = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "safetensors")
        })
        .count();
    assert_eq!(shards, 2, "the fixture is sharded in two");
    let lm = load(&dir);
    let r16 = reference("tiny-gpt2-f16");
    let e = max_rel_logit_error(&lm, &r16);
    assert!(e <= 1e-4, "f16 checkpoint vs transformers: {e:e}");
    let r32 = reference("tiny-gpt2");
    let allowed = 1.5 * r16["max_abs_diff_from_f32"].as_f64().unwrap();
    let scale_free = max_rel_logit_error(&lm, &r32);
    let max_logit = r32["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p.as_array().unwrap())
        .flat_map(|row| row.as_array().unwrap())
        .fold(0f64, |m, x| m.max(x.as_f64().unwrap().abs()));
    assert!(
        scale_free * max_logit <= allowed,
        "f16 vs f32 logits differ by up to {} (allowed {allowed})",
        scale_free * max_logit
    );
    assert!(allowed > 0.0, "f16 rounding must show");
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match LanguageModel::<Cpu>::load_hf(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_checkpoints_are_one_line_errors_naming_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy_dir(&fixture("tiny-gpt2"), dir);
    let config = dir.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();

    // Unknown model_type.
    std::fs::write(
        &config,
        original.replace("\"model_type\": \"gpt2\"", "\"model_type\": \"bert\""),
    )
    .unwrap();
    let e = load_err(dir);
    assert!(
        e.contains("config.json")
            && e.contains("model_type")
            && e.contains("bert")
            && !e.contains('\n'),
        "{e}"
    );

    // The config says a wider MLP than the weights have.
    std::fs::write(
        &config,
        original.replace("\"n_inner\": null", "\"n_inner\": 128"),
    )
    .unwrap();
    let e = load_err(dir);
    assert!(
        e.contains("model.safetensors")
            && e.contains("transformer.h.0.mlp.c_fc.weight")
            && !e.contains('\n'),
        "{e}"
    );

    // A tensor missing from the checkpoint.
    std::fs::write(&config, &original).unwrap();
    let file = dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "transformer.ln_f.bias")
        .collect();
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&file, out).unwrap();
    let e = load_err(dir);
    assert!(
        e.contains(&dir.display().to_string())
            && e.contains("transformer.ln_f.bias")
            && !e.contains('\n'),
        "{e}"
    );
}
