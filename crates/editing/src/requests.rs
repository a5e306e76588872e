//! Requests files: the S2RKE release format (one object per subject with a `Star_Topology` list),
//! CounterFact (one object per case, targets as `{"str": ...}`), and EasyEdit's flat records
//! (one object per case: KnowEdit and EasyEdit's CounterFact, `prompt` / `target_new` /
//! `ground_truth`; ZsRE, `src` / `alt` / `answers`), whose locality prompts carry their own
//! answers. Each record says its format by its fields, so one file may mix them. Errors name the
//! file, the record and the field.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{EditCase, EditRequest};

struct Ctx<'a> {
    file: &'a Path,
    record: String,
}

impl Ctx<'_> {
    fn err(&self, field: &str, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: record {}: field `{field}` {what}",
            self.file.display(),
            self.record
        )
    }
    fn str<'v>(&self, v: &'v Value, field: &str) -> Result<&'v str> {
        match v.get(field) {
            None => Err(self.err(field, "is missing")),
            Some(x) => x.as_str().ok_or_else(|| self.err(field, "is not a string")),
        }
    }
    /// A target: a plain string (S2RKE, EasyEdit), `{"str": ...}` (CounterFact), or a list whose
    /// first element is one (ZsRE's `answers`, KnowEdit's `ground_truth`: EasyEdit takes the
    /// first, however deep the lists go).
    fn target(&self, v: &Value, field: &str) -> Result<String> {
        match v.get(field) {
            None => Err(self.err(field, "is missing")),
            Some(t) => first_string(t).map_err(|what| self.err(field, what)),
        }
    }
    /// A string or a list of strings (EasyEdit's prompts come either way); missing is empty.
    fn one_or_more(&self, v: &Value, field: &str) -> Result<Vec<String>> {
        match v.get(field) {
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            _ => self.strings(v, field),
        }
    }
    fn strings(&self, v: &Value, field: &str) -> Result<Vec<String>> {
        match v.get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.err(field, "holds a non-string"))
                })
                .collect(),
            Some(_) => Err(self.err(field, "is not a list of strings")),
        }
    }
    fn request(&self, rw: &Value, subject: Option<&str>, fields: &Fields) -> Result<EditRequest> {
        let mut prompt = self.str(rw, fields.prompt)?.to_owned();
        let subject = match subject {
            Some(s) => s.to_owned(),
            None => self.str(rw, "subject")?.to_owned(),
        };
        if subject.trim().is_empty() {
            return Err(self.err("subject", "is empty"));
        }
        // EasyEdit's prompts hold the subject itself; EasyEdit's ROME replaces it with `{}`. Its
        // first occurrence becomes the template's `{}`, so the filled-in prompt is the same text
        // and the subject's token positions are the first occurrence's, as in EasyEdit.
        if !prompt.contains("{}") && prompt.contains(&subject) {
            prompt = prompt.replacen(&subject, "{}", 1);
        }
        match prompt.matches("{}").count() {
            0 => {
                return Err(self.err(
                    fields.prompt,
                    &format!("has neither `{{}}` nor the subject {subject:?}"),
                ))
            }
            1 => {}
            // EasyEdit's `prompt.format(subject)` fails on these too.
            n => {
                return Err(self.err(
                    fields.prompt,
                    &format!("has {n} `{{}}`; exactly one marks where the subject goes"),
                ))
            }
        }
        let target = |field| -> Result<String> {
            let t = self.target(rw, field)?;
            // An empty target has no tokens to score, so every metric on it would be vacuous.
            if t.trim().is_empty() {
                return Err(self.err(field, "is empty"));
            }
            Ok(t)
        };
        Ok(EditRequest {
            prompt,
            subject,
            relation: rw
                .get("relation")
                .or_else(|| rw.get("relation_id"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            target_new: target(fields.target_new)?,
            target_true: target(fields.target_true)?,
        })
    }
}

impl Ctx<'_> {
    /// One of EasyEdit's flat records (`fields` says which: [`EASYEDIT`] or [`ZSRE`]).
    fn easyedit(&self, rec: &Value, case_id: String, fields: &Fields) -> Result<EditCase> {
        let request = self.request(rec, None, fields)?;
        let mut paraphrase_prompts = Vec::new();
        for field in ["rephrase_prompt", "rephrase"] {
            paraphrase_prompts.extend(self.one_or_more(rec, field)?);
        }
        // (kind, prompt, answer): `loc` and `locality_prompt` are EasyEdit's `neighborhood`
        // kind (run_zsre's key).
        let mut locality: Vec<(String, String, String)> = Vec::new();
        for (p, a) in [
            ("loc", "loc_ans"),
            ("locality_prompt", "locality_ground_truth"),
        ] {
            let prompts = self.one_or_more(rec, p)?;
            if prompts.is_empty() {
                continue;
            }
            let answers = match rec.get(a) {
                Some(Value::Array(v)) if prompts.len() > 1 => {
                    let answers: std::result::Result<Vec<String>, _> =
                        v.iter().map(first_string).collect();
                    answers.map_err(|what| self.err(a, what))?
                }
                _ => vec![self.target(rec, a)?],
            };
            if answers.len() != prompts.len() {
                return Err(self.err(
                    a,
                    &format!(
                        "has {} answers for {} prompts in `{p}`",
                        answers.len(),
                        prompts.len()
                    ),
                ));
            }
            locality.extend(
                prompts
                    .into_iter()
                    .zip(answers)
                    .map(|(p, a)| ("neighborhood".to_owned(), p, a)),
            );
        }
        locality.extend(self.named_lists(rec, "locality")?);
        // ZsRE's one-hop question: `portability: {"New Question", "New Answer"}`.
        let zsre_hop = rec
            .get("portability")
            .filter(|p| p.get("New Question").is_some());
        let portability = match zsre_hop {
            Some(hop) => {
                let question = hop["New Question"]
                    .as_str()
                    .ok_or_else(|| self.err("portability.New Question", "is not a string"))?;
                let answer = first_string(hop.get("New Answer").unwrap_or(&Value::Null))
                    .map_err(|what| self.err("portability.New Answer", what))?;
                vec![("one_hop".to_owned(), question.to_owned(), answer)]
            }
            None => self.named_lists(rec, "portability")?,
        };
        let (neighborhood_kinds, neighborhood_prompts, mut neighborhood_targets) =
            by_kind(locality);
        let (portability_kinds, portability_prompts, portability_targets) = by_kind(portability);
        // Canonical: no own answers where every neighbour answers target_true (CounterFact's
        // neighbours written as EasyEdit's), so such a case is the case it was written from.
        if neighborhood_targets
            .iter()
            .all(|a| *a == request.target_true)
        {
            neighborhood_targets.clear();
        }
        // `subject_id`: kedit's own field (EasyEdit ignores it), so that two subjects with one
        // name (S2RKE's homonyms) stay apart through `kedit data convert`.
        let subject_id = match rec.get("subject_id") {
            None => request.subject.clone(),
            Some(v) => id_of(v),
        };
        Ok(EditCase {
            case_id,
            subject_id,
            request,
            paraphrase_prompts,
            neighborhood_prompts,
            neighborhood_targets,
            neighborhood_kinds,
            portability_prompts,
            portability_targets,
            portability_kinds,
        })
    }

    /// KnowEdit's `locality` and `portability`: `{"Relation_Specificity": [{"prompt",
    /// "ground_truth"}], ...}`, read as EasyEdit's run_knowedit does: the first answer, however
    /// deep the lists go, and an item with an empty answer dropped. Kinds in name order.
    fn named_lists(&self, rec: &Value, field: &str) -> Result<Vec<(String, String, String)>> {
        let Some(v) = rec.get(field) else {
            return Ok(Vec::new());
        };
        let Value::Object(kinds) = v else {
            return Err(self.err(field, "is not an object of named lists"));
        };
        let mut out = Vec::new();
        for (kind, items) in kinds {
            let items = match items {
                Value::Array(a) => a.as_slice(),
                Value::Null => &[],
                o => std::slice::from_ref(o),
            };
            for (j, item) in items.iter().enumerate() {
                let at = format!("{field}.{kind}[{j}]");
                let prompt = self
                    .target(item, "prompt")
                    .map_err(|_| self.err(&at, "has no string `prompt`"))?;
                let answer = self
                    .target(item, "ground_truth")
                    .map_err(|_| self.err(&at, "has no string `ground_truth`"))?;
                if !answer.trim().is_empty() {
                    out.push((kind.clone(), prompt, answer));
                }
            }
        }
        Ok(out)
    }
}

