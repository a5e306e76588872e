//! kedit-s2rke-data: S2RKE-format datasets built from Wikidata facts (ParaRel's T-REx facts and
//! patterns, KAMEL's facts), and experiment plans ([`plan`]). The official S2RKE.json is not
//! available here.
//!
//! Facts are grouped by subject label; KAMEL has no subject ids, so a label can name several
//! things ("Orlando" the city and the opera). Each relation has a coarse subject type (person,
//! place, work, organisation, or any); a label's facts are split by type, the untyped ones join its
//! largest typed cluster, and every cluster with at least `min_relations` relations is one
//! subject. For each subject every fact becomes one record of its `Star_Topology`: the prompt is
//! the relation's first ParaRel pattern whose `[Y]` ends the sentence, the paraphrase the next such
//! pattern, `target_new` another object of the same relation drawn with the seed (among the
//! relation's common objects, those of at least 5 facts, where there are any), and the
//! neighbourhood prompts the main pattern on other subjects with the same relation and the same
//! true object (CounterFact's rule; the S2RKE release's example also crosses relations).

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
    /// At most this many subjects (all with ≥ `prefer_relations` relations first, then drawn).
    pub subjects: usize,
    pub min_relations: usize,
    /// Subjects with at least this many relations are all kept (they make the large groups).
    pub prefer_relations: usize,
    /// At most this many records per subject.
    pub max_relations: usize,
    pub neighbours: usize,
    pub seed: u64,
    /// Subject labels left out entirely (a training split disjoint by subject from an
    /// evaluation set).
    pub exclude: BTreeSet<String>,
    /// One record per prompt within a subject: where two relations share their main pattern
    /// ("{} is located in" for P17 and P30), the later relation's record is left out, since a
    /// sequence editing both would ask the same question for two different answers.
    pub distinct_prompts: bool,
}

/// The coarse type of a relation's subject, to split homonyms.
fn subject_type(relation: &str) -> &'static str {
    match relation {
        "P19" | "P20" | "P27" | "P101" | "P103" | "P106" | "P108" | "P1303" | "P1412" | "P39"
        | "P413" | "P937" => "person",
        "P30" | "P36" | "P131" | "P1376" | "P190" | "P47" | "P37" | "P530" | "P610" | "P6"
        | "P2936" | "P206" | "P150" => "place",
        "P364" | "P449" | "P495" | "P136" | "P178" | "P176" | "P407" => "work",
        "P159" | "P127" | "P740" => "organisation",
        _ => "any",
    }
}

fn jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect()
}

fn sorted_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    Ok(files)
}

/// ParaRel patterns (`pattern_data/graphs_json/P*.jsonl`): those that end at the object.
pub fn load_patterns(dir: &Path) -> Result<Patterns> {
    let mut patterns = BTreeMap::new();
    for f in sorted_files(dir)? {
        if f.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        let rel = f.file_stem().unwrap().to_string_lossy().to_string();
        let usable: Vec<String> = jsonl(&f)?
            .iter()
            .map(|v| v["pattern"].as_str().unwrap_or("").trim().to_owned())
            .filter_map(|p| {
                p.strip_suffix("[Y].")
                    .or(p.strip_suffix("[Y] ."))
                    .map(|s| s.trim_end().replace("[X]", "{}"))
            })
            .filter(|p| p.matches("{}").count() == 1 && !p.contains("[Y]"))
            .collect();
        if !usable.is_empty() {
            patterns.insert(rel, usable);
        }
    }
    Ok(patterns)
}

