//! Perplexity on held-out text: the batched windows give what scoring each next token alone
//! gives, on every family.

use std::path::PathBuf;

use burn::tensor::{activation, backend::Backend};
use kedit_eval::perplexity::{perplexity, tail_ids};
use kedit_models::testing::TestDevice;
use kedit_models::{test_device, Cpu, LanguageModel};

use crate::tiny;

fn corpus() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/wikitext/wikitext-2-raw.wiki.test.raw");
    std::fs::read_to_string(path).unwrap()[..4000].to_string()
}

/// Σ −log p(next token) with each prefix run alone, one at a time: no batch, no padding.
fn one_by_one<B: Backend>(lm: &LanguageModel<B>, ids: &[u32], window: usize) -> (f64, usize) {
    let (mut nll, mut n) = (0f64, 0);
    for w in ids.chunks(window).filter(|w| w.len() >= 2) {
        for p in 0..w.len() - 1 {
            let logp = activation::log_softmax(lm.next_token_logits(&[w[..=p].to_vec()]), 1);
            let row: Vec<f32> = logp.into_data().convert::<f32>().to_vec().unwrap();
            nll -= row[w[p + 1] as usize] as f64;
            n += 1;
        }
    }
    (nll, n)
}

test_device!(windows_batched_equal_each_token_scored_alone, families);
fn families<B: Backend>(device: &B::Device, dev: TestDevice) {
    // CPU: the same f32 sums in another batch shape, 1e-5 relative. CUDA: TF32 tilings that
    // differ with the batch shape, 2e-3.
    let tol = dev.pick(1e-5, 2e-3);
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gptj"] {
        let lm = tiny::<B>(name, device);
        let (ids, total) = tail_ids(&lm, &corpus(), 150).unwrap();
        assert_eq!(ids.len(), 150, "{name}: the corpus has {total} tokens");
        // 150 = 9 windows of 16 and one of 6: 15 × 9 + 5 predicted tokens.
        let p = perplexity(&lm, &ids, 16).unwrap();
        assert_eq!((p.predicted, p.tokens), (140, 150), "{name}");
        let (nll, n) = one_by_one(&lm, &ids, 16);
        assert_eq!(n, p.predicted);
        let rel = (p.nll_sum - nll).abs() / nll;
        assert!(rel < tol, "{name}: NLL {} batched, {nll} alone", p.nll_sum);
        assert!((p.perplexity - (nll / n as f64).exp()).abs() / p.perplexity < 10.0 * tol);
        // A random model knows nothing of English: near its vocabulary's size, not near 1.
        let vocab = lm.model.config.vocab_size as f64;
        assert!(p.perplexity > vocab / 10.0, "{name}: {}", p.perplexity);
    }
}

#[test]
fn a_window_that_predicts_nothing_is_refused() {
    let lm = tiny::<Cpu>("tiny-llama", &Default::default());
    let err = perplexity(&lm, &[1, 2, 3], 1).unwrap_err().to_string();
    assert!(err.contains("window of 1"), "{err}");
    let err = perplexity(&lm, &[1], 8).unwrap_err().to_string();
    assert!(err.contains("no window"), "{err}");
}
