//! MEMIT, PMET and MEMIT-Merge: the f64 solve against NumPy and on rank-deficient keys; the batch
//! edit on the tiny random Llama (targets reached, one entry per layer, reproducible patch,
//! deterministic); MEMIT-Merge's one offset per subject.

use std::path::PathBuf;

use crate::common::{assert_saved_patch_is_the_edit, requests, same_subject_requests, tiny_on};
use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor};
use kedit_locate_edit::kv::{at_lookup, request_keys, template_prompts, Average, FactToken};
use kedit_locate_edit::solve::solve_keys;
use kedit_locate_edit::stats::SecondMoment;
use kedit_locate_edit::templates::context_templates;
use kedit_locate_edit::{memit_merge, pmet, Memit, MemitHparams};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel, Site};

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
    got.iter()
        .zip(want)
        .fold(0f64, |a, (g, w)| a.max((g - w).abs()))
        / scale
}

#[test]
fn solve_matches_numpy() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/memit-solve.json");
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vecs =
        |v: &serde_json::Value| -> Vec<Vec<f64>> { serde_json::from_value(v.clone()).unwrap() };
    let d = f["d"].as_u64().unwrap() as usize;
    let c: Vec<f64> = serde_json::from_value(f["c"].clone()).unwrap();
    let x = solve_keys(&c, d, f["lambda"].as_f64().unwrap(), &vecs(&f["keys"])).unwrap();
    let want = vecs(&f["x"]);
    assert_eq!(x.len(), want.len());
    let e = rel_err(&x.concat(), &want.concat());
    assert!(e < 1e-9, "relative error against NumPy {e:e}");
}

/// `K` = the same key 40 times (rank 1, n > d): `K Kᵀ` is singular, `λC` carries the solve, and
/// Sherman–Morrison gives every column exactly: `C⁻¹k / (λ + n kᵀC⁻¹k)`.
#[test]
fn solve_is_stable_when_keys_are_rank_deficient() {
    let d = 12;
    let n = 40;
    let lambda = 3.0;
    // C = tridiagonal SPD (2 on the diagonal, -0.5 beside), its inverse by its own solve.
    let mut c = vec![0f64; d * d];
    for i in 0..d {
        c[i * d + i] = 2.0;
        if i + 1 < d {
            c[i * d + i + 1] = -0.5;
            c[(i + 1) * d + i] = -0.5;
        }
    }
    let k: Vec<f64> = (0..d).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3).collect();
    let cinv_k = &gauss(&c, &k);
    // Check C · C⁻¹k = k (the reference is itself right).
    for i in 0..d {
        let ck: f64 = (0..d).map(|j| c[i * d + j] * cinv_k[j]).sum();
        assert!((ck - k[i]).abs() < 1e-12);
    }
    assert!(
        solve_keys(&c, d, lambda, &[vec![0.0; d]]).unwrap()[0]
            .iter()
            .all(|v| *v == 0.0),
        "a zero key maps to 0"
    );
    let ktck: f64 = k.iter().zip(cinv_k).map(|(a, b)| a * b).sum();
    let want: Vec<f64> = cinv_k
        .iter()
        .map(|v| v / (lambda + n as f64 * ktck))
        .collect();
    let x = solve_keys(&c, d, lambda, &vec![k.clone(); n]).unwrap();
    for col in &x {
        assert!(col.iter().all(|v| v.is_finite()));
        let e = rel_err(col, &want);
        assert!(e < 1e-12, "rank-deficient column off by {e:e}");
    }
}

/// `A⁻¹b` by Gaussian elimination with partial pivoting: an independent reference.
fn gauss(a: &[f64], b: &[f64]) -> Vec<f64> {
    let d = b.len();
    let mut m: Vec<Vec<f64>> = (0..d)
        .map(|i| {
            let mut row = a[i * d..(i + 1) * d].to_vec();
            row.push(b[i]);
            row
        })
        .collect();
    for col in 0..d {
        let p = (col..d)
            .max_by(|&x, &y| m[x][col].abs().total_cmp(&m[y][col].abs()))
            .unwrap();
        m.swap(col, p);
        let pivot = m[col].clone();
        for row in m.iter_mut().skip(col + 1) {
            let f = row[col] / pivot[col];
            row.iter_mut()
                .zip(&pivot)
                .skip(col)
                .for_each(|(a, b)| *a -= f * b);
        }
    }
    let mut x = vec![0f64; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|j| m[i][j] * x[j]).sum();
        x[i] = (m[i][d] - s) / m[i][i];
    }
    x
}

fn tiny() -> LanguageModel<Cpu> {
    tiny_on(&Default::default())
}

