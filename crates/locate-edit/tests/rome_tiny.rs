//! ROME on the tiny random Llama: the edit takes, is deterministic, and its patch reproduces it.

use std::path::PathBuf;

use kedit_editing::{EditRequest, Editor, Patch};
use kedit_locate_edit::hparams::Hparams;
use kedit_locate_edit::{Rome, RomeHparams, Variant};
use kedit_models::{Cpu, LanguageModel};

fn tiny() -> LanguageModel<Cpu> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    LanguageModel::load_hf(&dir, &Default::default()).unwrap()
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

fn margin(lm: &LanguageModel<Cpu>) -> f32 {
    let s = lm
        .score(&[
            ("The capital of France is", " Rome"),
            ("The capital of France is", " Paris"),
        ])
        .unwrap();
    s[1].mean_nll() - s[0].mean_nll()
}

#[test]
fn rome_makes_the_model_prefer_the_new_target_and_is_reproducible() {
    let mut lm = tiny();
    let before = margin(&lm);
    let mut rome = Rome::new(hparams(), Variant::RRome);
    let patch = rome.apply(&mut lm, &[request()]).unwrap();
    let after = margin(&lm);
    assert!(
        after > 0.0 && after > before,
        "p(new) must beat p(true) after the edit: margin {before} -> {after}"
    );

    // Same seed, fresh model: the same patch, bit for bit.
    let mut lm2 = tiny();
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
    let mut lm3 = tiny();
    Patch::load(&f).unwrap().apply(&mut lm3.model).unwrap();
    assert_eq!(margin(&lm3).to_bits(), after.to_bits());
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
    let mut lm = tiny();
    let mut r = request();
    r.prompt = "The capital city is".into();
    let e = Rome::new(hparams(), Variant::RRome)
        .apply(&mut lm, &[r])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("{}"), "{e}");
}
