//! The one place where editing methods are registered: `kedit edit`, `kedit keys`, `kedit bench`
//! and `cargo xtask bench-all` (through `kedit methods --json`) all read this table.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use kedit_editing::hparams::Hparams;
use kedit_editing::Editor;
use kedit_models::{fetch, LanguageModel};

pub struct MethodInfo {
    pub name: &'static str,
    /// Whether one `apply` with N requests is a real batch edit (not N sequential edits).
    pub batch: bool,
    /// Seconds per edit on the default model, one process per core of a 2-core CPU as `cargo xtask
    /// bench-all` runs them (default build, no OpenBLAS; measured 2026-12-03; for ETAs only).
    pub sec_per_edit: f64,
    pub about: &'static str,
    /// It differs from another registered method only when one `apply` holds several requests
    /// (MEMIT-Merge is MEMIT on one request): the benchmark matrix runs it in batch only.
    pub batch_only: bool,
}

pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "rome",
        batch: false,
        sec_per_edit: 36.0,
        about: "ROME, the original update (bare-prompt key in the denominator); the default",
        batch_only: false,
    },
    MethodInfo {
        name: "r-rome",
        batch: false,
        sec_per_edit: 37.0,
        about: "R-ROME: ROME with the template-averaged key in the denominator",
        batch_only: false,
    },
    MethodInfo {
        name: "memit",
        batch: true,
        sec_per_edit: 22.0,
        about: "MEMIT: batch edit over several MLP layers, f64 least-squares update per layer",
        batch_only: false,
    },
    MethodInfo {
        name: "memit-merge",
        batch: true,
        // Rough (2026-12-04, three kedit processes on the 2 cores): 75 s per edit in same-subject
        // batch cells at N = 3, where one offset carries three facts; 19 s in different-subject
        // ones, as MEMIT's.
        sec_per_edit: 45.0,
        about: "MEMIT-Merge: MEMIT with one target optimised per subject for all its requests in a batch (MEMIT on one request)",
        batch_only: true,
    },
    MethodInfo {
        name: "pmet",
        batch: true,
        sec_per_edit: 15.0,
        about: "PMET: MEMIT with attention and MLP targets optimised jointly, only the MLP written",
        batch_only: false,
    },
    MethodInfo {
        name: "alphaedit",
        batch: true,
        // Measured 2026-12-05 (release, two cells side by side): 72-75 s for a default-profile
        // cell's 6 edits and their evaluation, MEMIT's statistics already cached.
        sec_per_edit: 12.0,
        about: "AlphaEdit: MEMIT's targets, the update confined to the null space of C and kept off earlier edits' keys",
        batch_only: false,
    },
    MethodInfo {
        name: "emmet",
        batch: true,
        // Measured 2026-12-07 (release, two cells side by side in a whole default run): 83 s and
        // 87 s for a default-profile cell's 6 edits and their evaluation.
        sec_per_edit: 14.0,
        about: "EMMET: MEMIT's targets, each key's output moved by exactly its residual (ROME's equality constraint for a batch)",
        batch_only: false,
    },
    MethodInfo {
        name: "emmet-merge",
        batch: true,
        // As MEMIT-Merge's (rough): one offset carries a subject's facts in a same-subject batch.
        sec_per_edit: 45.0,
        about: "EMMET-Merge: EMMET with one target optimised per subject for all its requests in a batch (EMMET on one request)",
        batch_only: true,
    },
    MethodInfo {
        name: "ft-m",
        batch: true,
        sec_per_edit: 7.0,
        about: "FT-M: fine-tune one MLP output projection, teacher-forced loss on the target",
        batch_only: false,
    },
    MethodInfo {
        name: "ft-l",
        batch: true,
        sec_per_edit: 7.0,
        about: "FT-L: fine-tune one MLP output projection, every target token at the last prompt position",
        batch_only: false,
    },
    MethodInfo {
        name: "mend",
        batch: true,
        sec_per_edit: 1.0,
        about: "MEND: a trained hypernetwork turns the edit's gradient into a low-rank update (`kedit mend train` first)",
        batch_only: false,
    },
    MethodInfo {
        name: "kn",
        batch: false,
        sec_per_edit: 30.0,
        about: "KN: knowledge neurons by integrated gradients, their output rows moved to the target",
        batch_only: false,
    },
];

