//! The hybrid simulator: `p(option) ∝ p_llm(option)^a · p_prior(option)^b`, where `p_prior` is
//! `softmax(score / T)` of a collaborative baseline fitted on pre-cutoff data.
//!
//! Fitting uses a validation split cut from the END of the training period, never eval scenes:
//! 1. `T` calibrates the prior alone (golden-section search on `ln T`; the prior's NLL is convex
//!    in `1/T`, so unimodal in `ln T`).
//! 2. With that `T`, `(a, b)` minimise the hybrid's mean NLL on the box `[0, max]²`: a coarse
//!    grid, then projected Newton steps with backtracking. The hybrid is a multinomial logit in
//!    the features `(ln p_llm, ln p_prior)`, so this NLL is convex in `(a, b)`.
//!
//! Inside the hybrid only `b / T` matters, so `b` and `T` are not fitted jointly: `T` is the
//! temperature at which the prior alone is calibrated, and `b` rescales it within the hybrid.

use std::path::Path;

use mirrorsim_data::io::write_atomic;
use mirrorsim_data::scenes::render::annotate_options;
use mirrorsim_data::scenes::{SceneRecord, Split};
use serde::{Deserialize, Serialize};

use crate::baselines::{softmax, BaselineKind, FittedBaselines};
use crate::error::EvalError;
use crate::metrics::{ScenePrediction, PROB_FLOOR};

/// The fitted parameters of a hybrid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HybridWeights {
    /// `a`, the exponent of the LLM's distribution.
    pub llm_weight: f64,
    /// `b`, the exponent of the prior's distribution.
    pub prior_weight: f64,
    /// `T` of `p_prior = softmax(score / T)`.
    pub prior_temperature: f64,
}

impl HybridWeights {
    /// The prior's distribution over a scene's options from its raw scores.
    pub fn prior_distribution(&self, prior_scores: &[f64]) -> Vec<f64> {
        softmax(prior_scores, self.prior_temperature)
    }

    /// The hybrid's distribution from the LLM's distribution and the prior's raw scores.
    pub fn distribution(&self, llm: &[f64], prior_scores: &[f64]) -> Result<Vec<f64>, EvalError> {
        combine(
            llm,
            &self.prior_distribution(prior_scores),
            self.llm_weight,
            self.prior_weight,
        )
    }
}

/// `normalise(p_llm^a · p_prior^b)`, computed in log space; probabilities are floored at
/// [`PROB_FLOOR`] first, so an option the LLM gives no mass to stays possible under the prior.
pub fn combine(
    llm: &[f64],
    prior: &[f64],
    llm_weight: f64,
    prior_weight: f64,
) -> Result<Vec<f64>, EvalError> {
    if llm.len() != prior.len() || llm.is_empty() {
        return Err(EvalError::Config(format!(
            "hybrid: the LLM's distribution has {} options and the prior's {}; both must have \
             the same, non-zero number",
            llm.len(),
            prior.len()
        )));
    }
    if !(llm_weight.is_finite() && prior_weight.is_finite()) {
        return Err(EvalError::Config(format!(
            "hybrid: weights must be finite, got a = {llm_weight}, b = {prior_weight}"
        )));
    }
    let logits: Vec<f64> = llm
        .iter()
        .zip(prior)
        .map(|(&l, &p)| llm_weight * floored_ln(l) + prior_weight * floored_ln(p))
        .collect();
    Ok(softmax(&logits, 1.0))
}

fn floored_ln(p: f64) -> f64 {
    if p.is_nan() {
        PROB_FLOOR.ln()
    } else {
        p.max(PROB_FLOOR).ln()
    }
}

/// One validation scene as the fit sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationCase {
    /// The LLM's distribution over the options.
    pub llm: Vec<f64>,
    /// The prior's raw scores of the options (before the temperature).
    pub prior_scores: Vec<f64>,
    /// The slot of the real choice.
    pub answer: usize,
}

/// Search bounds of the fit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitBounds {
    /// `a` and `b` are searched in `[0, max_weight]`.
    pub max_weight: f64,
    pub min_temperature: f64,
    pub max_temperature: f64,
}

impl Default for FitBounds {
    fn default() -> Self {
        FitBounds {
            max_weight: 10.0,
            min_temperature: 1e-3,
            max_temperature: 1e3,
        }
    }
}

/// The fit and the mean validation NLL (nats) of each part and of the hybrid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HybridFit {
    pub weights: HybridWeights,
    pub scenes: usize,
    pub nll_nats_llm: f64,
    /// The prior alone at the fitted temperature.
    pub nll_nats_prior: f64,
    pub nll_nats_hybrid: f64,
}

