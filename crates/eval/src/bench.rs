//! Running a plan: edit each group from the unedited model, score every case of the group after
//! its last edit (a `curve` plan: the cases edited so far, after every edit), append one JSON
//! line per case and scoring, put the model back.
//!
//! Results are appended one line per `write` and fsynced, keyed by (group, after, step, case): a run
//! killed at any moment is resumed by running the same command again. A torn last line (killed
//! mid-write) is cut off; groups with every line present are skipped; a group with some lines
//! missing is edited again from the unedited model (editing is deterministic) and only its
//! missing lines are written, so the final file equals an uninterrupted run's, line for line.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use kedit_editing::{EditCase, Editor, Snapshot};
use kedit_models::LanguageModel;
use kedit_s2rke_data::plan::{Density, Design, Order, Plan, Strategy};
use serde::{Deserialize, Serialize};

/// One evaluated case of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    pub method: String,
    pub strategy: Strategy,
    pub design: Design,
    pub order: Order,
    pub density: Option<Density>,
    pub n: usize,
    pub seed: u64,
    pub group: usize,
    /// Position of the case in the group's edit sequence (0 = the `first` edit).
    pub step: usize,
    pub subject_id: String,
    pub relation: String,
    pub same_subject_as_first: bool,
    /// Cosine between this edit's key and the first edit's, on the unedited model.
    pub key_cos_first: Option<f64>,
    /// How many of the group's edits had been applied when this line was scored, in a `curve`
    /// run; absent: all of them (the line is scored after the group's last edit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<usize>,
    /// Perplexity on held-out text of the model this line was scored on, beside the unedited
    /// model's on the same tokens (`kedit bench --perplexity-tokens`): on the lines scored after
    /// the group's last edit, and in a `curve` run after every edit (how the cost grows with N).
    /// A property of the model the line was scored on, so every line of a group scored after the
    /// same edit carries the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<GroupPerplexity>,
    /// Generation fluency of this case's rewrite prompt on the model the line was scored on,
    /// beside the unedited model's (`kedit bench --fluency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fluency: Option<CaseFluency>,
    /// `case_id` and the metrics, as fields of the line itself.
    #[serde(flatten)]
    pub metrics: crate::CaseMetrics,
}

/// A group's edited model's perplexity and the unedited model's, on the same held-out tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupPerplexity {
    pub edited: f64,
    pub unedited: f64,
    /// Tokens read (windows of [`crate::perplexity::DEFAULT_WINDOW`]).
    pub tokens: usize,
    /// ‖W − W₀‖_F of the group's edits over every editable matrix (`Snapshot::distance`): how
    /// large an update moved the model this far. Absent in lines written before kedit kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_norm: Option<f64>,
}

/// The n-gram entropy (bits, EasyEdit's `ngram_entropy`) of text generated from a case's rewrite
/// prompt by the edited model and by the unedited one, with the same random draws
/// ([`crate::fluency`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CaseFluency {
    pub edited: f64,
    pub unedited: f64,
    /// Tokens per text, prompt included.
    pub max_len: usize,
}

/// What else is read off each group's edited model wherever its lines are scored, beside the
/// unedited model's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readings<'a> {
    /// Held-out token ids: perplexity (`kedit bench --perplexity-tokens`).
    pub held_out: Option<&'a [u32]>,
    /// Generation fluency: each scored case's rewrite prompt continued to this many tokens in all
    /// (`kedit bench --fluency`).
    pub fluency_len: Option<usize>,
    /// EasyEdit's token accuracies of each scored case (`kedit bench --token-acc`), locality
    /// against the unedited model's answers, read before the group's first edit.
    pub token_acc: bool,
}

/// Which line: (group, after, step, case).
pub type LineKey = (usize, Option<usize>, usize, String);

impl ResultLine {
    pub fn key(&self) -> LineKey {
        (
            self.group,
            self.after,
            self.step,
            self.metrics.case_id.clone(),
        )
    }
}

