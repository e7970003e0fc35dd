//! Classical baselines on the same scenes, fitted only on interactions strictly before the
//! global cutoff: random (uniform), popularity, item-kNN, EASE and a sequential prior.
//!
//! Each baseline scores the scene's options; its distribution is `softmax(score / T)`.
//! Scores: popularity `ln(1 + pre-cutoff interactions)`; item-kNN the mean, over the user's
//! pre-decision history, of the cosine between the history item and the option in the binary
//! pre-cutoff user–item matrix; EASE `Σ_h B[h, option]` over the history with
//! `B = I − P·diag(1/diag P)`, `P = (XᵀX + λI)⁻¹` (Steck 2019). Items outside a baseline's
//! vocabulary (too few pre-cutoff interactions) score 0.
//!
//! The sequential prior reads the order of choices, which the others ignore. From each user's
//! pre-cutoff sequence it counts how often `b` followed `a` within `window` steps, each pair
//! weighted by `1 / distance`: `F[a, b]`. An option scores
//! `ln(ε + Σ_k F[h_k, option] / (k · (1 + Σ_b F[h_k, b])))` over the user's `recent` last
//! choices, `h_1` the latest, so that at `T = 1` its distribution is proportional to the sum
//! plus [`SEQUENTIAL_FLOOR`] `ε`. It is item-to-item "what people picked right after this" (a
//! windowed Markov chain), the signal sequential recommenders exploit.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use mirrorsim_data::scenes::SceneRecord;
use mirrorsim_data::{Catalog, ItemIdx, UserIdx};
use serde::{Deserialize, Serialize};

use crate::error::EvalError;
use crate::linalg::invert_spd_in_place;

/// `ε` of the sequential prior's score `ln(ε + …)`: the mass an option nothing led to keeps.
/// Chosen on ML-1M's validation scenes (the end of the training period), where the prior's NLL
/// at `T = 1` is flat (0.64 bits) for `ε` from 1e-7 to 1e-5 and worse above.
pub const SEQUENTIAL_FLOOR: f64 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaselineKind {
    Random,
    Popularity,
    Knn,
    Ease,
    Sequential,
}

impl BaselineKind {
    pub const ALL: [BaselineKind; 5] = [
        BaselineKind::Random,
        BaselineKind::Popularity,
        BaselineKind::Knn,
        BaselineKind::Ease,
        BaselineKind::Sequential,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BaselineKind::Random => "random",
            BaselineKind::Popularity => "popularity",
            BaselineKind::Knn => "knn",
            BaselineKind::Ease => "ease",
            BaselineKind::Sequential => "sequential",
        }
    }

    /// Parses `random,popularity,knn,ease,sequential` (empty or `none`: no baselines).
    pub fn parse_list(spec: &str) -> Result<Vec<BaselineKind>, EvalError> {
        let mut kinds = Vec::new();
        for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "none" {
                continue;
            }
            let kind = BaselineKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    EvalError::Config(format!(
                        "unknown baseline `{name}`; known: random, popularity, knn, ease, sequential"
                    ))
                })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }
}

impl fmt::Display for BaselineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of the baselines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineConfig {
    /// Softmax temperature turning scores into distributions (accuracy does not depend on it).
    pub temperature: f64,
    /// EASE's L2 weight λ.
    pub ease_lambda: f64,
    /// EASE uses only items with at least this many pre-cutoff interactions …
    pub ease_min_interactions: usize,
    /// … and at most this many of them, the most interacted first (its Gram matrix is dense).
    pub ease_max_items: usize,
    /// Item-kNN uses at most this many items, the most interacted first.
    pub knn_max_items: usize,
    /// The sequential prior counts a pair when the second choice came at most this many steps
    /// after the first.
    pub sequential_window: usize,
    /// … and scores options against the user's last this many choices.
    pub sequential_recent: usize,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            temperature: 1.0,
            ease_lambda: 500.0,
            ease_min_interactions: 1,
            ease_max_items: 4000,
            knn_max_items: 10_000,
            sequential_window: 20,
            sequential_recent: 20,
        }
    }
}

/// Item indices of a dense vocabulary and the way back.
#[derive(Debug, Clone)]
struct Vocabulary {
    items: Vec<ItemIdx>,
    /// Per catalog item: its position in `items`, or `usize::MAX`.
    position: Vec<usize>,
}

impl Vocabulary {
    /// Items with at least `min_count` interactions, most interacted first (ties by index),
    /// at most `max_items`.
    fn top(counts: &[u32], min_count: usize, max_items: usize) -> Self {
        let mut items: Vec<ItemIdx> = (0..counts.len() as ItemIdx)
            .filter(|&i| counts[i as usize] as usize >= min_count.max(1))
            .collect();
        items.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
        items.truncate(max_items);
        let mut position = vec![usize::MAX; counts.len()];
        for (p, &i) in items.iter().enumerate() {
            position[i as usize] = p;
        }
        Vocabulary { items, position }
    }

