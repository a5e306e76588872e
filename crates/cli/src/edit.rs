//! `kedit edit`: edit the requests one at a time, in batches, or sequentially, score them, and
//! write the report and the patch.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use kedit_editing::EditCase;
use kedit_eval::perplexity::DEFAULT_WINDOW;
use kedit_eval::token_acc::LocalityReference;
use kedit_models::{LanguageModel, ModelSpec};

use crate::bench::{check_identity, RunIdentity};
use crate::{check_output, methods, progress, write_atomic, MethodArgs, RunOnBackend};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Arrange {
    SameSubject,
    Mixed,
}

/// Blocks of `k` subjects with at least `k` records, `k` records each, ordered so that
/// consecutive runs of `k` cases are one subject's (`SameSubject`) or `k` subjects' (`Mixed`).
fn arrange(
    cases: Vec<kedit_editing::EditCase>,
    k: usize,
    how: Arrange,
) -> Vec<kedit_editing::EditCase> {
    let mut order: Vec<String> = Vec::new();
    let mut by_subject: std::collections::HashMap<String, Vec<kedit_editing::EditCase>> =
        Default::default();
    for c in cases {
        if !by_subject.contains_key(&c.subject_id) {
            order.push(c.subject_id.clone());
        }
        by_subject.entry(c.subject_id.clone()).or_default().push(c);
    }
    let full: Vec<Vec<kedit_editing::EditCase>> = order
        .iter()
        .map(|s| by_subject.remove(s).expect("seen"))
        .filter(|g| g.len() >= k)
        .collect();
    let mut out = Vec::new();
    for block in full.chunks_exact(k) {
        for a in 0..k {
            for b in 0..k {
                let (s, r) = match how {
                    Arrange::SameSubject => (a, b),
                    Arrange::Mixed => (b, a),
                };
                out.push(block[s][r].clone());
            }
        }
    }
    out
}

/// A `kedit edit --report FILE` run's progress, kept in `FILE.progress/` until the report is
/// written: `run.json` (what the run is: method, model, backend, requests, resolved
/// hyperparameters, selection), `cases.jsonl` (each edited case's scores, appended one batch per
/// write and fsynced) and, for `--sequential`, each batch's patch (`patches/000000.safetensors`,
/// …). A run killed at any moment resumes from it when the same command is run again: done
/// batches are not edited again (with `--sequential`, their saved patches are applied instead),
/// and the report equals an uninterrupted run's.
struct Progress {
    dir: PathBuf,
    file: std::fs::File,
    done: std::collections::HashMap<String, kedit_eval::CaseMetrics>,
}

impl Progress {
    fn dir_of(report: &Path) -> PathBuf {
        let mut name = report.as_os_str().to_owned();
        name.push(".progress");
        PathBuf::from(name)
    }

    fn open(report: &Path, identity: &RunIdentity) -> Result<Self> {
        let dir = Self::dir_of(report);
        std::fs::create_dir_all(dir.join("patches"))
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let path = dir.join("cases.jsonl");
        let (file, text) = kedit_eval::bench::open_appending(
            &path,
            "another kedit edit is writing this report (the same command running twice?); wait for it, or pass another --report",
        )?;
        let mut done = std::collections::HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let m: kedit_eval::CaseMetrics = serde_json::from_str(line).with_context(|| {
                format!("{}: line {}: not a case's scores", path.display(), i + 1)
            })?;
            done.insert(m.case_id.clone(), m);
        }
        check_identity(
            &dir.join("run.json"),
            identity,
            done.len(),
            &format!(
                "delete {} to start over, or pass another --report",
                dir.display()
            ),
        )?;
        if !done.is_empty() {
            tracing::info!(
                "{}: resuming, {} cases already edited",
                dir.display(),
                done.len()
            );
        }
        Ok(Self { dir, file, done })
    }

    fn patch_file(&self, batch: usize) -> PathBuf {
        self.dir
            .join("patches")
            .join(format!("{batch:06}.safetensors"))
    }

    fn last_patch_file(&self) -> PathBuf {
        self.dir.join("patches").join("last.safetensors")
    }

    /// One batch's scores in one write, then fsync.
    fn append(&mut self, scores: &[kedit_eval::CaseMetrics]) -> Result<()> {
        use std::io::Write;
        let mut text = String::new();
        for m in scores {
            text.push_str(&serde_json::to_string(m)?);
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("{}: cannot append", self.dir.display()))
    }
}

