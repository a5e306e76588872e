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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kedit_s2rke_data::plan::{Density, Design, Order, Strategy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::bench::{GroupPerplexity, ResultLine, Results};
use crate::key_efficacy::{self, KeyPoint};
use crate::{summarize, Summary};

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

fn s_of(lines: &[&ResultLine]) -> Summary {
    summarize(&lines.iter().map(|l| l.metrics.clone()).collect::<Vec<_>>())
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

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The 95 % percentile interval of `stat` over 2000 resamples (fixed seed) of `n` items drawn
/// with replacement, each resample passed as the drawn items' indices.
fn bootstrap_ci(n: usize, mut stat: impl FnMut(&[usize]) -> f64) -> (f64, f64) {
    bootstrap_ci_two((n, 0), |a, _| stat(a))
}

/// `bootstrap_ci` for a statistic of two independent samples of `n.0` and `n.1` items, each
/// resampled on its own (the first sample's draws come first, so with `n.1 = 0` this is
/// `bootstrap_ci`'s stream exactly).
fn bootstrap_ci_two(
    n: (usize, usize),
    mut stat: impl FnMut(&[usize], &[usize]) -> f64,
) -> (f64, f64) {
    let boots = draws_two(n, |a, b| Some(stat(a, b)));
    (percentile(&boots, 0.025), percentile(&boots, 0.975))
}

/// `stat` over `bootstrap_ci`'s 2000 resamples of `n` items, sorted, leaving out the resamples
/// where it is undefined (`None`): for a statistic that some resamples cannot have (a
/// correlation without variance).
pub(crate) fn bootstrap_draws(n: usize, mut stat: impl FnMut(&[usize]) -> Option<f64>) -> Vec<f64> {
    draws_two((n, 0), |a, _| stat(a))
}

fn draws_two(
    n: (usize, usize),
    mut stat: impl FnMut(&[usize], &[usize]) -> Option<f64>,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut boots: Vec<f64> = (0..2000)
        .filter_map(|_| {
            let a: Vec<usize> = (0..n.0).map(|_| rng.random_range(0..n.0)).collect();
            let b: Vec<usize> = (0..n.1).map(|_| rng.random_range(0..n.1)).collect();
            stat(&a, &b)
        })
        .collect();
    boots.sort_by(f64::total_cmp);
    boots
}

fn cell_groups<'a, 'b>(
    g: &'b BTreeMap<(u64, usize), Vec<&'a ResultLine>>,
) -> Vec<&'b Vec<&'a ResultLine>> {
    g.values().collect()
}

/// Each density cell's lines, by group.
type DensityCells<'a> =
    BTreeMap<(String, Strategy, Density, usize), BTreeMap<(u64, usize), Vec<&'a ResultLine>>>;

/// S (points) and its groups' lines for each density cell, then the rows.
fn density_rows(dens: DensityCells) -> Vec<DensityRow> {
    let s_points = |groups: &[&Vec<&ResultLine>], idx: &[usize]| {
        let ls: Vec<&ResultLine> = idx
            .iter()
            .flat_map(|&i| groups[i].iter().copied())
            .collect();
        100.0 * s_of(&ls).score
    };
    dens.iter()
        .map(|((method, strategy, density, n), by_group)| {
            let groups = cell_groups(by_group);
            let all: Vec<usize> = (0..groups.len()).collect();
            let ci = bootstrap_ci(groups.len(), |idx| s_points(&groups, idx));
            // The low cell's groups, for every row but the low one.
            let low = dens
                .get(&(method.clone(), *strategy, Density::Low, *n))
                .filter(|_| *density != Density::Low)
                .map(cell_groups);
            let vs_low = low.as_ref().map(|low| {
                let low_all: Vec<usize> = (0..low.len()).collect();
                let d = s_points(&groups, &all) - s_points(low, &low_all);
                let ci = bootstrap_ci_two((groups.len(), low.len()), |a, b| {
                    s_points(&groups, a) - s_points(low, b)
                });
                (d, ci)
            });
            let perplexity = density_perplexity(&groups, low.as_deref());
            let lines: Vec<&ResultLine> = groups.iter().flat_map(|g| g.iter().copied()).collect();
            // Per group: the ES of its edits a later same-subject edit followed, and of the rest.
            let split: Vec<(Vec<f64>, Vec<f64>)> = if *strategy == Strategy::Sequential {
                groups
                    .iter()
                    .map(|g| {
                        let (mut followed, mut last) = (Vec::new(), Vec::new());
                        for l in g.iter() {
                            let later = g
                                .iter()
                                .any(|o| o.subject_id == l.subject_id && o.step > l.step);
                            if later { &mut followed } else { &mut last }.push(l.metrics.es);
                        }
                        (followed, last)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            // `followed`: the first side of each group's split, else the second.
            let mean_of = |idx: &[usize], followed: bool| {
                let v: Vec<f64> = idx
                    .iter()
                    .flat_map(|&i| {
                        let (f, l) = &split[i];
                        if followed { f } else { l }.iter().copied()
                    })
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let every: Vec<usize> = (0..split.len()).collect();
            let es_followed = mean_of(&every, true);
            let es_last = mean_of(&every, false);
            // Paired within groups: a group holds both kinds wherever it holds the first.
            let es_split_ci = es_followed.map(|_| {
                bootstrap_ci(split.len(), |idx| {
                    mean_of(idx, true).unwrap_or(f64::NAN) - mean_of(idx, false).unwrap_or(f64::NAN)
                })
            });
            DensityRow {
                method: method.clone(),
                strategy: *strategy,
                density: *density,
                n: *n,
                groups: groups.len(),
                summary: s_of(&lines),
                ci,
                vs_low,
                es_followed,
                es_last,
                es_split_ci,
                perplexity,
            }
        })
        .collect()
}

/// A density cell's perplexity over its groups that carry it (on the first such group's tokens),
/// against `low`'s groups on the same tokens (`low`: the low cell, None for the low row itself);
/// `None` where no group carries it.
fn density_perplexity(
    groups: &[&Vec<&ResultLine>],
    low: Option<&[&Vec<&ResultLine>]>,
) -> Option<DensityPerplexity> {
    let of = |g: &&Vec<&ResultLine>| g.iter().find_map(|l| l.perplexity);
    let first = groups.iter().find_map(of)?;
    let logs = |gs: &[&Vec<&ResultLine>]| -> Vec<f64> {
        gs.iter()
            .filter_map(of)
            .filter(|p| p.tokens == first.tokens)
            .map(|p| p.edited.ln())
            .collect()
    };
    let mine = logs(groups);
    let mean = |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
    let all: Vec<usize> = (0..mine.len()).collect();
    let ci = bootstrap_ci(mine.len(), |idx| mean(&mine, idx));
    // A low cell without readings on these tokens compares with nothing.
    let low = low.map(logs).filter(|v| !v.is_empty());
    let vs_low = low.map(|low| {
        let low_all: Vec<usize> = (0..low.len()).collect();
        let d = mean(&mine, &all) - mean(&low, &low_all);
        let ci = bootstrap_ci_two((mine.len(), low.len()), |a, b| {
            mean(&mine, a) - mean(&low, b)
        });
        (d.exp(), (ci.0.exp(), ci.1.exp()))
    });
    Some(DensityPerplexity {
        groups: mine.len(),
        tokens: first.tokens,
        unedited: first.unedited,
        edited: mean(&mine, &all).exp(),
        ci: (ci.0.exp(), ci.1.exp()),
        max: mine.iter().copied().fold(f64::NEG_INFINITY, f64::max).exp(),
        vs_low,
    })
}

/// exp(mean of the logs): the mean of quantities spanning orders of magnitude.
fn geometric_mean(xs: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = xs.len() as f64;
    (xs.map(f64::ln).sum::<f64>() / n).exp()
}

pub fn build(lines: &[ResultLine]) -> Report {
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
    for (cell, [homo, hetero]) in &cells {
        if let Some(row) = perplexity_row(cell, homo, hetero) {
            perplexity.push(row);
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
                    summary: s_of(&lines),
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
            let pick = |side: &BTreeMap<GroupKey, Vec<&ResultLine>>, gs: &[GroupKey]| {
                let v: Vec<&ResultLine> = gs
                    .iter()
                    .flat_map(|g| side[g].iter().copied())
                    .filter(|l| view.keeps(l))
                    .collect();
                s_of(&v)
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
    let density = density_rows(dens);
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
    }
}

/// `x` with `decimals` places, or in scientific notation (3 significant digits) from 10⁶ up and
/// below what `decimals` places can show: a perplexity can reach 10³⁷ after a damaging edit (KN on
/// SmolLM2), and sixty digits of it say no more than `1.84e37`; a ratio of such perplexities can
/// be 10⁻⁹, which fixed places print as `0.000`. The CSV keeps full precision.
fn fixed_or_sci(x: f64, decimals: usize) -> String {
    let tiny = 10f64.powi(-(decimals as i32));
    if x.is_finite() && x != 0.0 && (x.abs() >= 1e6 || x.abs() < tiny) {
        format!("{x:.2e}")
    } else {
        format!("{x:.decimals$}")
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

impl Report {
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        for view in [View::First, View::All] {
            let what = match view {
                View::First => "the first edit of each group, scored after the other N−1",
                View::All => "every edit of each group, scored after the last",
            };
            let _ = writeln!(o, "### View `{}`: {what}\n", view.name());
            let _ = writeln!(o, "| method | strategy | design | N | groups | S homo | S hetero | SD (points) | 95 % CI | ES homo / hetero | PS homo / hetero | NS homo / hetero | margin homo / hetero |");
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for r in self.sd.iter().filter(|r| r.view == view) {
                let (h, t) = (&r.homogeneous, &r.heterogeneous);
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {:.1} | {:.1} | **{:+.1}** | [{:+.1}, {:+.1}] | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
                    r.cell.method, r.cell.strategy.name(), r.cell.design.name(), r.cell.n_label(), r.groups,
                    100.0 * h.score, 100.0 * t.score, r.sd, r.ci.0, r.ci.1,
                    h.es, t.es, h.ps, t.ps, h.ns, t.ns, h.em, t.em
                );
            }
            o.push('\n');
        }
        self.curves_markdown(&mut o);
        self.perplexity_markdown(&mut o);
        let _ = writeln!(o, "### Reading\n");
        for r in &self.sd {
            let verdict = if r.ci.1 < 0.0 {
                "same-subject editing scores lower, and the 95 % interval excludes 0"
            } else if r.sd < 0.0 {
                "same-subject editing scores lower, but the interval includes 0 (too few groups to be sure)"
            } else if r.ci.0 > 0.0 {
                "same-subject editing scores higher, and the interval excludes 0"
            } else {
                "no difference the interval can tell from 0"
            };
            let _ = writeln!(
                o,
                "- {} {} N={} view `{}`: SD {:+.1} [{:+.1}, {:+.1}] over {} group pairs: {verdict}.",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.n_label(),
                r.view.name(),
                r.sd,
                r.ci.0,
                r.ci.1,
                r.groups
            );
        }
        if !self.unpaired.is_empty() {
            let _ = writeln!(
                o,
                "- Groups of one order only have no SD (below): run the other `--order` with the same `--n`, `--groups` and `--seed` to pair them."
            );
        }
        o.push('\n');
        if !self.unpaired.is_empty() {
            let _ = writeln!(o, "### Groups without a matched pair (view `all`, no SD)\n");
            let _ = writeln!(
                o,
                "| method | strategy | design | N | order | groups | cases | ES | PS | NS | S |"
            );
            let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &self.unpaired {
                let s = &r.summary;
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} |",
                    r.cell.method,
                    r.cell.strategy.name(),
                    r.cell.design.name(),
                    r.cell.n_label(),
                    r.order.name(),
                    r.groups,
                    s.cases,
                    s.es,
                    s.ps,
                    s.ns,
                    100.0 * s.score
                );
            }
            o.push('\n');
        }
        if !self.density.is_empty() {
            let _ = writeln!(
                o,
                "### Subject density (edits per subject: high 3, medium 2, low 1)\n"
            );
            let _ = writeln!(
                o,
                "S with its 95 % bootstrap interval over groups; S − S(low) against the low-density \
                 cell of the same method, strategy and N, the two cells' groups resampled each on \
                 its own (they are drawn independently: no pairs). ES split (sequential cells): \
                 the edits a later edit of the same subject followed, then each subject's last, \
                 and the 95 % interval of their difference over groups (paired within groups).\n"
            );
            let _ = writeln!(
                o,
                "| method | strategy | N | density | groups | cases | ES | PS | NS | S | 95 % | S − S(low) | 95 % | ES, followed | ES, last | 95 % of the difference |"
            );
            let _ = writeln!(
                o,
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
            );
            for r in &self.density {
                let s = &r.summary;
                let (d, dci) = match r.vs_low {
                    Some((d, (lo, hi))) => (format!("{d:+.1}"), format!("[{lo:+.1}, {hi:+.1}]")),
                    None => ("–".into(), "–".into()),
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | [{:.1}, {:.1}] | {d} | {dci} | {} | {} | {} |",
                    r.method,
                    r.strategy.name(),
                    r.n,
                    r.density.name(),
                    r.groups,
                    s.cases,
                    s.es,
                    s.ps,
                    s.ns,
                    100.0 * s.score,
                    r.ci.0,
                    r.ci.1,
                    r.es_followed.map_or("–".into(), |x| format!("{x:.2}")),
                    r.es_last.map_or("–".into(), |x| format!("{x:.2}")),
                    r.es_split_ci
                        .map_or("–".into(), |(lo, hi)| format!("[{lo:+.2}, {hi:+.2}]")),
                );
            }
            o.push('\n');
            self.density_perplexity_markdown(&mut o);
        }
        if !self.keys.is_empty() {
            let _ = writeln!(
                o,
                "### Key cosine with the first edit's key (unedited model)\n"
            );
            let _ = writeln!(
                o,
                "| method | same subject | pairs | different subject | pairs |"
            );
            let _ = writeln!(o, "|---|---|---|---|---|");
            for k in &self.keys {
                let _ = writeln!(
                    o,
                    "| {} | {:.3} | {} | {:.3} | {} |",
                    k.method, k.same.0, k.same.1, k.different.0, k.different.1
                );
            }
            o.push('\n');
        }
        key_efficacy::markdown(&self.key_points, &mut o);
        o
    }

    /// SD against N, one row per method and view (the rows above, side by side): for `--curve`
    /// runs, and for ordinary runs where a method has cells at two or more N (a run per N, as a
    /// batch figure needs: a prefix of a batch is not a batch).
    fn curves_markdown(&self, o: &mut String) {
        // (view, method, strategy, design, the curve run's N or None) → its rows by N.
        let mut series: BTreeMap<SeriesKey, BTreeMap<usize, &SdRow>> = BTreeMap::new();
        for r in &self.sd {
            series
                .entry((
                    r.view,
                    &r.cell.method,
                    r.cell.strategy,
                    r.cell.design,
                    r.cell.of,
                ))
                .or_default()
                .insert(r.cell.n, r);
        }
        let (curves, runs): (Vec<_>, Vec<_>) =
            series.into_iter().partition(|(key, _)| key.4.is_some());
        let runs: Vec<_> = runs.into_iter().filter(|(_, pts)| pts.len() > 1).collect();
        if !runs.is_empty() {
            let _ = writeln!(
                o,
                "### SD against N (a run per N: each N's groups edited from the unedited model)\n"
            );
            sd_against_n(o, &runs);
        }
        if curves.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "### SD against N (`--curve` runs: the first N edits of each group, scored after the N-th)\n"
        );
        let ns = sd_against_n(o, &curves);
        // The margin moves where S, made of 0/1 successes, cannot show it.
        let _ = writeln!(
            o,
            "First edit's mean margin on its prompt, p(new) − p(true), after N edits of its subject / of other subjects:\n"
        );
        let head: Vec<String> = ns.iter().map(|n| format!("N={n}")).collect();
        let _ = writeln!(o, "| method | strategy | design | {} |", head.join(" | "));
        let _ = writeln!(o, "|---|---|---|{}", "---|".repeat(ns.len()));
        for ((view, method, strategy, design, _), pts) in &curves {
            if *view != View::First {
                continue;
            }
            let cols: Vec<String> = ns
                .iter()
                .map(|n| {
                    pts.get(n).map_or("–".to_owned(), |r| {
                        format!("{:.2} / {:.2}", r.homogeneous.em, r.heterogeneous.em)
                    })
                })
                .collect();
            let _ = writeln!(
                o,
                "| {method} | {} | {} | {} |",
                strategy.name(),
                design.name(),
                cols.join(" | ")
            );
        }
        o.push('\n');
    }

    /// The density cells' perplexity, where their runs measured it.
    fn density_perplexity_markdown(&self, o: &mut String) {
        if self.density.iter().all(|r| r.perplexity.is_none()) {
            return;
        }
        let _ = writeln!(
            o,
            "### Held-out perplexity by subject density (`--perplexity-tokens`)\n"
        );
        let _ = writeln!(
            o,
            "Each group's edited model on held-out text after its last edit: the geometric mean \
             over groups with its 95 % bootstrap interval, the worst group, and the ratio to the \
             low-density cell of the same method, strategy and N (geometric means; the two \
             cells' groups resampled each on its own).\n"
        );
        let _ = writeln!(
            o,
            "| method | strategy | N | density | groups | tokens | unedited | edited | 95 % | worst group | ÷ low | 95 % |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.density {
            let Some(p) = &r.perplexity else { continue };
            let (d, dci) = match p.vs_low {
                Some((d, (lo, hi))) => (
                    fixed_or_sci(d, 3),
                    format!("[{}, {}]", fixed_or_sci(lo, 3), fixed_or_sci(hi, 3)),
                ),
                None => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | [{}, {}] | {} | {d} | {dci} |",
                r.method,
                r.strategy.name(),
                r.n,
                r.density.name(),
                p.groups,
                p.tokens,
                fixed_or_sci(p.unedited, 1),
                fixed_or_sci(p.edited, 1),
                fixed_or_sci(p.ci.0, 1),
                fixed_or_sci(p.ci.1, 1),
                fixed_or_sci(p.max, 1),
            );
        }
        o.push('\n');
    }

    /// The perplexity rows, where a run measured it.
    fn perplexity_markdown(&self, o: &mut String) {
        if self.perplexity.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "### Held-out perplexity after the group's edits (`--perplexity-tokens`)\n"
        );
        let _ = writeln!(
            o,
            "Geometric means over groups; ratio = homogeneous / heterogeneous of matched pairs (below 1: same-subject edits cost the model less); ‖ΔW‖_F: the norm of the group's update so far to the model's editable matrices.\n"
        );
        let _ = writeln!(o, "| method | strategy | design | N | groups | tokens | unedited | homo | hetero | worst homo / hetero | ratio | 95 % CI | ‖ΔW‖_F homo / hetero |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.perplexity {
            let norms = r.update_norm.map_or("–".to_owned(), |(h, t)| {
                format!("{} / {}", fixed_or_sci(h, 3), fixed_or_sci(t, 3))
            });
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | **{}** | [{}, {}] | {norms} |",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.design.name(),
                r.cell.n_label(),
                r.groups,
                r.tokens,
                fixed_or_sci(r.unedited, 1),
                fixed_or_sci(r.homogeneous, 1),
                fixed_or_sci(r.heterogeneous, 1),
                fixed_or_sci(r.max.0, 1),
                fixed_or_sci(r.max.1, 1),
                fixed_or_sci(r.ratio, 3),
                fixed_or_sci(r.ci.0, 3),
                fixed_or_sci(r.ci.1, 3)
            );
        }
        o.push('\n');
        // A curve's shorter prefixes are read in the table against N below.
        for r in self
            .perplexity
            .iter()
            .filter(|r| r.cell.of.is_none_or(|of| of == r.cell.n))
        {
            let verdict = match r.interval_side() {
                std::cmp::Ordering::Less => {
                    "same-subject edits cost the model less, and the 95 % interval excludes 1"
                }
                std::cmp::Ordering::Greater => {
                    "same-subject edits cost the model more, and the 95 % interval excludes 1"
                }
                std::cmp::Ordering::Equal => "no difference the interval can tell from 1",
            };
            let _ = writeln!(
                o,
                "- {} {} N={}: perplexity after same-subject edits is {}× that after different-subject edits [{}, {}] over {} group pairs (unedited {}): {verdict}.",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.n_label(),
                fixed_or_sci(r.ratio, 3),
                fixed_or_sci(r.ci.0, 3),
                fixed_or_sci(r.ci.1, 3),
                r.groups,
                fixed_or_sci(r.unedited, 1)
            );
        }
        o.push('\n');
        self.perplexity_against_n(o);
    }

    /// A `--curve` run's perplexity rows side by side: the model after each of the group's first
    /// N edits, same subject against different subjects, and where the ratio's interval first
    /// excludes 1 (where the cost of same-subject editing shows).
    fn perplexity_against_n(&self, o: &mut String) {
        // (method, strategy, design, the curve run's N, tokens) → its rows by N.
        type Key<'a> = (&'a str, Strategy, Design, usize, usize);
        let mut series: BTreeMap<Key, BTreeMap<usize, &PerplexityRow>> = BTreeMap::new();
        for r in &self.perplexity {
            if let Some(of) = r.cell.of {
                series
                    .entry((&r.cell.method, r.cell.strategy, r.cell.design, of, r.tokens))
                    .or_default()
                    .insert(r.cell.n, r);
            }
        }
        if series.is_empty() {
            return;
        }
        let ns: Vec<usize> = series
            .values()
            .flat_map(|pts| pts.keys().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let head: Vec<String> = ns.iter().map(|n| format!("N={n}")).collect();
        let _ = writeln!(
            o,
            "Against N (`--curve` runs: after each of the group's first N edits), geometric means homo / hetero, then the ratio, `*` where its 95 % interval excludes 1:\n"
        );
        let _ = writeln!(
            o,
            "| method | strategy | design | tokens | {} |",
            head.join(" | ")
        );
        let _ = writeln!(o, "|---|---|---|---|{}", "---|".repeat(ns.len()));
        let mut readings = Vec::new();
        for ((method, strategy, design, of, tokens), pts) in &series {
            let cols: Vec<String> = ns
                .iter()
                .map(|n| {
                    pts.get(n).map_or("–".to_owned(), |r| {
                        format!(
                            "{} / {} ×{}{}",
                            fixed_or_sci(r.homogeneous, 1),
                            fixed_or_sci(r.heterogeneous, 1),
                            fixed_or_sci(r.ratio, 2),
                            if r.interval_side().is_eq() { "" } else { "*" }
                        )
                    })
                })
                .collect();
            let _ = writeln!(
                o,
                "| {method} | {} | {} | {tokens} | {} |",
                strategy.name(),
                design.name(),
                cols.join(" | ")
            );
            // From which N on every interval excludes 1 on the same side as the largest N's.
            let last = pts.values().next_back().expect("a series has a point");
            let side = last.interval_side();
            let from = pts
                .iter()
                .rev()
                .take_while(|(_, r)| side.is_ne() && r.interval_side() == side)
                .last()
                .map(|(n, _)| *n);
            readings.push(match from {
                Some(n) => format!(
                    "- {method} {} `--curve` of {of}: the ratio's interval excludes 1 from N={n} on ({} at N={}).",
                    strategy.name(),
                    if last.ratio > 1.0 { "same-subject edits cost more" } else { "same-subject edits cost less" },
                    last.cell.n
                ),
                None => format!(
                    "- {method} {} `--curve` of {of}: at N={} the ratio's interval includes 1.",
                    strategy.name(),
                    last.cell.n
                ),
            });
        }
        o.push('\n');
        for r in readings {
            let _ = writeln!(o, "{r}");
        }
        o.push('\n');
    }

    /// `(file name, contents)` of each CSV table.
    pub fn csv(&self) -> Vec<(String, String)> {
        let mut sd = String::from("method,strategy,design,n,view,groups,s_homogeneous,s_heterogeneous,sd,ci_low,ci_high,es_homogeneous,es_heterogeneous,ps_homogeneous,ps_heterogeneous,ns_homogeneous,ns_heterogeneous,of,em_homogeneous,em_heterogeneous\n");
        for r in &self.sd {
            let (h, t) = (&r.homogeneous, &r.heterogeneous);
            let _ = writeln!(
                sd,
                "{},{},{},{},{},{},{:.4},{:.4},{:.3},{:.3},{:.3},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{:.4},{:.4}",
                r.cell.method, r.cell.strategy.name(), r.cell.design.name(), r.cell.n, r.view.name(),
                r.groups, 100.0 * h.score, 100.0 * t.score, r.sd, r.ci.0, r.ci.1, h.es, t.es, h.ps,
                t.ps, h.ns, t.ns, r.cell.of.map_or(String::new(), |o| o.to_string()), h.em, t.em
            );
        }
        let mut dens = String::from(
            "method,strategy,n,density,cases,es,ps,ns,score,groups,ci_low,ci_high,es_followed,es_last,es_split_ci_low,es_split_ci_high,vs_low,vs_low_ci_low,vs_low_ci_high\n",
        );
        for r in &self.density {
            let s = &r.summary;
            let vs = r.vs_low.map_or(",,".into(), |(d, (lo, hi))| {
                format!("{d:.3},{lo:.3},{hi:.3}")
            });
            let _ = writeln!(
                dens,
                "{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{},{:.3},{:.3},{},{},{},{vs}",
                r.method,
                r.strategy.name(),
                r.n,
                r.density.name(),
                s.cases,
                s.es,
                s.ps,
                s.ns,
                100.0 * s.score,
                r.groups,
                r.ci.0,
                r.ci.1,
                r.es_followed.map_or(String::new(), |x| format!("{x:.4}")),
                r.es_last.map_or(String::new(), |x| format!("{x:.4}")),
                r.es_split_ci
                    .map_or(",".into(), |(lo, hi)| format!("{lo:.4},{hi:.4}")),
            );
        }
        let mut keys =
            String::from("method,same_subject,same_pairs,different_subject,different_pairs\n");
        for k in &self.keys {
            let _ = writeln!(
                keys,
                "{},{:.4},{},{:.4},{}",
                k.method, k.same.0, k.same.1, k.different.0, k.different.1
            );
        }
        let mut files = vec![
            ("sd.csv".into(), sd),
            ("density.csv".into(), dens),
            ("keys.csv".into(), keys),
        ];
        if !self.key_points.is_empty() {
            files.push(("keys-es.csv".into(), key_efficacy::csv(&self.key_points)));
        }
        if self.density.iter().any(|r| r.perplexity.is_some()) {
            let mut ppl = String::from(
                "method,strategy,n,density,groups,tokens,unedited,edited,ci_low,ci_high,max,vs_low,vs_low_ci_low,vs_low_ci_high\n",
            );
            for r in &self.density {
                let Some(p) = &r.perplexity else { continue };
                let vs = p.vs_low.map_or(",,".into(), |(d, (lo, hi))| {
                    format!("{d:.6},{lo:.6},{hi:.6}")
                });
                let _ = writeln!(
                    ppl,
                    "{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{vs}",
                    r.method,
                    r.strategy.name(),
                    r.n,
                    r.density.name(),
                    p.groups,
                    p.tokens,
                    p.unedited,
                    p.edited,
                    p.ci.0,
                    p.ci.1,
                    p.max
                );
            }
            files.push(("density-perplexity.csv".into(), ppl));
        }
        if !self.perplexity.is_empty() {
            let mut ppl = String::from("method,strategy,design,n,of,groups,tokens,unedited,homogeneous,heterogeneous,max_homogeneous,max_heterogeneous,ratio,ci_low,ci_high,update_norm_homogeneous,update_norm_heterogeneous\n");
            for r in &self.perplexity {
                let _ = writeln!(
                    ppl,
                    "{},{},{},{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{}",
                    r.cell.method,
                    r.cell.strategy.name(),
                    r.cell.design.name(),
                    r.cell.n,
                    r.cell.of.map_or(String::new(), |o| o.to_string()),
                    r.groups,
                    r.tokens,
                    r.unedited,
                    r.homogeneous,
                    r.heterogeneous,
                    r.max.0,
                    r.max.1,
                    r.ratio,
                    r.ci.0,
                    r.ci.1,
                    r.update_norm
                        .map_or(",".to_owned(), |(h, t)| format!("{h:.5},{t:.5}"))
                );
            }
            files.push(("perplexity.csv".into(), ppl));
        }
        files
    }

    /// One SVG per method: SD against N, a line per (strategy, design, view, curve run's N), 95 %
    /// whiskers. Then, as the paper draws its figures, one SVG per (strategy, design, view, curve
    /// or not) with a line per method, where two or more methods have cells at two or more N:
    /// `sd-<strategy>-<design>-<view>[-curve].svg`. And the perplexity ratio against N, where
    /// runs measured it at two or more N ([`Self::perplexity_svgs`]).
    pub fn svgs(&self) -> Vec<(String, String)> {
        let methods: BTreeSet<&str> = self.sd.iter().map(|r| r.cell.method.as_str()).collect();
        let mut files: Vec<(String, String)> = methods
            .into_iter()
            .map(|m| {
                // A line per (strategy, design, view, curve run's N), in that order.
                let mut lines: BTreeMap<(Strategy, Design, View, Option<usize>), Vec<&SdRow>> =
                    BTreeMap::new();
                for r in self.sd.iter().filter(|r| r.cell.method == m) {
                    lines
                        .entry((r.cell.strategy, r.cell.design, r.view, r.cell.of))
                        .or_default()
                        .push(r);
                }
                let ordered = lines
                    .into_iter()
                    .map(|((s, d, v, of), pts)| {
                        (
                            legend(s, d, v, of),
                            pts.into_iter().map(Point::from).collect(),
                        )
                    })
                    .collect();
                (
                    format!("sd-{m}.svg"),
                    plot(
                        &format!("{m}: SD = S(homogeneous) − S(heterogeneous), points"),
                        ordered,
                        &SD_AXIS,
                    ),
                )
            })
            .collect();
        // (strategy, design, view, curve runs) → (method, curve run's N) → its rows.
        type Panel = (Strategy, Design, View, bool);
        type Lines<'a> = BTreeMap<(&'a str, Option<usize>), Vec<&'a SdRow>>;
        let mut panels: BTreeMap<Panel, Lines> = BTreeMap::new();
        for r in &self.sd {
            panels
                .entry((r.cell.strategy, r.cell.design, r.view, r.cell.of.is_some()))
                .or_default()
                .entry((&r.cell.method, r.cell.of))
                .or_default()
                .push(r);
        }
        for ((strategy, design, view, curve), lines) in panels {
            let ns: BTreeSet<usize> = lines.values().flatten().map(|r| r.cell.n).collect();
            if lines.len() < 2 || ns.len() < 2 {
                continue;
            }
            let series = lines
                .into_iter()
                .map(|((m, of), pts)| {
                    let label = of.map_or(m.to_owned(), |of| format!("{m}, curve of {of}"));
                    (label, pts.into_iter().map(Point::from).collect())
                })
                .collect();
            let name = format!(
                "sd-{}-{}-{}{}.svg",
                strategy.name(),
                design.name(),
                view.name(),
                if curve { "-curve" } else { "" }
            );
            let title = format!(
                "SD against N: {} editing, {} design, view {}",
                strategy.name(),
                design.name(),
                view.name()
            );
            files.push((name, plot(&title, series, &SD_AXIS)));
        }
        files.extend(self.perplexity_svgs());
        files.extend(self.density_svgs());
        files.extend(crate::s_bars::svgs(&self.sd));
        files.extend(key_efficacy::svgs(&self.key_points));
        files
    }

    /// S at each subject density as bars, a group of bars per method, 95 % whiskers: one SVG
    /// per (strategy, N), as the study draws fig2 and fig12: `density-<strategy>-n<N>.svg`. And
    /// their perplexity panel where the runs measured it, the unedited model's as a dashed line:
    /// `density-perplexity-<strategy>-n<N>.svg`.
    fn density_svgs(&self) -> Vec<(String, String)> {
        let mut panels: BTreeMap<(Strategy, usize), Bars> = BTreeMap::new();
        let mut ppl: BTreeMap<(Strategy, usize), (Bars, f64, f64, f64)> = BTreeMap::new();
        for r in &self.density {
            panels
                .entry((r.strategy, r.n))
                .or_default()
                .entry(&r.method)
                .or_default()
                .push((r.density, 100.0 * r.summary.score, r.ci));
            if let Some(p) = &r.perplexity {
                let (bars, lo, hi, _) = ppl.entry((r.strategy, r.n)).or_insert((
                    Bars::new(),
                    p.unedited,
                    p.unedited,
                    p.unedited,
                ));
                bars.entry(&r.method)
                    .or_default()
                    .push((r.density, p.edited, p.ci));
                *lo = lo.min(p.ci.0);
                *hi = hi.max(p.ci.1);
            }
        }
        let title = |what: &str, strategy: Strategy, n: usize| {
            format!(
                "{what} by subject density: {} editing, N = {n} (edits per subject: high 3, medium 2, low 1)",
                strategy.name()
            )
        };
        let mut files: Vec<(String, String)> = panels
            .into_iter()
            .map(|((strategy, n), methods)| {
                (
                    format!("density-{}-n{n}.svg", strategy.name()),
                    bars(&title("S", strategy, n), methods, &BarAxis::score()),
                )
            })
            .collect();
        for ((strategy, n), (methods, lo, hi, unedited)) in ppl {
            let axis = BarAxis::decades(
                lo,
                hi,
                "Held-out perplexity after the group's last edit, log scale (geometric mean over groups, 95 % interval)",
                Some((unedited, "unedited")),
            );
            files.push((
                format!("density-perplexity-{}-n{n}.svg", strategy.name()),
                bars(&title("Perplexity", strategy, n), methods, &axis),
            ));
        }
        files
    }

    /// The perplexity ratio homogeneous / heterogeneous against N, log scale, one SVG per
    /// (strategy, design, curve runs or not) with a line per method, where a method has rows at
    /// two or more N: `perplexity-<strategy>-<design>[-curve].svg`.
    fn perplexity_svgs(&self) -> Vec<(String, String)> {
        type Lines<'a> = BTreeMap<(&'a str, Option<usize>, usize), Vec<Point>>;
        let mut panels: BTreeMap<(Strategy, Design, bool), Lines> = BTreeMap::new();
        for r in &self.perplexity {
            panels
                .entry((r.cell.strategy, r.cell.design, r.cell.of.is_some()))
                .or_default()
                .entry((&r.cell.method, r.cell.of, r.tokens))
                .or_default()
                .push(Point {
                    n: r.cell.n,
                    y: r.ratio.log2(),
                    ci: (r.ci.0.log2(), r.ci.1.log2()),
                });
        }
        panels
            .into_iter()
            .filter_map(|((strategy, design, curve), lines)| {
                let series: Vec<(String, Vec<Point>)> = lines
                    .into_iter()
                    .filter(|(_, pts)| pts.len() > 1)
                    .map(|((m, of, tokens), pts)| {
                        let of = of.map_or(String::new(), |of| format!(", curve of {of}"));
                        (format!("{m}{of}, {tokens} tokens"), pts)
                    })
                    .collect();
                if series.is_empty() {
                    return None;
                }
                let title = format!(
                    "Perplexity, same ÷ different subjects: {} editing, {} design",
                    strategy.name(),
                    design.name()
                );
                let name = format!(
                    "perplexity-{}-{}{}.svg",
                    strategy.name(),
                    design.name(),
                    if curve { "-curve" } else { "" }
                );
                Some((name, plot(&title, series, &RATIO_AXIS)))
            })
            .collect()
    }
}

/// An SVG's opening: its size, a white background and the title at `left`.
pub(crate) fn svg_open(w: f64, h: f64, left: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"14\">{title}</text>\n"
    )
}

