//! Reports over a directory of results files: S per condition, SD = S(homogeneous) −
//! S(heterogeneous) in points with a 95 % bootstrap interval over groups, key cosines, as
//! Markdown, CSV and SVG.
//!
//! S is the harmonic mean of ES, PS and NS averaged over the cases of a cell first (ROME's way).
//! A `curve` run's lines scored after k edits make the cell of N = k, kept apart from a run of
//! N = k by `of` (the curve run's N): its groups are the first k edits of groups of `of`.
//! The bootstrap resamples matched group pairs (group g of the homogeneous plan and of the
//! heterogeneous plan share a seed and a first edit), 2000 times with a fixed seed, percentile
//! interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kedit_s2rke_data::plan::{Density, Design, Order, Strategy};

use crate::bench::{GroupPerplexity, ResultLine, Results};
use crate::key_efficacy::{self, KeyPoint};
use crate::{summarize_as, ScoreMean, Summary};

mod bootstrap;
mod csv;
mod density;
mod fluency;
mod markdown;
mod svg;
mod token_acc;

use bootstrap::{bootstrap_ci, bootstrap_ci_two};
pub(crate) use bootstrap::{bootstrap_draws, percentile};
use density::{density_rows, DensityCells};
pub use fluency::FluencyRow;
use markdown::fixed_or_sci;
pub(crate) use svg::svg_open;
pub use token_acc::TokenAccRow;

/// Which cases of a group are scored (both after the group's last edit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum View {
    /// Every edit of the group.
    All,
    /// Only the first edit, after the other N−1.
    First,
}

impl View {
    pub fn name(self) -> &'static str {
        match self {
            View::All => "all",
            View::First => "first",
        }
    }
    fn keeps(self, l: &ResultLine) -> bool {
        self == View::All || l.step == 0
    }
}

/// The cell of a comparison: everything but the order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    pub method: String,
    pub strategy: Strategy,
    pub design: Design,
    /// Edits applied when the cell's lines were scored.
    pub n: usize,
    /// For a `curve` run's lines, the run's N (its groups are prefixes of groups of `of`).
    pub of: Option<usize>,
}