pub(crate) struct Edit {
    pub(crate) m: MethodArgs,
    pub(crate) batch: bool,
    pub(crate) sequential: bool,
    pub(crate) batch_size: Option<usize>,
    pub(crate) arrange: Option<Arrange>,
    pub(crate) limit: Option<usize>,
    pub(crate) skip: usize,
    pub(crate) one_per_subject: bool,
    pub(crate) patch_out: Option<PathBuf>,
    pub(crate) report: Option<PathBuf>,
    pub(crate) perplexity_tokens: Option<usize>,
}
/// The last `tokens` tokens of the WikiText-2 text kedit carries: the held-out text of `kedit
/// edit --perplexity-tokens` and `kedit bench --perplexity-tokens`.
pub(crate) fn held_out_ids<B: Backend>(lm: &LanguageModel<B>, tokens: usize) -> Result<Vec<u32>> {
    let corpus = kedit_locate_edit::stats::DEFAULT_CORPUS;
    let text = std::fs::read_to_string(corpus).with_context(|| format!("{corpus}: cannot read"))?;
    Ok(kedit_eval::perplexity::tail_ids(lm, &text, tokens)?.0)
}

impl RunOnBackend for Edit {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        methods::check(&self.m.method)?;
        if let Some(p) = &self.patch_out {
            check_output("--patch-out", p)?;
        }
        if let Some(p) = &self.report {
            check_output("--report", p)?;
        }
        let mut cases = self.m.cases()?;
        let in_file = cases.len();
        if self.one_per_subject {
            let mut seen = std::collections::HashSet::new();
            cases.retain(|c| seen.insert(c.subject_id.clone()));
        }
        match self.perplexity_tokens {
            Some(0) => bail!("--perplexity-tokens 0: perplexity of no text"),
            Some(_) if !self.sequential => bail!(
                "--perplexity-tokens needs --sequential: other modes restore the unedited model after each batch"
            ),
            _ => {}
        }
        if self.batch_size == Some(0) {
            bail!("--batch-size 0: a batch needs at least one request");
        }
        if let Some(how) = self.arrange {
            let k = self.batch_size.context("--arrange needs --batch-size K")?;
            cases = arrange(cases, k, how);
        }
        cases.drain(..self.skip.min(cases.len()));
        if let Some(n) = self.limit {
            cases.truncate(n);
        }
        if cases.is_empty() {
            let mut by = Vec::new();
            if self.one_per_subject {
                by.push("--one-per-subject".to_owned());
            }
            if let Some(how) = self.arrange {
                let k = self.batch_size.unwrap_or(0);
                let name = how.to_possible_value().expect("no skipped variants");
                by.push(format!(
                    "--arrange {} (blocks of {k} subjects with {k} records each)",
                    name.get_name()
                ));
            }
            if self.skip > 0 {
                by.push(format!("--skip {}", self.skip));
            }
            if self.limit == Some(0) {
                by.push("--limit 0".to_owned());
            }
            if by.is_empty() {
                bail!("{}: no cases", self.m.requests.display());
            }
            bail!(
                "{}: no cases left of {in_file} after {}",
                self.m.requests.display(),
                by.join(", ")
            );
        }
        let mut lm = LanguageModel::<B>::load(spec, device)?;
        let mut editor = self.m.editor(&lm)?;
        let mut progress_file = match &self.report {
            Some(report) => {
                let mut identity = RunIdentity::of(
                    &self.m.method,
                    self.m.hparams.as_deref(),
                    self.m.archive.as_deref(),
                    &self.m.requests,
                    spec,
                    &lm,
                    device,
                )?;
                identity.selection = Some(serde_json::json!({
                    "batch": self.batch, "batch_size": self.batch_size,
                    "sequential": self.sequential,
                    "arrange": self.arrange.map(|a| format!("{a:?}")),
                    "skip": self.skip, "limit": self.limit,
                    "one_per_subject": self.one_per_subject,
                    // Scores saved before kedit read token accuracy lack it.
                    "token_acc": true,
                }));
                Some(Progress::open(report, &identity)?)
            }
            None => None,
        };
        let mut pre = kedit_eval::evaluate(&lm, &cases)?;
        // EasyEdit's token accuracies, and the unedited model's answers its locality compares
        // the edited model's with (the unedited model has no locality of its own).
        let reference = LocalityReference::of(&lm, &cases)?;
        with_token_acc(&lm, &cases, &mut pre, None)?;
        // The held-out tokens and the unedited model's perplexity on them.
        let held_out = match self.perplexity_tokens {
            Some(n) => {
                let ids = held_out_ids(&lm, n)?;
                let pre = kedit_eval::perplexity::perplexity(&lm, &ids, DEFAULT_WINDOW)?;
                Some((ids, pre))
            }
            None => None,
        };
        let mut post = Vec::new();
        let mut last_patch: Option<kedit_editing::Patch> = None;
        let started = std::time::Instant::now();
        // Every editable matrix as it was, to put back exactly after each case.
        let snapshot = kedit_editing::Snapshot::take(&lm.model);
        let size = match (self.batch_size, self.batch) {
            (Some(k), _) => k,
            (None, true) => cases.len(),
            (None, false) => 1,
        };
        let batches = cases.len().div_ceil(size);
        let bar = progress(cases.len(), &format!("{} edit", self.m.method), "cases");
        // With --sequential only a leading run of done batches can be taken as done: a later
        // batch was edited on the model those left.
        let mut resuming = true;
        for (i, chunk) in cases.chunks(size).enumerate() {
            let reqs: Vec<_> = chunk.iter().map(|c| c.request.clone()).collect();
            let saved: Option<Vec<kedit_eval::CaseMetrics>> = progress_file
                .as_ref()
                .filter(|_| resuming || !self.sequential)
                .and_then(|p| {
                    chunk
                        .iter()
                        .map(|c| p.done.get(&c.case_id).cloned())
                        .collect()
                });
            let (m, patch) = if let Some(saved) = saved {
                let pf = progress_file.as_ref().expect("saved scores come from it");
                let patch = if self.sequential {
                    let file = pf.patch_file(i);
                    let patch = kedit_editing::Patch::load(&file).with_context(|| {
                        format!(
                            "{}: batch {i}'s patch is missing; delete the folder to start over",
                            pf.dir.display()
                        )
                    })?;
                    patch.apply(&mut lm.model)?;
                    editor.replay(&lm, &reqs)?;
                    patch
                } else if i + 1 == batches && self.patch_out.is_some() {
                    kedit_editing::Patch::load(&pf.last_patch_file())?
                } else {
                    kedit_editing::Patch::default()
                };
                (saved, patch)
            } else {
                resuming = false;
                let t = std::time::Instant::now();
                let patch = editor.apply(&mut lm, &reqs)?;
                let mut m = kedit_eval::evaluate(&lm, chunk)?;
                with_token_acc(&lm, chunk, &mut m, Some(&reference))?;
                if let Some(pf) = progress_file.as_mut() {
                    if self.sequential {
                        patch.save(&pf.patch_file(i))?;
                    } else if self.patch_out.is_some() {
                        // --patch-out writes the last batch's patch: kept in case that batch
                        // ends up done and the report not yet written.
                        patch.save(&pf.last_patch_file())?;
                    }
                    pf.append(&m)?;
                }
                let s = kedit_eval::summarize(&m);
                bar.suspend(|| {
                    tracing::info!(
                        "{} {}/{batches} {}: es {} ps {} ns {} ({:.1} s)",
                        if size == 1 { "case" } else { "batch" },
                        i + 1,
                        chunk[0].case_id,
                        rate(s.es),
                        rate(s.ps),
                        rate(s.ns),
                        t.elapsed().as_secs_f64()
                    )
                });
                (m, patch)
            };
            bar.inc(chunk.len() as u64);
            post.extend(m);
            last_patch = Some(match (last_patch, self.sequential) {
                (Some(mut all), true) => {
                    all.extend(patch);
                    all
                }
                _ => patch,
            });
            if !self.sequential {
                snapshot.clone().restore(&mut lm.model);
                editor.reset();
            }
        }
        bar.finish_and_clear();
        // After the last edit: what the earlier edits kept.
        let last = if self.sequential {
            let mut last = kedit_eval::evaluate(&lm, &cases)?;
            with_token_acc(&lm, &cases, &mut last, Some(&reference))?;
            Some(last)
        } else {
            None
        };
        let elapsed = started.elapsed().as_secs_f64();
        // After the timing: the editing's seconds stay comparable with runs that skip it.
        let ppl = match held_out {
            Some((ids, pre)) => Some((
                pre,
                kedit_eval::perplexity::perplexity(&lm, &ids, DEFAULT_WINDOW)?,
            )),
            None => None,
        };
        if let (Some(p), Some(out)) = (&last_patch, &self.patch_out) {
            p.save(out)?;
        }
        let (s_pre, s_post) = (kedit_eval::summarize(&pre), kedit_eval::summarize(&post));
        println!("{:<10} {:>6} {:>6} {:>6} {:>6}", "", "ES", "PS", "NS", "S");
        let s_last = last.as_deref().map(kedit_eval::summarize);
        let mut rows = vec![("pre-edit", &s_pre), ("post-edit", &s_post)];
        if let Some(s) = &s_last {
            rows.push(("final", s));
        }
        for (name, s) in rows {
            println!(
                "{name:<10} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
                s.es, s.ps, s.ns, s.score
            );
        }
        let token_acc = |m: &[kedit_eval::CaseMetrics]| {
            kedit_eval::token_acc::summarize(m.iter().filter_map(|c| c.token_acc))
        };
        // (printed label, the report's key, means)
        let mut acc_rows = vec![
            ("pre-edit", "pre", token_acc(&pre)),
            ("post-edit", "post", token_acc(&post)),
        ];
        if let Some(l) = &last {
            acc_rows.push(("final", "final", token_acc(l)));
        }
        // Portability only where the data has it (EasyEdit's KnowEdit and ZsRE records).
        let portability = acc_rows
            .iter()
            .any(|(_, _, t)| t.is_some_and(|t| t.portability.is_some()));
        let mut head = format!(
            "{:<10} {:>11} {:>12} {:>8}",
            "", "rewrite_acc", "rephrase_acc", "locality"
        );
        if portability {
            head.push_str(&format!(" {:>11}", "portability"));
        }
        println!("{head}  (EasyEdit's token accuracy)");
        for (name, _, t) in &acc_rows {
            if let Some(t) = t {
                let mut row = format!(
                    "{name:<10} {:>11.3} {:>12} {:>8}",
                    t.rewrite_acc,
                    rate3(t.rephrase_acc),
                    rate3(t.locality)
                );
                if portability {
                    row.push_str(&format!(" {:>11}", rate3(t.portability)));
                }
                println!("{row}");
            }
        }
        if let Some((pre, last)) = &ppl {
            println!(
                "perplexity: pre-edit {:.3}, final {:.3} ({} tokens of held-out text)",
                pre.perplexity, last.perplexity, pre.tokens
            );
        }
        if self.sequential {
            println!("post-edit: each case right after its own edit; final: after the last edit");
        }
        println!(
            "{} cases, {:.1} s editing+evaluation ({:.1} s per case)",
            cases.len(),
            elapsed,
            elapsed / cases.len() as f64
        );
        if let Some(out) = &self.report {
            let edits = post
                .iter()
                .zip(&pre)
                .enumerate()
                .map(|(i, (m, p))| -> Result<serde_json::Value> {
                    let mut e = serde_json::to_value(m)?;
                    e["pre"] = serde_json::json!({"es": p.es, "ps": p.ps, "ns": p.ns, "token_acc": p.token_acc});
                    if let Some(f) = last.as_ref().map(|l| &l[i]) {
                        let mut f = serde_json::to_value(f)?;
                        f.as_object_mut().expect("a struct").remove("case_id");
                        e["final"] = f;
                    }
                    Ok(e)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut report = serde_json::json!({"method": self.m.method, "model": lm.source, "edits": edits,
                "summary": s_post, "pre_summary": s_pre, "seconds": elapsed});
            if let Some(s) = &s_last {
                report["final_summary"] = serde_json::to_value(s)?;
            }
            report["token_acc"] = serde_json::json!(acc_rows
                .iter()
                .map(|(_, key, t)| (key, t))
                .collect::<std::collections::BTreeMap<_, _>>());
            if let Some((pre, last)) = &ppl {
                report["perplexity"] = serde_json::json!({"pre": pre, "final": last});
            }
            write_atomic("--report", out, &serde_json::to_string_pretty(&report)?)?;
        }
        if let Some(pf) = progress_file.take() {
            let dir = pf.dir.clone();
            drop(pf);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("{}: cannot remove", dir.display()))?;
        }
        Ok(())
    }
}

