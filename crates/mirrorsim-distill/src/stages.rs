//! The stages: rationales → scores → distilled training sets, each over `&dyn Backend`.
//!
//! Wrap the backend in a [`crate::journal::JournaledBackend`] to make a stage resumable; the
//! stages themselves are deterministic functions of their inputs, their config and the
//! backend's answers, so a rerun that is answered from the journal writes identical files.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use mirrorsim_data::scenes::ChatMessage as SceneMessage;
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, ChoiceScores, Completion, ContinuationRequest,
    ContinuationScores, GenerateRequest, LlmError, Prompt, SamplingParams,
};
use serde::{Deserialize, Serialize};

use crate::error::DistillError;
use crate::records::{
    read_jsonl, write_json, write_jsonl, FormatCheck, RationaleRecord, Role, SceneRecord,
    ScoreRecord,
};
use crate::select::{rank, stratified_top_k, Selector, StratumKey};
use crate::uncertainty::{
    analyse_scene, behaviour_seed, derive_seed, entropy_bits, logloss_bits, sample_slot,
    SceneUncertainty,
};

/// What a stage did, for the line printed at its end.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub scenes: usize,
    pub records: usize,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub wall_s: f64,
}

impl fmt::Display for StageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} scenes, {} records, tokens in {} / out {}, {:.1} s",
            self.stage,
            self.scenes,
            self.records,
            self.prompt_tokens,
            self.completion_tokens,
            self.wall_s
        )
    }
}

/// What a [`MeteredBackend`] saw pass through it: only calls that reached the wrapped backend,
/// so behind a [`crate::journal::JournaledBackend`] these are the requests really sent to the
/// model, not those answered from the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BackendMeter {
    /// Calls of `generate` and `score_choices`.
    pub calls: u64,
    /// Generate requests in those calls.
    pub generate_requests: u64,
    /// Choice requests in those calls.
    pub choice_requests: u64,
    /// Continuations in the choice requests.
    pub continuations: u64,
    /// Prompt tokens of the answers: once per generate request (its samples share the prompt),
    /// as the backend reported them for choice requests.
    pub prompt_tokens: u64,
    /// Completion tokens of the generated samples.
    pub completion_tokens: u64,
    /// Seconds spent inside the wrapped backend's calls, summed over calls.
    pub busy_s: f64,
}

/// A [`Backend`] that passes every call on and records its time and tokens in a [`BackendMeter`]:
/// the time a stage spends in the model versus everything else, and the tokens a paid endpoint
/// bills.
pub struct MeteredBackend<'a> {
    inner: &'a dyn Backend,
    meter: Mutex<BackendMeter>,
}

impl<'a> MeteredBackend<'a> {
    pub fn new(inner: &'a dyn Backend) -> Self {
        MeteredBackend {
            inner,
            meter: Mutex::new(BackendMeter::default()),
        }
    }

    pub fn meter(&self) -> BackendMeter {
        match self.meter.lock() {
            Ok(meter) => *meter,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Times one scoring call and records it: `choice_requests` letter-choice requests and
    /// `continuations` continuations.
    fn metered_scoring<A>(
        &self,
        choice_requests: u64,
        continuations: u64,
        call: impl FnOnce() -> Result<Vec<A>, LlmError>,
        prompt_tokens_of: impl Fn(&A) -> usize,
    ) -> Result<Vec<A>, LlmError> {
        let started = Instant::now();
        let answers = call();
        let busy_s = started.elapsed().as_secs_f64();
        let prompt_tokens: u64 = answers
            .as_ref()
            .map(|scores| scores.iter().map(|s| prompt_tokens_of(s) as u64).sum())
            .unwrap_or(0);
        self.record(|meter| {
            meter.calls += 1;
            meter.choice_requests += choice_requests;
            meter.continuations += continuations;
            meter.prompt_tokens += prompt_tokens;
            meter.busy_s += busy_s;
        });
        answers
    }

    fn record(&self, update: impl FnOnce(&mut BackendMeter)) {
        let mut meter = match self.meter.lock() {
            Ok(meter) => meter,
            Err(poisoned) => poisoned.into_inner(),
        };
        update(&mut meter);
    }
}

impl Backend for MeteredBackend<'_> {
    fn model_id(&self) -> String {
        self.inner.model_id()
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        let started = Instant::now();
        let answers = self.inner.generate(requests);
        let busy_s = started.elapsed().as_secs_f64();
        let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
        if let Ok(answers) = &answers {
            for completions in answers {
                prompt_tokens += completions.first().map_or(0, |c| c.prompt_tokens as u64);
                completion_tokens += completions
                    .iter()
                    .map(|c| c.completion_tokens as u64)
                    .sum::<u64>();
            }
        }
        self.record(|meter| {
            meter.calls += 1;
            meter.generate_requests += requests.len() as u64;
            meter.prompt_tokens += prompt_tokens;
            meter.completion_tokens += completion_tokens;
            meter.busy_s += busy_s;
        });
        answers
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        let continuations = requests.iter().map(|r| r.continuations.len() as u64).sum();
        self.metered_scoring(
            requests.len() as u64,
            continuations,
            || self.inner.score_choices(requests),
            |s| s.prompt_tokens,
        )
    }

    fn score_continuations(
        &self,
        requests: &[ContinuationRequest],
    ) -> Result<Vec<ContinuationScores>, LlmError> {
        let continuations = requests.iter().map(|r| r.continuations.len() as u64).sum();
        self.metered_scoring(
            0,
            continuations,
            || self.inner.score_continuations(requests),
            |s| s.prompt_tokens,
        )
    }
}

fn progress_bar(total: usize, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} scenes · {msg} · ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix);
    bar
}

