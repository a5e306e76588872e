//! The report's Markdown: SD tables per view, SD against N, perplexity, density and key tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kedit_s2rke_data::plan::{Design, Strategy};

use super::*;

/// `x` with `decimals` places, or in scientific notation (3 significant digits) from 10⁶ up and
/// below what `decimals` places can show: a perplexity can reach 10³⁷ after a damaging edit (KN on
/// SmolLM2), and sixty digits of it say no more than `1.84e37`; a ratio of such perplexities can
/// be 10⁻⁹, which fixed places print as `0.000`. The CSV keeps full precision.
pub(super) fn fixed_or_sci(x: f64, decimals: usize) -> String {
    let tiny = 10f64.powi(-(decimals as i32));
    if x.is_finite() && x != 0.0 && (x.abs() >= 1e6 || x.abs() < tiny) {
        format!("{x:.2e}")
    } else {
        format!("{x:.decimals$}")
    }
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
        self.fluency_markdown(&mut o);
        self.token_acc_markdown(&mut o);
        let _ = writeln!(o, "### Reading\n");
        let verdict = |point: f64, ci: (f64, f64)| {
            if ci.1 < 0.0 {
                "same-subject editing scores lower, and the 95 % interval excludes 0"
            } else if point < 0.0 {
                "same-subject editing scores lower, but the interval includes 0 (too few groups to be sure)"
            } else if ci.0 > 0.0 {
                "same-subject editing scores higher, and the interval excludes 0"
            } else {
                "no difference the interval can tell from 0"
            }
        };
        for r in &self.sd {
            let _ = write!(
                o,
                "- {} {} N={} view `{}`: SD {:+.1} [{:+.1}, {:+.1}] over {} group pairs: {}.",
                r.cell.method,
                r.cell.strategy.name(),
                r.cell.n_label(),
                r.view.name(),
                r.sd,
                r.ci.0,
                r.ci.1,
                r.groups,
                verdict(r.sd, r.ci)
            );
            // The same comparison in EasyEdit's count, where the run read it on the same pairs.
            match self
                .token_acc
                .iter()
                .find(|t| t.cell == r.cell && t.view == r.view && t.groups == r.groups)
            {
                Some(t) => {
                    let _ = writeln!(
                        o,
                        " EasyEdit's rewrite_acc: Δ {:+.1} [{:+.1}, {:+.1}]: {}.",
                        t.delta,
                        t.ci.0,
                        t.ci.1,
                        verdict(t.delta, t.ci)
                    );
                }
                None => o.push('\n'),
            }
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
