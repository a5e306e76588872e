//! `kedit bench` and `kedit report` on the tiny checkpoint: a run killed with SIGKILL at random
//! moments and resumed ends with the same results file as an uninterrupted run; bad input gives a
//! one-line error and leaves results alone; the report has SD rows, CSV and SVG.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::{fixture, kedit};

const HPARAMS: &str = "alg_name: ROME\nlayers: [0]\nfact_token: subject_last\nv_num_grad_steps: 3\nv_lr: 0.5\n\
v_weight_decay: 0.001\nclamp_norm_factor: 4\nkl_factor: 0.0625\nmom2_adjustment: false\ncontext_template_length_params: [[3, 2]]\n";

fn bench_args<'a>(h: &'a str, out: &'a str, order: &'a str) -> Vec<&'a str> {
    vec![
        "bench",
        "--model",
        Box::leak(
            fixture("tiny-llama")
                .to_str()
                .unwrap()
                .to_owned()
                .into_boxed_str(),
        ),
        "--hparams",
        h,
        "--data",
        Box::leak(
            fixture("s2rke-wikidata.json")
                .to_str()
                .unwrap()
                .to_owned()
                .into_boxed_str(),
        ),
        "--n",
        "3",
        "--groups",
        "5",
        "--order",
        order,
        "--out",
        out,
    ]
}

