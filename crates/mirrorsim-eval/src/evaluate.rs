//! One evaluation: simulator and baseline predictions → `metrics.json` and `predictions.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mirrorsim_data::io::write_atomic;
use mirrorsim_data::scenes::{SceneRecord, SceneSummary};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::agent4rec::{ranking_metrics, simulator_metrics, Agent4RecCase};
use crate::baselines::{BaselineConfig, BaselineKind, FittedBaselines};
use crate::error::EvalError;
use crate::metrics::{choice_metrics, BinaryMetrics, ChoiceMetrics, ScenePrediction};
use crate::rating::RatingMetrics;
use crate::simulate::{draw_samples, SimulatorOutput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictorKind {
    Simulator,
    Baseline,
}

/// The metrics of one predictor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictorMetrics {
    pub name: String,
    pub kind: PredictorKind,
    pub metrics: ChoiceMetrics,
    /// Agent4Rec yes/no metrics per ratio `1:m` (keyed by `m`).
    pub agent4rec: BTreeMap<usize, BinaryMetrics>,
}

/// `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    pub scenes_file: String,
    pub scenes: usize,
    /// The simulator's model id and mode (`None` with `--model none`).
    pub model: Option<String>,
    pub mode: Option<String>,
    pub repeats: usize,
    pub seed: u64,
    /// Baselines saw only interactions strictly before this Unix time.
    pub cutoff_timestamp: Option<i64>,
    /// Where the cutoff came from.
    pub cutoff_source: String,
    pub interactions_before_cutoff: Option<usize>,
    pub baseline_config: Option<BaselineConfig>,
    pub predictors: Vec<PredictorMetrics>,
    /// Anything the reader should know (missing label probabilities, ratios left out, …).
    pub notes: Vec<String>,
    /// Wall time per stage, in seconds.
    pub timings: BTreeMap<String, f64>,
    /// Simulator requests answered from the run journal / sent to the model in this run.
    #[serde(default)]
    pub llm_requests_from_journal: Option<u64>,
    #[serde(default)]
    pub llm_requests_sent: Option<u64>,
    /// Rating prediction of the decisions that carry a rating (`--ratings`), per predictor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratings: Vec<RatingMetrics>,
}

/// One line of `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionLine {
    pub predictor: String,
    #[serde(flatten)]
    pub prediction: ScenePrediction,
}

/// The `scenes.summary.json` that `mirrorsim scenes` wrote beside `scenes_path`, if any.
pub fn summary_beside(scenes_path: &Path) -> Result<Option<(SceneSummary, PathBuf)>, EvalError> {
    let summary_path = scenes_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("scenes.summary.json");
    if !summary_path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&summary_path).map_err(|e| EvalError::io(&summary_path, e))?;
    let summary: SceneSummary = serde_json::from_str(&text).map_err(|e| EvalError::Malformed {
        path: summary_path.clone(),
        line: e.line() as u64,
        field: "(the whole file)".to_owned(),
        message: format!("not a scenes summary: {e}"),
    })?;
    Ok(Some((summary, summary_path)))
}

/// The cutoff the baselines must respect: `explicit` if given; else `cutoff_timestamp` of
/// `scenes.summary.json` beside the scenes file; else the earliest eval decision (which is at
/// or after the real cutoff, so baselines may then see a few post-cutoff interactions; noted).
pub fn resolve_cutoff(
    scenes_path: &Path,
    scenes: &[SceneRecord],
    explicit: Option<i64>,
) -> Result<(Option<i64>, String), EvalError> {
    if let Some(cutoff) = explicit {
        return Ok((Some(cutoff), "given on the command line".to_owned()));
    }
    if let Some((summary, path)) = summary_beside(scenes_path)? {
        return Ok((summary.cutoff_timestamp, path.display().to_string()));
    }
    let earliest = scenes.iter().map(|s| s.timestamp).min();
    Ok((
        earliest,
        "the earliest eval decision (no scenes.summary.json beside the scenes; baselines may \
         see interactions between the real cutoff and it)"
            .to_owned(),
    ))
}

/// A baseline's predictions: its distribution and `repeats` seeded draws per scene.
pub fn baseline_predictions(
    fitted: &FittedBaselines<'_>,
    kind: BaselineKind,
    scenes: &[SceneRecord],
    repeats: usize,
    seed: u64,
) -> Result<Vec<ScenePrediction>, EvalError> {
    scenes
        .par_iter()
        .map(|scene| {
            let distribution = fitted.distribution(kind, scene)?;
            Ok(sampled_prediction(scene, distribution, seed, repeats))
        })
        .collect()
}

/// Metrics of a baseline from its predictions.
pub fn baseline_metrics(
    kind: BaselineKind,
    scenes: &[SceneRecord],
    predictions: &[ScenePrediction],
    cases: &[Agent4RecCase],
) -> Result<PredictorMetrics, EvalError> {
    let distributions: Vec<Vec<f64>> = predictions.iter().map(|p| p.distribution.clone()).collect();
    Ok(PredictorMetrics {
        name: kind.name().to_owned(),
        kind: PredictorKind::Baseline,
        metrics: choice_metrics(predictions)
            .ok_or_else(|| EvalError::Config("no scenes to evaluate".to_owned()))?,
        agent4rec: ranking_metrics(scenes, cases, &distributions),
    })
}