fn tokens_per_second(tokens: u64, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    format!("{:.0} tokens/s", tokens as f64 / seconds)
}

fn to_llm_messages(messages: &[SceneMessage]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// Byte offset of the first ASCII-case-insensitive occurrence of `needle` (ASCII) in `text`.
fn find_ascii_ci(text: &str, needle: &str) -> Option<usize> {
    let haystack = text.as_bytes();
    let needle = needle.as_bytes();
    (0..haystack.len().checked_sub(needle.len())? + 1)
        .find(|&i| haystack[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// All byte offsets just after an ASCII-case-insensitive occurrence of `needle` in `text`.
fn ends_of_ascii_ci<'t>(text: &'t str, needle: &'t str) -> impl Iterator<Item = usize> + 't {
    let haystack = text.as_bytes();
    let n = needle.len();
    (0..(haystack.len() + 1).saturating_sub(n))
        .filter(move |&i| haystack[i..i + n].eq_ignore_ascii_case(needle.as_bytes()))
        .map(move |i| i + n)
}

const BEHAVIOR_MARKERS: [&str; 2] = ["behavior:", "behaviour:"];

/// Splits a generated text at its first `Behavior:` marker: the rationale before it (trimmed of
/// trailing whitespace and markdown emphasis) and the letter stated after it, when that letter is
/// one of `labels`.
pub fn cut_rationale(text: &str, labels: &[String]) -> (String, Option<String>) {
    let marker = BEHAVIOR_MARKERS
        .iter()
        .filter_map(|m| find_ascii_ci(text, m).map(|at| (at, m.len())))
        .min();
    let Some((at, marker_len)) = marker else {
        return (text.trim_end().to_owned(), None);
    };
    let rationale = text[..at]
        .trim_end_matches(|c: char| c.is_whitespace() || c == '*')
        .to_owned();
    let after = text[at + marker_len..].trim_start_matches(|c: char| c.is_whitespace() || c == '*');
    let after = after.strip_prefix('[').unwrap_or(after);
    let letter: String = after.chars().take_while(|c| c.is_alphanumeric()).collect();
    let stated = labels.iter().find(|l| **l == letter).cloned();
    (rationale, stated)
}

/// Which of the six sections are named in `text` (a name followed by `:`, allowing markdown
/// emphasis and spaces between).
pub fn check_format(text: &str) -> FormatCheck {
    let named = |name: &str| {
        ends_of_ascii_ci(text, name)
            .any(|end| text[end..].trim_start_matches(['*', ' ']).starts_with(':'))
    };
    FormatCheck {
        stimulus: named("stimulus"),
        stimulus_factors: named("stimulus factors"),
        knowledge: named("knowledge"),
        knowledge_factors: named("knowledge factors"),
        evaluation: named("evaluation"),
        evaluation_style: named("evaluation style"),
    }
}

/// Settings of the rationale stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    /// Rationales per scene.
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
    pub seed: u64,
    /// Scenes per backend call.
    pub batch_scenes: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            n: 10,
            temperature: 1.0,
            top_p: 0.9,
            max_tokens: 512,
            seed: 0,
            batch_scenes: 8,
        }
    }
}

/// The generation request of one scene: its rationale prompt (which never contains the answer)
/// and `n` samples seeded from the config seed, the scene and the role.
pub fn rationale_request(
    scene: &SceneRecord,
    role: Role,
    config: &GenerateConfig,
) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat {
            messages: to_llm_messages(&scene.messages),
            continue_final: false,
        },
        params: SamplingParams {
            temperature: config.temperature,
            top_p: config.top_p,
            top_k: 0,
            max_tokens: config.max_tokens,
            // No stop string: `Behavior:` must stay in the text so the stated letter can be read.
            stop: Vec::new(),
            seed: derive_seed(&[
                b"generate",
                &config.seed.to_le_bytes(),
                scene.id.as_bytes(),
                role.name().as_bytes(),
            ]),
            n: config.n,
            logprobs: None,
        },
    }
}

