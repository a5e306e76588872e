//! Experiment plans: which edits go together, in which order, and what is scored.
//!
//! A plan is data (serde), made from a dataset's records and a [`PlanSpec`] with a seed, so a run
//! can be resumed or sharded and anyone can rebuild the same plan. Each [`Group`] starts from the
//! unedited model; its edits are applied in `case_ids` order (sequential: one edit per step;
//! batch: all in one apply), and every case of the group is scored after the last edit. The
//! scoring views are read off the results: `all` = every case of the group, `first` = position 0.
//! A `curve` plan (sequential groups only) also scores the edits made so far after every edit:
//! the first k edits of a group of N are a group of k (the heterogeneous group's first k share
//! its first edit and relations with the homogeneous group's first k), so one run of N gives SD
//! at every N' ≤ N on the same subjects, for the edits of one run of N instead of 1 + 2 + … + N.
//!
//! The homogeneous and heterogeneous plans of one seed are built from the same random draws, so
//! group `g` of each is a matched pair:
//! - `group`: homogeneous = N records of one subject; heterogeneous = the same first record, then
//!   N−1 records of N−1 other, distinct subjects whose relations match the homogeneous group's
//!   where the data allows. The first edit is the same fact in both, so the `first` view isolates
//!   whether the later edits share its subject.
//! - `bracket`: first edit on subject A, N−2 edits on other distinct subjects (identical in both),
//!   and a last edit on A (homogeneous) or on a further subject with the same relation
//!   (heterogeneous).
//! - density: groups of N edits made of N/d subjects with d records each (high 3, medium 2,
//!   low 1), in a random order.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Sequential,
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Design {
    Group,
    Bracket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Homogeneous,
    Heterogeneous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Density {
    High,
    Medium,
    Low,
}

impl Density {
    /// Edits per subject.
    pub fn per_subject(self) -> usize {
        match self {
            Density::High => 3,
            Density::Medium => 2,
            Density::Low => 1,
        }
    }
}

macro_rules! names {
    ($t:ty { $($v:ident = $s:literal),* }) => {
        impl $t {
            pub fn name(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)*
                    _ => Err(format!("{s:?} is not one of: {}", [$($s),*].join(", "))),
                }
            }
        }
    };
}
names!(Strategy { Sequential = "sequential", Batch = "batch" });
names!(Design { Group = "group", Bracket = "bracket" });
names!(Order { Homogeneous = "homogeneous", Heterogeneous = "heterogeneous" });
names!(Density { High = "high", Medium = "medium", Low = "low" });

/// What to plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpec {
    pub strategy: Strategy,
    pub design: Design,
    pub order: Order,
    /// With a density, the groups mix subjects at that density and `order` is not used.
    pub density: Option<Density>,
    /// Edits per group.
    pub n: usize,
    /// At most this many groups (fewer where the data has fewer).
    pub groups: usize,
    pub seed: u64,
    /// Score after every edit, not only after the last (sequential groups only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub curve: bool,
}

impl PlanSpec {
    /// A file-name-safe label of the spec (the results file of a run).
    pub fn label(&self) -> String {
        let cond = match self.density {
            Some(d) => format!("density-{}", d.name()),
            None => self.order.name().to_owned(),
        };
        format!(
            "{}-{}-{}-n{}-g{}-s{}{}",
            self.strategy.name(),
            self.design.name(),
            cond,
            self.n,
            self.groups,
            self.seed,
            if self.curve { "-curve" } else { "" }
        )
    }
}

/// What a plan needs to know of a record.
#[derive(Debug, Clone)]
pub struct Record {
    pub case_id: String,
    pub subject_id: String,
    pub relation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub index: usize,
    /// The edits in application order; position 0 is the `first` edit.
    pub case_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub spec: PlanSpec,
    pub groups: Vec<Group>,
}

impl Plan {
    /// The edit steps of a group: one case per step (sequential) or all at once (batch).
    pub fn steps<'a>(&self, group: &'a Group) -> Vec<&'a [String]> {
        match self.spec.strategy {
            Strategy::Sequential => group.case_ids.chunks(1).collect(),
            Strategy::Batch => vec![&group.case_ids[..]],
        }
    }
}

/// Records by subject, subjects in dataset order.
fn by_subject(records: &[Record]) -> Vec<(String, Vec<usize>)> {
    let mut order: Vec<(String, Vec<usize>)> = Vec::new();
    let mut at = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let k = *at.entry(r.subject_id.clone()).or_insert_with(|| {
            order.push((r.subject_id.clone(), Vec::new()));
            order.len() - 1
        });
        order[k].1.push(i);
    }
    order
}

/// A record of a subject not in `used`, preferring `relation`; `None` if no subject is left.
fn pick_other(
    records: &[Record],
    subjects: &[(String, Vec<usize>)],
    used: &[String],
    relation: &str,
    rng: &mut ChaCha8Rng,
) -> Option<usize> {
    let free = |i: &&usize| !used.contains(&records[**i].subject_id);
    let same_rel: Vec<usize> = subjects
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .filter(free)
        .filter(|i| records[**i].relation == relation)
        .copied()
        .collect();
    if let Some(&i) = same_rel.choose(rng) {
        return Some(i);
    }
    let any: Vec<usize> = subjects
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .filter(free)
        .copied()
        .collect();
    any.choose(rng).copied()
}

