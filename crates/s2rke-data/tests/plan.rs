//! Plans on the committed dataset: the conditions mean what their names say, and the same seed
//! gives the same plan.

use std::collections::{BTreeSet, HashMap};

use kedit_s2rke_data::plan::{make_plan, Density, Design, Order, PlanSpec, Record, Strategy};
use serde_json::Value;

const MAIN: &str = "s2rke-wikidata.json";
const DEEP: &str = "s2rke-wikidata-deep.json";

fn fixture(name: &str) -> Value {
    let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn records() -> Vec<Record> {
    records_of(MAIN)
}

fn records_of(name: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for s in fixture(name).as_array().unwrap() {
        let sid = s["subjectID"].to_string();
        for (j, e) in s["Star_Topology"].as_array().unwrap().iter().enumerate() {
            out.push(Record {
                case_id: format!("s{sid}r{j}"),
                subject_id: sid.clone(),
                relation: e["requested_rewrite"]["relation"].as_str().unwrap().into(),
            });
        }
    }
    out
}

fn spec(design: Design, order: Order, n: usize) -> PlanSpec {
    PlanSpec {
        strategy: Strategy::Sequential,
        design,
        order,
        density: None,
        n,
        groups: 6,
        seed: 7,
        curve: false,
    }
}

#[test]
fn group_design_pairs_homogeneous_with_heterogeneous() {
    let recs = records();
    let info: HashMap<&str, &Record> = recs.iter().map(|r| (r.case_id.as_str(), r)).collect();
    for n in 2..=4 {
        let homo = make_plan(&recs, &spec(Design::Group, Order::Homogeneous, n)).unwrap();
        let hetero = make_plan(&recs, &spec(Design::Group, Order::Heterogeneous, n)).unwrap();
        assert_eq!(homo.groups.len(), 6);
        assert_eq!(hetero.groups.len(), 6);
        for (a, b) in homo.groups.iter().zip(&hetero.groups) {
            assert_eq!(a.case_ids.len(), n);
            assert_eq!(b.case_ids.len(), n);
            let subj = |g: &[String]| -> Vec<String> {
                g.iter()
                    .map(|c| info[c.as_str()].subject_id.clone())
                    .collect()
            };
            let (sa, sb) = (subj(&a.case_ids), subj(&b.case_ids));
            assert!(sa.iter().all(|s| *s == sa[0]), "homogeneous: one subject");
            let distinct: BTreeSet<_> = sb.iter().collect();
            assert_eq!(distinct.len(), n, "heterogeneous: n distinct subjects");
            assert_eq!(a.case_ids[0], b.case_ids[0], "the same first edit");
            let distinct_cases: BTreeSet<_> = a.case_ids.iter().collect();
            assert_eq!(distinct_cases.len(), n, "no record twice");
        }
    }
    let again = make_plan(&recs, &spec(Design::Group, Order::Heterogeneous, 3)).unwrap();
    assert_eq!(
        again,
        make_plan(&recs, &spec(Design::Group, Order::Heterogeneous, 3)).unwrap()
    );
}

#[test]
fn bracket_design_differs_only_in_the_last_subject() {
    let recs = records();
    let info: HashMap<&str, &Record> = recs.iter().map(|r| (r.case_id.as_str(), r)).collect();
    for n in [2, 5] {
        let homo = make_plan(&recs, &spec(Design::Bracket, Order::Homogeneous, n)).unwrap();
        let hetero = make_plan(&recs, &spec(Design::Bracket, Order::Heterogeneous, n)).unwrap();
        for (a, b) in homo.groups.iter().zip(&hetero.groups) {
            assert_eq!(a.case_ids.len(), n);
            assert_eq!(a.case_ids[..n - 1], b.case_ids[..n - 1]);
            let s = |c: &String| info[c.as_str()].subject_id.clone();
            assert_eq!(s(&a.case_ids[0]), s(&a.case_ids[n - 1]));
            assert_ne!(a.case_ids[0], a.case_ids[n - 1]);
            assert!(b.case_ids[..n - 1]
                .iter()
                .all(|c| s(c) != s(&b.case_ids[n - 1])));
            let middle: BTreeSet<_> = a.case_ids[1..n - 1].iter().map(s).collect();
            assert_eq!(middle.len(), n - 2);
            assert!(!middle.contains(&s(&a.case_ids[0])));
        }
    }
}

#[test]
fn density_groups_have_the_stated_edits_per_subject() {
    let recs = records();
    let info: HashMap<&str, &Record> = recs.iter().map(|r| (r.case_id.as_str(), r)).collect();
    for d in [Density::High, Density::Medium, Density::Low] {
        let mut s = spec(Design::Group, Order::Homogeneous, 6);
        s.density = Some(d);
        let plan = make_plan(&recs, &s).unwrap();
        assert!(!plan.groups.is_empty());
        for g in &plan.groups {
            let mut count: HashMap<&str, usize> = HashMap::new();
            for c in &g.case_ids {
                *count
                    .entry(info[c.as_str()].subject_id.as_str())
                    .or_default() += 1;
            }
            assert!(
                count.values().all(|&k| k == d.per_subject()),
                "{d:?}: {count:?}"
            );
        }
    }
}

#[test]
fn impossible_plans_name_the_flag() {
    let recs = records();
    let e = make_plan(&recs, &spec(Design::Group, Order::Homogeneous, 99))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("--n 99:") && !e.contains('\n'), "{e}");
    let mut s = spec(Design::Group, Order::Homogeneous, 4);
    s.density = Some(Density::High);
    let e = make_plan(&recs, &s).unwrap_err().to_string();
    assert!(e.starts_with("--n 4:"), "{e}");
}

