//! Key cosine against efficacy, group by group: the study's fig5 (paper.md §4.3). Each point is
//! one group of a `group`-design cell scored after its last edit: how parallel the group's later
//! keys are to its first edit's key (CS) against how many of the group's edits hold (ES).
//! Same-subject groups should sit high and left (CS near 1, ES lower), different-subject groups
//! low and right.
//!
//! The paper leaves open what a point is and which keys are compared (paper.md, "Ambiguities"
//! 9). kedit's choice, from what every results line already carries: a point is a group; CS is
//! the mean over the group's later edits of `key_cos_first` (each edit's key against the first
//! edit's, at the method's first edited layer, on the unedited model); ES is the mean over all
//! of the group's edits (view `all`), and the first edit's own ES is kept beside it. Methods
//! that write under no key (FT, MEND, KN) have no points. Density and bracket cells are left
//! out: their later edits mix subjects by design, so a group's mean cosine says less.
//!
//! Whether keys come from the unedited model or at edit time (the same ambiguity) makes no
//! difference here: every locate-then-edit method in kedit writes only MLP output matrices
//! (`down_proj`; PMET optimises an attention δ but does not write it), and the key at the first
//! edited layer is that matrix's input, computed by the layers below and the layer's own
//! attention and up/gate projections, which no edit of the group touches. (At MEMIT's later
//! layers it would differ.)

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::bench::ResultLine;
use crate::report::{bootstrap_draws, percentile};
use kedit_s2rke_data::plan::{Design, Order, Strategy};

/// One group: its mean key cosine with the first edit and its efficacy after its last edit.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyPoint {
    pub method: String,
    pub strategy: Strategy,
    pub n: usize,
    pub order: Order,
    pub seed: u64,
    pub group: usize,
    /// Mean cosine of the later edits' keys with the first edit's key.
    pub cs: f64,
    /// Mean ES over the group's edits.
    pub es: f64,
    /// The first edit's ES.
    pub es_first: f64,
}