fn hparams() -> MemitHparams {
    let mut h = MemitHparams::smollm2();
    h.layers = vec![0, 1];
    h.context_template_length_params = vec![[4, 3]];
    // The random model's keys are small (norm² ≪ 1): with C = I a small λ keeps the update exact.
    h.mom2_update_weight = 1e-4;
    h
}

/// C = I: MEMIT's update becomes plain ridge regression, which is what the tiny test checks
/// (statistics are tested on their own in `stats.rs`).
fn identity_moments<B: Backend>(lm: &LanguageModel<B>, layers: &[usize]) -> Vec<SecondMoment> {
    let d = lm.model.config.intermediate_size;
    layers
        .iter()
        .map(|&layer| SecondMoment::identity(layer, d))
        .collect()
}

/// (NLL of target_new, NLL of target_true) after the full prompt of each request. (The random
/// model's outputs move little and not always away from the true target, so the tests ask for
/// the new target's NLL to fall.)
fn margins<B: Backend>(lm: &LanguageModel<B>, reqs: &[EditRequest]) -> Vec<[f32; 2]> {
    reqs.iter()
        .map(|r| {
            let p = r.prompt.replace("{}", &r.subject);
            let s = lm
                .score(&[
                    (&p, &format!(" {}", r.target_new)),
                    (&p, &format!(" {}", r.target_true)),
                ])
                .unwrap();
            [s[0].mean_nll(), s[1].mean_nll()]
        })
        .collect()
}

/// The tiny model has two layers, and z at the last layer of the stack cannot reach a later
/// position: the edit must take with `layers: [0]` (z read by layer 1's attention); the
/// two-layer run checks the per-layer mechanics.
fn check_batch_edit<B: Backend>(make: fn(MemitHparams) -> Memit, device: &B::Device) {
    let reqs = requests();
    let mut lm = tiny_on::<B>(device);
    let before = margins(&lm, &reqs);
    let mut h = hparams();
    h.layers = vec![0];
    let mut editor = make(h.clone()).with_second_moments(identity_moments(&lm, &h.layers));
    editor.apply(&mut lm, &reqs).unwrap();
    let after = margins(&lm, &reqs);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a[0] < b[0] - 0.1,
            "p(new) must rise for every request of the batch: NLL(new), NLL(true) {before:?} -> {after:?}"
        );
    }

    let mut lm = tiny_on::<B>(device);
    let h = hparams();
    let mut editor = make(h.clone()).with_second_moments(identity_moments(&lm, &h.layers));
    let patch = editor.apply(&mut lm, &reqs).unwrap();
    let layers: Vec<usize> = patch.entries.iter().map(|e| e.layer).collect();
    assert_eq!(layers, h.layers, "one MLP delta per edit layer");

    // The saved patch on a fresh model gives the edited model's logits bit for bit.
    assert_saved_patch_is_the_edit(&patch, &lm, device);

    // Same inputs and seed: the same patch.
    let mut lm2 = tiny_on::<B>(device);
    let patch2 = make(h.clone())
        .with_second_moments(identity_moments(&lm2, &h.layers))
        .apply(&mut lm2, &reqs)
        .unwrap();
    assert_eq!(patch, patch2);
}

// The thresholds are NLL movements (≥ 0.1 nats) and bit-equality on one backend: they hold on
// every backend as they are.
test_device!(memit_batch_edit_takes_and_reproduces, memit_batch);
fn memit_batch<B: Backend>(device: &B::Device, _dev: TestDevice) {
    check_batch_edit::<B>(Memit::new, device);
}

test_device!(pmet_batch_edit_takes_and_reproduces, pmet_batch);
fn pmet_batch<B: Backend>(device: &B::Device, _dev: TestDevice) {
    check_batch_edit::<B>(pmet, device);
}

// With distinct subjects nothing is merged: the same patch as MEMIT's, bit for bit.
test_device!(memit_merge_of_distinct_subjects_is_memit, merge_distinct);
fn merge_distinct<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let reqs = requests();
    let h = hparams();
    let run = |make: fn(MemitHparams) -> Memit| {
        let mut lm = tiny_on::<B>(device);
        make(h.clone())
            .with_second_moments(identity_moments(&lm, &h.layers))
            .apply(&mut lm, &reqs)
            .unwrap()
            .entries
    };
    assert_eq!(run(memit_merge), run(Memit::new));
}