fn only_jsonl(dir: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    std::fs::read_to_string(files.remove(0)).unwrap()
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.yaml");
    std::fs::write(&h, HPARAMS).unwrap();
    let h = h.to_str().unwrap();
    let full = dir.path().join("full");
    let t = Instant::now();
    let (ok, _, err) = kedit(&bench_args(h, full.to_str().unwrap(), "homogeneous"));
    assert!(ok, "{err}");
    let took = t.elapsed();
    let expected = only_jsonl(&full);
    assert_eq!(expected.lines().count(), 15, "5 groups × 3 cases");

    let killed = dir.path().join("killed");
    let args = bench_args(h, killed.to_str().unwrap(), "homogeneous");
    // Three kill moments spread over the run, drawn from the clock (printed for a rerun).
    let mut x = Instant::now().elapsed().as_nanos() as u64 | 1;
    let mut kills = Vec::new();
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = took.mul_f64((x % 1000) as f64 / 1000.0);
        kills.push(at);
        let mut child = Command::new(env!("CARGO_BIN_EXE_kedit"))
            .args(&args)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let (ok, _, err) = kedit(&args);
    assert!(ok, "{err}");
    assert_eq!(
        only_jsonl(&killed),
        expected,
        "killed at {kills:?} of a {took:?} run"
    );
    // A torn line (as a kill mid-write would leave) is dropped and rewritten.
    let file = std::fs::read_dir(&killed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let cut = expected.len() - 40;
    std::fs::write(&file, &expected[..cut]).unwrap();
    let (ok, _, err) = kedit(&args);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), expected);

    // The heterogeneous twin, then the report: SD rows for both views, CSV and an SVG.
    let (ok, _, err) = kedit(&bench_args(h, full.to_str().unwrap(), "heterogeneous"));
    assert!(ok, "{err}");
    let rep = dir.path().join("rep");
    let (ok, out, err) = kedit(&[
        "report",
        full.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("| rome | sequential | group | 3 | 5 |"),
        "{out}"
    );
    let csv = std::fs::read_to_string(rep.join("sd.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        3,
        "header + views all and first: {csv}"
    );
    let svg = std::fs::read_to_string(rep.join("sd-rome.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    // S averaged per case instead (`--s-mean case`): the report says which it is.
    let rep_case = dir.path().join("rep-case");
    let (ok, _, err) = kedit(&[
        "report",
        full.to_str().unwrap(),
        "--s-mean",
        "case",
        "--format",
        "md",
        "--out",
        rep_case.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let said = |d: &std::path::Path| std::fs::read_to_string(d.join("report.md")).unwrap();
    assert!(said(&rep).contains("(`--s-mean cell`, ROME's way)"));
    assert!(said(&rep_case).contains("(`--s-mean case`)"));
    // The key figure (fig5): a point per group of each order, from the lines' key cosines.
    assert!(
        out.contains("### Key cosine against efficacy, group by group"),
        "{out}"
    );
    let points = std::fs::read_to_string(rep.join("keys-es.csv")).unwrap();
    assert_eq!(points.lines().count(), 1 + 2 * 5, "{points}");
    let fig = std::fs::read_to_string(rep.join("keys-es-rome-n3.svg")).unwrap();
    assert_eq!(fig.matches("<circle").count(), 10 + 2, "points and legend");

    // Several folders make one report: the homogeneous run in `killed`, the heterogeneous one
    // alone in `het`, give the same tables as `full`.
    let het = dir.path().join("het");
    std::fs::create_dir(&het).unwrap();
    for e in std::fs::read_dir(&full).unwrap() {
        let p = e.unwrap().path();
        if p.to_str().unwrap().contains("heterogeneous") {
            std::fs::copy(&p, het.join(p.file_name().unwrap())).unwrap();
        }
    }
    let (k, t) = (killed.to_str().unwrap(), het.to_str().unwrap());
    let rep2 = dir.path().join("rep2");
    let (ok, _, err) = kedit(&["report", k, t, "--out", rep2.to_str().unwrap()]);
    assert!(ok, "{err}");
    for f in ["sd.csv", "keys-es.csv"] {
        assert_eq!(
            std::fs::read_to_string(rep2.join(f)).unwrap(),
            std::fs::read_to_string(rep.join(f)).unwrap(),
            "{f}"
        );
    }
    // ... but only with --out, and not when two folders hold the same run: `full` and `killed`
    // both hold the homogeneous run, whose groups would count twice.
    let (ok, _, err) = kedit(&["report", k, t]);
    assert!(
        !ok && err.trim().lines().count() == 1 && err.contains("--out"),
        "{err}"
    );
    let (ok, _, err) = kedit(&["report", full.to_str().unwrap(), k, "--out", t]);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    assert!(err.contains("full/") && err.contains("killed/"), "{err}");
    // Nor when the runs were made on two models, as their run identities say.
    let run = std::fs::read_dir(&het)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with(".run.json"))
        .unwrap();
    let mut id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
    id["model"] = "another-model".into();
    std::fs::write(&run, id.to_string()).unwrap();
    let (ok, _, err) = kedit(&["report", k, t, "--out", rep2.to_str().unwrap()]);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    assert!(
        err.contains("two models") && err.contains("another-model"),
        "{err}"
    );
}

/// AlphaEdit keeps the keys of a group's edits for the group's later edits; the benchmark puts
/// the model back after each group and must reset the editor with it: a group's results are the
/// same whether it runs after another group or alone (`--shard 2/2` runs only the second). A
/// resume of a finished run builds no editor at all.
#[test]
fn a_stateful_editor_starts_every_group_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.yaml");
    std::fs::write(
        &h,
        "alg_name: AlphaEdit\nlayers: [0]\nfact_token: subject_last\nv_num_grad_steps: 3\nv_lr: 0.5\n\
v_weight_decay: 0.001\nclamp_norm_factor: 4\nkl_factor: 0.0625\nmom2_update_weight: 100\nmom2_n_samples: 3000\n\
context_template_length_params: [[3, 2]]\nnullspace_threshold: 1.0e+3\nL2: 1.0e-4\n",
    )
    .unwrap();
    let run = |out: &str, shard: Option<&str>| {
        let out = dir.path().join(out);
        let mut args = bench_args(h.to_str().unwrap(), out.to_str().unwrap(), "homogeneous");
        args[8] = "2"; // --n 2
        args[10] = "2"; // --groups 2
        args.extend(["--method", "alphaedit"]);
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        let (ok, _, err) = common::kedit_with_home(&args, &dir.path().join("home"));
        assert!(ok, "{err}");
        only_jsonl(&out)
            .lines()
            .filter(|l| l.contains("\"group\":1,"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let after_group_0 = run("full", None);
    assert_eq!(after_group_0.len(), 2, "group 1's two cases");
    assert_eq!(run("alone", Some("2/2")), after_group_0);

    // A resume with every line written prepares no editor: the statistics it would read are not
    // recomputed (on SmolLM2, AlphaEdit's null spaces alone cost minutes).
    let stats = dir.path().join("home/stats");
    assert!(stats.is_dir(), "the first run computed statistics");
    std::fs::remove_dir_all(&stats).unwrap();
    assert_eq!(run("full", None), after_group_0);
    assert!(!stats.exists(), "a finished cell must not build its editor");
    // With work left it does.
    assert_eq!(run("again", Some("2/2")), after_group_0);
    assert!(stats.is_dir());
}

/// `--curve` scores a group after every edit: its lines after all N edits are an ordinary run's,
/// after one edit the matched groups are the same single edit (SD exactly 0), each N' ≤ N is a
/// report row of its own, and a run cut short resumes to the same file.
#[test]
fn a_curve_run_scores_every_prefix_and_ends_as_an_ordinary_run() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.yaml");
    std::fs::write(&h, HPARAMS).unwrap();
    let h = h.to_str().unwrap();
    let run = |out: &str, order: &str, curve: bool| {
        let out = dir.path().join(out);
        let mut args = bench_args(h, out.to_str().unwrap(), order);
        args[10] = "2"; // --groups 2
        if curve {
            args.push("--curve");
        }
        let (ok, _, err) = kedit(&args);
        assert!(ok, "{err}");
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        (only_jsonl(&out), owned)
    };
    let (plain, _) = run("plain", "homogeneous", false);
    let (curve, args) = run("curve/homo", "homogeneous", true);
    assert_eq!(
        curve.lines().count(),
        2 * (1 + 2 + 3),
        "2 groups scored after 1, 2, 3 edits"
    );
    let last: Vec<String> = curve
        .lines()
        .filter(|l| l.contains("\"after\":3,"))
        .map(|l| l.replace("\"after\":3,", ""))
        .collect();
    assert_eq!(last, plain.lines().collect::<Vec<_>>());

    let file = std::fs::read_dir(dir.path().join("curve/homo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    assert!(file.to_str().unwrap().ends_with("-curve.jsonl"), "{file:?}");
    let half: String = curve.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, half).unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = kedit(&args);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), curve);

    let (hetero, _) = run("curve/hetero", "heterogeneous", true);
    let after_1 = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("\"after\":1,"))
            .map(|l| l.replace("\"order\":\"heterogeneous\"", "\"order\":\"homogeneous\""))
            .collect()
    };
    assert_eq!(
        after_1(&hetero),
        after_1(&curve),
        "one edit: the same fact on both sides"
    );
    let rep = dir.path().join("rep");
    let curve_dir = dir.path().join("curve");
    let (ok, out, err) = kedit(&[
        "report",
        curve_dir.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for k in 1..=3 {
        assert!(
            out.contains(&format!("| rome | sequential | group | {k} of 3 | 2 |")),
            "{out}"
        );
    }
    assert!(
        out.contains("N=1 of 3 view `first`: SD +0.0 [+0.0, +0.0]"),
        "{out}"
    );
    let curve_row = out
        .lines()
        .find(|l| l.starts_with("| first | rome | sequential | group | +0.0 | "))
        .unwrap_or_else(|| panic!("no curve row for view first: {out}"));
    assert_eq!(
        curve_row.split(" | ").count(),
        4 + 3 + 1,
        "view, method, strategy, design, N = 1..3, CI: {curve_row}"
    );
    // One edit, the same fact on both sides: the same margin.
    let margins = out
        .lines()
        .skip_while(|l| !l.starts_with("First edit's mean margin"))
        .find(|l| l.starts_with("| rome | sequential | group | "))
        .unwrap_or_else(|| panic!("no margin row: {out}"));
    let first = margins.split(" | ").nth(3).unwrap();
    let (same, other) = first.split_once(" / ").unwrap();
    assert_eq!(same, other, "{margins}");
    let csv = std::fs::read_to_string(rep.join("sd.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 3 * 2,
        "N' = 1, 2, 3 × two views: {csv}"
    );
    let svg = std::fs::read_to_string(rep.join("sd-rome.svg")).unwrap();
    assert!(svg.contains("curve of 3"), "{svg}");

    let mut batch = args.clone();
    batch.extend(["--strategy", "batch"]);
    let (ok, _, err) = kedit(&batch);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--curve") && err.contains("--strategy batch"),
        "{err}"
    );
}

#[test]
fn bad_bench_input_is_one_line_and_keeps_results() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.yaml");
    std::fs::write(&h, HPARAMS).unwrap();
    let out = dir.path().join("out");
    let mut args = bench_args(h.to_str().unwrap(), out.to_str().unwrap(), "homogeneous");
    args[10] = "1"; // --groups 1
    let (ok, _, err) = kedit(&args);
    assert!(ok, "{err}");
    let before = only_jsonl(&out);

    let check = |extra: &[&str], swap: Option<(usize, &str)>, needle: &str| {
        let mut a = args.clone();
        if let Some((i, v)) = swap {
            a[i] = v;
        }
        a.extend_from_slice(extra);
        let (ok, _, err) = kedit(&a);
        assert!(!ok, "should fail: {a:?}");
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{err}"
        );
        assert_eq!(only_jsonl(&out), before, "results left as they were");
    };
    check(&["--shard", "3/2"], None, "--shard 3/2");
    check(&[], Some((8, "40")), "--n 40");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"subjectID": 0, "subject": {"name": "X"}, "Star_Topology": [{"requested_rewrite": {"prompt": "{} is", "target_true": "a"}}]}]"#,
    )
    .unwrap();
    check(&[], Some((6, bad.to_str().unwrap())), "target_new");
}

