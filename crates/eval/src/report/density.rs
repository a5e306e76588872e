//! Subject-density rows: S of each density against the low one, with its interval, and the
//! perplexity of each density's groups.

use std::collections::BTreeMap;

use kedit_s2rke_data::plan::{Density, Strategy};

use super::*;

fn cell_groups<'a, 'b>(
    g: &'b BTreeMap<(u64, usize), Vec<&'a ResultLine>>,
) -> Vec<&'b Vec<&'a ResultLine>> {
    g.values().collect()
}

/// Each density cell's lines, by group.
pub(super) type DensityCells<'a> =
    BTreeMap<(String, Strategy, Density, usize), BTreeMap<(u64, usize), Vec<&'a ResultLine>>>;

/// S (points) and its groups' lines for each density cell, then the rows.
pub(super) fn density_rows(dens: DensityCells, how: ScoreMean) -> Vec<DensityRow> {
    let s_points = |groups: &[&Vec<&ResultLine>], idx: &[usize]| {
        let ls: Vec<&ResultLine> = idx
            .iter()
            .flat_map(|&i| groups[i].iter().copied())
            .collect();
        100.0 * s_of(&ls, how).score
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
                summary: s_of(&lines, how),
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