/// Facts from a folder: ParaRel's `trex_lms_vocab` (`P*.jsonl`, `sub_label`/`obj_label`) or KAMEL
/// (`P*/{train,dev,test}.jsonl`, `obj_label` a list; its first object is taken). Only relations
/// in `patterns` are read.
pub fn load_facts(dir: &Path, patterns: &Patterns) -> Result<Vec<Fact>> {
    let mut facts = Vec::new();
    for f in sorted_files(dir)? {
        let rel = f.file_stem().unwrap().to_string_lossy().to_string();
        if !patterns.contains_key(&rel) {
            continue;
        }
        let files = if f.is_dir() {
            ["train", "dev", "test"]
                .iter()
                .map(|s| f.join(format!("{s}.jsonl")))
                .filter(|p| p.exists())
                .collect()
        } else {
            vec![f.clone()]
        };
        for file in files {
            for (i, v) in jsonl(&file)?.iter().enumerate() {
                let err =
                    |k: &str| format!("{}: line {}: field `{k}` is missing", file.display(), i + 1);
                let subject = v["sub_label"].as_str().with_context(|| err("sub_label"))?;
                let obj = &v["obj_label"];
                let first = obj.as_array().and_then(|a| a.first()).unwrap_or(obj);
                let object = first
                    .as_str()
                    .or(first["chosen"].as_str())
                    .with_context(|| err("obj_label"))?;
                facts.push(Fact {
                    subject: subject.to_owned(),
                    relation: rel.clone(),
                    object: object.to_owned(),
                });
            }
        }
    }
    if facts.is_empty() {
        bail!(
            "{}: no facts for the relations with patterns",
            dir.display()
        );
    }
    Ok(facts)
}

/// A subject: a label and the coarse type that separates its homonyms.
type SubjectKey<'a> = (&'a str, &'static str);

/// Build S2RKE records (the release format: one object per subject with `Star_Topology`).
pub fn build(facts: &[Fact], patterns: &Patterns, opt: &BuildOptions) -> Result<Vec<Value>> {
    // One fact per (label, relation): the first listed (ParaRel before KAMEL).
    let mut by_label: BTreeMap<&str, BTreeMap<&str, &Fact>> = BTreeMap::new();
    let mut objects: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut by_rel_obj: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for f in facts {
        if f.subject.trim().is_empty()
            || f.object.trim().is_empty()
            || f.subject == f.object
            || opt.exclude.contains(&f.subject)
        {
            continue;
        }
        by_label
            .entry(&f.subject)
            .or_default()
            .entry(&f.relation)
            .or_insert(f);
        objects.entry(&f.relation).or_default().insert(&f.object);
        by_rel_obj
            .entry((&f.relation, &f.object))
            .or_default()
            .insert(&f.subject);
    }
    // Split each label by coarse type; untyped relations join the largest typed cluster.
    let mut subjects: BTreeMap<SubjectKey, Vec<&Fact>> = BTreeMap::new();
    for (label, rels) in &by_label {
        let mut typed: BTreeMap<&'static str, Vec<&Fact>> = BTreeMap::new();
        let mut any = Vec::new();
        for (rel, f) in rels {
            match subject_type(rel) {
                "any" => any.push(*f),
                t => typed.entry(t).or_default().push(*f),
            }
        }
        let biggest = typed
            .iter()
            .max_by_key(|(t, v)| (v.len(), std::cmp::Reverse(**t)))
            .map(|(t, _)| *t)
            .unwrap_or("any");
        typed.entry(biggest).or_default().extend(any);
        for (t, fs) in typed {
            subjects.insert((label, t), fs);
        }
    }
    let eligible: Vec<SubjectKey> = subjects
        .iter()
        .filter(|(_, fs)| fs.len() >= opt.min_relations)
        .map(|(k, _)| *k)
        .collect();
    if eligible.is_empty() {
        bail!("no subject has facts in >= {} relations", opt.min_relations);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opt.seed);
    let (mut chosen, mut rest): (Vec<SubjectKey>, Vec<SubjectKey>) = eligible
        .iter()
        .partition(|k| subjects[*k].len() >= opt.prefer_relations);
    rest.shuffle(&mut rng);
    chosen.extend(rest);
    chosen.truncate(opt.subjects);
    chosen.sort();
    let mut out = Vec::new();
    for key in &chosen {
        let subject = key.0;
        let mut star = Vec::new();
        let mut prompts = BTreeSet::new();
        let mut fs = subjects[key].clone();
        fs.shuffle(&mut rng);
        fs.truncate(opt.max_relations);
        fs.sort_by_key(|f| f.relation.clone());
        for f in fs {
            let rel = f.relation.as_str();
            let pats = &patterns[rel];
            if opt.distinct_prompts && !prompts.insert(pats[0].as_str()) {
                continue;
            }
            // target_new: a common object of the relation (the object of ≥ 5 facts, as
            // CounterFact's counterfactual targets are well-known entities), else any other.
            let common: Vec<&&str> = objects[rel]
                .iter()
                .filter(|o| **o != f.object && by_rel_obj[&(rel, **o)].len() >= 5)
                .collect();
            let others: Vec<&&str> = if common.is_empty() {
                objects[rel].iter().filter(|o| **o != f.object).collect()
            } else {
                common
            };
            let Some(new) = others.choose(&mut rng) else {
                continue;
            };
            let mut neigh: Vec<&str> = by_rel_obj[&(rel, f.object.as_str())]
                .iter()
                .copied()
                .collect();
            neigh.shuffle(&mut rng);
            // A neighbour that names the subject ("Amsterdam Centraal" for "Amsterdam") is not a
            // different subject's prompt.
            neigh.retain(|s| !s.contains(subject) && !subject.contains(s));
            neigh.truncate(opt.neighbours);
            star.push(json!({
                "requested_rewrite": {"prompt": pats[0], "relation": rel, "target_true": f.object, "target_new": new},
                "paraphrase_prompts": pats.iter().skip(1).take(1).map(|p| p.replacen("{}", subject, 1)).collect::<Vec<_>>(),
                "neighborhood_prompts": neigh.iter().map(|s| pats[0].replacen("{}", s, 1)).collect::<Vec<_>>(),
            }));
        }
        // Records without a possible target_new are gone: the subject may now be too small.
        if star.len() >= opt.min_relations {
            out.push(json!({"subjectID": out.len(), "subject": {"name": subject, "type": key.1}, "Star_Topology": star}));
        }
    }
    Ok(out)
}

