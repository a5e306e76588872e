//! Second-moment statistics on the tiny model: equal to a brute-force sum, cached and reused.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use kedit_locate_edit::stats;
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, CausalLm, Cpu, Interventions, LanguageModel, Site};

fn tiny() -> LanguageModel<Cpu> {
    tiny_on(&Default::default())
}

fn tiny_on<B: Backend>(device: &B::Device) -> LanguageModel<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-llama");
    LanguageModel::load_hf(&dir, device).unwrap()
}

const CORPUS: &str = "The capital of France is Paris. The capital of Italy is Rome. Toko Yasuda plays the guitar. \
Edwin of Northumbria follows Christianity. The Eiffel Tower is located in Paris, and the Colosseum is in Rome. ";

test_device!(
    second_moment_matches_brute_force_and_is_cached,
    second_moment
);
fn second_moment<B: Backend>(device: &B::Device, dev: TestDevice) {
    // Relative to the largest entry. CPU 1e-5: the same keys summed in another order (f64).
    // CUDA 1e-3: the keys of a batch and of one sequence come from differently tiled TF32
    // matmuls.
    let tol = dev.pick(1e-5, 1e-3);
    let lm = tiny_on::<B>(device);
    let corpus = CORPUS.repeat(12);
    let n = 300;
    let m = stats::compute(&lm, 1, &corpus, n).unwrap();
    assert_eq!(m.samples, n);

    // Brute force: one sequence at a time, keys on the host, sum of outer products.
    let ids = lm.encode(&corpus).unwrap();
    let d = lm.model.config.intermediate_size;
    let mut want = vec![0f64; d * d];
    for seq in ids[..n].chunks(128) {
        let iv = Interventions::none().capture(1, Site::MlpKey);
        let fwd = lm.model.forward(lm.model.batch(&[seq.to_vec()]), &iv);
        let k: Vec<f32> = fwd.captured[&(1, Site::MlpKey)]
            .clone()
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap();
        for t in 0..seq.len() {
            let row = &k[t * d..(t + 1) * d];
            for i in 0..d {
                for j in 0..d {
                    want[i * d + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
    }
    let scale = want.iter().fold(0f64, |a, b| a.max(b.abs())) / n as f64;
    for (g, w) in m.c.iter().zip(&want) {
        assert!(
            (g - w / n as f64).abs() <= tol * scale,
            "{g} vs {}",
            w / n as f64
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let corpus_file = dir.path().join("corpus.txt");
    std::fs::write(&corpus_file, &corpus).unwrap();
    let cache = dir.path().join("stats");
    let first = stats::load_or_compute(&lm, 1, &corpus_file, n, &cache).unwrap();
    assert_eq!(cache_files(&cache), 1, "one cache file");
    let second = stats::load_or_compute(&lm, 1, &corpus_file, n, &cache).unwrap();
    assert!(
        first == second && first == m,
        "cached statistics must be returned unchanged"
    );
}

/// The statistics files in `cache` (the lock file beside them is not one).
fn cache_files(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            assert!(!name.contains("partial"), "{name}: a partial file was left");
            name.ends_with(".safetensors")
        })
        .count()
}

/// A temporary folder with the test corpus in a file and the path of an empty cache.
fn corpus_and_cache() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let corpus_file = dir.path().join("corpus.txt");
    std::fs::write(&corpus_file, CORPUS.repeat(12)).unwrap();
    let cache = dir.path().join("stats");
    (dir, corpus_file, cache)
}

#[test]
fn processes_sharing_a_cache_get_the_same_statistics() {
    // `cargo xtask bench-all` runs kedit processes side by side on one cache; each thread here
    // opens the lock file itself, as a process would (flock locks belong to the open file).
    let (_dir, corpus_file, cache) = corpus_and_cache();
    let n = 300;
    let results: Vec<Vec<stats::SecondMoment>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    stats::load_or_compute_layers(&tiny(), &[0, 1], &corpus_file, n, &cache)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let lm = tiny();
    let corpus = CORPUS.repeat(12);
    let want = [
        stats::compute(&lm, 0, &corpus, n).unwrap(),
        stats::compute(&lm, 1, &corpus, n).unwrap(),
    ];
    for r in &results {
        assert!(r[..] == want[..], "every process gets the statistics");
    }
    assert_eq!(cache_files(&cache), 2, "one file per layer");
}

#[test]
fn the_same_statistics_make_the_same_file() {
    // A researcher who hashes the cache (or ships it) gets the same bytes from every run.
    let files: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            let (_dir, corpus_file, cache) = corpus_and_cache();
            stats::load_or_compute(&tiny(), 1, &corpus_file, 300, &cache).unwrap();
            let file = std::fs::read_dir(&cache)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .unwrap();
            std::fs::read(file).unwrap()
        })
        .collect();
    assert!(files[0] == files[1] && files[1] == files[2]);
}

#[test]
fn caches_written_before_the_one_metadata_key_are_still_read() {
    // Until 2026-12-05 the fields were four metadata keys of their own.
    let (_dir, corpus_file, cache) = corpus_and_cache();
    let lm = tiny();
    let lock = stats::cache_lock_file(&lm, &corpus_file, &cache).unwrap();
    let stem = lock.file_name().unwrap().to_str().unwrap();
    let (prefix, _) = stem.split_once("-mom2.lock").unwrap();
    let (model, corpus_sha) = prefix.split_once('-').unwrap();
    let d = lm.model.config.intermediate_size;
    // Not what the corpus gives: a value read back proves the file was used.
    let c: Vec<f64> = (0..d * d)
        .map(|i| if i % (d + 1) == 0 { 7.0 } else { 0.0 })
        .collect();
    let bytes: Vec<u8> = c.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![d, d], &bytes).unwrap();
    let md = std::collections::HashMap::from([
        ("model".to_owned(), model.to_owned()),
        ("corpus_sha256".to_owned(), corpus_sha.to_owned()),
        ("layer".to_owned(), "1".to_owned()),
        ("samples".to_owned(), "300".to_owned()),
    ]);
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(
        cache.join(format!("{prefix}-layer1-f64-mom2-300.safetensors")),
        safetensors::serialize([("mom2", view)], Some(md)).unwrap(),
    )
    .unwrap();
    let got = stats::load_or_compute(&lm, 1, &corpus_file, 300, &cache).unwrap();
    assert!(got.c == c, "the old file's values, not recomputed ones");
}

