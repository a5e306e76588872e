//! `kedit bench` and `kedit report`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use kedit_eval::bench::{parse_shard, run_plan, Readings, Results};
use kedit_eval::report;
use kedit_models::{LanguageModel, ModelSpec};
use kedit_s2rke_data::plan::{make_plan, Density, Design, Order, PlanSpec, Record, Strategy};

use crate::{methods, RunOnBackend};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Editing method (`kedit methods` lists them)
    #[arg(long, default_value = "rome")]
    pub method: String,
    /// EasyEdit-style YAML hyperparameters (default: the bundled ones for SmolLM2)
    #[arg(long)]
    pub hparams: Option<PathBuf>,
    /// MEND's trained hypernetwork (default: the cached one `kedit mend train` wrote for this
    /// model)
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Dataset: S2RKE release format, CounterFact, or EasyEdit's flat records (KnowEdit, ZsRE)
    #[arg(long, default_value = "fixtures/s2rke-wikidata.json")]
    pub data: PathBuf,
    /// sequential (one edit per step, the model carried along) or batch (N edits in one apply)
    #[arg(long, default_value = "sequential")]
    pub strategy: Strategy,
    /// group (N edits of one subject vs N subjects) or bracket (first and last edit share the
    /// subject or not, N−2 other edits between)
    #[arg(long, default_value = "group")]
    pub design: Design,
    /// homogeneous (same subject) or heterogeneous (different subjects)
    #[arg(long, default_value = "homogeneous")]
    pub order: Order,
    /// Subject density instead of an order: high, medium, low = 3, 2, 1 edits per subject
    #[arg(long)]
    pub density: Option<Density>,
    /// Edits per group
    #[arg(long, default_value_t = 2)]
    pub n: usize,
    /// At most this many groups
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run only every n-th group starting at the i-th (i/n, 1 ≤ i ≤ n)
    #[arg(long)]
    pub shard: Option<String>,
    /// Results directory (one JSONL file per method and plan, appended, resumable)
    #[arg(long)]
    pub out: PathBuf,
    /// Score the group's edits so far after every edit, not only after the last: SD at every
    /// N' ≤ N from one run (the first N' edits of a group are a group of N'; sequential groups
    /// only)
    #[arg(long)]
    pub curve: bool,
    /// Name of the results file and of the report's method column (default: the method), to
    /// keep runs of one method with other hyperparameters apart in one directory
    #[arg(long)]
    pub label: Option<String>,
    /// Also read each group's edited model, after its last edit (with --curve: after every
    /// edit), on the last N tokens of the WikiText-2 text kedit carries (what `kedit perplexity
    /// --tokens N` computes), beside the unedited model's, with the norm of the group's update so
    /// far ‖W − W₀‖_F: the report's perplexity tables. About 3 s per 1000 tokens per reading on
    /// SmolLM2 on a 2-core CPU.
    #[arg(long)]
    pub perplexity_tokens: Option<usize>,
    /// Also read generation fluency wherever a line is scored: each case's rewrite prompt is
    /// continued to MAX_LEN tokens in all (100 if not given, EasyEdit's; top-k 5 sampling, seeded
    /// by --seed and the prompt) by the edited model and by the unedited one, and each text's
    /// n-gram entropy is kept (EasyEdit's `fluency`, ROME's GE ÷ 100; bits): the report's
    /// fluency table (for --order runs; --density runs keep it in their lines). About 15 s per reading of 100 tokens (a group's cases in one batch) on
    /// SmolLM2 on a 2-core CPU: each token reads every weight once
    #[arg(long, value_name = "MAX_LEN", num_args = 0..=1, default_missing_value = "100")]
    pub fluency: Option<usize>,
    /// Also read EasyEdit's teacher-forced token accuracies of each scored case: `rewrite_acc`
    /// and `rephrase_acc` (the share of target_new's tokens the model's argmax gets right on the
    /// rewrite and paraphrase prompts) and `locality` (the share of the neighbourhood prompts'
    /// argmax answers, teacher-forced on target_true, left as the unedited model gave them): the
    /// report's token-accuracy table, beside ES/PS/NS. One forward pass per case and reading
    #[arg(long)]
    pub token_acc: bool,
}

