//! kedit-models: the language model under edit.
//!
//! Families live one per file (`llama.rs`, `gpt2.rs`, `gptj.rs`: how each stores its weights and
//! which pieces it uses); they share one decoder (`transformer.rs`) and its layers (`layers.rs`)
//! and expose one editing surface, [`CausalLm`]. [`LanguageModel`] pairs a model with its tokenizer and offers `score` and
//! `generate`. All model code is generic over a Burn backend `B`.

pub mod allocator;
pub mod config;
#[cfg(feature = "cuda-kernels")]
pub mod cublas;
pub mod export;
pub mod fetch;
#[cfg(not(feature = "flex"))]
pub mod fused;
pub mod gpt2;
pub mod gptj;
pub mod kernel;
#[cfg(feature = "cuda")]
pub mod kernel_cache;
pub mod layers;
pub mod llama;
pub mod load;
pub mod prefix;
pub mod random;
pub mod sample;
pub mod surface;
pub mod testing;
pub mod tokenizer;
pub mod transformer;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::tensor::{activation, backend::Backend, Int, Tensor, TensorData};

pub use config::{Family, ModelConfig};
pub use prefix::PrefixCache;
pub use surface::{Action, Forward, Intervention, Interventions, Site};
pub use transformer::Transformer;

/// The CPU backend kedit uses by default.
#[cfg(not(feature = "flex"))]
pub type Cpu = burn::backend::NdArray<f32>;
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;
#[cfg(feature = "cuda")]
pub type Gpu = burn::backend::Cuda<f32, i32>;

/// The surface every model family offers to editing methods. Matrices are seen as
/// `[d_in, d_out]` (keys to values) whatever layout the family stores.
pub trait CausalLm<B: Backend> {
    fn config(&self) -> &ModelConfig;
    fn device(&self) -> B::Device;
    /// Token embeddings `[batch, seq, d_model]` of a right-padded id batch.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;
    /// Run blocks `start..` on the residual stream `h` entering block `start`; returns the
    /// final-norm hidden states. Right padding needs no mask: causal attention never lets a
    /// real token see a pad.
    fn forward_from(&self, start: usize, h: Tensor<B, 3>, iv: &Interventions<B>) -> Forward<B>;
    /// Logits `[n, vocab]` for final hidden states `[n, d_model]`.
    fn unembed(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2>;
    /// Right-padded id batch.
    fn batch(&self, seqs: &[Vec<u32>]) -> Tensor<B, 2, Int>;
    fn mlp_out(&self, layer: usize) -> Tensor<B, 2>;
    fn set_mlp_out(&mut self, layer: usize, w: Tensor<B, 2>);
    fn attn_out(&self, layer: usize) -> Tensor<B, 2>;
    fn set_attn_out(&mut self, layer: usize, w: Tensor<B, 2>);

    fn forward(&self, ids: Tensor<B, 2, Int>, iv: &Interventions<B>) -> Forward<B> {
        self.forward_from(0, self.embed(ids), iv)
    }

    /// Logits at chosen `(row, position)` pairs only: the unembedding is the largest matrix, so
    /// it is applied nowhere else.
    fn logits_at(&self, hidden: Tensor<B, 3>, positions: &[(usize, usize)]) -> Tensor<B, 2> {
        let [b, s, d] = hidden.dims();
        let idx: Vec<i64> = positions.iter().map(|&(i, p)| (i * s + p) as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(idx, [positions.len()]),
            &hidden.device(),
        );
        self.unembed(layers::reshape(hidden, [b * s, d]).select(0, idx))
    }
}

/// Moves tensors from one backend to another, one at a time.
pub trait TensorMap<B1: Backend, B2: Backend> {
    fn map<const D: usize>(&self, t: Tensor<B1, D>) -> Tensor<B2, D>;
}

/// Wrap a model's weights for `Autodiff<B>` (constants: no gradient unless a method asks).
pub struct ToAutodiff;
impl<B: Backend> TensorMap<B, Autodiff<B>> for ToAutodiff {
    fn map<const D: usize>(&self, t: Tensor<B, D>) -> Tensor<Autodiff<B>, D> {
        Tensor::from_inner(t)
    }
}

/// Per-token log-probabilities of a continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetScore {
    pub target_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
}

impl TargetScore {
    /// Mean negative log-likelihood per target token.
    pub fn mean_nll(&self) -> f32 {
        -self.logprobs.iter().sum::<f32>() / self.logprobs.len().max(1) as f32
    }
}

/// A model with its tokenizer.
pub struct LanguageModel<B: Backend> {
    pub model: Transformer<B>,
    pub tokenizer: tokenizers::Tokenizer,
    /// Where the weights came from (for patch metadata and messages).
    pub source: PathBuf,
}

/// Where `--model` points.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// The default model, fetched into the cache on first use.
    SmolLm2,
    Gguf(PathBuf),
    HfFolder(PathBuf),
    /// A random-initialised model of a named shape (`random:llama2-7b`, `random:gptj-6b:7`),
    /// built in memory from the seed (default 0): for timing where no weights can be had.
    Random {
        shape: String,
        seed: u64,
    },
}

