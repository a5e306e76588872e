//! `cargo xtask bench-all`: the S2RKE matrix by profile, its cells planned, run side by side,
//! resumed and reported.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{jobs, root, run, target_dir, use_openblas};

/// Minutes `kedit mend train` takes with the bundled SmolLM2 hparams (150 steps) on one core of a
/// 2-core CPU beside another cell (6.1-6.5 min measured, benchmarks/README.md), for the ETA.
const MEND_TRAIN_MINUTES: f64 = 6.5;

/// The names `profile` knows, for `--profile`.
pub(crate) const PROFILES: [&str; 9] = [
    "smoke", "default", "contrast", "deep", "curve", "batch", "paper", "density", "fluency",
];

/// A bench-all profile: what the matrix covers.
struct Profile {
    name: &'static str,
    /// Which registered methods; `None` = all.
    methods: Option<&'static [&'static str]>,
    /// Which methods with a batch update also run batch cells.
    batch: BatchCells,
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
    /// Each scored case's rewrite prompt continued to this many tokens by the edited and the
    /// unedited model (`kedit bench --fluency`): the report's fluency table.
    fluency: Option<usize>,
    /// EasyEdit's token accuracies of each scored case (`kedit bench --token-acc`): the report's
    /// token-accuracy table. One forward pass per case: seconds per cell.
    token_acc: bool,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum BatchCells {
    None,
    /// Every method with a batch update.
    All,
    /// These methods only (each must have a batch update).
    Only(&'static [&'static str]),
}

impl BatchCells {
    fn includes(self, method: &str) -> bool {
        match self {
            BatchCells::None => false,
            BatchCells::All => true,
            BatchCells::Only(names) => names.contains(&method),
        }
    }
}

/// Seconds per generated token of a fluency reading on SmolLM2 (one batched decoding step reads
/// every weight: ~0.15 s on a 2-core CPU, benchmarks/README.md, "Generation fluency").
const FLUENCY_S_PER_TOKEN: f64 = 0.16;

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

