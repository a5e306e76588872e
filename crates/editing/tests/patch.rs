//! Patches: apply, save, load, re-apply and revert are exact (bit-identical logits).

use std::path::PathBuf;

use burn::tensor::{backend::Backend, Tensor};
use kedit_editing::{Matrix, Patch, PatchEntry};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, CausalLm, Cpu, LanguageModel};

fn tiny() -> LanguageModel<Cpu> {
    tiny_on(&Default::default())
}

fn tiny_on<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    LanguageModel::load_hf(&dir, device).unwrap()
}

fn logits<B: Backend>(lm: &LanguageModel<B>) -> Vec<u32> {
    let seqs = vec![
        lm.encode("The capital of France is").unwrap(),
        lm.encode("Rome").unwrap(),
    ];
    let t: Tensor<B, 2> = lm.next_token_logits(&seqs);
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Deltas for layer 1's MLP output and layer 0's attention output, not symmetric (a transposed
/// write would show).
fn two_matrix_patch<B: Backend>(lm: &LanguageModel<B>) -> Patch {
    let [r, c] = lm.model.mlp_out(1).dims();
    let [ra, ca] = lm.model.attn_out(0).dims();
    Patch {
        entries: vec![
            PatchEntry {
                layer: 1,
                matrix: Matrix::MlpOut,
                shape: [r, c],
                delta: (0..r * c).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect(),
            },
            PatchEntry {
                layer: 0,
                matrix: Matrix::AttnOut,
                shape: [ra, ca],
                delta: (0..ra * ca)
                    .map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.01)
                    .collect(),
            },
        ],
        metadata: Default::default(),
    }
}

// Bit-exactness is per backend: the same kernels on the same inputs.
test_device!(
    saved_patch_reproduces_the_edit_and_revert_restores_bits,
    patch_round_trip
);
fn patch_round_trip<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let mut lm = tiny_on::<B>(device);
    let before = logits(&lm);
    let mut patch = two_matrix_patch(&lm);
    patch.metadata = [("method".to_string(), "test".to_string())].into();
    let applied = patch.apply(&mut lm.model).unwrap();
    let edited = logits(&lm);
    assert_ne!(edited, before, "the patch must change the logits");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.safetensors");
    patch.save(&file).unwrap();
    let loaded = Patch::load(&file).unwrap();
    assert!(
        loaded == patch,
        "the loaded patch differs from the saved one"
    );
    let mut fresh = tiny_on::<B>(device);
    loaded.apply(&mut fresh.model).unwrap();
    assert_eq!(
        logits(&fresh),
        edited,
        "reloaded patch must give bit-identical logits"
    );

    applied.revert(&mut lm.model);
    assert_eq!(
        logits(&lm),
        before,
        "revert must restore the original logits bit for bit"
    );
}

#[test]
fn a_patch_for_another_shape_is_refused() {
    let mut lm = tiny();
    let p = Patch {
        entries: vec![PatchEntry {
            layer: 0,
            matrix: Matrix::MlpOut,
            shape: [3, 3],
            delta: vec![0.0; 9],
        }],
        metadata: Default::default(),
    };
    let e = p.apply(&mut lm.model).err().unwrap().to_string();
    assert!(e.contains("layers.0.mlp_out") && e.contains("shape"), "{e}");
}

#[test]
fn relative_difference_is_zero_for_itself_and_infinite_for_other_matrices() {
    let entry = |layer, delta: Vec<f32>| PatchEntry {
        layer,
        matrix: Matrix::MlpOut,
        shape: [1, 2],
        delta,
    };
    let p = |entries| Patch {
        entries,
        metadata: Default::default(),
    };
    let a = p(vec![entry(0, vec![3.0, 4.0])]);
    assert_eq!(a.relative_difference(&a), 0.0);
    let b = p(vec![entry(0, vec![3.0, 4.5])]);
    assert!((b.relative_difference(&a) - 0.1).abs() < 1e-12);
    assert!(p(vec![entry(1, vec![3.0, 4.0])])
        .relative_difference(&a)
        .is_infinite());
}