/// (kinds, prompts, answers), ordered by kind (a stable sort: in each kind, the data's order);
/// the kinds left empty where there are fewer than two, which average as one.
fn by_kind(mut items: Vec<(String, String, String)>) -> (Vec<String>, Vec<String>, Vec<String>) {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut kinds, mut prompts, mut answers) = (Vec::new(), Vec::new(), Vec::new());
    for (k, p, a) in items {
        kinds.push(k);
        prompts.push(p);
        answers.push(a);
    }
    if kinds.iter().all(|k| *k == kinds[0]) {
        kinds.clear();
    }
    (kinds, prompts, answers)
}

/// `cases` as EasyEdit's flat records, in the shape its KnowEdit loader and `run_knowedit` read
/// (`subject`, `prompt` with the subject in it, `target_new`, `ground_truth`, `locality` and
/// `portability` as named lists of `{prompt, ground_truth}`), with the paraphrases as
/// `rephrase_prompt` (a string where there is one, EasyEdit's CounterFact form) and kedit's
/// `case_id`, `subject_id` and `relation`, which EasyEdit ignores. Neighbours and portability
/// questions go under their kinds; without kinds, neighbours answered by target_true go under
/// `Relation_Specificity` (CounterFact's neighbours: the same relation and true object), those
/// with their own answers under `Forgetfulness`, portability under `Reasoning`. [`load_cases`]
/// reads the records back as the same cases.
pub fn to_easyedit(cases: &[EditCase]) -> Vec<Value> {
    // {kind: [{prompt, ground_truth}]}, kinds in the order met (the reader sorts them by name).
    fn named(items: impl Iterator<Item = (String, String, String)>) -> Value {
        let mut out = serde_json::Map::new();
        for (kind, prompt, answer) in items {
            let item = serde_json::json!({"prompt": prompt, "ground_truth": [answer]});
            match out.get_mut(&kind) {
                Some(Value::Array(list)) => list.push(item),
                _ => {
                    out.insert(kind, Value::Array(vec![item]));
                }
            }
        }
        Value::Object(out)
    }
    cases
        .iter()
        .map(|c| {
            let r = &c.request;
            let default_kind = if c.neighborhood_targets.is_empty() {
                "Relation_Specificity"
            } else {
                "Forgetfulness"
            };
            let locality = named(c.neighborhood_prompts.iter().enumerate().map(|(i, p)| {
                let kind = c.neighborhood_kinds.get(i).map_or(default_kind, |k| k);
                (
                    kind.to_owned(),
                    p.clone(),
                    c.neighborhood_target(i).to_owned(),
                )
            }));
            let mut rec = serde_json::json!({
                "case_id": c.case_id,
                "subject_id": c.subject_id,
                "subject": r.subject,
                "relation": r.relation,
                "prompt": r.full_prompt(),
                "target_new": r.target_new,
                "ground_truth": r.target_true,
                "locality": locality,
            });
            match c.paraphrase_prompts.as_slice() {
                [] => {}
                [one] => rec["rephrase_prompt"] = one.clone().into(),
                many => rec["rephrase_prompt"] = many.into(),
            }
            if !c.portability_prompts.is_empty() {
                let items = c
                    .portability_prompts
                    .iter()
                    .zip(&c.portability_targets)
                    .enumerate()
                    .map(|(i, (p, a))| {
                        let kind = c.portability_kinds.get(i).map_or("Reasoning", |k| k);
                        (kind.to_owned(), p.clone(), a.clone())
                    });
                rec["portability"] = named(items);
            }
            rec
        })
        .collect()
}