/// Mean NLL (nats) of the answers under `softmax(a · ln p_llm + b · ln p_prior)`, with its
/// gradient and Hessian in `(a, b)`.
struct LogLinear {
    /// Per case: `(ln p_llm, ln p_prior)` per option and the answer.
    cases: Vec<(Vec<[f64; 2]>, usize)>,
}

impl LogLinear {
    fn new(cases: &[ValidationCase], temperature: f64) -> Self {
        LogLinear {
            cases: cases
                .iter()
                .map(|c| {
                    let prior = softmax(&c.prior_scores, temperature);
                    let features = c
                        .llm
                        .iter()
                        .zip(&prior)
                        .map(|(&l, &p)| [floored_ln(l), floored_ln(p)])
                        .collect();
                    (features, c.answer)
                })
                .collect(),
        }
    }

    fn nll(&self, x: [f64; 2]) -> f64 {
        self.evaluate(x, false).0
    }

    /// `(nll, gradient, hessian)`; the derivatives only when `derivatives`.
    fn evaluate(&self, x: [f64; 2], derivatives: bool) -> (f64, [f64; 2], [[f64; 2]; 2]) {
        let (mut nll, mut gradient, mut hessian) = (0.0, [0.0; 2], [[0.0; 2]; 2]);
        for (features, answer) in &self.cases {
            let logits: Vec<f64> = features.iter().map(|f| x[0] * f[0] + x[1] * f[1]).collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            nll += max + total.ln() - logits[*answer];
            if derivatives {
                let mut mean = [0.0; 2];
                let mut second = [[0.0; 2]; 2];
                for (f, e) in features.iter().zip(&exps) {
                    let q = e / total;
                    for i in 0..2 {
                        mean[i] += q * f[i];
                        for j in 0..2 {
                            second[i][j] += q * f[i] * f[j];
                        }
                    }
                }
                for i in 0..2 {
                    gradient[i] += mean[i] - features[*answer][i];
                    for j in 0..2 {
                        hessian[i][j] += second[i][j] - mean[i] * mean[j];
                    }
                }
            }
        }
        let n = self.cases.len() as f64;
        for (g, row) in gradient.iter_mut().zip(hessian.iter_mut()) {
            *g /= n;
            for h in row.iter_mut() {
                *h /= n;
            }
        }
        (nll / n, gradient, hessian)
    }
}

/// Mean NLL (nats) of the answers under the prior alone at `temperature`.
fn prior_nll(cases: &[ValidationCase], temperature: f64) -> f64 {
    cases
        .iter()
        .map(|c| -floored_ln(softmax(&c.prior_scores, temperature)[c.answer]))
        .sum::<f64>()
        / cases.len() as f64
}

/// The minimiser of a unimodal `f` on `[low, high]`, to `tolerance`.
fn golden_section(mut low: f64, mut high: f64, tolerance: f64, f: impl Fn(f64) -> f64) -> f64 {
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut x1 = high - ratio * (high - low);
    let mut x2 = low + ratio * (high - low);
    let (mut f1, mut f2) = (f(x1), f(x2));
    while high - low > tolerance {
        if f1 <= f2 {
            high = x2;
            x2 = x1;
            f2 = f1;
            x1 = high - ratio * (high - low);
            f1 = f(x1);
        } else {
            low = x1;
            x1 = x2;
            f1 = f2;
            x2 = low + ratio * (high - low);
            f2 = f(x2);
        }
    }
    (low + high) / 2.0
}