    fn get(&self, item: ItemIdx) -> Option<usize> {
        self.position
            .get(item as usize)
            .copied()
            .filter(|&p| p != usize::MAX)
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Everything the baselines learn from the interactions strictly before the cutoff.
pub struct FittedBaselines<'c> {
    catalog: &'c Catalog,
    config: BaselineConfig,
    /// Interaction positions per user, in time order (all of them: histories are cut per scene).
    by_user: Vec<Vec<u32>>,
    /// Distinct users per item before the cutoff.
    counts: Vec<u32>,
    knn_vocab: Vocabulary,
    /// The distinct (user, item) pairs before the cutoff, sorted.
    pairs: Vec<(UserIdx, ItemIdx)>,
    /// Co-occurrence counts over `knn_vocab` (row-major), from the binary pre-cutoff matrix:
    /// built by the fit when EASE needs it, else on kNN's first use.
    gram: OnceLock<Vec<u32>>,
    ease: Option<(Vocabulary, Vec<f64>)>,
    /// The sequential prior's counts, built on its first use: most users of the baselines
    /// never ask for it.
    follows: OnceLock<FollowCounts>,
    /// Interactions strictly before the cutoff.
    pub interactions_before_cutoff: usize,
}

impl<'c> FittedBaselines<'c> {
    /// Fits popularity and item-kNN on `catalog.interactions` strictly before `cutoff` (all of
    /// them when `None`), and EASE too when `with_ease`. Item-kNN's co-occurrence counts and
    /// the sequential prior's counts are built on their first use, unless EASE needs the
    /// former now.
    pub fn fit(
        catalog: &'c Catalog,
        cutoff: Option<i64>,
        config: &BaselineConfig,
        with_ease: bool,
    ) -> Result<Self, EvalError> {
        if !(config.temperature > 0.0 && config.temperature.is_finite()) {
            return Err(EvalError::Config(format!(
                "baseline temperature must be a positive number, got {}",
                config.temperature
            )));
        }
        if !(config.ease_lambda >= 0.0 && config.ease_lambda.is_finite()) {
            return Err(EvalError::Config(format!(
                "EASE λ must be a finite number >= 0, got {}",
                config.ease_lambda
            )));
        }
        let before = match cutoff {
            Some(c) => catalog.interactions.partition_point(|i| i.timestamp < c),
            None => catalog.interactions.len(),
        };
        let mut pairs: Vec<(UserIdx, ItemIdx)> = catalog.interactions[..before]
            .iter()
            .map(|i| (i.user, i.item))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut counts = vec![0u32; catalog.items.len()];
        for &(_, item) in &pairs {
            counts[item as usize] += 1;
        }
        let knn_vocab = Vocabulary::top(&counts, 1, config.knn_max_items);
        let gram = OnceLock::new();
        let ease = if with_ease {
            let gram = gram.get_or_init(|| co_occurrence(&pairs, &knn_vocab));
            let vocab = Vocabulary::top(
                &counts,
                config.ease_min_interactions,
                config.ease_max_items.min(config.knn_max_items),
            );
            let weights = ease_weights(gram, &knn_vocab, &vocab, config.ease_lambda)?;
            Some((vocab, weights))
        } else {
            None
        };
        if config.sequential_window == 0 || config.sequential_recent == 0 {
            return Err(EvalError::Config(format!(
                "the sequential prior's window and recent count must be at least 1, got {} and {}",
                config.sequential_window, config.sequential_recent
            )));
        }
        Ok(FittedBaselines {
            catalog,
            config: config.clone(),
            by_user: catalog.interactions_by_user(),
            counts,
            knn_vocab,
            pairs,
            gram,
            ease,
            follows: OnceLock::new(),
            interactions_before_cutoff: before,
        })
    }

    pub fn config(&self) -> &BaselineConfig {
        &self.config
    }

    /// Pre-cutoff interaction count (distinct users) of an item.
    pub fn popularity(&self, item: ItemIdx) -> u32 {
        self.counts[item as usize]
    }

    /// Items of the vocabulary EASE was fitted on (0 when it was not).
    pub fn ease_items(&self) -> usize {
        self.ease.as_ref().map_or(0, |(v, _)| v.len())
    }