/// Build the plan. Errors name the flag that cannot be satisfied.
pub fn make_plan(records: &[Record], spec: &PlanSpec) -> Result<Plan> {
    let subjects = by_subject(records);
    let largest = subjects.iter().map(|s| s.1.len()).max().unwrap_or(0);
    if spec.n == 0 {
        bail!("--n 0: a group needs at least one edit");
    }
    if spec.groups == 0 {
        bail!("--groups 0: nothing to run");
    }
    if spec.curve {
        // A prefix of a batch, a bracket or a density group is not a group of its kind.
        let not = if spec.strategy == Strategy::Batch {
            Some("--strategy batch (a batch's edits land at once)")
        } else if spec.design == Design::Bracket {
            Some("--design bracket (its first k edits are not a bracket)")
        } else if spec.density.is_some() {
            Some("--density (its first k edits do not keep the density)")
        } else {
            None
        };
        if let Some(not) = not {
            bail!("--curve scores sequential groups after every edit; not with {not}");
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let id = |i: usize| records[i].case_id.clone();
    let mut groups = Vec::new();

    if let Some(d) = spec.density {
        let per = d.per_subject();
        if !spec.n.is_multiple_of(per) {
            bail!(
                "--n {}: density {} puts {per} edits on each subject, so --n must be a multiple of {per}",
                spec.n,
                d.name()
            );
        }
        let mut eligible: Vec<usize> = (0..subjects.len())
            .filter(|&s| subjects[s].1.len() >= per)
            .collect();
        let need = spec.n / per;
        if eligible.len() < need {
            bail!(
                "--n {}: density {} needs {need} subjects with {per} records, the data has {}",
                spec.n,
                d.name(),
                eligible.len()
            );
        }
        eligible.shuffle(&mut rng);
        for (index, chunk) in eligible.chunks_exact(need).take(spec.groups).enumerate() {
            let mut ids = Vec::new();
            for &s in chunk {
                let mut rs = subjects[s].1.clone();
                rs.shuffle(&mut rng);
                ids.extend(rs[..per].iter().map(|&i| id(i)));
            }
            ids.shuffle(&mut rng);
            groups.push(Group {
                index,
                case_ids: ids,
            });
        }
        return Ok(Plan {
            spec: spec.clone(),
            groups,
        });
    }

    match spec.design {
        Design::Group => {
            if spec.n > largest {
                bail!(
                    "--n {}: no subject has {} records (the largest group has {largest})",
                    spec.n,
                    spec.n
                );
            }
            if spec.n > subjects.len() {
                bail!(
                    "--n {}: the heterogeneous group needs {} subjects, the data has {}",
                    spec.n,
                    spec.n,
                    subjects.len()
                );
            }
            let mut anchors: Vec<usize> = (0..subjects.len())
                .filter(|&s| subjects[s].1.len() >= spec.n)
                .collect();
            anchors.shuffle(&mut rng);
            for (index, &a) in anchors.iter().take(spec.groups).enumerate() {
                let mut rs = subjects[a].1.clone();
                rs.shuffle(&mut rng);
                let homo: Vec<usize> = rs[..spec.n].to_vec();
                let mut hetero = vec![homo[0]];
                let mut used = vec![subjects[a].0.clone()];
                for &r in &homo[1..] {
                    let Some(o) =
                        pick_other(records, &subjects, &used, &records[r].relation, &mut rng)
                    else {
                        bail!("--n {}: not enough distinct subjects", spec.n);
                    };
                    used.push(records[o].subject_id.clone());
                    hetero.push(o);
                }
                let chosen = match spec.order {
                    Order::Homogeneous => homo,
                    Order::Heterogeneous => hetero,
                };
                groups.push(Group {
                    index,
                    case_ids: chosen.into_iter().map(id).collect(),
                });
            }
        }
        Design::Bracket => {
            if spec.n < 2 {
                bail!(
                    "--n {}: a bracket needs a first and a last edit (n ≥ 2)",
                    spec.n
                );
            }
            if largest < 2 {
                bail!("--n {}: no subject has two records", spec.n);
            }
            if spec.n > subjects.len() {
                bail!(
                    "--n {}: a bracket of {} edits needs {} distinct subjects, the data has {}",
                    spec.n,
                    spec.n,
                    spec.n,
                    subjects.len()
                );
            }
            let mut anchors: Vec<usize> = (0..subjects.len())
                .filter(|&s| subjects[s].1.len() >= 2)
                .collect();
            anchors.shuffle(&mut rng);
            for (index, &a) in anchors.iter().take(spec.groups).enumerate() {
                let mut rs = subjects[a].1.clone();
                rs.shuffle(&mut rng);
                let (first, last_homo) = (rs[0], rs[1]);
                let mut used = vec![subjects[a].0.clone()];
                let mut middle = Vec::new();
                for _ in 0..spec.n - 2 {
                    let o = pick_other(records, &subjects, &used, "", &mut rng)
                        .expect("checked: enough subjects");
                    used.push(records[o].subject_id.clone());
                    middle.push(o);
                }
                let last_hetero = pick_other(
                    records,
                    &subjects,
                    &used,
                    &records[last_homo].relation,
                    &mut rng,
                );
                let last = match spec.order {
                    Order::Homogeneous => last_homo,
                    Order::Heterogeneous => match last_hetero {
                        Some(o) => o,
                        None => bail!(
                            "--n {}: no subject left for the heterogeneous last edit",
                            spec.n
                        ),
                    },
                };
                let mut ids = vec![id(first)];
                ids.extend(middle.into_iter().map(id));
                ids.push(id(last));
                groups.push(Group {
                    index,
                    case_ids: ids,
                });
            }
        }
    }
    Ok(Plan {
        spec: spec.clone(),
        groups,
    })
}