// One subject's two facts in one batch both take (NLL movements of ≥ 0.1 nats: every backend).
test_device!(memit_merge_batch_of_one_subject_takes, merge_takes);
fn merge_takes<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let reqs = same_subject_requests();
    let mut lm = tiny_on::<B>(device);
    let before = margins(&lm, &reqs);
    let mut h = hparams();
    h.layers = vec![0];
    let mut editor = memit_merge(h.clone()).with_second_moments(identity_moments(&lm, &h.layers));
    let patch = editor.apply(&mut lm, &reqs).unwrap();
    let after = margins(&lm, &reqs);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a[0] < b[0] - 0.1,
            "p(new) must rise for every request: NLL(new), NLL(true) {before:?} -> {after:?}"
        );
    }
    // Not MEMIT's patch: the two facts of one subject got one target offset.
    let mut lm = tiny_on::<B>(device);
    let plain = Memit::new(h.clone())
        .with_second_moments(identity_moments(&lm, &h.layers))
        .apply(&mut lm, &reqs)
        .unwrap();
    assert_ne!(patch.entries, plain.entries);
}

/// Each request's rewriting prompts (every template of a short template set, flattened).
fn z_prompts<B: Backend>(
    lm: &LanguageModel<B>,
    reqs: &[EditRequest],
) -> Vec<Vec<kedit_locate_edit::kv::Prompt>> {
    let groups = context_templates(lm, &[[4, 2]], 0).unwrap();
    reqs.iter()
        .map(|r| {
            template_prompts(lm, &groups, r, FactToken::SubjectLast)
                .unwrap()
                .into_iter()
                .flatten()
                .collect()
        })
        .collect()
}

/// A short target optimisation at layer 0 of the tiny model.
fn z_spec(sites: Vec<Site>, adaptive_nll: Option<f64>) -> kedit_locate_edit::z::ZSpec {
    kedit_locate_edit::z::ZSpec {
        layer: 0,
        sites,
        steps: 8,
        lr: 0.5,
        weight_decay: 0.5,
        clamp_norm_factor: 4.0,
        kl_factor: 0.0625,
        fact_token: FactToken::SubjectLast,
        adaptive_nll,
    }
}

fn z_jobs<'a>(
    reqs: &'a [EditRequest],
    prompts: &'a [Vec<kedit_locate_edit::kv::Prompt>],
) -> Vec<kedit_locate_edit::z::Job<'a>> {
    reqs.iter()
        .zip(prompts)
        .map(|(req, p)| kedit_locate_edit::z::Job {
            req,
            prompts: p.iter().collect(),
        })
        .collect()
}

/// The requests sharing a δ get the same δ, found against all their targets (not either one's
/// own); a request alone in its δ gets what `optimize_many` gives it.
#[test]
fn shared_offsets_serve_every_request_of_the_subject() {
    use kedit_locate_edit::z::{optimize_many, optimize_shared};
    let lm = tiny();
    let reqs = same_subject_requests();
    let prompts = z_prompts(&lm, &reqs);
    let spec = z_spec(vec![Site::Residual], None);
    let jobs = z_jobs(&reqs, &prompts);
    let merged = optimize_shared(&lm, &jobs, &[0, 0, 1], &spec).unwrap();
    let own = optimize_many(&lm, &jobs, &spec).unwrap();
    assert_eq!(merged[0].delta, merged[1].delta, "one δ for one subject");
    assert!(merged[0].delta[0].iter().any(|x| *x != 0.0), "δ moved");
    for i in 0..2 {
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let e = rel_err(&f(&merged[i].delta[0]), &f(&own[i].delta[0]));
        assert!(
            e > 1e-2,
            "request {i}: the shared δ is its own δ (off by {e:e})"
        );
        assert_eq!(merged[i].init, own[i].init);
    }
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let e = rel_err(&f(&merged[2].delta[0]), &f(&own[2].delta[0]));
    assert!(e < 1e-3, "the other subject's δ off by {e:e}");
    assert!(optimize_shared(&lm, &jobs, &[0, 2, 2], &spec)
        .unwrap_err()
        .to_string()
        .contains("skip"));
}

#[test]
fn memit_sequential_edits_keep_statistics_and_both_take() {
    let reqs = requests();
    let mut lm = tiny();
    let mut h = hparams();
    h.layers = vec![0];
    let before = margins(&lm, &reqs);
    let mut editor = Memit::new(h.clone()).with_second_moments(identity_moments(&lm, &h.layers));
    for r in &reqs {
        editor.apply(&mut lm, std::slice::from_ref(r)).unwrap();
    }
    let after = margins(&lm, &reqs);
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a[0] < b[0] - 0.1,
            "both sequential edits hold: NLL(new), NLL(true) {before:?} -> {after:?}"
        );
    }
}