impl ModelSpec {
    /// `smollm2`, a `.gguf` file, a Hugging Face checkpoint folder, or `random:<shape>[:<seed>]`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "smollm2" {
            return Ok(Self::SmolLm2);
        }
        if let Some(rest) = s.strip_prefix("random:") {
            let (shape, seed) = match rest.split_once(':') {
                Some((shape, seed)) => (
                    shape,
                    seed.parse().with_context(|| {
                        format!("--model {s}: seed {seed:?} is not a whole number")
                    })?,
                ),
                None => (rest, 0),
            };
            random::shape(shape)?;
            return Ok(Self::Random {
                shape: shape.to_owned(),
                seed,
            });
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            if !p.join("config.json").is_file() {
                bail!(
                    "--model {s}: folder has no config.json (expected a Hugging Face checkpoint)"
                );
            }
            return Ok(Self::HfFolder(p));
        }
        if p.extension().is_some_and(|e| e == "gguf") {
            if !p.is_file() {
                bail!("--model {s}: file not found");
            }
            return Ok(Self::Gguf(p));
        }
        bail!("--model {s}: not `smollm2`, a .gguf file, a checkpoint folder or random:<shape>")
    }
}

/// A model's config, tokenizer and weights, opened but not yet loaded: what
/// [`LanguageModel::load`] and [`export::Checkpoint::read`] both start from.
pub(crate) struct Source {
    pub config: ModelConfig,
    pub tokenizer: tokenizers::Tokenizer,
    pub weights: Box<dyn load::WeightSource>,
    /// The file or folder (or `random:<shape>:<seed>`), as [`LanguageModel::source`].
    pub path: PathBuf,
}

impl Source {
    pub(crate) fn open(spec: &ModelSpec) -> Result<Self> {
        match spec {
            ModelSpec::SmolLm2 => Self::gguf(&fetch::smollm2()?),
            ModelSpec::Gguf(p) => Self::gguf(p),
            ModelSpec::HfFolder(p) => Self::hf(p),
            ModelSpec::Random { shape, seed } => Self::random(shape, *seed),
        }
    }

    fn random(shape: &str, seed: u64) -> Result<Self> {
        Ok(Self {
            config: random::shape(shape)?,
            tokenizer: tokenizers::Tokenizer::from_bytes(random::TOKENIZER_JSON)
                .map_err(|e| anyhow::anyhow!("the random models' tokenizer: {e}"))?,
            weights: Box::new(random::RandomWeights { seed }),
            path: PathBuf::from(format!("random:{shape}:{seed}")),
        })
    }

    fn gguf(path: &Path) -> Result<Self> {
        let g = load::gguf::GgufFile::open(path)?;
        Ok(Self {
            config: ModelConfig::from_gguf(&g)?,
            tokenizer: tokenizer::from_gguf(&g)?,
            weights: Box::new(g),
            path: path.to_path_buf(),
        })
    }

    fn hf(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_hf_json(&dir.join("config.json"))?;
        let tokenizer = tokenizer::from_file(&dir.join("tokenizer.json"))?;
        Ok(Self {
            config,
            tokenizer,
            weights: Box::new(load::safetensors::SafetensorsFolder::open(dir)?),
            path: dir.to_path_buf(),
        })
    }
}

impl<B: Backend> LanguageModel<B> {
    pub fn load(spec: &ModelSpec, device: &B::Device) -> Result<Self> {
        match spec {
            ModelSpec::SmolLm2 => Self::load_gguf(&fetch::smollm2()?, device),
            ModelSpec::Gguf(p) => Self::load_gguf(p, device),
            ModelSpec::HfFolder(p) => Self::load_hf(p, device),
            ModelSpec::Random { shape, seed } => Self::random(shape, *seed, device),
        }
    }

    /// A random-initialised model of a named shape (see [`random`]).
    pub fn random(shape: &str, seed: u64, device: &B::Device) -> Result<Self> {
        Self::from_source(Source::random(shape, seed)?, device)
    }

    pub fn load_gguf(path: &Path, device: &B::Device) -> Result<Self> {
        Self::from_source(Source::gguf(path)?, device)
            .with_context(|| format!("{}", path.display()))
    }

    pub fn load_hf(dir: &Path, device: &B::Device) -> Result<Self> {
        Self::from_source(Source::hf(dir)?, device)
    }

