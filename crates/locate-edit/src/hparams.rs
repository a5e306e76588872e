//! ROME hyperparameters under EasyEdit's key names, so an EasyEdit YAML loads unchanged.

use anyhow::{bail, Result};
pub use kedit_editing::hparams::Hparams;
use kedit_editing::hparams::{parse_yaml, RUN_KEYS};
use serde::{Deserialize, Serialize};

use crate::kv::FactToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RomeHparams {
    pub layers: Vec<usize>,
    /// Where the key is read and v* optimised: `subject_last` (every released config) or `last`
    /// (`kv::FactToken`).
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

/// The hyperparameters file kedit carries in `hparams/`, parsed (and checked) at first use.
macro_rules! bundled {
    ($file:literal) => {
        Self::from_yaml_str(include_str!(concat!("../hparams/", $file)), $file)
            .expect("bundled hparams")
    };
}

impl RomeHparams {
    /// The defaults for SmolLM2-135M (see hparams/rome-smollm2.yaml for why).
    pub fn smollm2() -> Self {
        bundled!("rome-smollm2.yaml")
    }

    /// `fact_token`, checked when the file was read.
    pub fn fact_token(&self) -> FactToken {
        FactToken::parse("hparams", &self.fact_token).expect("checked on load")
    }
}

impl Hparams for RomeHparams {
    fn from_yaml_str(text: &str, file: &str) -> Result<Self> {
        let h: Self = parse_yaml(text, file, RUN_KEYS)?;
        if h.layers.len() != 1 {
            bail!(
                "{file}: field `layers`: ROME edits exactly one layer, got {:?}",
                h.layers
            );
        }
        FactToken::parse(file, &h.fact_token)?;
        Ok(h)
    }
}

/// MEMIT, PMET, AlphaEdit and EMMET hyperparameters under EasyEdit's key names (their YAML files load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemitHparams {
    /// The edited layers, in order; z is computed at the last.
    pub layers: Vec<usize>,
    /// EasyEdit's only value is `all`.
    #[serde(default)]
    pub layer_selection: Option<String>,
    pub fact_token: String,
    pub v_num_grad_steps: usize,
    pub v_lr: f64,
    /// Ignored: the loss is always read at the last layer (EasyEdit's value is the last layer).
    #[serde(default)]
    pub v_loss_layer: Option<usize>,
    pub v_weight_decay: f64,
    pub clamp_norm_factor: f64,
    pub kl_factor: f64,
    /// Accepted for EasyEdit's files; MEMIT and PMET always use C (λ is their only damping).
    #[serde(default)]
    pub mom2_adjustment: Option<bool>,
    /// λ in `ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`.
    pub mom2_update_weight: f64,
    #[serde(default)]
    pub mom2_dataset: Option<String>,
    #[serde(default)]
    pub mom2_n_samples: Option<usize>,
    #[serde(default)]
    pub mom2_dtype: Option<String>,
    /// kedit's own (MEMIT hard-codes it): `[[10, 5]]`, the bare prompt plus one sampled prefix
    /// of up to 10 tokens per starter word.
    #[serde(default = "memit_templates")]
    pub context_template_length_params: Vec<[usize; 2]>,
    /// kedit's own: the seed of the context-template sampler.
    #[serde(default)]
    pub seed: u64,
    /// PMET: the NLL weight of its adaptive loss (EasyEdit's key; 1 in every released file).
    #[serde(default)]
    pub nll_loss_factor: Option<f64>,
    /// PMET: the modules written; only the MLP output projection is supported (the released
    /// configs write only it).
    #[serde(default)]
    pub rewrite_module_tmps: Option<Vec<String>>,
    /// AlphaEdit: the eigenvalues of C below this span the null space its updates are confined
    /// to (EasyEdit's key; 2e-2 in every released file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nullspace_threshold: Option<f64>,
    /// AlphaEdit: α, the ridge of its solve (EasyEdit's key `L2`). Both AlphaEdit keys are left
    /// out of the JSON a results file records when absent, so MEMIT's and PMET's runs recorded
    /// before they existed still resume.
    #[serde(default, rename = "L2", skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// EMMET: μ, the ridge on `Kᵀ (λC + νI)⁻¹ K` against ill-conditioned batches (EasyEdit's
    /// key; 0.1 in every released file). Left out of the recorded JSON when absent, as
    /// AlphaEdit's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emmet_lambda: Option<f64>,
    /// EMMET: ν, added to `λC` (EasyEdit's key; 0 in every released file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_norm_lambda: Option<f64>,
}

fn memit_templates() -> Vec<[usize; 2]> {
    vec![[10, 5]]
}

impl MemitHparams {
    /// MEMIT's defaults for SmolLM2-135M (see hparams/memit-smollm2.yaml for why).
    pub fn smollm2() -> Self {
        bundled!("memit-smollm2.yaml")
    }

    /// PMET's defaults for SmolLM2-135M (see hparams/pmet-smollm2.yaml).
    pub fn smollm2_pmet() -> Self {
        bundled!("pmet-smollm2.yaml")
    }

    /// AlphaEdit's defaults for SmolLM2-135M (see hparams/alphaedit-smollm2.yaml).
    pub fn smollm2_alphaedit() -> Self {
        bundled!("alphaedit-smollm2.yaml")
    }

    /// EMMET's defaults for SmolLM2-135M (see hparams/emmet-smollm2.yaml).
    pub fn smollm2_emmet() -> Self {
        bundled!("emmet-smollm2.yaml")
    }

    /// `fact_token`, checked when the file was read.
    pub fn fact_token(&self) -> FactToken {
        FactToken::parse("hparams", &self.fact_token).expect("checked on load")
    }
}

impl Hparams for MemitHparams {
    fn from_yaml_str(text: &str, file: &str) -> Result<Self> {
        let h: Self = parse_yaml(text, file, RUN_KEYS)?;
        if h.layers.is_empty() || h.layers.windows(2).any(|w| w[0] >= w[1]) {
            bail!(
                "{file}: field `layers`: expected increasing layer numbers, got {:?}",
                h.layers
            );
        }
        FactToken::parse(file, &h.fact_token)?;
        if let Some(s) = h.layer_selection.as_deref().filter(|s| *s != "all") {
            bail!("{file}: field `layer_selection`: only `all` is supported, got {s:?}");
        }
        if h.mom2_update_weight.is_nan() || h.mom2_update_weight <= 0.0 {
            bail!(
                "{file}: field `mom2_update_weight`: must be > 0 (it is the only damping), got {}",
                h.mom2_update_weight
            );
        }
        if let Some(m) = h
            .rewrite_module_tmps
            .iter()
            .flatten()
            .find(|m| !m.contains("mlp"))
        {
            bail!("{file}: field `rewrite_module_tmps`: only the MLP output projection can be written, got {m:?}");
        }
        Ok(h)
    }
}
