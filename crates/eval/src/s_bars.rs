//! S as bars and SD as a line against N, one figure per method and series: the study's fig13,
//! fig9 and fig10 (paper.md §6.3), where the SD figures (`sd-*.svg`) show only the difference.
//! At each N two bars, S of the same-subject groups (red) and of the different-subject groups
//! (blue), on the left axis (0–100 points); SD = S(same) − S(different) with its 95 % interval as
//! a line on the right axis, whose zero is dashed across the plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kedit_s2rke_data::plan::{Design, Order, Strategy};

use crate::key_efficacy::color;
use crate::report::{SdRow, View};

type Key<'a> = (&'a str, Strategy, Design, View, Option<usize>);

/// `s-<method>-<strategy>-<design>-<view>[-curve].svg` for every series with rows at two or more
/// N (one N is the SD tables' row, not a figure).
pub fn svgs(rows: &[SdRow]) -> Vec<(String, String)> {
    let mut series: BTreeMap<Key, Vec<&SdRow>> = BTreeMap::new();
    for r in rows {
        series
            .entry((
                &r.cell.method,
                r.cell.strategy,
                r.cell.design,
                r.view,
                r.cell.of,
            ))
            .or_default()
            .push(r);
    }
    series
        .into_iter()
        .filter(|(_, rs)| rs.len() > 1)
        .map(|((method, strategy, design, view, of), mut rs)| {
            rs.sort_by_key(|r| r.cell.n);
            let name = format!(
                "s-{method}-{}-{}-{}{}.svg",
                strategy.name(),
                design.name(),
                view.name(),
                if of.is_some() { "-curve" } else { "" }
            );
            let title = format!(
                "{method}: S by subject (bars) and SD (line) against N, {} editing, {} design, view {}{}",
                strategy.name(),
                design.name(),
                view.name(),
                of.map_or(String::new(), |of| format!(", curve of {of}"))
            );
            (name, figure(&title, &rs))
        })
        .collect()
}

/// The right axis' range for SD: from the lowest interval end to the highest, rounded out to
/// tens, always holding 0.
fn sd_range(rows: &[&SdRow]) -> (f64, f64) {
    let lo = rows.iter().map(|r| r.ci.0.min(r.sd)).fold(0.0f64, f64::min);
    let hi = rows.iter().map(|r| r.ci.1.max(r.sd)).fold(0.0f64, f64::max);
    let (lo, hi) = ((lo / 10.0).floor() * 10.0, (hi / 10.0).ceil() * 10.0);
    (lo, hi.max(lo + 10.0))
}

