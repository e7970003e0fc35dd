//! Metrics of one predictor (a simulator or a baseline) against the real choices.
//!
//! Every predictor gives, per scene, a distribution over the options in the order shown. Ties
//! for the most likely option are split: a scene whose answer shares the maximum with `t - 1`
//! other options counts `1/t` of a hit (the expected accuracy of breaking the tie uniformly),
//! so a uniform predictor scores exactly `1/k`, whatever slot the answer sits in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Probabilities are floored here before taking logs, so one zero does not make NLL infinite.
pub const PROB_FLOOR: f64 = 1e-12;
/// Equal-width confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;
/// The normal quantile of a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// One predictor's answer on one scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenePrediction {
    pub scene_id: String,
    pub dataset: String,
    /// Slot of the real choice.
    pub answer: usize,
    /// Distribution over the options in the order shown; sums to 1.
    pub distribution: Vec<f64>,
    /// Slots chosen by seeded samples (`None`: the distribution had no mass to sample from).
    /// Direct mode and baselines: `R` draws from `distribution`; rationale mode: one draw from
    /// each rationale's own distribution.
    pub samples: Vec<Option<usize>>,
    /// Per cyclic rotation `r = 0..k`: the distribution over the slots as shown when slot `j`
    /// shows the option of original slot `(j + r) mod k`. Empty when not measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<Vec<f64>>,
}

/// Slot shown at position `j` under rotation `r` of `k` options: original slot `(j + r) mod k`.
pub fn rotation_order(k: usize, r: usize) -> Vec<usize> {
    (0..k).map(|j| (j + r) % k).collect()
}

/// Where the answer (original slot `answer`) is shown under rotation `r` of `k` options.
pub fn rotated_answer(k: usize, answer: usize, r: usize) -> usize {
    (answer + k - r % k) % k
}

/// Share of a hit the argmax earns: `1/t` when the answer is one of `t` tied maxima, else 0.
pub fn argmax_credit(distribution: &[f64], answer: usize) -> f64 {
    let max = distribution
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    if distribution.get(answer) != Some(&max) {
        return 0.0;
    }
    let ties = distribution.iter().filter(|&&p| p == max).count();
    1.0 / ties as f64
}

/// Per slot, the share of argmax choices it gets (ties split evenly).
fn argmax_shares(distribution: &[f64]) -> Vec<f64> {
    (0..distribution.len())
        .map(|slot| argmax_credit(distribution, slot))
        .collect()
}

/// Negative log-likelihood of the answer, in nats.
pub fn nll_nats(distribution: &[f64], answer: usize) -> f64 {
    -distribution
        .get(answer)
        .copied()
        .unwrap_or(0.0)
        .max(PROB_FLOOR)
        .ln()
}

/// Multi-class Brier score: `Σ_j (p_j − y_j)²`, in [0, 2].
pub fn brier(distribution: &[f64], answer: usize) -> f64 {
    distribution
        .iter()
        .enumerate()
        .map(|(j, &p)| {
            let y = if j == answer { 1.0 } else { 0.0 };
            (p - y) * (p - y)
        })
        .sum()
}

/// The Wilson score interval of a proportion `p` over `n` trials, 95%.
pub fn wilson_interval(p: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = Z_95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// One confidence bin of the reliability table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean top probability of the scenes in the bin (`None` when empty).
    pub mean_confidence: Option<f64>,
    /// Argmax accuracy of the scenes in the bin (`None` when empty).
    pub accuracy: Option<f64>,
}

/// Expected calibration error over [`ECE_BINS`] equal-width bins of the top probability, and
/// the reliability table. A confidence of exactly 1 falls in the last bin.
pub fn calibration(predictions: &[ScenePrediction]) -> (f64, Vec<ReliabilityBin>) {
    let mut sums = vec![(0usize, 0.0f64, 0.0f64); ECE_BINS];
    for p in predictions {
        let confidence = p
            .distribution
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .clamp(0.0, 1.0);
        let bin = ((confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        sums[bin].0 += 1;
        sums[bin].1 += confidence;
        sums[bin].2 += argmax_credit(&p.distribution, p.answer);
    }
    let total = predictions.len();
    let mut ece = 0.0;
    let bins = sums
        .iter()
        .enumerate()
        .map(|(b, &(count, confidence, hits))| {
            let (mean_confidence, accuracy) = if count == 0 {
                (None, None)
            } else {
                let c = confidence / count as f64;
                let a = hits / count as f64;
                ece += count as f64 / total as f64 * (a - c).abs();
                (Some(c), Some(a))
            };
            ReliabilityBin {
                lower: b as f64 / ECE_BINS as f64,
                upper: (b + 1) as f64 / ECE_BINS as f64,
                count,
                mean_confidence,
                accuracy,
            }
        })
        .collect();
    (ece, bins)
}

/// Accuracy of a group of scenes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAccuracy {
    pub scenes: usize,
    pub accuracy: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub nll_bits: f64,
}

fn group_accuracy<'a>(predictions: impl Iterator<Item = &'a ScenePrediction>) -> GroupAccuracy {
    let (mut n, mut hits, mut nll) = (0usize, 0.0, 0.0);
    for p in predictions {
        n += 1;
        hits += argmax_credit(&p.distribution, p.answer);
        nll += nll_nats(&p.distribution, p.answer);
    }
    let accuracy = if n == 0 { 0.0 } else { hits / n as f64 };
    let (ci_low, ci_high) = wilson_interval(accuracy, n);
    GroupAccuracy {
        scenes: n,
        accuracy,
        ci_low,
        ci_high,
        nll_bits: if n == 0 {
            0.0
        } else {
            nll / n as f64 / std::f64::consts::LN_2
        },
    }
}