#[test]
fn a_process_waits_for_the_one_computing_the_statistics() {
    let (_dir, corpus_file, cache) = corpus_and_cache();
    std::fs::create_dir_all(&cache).unwrap();
    let lm = tiny();
    // This test plays the process that is computing them.
    let lock =
        std::fs::File::create(stats::cache_lock_file(&lm, &corpus_file, &cache).unwrap()).unwrap();
    lock.lock().unwrap();
    std::thread::scope(|s| {
        let other = s.spawn(|| stats::load_or_compute(&tiny(), 1, &corpus_file, 300, &cache));
        // Unlocked, the tiny model's statistics take well under a second.
        std::thread::sleep(std::time::Duration::from_secs(1));
        assert!(!other.is_finished(), "the second process waits on the lock");
        drop(lock);
        let got = other.join().unwrap().unwrap();
        assert!(got == stats::compute(&lm, 1, &CORPUS.repeat(12), 300).unwrap());
    });
}

#[test]
fn solve_inverts_the_second_moment() {
    let lm = tiny();
    let m = stats::compute(&lm, 0, &CORPUS.repeat(12), 400).unwrap();
    let d = m.dim;
    let x: Vec<f32> = (0..d).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
    let b: Vec<f32> = (0..d)
        .map(|i| (0..d).map(|j| m.c[i * d + j] * x[j] as f64).sum::<f64>() as f32)
        .collect();
    let y = m.solve(&b).unwrap();
    let err = y
        .iter()
        .zip(&x)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-2, "C⁻¹(Cx) differs from x by {err}");
}

#[test]
fn rome_with_covariance_adjustment_edits_and_needs_the_statistics() {
    use kedit_editing::{EditRequest, Editor};
    use kedit_locate_edit::{Rome, RomeHparams, Variant};
    let mut h = RomeHparams::smollm2();
    h.layers = vec![0];
    h.context_template_length_params = vec![[4, 3]];
    h.mom2_adjustment = true;
    let req = EditRequest {
        prompt: "The capital of {} is".into(),
        subject: "France".into(),
        relation: String::new(),
        target_new: "Rome".into(),
        target_true: "Paris".into(),
    };
    let mut lm = tiny();
    let e = Rome::new(h.clone(), Variant::RRome)
        .apply(&mut lm, std::slice::from_ref(&req))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("mom2_adjustment"), "{e}");
    let m = stats::compute(&lm, 0, &CORPUS.repeat(12), 400).unwrap();
    let margin = |lm: &LanguageModel<Cpu>| {
        let s = lm
            .score(&[
                ("The capital of France is", " Rome"),
                ("The capital of France is", " Paris"),
            ])
            .unwrap();
        s[1].mean_nll() - s[0].mean_nll()
    };
    let before = margin(&lm);
    Rome::new(h, Variant::RRome)
        .with_second_moment(m)
        .apply(&mut lm, &[req])
        .unwrap();
    let after = margin(&lm);
    assert!(after > before && after > 0.0, "margin {before} -> {after}");
}