/// The committed datasets keep the format's promises (issue 6, bar 3).
#[test]
fn committed_dataset_prompts_and_neighbourhoods() {
    for (name, min) in [(MAIN, 3), (DEEP, 8)] {
        committed_prompts_and_neighbourhoods(name, min);
    }
}

fn committed_prompts_and_neighbourhoods(name: &str, min_records: usize) {
    for s in fixture(name).as_array().unwrap() {
        let subject = s["subject"]["name"].as_str().unwrap();
        let star = s["Star_Topology"].as_array().unwrap();
        assert!(
            star.len() >= min_records,
            "{name}: {subject}: fewer than {min_records} records"
        );
        for e in star {
            let rw = &e["requested_rewrite"];
            let prompt = rw["prompt"].as_str().unwrap();
            let truth = rw["target_true"].as_str().unwrap();
            assert!(prompt.contains("{}"), "{prompt}");
            assert!(
                !prompt.trim_end().ends_with('.'),
                "prompt ends at the object: {prompt}"
            );
            assert!(
                !prompt.replacen("{}", subject, 1).contains(truth) || subject.contains(truth),
                "prompt gives the object away: {prompt} / {truth}"
            );
            assert_ne!(rw["target_new"], rw["target_true"]);
            for n in e["neighborhood_prompts"].as_array().unwrap() {
                assert!(
                    !n.as_str().unwrap().contains(subject),
                    "{n} mentions {subject}"
                );
            }
        }
    }
}

/// The deep set makes the paper's largest N: 8 edits of one subject, each with its own prompt,
/// against 8 edits of 8 subjects that start with the same fact.
#[test]
fn deep_dataset_makes_groups_of_eight() {
    for s in fixture(DEEP).as_array().unwrap() {
        let prompts: BTreeSet<&str> = s["Star_Topology"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["requested_rewrite"]["prompt"].as_str().unwrap())
            .collect();
        assert_eq!(
            prompts.len(),
            s["Star_Topology"].as_array().unwrap().len(),
            "{}: two records share a prompt",
            s["subject"]["name"]
        );
    }
    let recs = records_of(DEEP);
    let info: HashMap<&str, &Record> = recs.iter().map(|r| (r.case_id.as_str(), r)).collect();
    let homo = make_plan(&recs, &spec(Design::Group, Order::Homogeneous, 8)).unwrap();
    let hetero = make_plan(&recs, &spec(Design::Group, Order::Heterogeneous, 8)).unwrap();
    assert_eq!((homo.groups.len(), hetero.groups.len()), (6, 6));
    for (a, b) in homo.groups.iter().zip(&hetero.groups) {
        let subjects = |g: &[String]| -> BTreeSet<&str> {
            g.iter()
                .map(|c| info[c.as_str()].subject_id.as_str())
                .collect()
        };
        assert_eq!(subjects(&a.case_ids).len(), 1);
        assert_eq!(subjects(&b.case_ids).len(), 8);
        assert_eq!(a.case_ids[0], b.case_ids[0]);
    }
}

/// A curve plan is the plan of its N, scored more often: the same groups, its own file name, and
/// refused where the first k edits of a group are not a group of k of its kind.
#[test]
fn a_curve_plan_has_its_ns_groups_and_only_sequential_group_designs() {
    let recs = records_of(DEEP);
    let plain = spec(Design::Group, Order::Heterogeneous, 8);
    let curve = PlanSpec {
        curve: true,
        ..plain.clone()
    };
    let (a, b) = (
        make_plan(&recs, &plain).unwrap(),
        make_plan(&recs, &curve).unwrap(),
    );
    assert_eq!(a.groups, b.groups);
    assert_eq!(curve.label(), format!("{}-curve", plain.label()));
    for (bad, flag) in [
        (
            PlanSpec {
                strategy: Strategy::Batch,
                ..curve.clone()
            },
            "--strategy batch",
        ),
        (
            PlanSpec {
                design: Design::Bracket,
                ..curve.clone()
            },
            "--design bracket",
        ),
        (
            PlanSpec {
                density: Some(Density::Medium),
                n: 4,
                ..curve.clone()
            },
            "--density",
        ),
    ] {
        let e = make_plan(&recs, &bad).unwrap_err().to_string();
        assert!(e.starts_with("--curve") && e.contains(flag), "{e}");
    }
}
