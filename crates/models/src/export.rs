//! A model as a Hugging Face checkpoint folder (`config.json`, `model.safetensors`,
//! `tokenizer.json`), so that an edited model can leave kedit: transformers, EasyEdit or another
//! kedit run loads it like any checkpoint.
//!
//! The tensors are exactly those the family's loader reads, recorded while it reads them, in
//! Hugging Face names and layout (a GGUF's q/k rows already put back in transformers' order, its
//! quantized weights dequantized to f32): so whatever kedit loads, it can write, and the folder
//! loads back to the same model bit for bit. Everything is written in f32 (and the config says
//! so): a patch's `W + Δ` is an f32 sum, and an f16 or bf16 copy would round it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use crate::config::{Family, ModelConfig};
use crate::load::{HostTensor, WeightSource};
use crate::{ModelSpec, Source, Transformer};

/// Tokenizer and generation files copied from a checkpoint folder when present (its
/// `config.json` too, with the dtype set to f32).
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// A [`WeightSource`] that keeps a copy of every tensor handed out, in the order asked.
struct Recorder<'a> {
    inner: &'a dyn WeightSource,
    read: RefCell<Vec<(String, HostTensor)>>,
}

impl Recorder<'_> {
    fn keep(&self, name: &str, t: &HostTensor) {
        let mut read = self.read.borrow_mut();
        if !read.iter().any(|(n, _)| n == name) {
            read.push((name.to_owned(), t.clone()));
        }
    }
}

impl WeightSource for Recorder<'_> {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let t = self.inner.tensor(name)?;
        self.keep(name, &t);
        Ok(t)
    }
    fn tensor_shaped(&self, name: &str, want: &[usize]) -> Result<HostTensor> {
        let t = self.inner.tensor_shaped(name, want)?;
        self.keep(name, &t);
        Ok(t)
    }
    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
    fn location(&self, name: &str) -> String {
        self.inner.location(name)
    }
}

/// A model's weights on the host, in Hugging Face names and layout, with what a checkpoint
/// folder needs besides.
pub struct Checkpoint {
    pub config: ModelConfig,
    /// Every tensor the loader reads, in the order it reads them.
    pub tensors: Vec<(String, HostTensor)>,
    tokenizer: tokenizers::Tokenizer,
    /// The source folder, whose config and tokenizer files are copied as they are.
    folder: Option<PathBuf>,
    /// Where the weights came from, for `kedit-export.json`.
    pub source: String,
}

impl Checkpoint {
    /// Read the model `spec` names, as its loader does (the CPU backend builds it once, to run
    /// the same code path; it is dropped at once).
    pub fn read(spec: &ModelSpec) -> Result<Self> {
        let Source {
            config,
            tokenizer,
            weights,
            path,
        } = Source::open(spec)?;
        let source = match spec {
            ModelSpec::SmolLm2 => format!("smollm2 ({})", path.display()),
            _ => path.display().to_string(),
        };
        let folder = matches!(spec, ModelSpec::HfFolder(_)).then_some(path);
        let recorder = Recorder {
            inner: weights.as_ref(),
            read: RefCell::new(Vec::new()),
        };
        drop(Transformer::<crate::Cpu>::load(
            config.clone(),
            &recorder,
            &Default::default(),
        )?);
        Ok(Self {
            config,
            tensors: recorder.read.into_inner(),
            tokenizer,
            folder,
            source,
        })
    }

    /// The tensor of a projection's weight, `module` in Hugging Face naming (`…mlp.down_proj`);
    /// GPT-2 checkpoints saved without the `transformer.` prefix are found too.
    pub fn weight_mut(&mut self, module: &str) -> Option<&mut HostTensor> {
        let name = format!("{module}.weight");
        let bare = name.strip_prefix("transformer.").map(str::to_owned);
        self.tensors
            .iter_mut()
            .find(|(n, _)| *n == name || Some(n) == bare.as_ref())
            .map(|(_, t)| t)
    }

    /// Write the folder `dir`, which must not exist or be empty: `model.safetensors` (f32),
    /// `config.json` and the tokenizer (the source folder's files, or ones made from the
    /// model's config and tokenizer), and `kedit-export.json` with `provenance`. The folder
    /// appears whole or not at all.
    pub fn write(&self, dir: &Path, provenance: &Json) -> Result<()> {
        check_target(dir)?;
        let parent = folder_of(dir);
        let name = dir
            .file_name()
            .with_context(|| format!("{}: not a folder name", dir.display()))?;
        let tmp = parent.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        let written = self.write_files(&tmp, provenance).and_then(|()| {
            if dir.exists() {
                std::fs::remove_dir(dir).with_context(|| {
                    format!("{}: cannot replace the empty folder", dir.display())
                })?;
            }
            std::fs::rename(&tmp, dir).with_context(|| format!("{}: cannot write", dir.display()))
        });
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written
    }

