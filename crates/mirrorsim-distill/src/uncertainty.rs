//! Uncertainty of the predictor, per rationale and per scene (DESIGN.md "Definitions").
//!
//! All entropies are in bits. For scene X, source s and its rationales t = 1..n:
//! `total_s = H(mean_t p_t)`, `expected_s = mean_t H(p_t)`, `mutual_s = total_s − expected_s`,
//! and the selection score is `ΔEU = expected_weak − expected_strong`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::records::{Role, ScoreRecord};

/// Probabilities are clamped below at this value before taking logs in the logloss, so a
/// predictor that gives the answer probability 0 costs at most −log2(1e-12) ≈ 39.86 bits
/// instead of infinity.
pub const PROB_FLOOR: f64 = 1e-12;

/// Shannon entropy in bits; zero-probability entries contribute nothing.
pub fn entropy_bits(distribution: &[f64]) -> f64 {
    -distribution
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| p * p.log2())
        .sum::<f64>()
}

/// `−log2 p[answer]` with p clamped at [`PROB_FLOOR`].
pub fn logloss_bits(distribution: &[f64], answer: usize) -> f64 {
    let p = distribution.get(answer).copied().unwrap_or(0.0);
    -p.max(PROB_FLOOR).log2()
}

/// A 64-bit seed from the sha256 of the given parts (each length-prefixed, so the parts
/// cannot run into each other).
pub fn derive_seed(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// The seed of the behaviour sampled for rationale `index` of `role` in `scene_id`.
pub fn behaviour_seed(seed: u64, scene_id: &str, role: Role, index: usize) -> u64 {
    derive_seed(&[
        b"behaviour",
        &seed.to_le_bytes(),
        scene_id.as_bytes(),
        role.name().as_bytes(),
        &(index as u64).to_le_bytes(),
    ])
}

/// Draws a slot from `distribution` (renormalised; it need not sum exactly to 1).
/// `None` when the distribution has no positive mass.
pub fn sample_slot(distribution: &[f64], seed: u64) -> Option<usize> {
    let mass: f64 = distribution.iter().filter(|p| **p > 0.0).sum();
    if mass <= 0.0 || !mass.is_finite() {
        return None;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let target = rng.random::<f64>() * mass;
    let mut cumulative = 0.0;
    let mut last_positive = None;
    for (slot, &p) in distribution.iter().enumerate() {
        if p <= 0.0 {
            continue;
        }
        cumulative += p;
        last_positive = Some(slot);
        if target < cumulative {
            return Some(slot);
        }
    }
    // Rounding can leave `target` a hair above the final cumulative sum.
    last_positive
}

/// Total, expected and mutual uncertainty of one source's rationales of one scene.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SourceUncertainty {
    pub rationales: usize,
    pub hits: usize,
    pub total: f64,
    pub expected: f64,
    pub mutual: f64,
}

impl SourceUncertainty {
    /// `None` for an empty list or distributions of different lengths.
    pub fn of(distributions: &[&[f64]], hits: usize) -> Option<Self> {
        let n = distributions.len();
        let k = distributions.first()?.len();
        if distributions.iter().any(|d| d.len() != k) {
            return None;
        }
        let mut mean = vec![0.0; k];
        for distribution in distributions {
            for (m, p) in mean.iter_mut().zip(distribution.iter()) {
                *m += p / n as f64;
            }
        }
        let total = entropy_bits(&mean);
        let expected = distributions.iter().map(|d| entropy_bits(d)).sum::<f64>() / n as f64;
        Some(SourceUncertainty {
            rationales: n,
            hits,
            total,
            expected,
            mutual: total - expected,
        })
    }
}

/// Why a scene left the distillation before selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The scene has no scored rationale of one of the sources.
    MissingScores,
    /// A distribution did not sum to 1 (labels the backend could not score) or has the wrong length.
    IncompleteScores,
    /// Denoise: no rationale of either source led the predictor to the real choice.
    NoHit,
    /// No strong rationale hits, or no rationale misses.
    NoPair,
}

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            DropReason::MissingScores => "missing_scores",
            DropReason::IncompleteScores => "incomplete_scores",
            DropReason::NoHit => "no_hit",
            DropReason::NoPair => "no_pair",
        }
    }
}

/// A rationale identified within its scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RationaleRef {
    pub role: Role,
    pub index: usize,
}

