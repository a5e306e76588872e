//! Bad input gives one line naming the file or flag, and a non-zero exit.

use std::path::Path;

use crate::common::{fixture, kedit, kedit_with_home, paris_request};

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

/// The bundled hparams are SmolLM2's (30 layers); on the 2-layer tiny Llama each method must say
/// which field names a missing layer, before any statistics or archive is computed for it.
#[test]
fn bundled_hparams_on_a_smaller_model() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let requests = paris_request(tmp.path());
    let model = fixture("tiny-llama");
    for (method, field) in [
        ("rome", "field `layers`: layer 4,"),
        ("memit", "field `layers`: layer 3,"),
        ("ft-m", "field `layers`: layer 20,"),
        ("mend", "field `inner_params`: layer 27,"),
    ] {
        let args = [
            "edit",
            "--model",
            model.to_str().unwrap(),
            "--method",
            method,
            "--requests",
            requests.to_str().unwrap(),
        ];
        let (ok, _, err) = kedit_with_home(&args, home.path());
        assert!(!ok, "{method} should fail");
        assert_eq!(err.lines().count(), 1, "{method}: {err}");
        assert!(
            err.starts_with("error: the bundled hparams") && err.contains(field),
            "{method}: {err}"
        );
        assert!(err.contains("the model has 2 layers"), "{method}: {err}");
    }
    // Nothing was computed or cached for the missing layers.
    assert!(!home.path().join("stats").exists());
}

#[test]
fn statistics_from_no_samples() {
    assert_one_line_error(
        &[
            "stats",
            "--model",
            fixture("tiny-llama").to_str().unwrap(),
            "--layers",
            "1",
            "--samples",
            "0",
        ],
        "--samples 0",
    );
}

/// An output path that cannot be written is refused before any edit runs, not after.
#[test]
fn unwritable_outputs_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-folder").join("out.json");
    let model = fixture("tiny-llama");
    for flag in ["--report", "--patch-out"] {
        let args = [
            "edit",
            "--model",
            model.to_str().unwrap(),
            "--method",
            "kn",
            "--requests",
            "/nonexistent/requests.json",
            flag,
            missing.to_str().unwrap(),
        ];
        // The requests file is missing too: the output is checked first, before anything is read.
        assert_one_line_error(&args, &format!("{flag} {}", missing.display()));
        let (_, _, err) = kedit(&args);
        assert!(err.contains("does not exist"), "{err}");
    }
    let dir = tmp.path().to_str().unwrap();
    assert_one_line_error(
        &[
            "keys",
            "--model",
            model.to_str().unwrap(),
            "--method",
            "rome",
            "--requests",
            "/nonexistent/requests.json",
            "--report",
            dir,
        ],
        "is a folder",
    );
}

/// GPT-2 has learned positions for its context only (the tiny one: 128): a longer sequence used
/// to panic in the forward. Generation stops at the context, saying so; scoring past it, or a
/// prompt longer than it, is an error.
#[test]
fn sequences_past_the_context() {
    let model = fixture("tiny-gpt2");
    let model = model.to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kedit"))
        .args(["generate", "--model", model, "-n", "200", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("stopped at the model's context of 128"),
        "{err}"
    );
    let long = "word ".repeat(300);
    assert_one_line_error(
        &[
            "score", "--model", model, "--prompt", &long, "--target", " b",
        ],
        "more than the model's context of 128",
    );
    assert_one_line_error(&["generate", "--model", model, &long], "prompt 0:");
}

/// When the selection flags leave nothing to edit, the error says which ones did it.
#[test]
fn a_selection_that_leaves_no_case_names_its_flags() {
    let model = fixture("tiny-llama");
    let data = fixture("s2rke-wikidata.json");
    let (model, data) = (model.to_str().unwrap(), data.to_str().unwrap());
    assert_one_line_error(
        &[
            "edit",
            "--model",
            model,
            "--method",
            "kn",
            "--requests",
            data,
            "--skip",
            "100000",
        ],
        "no cases left of 1075 after --skip 100000",
    );
    assert_one_line_error(
        &[
            "edit",
            "--model",
            model,
            "--method",
            "kn",
            "--requests",
            data,
            "--batch-size",
            "50",
            "--arrange",
            "same-subject",
        ],
        "after --arrange same-subject (blocks of 50 subjects with 50 records each)",
    );
}

#[test]
fn perplexity_names_its_bad_flags() {
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    assert_one_line_error(
        &["perplexity", "--model", model, "--window", "1"],
        "--window 1",
    );
    assert_one_line_error(
        &[
            "perplexity",
            "--model",
            model,
            "--corpus",
            "/nonexistent/text.txt",
        ],
        "--corpus /nonexistent/text.txt",
    );
    assert_one_line_error(
        &["perplexity", "--model", model, "--tokens", "0"],
        "--tokens 0",
    );
    let requests = tempfile::tempdir().unwrap();
    let requests = paris_request(requests.path());
    assert_one_line_error(
        &[
            "edit",
            "--model",
            model,
            "--requests",
            requests.to_str().unwrap(),
            "--perplexity-tokens",
            "100",
        ],
        "--perplexity-tokens needs --sequential",
    );
}

#[test]
fn fluency_names_its_bad_flags() {
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    assert_one_line_error(
        &[
            "fluency",
            "--model",
            model,
            "--max-len",
            "3",
            "The capital of France is",
        ],
        "--max-len 3",
    );
    let out = tempfile::tempdir().unwrap();
    assert_one_line_error(
        &[
            "bench",
            "--model",
            model,
            "--fluency",
            "1",
            "--out",
            out.path().to_str().unwrap(),
        ],
        "--fluency 1",
    );
}

/// `kedit data convert` writes EasyEdit's records (the subject inside each prompt), and refuses,
/// in one line and without writing --out, a case whose prompt holds the subject's name before
/// its place, which EasyEdit's form would read as another case.
#[test]
fn data_convert_writes_easyedit_records_or_refuses_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("easyedit.json");
    let data = fixture("s2rke-wikidata.json");
    let (ok, stdout, err) = kedit(&[
        "data",
        "convert",
        "--requests",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("1075 cases"), "{stdout}");
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(records.len(), 1075);
    for r in &records {
        let (prompt, subject) = (
            r["prompt"].as_str().unwrap(),
            r["subject"].as_str().unwrap(),
        );
        assert!(prompt.contains(subject) && !prompt.contains("{}"), "{r}");
        assert!(
            r["ground_truth"].is_string() && r["locality"].is_object(),
            "{r}"
        );
    }
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"case_id": 1, "requested_rewrite": {"prompt": "Paris, like {}, is in", "subject": "Paris", "target_new": "a", "target_true": "b"}}]"#,
    )
    .unwrap();
    let refused = tmp.path().join("refused.json");
    assert_one_line_error(
        &[
            "data",
            "convert",
            "--requests",
            bad.to_str().unwrap(),
            "--out",
            refused.to_str().unwrap(),
        ],
        "case 1: prompt \"Paris, like {}, is in\" holds the subject \"Paris\" before its `{}`",
    );
    assert!(!refused.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}
