//! The fluency table: per cell and order, the n-gram entropy of what the edited model writes
//! from each case's rewrite prompt against what the unedited model wrote from it with the same
//! random draws (`kedit bench --fluency`, [`crate::fluency`]).

use std::collections::BTreeMap;
use std::fmt::Write;

use kedit_s2rke_data::plan::Order;

use super::bootstrap::bootstrap_ci;
use super::{Cell, Report};
use crate::bench::ResultLine;

/// One order's side of a cell: means over its lines that carry fluency, and Δ = the mean of
/// each line's edited − unedited entropy, with a 95 % bootstrap interval over groups.
#[derive(Debug, Clone, PartialEq)]
pub struct FluencyRow {
    pub cell: Cell,
    pub order: Order,
    pub groups: usize,
    pub lines: usize,
    /// Tokens per text, prompt included.
    pub max_len: usize,
    pub unedited: f64,
    pub edited: f64,
    pub delta: f64,
    pub ci: (f64, f64),
}

/// The rows of one cell's side (its groups' lines, by group).
pub(super) fn fluency_row<K: Ord>(
    cell: &Cell,
    order: Order,
    side: &BTreeMap<K, Vec<&ResultLine>>,
) -> Option<FluencyRow> {
    // Per group: (Σ edited, Σ unedited, lines).
    let groups: Vec<(f64, f64, usize)> = side
        .values()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l.fluency)
                .fold((0.0, 0.0, 0), |(e, u, n), f| {
                    (e + f.edited, u + f.unedited, n + 1)
                })
        })
        .filter(|g| g.2 > 0)
        .collect();
    let max_len = side
        .values()
        .flat_map(|ls| ls.iter().filter_map(|l| l.fluency))
        .map(|f| f.max_len)
        .next()?;
    let mean = |idx: &[usize], pick: fn(&(f64, f64, usize)) -> f64| {
        let (s, n) = idx.iter().fold((0.0, 0usize), |(s, n), &i| {
            (s + pick(&groups[i]), n + groups[i].2)
        });
        s / n as f64
    };
    let all: Vec<usize> = (0..groups.len()).collect();
    let delta = |idx: &[usize]| mean(idx, |g| g.0) - mean(idx, |g| g.1);
    Some(FluencyRow {
        cell: cell.clone(),
        order,
        groups: groups.len(),
        lines: groups.iter().map(|g| g.2).sum(),
        max_len,
        unedited: mean(&all, |g| g.1),
        edited: mean(&all, |g| g.0),
        delta: delta(&all),
        ci: bootstrap_ci(groups.len(), delta),
    })
}

impl Report {
    /// The fluency rows, where a run read them.
    pub(super) fn fluency_markdown(&self, o: &mut String) {
        if self.fluency.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "### Generation fluency after the group's edits (`--fluency`)\n"
        );
        let _ = writeln!(
            o,
            "The n-gram entropy (bits; EasyEdit's `fluency`, ROME's GE ÷ 100) of each case's rewrite prompt continued to {} tokens by top-k 5 sampling, by the edited model and by the unedited one with the same draws; Δ = edited − unedited, 95 % interval over groups. A model that repeats itself scores low.\n",
            self.fluency[0].max_len
        );
        let _ = writeln!(o, "| method | strategy | design | N | order | groups | cases | unedited | edited | Δ | 95 % CI |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.fluency {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | **{:+.3}** | [{:+.3}, {:+.3}] |",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.design.name(),
                r.cell.n_label(),
                r.order.name(),
                r.groups,
                r.lines,
                r.unedited,
                r.edited,
                r.delta,
                r.ci.0,
                r.ci.1
            );
        }
        o.push('\n');
    }

    /// `fluency.csv`, where a run read fluency.
    pub(super) fn fluency_csv(&self) -> Option<(String, String)> {
        if self.fluency.is_empty() {
            return None;
        }
        let mut out = String::from(
            "method,strategy,design,n,of,order,groups,cases,max_len,unedited,edited,delta,ci_low,ci_high\n",
        );
        for r in &self.fluency {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{:.5},{:.5},{:.5},{:.5},{:.5}",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.design.name(),
                r.cell.n,
                r.cell.of.map_or(String::new(), |o| o.to_string()),
                r.order.name(),
                r.groups,
                r.lines,
                r.max_len,
                r.unedited,
                r.edited,
                r.delta,
                r.ci.0,
                r.ci.1
            );
        }
        Some(("fluency.csv".into(), out))
    }
}