#[test]
fn missing_statistics_and_bad_hparams_are_one_line_errors() {
    let mut lm = tiny();
    let e = Memit::new(hparams())
        .apply(&mut lm, &requests())
        .unwrap_err()
        .to_string();
    assert!(e.contains("second moment of layers [0, 1]"), "{e}");
    use kedit_locate_edit::hparams::Hparams;
    for (yaml, field) in [
        ("layers: [5, 4]", "layers"),
        ("layers: [4]\nmom2_update_weight: 0", "mom2_update_weight"),
        (
            "layers: [4]\nrewrite_module_tmps: [\"model.layers.{}.self_attn.o_proj\"]",
            "rewrite_module_tmps",
        ),
    ] {
        let text = format!(
            "{yaml}\nfact_token: subject_last\nv_num_grad_steps: 1\nv_lr: 0.5\nv_weight_decay: 0.5\n\
             clamp_norm_factor: 1\nkl_factor: 0.0625\n{}",
            if yaml.contains("mom2_update_weight") { "" } else { "mom2_update_weight: 15000\n" }
        );
        let e = MemitHparams::from_yaml_str(&text, "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.yaml: field `") && e.contains(field) && !e.contains('\n'),
            "{e}"
        );
    }
}

/// MEMIT's key: the bare prompt's key weighs as much as the mean of the generated templates'.
#[test]
fn keys_average_within_then_across_template_groups() {
    let lm = tiny();
    let groups = context_templates(&lm, &[[4, 3]], 0).unwrap();
    assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [1, 3]);
    let req = &requests()[0];
    let prompts = template_prompts(&lm, &groups, req, FactToken::SubjectLast).unwrap();
    let (by_group, _) = request_keys(&lm, 1, std::slice::from_ref(&prompts), Average::ByGroup);
    let (flat, _) = request_keys(&lm, 1, std::slice::from_ref(&prompts), Average::Flat);
    let each = at_lookup(
        &lm,
        1,
        Site::MlpKey,
        &prompts.iter().flatten().collect::<Vec<_>>(),
    );
    let d = each[0].len();
    for j in 0..d {
        let rest = (each[1][j] + each[2][j] + each[3][j]) / 3.0;
        let want = (each[0][j] + rest) / 2.0;
        assert!((by_group[0][j] - want).abs() <= 1e-6 * want.abs().max(1.0));
        let want_flat = each.iter().map(|k| k[j]).sum::<f32>() / 4.0;
        assert!((flat[0][j] - want_flat).abs() <= 1e-6 * want_flat.abs().max(1.0));
    }
}

/// Targets optimised together equal targets optimised one request at a time (each request keeps
/// its own δ, Adam state and stopping step; only float sums are ordered differently).
#[test]
fn batched_targets_equal_one_at_a_time() {
    use kedit_locate_edit::z::{optimize, optimize_many};
    let lm = tiny();
    let reqs = requests();
    let prompts = z_prompts(&lm, &reqs);
    for (sites, adaptive) in [
        (vec![Site::Residual], None),
        (vec![Site::AttnOut, Site::MlpOut], Some(1.0)),
    ] {
        let spec = z_spec(sites, adaptive);
        let jobs = z_jobs(&reqs, &prompts);
        let together = optimize_many(&lm, &jobs, &spec).unwrap();
        for (i, (req, p)) in reqs.iter().zip(&prompts).enumerate() {
            let alone = optimize(&lm, req, &p.iter().collect::<Vec<_>>(), &spec).unwrap();
            for s in 0..alone.delta.len() {
                let a: Vec<f64> = alone.delta[s].iter().map(|&x| x as f64).collect();
                let t: Vec<f64> = together[i].delta[s].iter().map(|&x| x as f64).collect();
                assert!(a.iter().any(|x| *x != 0.0), "δ moved");
                let e = rel_err(&t, &a);
                assert!(e < 1e-3, "request {i} site {s}: batched δ off by {e:e}");
                let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
                let e = rel_err(&f(&together[i].init[s]), &f(&alone.init[s]));
                assert!(e < 1e-5, "request {i} site {s}: init off by {e:e}");
            }
        }
    }
}

/// A unit no key ever uses (a zero row and column in C): the solve still succeeds and leaves
/// that unit's update at zero.
#[test]
fn solve_handles_a_dead_unit() {
    let d = 6;
    let mut c = vec![0f64; d * d];
    for i in 0..d - 1 {
        c[i * d + i] = 1.0 + i as f64 * 0.1;
    }
    let keys: Vec<Vec<f64>> = (0..3)
        .map(|j| {
            (0..d)
                .map(|i| {
                    if i == d - 1 {
                        0.0
                    } else {
                        (i + j) as f64 * 0.2 - 0.3
                    }
                })
                .collect()
        })
        .collect();
    let x = solve_keys(&c, d, 2.0, &keys).unwrap();
    for col in &x {
        assert!(col.iter().all(|v| v.is_finite()));
        assert!(col[d - 1].abs() < 1e-12, "dead unit moved: {}", col[d - 1]);
    }
}

