//! EMMET on the tiny random Llama (C = I, as MEMIT's tests): the batch edit takes and
//! reproduces; each request's key gets exactly its own residual whatever else the batch holds
//! (the equality constraint MEMIT does not have); EasyEdit's EMMET file loads; a wrong EMMET
//! setting is one line naming the field.

use crate::common::{assert_batch_edit_takes_and_reproduces, requests, tiny_on};
use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor, Patch};
use kedit_locate_edit::stats::SecondMoment;
use kedit_locate_edit::{emmet, Memit, MemitHparams};
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
    let h = hparams(mu);
    let d = lm.model.config.intermediate_size;
    let m = h
        .layers
        .iter()
        .map(|&l| SecondMoment::identity(l, d))
        .collect();
    emmet(h).unwrap().with_second_moments(m)
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
