//! kedit-editing: the vocabulary every editing method shares.
//!
//! - [`EditRequest`] / [`EditCase`]: one requested rewrite, and the prompts that evaluate it.
//! - [`requests`]: reading the S2RKE release format, CounterFact and EasyEdit's flat records
//!   (KnowEdit, ZsRE).
//! - [`Editor`]: a method; `apply` returns a [`Patch`] and leaves the model edited.
//! - [`Patch`]: named weight deltas with metadata; apply and revert are exact; saved as
//!   safetensors.

pub mod hparams;
pub mod patch;
pub mod requests;

use anyhow::Result;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

pub use patch::{Matrix, Patch, PatchEntry, Snapshot};

/// One requested rewrite of a fact: `prompt` holds `{}` where the subject goes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    pub prompt: String,
    pub subject: String,
    #[serde(default)]
    pub relation: String,
    pub target_new: String,
    pub target_true: String,
}

impl EditRequest {
    /// The prompt with the subject filled in.
    pub fn full_prompt(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }
}

/// A request with the prompts that evaluate it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EditCase {
    /// Stable id: `s{subject}r{record}` for S2RKE, the `case_id` for CounterFact, the record's
    /// index for EasyEdit's flat records.
    pub case_id: String,
    /// Cases with the same subject id share a subject (the S2RKE question).
    pub subject_id: String,
    pub request: EditRequest,
    pub paraphrase_prompts: Vec<String>,
    pub neighborhood_prompts: Vec<String>,
    /// Each neighbourhood prompt's own answer, where the data gives one (EasyEdit's locality
    /// prompts ask unrelated questions: `loc_ans`, `locality_ground_truth`); empty means every
    /// neighbourhood prompt's answer is `target_true` (CounterFact and S2RKE neighbours share the
    /// true object). Either empty or as long as `neighborhood_prompts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighborhood_targets: Vec<String>,
    /// Each neighbourhood prompt's kind, where the data names two or more (KnowEdit's
    /// `Relation_Specificity` and `Forgetfulness`): EasyEdit averages locality within each kind,
    /// then over the kinds. Empty: one kind. Either empty or as long as `neighborhood_prompts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighborhood_kinds: Vec<String>,
    /// EasyEdit's portability: questions whose answers should follow from the edit (KnowEdit's
    /// reasoning, subject-aliasing and logical-generalisation prompts, ZsRE's one-hop question),
    /// each with its answer in `portability_targets` (as long).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portability_prompts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portability_targets: Vec<String>,
    /// Each portability prompt's kind, as `neighborhood_kinds` (KnowEdit's `Reasoning`,
    /// `Subject_Aliasing`, `Logical_Generalization`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portability_kinds: Vec<String>,
}

impl EditCase {
    /// The answer that neighbourhood prompt `i` should keep: NS compares it with `target_new`.
    pub fn neighborhood_target(&self, i: usize) -> &str {
        self.neighborhood_targets
            .get(i)
            .unwrap_or(&self.request.target_true)
    }
}

/// `(layer, key)` for every layer a method writes.
pub type LayerKeys = Vec<(usize, Vec<f32>)>;

/// An editing method. Sequential editing is repeated `apply` with one request; batch editing is
/// one `apply` with many. The model is left edited; the returned patch reverts or re-applies it.
pub trait Editor<B: Backend> {
    fn name(&self) -> &str;
    fn apply(
        &mut self,
        model: &mut kedit_models::LanguageModel<B>,
        requests: &[EditRequest],
    ) -> Result<Patch>;

    /// Take now whatever the editor would take from the model at its first edit and keep (ROME's
    /// and MEMIT's context templates, sampled from the model): a resumed sequential run applies
    /// its saved patches first, and its editor must still see the unedited model, as the
    /// uninterrupted run's did.
    fn prepare(&mut self, _model: &kedit_models::LanguageModel<B>) -> Result<()> {
        Ok(())
    }

    /// The model was put back as it was when the editor was prepared: forget what earlier edits
    /// left in the editor (AlphaEdit's preserved keys), so the next edit is made as the first.
    fn reset(&mut self) {}

    /// A patch this editor made earlier for `requests` was just applied to `lm` instead of
    /// editing again (a resumed sequential run): keep from it what `apply` would have kept.
    fn replay(
        &mut self,
        _model: &kedit_models::LanguageModel<B>,
        _requests: &[EditRequest],
    ) -> Result<()> {
        Ok(())
    }

    /// The keys the method writes `request` under at each edited layer, `(layer, key)` (the MLP
    /// key at the subject's last token, for locate-then-edit methods), read on the model as it
    /// is; empty for methods without keys.
    fn layer_keys(
        &mut self,
        _model: &kedit_models::LanguageModel<B>,
        _request: &EditRequest,
    ) -> Result<LayerKeys> {
        Ok(Vec::new())
    }

    /// The key at the first edited layer; `None` for methods without keys.
    fn key(
        &mut self,
        model: &kedit_models::LanguageModel<B>,
        request: &EditRequest,
    ) -> Result<Option<Vec<f32>>> {
        Ok(self
            .layer_keys(model, request)?
            .into_iter()
            .next()
            .map(|(_, k)| k))
    }
}
