//! The Agent4Rec protocol: per user, one item really chosen and `m` items not chosen; the
//! predictor says yes or no to each; precision, recall, accuracy and F1 of the yes answers.
//!
//! Items come from the user's first eval scene (by time): its answer is the positive and its
//! other options, in slot order, the negatives; a ratio `1:m` needs scenes with at least `m + 1`
//! options and is left out otherwise. A simulator says yes when `P(yes) > P(no)`; a baseline,
//! which only ranks, says yes to the items it scores highest among the `m + 1` (ties: all).

use std::collections::BTreeMap;

use mirrorsim_data::scenes::SceneRecord;
use serde::{Deserialize, Serialize};

use crate::metrics::{binary_metrics, BinaryMetrics, YesNoItem};

/// The ratios `1:m` of the protocol.
pub const RATIOS: [usize; 4] = [1, 2, 3, 9];

/// One user's items: slots of their scene, the positive first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent4RecCase {
    pub user_id: String,
    /// Index into the evaluated scenes.
    pub scene: usize,
    /// The answer slot, then the other slots in order.
    pub slots: Vec<usize>,
}

/// The first scene of each user (earliest timestamp, then id), in scene order.
pub fn select_cases(scenes: &[SceneRecord]) -> Vec<Agent4RecCase> {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, scene) in scenes.iter().enumerate() {
        first
            .entry(scene.user_id.as_str())
            .and_modify(|best| {
                let b = &scenes[*best];
                if (scene.timestamp, &scene.id) < (b.timestamp, &b.id) {
                    *best = index;
                }
            })
            .or_insert(index);
    }
    let mut chosen: Vec<usize> = first.into_values().collect();
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|index| {
            let scene = &scenes[index];
            let slots = std::iter::once(scene.answer)
                .chain((0..scene.options.len()).filter(|&s| s != scene.answer))
                .collect();
            Agent4RecCase {
                user_id: scene.user_id.clone(),
                scene: index,
                slots,
            }
        })
        .collect()
}

fn per_ratio(
    cases: &[Agent4RecCase],
    decide: impl Fn(usize, &[usize]) -> Vec<YesNoItem>,
) -> BTreeMap<usize, BinaryMetrics> {
    RATIOS
        .iter()
        .filter_map(|&m| {
            let users: Vec<Vec<YesNoItem>> = cases
                .iter()
                .enumerate()
                .filter(|(_, c)| c.slots.len() > m)
                .map(|(i, c)| decide(i, &c.slots[..=m]))
                .collect();
            (!users.is_empty()).then(|| (m, binary_metrics(&users)))
        })
        .collect()
}

/// Metrics per ratio for a simulator: `p_yes[case][j]` is P(yes) for `cases[case].slots[j]`.
pub fn simulator_metrics(
    scenes: &[SceneRecord],
    cases: &[Agent4RecCase],
    p_yes: &[Vec<f64>],
) -> BTreeMap<usize, BinaryMetrics> {
    per_ratio(cases, |i, slots| {
        let case = &cases[i];
        slots
            .iter()
            .enumerate()
            .map(|(j, &slot)| {
                let p = p_yes[i].get(j).copied().unwrap_or(0.0);
                YesNoItem {
                    item_id: scenes[case.scene].options[slot].clone(),
                    positive: j == 0,
                    says_yes: p > 0.5,
                    p_yes: Some(p),
                }
            })
            .collect()
    })
}

/// Metrics per ratio for a ranking predictor with a distribution per scene.
pub fn ranking_metrics(
    scenes: &[SceneRecord],
    cases: &[Agent4RecCase],
    distributions: &[Vec<f64>],
) -> BTreeMap<usize, BinaryMetrics> {
    per_ratio(cases, |i, slots| {
        let case = &cases[i];
        let dist = &distributions[case.scene];
        let best = slots
            .iter()
            .map(|&s| dist[s])
            .fold(f64::NEG_INFINITY, f64::max);
        slots
            .iter()
            .enumerate()
            .map(|(j, &slot)| YesNoItem {
                item_id: scenes[case.scene].options[slot].clone(),
                positive: j == 0,
                says_yes: dist[slot] == best,
                p_yes: None,
            })
            .collect()
    })
}