impl Cell {
    /// N as the tables print it: `3`, or `3 of 8` for a curve run's prefixes.
    pub fn n_label(&self) -> String {
        match self.of {
            Some(of) => format!("{} of {of}", self.n),
            None => self.n.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SdRow {
    pub cell: Cell,
    pub view: View,
    pub groups: usize,
    pub homogeneous: Summary,
    pub heterogeneous: Summary,
    /// Points (×100).
    pub sd: f64,
    pub ci: (f64, f64),
}

#[derive(Debug, Clone)]
pub struct DensityRow {
    pub method: String,
    pub strategy: Strategy,
    pub density: Density,
    pub n: usize,
    pub groups: usize,
    pub summary: Summary,
    /// 95 % bootstrap interval of S (points) over the groups.
    pub ci: (f64, f64),
    /// S − S(low density) in points, with its 95 % interval (the two densities' groups resampled
    /// each on its own: their groups are drawn independently, so there are no pairs). None for
    /// the low row, or where no low row has the same method, strategy and N.
    pub vs_low: Option<(f64, (f64, f64))>,
    /// Sequential cells: mean ES of the edits a later edit of the same subject followed in their
    /// group (None where there are none: low density, or batch cells), and of the rest (each
    /// subject's last edit). What the study's mechanism predicts: the first falls, the second not.
    pub es_followed: Option<f64>,
    pub es_last: Option<f64>,
    /// 95 % bootstrap interval over groups of `es_followed − es_last` (paired: each group's
    /// followed and last edits are resampled together).
    pub es_split_ci: Option<(f64, f64)>,
    /// Held-out perplexity after each group's edits, where the run measured it (`kedit bench
    /// --perplexity-tokens`): the density figures' fifth panel.
    pub perplexity: Option<DensityPerplexity>,
}

/// A density cell's held-out perplexity over its groups that carry it, compared as logs (a
/// broken group can weigh orders of magnitude, see [`PerplexityRow`]).
#[derive(Debug, Clone)]
pub struct DensityPerplexity {
    pub groups: usize,
    pub tokens: usize,
    pub unedited: f64,
    /// Geometric mean over groups, with its 95 % bootstrap interval.
    pub edited: f64,
    pub ci: (f64, f64),
    /// The worst group.
    pub max: f64,
    /// Geometric mean against the low-density cell's (same method, strategy, N and tokens), with
    /// a 95 % interval from resampling each cell's groups on its own (no pairs, as for S). None
    /// for the low row, or where no low row has it.
    pub vs_low: Option<(f64, (f64, f64))>,
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub method: String,
    pub same: (f64, usize),
    pub different: (f64, usize),
}

/// Groups of one order with no group of the other order to pair with (a run of one order only,
/// or an interrupted one): scored (view `all`), but no SD.
#[derive(Debug, Clone)]
pub struct UnpairedRow {
    pub cell: Cell,
    pub order: Order,
    pub groups: usize,
    pub summary: Summary,
}

/// Held-out perplexity after a cell's N edits of one subject against N edits of N subjects
/// (`kedit bench --perplexity-tokens`), over the matched group pairs that both carry it.
/// Perplexities of edited models span orders of magnitude (a broken group weighs thousands), so
/// they are compared as logs: geometric means, and the ratio homogeneous / heterogeneous as the
/// exponential of the mean log ratio of matched pairs, with a 95 % bootstrap interval over pairs.
#[derive(Debug, Clone)]
pub struct PerplexityRow {
    pub cell: Cell,
    pub groups: usize,
    pub tokens: usize,
    pub unedited: f64,
    pub homogeneous: f64,
    pub heterogeneous: f64,
    /// Worst group of each side.
    pub max: (f64, f64),
    pub ratio: f64,
    pub ci: (f64, f64),
    /// Geometric means of the groups' update norms ‖W − W₀‖_F, homogeneous and heterogeneous,
    /// where every pair's lines carry them.
    pub update_norm: Option<(f64, f64)>,
}

impl PerplexityRow {
    /// Where the ratio's 95 % interval lies against 1: `Greater`, same-subject edits cost the
    /// model more; `Less`, less; `Equal`, the interval includes 1.
    pub fn interval_side(&self) -> std::cmp::Ordering {
        if self.ci.0 > 1.0 {
            std::cmp::Ordering::Greater
        } else if self.ci.1 < 1.0 {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Equal
        }
    }
}

pub struct Report {
    pub sd: Vec<SdRow>,
    pub unpaired: Vec<UnpairedRow>,
    pub density: Vec<DensityRow>,
    pub keys: Vec<KeyRow>,
    /// A point per group for the key-cosine-against-efficacy figure ([`crate::key_efficacy`]).
    pub key_points: Vec<KeyPoint>,
    pub perplexity: Vec<PerplexityRow>,
    /// Generation fluency per cell and order, where a run read it (`kedit bench --fluency`).
    pub fluency: Vec<FluencyRow>,
    /// EasyEdit's token accuracies per cell and view, where a run read them (`kedit bench
    /// --token-acc`).
    pub token_acc: Vec<TokenAccRow>,
    /// How S was averaged over each cell's cases.
    pub score_mean: ScoreMean,
}

/// Every `*.jsonl` results file under each of `dirs` (recursively), each file once however many
/// of `dirs` reach it, sorted by path.
pub fn results_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(d).with_context(|| format!("{}: cannot read", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "jsonl") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let mut found = Vec::new();
        walk(dir, &mut found)?;
        if found.is_empty() {
            anyhow::bail!("{}: no *.jsonl results files", dir.display());
        }
        for f in found {
            let real = f
                .canonicalize()
                .with_context(|| format!("{}: cannot resolve", f.display()))?;
            files.entry(real).or_insert(f);
        }
    }
    let mut files: Vec<PathBuf> = files.into_values().collect();
    files.sort();
    Ok(files)
}

/// The lines of `files` ([`results_files`]). Two files holding the same line (the same method,
/// cell, group, scoring and case: one run's results copied, or a profile rerun into another
/// folder) are an error naming both, since the tables would count that group twice.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<ResultLine>> {
    type Identity = (String, Strategy, Design, Order, Option<Density>, usize, u64);
    let mut seen: BTreeMap<(Identity, crate::bench::LineKey), usize> = BTreeMap::new();
    let mut lines = Vec::new();
    for (i, f) in files.iter().enumerate() {
        for l in Results::read(f)? {
            let id = (
                l.method.clone(),
                l.strategy,
                l.design,
                l.order,
                l.density,
                l.n,
                l.seed,
            );
            if let Some(&j) = seen.get(&(id.clone(), l.key())) {
                if j != i {
                    anyhow::bail!(
                        "{} and {}: both hold {} {} group {} case {} (one run's results twice?); report them apart",
                        files[j].display(),
                        f.display(),
                        l.method,
                        l.order.name(),
                        l.group,
                        l.metrics.case_id
                    );
                }
            }
            seen.insert((id, l.key()), i);
            lines.push(l);
        }
    }
    Ok(lines)
}

fn s_of(lines: &[&ResultLine], how: ScoreMean) -> Summary {
    summarize_as(
        &lines.iter().map(|l| l.metrics.clone()).collect::<Vec<_>>(),
        how,
    )
}

/// S(same subject) − S(different subjects) in points. Equal S reached from different ES/PS/NS
/// (harmonic means of 1, 0.6, 0.5 and of 1, 1, 0.375) differ in the last bits of an f64; they
/// are equal, not "lower".
fn sd_points(homogeneous: &Summary, heterogeneous: &Summary) -> f64 {
    let sd = 100.0 * (homogeneous.score - heterogeneous.score);
    if sd.abs() < 1e-9 {
        0.0
    } else {
        sd
    }
}

/// exp(mean of the logs): the mean of quantities spanning orders of magnitude.
fn geometric_mean(xs: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = xs.len() as f64;
    (xs.map(f64::ln).sum::<f64>() / n).exp()
}

/// The report with S as ROME averages it ([`ScoreMean::Cell`]).
pub fn build(lines: &[ResultLine]) -> Report {
    build_as(lines, ScoreMean::Cell)
}

/// The report with S averaged over each cell's cases as `how` says.
pub fn build_as(lines: &[ResultLine], how: ScoreMean) -> Report {
    type GroupKey = (u64, usize);
    let mut cells: BTreeMap<Cell, [BTreeMap<GroupKey, Vec<&ResultLine>>; 2]> = BTreeMap::new();
    let mut dens: DensityCells = BTreeMap::new();
    for l in lines {
        if let Some(d) = l.density {
            dens.entry((l.method.clone(), l.strategy, d, l.n))
                .or_default()
                .entry((l.seed, l.group))
                .or_default()
                .push(l);
            continue;
        }
        let cell = Cell {
            method: l.method.clone(),
            strategy: l.strategy,
            design: l.design,
            n: l.after.unwrap_or(l.n),
            of: l.after.map(|_| l.n),
        };
        let side = (l.order == Order::Heterogeneous) as usize;
        cells.entry(cell).or_default()[side]
            .entry((l.seed, l.group))
            .or_default()
            .push(l);
    }
    let mut sd = Vec::new();
    let mut unpaired = Vec::new();
    let mut perplexity = Vec::new();
    let mut fluency = Vec::new();
    let mut token_acc = Vec::new();
    for (cell, [homo, hetero]) in &cells {
        if let Some(row) = perplexity_row(cell, homo, hetero) {
            perplexity.push(row);
        }
        for (order, side) in [(Order::Homogeneous, homo), (Order::Heterogeneous, hetero)] {
            fluency.extend(fluency::fluency_row(cell, order, side));
        }
        for (order, side, other) in [
            (Order::Homogeneous, homo, hetero),
            (Order::Heterogeneous, hetero, homo),
        ] {
            let alone: Vec<&Vec<&ResultLine>> = side
                .iter()
                .filter(|(k, _)| !other.contains_key(k))
                .map(|(_, ls)| ls)
                .collect();
            if !alone.is_empty() {
                let lines: Vec<&ResultLine> =
                    alone.iter().flat_map(|ls| ls.iter().copied()).collect();
                unpaired.push(UnpairedRow {
                    cell: cell.clone(),
                    order,
                    groups: alone.len(),
                    summary: s_of(&lines, how),
                });
            }
        }
        let groups: Vec<GroupKey> = homo
            .keys()
            .filter(|k| hetero.contains_key(k))
            .copied()
            .collect();
        if groups.is_empty() {
            continue;
        }
        for view in [View::All, View::First] {
            token_acc.extend(token_acc::token_acc_row(cell, view, homo, hetero));
            let pick = |side: &BTreeMap<GroupKey, Vec<&ResultLine>>, gs: &[GroupKey]| {
                let v: Vec<&ResultLine> = gs
                    .iter()
                    .flat_map(|g| side[g].iter().copied())
                    .filter(|l| view.keeps(l))
                    .collect();
                s_of(&v, how)
            };
            let (h, t) = (pick(homo, &groups), pick(hetero, &groups));
            let ci = bootstrap_ci(groups.len(), |idx| {
                let gs: Vec<GroupKey> = idx.iter().map(|&i| groups[i]).collect();
                sd_points(&pick(homo, &gs), &pick(hetero, &gs))
            });
            sd.push(SdRow {
                cell: cell.clone(),
                view,
                groups: groups.len(),
                sd: sd_points(&h, &t),
                homogeneous: h,
                heterogeneous: t,
                ci,
            });
        }
    }
    let density = density_rows(dens, how);
    let mut by_method: BTreeMap<&str, [Vec<f64>; 2]> = BTreeMap::new();
    for l in lines {
        if let Some(c) = l.key_cos_first {
            by_method.entry(&l.method).or_default()[(!l.same_subject_as_first) as usize].push(c);
        }
    }
    let mean = |v: &[f64]| (v.iter().sum::<f64>() / v.len().max(1) as f64, v.len());
    let keys = by_method
        .into_iter()
        .map(|(m, [s, d])| KeyRow {
            method: m.to_owned(),
            same: mean(&s),
            different: mean(&d),
        })
        .collect();
    Report {
        sd,
        unpaired,
        density,
        keys,
        key_points: key_efficacy::points(lines),
        perplexity,
        fluency,
        token_acc,
        score_mean: how,
    }
}

/// The perplexity row of a cell: its matched group pairs whose lines carry perplexity on the same
/// tokens on both sides; `None` where there are none.
fn perplexity_row<K: Ord + Copy>(
    cell: &Cell,
    homo: &BTreeMap<K, Vec<&ResultLine>>,
    hetero: &BTreeMap<K, Vec<&ResultLine>>,
) -> Option<PerplexityRow> {
    let of = |ls: &Vec<&ResultLine>| ls.iter().find_map(|l| l.perplexity);
    let pairs: Vec<(GroupPerplexity, GroupPerplexity)> = homo
        .iter()
        .filter_map(|(k, ls)| Some((of(ls)?, of(hetero.get(k)?)?)))
        .filter(|(h, t)| h.tokens == t.tokens)
        .collect();
    let first = pairs.first()?;
    let logs: Vec<f64> = pairs
        .iter()
        .map(|(h, t)| h.edited.ln() - t.edited.ln())
        .collect();
    let mean_log = |idx: &[usize]| idx.iter().map(|&i| logs[i]).sum::<f64>() / idx.len() as f64;
    let ci = bootstrap_ci(logs.len(), mean_log);
    let all: Vec<usize> = (0..logs.len()).collect();
    let norms: Option<Vec<(f64, f64)>> = pairs
        .iter()
        .map(|(h, t)| Some((h.update_norm?, t.update_norm?)))
        .collect();
    let update_norm = norms.map(|v| {
        (
            geometric_mean(v.iter().map(|p| p.0)),
            geometric_mean(v.iter().map(|p| p.1)),
        )
    });
    let worst = |side: fn(&(GroupPerplexity, GroupPerplexity)) -> f64| {
        pairs.iter().map(side).fold(f64::NEG_INFINITY, f64::max)
    };
    Some(PerplexityRow {
        cell: cell.clone(),
        groups: pairs.len(),
        tokens: first.0.tokens,
        unedited: first.0.unedited,
        homogeneous: geometric_mean(pairs.iter().map(|p| p.0.edited)),
        heterogeneous: geometric_mean(pairs.iter().map(|p| p.1.edited)),
        max: (worst(|p| p.0.edited), worst(|p| p.1.edited)),
        ratio: mean_log(&all).exp(),
        ci: (ci.0.exp(), ci.1.exp()),
        update_norm,
    })
}

#[cfg(test)]
mod tests;
