//! The tiny random Llama and the requests the method tests edit it with.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Patch};
use kedit_models::LanguageModel;

pub fn tiny_on<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    LanguageModel::load_hf(&dir, device).unwrap()
}

pub fn r(prompt: &str, subject: &str, new: &str, old: &str) -> EditRequest {
    EditRequest {
        prompt: prompt.into(),
        subject: subject.into(),
        relation: "P0".into(),
        target_new: new.into(),
        target_true: old.into(),
    }
}

/// Two facts about two subjects.
pub fn requests() -> Vec<EditRequest> {
    vec![
        r("The capital of {} is", "France", "Rome", "Paris"),
        r("{} plays the", "Toko Yasuda", "piano", "guitar"),
    ]
}

/// The next-token logits after one fixed prompt: equal vectors mean the same model.
pub fn logits<B: Backend>(lm: &LanguageModel<B>) -> Vec<f32> {
    let ids = lm.encode("The capital of France is").unwrap();
    lm.next_token_logits(&[ids]).into_data().to_vec().unwrap()
}

/// The patch, saved and loaded onto a fresh tiny model, gives `lm`'s logits bit for bit.
pub fn assert_saved_patch_is_the_edit<B: Backend>(
    patch: &Patch,
    lm: &LanguageModel<B>,
    device: &B::Device,
) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.safetensors");
    patch.save(&file).unwrap();
    let mut fresh = tiny_on::<B>(device);
    Patch::load(&file).unwrap().apply(&mut fresh.model).unwrap();
    assert_eq!(logits(&fresh), logits(lm));
}