/// An id as written, number or string (`7` and `"7"` are the same id).
fn id_of(v: &Value) -> String {
    v.to_string().trim_matches('"').to_owned()
}

/// A target's text: a string, `{"str": ...}`, or a list whose first element is one.
fn first_string(mut t: &Value) -> std::result::Result<String, &'static str> {
    while let Value::Array(a) = t {
        t = a.first().ok_or("is an empty list")?;
    }
    match t {
        Value::String(s) => Ok(s.clone()),
        o => o
            .get("str")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or("is neither a string nor {\"str\": ...}"),
    }
}

/// S2RKE's and CounterFact's `requested_rewrite`.
const COUNTERFACT: Fields = Fields {
    prompt: "prompt",
    target_new: "target_new",
    target_true: "target_true",
};

/// EasyEdit's own records (KnowEdit, its CounterFact split, `editor.edit`'s arguments saved).
const EASYEDIT: Fields = Fields {
    prompt: "prompt",
    target_new: "target_new",
    target_true: "ground_truth",
};

/// ZsRE as EasyEdit's ZsreDataset reads it: the question, `alt` the new answer, `answers[0]` the
/// true one.
const ZSRE: Fields = Fields {
    prompt: "src",
    target_new: "alt",
    target_true: "answers",
};

/// Where a record format keeps the request's prompt and targets.
struct Fields {
    prompt: &'static str,
    target_new: &'static str,
    target_true: &'static str,
}

