//! Token sampling (temperature, top-k, top-p, seeded) and stop strings.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::SamplingParams;

/// Draws tokens for one sequence. Each sample of a request gets its own RNG stream derived from
/// the request seed and the sample's index, so results do not depend on how requests are batched.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: StdRng,
    temperature: f32,
    top_p: f32,
    top_k: usize,
}

/// A well-mixed 64-bit seed for sample `index` of a request seeded with `seed` (splitmix64).
pub fn sample_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Sampler {
    pub fn new(params: &SamplingParams, sample_index: u64) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(sample_seed(params.seed, sample_index)),
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
        }
    }

    /// Picks the next token from raw logits. Temperature ≤ 0 is greedy (lowest id among ties).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 || self.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.temperature;
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        let cut_k = self.top_k > 0 && self.top_k < candidates.len();
        let cut_p = self.top_p < 1.0;
        if cut_k || cut_p {
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        if cut_k {
            candidates.truncate(self.top_k);
        }
        let max = candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut weights: Vec<f64> = candidates
            .iter()
            .map(|c| ((c.1 - max) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        if cut_p {
            let threshold = self.top_p.max(0.0) as f64 * total;
            let mut cumulative = 0.0;
            let mut keep = weights.len();
            for (i, w) in weights.iter().enumerate() {
                cumulative += w;
                if cumulative >= threshold {
                    keep = i + 1;
                    break;
                }
            }
            weights.truncate(keep.max(1));
            candidates.truncate(keep.max(1));
        }
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (candidate, w) in candidates.iter().zip(&weights) {
            if draw < *w {
                return candidate.0;
            }
            draw -= w;
        }
        candidates[candidates.len() - 1].0
    }
}

pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Natural-log softmax, computed in f64 for accuracy.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| l as f64 - log_sum).collect()
}

/// The `n` largest entries as (index, value), best first (lowest index among ties).
pub fn top_n(values: &[f64], n: usize) -> Vec<(u32, f64)> {
    let mut indexed: Vec<(u32, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    let n = n.min(indexed.len());
    if n == 0 {
        return Vec::new();
    }
    indexed.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    indexed.truncate(n);
    indexed.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    indexed
}

/// Softmax of `logits` restricted to the entries in `indices`, renormalised (f64).
pub fn restricted_softmax(logits: &[f32], indices: &[usize]) -> Vec<f64> {
    let picked: Vec<f64> = indices.iter().map(|&i| logits[i] as f64).collect();
    let max = picked.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = picked.iter().map(|l| (l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// The byte offset where the earliest of `stops` begins in `text`, if any occurs.
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut sampler = Sampler::new(&params(0.0, 0, 1.0, 1), 0);
        assert_eq!(sampler.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5f32, 2.0, 1.9, -3.0];
        for seed in 0..50 {
            assert_eq!(
                Sampler::new(&params(1.0, 1, 1.0, seed), 0).sample(&logits),
                1
            );
            assert_eq!(
                Sampler::new(&params(1.0, 0, 1e-6, seed), 0).sample(&logits),
                1
            );
        }
    }

    #[test]
    fn top_k_two_never_draws_outside_the_two_best() {
        let logits = [0.0f32, 1.0, 1.0, 0.9, 0.0];
        let mut seen = [0usize; 5];
        for seed in 0..400 {
            seen[Sampler::new(&params(5.0, 2, 1.0, seed), 0).sample(&logits) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3] + seen[4], 0);
        assert!(seen[1] > 100 && seen[2] > 100, "{seen:?}");
    }

    #[test]
    fn sampling_follows_the_softmax_frequencies() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75]
        let logits = [0.0f32, 3f32.ln()];
        let mut sampler = Sampler::new(&params(1.0, 0, 1.0, 7), 0);
        let ones = (0..20_000).filter(|_| sampler.sample(&logits) == 1).count();
        let share = ones as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "share {share}");
    }

    #[test]
    fn same_seed_same_stream_and_index_changes_it() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed, index| {
            let mut s = Sampler::new(&params(1.0, 0, 1.0, seed), index);
            (0..30).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3, 0), draw(3, 0));
        assert_ne!(draw(3, 0), draw(3, 1));
        assert_ne!(draw(3, 0), draw(4, 0));
    }

    #[test]
    fn log_softmax_and_restricted_softmax_normalise() {
        let logits = [1.0f32, 2.0, 3.0, -50.0];
        let total: f64 = log_softmax(&logits).iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let p = restricted_softmax(&logits, &[0, 2]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-12);
        assert!((p[1] / p[0] - 2f64.exp()).abs() < 1e-9);
        assert_eq!(
            top_n(&[0.1, 0.5, 0.3, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.3)]
        );
    }

    #[test]
    fn stop_strings_find_the_earliest() {
        let stops = vec!["\n\n".to_string(), "END".to_string(), String::new()];
        assert_eq!(find_stop("abc END x\n\n", &stops), Some(4));
        assert_eq!(find_stop("abc", &stops), None);
    }
}
