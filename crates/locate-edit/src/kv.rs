//! What ROME, MEMIT and PMET share before they differ: prompts with the key position (`fact_token`)
//! located, activations read there, and keys averaged over context templates.

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use kedit_editing::EditRequest;
use kedit_models::{CausalLm, Interventions, LanguageModel, Site};

/// Where a method reads its keys and adds its offset δ (EasyEdit's and ROME's `fact_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactToken {
    /// The subject's last token (every released config): the key is nearly the subject's alone.
    SubjectLast,
    /// The prompt's last token, after the relation: a key that carries the relation too. ROME's
    /// code has it as `last`; there its v* position is the rewriting prompt's last token, which for
    /// a multi-token target lies inside the target, so kedit takes the prompt's last token for
    /// both the key and δ (the position the key u is read at).
    Last,
}

impl FactToken {
    /// The hparams value, checked: a one-line error naming the file and the field.
    pub fn parse(file: &str, token: &str) -> Result<Self> {
        match token {
            "subject_last" => Ok(Self::SubjectLast),
            "last" => Ok(Self::Last),
            _ => bail!(
                "{file}: field `fact_token`: expected `subject_last` or `last`, got {token:?}"
            ),
        }
    }
}

/// A tokenised prompt and the position its key is read at (`fact_token`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub lookup: usize,
}

/// `text_with_slot` with `{}` filled by `subject`, and where `fact_token` sits in it.
pub fn lookup<B: Backend>(
    lm: &LanguageModel<B>,
    text_with_slot: &str,
    subject: &str,
    fact_token: FactToken,
) -> Result<Prompt> {
    let at = text_with_slot
        .find("{}")
        .with_context(|| format!("prompt {text_with_slot:?} has no {{}}"))?;
    let prefix = format!("{}{subject}", &text_with_slot[..at]);
    let full = text_with_slot.replacen("{}", subject, 1);
    let ids = lm.encode(&full)?;
    let n = lm.encode(&prefix)?.len();
    if n == 0 || n > ids.len() {
        bail!("subject {subject:?} not found in the tokens of {full:?}");
    }
    let lookup = match fact_token {
        FactToken::SubjectLast => n - 1,
        FactToken::Last => ids.len() - 1,
    };
    Ok(Prompt { ids, lookup })
}

/// The request's prompt inside every context template, kept in the templates' groups.
pub fn template_prompts<B: Backend>(
    lm: &LanguageModel<B>,
    groups: &[Vec<String>],
    req: &EditRequest,
    fact_token: FactToken,
) -> Result<Vec<Vec<Prompt>>> {
    groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|t| {
                    lookup(
                        lm,
                        &t.replacen("{}", &req.prompt, 1),
                        &req.subject,
                        fact_token,
                    )
                })
                .collect()
        })
        .collect()
}

pub fn host(t: Tensor<impl Backend, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

pub fn norm(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>().sqrt()
}

/// Rows per forward pass when reading activations: bounds memory for large batches.
const CHUNK: usize = 64;

/// The activation at `(layer, site)` at each prompt's key position, `[n][width]`.
pub fn at_lookup<B: Backend>(
    lm: &LanguageModel<B>,
    layer: usize,
    site: Site,
    prompts: &[&Prompt],
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(CHUNK) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let iv = Interventions::none().capture(layer, site).stop_after(layer);
        let fwd = lm.model.forward(lm.model.batch(&seqs), &iv);
        let a = fwd.captured[&(layer, site)].clone();
        let [b, s, d] = a.dims();
        let flat = a.reshape([b * s, d]);
        out.extend(
            chunk
                .iter()
                .enumerate()
                .map(|(i, p)| host(flat.clone().narrow(0, i * s + p.lookup, 1).reshape([d]))),
        );
    }
    out
}

/// How keys of several templates make one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Average {
    /// Every template alike (ROME).
    Flat,
    /// Within each template group, then across groups (MEMIT, PMET).
    ByGroup,
}

fn mean(rows: &[&Vec<f32>]) -> Vec<f32> {
    let d = rows[0].len();
    (0..d)
        .map(|j| rows.iter().map(|k| k[j]).sum::<f32>() / rows.len() as f32)
        .collect()
}

/// The MLP keys at `layer` of every request in every template, averaged into one key per
/// request (`[requests][d_ff]`), with the per-template keys of each request (`[requests][templates]`,
/// groups flattened in order).
#[allow(clippy::type_complexity)]
pub fn request_keys<B: Backend>(
    lm: &LanguageModel<B>,
    layer: usize,
    prompts: &[Vec<Vec<Prompt>>],
    how: Average,
) -> (Vec<Vec<f32>>, Vec<Vec<Vec<f32>>>) {
    let flat: Vec<&Prompt> = prompts.iter().flatten().flatten().collect();
    let mut keys = at_lookup(lm, layer, Site::MlpKey, &flat).into_iter();
    let mut averaged = Vec::with_capacity(prompts.len());
    let mut each = Vec::with_capacity(prompts.len());
    for groups in prompts {
        let per_group: Vec<Vec<Vec<f32>>> = groups
            .iter()
            .map(|g| keys.by_ref().take(g.len()).collect())
            .collect();
        let all: Vec<&Vec<f32>> = per_group.iter().flatten().collect();
        averaged.push(match how {
            Average::Flat => mean(&all),
            Average::ByGroup => {
                let means: Vec<Vec<f32>> = per_group
                    .iter()
                    .map(|g| mean(&g.iter().collect::<Vec<_>>()))
                    .collect();
                mean(&means.iter().collect::<Vec<_>>())
            }
        });
        each.push(per_group.into_iter().flatten().collect());
    }
    (averaged, each)
}
