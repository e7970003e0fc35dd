//! Leakage-free listwise choice scenes.
//!
//! A scene is one logged decision (a user chose an item at a time) turned into a multiple-choice
//! task: the user's profile, their last few interactions strictly before the decision, and `k`
//! options labelled `[A]`, `[B]`, … of which exactly one is the item really chosen.
//!
//! The pipeline, in [`build_scenes`]:
//! 1. [`split`]: a global time cutoff. Train decisions are strictly before it, eval decisions at
//!    or after it; decisions with fewer than `min_history` strictly earlier interactions are
//!    skipped; at most `max_*_scenes` decisions per split are sampled deterministically.
//! 2. [`collaborative`] (truncated SVD of the pre-cutoff user–item matrix) and [`content`]
//!    (TF-IDF neighbour lists) are fitted once.
//! 3. [`negatives`]: each scene draws `k − 1` negatives from the configured source mix, with
//!    a recorded fallback when a source cannot provide one. The answer slot is uniform over all
//!    `k` slots. Every scene has its own RNG seeded from (seed, user, timestamp, item), so
//!    building in parallel is deterministic.
//! 4. [`render`]: the rationale and direct prompts from editable templates.
//! 5. [`summary`] and [`write_scenes`]: JSONL + JSON, written atomically.

pub mod collaborative;
pub mod content;
pub mod negatives;
pub mod render;
pub mod slate;
pub mod split;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::DataError;

pub use collaborative::{truncated_svd, CollaborativeModel, DenseMatrix, SparseMatrix, Svd};
pub use content::ContentIndex;
pub use render::{ChatMessage, PromptSet, TEMPLATE_NAMES};
pub use split::TimeSplit;
pub use summary::{SceneSummary, SourceSummary, SplitSummary};

/// Where a negative option came from. The order of the variants is the fallback chain: when a
/// source cannot provide a valid item, the next one is tried, down to `Random`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeSource {
    /// Another item of the impression list logged with the decision (e.g. MIND).
    Impressions,
    /// A nearest neighbour of the chosen item by TF-IDF cosine over title and attributes.
    Content,
    /// One of the top-scored items for the user by the truncated-SVD embedding.
    Collaborative,
    /// An item drawn with probability proportional to its interactions before the decision.
    Popularity,
    /// An item drawn uniformly from those the user never interacted with.
    Random,
}

impl NegativeSource {
    /// The fallback chain, in order.
    pub const ALL: [NegativeSource; 5] = [
        NegativeSource::Impressions,
        NegativeSource::Content,
        NegativeSource::Collaborative,
        NegativeSource::Popularity,
        NegativeSource::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NegativeSource::Impressions => "impressions",
            NegativeSource::Content => "content",
            NegativeSource::Collaborative => "collaborative",
            NegativeSource::Popularity => "popularity",
            NegativeSource::Random => "random",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        NegativeSource::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The value recorded in `exposure_sources` for the real item.
pub const POSITIVE_SOURCE: &str = "positive";

/// Relative weights of the negative sources (0 turns a source off as a first choice; it can
/// still serve as a fallback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NegativeMix {
    pub random: f64,
    pub popularity: f64,
    pub collaborative: f64,
    pub content: f64,
    /// Ignored (and reported as disabled) when the dataset logs no impression lists.
    pub impressions: f64,
}

impl Default for NegativeMix {
    fn default() -> Self {
        NegativeMix {
            random: 1.0,
            popularity: 1.0,
            collaborative: 1.0,
            content: 1.0,
            impressions: 1.0,
        }
    }
}

impl NegativeMix {
    /// A mix with every weight 0.
    pub fn none() -> Self {
        NegativeMix {
            random: 0.0,
            popularity: 0.0,
            collaborative: 0.0,
            content: 0.0,
            impressions: 0.0,
        }
    }

    pub fn weight(&self, source: NegativeSource) -> f64 {
        match source {
            NegativeSource::Impressions => self.impressions,
            NegativeSource::Content => self.content,
            NegativeSource::Collaborative => self.collaborative,
            NegativeSource::Popularity => self.popularity,
            NegativeSource::Random => self.random,
        }
    }

    pub fn set(&mut self, source: NegativeSource, weight: f64) {
        match source {
            NegativeSource::Impressions => self.impressions = weight,
            NegativeSource::Content => self.content = weight,
            NegativeSource::Collaborative => self.collaborative = weight,
            NegativeSource::Popularity => self.popularity = weight,
            NegativeSource::Random => self.random = weight,
        }
    }
}

impl std::str::FromStr for NegativeMix {
    type Err = DataError;

