//! Second-moment statistics `C = E[k kᵀ]` of the MLP keys at a layer, from a text corpus:
//! streamed in batches (progress bar), accumulated in f64, cached as safetensors with the model,
//! corpus, layer and sample count in the metadata, and reused.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use kedit_models::{CausalLm, Interventions, LanguageModel, Site};
use sha2::{Digest, Sha256};

/// The corpus kedit carries: WikiText-2 raw test split (CC BY-SA 3.0; data/wikitext/PROVENANCE.md).
pub const DEFAULT_CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/wikitext/wikitext-2-raw.wiki.test.raw"
);

/// Tokens per sequence fed to the model while accumulating.
const SEQ_LEN: usize = 128;
const BATCH: usize = 8;

/// `C` as a row-major `[d_ff, d_ff]` f64 matrix, with how many keys went into it.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondMoment {
    pub layer: usize,
    pub samples: usize,
    pub dim: usize,
    pub c: Vec<f64>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A cheap identity for the weights: the source file's name, size and the hash of its first MiB
/// (a folder: of its config.json and the sizes of its files).
pub fn model_id(source: &Path) -> Result<String> {
    let mut h = Sha256::new();
    if let Some(spec) = source.to_str().filter(|s| s.starts_with("random:")) {
        // A random model is its spec (shape and seed): nothing on disk to hash.
        h.update(spec.as_bytes());
        return Ok(format!("{:x}", h.finalize())[..16].to_owned());
    }
    let files: Vec<PathBuf> = if source.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(source)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        v
    } else {
        vec![source.to_path_buf()]
    };
    for f in files {
        let len = f.metadata()?.len();
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(len.to_le_bytes());
        let mut head = vec![0u8; len.min(1 << 20) as usize];
        use std::io::Read;
        std::fs::File::open(&f)?.read_exact(&mut head)?;
        h.update(&head);
    }
    Ok(format!("{:x}", h.finalize())[..16].to_owned())
}

/// Compute `C` at `layer` from the first `samples` tokens of `corpus` (whole sequences of up to
/// 128 tokens; every real token's key counts).
pub fn compute<B: Backend>(
    lm: &LanguageModel<B>,
    layer: usize,
    corpus: &str,
    samples: usize,
) -> Result<SecondMoment> {
    Ok(compute_layers(lm, &[layer], corpus, samples)?.remove(0))
}

/// `C` at each of `layers` from one pass over the corpus (MEMIT and PMET need several layers;
/// the forward pass up to the highest is shared).
pub fn compute_layers<B: Backend>(
    lm: &LanguageModel<B>,
    layers: &[usize],
    corpus: &str,
    samples: usize,
) -> Result<Vec<SecondMoment>> {
    let ids = lm.encode(corpus)?;
    if ids.len() < samples {
        bail!(
            "the corpus has {} tokens, fewer than the {samples} samples asked for",
            ids.len()
        );
    }
    let top = *layers.iter().max().context("no layers")?;
    kedit_editing::hparams::check_layers(
        "statistics",
        "layers",
        layers,
        lm.model.config.num_layers,
    )?;
    if samples == 0 {
        bail!("statistics from 0 samples: C would be 0/0");
    }
    let seqs: Vec<Vec<u32>> = ids[..samples]
        .chunks(SEQ_LEN)
        .map(<[u32]>::to_vec)
        .collect();
    let d = lm.model.config.intermediate_size;
    let mut cs = vec![vec![0f64; d * d]; layers.len()];
    let bar = indicatif::ProgressBar::new(samples as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "stats layers {msg} {bar:40} {pos}/{len} tokens eta {eta}",
        )
        .expect("template"),
    );
    bar.set_message(format!("{layers:?}"));
    for batch in seqs.chunks(BATCH) {
        let mut iv = Interventions::none().stop_after(top);
        for &l in layers {
            iv = iv.capture(l, Site::MlpKey);
        }
        let fwd = lm.model.forward(lm.model.batch(batch), &iv);
        for (c, l) in cs.iter_mut().zip(layers) {
            let keys = fwd.captured[&(*l, Site::MlpKey)].clone();
            // Only real tokens: right padding sits at the end of each row.
            let rows: Vec<Tensor<B, 2>> = batch
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    keys.clone()
                        .narrow(0, i, 1)
                        .narrow(1, 0, q.len())
                        .reshape([q.len(), d])
                })
                .collect();
            let k = Tensor::cat(rows, 0);
            let kk: Vec<f32> = kedit_models::layers::matmul(k.clone().transpose(), k)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32");
            c.iter_mut().zip(&kk).for_each(|(a, b)| *a += *b as f64);
        }
        bar.inc(batch.iter().map(Vec::len).sum::<usize>() as u64);
    }
    bar.finish_and_clear();
    Ok(cs
        .into_iter()
        .zip(layers)
        .map(|(mut c, &layer)| {
            c.iter_mut().for_each(|x| *x /= samples as f64);
            SecondMoment {
                layer,
                samples,
                dim: d,
                c,
            }
        })
        .collect())
}

