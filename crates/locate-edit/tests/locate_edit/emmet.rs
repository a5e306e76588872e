//! EMMET on the tiny random Llama (C = I, as MEMIT's tests): the batch edit takes and
//! reproduces; each request's key gets exactly its own residual whatever else the batch holds
//! (the equality constraint MEMIT does not have); EasyEdit's EMMET file loads; a wrong EMMET
//! setting is one line naming the field. EMMET-Merge: EMMET on distinct subjects; on one
//! subject's facts, whose keys coincide, one target where EMMET writes a compromise.

use crate::common::{
    assert_batch_edit_takes_and_reproduces, assert_p_new_rose, nll_new, requests,
    same_subject_requests, tiny_on,
};
use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor, Patch};
use kedit_locate_edit::stats::SecondMoment;
use kedit_locate_edit::{emmet, emmet_merge, Memit, MemitHparams};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};

/// One layer (EMMET's configs edit one; z at layer 0 is read by layer 1's attention), C = I and
/// a small λ: the random model's keys are small (norm² ≪ 1).
fn hparams(mu: f64) -> MemitHparams {
    let mut h = MemitHparams::smollm2_emmet();
    h.layers = vec![0];
    h.context_template_length_params = vec![[4, 3]];
    h.mom2_update_weight = 1e-4;
    h.emmet_lambda = Some(mu);
    h
}

fn editor<B: Backend>(lm: &LanguageModel<B>, mu: f64) -> Memit {
    with(emmet, lm, mu)
}

fn with<B: Backend>(
    make: fn(MemitHparams) -> anyhow::Result<Memit>,
    lm: &LanguageModel<B>,
    mu: f64,
) -> Memit {
    let h = hparams(mu);
    let d = lm.model.config.intermediate_size;
    let m = h
        .layers
        .iter()
        .map(|&l| SecondMoment::identity(l, d))
        .collect();
    make(h).unwrap().with_second_moments(m)
}

// NLL movements of ≥ 0.1 nats and bit-equality on one backend: they hold on every backend.
test_device!(emmet_batch_edit_takes_and_reproduces, batch);
fn batch<B: Backend>(device: &B::Device, _dev: TestDevice) {
    assert_batch_edit_takes_and_reproduces(device, |lm: &LanguageModel<B>| editor(lm, 0.0));
}

/// `ΔWᵀ k`: what the patch adds to the edited MLP's output for key `k`.
fn written(patch: &Patch, k: &[f32]) -> Vec<f64> {
    let e = &patch.entries[0];
    let d_out = e.shape[1];
    (0..d_out)
        .map(|o| {
            k.iter()
                .enumerate()
                .map(|(i, &x)| x as f64 * e.delta[i * d_out + o] as f64)
                .sum()
        })
        .collect()
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Undamped, a key gets its own residual in a batch exactly as when edited alone: the batch's
/// other requests change the update elsewhere, not at this key. Damped (μ > 0), the batch's
/// Gram matrix couples them and shrinks what each key gets.
#[test]
fn each_key_gets_its_own_residual_whatever_the_batch() {
    let reqs = requests();
    let lm0 = tiny_on::<Cpu>(&Default::default());
    let mut keyer = editor(&lm0, 0.0);
    let keys: Vec<Vec<f32>> = reqs
        .iter()
        .map(|r| keyer.layer_keys(&lm0, r).unwrap().remove(0).1)
        .collect();
    let edit = |reqs: &[EditRequest], mu: f64| {
        let mut lm = tiny_on::<Cpu>(&Default::default());
        Editor::<Cpu>::apply(&mut editor(&lm, mu), &mut lm, reqs).unwrap()
    };
    let together = edit(&reqs, 0.0);
    for (i, req) in reqs.iter().enumerate() {
        let alone = edit(std::slice::from_ref(req), 0.0);
        let (t, a) = (written(&together, &keys[i]), written(&alone, &keys[i]));
        assert!(a.iter().any(|x| *x != 0.0));
        // z of a batch equals z alone to ~1e-5 (MEMIT's `batched_targets_equal_one_at_a_time`).
        let e = rel(&t, &a);
        assert!(e < 1e-3, "request {i}: written in the batch off by {e:e}");
        // The other request's key gets a different output: the patches are not the same.
        assert!(together != alone);
    }
    // Damping: D(D + μI)⁻¹ has eigenvalues in [0, 1), so the keys' outputs shrink together
    // (μ near the diagonal of D = Kᵀ A⁻¹ K, ~1e6 here: the keys have norm² ~100 and A = 1e-4 I).
    let total = |p: &Patch| {
        keys.iter()
            .flat_map(|k| written(p, k))
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
    };
    let (undamped, damped) = (total(&together), total(&edit(&reqs, 1e6)));
    assert!(
        damped < 0.9 * undamped,
        "damping must shrink the write: {damped} vs {undamped}"
    );
}

// With one request per subject nothing is merged: EMMET's patch, bit for bit.
test_device!(emmet_merge_of_distinct_subjects_is_emmet, merge_distinct);
fn merge_distinct<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let run = |make: fn(MemitHparams) -> anyhow::Result<Memit>| {
        let mut lm = tiny_on::<B>(device);
        Editor::<B>::apply(&mut with(make, &lm, 0.01), &mut lm, &requests())
            .unwrap()
            .entries
    };
    assert_eq!(run(emmet_merge), run(emmet));
}

