//! kedit-eval: the CounterFact / S2RKE metrics, computed from the model's own probabilities.
//!
//! For a prompt and a target, `nll` = mean per-token negative log-likelihood of the target
//! (teacher-forced, with a leading space) and `p = exp(-nll)`.
//! - ES: on the rewrite prompt, p(target_new) > p(target_true).
//! - PS: the same on each paraphrase prompt, averaged over them.
//! - NS: on each neighbourhood prompt, p(target_true) > p(target_new), averaged; where the data
//!   gives a neighbourhood prompt its own answer (EasyEdit's `loc_ans`), p(that answer) >
//!   p(target_new), leaving out a prompt whose answer is target_new itself.
//! - EM / PM / NM: the matching mean probability differences.
//! - S: harmonic mean of ES, PS, NS over the case means ([`ScoreMean::Cell`], ROME's way), or
//!   the mean over cases of each case's harmonic mean ([`ScoreMean::Case`]): the paper does not
//!   say which (paper.md, ambiguity 4), so `kedit report --s-mean` offers both.

pub mod bench;
pub mod fluency;
pub mod key_efficacy;
pub mod perplexity;
pub mod report;
pub mod s_bars;
pub mod token_acc;

use anyhow::Result;
use burn::tensor::backend::Backend;
use kedit_editing::EditCase;
use kedit_models::LanguageModel;
use serde::{Deserialize, Serialize};

/// Metrics of one case. Fields are `None` where the case has no such prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseMetrics {
    pub case_id: String,
    pub es: f64,
    pub ps: Option<f64>,
    pub ns: Option<f64>,
    pub em: f64,
    pub pm: Option<f64>,
    pub nm: Option<f64>,
    /// EasyEdit's token accuracies ([`token_acc`]), where they were read (`kedit edit`, `kedit
    /// bench --token-acc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_acc: Option<token_acc::TokenAcc>,
}

/// Means over cases, and S.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub cases: usize,
    pub es: f64,
    pub ps: f64,
    pub ns: f64,
    pub em: f64,
    pub pm: f64,
    pub nm: f64,
    pub score: f64,
}

/// The target as scored: with a leading space (SmolLM2/GPT-2 tokenizers fold it into the word).
pub fn spaced(target: &str) -> String {
    if target.starts_with(' ') {
        target.to_owned()
    } else {
        format!(" {target}")
    }
}

/// (success, magnitude) averaged over prompts, for "`a` beats `b`".
fn compare(p_a: &[f64], p_b: &[f64]) -> Option<(f64, f64)> {
    if p_a.is_empty() {
        return None;
    }
    let n = p_a.len() as f64;
    let wins = p_a.iter().zip(p_b).filter(|(a, b)| a > b).count() as f64 / n;
    let margin = p_a.iter().zip(p_b).map(|(a, b)| a - b).sum::<f64>() / n;
    Some((wins, margin))
}

/// Score every prompt of each case against both targets, in one padded batch per case.
pub fn evaluate<B: Backend>(lm: &LanguageModel<B>, cases: &[EditCase]) -> Result<Vec<CaseMetrics>> {
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        let r = &case.request;
        let (new, old) = (spaced(&r.target_new), spaced(&r.target_true));
        // (prompt, the answer target_new competes with): target_true on the rewrite and
        // paraphrase prompts; on a neighbourhood prompt, its own answer where the data gives one.
        let mut prompts = vec![(r.full_prompt(), old.clone())];
        prompts.extend(
            case.paraphrase_prompts
                .iter()
                .map(|p| (p.clone(), old.clone())),
        );
        // A neighbour whose own answer is target_new itself cannot tell the two apart (p > p
        // never holds), so NS leaves it out; its token-accuracy locality still reads it.
        prompts.extend(
            case.neighborhood_prompts
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), spaced(case.neighborhood_target(i))))
                .filter(|(_, answer)| answer.trim() != new.trim()),
        );
        let mut pairs = Vec::with_capacity(prompts.len() * 2);
        for (p, old) in &prompts {
            pairs.push((p.as_str(), new.as_str()));
            pairs.push((p.as_str(), old.as_str()));
        }
        let scores = lm.score(&pairs)?;
        let p: Vec<(f64, f64)> = scores
            .chunks(2)
            .map(|s| {
                (
                    (-s[0].mean_nll() as f64).exp(),
                    (-s[1].mean_nll() as f64).exp(),
                )
            })
            .collect();
        let np = case.paraphrase_prompts.len();
        let (p_new, p_old): (Vec<f64>, Vec<f64>) = p.iter().copied().unzip();
        let es = compare(&p_new[..1], &p_old[..1]).expect("rewrite prompt");
        let ps = compare(&p_new[1..1 + np], &p_old[1..1 + np]);
        let ns = compare(&p_old[1 + np..], &p_new[1 + np..]);
        out.push(CaseMetrics {
            case_id: case.case_id.clone(),
            es: es.0,
            em: es.1,
            ps: ps.map(|x| x.0),
            pm: ps.map(|x| x.1),
            ns: ns.map(|x| x.0),
            nm: ns.map(|x| x.1),
            token_acc: None,
        });
    }
    Ok(out)
}