#[test]
fn data_build_is_reproducible_and_known_by_filters() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("..");
    let build = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "data",
            "build",
            "--facts",
            Box::leak(
                root.join("data/pararel/trex_lms_vocab")
                    .to_str()
                    .unwrap()
                    .to_owned()
                    .into_boxed_str(),
            ),
            "--facts",
            Box::leak(
                root.join("data/kamel/KAMEL")
                    .to_str()
                    .unwrap()
                    .to_owned()
                    .into_boxed_str(),
            ),
            "--relations",
            Box::leak(
                root.join("data/pararel/pattern_data/graphs_json")
                    .to_str()
                    .unwrap()
                    .to_owned()
                    .into_boxed_str(),
            ),
            "--subjects",
            "20",
            "--out",
            Box::leak(out.to_str().unwrap().to_owned().into_boxed_str()),
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, err) = kedit(&args);
        assert!(ok, "{err}");
        assert!(stdout.contains("| records | subjects |"), "{stdout}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        v.as_array().unwrap().clone()
    };
    let (a, b, k) = (
        dir.path().join("a.json"),
        dir.path().join("b.json"),
        dir.path().join("k.json"),
    );
    let all = build(&a, &[]);
    build(&b, &[]);
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same seed, same bytes"
    );
    let tiny = fixture("tiny-llama");
    let known = build(&k, &["--known-by", tiny.to_str().unwrap()]);
    let records = |d: &[serde_json::Value]| -> usize {
        d.iter()
            .map(|s| s["Star_Topology"].as_array().unwrap().len())
            .sum()
    };
    assert!(
        records(&known) < records(&all),
        "a random model does not know every fact"
    );
    assert!(known
        .iter()
        .all(|s| s["Star_Topology"].as_array().unwrap().len() >= 3));
}

