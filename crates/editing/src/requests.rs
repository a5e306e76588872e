//! Requests files: the S2RKE release format (one object per subject with a `Star_Topology` list)
//! and CounterFact (one object per case, targets as `{"str": ...}`). Errors name the file, the
//! record and the field.

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
    /// A target: a plain string (S2RKE) or `{"str": ...}` (CounterFact).
    fn target(&self, v: &Value, field: &str) -> Result<String> {
        match v.get(field) {
            None => Err(self.err(field, "is missing")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(o) => o
                .get("str")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| self.err(field, "is neither a string nor {\"str\": ...}")),
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
    fn request(&self, rw: &Value, subject: Option<&str>) -> Result<EditRequest> {
        let prompt = self.str(rw, "prompt")?.to_owned();
        let subject = match subject {
            Some(s) => s.to_owned(),
            None => self.str(rw, "subject")?.to_owned(),
        };
        match prompt.matches("{}").count() {
            0 => {
                return Err(self.err(
                    "prompt",
                    &format!("has no `{{}}` where the subject {subject:?} goes"),
                ))
            }
            1 => {}
            // EasyEdit's `prompt.format(subject)` fails on these too.
            n => {
                return Err(self.err(
                    "prompt",
                    &format!("has {n} `{{}}`; exactly one marks where the subject goes"),
                ))
            }
        }
        if subject.trim().is_empty() {
            return Err(self.err("subject", "is empty"));
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
            target_new: target("target_new")?,
            target_true: target("target_true")?,
        })
    }
}

/// Read a requests file in either format.
pub fn load_cases(file: &Path) -> Result<Vec<EditCase>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read requests file", file.display()))?;
    let json: Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", file.display()))?;
    let Value::Array(records) = json else {
        bail!("{}: expected a JSON list of records", file.display());
    };
    let mut cases: Vec<EditCase> = Vec::new();
    // case_id → the record that gave it: results are keyed by case_id, so a repeat would make
    // two cases' lines indistinguishable (and a resumed run skip one of them).
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, rec) in records.iter().enumerate() {
        let before = cases.len();
        if let Some(star) = rec.get("Star_Topology") {
            let sid = rec.get("subjectID").map_or(i.to_string(), |v| {
                v.to_string().trim_matches('"').to_owned()
            });
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
                    request: ctx.request(rw, Some(subject))?,
                    paraphrase_prompts: ctx.strings(e, "paraphrase_prompts")?,
                    neighborhood_prompts: ctx.strings(e, "neighborhood_prompts")?,
                });
            }
        } else {
            let ctx = Ctx {
                file,
                record: i.to_string(),
            };
            let rw = rec
                .get("requested_rewrite")
                .ok_or_else(|| ctx.err("requested_rewrite", "is missing"))?;
            let case_id = rec.get("case_id").map_or(i.to_string(), |v| {
                v.to_string().trim_matches('"').to_owned()
            });
            let request = ctx.request(rw, None)?;
            cases.push(EditCase {
                case_id,
                subject_id: request.subject.clone(),
                request,
                paraphrase_prompts: ctx.strings(rec, "paraphrase_prompts")?,
                neighborhood_prompts: ctx.strings(rec, "neighborhood_prompts")?,
            });
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
            e.contains("`prompt` has no `{}`") && e.contains(&f.path().display().to_string()),
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
}