/// The points of every `group`-design cell whose lines carry key cosines, from the lines scored
/// after each group's last edit (a `curve` run's last scoring; its earlier ones are prefixes).
pub fn points(lines: &[ResultLine]) -> Vec<KeyPoint> {
    type Key<'a> = (&'a str, Strategy, usize, Order, u64, usize);
    let mut groups: BTreeMap<Key, Vec<&ResultLine>> = BTreeMap::new();
    for l in lines {
        if l.density.is_some() || l.design != Design::Group || l.after.unwrap_or(l.n) != l.n {
            continue;
        }
        groups
            .entry((&l.method, l.strategy, l.n, l.order, l.seed, l.group))
            .or_default()
            .push(l);
    }
    groups
        .into_iter()
        .filter_map(|((method, strategy, n, order, seed, group), ls)| {
            let cos: Vec<f64> = ls.iter().filter_map(|l| l.key_cos_first).collect();
            let first = ls.iter().find(|l| l.step == 0)?;
            if cos.is_empty() {
                return None;
            }
            Some(KeyPoint {
                method: method.to_owned(),
                strategy,
                n,
                order,
                seed,
                group,
                cs: mean(&cos),
                es: mean(&ls.iter().map(|l| l.metrics.es).collect::<Vec<_>>()),
                es_first: first.metrics.es,
            })
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Pearson's correlation, `None` where either variable is constant (a cell whose same-subject
/// groups all keep every edit has no ES variance to explain) or there are fewer than 3 distinct
/// points (through 2, r is ±1 whatever they are: a bootstrap resample of few groups often has
/// only 2).
pub fn pearson(xy: &[(f64, f64)]) -> Option<f64> {
    let mut distinct: Vec<(f64, f64)> = Vec::new();
    for &p in xy {
        if !distinct.contains(&p) {
            distinct.push(p);
        }
    }
    if distinct.len() < 3 {
        return None;
    }
    let n = xy.len() as f64;
    let (mx, my) = (
        xy.iter().map(|p| p.0).sum::<f64>() / n,
        xy.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for &(x, y) in xy {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    // Below rounding, a variable is constant (cosines of identical keys differ in the last bits).
    if sxx < 1e-18 * n || syy < 1e-18 * n {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Pearson's r with a 95 % percentile interval from the report's 2000 resamples of the points;
/// resamples without variance in a variable are skipped, and with fewer than half of them left
/// there is no interval. `None` where r itself is undefined.
pub fn pearson_ci(xy: &[(f64, f64)]) -> Option<(f64, Option<(f64, f64)>)> {
    let r = pearson(xy)?;
    let boots = bootstrap_draws(xy.len(), |idx| {
        pearson(&idx.iter().map(|&i| xy[i]).collect::<Vec<_>>())
    });
    if boots.len() < 1000 {
        return Some((r, None));
    }
    Some((
        r,
        Some((percentile(&boots, 0.025), percentile(&boots, 0.975))),
    ))
}

/// Fewer same-subject groups than this get no correlation: with 3 (the default profile's), r
/// and its resamples are mostly ±1 or undefined.
pub const MIN_GROUPS_FOR_R: usize = 5;

type Cell<'a> = (&'a str, Strategy, usize);

fn cells(points: &[KeyPoint]) -> BTreeMap<Cell<'_>, [Vec<&KeyPoint>; 2]> {
    let mut cells: BTreeMap<Cell, [Vec<&KeyPoint>; 2]> = BTreeMap::new();
    for p in points {
        cells.entry((&p.method, p.strategy, p.n)).or_default()
            [(p.order == Order::Heterogeneous) as usize]
            .push(p);
    }
    cells
}

/// The table: per method, strategy and N, each side's groups, mean CS and mean ES, and the
/// correlation of CS with ES within the same-subject groups, with its interval, from
/// [`MIN_GROUPS_FOR_R`] groups (do the groups whose keys are more alike keep fewer edits, beyond
/// the split by subject? With 8–12 groups a cell, the interval is wide).
pub fn markdown(points: &[KeyPoint], o: &mut String) {
    if points.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "### Key cosine against efficacy, group by group (the study's fig5)\n\n\
         A point per group scored after its last edit: CS = mean cosine of the later edits' keys \
         with the first edit's key (unedited model, first edited layer), ES = mean over the \
         group's edits. Points: keys-es.csv; figures: keys-es-<method>-n<N>.svg.\n"
    );
    let _ = writeln!(
        o,
        "| method | strategy | N | same-subject groups | CS | ES | different-subject groups | CS | ES | r(CS, ES) within same subject [95 % CI] |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    let side = |ps: &[&KeyPoint]| {
        if ps.is_empty() {
            return "0 | – | –".to_owned();
        }
        let cs: Vec<f64> = ps.iter().map(|p| p.cs).collect();
        let es: Vec<f64> = ps.iter().map(|p| p.es).collect();
        format!("{} | {:.3} | {:.2}", ps.len(), mean(&cs), mean(&es))
    };
    for ((method, strategy, n), [same, other]) in cells(points) {
        let xy: Vec<(f64, f64)> = same.iter().map(|p| (p.cs, p.es)).collect();
        let r = match (xy.len() >= MIN_GROUPS_FOR_R)
            .then(|| pearson_ci(&xy))
            .flatten()
        {
            None => "–".to_owned(),
            Some((r, None)) => format!("{r:+.2}"),
            Some((r, Some((lo, hi)))) => format!("{r:+.2} [{lo:+.2}, {hi:+.2}]"),
        };
        let _ = writeln!(
            o,
            "| {method} | {} | {n} | {} | {} | {r} |",
            strategy.name(),
            side(&same),
            side(&other)
        );
    }
    o.push('\n');
}

/// `keys-es.csv`: one row per point.
pub fn csv(points: &[KeyPoint]) -> String {
    let mut s = String::from("method,strategy,n,order,seed,group,cs,es,es_first\n");
    for p in points {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.6},{:.4},{:.4}",
            p.method,
            p.strategy.name(),
            p.n,
            p.order.name(),
            p.seed,
            p.group,
            p.cs,
            p.es,
            p.es_first
        );
    }
    s
}

/// One SVG per method and N, a panel per strategy (sequential, then batch, as fig5 sets them
/// side by side): ES across, CS up, same-subject groups red and different-subject groups blue,
/// as the study colours them. Points are translucent, so groups at the same place show darker.
pub fn svgs(points: &[KeyPoint]) -> Vec<(String, String)> {
    let mut figures: BTreeMap<(&str, usize), BTreeMap<Strategy, Vec<&KeyPoint>>> = BTreeMap::new();
    for p in points {
        figures
            .entry((&p.method, p.n))
            .or_default()
            .entry(p.strategy)
            .or_default()
            .push(p);
    }
    figures
        .into_iter()
        .map(|((method, n), panels)| {
            (
                format!("keys-es-{method}-n{n}.svg"),
                figure(method, n, &panels),
            )
        })
        .collect()
}

fn figure(method: &str, n: usize, panels: &BTreeMap<Strategy, Vec<&KeyPoint>>) -> String {
    let (pw, ph, left, top, gap, bottom) = (300.0, 300.0, 60.0, 50.0, 50.0, 50.0);
    let legend = 190.0;
    let title = format!("{method}, N = {n}: key cosine with the first edit against the group's ES (a point per group)");
    // The title sets the width where one panel would leave it cut off (~7.5 px a character at
    // 14 px).
    let w = (left + panels.len() as f64 * (pw + gap) + legend)
        .max(left + 7.5 * title.chars().count() as f64 + 20.0);
    let h = top + ph + bottom;
    // CS from the lowest tenth below the smallest cosine (down to −1) to 1.
    let lo = panels
        .values()
        .flatten()
        .map(|p| p.cs)
        .fold(0.0f64, f64::min);
    let lo = ((lo * 10.0).floor() / 10.0).max(-1.0);
    let mut o = crate::report::svg_open(w, h, left, &title);
    for (i, (strategy, ps)) in panels.iter().enumerate() {
        let x0 = left + i as f64 * (pw + gap);
        let x = |es: f64| x0 + es * pw;
        let y = |cs: f64| top + (1.0 - cs) / (1.0 - lo) * ph;
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} editing</text>",
            x0 + pw / 2.0,
            top - 8.0,
            strategy.name()
        );
        for t in 0..=5 {
            let es = t as f64 / 5.0;
            let _ = writeln!(o, "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{es:.1}</text>",
                x(es), x(es), top + ph, x(es), top + ph + 16.0);
        }
        let mut cs = 1.0;
        while cs >= lo - 1e-9 {
            let _ = writeln!(
                o,
                "<line x1=\"{x0}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
                x0 + pw,
                y(cs),
                y(cs)
            );
            if i == 0 {
                let _ = writeln!(
                    o,
                    "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{cs:.1}</text>",
                    x0 - 6.0,
                    y(cs) + 4.0
                );
            }
            cs -= if 1.0 - lo > 1.0 { 0.2 } else { 0.1 };
        }
        let _ = writeln!(
            o,
            "<rect x=\"{x0}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>"
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">ES (mean over the group's edits)</text>",
            x0 + pw / 2.0,
            h - 12.0
        );
        for p in ps {
            let c = color(p.order);
            let _ = writeln!(
                o,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{c}\" fill-opacity=\"0.35\" stroke=\"{c}\"/>",
                x(p.es),
                y(p.cs)
            );
        }
    }
    let _ = writeln!(
        o,
        "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">CS (key cosine with the first edit)</text>",
        top + ph / 2.0
    );
    let lx = w - legend + 10.0;
    for (i, (order, label)) in [
        (Order::Homogeneous, "same subject"),
        (Order::Heterogeneous, "different subjects"),
    ]
    .into_iter()
    .enumerate()
    {
        let ly = top + 10.0 + 20.0 * i as f64;
        let c = color(order);
        let _ = writeln!(o, "<circle cx=\"{lx}\" cy=\"{ly}\" r=\"5\" fill=\"{c}\" fill-opacity=\"0.35\" stroke=\"{c}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            lx + 12.0, ly + 4.0);
    }
    o.push_str("</svg>\n");
    o
}