fn figure(title: &str, rows: &[&SdRow]) -> String {
    let (left, top, bottom, right_axis, legend) = (60.0, 40.0, 50.0, 50.0, 170.0);
    let (bar, gap) = (16.0, 18.0);
    let plot_w = rows.len() as f64 * (2.0 * bar + gap) + gap;
    let w = (left + plot_w + right_axis + legend).max(left + 7.5 * title.chars().count() as f64);
    let h = 380.0;
    let plot_h = h - top - bottom;
    let ys = |s: f64| top + (100.0 - s) / 100.0 * plot_h;
    let (lo, hi) = sd_range(rows);
    let yd = |d: f64| top + (hi - d) / (hi - lo) * plot_h;
    let x_right = left + plot_w;
    let mut o = crate::report::svg_open(w, h, left, title);
    for k in 0..=5 {
        let s = 20.0 * k as f64;
        let _ = writeln!(o, "<line x1=\"{left}\" x2=\"{x_right}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{s:.0}</text>",
            ys(s), ys(s), if k == 0 { "black" } else { "#eee" }, left - 6.0, ys(s) + 4.0);
    }
    // The right axis: SD's ticks every 10 points (20 past 60), its zero dashed across the plot.
    let step = if hi - lo > 60.0 { 20.0 } else { 10.0 };
    let mut d = lo;
    while d <= hi + 1e-9 {
        let label = if d.abs() < 1e-9 {
            "0".to_owned()
        } else {
            format!("{d:+.0}")
        };
        let _ = writeln!(
            o,
            "<line x1=\"{x_right}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\">{label}</text>",
            x_right + 4.0,
            yd(d),
            yd(d),
            x_right + 7.0,
            yd(d) + 4.0
        );
        d += step;
    }
    let _ = writeln!(
        o,
        "<line x1=\"{x_right}\" x2=\"{x_right}\" y1=\"{top}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{left}\" x2=\"{x_right}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"4,4\"/>",
        h - bottom,
        yd(0.0),
        yd(0.0)
    );
    let mut line = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let x0 = left + gap + i as f64 * (2.0 * bar + gap);
        for (j, (s, c)) in [
            (100.0 * r.homogeneous.score, SAME),
            (100.0 * r.heterogeneous.score, OTHER),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{c}\" fill-opacity=\"0.6\"/>",
                x0 + j as f64 * bar,
                ys(s),
                bar - 1.0,
                ys(0.0) - ys(s)
            );
        }
        let mid = x0 + bar;
        let _ = writeln!(
            o,
            "<text x=\"{mid:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text><line x1=\"{mid:.1}\" x2=\"{mid:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/><circle cx=\"{mid:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"black\"/>",
            h - bottom + 18.0,
            r.cell.n,
            yd(r.ci.0),
            yd(r.ci.1),
            yd(r.sd)
        );
        line.push(format!("{mid:.1},{:.1}", yd(r.sd)));
    }
    let _ = writeln!(
        o,
        "<polyline fill=\"none\" stroke=\"black\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">N (edits per group); S in points on the left, SD on the right (95 % interval)</text>",
        (left + x_right) / 2.0,
        h - 10.0
    );
    let lx = x_right + right_axis + 10.0;
    for (k, (c, label)) in [(SAME, "S, same subject"), (OTHER, "S, different subjects")]
        .into_iter()
        .enumerate()
    {
        let ly = top + 20.0 * k as f64;
        let _ = writeln!(o, "<rect x=\"{lx}\" y=\"{}\" width=\"14\" height=\"10\" fill=\"{c}\" fill-opacity=\"0.6\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            ly - 6.0, lx + 20.0, ly + 4.0);
    }
    let ly = top + 40.0;
    let _ = writeln!(o, "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"black\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">SD</text>",
        lx + 14.0, lx + 20.0, ly + 4.0);
    o.push_str("</svg>\n");
    o
}

/// Same-subject red and different-subject blue, as the key figure draws them.
const SAME: &str = color(Order::Homogeneous);
const OTHER: &str = color(Order::Heterogeneous);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Cell;
    use crate::Summary;

    fn row(n: usize, same: f64, other: f64, ci: (f64, f64)) -> SdRow {
        let s = |score: f64| Summary {
            cases: n,
            es: score,
            ps: score,
            ns: score,
            em: 0.0,
            pm: 0.0,
            nm: 0.0,
            score,
        };
        SdRow {
            cell: Cell {
                method: "rome".into(),
                strategy: Strategy::Sequential,
                design: Design::Group,
                n,
                of: Some(8),
            },
            view: View::All,
            groups: 8,
            homogeneous: s(same),
            heterogeneous: s(other),
            sd: 100.0 * (same - other),
            ci,
        }
    }

    #[test]
    fn a_figure_per_series_with_two_bars_and_an_sd_point_per_n() {
        let rows = vec![
            row(3, 0.6, 0.85, (-40.0, -10.0)),
            row(2, 0.7, 0.8, (-25.0, 2.0)),
            // Another view with one N: no figure.
            SdRow {
                view: View::First,
                ..row(2, 0.5, 0.9, (-60.0, -20.0))
            },
        ];
        let files = svgs(&rows);
        assert_eq!(files.len(), 1);
        let (name, svg) = &files[0];
        assert_eq!(name, "s-rome-sequential-group-all-curve.svg");
        // Two bars a N and two legend keys; an SD point a N.
        assert_eq!(svg.matches("<rect x=").count(), 2 * 2 + 2);
        assert_eq!(svg.matches("<circle").count(), 2);
        // N in order along the axis.
        let two = svg.find(">2</text>").unwrap();
        let three = svg.find(">3</text>").unwrap();
        assert!(two < three);
        // The right axis spans the intervals, rounded out to tens, with 0.
        assert_eq!(sd_range(&rows.iter().collect::<Vec<_>>()), (-60.0, 10.0));
    }
}
