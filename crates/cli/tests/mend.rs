//! `kedit mend train` and `kedit edit --method mend` on the tiny Llama: an archive is trained,
//! used, and refused (one line, non-zero exit) for a model it was not trained for.

mod common;

use common::{fixture, kedit};

const HPARAMS: &str = "alg_name: MEND\ninner_params:\n- model.layers.0.mlp.down_proj.weight\n- model.layers.1.mlp.down_proj.weight\n\
lr: 1.0e-3\nedit_lr: 1.0e-2\nlr_lr: 1.0e-4\nseed: 42\ncedit: 0.1\ncloc: 1.0\nn_hidden: 1\nrank: 8\naccumulate_bs: 2\n\
grad_clip: 100.0\nmax_iters: 4\nval_interval: 2\nearly_stop_patience: 100\nval_steps: 3\n";

#[test]
fn mend_trains_edits_and_refuses_another_models_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (h, data, archive, rep) = (
        dir.path().join("h.yaml"),
        dir.path().join("train.json"),
        dir.path().join("mend.safetensors"),
        dir.path().join("report.json"),
    );
    std::fs::write(&h, HPARAMS).unwrap();
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("mend-train.json")).unwrap())
            .unwrap();
    std::fs::write(&data, serde_json::to_string(&all[..20]).unwrap()).unwrap();
    let llama = fixture("tiny-llama");
    let (ok, out, err) = kedit(&[
        "mend",
        "train",
        "--model",
        llama.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
        "--out",
        archive.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("4 steps") && archive.exists(), "{out}");

    let (ok, out, err) = kedit(&[
        "edit",
        "--model",
        llama.to_str().unwrap(),
        "--method",
        "mend",
        "--archive",
        archive.to_str().unwrap(),
        "--requests",
        fixture("s2rke-wikidata.json").to_str().unwrap(),
        "--one-per-subject",
        "--limit",
        "3",
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("post-edit"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(v["edits"].as_array().unwrap().len(), 3);
    // A batch edit through the same archive.
    let (ok, _, err) = kedit(&[
        "edit",
        "--model",
        llama.to_str().unwrap(),
        "--method",
        "mend",
        "--archive",
        archive.to_str().unwrap(),
        "--requests",
        fixture("s2rke-wikidata.json").to_str().unwrap(),
        "--limit",
        "4",
        "--batch",
    ]);
    assert!(ok, "{err}");

    // Another model's archive, a missing archive: one line each, non-zero exit.
    for (model, path, want) in [
        ("tiny-gptj", archive.clone(), "MEND archive"),
        ("tiny-llama", dir.path().join("none.safetensors"), "no MEND archive"),
    ] {
        let (ok, _, err) = kedit(&[
            "edit",
            "--model",
            fixture(model).to_str().unwrap(),
            "--method",
            "mend",
            "--archive",
            path.to_str().unwrap(),
            "--requests",
            fixture("s2rke-wikidata.json").to_str().unwrap(),
            "--limit",
            "1",
        ]);
        assert!(!ok, "{model}: accepted");
        let line = err.trim();
        assert!(line.contains(want) && line.contains(path.to_str().unwrap()), "{err}");
        assert_eq!(line.lines().count(), 1, "{err}");
    }
}