fn check_batch_size(batch_scenes: usize) -> Result<usize, DistillError> {
    if batch_scenes == 0 {
        return Err(DistillError::Config(
            "batch_scenes must be at least 1".to_owned(),
        ));
    }
    Ok(batch_scenes)
}

/// Writes `config.n` rationales per scene with `backend` in the given role.
pub fn generate_rationales(
    scenes: &[SceneRecord],
    backend: &dyn Backend,
    role: Role,
    config: &GenerateConfig,
) -> Result<(Vec<RationaleRecord>, StageSummary), DistillError> {
    let batch_scenes = check_batch_size(config.batch_scenes)?;
    if config.n == 0 {
        return Err(DistillError::Config("n must be at least 1".to_owned()));
    }
    let started = Instant::now();
    let bar = progress_bar(scenes.len(), format!("rationales ({})", role.name()));
    let mut records = Vec::with_capacity(scenes.len() * config.n);
    let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
    for batch in scenes.chunks(batch_scenes) {
        let requests: Vec<GenerateRequest> = batch
            .iter()
            .map(|scene| rationale_request(scene, role, config))
            .collect();
        let answers = backend.generate(&requests)?;
        if answers.len() != requests.len() {
            return Err(DistillError::BackendShape {
                expected: requests.len(),
                got: answers.len(),
            });
        }
        for (scene, completions) in batch.iter().zip(answers) {
            if let Some(first) = completions.first() {
                prompt_tokens += first.prompt_tokens as u64;
            }
            for (index, completion) in completions.into_iter().enumerate() {
                let (text, stated_behavior) = cut_rationale(&completion.text, &scene.labels);
                completion_tokens += completion.completion_tokens as u64;
                records.push(RationaleRecord {
                    scene_id: scene.id.clone(),
                    role,
                    index,
                    format: check_format(&text),
                    text,
                    stated_behavior,
                    prompt_tokens: completion.prompt_tokens,
                    completion_tokens: completion.completion_tokens,
                });
            }
        }
        bar.inc(batch.len() as u64);
        bar.set_message(tokens_per_second(
            prompt_tokens + completion_tokens,
            started,
        ));
    }
    bar.finish_and_clear();
    let summary = StageSummary {
        stage: format!("rationales ({})", role.name()),
        scenes: scenes.len(),
        records: records.len(),
        prompt_tokens,
        completion_tokens,
        wall_s: started.elapsed().as_secs_f64(),
    };
    Ok((records, summary))
}

/// Settings of the scoring stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Seeds the sampled behaviours.
    pub seed: u64,
    /// Scenes per backend call.
    pub batch_scenes: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            seed: 0,
            batch_scenes: 8,
        }
    }
}

/// What follows each rationale in the predictor's input: the predictor's next token is the letter.
pub const BEHAVIOR_CUE: &str = "\nBehavior: [";

/// The choice request of one scene: the scene prompt with an empty assistant message to be
/// continued (the rationales already begin with their own "Thought:"; a fixed prefix would
/// repeat it), one continuation per rationale — strong and weak together, so the engine
/// computes the scene prefix once — and the scene's labels.
pub fn choice_request(scene: &SceneRecord, rationales: &[&RationaleRecord]) -> ChoiceRequest {
    let mut messages = to_llm_messages(&scene.messages);
    messages.push(ChatMessage::new("assistant", ""));
    ChoiceRequest {
        prompt: Prompt::Chat {
            messages,
            continue_final: true,
        },
        continuations: rationales
            .iter()
            .map(|r| format!("{}{BEHAVIOR_CUE}", r.text))
            .collect(),
        labels: scene.labels.clone(),
    }
}

