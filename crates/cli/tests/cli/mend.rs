//! `kedit mend train` and `kedit edit --method mend` on the tiny Llama: an archive is trained,
//! used, and refused (one line, non-zero exit) for a model it was not trained for.

use crate::common::{fixture, kedit, mend_training_files as training_files};

#[test]
fn mend_trains_edits_and_refuses_another_models_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (h, data) = training_files(dir.path());
    let (archive, rep) = (
        dir.path().join("mend.safetensors"),
        dir.path().join("report.json"),
    );
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
        (
            "tiny-llama",
            dir.path().join("none.safetensors"),
            "no MEND archive",
        ),
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
        assert!(
            line.contains(want) && line.contains(path.to_str().unwrap()),
            "{err}"
        );
        assert_eq!(line.lines().count(), 1, "{err}");
    }
}

/// Bar 3 with a real kill: `kedit mend train` is SIGKILLed once its first checkpoint exists;
/// rerunning the same command resumes and writes the same archive bytes as a run never killed.
#[test]
fn a_killed_training_resumes_to_the_same_archive() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let (h, data) = training_files(dir.path());
    let llama = fixture("tiny-llama");
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "mend",
            "train",
            "--model",
            llama.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--hparams",
            h.to_str().unwrap(),
            "--steps",
            "40",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let whole = dir.path().join("whole.safetensors");
    let a: Vec<String> = args(&whole);
    let (ok, _, err) = kedit(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");

    let killed = dir.path().join("killed.safetensors");
    let a = args(&killed);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kedit"))
        .args(&a)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed.with_extension("ckpt");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed.exists(),
        "the run finished before it could be killed; the test needs more steps"
    );
    let (ok, _, err) = kedit(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let sha = |p: &std::path::Path| format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()));
    assert_eq!(sha(&whole), sha(&killed));
}