pub(crate) const MAIN_DATA: &str = "fixtures/s2rke-wikidata.json";
/// Subjects with 8-10 records (fixtures/README.md): the main set's largest subject has 7.
pub(crate) const DEEP_DATA: &str = "fixtures/s2rke-wikidata-deep.json";

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
        // MEMIT in batch too, and MEMIT-Merge (batch only).
        "smoke" => Profile {
            name: "smoke",
            methods: Some(&["rome", "memit", "memit-merge", "ft-m", "mend"]),
            // The batch path through the pipeline once: FT-M's and MEND's batch cells (a minute of
            // CI) add no step the sequential cells and MEMIT's batch cells do not take.
            batch: BatchCells::Only(&["memit", "memit-merge"]),
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
            // And the fluency path: short texts (about 3 s a reading).
            fluency: Some(24),
            // And EasyEdit's token accuracies.
            token_acc: true,
        },
        // ≤ 30 minutes on a 2-core CPU (with the build) with every registered method and its real
        // hyperparameters: sequential editing (the paper's sequential panel), N = 2 (the first
        // edit, then one more), three matched group pairs per cell. Batch runs and N up to 7:
        // `paper`.
        "default" => Profile {
            name: "default",
            methods: None,
            batch: BatchCells::None,
            sequential: true,
            series: main_series(vec![2]),
            groups: 3,
            hparams: &[],
            speed: 1.0,
            mend_minutes: MEND_TRAIN_MINUTES,
            perplexity_tokens: None,
            fluency: None,
            // EasyEdit's numbers beside ES/PS/NS: a forward pass per case.
            token_acc: true,
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
            batch: BatchCells::None,
            sequential: true,
            series: main_series(vec![3]),
            groups: 12,
            hparams: &[],
            // Measured: 47-49 s per ROME edit and 29-31 s per MEMIT edit at N = 3 (statistics
            // included), against the registry's 36 and 22 s measured at N = 2.
            speed: 1.3,
            mend_minutes: MEND_TRAIN_MINUTES,
            perplexity_tokens: None,
            fluency: None,
            // The contrast in EasyEdit's numbers too (benchmarks/README.md, "EasyEdit's token
            // accuracy").
            token_acc: true,
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
            batch: BatchCells::None,
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
            fluency: None,
            token_acc: false,
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
            batch: BatchCells::All,
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
            batch: BatchCells::All,
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
            fluency: None,
            token_acc: false,
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
        // Generation fluency (ROME's GE, EasyEdit's `fluency`; the study reports none): what
        // the edits do to the text the model writes from the edited prompts, same subject
        // against different subjects. The study's six methods, sequential, N = 3, 4 matched
        // group pairs per cell; every case's rewrite prompt continued to 100 tokens by the
        // edited model and by the unedited one (about 15 s a reading on a 2-core CPU).
        "fluency" => Profile {
            name: "fluency",
            methods: Some(&["rome", "memit", "pmet", "ft-m", "mend", "kn"]),
            series: main_series(vec![3]),
            groups: 4,
            speed: 1.3,
            fluency: Some(100),
            token_acc: false,
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
            let batch = m["batch"].as_bool().unwrap_or(false) && p.batch.includes(name);
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
    if let BatchCells::Only(names) = p.batch {
        for m in names {
            let batch = registered
                .iter()
                .any(|r| r["name"] == *m && r["batch"].as_bool() == Some(true));
            if !batch || p.methods.is_some_and(|keep| !keep.contains(m)) {
                bail!(
                    "profile {}: batch cells of {m}, which is not one of its methods with a batch update",
                    p.name
                );
            }
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

pub(crate) fn bench_all(
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
                    if let Some(len) = p.fluency {
                        args.extend(["--fluency".into(), len.to_string().into()]);
                    }
                    if p.token_acc {
                        args.push("--token-acc".into());
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
                            })
                            // Fluency: each group's unedited cases, then its edited model
                            // wherever it is scored; prompts of about 8 tokens.
                            + p.fluency.map_or(0.0, |len| {
                                let readings = p.groups * (if curve { n } else { 1 } + 1);
                                readings as f64
                                    * len.saturating_sub(8) as f64
                                    * FLUENCY_S_PER_TOKEN
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
    // The paper's other reading of S (per case; paper.md, ambiguity 4), from the same lines:
    // seconds, and the main job then answers whether its SD depends on the reading.
    let per_case = out.join("s-per-case");
    run(Command::new(&kedit)
        .arg("report")
        .arg(&runs_dir)
        .args(["--s-mean", "case", "--format", "md,csv", "--out"])
        .arg(&per_case))?;
    println!(
        "bench-all ({}) done in {:.1} min: {}/report.md, *.csv, *.svg; S per case: {}/report.md",
        p.name,
        started.elapsed().as_secs_f64() / 60.0,
        out.display(),
        per_case.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let cells = |p: &Profile| {
            matrix_methods(p, &registered)
                .into_iter()
                .map(|(m, s, _)| (m, s))
                .collect::<Vec<_>>()
        };
        let s = |v: &[&'static str]| v.to_vec();
        assert_eq!(
            cells(&profile("default").unwrap()),
            [
                ("rome".into(), s(&["sequential"])),
                ("memit".into(), s(&["sequential"]))
            ]
        );
        assert_eq!(
            cells(&profile("paper").unwrap()),
            [
                ("rome".into(), s(&["sequential"])),
                ("memit".into(), s(&["sequential", "batch"])),
                ("memit-merge".into(), s(&["batch"]))
            ]
        );
        // Smoke: batch cells for the methods it names only.
        assert_eq!(
            cells(&profile("smoke").unwrap()),
            [
                ("rome".into(), s(&["sequential"])),
                ("memit".into(), s(&["sequential", "batch"])),
                ("memit-merge".into(), s(&["batch"]))
            ]
        );
        let ft_batch = |b: bool| {
            [("ft-m", b), ("memit", true), ("memit-merge", true)]
                .iter()
                .map(|(n, b)| serde_json::json!({ "name": n, "batch": b }))
                .collect::<Vec<_>>()
        };
        let ft_only = Profile {
            methods: None,
            batch: BatchCells::Only(&["ft-m"]),
            ..profile("smoke").unwrap()
        };
        assert!(check_methods(&ft_only, &ft_batch(true)).is_ok());
        let err = check_methods(&ft_only, &ft_batch(false)).unwrap_err();
        assert!(err.to_string().contains("batch cells of ft-m"), "{err}");
        // A batch-only profile: no sequential cells, and no method without a batch update.
        let batch_only = Profile {
            sequential: false,
            methods: None,
            ..profile("paper").unwrap()
        };
        assert_eq!(
            cells(&batch_only),
            [
                ("memit".into(), s(&["batch"])),
                ("memit-merge".into(), s(&["batch"]))
            ]
        );
    }
}