/// The statistics table of a built dataset (paper.md §2.1's format), as Markdown.
pub fn statistics(data: &[Value]) -> String {
    let sizes: Vec<usize> = data
        .iter()
        .map(|s| s["Star_Topology"].as_array().map_or(0, Vec::len))
        .collect();
    let records: usize = sizes.iter().sum();
    let relations: BTreeSet<&str> = data
        .iter()
        .flat_map(|s| s["Star_Topology"].as_array().into_iter().flatten())
        .filter_map(|e| e["requested_rewrite"]["relation"].as_str())
        .collect();
    let mut hist: BTreeMap<usize, usize> = BTreeMap::new();
    for s in &sizes {
        *hist.entry(*s).or_default() += 1;
    }
    format!(
        "| records | subjects | relations | min records/subject | max | avg |\n|---|---|---|---|---|---|\n| {records} | {} | {} | {} | {} | {:.2} |\n\nSubjects by records: {}\n",
        data.len(),
        relations.len(),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        records as f64 / data.len().max(1) as f64,
        hist.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(subject: &str, relation: &str, object: &str) -> Fact {
        Fact {
            subject: subject.into(),
            relation: relation.into(),
            object: object.into(),
        }
    }

    /// Every subject kept, two neighbours, no exclusions: each test changes what it is about.
    fn options(min_relations: usize, seed: u64) -> BuildOptions {
        BuildOptions {
            subjects: 10,
            min_relations,
            prefer_relations: 99,
            max_relations: 13,
            neighbours: 2,
            seed,
            exclude: BTreeSet::new(),
            distinct_prompts: false,
        }
    }

    #[test]
    fn builds_same_subject_records_with_other_objects() {
        let facts = vec![
            fact("A", "P1", "x"),
            fact("A", "P2", "y"),
            fact("B", "P1", "x"),
            fact("B", "P2", "z"),
            fact("C", "P1", "w"),
        ];
        let pats: BTreeMap<String, Vec<String>> = [
            ("P1".into(), vec!["{} is in".into(), "{} lies in".into()]),
            ("P2".into(), vec!["{} speaks".into()]),
        ]
        .into();
        let opt = BuildOptions {
            subjects: 2,
            ..options(2, 1)
        };
        let out = build(&facts, &pats, &opt).unwrap();
        assert_eq!(out.len(), 2);
        // An excluded label is gone, and is nobody's neighbour either.
        let without_a = BuildOptions {
            exclude: ["A".to_owned()].into(),
            ..opt
        };
        let rest = build(&facts, &pats, &without_a).unwrap();
        assert!(rest.iter().all(|s| s["subject"]["name"] != "A"));
        assert!(!serde_json::to_string(&rest).unwrap().contains("\"A "));
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

    #[test]
    fn distinct_prompts_leaves_out_a_subjects_second_record_of_one_prompt() {
        // P17 and P30 share "{} is located in": a same-subject sequence would ask it twice.
        let facts = vec![
            fact("Cuba", "P17", "Cuba"),
            fact("Catalonia", "P17", "Spain"),
            fact("Catalonia", "P30", "Europe"),
            fact("Catalonia", "P36", "Barcelona"),
            fact("Aragon", "P17", "France"),
            fact("Aragon", "P30", "Asia"),
            fact("Aragon", "P36", "Zaragoza"),
        ];
        let pats: Patterns = [
            ("P17".into(), vec!["{} is located in".into()]),
            ("P30".into(), vec!["{} is located in".into()]),
            ("P36".into(), vec!["The capital of {} is".into()]),
        ]
        .into();
        let opt = options(2, 0);
        let records_per_subject = |out: &[Value]| -> Vec<usize> {
            out.iter()
                .map(|s| s["Star_Topology"].as_array().unwrap().len())
                .collect()
        };
        let both = build(&facts, &pats, &opt).unwrap();
        assert_eq!(records_per_subject(&both), [3, 3]);
        let distinct = build(
            &facts,
            &pats,
            &BuildOptions {
                distinct_prompts: true,
                ..opt
            },
        )
        .unwrap();
        assert_eq!(records_per_subject(&distinct), [2, 2]);
        for s in &distinct {
            let rels: Vec<&str> = s["Star_Topology"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["requested_rewrite"]["relation"].as_str().unwrap())
                .collect();
            assert_eq!(rels, ["P17", "P36"], "the earlier relation's record stays");
        }
    }

    #[test]
    fn homonyms_are_split_by_subject_type() {
        // "Orlando" the city (place relations) and the opera (work relations) share a label.
        let facts = vec![
            fact("Orlando", "P131", "Florida"),
            fact("Orlando", "P30", "North America"),
            fact("Orlando", "P47", "Winter Park"),
            fact("Orlando", "P364", "Italian"),
            fact("Orlando", "P495", "Italy"),
            fact("Orlando", "P136", "opera"),
            fact("Orlando", "P138", "Roland"),
            fact("Tampa", "P131", "Texas"),
            fact("Tampa", "P30", "Europe"),
            fact("Tampa", "P47", "Clearwater"),
            fact("Aida", "P364", "French"),
            fact("Aida", "P495", "Egypt"),
            fact("Aida", "P136", "ballet"),
        ];
        let rels = ["P131", "P30", "P47", "P364", "P495", "P136", "P138"];
        let pats: Patterns = rels
            .iter()
            .map(|r| (r.to_string(), vec![format!("{{}} {r}")]))
            .collect();
        let opt = options(3, 0);
        let out = build(&facts, &pats, &opt).unwrap();
        let orlando: Vec<&Value> = out
            .iter()
            .filter(|s| s["subject"]["name"] == "Orlando")
            .collect();
        assert_eq!(orlando.len(), 2, "{out:#?}");
        let rel_set = |s: &Value| -> BTreeSet<String> {
            s["Star_Topology"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    e["requested_rewrite"]["relation"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        let sets: Vec<BTreeSet<String>> = orlando.iter().map(|s| rel_set(s)).collect();
        assert!(sets
            .iter()
            .any(|r| r.contains("P131") && !r.contains("P364")));
        assert!(sets
            .iter()
            .any(|r| r.contains("P364") && !r.contains("P131")));
        assert!(out
            .iter()
            .all(|s| s["Star_Topology"].as_array().unwrap().len() >= 3));
        assert!(
            out.iter().any(|s| s["subject"]["name"] == "Tampa"),
            "Tampa: 3 relations with alternatives"
        );
    }
}
