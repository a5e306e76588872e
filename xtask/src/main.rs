//! `cargo xtask`: the project's chores.
//!
//! - `bench-all [--profile smoke|default|contrast|deep|curve|batch|paper] [--backend cpu|cuda] [--cargo-profile release|dev] [--jobs N]`:
//!   the main job, the S2RKE matrix (every registered method × strategy × homogeneous/heterogeneous
//!   × N) on the default model and the committed data; runs in results/runs/<profile>/, reports
//!   in results/ (S per case in results/s-per-case/; `--cargo-profile dev`: the build `cargo test` made, as CI runs the smoke profile;
//!   `--jobs N`: cells run side by side, by default one per core on the CPU, one on a GPU; the
//!   deep and smoke profiles also read each group's edited model on held-out text)
//! - `bench-fwd-bwd [--pytorch] [--repeats N] [--rounds R]`: the ROME-shaped forward+backward
//!   step, kedit (each of `CPU_KERNELS`) and (with --pytorch) PyTorch in the same run, in R
//!   alternating rounds (2); writes benchmarks/results/
//! - `bench-rome [--repeats N]`: one ROME edit on SmolLM2 (bundled hparams), N edits, median,
//!   in each of `CPU_KERNELS` (kedit's GEMM and fused passes, then Burn's ops in their place);
//!   appends to benchmarks/results/rome-edit.jsonl
//! - `bench-memit [--sizes 1,10,100]`: MEMIT batch edits on SmolLM2, time per request by batch
//!   size; appends to benchmarks/results/memit-batch.jsonl
//! - `gpu-pack`: the cuda test binaries, `kedit`, `gpu-edit`, `matmul-probe` (release, stripped)
//!   and SmolLM2 into gpu/1, gpu/2, … one per `device` call, for a GPU machine without a Rust toolchain or
//!   network (`benchmarks/gpu_device.sh` stages and runs them there)
//! - `data`: rebuild fixtures/s2rke-wikidata.json, fixtures/mend-train.json and
//!   fixtures/s2rke-wikidata-deep.json from the committed facts (byte for byte)
//! - `reference`: regenerate fixtures/ with transformers (deliberate; never in CI)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench_all;
mod gpu_pack;
mod jobs;

use bench_all::{bench_all, DEEP_DATA, MAIN_DATA, PROFILES};
use gpu_pack::gpu_pack;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Cargo's output folder: `$CARGO_TARGET_DIR` where set (relative to the workspace root, as
/// cargo reads it from here), else `target/`; the binaries the chores run are found there.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
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

/// Append a harness's JSON lines to its results file, and show them.
fn record(file: &Path, out: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)?;
    std::io::Write::write_all(&mut f, out.as_bytes())?;
    print!("{out}");
    Ok(())
}