    fn write_files(&self, dir: &Path, provenance: &Json) -> Result<()> {
        let bytes: Vec<Vec<u8>> = self
            .tensors
            .iter()
            .map(|(_, (_, data))| data.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views = self
            .tensors
            .iter()
            .zip(&bytes)
            .map(|((name, (shape, _)), b)| {
                Ok((
                    name.clone(),
                    safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        shape.clone(),
                        b,
                    )?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // transformers reads safetensors written for PyTorch by this key; one key keeps the
        // file's bytes the same from run to run (safetensors keeps metadata in a HashMap).
        let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
        let file = dir.join("model.safetensors");
        std::fs::write(&file, safetensors::serialize(views, Some(meta))?)
            .with_context(|| format!("{}: cannot write", file.display()))?;
        let write_json = |name: &str, v: &Json| -> Result<()> {
            let file = dir.join(name);
            std::fs::write(&file, serde_json::to_string_pretty(v)? + "\n")
                .with_context(|| format!("{}: cannot write", file.display()))
        };
        match &self.folder {
            Some(src) => {
                // The source's config, but for the dtype: the weights are f32 now, and
                // transformers would load them in the dtype the config names.
                let file = src.join("config.json");
                let mut config: Json = serde_json::from_str(
                    &std::fs::read_to_string(&file)
                        .with_context(|| format!("{}: cannot read", file.display()))?,
                )
                .with_context(|| format!("{}: invalid JSON", file.display()))?;
                for key in ["torch_dtype", "dtype"] {
                    if let Some(v) = config.get_mut(key) {
                        *v = json!("float32");
                    }
                }
                write_json("config.json", &config)?;
                for f in TOKENIZER_FILES {
                    if src.join(f).is_file() {
                        std::fs::copy(src.join(f), dir.join(f))
                            .with_context(|| format!("{}: cannot copy", src.join(f).display()))?;
                    }
                }
            }
            None => {
                write_json("config.json", &hf_config(&self.config))?;
                let file = dir.join("tokenizer.json");
                self.tokenizer
                    .save(&file, true)
                    .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", file.display()))?;
                write_json("tokenizer_config.json", &self.tokenizer_config())?;
            }
        }
        write_json("kedit-export.json", provenance)
    }

    /// transformers' fast tokenizer over `tokenizer.json` as it is, so that it splits text as
    /// kedit does.
    fn tokenizer_config(&self) -> Json {
        let token = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": token(self.config.bos_token_id),
            "eos_token": token(self.config.eos_token_id),
            "model_max_length": self.config.max_position_embeddings,
            "clean_up_tokenization_spaces": false,
        })
    }
}

/// The folder `path` is in (`.` for a bare name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Refuse a target folder [`Checkpoint::write`] would not write: a file, one in a folder that
/// does not exist, or one that is not empty. Cheap, so callers check before reading a model.
pub fn check_target(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: is a file, expected a folder", dir.display());
    }
    let parent = folder_of(dir);
    if !parent.is_dir() {
        bail!(
            "{}: folder {} does not exist",
            dir.display(),
            parent.display()
        );
    }
    if dir.is_dir()
        && std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{}: exists and is not empty (kedit writes a new folder; it never overwrites a model)",
            dir.display()
        );
    }
    Ok(())
}

/// A Hugging Face `config.json` for `c`, which `ModelConfig::from_hf_json` reads back as `c`.
pub fn hf_config(c: &ModelConfig) -> Json {
    let mut v = match c.family {
        Family::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": c.norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
        }),
        Family::Gpt2 | Family::GptJ => {
            let gptj = c.family == Family::GptJ;
            let mut v = json!({
                "architectures": [if gptj { "GPTJForCausalLM" } else { "GPT2LMHeadModel" }],
                "model_type": if gptj { "gptj" } else { "gpt2" },
                "vocab_size": c.vocab_size,
                "n_embd": c.hidden_size,
                "n_inner": c.intermediate_size,
                "n_layer": c.num_layers,
                "n_head": c.num_heads,
                "n_positions": c.max_position_embeddings,
                "layer_norm_epsilon": c.norm_eps,
                "activation_function": "gelu_new",
                "tie_word_embeddings": c.tie_word_embeddings,
            });
            if gptj {
                v["rotary_dim"] = json!(c.rotary_dim);
            }
            v
        }
    };
    v["torch_dtype"] = json!("float32");
    if let Some(b) = c.bos_token_id {
        v["bos_token_id"] = json!(b);
    }
    if let Some(e) = c.eos_token_id {
        v["eos_token_id"] = json!(e);
    }
    v
}

/// Whether the family stores a projection `[d_in, d_out]` (GPT-2's `Conv1D`) rather than
/// `nn.Linear`'s `[d_out, d_in]`.
pub fn stores_in_out(family: Family) -> bool {
    family == Family::Gpt2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_reads_back_as_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        for shape in ["llama2-7b", "gptj-6b"] {
            let c = crate::random::shape(shape).unwrap();
            let file = dir.path().join(format!("{shape}.json"));
            std::fs::write(&file, hf_config(&c).to_string()).unwrap();
            assert_eq!(ModelConfig::from_hf_json(&file).unwrap(), c, "{shape}");
        }
        let gpt2 = ModelConfig::from_hf_json(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2/config.json"),
        )
        .unwrap();
        let file = dir.path().join("gpt2.json");
        std::fs::write(&file, hf_config(&gpt2).to_string()).unwrap();
        assert_eq!(ModelConfig::from_hf_json(&file).unwrap(), gpt2);
    }
}