/// Rationales grouped by scene, each group ordered strong before weak, then by index.
/// A rationale for an unknown scene or a repeated (scene, role, index) is an error.
fn group_rationales<'r>(
    scenes: &[SceneRecord],
    rationales: &'r [RationaleRecord],
) -> Result<HashMap<&'r str, Vec<&'r RationaleRecord>>, DistillError> {
    let known: HashMap<&str, ()> = scenes.iter().map(|s| (s.id.as_str(), ())).collect();
    let mut grouped: HashMap<&str, Vec<&RationaleRecord>> = HashMap::new();
    for rationale in rationales {
        if !known.contains_key(rationale.scene_id.as_str()) {
            return Err(DistillError::Config(format!(
                "rationale {} #{} is for scene `{}`, which is not in the scenes file",
                rationale.role.name(),
                rationale.index,
                rationale.scene_id
            )));
        }
        grouped
            .entry(rationale.scene_id.as_str())
            .or_default()
            .push(rationale);
    }
    for (scene_id, group) in grouped.iter_mut() {
        group.sort_by_key(|r| (r.role, r.index));
        if let Some(pair) = group
            .windows(2)
            .find(|w| (w[0].role, w[0].index) == (w[1].role, w[1].index))
        {
            return Err(DistillError::Config(format!(
                "scene `{scene_id}` has rationale {} #{} twice",
                pair[0].role.name(),
                pair[0].index
            )));
        }
    }
    Ok(grouped)
}

/// Scores every rationale with the predictor: its distribution over the option letters, entropy,
/// logloss, a seeded sampled behaviour and whether that behaviour is the real choice.
pub fn score_rationales(
    scenes: &[SceneRecord],
    rationales: &[RationaleRecord],
    backend: &dyn Backend,
    config: &ScoreConfig,
) -> Result<(Vec<ScoreRecord>, StageSummary), DistillError> {
    let batch_scenes = check_batch_size(config.batch_scenes)?;
    let grouped = group_rationales(scenes, rationales)?;
    let scored: Vec<(&SceneRecord, &Vec<&RationaleRecord>)> = scenes
        .iter()
        .filter_map(|s| grouped.get(s.id.as_str()).map(|g| (s, g)))
        .collect();
    let started = Instant::now();
    let bar = progress_bar(scored.len(), "scores".to_owned());
    let mut records = Vec::with_capacity(rationales.len());
    let mut prompt_tokens = 0u64;
    for batch in scored.chunks(batch_scenes) {
        let requests: Vec<ChoiceRequest> = batch
            .iter()
            .map(|(scene, group)| choice_request(scene, group))
            .collect();
        let answers = backend.score_choices(&requests)?;
        if answers.len() != requests.len() {
            return Err(DistillError::BackendShape {
                expected: requests.len(),
                got: answers.len(),
            });
        }
        for ((scene, group), scores) in batch.iter().zip(answers) {
            prompt_tokens += scores.prompt_tokens as u64;
            if scores.distributions.len() != group.len() {
                return Err(DistillError::BackendShape {
                    expected: group.len(),
                    got: scores.distributions.len(),
                });
            }
            for (j, (rationale, distribution)) in group.iter().zip(scores.distributions).enumerate()
            {
                let behavior = sample_slot(
                    &distribution,
                    behaviour_seed(config.seed, &scene.id, rationale.role, rationale.index),
                );
                records.push(ScoreRecord {
                    scene_id: scene.id.clone(),
                    role: rationale.role,
                    index: rationale.index,
                    entropy_bits: entropy_bits(&distribution),
                    logloss_bits: logloss_bits(&distribution, scene.answer),
                    missing_labels: scores.missing_labels.get(j).cloned().unwrap_or_default(),
                    behavior_label: behavior.and_then(|b| scene.labels.get(b).cloned()),
                    hit: behavior == Some(scene.answer),
                    behavior,
                    distribution,
                });
            }
        }
        bar.inc(batch.len() as u64);
        bar.set_message(tokens_per_second(prompt_tokens, started));
    }
    bar.finish_and_clear();
    let summary = StageSummary {
        stage: "scores".to_owned(),
        scenes: scored.len(),
        records: records.len(),
        prompt_tokens,
        completion_tokens: 0,
        wall_s: started.elapsed().as_secs_f64(),
    };
    Ok((records, summary))
}

