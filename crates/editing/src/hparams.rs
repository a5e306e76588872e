//! EasyEdit-style YAML hyperparameters: every method's struct is read through [`parse_yaml`], so
//! EasyEdit's files load unchanged and any unknown key is an error naming it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

/// A method's hyperparameters: parsed (and checked) from YAML text, or read from a file.
pub trait Hparams: Sized {
    fn from_yaml_str(text: &str, file: &str) -> Result<Self>;

    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read hparams", path.display()))?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }
}

/// EasyEdit keys that describe the run, not the algorithm: accepted and ignored by every method
/// (a method that uses one of them, e.g. FT's `rewrite_module_tmp`, leaves it out of `ignored`).
pub const RUN_KEYS: &[&str] = &[
    "alg_name",
    "model_name",
    "device",
    "stats_dir",
    "model_parallel",
    "fp16",
    "rewrite_module_tmp",
    "layer_module_tmp",
    "mlp_module_tmp",
    "attn_module_tmp",
    "ln_f_module",
    "lm_head_module",
    "max_length",
    "batch_size",
];

/// Parse `text` (from `file`, for messages) into `T` after dropping the `ignored` keys. `T`
/// should `deny_unknown_fields`, so that any other key is an error naming it.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, file: &str, ignored: &[&str]) -> Result<T> {
    let value = yaml_value(text).map_err(|e| anyhow::anyhow!("{file}: invalid YAML: {e}"))?;
    let serde_json::Value::Object(mut map) = value else {
        bail!("{file}: expected a mapping of hyperparameters");
    };
    for k in ignored {
        map.remove(*k);
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))
}

/// Every layer that `field` of the hyperparameters from `source` names exists in a model of
/// `n_layers` layers: checked before anything runs at those layers (covariance statistics, a
/// MEND archive's name), which would otherwise fail deep inside the model. The bundled defaults
/// are SmolLM2-135M's, so a smaller model meets this with no file of its own.
pub fn check_layers(source: &str, field: &str, layers: &[usize], n_layers: usize) -> Result<()> {
    if let Some(l) = layers.iter().find(|&&l| l >= n_layers) {
        bail!(
            "{source}: field `{field}`: layer {l}, but the model has {n_layers} layers (0 to {})",
            n_layers.saturating_sub(1)
        );
    }
    Ok(())
}

/// EasyEdit's `rewrite_module_tmp(s)` name Hugging Face modules, so a file resolves on one family
/// only: each must be this family's MLP or attention output projection (the matrices kedit
/// edits), else a one-line error naming the file, the field and the name it expected.
pub fn check_module_names(path: &Path, family: kedit_models::Family) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read hparams", path.display()))?;
    let value =
        yaml_value(&text).map_err(|e| anyhow::anyhow!("{}: invalid YAML: {e}", path.display()))?;
    let known = [family.mlp_out_module(), family.attn_out_module()];
    for field in ["rewrite_module_tmp", "rewrite_module_tmps"] {
        let names: Vec<&str> = match value.get(field) {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ => continue,
        };
        // FT's EasyEdit files name the parameter (`….down_proj.weight`), the others the module.
        if let Some(bad) = names
            .iter()
            .find(|n| !known.contains(&n.strip_suffix(".weight").unwrap_or(n)))
        {
            bail!(
                "{}: field `{field}`: `{bad}` is not a module of this {family:?} model (its MLP output projection is `{}`)",
                path.display(),
                family.mlp_out_module()
            );
        }
    }
    Ok(())
}

/// YAML as PyYAML reads EasyEdit's files: a repeated key keeps its last value (EasyEdit's
/// `hparams/PMET/llama-7b.yaml` repeats `model_parallel`).
///
/// The parser's message is cut to its first line ("line L column C: what"): the rest is a
/// multi-line source excerpt, and errors here are one line.
fn yaml_value(text: &str) -> Result<serde_json::Value, String> {
    let mut options = serde_saphyr::Options::default();
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::LastWins;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let e = e.to_string();
        let first = e.lines().next().unwrap_or_default();
        first.strip_prefix("error: ").unwrap_or(first).to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hp {
        #[allow(dead_code)] // read only to check the parse
        layers: Vec<usize>,
    }

    #[test]
    fn yaml_errors_are_one_line_with_the_position() {
        let e = parse_yaml::<Hp>("layers:\n  - 1\n v_lr: 3\n", "h.yaml", &[]).unwrap_err();
        let e = format!("{e:#}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("h.yaml: invalid YAML: line 3 column 2"),
            "{e}"
        );
        assert!(parse_yaml::<Hp>("layers: [1, 2]\n", "h.yaml", &[]).is_ok());
    }

    #[test]
    fn layers_beyond_the_model_name_source_field_and_depth() {
        assert!(check_layers("h.yaml", "layers", &[0, 1], 2).is_ok());
        let e = check_layers("h.yaml", "layers", &[1, 4], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "h.yaml: field `layers`: layer 4, but the model has 2 layers (0 to 1)"
        );
    }
}
