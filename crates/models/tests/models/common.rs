//! Helpers shared by the model tests.

use burn::tensor::backend::Backend;
use kedit_models::{CausalLm, Interventions, LanguageModel};
use serde_json::Value;

/// A tiny random checkpoint under fixtures/ (`tiny-llama`, `tiny-gpt2`, `tiny-gptj`).
pub fn load_tiny<B: Backend>(name: &str, device: &B::Device) -> LanguageModel<B> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name);
    LanguageModel::<B>::load_hf(&dir, device).unwrap()
}

pub fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The largest |kedit − reference| over every position and vocabulary entry of every prompt,
/// relative to the largest |reference logit| of its row.
pub fn max_rel_logit_error<B: Backend>(lm: &LanguageModel<B>, r: &Value) -> f64 {
    let mut worst = 0f64;
    for (ids, want) in r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["logits"].as_array().unwrap())
    {
        let ids = ids_of(ids);
        let fwd = lm.model.forward(
            lm.model.batch(std::slice::from_ref(&ids)),
            &Interventions::none(),
        );
        let pos: Vec<(usize, usize)> = (0..ids.len()).map(|p| (0, p)).collect();
        let got: Vec<f32> = lm
            .model
            .logits_at(fwd.hidden, &pos)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        let v = got.len() / ids.len();
        for (p, row) in want.as_array().unwrap().iter().enumerate() {
            let row: Vec<f64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let scale = row.iter().fold(0f64, |m, x| m.max(x.abs()));
            for (j, w) in row.iter().enumerate() {
                worst = worst.max((got[p * v + j] as f64 - w).abs() / scale);
            }
        }
    }
    worst
}