/// A plotted value at one N, with its 95 % interval.
struct Point {
    n: usize,
    y: f64,
    ci: (f64, f64),
}

impl From<&SdRow> for Point {
    fn from(r: &SdRow) -> Self {
        Point {
            n: r.cell.n,
            y: r.sd,
            ci: r.ci,
        }
    }
}

/// A plot's vertical axis: its range is rounded out to a multiple of `round`, gridlines fall at
/// the first of `steps` that gives at most 8, `label` writes a gridline's value, and the line at
/// 0 (no difference) is drawn black.
struct Axis {
    round: f64,
    steps: &'static [f64],
    label: fn(f64) -> String,
}

/// SD in points.
const SD_AXIS: Axis = Axis {
    round: 10.0,
    steps: &[5.0, 10.0, 20.0, 25.0, 50.0, 100.0],
    label: |v| format!("{v:.0}"),
};

/// A ratio plotted as its log2, labelled as the ratio (×1 at 0, ×2, ×0.5).
const RATIO_AXIS: Axis = Axis {
    round: 1.0,
    steps: &[1.0, 2.0, 5.0, 10.0],
    label: |v| format!("×{}", 2f64.powf(v)),
};

/// An SVG against N: a line per labelled series, 95 % whiskers, the zero line.
fn plot(title: &str, series: Vec<(String, Vec<Point>)>, axis: &Axis) -> String {
    let rows: Vec<&Point> = series.iter().flat_map(|(_, pts)| pts.iter()).collect();
    // The legend's longest label ("sequential group view first, curve of 8") sets the
    // right margin, ~7 px a character at 12 px, so that no label runs off the image.
    let longest = series
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0) as f64;
    let right = (45.0 + 7.0 * longest).max(200.0);
    let (w, h, left, top, bottom) = (440.0 + right, 400.0, 60.0, 40.0, 50.0);
    let ns: Vec<usize> = rows.iter().map(|r| r.n).collect();
    let (n0, n1) = (
        *ns.iter().min().unwrap_or(&2) as f64,
        *ns.iter().max().unwrap_or(&2) as f64,
    );
    let (n0, n1) = if n0 == n1 {
        (n0 - 1.0, n1 + 1.0)
    } else {
        (n0, n1)
    };
    let lo = rows.iter().map(|r| r.ci.0.min(r.y)).fold(0.0f64, f64::min);
    let hi = rows.iter().map(|r| r.ci.1.max(r.y)).fold(0.0f64, f64::max);
    let round = axis.round;
    let (lo, hi) = (
        (lo / round).floor() * round,
        ((hi / round).ceil() * round).max(lo + round),
    );
    let x = |n: f64| left + (n - n0) / (n1 - n0) * (w - left - right);
    let y = |v: f64| top + (hi - v) / (hi - lo) * (h - top - bottom);
    let mut o = svg_open(w, h, left, title);
    // Gridlines at a round step, and the zero line (no difference) always.
    let step = axis
        .steps
        .iter()
        .copied()
        .find(|s| (hi - lo) / s <= 8.0)
        .unwrap_or(axis.steps[axis.steps.len() - 1]);
    let mut v = (lo / step).ceil() * step;
    while v <= hi + 1e-9 {
        let _ = writeln!(o, "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right, y(v), y(v), left - 6.0, y(v) + 4.0, (axis.label)(v));
        v += step;
    }
    let _ = writeln!(
        o,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        w - right,
        y(0.0),
        y(0.0)
    );
    for n in (n0 as usize)..=(n1 as usize) {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>",
            x(n as f64),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">N (edits per group)</text>",
        (left + w - right) / 2.0,
        h - 10.0
    );
    // Ten colours: a figure has a line per method (ten registered).
    let colors = [
        "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.n as f64), y(r.y)))
            .collect();
        let _ = writeln!(
            o,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for r in pts {
            let (px, dx) = (x(r.n as f64), 4.0 + i as f64);
            let _ = writeln!(o, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\"/><circle cx=\"{px:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{c}\"/>",
                px + dx - 4.0, px + dx - 4.0, y(r.ci.0), y(r.ci.1), y(r.y));
        }
        let ly = top + 20.0 * i as f64;
        let _ = writeln!(o, "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 10.0, w - right + 30.0, w - right + 35.0, ly + 4.0, label);
    }
    o.push_str("</svg>\n");
    o
}

/// Per method, its density cells: (density, value, 95 % interval).
type Bars<'a> = BTreeMap<&'a str, Vec<(Density, f64, (f64, f64))>>;

/// A bar figure's value axis (`Axis` is the line figures'): its gridlines, bottom first (the axis
/// spans the first to the last; bars rise from the first), linear or logarithmic, the caption
/// under the plot, and a dashed reference line with its label (the unedited model's perplexity).
struct BarAxis {
    ticks: Vec<f64>,
    log: bool,
    caption: &'static str,
    reference: Option<(f64, &'static str)>,
}

impl BarAxis {
    /// S in points, 0 to 100.
    fn score() -> BarAxis {
        BarAxis {
            ticks: (0..=100).step_by(20).map(f64::from).collect(),
            log: false,
            caption: "S (points) after the group's last edit, 95 % interval over groups",
            reference: None,
        }
    }

    /// Logarithmic, whole decades from at or below `lo` to at or above `hi` (at least one):
    /// perplexities of edited models span orders of magnitude (a broken group weighs 10⁶).
    fn decades(
        lo: f64,
        hi: f64,
        caption: &'static str,
        reference: Option<(f64, &'static str)>,
    ) -> BarAxis {
        let finite = |x: f64, or: f64| if x.is_finite() && x > 0.0 { x } else { or };
        let hi = finite(hi, 10.0);
        let a = finite(lo, 1.0).min(hi).log10().floor() as i32;
        let b = (hi.log10().ceil() as i32).max(a + 1);
        BarAxis {
            ticks: (a..=b).map(|k| 10f64.powi(k)).collect(),
            log: true,
            caption,
            reference,
        }
    }
}

/// An SVG of a value per density as bars: a group per method, a bar per density in the
/// densities' order (high, medium, low) and colour, 95 % whiskers.
fn bars(title: &str, methods: Bars, axis: &BarAxis) -> String {
    let (left, top, bottom, bar, gap) = (60.0, 40.0, 50.0, 22.0, 30.0);
    let per = methods.values().map(Vec::len).max().unwrap_or(1) as f64;
    let group_w = per * bar + gap;
    let legend_w = 120.0;
    let plot_w = methods.len() as f64 * group_w + gap;
    let caption = axis.caption;
    // ~7 px a character at 12 px: the title or the caption sets the width where bars are few.
    let text_w = 7.5 * title.chars().count().max(caption.chars().count()) as f64;
    let w = (left + plot_w + legend_w).max(left + text_w);
    let h = 360.0;
    let scale = |v: f64| if axis.log { v.log10() } else { v };
    let (lo, hi) = (axis.ticks[0], axis.ticks[axis.ticks.len() - 1]);
    // Clamped to the plot: a whisker may reach past the last decade, or an infinite perplexity.
    let y = |v: f64| {
        let y = top + (scale(hi) - scale(v)) / (scale(hi) - scale(lo)) * (h - top - bottom);
        if y.is_nan() {
            h - bottom
        } else {
            y.clamp(top, h - bottom)
        }
    };
    let mut o = svg_open(w, h, left, title);
    for (k, &v) in axis.ticks.iter().enumerate() {
        let _ = writeln!(o, "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + plot_w, y(v), y(v), if k == 0 { "black" } else { "#ddd" }, left - 6.0, y(v) + 4.0, fixed_or_sci(v, 0));
    }
    if let Some((v, label)) = axis.reference {
        // Labelled right of the plot, below the legend's three rows; inside it, at the left,
        // where the line runs level with them.
        let (lx, ly) = if y(v) > top + 60.0 {
            (left + plot_w + 10.0, y(v) + 4.0)
        } else {
            (left + 4.0, y(v) - 4.0)
        };
        let _ = writeln!(o, "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"5,4\"/><text x=\"{lx}\" y=\"{ly:.1}\" fill=\"#c0392b\">{label}</text>",
            left + plot_w, y(v), y(v));
    }
    // Navy for high, as fig2 draws it (paper.md §6.4), lighter as the density falls.
    let color = |d: Density| match d {
        Density::High => "#1f3b73",
        Density::Medium => "#5b8fd1",
        Density::Low => "#b7d3f2",
    };
    for (i, (method, mut cells)) in methods.into_iter().enumerate() {
        cells.sort_by_key(|c| c.0);
        let x0 = left + gap + i as f64 * group_w;
        for (j, (d, s, (whisker_lo, whisker_hi))) in cells.iter().enumerate() {
            let x = x0 + j as f64 * bar;
            let mid = x + bar / 2.0 - 1.0;
            let _ = writeln!(o, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/><line x1=\"{mid:.1}\" x2=\"{mid:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                y(*s), bar - 2.0, y(lo) - y(*s), color(*d), y(*whisker_lo), y(*whisker_hi));
        }
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{method}</text>",
            x0 + cells.len() as f64 * bar / 2.0,
            h - bottom + 18.0
        );
    }
    for (k, d) in [Density::High, Density::Medium, Density::Low]
        .into_iter()
        .enumerate()
    {
        let (lx, ly) = (left + plot_w + 10.0, top + 20.0 * k as f64);
        let _ = writeln!(o, "<rect x=\"{lx}\" y=\"{}\" width=\"14\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            ly - 6.0, color(d), lx + 20.0, ly + 4.0, d.name());
    }
    let _ = writeln!(o, "<text x=\"{left}\" y=\"{}\">{caption}</text>", h - 10.0);
    o.push_str("</svg>\n");
    o
}

/// A series of SD rows: (view, method, strategy, design, the curve run's N or None).
type SeriesKey<'a> = (View, &'a str, Strategy, Design, Option<usize>);

/// An SD-against-N table: a row per series, a column per N any series has (`–` where one has
/// none), `*` where that N's 95 % interval excludes 0, and the interval at the series' largest
/// N. Returns the columns' Ns.
fn sd_against_n(o: &mut String, series: &[(SeriesKey, BTreeMap<usize, &SdRow>)]) -> Vec<usize> {
    let ns: Vec<usize> = series
        .iter()
        .flat_map(|(_, pts)| pts.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let head: Vec<String> = ns.iter().map(|n| format!("N={n}")).collect();
    let _ = writeln!(
        o,
        "| view | method | strategy | design | {} | 95 % CI at the largest N |",
        head.join(" | ")
    );
    let _ = writeln!(o, "|---|---|---|---|{}---|", "---|".repeat(ns.len()));
    for ((view, method, strategy, design, _), pts) in series {
        let cols: Vec<String> = ns
            .iter()
            .map(|n| {
                pts.get(n).map_or("–".to_owned(), |r| {
                    let excludes_0 = r.ci.0 > 0.0 || r.ci.1 < 0.0;
                    format!("{:+.1}{}", r.sd, if excludes_0 { "*" } else { "" })
                })
            })
            .collect();
        let last = pts.values().next_back().expect("a series has a point");
        let _ = writeln!(
            o,
            "| {} | {method} | {} | {} | {} | [{:+.1}, {:+.1}] |",
            view.name(),
            strategy.name(),
            design.name(),
            cols.join(" | "),
            last.ci.0,
            last.ci.1
        );
    }
    let _ = writeln!(o, "\n`*`: the 95 % interval excludes 0.\n");
    ns
}

/// A line's label in an SVG's legend.
fn legend(s: Strategy, d: Design, view: View, of: Option<usize>) -> String {
    format!(
        "{} {} view {}{}",
        s.name(),
        d.name(),
        view.name(),
        of.map_or(String::new(), |o| format!(", curve of {o}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaseMetrics;

    fn line(order: Order, step: usize, es: f64, ps: f64, ns: f64) -> ResultLine {
        ResultLine {
            method: "m".into(),
            strategy: Strategy::Sequential,
            design: Design::Group,
            order,
            density: None,
            n: 2,
            seed: 0,
            group: 0,
            step,
            subject_id: "s".into(),
            relation: "r".into(),
            same_subject_as_first: order == Order::Homogeneous,
            key_cos_first: None,
            after: None,
            perplexity: None,
            metrics: CaseMetrics {
                case_id: format!("c{step}"),
                es,
                ps: Some(ps),
                ns: Some(ns),
                em: 0.0,
                pm: None,
                nm: None,
            },
        }
    }

    /// Density cells: S per cell with an interval over its groups, and S − S(low) against the
    /// low cell of the same method, strategy and N; groups are counted, not cases.
    #[test]
    fn density_rows_compare_each_density_with_low() {
        let dense = |d: Density, group: usize, step: usize, es: f64| {
            let mut l = line(Order::Homogeneous, step, es, 1.0, 1.0);
            l.density = Some(d);
            l.n = 2;
            l.group = group;
            l
        };
        let mut lines = Vec::new();
        // High: group 0 keeps half its edits, group 1 all; low: every edit kept.
        for step in 0..2 {
            lines.push(dense(Density::High, 0, step, (step == 0) as u8 as f64));
            lines.push(dense(Density::High, 1, step, 1.0));
            for g in 0..3 {
                // Low density: a subject of its own per edit.
                let mut l = dense(Density::Low, g, step, 1.0);
                l.subject_id = format!("s{g}-{step}");
                lines.push(l);
            }
        }
        let r = build(&lines);
        assert_eq!(r.density.len(), 2);
        let (high, low) = (&r.density[0], &r.density[1]);
        assert_eq!((high.density, low.density), (Density::High, Density::Low));
        assert_eq!((high.groups, high.summary.cases), (2, 4));
        assert_eq!((low.groups, low.summary.cases), (3, 6));
        // ES 0.75, PS = NS = 1: S = 3 / (4/3 + 2) = 0.9.
        assert!((high.summary.score - 0.9).abs() < 1e-12, "{high:?}");
        assert_eq!(low.vs_low, None);
        assert_eq!(low.ci, (100.0, 100.0));
        let (d, (lo, hi)) = high.vs_low.expect("a low cell to compare with");
        assert!((d + 10.0).abs() < 1e-9, "{d}");
        // Resamples of high's two groups give ES 0.5, 0.75 or 1: S − S(low) from −25 to 0.
        assert!(
            lo < d && d < hi && lo >= -25.0 - 1e-9 && hi <= 1e-9,
            "{lo} {hi}"
        );
        assert!(high.ci.0 < 90.0 && high.ci.1 > 90.0, "{:?}", high.ci);
        let md = r.markdown();
        assert!(
            md.contains("| m | sequential | 2 | high | 2 | 4 | 0.75 |"),
            "{md}"
        );
        assert!(md.contains("| -10.0 | ["), "{md}");
        // High's subject "s" repeats in each group: step 0 is followed (ES 1 in group 0, 1 in
        // group 1), step 1 is the last (0 and 1).
        assert_eq!((high.es_followed, high.es_last), (Some(1.0), Some(0.5)));
        assert_eq!((low.es_followed, low.es_last), (None, Some(1.0)));
        assert_eq!(low.es_split_ci, None);
        // Resampled groups: (1 − 0) or (1 − 1), so the difference lies in [0, 1].
        let (lo, hi) = high.es_split_ci.unwrap();
        assert!(lo >= 0.0 && hi <= 1.0 && lo < hi, "{lo} {hi}");
        let svgs = r.svgs();
        let svg = &svgs
            .iter()
            .find(|(n, _)| n == "density-sequential-n2.svg")
            .expect("a density figure")
            .1;
        // A bar per cell (2), a legend key per density (3); S = 90 reaches 9/10 of the way up.
        assert_eq!(svg.matches("<rect x=").count(), 2 + 3, "{svg}");
        assert!(
            svg.contains(">high</text>") && svg.ends_with("</svg>\n"),
            "{svg}"
        );
        let (_, csv) = r
            .csv()
            .into_iter()
            .find(|(n, _)| n == "density.csv")
            .unwrap();
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 3);
        let width = rows[0].split(',').count();
        assert!(rows.iter().all(|l| l.split(',').count() == width), "{csv}");
    }

    /// A density cell's perplexity: geometric mean over its groups, the worst group, and the
    /// ratio to the low cell's geometric mean; groups read on other tokens are left out; cells
    /// without readings give no table, CSV or figure.
    #[test]
    fn density_perplexity_is_read_against_low_density() {
        let reading = |edited: f64, tokens: usize| GroupPerplexity {
            edited,
            unedited: 20.0,
            tokens,
            update_norm: None,
        };
        let dense = |d: Density, group: usize, p: Option<GroupPerplexity>| {
            let mut l = line(Order::Homogeneous, 0, 1.0, 1.0, 1.0);
            l.density = Some(d);
            l.n = 1;
            l.group = group;
            l.perplexity = p;
            l
        };
        let without: Vec<ResultLine> = (0..2).map(|g| dense(Density::High, g, None)).collect();
        let r = build(&without);
        assert!(r.density[0].perplexity.is_none());
        assert!(!r.markdown().contains("perplexity by subject density"));
        assert!(r.csv().iter().all(|(n, _)| n != "density-perplexity.csv"));
        assert!(r
            .svgs()
            .iter()
            .all(|(n, _)| !n.starts_with("density-perplexity")));

        // High: 40 and 90 (geometric mean 60), a third group on other tokens; low: 30 and 30.
        let lines = vec![
            dense(Density::High, 0, Some(reading(40.0, 512))),
            dense(Density::High, 1, Some(reading(90.0, 512))),
            dense(Density::High, 2, Some(reading(1e6, 256))),
            dense(Density::Low, 0, Some(reading(30.0, 512))),
            dense(Density::Low, 1, Some(reading(30.0, 512))),
        ];
        let r = build(&lines);
        let (high, low) = (&r.density[0], &r.density[1]);
        let p = high.perplexity.as_ref().unwrap();
        assert_eq!((p.groups, p.tokens, p.unedited), (2, 512, 20.0));
        assert!((p.edited - 60.0).abs() < 1e-9, "{p:?}");
        assert!((p.max - 90.0).abs() < 1e-9, "{p:?}");
        // Resamples of high's groups: 40, 60 or 90.
        assert!(
            p.ci.0 >= 40.0 - 1e-9 && p.ci.1 <= 90.0 + 1e-9 && p.ci.0 < p.ci.1,
            "{p:?}"
        );
        let (ratio, (lo, hi)) = p.vs_low.unwrap();
        assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
        assert!(lo < ratio && ratio < hi && lo >= 4.0 / 3.0 - 1e-9 && hi <= 3.0 + 1e-9);
        let lp = low.perplexity.as_ref().unwrap();
        assert!(
            (lp.edited - 30.0).abs() < 1e-9 && lp.vs_low.is_none(),
            "{lp:?}"
        );
        let md = r.markdown();
        assert!(
            md.contains("| m | sequential | 1 | high | 2 | 512 | 20.0 | 60.0 | ["),
            "{md}"
        );
        assert!(md.contains("| 90.0 | 2.000 | ["), "{md}");
        let (_, csv) = r
            .csv()
            .into_iter()
            .find(|(n, _)| n == "density-perplexity.csv")
            .expect("a CSV");
        let rows: Vec<&str> = csv.lines().collect();
        assert_eq!(rows.len(), 3, "{csv}");
        let width = rows[0].split(',').count();
        assert!(rows.iter().all(|l| l.split(',').count() == width), "{csv}");
        let svgs = r.svgs();
        let svg = &svgs
            .iter()
            .find(|(n, _)| n == "density-perplexity-sequential-n1.svg")
            .expect("a perplexity figure")
            .1;
        // Two bars, three legend keys; the unedited model's dashed line.
        assert_eq!(svg.matches("<rect x=").count(), 2 + 3, "{svg}");
        assert!(
            svg.contains("stroke-dasharray") && svg.contains(">unedited</text>"),
            "{svg}"
        );
    }

    /// The perplexity figures' axis: whole decades around the values, at least one.
    #[test]
    fn bar_axes_span_decades() {
        let ticks = |lo, hi| BarAxis::decades(lo, hi, "", None).ticks;
        assert_eq!(ticks(20.0, 90.0), [10.0, 100.0]);
        assert_eq!(ticks(40.0, 1.5e4), [10.0, 100.0, 1e3, 1e4, 1e5]);
        assert_eq!(ticks(100.0, 100.0), [100.0, 1e3]);
        assert_eq!(ticks(73.0, f64::INFINITY), [10.0, 100.0]);
        assert_eq!(BarAxis::score().ticks, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
    }

    /// Ordinary perplexities print as before; a runaway one prints in scientific notation.
    #[test]
    fn huge_perplexities_print_in_scientific_notation() {
        assert_eq!(fixed_or_sci(63.838, 1), "63.8");
        assert_eq!(fixed_or_sci(999_999.94, 1), "999999.9");
        assert_eq!(fixed_or_sci(1.8415115e37, 1), "1.84e37");
        assert_eq!(fixed_or_sci(1_925_297_405_204_475.8, 3), "1.93e15");
        assert_eq!(fixed_or_sci(f64::INFINITY, 1), "inf");
        assert_eq!(fixed_or_sci(0.0, 3), "0.000");
        assert_eq!(fixed_or_sci(0.0012, 3), "0.001");
        assert_eq!(fixed_or_sci(4.2e-9, 3), "4.20e-9");
    }

    /// Perplexities compare as logs over matched pairs; a group measured on one side only, or on
    /// other tokens, is left out.
    #[test]
    fn perplexity_rows_compare_matched_pairs_as_logs() {
        let with = |order, group, edited, tokens| {
            let mut l = line(order, 0, 1.0, 1.0, 1.0);
            l.group = group;
            l.perplexity = Some(GroupPerplexity {
                edited,
                unedited: 60.0,
                tokens,
                // The update's norm grows with the damage here: 2, 1 for the pairs kept.
                update_norm: Some(edited / 50.0),
            });
            l
        };
        let mut lines = vec![
            with(Order::Homogeneous, 0, 100.0, 256),
            with(Order::Heterogeneous, 0, 1000.0, 256),
            with(Order::Homogeneous, 1, 50.0, 256),
            with(Order::Heterogeneous, 1, 200.0, 256),
            with(Order::Homogeneous, 2, 1e6, 256),
            with(Order::Homogeneous, 3, 1e6, 256),
            with(Order::Heterogeneous, 3, 1.0, 512),
        ];
        let mut unmeasured = line(Order::Heterogeneous, 0, 1.0, 1.0, 1.0);
        unmeasured.group = 2;
        lines.push(unmeasured);
        let r = build(&lines);
        assert_eq!(r.perplexity.len(), 1);
        let p = &r.perplexity[0];
        assert_eq!((p.groups, p.tokens, p.unedited), (2, 256, 60.0));
        assert!((p.homogeneous - 5000f64.sqrt()).abs() < 1e-9, "{p:?}");
        assert!((p.heterogeneous - 200000f64.sqrt()).abs() < 1e-9, "{p:?}");
        assert_eq!(p.max, (100.0, 1000.0));
        assert!((p.ratio - 0.025f64.sqrt()).abs() < 1e-12, "{p:?}");
        assert!(
            p.ci.0 >= 0.1 - 1e-12 && p.ci.1 <= 0.25 + 1e-12 && p.ci.0 < p.ci.1,
            "{p:?}"
        );
        let md = r.markdown();
        assert!(md.contains("**0.158**"), "{md}");
        assert!(
            md.contains("cost the model less, and the 95 % interval excludes 1"),
            "{md}"
        );
        assert!(r.csv().iter().any(|(name, _)| name == "perplexity.csv"));
        let (h, t) = p.update_norm.expect("every pair has norms");
        assert!(
            (h - 2f64.sqrt()).abs() < 1e-12 && (t - 80f64.sqrt()).abs() < 1e-12,
            "{p:?}"
        );
    }

    /// A curve run's perplexity at each prefix is a row of its own and a column of the table
    /// against N; the reading names the N from which every interval excludes 1.
    #[test]
    fn curve_perplexity_is_read_against_n() {
        let mut lines = Vec::new();
        for group in 0..3 {
            for k in 1..=3usize {
                for order in [Order::Homogeneous, Order::Heterogeneous] {
                    let mut l = line(order, 0, 1.0, 1.0, 1.0);
                    (l.group, l.n, l.after) = (group, 3, Some(k));
                    // Same subject: no cost at N=1 (the same first edit), then ×2 and ×4 at N=2
                    // and 3 in every pair, with a little spread between pairs.
                    let base = 60.0 + group as f64;
                    let factor = match order {
                        Order::Homogeneous => 2f64.powi(k as i32 - 1),
                        Order::Heterogeneous => 1.0 + 0.01 * group as f64,
                    };
                    l.perplexity = Some(GroupPerplexity {
                        edited: base * factor,
                        unedited: 60.0,
                        tokens: 128,
                        update_norm: None,
                    });
                    lines.push(l);
                }
            }
        }
        let r = build(&lines);
        assert_eq!(r.perplexity.len(), 3, "a row per prefix");
        let at = |n| r.perplexity.iter().find(|p| p.cell.n == n).unwrap();
        assert_eq!(at(2).cell.of, Some(3));
        assert!(at(1).ci.0 < 1.0 && at(1).ci.1 > 0.97, "{:?}", at(1));
        assert!((at(3).ratio / at(2).ratio - 2.0).abs() < 1e-9);
        let md = r.markdown();
        assert!(md.contains("| m | sequential | group | 128 | "), "{md}");
        assert!(md.contains("×3.96*"), "{md}");
        assert!(
            md.contains("`--curve` of 3: the ratio's interval excludes 1 from N=2 on (same-subject edits cost more at N=3)"),
            "{md}"
        );
        // Shorter prefixes are read in that table, not one reading line each.
        assert!(!md.contains("N=1 of 3: perplexity"), "{md}");
        assert!(md.contains("N=3 of 3: perplexity"), "{md}");
        // Its figure: the ratio on a log scale, gridlines labelled as ratios.
        let svgs = r.svgs();
        let (_, svg) = svgs
            .iter()
            .find(|(name, _)| name == "perplexity-sequential-group-curve.svg")
            .expect("a perplexity figure");
        assert!(
            svg.contains(">×1<") && svg.contains(">×2<") && svg.contains(">×4<"),
            "{svg}"
        );
        assert!(svg.contains("m, curve of 3, 128 tokens"), "{svg}");
    }

    #[test]
    fn equal_scores_from_different_metrics_are_no_difference() {
        // S = 9/14 on both sides (harmonic means of 1, 0.6, 0.5 and of 1, 1, 0.375), as in a
        // MEND cell of the default run, whose f64s differ in the last bits.
        let lines = [
            line(Order::Homogeneous, 0, 1.0, 0.6, 0.5),
            line(Order::Heterogeneous, 0, 1.0, 1.0, 0.375),
        ];
        let r = build(&lines);
        let all = r.sd.iter().find(|r| r.view == View::All).unwrap();
        assert_eq!(all.sd, 0.0);
        let md = r.markdown();
        assert!(md.contains("**+0.0**"), "{md}");
        assert!(!md.contains("scores lower"), "{md}");
        // A real difference is still one.
        let lower = [
            line(Order::Homogeneous, 0, 1.0, 0.5, 0.5),
            line(Order::Heterogeneous, 0, 1.0, 1.0, 0.375),
        ];
        assert!(build(&lower).sd[0].sd < 0.0);
    }

    #[test]
    fn groups_of_one_order_are_reported_without_sd() {
        let mut other_group = line(Order::Heterogeneous, 0, 0.0, 1.0, 1.0);
        other_group.group = 1;
        let lines = [
            line(Order::Homogeneous, 0, 1.0, 0.5, 0.5),
            line(Order::Homogeneous, 1, 0.0, 0.5, 0.5),
            other_group,
        ];
        let r = build(&lines);
        assert!(r.sd.is_empty(), "group 0 and group 1 are no pair");
        assert_eq!(r.unpaired.len(), 2);
        let homo = &r.unpaired[0];
        assert_eq!(
            (homo.order, homo.groups, homo.summary.cases),
            (Order::Homogeneous, 1, 2)
        );
        assert_eq!(homo.summary.es, 0.5);
        assert_eq!(r.unpaired[1].summary.es, 0.0);
        let md = r.markdown();
        assert!(md.contains("### Groups without a matched pair"), "{md}");
        assert!(
            md.contains("| m | sequential | group | 2 | homogeneous | 1 | 2 | 0.50 |"),
            "{md}"
        );
        // Once paired, nothing is left over.
        let paired = [
            line(Order::Homogeneous, 0, 1.0, 0.5, 0.5),
            line(Order::Heterogeneous, 0, 0.0, 1.0, 1.0),
        ];
        let r = build(&paired);
        assert!(r.unpaired.is_empty() && !r.sd.is_empty());
        assert!(!r.markdown().contains("without a matched pair"));
    }

    #[test]
    fn runs_at_several_ns_get_an_sd_against_n_table() {
        let at = |n: usize, order: Order, step: usize, es: f64| {
            let mut l = line(order, step, es, 1.0, 1.0);
            l.n = n;
            l
        };
        let mut lines = Vec::new();
        // N = 2: both sides keep every edit; N = 3: the same-subject side loses its first.
        for step in 0..2 {
            lines.push(at(2, Order::Homogeneous, step, 1.0));
            lines.push(at(2, Order::Heterogeneous, step, 1.0));
        }
        for step in 0..3 {
            let es = if step == 0 { 0.0 } else { 1.0 };
            lines.push(at(3, Order::Homogeneous, step, es));
            lines.push(at(3, Order::Heterogeneous, step, 1.0));
        }
        // A method with cells at one N only has no row.
        for order in [Order::Homogeneous, Order::Heterogeneous] {
            let mut l = at(2, order, 0, 1.0);
            l.method = "k".into();
            lines.push(l);
        }
        let md = build(&lines).markdown();
        assert!(md.contains("### SD against N (a run per N"), "{md}");
        assert!(!md.contains("`--curve` runs"), "no curve runs: {md}");
        let row = |view: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {view} | m | sequential | group | ")))
                .unwrap_or_else(|| panic!("no SD-against-N row for view {view}: {md}"))
                .to_owned()
        };
        // N=2 no difference; N=3 S 0 against 100, one pair: an interval of one point, not 0.
        assert_eq!(
            row("first"),
            "| first | m | sequential | group | +0.0 | -100.0* | [-100.0, -100.0] |"
        );
        // View all at N=3: ES 2/3 against 1, S = 3 / (3/2 + 1 + 1) = 85.7 against 100.
        assert_eq!(
            row("all"),
            "| all | m | sequential | group | +0.0 | -14.3* | [-14.3, -14.3] |"
        );
        assert!(!md.contains("| first | k | sequential | group | "), "{md}");
        // One N for every method: no such table.
        let one_n: Vec<_> = lines.iter().filter(|l| l.n == 2).cloned().collect();
        assert!(!build(&one_n).markdown().contains("### SD against N"));
    }

    #[test]
    fn methods_at_several_ns_share_a_figure_per_strategy_and_view() {
        let mut lines = Vec::new();
        for method in ["m", "k"] {
            for n in [2, 3] {
                for step in 0..n {
                    for order in [Order::Homogeneous, Order::Heterogeneous] {
                        let mut l = line(order, step, 1.0, 1.0, 1.0);
                        (l.n, l.method) = (n, method.into());
                        lines.push(l);
                    }
                }
            }
        }
        let names = |lines: &[ResultLine]| -> Vec<String> {
            build(lines)
                .svgs()
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(
            names(&lines),
            [
                "sd-k.svg",
                "sd-m.svg",
                "sd-sequential-group-all.svg",
                "sd-sequential-group-first.svg",
                // S's bars and SD's line, a figure per method and view (fig13's kind).
                "s-k-sequential-group-all.svg",
                "s-k-sequential-group-first.svg",
                "s-m-sequential-group-all.svg",
                "s-m-sequential-group-first.svg"
            ]
        );
        let svgs = build(&lines).svgs();
        let figure = &svgs[3].1;
        assert!(figure.contains(">SD against N: sequential editing, group design, view first<"));
        // A line per method, each with its label and its two points.
        assert_eq!(figure.matches("<polyline").count(), 2, "{figure}");
        assert!(
            figure.contains(">k</text>") && figure.contains(">m</text>"),
            "{figure}"
        );
        // A method's own figure keeps a line per view.
        assert!(svgs[1].1.contains(">sequential group view all</text>"));
        // One method, or one N: no shared figure (one N: no S figure either).
        let one_method: Vec<_> = lines.iter().filter(|l| l.method == "m").cloned().collect();
        assert_eq!(
            names(&one_method),
            [
                "sd-m.svg",
                "s-m-sequential-group-all.svg",
                "s-m-sequential-group-first.svg"
            ]
        );
        let one_n: Vec<_> = lines.iter().filter(|l| l.n == 2).cloned().collect();
        assert_eq!(names(&one_n), ["sd-k.svg", "sd-m.svg"]);
    }

    #[test]
    fn the_tables_carry_each_sides_mean_margin() {
        // Every edit succeeds on both sides (SD 0), by different margins.
        let with_em = |order: Order, step: usize, em: f64| {
            let mut l = line(order, step, 1.0, 1.0, 1.0);
            l.metrics.em = em;
            l
        };
        let r = build(&[
            with_em(Order::Homogeneous, 0, 0.25),
            with_em(Order::Homogeneous, 1, 0.75),
            with_em(Order::Heterogeneous, 0, 0.9),
            with_em(Order::Heterogeneous, 1, 0.7),
        ]);
        let md = r.markdown();
        let row = |view: &str| {
            let table = md
                .split("### View `")
                .find(|t| t.starts_with(view))
                .unwrap_or_else(|| panic!("no view {view}: {md}"));
            table
                .lines()
                .find(|l| l.starts_with("| m | sequential | group | 2 | "))
                .unwrap_or_else(|| panic!("no row in view {view}: {md}"))
                .to_owned()
        };
        assert!(row("first").ends_with("| **+0.0** | [+0.0, +0.0] | 1.00 / 1.00 | 1.00 / 1.00 | 1.00 / 1.00 | 0.25 / 0.90 |"), "{md}");
        assert!(
            row("all").ends_with("| 1.00 / 1.00 | 0.50 / 0.80 |"),
            "{md}"
        );
        let csv = &r.csv()[0].1;
        let all = csv
            .lines()
            .find(|l| l.contains(",all,"))
            .unwrap_or_else(|| panic!("{csv}"));
        assert!(all.ends_with(",,0.5000,0.8000"), "{all}");
    }
}
