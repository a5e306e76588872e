//! Gradients through the editing surface against central finite differences, in f64.
//!
//! In a process of its own: Burn 0.21 keys the default float dtype by device, and `NdArray<f32>`
//! and `NdArray<f64>` share the CPU device, so f64 must be set before any other test touches it.
//! The test runs this binary again with only itself selected (a binary of its own cost CI a
//! minute and a half to build).

use std::path::PathBuf;
use std::process::Command;

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{activation, backend::Backend, DType, Int, Tensor, TensorData};
use kedit_models::{CausalLm, Interventions, LanguageModel, Site, ToAutodiff};

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(p)
}

type F64 = NdArray<f64>;
type Ad = Autodiff<F64>;

const LAYER: usize = 0;

/// Mean NLL of `target` after `prompt`, with `delta` added at layer 0's MLP output at the last
/// prompt token and `w` as layer 0's MLP output projection.
fn nll<B: Backend>(
    model: &impl CausalLm<B>,
    ids: &[u32],
    n_prompt: usize,
    delta: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let iv = Interventions::none().add(LAYER, Site::MlpOut, vec![(0, n_prompt - 1)], delta);
    let fwd = model.forward(model.batch(&[ids.to_vec()]), &iv);
    let pos: Vec<(usize, usize)> = (n_prompt - 1..ids.len() - 1).map(|p| (0, p)).collect();
    let logp = activation::log_softmax(model.logits_at(fwd.hidden, &pos), 1);
    let tgt: Vec<i64> = ids[n_prompt..].iter().map(|&t| t as i64).collect();
    let n = tgt.len();
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(tgt, [n, 1]), &model.device());
    logp.gather(1, idx).mean().neg()
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

/// Gradients in f64 so that central differences (eps 1e-5) are accurate to ~1e-9; for every
/// family (Llama, GPT-2, GPT-J).
#[test]
fn gradients_match_finite_differences() {
    const CHILD: &str = "KEDIT_TEST_F64_PROCESS";
    if std::env::var_os(CHILD).is_none() {
        // The test's name in this binary: its module path without the crate's name.
        let module = module_path!().split_once("::").unwrap().1;
        let name = format!("{module}::gradients_match_finite_differences");
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--test-threads", "1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the f64 process: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = Default::default();
    let _ = burn::tensor::backend::set_default_float_dtype::<F64>(&dev, DType::F64);
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        check(name);
    }
}

fn check(name: &str) {
    let dev = Default::default();
    let lm = LanguageModel::<F64>::load_hf(&fixture(name), &dev).unwrap();
    let prompt = lm.encode("The capital of France is").unwrap();
    let target = lm.encode(" Rome").unwrap();
    let ids = [prompt.clone(), target].concat();
    let n = prompt.len();
    let d = lm.model.config.hidden_size;
    assert_eq!(
        lm.model.mlp_out(LAYER).dtype(),
        DType::F64,
        "the check needs f64 weights"
    );
    let delta0: Vec<f64> = (0..d)
        .map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.05)
        .collect();

    // d NLL / d delta.
    let ad = lm.model.map(&ToAutodiff);
    let delta =
        Tensor::<Ad, 1>::from_data(TensorData::new(delta0.clone(), [d]), &dev).require_grad();
    let loss = nll(&ad, &ids, n, delta.clone());
    let grads = loss.backward();
    let g: Vec<f64> = delta.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let eps = 1e-5;
    for i in [0, 7, 31, d - 1] {
        let at = |s: f64| {
            let mut x = delta0.clone();
            x[i] += s;
            scalar(nll(
                &lm.model,
                &ids,
                n,
                Tensor::from_data(TensorData::new(x, [d]), &dev),
            ))
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let rel = (fd - g[i]).abs() / fd.abs().max(1e-8);
        assert!(
            rel < 1e-3,
            "{name} delta[{i}]: autodiff {} vs finite difference {fd} (rel {rel})",
            g[i]
        );
    }

    // d NLL / d W_out (the [d_ff, d_model] matrix ROME rewrites), checked along random
    // directions and at single entries.
    let mut ad = lm.model.map(&ToAutodiff);
    let w = ad.mlp_out(LAYER).require_grad();
    ad.set_mlp_out(LAYER, w.clone());
    let zero = || Tensor::<Ad, 1>::from_data(TensorData::new(delta0.clone(), [d]), &dev);
    let grads = nll(&ad, &ids, n, zero()).backward();
    let gw: Vec<f64> = w.grad(&grads).unwrap().into_data().to_vec().unwrap();
    let w0 = lm.model.mlp_out(LAYER);
    let [r, c] = w0.dims();
    let w0v: Vec<f64> = w0.into_data().to_vec().unwrap();
    for k in [0usize, 5 * c + 3, r * c - 1] {
        let at = |s: f64| {
            let mut m = lm.model.clone();
            let mut x = w0v.clone();
            x[k] += s;
            m.set_mlp_out(LAYER, Tensor::from_data(TensorData::new(x, [r, c]), &dev));
            scalar(nll(
                &m,
                &ids,
                n,
                Tensor::from_data(TensorData::new(delta0.clone(), [d]), &dev),
            ))
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        let rel = (fd - gw[k]).abs() / fd.abs().max(1e-8);
        assert!(
            rel < 1e-3,
            "{name} W_out[{k}]: autodiff {} vs finite difference {fd} (rel {rel})",
            gw[k]
        );
    }
    let dir: Vec<f64> = (0..r * c)
        .map(|i| ((i * 7919 % 101) as f64 / 50.0) - 1.0)
        .collect();
    let along = |s: f64| {
        let mut m = lm.model.clone();
        let x: Vec<f64> = w0v.iter().zip(&dir).map(|(a, b)| a + s * b).collect();
        m.set_mlp_out(LAYER, Tensor::from_data(TensorData::new(x, [r, c]), &dev));
        scalar(nll(
            &m,
            &ids,
            n,
            Tensor::from_data(TensorData::new(delta0.clone(), [d]), &dev),
        ))
    };
    let fd = (along(eps) - along(-eps)) / (2.0 * eps);
    let an: f64 = gw.iter().zip(&dir).map(|(a, b)| a * b).sum();
    assert!(
        (fd - an).abs() / fd.abs() < 1e-3,
        "{name} directional: autodiff {an} vs finite difference {fd}"
    );
}
