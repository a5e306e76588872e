//! The percentile bootstrap every interval of a report is drawn with: 2000 resamples from a
//! fixed seed, so a report regenerates byte for byte.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The 95 % percentile interval of `stat` over 2000 resamples (fixed seed) of `n` items drawn
/// with replacement, each resample passed as the drawn items' indices.
pub(crate) fn bootstrap_ci(n: usize, mut stat: impl FnMut(&[usize]) -> f64) -> (f64, f64) {
    bootstrap_ci_two((n, 0), |a, _| stat(a))
}

/// `bootstrap_ci` for a statistic of two independent samples of `n.0` and `n.1` items, each
/// resampled on its own (the first sample's draws come first, so with `n.1 = 0` this is
/// `bootstrap_ci`'s stream exactly).
pub(crate) fn bootstrap_ci_two(
    n: (usize, usize),
    mut stat: impl FnMut(&[usize], &[usize]) -> f64,
) -> (f64, f64) {
    let boots = draws_two(n, |a, b| Some(stat(a, b)));
    (percentile(&boots, 0.025), percentile(&boots, 0.975))
}

/// `stat` over `bootstrap_ci`'s 2000 resamples of `n` items, sorted, leaving out the resamples
/// where it is undefined (`None`): for a statistic that some resamples cannot have (a
/// correlation without variance).
pub(crate) fn bootstrap_draws(n: usize, mut stat: impl FnMut(&[usize]) -> Option<f64>) -> Vec<f64> {
    draws_two((n, 0), |a, _| stat(a))
}

fn draws_two(
    n: (usize, usize),
    mut stat: impl FnMut(&[usize], &[usize]) -> Option<f64>,
) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut boots: Vec<f64> = (0..2000)
        .filter_map(|_| {
            let a: Vec<usize> = (0..n.0).map(|_| rng.random_range(0..n.0)).collect();
            let b: Vec<usize> = (0..n.1).map(|_| rng.random_range(0..n.1)).collect();
            stat(&a, &b)
        })
        .collect();
    boots.sort_by(f64::total_cmp);
    boots
}