fn mean(xs: impl Iterator<Item = Option<f64>>) -> f64 {
    let v: Vec<f64> = xs.flatten().collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// How S is averaged over a cell's cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ScoreMean {
    /// The harmonic mean of the cell's mean ES, PS and NS (ROME's and EasyEdit's summaries).
    #[default]
    Cell,
    /// The mean over cases of each case's harmonic mean of its ES, PS and NS: a case whose edit
    /// failed (ES 0) scores 0, whatever its PS and NS.
    Case,
}

impl ScoreMean {
    /// What S is, as a report says it.
    pub fn describe(self) -> &'static str {
        match self {
            ScoreMean::Cell => {
                "the harmonic mean of each cell's mean ES, PS and NS (`--s-mean cell`, ROME's way)"
            }
            ScoreMean::Case => {
                "the mean over each cell's cases of each case's harmonic mean of ES, PS and NS (`--s-mean case`)"
            }
        }
    }
}

impl std::str::FromStr for ScoreMean {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cell" => Ok(ScoreMean::Cell),
            "case" => Ok(ScoreMean::Case),
            _ => Err(format!("expected cell or case, got {s:?}")),
        }
    }
}

/// The harmonic mean of the parts that are there (not NaN); 0 when one is 0.
fn harmonic(parts: [f64; 3]) -> f64 {
    let parts: Vec<f64> = parts.into_iter().filter(|x| !x.is_nan()).collect();
    if parts.contains(&0.0) {
        0.0
    } else {
        parts.len() as f64 / parts.iter().map(|x| 1.0 / x).sum::<f64>()
    }
}

/// Means over cases, and S of the case means ([`ScoreMean::Cell`]).
pub fn summarize(m: &[CaseMetrics]) -> Summary {
    summarize_as(m, ScoreMean::Cell)
}

/// Means over cases, and S averaged as `how` says.
pub fn summarize_as(m: &[CaseMetrics], how: ScoreMean) -> Summary {
    let es = mean(m.iter().map(|c| Some(c.es)));
    let ps = mean(m.iter().map(|c| c.ps));
    let ns = mean(m.iter().map(|c| c.ns));
    let score = match how {
        ScoreMean::Cell => harmonic([es, ps, ns]),
        ScoreMean::Case => mean(m.iter().map(|c| {
            let or_nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
            Some(harmonic([c.es, or_nan(c.ps), or_nan(c.ns)]))
        })),
    };
    Summary {
        cases: m.len(),
        es,
        ps,
        ns,
        em: mean(m.iter().map(|c| Some(c.em))),
        pm: mean(m.iter().map(|c| c.pm)),
        nm: mean(m.iter().map(|c| c.nm)),
        score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores written to a progress or results file and read back are the same f64s, so a resumed
    /// run reports what an uninterrupted one does (serde_json's `float_roundtrip`; without it,
    /// the first value, a SmolLM2 PS, came back one ulp lower).
    #[test]
    fn scores_survive_json_to_the_bit() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut values = vec![0.9660804903957897_f64, 1.0 / 3.0, 2e-308, 0.1 + 0.2];
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x >> 2) * if x & 1 == 0 { 1.0 } else { -1.0 });
        }
        for v in values.into_iter().filter(|v| v.is_finite()) {
            let m = CaseMetrics {
                case_id: "c".into(),
                es: v,
                ps: Some(v),
                ns: None,
                em: v,
                pm: None,
                nm: None,
                token_acc: None,
            };
            let back: CaseMetrics =
                serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            assert!(
                back.es.to_bits() == v.to_bits(),
                "{v:e} came back {:e}",
                back.es
            );
        }
    }

    #[test]
    fn summary_is_the_harmonic_mean() {
        let c = |es, ps, ns| CaseMetrics {
            case_id: "x".into(),
            es,
            ps: Some(ps),
            ns: Some(ns),
            em: 0.0,
            pm: Some(0.0),
            nm: Some(0.0),
            token_acc: None,
        };
        let s = summarize(&[c(1.0, 0.5, 1.0), c(1.0, 0.5, 0.0)]);
        assert_eq!((s.es, s.ps, s.ns), (1.0, 0.5, 0.5));
        assert!((s.score - 3.0 / (1.0 + 2.0 + 2.0)).abs() < 1e-12);
        // Per case: 3/(1 + 2 + 1) = 0.75 and 0 (its NS is 0), mean 0.375.
        let per_case = summarize_as(&[c(1.0, 0.5, 1.0), c(1.0, 0.5, 0.0)], ScoreMean::Case);
        assert_eq!((per_case.es, per_case.ps, per_case.ns), (s.es, s.ps, s.ns));
        assert!((per_case.score - 0.375).abs() < 1e-12, "{}", per_case.score);
        let (wins, margin) = compare(&[0.2, 0.1], &[0.1, 0.3]).unwrap();
        assert_eq!(wins, 0.5);
        assert!((margin + 0.05).abs() < 1e-12);
    }
}