/// `kedit export`'s path: a checkpoint read as the loader reads it, a patch (an MLP and an
/// attention output, with deltas that are not symmetric, so a transposed write would show)
/// added, written as a new folder and loaded back, gives the logits of the model patched in
/// memory bit for bit, for every family and for a GGUF source; the source folder is not touched.
#[test]
fn an_exported_checkpoint_is_the_patched_model() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let dir = tempfile::tempdir().unwrap();
    for source in [
        "tiny-llama",
        "tiny-gpt2",
        "tiny-gptj",
        "tiny-gpt2-f16",
        "tiny-llama/tiny-llama.gguf",
    ] {
        let path = fixtures.join(source);
        let spec = kedit_models::ModelSpec::parse(path.to_str().unwrap()).unwrap();
        let before: Vec<(PathBuf, Vec<u8>)> = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| {
                    let p = e.unwrap().path();
                    let b = std::fs::read(&p).unwrap();
                    (p, b)
                })
                .collect()
        } else {
            vec![(path.clone(), std::fs::read(&path).unwrap())]
        };
        let mut lm = LanguageModel::<Cpu>::load(&spec, &Default::default()).unwrap();
        let unpatched = logits(&lm);
        let patch = two_matrix_patch(&lm);
        patch.apply(&mut lm.model).unwrap();
        let want = logits(&lm);
        assert_ne!(want, unpatched, "{source}: the patch changes the model");

        let mut ckpt = kedit_models::export::Checkpoint::read(&spec).unwrap();
        patch.apply_to_checkpoint(&mut ckpt).unwrap();
        let out = dir.path().join(source.replace('/', "_"));
        ckpt.write(&out, &serde_json::json!({"test": source}))
            .unwrap();
        let exported = LanguageModel::<Cpu>::load_hf(&out, &Default::default()).unwrap();
        assert_eq!(exported.model.config, lm.model.config, "{source}: config");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        for key in ["dtype", "torch_dtype"] {
            assert!(
                config.get(key).is_none_or(|d| d == "float32"),
                "{source}: the config names the weights' dtype, {config}"
            );
        }
        assert!(logits(&exported) == want, "{source}: exported logits");
        assert!(
            ckpt.write(&out, &serde_json::json!({})).is_err(),
            "{source}: a folder that is not empty is not written over"
        );
        for (p, b) in before {
            assert!(std::fs::read(&p).unwrap() == b, "{}: changed", p.display());
        }
    }
}

/// A sequential edit's patch (`Patch::extend`): one matrix rewritten twice survives a save and
/// load, and applied to the unedited model gives the bits of the two patches applied in turn;
/// the requests of both are kept, in order.
#[test]
fn an_extended_patch_is_the_edits_in_turn() {
    let mut lm = tiny();
    let unedited = logits(&lm);
    let described = |p: &mut Patch, request: &str| {
        p.metadata = [
            ("method".to_owned(), "test".to_owned()),
            (
                "requests".to_owned(),
                format!("[{{\"subject\": \"{request}\"}}]"),
            ),
        ]
        .into();
    };
    let mut first = two_matrix_patch(&lm);
    described(&mut first, "Paris");
    let mut second = two_matrix_patch(&lm);
    for e in &mut second.entries {
        e.delta.iter_mut().for_each(|d| *d = -0.5 * *d + 0.003);
    }
    described(&mut second, "Rome");
    let a = first.apply(&mut lm.model).unwrap();
    let b = second.apply(&mut lm.model).unwrap();
    let in_turn = logits(&lm);
    b.revert(&mut lm.model);
    a.revert(&mut lm.model);
    assert!(logits(&lm) == unedited);

    let mut all = first.clone();
    all.extend(second);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("all.safetensors");
    all.save(&file).unwrap();
    let loaded = Patch::load(&file).unwrap();
    assert!(loaded == all, "save and load keep four entries in order");
    assert_eq!(
        loaded.metadata["requests"],
        r#"[{"subject":"Paris"},{"subject":"Rome"}]"#
    );
    loaded.apply(&mut lm.model).unwrap();
    assert!(logits(&lm) == in_turn, "one patch, the two edits' bits");
}

/// A snapshot's distance is 0 for the model it was taken of and, after a patch, the Frobenius
/// norm of the patch's deltas (computed here from the deltas themselves).
#[test]
fn a_snapshot_measures_how_far_a_patch_moved_the_model() {
    let mut lm = tiny();
    let snapshot = kedit_editing::Snapshot::take(&lm.model);
    assert_eq!(snapshot.distance(&lm.model), 0.0);
    let patch = two_matrix_patch(&lm);
    let expected = patch
        .entries
        .iter()
        .flat_map(|e| e.delta.iter())
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let _applied = patch.apply(&mut lm.model).unwrap();
    let d = snapshot.distance(&lm.model);
    // W + Δ − W rounds in f32: a relative error of a few ulps of the weights' size.
    assert!((d - expected).abs() < 1e-4 * expected, "{d} vs {expected}");
    snapshot.clone().restore(&mut lm.model);
    assert_eq!(snapshot.distance(&lm.model), 0.0);
}
