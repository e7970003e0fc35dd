//! `scenes.summary.json`: what was built, from what, and what was skipped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::scenes::negatives::SampledSplit;
use crate::scenes::split::{Decisions, TimeSplit};
use crate::scenes::{NegativeSource, SceneConfig};

/// Counts of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// Decisions (interactions) on this side of the cutoff.
    pub decisions: usize,
    /// Decisions with enough history to become a scene.
    pub eligible: usize,
    /// Eligible decisions left out by the scene cap.
    pub not_sampled: usize,
    pub scenes: usize,
    /// Decisions not used, per reason (`short_history`, `too_few_candidates`).
    pub skipped: BTreeMap<String, usize>,
    /// Scenes per number of options.
    pub by_k: BTreeMap<usize, usize>,
    /// Per number of options `k`: how often the answer sat in slot 0, 1, …, k−1.
    pub answer_slots: BTreeMap<usize, Vec<usize>>,
}

/// What the negative sources delivered, over both splits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// Negatives first drawn from each source.
    pub requested: BTreeMap<String, usize>,
    /// Negatives each source really provided (after fallbacks).
    pub delivered: BTreeMap<String, usize>,
    /// `delivered` as a share of all negatives.
    pub share: BTreeMap<String, f64>,
    /// Fallbacks as `from->to`: the first source could not provide a valid item.
    pub fallbacks: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneSummary {
    pub dataset: String,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    /// Eval decisions are at or after this Unix time; train decisions strictly before it.
    pub cutoff_timestamp: Option<i64>,
    /// Interactions strictly before the cutoff (all the collaborative model saw).
    pub interactions_before_cutoff: usize,
    pub train: SplitSummary,
    pub eval: SplitSummary,
    pub negative_sources: SourceSummary,
    /// Sources asked for but switched off, with the reason.
    pub disabled_sources: Vec<String>,
    pub config: SceneConfig,
}

impl SceneSummary {
    pub(crate) fn new(
        catalog: &Catalog,
        config: &SceneConfig,
        time_split: &TimeSplit,
        decisions: &Decisions,
        [train, eval]: [&SampledSplit; 2],
        disabled_sources: Vec<String>,
    ) -> Self {
        let mut sources = SourceSummary::default();
        let mut total_negatives = 0usize;
        for scene in train.scenes.iter().chain(&eval.scenes) {
            let delivered = scene.sources.iter().flatten();
            for (&got, &wanted) in delivered.zip(&scene.requested) {
                total_negatives += 1;
                *sources
                    .requested
                    .entry(wanted.name().to_owned())
                    .or_insert(0) += 1;
                *sources.delivered.entry(got.name().to_owned()).or_insert(0) += 1;
                if got != wanted {
                    *sources
                        .fallbacks
                        .entry(format!("{}->{}", wanted.name(), got.name()))
                        .or_insert(0) += 1;
                }
            }
        }
        for source in NegativeSource::ALL {
            let n = sources.delivered.get(source.name()).copied().unwrap_or(0);
            if total_negatives > 0 {
                sources
                    .share
                    .insert(source.name().to_owned(), n as f64 / total_negatives as f64);
            }
        }
        SceneSummary {
            dataset: catalog.name.clone(),
            users: catalog.users.len(),
            items: catalog.items.len(),
            interactions: catalog.interactions.len(),
            cutoff_timestamp: time_split.cutoff,
            interactions_before_cutoff: time_split.cutoff_position,
            train: split_summary(
                decisions.train_total,
                decisions.train.len(),
                &decisions.train_skipped,
                train,
            ),
            eval: split_summary(
                decisions.eval_total,
                decisions.eval.len(),
                &decisions.eval_skipped,
                eval,
            ),
            negative_sources: sources,
            disabled_sources,
            config: config.clone(),
        }
    }
}

fn split_summary(
    total: usize,
    eligible: usize,
    skipped_before: &BTreeMap<String, usize>,
    sampled: &SampledSplit,
) -> SplitSummary {
    let mut summary = SplitSummary {
        decisions: total,
        eligible,
        not_sampled: sampled.not_sampled,
        scenes: sampled.scenes.len(),
        skipped: skipped_before.clone(),
        ..SplitSummary::default()
    };
    for (reason, n) in &sampled.skipped {
        *summary.skipped.entry(reason.clone()).or_insert(0) += n;
    }
    for scene in &sampled.scenes {
        let k = scene.options.len();
        *summary.by_k.entry(k).or_insert(0) += 1;
        summary.answer_slots.entry(k).or_insert_with(|| vec![0; k])[scene.answer] += 1;
    }
    summary
}
