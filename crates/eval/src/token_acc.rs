//! EasyEdit's teacher-forced token accuracy: `rewrite_acc`, `rephrase_acc`, `locality` and
//! `portability`, the numbers EasyEdit prints (as Reliability, Generalization, Locality and
//! Portability) where kedit's ES, PS and NS compare probabilities. Named as EasyEdit names
//! them, so the two kinds are never mixed up (methods.md, "Evaluation metrics").
//!
//! As EasyEdit's `test_prediction_acc` computes them (read at 14cea82):
//! - The prompt and its target are tokenized together, `prompt + " " + target`; the target's
//!   tokens are those after the prompt's own token count (the prompt tokenized alone).
//! - One forward pass over the pair; at each of the target's positions, the model's most likely
//!   next token (argmax) is the answer, the target's token the label.
//! - `rewrite_acc`: the share of the target_new's tokens answered right on the rewrite prompt.
//!   `rephrase_acc`: the same on each paraphrase prompt, averaged over them.
//! - `locality`: on each neighbourhood prompt, teacher-forced on target_true (EasyEdit's
//!   CounterFact runs pass `target_true` as the neighbourhood prompts' `ground_truth`), or on
//!   the prompt's own answer where the data gives one (ZsRE's `loc_ans`, KnowEdit's locality),
//!   the share of positions where the edited model's answer equals the unedited model's;
//!   averaged over the prompts (within each kind first, then over the kinds, where the data names
//!   kinds: KnowEdit's `Relation_Specificity` and `Forgetfulness`, as EasyEdit's summary
//!   averages). So locality is 1 for an edit that changed none of those answers, whatever they
//!   are.
//! - `portability`: where the data gives portability questions (KnowEdit, ZsRE's one-hop), the
//!   share of each answer's tokens answered right, averaged over the questions (by kind first, as
//!   locality).
//!
//! Where kedit differs, and why: kedit's tokenizer calls add no special tokens (the whole of kedit
//! scores that way; EasyEdit's `tok(...)` adds the tokenizer's BOS where it has one, which
//! SmolLM2's and GPT-2's do not), and a target given with its leading space is not given a second
//! one. A paraphrase or neighbourhood pair whose joint tokens end within the prompt's count (a
//! target merged into the prompt's last token, which a tokenizer that splits at spaces never
//! does) has no answer to check; EasyEdit's `np.mean` of nothing is NaN, which it drops from
//! `rephrase_acc`, and kedit drops it from both. A rewrite prompt without one is an error.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use kedit_editing::EditCase;
use kedit_models::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::spaced;

/// One case's token accuracies, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenAcc {
    pub rewrite_acc: f64,
    /// None where the case has no paraphrase prompt.
    pub rephrase_acc: Option<f64>,
    /// None where the case has no neighbourhood prompt, or no unedited model to compare with
    /// (the unedited model itself).
    pub locality: Option<f64>,
    /// The share of each portability answer's tokens answered right, averaged over the case's
    /// portability prompts (EasyEdit's `portability`); None where the case has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portability: Option<f64>,
}

/// The greedy answers and the labels at a target's positions, teacher-forced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forced {
    pub answers: Vec<u32>,
    pub labels: Vec<u32>,
}

impl Forced {
    /// The share of answers equal to their labels; None where there are none.
    pub fn accuracy(&self) -> Option<f64> {
        share_equal(&self.answers, &self.labels)
    }
}

fn share_equal(a: &[u32], b: &[u32]) -> Option<f64> {
    if a.is_empty() {
        return None;
    }
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    Some(same as f64 / a.len() as f64)
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// The mean within each kind, then over the kinds, as EasyEdit's summaries average a case's
/// locality and portability (per key, then over keys); one kind where `kinds` is empty. A prompt
/// without a value (no target token) is left out.
fn mean_by_kind(values: impl Iterator<Item = Option<f64>>, kinds: &[String]) -> Option<f64> {
    // Ordered by kind, so that the sum's rounding is the same on every run.
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (i, v) in values.enumerate() {
        if let Some(v) = v {
            let kind = kinds.get(i).map_or("", String::as_str);
            by_kind.entry(kind).or_default().push(v);
        }
    }
    mean(
        by_kind
            .values()
            .map(|v| v.iter().sum::<f64>() / v.len() as f64),
    )
}

/// Each (prompt, target) pair teacher-forced in one padded batch: the model's answers at the
/// target's positions and the target's tokens, as EasyEdit's `test_prediction_acc` slices them.
pub fn teacher_forced<B: Backend>(
    lm: &LanguageModel<B>,
    pairs: &[(&str, &str)],
) -> Result<Vec<Forced>> {
    let mut seqs = Vec::with_capacity(pairs.len());
    let mut positions = Vec::new();
    let mut spans = Vec::with_capacity(pairs.len());
    for (i, (prompt, target)) in pairs.iter().enumerate() {
        let prompt_len = lm.encode(prompt)?.len();
        if prompt_len == 0 {
            anyhow::bail!("pair {i}: the prompt is empty");
        }
        let seq = lm.encode(&format!("{prompt}{}", spaced(target)))?;
        lm.check_context(&format!("pair {i}: prompt and target"), seq.len())?;
        let start = positions.len();
        // The answer at position p is the prediction of token p + 1.
        positions.extend((prompt_len..seq.len()).map(|p| (i, p - 1)));
        spans.push((start, positions.len(), prompt_len));
        seqs.push(seq);
    }
    let answers = lm.argmax_at(&seqs, &positions);
    Ok(spans
        .into_iter()
        .zip(&seqs)
        .map(|((a, b, prompt_len), seq)| Forced {
            answers: answers[a..b].to_vec(),
            labels: seq[prompt_len.min(seq.len())..].to_vec(),
        })
        .collect())
}

/// The unedited model's answers on each case's neighbourhood prompts, teacher-forced on each
/// prompt's answer ([`EditCase::neighborhood_target`]): what [`token_accuracy`]'s `locality`
/// compares the edited model's with.
#[derive(Debug, Clone, Default)]
pub struct LocalityReference {
    answers: HashMap<String, Vec<Vec<u32>>>,
}

impl LocalityReference {
    /// Read off `lm` (the unedited model) for those of `cases` it does not hold yet.
    pub fn add<B: Backend>(&mut self, lm: &LanguageModel<B>, cases: &[&EditCase]) -> Result<()> {
        for case in cases {
            if self.answers.contains_key(&case.case_id) {
                continue;
            }
            let answers = neighbourhood_answers(lm, case)?;
            self.answers.insert(case.case_id.clone(), answers);
        }
        Ok(())
    }

    /// The reference for `cases`, from `lm` (the unedited model).
    pub fn of<B: Backend>(lm: &LanguageModel<B>, cases: &[EditCase]) -> Result<Self> {
        let mut r = Self::default();
        r.add(lm, &cases.iter().collect::<Vec<_>>())?;
        Ok(r)
    }
}

fn neighbourhood_answers<B: Backend>(
    lm: &LanguageModel<B>,
    case: &EditCase,
) -> Result<Vec<Vec<u32>>> {
    let pairs: Vec<(&str, &str)> = case
        .neighborhood_prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str(), case.neighborhood_target(i)))
        .collect();
    Ok(teacher_forced(lm, &pairs)?
        .into_iter()
        .map(|f| f.answers)
        .collect())
}