/// Settings of the distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    pub selector: Selector,
    pub top_k: usize,
    /// Seeds the `random` selector.
    pub seed: u64,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            selector: Selector::DeltaEu,
            top_k: 10_000,
            seed: 0,
        }
    }
}

/// One SFT example in the OpenAI chat layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatExample {
    pub messages: Vec<SceneMessage>,
}

/// One preference pair in TRL's conversational layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Vec<SceneMessage>,
    pub chosen: Vec<SceneMessage>,
    pub rejected: Vec<SceneMessage>,
}

/// Quantiles (linear interpolation) of a list of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p10: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub max: f64,
}

impl Quantiles {
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let position = q * (sorted.len() - 1) as f64;
            let low = position.floor() as usize;
            let high = position.ceil() as usize;
            sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
        };
        Some(Quantiles {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: sorted[0],
            p10: at(0.1),
            p25: at(0.25),
            p50: at(0.5),
            p75: at(0.75),
            p90: at(0.9),
            max: sorted[sorted.len() - 1],
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StratumSummary {
    pub dataset: String,
    pub options: usize,
    pub candidates: usize,
    pub kept: usize,
}

/// `distill.summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillSummary {
    pub selector: Selector,
    pub top_k: usize,
    pub seed: u64,
    pub scenes: usize,
    /// Scenes dropped before selection, by reason.
    pub dropped: BTreeMap<String, usize>,
    /// Scenes that passed denoising and have a pair.
    pub candidates: usize,
    pub kept: usize,
    /// Candidates left out by the top-K budget.
    pub not_selected: usize,
    pub strata: Vec<StratumSummary>,
    pub delta_eu_candidates: Option<Quantiles>,
    pub delta_eu_kept: Option<Quantiles>,
}

/// One line of `distill.scenes.jsonl`: every candidate's uncertainties and whether it was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    #[serde(flatten)]
    pub uncertainty: SceneUncertainty,
    /// 0-based position in the selector's ranking.
    pub rank: usize,
    pub kept: bool,
}

/// Everything the distillation produces, in selector rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct DistillOutput {
    pub sft: Vec<ChatExample>,
    pub dpo: Vec<PreferencePair>,
    pub direct: Vec<ChatExample>,
    pub candidates: Vec<CandidateRecord>,
    pub summary: DistillSummary,
}

fn assistant(content: String) -> SceneMessage {
    SceneMessage::new("assistant", content)
}

fn answer_label(scene: &SceneRecord) -> Result<&str, DistillError> {
    scene
        .labels
        .get(scene.answer)
        .map(String::as_str)
        .ok_or_else(|| {
            DistillError::Config(format!(
                "scene `{}`: answer slot {} has no label",
                scene.id, scene.answer
            ))
        })
}

/// The behaviour-only SFT example of a scene: its direct prompt and the real choice as the
/// reply, `Behavior: [X]` (what `distill` writes to `direct.jsonl` for the kept scenes).
pub fn behaviour_example(scene: &SceneRecord) -> Result<ChatExample, DistillError> {
    let mut messages = scene.direct_messages.clone();
    messages.push(assistant(format!("Behavior: [{}]", answer_label(scene)?)));
    Ok(ChatExample { messages })
}