// One subject's two facts and another subject's in one batch all take (NLL movements of ≥ 0.1
// nats: every backend), with another patch than EMMET's.
test_device!(emmet_merge_batch_of_one_subject_takes, merge_takes);
fn merge_takes<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let reqs = same_subject_requests();
    let mut lm = tiny_on::<B>(device);
    let before = nll_new(&lm, &reqs);
    let patch = Editor::<B>::apply(&mut with(emmet_merge, &lm, 0.0), &mut lm, &reqs).unwrap();
    let after = nll_new(&lm, &reqs);
    assert_p_new_rose(&before, &after);
    let mut lm = tiny_on::<B>(device);
    let plain = Editor::<B>::apply(&mut editor(&lm, 0.0), &mut lm, &reqs).unwrap();
    assert_ne!(patch.entries, plain.entries);
}

/// The failure EMMET-Merge is for. Two facts whose prompts begin with their subject have one
/// key; EMMET asks it for both residuals and, undamped, writes their mean, which is neither
/// fact's (each fact's own is what EMMET writes for it alone). EMMET-Merge asks the key for one
/// output, optimised for both facts at once, and serves them better than the mean does.
#[test]
fn emmet_writes_the_mean_at_a_shared_key_and_emmet_merge_one_target() {
    let reqs = same_subject_requests();
    let lm0 = tiny_on::<Cpu>(&Default::default());
    let mut keyer = editor(&lm0, 0.0);
    let mut key = |r: &EditRequest| keyer.layer_keys(&lm0, r).unwrap().remove(0).1;
    let k = key(&reqs[0]);
    let k1 = key(&reqs[1]);
    let diff: f64 = k.iter().zip(&k1).map(|(a, b)| (a - b).abs() as f64).sum();
    assert!(diff < 1e-6 * k.len() as f64, "one key: differs by {diff}");
    let edit = |make, reqs: &[EditRequest]| {
        let mut lm = tiny_on::<Cpu>(&Default::default());
        let p = Editor::<Cpu>::apply(&mut with(make, &lm, 0.0), &mut lm, reqs).unwrap();
        (p, nll_new(&lm, reqs))
    };
    let alone: Vec<Vec<f64>> = (0..2)
        .map(|i| written(&edit(emmet, &reqs[i..i + 1]).0, &k))
        .collect();
    let mean: Vec<f64> = alone[0]
        .iter()
        .zip(&alone[1])
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let (together, nll_emmet) = edit(emmet, &reqs);
    let w = written(&together, &k);
    assert!(
        rel(&w, &mean) < 1e-2,
        "EMMET writes the mean: {:e}",
        rel(&w, &mean)
    );
    for (i, a) in alone.iter().enumerate() {
        assert!(rel(&w, a) > 0.05, "neither fact's own output: request {i}");
    }
    let (_, nll_merge) = edit(emmet_merge, &reqs);
    // The subject's two facts.
    let (e, m) = (
        nll_emmet[..2].iter().sum::<f32>(),
        nll_merge[..2].iter().sum::<f32>(),
    );
    assert!(
        m < e - 0.1,
        "one target serves the two facts better than the mean of theirs: NLL(new) {nll_merge:?} vs EMMET's {nll_emmet:?}"
    );
}

