//! The tiny random Llama and the requests the method tests edit it with.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor, Patch};
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

/// Two facts about one subject and one about another, as a same-subject batch holds them. Both
/// of the subject's prompts begin with it, so their keys are one vector (the key is read at the
/// subject's last token, which sees only the context and the subject).
pub fn same_subject_requests() -> Vec<EditRequest> {
    vec![
        r("{} plays the", "Toko Yasuda", "piano", "guitar"),
        r("{} was born in", "Toko Yasuda", "Rome", "Tokyo"),
        r("The capital of {} is", "France", "Rome", "Paris"),
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

/// NLL of `target_new` after each request's full prompt.
pub fn nll_new<B: Backend>(lm: &LanguageModel<B>, reqs: &[EditRequest]) -> Vec<f32> {
    reqs.iter()
        .map(|r| {
            let p = r.full_prompt();
            lm.score(&[(&p, &format!(" {}", r.target_new))]).unwrap()[0].mean_nll()
        })
        .collect()
}

/// Every request's NLL of `target_new` ([`nll_new`]) fell by at least 0.1 nats, a movement that
/// holds on every backend.
pub fn assert_p_new_rose(before: &[f32], after: &[f32]) {
    for (b, a) in before.iter().zip(after) {
        assert!(
            a < &(b - 0.1),
            "p(new) must rise for every request: NLL(new) {before:?} -> {after:?}"
        );
    }
}

/// A batch edit of [`requests`] by the editor `make` builds for a fresh tiny model: p(new) rises
/// by ≥ 0.1 nats for every request, one layer is written, the saved patch gives the edited model
/// bit for bit and the same inputs give the same patch (all of which hold on every backend).
/// Returns the patch and the edited model for the method's own checks.
pub fn assert_batch_edit_takes_and_reproduces<B: Backend, E: Editor<B>>(
    device: &B::Device,
    make: impl Fn(&LanguageModel<B>) -> E,
) -> (Patch, LanguageModel<B>) {
    let reqs = requests();
    let mut lm = tiny_on::<B>(device);
    let before = nll_new(&lm, &reqs);
    let patch = make(&lm).apply(&mut lm, &reqs).unwrap();
    let after = nll_new(&lm, &reqs);
    assert_p_new_rose(&before, &after);
    assert_eq!(patch.entries.len(), 1);
    assert_saved_patch_is_the_edit(&patch, &lm, device);
    let mut lm2 = tiny_on::<B>(device);
    assert!(
        make(&lm2).apply(&mut lm2, &reqs).unwrap() == patch,
        "the same inputs must give the same patch"
    );
    (patch, lm)
}
