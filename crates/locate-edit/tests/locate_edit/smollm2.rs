//! ROME on the real default model (fetched on first use, as the CLI does): the same seed gives
//! patch files with equal sha256; a saved patch applied to a freshly loaded model gives logits
//! bit-identical to the model edited in memory; reverting gives the original logits bit for bit.
//! Short hyperparameters (5 steps, 4 templates) keep it quick; the code path is the full one.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kedit_editing::{EditRequest, Editor, Patch};
use kedit_locate_edit::{Rome, RomeHparams, Variant};
use kedit_models::testing::TestDevice;
use kedit_models::{fetch, test_device, CausalLm, Interventions, LanguageModel};
use sha2::{Digest, Sha256};

fn smollm2<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    let path = fetch::smollm2().expect("fetch the default model");
    LanguageModel::load_gguf(&path, device).unwrap()
}

fn logits<B: Backend>(lm: &LanguageModel<B>) -> Vec<u32> {
    let ids = lm.encode("Danielle Darrieux's mother tongue is").unwrap();
    let hidden = lm
        .model
        .forward(
            lm.model.batch(std::slice::from_ref(&ids)),
            &Interventions::none(),
        )
        .hidden;
    let l: Tensor<B, 2> = lm.model.logits_at(hidden, &[(0, ids.len() - 1)]);
    l.into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn edit<B: Backend>(lm: &mut LanguageModel<B>) -> Patch {
    let mut h = RomeHparams::smollm2();
    h.v_num_grad_steps = 5;
    h.context_template_length_params = vec![[5, 3]];
    // The covariance path has its own test (stats.rs); this one is about bytes and bits.
    h.mom2_adjustment = false;
    let req = EditRequest {
        prompt: "{}'s mother tongue is".into(),
        subject: "Danielle Darrieux".into(),
        relation: "P103".into(),
        target_new: "English".into(),
        target_true: "French".into(),
    };
    Rome::new(h, Variant::Original).apply(lm, &[req]).unwrap()
}

fn sha256(p: &std::path::Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

// Bit-exactness is per backend: the same kernels on the same inputs.
test_device!(smollm2_patches_are_reproducible_and_exact, reproducible);
fn reproducible<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = smollm2::<B>(device);
    let original = logits(&lm);
    let patch = edit(&mut lm);
    let edited = logits(&lm);
    assert_ne!(edited, original, "the edit changed nothing");
    let a = dir.path().join("a.safetensors");
    patch.save(&a).unwrap();

    // Same seed on a freshly loaded model: the same file, byte for byte.
    let mut lm2 = smollm2::<B>(device);
    let b = dir.path().join("b.safetensors");
    edit(&mut lm2).save(&b).unwrap();
    assert_eq!(sha256(&a), sha256(&b));

    // Loaded from disk onto a fresh model: the in-memory edited logits, bit for bit; revert
    // gives the original ones.
    let mut lm3 = smollm2::<B>(device);
    let applied = Patch::load(&a).unwrap().apply(&mut lm3.model).unwrap();
    assert!(
        logits(&lm3) == edited,
        "patched logits differ from the edited model's"
    );
    applied.revert(&mut lm3.model);
    assert!(
        logits(&lm3) == original,
        "revert did not restore the logits exactly"
    );
}

/// The same ROME edit of the real model on the GPU and on the CPU, and the same greedy
/// continuations before and after. Tolerance 2e-2 relative Frobenius norm on the patch: the
/// value is Adam steps over TF32 tensor-core matmuls on the GPU (~5e-4 relative per product),
/// noise the optimiser amplifies; a wrong kernel gives an unrelated patch (~1).
#[cfg(feature = "cuda")]
#[test]
fn smollm2_rome_on_cuda_matches_cpu() {
    let mut cpu = smollm2::<kedit_models::Cpu>(&Default::default());
    let mut gpu = smollm2::<kedit_models::Gpu>(&Default::default());
    let prompts = [
        "Danielle Darrieux's mother tongue is",
        "The Eiffel Tower is in",
    ];
    assert_eq!(
        gpu.generate(&prompts, 10).unwrap(),
        cpu.generate(&prompts, 10).unwrap(),
        "greedy continuations before the edit"
    );
    let a = edit(&mut cpu);
    let b = edit(&mut gpu);
    let e = b.relative_difference(&a);
    assert!(
        e <= 2e-2,
        "CUDA vs CPU ROME patch: relative difference {e:e}"
    );
}
