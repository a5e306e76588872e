//! Helpers shared by the CLI tests.

use std::path::PathBuf;
use std::process::Command;

pub fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(p)
}

/// Run kedit; return (success, stdout, stderr).
pub fn kedit(args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_kedit")).args(args))
}

/// Run kedit with its cache (`KEDIT_HOME`) in `home`; return (success, stdout, stderr).
#[allow(dead_code)] // not every test binary that shares this module needs its own cache
pub fn kedit_with_home(args: &[&str], home: &std::path::Path) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_kedit"))
        .args(args)
        .env("KEDIT_HOME", home))
}

/// Run kedit with its cache in `home` and the environment `env` added; return (success, stdout,
/// stderr).
#[allow(dead_code)] // not every test binary that shares this module needs it
pub fn kedit_with_env(
    args: &[&str],
    home: &std::path::Path,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kedit"));
    cmd.args(args)
        .env("KEDIT_HOME", home)
        .envs(env.iter().copied());
    run(&mut cmd)
}

/// A requests file in `dir` with one CounterFact-style case: Paris, capital of France → Italy.
#[allow(dead_code)] // not every test binary that shares this module needs it
pub fn paris_request(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("paris.json");
    std::fs::write(
        &path,
        r#"[{"case_id": 1, "requested_rewrite": {"prompt": "{} is the capital of", "subject": "Paris", "target_new": "Italy", "target_true": "France"}}]"#,
    )
    .unwrap();
    path
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "warn");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A 4-step MEND training on the tiny Llama's two MLP output projections.
const MEND_HPARAMS: &str = "alg_name: MEND\ninner_params:\n- model.layers.0.mlp.down_proj.weight\n- model.layers.1.mlp.down_proj.weight\n\
lr: 1.0e-3\nedit_lr: 1.0e-2\nlr_lr: 1.0e-4\nseed: 42\ncedit: 0.1\ncloc: 1.0\nn_hidden: 1\nrank: 8\naccumulate_bs: 2\n\
grad_clip: 100.0\nmax_iters: 4\nval_interval: 2\nearly_stop_patience: 100\nval_steps: 3\n";

/// MEND's hparams file and a 20-subject training file (18 training, 2 validation subjects) in
/// `dir`.
#[allow(dead_code)] // not every test binary that shares this module trains MEND
pub fn mend_training_files(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (h, data) = (dir.join("mend.yaml"), dir.join("mend-train.json"));
    std::fs::write(&h, MEND_HPARAMS).unwrap();
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("mend-train.json")).unwrap())
            .unwrap();
    std::fs::write(&data, serde_json::to_string(&all[..20]).unwrap()).unwrap();
    (h, data)
}
