//! `kedit edit` and `kedit keys` on the tiny checkpoint: report shape, and one-line errors.

use crate::common;

use crate::common::{fixture, kedit};

const HPARAMS: &str = "alg_name: ROME\nmodel_name: tiny\nlayers: [0]\nfact_token: subject_last\nv_num_grad_steps: 5\nv_lr: 0.5\n\
v_weight_decay: 0.001\nclamp_norm_factor: 4\nkl_factor: 0.0625\nmom2_adjustment: false\ncontext_template_length_params: [[3, 2]]\n";

const REQUESTS: &str = r#"[{"subjectID": 0, "subject": {"name": "France"}, "Star_Topology": [
  {"requested_rewrite": {"prompt": "The capital of {} is", "target_true": "Paris", "target_new": "Rome"},
   "paraphrase_prompts": ["France's capital is"], "neighborhood_prompts": ["The capital of Italy is"]},
  {"requested_rewrite": {"prompt": "{} plays the", "target_true": "guitar", "target_new": "piano"}}]}]"#;

/// Every family's checkpoint folder works with `--model`: Llama, GPT-2, GPT-J.
#[test]
fn edit_writes_a_report_and_keys_a_cosine_matrix() {
    for family in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        edit_and_keys(family);
    }
}

/// A requests file in `dir` with four cases: two of Paris (so the second rewrites the first's
/// key), one of Danielle Darrieux, one of Toko Yasuda.
fn four_requests(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("four.json");
    std::fs::write(
        &path,
        r#"[{"case_id": 1, "requested_rewrite": {"prompt": "{} is the capital of", "subject": "Paris", "target_new": "Italy", "target_true": "France"}},
            {"case_id": 2, "requested_rewrite": {"prompt": "{} is famous for its", "subject": "Paris", "target_new": "beaches", "target_true": "museums"}},
            {"case_id": 3, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English", "target_true": "French"}},
            {"case_id": 4, "requested_rewrite": {"prompt": "{} plays the", "subject": "Toko Yasuda", "target_new": "piano", "target_true": "guitar"}}]"#,
    )
    .unwrap();
    path
}

