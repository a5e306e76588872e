//! A model whose constant weights are split for 3xTF32 once (`Transformer::presplit`, what ROME's
//! v* loop and FT use on CUDA) computes what the model computes, passes gradients to an offset
//! added in the stream, and stops using a weight's kept split once that weight is replaced or
//! needs a gradient itself.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, CausalLm, Interventions, LanguageModel, Site, ToAutodiff};

test_device!(presplit_model_matches_the_model, all_families);
fn all_families<B: Backend>(device: &B::Device, dev: TestDevice) {
    let (tol, grad_tol) = if kedit_models::layers::splits_matmul::<B>() {
        // CUDA, products split for 3xTF32: the model splits each weight at every product, the
        // presplit one once, into the same halves, and both run the same three products; the
        // gradients pass through `hi` on both sides. Equal but for rounding noise.
        (1e-6, 1e-5)
    } else {
        // The kept split runs three products where the model runs one. CPU: f32 rounding, ~1e-6
        // of the largest value, and gradients through `hi` alone (straight through) against the
        // whole weight, 2^-12 relative. CUDA without the split (KEDIT_CUDA_MATMUL=tf32, or an
        // f32 kernel such as cuBLAS's): one TF32 product against three is TF32's error, ~1e-3.
        dev.pick((2e-5, 1e-3), (5e-3, 5e-3))
    };
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        check::<B>(name, device, tol, grad_tol);
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = max_abs(want).max(1e-12);
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= tol * scale, "{what}: max error {err:e} of {scale:e}");
}

fn check<B: Backend>(name: &str, device: &B::Device, tol: f32, grad_tol: f32) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name);
    let lm = LanguageModel::<B>::load_hf(&dir, device).unwrap();
    let m = &lm.model;
    let seqs = [
        lm.encode("The capital of France is").unwrap(),
        lm.encode("Some text. Paris is").unwrap(),
    ];
    let ids = m.batch(&seqs);
    let [b, s] = ids.dims();
    let d = m.config.hidden_size;
    let layer = 1;
    let pos: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..s).map(move |p| (i, p))).collect();

    // Inference: logits at every position.
    let logits = |model: &kedit_models::Transformer<B>| {
        let fwd = model.forward(ids.clone(), &Interventions::none());
        host(model.logits_at(fwd.hidden, &pos))
    };
    let want = logits(m);
    let pre = m.presplit(layer);
    assert_close(&logits(&pre), &want, tol, &format!("{name}: logits"));

    // Under autodiff, an offset at `layer`'s MLP output (ROME's δ): value and gradient.
    let delta: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
    let run = |model: &kedit_models::Transformer<B>| {
        let ad = model.map(&ToAutodiff);
        let dt = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(delta.clone(), [d]), device)
            .require_grad();
        let iv = Interventions::none().add(layer, Site::MlpOut, vec![(0, 2), (1, 3)], dt.clone());
        let fwd = ad.forward(ad.batch(&seqs), &iv);
        let y = ad.logits_at(fwd.hidden, &pos);
        let w = Tensor::<Autodiff<B>, 2>::from_data(
            TensorData::new(
                (0..y.dims().iter().product::<usize>())
                    .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
                    .collect::<Vec<_>>(),
                y.dims(),
            ),
            device,
        );
        let grads = (y.clone() * w).sum().backward();
        (
            host(y.inner()),
            host(dt.grad(&grads).expect("δ's gradient")),
        )
    };
    let (y0, g0) = run(m);
    let (y1, g1) = run(&pre);
    assert_close(&y1, &y0, tol, &format!("{name}: autodiff logits"));
    assert_close(&g1, &g0, grad_tol, &format!("{name}: ∂/∂δ"));

    // A replaced weight drops its kept split: the presplit model with a new MLP output
    // projection computes what the model with it computes, not what the old weight gave.
    let w2 = m.mlp_out(layer) * -2.0;
    let mut m2 = m.clone();
    m2.set_mlp_out(layer, w2.clone());
    let mut pre2 = pre.clone();
    pre2.set_mlp_out(layer, w2);
    let want2 = logits(&m2);
    assert!(
        max_abs(
            &want2
                .iter()
                .zip(&want)
                .map(|(a, b)| a - b)
                .collect::<Vec<_>>()
        ) > 10.0 * tol * max_abs(&want),
        "{name}: scaling the weight must move the logits for this check to mean anything"
    );
    assert_close(
        &logits(&pre2),
        &want2,
        tol,
        &format!("{name}: replaced weight"),
    );

    // A weight that needs a gradient (fine-tuning) gets one: its kept split, a constant, is not
    // used. Assigned to the field directly, so that `set_mlp_out`'s dropping the split does not
    // hide the check.
    let mut ad = pre.map(&ToAutodiff);
    let w = Tensor::<Autodiff<B>, 2>::from_inner(m.mlp_out(layer)).require_grad();
    ad.blocks[layer].down.w = w.clone();
    let fwd = ad.forward(ad.batch(&seqs), &Interventions::none());
    let grads = ad.logits_at(fwd.hidden, &pos).sum().backward();
    let gw = host(w.grad(&grads).expect("the trained weight's gradient"));
    assert!(
        max_abs(&gw) > 0.0,
        "{name}: zero gradient for the trained weight"
    );
}