/// `C` from the cache, or computed and cached. The cache file is keyed by model, corpus, layer
/// and sample count; its metadata repeats them and is checked on load.
pub fn load_or_compute<B: Backend>(
    lm: &LanguageModel<B>,
    layer: usize,
    corpus_path: &Path,
    samples: usize,
    cache: &Path,
) -> Result<SecondMoment> {
    Ok(load_or_compute_layers(lm, &[layer], corpus_path, samples, cache)?.remove(0))
}

/// [`load_or_compute`] for several layers: the missing ones are computed in one pass.
pub fn load_or_compute_layers<B: Backend>(
    lm: &LanguageModel<B>,
    layers: &[usize],
    corpus_path: &Path,
    samples: usize,
    cache: &Path,
) -> Result<Vec<SecondMoment>> {
    let corpus = std::fs::read(corpus_path)
        .with_context(|| format!("{}: cannot read corpus", corpus_path.display()))?;
    let corpus_sha = sha256_hex(&corpus)[..16].to_owned();
    let model = model_id(&lm.source)?;
    let entry = |layer: usize| {
        let file = cache.join(format!(
            "{model}-{corpus_sha}-layer{layer}-f64-mom2-{samples}.safetensors"
        ));
        let meta = [
            ("model", model.clone()),
            ("corpus_sha256", corpus_sha.clone()),
            ("layer", layer.to_string()),
            ("samples", samples.to_string()),
        ];
        (file, meta)
    };
    let read_all = |found: &mut Vec<Option<SecondMoment>>| -> Result<Vec<usize>> {
        for (&layer, slot) in layers.iter().zip(found.iter_mut()) {
            if slot.is_none() {
                let (file, meta) = entry(layer);
                *slot = read_cached(&file, &meta, layer, samples)?;
            }
        }
        Ok(layers
            .iter()
            .zip(found.iter())
            .filter(|(_, f)| f.is_none())
            .map(|(l, _)| *l)
            .collect())
    };
    let mut found: Vec<Option<SecondMoment>> = vec![None; layers.len()];
    let mut missing = read_all(&mut found)?;
    // Held until the missing statistics are written.
    let _lock = if missing.is_empty() {
        None
    } else {
        // Several kedit processes may share the cache (`cargo xtask bench-all` runs its cells
        // side by side): one computes a model's statistics while the others wait on this lock,
        // then read what it wrote instead of computing them again.
        std::fs::create_dir_all(cache)
            .with_context(|| format!("{}: cannot create stats cache", cache.display()))?;
        let lock_path = lock_file(cache, &model, &corpus_sha);
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("{}: cannot create", lock_path.display()))?;
        if lock.try_lock().is_err() {
            tracing::info!(
                "waiting for another kedit process to finish the statistics ({})",
                lock_path.display()
            );
            lock.lock()
                .with_context(|| format!("{}: cannot lock", lock_path.display()))?;
        }
        missing = read_all(&mut found)?;
        Some(lock)
    };
    if !missing.is_empty() {
        let text = String::from_utf8_lossy(&corpus);
        let computed = compute_layers(lm, &missing, &text, samples)?;
        for m in computed {
            let (file, meta) = entry(m.layer);
            write_cached(&file, &meta, &m)?;
            let i = layers.iter().position(|l| *l == m.layer).expect("asked");
            found[i] = Some(m);
        }
    }
    Ok(found.into_iter().map(|m| m.expect("filled")).collect())
}