/// p(target | prompt) from `kedit score` (its mean NLL, printed to 4 decimals), with `patch`
/// applied if given.
fn probability(model: &str, patch: Option<&std::path::Path>, prompt: &str, target: &str) -> f64 {
    let mut args = vec!["score", "--model", model];
    if let Some(p) = patch {
        args.extend(["--patch", p.to_str().unwrap()]);
    }
    args.extend(["--prompt", prompt, "--target", target]);
    let (ok, out, err) = kedit(&args);
    assert!(ok, "{err}");
    let nll: f64 = out
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("mean NLL "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    (-nll).exp()
}

fn edit_and_keys(family: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (h, r, rep) = (
        dir.path().join("h.yaml"),
        dir.path().join("r.json"),
        dir.path().join("report.json"),
    );
    std::fs::write(&h, HPARAMS).unwrap();
    std::fs::write(&r, REQUESTS).unwrap();
    let model = fixture(family);
    let (ok, out, err) = kedit(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "-n",
        "3",
        "The capital of France is",
    ]);
    assert!(ok && !out.trim().is_empty(), "{family} generate: {err}");
    let (ok, out, err) = kedit(&[
        "edit",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("post-edit"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(v["edits"].as_array().unwrap().len(), 2);
    assert_eq!(v["edits"][0]["case_id"], "s0r0");
    for k in ["es", "ps", "ns", "score"] {
        assert!(v["summary"][k].is_number(), "summary.{k}: {}", v["summary"]);
    }
    let (ok, out, err) = kedit(&[
        "keys",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("same subject") && out.contains("s0r1"),
        "{out}"
    );
}

/// Two prompts that begin with the same subject give one key (the model has not read the
/// relation yet; up to rounding), and `kedit keys` counts such pairs. On SmolLM2: the tiny random
/// models' keys at a subject barely depend on the context before it.
#[test]
fn keys_of_prompts_that_begin_with_the_subject_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("h.yaml");
    let bundled = include_str!("../../../locate-edit/hparams/rome-smollm2.yaml");
    assert!(bundled.contains("mom2_adjustment: true"));
    // The key is read before C⁻¹ is applied: no statistics needed.
    std::fs::write(
        &h,
        bundled.replace("mom2_adjustment: true", "mom2_adjustment: false"),
    )
    .unwrap();
    let r = dir.path().join("r.json");
    // Paris: both prompts begin with the subject. France: the relation comes first in one.
    std::fs::write(
        &r,
        r#"[{"case_id": 1, "requested_rewrite": {"prompt": "{} is the capital of", "subject": "Paris", "target_new": "Italy", "target_true": "France"}},
            {"case_id": 2, "requested_rewrite": {"prompt": "{} is famous for its", "subject": "Paris", "target_new": "beaches", "target_true": "museums"}},
            {"case_id": 3, "requested_rewrite": {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"}},
            {"case_id": 4, "requested_rewrite": {"prompt": "{} is located in", "subject": "France", "target_new": "Asia", "target_true": "Europe"}}]"#,
    )
    .unwrap();
    let model = kedit_models::fetch::smollm2().expect("fetch the default model");
    let (ok, out, err) = kedit(&[
        "keys",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("(2 pairs, 1 with identical keys)"), "{out}");
}

#[test]
fn unknown_hparams_key_and_bad_request_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = (dir.path().join("h.yaml"), dir.path().join("r.json"));
    std::fs::write(&h, format!("{HPARAMS}v_lr_typo: 1\n")).unwrap();
    std::fs::write(&r, REQUESTS).unwrap();
    let model = fixture("tiny-llama");
    let (ok, _, err) = kedit(&[
        "edit",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.lines().count() == 1 && err.contains("h.yaml") && err.contains("v_lr_typo"),
        "{err}"
    );
    std::fs::write(&r, REQUESTS.replace(r#""target_true": "guitar", "#, "")).unwrap();
    let (ok, _, err) = kedit(&[
        "edit",
        "--model",
        model.to_str().unwrap(),
        "--requests",
        r.to_str().unwrap(),
    ]);
    assert!(!ok && err.lines().count() == 1, "{err}");
    assert!(
        err.contains("r.json") && err.contains("Star_Topology[1]") && err.contains("target_true"),
        "{err}"
    );
}

/// EasyEdit's module names resolve per family: a GPT-2 file on a Llama model is an error.
#[test]
fn module_names_of_another_family_are_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = (dir.path().join("h.yaml"), dir.path().join("r.json"));
    std::fs::write(
        &h,
        format!("{HPARAMS}rewrite_module_tmp: transformer.h.{{}}.mlp.c_proj\n"),
    )
    .unwrap();
    std::fs::write(&r, REQUESTS).unwrap();
    let args = |model: &str| {
        kedit(&[
            "keys",
            "--model",
            fixture(model).to_str().unwrap(),
            "--requests",
            r.to_str().unwrap(),
            "--hparams",
            h.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = args("tiny-llama");
    assert!(
        !ok && err.lines().count() == 1
            && err.contains("rewrite_module_tmp")
            && err.contains("model.layers.{}.mlp.down_proj"),
        "{err}"
    );
    let (ok, _, err) = args("tiny-gpt2");
    assert!(ok, "GPT-2's own name resolves: {err}");

    // FT's EasyEdit files name the parameter (`….down_proj.weight`): the bundled file, passed
    // with --hparams, resolves on a Llama.
    let ft = tiny_ft_hparams(dir.path());
    let (ok, _, err) = kedit(&[
        "edit",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--method",
        "ft-m",
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        ft.to_str().unwrap(),
    ]);
    assert!(ok, "the bundled FT file with --hparams: {err}");
}

/// The bundled FT file (EasyEdit's form: `rewrite_module_tmp` names `….down_proj.weight`) at the
/// tiny Llama's layer 0.
fn tiny_ft_hparams(dir: &std::path::Path) -> std::path::PathBuf {
    let bundled = include_str!("../../../gradient-edit/hparams/ft-smollm2.yaml");
    assert!(bundled.contains("down_proj.weight"));
    let file = dir.join("ft.yaml");
    std::fs::write(&file, bundled.replace("layers: [20]", "layers: [0]")).unwrap();
    file
}

const MEMIT_HPARAMS: &str = "alg_name: MEMIT\nlayers: [0, 1]\nfact_token: subject_last\nv_num_grad_steps: 4\nv_lr: 0.5\n\
v_weight_decay: 0.001\nclamp_norm_factor: 4\nkl_factor: 0.0625\nmom2_update_weight: 100\nmom2_n_samples: 3000\n\
context_template_length_params: [[3, 2]]\n\
nullspace_threshold: 1.0e+3\nL2: 1.0e-4\nemmet_lambda: 0.1\n";

/// MEMIT, PMET, AlphaEdit, EMMET and EMMET-Merge (whose keys MEMIT and PMET ignore; a threshold above every
/// eigenvalue of the random models' C, so that all of it is null space) in batch on every family
/// (statistics computed from the bundled corpus), and
/// `kedit keys --method memit` with a cosine matrix per edit layer.
#[test]
fn memit_and_pmet_batch_edit_every_family_and_keys_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (h, r) = (dir.path().join("h.yaml"), dir.path().join("r.json"));
    std::fs::write(&h, MEMIT_HPARAMS).unwrap();
    std::fs::write(&r, REQUESTS).unwrap();
    for family in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        let model = fixture(family);
        for method in ["memit", "pmet", "alphaedit", "emmet", "emmet-merge"] {
            let (ok, out, err) = kedit(&[
                "edit",
                "--model",
                model.to_str().unwrap(),
                "--method",
                method,
                "--batch",
                "--requests",
                r.to_str().unwrap(),
                "--hparams",
                h.to_str().unwrap(),
            ]);
            assert!(ok && out.contains("post-edit"), "{family} {method}: {err}");
        }
    }
    let (ok, out, err) = kedit(&[
        "keys",
        "--model",
        fixture("tiny-gpt2").to_str().unwrap(),
        "--method",
        "memit",
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("layer 0: mean cosine") && out.contains("layer 1: mean cosine"),
        "{out}"
    );
}

/// Every model command on the tiny Llama, run on two backends (or twice on one), each run with
/// its own cache (`KEDIT_HOME`) so that neither reads what the other wrote: each succeeds,
/// greedy continuations are identical, ROME's report agrees (its ES/PS/NS are argmax
/// comparisons, robust to the GPU's TF32 rounding on this model's margins; a difference shows a
/// wrong kernel), the statistics agree, the benchmark scores the same cases, and a MEND archive
/// trained on the second backend edits on both.
fn every_model_command_agrees(first: &str, second: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (h, hm, r) = (
        dir.path().join("h.yaml"),
        dir.path().join("hm.yaml"),
        dir.path().join("r.json"),
    );
    std::fs::write(&h, HPARAMS).unwrap();
    std::fs::write(&hm, MEMIT_HPARAMS).unwrap();
    std::fs::write(&r, REQUESTS).unwrap();
    let model = fixture("tiny-llama");
    let m = model.to_str().unwrap();
    // Run `i` (0 or 1) on its backend, with its own cache.
    let on = |i: usize, args: &[&str]| {
        let backend = [first, second][i];
        let mut a = args.to_vec();
        a.extend(["--model", m, "--backend", backend]);
        let (ok, out, err) = common::kedit_with_home(&a, &dir.path().join(format!("home-{i}")));
        assert!(ok, "{args:?} --backend {backend}: {err}");
        out
    };
    let both = |args: &[&str]| (on(0, args), on(1, args));

    let (a, b) = both(&["generate", "-n", "8", "The capital of France is"]);
    assert_eq!(b, a, "greedy continuation, {first} vs {second}");
    both(&[
        "score",
        "--prompt",
        "The capital of France is",
        "--target",
        " Paris",
    ]);
    let report = |i: usize| {
        let rep = dir.path().join(format!("rome-{i}.json"));
        on(
            i,
            &[
                "edit",
                "--requests",
                r.to_str().unwrap(),
                "--hparams",
                h.to_str().unwrap(),
                "--report",
                rep.to_str().unwrap(),
            ],
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
        v["summary"].clone()
    };
    let (a, b) = (report(0), report(1));
    for k in ["es", "ps", "ns"] {
        assert_eq!(a[k], b[k], "ROME summary.{k}: {first} {a} vs {second} {b}");
    }
    for method in ["memit", "pmet", "alphaedit", "emmet"] {
        let rq = r.to_str().unwrap();
        let hp = hm.to_str().unwrap();
        both(&[
            "edit",
            "--method",
            method,
            "--batch",
            "--requests",
            rq,
            "--hparams",
            hp,
        ]);
    }
    let hf = tiny_ft_hparams(dir.path());
    for method in ["ft-m", "ft-l"] {
        let rq = r.to_str().unwrap();
        both(&[
            "edit",
            "--method",
            method,
            "--requests",
            rq,
            "--hparams",
            hf.to_str().unwrap(),
        ]);
    }
    both(&["edit", "--method", "kn", "--requests", r.to_str().unwrap()]);
    both(&[
        "keys",
        "--requests",
        r.to_str().unwrap(),
        "--hparams",
        h.to_str().unwrap(),
    ]);

    // Statistics: the keys come from the GPU in f32 (matmuls possibly on TF32 tensor cores,
    // ~5e-4 relative per product) and are summed on the host in f64, so C agrees to ~1e-3.
    let second_moment = |i: usize| -> Vec<f64> {
        on(i, &["stats", "--layers", "0", "--samples", "2000"]);
        let stats = dir.path().join(format!("home-{i}/stats"));
        // The statistics file, not the lock file beside it.
        let file = std::fs::read_dir(&stats)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .unwrap();
        let bytes = std::fs::read(file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, t) = st
            .tensors()
            .into_iter()
            .max_by_key(|(_, t)| t.data().len())
            .unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F64);
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (c, g) = (second_moment(0), second_moment(1));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let diff: Vec<f64> = c.iter().zip(&g).map(|(a, b)| a - b).collect();
    // One backend twice: bit for bit.
    let tol = if first == second { 0.0 } else { 1e-2 };
    assert!(
        c.len() == g.len() && norm(&diff) <= tol * norm(&c),
        "stats: C on {second} vs {first}, relative Frobenius {}",
        norm(&diff) / norm(&c)
    );
    // The S2RKE benchmark: the same cases, in the same order, on both.
    let bench = |i: usize| -> Vec<String> {
        let out = dir.path().join(format!("bench-{i}"));
        on(
            i,
            &[
                "bench",
                "--hparams",
                h.to_str().unwrap(),
                "--data",
                fixture("s2rke-wikidata.json").to_str().unwrap(),
                "--n",
                "2",
                "--groups",
                "2",
                "--order",
                "homogeneous",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let jsonl = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .unwrap();
        std::fs::read_to_string(jsonl)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(v["es"].is_number(), "{l}");
                format!("{}/{}/{}", v["group"], v["step"], v["case_id"])
            })
            .collect()
    };
    let cases = bench(0);
    assert!(!cases.is_empty());
    assert_eq!(bench(1), cases, "bench: the cases each run scored");
    // MEND: an archive meta-trained on the second backend, then used on both.
    let (mend_h, train) = common::mend_training_files(dir.path());
    let archive = dir.path().join("mend.safetensors");
    on(
        1,
        &[
            "mend",
            "train",
            "--data",
            train.to_str().unwrap(),
            "--hparams",
            mend_h.to_str().unwrap(),
            "--out",
            archive.to_str().unwrap(),
        ],
    );
    let (out, _) = both(&[
        "edit",
        "--method",
        "mend",
        "--archive",
        archive.to_str().unwrap(),
        "--requests",
        r.to_str().unwrap(),
    ]);
    assert!(out.contains("post-edit"), "{out}");
}

#[test]
fn every_model_command_is_deterministic_on_cpu() {
    every_model_command_agrees("cpu", "cpu");
}

#[cfg(feature = "cuda")]
#[test]
fn every_model_command_runs_on_cuda_with_the_cpu_results() {
    every_model_command_agrees("cpu", "cuda");
}

/// KN's edit of the Paris request on the tiny Llama, with `extra` arguments; its patch and stdout.
fn kn_edit_of_paris(dir: &std::path::Path, extra: &[&str]) -> (std::path::PathBuf, String) {
    let requests = common::paris_request(dir);
    let patch = dir.join("p.safetensors");
    let model = fixture("tiny-llama");
    let mut args = vec![
        "edit",
        "--model",
        model.to_str().unwrap(),
        "--method",
        "kn",
        "--requests",
        requests.to_str().unwrap(),
        "--patch-out",
        patch.to_str().unwrap(),
    ];
    args.extend(extra);
    let (ok, out, err) = kedit(&args);
    assert!(ok, "{err}");
    (patch, out)
}

/// A patch written by `kedit edit --patch-out` is what `score --patch` applies: the edited
/// model's rewrite margin p(new) − p(true), recomputed from two `score --patch` calls, equals the
/// report's `em` (to the printed NLL's 4 decimals), and differs from the unpatched model's.
#[test]
fn score_with_the_patch_reproduces_the_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("r.json.out");
    let (patch, _) = kn_edit_of_paris(tmp.path(), &["--report", report.to_str().unwrap()]);
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let em = r["edits"][0]["em"].as_f64().unwrap();
    let p = |target: &str, patched: bool| -> f64 {
        let patch = patched.then_some(patch.as_path());
        probability(model, patch, "Paris is the capital of", target)
    };
    let patched = p(" Italy", true) - p(" France", true);
    assert!(
        (patched - em).abs() < 1e-6 * (1.0 + em.abs()) + 1e-6,
        "{patched} vs {em}"
    );
    let unpatched = p(" Italy", false) - p(" France", false);
    assert!(
        (unpatched - em).abs() > 1e-5,
        "the patch changed nothing: {unpatched} vs {em}"
    );
}

/// `kedit perplexity` reads the patched model: an edit's patch moves the held-out perplexity
/// (slightly), the JSON line's perplexity is exp(nll_sum / predicted), and the same command twice
/// prints the same line.
#[test]
fn perplexity_with_the_patch_is_the_edited_models() {
    let tmp = tempfile::tempdir().unwrap();
    let (patch, _) = kn_edit_of_paris(tmp.path(), &[]);
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "Paris is the capital and largest city of France. The Seine flows through it. ".repeat(8),
    )
    .unwrap();
    let run = |patched: bool| -> (serde_json::Value, String) {
        let mut args = vec![
            "perplexity",
            "--model",
            model,
            "--corpus",
            corpus.to_str().unwrap(),
            "--tokens",
            "200",
            "--window",
            "40",
        ];
        if patched {
            args.extend(["--patch", patch.to_str().unwrap()]);
        }
        let (ok, out, err) = kedit(&args);
        assert!(ok, "{err}");
        (serde_json::from_str(out.trim()).unwrap(), out)
    };
    let (before, line) = run(false);
    let (after, _) = run(true);
    assert_eq!(run(false).1, line, "the same command twice");
    let ppl = |v: &serde_json::Value| v["perplexity"].as_f64().unwrap();
    assert_eq!(before["tokens"], 200);
    assert_eq!(
        before["predicted"], 195,
        "5 windows of 40, each predicting 39"
    );
    let nll = before["nll_sum"].as_f64().unwrap();
    assert!((ppl(&before) - (nll / 195.0).exp()).abs() < 1e-9 * ppl(&before));
    assert!(
        (ppl(&before) - ppl(&after)).abs() > 1e-9 * ppl(&before),
        "the patch changed nothing: {} and {}",
        ppl(&before),
        ppl(&after)
    );
    assert_eq!(after["patches"][0], patch.to_str().unwrap());
}

/// `kedit edit --sequential --perplexity-tokens N` reports what `kedit perplexity --tokens N`
/// prints for the unedited model and for the model with the run's patch.
#[test]
fn a_sequential_run_reports_the_perplexity_that_kedit_perplexity_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("r.json");
    let (patch, out) = kn_edit_of_paris(
        tmp.path(),
        &[
            "--sequential",
            "--perplexity-tokens",
            "300",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    assert!(out.contains("perplexity: pre-edit"), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let standalone = |patched: bool| -> f64 {
        let mut args = vec!["perplexity", "--model", model, "--tokens", "300"];
        if patched {
            args.extend(["--patch", patch.to_str().unwrap()]);
        }
        let (ok, out, err) = kedit(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let pre = r["perplexity"]["pre"]["perplexity"].as_f64().unwrap();
    let last = r["perplexity"]["final"]["perplexity"].as_f64().unwrap();
    assert_eq!(pre, standalone(false));
    assert_eq!(last, standalone(true));
    assert_ne!(pre, last, "the edit moved nothing");
}

/// The numbers do not depend on the machine's core count: on the real model, whose products are
/// large enough to be split across threads, the statistics file and the ROME patch are the same
/// bytes, and the greedy continuation the same text, with one thread and with three (a
/// product's threads split its output, never its sums).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let model = kedit_models::fetch::smollm2().expect("fetch the default model");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let requests = common::paris_request(dir.path());
    // The bundled ROME hparams with statistics from 2048 tokens (each run computes its own;
    // C is 1536 × 1536) and 4 v* steps: the same code paths, in CI's time.
    let bundled = include_str!("../../../locate-edit/hparams/rome-smollm2.yaml");
    assert!(bundled.contains("mom2_n_samples: 100000") && bundled.contains("v_num_grad_steps: 25"));
    let h = dir.path().join("h.yaml");
    std::fs::write(
        &h,
        bundled
            .replace("mom2_n_samples: 100000", "mom2_n_samples: 2048")
            .replace("v_num_grad_steps: 25", "v_num_grad_steps: 4"),
    )
    .unwrap();
    let run = |threads: &str| -> (String, Vec<u8>, Vec<u8>) {
        let home = dir.path().join(format!("home-{threads}"));
        let env = [
            ("RAYON_NUM_THREADS", threads),
            ("MATMUL_NUM_THREADS", threads),
            ("OPENBLAS_NUM_THREADS", threads),
        ];
        let kedit = |args: &[&str]| {
            let (ok, out, err) = common::kedit_with_env(args, &home, &env);
            assert!(ok, "{args:?} with {threads} threads: {err}");
            out
        };
        let text = kedit(&[
            "generate",
            "--model",
            m,
            "-n",
            "12",
            "The Eiffel Tower is in",
        ]);
        let patch = dir.path().join(format!("patch-{threads}.safetensors"));
        kedit(&[
            "edit",
            "--model",
            m,
            "--requests",
            requests.to_str().unwrap(),
            "--hparams",
            h.to_str().unwrap(),
            "--patch-out",
            patch.to_str().unwrap(),
        ]);
        let stats = std::fs::read_dir(home.join("stats"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .expect("the edit computed its statistics");
        (
            text,
            std::fs::read(stats).unwrap(),
            std::fs::read(patch).unwrap(),
        )
    };
    let (one, three) = (run("1"), run("3"));
    assert_eq!(one.0, three.0, "greedy continuation");
    assert!(one.1 == three.1, "statistics file");
    assert!(one.2 == three.2, "ROME patch");
}

/// `kedit export` writes the patched model as a new checkpoint folder: the folder scores and
/// continues text as the model with the patch applied in memory, records what it was made from,
/// and a folder that is not empty, or one in a missing folder, is refused before any work.
#[test]
fn export_writes_the_patched_model_as_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let requests = common::paris_request(tmp.path());
    let patch = tmp.path().join("p.safetensors");
    let hparams = tmp.path().join("h.yaml");
    std::fs::write(&hparams, HPARAMS).unwrap();
    let model = fixture("tiny-gpt2");
    let model = model.to_str().unwrap();
    let (ok, _, err) = kedit(&[
        "edit",
        "--model",
        model,
        "--requests",
        requests.to_str().unwrap(),
        "--hparams",
        hparams.to_str().unwrap(),
        "--patch-out",
        patch.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let out = tmp.path().join("edited");
    let export = |out: &std::path::Path| {
        kedit(&[
            "export",
            "--model",
            model,
            "--patch",
            patch.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = export(&out);
    assert!(ok, "{err}");
    let run = |m: &str, patched: bool, args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--model", m]);
        if patched {
            a.extend(["--patch", patch.to_str().unwrap()]);
        }
        let (ok, out, err) = kedit(&a);
        assert!(ok, "{err}");
        out
    };
    let score = [
        "score",
        "--prompt",
        "Paris is the capital of",
        "--target",
        " Italy",
    ];
    let generate = ["generate", "-n", "8", "Paris is the capital of"];
    let exported = out.to_str().unwrap();
    for args in [&score[..], &generate[..]] {
        assert_eq!(
            run(exported, false, args),
            run(model, true, args),
            "{args:?}"
        );
    }
    assert_ne!(run(exported, false, &score), run(model, false, &score));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("kedit-export.json")).unwrap()).unwrap();
    assert_eq!(record["model"], model);
    assert_eq!(record["patches"][0]["method"], "rome");
    assert_eq!(record["patches"][0]["requests"][0]["subject"], "Paris");
    assert_eq!(record["patches"][0]["sha256"].as_str().unwrap().len(), 64);

    let (ok, _, err) = export(&out);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    assert!(err.contains("--out") && err.contains("not empty"), "{err}");
    let (ok, _, err) = export(&tmp.path().join("missing/edited"));
    assert!(!ok && err.contains("does not exist"), "{err}");
}

/// `kedit edit --sequential` keeps each edit for the next: every case is scored again after the
/// last edit (`final`), and the patch it writes holds every edit in order, so that applied to the
/// unedited model it gives the final scores (two `score --patch` calls recompute a case's margin
/// p(new) − p(true), the report's `final.em`), not those right after the case's own edit.
#[test]
fn sequential_edits_keep_each_edit_and_write_them_all() {
    let tmp = tempfile::tempdir().unwrap();
    let requests = four_requests(tmp.path());
    let hparams = tmp.path().join("h.yaml");
    std::fs::write(&hparams, HPARAMS).unwrap();
    let (patch, report) = (
        tmp.path().join("p.safetensors"),
        tmp.path().join("report.json"),
    );
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let (ok, out, err) = kedit(&[
        "edit",
        "--model",
        model,
        "--requests",
        requests.to_str().unwrap(),
        "--hparams",
        hparams.to_str().unwrap(),
        "--sequential",
        "--patch-out",
        patch.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("final"), "{out}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert!(r["final_summary"]["es"].is_number(), "{r}");
    // EasyEdit's token accuracies beside ES/PS/NS, each a share of tokens; the unedited model has
    // no locality of its own, and these requests have no paraphrase or neighbourhood prompt.
    assert!(out.contains("(EasyEdit's token accuracy)"), "{out}");
    for phase in ["pre", "post", "final"] {
        let t = &r["token_acc"][phase];
        let rewrite = t["rewrite_acc"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&rewrite), "{phase}: {t}");
        assert!(
            t["rephrase_acc"].is_null() && t["locality"].is_null(),
            "{t}"
        );
    }
    let per_case: Vec<f64> = r["edits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["final"]["token_acc"]["rewrite_acc"].as_f64().unwrap())
        .collect();
    let mean = per_case.iter().sum::<f64>() / per_case.len() as f64;
    assert!((r["token_acc"]["final"]["rewrite_acc"].as_f64().unwrap() - mean).abs() < 1e-12);
    let first = &r["edits"][0];
    let (right_after, last) = (
        first["em"].as_f64().unwrap(),
        first["final"]["em"].as_f64().unwrap(),
    );
    assert!(
        (right_after - last).abs() > 1e-5,
        "the second Paris edit moved the first: {right_after} vs {last}"
    );
    let saved = kedit_editing::Patch::load(&patch).unwrap();
    assert_eq!(saved.entries.len(), 4, "one entry per edit");
    let reqs: serde_json::Value = serde_json::from_str(&saved.metadata["requests"]).unwrap();
    assert_eq!(reqs.as_array().unwrap().len(), 4);
    let p = |target: &str| probability(model, Some(&patch), "Paris is the capital of", target);
    let margin = p(" Italy") - p(" France");
    assert!(
        (margin - last).abs() < 1e-6 * (1.0 + last.abs()) + 1e-6,
        "the saved patch gives the final model: {margin} vs final {last} (right after: {right_after})"
    );
    let (ok, _, err) = kedit(&[
        "edit",
        "--model",
        model,
        "--requests",
        requests.to_str().unwrap(),
        "--sequential",
        "--batch",
    ]);
    assert!(!ok && err.contains("--batch"), "{err}");
}

/// A `kedit edit --report` run killed (SIGKILL) after its first case resumes when the same
/// command runs again: the done case is not edited again, and the report and the patch equal an
/// uninterrupted run's, one case at a time and `--sequential` (whose saved patches are applied
/// on resume, and, for AlphaEdit, replayed into the editor). A resume with other
/// hyperparameters is refused, naming the one that differs.
#[test]
fn a_killed_edit_run_resumes_to_the_same_report() {
    let tmp = tempfile::tempdir().unwrap();
    let requests = four_requests(tmp.path());
    // Long enough per case (~0.3 s) for the kill to land between the first case and the last.
    let slow = HPARAMS
        .replace("v_num_grad_steps: 5", "v_num_grad_steps: 250")
        .replace("v_lr: 0.5", "v_lr: 0.01");
    // AlphaEdit sequentially: a resumed run must replay the saved edits into the editor (their
    // keys are kept for the later edits), or its later patches differ.
    let slow_alphaedit = MEMIT_HPARAMS
        .replace("v_num_grad_steps: 4", "v_num_grad_steps: 250")
        .replace("v_lr: 0.5", "v_lr: 0.01");
    let model = fixture("tiny-llama");
    for (m, (mode, method, slow)) in [
        (None, "rome", &slow),
        (Some("--sequential"), "rome", &slow),
        (Some("--sequential"), "alphaedit", &slow_alphaedit),
    ]
    .into_iter()
    .enumerate()
    {
        let hparams = tmp.path().join(format!("h-{m}.yaml"));
        std::fs::write(&hparams, slow).unwrap();
        let run = |name: &str, h: &std::path::Path| {
            let name = format!("{name}-{m}");
            let mut args: Vec<String> = [
                "edit",
                "--model",
                model.to_str().unwrap(),
                "--requests",
                requests.to_str().unwrap(),
                "--hparams",
                h.to_str().unwrap(),
                "--method",
                method,
            ]
            .map(String::from)
            .to_vec();
            let report = tmp.path().join(format!("{name}.json"));
            let patch = tmp.path().join(format!("{name}.safetensors"));
            args.extend(["--report".into(), report.display().to_string()]);
            args.extend(["--patch-out".into(), patch.display().to_string()]);
            args.extend(mode.map(String::from));
            (args, report, patch)
        };
        let read_report = |p: &std::path::Path| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        };
        let (args, full_report, full_patch) = run("full", &hparams);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = kedit(&a);
        assert!(ok, "{err}");

        let (args, report, patch) = run("killed", &hparams);
        let progress = tmp.path().join(format!("killed-{m}.json.progress"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kedit"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = progress.join("cases.jsonl");
        while std::fs::metadata(&lines).map_or(true, |m| m.len() == 0) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{mode:?}: ended before the kill"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!report.exists(), "{mode:?}: killed before the report");
        let done = std::fs::read_to_string(&lines).unwrap().lines().count();
        assert!(
            (1..4).contains(&done),
            "{mode:?}: {done} cases done at the kill"
        );

        let other = tmp.path().join("other.yaml");
        std::fs::write(
            &other,
            slow.replace("v_weight_decay: 0.001", "v_weight_decay: 0.01"),
        )
        .unwrap();
        let (mut wrong, _, _) = run("killed", &other);
        wrong.iter_mut().for_each(|a| {
            if a.ends_with("other.yaml") {
                *a = other.display().to_string();
            }
        });
        let w: Vec<&str> = wrong.iter().map(String::as_str).collect();
        let (ok, _, err) = kedit(&w);
        assert!(
            !ok && err.contains("v_weight_decay"),
            "{mode:?} {method}: {err}"
        );

        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = common::kedit_with_env(&a, tmp.path(), &[("RUST_LOG", "info")]);
        assert!(ok, "{err}");
        assert!(
            err.contains(&format!("resuming, {done} cases already edited")),
            "{err}"
        );
        assert_eq!(
            read_report(&report),
            read_report(&full_report),
            "{mode:?} {method}: report"
        );
        assert!(
            std::fs::read(&patch).unwrap() == std::fs::read(&full_patch).unwrap(),
            "{mode:?} {method}: patch"
        );
        assert!(
            !progress.exists(),
            "{mode:?}: the progress folder is removed"
        );
    }
}