/// Fits `(a, b, T)` on validation cases; see the module documentation.
pub fn fit_hybrid(cases: &[ValidationCase], bounds: &FitBounds) -> Result<HybridFit, EvalError> {
    if cases.is_empty() {
        return Err(EvalError::Config(
            "hybrid: no validation scenes to fit on".to_owned(),
        ));
    }
    if !(bounds.max_weight > 0.0
        && bounds.max_weight.is_finite()
        && bounds.min_temperature > 0.0
        && bounds.min_temperature < bounds.max_temperature
        && bounds.max_temperature.is_finite())
    {
        return Err(EvalError::Config(format!(
            "hybrid: invalid fit bounds {bounds:?}"
        )));
    }
    for (i, case) in cases.iter().enumerate() {
        if case.llm.len() != case.prior_scores.len() || case.answer >= case.llm.len() {
            return Err(EvalError::Config(format!(
                "hybrid: validation case {i}: {} LLM probabilities, {} prior scores, answer {}",
                case.llm.len(),
                case.prior_scores.len(),
                case.answer
            )));
        }
        if case.prior_scores.iter().any(|s| !s.is_finite()) {
            return Err(EvalError::Config(format!(
                "hybrid: validation case {i}: the prior's scores are not all finite"
            )));
        }
    }

    let log_temperature = golden_section(
        bounds.min_temperature.ln(),
        bounds.max_temperature.ln(),
        1e-6,
        |u| prior_nll(cases, u.exp()),
    );
    let temperature = log_temperature.exp();

    let model = LogLinear::new(cases, temperature);
    let max = bounds.max_weight;
    let steps = 20;
    let mut best = ([0.0, 0.0], f64::INFINITY);
    for i in 0..=steps {
        for j in 0..=steps {
            let x = [max * i as f64 / steps as f64, max * j as f64 / steps as f64];
            let nll = model.nll(x);
            if nll < best.1 {
                best = (x, nll);
            }
        }
    }
    let (mut x, mut nll) = best;
    let project = |v: f64| v.clamp(0.0, max);
    for _ in 0..200 {
        let (_, g, h) = model.evaluate(x, true);
        let free: [bool; 2] =
            std::array::from_fn(|i| !((x[i] <= 0.0 && g[i] > 0.0) || (x[i] >= max && g[i] < 0.0)));
        let mut direction = [0.0; 2];
        let det = h[0][0] * h[1][1] - h[0][1] * h[1][0];
        let scale = h[0][0].abs().max(h[1][1].abs()).max(f64::MIN_POSITIVE);
        if free[0] && free[1] && det > 1e-12 * scale * scale {
            direction[0] = -(h[1][1] * g[0] - h[0][1] * g[1]) / det;
            direction[1] = -(h[0][0] * g[1] - h[1][0] * g[0]) / det;
        } else {
            for i in 0..2 {
                if free[i] {
                    direction[i] = if h[i][i] > 1e-12 {
                        -g[i] / h[i][i]
                    } else {
                        -g[i]
                    };
                }
            }
        }
        let gradient_norm: f64 = (0..2).filter(|&i| free[i]).map(|i| g[i].abs()).sum();
        if gradient_norm < 1e-10 {
            break;
        }
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-12 {
            let candidate = [
                project(x[0] + step * direction[0]),
                project(x[1] + step * direction[1]),
            ];
            let candidate_nll = model.nll(candidate);
            if candidate_nll < nll {
                x = candidate;
                nll = candidate_nll;
                improved = true;
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    let weights = HybridWeights {
        llm_weight: x[0],
        prior_weight: x[1],
        prior_temperature: temperature,
    };
    Ok(HybridFit {
        weights,
        scenes: cases.len(),
        nll_nats_llm: model.nll([1.0, 0.0]),
        nll_nats_prior: prior_nll(cases, temperature),
        nll_nats_hybrid: nll,
    })
}

/// Train scenes in the last `fraction` of the pre-cutoff period.
#[derive(Debug, Clone)]
pub struct ValidationSplit {
    pub scenes: Vec<SceneRecord>,
    /// Validation decisions are at or after this Unix time (and strictly before the cutoff).
    pub boundary: i64,
    pub cutoff: i64,
}

impl ValidationSplit {
    /// The time before which a prior for the validation scenes may be fitted: the earliest
    /// validation decision (so no validation choice is in the prior's data).
    pub fn prior_cutoff(&self) -> i64 {
        self.scenes
            .iter()
            .map(|s| s.timestamp)
            .min()
            .unwrap_or(self.boundary)
    }
}

/// The train scenes whose decision time lies in the last `fraction` of the pre-cutoff period
/// `[period_start, cutoff)`, in their given order. Fails when any given scene is an eval scene
/// or decided at or after the cutoff: validation must never see the eval period.
pub fn validation_split(
    train: &[SceneRecord],
    period_start: i64,
    cutoff: i64,
    fraction: f64,
) -> Result<ValidationSplit, EvalError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(EvalError::Config(format!(
            "validation fraction must be in (0, 1], got {fraction}"
        )));
    }
    if period_start >= cutoff {
        return Err(EvalError::Config(format!(
            "the pre-cutoff period is empty: it starts at {period_start} and the cutoff is \
             {cutoff}"
        )));
    }
    if let Some(scene) = train
        .iter()
        .find(|s| s.split == Split::Eval || s.timestamp >= cutoff)
    {
        return Err(EvalError::Config(format!(
            "scene {}: field `timestamp`: {} (split {}) is not a train decision before the \
             cutoff {cutoff}; validation scenes must come from the training period",
            scene.id,
            scene.timestamp,
            scene.split.name()
        )));
    }
    let span = (cutoff - period_start) as f64;
    let boundary = cutoff - (span * fraction).ceil() as i64;
    let scenes: Vec<SceneRecord> = train
        .iter()
        .filter(|s| s.timestamp >= boundary)
        .cloned()
        .collect();
    Ok(ValidationSplit {
        scenes,
        boundary,
        cutoff,
    })
}

/// The validation cases of a prior: its raw scores on each scene beside the LLM's distribution.
pub fn validation_cases(
    fitted: &FittedBaselines<'_>,
    prior: BaselineKind,
    scenes: &[SceneRecord],
    llm: &[Vec<f64>],
) -> Result<Vec<ValidationCase>, EvalError> {
    if scenes.len() != llm.len() {
        return Err(EvalError::BackendShape {
            expected: scenes.len(),
            got: llm.len(),
        });
    }
    scenes
        .iter()
        .zip(llm)
        .map(|(scene, llm)| {
            Ok(ValidationCase {
                llm: llm.clone(),
                prior_scores: fitted.scores(prior, scene)?,
                answer: scene.answer,
            })
        })
        .collect()
}

/// The hybrid's predictions on eval scenes: its distribution and `repeats` seeded draws.
pub fn hybrid_predictions(
    fitted: &FittedBaselines<'_>,
    prior: BaselineKind,
    weights: &HybridWeights,
    scenes: &[SceneRecord],
    llm: &[Vec<f64>],
    repeats: usize,
    seed: u64,
) -> Result<Vec<ScenePrediction>, EvalError> {
    if scenes.len() != llm.len() {
        return Err(EvalError::BackendShape {
            expected: scenes.len(),
            got: llm.len(),
        });
    }
    scenes
        .iter()
        .zip(llm)
        .map(|(scene, llm)| {
            let distribution = weights.distribution(llm, &fitted.scores(prior, scene)?)?;
            Ok(crate::evaluate::sampled_prediction(
                scene,
                distribution,
                seed,
                repeats,
            ))
        })
        .collect()
}

/// The note the prompt variant puts on the option a prior ranks first.
pub fn prior_hint(kind: BaselineKind) -> &'static str {
    match kind {
        BaselineKind::Knn => "similar to what you chose before",
        BaselineKind::Ease => "what people with your taste chose next",
        BaselineKind::Popularity => "popular with many people",
        BaselineKind::Random => "picked at random",
        BaselineKind::Sequential => "what people often picked right after your latest picks",
    }
}