fn lock_file(cache: &Path, model: &str, corpus_sha: &str) -> PathBuf {
    cache.join(format!("{model}-{corpus_sha}-mom2.lock"))
}

/// The file a process computing `lm`'s statistics on `corpus_path` into `cache` holds locked
/// (`File::lock`) until they are written; other processes wait on it.
pub fn cache_lock_file<B: Backend>(
    lm: &LanguageModel<B>,
    corpus_path: &Path,
    cache: &Path,
) -> Result<PathBuf> {
    let corpus = std::fs::read(corpus_path)
        .with_context(|| format!("{}: cannot read corpus", corpus_path.display()))?;
    Ok(lock_file(
        cache,
        &model_id(&lm.source)?,
        &sha256_hex(&corpus)[..16],
    ))
}

fn read_cached(
    file: &Path,
    meta: &[(&str, String)],
    layer: usize,
    samples: usize,
) -> Result<Option<SecondMoment>> {
    let Ok(bytes) = std::fs::read(file) else {
        return Ok(None);
    };
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: bad cache file", file.display()))?;
    let mut md = m.metadata().clone().unwrap_or_default();
    // Since 2026-12-05 one `kedit` key holds the fields as a JSON object; older caches have them
    // as separate keys, and are still read.
    if let Some(json) = md.remove("kedit") {
        md = serde_json::from_str(&json).with_context(|| {
            format!("{}: metadata `kedit` is not a JSON object", file.display())
        })?;
    }
    if !meta.iter().all(|(k, v)| md.get(*k) == Some(v)) {
        tracing::warn!("{}: metadata does not match; recomputing", file.display());
        return Ok(None);
    }
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let t = st.tensor("mom2")?;
    let c: Vec<f64> = t
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    tracing::info!(
        "second moment of layer {layer} from cache {}",
        file.display()
    );
    Ok(Some(SecondMoment {
        layer,
        samples,
        dim: t.shape()[0],
        c,
    }))
}

fn write_cached(file: &Path, meta: &[(&str, String)], m: &SecondMoment) -> Result<()> {
    let bytes: Vec<u8> = m.c.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![m.dim, m.dim], &bytes)?;
    // One metadata key, its fields sorted: safetensors keeps metadata in a HashMap, whose order
    // (and so the file's bytes) would change from run to run with several keys.
    let fields: std::collections::BTreeMap<&str, &String> =
        meta.iter().map(|(k, v)| (*k, v)).collect();
    let md =
        std::collections::HashMap::from([("kedit".to_owned(), serde_json::to_string(&fields)?)]);
    let out = safetensors::serialize([("mom2", view)], Some(md))?;
    // Unique per process: a reader never sees a half-written file under the final name.
    let tmp = file.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, file)?;
    Ok(())
}

impl SecondMoment {
    /// C = I at `layer`: MEMIT's update becomes ridge regression (tests, and timings where
    /// corpus statistics are beside the point).
    pub fn identity(layer: usize, dim: usize) -> Self {
        Self {
            layer,
            samples: 1,
            dim,
            c: (0..dim * dim)
                .map(|i| if i % (dim + 1) == 0 { 1.0 } else { 0.0 })
                .collect(),
        }
    }

    /// `C⁻¹ b` in f64 by Cholesky (C is symmetric positive definite given enough samples).
    pub fn solve(&self, b: &[f32]) -> Result<Vec<f32>> {
        let n = self.dim;
        let c = faer::Mat::<f64>::from_fn(n, n, |i, j| self.c[i * n + j]);
        let rhs = faer::Mat::<f64>::from_fn(n, 1, |i, _| b[i] as f64);
        let llt = c.llt(faer::Side::Lower).map_err(|e| {
            anyhow::anyhow!(
                "second moment of layer {} is not positive definite ({e:?}): use more samples",
                self.layer
            )
        })?;
        use faer::linalg::solvers::Solve;
        let x = llt.solve(&rhs);
        Ok((0..n).map(|i| x[(i, 0)] as f32).collect())
    }
}