    /// Parses `random=1,popularity=2,content=1`; sources not named get weight 0, and a bare
    /// name means weight 1.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut mix = NegativeMix::none();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((name, weight)) => (name.trim(), weight.trim()),
                None => (part, "1"),
            };
            let source = NegativeSource::parse(name).ok_or_else(|| {
                DataError::Config(format!(
                    "unknown negative source `{name}` in `{spec}`; known sources: {}",
                    NegativeSource::ALL.map(NegativeSource::name).join(", ")
                ))
            })?;
            let weight: f64 = weight.parse().map_err(|_| {
                DataError::Config(format!(
                    "weight `{weight}` of negative source `{name}` is not a number"
                ))
            })?;
            mix.set(source, weight);
        }
        Ok(mix)
    }
}

/// An inclusive range of option counts, written `2..12`, `2..=12` or `5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionRange {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for OptionRange {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = || {
            DataError::Config(format!(
                "`{spec}` is not an option count range; write MIN..MAX (inclusive), e.g. 2..12"
            ))
        };
        let (min, max) = match spec.split_once("..") {
            Some((min, max)) => (min, max.strip_prefix('=').unwrap_or(max)),
            None => (spec, spec),
        };
        Ok(OptionRange {
            min: min.trim().parse().map_err(|_| bad())?,
            max: max.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// The most options a scene can show: one per letter A–Z.
pub const MAX_OPTIONS: usize = 26;

/// How scenes are built. Every field has a default (see [`SceneConfig::default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SceneConfig {
    /// Share of interactions, the latest by time, that are eligible as eval decisions. The
    /// cutoff is the timestamp of the first interaction of that share.
    pub eval_fraction: f64,
    /// Decisions with fewer strictly earlier interactions of the same user are skipped.
    pub min_history: usize,
    /// How many of the latest earlier interactions the prompt shows.
    pub history_len: usize,
    /// Number of options of a train scene, drawn uniformly from this inclusive range.
    pub train_options: OptionRange,
    /// Number of options of every eval scene.
    pub eval_options: usize,
    pub negatives: NegativeMix,
    /// At most this many train scenes, sampled deterministically from the eligible decisions
    /// (`None`: all of them).
    pub max_train_scenes: Option<usize>,
    /// At most this many eval scenes (`None`: all of them).
    pub max_eval_scenes: Option<usize>,
    pub seed: u64,
    /// Rank of the truncated SVD behind collaborative negatives.
    pub svd_dims: usize,
    /// Power iterations of the randomized SVD.
    pub svd_power_iterations: usize,
    /// Collaborative negatives are drawn uniformly among this many top-scored valid items.
    pub collaborative_pool: usize,
    /// Length of each item's precomputed TF-IDF neighbour list.
    pub content_neighbours: usize,
    /// Content negatives are drawn uniformly among this many nearest valid neighbours.
    pub content_pool: usize,
    /// A folder whose template files replace the embedded ones (see [`TEMPLATE_NAMES`]).
    pub prompts_dir: Option<PathBuf>,
    /// Describe each option by how often it was chosen before the decision and its mean
    /// rating, counted on interactions strictly before the decision and before the cutoff.
    pub item_stats: bool,
    /// With `item_stats`, also each option's rank by that count among the options listed
    /// ("(2nd most rated of these)"; equal counts share a rank), so that a small model need
    /// not compare the numbers itself.
    pub item_stats_rank: bool,
}

impl Default for SceneConfig {
    fn default() -> Self {
        SceneConfig {
            eval_fraction: 0.1,
            min_history: 3,
            history_len: 10,
            train_options: OptionRange { min: 2, max: 12 },
            eval_options: 5,
            negatives: NegativeMix::default(),
            max_train_scenes: None,
            max_eval_scenes: None,
            seed: 0,
            svd_dims: 32,
            svd_power_iterations: 3,
            collaborative_pool: 50,
            content_neighbours: 50,
            content_pool: 10,
            prompts_dir: None,
            item_stats: false,
            item_stats_rank: false,
        }
    }
}

impl SceneConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |message: String| Err(DataError::Config(message));
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return bad(format!(
                "eval_fraction must be in [0, 1), got {}",
                self.eval_fraction
            ));
        }
        let OptionRange { min, max } = self.train_options;
        if min < 2 || max > MAX_OPTIONS || min > max {
            return bad(format!(
                "train options must satisfy 2 <= MIN <= MAX <= {MAX_OPTIONS}, got {min}..{max}"
            ));
        }
        if !(2..=MAX_OPTIONS).contains(&self.eval_options) {
            return bad(format!(
                "eval options must be between 2 and {MAX_OPTIONS}, got {}",
                self.eval_options
            ));
        }
        for source in NegativeSource::ALL {
            let w = self.negatives.weight(source);
            if !w.is_finite() || w < 0.0 {
                return bad(format!(
                    "weight of negative source `{}` must be a finite number >= 0, got {w}",
                    source.name()
                ));
            }
        }
        if NegativeSource::ALL
            .iter()
            .all(|&s| self.negatives.weight(s) == 0.0)
        {
            return bad("at least one negative source needs a weight above 0".to_owned());
        }
        if self.svd_dims == 0 || self.collaborative_pool == 0 || self.content_pool == 0 {
            return bad("svd_dims, collaborative_pool and content_pool must be at least 1".into());
        }
        if self.content_neighbours < self.content_pool {
            return bad(format!(
                "content_neighbours ({}) must be at least content_pool ({})",
                self.content_neighbours, self.content_pool
            ));
        }
        if self.item_stats_rank && !self.item_stats {
            return bad(
                "item_stats_rank ranks the counts that item_stats shows; set item_stats too".into(),
            );
        }
        Ok(())
    }
}

