use super::svg::BarAxis;
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
        fluency: None,
        metrics: CaseMetrics {
            case_id: format!("c{step}"),
            es,
            ps: Some(ps),
            ns: Some(ns),
            em: 0.0,
            pm: None,
            nm: None,
            token_acc: None,
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
    assert!(
        row("first").ends_with(
            "| **+0.0** | [+0.0, +0.0] | 1.00 / 1.00 | 1.00 / 1.00 | 1.00 / 1.00 | 0.25 / 0.90 |"
        ),
        "{md}"
    );
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

/// `--s-mean case`: a failed edit (ES 0) zeroes its own case's S, not the cell's; the same lines
/// can then reverse SD's sign. Homogeneous: one edit failed outright (ES 0), one perfect;
/// heterogeneous: both succeeded with PS and NS 0.5.
#[test]
fn s_averaged_per_case_can_reverse_sd() {
    let lines = [
        line(Order::Homogeneous, 0, 0.0, 1.0, 1.0),
        line(Order::Homogeneous, 1, 1.0, 1.0, 1.0),
        line(Order::Heterogeneous, 0, 1.0, 0.5, 0.5),
        line(Order::Heterogeneous, 1, 1.0, 0.5, 0.5),
    ];
    let all = |r: &Report| r.sd.iter().find(|r| r.view == View::All).unwrap().clone();
    let cell = all(&build(&lines));
    // Cell means: homogeneous 0.5, 1, 1 → S 3/4 = 0.75; heterogeneous 1, 0.5, 0.5 → S 3/5.
    assert!((cell.homogeneous.score - 0.75).abs() < 1e-12);
    assert!((cell.sd - 15.0).abs() < 1e-9, "{}", cell.sd);
    let case = all(&build_as(&lines, ScoreMean::Case));
    // Per case: homogeneous (0 + 1) / 2 = 0.5; heterogeneous 3/5 each.
    assert!((case.homogeneous.score - 0.5).abs() < 1e-12);
    assert!((case.heterogeneous.score - 0.6).abs() < 1e-12);
    assert!((case.sd + 10.0).abs() < 1e-9, "{}", case.sd);
    // The means of ES, PS and NS do not depend on it.
    assert_eq!(case.homogeneous.es, cell.homogeneous.es);
    assert_eq!(
        build_as(&lines, ScoreMean::Case).score_mean,
        ScoreMean::Case
    );
}

/// EasyEdit's token accuracies: means over each side's cases, Δ of rewrite_acc over matched
/// pairs, and only pairs whose lines all carry them.
#[test]
fn token_accuracy_rows_pair_groups_that_carry_it() {
    use crate::token_acc::TokenAcc;
    let acc = |order, group, step, rewrite: f64, locality: Option<f64>| {
        let mut l = line(order, step, 1.0, 1.0, 1.0);
        l.group = group;
        l.metrics.token_acc = Some(TokenAcc {
            rewrite_acc: rewrite,
            rephrase_acc: None,
            locality,
            portability: None,
        });
        l
    };
    let (h, t) = (Order::Homogeneous, Order::Heterogeneous);
    let mut lines = vec![
        // Pair 0: the same-subject group lost half its first edit's tokens.
        acc(h, 0, 0, 0.5, Some(1.0)),
        acc(h, 0, 1, 1.0, Some(0.5)),
        acc(t, 0, 0, 1.0, Some(1.0)),
        acc(t, 0, 1, 1.0, None),
        // Pair 1: nothing lost.
        acc(h, 1, 0, 1.0, Some(1.0)),
        acc(h, 1, 1, 1.0, Some(1.0)),
        acc(t, 1, 0, 1.0, Some(0.0)),
        acc(t, 1, 1, 1.0, Some(1.0)),
    ];
    // Pair 2: one line without token accuracy (a run that did not read it): left out.
    lines.push(acc(h, 2, 0, 0.0, None));
    lines.push(line(h, 1, 1.0, 1.0, 1.0));
    lines.last_mut().unwrap().group = 2;
    lines.push(acc(t, 2, 0, 1.0, None));
    lines.push(acc(t, 2, 1, 1.0, None));
    let r = build(&lines);
    assert_eq!(r.token_acc.len(), 2, "{:?}", r.token_acc);
    let all = r.token_acc.iter().find(|x| x.view == View::All).unwrap();
    let first = r.token_acc.iter().find(|x| x.view == View::First).unwrap();
    // View `all` drops pair 2 (one of its lines lacks it); view `first` keeps it, whose first
    // lines both carry it.
    assert_eq!((all.groups, first.groups), (2, 3));
    assert_eq!(all.homogeneous.rewrite_acc, 3.5 / 4.0);
    assert_eq!(all.heterogeneous.rewrite_acc, 1.0);
    assert!((all.delta + 12.5).abs() < 1e-9, "{}", all.delta);
    // Locality over the cases that have it: (1 + 0.5 + 1 + 1) / 4 and (1 + 0 + 1) / 3.
    assert_eq!(all.homogeneous.locality, Some(0.875));
    assert!((all.heterogeneous.locality.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(all.homogeneous.rephrase_acc, None);
    // First edits: 0.5, 1, 0 against 1, 1, 1.
    assert!((first.delta - 100.0 * (1.5 / 3.0 - 1.0)).abs() < 1e-9);
    assert!(first.ci.0 <= first.delta && first.delta <= first.ci.1 && first.ci.1 <= 0.0);
    let md = r.markdown();
    assert!(md.contains("### EasyEdit's token accuracy"), "{md}");
    // The reading adds the same comparison in EasyEdit's count where the pairs are the same.
    assert!(
        md.contains(
            "view `first`: SD +0.0 [+0.0, +0.0] over 3 group pairs: no difference the interval can tell from 0. EasyEdit's rewrite_acc: Δ -50.0"
        ),
        "{md}"
    );
    assert!(
        md.lines()
            .any(|l| l.contains("view `all`: SD") && !l.contains("rewrite_acc")),
        "view `all`'s pairs differ (2 with token accuracy, 3 scored): no rewrite_acc there: {md}"
    );
    assert!(
        md.contains("| m | sequential | group | 2 | `all` | 2 | 0.88 / 1.00 | **-12.5** |"),
        "{md}"
    );
    let csv = r.csv();
    let (_, text) = csv
        .iter()
        .find(|(name, _)| name == "token-acc.csv")
        .expect("token-acc.csv");
    assert!(text.contains(",all,2,0.87500,1.00000,-12.50000,"), "{text}");
    // No case with portability questions: no portability column.
    assert!(!md.contains("portability homo") && !text.contains("portability"));
    // One line with portability: its column appears, means over the lines that have it.
    lines[0].metrics.token_acc.as_mut().unwrap().portability = Some(0.25);
    lines[1].metrics.token_acc.as_mut().unwrap().portability = Some(0.75);
    let r = build(&lines);
    let md = r.markdown();
    assert!(
        md.contains("| locality homo / hetero | portability homo / hetero |"),
        "{md}"
    );
    assert!(
        md.contains("| m | sequential | group | 2 | `all` | 2 | 0.88 / 1.00 | **-12.5** |")
            && md.contains("| 0.50 / – |"),
        "{md}"
    );
    let csv = r.csv();
    let text = &csv.iter().find(|(n, _)| n == "token-acc.csv").unwrap().1;
    assert!(text
        .lines()
        .next()
        .unwrap()
        .ends_with(",portability_homo,portability_hetero"));
    assert!(text.contains(",0.50000,\n"), "{text}");
    // No token accuracy anywhere: no table, no file.
    let plain = build(&[line(h, 0, 1.0, 1.0, 1.0), line(t, 0, 1.0, 1.0, 1.0)]);
    assert!(plain.token_acc.is_empty());
    assert!(!plain.markdown().contains("token accuracy"));
}
