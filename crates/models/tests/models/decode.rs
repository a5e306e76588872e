//! Cached decoding (`Transformer::decode_step`, `LanguageModel::sample`) equals the whole-row
//! forward: rows of different lengths fed token by token give the logits the whole rows give at
//! those positions, on the tiny random Llama, GPT-2 (learned positions) and GPT-J (partial
//! rotary); greedy sampling continues a prompt as `generate` does.

use burn::tensor::backend::Backend;
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, CausalLm, Interventions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::common::load_tiny as load;

test_device!(decode_steps_match_the_whole_rows, all_families);
fn all_families<B: Backend>(device: &B::Device, dev: TestDevice) {
    // CPU 1e-5 of the largest logit: the same f32 sums, split between the cache and the step.
    // CUDA 2e-3: other matmul shapes, so other tilings on TF32 tensor cores.
    let tol = dev.pick(1e-5, 2e-3);
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        check::<B>(name, device, tol);
    }
}

fn check<B: Backend>(name: &str, device: &B::Device, tol: f32) {
    let lm = load::<B>(name, device);
    let m = &lm.model;
    let seqs: Vec<Vec<u32>> = [
        "The capital of France is Paris, and the capital of Italy is Rome.",
        "Danielle Darrieux's mother tongue is French, she said.",
        "A much longer row sits here: Toko Yasuda plays the guitar on stage.",
    ]
    .iter()
    .map(|t| lm.encode(t).unwrap())
    .collect();
    // Each row's cache starts at its own length (one row with a single-token prompt), then
    // `steps` tokens of the row are fed one at a time.
    let steps = 5;
    let prompt: Vec<usize> = vec![1, 4, 9];
    for (s, &p) in seqs.iter().zip(&prompt) {
        assert!(s.len() >= p + steps, "{name}: row too short");
    }
    let full = m.forward(m.batch(&seqs), &Interventions::none());
    let prefix_lens: Vec<usize> = prompt.iter().map(|p| p - 1).collect();
    let h = m.embed(m.batch(&seqs));
    let mut cache = m.prefix_cache(0, h, &prefix_lens, 1);
    let d = m.config.hidden_size;
    for t in 0..steps {
        let pos: Vec<usize> = prompt.iter().map(|p| p - 1 + t).collect();
        let ids = m.batch(
            &seqs
                .iter()
                .zip(&pos)
                .map(|(s, &p)| vec![s[p]])
                .collect::<Vec<_>>(),
        );
        let hidden = m.decode_step(&mut cache, m.embed_at(ids, &pos));
        let got = m
            .unembed(hidden.reshape([seqs.len(), d]))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let at: Vec<(usize, usize)> = pos.iter().enumerate().map(|(i, &p)| (i, p)).collect();
        let want = m
            .logits_at(full.hidden.clone(), &at)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
        let worst = want
            .iter()
            .zip(&got)
            .fold(0f32, |a, (w, g)| a.max((w - g).abs()));
        assert!(
            worst <= tol * scale,
            "{name}, step {t}: max |Δlogit| {worst} vs scale {scale}"
        );
        assert_eq!(
            cache.prefix_lens,
            pos.iter().map(|p| p + 1).collect::<Vec<_>>()
        );
    }
}

test_device!(greedy_sampling_continues_as_generate_does, greedy);
fn greedy<B: Backend>(device: &B::Device, _dev: TestDevice) {
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        let lm = load::<B>(name, device);
        let prompts = [
            "The capital of France is",
            "Toko Yasuda plays the guitar and",
        ];
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| lm.encode(p).unwrap()).collect();
        let n = 8;
        let want = lm.generate(&prompts, n).unwrap();
        let max_len = ids.iter().map(Vec::len).max().unwrap() + n;
        let mut rngs: Vec<ChaCha8Rng> = (0..2).map(ChaCha8Rng::seed_from_u64).collect();
        let got = lm.sample(&ids, max_len, 1, &mut rngs).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            // Each row runs to `max_len` tokens in all; `generate` stops after EOS.
            assert_eq!(g.len(), max_len - ids[i].len(), "{name}, row {i}");
            assert_eq!(
                &g[..w.len().min(g.len())],
                &w[..w.len().min(g.len())],
                "{name}, row {i}"
            );
        }
    }
}

test_device!(sampling_is_seeded_per_row, seeded);
fn seeded<B: Backend>(device: &B::Device, _dev: TestDevice) {
    let lm = load::<B>("tiny-llama", device);
    let a = lm.encode("The capital of France is").unwrap();
    let b = lm.encode("Edwin of Northumbria follows").unwrap();
    let rngs = |seeds: &[u64]| -> Vec<ChaCha8Rng> {
        seeds
            .iter()
            .map(|&s| ChaCha8Rng::seed_from_u64(s))
            .collect()
    };
    let both = lm
        .sample(&[a.clone(), b.clone()], 20, 5, &mut rngs(&[1, 2]))
        .unwrap();
    // The same row and seed alone, and again: the same tokens; another seed: others.
    let alone = lm
        .sample(std::slice::from_ref(&a), 20, 5, &mut rngs(&[1]))
        .unwrap();
    assert_eq!(both[0], alone[0]);
    assert_eq!(
        lm.sample(std::slice::from_ref(&a), 20, 5, &mut rngs(&[1]))
            .unwrap(),
        alone
    );
    assert_ne!(lm.sample(&[a], 20, 5, &mut rngs(&[3])).unwrap(), alone);
    assert_eq!(both[1].len(), 20 - b.len());
}