/// An append-only JSONL results file.
pub struct Results {
    pub path: PathBuf,
    file: File,
    pub lines: Vec<ResultLine>,
    done: HashSet<LineKey>,
}

impl Results {
    /// Open (or create) `path` to append to it, dropping a torn last line. The file stays
    /// locked (`File::try_lock`) while this lives: a second run of the same plan into the same
    /// folder would append every line again, and the report would count them twice.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create directory", dir.display()))?;
        }
        let (file, text) = open_appending(
            path,
            "another process is appending to these results (the same kedit bench running twice?); wait for it to finish, or pass another --out",
        )?;
        let lines = parse_lines(path, &text)?;
        let done = lines.iter().map(ResultLine::key).collect();
        Ok(Self {
            path: path.to_owned(),
            file,
            lines,
            done,
        })
    }

    /// The whole lines of `path` as they are, without writing to it: what a report reads, also
    /// while a run is still appending (a line being written is left out, not cut off).
    pub fn read(path: &Path) -> Result<Vec<ResultLine>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read results file", path.display()))?;
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        parse_lines(path, &text[..complete])
    }

    pub fn contains(&self, key: &LineKey) -> bool {
        self.done.contains(key)
    }

    /// Append one line in one write, then fsync, so that a kill leaves whole lines only (or a
    /// torn last line that `open` drops).
    pub fn append(&mut self, line: ResultLine) -> Result<()> {
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("{}: cannot append", self.path.display()))?;
        self.done.insert(line.key());
        self.lines.push(line);
        Ok(())
    }
}

/// Open `path` (created if missing) to append lines to it, holding it locked
/// (`File::try_lock`; `busy` is the error when another process holds it), and return it with
/// its whole lines: a torn last line, left by a kill mid-write, is cut off the file.
pub fn open_appending(path: &Path, busy: &str) -> Result<(File, String)> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!("{}: {busy}", path.display()),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        tracing::warn!(
            "{}: dropping a torn last line ({} bytes)",
            path.display(),
            text.len() - complete
        );
        file.set_len(complete as u64)?;
        file.seek(SeekFrom::End(0))?;
        text.truncate(complete);
    }
    Ok((file, text))
}

/// The lines of `text` (whole lines of the results file `path`), each a [`ResultLine`].
fn parse_lines(path: &Path, text: &str) -> Result<Vec<ResultLine>> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}: line {}: not a result line", path.display(), i + 1))
        })
        .collect()
}

/// Cosine similarity, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// Which groups a shard runs: `(i, n)` with 1 ≤ i ≤ n takes every n-th group from the i-th.
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n >= 1 && (1..=n).contains(&i) => Ok((i, n)),
        _ => bail!("--shard {s}: expected i/n with 1 ≤ i ≤ n (e.g. 1/4)"),
    }
}

