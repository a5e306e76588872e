//! One `ModelConfig` for every family, read from a Hugging Face `config.json` or GGUF metadata.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use crate::load::gguf::GgufFile;

/// The model families kedit knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama-2 and relatives (SmolLM2, Mistral-style GQA): RMSNorm, rotary, SwiGLU.
    Llama,
    /// GPT-2: learned positions, LayerNorm, fused `c_attn`, `Conv1D` weights, GELU, tied output.
    Gpt2,
    /// GPT-J: one LayerNorm feeding attention and MLP in parallel, partial interleaved rotary,
    /// untied `lm_head` with bias.
    GptJ,
}

impl Family {
    /// The Hugging Face module of the MLP output projection, `{}` for the layer: EasyEdit's
    /// `rewrite_module_tmp` for ROME/MEMIT/PMET/FT on this family.
    pub fn mlp_out_module(self) -> &'static str {
        match self {
            Family::Llama => "model.layers.{}.mlp.down_proj",
            Family::Gpt2 => "transformer.h.{}.mlp.c_proj",
            Family::GptJ => "transformer.h.{}.mlp.fc_out",
        }
    }

    /// The Hugging Face module of the attention output projection, `{}` for the layer.
    pub fn attn_out_module(self) -> &'static str {
        match self {
            Family::Llama => "model.layers.{}.self_attn.o_proj",
            Family::Gpt2 => "transformer.h.{}.attn.c_proj",
            Family::GptJ => "transformer.h.{}.attn.out_proj",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that get rotary embeddings (0: none, GPT-2's learned
    /// positions; `head_dim`: Llama).
    pub rotary_dim: usize,
    pub norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

fn req_usize(cfg: &Json, key: &str, file: &Path) -> Result<usize> {
    cfg.get(key)
        .and_then(Json::as_u64)
        .map(|v| v as usize)
        .with_context(|| {
            format!(
                "{}: field `{key}` is missing or not an integer",
                file.display()
            )
        })
}

impl ModelConfig {
    /// Parse a Hugging Face `config.json`.
    pub fn from_hf_json(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read config", file.display()))?;
        let cfg: Json = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", file.display()))?;
        let model_type = cfg.get("model_type").and_then(Json::as_str).unwrap_or("");
        match model_type {
            "llama" | "mistral" => {}
            "gpt2" | "gptj" => return Self::from_gpt_json(&cfg, model_type, file),
            other => bail!(
                "{}: field `model_type`: `{other}` is not supported (llama, mistral, gpt2, gptj)",
                file.display()
            ),
        }
        let hidden_size = req_usize(&cfg, "hidden_size", file)?;
        let num_heads = req_usize(&cfg, "num_attention_heads", file)?;
        let head_dim = cfg
            .get("head_dim")
            .and_then(Json::as_u64)
            .map_or(hidden_size / num_heads, |v| v as usize);
        let tok = |k: &str| cfg.get(k).and_then(Json::as_u64).map(|v| v as u32);
        Ok(Self {
            family: Family::Llama,
            vocab_size: req_usize(&cfg, "vocab_size", file)?,
            hidden_size,
            intermediate_size: req_usize(&cfg, "intermediate_size", file)?,
            num_layers: req_usize(&cfg, "num_hidden_layers", file)?,
            num_heads,
            num_kv_heads: cfg
                .get("num_key_value_heads")
                .and_then(Json::as_u64)
                .map_or(num_heads, |v| v as usize),
            head_dim,
            // Llama rotates whole heads.
            rotary_dim: head_dim,
            norm_eps: cfg
                .get("rms_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-6),
            // transformers >= 5 nests it under rope_parameters.
            rope_theta: cfg
                .get("rope_theta")
                .or_else(|| cfg.get("rope_parameters").and_then(|r| r.get("rope_theta")))
                .and_then(Json::as_f64)
                .unwrap_or(10000.0),
            max_position_embeddings: cfg
                .get("max_position_embeddings")
                .and_then(Json::as_u64)
                .unwrap_or(2048) as usize,
            tie_word_embeddings: cfg
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            bos_token_id: tok("bos_token_id"),
            eos_token_id: tok("eos_token_id"),
        })
    }

    /// GPT-2 and GPT-J `config.json` (`n_embd`, `n_layer`, `n_head`, `n_inner`, ...).
    fn from_gpt_json(cfg: &Json, model_type: &str, file: &Path) -> Result<Self> {
        let gptj = model_type == "gptj";
        let hidden_size = req_usize(cfg, "n_embd", file)?;
        let num_heads = req_usize(cfg, "n_head", file)?;
        let head_dim = hidden_size / num_heads;
        let rotary_dim = if gptj {
            cfg.get("rotary_dim")
                .and_then(Json::as_u64)
                .map_or(head_dim, |v| v as usize)
        } else {
            0
        };
        if rotary_dim > head_dim || rotary_dim % 2 == 1 {
            bail!(
                "{}: field `rotary_dim`: {rotary_dim} must be even and at most the head size {head_dim}",
                file.display()
            );
        }
        let act = cfg
            .get("activation_function")
            .and_then(Json::as_str)
            .unwrap_or("gelu_new");
        if act != "gelu_new" {
            bail!(
                "{}: field `activation_function`: `{act}` is not supported (gelu_new)",
                file.display()
            );
        }
        let tok = |k: &str| cfg.get(k).and_then(Json::as_u64).map(|v| v as u32);
        Ok(Self {
            family: if gptj { Family::GptJ } else { Family::Gpt2 },
            vocab_size: req_usize(cfg, "vocab_size", file)?,
            hidden_size,
            intermediate_size: cfg
                .get("n_inner")
                .and_then(Json::as_u64)
                .map_or(4 * hidden_size, |v| v as usize),
            num_layers: req_usize(cfg, "n_layer", file)?,
            num_heads,
            num_kv_heads: num_heads,
            head_dim,
            rotary_dim,
            norm_eps: cfg
                .get("layer_norm_epsilon")
                .and_then(Json::as_f64)
                .unwrap_or(1e-5),
            rope_theta: 10000.0,
            max_position_embeddings: req_usize(cfg, "n_positions", file)?,
            // GPT-2 always ties its output to the embeddings; GPT-J never does.
            tie_word_embeddings: !gptj,
            bos_token_id: tok("bos_token_id"),
            eos_token_id: tok("eos_token_id"),
        })
    }

    /// Read the config from GGUF metadata (`general.architecture` = `llama`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let file = g.path.display();
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if arch != "llama" {
            bail!("{file}: general.architecture `{arch}` is not supported (llama)");
        }
        let num = |k: &str| -> Result<usize> {
            g.get(&format!("llama.{k}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("{file}: metadata llama.{k} is missing"))
        };
        let hidden_size = num("embedding_length")?;
        let num_heads = num("attention.head_count")?;
        let vocab_size = match num("vocab_size") {
            Ok(v) => v,
            Err(_) => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .with_context(|| format!("{file}: no vocab_size and no tokenizer.ggml.tokens"))?,
        };
        let tok = |k: &str| g.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        Ok(Self {
            family: Family::Llama,
            vocab_size,
            hidden_size,
            intermediate_size: num("feed_forward_length")?,
            num_layers: num("block_count")?,
            num_heads,
            num_kv_heads: num("attention.head_count_kv").unwrap_or(num_heads),
            head_dim: num("attention.key_length").unwrap_or(hidden_size / num_heads),
            rotary_dim: num("rope.dimension_count")
                .or_else(|_| num("attention.key_length"))
                .unwrap_or(hidden_size / num_heads),
            norm_eps: g
                .get("llama.attention.layer_norm_rms_epsilon")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            rope_theta: g
                .get("llama.rope.freq_base")
                .and_then(|v| v.as_f64())
                .unwrap_or(10000.0),
            max_position_embeddings: num("context_length").unwrap_or(2048),
            tie_word_embeddings: !g.tensors.contains_key("output.weight"),
            bos_token_id: tok("tokenizer.ggml.bos_token_id"),
            eos_token_id: tok("tokenizer.ggml.eos_token_id"),
        })
    }
}