/// Read a requests file in any of the formats.
pub fn load_cases(file: &Path) -> Result<Vec<EditCase>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read requests file", file.display()))?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", file.display()))?;
    parse_cases(file, &json)
}

/// The cases of a requests file's JSON, already read; `file` names it in errors.
pub fn parse_cases(file: &Path, json: &Value) -> Result<Vec<EditCase>> {
    let Value::Array(records) = json else {
        bail!("{}: expected a JSON list of records", file.display());
    };
    let mut cases: Vec<EditCase> = Vec::new();
    // case_id → the record that gave it: results are keyed by case_id, so a repeat would make
    // two cases' lines indistinguishable (and a resumed run skip one of them).
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut skipped = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let before = cases.len();
        if let Some(star) = rec.get("Star_Topology") {
            let sid = rec.get("subjectID").map_or(i.to_string(), id_of);
            let ctx = Ctx {
                file,
                record: format!("{i} (subjectID {sid})"),
            };
            let subject = rec
                .get("subject")
                .and_then(|s| s.get("name").or(Some(s)))
                .and_then(Value::as_str)
                .ok_or_else(|| ctx.err("subject.name", "is missing"))?;
            let Value::Array(star) = star else {
                return Err(ctx.err("Star_Topology", "is not a list"));
            };
            for (j, e) in star.iter().enumerate() {
                let ctx = Ctx {
                    file,
                    record: format!("{i} (subjectID {sid}) Star_Topology[{j}]"),
                };
                let rw = e
                    .get("requested_rewrite")
                    .ok_or_else(|| ctx.err("requested_rewrite", "is missing"))?;
                cases.push(EditCase {
                    case_id: format!("s{sid}r{j}"),
                    subject_id: sid.clone(),
                    request: ctx.request(rw, Some(subject), &COUNTERFACT)?,
                    paraphrase_prompts: ctx.strings(e, "paraphrase_prompts")?,
                    neighborhood_prompts: ctx.strings(e, "neighborhood_prompts")?,
                    ..Default::default()
                });
            }
        } else {
            let ctx = Ctx {
                file,
                record: i.to_string(),
            };
            let case_id = rec.get("case_id").map_or(i.to_string(), id_of);
            let case = if let Some(rw) = rec.get("requested_rewrite") {
                let request = ctx.request(rw, None, &COUNTERFACT)?;
                EditCase {
                    case_id,
                    subject_id: request.subject.clone(),
                    request,
                    paraphrase_prompts: ctx.strings(rec, "paraphrase_prompts")?,
                    neighborhood_prompts: ctx.strings(rec, "neighborhood_prompts")?,
                    ..Default::default()
                }
            } else if rec.get("src").is_some() {
                // EasyEdit's ZsreDataset drops these records; so does kedit, and says so.
                if rec.get("alt").and_then(Value::as_str) == Some("") {
                    skipped.push(i);
                    continue;
                }
                ctx.easyedit(rec, case_id, &ZSRE)?
            } else if rec.get("prompt").is_some() {
                ctx.easyedit(rec, case_id, &EASYEDIT)?
            } else {
                return Err(ctx.err(
                    "requested_rewrite",
                    "is missing, and the record is not EasyEdit's either (no `prompt` or `src`)",
                ));
            };
            cases.push(case);
        }
        for c in &cases[before..] {
            let field = if rec.get("Star_Topology").is_some() {
                "subjectID"
            } else {
                "case_id"
            };
            if let Some(first) = seen.insert(c.case_id.clone(), i.to_string()) {
                bail!(
                    "{}: record {i}: field `{field}`: case id {} repeats record {first}'s",
                    file.display(),
                    c.case_id
                );
            }
        }
    }
    if let Some(first) = skipped.first() {
        tracing::warn!(
            "{}: skipped {} ZsRE record(s) with an empty `alt`, as EasyEdit's ZsreDataset does (the first: record {first})",
            file.display(),
            skipped.len()
        );
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(s: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), s).unwrap();
        f
    }

    #[test]
    fn reads_s2rke_and_counterfact() {
        let s2 = write(
            r#"[{"subjectID": 7, "subject": {"name": "Danielle Darrieux"}, "Star_Topology": [
            {"requested_rewrite": {"prompt": "The mother tongue of {} is", "relation": "P103",
              "target_true": "French", "target_new": "English"},
             "paraphrase_prompts": ["Danielle Darrieux speaks"], "neighborhood_prompts": ["Léon Blum speaks"]}]}]"#,
        );
        let c = load_cases(s2.path()).unwrap();
        assert_eq!(c[0].case_id, "s7r0");
        assert_eq!(
            c[0].request.full_prompt(),
            "The mother tongue of Danielle Darrieux is"
        );
        assert_eq!(c[0].neighborhood_prompts, vec!["Léon Blum speaks"]);
        let cf = write(
            r#"[{"case_id": 3, "requested_rewrite": {"prompt": "{} plays the", "subject": "Toko Yasuda",
            "relation_id": "P1303", "target_new": {"str": "piano"}, "target_true": {"str": "guitar"}}}]"#,
        );
        let c = load_cases(cf.path()).unwrap();
        assert_eq!(
            (c[0].case_id.as_str(), c[0].request.target_new.as_str()),
            ("3", "piano")
        );
    }

    #[test]
    fn errors_name_file_record_and_field() {
        let f = write(
            r#"[{"case_id": 1, "requested_rewrite": {"prompt": "{} plays", "subject": "X", "target_new": {"str": "a"}}}]"#,
        );
        let e = format!("{:#}", load_cases(f.path()).unwrap_err());
        assert!(
            e.contains("record 0") && e.contains("`target_true` is missing"),
            "{e}"
        );
        let f = write(
            r#"[{"requested_rewrite": {"prompt": "plays the", "subject": "X", "target_new": "a", "target_true": "b"}}]"#,
        );
        let e = format!("{:#}", load_cases(f.path()).unwrap_err());
        assert!(
            e.contains("`prompt` has neither `{}` nor the subject")
                && e.contains(&f.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn vacuous_ambiguous_or_repeated_records_are_refused() {
        let rec = |id: &str, prompt: &str, subject: &str, new: &str| {
            format!(
                r#"{{"case_id": {id}, "requested_rewrite": {{"prompt": "{prompt}", "subject": "{subject}", "target_new": "{new}", "target_true": "b"}}}}"#
            )
        };
        let err = |records: &[String]| {
            let f = write(&format!("[{}]", records.join(",")));
            format!("{:#}", load_cases(f.path()).unwrap_err())
        };
        let ok = rec("1", "{} plays", "X", " a");
        let f = write(&format!("[{ok}]"));
        assert_eq!(load_cases(f.path()).unwrap().len(), 1);
        let e = err(&[rec("1", "{} plays", "X", " ")]);
        assert!(e.contains("record 0: field `target_new` is empty"), "{e}");
        let e = err(&[rec("1", "{} plays", "", " a")]);
        assert!(e.contains("field `subject` is empty"), "{e}");
        let e = err(&[rec("1", "{} and {} play", "X", " a")]);
        assert!(e.contains("field `prompt` has 2 `{}`"), "{e}");
        let e = err(&[ok.clone(), rec("2", "{} sings", "Y", " c"), ok.clone()]);
        assert!(
            e.contains("record 2: field `case_id`: case id 1 repeats record 0's"),
            "{e}"
        );
        let star = r#"{"subjectID": 7, "subject": {"name": "D"}, "Star_Topology": [
            {"requested_rewrite": {"prompt": "{} speaks", "target_true": "French", "target_new": "English"}}]}"#;
        let f = write(&format!("[{star}, {star}]"));
        let e = format!("{:#}", load_cases(f.path()).unwrap_err());
        assert!(
            e.contains("record 1: field `subjectID`: case id s7r0 repeats record 0's"),
            "{e}"
        );
    }

    /// One fact in each of EasyEdit's record formats reads as the same request as in
    /// CounterFact's, the subject found in the prompt; the locality prompts keep their answers.
    #[test]
    fn reads_easyedit_knowedit_and_zsre_records() {
        let cf = write(
            r#"[{"case_id": 0, "requested_rewrite": {"prompt": "What university did {} attend?", "subject": "Watts Humphrey",
            "target_new": "University of Michigan", "target_true": "Illinois Institute of Technology"}}]"#,
        );
        let want = load_cases(cf.path()).unwrap().remove(0).request;
        let f = write(
            r#"[
            {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
             "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
             "rephrase": "What university did Watts Humphrey take part in?",
             "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving",
             "portability": {"New Question": "In which state is the university Watts Humphrey attended?", "New Answer": "Michigan"}},
            {"subject": "Watts Humphrey", "src": "Which school did Watts Humphrey attend?", "alt": "", "answers": ["x"]},
            {"subject": "Watts Humphrey", "prompt": "What university did Watts Humphrey attend?",
             "target_new": "University of Michigan", "ground_truth": ["Illinois Institute of Technology"],
             "rephrase_prompt": "Where did Watts Humphrey study?",
             "locality_prompt": "The capital of France is", "locality_ground_truth": "Paris"},
            {"case_id": "k1", "subject": "Watts Humphrey", "prompt": "What university did Watts Humphrey attend?",
             "target_new": "University of Michigan", "ground_truth": "Illinois Institute of Technology",
             "portability": {"Reasoning": [{"prompt": "The university Watts Humphrey attended is in the state of", "ground_truth": ["Michigan"]}],
               "Subject_Aliasing": [{"prompt": "What university did Watts S. Humphrey attend?", "ground_truth": "University of Michigan"}]},
             "locality": {"Relation_Specificity": [
                 {"prompt": "The occupation of Watts Humphrey is", "ground_truth": [["software engineer", "engineer"]]},
                 {"prompt": "Watts Humphrey was born in", "ground_truth": [""]}],
               "Forgetfulness": [{"prompt": "Watts Humphrey, whose employer is", "ground_truth": "IBM"}]}}
            ]"#,
        );
        let c = load_cases(f.path()).unwrap();
        // The record with an empty `alt` is dropped, as EasyEdit's ZsreDataset drops it.
        assert_eq!(c.len(), 3);
        for case in &c {
            assert_eq!(case.request, want, "{}", case.case_id);
            assert_eq!(case.subject_id, "Watts Humphrey");
            assert_eq!(
                case.neighborhood_targets.len(),
                case.neighborhood_prompts.len()
            );
        }
        let ids: Vec<&str> = c.iter().map(|c| c.case_id.as_str()).collect();
        assert_eq!(ids, ["0", "2", "k1"]);
        assert_eq!(
            c[0].paraphrase_prompts,
            ["What university did Watts Humphrey take part in?"]
        );
        assert_eq!(c[0].neighborhood_target(0), "Hugo Weaving");
        assert_eq!(c[1].paraphrase_prompts, ["Where did Watts Humphrey study?"]);
        assert_eq!(
            (
                c[1].neighborhood_prompts[0].as_str(),
                c[1].neighborhood_target(0)
            ),
            ("The capital of France is", "Paris")
        );
        // KnowEdit's locality lists in key order, the empty answer dropped, the first alias kept.
        assert_eq!(
            c[2].neighborhood_prompts,
            [
                "Watts Humphrey, whose employer is",
                "The occupation of Watts Humphrey is"
            ]
        );
        assert_eq!(c[2].neighborhood_targets, ["IBM", "software engineer"]);
        // Two kinds, which EasyEdit averages apart; one kind needs no name.
        assert_eq!(
            c[2].neighborhood_kinds,
            ["Forgetfulness", "Relation_Specificity"]
        );
        assert!(c[0].neighborhood_kinds.is_empty() && c[1].neighborhood_kinds.is_empty());
        assert_eq!(c[2].portability_kinds, ["Reasoning", "Subject_Aliasing"]);
        assert!(c[0].portability_kinds.is_empty());
        // Portability: ZsRE's one-hop question; KnowEdit's kinds in name order.
        assert_eq!(
            (
                c[0].portability_prompts.as_slice(),
                c[0].portability_targets.as_slice()
            ),
            (
                &["In which state is the university Watts Humphrey attended?".to_owned()][..],
                &["Michigan".to_owned()][..]
            )
        );
        assert!(c[1].portability_prompts.is_empty());
        assert_eq!(
            c[2].portability_prompts,
            [
                "The university Watts Humphrey attended is in the state of",
                "What university did Watts S. Humphrey attend?"
            ]
        );
        assert_eq!(
            c[2].portability_targets,
            ["Michigan", "University of Michigan"]
        );
        assert!(c[2].paraphrase_prompts.is_empty());
        // CounterFact's neighbours answer target_true.
        let cf = load_cases(write(
            r#"[{"requested_rewrite": {"prompt": "{} plays", "subject": "X", "target_new": "a", "target_true": "b"},
                "neighborhood_prompts": ["Y plays"]}]"#,
        ).path()).unwrap();
        assert_eq!(cf[0].neighborhood_target(0), "b");
    }

    #[test]
    fn easyedit_records_errors_name_the_field() {
        let err = |rec: &str| {
            let f = write(&format!("[{rec}]"));
            format!("{:#}", load_cases(f.path()).unwrap_err())
        };
        let e =
            err(r#"{"subject": "Y", "prompt": "X plays", "target_new": "a", "ground_truth": "b"}"#);
        assert!(
            e.contains("record 0: field `prompt` has neither `{}` nor the subject \"Y\""),
            "{e}"
        );
        let e = err(r#"{"subject": "X", "src": "X plays?", "alt": "a"}"#);
        assert!(e.contains("field `answers` is missing"), "{e}");
        let e =
            err(r#"{"subject": "X", "prompt": "X plays", "target_new": "a", "ground_truth": []}"#);
        assert!(e.contains("field `ground_truth` is an empty list"), "{e}");
        let e = err(
            r#"{"subject": "X", "prompt": "X plays", "target_new": "a", "ground_truth": "b",
                "locality_prompt": ["P", "Q"], "locality_ground_truth": ["p"]}"#,
        );
        assert!(
            e.contains("field `locality_ground_truth` has 1 answers for 2 prompts"),
            "{e}"
        );
        let e = err(
            r#"{"subject": "X", "prompt": "X plays", "target_new": "a", "ground_truth": "b",
                "locality": {"Forgetfulness": [{"prompt": "P"}]}}"#,
        );
        assert!(
            e.contains("field `locality.Forgetfulness[0]` has no string `ground_truth`"),
            "{e}"
        );
        let e = err(
            r#"{"subject": "X", "src": "X plays?", "alt": "a", "answers": ["b"],
                "portability": {"New Question": "Y?", "New Answer": 3}}"#,
        );
        assert!(
            e.contains("field `portability.New Answer` is neither"),
            "{e}"
        );
        let e = err(r#"{"subject": "X", "question": "X plays"}"#);
        assert!(
            e.contains("`requested_rewrite` is missing, and the record is not EasyEdit's"),
            "{e}"
        );
    }

    /// Every committed S2RKE record, written as EasyEdit's flat record by [`to_easyedit`] (the
    /// subject inside the prompt, the neighbours under `locality` answered by target_true), reads
    /// back as itself; so do EasyEdit's own records with their own answers and portability.
    #[test]
    fn easyedit_records_written_read_back_as_the_same_cases() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let easyedit = write(
            r#"[{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
             "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
             "rephrase": "What university did Watts Humphrey take part in?",
             "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving",
             "portability": {"New Question": "In which state is the university Watts Humphrey attended?", "New Answer": "Michigan"}},
            {"subject": "Watts Humphrey", "prompt": "What university did Watts Humphrey attend?",
             "target_new": "University of Michigan", "ground_truth": "Illinois Institute of Technology",
             "loc": "The capital of France is", "loc_ans": "Paris",
             "portability": {"Reasoning": [{"prompt": "R?", "ground_truth": "r"}], "Logical_Generalization": [{"prompt": "L?", "ground_truth": "l"}]},
             "locality": {"Relation_Specificity": [{"prompt": "The occupation of Watts Humphrey is", "ground_truth": "engineer"}],
               "Forgetfulness": [{"prompt": "Watts Humphrey, whose employer is", "ground_truth": "IBM"}]}}]"#,
        );
        for file in [
            dir.join("s2rke-wikidata.json"),
            dir.join("s2rke-wikidata-deep.json"),
            easyedit.path().to_owned(),
        ] {
            let cases = load_cases(&file).unwrap();
            let flat = to_easyedit(&cases);
            assert!(flat.iter().all(|r| r["prompt"]
                .as_str()
                .unwrap()
                .contains(r["subject"].as_str().unwrap())));
            let f = write(&serde_json::to_string(&flat).unwrap());
            let back = load_cases(f.path()).unwrap();
            assert_eq!(back.len(), cases.len());
            if file == easyedit.path() {
                assert_eq!(
                    back[1].neighborhood_kinds,
                    ["Forgetfulness", "Relation_Specificity", "neighborhood"]
                );
            }
            for (b, c) in back.iter().zip(&cases) {
                assert_eq!(b, c, "{}", file.display());
            }
        }
    }
}