/// A predictor's prediction for a scene: its distribution and `repeats` seeded draws from it.
pub fn sampled_prediction(
    scene: &SceneRecord,
    distribution: Vec<f64>,
    seed: u64,
    repeats: usize,
) -> ScenePrediction {
    ScenePrediction {
        scene_id: scene.id.clone(),
        dataset: scene.dataset.clone(),
        answer: scene.answer,
        samples: draw_samples(&distribution, seed, &scene.id, repeats),
        distribution,
        rotations: Vec::new(),
    }
}

/// What [`score_baselines`] produced.
#[derive(Debug, Clone)]
pub struct BaselineScores {
    pub predictors: Vec<PredictorMetrics>,
    pub lines: Vec<PredictionLine>,
    /// On the untuned temperature; `None` when no baseline was scored.
    pub note: Option<String>,
}

/// Every baseline of `kinds` on the scenes: its metrics, prediction lines and a note.
pub fn score_baselines(
    fitted: &FittedBaselines<'_>,
    kinds: &[BaselineKind],
    scenes: &[SceneRecord],
    cases: &[Agent4RecCase],
    repeats: usize,
    seed: u64,
) -> Result<BaselineScores, EvalError> {
    let mut predictors = Vec::with_capacity(kinds.len());
    let mut lines = Vec::new();
    for &kind in kinds {
        let predictions = baseline_predictions(fitted, kind, scenes, repeats, seed)?;
        predictors.push(baseline_metrics(kind, scenes, &predictions, cases)?);
        lines.extend(predictions.into_iter().map(|prediction| PredictionLine {
            predictor: kind.name().to_owned(),
            prediction,
        }));
    }
    let note = (!kinds.is_empty()).then(|| {
        format!(
            "baseline distributions are softmax(score / {}) with an untuned temperature: their \
             NLL, Brier and ECE depend on it, their accuracy does not",
            fitted.config().temperature
        )
    });
    Ok(BaselineScores {
        predictors,
        lines,
        note,
    })
}

/// The notes every metrics file carries about what was not measured on these scenes.
pub fn coverage_notes(scenes: &[SceneRecord], agent4rec: bool, ratings: bool) -> Vec<String> {
    let mut notes = Vec::new();
    let max_options = scenes.iter().map(|s| s.options.len()).max().unwrap_or(0);
    let left_out: Vec<String> = crate::agent4rec::RATIOS
        .iter()
        .filter(|&&m| m + 1 > max_options)
        .map(|m| format!("1:{m}"))
        .collect();
    if agent4rec && !left_out.is_empty() {
        notes.push(format!(
            "Agent4Rec ratios {} left out: the scenes have at most {max_options} options",
            left_out.join(", ")
        ));
    }
    if !ratings {
        notes.push(
            "rating MAE/RMSE is not computed (pass --ratings with a catalog that has ratings)"
                .to_owned(),
        );
    }
    notes
}

/// Metrics of the simulator from its scoring output.
pub fn simulator_predictor_metrics(
    name: &str,
    scenes: &[SceneRecord],
    output: &SimulatorOutput,
    cases: &[Agent4RecCase],
) -> Result<PredictorMetrics, EvalError> {
    Ok(PredictorMetrics {
        name: name.to_owned(),
        kind: PredictorKind::Simulator,
        metrics: choice_metrics(&output.predictions)
            .ok_or_else(|| EvalError::Config("no scenes to evaluate".to_owned()))?,
        agent4rec: if output.agent4rec_p_yes.is_empty() {
            BTreeMap::new()
        } else {
            simulator_metrics(scenes, cases, &output.agent4rec_p_yes)
        },
    })
}

/// The paths [`write_outputs`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct OutputPaths {
    pub metrics: PathBuf,
    pub predictions: PathBuf,
}

/// Writes `DIR/metrics.json` and `DIR/predictions.jsonl`, each atomically.
pub fn write_outputs(
    dir: &Path,
    metrics: &MetricsFile,
    predictions: &[PredictionLine],
) -> Result<OutputPaths, EvalError> {
    let paths = OutputPaths {
        metrics: dir.join("metrics.json"),
        predictions: dir.join("predictions.jsonl"),
    };
    write_atomic(&paths.metrics, |w| {
        serde_json::to_writer_pretty(&mut *w, metrics).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    write_atomic(&paths.predictions, |w| {
        for line in predictions {
            serde_json::to_writer(&mut *w, line).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(paths)
}

/// Reads a `metrics.json`.
pub fn read_metrics(path: &Path) -> Result<MetricsFile, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::Malformed {
        path: path.to_owned(),
        line: e.line() as u64,
        field: "metrics".to_owned(),
        message: format!("not a metrics.json written by `mirrorsim eval`: {e}"),
    })
}
