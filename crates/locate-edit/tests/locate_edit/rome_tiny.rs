//! ROME on the tiny random Llama: the edit takes, is deterministic, and its patch reproduces it.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor, Patch};
use kedit_locate_edit::hparams::Hparams;
use kedit_locate_edit::{Rome, RomeHparams, Variant};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};

fn tiny<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    LanguageModel::load_hf(&dir, device).unwrap()
}

fn hparams() -> RomeHparams {
    let mut h = RomeHparams::smollm2();
    h.layers = vec![0];
    h.context_template_length_params = vec![[4, 3]];
    h.mom2_adjustment = false;
    h
}

fn request() -> EditRequest {
    EditRequest {
        prompt: "The capital of {} is".into(),
        subject: "France".into(),
        relation: "P36".into(),
        target_new: "Rome".into(),
        target_true: "Paris".into(),
    }
}

fn margin<B: Backend>(lm: &LanguageModel<B>) -> f32 {
    let s = lm
        .score(&[
            ("The capital of France is", " Rome"),
            ("The capital of France is", " Paris"),
        ])
        .unwrap();
    s[1].mean_nll() - s[0].mean_nll()
}

test_device!(
    rome_makes_the_model_prefer_the_new_target_and_is_reproducible,
    rome_takes
);
fn rome_takes<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let mut lm = tiny::<B>(device);
    let before = margin(&lm);
    let mut rome = Rome::new(hparams(), Variant::RRome);
    let patch = rome.apply(&mut lm, &[request()]).unwrap();
    let after = margin(&lm);
    assert!(
        after > 0.0 && after > before,
        "p(new) must beat p(true) after the edit: margin {before} -> {after}"
    );

    // Same seed, fresh model: the same patch, bit for bit.
    let mut lm2 = tiny::<B>(device);
    let patch2 = Rome::new(hparams(), Variant::RRome)
        .apply(&mut lm2, &[request()])
        .unwrap();
    assert!(
        patch2 == patch,
        "two runs with the same seed gave different patches"
    );

    // The saved patch applied to a fresh model reproduces the edited model.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rome.safetensors");
    patch.save(&f).unwrap();
    let mut lm3 = tiny::<B>(device);
    Patch::load(&f).unwrap().apply(&mut lm3.model).unwrap();
    assert_eq!(margin(&lm3).to_bits(), after.to_bits());
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn about(prompt: &str) -> EditRequest {
    EditRequest {
        prompt: prompt.into(),
        ..request()
    }
}

test_device!(
    fact_token_last_reads_a_key_that_carries_the_relation_and_edits,
    fact_token_last
);
/// The S2RKE mechanism and the open question it raises (paper.md §7): under `subject_last`, two
/// prompts that start with the same subject share their key whatever the relation; under `last`
/// they do not, and ROME still makes its edit there.
fn fact_token_last<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let mut lm = tiny::<B>(device);
    let (a, b) = (
        about("{} is a citizen of"),
        about("{} was born in the city"),
    );
    let keys = |h: RomeHparams| {
        let mut rome = Rome::new(h, Variant::Original);
        let ka = rome.layer_keys(&lm, &a).unwrap().remove(0).1;
        let kb = rome.layer_keys(&lm, &b).unwrap().remove(0).1;
        cosine(&ka, &kb)
    };
    let same = keys(hparams());
    let mut last = hparams();
    last.fact_token = "last".into();
    let apart = keys(last.clone());
    assert!(
        same > 0.9999,
        "subject_last: one subject's keys must coincide, cosine {same}"
    );
    assert!(
        apart < 0.99,
        "last: keys of two relations must differ, cosine {apart}"
    );

    let before = margin(&lm);
    Rome::new(last, Variant::Original)
        .apply(&mut lm, &[request()])
        .unwrap();
    let after = margin(&lm);
    assert!(
        after > 0.0 && after > before,
        "fact_token last: p(new) must beat p(true) after the edit: margin {before} -> {after}"
    );
}

#[test]
fn unknown_fact_token_is_named() {
    let text = include_str!("../../hparams/rome-smollm2.yaml")
        .replace("fact_token: subject_last", "fact_token: subject_first");
    let e = RomeHparams::from_yaml_str(&text, "h.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("h.yaml") && e.contains("`fact_token`") && e.contains("subject_first"),
        "{e}"
    );
    let ok = text.replace("fact_token: subject_first", "fact_token: last");
    assert_eq!(
        RomeHparams::from_yaml_str(&ok, "h.yaml")
            .unwrap()
            .fact_token,
        "last"
    );
}

#[test]
fn unknown_hparams_key_is_named() {
    let e = RomeHparams::from_yaml_str(
        "layers: [4]\nfact_token: subject_last\nv_lr_typo: 1\n",
        "h.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("h.yaml") && e.contains("v_lr_typo"), "{e}");
}

#[test]
fn subject_missing_from_prompt_is_an_error() {
    let mut lm = tiny::<Cpu>(&Default::default());
    let mut r = request();
    r.prompt = "The capital city is".into();
    let e = Rome::new(hparams(), Variant::RRome)
        .apply(&mut lm, &[r])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("{}"), "{e}");
}

/// The same ROME edit on the GPU and on the CPU. Tolerance: the patches agree to 2e-2 in
/// relative Frobenius norm. ROME's value is 20+ Adam steps on a loss whose matmuls run on TF32
/// tensor cores on the GPU (~5e-4 relative per product); the optimiser amplifies that noise
/// step by step, while a wrong kernel would give an unrelated patch (relative error ~1).
#[cfg(feature = "cuda")]
#[test]
fn rome_patch_on_cuda_matches_cpu() {
    let mut cpu = tiny::<Cpu>(&Default::default());
    let mut gpu = tiny::<kedit_models::Gpu>(&Default::default());
    let a = Rome::new(hparams(), Variant::RRome)
        .apply(&mut cpu, &[request()])
        .unwrap();
    let b = Rome::new(hparams(), Variant::RRome)
        .apply(&mut gpu, &[request()])
        .unwrap();
    let e = b.relative_difference(&a);
    assert!(
        e <= 2e-2,
        "CUDA vs CPU ROME patch: relative difference {e:e}"
    );
    assert!(margin(&gpu) > 0.0, "the edit takes on the GPU too");
}