/// Position bias, from re-scoring each scene under every cyclic rotation of its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PositionBias {
    /// Scenes scored under all their rotations.
    pub scenes: usize,
    /// Argmax accuracy averaged over scenes and rotations.
    pub permutation_accuracy: f64,
    /// Wilson interval with the number of scenes as the sample size (rotations of one scene
    /// are not independent).
    pub ci_low: f64,
    pub ci_high: f64,
    /// Accuracy of the distribution averaged over the rotations (mapped back to the options).
    pub debiased_accuracy: f64,
    /// Per number of options, per slot: the share of argmax choices landing in that slot over
    /// all rotations. Without position bias every slot gets `1/k`.
    pub slot_choice_rate: BTreeMap<usize, Vec<f64>>,
}

fn position_bias(predictions: &[ScenePrediction]) -> Option<PositionBias> {
    let rotated: Vec<&ScenePrediction> = predictions
        .iter()
        .filter(|p| !p.rotations.is_empty() && p.rotations.len() == p.distribution.len())
        .collect();
    if rotated.is_empty() {
        return None;
    }
    let (mut hits, mut debiased_hits, mut pairs) = (0.0, 0.0, 0usize);
    let mut slot_sums: BTreeMap<usize, (Vec<f64>, usize)> = BTreeMap::new();
    for p in &rotated {
        let k = p.distribution.len();
        let mut averaged = vec![0.0; k];
        for (r, distribution) in p.rotations.iter().enumerate() {
            hits += argmax_credit(distribution, rotated_answer(k, p.answer, r));
            pairs += 1;
            for (slot, &original) in rotation_order(k, r).iter().enumerate() {
                averaged[original] += distribution.get(slot).copied().unwrap_or(0.0) / k as f64;
            }
            let entry = slot_sums.entry(k).or_insert_with(|| (vec![0.0; k], 0));
            for (slot, share) in argmax_shares(distribution).into_iter().enumerate() {
                entry.0[slot] += share;
            }
            entry.1 += 1;
        }
        debiased_hits += argmax_credit(&averaged, p.answer);
    }
    let permutation_accuracy = hits / pairs as f64;
    let (ci_low, ci_high) = wilson_interval(permutation_accuracy, rotated.len());
    Some(PositionBias {
        scenes: rotated.len(),
        permutation_accuracy,
        ci_low,
        ci_high,
        debiased_accuracy: debiased_hits / rotated.len() as f64,
        slot_choice_rate: slot_sums
            .into_iter()
            .map(|(k, (sums, n))| (k, sums.into_iter().map(|s| s / n as f64).collect()))
            .collect(),
    })
}

/// Every metric of one predictor over a set of scenes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceMetrics {
    pub scenes: usize,
    /// Argmax accuracy (ties split).
    pub accuracy: f64,
    /// Wilson 95% interval of `accuracy`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Share of seeded samples that hit, averaged over the scenes that have samples.
    pub sampled_accuracy: Option<f64>,
    /// Samples per scene (the largest count seen).
    pub samples_per_scene: usize,
    /// What uniform guessing scores: the mean of `1/k`.
    pub chance_accuracy: f64,
    pub nll_nats: f64,
    pub nll_bits: f64,
    pub brier: f64,
    pub ece: f64,
    pub reliability: Vec<ReliabilityBin>,
    pub by_dataset: BTreeMap<String, GroupAccuracy>,
    pub by_options: BTreeMap<usize, GroupAccuracy>,
    /// Accuracy by the slot the answer sat in.
    pub by_answer_slot: BTreeMap<usize, GroupAccuracy>,
    /// Per number of options, per slot: the share of argmax choices (original order only).
    pub slot_choice_rate: BTreeMap<usize, Vec<f64>>,
    pub position_bias: Option<PositionBias>,
}