/// The other way to use a prior: tell the LLM in the prompt. Each scene's option that `prior`
/// scores strictly highest gets [`prior_hint`] appended to its line; a scene whose top score is
/// tied gets no hint.
pub fn hinted_scenes(
    fitted: &FittedBaselines<'_>,
    prior: BaselineKind,
    scenes: &[SceneRecord],
) -> Result<Vec<SceneRecord>, EvalError> {
    Ok(hint_scenes(fitted, &[prior], scenes)?.0)
}

/// Per option, the notes ([`prior_hint`]) of the priors that score it strictly highest, joined
/// by "; " in the order of `priors`, and per prior the slot it hints at (`None` on a tied top
/// score). `scores[p]` are the scores of `priors[p]`.
pub fn hint_notes(
    priors: &[BaselineKind],
    scores: &[Vec<f64>],
) -> (Vec<Option<String>>, Vec<Option<usize>>) {
    let options = scores.first().map_or(0, Vec::len);
    let mut notes: Vec<Option<String>> = vec![None; options];
    let winners: Vec<Option<usize>> = priors
        .iter()
        .zip(scores)
        .map(|(&prior, scores)| {
            let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let tops: Vec<usize> = (0..scores.len()).filter(|&i| scores[i] == top).collect();
            let [winner] = tops[..] else {
                return None;
            };
            let note = &mut notes[winner];
            *note = Some(match note.take() {
                Some(earlier) => format!("{earlier}; {}", prior_hint(prior)),
                None => prior_hint(prior).to_owned(),
            });
            Some(winner)
        })
        .collect();
    (notes, winners)
}

/// One prior's share of what [`hint_scenes`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorHintCounts {
    pub prior: BaselineKind,
    /// Scenes whose top score under this prior is held by one option, which carries its note.
    pub hinted: usize,
    /// … and of those, the scenes where that option is the real choice: the accuracy of a
    /// simulator that always follows this prior's hint.
    pub hint_on_answer: usize,
}