/// What a results file was made with, kept next to it (`<file>.run.json`): a resume with another
/// method, model, backend, dataset, hyperparameters or MEND archive would mix two experiments'
/// numbers in one file, so it is refused.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunIdentity {
    method: String,
    model: String,
    backend: String,
    data_sha256: String,
    hparams: serde_json::Value,
    archive_sha256: Option<String>,
    /// `kedit edit`'s selection and mode flags (which cases, edited how).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) selection: Option<serde_json::Value>,
}

impl RunIdentity {
    /// What an edit run of `method` on the model `lm` (loaded from `spec`) with the requests in
    /// `data` is: the resolved hyperparameters and the hashes of the data and MEND's archive.
    pub(crate) fn of<B: Backend>(
        method: &str,
        hparams: Option<&std::path::Path>,
        archive: Option<&std::path::Path>,
        data: &std::path::Path,
        spec: &ModelSpec,
        lm: &LanguageModel<B>,
        device: &B::Device,
    ) -> Result<Self> {
        let archive_sha256 = match (archive, method) {
            (Some(a), _) => Some(sha256_of(a)?),
            (None, "mend") => {
                let a = methods::mend_archive(hparams, lm)?;
                a.exists().then(|| sha256_of(&a)).transpose()?
            }
            (None, _) => None,
        };
        Ok(Self {
            method: method.to_owned(),
            model: match spec {
                // One folder under two spellings (relative, absolute) is one model.
                ModelSpec::HfFolder(p) | ModelSpec::Gguf(p) => std::fs::canonicalize(p)
                    .unwrap_or(p.clone())
                    .display()
                    .to_string(),
                other => format!("{other:?}"),
            },
            backend: B::name(device),
            data_sha256: sha256_of(data)?,
            hparams: methods::resolved_hparams(method, hparams)?,
            archive_sha256,
            selection: None,
        })
    }
}

