//! kedit-eval's checks on models (the tiny committed checkpoints, and SmolLM2 against
//! transformers), one test binary (each binary links the whole of Burn again).

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use kedit_models::LanguageModel;

mod perplexity;
mod token_acc;

pub fn tiny<B: Backend>(name: &str, device: &B::Device) -> LanguageModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(name);
    LanguageModel::load_hf(&dir, device).unwrap()
}
