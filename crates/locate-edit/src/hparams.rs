//! ROME hyperparameters under EasyEdit's key names, so an EasyEdit YAML loads unchanged.

use anyhow::{bail, Result};
pub use kedit_editing::hparams::Hparams;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RomeHparams {
    pub layers: Vec<usize>,
    /// Where the key is read: `subject_last` (the only choice EasyEdit ships).
    pub fact_token: String,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    /// Ignored: the loss is always read at the last layer (EasyEdit's value is the last layer).
    #[serde(default)]
    pub v_loss_layer: Option<usize>,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    pub mom2_adjustment: bool,
    #[serde(default)]
    pub mom2_dataset: Option<String>,
    #[serde(default)]
    pub mom2_n_samples: Option<usize>,
    #[serde(default)]
    pub mom2_dtype: Option<String>,
    pub context_template_length_params: Vec<[usize; 2]>,
    /// kedit's own: the seed of the context-template sampler.
    #[serde(default)]
    pub seed: u64,
}

impl RomeHparams {
    /// The defaults for SmolLM2-135M (see hparams/rome-smollm2.yaml for why).
    pub fn smollm2() -> Self {
        Self::from_yaml_str(
            include_str!("../hparams/rome-smollm2.yaml"),
            "rome-smollm2.yaml",
        )
        .expect("bundled hparams")
    }
}

impl Hparams for RomeHparams {
    fn from_yaml_str(text: &str, file: &str) -> Result<Self> {
        let h: Self =
            kedit_editing::hparams::parse_yaml(text, file, kedit_editing::hparams::RUN_KEYS)?;
        if h.layers.len() != 1 {
            bail!(
                "{file}: field `layers`: ROME edits exactly one layer, got {:?}",
                h.layers
            );
        }
        if h.fact_token != "subject_last" {
            bail!(
                "{file}: field `fact_token`: only `subject_last` is supported, got {:?}",
                h.fact_token
            );
        }
        Ok(h)
    }
}