/// Each case's EasyEdit token accuracies on `lm`, into its metrics.
fn with_token_acc<B: Backend>(
    lm: &LanguageModel<B>,
    cases: &[EditCase],
    metrics: &mut [kedit_eval::CaseMetrics],
    reference: Option<&LocalityReference>,
) -> Result<()> {
    let accs = kedit_eval::token_acc::token_accuracy(lm, cases, reference)?;
    for (m, a) in metrics.iter_mut().zip(accs) {
        m.token_acc = Some(a);
    }
    Ok(())
}

/// A token accuracy with three places, `–` where there is none.
pub(crate) fn rate3(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.3}"))
}

/// A rate for the log; `–` where the case has no prompt of that kind (a record without
/// paraphrases or neighbourhood prompts), which the summary holds as NaN.
fn rate(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::{arrange, Arrange};
    use kedit_editing::{EditCase, EditRequest};

    fn case(subject: usize, record: usize) -> EditCase {
        EditCase {
            case_id: format!("s{subject}r{record}"),
            subject_id: subject.to_string(),
            request: EditRequest {
                prompt: "{} x".into(),
                subject: format!("S{subject}"),
                relation: "P0".into(),
                target_new: "a".into(),
                target_true: "b".into(),
            },
            paraphrase_prompts: vec![],
            neighborhood_prompts: vec![],
            ..Default::default()
        }
    }

    /// Same records either way; `same-subject` batches share a subject, `mixed` batches never do.
    #[test]
    fn arrange_makes_same_subject_and_mixed_batches_of_the_same_records() {
        // Subjects 0..5 with 2, 3, 1, 4, 3 records: 0, 1, 3, 4 have at least 2.
        let counts = [2, 3, 1, 4, 3];
        let cases: Vec<EditCase> = counts
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| (0..n).map(move |r| case(s, r)))
            .collect();
        let same = arrange(cases.clone(), 2, Arrange::SameSubject);
        let mixed = arrange(cases, 2, Arrange::Mixed);
        let ids = |v: &[EditCase]| {
            let mut x: Vec<String> = v.iter().map(|c| c.case_id.clone()).collect();
            x.sort();
            x
        };
        assert_eq!(same.len(), 8, "two blocks of 2 subjects × 2 records");
        assert_eq!(ids(&same), ids(&mixed));
        for b in same.chunks(2) {
            assert_eq!(b[0].subject_id, b[1].subject_id);
        }
        for b in mixed.chunks(2) {
            assert_ne!(b[0].subject_id, b[1].subject_id);
        }
        assert!(
            same.iter().all(|c| c.subject_id != "2"),
            "subject 2 has too few records"
        );
    }
}