/// Computes [`ChoiceMetrics`]; `None` when there are no predictions.
pub fn choice_metrics(predictions: &[ScenePrediction]) -> Option<ChoiceMetrics> {
    if predictions.is_empty() {
        return None;
    }
    let n = predictions.len() as f64;
    let overall = group_accuracy(predictions.iter());
    let mut nll = 0.0;
    let mut brier_sum = 0.0;
    let mut chance = 0.0;
    let mut sampled = (0.0, 0usize);
    let mut samples_per_scene = 0;
    let mut slot_sums: BTreeMap<usize, (Vec<f64>, usize)> = BTreeMap::new();
    for p in predictions {
        let k = p.distribution.len();
        nll += nll_nats(&p.distribution, p.answer);
        brier_sum += brier(&p.distribution, p.answer);
        chance += 1.0 / k.max(1) as f64;
        if !p.samples.is_empty() {
            let hits = p.samples.iter().filter(|&&s| s == Some(p.answer)).count();
            sampled.0 += hits as f64 / p.samples.len() as f64;
            sampled.1 += 1;
            samples_per_scene = samples_per_scene.max(p.samples.len());
        }
        let entry = slot_sums.entry(k).or_insert_with(|| (vec![0.0; k], 0));
        for (slot, share) in argmax_shares(&p.distribution).into_iter().enumerate() {
            entry.0[slot] += share;
        }
        entry.1 += 1;
    }
    let (ece, reliability) = calibration(predictions);
    let group_by = |key: &dyn Fn(&ScenePrediction) -> String| {
        let mut keys: Vec<String> = predictions.iter().map(key).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let group = group_accuracy(predictions.iter().filter(|p| key(p) == k));
                (k, group)
            })
            .collect::<Vec<_>>()
    };
    let numbered = |key: &dyn Fn(&ScenePrediction) -> usize| {
        let mut keys: Vec<usize> = predictions.iter().map(key).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                (
                    k,
                    group_accuracy(predictions.iter().filter(|p| key(p) == k)),
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    Some(ChoiceMetrics {
        scenes: predictions.len(),
        accuracy: overall.accuracy,
        ci_low: overall.ci_low,
        ci_high: overall.ci_high,
        sampled_accuracy: (sampled.1 > 0).then(|| sampled.0 / sampled.1 as f64),
        samples_per_scene,
        chance_accuracy: chance / n,
        nll_nats: nll / n,
        nll_bits: nll / n / std::f64::consts::LN_2,
        brier: brier_sum / n,
        ece,
        reliability,
        by_dataset: group_by(&|p| p.dataset.clone()).into_iter().collect(),
        by_options: numbered(&|p| p.distribution.len()),
        by_answer_slot: numbered(&|p| p.answer),
        slot_choice_rate: slot_sums
            .into_iter()
            .map(|(k, (sums, count))| (k, sums.into_iter().map(|s| s / count as f64).collect()))
            .collect(),
        position_bias: position_bias(predictions),
    })
}

/// One item of the Agent4Rec protocol: would the user choose it, yes or no.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct YesNoItem {
    pub item_id: String,
    /// Whether this is the item the user really chose.
    pub positive: bool,
    /// The predictor's yes decision.
    pub says_yes: bool,
    /// P(yes) where the predictor gives one (the simulator); `None` for baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_yes: Option<f64>,
}

/// Precision, recall, accuracy and F1 of yes/no decisions, the positive class being "chosen".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    pub users: usize,
    pub items: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub true_negatives: usize,
    /// 0 when nothing was predicted positive.
    pub precision: f64,
    pub recall: f64,
    pub accuracy: f64,
    /// 0 when precision and recall are both 0.
    pub f1: f64,
}

/// Metrics of yes/no decisions, one list of items per user.
pub fn binary_metrics(users: &[Vec<YesNoItem>]) -> BinaryMetrics {
    let (mut tp, mut fp, mut fn_, mut tn) = (0, 0, 0, 0);
    for item in users.iter().flatten() {
        match (item.positive, item.says_yes) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => fn_ += 1,
            (false, false) => tn += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fn_);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    BinaryMetrics {
        users: users.len(),
        items: tp + fp + fn_ + tn,
        true_positives: tp,
        false_positives: fp,
        false_negatives: fn_,
        true_negatives: tn,
        precision,
        recall,
        accuracy: ratio(tp + tn, tp + fp + fn_ + tn),
        f1,
    }
}