/// EasyEdit's own files load unchanged (hparams/MEMIT/llama-7b.yaml and hparams/PMET/llama-7b.yaml
/// at EasyEdit 14cea82; PMET's repeats `model_parallel`).
#[test]
fn easyedit_memit_and_pmet_yaml_load() {
    use kedit_locate_edit::hparams::Hparams;
    let memit = "alg_name: \"MEMIT\"\nmodel_name: \"./hugging_cache/llama-2-7b\"\nstats_dir: \"./data/stats\"\ndevice: 1\n\
layers: [4, 5, 6, 7, 8]\nclamp_norm_factor: 4\nlayer_selection: \"all\"\nfact_token: \"subject_last\"\nv_num_grad_steps: 25\n\
v_lr: 5e-1\nv_loss_layer: 31\nv_weight_decay: 1e-3\nkl_factor: 0.0625\nmom2_adjustment: true\nmom2_update_weight: 15000\n\
rewrite_module_tmp: \"model.layers.{}.mlp.down_proj\"\nlayer_module_tmp: \"model.layers.{}\"\nmlp_module_tmp: \"model.layers.{}.mlp\"\n\
attn_module_tmp: \"model.layers.{}.self_attn\"\nln_f_module: \"model.norm\"\nlm_head_module: \"lm_head\"\nmom2_dataset: \"wikipedia\"\n\
mom2_n_samples: 100000\nmom2_dtype: \"float32\"";
    let h = MemitHparams::from_yaml_str(memit, "llama-7b.yaml").unwrap();
    assert_eq!(h.layers, [4, 5, 6, 7, 8]);
    assert_eq!(h.mom2_update_weight, 15000.0);
    let pmet = "alg_name: \"PMET\"\nmodel_name: \"./hugging_cache/llama-2-7b\"\nstats_dir: \"./data/stats\"\ndevice: 0\n\
layers: [4, 5, 6, 7, 8]\nclamp_norm_factor: 1\nlayer_selection: \"all\"\nfact_token: \"subject_last\"\nv_num_grad_steps: 20\n\
v_lr: 5e-1\nv_loss_layer: 31\nv_weight_decay: 0.5\nkl_factor: 0.0625\nmom2_adjustment: true\nmom2_update_weight: 15000\n\
rewrite_module_tmp: \"model.layers.{}.mlp.down_proj\"\nrewrite_module_tmps: [\"model.layers.{}.mlp.down_proj\"]\n\
layer_module_tmp: \"model.layers.{}\"\nmlp_module_tmp: \"model.layers.{}.mlp.down_proj\"\nattn_module_tmp: \"model.layers.{}.self_attn.o_proj\"\n\
ln_f_module: \"model.norm\"\nlm_head_module: \"lm_head\"\nmom2_dataset: \"wikipedia\"\nmom2_n_samples: 100000\nmom2_dtype: \"float32\"\n\
model_parallel: false\nnll_loss_factor: 1\nmodel_parallel: false";
    let h = MemitHparams::from_yaml_str(pmet, "pmet-llama-7b.yaml").unwrap();
    assert_eq!(h.nll_loss_factor, Some(1.0));
}

/// The key figure reads keys on the unedited model (kedit-eval's `key_efficacy`): at the first
/// edited layer that is also the key at edit time, since edits write only `down_proj` and the
/// key is its input. At a later layer, the earlier layer's edit reaches the key.
#[test]
fn first_layer_keys_are_the_same_after_the_edits() {
    let reqs = requests();
    let mut lm = tiny();
    let h = hparams();
    let mut editor = Memit::new(h.clone()).with_second_moments(identity_moments(&lm, &h.layers));
    let before = editor.layer_keys(&lm, &reqs[0]).unwrap();
    editor.apply(&mut lm, &reqs).unwrap();
    let after = editor.layer_keys(&lm, &reqs[0]).unwrap();
    assert_eq!(
        (before[0].0, after[0].0, before[1].0),
        (0, 0, 1),
        "layers 0 and 1"
    );
    assert_eq!(
        before[0].1, after[0].1,
        "the first edited layer's key, bit for bit"
    );
    assert_ne!(
        before[1].1, after[1].1,
        "layer 1's key moves with layer 0's edit"
    );
}
