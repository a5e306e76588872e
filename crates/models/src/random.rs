//! Random-initialised models of real sizes, built in memory from a seed: for timing where the
//! weights cannot be had (no model hub here), e.g. a Llama-2-7B-shaped model on a GPU.
//!
//! Every weight matrix is uniform with standard deviation 0.02 (transformers' `initializer_range`;
//! uniform rather than normal because only the shapes matter for timing and it is cheaper to
//! draw 7 billion of), norms are ones, biases zeros. Each tensor's values come from the seed and
//! the tensor's name alone, so the same spec gives the same model on every backend. The
//! tokenizer is the tiny byte-level BPE of the test fixtures (320 tokens, every id valid in any
//! of these vocabularies); a prompt is about one token per character, longer than a real
//! tokenizer's, which the GPU benchmark's PyTorch side reproduces by using the same ids.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::config::{Family, ModelConfig};
use crate::load::{HostTensor, WeightSource};

/// The byte-level BPE the random models use (the fixtures' tokenizer, 320 tokens).
pub const TOKENIZER_JSON: &str = include_str!("../../../fixtures/tiny-llama/tokenizer.json");

/// Named shapes `random:<shape>` accepts.
pub const SHAPES: &[&str] = &["llama2-7b", "gptj-6b", "smollm2-135m", "llama-tiny"];

/// The configuration of a named shape (Hugging Face's published configs for the real models).
pub fn shape(name: &str) -> Result<ModelConfig> {
    let llama = |vocab, d, ff, layers, heads, kv, theta, tie| ModelConfig {
        family: Family::Llama,
        vocab_size: vocab,
        hidden_size: d,
        intermediate_size: ff,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: d / heads,
        rotary_dim: d / heads,
        norm_eps: 1e-5,
        rope_theta: theta,
        max_position_embeddings: 4096,
        tie_word_embeddings: tie,
        bos_token_id: None,
        eos_token_id: None,
    };
    Ok(match name {
        // meta-llama/Llama-2-7b-hf
        "llama2-7b" => llama(32000, 4096, 11008, 32, 32, 32, 10000.0, false),
        // HuggingFaceTB/SmolLM2-135M-Instruct
        "smollm2-135m" => llama(49152, 576, 1536, 30, 9, 3, 100000.0, true),
        // the shape of fixtures/tiny-llama
        "llama-tiny" => llama(320, 64, 128, 2, 4, 2, 500.0, false),
        // EleutherAI/gpt-j-6b
        "gptj-6b" => ModelConfig {
            family: Family::GptJ,
            vocab_size: 50400,
            hidden_size: 4096,
            intermediate_size: 16384,
            num_layers: 28,
            num_heads: 16,
            num_kv_heads: 16,
            head_dim: 256,
            rotary_dim: 64,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
        },
        other => bail!(
            "--model random:{other}: unknown shape (expected one of {})",
            SHAPES.join(", ")
        ),
    })
}

/// Values per ChaCha stream (see `RandomWeights::draw`).
const CHUNK: usize = 1 << 20;

/// Weights drawn on request, each of the shape the loader asks for.
pub struct RandomWeights {
    pub seed: u64,
}

impl RandomWeights {
    fn draw(&self, name: &str, want: &[usize]) -> Vec<f32> {
        let n: usize = want.iter().product();
        if name.ends_with(".bias") {
            return vec![0.0; n];
        }
        if want.len() == 1 {
            // RMSNorm / LayerNorm gains.
            return vec![1.0; n];
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&Sha256::digest(format!("{}:{name}", self.seed)));
        let a = 0.02 * 3f32.sqrt();
        // A 7B model is 6.7 billion draws: one ChaCha stream per fixed-size chunk lets every core
        // draw while the values stay a function of (seed, name, position) alone, whatever the
        // number of threads.
        let mut out = vec![0f32; n];
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                let mut rng = ChaCha8Rng::from_seed(key);
                rng.set_stream(i as u64);
                chunk.iter_mut().for_each(|x| *x = rng.random_range(-a..a));
            });
        out
    }
}

impl WeightSource for RandomWeights {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        bail!("random weights: {name} has no stored shape (read it with its expected shape)")
    }

    fn tensor_shaped(&self, name: &str, want: &[usize]) -> Result<HostTensor> {
        Ok((want.to_vec(), self.draw(name, want)))
    }

    fn has(&self, _name: &str) -> bool {
        true
    }

    fn location(&self, name: &str) -> String {
        format!("random weights (seed {}): {name}", self.seed)
    }
}