fn sha256_of(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// The first field in which `old` and `new` differ, as `field (old → new)`; for hyperparameters,
/// the first key that differs.
fn first_difference(old: &RunIdentity, new: &RunIdentity) -> Option<String> {
    use serde_json::Value;
    let key_differing = |a: &Value, b: &Value| -> Option<String> {
        let (a, b) = (a.as_object()?, b.as_object()?);
        a.keys()
            .chain(b.keys())
            .find(|k| a.get(*k) != b.get(*k))
            .cloned()
    };
    let (a, b) = (
        serde_json::to_value(old).ok()?,
        serde_json::to_value(new).ok()?,
    );
    let field = key_differing(&a, &b)?;
    let (a, b, name) = match key_differing(&a[&field], &b[&field]) {
        Some(k) if field == "hparams" => (
            &a[&field][&k],
            &b[&field][&k],
            format!("hyperparameter `{k}`"),
        ),
        _ => (&a[&field], &b[&field], field.clone()),
    };
    Some(format!("{name} ({a} → {b})"))
}

/// Refuse to append to results made with something else; record this run's identity the first
/// time (also for results written before kedit kept it, after a warning). A record with no result
/// lines yet (a run that stopped before its first) is replaced.
pub(crate) fn check_identity(
    path: &std::path::Path,
    id: &RunIdentity,
    lines: usize,
    hint: &str,
) -> Result<()> {
    if path.exists() && lines > 0 {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let old: RunIdentity = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run record", path.display()))?;
        if let Some(d) = first_difference(&old, id) {
            bail!(
                "{}: its results were made with another {d}; {hint}",
                path.display()
            );
        }
        return Ok(());
    }
    if lines > 0 {
        tracing::warn!(
            "{}: no record of what its {lines} result lines were made with (an older kedit); recording this run's",
            path.display()
        );
    }
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, serde_json::to_string_pretty(id)?)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

impl RunOnBackend for BenchArgs {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        methods::check(&self.method)?;
        let label = self.label.clone().unwrap_or_else(|| self.method.clone());
        if label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            bail!("--label {label:?}: use letters, digits, '.', '_' and '-' only");
        }
        // Checked before the model loads: a bad file costs nothing.
        methods::resolved_hparams(&self.method, self.hparams.as_deref())?;
        if self.perplexity_tokens == Some(0) {
            bail!("--perplexity-tokens 0: perplexity of no text");
        }
        if let Some(n) = self.fluency.filter(|&n| n < 2) {
            bail!("--fluency {n}: a text of {n} tokens, prompt included, has no bigram");
        }
        let shard = match &self.shard {
            Some(s) => parse_shard(s)?,
            None => (1, 1),
        };
        let cases = kedit_editing::requests::load_cases(&self.data)?;
        let records: Vec<Record> = cases
            .iter()
            .map(|c| Record {
                case_id: c.case_id.clone(),
                subject_id: c.subject_id.clone(),
                relation: c.request.relation.clone(),
            })
            .collect();
        let pspec = PlanSpec {
            strategy: self.strategy,
            design: self.design,
            order: self.order,
            density: self.density,
            n: self.n,
            groups: self.groups,
            seed: self.seed,
            curve: self.curve,
        };
        let plan = make_plan(&records, &pspec)?;
        if plan.groups.is_empty() {
            bail!("--groups {}: the plan has no groups", self.groups);
        }
        let batch_ok = methods::METHODS
            .iter()
            .any(|m| m.name == self.method && m.batch);
        if self.strategy == Strategy::Batch && !batch_ok {
            tracing::warn!(
                "{} has no batch update: `--strategy batch` applies the group's edits one after another inside one apply",
                self.method
            );
        }
        let mut file = format!("{label}-{}", pspec.label());
        if self.shard.is_some() {
            file.push_str(&format!("-shard{}of{}", shard.0, shard.1));
        }
        let path = self.out.join(format!("{file}.jsonl"));
        let mut results = Results::open(&path)?;
        let before = results.lines.len();
        let mut lm = LanguageModel::<B>::load(spec, device)?;
        let mut identity = RunIdentity::of(
            &self.method,
            self.hparams.as_deref(),
            self.archive.as_deref(),
            &self.data,
            spec,
            &lm,
            device,
        )?;
        // Lines with perplexity and lines without would make a cell's perplexity rows cover some
        // of its groups only.
        // The same for fluency; a run without either records nothing, as before.
        identity.selection = match (self.perplexity_tokens, self.fluency) {
            (None, None) => None,
            (Some(n), None) => Some(serde_json::json!({ "perplexity_tokens": n })),
            (n, Some(len)) => Some(serde_json::json!({
                "perplexity_tokens": n,
                "fluency_len": len,
            })),
        };
        // Lines with token accuracy and lines without: the same. Runs without it keep their
        // identity as before.
        if self.token_acc {
            let mut selection = identity
                .selection
                .take()
                .unwrap_or_else(|| serde_json::json!({}));
            selection["token_acc"] = serde_json::Value::Bool(true);
            identity.selection = Some(selection);
        }
        check_identity(
            &self.out.join(format!("{file}.run.json")),
            &identity,
            before,
            "pass another --out, or --label to keep both runs",
        )?;
        std::fs::write(
            self.out.join(format!("{file}.plan.json")),
            serde_json::to_string_pretty(&plan)?,
        )
        .with_context(|| format!("{}: cannot write the plan", self.out.display()))?;
        let held_out = self
            .perplexity_tokens
            .map(|n| crate::edit::held_out_ids(&lm, n))
            .transpose()?;
        let secs = run_plan(
            &mut lm,
            |lm: &LanguageModel<B>| {
                methods::editor(
                    &self.method,
                    self.hparams.as_deref(),
                    self.archive.as_deref(),
                    lm,
                )
            },
            &label,
            &cases,
            &plan,
            shard,
            &Readings {
                held_out: held_out.as_deref(),
                fluency_len: self.fluency,
                token_acc: self.token_acc,
            },
            &mut results,
        )?;
        let all = kedit_eval::summarize(
            &results
                .lines
                .iter()
                .map(|l| l.metrics.clone())
                .collect::<Vec<_>>(),
        );
        println!(
            "{} {}: {} groups, {} result lines ({} new, {:.1} s) -> {}",
            label,
            pspec.label(),
            plan.groups.len(),
            results.lines.len(),
            results.lines.len() - before,
            secs,
            path.display()
        );
        println!(
            "view all: ES {:.3} PS {:.3} NS {:.3} S {:.1}",
            all.es,
            all.ps,
            all.ns,
            100.0 * all.score
        );
        if let Some(t) = kedit_eval::token_acc::summarize(
            results.lines.iter().filter_map(|l| l.metrics.token_acc),
        ) {
            let portability = t
                .portability
                .map_or(String::new(), |p| format!(" portability {p:.3}"));
            println!(
                "view all, EasyEdit's token accuracy: rewrite_acc {:.3} rephrase_acc {} locality {}{portability}",
                t.rewrite_acc,
                crate::edit::rate3(t.rephrase_acc),
                crate::edit::rate3(t.locality)
            );
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Results directories (every *.jsonl under each; several make one report: a sequential
    /// run beside a batch run for the key figure's two panels). Runs on different models (as
    /// their .run.json files say) are refused
    #[arg(required = true, num_args = 1.., value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Formats to write, comma-separated: md, csv, svg
    #[arg(long, value_delimiter = ',', default_value = "md,csv,svg")]
    pub format: Vec<String>,
    /// Where to write the reports (default: DIR, when there is one)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How S averages a cell's cases (the paper does not say): `cell`, the harmonic mean of the
    /// mean ES, PS and NS (ROME's way), or `case`, the mean of each case's harmonic mean (a case
    /// whose edit failed scores 0)
    #[arg(long, default_value = "cell", value_name = "cell|case")]
    pub s_mean: kedit_eval::ScoreMean,
}

/// The results files' runs were made on one model, where their `<file>.run.json` says (results
/// lines do not name it): tables over two models' groups would compare neither.
fn one_model(files: &[PathBuf]) -> Result<()> {
    let mut first: Option<(String, PathBuf)> = None;
    for f in files {
        let run = f.with_extension("run.json");
        let Ok(text) = std::fs::read_to_string(&run) else {
            continue;
        };
        let id: RunIdentity = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run identity", run.display()))?;
        match &first {
            None => first = Some((id.model, run)),
            Some((model, at)) if *model != id.model => bail!(
                "{} and {}: runs on two models ({model} and {}); report them apart",
                at.display(),
                run.display(),
                id.model
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn report(args: ReportArgs) -> Result<()> {
    for f in &args.format {
        if !["md", "csv", "svg"].contains(&f.as_str()) {
            bail!("--format {f}: expected md, csv or svg");
        }
    }
    let out = match (&args.out, args.dirs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [dir]) => dir.clone(),
        (None, _) => bail!("--out: required with more than one results directory"),
    };
    let files = report::results_files(&args.dirs)?;
    one_model(&files)?;
    let lines = report::load_files(&files)?;
    let r = report::build_as(&lines, args.s_mean);
    std::fs::create_dir_all(&out)?;
    let md = r.markdown();
    let mut files: Vec<(String, String)> = Vec::new();
    if args.format.iter().any(|f| f == "md") {
        files.push((
            "report.md".into(),
            format!(
                "# S2RKE report\n\nFrom {} result lines under {}. S: {}.\n\n{md}",
                lines.len(),
                args.dirs
                    .iter()
                    .map(|d| format!("`{}`", d.display()))
                    .collect::<Vec<_>>()
                    .join(" and "),
                r.score_mean.describe()
            ),
        ));
    }
    if args.format.iter().any(|f| f == "csv") {
        files.extend(r.csv());
    }
    if args.format.iter().any(|f| f == "svg") {
        files.extend(r.svgs());
    }
    for (name, text) in files {
        let p = out.join(&name);
        let tmp = out.join(format!(".{name}.partial"));
        std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, &p)?;
        eprintln!("wrote {}", p.display());
    }
    println!("{md}");
    Ok(())
}