/// What [`hint_scenes`] did to a set of scenes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HintCounts {
    pub scenes: usize,
    /// Scenes that carry at least one hint.
    pub hinted: usize,
    /// Scenes where some hint is on the real choice: the most a simulator that follows one of
    /// the hints can get right.
    pub hint_on_answer: usize,
    /// With several priors: scenes where every prior hints, all at the same option.
    pub hints_agree: usize,
    pub by_prior: Vec<PriorHintCounts>,
}

/// [`hinted_scenes`] for one or more priors, with the counts a user needs to judge the hints:
/// how many scenes carry one and how often each points at the real choice.
pub fn hint_scenes(
    fitted: &FittedBaselines<'_>,
    priors: &[BaselineKind],
    scenes: &[SceneRecord],
) -> Result<(Vec<SceneRecord>, HintCounts), EvalError> {
    let mut counts = HintCounts {
        scenes: scenes.len(),
        by_prior: priors
            .iter()
            .map(|&prior| PriorHintCounts {
                prior,
                hinted: 0,
                hint_on_answer: 0,
            })
            .collect(),
        ..HintCounts::default()
    };
    let hinted = scenes
        .iter()
        .map(|scene| {
            let scores = priors
                .iter()
                .map(|&prior| fitted.scores(prior, scene))
                .collect::<Result<Vec<_>, _>>()?;
            let (notes, winners) = hint_notes(priors, &scores);
            for (count, winner) in counts.by_prior.iter_mut().zip(&winners) {
                if let Some(winner) = winner {
                    count.hinted += 1;
                    count.hint_on_answer += usize::from(*winner == scene.answer);
                }
            }
            counts.hinted += usize::from(winners.iter().any(Option::is_some));
            counts.hint_on_answer += usize::from(winners.contains(&Some(scene.answer)));
            counts.hints_agree += usize::from(
                winners.iter().all(|w| w.is_some() && *w == winners[0]) && winners.len() > 1,
            );
            Ok(annotate_options(scene, &notes)?)
        })
        .collect::<Result<Vec<_>, EvalError>>()?;
    Ok((hinted, counts))
}

/// The prompt variant against the hybrid on the same validation scenes (mean NLL, nats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptHintFit {
    pub hint: String,
    pub nll_nats_prompt_hint: f64,
    pub nll_nats_hybrid: f64,
    /// `hybrid` or `prompt`: the lower validation NLL.
    pub winner: String,
}

impl PromptHintFit {
    pub fn compare(
        prior: BaselineKind,
        llm_with_hint: &[Vec<f64>],
        answers: &[usize],
        hybrid: &HybridFit,
    ) -> Result<Self, EvalError> {
        if llm_with_hint.len() != answers.len() || answers.is_empty() {
            return Err(EvalError::BackendShape {
                expected: answers.len(),
                got: llm_with_hint.len(),
            });
        }
        let nll = llm_with_hint
            .iter()
            .zip(answers)
            .map(|(d, &a)| crate::metrics::nll_nats(d, a))
            .sum::<f64>()
            / answers.len() as f64;
        Ok(PromptHintFit {
            hint: prior_hint(prior).to_owned(),
            nll_nats_prompt_hint: nll,
            nll_nats_hybrid: hybrid.nll_nats_hybrid,
            winner: if nll < hybrid.nll_nats_hybrid {
                "prompt"
            } else {
                "hybrid"
            }
            .to_owned(),
        })
    }
}

/// `hybrid.json`: the fitted hybrid of one run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HybridFile {
    pub prior: BaselineKind,
    /// The simulator's model id the weights were fitted for.
    pub model: Option<String>,
    pub weights: HybridWeights,
    pub fit: HybridFit,
    pub validation_scenes_file: String,
    /// Validation decisions are in `[boundary, eval cutoff)`.
    pub validation_boundary: i64,
    pub eval_cutoff: i64,
    /// The prior used on validation scenes saw only interactions strictly before this time.
    pub validation_prior_cutoff: i64,
    pub bounds: FitBounds,
    /// With `--prior-in-prompt`: the prompt variant's validation NLL beside the hybrid's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_hint: Option<PromptHintFit>,
}

/// Writes `hybrid.json` atomically.
pub fn write_hybrid_file(path: &Path, file: &HybridFile) -> Result<(), EvalError> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, file).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    Ok(())
}

/// Reads a `hybrid.json`.
pub fn read_hybrid_file(path: &Path) -> Result<HybridFile, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::Malformed {
        path: path.to_owned(),
        line: e.line() as u64,
        field: "hybrid".to_owned(),
        message: format!("not a hybrid.json written by `mirrorsim eval`: {e}"),
    })
}