#[test]
fn a_resume_with_other_hparams_is_refused_and_a_label_keeps_both_runs() {
    let dir = tempfile::tempdir().unwrap();
    let subject_last = dir.path().join("h.yaml");
    std::fs::write(&subject_last, HPARAMS).unwrap();
    let last = dir.path().join("last.yaml");
    std::fs::write(
        &last,
        HPARAMS.replace("fact_token: subject_last", "fact_token: last"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = |h: &Path| {
        let mut a = bench_args(
            Box::leak(h.to_str().unwrap().to_owned().into_boxed_str()),
            Box::leak(out.to_str().unwrap().to_owned().into_boxed_str()),
            "homogeneous",
        );
        a[10] = "1"; // --groups 1
        a
    };
    let (ok, _, err) = kedit(&args(&subject_last));
    assert!(ok, "{err}");
    let before = only_jsonl(&out);

    // The same file name with other hyperparameters: refused, naming the record and the key.
    let (ok, _, err) = kedit(&args(&last));
    assert!(!ok, "a resume with other hparams must fail");
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains(".run.json") && lines[0].contains("`fact_token`"),
        "{err}"
    );
    assert_eq!(only_jsonl(&out), before, "results left as they were");

    // The same settings resume (nothing to add); a label keeps the other run apart.
    let (ok, _, err) = kedit(&args(&subject_last));
    assert!(ok, "{err}");
    let mut labelled = args(&last);
    labelled.extend(["--label", "rome-last"]);
    let (ok, _, err) = kedit(&labelled);
    assert!(ok, "{err}");
    let (ok, md, err) = kedit(&["report", out.to_str().unwrap(), "--format", "md"]);
    assert!(ok, "{err}");
    assert!(
        md.contains("| rome |") && md.contains("| rome-last |"),
        "both runs in the report: {md}"
    );
    let n = labelled.len();
    labelled[n - 1] = "rome last";
    let (ok, _, err) = kedit(&labelled);
    assert!(!ok && err.contains("--label"), "{err}");
}

/// Runs of 2 groups of 2 edits on the tiny Llama with the short ROME hyperparameters, side by
/// side in one folder: what the reading tests (perplexity, fluency) compare.
struct Runs {
    dir: tempfile::TempDir,
    h: String,
}

impl Runs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("h.yaml");
        std::fs::write(&h, HPARAMS).unwrap();
        let h = h.to_str().unwrap().to_owned();
        Self { dir, h }
    }

    /// `kedit bench` of `order` into `out` (a folder under this one), with `extra` flags.
    fn run(&self, out: &str, order: &str, extra: &[&str]) -> (bool, String, String) {
        let out = self.dir.path().join(out);
        let out = out.to_str().unwrap();
        let mut args = bench_args(&self.h, out, order);
        args[8] = "2"; // --n 2
        args[10] = "2"; // --groups 2
        args.extend(extra);
        kedit(&args)
    }

    fn lines(&self, out: &str) -> Vec<serde_json::Value> {
        only_jsonl(&self.dir.path().join(out))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The files of the folders `outs` copied into a new folder `name`, for one report.
    fn merged(&self, name: &str, outs: &[String]) -> std::path::PathBuf {
        let both = self.dir.path().join(name);
        std::fs::create_dir(&both).unwrap();
        for out in outs {
            for e in std::fs::read_dir(self.dir.path().join(out)).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, both.join(p.file_name().unwrap())).unwrap();
            }
        }
        both
    }
}

