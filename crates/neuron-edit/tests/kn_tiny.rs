//! KN on the tiny random Llama: the batched integrated gradients equal a Riemann sum computed
//! independently (one point at a time, gradient w.r.t. an added delta rather than the scale),
//! completeness holds approximately, and the edit is reproducible.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{activation, Int, Tensor, TensorData};
use kedit_editing::hparams::Hparams;
use kedit_editing::{EditRequest, Editor};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, CausalLm, Cpu, Interventions, LanguageModel, Site, ToAutodiff};
use kedit_neuron_edit::{Kn, KnHparams};

fn tiny() -> LanguageModel<Cpu> {
    tiny_on(&Default::default())
}

fn tiny_on<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    LanguageModel::load_hf(&dir, device).unwrap()
}

fn kn(steps: usize, batch: usize) -> Kn {
    let mut h = KnHparams::smollm2();
    h.steps = steps;
    h.batch_size = batch;
    Kn::new(h)
}

/// p(token) at the last position with the gate activation of `layer` set to `alpha · a` there,
/// and d p / d activation at that point (through an added zero delta).
fn point<B: Backend>(
    lm: &LanguageModel<B>,
    ids: &[u32],
    token: u32,
    layer: usize,
    alpha: f32,
) -> (f64, Vec<f64>) {
    let m = lm.model.map(&ToAutodiff);
    let dev = lm.model.device();
    let d_ff = lm.model.config.intermediate_size;
    let last = ids.len() - 1;
    let scale =
        Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(vec![alpha; d_ff], [d_ff]), &dev);
    let delta = Tensor::<Autodiff<B>, 1>::zeros([d_ff], &dev).require_grad();
    let iv = Interventions::none()
        .scale(layer, Site::MlpGate, vec![(0, last)], scale)
        .add(layer, Site::MlpGate, vec![(0, last)], delta.clone());
    let fwd = m.forward(m.batch(&[ids.to_vec()]), &iv);
    let p = activation::softmax(m.logits_at(fwd.hidden, &[(0, last)]), 1)
        .gather(
            1,
            Tensor::<Autodiff<B>, 2, Int>::from_data(
                TensorData::new(vec![token as i64], [1, 1]),
                &dev,
            ),
        )
        .sum();
    let pv = p
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()[0] as f64;
    let g = delta
        .grad(&p.backward())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();
    (pv, g.iter().map(|x| *x as f64).collect())
}

test_device!(
    integrated_gradients_match_an_independent_riemann_sum,
    integrated_gradients
);
fn integrated_gradients<B: Backend>(device: &B::Device, dev: TestDevice) {
    // Relative to the largest attribution. CPU 1e-4: batched vs one point at a time, f32 sums in
    // another order. CUDA 5e-3: the same on TF32 tensor cores (~5e-4 relative per product),
    // through a backward pass.
    let tol = dev.pick(1e-4, 5e-3);
    // The finer grid may not be worse, up to the f32 noise of p(a) − p(0) itself.
    let slack = dev.pick(1e-9, 1e-5);
    let lm = tiny_on::<B>(device);
    let ids = lm.encode("The capital of France is").unwrap();
    let token = lm.encode(" Paris").unwrap()[0];
    let layer = 1;
    let last = ids.len() - 1;
    let cap = lm.model.forward(
        lm.model.batch(std::slice::from_ref(&ids)),
        &Interventions::none().capture(layer, Site::MlpGate),
    );
    let a: Vec<f64> = cap.captured[&(layer, Site::MlpGate)]
        .clone()
        .narrow(1, last, 1)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|x| *x as f64)
        .collect();
    let steps = 10;
    let mut riemann = vec![0f64; a.len()];
    for k in 0..steps {
        let (_, g) = point(&lm, &ids, token, layer, k as f32 / (steps - 1) as f32);
        for j in 0..a.len() {
            riemann[j] += a[j] * g[j] / steps as f64;
        }
    }
    let ig = kn(steps, 5).attribution(&lm, &ids, token, layer).unwrap();
    let scale = riemann.iter().fold(0f64, |m, x| m.max(x.abs()));
    for j in 0..a.len() {
        let err = (ig[j] as f64 - riemann[j]).abs();
        assert!(
            err <= tol * scale,
            "neuron {j}: {} vs {} (scale {scale})",
            ig[j],
            riemann[j]
        );
    }

    // Completeness: Σ attributions ≈ p(a) − p(0). The Riemann error shrinks with the number of
    // points: with 200 the gap must be well under 2 % of p(a) − p(0) and below the 10-point gap.
    let (p1, _) = point(&lm, &ids, token, layer, 1.0);
    let (p0, _) = point(&lm, &ids, token, layer, 0.0);
    let gap = |s: &[f32]| (s.iter().map(|x| *x as f64).sum::<f64>() - (p1 - p0)).abs();
    let fine = kn(200, 50).attribution(&lm, &ids, token, layer).unwrap();
    assert!(
        gap(&fine) <= 0.02 * (p1 - p0).abs() + 1e-7,
        "Σ IG {} vs Δp {}",
        fine.iter().sum::<f32>(),
        p1 - p0
    );
    assert!(
        gap(&fine) <= gap(&ig) + slack,
        "finer grid should not be worse: {} vs {}",
        gap(&fine),
        gap(&ig)
    );
}