/// Applies the definitions to every scene, ranks the candidates and keeps the stratified top-K.
pub fn distill(
    scenes: &[SceneRecord],
    scores: &[ScoreRecord],
    rationales: &[RationaleRecord],
    config: &DistillConfig,
) -> Result<DistillOutput, DistillError> {
    let mut scores_by_scene: HashMap<&str, Vec<&ScoreRecord>> = HashMap::new();
    for score in scores {
        scores_by_scene
            .entry(score.scene_id.as_str())
            .or_default()
            .push(score);
    }
    let texts: HashMap<(&str, Role, usize), &RationaleRecord> = rationales
        .iter()
        .map(|r| ((r.scene_id.as_str(), r.role, r.index), r))
        .collect();

    let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
    let mut candidates: Vec<(SceneUncertainty, &SceneRecord)> = Vec::new();
    for scene in scenes {
        let scene_scores = scores_by_scene
            .get(scene.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        match analyse_scene(&scene.id, scene.options.len(), scene_scores) {
            Ok(uncertainty) => candidates.push((uncertainty, scene)),
            Err(reason) => *dropped.entry(reason.name().to_owned()).or_insert(0) += 1,
        }
    }

    let uncertainties: Vec<SceneUncertainty> = candidates.iter().map(|(u, _)| u.clone()).collect();
    let strata: Vec<StratumKey> = candidates
        .iter()
        .map(|(_, s)| (s.dataset.clone(), s.options.len()))
        .collect();
    let ranked = rank(&uncertainties, config.selector, config.seed);
    let selection = stratified_top_k(&ranked, &strata, config.top_k);

    let mut kept_flags = vec![false; candidates.len()];
    let mut sft = Vec::with_capacity(selection.kept.len());
    let mut dpo = Vec::with_capacity(selection.kept.len());
    let mut direct = Vec::with_capacity(selection.kept.len());
    for &position in &selection.kept {
        kept_flags[position] = true;
        let (uncertainty, scene) = &candidates[position];
        let answer_label = answer_label(scene)?;
        let rationale = |role: Role, index: usize| {
            texts
                .get(&(scene.id.as_str(), role, index))
                .copied()
                .ok_or_else(|| {
                    DistillError::Config(format!(
                        "scene `{}`: the scores name {} rationale #{index}, which is not in the rationale files",
                        scene.id,
                        role.name()
                    ))
                })
        };
        let chosen = rationale(uncertainty.chosen.role, uncertainty.chosen.index)?;
        let rejected = rationale(uncertainty.rejected.role, uncertainty.rejected.index)?;
        let rejected_label = scene_scores_label(
            &scores_by_scene,
            &scene.id,
            uncertainty.rejected.role,
            uncertainty.rejected.index,
        )
        .ok_or_else(|| {
            DistillError::Config(format!(
                "scene `{}`: the rejected rationale has no sampled behaviour",
                scene.id
            ))
        })?;
        let chosen_text = format!("{}\nBehavior: [{answer_label}]", chosen.text);
        let rejected_text = format!("{}\nBehavior: [{rejected_label}]", rejected.text);

        let mut sft_messages = scene.messages.clone();
        sft_messages.push(assistant(chosen_text.clone()));
        sft.push(ChatExample {
            messages: sft_messages,
        });
        dpo.push(PreferencePair {
            prompt: scene.messages.clone(),
            chosen: vec![assistant(chosen_text)],
            rejected: vec![assistant(rejected_text)],
        });
        direct.push(behaviour_example(scene)?);
    }

    let mut rank_of = vec![0usize; candidates.len()];
    for (r, &position) in ranked.iter().enumerate() {
        rank_of[position] = r;
    }
    let candidate_records: Vec<CandidateRecord> = ranked
        .iter()
        .map(|&position| CandidateRecord {
            uncertainty: uncertainties[position].clone(),
            rank: rank_of[position],
            kept: kept_flags[position],
        })
        .collect();

    let all_delta: Vec<f64> = uncertainties.iter().map(|u| u.delta_eu).collect();
    let kept_delta: Vec<f64> = selection
        .kept
        .iter()
        .map(|&p| uncertainties[p].delta_eu)
        .collect();
    let summary = DistillSummary {
        selector: config.selector,
        top_k: config.top_k,
        seed: config.seed,
        scenes: scenes.len(),
        dropped,
        candidates: candidates.len(),
        kept: selection.kept.len(),
        not_selected: candidates.len() - selection.kept.len(),
        strata: selection
            .strata
            .iter()
            .map(|((dataset, options), &(candidates, kept))| StratumSummary {
                dataset: dataset.clone(),
                options: *options,
                candidates,
                kept,
            })
            .collect(),
        delta_eu_candidates: Quantiles::of(&all_delta),
        delta_eu_kept: Quantiles::of(&kept_delta),
    };
    Ok(DistillOutput {
        sft,
        dpo,
        direct,
        candidates: candidate_records,
        summary,
    })
}

fn scene_scores_label(
    scores: &HashMap<&str, Vec<&ScoreRecord>>,
    scene_id: &str,
    role: Role,
    index: usize,
) -> Option<String> {
    scores
        .get(scene_id)?
        .iter()
        .find(|s| s.role == role && s.index == index)?
        .behavior_label
        .clone()
}

/// The files of a distillation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistillPaths {
    pub sft: PathBuf,
    pub dpo: PathBuf,
    pub direct: PathBuf,
    pub candidates: PathBuf,
    pub summary: PathBuf,
}