/// The uncertainties of one scene that passed denoising and has a pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneUncertainty {
    pub scene_id: String,
    pub strong: SourceUncertainty,
    pub weak: SourceUncertainty,
    /// `expected_weak − expected_strong`.
    pub delta_eu: f64,
    /// Share of hits over all rationales of both sources.
    pub hit_rate: f64,
    /// The lowest-entropy strong rationale that hits.
    pub chosen: RationaleRef,
    /// The lowest-entropy rationale (strong or weak) that misses.
    pub rejected: RationaleRef,
}

/// How far a distribution's sum may be from 1 and still count as complete.
const SUM_TOLERANCE: f64 = 1e-6;

/// Applies the definitions to the scores of one scene with `options` options.
///
/// Ties in entropy are broken by the lower index; for the rejected rationale, which may come
/// from either source, by strong before weak and then the lower index.
pub fn analyse_scene(
    scene_id: &str,
    options: usize,
    scores: &[&ScoreRecord],
) -> Result<SceneUncertainty, DropReason> {
    let of_role = |role: Role| -> Vec<&ScoreRecord> {
        let mut list: Vec<&ScoreRecord> =
            scores.iter().copied().filter(|s| s.role == role).collect();
        list.sort_by_key(|s| s.index);
        list
    };
    let strong = of_role(Role::Strong);
    let weak = of_role(Role::Weak);
    if strong.is_empty() || weak.is_empty() {
        return Err(DropReason::MissingScores);
    }
    let complete = |s: &&ScoreRecord| {
        s.distribution.len() == options
            && (s.distribution.iter().sum::<f64>() - 1.0).abs() <= SUM_TOLERANCE
    };
    if !strong.iter().chain(weak.iter()).all(complete) {
        return Err(DropReason::IncompleteScores);
    }
    let summarise = |list: &[&ScoreRecord]| {
        let distributions: Vec<&[f64]> = list.iter().map(|s| s.distribution.as_slice()).collect();
        let hits = list.iter().filter(|s| s.hit).count();
        SourceUncertainty::of(&distributions, hits)
    };
    let (Some(strong_u), Some(weak_u)) = (summarise(&strong), summarise(&weak)) else {
        return Err(DropReason::IncompleteScores);
    };
    if strong_u.hits + weak_u.hits == 0 {
        return Err(DropReason::NoHit);
    }
    let lowest = |candidates: Vec<&&ScoreRecord>| -> Option<RationaleRef> {
        candidates
            .into_iter()
            .min_by(|a, b| {
                a.entropy_bits
                    .total_cmp(&b.entropy_bits)
                    .then(a.role.cmp(&b.role))
                    .then(a.index.cmp(&b.index))
            })
            .map(|s| RationaleRef {
                role: s.role,
                index: s.index,
            })
    };
    let chosen = lowest(strong.iter().filter(|s| s.hit).collect());
    let rejected = lowest(
        strong
            .iter()
            .chain(weak.iter())
            .filter(|s| !s.hit)
            .collect(),
    );
    let (Some(chosen), Some(rejected)) = (chosen, rejected) else {
        return Err(DropReason::NoPair);
    };
    let total_rationales = strong_u.rationales + weak_u.rationales;
    Ok(SceneUncertainty {
        scene_id: scene_id.to_owned(),
        delta_eu: weak_u.expected - strong_u.expected,
        hit_rate: (strong_u.hits + weak_u.hits) as f64 / total_rationales as f64,
        strong: strong_u,
        weak: weak_u,
        chosen,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_distribution() {
        let distribution = [0.2, 0.0, 0.8];
        let mut counts = [0usize; 3];
        for seed in 0..20_000u64 {
            counts[sample_slot(&distribution, seed).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = counts[2] as f64 / 20_000.0;
        assert!((share - 0.8).abs() < 0.015, "share of slot 2: {share}");
        assert_eq!(sample_slot(&[0.0, 0.0], 1), None);
    }

    #[test]
    fn seeds_differ_by_every_part() {
        let base = behaviour_seed(7, "s1", Role::Strong, 0);
        assert_eq!(base, behaviour_seed(7, "s1", Role::Strong, 0));
        assert_ne!(base, behaviour_seed(8, "s1", Role::Strong, 0));
        assert_ne!(base, behaviour_seed(7, "s2", Role::Strong, 0));
        assert_ne!(base, behaviour_seed(7, "s1", Role::Weak, 0));
        assert_ne!(base, behaviour_seed(7, "s1", Role::Strong, 1));
    }
}
