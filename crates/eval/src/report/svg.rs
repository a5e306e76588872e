//! The report's SVG figures: SD (and the perplexity ratio) against N with 95 % whiskers, S bars
//! by subject density, and the SVG primitives the other figure modules share.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kedit_s2rke_data::plan::{Density, Design, Strategy};

use super::*;

impl Report {
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
pub(super) struct BarAxis {
    pub(super) ticks: Vec<f64>,
    log: bool,
    caption: &'static str,
    reference: Option<(f64, &'static str)>,
}

impl BarAxis {
    /// S in points, 0 to 100.
    pub(super) fn score() -> BarAxis {
        BarAxis {
            ticks: (0..=100).step_by(20).map(f64::from).collect(),
            log: false,
            caption: "S (points) after the group's last edit, 95 % interval over groups",
            reference: None,
        }
    }

    /// Logarithmic, whole decades from at or below `lo` to at or above `hi` (at least one):
    /// perplexities of edited models span orders of magnitude (a broken group weighs 10⁶).
    pub(super) fn decades(
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