/// Which side of the cutoff a scene is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

/// One earlier interaction shown in a scene's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub item_id: String,
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rating: Option<f32>,
}

/// One scene as written to `scenes.{train,eval}.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneRecord {
    /// `{dataset}-{split}-{position}`, position being the decision's index in the catalog's
    /// time-sorted interactions.
    pub id: String,
    pub dataset: String,
    pub split: Split,
    pub user_id: String,
    /// The item really chosen.
    pub item_id: String,
    pub timestamp: i64,
    /// Item ids in the order shown.
    pub options: Vec<String>,
    /// 0-based slot of `item_id` in `options`.
    pub answer: usize,
    pub labels: Vec<String>,
    /// Per option: `positive` for the real item, else the negative source that provided it.
    pub exposure_sources: Vec<String>,
    /// The interactions shown as history, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The rationale prompt (system + user).
    pub messages: Vec<ChatMessage>,
    /// The behaviour-only prompt (system + user).
    pub direct_messages: Vec<ChatMessage>,
}

/// Wall time of each stage of [`build_scenes`], in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageTimings {
    pub split_s: f64,
    pub svd_s: f64,
    pub tfidf_s: f64,
    pub sampling_s: f64,
    pub rendering_s: f64,
}

/// The scenes of both splits, with their summary.
#[derive(Debug, Clone)]
pub struct SceneSet {
    pub train: Vec<SceneRecord>,
    pub eval: Vec<SceneRecord>,
    pub summary: SceneSummary,
    /// Not part of the summary file, which stays byte-identical across runs.
    pub timings: StageTimings,
}

/// Builds the train and eval scenes of `catalog`.
pub fn build_scenes(catalog: &Catalog, config: &SceneConfig) -> Result<SceneSet, DataError> {
    config.validate()?;
    let prompts = PromptSet::load(config.prompts_dir.as_deref())?;
    let mut timings = StageTimings::default();

    let started = Instant::now();
    let time_split = TimeSplit::compute(catalog, config.eval_fraction);
    let index = negatives::UserIndex::build(catalog);
    let decisions = split::eligible_decisions(catalog, &index.by_user, &time_split, config);
    timings.split_s = started.elapsed().as_secs_f64();

    let has_impressions = catalog
        .interactions
        .iter()
        .any(|i| i.impressions.as_ref().is_some_and(|l| !l.is_empty()));
    let mut disabled = Vec::new();
    let mut weights = config.negatives.clone();
    if !has_impressions && weights.impressions > 0.0 {
        weights.impressions = 0.0;
        disabled.push("impressions: the dataset logs no impression lists".to_owned());
    }
    if NegativeSource::ALL
        .iter()
        .all(|&s| weights.weight(s) == 0.0)
    {
        return Err(DataError::Config(
            "the only negative source asked for is `impressions`, but the dataset logs no \
             impression lists; add another source, e.g. --negatives random=1"
                .to_owned(),
        ));
    }

    let want_collaborative = weights.collaborative > 0.0;
    let want_content = weights.content > 0.0;
    let ((collaborative, svd_s), (content, tfidf_s)) = rayon::join(
        || {
            let started = Instant::now();
            let model = want_collaborative.then(|| {
                CollaborativeModel::fit(
                    catalog,
                    time_split.cutoff_position,
                    config.svd_dims,
                    config.svd_power_iterations,
                    config.seed,
                )
            });
            (model, started.elapsed().as_secs_f64())
        },
        || {
            let started = Instant::now();
            let index =
                want_content.then(|| ContentIndex::build(catalog, config.content_neighbours));
            (index, started.elapsed().as_secs_f64())
        },
    );
    timings.svd_s = svd_s;
    timings.tfidf_s = tfidf_s;

    let sampler = negatives::SceneSampler {
        catalog,
        index: &index,
        collaborative: collaborative.as_ref(),
        content: content.as_ref(),
        weights: &weights,
        config,
    };

    let started = Instant::now();
    let train = sampler.sample_split(Split::Train, &decisions.train, config.max_train_scenes);
    let eval = sampler.sample_split(Split::Eval, &decisions.eval, config.max_eval_scenes);
    timings.sampling_s = started.elapsed().as_secs_f64();

    let summary = SceneSummary::new(
        catalog,
        config,
        &time_split,
        &decisions,
        [&train, &eval],
        disabled,
    );

    let started = Instant::now();
    let renderer = render::SceneRenderer::new(catalog, &prompts, config)?;
    let train_records = render_all(&renderer, &index, &train.scenes)?;
    let eval_records = render_all(&renderer, &index, &eval.scenes)?;
    timings.rendering_s = started.elapsed().as_secs_f64();

    Ok(SceneSet {
        train: train_records,
        eval: eval_records,
        summary,
        timings,
    })
}