#[test]
fn kn_edit_is_reproducible_and_touches_only_chosen_rows() {
    let req = EditRequest {
        prompt: "The capital of {} is".into(),
        subject: "France".into(),
        relation: "P36".into(),
        target_new: "Rome".into(),
        target_true: "Paris".into(),
    };
    let mut lm = tiny();
    let mut k = kn(4, 4);
    let scores = k.scores(&lm, &req).unwrap();
    let chosen = k.neurons(&scores);
    assert!(!chosen.is_empty());
    let patch = k.apply(&mut lm, std::slice::from_ref(&req)).unwrap();
    let d = lm.model.config.hidden_size;
    for e in &patch.entries {
        for (j, row) in e.delta.chunks(d).enumerate() {
            let touched = row.iter().any(|x| *x != 0.0);
            assert_eq!(
                touched,
                chosen.contains(&(e.layer, j)),
                "layer {} neuron {j}",
                e.layer
            );
        }
    }
    let mut lm2 = tiny();
    let again = kn(4, 4).apply(&mut lm2, &[req]).unwrap();
    assert!(again == patch);
}

/// Every edited row is EasyEdit's: twice (target − greedy) embedding for a one-token target, each
/// target token's embedding minus each greedy token's once for a longer one (methods.md §3.6).
/// The expected rows come from the embedding matrix and greedy decoding here, not from `Kn`.
#[test]
fn kn_edit_row_follows_easyedit_rule_for_one_and_many_target_tokens() {
    // 2: methods.md's rule (the default); 1: EasyEdit's code on GPT/LLaMA.
    for one_token_target_factor in [2.0f32, 1.0] {
        kn_edit_row_case(one_token_target_factor);
    }
}

fn kn_edit_row_case(one_token_target_factor: f32) {
    let probe = tiny();
    let one = [" Rome", " Paris", " Berlin", " the", " a"]
        .into_iter()
        .find(|t| probe.encode(t).unwrap().len() == 1)
        .expect("some one-token target");
    let many = " Ouagadougou Burkina";
    assert!(probe.encode(many).unwrap().len() > 1);
    for target in [one, many] {
        let req = EditRequest {
            prompt: "The capital of {} is".into(),
            subject: "France".into(),
            relation: "P36".into(),
            target_new: target.trim_start().into(),
            target_true: "Paris".into(),
        };
        let lm = tiny();
        let t_ids = lm.encode(target).unwrap();
        let mut ids = lm.encode("The capital of France is").unwrap();
        let mut greedy = Vec::new();
        for _ in 0..t_ids.len() {
            let fwd = lm
                .model
                .forward(lm.model.batch(&[ids.clone()]), &Interventions::none());
            let logits: Vec<f32> = lm
                .model
                .logits_at(fwd.hidden, &[(0, ids.len() - 1)])
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            let best = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap() as u32;
            greedy.push(best);
            ids.push(best);
        }
        let emb: Vec<f32> = lm
            .model
            .embed
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let d = lm.model.config.hidden_size;
        let e = |t: u32| &emb[t as usize * d..(t as usize + 1) * d];
        // Written out per token in f64, not the way kn.rs sums.
        let (add, take) = if t_ids.len() == 1 {
            (one_token_target_factor as f64, 2.0)
        } else {
            (1.0, 1.0)
        };
        let mut expected = vec![0f64; d];
        for (t, g) in t_ids.iter().zip(&greedy) {
            for (x, (a, b)) in expected.iter_mut().zip(e(*t).iter().zip(e(*g))) {
                *x += add * *a as f64 - take * *b as f64;
            }
        }
        let mut lm = lm;
        let mut editor = kn(4, 4);
        editor.hparams.one_token_target_factor = one_token_target_factor as f64;
        let patch = editor.apply(&mut lm, &[req]).unwrap();
        let mut rows = 0;
        for entry in &patch.entries {
            for row in entry
                .delta
                .chunks(d)
                .filter(|r| r.iter().any(|x| *x != 0.0))
            {
                rows += 1;
                for (k, (got, want)) in row.iter().zip(&expected).enumerate() {
                    let got = *got as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "factor {one_token_target_factor}, target {target:?}, layer {}, dim {k}: \
                         {got} vs {want}",
                        entry.layer
                    );
                }
            }
        }
        assert!(rows > 0, "target {target:?}: no neuron edited");
    }
}

#[test]
fn kn_hparams_default_the_one_token_factor_and_name_a_bad_one() {
    let yaml = include_str!("../hparams/kn-smollm2.yaml");
    assert_eq!(
        KnHparams::from_yaml_str(yaml, "kn.yaml")
            .unwrap()
            .one_token_target_factor,
        2.0
    );
    let one = KnHparams::from_yaml_str(&format!("{yaml}one_token_target_factor: 1\n"), "kn.yaml");
    assert_eq!(one.as_ref().unwrap().one_token_target_factor, 1.0);
    // At its default the key is left out of what run identities and patches record.
    let key = |h: &KnHparams| {
        serde_json::to_value(h)
            .unwrap()
            .get("one_token_target_factor")
            .cloned()
    };
    assert_eq!(key(&KnHparams::smollm2()), None);
    assert_eq!(key(&one.unwrap()), Some(serde_json::json!(1.0)));
    for bad in ["0", "-1"] {
        let e = KnHparams::from_yaml_str(
            &format!("{yaml}one_token_target_factor: {bad}\n"),
            "kn.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("kn.yaml: field `one_token_target_factor`") && !e.contains('\n'),
            "{bad}: {e}"
        );
    }
}
