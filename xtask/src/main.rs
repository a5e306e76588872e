//! `cargo xtask`: the project's chores.
//!
//! - `bench-all`: the benchmark matrix on the default model (today: the model substrate's
//!   forward+backward step; the editing methods join as they land)
//! - `bench-fwd-bwd [--pytorch] [--repeats N]`: the ROME-shaped forward+backward step, kedit
//!   and (with --pytorch) PyTorch in the same run; writes benchmarks/results/
//! - `reference`: regenerate fixtures/ with transformers (deliberate; never in CI)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: {cmd:?}");
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A venv with transformers, torch (CPU use) and gguf, made once under target/.
fn venv() -> Result<PathBuf> {
    let dir = root().join(".venv");
    let py = dir.join("bin/python");
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "-q",
            "torch",
            "transformers>=5",
            "gguf",
            "accelerate",
        ]))?;
    }
    Ok(py)
}

/// The default model's path, fetched through the kedit binary's own code path.
fn smollm2() -> Result<PathBuf> {
    let out = run(Command::new("cargo").current_dir(root()).args([
        "run",
        "-q",
        "--release",
        "-p",
        "kedit",
        "--",
        "fetch",
    ]))?;
    Ok(PathBuf::from(out.trim()))
}

/// OpenBLAS is the fastest CPU matmul measured; use it where the system has it.
fn has_openblas() -> bool {
    Command::new("ldconfig")
        .arg("-p")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libopenblas.so "))
}

fn bench_fwd_bwd(pytorch: bool, repeats: usize) -> Result<()> {
    let root = root();
    let mut build = Command::new("cargo");
    build
        .current_dir(&root)
        .args(["build", "-q", "--release", "-p", "kedit-benchmarks"]);
    if has_openblas() {
        build.args(["--features", "openblas"]);
    } else {
        eprintln!("xtask: no libopenblas: timing the pure-Rust matmul (apt-get install libopenblas-dev for the fast one)");
    }
    run(&mut build)?;
    let gguf = smollm2()?;
    let mut lines = Vec::new();
    let kedit = run(Command::new(root.join("target/release/fwd-bwd")).args([
        "--repeats",
        &repeats.to_string(),
        "--from-layer",
    ]))?;
    lines.push(kedit.trim().to_owned());
    if pytorch {
        let py = venv()?;
        for threads in ["1", "2"] {
            let out = run(Command::new(&py)
                .arg(root.join("benchmarks/fwd_bwd_torch.py"))
                .arg(&gguf)
                .args([threads, &repeats.to_string()]))?;
            lines.push(out.lines().last().unwrap_or("").to_owned());
        }
    }
    let dir = root.join("benchmarks/results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("fwd-bwd.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n")?;
    println!("| framework | threads | variant | median s |\n|---|---|---|---|");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("bad benchmark line {l}"))?;
        let threads = v
            .get("threads")
            .map_or("all".to_string(), |t| t.to_string());
        for (variant, r) in v["results"].as_object().into_iter().flatten() {
            println!(
                "| {} | {threads} | {variant} | {:.3} |",
                v["framework"].as_str().unwrap_or("?"),
                r["median_s"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    eprintln!("xtask: results in {}", file.display());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let repeats = args
        .iter()
        .position(|a| a == "--repeats")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<usize>())
        .transpose()
        .context("--repeats takes a whole number")?
        .unwrap_or(5);
    match args.first().map(String::as_str) {
        Some("bench-all") => bench_fwd_bwd(flag("--pytorch"), repeats),
        Some("bench-fwd-bwd") => bench_fwd_bwd(flag("--pytorch"), repeats),
        Some("reference") => {
            let py = venv()?;
            let gguf = smollm2()?;
            run(Command::new(py)
                .arg(root().join("fixtures/reference/make_reference.py"))
                .arg(gguf))
            .map(|o| print!("{o}"))
        }
        _ => {
            eprintln!("usage: cargo xtask bench-all [--pytorch] [--repeats N] | bench-fwd-bwd [--pytorch] [--repeats N] | reference");
            std::process::exit(2)
        }
    }
}