    fn from_source(s: Source, device: &B::Device) -> Result<Self> {
        Ok(Self {
            model: Transformer::load(s.config, s.weights.as_ref(), device)?,
            tokenizer: s.tokenizer,
            source: s.path,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("cannot decode {ids:?}: {e}"))
    }

    /// A sequence of `len` tokens fits the model's context (`max_position_embeddings`, GGUF's
    /// `context_length`): past it GPT-2 has no learned position to read, and a Llama was never
    /// trained there.
    pub fn check_context(&self, what: &str, len: usize) -> Result<()> {
        let context = self.model.config.max_position_embeddings;
        if len > context {
            bail!("{what}: {len} tokens, more than the model's context of {context}");
        }
        Ok(())
    }

    /// Logits `[n_prompts, vocab]` at the last token of each prompt, in one padded batch.
    pub fn next_token_logits(&self, seqs: &[Vec<u32>]) -> Tensor<B, 2> {
        let ids = self.model.batch(seqs);
        let fwd = self.model.forward(ids, &Interventions::none());
        let pos: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.len() - 1))
            .collect();
        self.model.logits_at(fwd.hidden, &pos)
    }

    /// Greedy continuation of each prompt by up to `n` tokens (stops after EOS), batched.
    pub fn generate(&self, prompts: &[&str], n: usize) -> Result<Vec<Vec<u32>>> {
        let mut seqs: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.encode(p))
            .collect::<Result<_>>()?;
        if let Some((i, _)) = seqs.iter().enumerate().find(|(_, s)| s.is_empty()) {
            bail!("prompt {i} is empty");
        }
        let context = self.model.config.max_position_embeddings;
        for (i, s) in seqs.iter().enumerate() {
            self.check_context(&format!("prompt {i}"), s.len())?;
        }
        let starts: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let eos = self.model.config.eos_token_id;
        let mut done = vec![false; seqs.len()];
        for _ in 0..n {
            // A row that fills the context stops there, as transformers' `generate` does at its
            // maximum length (GPT-2's learned positions end there).
            for (i, s) in seqs.iter().enumerate() {
                if !done[i] && s.len() >= context {
                    tracing::warn!(
                        "prompt {i}: stopped at the model's context of {context} tokens"
                    );
                    done[i] = true;
                }
            }
            let live: Vec<usize> = (0..seqs.len()).filter(|&i| !done[i]).collect();
            if live.is_empty() {
                break;
            }
            let batch: Vec<Vec<u32>> = live.iter().map(|&i| seqs[i].clone()).collect();
            let next = self.next_token_logits(&batch).argmax(1).into_data();
            let next: Vec<i64> = next.convert::<i64>().to_vec().expect("argmax ids");
            for (&i, &t) in live.iter().zip(&next) {
                seqs[i].push(t as u32);
                if Some(t as u32) == eos {
                    done[i] = true;
                }
            }
        }
        Ok(seqs
            .into_iter()
            .zip(starts)
            .map(|(s, k)| s[k..].to_vec())
            .collect())
    }

    /// Logits `[positions, vocab]` at `positions` (row, position) of the right-padded batch of
    /// `seqs`, from one forward pass.
    fn logits_at_positions(&self, seqs: &[Vec<u32>], positions: &[(usize, usize)]) -> Tensor<B, 2> {
        let fwd = self
            .model
            .forward(self.model.batch(seqs), &Interventions::none());
        self.model.logits_at(fwd.hidden, positions)
    }

    /// The most likely next token at each of `positions` (row, position) of the right-padded
    /// batch of `seqs`, from one forward pass: teacher-forced greedy predictions.
    pub fn argmax_at(&self, seqs: &[Vec<u32>], positions: &[(usize, usize)]) -> Vec<u32> {
        if positions.is_empty() {
            return Vec::new();
        }
        self.logits_at_positions(seqs, positions)
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .expect("argmax ids")
            .into_iter()
            .map(|t| t as u32)
            .collect()
    }

    /// log p(`ids[k]`) as the next token at `positions[k]` (row, position) of the right-padded
    /// batch of `seqs`, from one forward pass.
    pub fn logprobs_at(
        &self,
        seqs: &[Vec<u32>],
        positions: &[(usize, usize)],
        ids: &[u32],
    ) -> Vec<f32> {
        let logp = activation::log_softmax(self.logits_at_positions(seqs, positions), 1);
        let n = ids.len();
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let idx =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &self.model.device());
        logp.gather(1, idx)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32")
    }

    /// Per-token log-probabilities of each `target` after its `prompt`, in one padded batch.
    /// The target is tokenized on its own, as given (callers add the leading space).
    pub fn score(&self, pairs: &[(&str, &str)]) -> Result<Vec<TargetScore>> {
        let mut seqs = Vec::new();
        let mut targets = Vec::new();
        let mut positions = Vec::new();
        for (i, (prompt, target)) in pairs.iter().enumerate() {
            let p = self.encode(prompt)?;
            let t = self.encode(target)?;
            if p.is_empty() || t.is_empty() {
                bail!("pair {i}: prompt and target must both be non-empty");
            }
            self.check_context(&format!("pair {i}: prompt and target"), p.len() + t.len())?;
            for j in 0..t.len() {
                positions.push((i, p.len() - 1 + j));
            }
            seqs.push([p, t.clone()].concat());
            targets.push(t);
        }
        let ids: Vec<u32> = targets.iter().flatten().copied().collect();
        let lp = self.logprobs_at(&seqs, &positions, &ids);
        let mut out = Vec::new();
        let mut k = 0;
        for t in targets {
            let logprobs = lp[k..k + t.len()].to_vec();
            k += t.len();
            out.push(TargetScore {
                target_ids: t,
                logprobs,
            });
        }
        Ok(out)
    }
}