pub fn names() -> String {
    METHODS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The editor for `name` with its hyperparameters (YAML file, else the bundled defaults for the
/// default model), with what it needs from the model (covariance statistics) loaded and what it
/// keeps from it (context templates) taken now, from `lm` as it is (`Editor::prepare`): a
/// resumed sequential run applies its saved patches after this, and must edit as the
/// uninterrupted run did.
pub fn editor<B: Backend>(
    name: &str,
    hparams: Option<&Path>,
    archive: Option<&Path>,
    lm: &LanguageModel<B>,
) -> Result<Box<dyn Editor<B>>> {
    let mut editor = build(name, hparams, archive, lm)?;
    editor.prepare(lm)?;
    Ok(editor)
}

fn build<B: Backend>(
    name: &str,
    hparams: Option<&Path>,
    archive: Option<&Path>,
    lm: &LanguageModel<B>,
) -> Result<Box<dyn Editor<B>>> {
    use kedit_gradient_edit::{Ft, FtHparams, Objective};
    use kedit_locate_edit::{stats, Memit, MemitHparams, Rome, RomeHparams, Variant};
    if let Some(path) = hparams {
        kedit_editing::hparams::check_module_names(path, lm.model.config.family)?;
    }
    let layers = |field: &str, layers: &[usize]| {
        kedit_editing::hparams::check_layers(
            &source(hparams),
            field,
            layers,
            lm.model.config.num_layers,
        )
    };
    // C at every edit layer of MEMIT, MEMIT-Merge, PMET, AlphaEdit and EMMET.
    let memit_stats = |hp: &MemitHparams| {
        stats::load_or_compute_layers(
            lm,
            &hp.layers,
            Path::new(stats::DEFAULT_CORPUS),
            hp.mom2_n_samples.unwrap_or(100_000),
            &fetch::cache_dir()?.join("stats"),
        )
    };
    let ft = |objective| -> Result<Box<dyn Editor<B>>> {
        let hp = load(hparams, FtHparams::smollm2)?;
        layers("layers", &hp.layers)?;
        Ok(Box::new(Ft::new(hp, objective)?))
    };
    let variant = match name {
        "rome" => Variant::Original,
        "r-rome" => Variant::RRome,
        "ft-m" => return ft(Objective::TargetNew),
        "ft-l" => return ft(Objective::PromptLast),
        "alphaedit" => {
            let hp = load(hparams, MemitHparams::smollm2_alphaedit)?;
            layers("layers", &hp.layers)?;
            let m = memit_stats(&hp)?;
            return Ok(Box::new(
                kedit_locate_edit::alphaedit(hp, &m).with_context(|| source(hparams))?,
            ));
        }
        "emmet" | "emmet-merge" => {
            let hp = load(hparams, MemitHparams::smollm2_emmet)?;
            layers("layers", &hp.layers)?;
            let m = memit_stats(&hp)?;
            let make = if name == "emmet" {
                kedit_locate_edit::emmet
            } else {
                kedit_locate_edit::emmet_merge
            };
            return Ok(Box::new(
                make(hp)
                    .with_context(|| source(hparams))?
                    .with_second_moments(m),
            ));
        }
        "memit" | "memit-merge" | "pmet" => {
            let (hp, make): (_, fn(MemitHparams) -> Memit) = if name == "memit" {
                (load(hparams, MemitHparams::smollm2)?, Memit::new)
            } else if name == "memit-merge" {
                (
                    load(hparams, MemitHparams::smollm2)?,
                    kedit_locate_edit::memit_merge,
                )
            } else {
                (
                    load(hparams, MemitHparams::smollm2_pmet)?,
                    kedit_locate_edit::pmet,
                )
            };
            layers("layers", &hp.layers)?;
            let m = memit_stats(&hp)?;
            return Ok(Box::new(make(hp).with_second_moments(m)));
        }
        "mend" => {
            let path = match archive {
                Some(p) => p.to_owned(),
                None => mend_archive(hparams, lm)?,
            };
            if !path.exists() {
                bail!(
                    "--archive {}: no MEND archive there; train one with `kedit mend train --model MODEL --data fixtures/mend-train.json`",
                    path.display()
                );
            }
            return Ok(Box::new(kedit_gradient_edit::mend_train::editor(
                &path, lm,
            )?));
        }
        "kn" => {
            let hp = load(hparams, kedit_neuron_edit::KnHparams::smollm2)?;
            return Ok(Box::new(kedit_neuron_edit::Kn::new(hp)));
        }
        other => bail!("--method {other}: unknown method ({})", names()),
    };
    let hp = load(hparams, RomeHparams::smollm2)?;
    layers("layers", &hp.layers)?;
    let mut rome = Rome::new(hp, variant);
    if rome.hparams.mom2_adjustment {
        let samples = rome.hparams.mom2_n_samples.unwrap_or(100_000);
        let m = stats::load_or_compute(
            lm,
            rome.hparams.layers[0],
            Path::new(stats::DEFAULT_CORPUS),
            samples,
            &fetch::cache_dir()?.join("stats"),
        )?;
        rome = rome.with_second_moment(m);
    }
    Ok(Box::new(rome))
}

/// The cached MEND archive for `lm` and the hyperparameters (file, else the bundled ones).
pub fn mend_archive<B: Backend>(
    hparams: Option<&Path>,
    lm: &LanguageModel<B>,
) -> Result<std::path::PathBuf> {
    let hp = load(hparams, kedit_gradient_edit::MendHparams::smollm2)?;
    kedit_editing::hparams::check_layers(
        &source(hparams),
        "inner_params",
        &hp.layers(lm.model.config.family)?,
        lm.model.config.num_layers,
    )?;
    kedit_gradient_edit::mend_train::default_archive(&fetch::cache_dir()?, lm, &hp)
}

/// The hyperparameters a run of `name` uses (the file's, else the bundled ones) as JSON: what a
/// results file records, so that resuming it with other settings is refused.
pub fn resolved_hparams(name: &str, hparams: Option<&Path>) -> Result<serde_json::Value> {
    use kedit_gradient_edit::{FtHparams, MendHparams};
    use kedit_locate_edit::{MemitHparams, RomeHparams};
    use kedit_neuron_edit::KnHparams;
    fn json<H: Hparams + serde::Serialize>(
        path: Option<&Path>,
        bundled: fn() -> H,
    ) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(load(path, bundled)?)?)
    }
    match name {
        "rome" | "r-rome" => json(hparams, RomeHparams::smollm2),
        "memit" | "memit-merge" => json(hparams, MemitHparams::smollm2),
        "pmet" => json(hparams, MemitHparams::smollm2_pmet),
        "alphaedit" => json(hparams, MemitHparams::smollm2_alphaedit),
        "emmet" | "emmet-merge" => json(hparams, MemitHparams::smollm2_emmet),
        "ft-m" | "ft-l" => json(hparams, FtHparams::smollm2),
        "mend" => json(hparams, MendHparams::smollm2),
        "kn" => json(hparams, KnHparams::smollm2),
        other => bail!("--method {other}: unknown method ({})", names()),
    }
}

