//! kedit-s2rke-data: an S2RKE-format dataset built from ParaRel's Wikidata facts and paraphrase
//! patterns (the official S2RKE.json is not available here).
//!
//! For each chosen subject (one with facts in at least `min_relations` relations), every fact
//! becomes one record of its `Star_Topology`: the prompt is the relation's first pattern whose
//! `[Y]` ends the sentence, the paraphrase is the next such pattern, `target_new` is another object
//! of the same relation drawn with the seed, and the neighbourhood prompts are the main pattern on
//! other subjects with the same relation and the same true object.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Fact {
    pub subject: String,
    pub relation: String,
    pub object: String,
}

/// Usable prompt patterns per relation (`{}` for the subject, ending where the object goes).
pub type Patterns = BTreeMap<String, Vec<String>>;

pub struct BuildOptions {
    pub subjects: usize,
    pub min_relations: usize,
    pub neighbours: usize,
    pub seed: u64,
}

/// Read `trex_lms_vocab/P*.jsonl` and `pattern_data/graphs_json/P*.jsonl` under `dir`.
pub fn load_pararel(dir: &Path) -> Result<(Vec<Fact>, Patterns)> {
    let mut facts = Vec::new();
    let mut patterns = BTreeMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("trex_lms_vocab"))
        .with_context(|| format!("{}: no trex_lms_vocab folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        let rel = f.file_stem().unwrap().to_string_lossy().to_string();
        let pat_file = dir
            .join("pattern_data/graphs_json")
            .join(format!("{rel}.jsonl"));
        let Ok(text) = std::fs::read_to_string(&pat_file) else {
            continue;
        };
        // Only patterns that end at the object can prompt a causal LM.
        let usable: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| {
                let v: Value = serde_json::from_str(l)
                    .with_context(|| format!("{}: line {}", pat_file.display(), i + 1))?;
                Ok(v["pattern"].as_str().unwrap_or("").trim().to_owned())
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|p| {
                p.strip_suffix("[Y].")
                    .or(p.strip_suffix("[Y] ."))
                    .map(|s| s.trim_end().replace("[X]", "{}"))
            })
            .filter(|p| p.matches("{}").count() == 1 && !p.contains("[Y]"))
            .collect();
        if usable.is_empty() {
            continue;
        }
        patterns.insert(rel.clone(), usable);
        for (i, l) in std::fs::read_to_string(&f)?.lines().enumerate() {
            let v: Value = serde_json::from_str(l)
                .with_context(|| format!("{}: line {}", f.display(), i + 1))?;
            let field = |k: &str| {
                v[k].as_str().map(str::to_owned).with_context(|| {
                    format!("{}: line {}: field `{k}` is missing", f.display(), i + 1)
                })
            };
            facts.push(Fact {
                subject: field("sub_label")?,
                relation: rel.clone(),
                object: field("obj_label")?,
            });
        }
    }
    Ok((facts, patterns))
}

/// Build S2RKE records (the release format: one object per subject with `Star_Topology`).
pub fn build(
    facts: &[Fact],
    patterns: &BTreeMap<String, Vec<String>>,
    opt: &BuildOptions,
) -> Result<Vec<Value>> {
    let mut by_subject: BTreeMap<&str, BTreeMap<&str, &Fact>> = BTreeMap::new();
    let mut objects: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut by_rel_obj: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for f in facts {
        // One fact per (subject, relation): the first listed.
        by_subject
            .entry(&f.subject)
            .or_default()
            .entry(&f.relation)
            .or_insert(f);
        objects.entry(&f.relation).or_default().insert(&f.object);
        by_rel_obj
            .entry((&f.relation, &f.object))
            .or_default()
            .push(&f.subject);
    }
    let mut eligible: Vec<&str> = by_subject
        .iter()
        .filter(|(_, r)| r.len() >= opt.min_relations)
        .map(|(s, _)| *s)
        .collect();
    if eligible.len() < opt.subjects {
        bail!(
            "only {} subjects have facts in >= {} relations; asked for {}",
            eligible.len(),
            opt.min_relations,
            opt.subjects
        );
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opt.seed);
    eligible.shuffle(&mut rng);
    eligible.truncate(opt.subjects);
    eligible.sort();
    let mut out = Vec::new();
    for (sid, subject) in eligible.iter().enumerate() {
        let mut star = Vec::new();
        for (rel, f) in &by_subject[subject] {
            let pats = &patterns[*rel];
            let others: Vec<&&str> = objects[rel].iter().filter(|o| **o != f.object).collect();
            let Some(new) = others.choose(&mut rng) else {
                continue;
            };
            let mut neigh: Vec<&str> = by_rel_obj[&(*rel, f.object.as_str())]
                .iter()
                .copied()
                .filter(|s| s != subject)
                .collect();
            neigh.shuffle(&mut rng);
            // A neighbour that names the subject ("Amsterdam Centraal" for "Amsterdam") is not a
            // different subject's prompt; dropped after the shuffle so the seed's draws stay put.
            neigh.retain(|s| !s.contains(subject) && !subject.contains(s));
            neigh.truncate(opt.neighbours);
            star.push(json!({
                "requested_rewrite": {"prompt": pats[0], "relation": rel, "target_true": f.object, "target_new": new},
                "paraphrase_prompts": pats.iter().skip(1).take(1).map(|p| p.replacen("{}", subject, 1)).collect::<Vec<_>>(),
                "neighborhood_prompts": neigh.iter().map(|s| pats[0].replacen("{}", s, 1)).collect::<Vec<_>>(),
            }));
        }
        out.push(json!({"subjectID": sid, "subject": {"name": subject}, "source": "ParaRel (T-REx / Wikidata)", "Star_Topology": star}));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_same_subject_records_with_other_objects() {
        let f = |s: &str, r: &str, o: &str| Fact {
            subject: s.into(),
            relation: r.into(),
            object: o.into(),
        };
        let facts = vec![
            f("A", "P1", "x"),
            f("A", "P2", "y"),
            f("B", "P1", "x"),
            f("B", "P2", "z"),
            f("C", "P1", "w"),
        ];
        let pats: BTreeMap<String, Vec<String>> = [
            ("P1".into(), vec!["{} is in".into(), "{} lies in".into()]),
            ("P2".into(), vec!["{} speaks".into()]),
        ]
        .into();
        let opt = BuildOptions {
            subjects: 2,
            min_relations: 2,
            neighbours: 2,
            seed: 1,
        };
        let out = build(&facts, &pats, &opt).unwrap();
        assert_eq!(out.len(), 2);
        let a = &out[0];
        assert_eq!(a["subject"]["name"], "A");
        let r0 = &a["Star_Topology"][0];
        assert_eq!(r0["requested_rewrite"]["target_true"], "x");
        assert_ne!(r0["requested_rewrite"]["target_new"], "x");
        assert_eq!(r0["paraphrase_prompts"][0], "A lies in");
        assert_eq!(r0["neighborhood_prompts"][0], "B is in");
        assert_eq!(
            build(&facts, &pats, &opt).unwrap(),
            out,
            "same seed, same dataset"
        );
    }
}