/// Each case's token accuracies on `lm`, its `locality` against `reference` (None: not read).
/// One padded batch per case: the rewrite and paraphrase prompts with target_new, the
/// neighbourhood prompts with their answers (target_true unless the data gives each its own).
pub fn token_accuracy<B: Backend>(
    lm: &LanguageModel<B>,
    cases: &[EditCase],
    reference: Option<&LocalityReference>,
) -> Result<Vec<TokenAcc>> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let r = &case.request;
        let rewrite = r.full_prompt();
        let mut pairs: Vec<(&str, &str)> = vec![(rewrite.as_str(), r.target_new.as_str())];
        pairs.extend(
            case.paraphrase_prompts
                .iter()
                .map(|p| (p.as_str(), r.target_new.as_str())),
        );
        if reference.is_some() {
            pairs.extend(
                case.neighborhood_prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.as_str(), case.neighborhood_target(i))),
            );
        }
        let portability_from = pairs.len();
        pairs.extend(
            case.portability_prompts
                .iter()
                .zip(&case.portability_targets)
                .map(|(p, t)| (p.as_str(), t.as_str())),
        );
        let forced = teacher_forced(lm, &pairs)
            .with_context(|| format!("case {}: token accuracy", case.case_id))?;
        let np = case.paraphrase_prompts.len();
        let locality = match reference {
            Some(reference) => {
                let pre = reference.answers.get(&case.case_id).with_context(|| {
                    format!("case {}: no unedited answers to compare with", case.case_id)
                })?;
                mean_by_kind(
                    forced[1 + np..portability_from]
                        .iter()
                        .zip(pre)
                        .map(|(post, pre)| share_equal(&post.answers, pre)),
                    &case.neighborhood_kinds,
                )
            }
            None => None,
        };
        let rewrite_acc = forced[0].accuracy().with_context(|| {
            format!(
                "case {}: target_new {:?} leaves no token after the rewrite prompt's",
                case.case_id, r.target_new
            )
        })?;
        out.push(TokenAcc {
            rewrite_acc,
            rephrase_acc: mean(forced[1..1 + np].iter().filter_map(Forced::accuracy)),
            locality,
            portability: mean_by_kind(
                forced[portability_from..].iter().map(Forced::accuracy),
                &case.portability_kinds,
            ),
        });
    }
    Ok(out)
}

/// Means over the cases that carry token accuracy (each part over the cases that have it); None
/// where none does.
pub fn summarize(accs: impl IntoIterator<Item = TokenAcc>) -> Option<TokenAcc> {
    let accs: Vec<TokenAcc> = accs.into_iter().collect();
    Some(TokenAcc {
        rewrite_acc: mean(accs.iter().map(|a| a.rewrite_acc))?,
        rephrase_acc: mean(accs.iter().filter_map(|a| a.rephrase_acc)),
        locality: mean(accs.iter().filter_map(|a| a.locality)),
        portability: mean(accs.iter().filter_map(|a| a.portability)),
    })
}

#[cfg(test)]
mod tests {
    use super::mean_by_kind;

    /// EasyEdit's summary: within each kind, then over the kinds; no kinds, one mean; a prompt
    /// without a value is left out, and so is a kind with none.
    #[test]
    fn means_by_kind_then_over_kinds() {
        let k = |ks: &[&str]| ks.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let v = [Some(1.0), Some(0.0), Some(0.5), None];
        let kinds = k(&[
            "Relation_Specificity",
            "Forgetfulness",
            "Forgetfulness",
            "Other",
        ]);
        assert_eq!(
            mean_by_kind(v.into_iter(), &kinds),
            Some((1.0 + 0.25) / 2.0)
        );
        assert_eq!(mean_by_kind(v.into_iter(), &[]), Some(0.5));
        assert_eq!(mean_by_kind([None].into_iter(), &k(&["a"])), None);
    }
}