/// A venv with transformers, torch (CPU use), gguf and NLTK, made once under target/.
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
            "nltk",
        ]))?;
    }
    // A venv made before the fluency reference joined lacks NLTK.
    let has_nltk = Command::new(&py)
        .args(["-c", "import nltk"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_nltk {
        run(Command::new(&py).args(["-m", "pip", "install", "-q", "nltk"]))?;
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

/// Whether to build with OpenBLAS (where the system has it). Says so when the environment
/// forces OpenBLAS's kernels: some machines set `OPENBLAS_CORETYPE=Haswell`, which on this
/// project's AVX-512 machine made the ROME-shaped step 1.3× slower (benchmarks/README.md).
fn use_openblas() -> bool {
    let found = has_openblas();
    if let (true, Ok(core)) = (found, std::env::var("OPENBLAS_CORETYPE")) {
        eprintln!("xtask: OPENBLAS_CORETYPE={core} is set: OpenBLAS runs those kernels, not the best it detects (unset it for the fastest)");
    }
    found
}

/// The timing binaries, in release mode, on OpenBLAS where the system has it.
fn build_benchmarks() -> Result<()> {
    let mut build = Command::new("cargo");
    build
        .current_dir(root())
        .args(["build", "-q", "--release", "-p", "kedit-benchmarks"]);
    if use_openblas() {
        build.args(["--features", "openblas"]);
    } else {
        eprintln!("xtask: no libopenblas: timing the pure-Rust matmul (apt-get install libopenblas-dev for the fast one)");
    }
    run(&mut build).map(|_| ())
}

/// The CPU timings' configurations, measured in one run: kedit's GEMM and fused element-wise
/// passes (the default), kedit's GEMM with Burn's primitive element-wise ops
/// (`KEDIT_CPU_FUSED=off`), and Burn's ops throughout (`KEDIT_CPU_MATMUL=burn` too):
/// crates/models/src/kernel.rs and fused.rs.
const CPU_KERNELS: [(&str, &str); 3] = [("kedit", "on"), ("kedit", "off"), ("burn", "off")];

fn bench_fwd_bwd(pytorch: bool, repeats: usize, rounds: usize) -> Result<()> {
    let root = root();
    build_benchmarks()?;
    let gguf = smollm2()?;
    let py = if pytorch { Some(venv()?) } else { None };
    let torch = |threads: &str| -> Result<String> {
        let py = py.as_ref().expect("pytorch asked for");
        let out = run(Command::new(py)
            .arg(root.join("benchmarks/fwd_bwd_torch.py"))
            .arg(&gguf)
            .args([threads, &repeats.to_string()]))?;
        Ok(out.lines().last().unwrap_or("").to_owned())
    };
    // Rounds of every configuration in turn, so that a slow spell of the host (they last tens
    // of seconds on shared machines) falls on all of them rather than on one.
    let mut lines = Vec::new();
    for round in 0..rounds {
        for (matmul, fused) in CPU_KERNELS {
            let kedit = run(Command::new(target_dir().join("release/fwd-bwd"))
                .args(["--repeats", &repeats.to_string(), "--from-layer"])
                .env("KEDIT_CPU_MATMUL", matmul)
                .env("KEDIT_CPU_FUSED", fused))?;
            lines.push(kedit.trim().to_owned());
        }
        if pytorch {
            lines.push(torch("2")?);
            if round == 0 {
                lines.push(torch("1")?);
            }
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
        // A kernel choice forced through the environment changes the numbers: say so.
        let mut framework = v["framework"].as_str().unwrap_or("?").to_owned();
        if let Some(core) = v["openblas_coretype"].as_str() {
            framework += &format!(" (OPENBLAS_CORETYPE={core})");
        }
        if v["cpu_matmul"] == "burn" {
            framework += ", Burn's matmul";
        }
        if v["cpu_fused"] == "burn" {
            framework += ", Burn's element-wise ops";
        }
        for (variant, r) in v["results"].as_object().into_iter().flatten() {
            println!(
                "| {framework} | {threads} | {variant} | {:.3} |",
                r["median_s"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    eprintln!("xtask: results in {}", file.display());
    Ok(())
}

/// The project's chores: the main job (`bench-all`), the benchmarks, the GPU pack, the committed
/// datasets and the reference fixtures.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    chore: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// The main job: the S2RKE matrix (every registered method × strategy ×
    /// homogeneous/heterogeneous × N) on the default model and the committed data; runs under
    /// results/runs/<profile>/ (rerun to resume), reports in results/ (and with S averaged per
    /// case in results/s-per-case/).
    #[command(
        after_help = "Examples:\n  cargo xtask bench-all\n  cargo xtask bench-all --profile contrast\n  cargo xtask bench-all --profile smoke --cargo-profile dev"
    )]
    BenchAll {
        /// smoke: the pipeline in minutes (CI); default: every method, N = 2, 3 group pairs
        /// (≤ 30 min on 2 cores); contrast, deep, curve (SD against N = 1..8, sequential), batch
        /// (SD against N, batch), density (S at 3, 2 and 1 edits per subject), paper: larger
        /// (benchmarks/README.md)
        #[arg(long, default_value = "default", value_parser = PROFILES)]
        profile: String,
        /// Where the kedit processes run (cuda: a `--features cuda` build, one cell at a time)
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        backend: String,
        /// The build to run: release (built here), or dev (the build `cargo test` made)
        #[arg(long, default_value = "release", value_parser = ["release", "dev"])]
        cargo_profile: String,
        /// Cells side by side (default: one per core on the CPU, one on a GPU)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        jobs: Option<u64>,
    },
    /// The ROME-shaped forward+backward step, kedit (each CPU kernel configuration) and, with
    /// --pytorch, PyTorch in the same run, in alternating rounds; appends to benchmarks/results/.
    #[command(after_help = "Example:\n  cargo xtask bench-fwd-bwd --pytorch --rounds 3")]
    BenchFwdBwd {
        /// Time PyTorch (transformers) too, in a venv the xtask makes
        #[arg(long)]
        pytorch: bool,
        /// Steps timed per run (the median is recorded)
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        repeats: u64,
        /// Alternating rounds of every configuration
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        rounds: u64,
    },
    /// ROME edits on SmolLM2 (bundled hparams), median time per edit, in each CPU kernel
    /// configuration; appends to benchmarks/results/rome-edit.jsonl.
    #[command(after_help = "Example:\n  cargo xtask bench-rome --repeats 5")]
    BenchRome {
        /// Edits timed (one per subject)
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        repeats: u64,
    },
    /// MEMIT batch edits on SmolLM2, time per request by batch size; appends to
    /// benchmarks/results/memit-batch.jsonl.
    #[command(after_help = "Example:\n  cargo xtask bench-memit --sizes 1,10,100")]
    BenchMemit {
        /// Batch sizes, comma-separated
        #[arg(long, default_value = "1,10,100")]
        sizes: String,
    },
    /// The cuda test binaries, kedit, gpu-edit, matmul-probe (release, stripped) and SmolLM2 in
    /// gpu/1, gpu/2, … one per device call, for a GPU machine without a Rust toolchain or network
    /// (benchmarks/gpu_device.sh stages and runs them there).
    #[command(after_help = "Example:\n  cargo xtask gpu-pack")]
    GpuPack,
    /// Rebuild fixtures/s2rke-wikidata.json, fixtures/mend-train.json and
    /// fixtures/s2rke-wikidata-deep.json from the committed facts (byte for byte; CI checks).
    #[command(after_help = "Example:\n  cargo xtask data && git diff --exit-code -- fixtures/")]
    Data,
    /// Regenerate the reference fixtures with transformers (deliberate; never in CI).
    #[command(after_help = "Example:\n  cargo xtask reference")]
    Reference,
}

fn main() -> Result<()> {
    match Cli::parse().chore {
        Chore::BenchAll {
            profile,
            backend,
            cargo_profile,
            jobs,
        } => bench_all(&profile, &backend, &cargo_profile, jobs.map(|n| n as usize)),
        Chore::BenchFwdBwd {
            pytorch,
            repeats,
            rounds,
        } => bench_fwd_bwd(pytorch, repeats as usize, rounds as usize),
        Chore::BenchRome { repeats } => {
            let root = root();
            build_benchmarks()?;
            for (matmul, fused) in CPU_KERNELS {
                let out = run(Command::new(target_dir().join("release/rome-edit"))
                    .args(["--edits", &repeats.to_string()])
                    .env("KEDIT_CPU_MATMUL", matmul)
                    .env("KEDIT_CPU_FUSED", fused))?;
                record(&root.join("benchmarks/results/rome-edit.jsonl"), &out)?;
            }
            Ok(())
        }
        Chore::BenchMemit { sizes } => {
            let root = root();
            build_benchmarks()?;
            let out =
                run(Command::new(target_dir().join("release/memit-batch"))
                    .args(["--sizes", &sizes]))?;
            record(&root.join("benchmarks/results/memit-batch.jsonl"), &out)
        }
        Chore::GpuPack => gpu_pack(),
        Chore::Data => {
            // The committed datasets, rebuilt from the committed facts; CI checks the bytes. The
            // benchmark's set first; then MEND's training set, every subject of the first left
            // out (one record per subject mostly: the multi-relation subjects are the benchmark's).
            // `--workspace`: the feature set `cargo test --workspace` builds kedit with, so CI's
            // tests reuse this build. `cargo run -p kedit` resolved other features and compiled
            // kedit and five of its crates a second time (about 3.5 CPU-minutes, 2026-12-06).
            run(Command::new("cargo").current_dir(root()).args([
                "build",
                "-q",
                "--workspace",
                "--bin",
                "kedit",
            ]))?;
            let kedit = target_dir().join("debug/kedit");
            let build = |extra: &[&str]| {
                run(Command::new(&kedit)
                    .current_dir(root())
                    .args(["data", "build"])
                    .args([
                        "--facts",
                        "data/pararel/trex_lms_vocab",
                        "--facts",
                        "data/kamel/KAMEL",
                        "--relations",
                        "data/pararel/pattern_data/graphs_json",
                    ])
                    .args(extra))
                .map(|o| print!("{o}"))
            };
            build(&[
                "--out",
                MAIN_DATA,
                "--stats",
                "fixtures/s2rke-wikidata.stats.md",
                "--subjects",
                "300",
                "--seed",
                "0",
            ])?;
            build(&[
                "--out",
                "fixtures/mend-train.json",
                "--stats",
                "fixtures/mend-train.stats.md",
                "--subjects",
                "3000",
                "--min-relations",
                "1",
                "--exclude",
                MAIN_DATA,
                "--seed",
                "1",
            ])?;
            // The deep set: subjects with >= 8 records, for N = 8 (paper.md's largest N) and
            // beyond. ParaRel's relations stop at 7 per subject; kedit's own cloze patterns
            // (data/patterns) open six more KAMEL relations, most of them facts about countries.
            build(&[
                "--relations",
                "data/patterns",
                "--out",
                DEEP_DATA,
                "--stats",
                "fixtures/s2rke-wikidata-deep.stats.md",
                "--min-relations",
                "8",
                "--prefer-relations",
                "8",
                "--distinct-prompts",
                "--seed",
                "0",
            ])
        }
        Chore::Reference => {
            let py = venv()?;
            let gguf = smollm2()?;
            for script in ["memit_solve.py", "fluency.py"] {
                print!(
                    "{}",
                    run(Command::new(&py).arg(root().join("fixtures/reference").join(script)))?
                );
            }
            print!(
                "{}",
                run(Command::new(&py)
                    .arg(root().join("fixtures/reference/token_acc.py"))
                    .arg(&gguf))?
            );
            run(Command::new(py)
                .arg(root().join("fixtures/reference/make_reference.py"))
                .arg(gguf))
            .map(|o| print!("{o}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cargo xtask bench-all --help` once started the 25-minute main job: the hand-rolled
    /// parser ignored flags it did not know. Help, a misspelt flag or a bad value must stop
    /// before any chore runs.
    #[test]
    fn help_and_unknown_flags_start_no_chore() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
        };
        for bad in [
            &["bench-all", "--help"][..],
            &["bench-all", "--profle", "smoke"],
            &["bench-all", "--profile", "huge"],
            &["bench-all", "--jobs", "0"],
            &["bench-rome", "--repeats", "x"],
            &["bench-fwd-bwd", "--rounds", "0"],
            &["data", "--force"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        let Chore::BenchAll {
            profile,
            cargo_profile,
            jobs,
            ..
        } = parse(&["bench-all", "--profile", "smoke", "--cargo-profile", "dev"])
            .unwrap()
            .chore
        else {
            panic!("bench-all expected");
        };
        assert_eq!(
            (profile.as_str(), cargo_profile.as_str(), jobs),
            ("smoke", "dev", None)
        );
        assert!(matches!(
            parse(&["bench-fwd-bwd", "--pytorch", "--rounds", "3"])
                .unwrap()
                .chore,
            Chore::BenchFwdBwd {
                pytorch: true,
                repeats: 5,
                rounds: 3
            }
        ));
    }
}
