//! Bad input gives one line naming the file or flag, and a non-zero exit.

mod common;

use std::path::Path;

use common::{fixture, kedit};

fn assert_one_line_error(args: &[&str], must_name: &str) {
    let (ok, _, err) = kedit(args);
    assert!(!ok, "{args:?} should fail");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains(must_name),
        "error should name {must_name}: {err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn generate_runs_on_a_checkpoint_folder() {
    let dir = fixture("tiny-llama");
    let (ok, out, err) = kedit(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "-n",
        "3",
        "The capital of France is",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("The capital of France is"), "{out}");
}

#[test]
fn missing_model_file() {
    assert_one_line_error(
        &["generate", "--model", "/nonexistent/model.gguf", "hi"],
        "/nonexistent/model.gguf",
    );
}

#[test]
fn unknown_model_value() {
    assert_one_line_error(
        &[
            "score", "--model", "gpt-9", "--prompt", "a", "--target", " b",
        ],
        "--model gpt-9",
    );
}

#[test]
fn truncated_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny-llama/tiny-llama.gguf")).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &["generate", "--model", cut.to_str().unwrap(), "hi"],
        "cut.gguf",
    );
    let (_, _, err) = kedit(&["generate", "--model", cut.to_str().unwrap(), "hi"]);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn safetensors_missing_a_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    copy_dir(&fixture("tiny-llama"), &dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let dropped = "model.layers.1.mlp.down_proj.weight";
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != dropped)
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    assert_one_line_error(
        &["generate", "--model", dir.to_str().unwrap(), "hi"],
        dropped,
    );
    let (_, _, err) = kedit(&["generate", "--model", dir.to_str().unwrap(), "hi"]);
    assert!(
        err.contains("ckpt"),
        "error should name the checkpoint: {err}"
    );
}