fn render_all(
    renderer: &render::SceneRenderer<'_>,
    index: &negatives::UserIndex,
    scenes: &[negatives::Scene],
) -> Result<Vec<SceneRecord>, DataError> {
    scenes
        .par_iter()
        .map(|scene| renderer.render(scene, index))
        .collect()
}

/// The files [`write_scenes`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ScenePaths {
    pub train: PathBuf,
    pub eval: PathBuf,
    pub summary: PathBuf,
}

/// Writes `DIR/scenes.train.jsonl`, `DIR/scenes.eval.jsonl` and `DIR/scenes.summary.json`,
/// each atomically (temp file + rename).
pub fn write_scenes(dir: &Path, set: &SceneSet) -> Result<ScenePaths, DataError> {
    let paths = ScenePaths {
        train: dir.join("scenes.train.jsonl"),
        eval: dir.join("scenes.eval.jsonl"),
        summary: dir.join("scenes.summary.json"),
    };
    write_jsonl(&paths.train, &set.train)?;
    write_jsonl(&paths.eval, &set.eval)?;
    crate::io::write_atomic(&paths.summary, |w| {
        serde_json::to_writer_pretty(&mut *w, &set.summary).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    Ok(paths)
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl(path: &Path, records: &[SceneRecord]) -> Result<(), DataError> {
    crate::io::write_atomic(path, |w| {
        for record in records {
            serde_json::to_writer(&mut *w, record).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Reads scenes back from a JSONL file (one record per line).
pub fn read_jsonl(path: &Path) -> Result<Vec<SceneRecord>, DataError> {
    let mut lines = crate::io::Lines::open(path, crate::io::Encoding::Utf8)?;
    let mut records = Vec::new();
    while let Some(line) = lines.next_line() {
        let (line_no, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&text).map_err(|e| {
            DataError::malformed(path, line_no, "scene", format!("not a scene record: {e}"))
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_mix_parses_names_and_weights() {
        let mix: NegativeMix = "random=1, popularity=2.5,content".parse().unwrap();
        assert_eq!(mix.random, 1.0);
        assert_eq!(mix.popularity, 2.5);
        assert_eq!(mix.content, 1.0);
        assert_eq!(mix.collaborative, 0.0);
        assert_eq!(mix.impressions, 0.0);
        assert!("bogus=1".parse::<NegativeMix>().is_err());
        assert!("random=x".parse::<NegativeMix>().is_err());
    }

    #[test]
    fn option_range_parses_both_spellings() {
        let r: OptionRange = "2..12".parse().unwrap();
        assert_eq!((r.min, r.max), (2, 12));
        let r: OptionRange = "3..=7".parse().unwrap();
        assert_eq!((r.min, r.max), (3, 7));
        let r: OptionRange = "5".parse().unwrap();
        assert_eq!((r.min, r.max), (5, 5));
        assert!("a..b".parse::<OptionRange>().is_err());
    }

    #[test]
    fn config_validation_names_the_bad_field() {
        assert!(SceneConfig::default().validate().is_ok());
        let mut c = SceneConfig {
            eval_fraction: 1.0,
            ..SceneConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eval_fraction"));
        c.eval_fraction = 0.1;
        c.train_options = OptionRange { min: 1, max: 4 };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("train options"));
        c.train_options = OptionRange { min: 2, max: 4 };
        c.eval_options = 27;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eval options"));
        c.eval_options = 5;
        c.negatives = NegativeMix::none();
        assert!(c.validate().is_err());
        c.negatives.popularity = -1.0;
        assert!(c.validate().unwrap_err().to_string().contains("popularity"));
        let c = SceneConfig {
            item_stats_rank: true,
            ..SceneConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("item_stats"));
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let c: SceneConfig =
            serde_json::from_str(r#"{"seed": 7, "max_train_scenes": 10}"#).unwrap();
        assert_eq!(c.seed, 7);
        assert_eq!(c.max_train_scenes, Some(10));
        assert_eq!(c.eval_options, 5);
        assert!(serde_json::from_str::<SceneConfig>(r#"{"sed": 7}"#).is_err());
    }
}