/// The study's colours: red for same-subject, blue for different-subject groups.
pub(crate) const fn color(order: Order) -> &'static str {
    match order {
        Order::Homogeneous => "#d62728",
        Order::Heterogeneous => "#1f77b4",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CaseMetrics;

    fn line(order: Order, group: usize, step: usize, cos: Option<f64>, es: f64) -> ResultLine {
        ResultLine {
            method: "rome".into(),
            strategy: Strategy::Sequential,
            design: Design::Group,
            order,
            density: None,
            n: 3,
            seed: 0,
            group,
            step,
            subject_id: format!("s{group}{step}"),
            relation: "P1".into(),
            same_subject_as_first: order == Order::Homogeneous,
            key_cos_first: cos,
            after: None,
            perplexity: None,
            fluency: None,
            metrics: CaseMetrics {
                case_id: format!("c{group}{step}"),
                es,
                ps: None,
                ns: None,
                em: 0.0,
                pm: None,
                nm: None,
                token_acc: None,
            },
        }
    }

    #[test]
    fn a_point_per_group_from_its_later_keys_and_all_its_edits() {
        let mut lines = vec![
            line(Order::Homogeneous, 0, 0, None, 0.0),
            line(Order::Homogeneous, 0, 1, Some(0.9), 1.0),
            line(Order::Homogeneous, 0, 2, Some(0.8), 1.0),
            line(Order::Heterogeneous, 0, 0, None, 1.0),
            line(Order::Heterogeneous, 0, 1, Some(0.1), 1.0),
            line(Order::Heterogeneous, 0, 2, Some(0.3), 0.0),
        ];
        // A curve run's earlier scoring (after 2 of 3 edits) is a prefix, not a point.
        let mut early = line(Order::Homogeneous, 1, 0, None, 1.0);
        early.after = Some(2);
        lines.push(early);
        // A method without keys gives no point.
        let mut ft = line(Order::Homogeneous, 2, 0, None, 1.0);
        ft.method = "ft-m".into();
        lines.push(ft);
        let ps = points(&lines);
        assert_eq!(ps.len(), 2, "{ps:?}");
        let (same, other) = (&ps[0], &ps[1]);
        assert_eq!(same.order, Order::Homogeneous);
        assert!((same.cs - 0.85).abs() < 1e-12);
        assert!((same.es - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(same.es_first, 0.0);
        assert!((other.cs - 0.2).abs() < 1e-12);
        assert_eq!(other.es_first, 1.0);
        let csv = csv(&ps);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains("rome,sequential,3,homogeneous,0,0,0.850000,0.6667,0.0000"));
        let mut md = String::new();
        markdown(&ps, &mut md);
        assert!(
            md.contains("| rome | sequential | 3 | 1 | 0.850 | 0.67 | 1 | 0.200 | 0.67 | – |"),
            "{md}"
        );
        let svgs = svgs(&ps);
        assert_eq!(svgs.len(), 1);
        assert_eq!(svgs[0].0, "keys-es-rome-n3.svg");
        assert_eq!(
            svgs[0].1.matches("<circle").count(),
            2 + 2,
            "two points, two legend keys"
        );
    }

    #[test]
    fn pearson_is_undefined_without_variance() {
        assert_eq!(pearson(&[(0.9, 1.0), (0.8, 1.0), (0.7, 1.0)]), None);
        assert_eq!(pearson(&[(0.9, 0.0), (0.8, 1.0)]), None);
        // Four points at two places: r would be ±1 whatever they are.
        assert_eq!(
            pearson(&[(0.9, 0.0), (0.8, 1.0), (0.9, 0.0), (0.8, 1.0)]),
            None
        );
        let r = pearson(&[(0.9, 0.0), (0.8, 0.5), (0.7, 1.0)]).unwrap();
        assert!((r + 1.0).abs() < 1e-12);
        let r = pearson(&[(1.0, 1.0), (2.0, 3.0), (3.0, 2.0)]).unwrap();
        assert!((r - 0.5).abs() < 1e-12);
    }

    #[test]
    fn pearson_interval_holds_r_and_narrows_with_more_points() {
        // y = x + a small wobble: r near 1, its interval too.
        let tight: Vec<(f64, f64)> = (0..40)
            .map(|i| (i as f64, i as f64 + if i % 2 == 0 { 0.3 } else { -0.3 }))
            .collect();
        let (r, ci) = pearson_ci(&tight).unwrap();
        let (lo, hi) = ci.unwrap();
        assert!(
            r > 0.99 && lo <= r && r <= hi && lo > 0.98,
            "{r} [{lo}, {hi}]"
        );
        // Four noisy points: a wide interval around r, many times the tight one's width.
        let (r4, ci4) = pearson_ci(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0)]).unwrap();
        let (lo4, hi4) = ci4.unwrap();
        assert!(lo4 <= r4 && r4 <= hi4, "{r4} [{lo4}, {hi4}]");
        assert!(
            hi4 - lo4 > 20.0 * (hi - lo),
            "[{lo4}, {hi4}] against [{lo}, {hi}]"
        );
        // Constant ES: no r, no interval.
        assert_eq!(pearson_ci(&[(0.9, 1.0), (0.8, 1.0), (0.7, 1.0)]), None);
    }
}