    /// Cosine similarity of two items in the binary pre-cutoff matrix (0 outside the kNN
    /// vocabulary).
    pub fn cosine(&self, a: ItemIdx, b: ItemIdx) -> f64 {
        let (Some(pa), Some(pb)) = (self.knn_vocab.get(a), self.knn_vocab.get(b)) else {
            return 0.0;
        };
        let n = self.knn_vocab.len();
        let gram = self
            .gram
            .get_or_init(|| co_occurrence(&self.pairs, &self.knn_vocab));
        let both = gram[pa * n + pb] as f64;
        let norm = (gram[pa * n + pa] as f64 * gram[pb * n + pb] as f64).sqrt();
        if norm == 0.0 {
            0.0
        } else {
            both / norm
        }
    }

    /// The EASE weight `B[from, to]` (0 outside its vocabulary or when EASE was not fitted).
    pub fn ease_weight(&self, from: ItemIdx, to: ItemIdx) -> f64 {
        let Some((vocab, weights)) = &self.ease else {
            return 0.0;
        };
        match (vocab.get(from), vocab.get(to)) {
            (Some(f), Some(t)) => weights[f * vocab.len() + t],
            _ => 0.0,
        }
    }

    /// `F[from, to]` of the sequential prior: how often `to` followed `from` within the window
    /// before the cutoff, each time weighted by `1 / distance`.
    pub fn follow_weight(&self, from: ItemIdx, to: ItemIdx) -> f64 {
        self.follows().weight(from, to)
    }

    fn follows(&self) -> &FollowCounts {
        self.follows.get_or_init(|| {
            FollowCounts::fit(
                self.catalog,
                &self.by_user,
                self.interactions_before_cutoff,
                self.config.sequential_window,
            )
        })
    }

