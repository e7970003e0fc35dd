//! Ranking candidate scenes and keeping an exact, stratified top-K.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::DistillError;
use crate::uncertainty::{derive_seed, SceneUncertainty};

/// How candidate scenes are ranked before the stratified cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selector {
    /// Highest ΔEU = expected_weak − expected_strong first.
    #[default]
    DeltaEu,
    /// A seeded random order.
    Random,
    /// Highest share of hits (both sources) first.
    HitRateHigh,
    /// Lowest share of hits first.
    HitRateLow,
    /// Highest total_weak − total_strong first.
    TotalGap,
}

impl Selector {
    pub const ALL: [Selector; 5] = [
        Selector::DeltaEu,
        Selector::Random,
        Selector::HitRateHigh,
        Selector::HitRateLow,
        Selector::TotalGap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Selector::DeltaEu => "delta-eu",
            Selector::Random => "random",
            Selector::HitRateHigh => "hit-rate-high",
            Selector::HitRateLow => "hit-rate-low",
            Selector::TotalGap => "total-gap",
        }
    }
}

impl std::str::FromStr for Selector {
    type Err = DistillError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Selector::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                DistillError::Config(format!(
                    "unknown selector `{name}`; known selectors: {}",
                    Selector::ALL.map(Selector::name).join(", ")
                ))
            })
    }
}

/// Positions into `candidates`, best first. Ties keep the candidates' own order.
pub fn rank(candidates: &[SceneUncertainty], selector: Selector, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    let descending_by = |order: &mut Vec<usize>, key: &dyn Fn(&SceneUncertainty) -> f64| {
        order.sort_by(|&a, &b| {
            key(&candidates[b])
                .total_cmp(&key(&candidates[a]))
                .then(a.cmp(&b))
        });
    };
    match selector {
        Selector::DeltaEu => descending_by(&mut order, &|c| c.delta_eu),
        Selector::HitRateHigh => descending_by(&mut order, &|c| c.hit_rate),
        Selector::HitRateLow => descending_by(&mut order, &|c| -c.hit_rate),
        Selector::TotalGap => descending_by(&mut order, &|c| c.weak.total - c.strong.total),
        Selector::Random => {
            let mut rng = StdRng::seed_from_u64(derive_seed(&[b"select", &seed.to_le_bytes()]));
            order.shuffle(&mut rng);
        }
    }
    order
}

/// Splits `budget` over strata in proportion to `sizes`, exactly.
///
/// Largest-remainder (Hamilton) allocation of `min(budget, Σ sizes)`; no stratum gets more than
/// its size (the excess is reallocated among the others in proportion); and when the budget is
/// at least the number of non-empty strata, each of them gets at least one (taken from the
/// stratum whose allocation exceeds its exact quota the most). Ties go to the earlier stratum.
pub fn allocate(sizes: &[usize], budget: usize) -> Vec<usize> {
    let total_size: usize = sizes.iter().sum();
    let budget = budget.min(total_size);
    let mut allocation = vec![0usize; sizes.len()];
    if budget == 0 {
        return allocation;
    }
    let quota: Vec<f64> = sizes
        .iter()
        .map(|&s| budget as f64 * s as f64 / total_size as f64)
        .collect();

    // Hamilton over the strata that still have room, repeated while capacity caps bite.
    let mut open: Vec<usize> = (0..sizes.len()).filter(|&i| sizes[i] > 0).collect();
    let mut remaining = budget;
    while remaining > 0 && !open.is_empty() {
        let weight_total: usize = open.iter().map(|&i| sizes[i]).sum();
        let shares: Vec<(usize, f64)> = open
            .iter()
            .map(|&i| (i, remaining as f64 * sizes[i] as f64 / weight_total as f64))
            .collect();
        let mut given = 0usize;
        let mut remainders = Vec::with_capacity(shares.len());
        for &(i, share) in &shares {
            let whole = (share.floor() as usize).min(sizes[i] - allocation[i]);
            allocation[i] += whole;
            given += whole;
            remainders.push((i, share - share.floor()));
        }
        remainders.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for &(i, _) in &remainders {
            if given == remaining {
                break;
            }
            if allocation[i] < sizes[i] {
                allocation[i] += 1;
                given += 1;
            }
        }
        remaining -= given;
        open.retain(|&i| allocation[i] < sizes[i]);
        if given == 0 {
            // Every open stratum is full; cannot happen while budget ≤ Σ sizes, but never loop.
            break;
        }
    }

    let non_empty = sizes.iter().filter(|&&s| s > 0).count();
    if budget >= non_empty {
        while let Some(starved) = (0..sizes.len()).find(|&i| sizes[i] > 0 && allocation[i] == 0) {
            let donor = (0..sizes.len())
                .filter(|&i| allocation[i] >= 2)
                .max_by(|&a, &b| {
                    (allocation[a] as f64 - quota[a])
                        .total_cmp(&(allocation[b] as f64 - quota[b]))
                        .then(b.cmp(&a))
                });
            let Some(donor) = donor else { break };
            allocation[donor] -= 1;
            allocation[starved] += 1;
        }
    }
    allocation
}

/// The stratum of a scene: its dataset and number of options.
pub type StratumKey = (String, usize);

/// The result of the stratified cut.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Positions into the candidates, in rank order.
    pub kept: Vec<usize>,
    /// Per stratum: (candidates, kept).
    pub strata: BTreeMap<StratumKey, (usize, usize)>,
}

/// Keeps the best `top_k` of the ranked candidates, stratified by `strata[i]` in proportion to
/// stratum size (see [`allocate`]).
pub fn stratified_top_k(ranked: &[usize], strata: &[StratumKey], top_k: usize) -> Selection {
    let mut by_stratum: BTreeMap<StratumKey, Vec<usize>> = BTreeMap::new();
    for &position in ranked {
        by_stratum
            .entry(strata[position].clone())
            .or_default()
            .push(position);
    }
    let sizes: Vec<usize> = by_stratum.values().map(Vec::len).collect();
    let allocation = allocate(&sizes, top_k);
    let mut keep = vec![false; strata.len()];
    let mut summary = BTreeMap::new();
    for ((key, members), &quota) in by_stratum.iter().zip(&allocation) {
        for &position in &members[..quota] {
            keep[position] = true;
        }
        summary.insert(key.clone(), (members.len(), quota));
    }
    Selection {
        kept: ranked.iter().copied().filter(|&p| keep[p]).collect(),
        strata: summary,
    }
}