/// Where the hyperparameters come from, for messages.
pub fn source(hparams: Option<&Path>) -> String {
    match hparams {
        Some(p) => p.display().to_string(),
        None => {
            "the bundled hparams (SmolLM2-135M's; give this model's with --hparams FILE)".into()
        }
    }
}

/// The YAML file's hyperparameters, else the bundled defaults for the default model.
fn load<H: Hparams>(path: Option<&Path>, bundled: fn() -> H) -> Result<H> {
    match path {
        Some(p) => H::load(p),
        None => Ok(bundled()),
    }
}

/// Check a method name before loading a model.
pub fn check(name: &str) -> Result<()> {
    if METHODS.iter().any(|m| m.name == name) {
        Ok(())
    } else {
        bail!("--method {name}: unknown method ({})", names())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered method has bundled hyperparameters that a results file can record (a
    /// method left out of `resolved_hparams` would fail every `kedit bench` run of it).
    #[test]
    fn every_registered_method_resolves_its_bundled_hparams() {
        for m in METHODS {
            let h = resolved_hparams(m.name, None).unwrap_or_else(|e| panic!("{}: {e:#}", m.name));
            assert!(h.is_object(), "{}: {h}", m.name);
        }
        assert!(resolved_hparams("nope", None).is_err());
    }
}