    /// The catalog indices of a scene's user, options and the user's history strictly before
    /// the decision, in time order.
    fn resolve(&self, scene: &SceneRecord) -> Result<(Vec<ItemIdx>, Vec<ItemIdx>), EvalError> {
        let user = self.catalog.user_idx(&scene.user_id).ok_or_else(|| {
            EvalError::Config(format!(
                "scene {}: field `user_id`: user `{}` is not in the catalog `{}`",
                scene.id, scene.user_id, self.catalog.name
            ))
        })?;
        let options = scene
            .options
            .iter()
            .map(|id| {
                self.catalog.item_idx(id).ok_or_else(|| {
                    EvalError::Config(format!(
                        "scene {}: field `options`: item `{id}` is not in the catalog `{}`",
                        scene.id, self.catalog.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let history: Vec<ItemIdx> = self.by_user[user as usize]
            .iter()
            .map(|&p| &self.catalog.interactions[p as usize])
            .take_while(|i| i.timestamp < scene.timestamp)
            .map(|i| i.item)
            .collect();
        Ok((options, history))
    }

    /// The raw scores of a scene's options.
    pub fn scores(&self, kind: BaselineKind, scene: &SceneRecord) -> Result<Vec<f64>, EvalError> {
        let (options, recent) = self.resolve(scene)?;
        let mut history = recent.clone();
        history.sort_unstable();
        history.dedup();
        let options: Vec<Option<ItemIdx>> = options.into_iter().map(Some).collect();
        self.scores_of(kind, &options, &history, &recent)
    }

    /// The raw scores of `options` for a user whose distinct earlier items are `history`
    /// (sorted) and whose latest choices are `recent` (time order, oldest first; only the
    /// sequential prior reads it). An option outside the catalog (`None`) scores as an item
    /// nobody interacted with: 0 for every baseline, `ln ε` for the sequential prior.
    pub fn scores_of(
        &self,
        kind: BaselineKind,
        options: &[Option<ItemIdx>],
        history: &[ItemIdx],
        recent: &[ItemIdx],
    ) -> Result<Vec<f64>, EvalError> {
        Ok(match kind {
            BaselineKind::Random => vec![0.0; options.len()],
            BaselineKind::Popularity => options
                .iter()
                .map(|o| o.map_or(0.0, |o| (1.0 + self.popularity(o) as f64).ln()))
                .collect(),
            BaselineKind::Knn => options
                .iter()
                .map(|o| match o {
                    Some(o) if !history.is_empty() => {
                        let total: f64 = history.iter().map(|&h| self.cosine(h, *o)).sum();
                        total / history.len() as f64
                    }
                    _ => 0.0,
                })
                .collect(),
            BaselineKind::Ease => {
                if self.ease.is_none() {
                    return Err(EvalError::Config(
                        "EASE was not fitted; fit with `with_ease`".to_owned(),
                    ));
                }
                options
                    .iter()
                    .map(|o| {
                        o.map_or(0.0, |o| {
                            history.iter().map(|&h| self.ease_weight(h, o)).sum()
                        })
                    })
                    .collect()
            }
            BaselineKind::Sequential => {
                let follows = self.follows();
                options
                    .iter()
                    .map(|o| {
                        let followed: f64 = o.map_or(0.0, |o| {
                            recent
                                .iter()
                                .rev()
                                .take(self.config.sequential_recent)
                                .enumerate()
                                .map(|(k, &h)| {
                                    follows.weight(h, o)
                                        / ((k + 1) as f64 * (1.0 + follows.totals[h as usize]))
                                })
                                .sum()
                        });
                        (SEQUENTIAL_FLOOR + followed).ln()
                    })
                    .collect()
            }
        })
    }

    /// The baseline's distribution over a scene's options: `softmax(score / T)`.
    pub fn distribution(
        &self,
        kind: BaselineKind,
        scene: &SceneRecord,
    ) -> Result<Vec<f64>, EvalError> {
        Ok(softmax(&self.scores(kind, scene)?, self.config.temperature))
    }
}

/// `softmax(scores / temperature)`, computed stably.
pub fn softmax(scores: &[f64], temperature: f64) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores
        .iter()
        .map(|&s| ((s - max) / temperature).exp())
        .collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The sequential prior's `F` and its row sums.
struct FollowCounts {
    /// Per item `a`: `F[a, b]` for every `b` that followed it.
    rows: Vec<HashMap<ItemIdx, f64>>,
    /// Per item `a`: `Σ_b F[a, b]`.
    totals: Vec<f64>,
}

impl FollowCounts {
    /// `F` over the interactions `..before`, from each user's sequence.
    fn fit(catalog: &Catalog, by_user: &[Vec<u32>], before: usize, window: usize) -> Self {
        let mut rows: Vec<HashMap<ItemIdx, f64>> = vec![HashMap::new(); catalog.items.len()];
        let mut totals = vec![0.0; catalog.items.len()];
        let mut sequence: Vec<ItemIdx> = Vec::new();
        for positions in by_user {
            sequence.clear();
            sequence.extend(
                positions
                    .iter()
                    .take_while(|&&p| (p as usize) < before)
                    .map(|&p| catalog.interactions[p as usize].item),
            );
            for (i, &from) in sequence.iter().enumerate() {
                let row = &mut rows[from as usize];
                for (distance, &to) in sequence[i + 1..].iter().take(window).enumerate() {
                    let weight = 1.0 / (distance + 1) as f64;
                    *row.entry(to).or_insert(0.0) += weight;
                    totals[from as usize] += weight;
                }
            }
        }
        FollowCounts { rows, totals }
    }

    fn weight(&self, from: ItemIdx, to: ItemIdx) -> f64 {
        self.rows
            .get(from as usize)
            .and_then(|row| row.get(&to))
            .copied()
            .unwrap_or(0.0)
    }
}

/// `XᵀX` over the vocabulary, from sorted distinct (user, item) pairs.
fn co_occurrence(pairs: &[(UserIdx, ItemIdx)], vocab: &Vocabulary) -> Vec<u32> {
    let n = vocab.len();
    let mut gram = vec![0u32; n * n];
    let mut start = 0;
    let mut row: Vec<usize> = Vec::new();
    while start < pairs.len() {
        let user = pairs[start].0;
        let end = start + pairs[start..].partition_point(|p| p.0 == user);
        row.clear();
        row.extend(pairs[start..end].iter().filter_map(|p| vocab.get(p.1)));
        for &a in &row {
            let line = &mut gram[a * n..(a + 1) * n];
            for &b in &row {
                line[b] += 1;
            }
        }
        start = end;
    }
    gram
}

/// EASE's `B` over `vocab` (a subset of `gram_vocab`), row-major.
fn ease_weights(
    gram: &[u32],
    gram_vocab: &Vocabulary,
    vocab: &Vocabulary,
    lambda: f64,
) -> Result<Vec<f64>, EvalError> {
    let n = vocab.len();
    let m = gram_vocab.len();
    let mut p = vec![0.0f64; n * n];
    for (a, item_a) in vocab.items.iter().enumerate() {
        let ga = gram_vocab.position[*item_a as usize];
        for (b, item_b) in vocab.items.iter().enumerate() {
            let gb = gram_vocab.position[*item_b as usize];
            p[a * n + b] = gram[ga * m + gb] as f64;
        }
        p[a * n + a] += lambda;
    }
    if lambda == 0.0 {
        tracing::warn!("EASE with λ = 0: the Gram matrix may be singular");
    }
    invert_spd_in_place(&mut p, n)?;
    let diagonal: Vec<f64> = (0..n).map(|j| p[j * n + j]).collect();
    for a in 0..n {
        for b in 0..n {
            p[a * n + b] = if a == b {
                0.0
            } else {
                -p[a * n + b] / diagonal[b]
            };
        }
    }
    Ok(p)
}