/// `--perplexity-tokens`: every line scored after a group's last edit carries that group's edited
/// model's perplexity on held-out text, beside the unedited model's, which is what `kedit
/// perplexity` gives; the other fields are a run without it, line for line; the report has a
/// perplexity row over the matched pairs; a `--curve` run reads it after every edit, the last
/// reading equal to the plain run's; a resume that adds it to results made without it is
/// refused.
#[test]
fn a_bench_run_reads_each_groups_model_on_held_out_text() {
    let runs = Runs::new();
    let ppl = ["--perplexity-tokens", "300"];
    let lines_of = |out: &str| runs.lines(out);
    for order in ["homogeneous", "heterogeneous"] {
        let (ok, _, err) = runs.run(&format!("ppl-{order}"), order, &ppl);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = runs.run("plain", "homogeneous", &[]);
    assert!(ok, "{err}");

    let model = fixture("tiny-llama");
    let (ok, out, err) = kedit(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        "300",
    ]);
    assert!(ok, "{err}");
    let standalone: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let with = lines_of("ppl-homogeneous");
    assert_eq!(with.len(), 4, "2 groups of 2");
    let mut by_group = std::collections::BTreeMap::new();
    for l in &with {
        let p = &l["perplexity"];
        assert_eq!(p["unedited"], standalone["perplexity"], "{l}");
        assert_eq!(p["tokens"], 300);
        let edited = p["edited"].as_f64().unwrap();
        assert!(edited.is_finite() && edited != p["unedited"].as_f64().unwrap());
        let norm = p["update_norm"].as_f64().unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "the edits moved no weight: {l}"
        );
        let g = l["group"].as_u64().unwrap();
        assert_eq!(
            *by_group.entry(g).or_insert(edited),
            edited,
            "one per group"
        );
    }
    assert_eq!(by_group.len(), 2);
    // Reading the held-out text changes nothing else.
    let without: Vec<serde_json::Value> = with
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("perplexity");
            l
        })
        .collect();
    assert_eq!(without, lines_of("plain"));

    // Both orders in one folder: a perplexity row over the 2 matched pairs.
    let both = runs.merged(
        "both",
        &["ppl-homogeneous".into(), "ppl-heterogeneous".into()],
    );
    let (ok, md, err) = kedit(&["report", both.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(md.contains("### Held-out perplexity"), "{md}");
    let csv = std::fs::read_to_string(both.join("perplexity.csv")).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(
        &row[..7],
        ["rome", "sequential", "group", "2", "", "2", "300"]
    );
    let het = lines_of("ppl-heterogeneous");
    let log_ratio: f64 = [0u64, 1]
        .iter()
        .map(|g| {
            let of = |ls: &[serde_json::Value]| {
                ls.iter().find(|l| l["group"] == *g).unwrap()["perplexity"]["edited"]
                    .as_f64()
                    .unwrap()
            };
            (of(&with) / of(&het)).ln()
        })
        .sum::<f64>()
        / 2.0;
    let ratio: f64 = row[12].parse().unwrap();
    assert!(
        (ratio - log_ratio.exp()).abs() < 1e-4,
        "{ratio} vs {}",
        log_ratio.exp()
    );

    // A curve run reads the model after every edit; after the last, the model is the plain
    // run's, to the bit.
    let (ok, _, err) = runs.run(
        "ppl-curve",
        "homogeneous",
        &[&ppl[..], &["--curve"]].concat(),
    );
    assert!(ok, "{err}");
    let curve = lines_of("ppl-curve");
    assert_eq!(
        curve.len(),
        6,
        "2 groups: 1 line after the first edit, 2 after the second"
    );
    for g in [0u64, 1] {
        let at = |k: u64| {
            let ps: Vec<&serde_json::Value> = curve
                .iter()
                .filter(|l| l["group"] == g && l["after"] == k)
                .map(|l| &l["perplexity"])
                .collect();
            assert!(
                ps.iter().all(|p| *p == ps[0]),
                "one per group and N: {ps:?}"
            );
            ps[0].clone()
        };
        let plain = &with.iter().find(|l| l["group"] == g).unwrap()["perplexity"];
        assert_eq!(&at(2), plain, "group {g}");
        assert!(at(1)["edited"].is_f64() && at(1)["edited"] != at(2)["edited"]);
        assert!(at(1)["update_norm"].as_f64().unwrap() > 0.0);
    }

    // Results made without perplexity are not completed with it.
    let (ok, _, err) = runs.run("plain", "homogeneous", &ppl);
    assert!(!ok, "adding perplexity to a run made without it must fail");
    assert!(
        err.trim().lines().count() == 1 && err.contains("selection"),
        "{err}"
    );
}

/// Subject-density runs (`--density`): each group has N / d subjects with d records each, and the
/// report gives each density's S against low density's, in density.csv and a bar figure, and its
/// held-out perplexity against low density's (`--perplexity-tokens`).
#[test]
fn density_runs_reach_the_report_against_low_density() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.yaml");
    std::fs::write(&h, HPARAMS).unwrap();
    let out = dir.path().join("runs");
    for density in ["high", "medium", "low"] {
        let mut args = bench_args(h.to_str().unwrap(), out.to_str().unwrap(), "homogeneous");
        args[8] = "6"; // --n 6
        args[10] = "2"; // --groups 2
        args[11] = "--density";
        args[12] = density;
        args.extend(["--perplexity-tokens", "64"]);
        let (ok, _, err) = kedit(&args);
        assert!(ok, "{density}: {err}");
    }
    for (density, per) in [("high", 3), ("medium", 2), ("low", 1)] {
        let file = out.join(format!(
            "rome-sequential-group-density-{density}-n6-g2-s0.jsonl"
        ));
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 12, "{density}: 2 groups × 6 cases");
        for g in 0..2 {
            let mut per_subject = std::collections::HashMap::<&str, usize>::new();
            for l in lines.iter().filter(|l| l["group"] == g) {
                *per_subject
                    .entry(l["subject_id"].as_str().unwrap())
                    .or_default() += 1;
            }
            assert!(
                per_subject.values().all(|&k| k == per) && per_subject.len() == 6 / per,
                "{density} group {g}: {per_subject:?}"
            );
        }
    }
    let rep = dir.path().join("rep");
    let (ok, md, err) = kedit(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    for density in ["high", "medium", "low"] {
        assert!(
            md.contains(&format!("| rome | sequential | 6 | {density} | 2 | 12 |")),
            "{md}"
        );
    }
    let csv = std::fs::read_to_string(rep.join("density.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}");
    // High and medium carry S − S(low) and its interval; low leaves them empty.
    for l in csv.lines().skip(1) {
        let filled = l.split(',').rev().take(3).filter(|v| !v.is_empty()).count();
        assert_eq!(filled, if l.contains(",low,") { 0 } else { 3 }, "{l}");
    }
    let svg = std::fs::read_to_string(rep.join("density-sequential-n6.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains(">rome</text>"),
        "{svg}"
    );
    // The perplexity panel: a row per density over both groups, the ratio to low beside high
    // and medium.
    for density in ["high", "medium", "low"] {
        assert!(
            md.contains(&format!("| rome | sequential | 6 | {density} | 2 | 64 |")),
            "{md}"
        );
    }
    let csv = std::fs::read_to_string(rep.join("density-perplexity.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3, "{csv}");
    for l in csv.lines().skip(1) {
        let filled = l.split(',').rev().take(3).filter(|v| !v.is_empty()).count();
        assert_eq!(filled, if l.contains(",low,") { 0 } else { 3 }, "{l}");
    }
    let svg = std::fs::read_to_string(rep.join("density-perplexity-sequential-n6.svg")).unwrap();
    assert!(svg.contains(">unedited</text>"), "{svg}");
}

/// `--fluency`: every line carries the entropy of its case's rewrite prompt continued by the
/// edited model and by the unedited one, the latter what `kedit fluency` gives for that prompt
/// (same seed, same draws); the other fields are a run without it, line for line; the report
/// has a fluency row per order; a resume without it is refused.
#[test]
fn a_bench_run_reads_each_cases_fluency() {
    let runs = Runs::new();
    let fluency = ["--fluency", "40"];
    let lines_of = |out: &str| runs.lines(out);
    for order in ["homogeneous", "heterogeneous"] {
        let (ok, _, err) = runs.run(&format!("fl-{order}"), order, &fluency);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = runs.run("plain", "homogeneous", &[]);
    assert!(ok, "{err}");

    // The rewrite prompt of each case, as the dataset gives it.
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("s2rke-wikidata.json")).unwrap())
            .unwrap();
    let prompt_of = |case: &str| -> String {
        let (sid, j) = case[1..].split_once('r').unwrap();
        let rec = data
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["subjectID"].to_string().trim_matches('"') == sid)
            .unwrap();
        let rw = &rec["Star_Topology"][j.parse::<usize>().unwrap()]["requested_rewrite"];
        rw["prompt"]
            .as_str()
            .unwrap()
            .replace("{}", rec["subject"]["name"].as_str().unwrap())
    };
    let with = lines_of("fl-homogeneous");
    assert_eq!(with.len(), 4, "2 groups of 2");
    let model = fixture("tiny-llama");
    for l in &with {
        let f = &l["fluency"];
        assert_eq!(f["max_len"], 40);
        let prompt = prompt_of(l["case_id"].as_str().unwrap());
        let (ok, out, err) = kedit(&[
            "fluency",
            "--model",
            model.to_str().unwrap(),
            "--max-len",
            "40",
            &prompt,
        ]);
        assert!(ok, "{err}");
        let standalone: serde_json::Value =
            serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(f["unedited"], standalone["entropy"], "{l}");
        let edited = f["edited"].as_f64().unwrap();
        assert!(edited.is_finite() && edited >= 0.0, "{l}");
    }
    // Reading fluency changes nothing else.
    let without: Vec<serde_json::Value> = with
        .iter()
        .map(|l| {
            let mut l = l.clone();
            l.as_object_mut().unwrap().remove("fluency");
            l
        })
        .collect();
    assert_eq!(without, lines_of("plain"));

    // Both orders in one folder: a row per order, Δ = the mean of edited − unedited.
    let both = runs.merged(
        "both",
        &["fl-homogeneous".into(), "fl-heterogeneous".into()],
    );
    let (ok, md, err) = kedit(&["report", both.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(md.contains("### Generation fluency"), "{md}");
    let csv = std::fs::read_to_string(both.join("fluency.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert_eq!(
        &rows[0][..9],
        [
            "rome",
            "sequential",
            "group",
            "2",
            "",
            "homogeneous",
            "2",
            "4",
            "40"
        ]
    );
    let delta: f64 = with
        .iter()
        .map(|l| {
            l["fluency"]["edited"].as_f64().unwrap() - l["fluency"]["unedited"].as_f64().unwrap()
        })
        .sum::<f64>()
        / 4.0;
    let got: f64 = rows[0][11].parse().unwrap();
    assert!((got - delta).abs() < 1e-4, "{got} vs {delta}");

    // A resume that adds fluency to results made without it mixes two kinds of lines: refused.
    let (ok, _, err) = runs.run("plain", "homogeneous", &fluency);
    assert!(!ok && err.contains("fluency"), "{err}");
}

/// `--token-acc`: every line carries EasyEdit's token accuracies of its case (locality where it
/// has neighbourhood prompts, against the unedited model's answers); the other fields are a run
/// without it, line for line; the report has a token-accuracy row per view whose Δ is the
/// lines' own; a resume without it is refused.
#[test]
fn a_bench_run_reads_each_cases_token_accuracy() {
    let runs = Runs::new();
    let flag = ["--token-acc"];
    for order in ["homogeneous", "heterogeneous"] {
        let (ok, out, err) = runs.run(&format!("ta-{order}"), order, &flag);
        assert!(ok, "{err}");
        assert!(
            out.contains("EasyEdit's token accuracy: rewrite_acc"),
            "{out}"
        );
    }
    let (ok, _, err) = runs.run("plain", "homogeneous", &[]);
    assert!(ok, "{err}");
    let share = |x: &serde_json::Value| x.as_f64().filter(|x| (0.0..=1.0).contains(x));
    let mut with = runs.lines("ta-homogeneous");
    assert_eq!(with.len(), 4, "2 groups of 2");
    for l in &with {
        let t = &l["token_acc"];
        assert!(share(&t["rewrite_acc"]).is_some(), "{l}");
        // Locality where the case has neighbourhood prompts (and so NS), and only there.
        assert_eq!(share(&t["locality"]).is_some(), !l["ns"].is_null(), "{l}");
        assert_eq!(t["rephrase_acc"].is_null(), l["ps"].is_null(), "{l}");
    }
    assert!(with.iter().any(|l| !l["token_acc"]["locality"].is_null()));
    // Reading it changes nothing else.
    for l in &mut with {
        l.as_object_mut().unwrap().remove("token_acc");
    }
    assert_eq!(with, runs.lines("plain"));

    let both = runs.merged(
        "both",
        &["ta-homogeneous".into(), "ta-heterogeneous".into()],
    );
    let (ok, md, err) = kedit(&["report", both.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(md.contains("### EasyEdit's token accuracy"), "{md}");
    let csv = std::fs::read_to_string(both.join("token-acc.csv")).unwrap();
    let all: Vec<&str> = csv
        .lines()
        .find(|l| l.contains(",all,"))
        .unwrap_or_else(|| panic!("{csv}"))
        .split(',')
        .collect();
    let mean_rewrite = |out: &str| {
        let ls = runs.lines(out);
        ls.iter()
            .map(|l| l["token_acc"]["rewrite_acc"].as_f64().unwrap())
            .sum::<f64>()
            / ls.len() as f64
    };
    let delta = 100.0 * (mean_rewrite("ta-homogeneous") - mean_rewrite("ta-heterogeneous"));
    let got: f64 = all[9].parse().unwrap();
    assert!((got - delta).abs() < 1e-4, "{got} vs {delta}: {csv}");

    // A resume that adds token accuracy to results made without it: refused.
    let (ok, _, err) = runs.run("plain", "homogeneous", &flag);
    assert!(!ok && err.contains("token_acc"), "{err}");
}
