//! Tokenizers: `tokenizer.json` as it is, or a byte-level BPE rebuilt from GGUF metadata the way
//! transformers' GGUF loader rebuilds it (so both give the same ids for the same file).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::load::gguf::GgufFile;

/// Load a Hugging Face `tokenizer.json`.
pub fn from_file(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))
}

/// GPT-2's reversible byte -> printable-char table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

/// Rebuild the tokenizer of a GGUF file whose `tokenizer.ggml.model` is `gpt2` (byte-level BPE).
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let file = g.path.display();
    let model = g
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if model != "gpt2" {
        bail!("{file}: tokenizer.ggml.model `{model}` is not supported (gpt2 byte-level BPE)");
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        g.get(key)
            .and_then(|v| v.as_array())
            .with_context(|| format!("{file}: metadata {key} is missing"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("{file}: {key} holds a non-string"))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let respell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_owned()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        }
    };
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(respell(t), json!(i));
    }
    // Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
    // tokens; a control token spelled outside the byte alphabet is a llama.cpp mislabel and skipped.
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(types.iter()).enumerate() {
        let special = match ty {
            3 if t.chars().all(|c| alphabet.contains(&c)) => true,
            4 => false,
            _ => continue,
        };
        added.push(
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": !special, "special": special}),
        );
    }
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
            json!([a, b])
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| anyhow!("{file}: cannot build tokenizer from GGUF vocabulary: {e}"))
}