impl DistillPaths {
    pub fn in_dir(dir: &Path) -> Self {
        DistillPaths {
            sft: dir.join("sft.jsonl"),
            dpo: dir.join("dpo.jsonl"),
            direct: dir.join("direct.jsonl"),
            candidates: dir.join("distill.scenes.jsonl"),
            summary: dir.join("distill.summary.json"),
        }
    }
}

/// Writes the distillation's files into `dir`, each atomically; the summary last.
pub fn write_distill(dir: &Path, output: &DistillOutput) -> Result<DistillPaths, DistillError> {
    let paths = DistillPaths::in_dir(dir);
    write_jsonl(&paths.sft, &output.sft)?;
    write_jsonl(&paths.dpo, &output.dpo)?;
    write_jsonl(&paths.direct, &output.direct)?;
    write_jsonl(&paths.candidates, &output.candidates)?;
    write_json(&paths.summary, &output.summary)?;
    Ok(paths)
}

/// Reads a scenes file.
pub fn read_scenes(path: &Path) -> Result<Vec<SceneRecord>, DistillError> {
    read_jsonl(path, "scene")
}

/// Reads and concatenates rationale files.
pub fn read_rationales(paths: &[PathBuf]) -> Result<Vec<RationaleRecord>, DistillError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(read_jsonl::<RationaleRecord>(path, "rationale")?);
    }
    Ok(all)
}

/// `mirrorsim rationales`: reads scenes, writes `out` (atomically).
pub fn run_rationales(
    scenes_path: &Path,
    out: &Path,
    backend: &dyn Backend,
    role: Role,
    config: &GenerateConfig,
) -> Result<StageSummary, DistillError> {
    let scenes = read_scenes(scenes_path)?;
    let (records, summary) = generate_rationales(&scenes, backend, role, config)?;
    write_jsonl(out, &records)?;
    Ok(summary)
}

/// `mirrorsim score`: reads scenes and rationale files, writes `out` (atomically).
pub fn run_score(
    scenes_path: &Path,
    rationale_paths: &[PathBuf],
    out: &Path,
    backend: &dyn Backend,
    config: &ScoreConfig,
) -> Result<StageSummary, DistillError> {
    let scenes = read_scenes(scenes_path)?;
    let rationales = read_rationales(rationale_paths)?;
    let (records, summary) = score_rationales(&scenes, &rationales, backend, config)?;
    write_jsonl(out, &records)?;
    Ok(summary)
}

/// `mirrorsim distill`: reads scenes, scores and rationales, writes the training sets into `dir`.
pub fn run_distill(
    scenes_path: &Path,
    scores_path: &Path,
    rationale_paths: &[PathBuf],
    dir: &Path,
    config: &DistillConfig,
) -> Result<(DistillPaths, DistillSummary), DistillError> {
    let scenes = read_scenes(scenes_path)?;
    let scores: Vec<ScoreRecord> = read_jsonl(scores_path, "score")?;
    let rationales = read_rationales(rationale_paths)?;
    let output = distill(&scenes, &scores, &rationales, config)?;
    let paths = write_distill(dir, &output)?;
    Ok((paths, output.summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["A", "B", "C"].map(String::from).to_vec()
    }

    #[test]
    fn rationale_is_cut_at_the_first_behavior_and_the_letter_read() {
        let (text, stated) = cut_rationale(
            "Thought: I like it.\n**Behavior:** [B]\nBehavior: [C]",
            &labels(),
        );
        assert_eq!(text, "Thought: I like it.");
        assert_eq!(stated.as_deref(), Some("B"));
        let (text, stated) = cut_rationale("Thought: no answer  \n", &labels());
        assert_eq!(text, "Thought: no answer");
        assert_eq!(stated, None);
        let (_, stated) = cut_rationale("x behavior: [Z]", &labels());
        assert_eq!(stated, None);
    }

    #[test]
    fn format_check_tells_sections_apart() {
        let check = check_format(
            "Thought: Stimulus: a\nStimulus Factors: b\n**Knowledge**: c\nEvaluation Style: d",
        );
        assert_eq!(
            check,
            FormatCheck {
                stimulus: true,
                stimulus_factors: true,
                knowledge: true,
                knowledge_factors: false,
                evaluation: false,
                evaluation_style: true,
            }
        );
        assert_eq!(check.sections_present(), 4);
    }
}
