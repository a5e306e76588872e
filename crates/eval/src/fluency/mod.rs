//! Generation fluency: the n-gram entropy of text the model writes from a prompt (ROME's and
//! MEMIT's "GE", EasyEdit's `fluency`). An edit that breaks the model's language makes it repeat
//! itself, and the entropy falls. kedit prints it in bits, as EasyEdit does; ROME's tables print
//! it ×100 (626.6 for the unedited GPT-2 XL).
//!
//! EasyEdit's recipe (`test_generation_quality`): continue the record's rewrite prompt by top-k 5
//! sampling to 100 tokens in all (prompt included); decode, NFKD-normalise, replace blank lines by
//! a space; split into NLTK words; the entropy (bits) of the bigram and the trigram frequencies,
//! weighted 2/3 and 4/3, averaged. kedit samples each prompt with its own generator seeded from
//! the run's seed and the prompt, so the edited and the unedited model draw the same random
//! numbers: their difference is the edit's, not the dice's.

pub mod tokenize;

use std::collections::HashMap;

use anyhow::Result;
use burn::tensor::backend::Backend;
use kedit_models::LanguageModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

pub use tokenize::word_tokenize;

/// Tokens per generated text, prompt included (EasyEdit's `max_out_len`).
pub const MAX_OUT_LEN: usize = 100;
/// EasyEdit's `generate_fast` samples from the 5 most likely tokens.
pub const TOP_K: usize = 5;

/// EasyEdit's clean-up of a decoded generation.
pub fn normalize(text: &str) -> String {
    text.nfkd()
        .collect::<String>()
        .replace("\n\n", " ")
        .replace("<|endoftext|>", "")
}

/// EasyEdit's `compute_n_gram_entropy` of a word sequence: the entropies (bits) of its bigram
/// and trigram frequencies, weighted 2/3 and 4/3, averaged. A sequence too short for any n-gram
/// adds 0 for that n, as NumPy's empty sum does.
pub fn n_gram_entropy(words: &[String]) -> f64 {
    (2.0 / 3.0 * entropy_of_ngrams(words, 2) + 4.0 / 3.0 * entropy_of_ngrams(words, 3)) / 2.0
}

fn entropy_of_ngrams(words: &[String], n: usize) -> f64 {
    if words.len() < n {
        return 0.0;
    }
    // Counted in order of first occurrence, as NLTK's FreqDist (a Counter) keeps them.
    let mut index: HashMap<&[String], usize> = HashMap::new();
    let mut counts: Vec<f64> = Vec::new();
    for g in words.windows(n) {
        let i = *index.entry(g).or_insert_with(|| {
            counts.push(0.0);
            counts.len() - 1
        });
        counts[i] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| {
            let p = c / total;
            -p * p.ln() / 2f64.ln()
        })
        .sum()
}

/// The n-gram entropy of one generated text, from its decoded form.
pub fn text_entropy(text: &str) -> f64 {
    n_gram_entropy(&word_tokenize(&normalize(text)))
}

/// One prompt's generation and its entropy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The decoded text, prompt included (what the entropy is computed on).
    pub text: String,
    /// Bits, EasyEdit's `ngram_entropy`.
    pub entropy: f64,
}

/// Row generators: from the run's seed and the prompt, so that a prompt's draws are the same
/// for every model and batch it is generated in.
fn rng_for(seed: u64, prompt: &str) -> ChaCha8Rng {
    // FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h)
}

/// Generate from each prompt (EasyEdit's recipe, [`MAX_OUT_LEN`] tokens in all, top-k
/// [`TOP_K`]) and read each text's n-gram entropy.
pub fn generation_entropy<B: Backend>(
    lm: &LanguageModel<B>,
    prompts: &[&str],
    max_len: usize,
    seed: u64,
) -> Result<Vec<Generation>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| lm.encode(p))
        .collect::<Result<_>>()?;
    let mut rngs: Vec<ChaCha8Rng> = prompts.iter().map(|p| rng_for(seed, p)).collect();
    let new = lm.sample(&ids, max_len, TOP_K, &mut rngs)?;
    ids.iter()
        .zip(new)
        .map(|(p, n)| {
            let text = lm.decode(&[p.as_slice(), &n].concat())?;
            let entropy = text_entropy(&text);
            Ok(Generation { text, entropy })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NLTK's tokens and EasyEdit's entropy of each text in fixtures/fluency-texts.json, made by
    /// `fixtures/reference/fluency.py` with NLTK itself.
    #[test]
    fn tokens_and_entropy_match_nltk_and_easyedit() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/fluency.json");
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 10, "{} texts", cases.len());
        for (i, c) in cases.iter().enumerate() {
            let text = c["text"].as_str().unwrap();
            let norm = normalize(text);
            assert_eq!(
                norm,
                c["normalized"].as_str().unwrap(),
                "text {i}: normalized"
            );
            let want: Vec<String> = c["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect();
            let got = word_tokenize(&norm);
            assert_eq!(got, want, "text {i}: tokens of {norm:?}");
            let e = c["entropy"].as_f64().unwrap();
            let g = text_entropy(text);
            assert!(
                (g - e).abs() <= 1e-12 * e.abs().max(1.0),
                "text {i}: entropy {g} vs {e}"
            );
        }
    }

    #[test]
    fn entropy_of_distinct_and_repeated_words() {
        let words = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        // L distinct words: L−1 equally likely bigrams and L−2 trigrams.
        let distinct = words("a b c d e f g h i j");
        let want = (2.0 / 3.0 * 9f64.log2() + 4.0 / 3.0 * 8f64.log2()) / 2.0;
        assert!((n_gram_entropy(&distinct) - want).abs() < 1e-12);
        // One word repeated: one bigram, one trigram, no entropy; too short for any: 0 too.
        assert_eq!(n_gram_entropy(&words("x x x x x")), 0.0);
        assert_eq!(n_gram_entropy(&words("x")), 0.0);
        // A loop of period 2, 12 words: bigrams `a b` 6 and `b a` 5 times, trigrams 5 and 5.
        let looped = words("a b a b a b a b a b a b");
        let h2 = -(6.0 / 11.0 * (6f64 / 11.0).log2() + 5.0 / 11.0 * (5f64 / 11.0).log2());
        let want = (2.0 / 3.0 * h2 + 4.0 / 3.0 * 1.0) / 2.0;
        assert!((n_gram_entropy(&looped) - want).abs() < 1e-12);
    }

    #[test]
    fn prompts_draw_from_their_own_generators() {
        use rand::Rng;
        let draw = |seed, p| rng_for(seed, p).random::<u64>();
        assert_eq!(
            draw(0, "The capital of France is"),
            draw(0, "The capital of France is")
        );
        assert_ne!(
            draw(0, "The capital of France is"),
            draw(1, "The capital of France is")
        );
        assert_ne!(
            draw(0, "The capital of France is"),
            draw(0, "The capital of Italy is")
        );
    }
}
