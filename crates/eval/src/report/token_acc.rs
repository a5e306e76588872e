//! The token-accuracy table: EasyEdit's `rewrite_acc`, `rephrase_acc` and `locality` per cell and
//! view, same subject against different subjects (`kedit bench --token-acc`,
//! [`crate::token_acc`]): the study's comparison in the numbers EasyEdit prints.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::bootstrap::bootstrap_ci;
use super::{Cell, Report, View};
use crate::bench::ResultLine;
use crate::token_acc::{summarize, TokenAcc};

/// A cell's matched group pairs whose lines (of the view) all carry token accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenAccRow {
    pub cell: Cell,
    pub view: View,
    pub groups: usize,
    /// Means over each side's cases.
    pub homogeneous: TokenAcc,
    pub heterogeneous: TokenAcc,
    /// rewrite_acc(homogeneous) − rewrite_acc(heterogeneous), points (×100), with its 95 %
    /// bootstrap interval over the pairs: in view `first`, how much of the first edit a
    /// same-subject edit after it took back, as EasyEdit counts it.
    pub delta: f64,
    pub ci: (f64, f64),
}

/// A matched group pair's cases' accuracies: homogeneous, heterogeneous.
type Pair = (Vec<TokenAcc>, Vec<TokenAcc>);

/// The row of one cell and view; None where no pair carries token accuracy on both sides.
pub(super) fn token_acc_row<K: Ord + Copy>(
    cell: &Cell,
    view: View,
    homo: &BTreeMap<K, Vec<&ResultLine>>,
    hetero: &BTreeMap<K, Vec<&ResultLine>>,
) -> Option<TokenAccRow> {
    let accs = |ls: &[&ResultLine]| -> Option<Vec<TokenAcc>> {
        ls.iter()
            .filter(|l| view.keeps(l))
            .map(|l| l.metrics.token_acc)
            .collect()
    };
    // Per pair: each side's cases' accuracies.
    let pairs: Vec<Pair> = homo
        .iter()
        .filter_map(|(k, ls)| Some((accs(ls)?, accs(hetero.get(k)?)?)))
        .filter(|(h, t)| !h.is_empty() && !t.is_empty())
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let side = |idx: &[usize], pick: fn(&Pair) -> &Vec<TokenAcc>| {
        summarize(idx.iter().flat_map(|&i| pick(&pairs[i]).iter().copied()))
            .expect("pairs have cases")
    };
    let delta =
        |idx: &[usize]| 100.0 * (side(idx, |p| &p.0).rewrite_acc - side(idx, |p| &p.1).rewrite_acc);
    let all: Vec<usize> = (0..pairs.len()).collect();
    Some(TokenAccRow {
        cell: cell.clone(),
        view,
        groups: pairs.len(),
        homogeneous: side(&all, |p| &p.0),
        heterogeneous: side(&all, |p| &p.1),
        delta: delta(&all),
        ci: bootstrap_ci(pairs.len(), delta),
    })
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.2}"))
}

fn opt_csv(x: Option<f64>) -> String {
    x.map_or(String::new(), |x| format!("{x:.5}"))
}

impl Report {
    fn has_portability(&self) -> bool {
        self.token_acc
            .iter()
            .any(|r| r.homogeneous.portability.is_some() || r.heterogeneous.portability.is_some())
    }

    /// The token-accuracy rows, where a run read them.
    pub(super) fn token_acc_markdown(&self, o: &mut String) {
        if self.token_acc.is_empty() {
            return;
        }
        let _ = writeln!(o, "### EasyEdit's token accuracy (`--token-acc`)\n");
        let _ = writeln!(
            o,
            "What EasyEdit prints, teacher-forced: `rewrite_acc` and `rephrase_acc`, the share of target_new's tokens the model's argmax gets right on the rewrite and paraphrase prompts; `locality`, the share of the neighbourhood prompts' argmax answers (teacher-forced on target_true, or on a prompt's own answer where the data gives one) the edit left as the unedited model gave them; `portability` (where the data has it), the share of each portability answer's tokens answered right. Means over cases; Δ = rewrite_acc(same subject) − rewrite_acc(different subjects) in points, 95 % interval over matched group pairs.\n"
        );
        // Portability only where the data has it (EasyEdit's KnowEdit and ZsRE records).
        let portability = self.has_portability();
        let _ = writeln!(
            o,
            "| method | strategy | design | N | view | groups | rewrite_acc homo / hetero | Δ (points) | 95 % CI | rephrase_acc homo / hetero | locality homo / hetero |{}",
            if portability { " portability homo / hetero |" } else { "" }
        );
        let _ = writeln!(
            o,
            "|---|---|---|---|---|---|---|---|---|---|---|{}",
            if portability { "---|" } else { "" }
        );
        for r in &self.token_acc {
            let (h, t) = (&r.homogeneous, &r.heterogeneous);
            let extra = if portability {
                format!(" {} / {} |", opt(h.portability), opt(t.portability))
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | `{}` | {} | {:.2} / {:.2} | **{:+.1}** | [{:+.1}, {:+.1}] | {} / {} | {} / {} |{extra}",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.design.name(),
                r.cell.n_label(),
                r.view.name(),
                r.groups,
                h.rewrite_acc,
                t.rewrite_acc,
                r.delta,
                r.ci.0,
                r.ci.1,
                opt(h.rephrase_acc),
                opt(t.rephrase_acc),
                opt(h.locality),
                opt(t.locality)
            );
        }
        o.push('\n');
    }

    /// `token-acc.csv`, where a run read token accuracy.
    pub(super) fn token_acc_csv(&self) -> Option<(String, String)> {
        if self.token_acc.is_empty() {
            return None;
        }
        let portability = self.has_portability();
        let mut out = String::from(
            "method,strategy,design,n,of,view,groups,rewrite_acc_homo,rewrite_acc_hetero,delta,ci_low,ci_high,rephrase_acc_homo,rephrase_acc_hetero,locality_homo,locality_hetero",
        );
        out.push_str(if portability {
            ",portability_homo,portability_hetero\n"
        } else {
            "\n"
        });
        for r in &self.token_acc {
            let (h, t) = (&r.homogeneous, &r.heterogeneous);
            let extra = if portability {
                format!(",{},{}", opt_csv(h.portability), opt_csv(t.portability))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{:.5},{:.5},{:.5},{:.5},{:.5},{},{},{},{}{extra}",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.design.name(),
                r.cell.n,
                r.cell.of.map_or(String::new(), |o| o.to_string()),
                r.view.name(),
                r.groups,
                h.rewrite_acc,
                t.rewrite_acc,
                r.delta,
                r.ci.0,
                r.ci.1,
                opt_csv(h.rephrase_acc),
                opt_csv(t.rephrase_acc),
                opt_csv(h.locality),
                opt_csv(t.locality)
            );
        }
        Some(("token-acc.csv".into(), out))
    }
}