/// EasyEdit's EMMET file loads unchanged (hparams/EMMET/llama-7b.yaml at 14cea82), and a wrong
/// EMMET setting is one line naming the field.
#[test]
fn easyedit_emmet_yaml_loads_and_bad_settings_are_one_line_errors() {
    use kedit_locate_edit::hparams::Hparams;
    let yaml = "layers: [5]\nclamp_norm_factor: 4\nlayer_selection: \"all\"\nfact_token: \"subject_last\"\n\
v_num_grad_steps: 25\nv_lr: 5e-1\nv_loss_layer: 31\nv_weight_decay: 1e-3\nkl_factor: 0.0625\nmom2_adjustment: true\n\
mom2_update_weight: 100000\nrewrite_module_tmp: \"model.layers.{}.mlp.down_proj\"\nlayer_module_tmp: \"model.layers.{}\"\n\
mlp_module_tmp: \"model.layers.{}.mlp\"\nattn_module_tmp: \"model.layers.{}.self_attn\"\nln_f_module: \"model.norm\"\n\
lm_head_module: \"lm_head\"\nmom2_dataset: \"wikipedia\"\nmom2_n_samples: 100000\nmom2_dtype: \"float32\"\n\
update_norm_lambda: 0\nemmet_lambda: 0.1\nmodel_parallel: false\n\nstats_dir: \"./data/stats\"\ndevice: 4\n\
model_name: \"./hugging_cache/llama-2-7b\"\nalg_name: \"EMMET\"\n";
    let h = MemitHparams::from_yaml_str(yaml, "llama-7b.yaml").unwrap();
    assert_eq!(
        (h.emmet_lambda, h.update_norm_lambda),
        (Some(0.1), Some(0.0))
    );
    assert!(emmet(h.clone()).is_ok());
    for (change, field) in [
        ((None, None), "emmet_lambda"),
        ((Some(-1.0), None), "emmet_lambda"),
        ((Some(0.1), Some(f64::NAN)), "update_norm_lambda"),
    ] {
        let mut bad = h.clone();
        (bad.emmet_lambda, bad.update_norm_lambda) = change;
        let e = format!("{:#}", emmet(bad.clone()).err().expect("refused"));
        assert!(
            e.starts_with(&format!("field `{field}`")) && !e.contains('\n'),
            "{e}"
        );
        // The same check when the editor is built without `emmet` (as a flavour).
        let mut lm = tiny_on::<Cpu>(&Default::default());
        let d = lm.model.config.intermediate_size;
        bad.layers = vec![0];
        let mut ed = Memit::with_flavor(bad, &kedit_locate_edit::emmet::EMMET)
            .with_second_moments(vec![SecondMoment::identity(0, d)]);
        let e = Editor::<Cpu>::apply(&mut ed, &mut lm, &requests()).unwrap_err();
        assert!(format!("{e:#}").contains(field), "{e:#}");
    }
    // What a results file records for MEMIT has no EMMET keys, as before they existed (so its
    // recorded runs still resume).
    let json = serde_json::to_value(MemitHparams::smollm2()).unwrap();
    assert!(json.get("emmet_lambda").is_none() && json.get("update_norm_lambda").is_none());
}
