//! The report's CSV tables, at full precision.

use std::fmt::Write as _;

use super::*;

impl Report {
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
        files.extend(self.fluency_csv());
        files.extend(self.token_acc_csv());
        files
    }
}