/// Run `plan` (the groups of `shard`), appending to `results`. With `readings.held_out` (token
/// ids), each group's edited model is also read on those tokens wherever its lines are scored
/// (after its last edit; in a `curve` plan after every edit), and the unedited model once (at the
/// first group with work left); with `readings.fluency_len`, each scored case's rewrite prompt is
/// continued by the edited model there, and by the unedited model before the group's first edit
/// (once per case and run); with `readings.token_acc`, EasyEdit's token accuracies of each scored
/// case, its locality against the unedited model's answers read there too. `make_editor` is called on the unedited model at the first group with
/// work left, and not at all when every line is written: preparing an editor can cost minutes
/// (covariance statistics, AlphaEdit's null spaces), which a resume of a finished cell should not
/// pay. Returns the seconds spent editing, evaluating and reading the held-out text for the groups
/// that had work left.
#[allow(clippy::too_many_arguments)]
pub fn run_plan<B: Backend>(
    lm: &mut LanguageModel<B>,
    mut make_editor: impl FnMut(&LanguageModel<B>) -> Result<Box<dyn Editor<B>>>,
    method: &str,
    cases: &[EditCase],
    plan: &Plan,
    shard: (usize, usize),
    readings: &Readings<'_>,
    results: &mut Results,
) -> Result<f64> {
    let window = crate::perplexity::DEFAULT_WINDOW;
    let held_out = readings.held_out;
    let mut unedited: Option<f64> = None;
    let mut unedited_fluency: std::collections::HashMap<String, f64> = Default::default();
    let mut locality_reference = crate::token_acc::LocalityReference::default();
    let fluency_of = |lm: &LanguageModel<B>, cases: &[&EditCase], len: usize| -> Result<Vec<f64>> {
        let prompts: Vec<String> = cases.iter().map(|c| c.request.full_prompt()).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        Ok(
            crate::fluency::generation_entropy(lm, &refs, len, plan.spec.seed)?
                .into_iter()
                .map(|g| g.entropy)
                .collect(),
        )
    };
    let by_id: std::collections::HashMap<&str, &EditCase> =
        cases.iter().map(|c| (c.case_id.as_str(), c)).collect();
    let groups: Vec<_> = plan
        .groups
        .iter()
        .filter(|g| g.index % shard.1 == shard.0 - 1)
        .collect();
    let total: usize = groups.iter().map(|g| g.case_ids.len()).sum();
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} cases, ETA {eta}",
        )
        .expect("template"),
    );
    bar.set_message(format!("{method} {}", plan.spec.label()));
    let snapshot = Snapshot::take(&lm.model);
    let started = std::time::Instant::now();
    let mut worked = 0usize;
    let mut editor: Option<Box<dyn Editor<B>>> = None;
    for g in groups {
        let group: Vec<&EditCase> = g
            .case_ids
            .iter()
            .map(|id| {
                by_id
                    .get(id.as_str())
                    .copied()
                    .with_context(|| format!("plan names case {id}, which the data lacks"))
            })
            .collect::<Result<_>>()?;
        // The scorings of this group: (edits applied, `after` as recorded).
        let points: Vec<(usize, Option<usize>)> = if plan.spec.curve {
            (1..=group.len()).map(|k| (k, Some(k))).collect()
        } else {
            vec![(group.len(), None)]
        };
        // The cases among the first k whose line scored after `after` edits is not written yet.
        let missing = |results: &Results, k: usize, after: Option<usize>| -> Vec<usize> {
            (0..k)
                .filter(|&s| !results.contains(&(g.index, after, s, group[s].case_id.clone())))
                .collect()
        };
        if points
            .iter()
            .all(|&(k, a)| missing(results, k, a).is_empty())
        {
            bar.inc(group.len() as u64);
            bar.reset_eta();
            continue;
        }
        if let (Some(ids), None) = (held_out, unedited) {
            unedited = Some(crate::perplexity::perplexity(lm, ids, window)?.perplexity);
        }
        if let Some(len) = readings.fluency_len {
            let todo: Vec<&EditCase> = group
                .iter()
                .copied()
                .filter(|c| !unedited_fluency.contains_key(&c.case_id))
                .collect();
            for (c, e) in todo.iter().zip(fluency_of(lm, &todo, len)?) {
                unedited_fluency.insert(c.case_id.clone(), e);
            }
        }
        if readings.token_acc {
            locality_reference.add(lm, &group)?;
        }
        if editor.is_none() {
            editor = Some(make_editor(lm)?);
        }
        let editor = editor
            .as_mut()
            .expect("made at the first group with work")
            .as_mut();
        // Keys on the unedited model: how much each edit shares the first edit's key.
        let mut keys = Vec::with_capacity(group.len());
        for c in &group {
            keys.push(editor.key(lm, &c.request)?);
        }
        let mut at = 0;
        for step in plan.steps(g) {
            let reqs: Vec<_> = group[at..at + step.len()]
                .iter()
                .map(|c| c.request.clone())
                .collect();
            editor.apply(lm, &reqs)?;
            at += step.len();
            for &(k, after) in points.iter().filter(|p| p.0 == at) {
                // Each case is scored on its own, so scoring only the missing ones gives the
                // numbers a whole scoring would.
                let todo = missing(results, k, after);
                let owned: Vec<EditCase> = todo.iter().map(|&s| group[s].clone()).collect();
                let mut metrics = crate::evaluate(lm, &owned)?;
                if readings.token_acc {
                    let accs =
                        crate::token_acc::token_accuracy(lm, &owned, Some(&locality_reference))?;
                    for (m, a) in metrics.iter_mut().zip(accs) {
                        m.token_acc = Some(a);
                    }
                }
                let perplexity = match (held_out, unedited) {
                    (Some(ids), Some(unedited)) if !todo.is_empty() => {
                        let p = crate::perplexity::perplexity(lm, ids, window)?;
                        Some(GroupPerplexity {
                            edited: p.perplexity,
                            unedited,
                            tokens: p.tokens,
                            update_norm: Some(snapshot.distance(&lm.model)),
                        })
                    }
                    _ => None,
                };
                let fluency: Vec<Option<CaseFluency>> = match readings.fluency_len {
                    Some(len) => {
                        let scored: Vec<&EditCase> = todo.iter().map(|&s| group[s]).collect();
                        fluency_of(lm, &scored, len)?
                            .into_iter()
                            .zip(&scored)
                            .map(|(e, c)| {
                                Some(CaseFluency {
                                    edited: e,
                                    unedited: unedited_fluency[&c.case_id],
                                    max_len: len,
                                })
                            })
                            .collect()
                    }
                    None => vec![None; todo.len()],
                };
                for ((s, m), fluency) in todo.into_iter().zip(metrics).zip(fluency) {
                    let c = group[s];
                    results.append(ResultLine {
                        method: method.to_owned(),
                        strategy: plan.spec.strategy,
                        design: plan.spec.design,
                        order: plan.spec.order,
                        density: plan.spec.density,
                        n: plan.spec.n,
                        seed: plan.spec.seed,
                        group: g.index,
                        step: s,
                        subject_id: c.subject_id.clone(),
                        relation: c.request.relation.clone(),
                        same_subject_as_first: c.subject_id == group[0].subject_id,
                        key_cos_first: match (&keys[s], &keys[0]) {
                            (Some(k), Some(k0)) if s > 0 => Some(cosine(k, k0)),
                            _ => None,
                        },
                        after,
                        perplexity,
                        fluency,
                        metrics: m,
                    })?;
                }
            }
        }
        snapshot.clone().restore(&mut lm.model);
        editor.reset();
        worked += 1;
        bar.inc(group.len() as u64);
    }
    bar.finish();
    if editor.is_none() {
        tracing::info!("every result line was already written: nothing to run");
    }
    tracing::debug!(groups = worked, "run done");
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"method":"kn","strategy":"sequential","design":"group","order":"homogeneous","density":null,"n":2,"seed":0,"group":0,"step":0,"subject_id":"27","relation":"P37","same_subject_as_first":true,"key_cos_first":null,"case_id":"s27r0","es":1.0,"ps":null,"ns":1.0,"em":0.5,"pm":null,"nm":0.25}"#;

    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut first = Results::open(&path).unwrap();
        let e = Results::open(&path)
            .err()
            .expect("a second writer must be refused");
        assert!(
            format!("{e:#}").contains("another process is appending to these results"),
            "{e:#}"
        );
        first.append(serde_json::from_str(LINE).unwrap()).unwrap();
        // A reader is not a writer: it sees the line while the run goes on.
        assert_eq!(Results::read(&path).unwrap().len(), 1);
        drop(first);
        assert_eq!(Results::open(&path).unwrap().lines.len(), 1);
    }

    #[test]
    fn a_reader_leaves_a_line_being_written_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let text = format!("{LINE}\n{}", &LINE[..40]);
        std::fs::write(&path, &text).unwrap();
        let lines = Results::read(&path).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].metrics.case_id, "s27r0");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "read must not write"
        );
        // The writer drops the torn line (it was its own, cut by a kill).
        assert_eq!(Results::open(&path).unwrap().lines.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{LINE}\n"));
    }
}
