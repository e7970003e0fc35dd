//! Scoring a simulator (any [`Backend`]; wrap it in the run journal to make re-runs free) on
//! eval scenes.
//!
//! Direct mode: the behaviour-only prompt with an assistant turn continued after
//! `Behavior: [` (the convention of `mirrorsim demo`); the distribution over the option letters
//! is the scene's prediction and `R` seeded draws from it are its samples. Rationale mode: `R`
//! rationales generated and scored by `mirrorsim-distill` (prompt, then the rationale, then
//! `\nBehavior: [`); the prediction is the mean of their distributions, and each rationale's own
//! seeded behaviour is a sample. Title mode: the same prompt, each option's listed text as a
//! complete reply scored by its likelihood, the softmax over the options as the prediction and
//! `R` seeded draws from it as samples. Position bias re-scores every scene under each cyclic
//! rotation of its options, re-rendered with [`reorder_options`].

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use mirrorsim_data::scenes::render::reorder_options;
use mirrorsim_data::scenes::SceneRecord;
use mirrorsim_distill::stages::{generate_rationales, score_rationales};
use mirrorsim_distill::uncertainty::{derive_seed, sample_slot};
use mirrorsim_distill::{GenerateConfig, Role, ScoreConfig};
use mirrorsim_llm::{Backend, ChatMessage, ChoiceRequest, ContinuationRequest, Prompt};
use serde::{Deserialize, Serialize};

use crate::agent4rec::Agent4RecCase;
use crate::error::EvalError;
use crate::metrics::{rotation_order, ScenePrediction};

/// How the simulator is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Direct,
    Rationale,
    /// Each option's own text as the reply, scored by its likelihood (cloze-style): no letter
    /// has to be bound to an option.
    Title,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Rationale => "rationale",
            Mode::Title => "title",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(Mode::Direct),
            "rationale" => Ok(Mode::Rationale),
            "title" => Ok(Mode::Title),
            other => Err(EvalError::Config(format!(
                "unknown mode `{other}`; use direct, rationale or title"
            ))),
        }
    }
}

/// Settings of simulator scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulatorConfig {
    pub mode: Mode,
    /// Direct and title: samples drawn per scene; rationale: rationales generated per scene.
    pub repeats: usize,
    pub seed: u64,
    /// Re-score every scene under all cyclic rotations of its options.
    pub rotations: bool,
    /// Ask yes/no per item for the Agent4Rec protocol.
    pub agent4rec: bool,
    /// Scenes per backend call.
    pub batch_scenes: usize,
    /// Rationale mode: sampling temperature and most tokens per rationale.
    pub rationale_temperature: f32,
    pub rationale_tokens: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            mode: Mode::Direct,
            repeats: 5,
            seed: 0,
            rotations: true,
            agent4rec: true,
            batch_scenes: 8,
            rationale_temperature: 1.0,
            rationale_tokens: 256,
        }
    }
}

/// What scoring produced.
#[derive(Debug, Clone)]
pub struct SimulatorOutput {
    pub predictions: Vec<ScenePrediction>,
    /// P(yes) per Agent4Rec case and item (empty when not asked).
    pub agent4rec_p_yes: Vec<Vec<f64>>,
    /// Scenes where the backend could not report some label's probability.
    pub scenes_with_missing_labels: usize,
    pub prompt_tokens: u64,
    pub wall_s: f64,
}

/// The continuation after which the next token is the chosen letter, in direct mode.
pub const DIRECT_CUE: &str = "Behavior: [";

pub(crate) fn to_llm_messages(
    messages: &[mirrorsim_data::scenes::ChatMessage],
) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// Direct mode: the behaviour-only prompt and an assistant turn continued after `Behavior: [`.
pub fn direct_request(scene: &SceneRecord) -> ChoiceRequest {
    direct_choice_request(&scene.direct_messages, &scene.labels)
}

/// The direct-mode request for behaviour-only `messages` (system + user) and option `labels`.
pub fn direct_choice_request(
    messages: &[mirrorsim_data::scenes::ChatMessage],
    labels: &[String],
) -> ChoiceRequest {
    let mut messages = to_llm_messages(messages);
    messages.push(ChatMessage::new("assistant", ""));
    ChoiceRequest {
        prompt: Prompt::Chat {
            messages,
            continue_final: true,
        },
        continuations: vec![DIRECT_CUE.to_owned()],
        labels: labels.to_vec(),
    }
}

/// What the simulator answers in title mode: the option as listed, after this cue.
pub const TITLE_CUE: &str = "Behavior: ";

/// Title mode: the behaviour-only prompt, and one complete assistant reply per option,
/// `Behavior: ` followed by the option's text as its line lists it (title, details and, when
/// the scenes have them, counts), in slot order.
pub fn title_request(scene: &SceneRecord) -> Result<ContinuationRequest, EvalError> {
    let (_, texts) = option_texts(scene)?;
    Ok(ContinuationRequest {
        prompt: Prompt::Chat {
            messages: to_llm_messages(&scene.direct_messages),
            continue_final: false,
        },
        continuations: texts
            .iter()
            .map(|text| format!("{TITLE_CUE}{text}"))
            .collect(),
    })
}

/// A backend answered `got` requests (or options) where `expected` were asked.
pub(crate) fn check_shape(expected: usize, got: usize) -> Result<(), EvalError> {
    if expected == got {
        Ok(())
    } else {
        Err(EvalError::BackendShape { expected, got })
    }
}

fn progress_bar(total: usize, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} requests · ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// The seed of sample `repeat` of a scene.
pub fn sample_seed(seed: u64, scene_id: &str, repeat: usize) -> u64 {
    derive_seed(&[
        b"eval-sample",
        &seed.to_le_bytes(),
        scene_id.as_bytes(),
        &(repeat as u64).to_le_bytes(),
    ])
}

/// `repeats` seeded draws from a distribution.
pub fn draw_samples(
    distribution: &[f64],
    seed: u64,
    scene_id: &str,
    repeats: usize,
) -> Vec<Option<usize>> {
    (0..repeats)
        .map(|r| sample_slot(distribution, sample_seed(seed, scene_id, r)))
        .collect()
}

/// The scene with its options rotated by `r` (slot `j` shows original slot `(j + r) mod k`).
pub fn rotate(scene: &SceneRecord, r: usize) -> Result<SceneRecord, EvalError> {
    Ok(reorder_options(
        scene,
        &rotation_order(scene.options.len(), r),
    )?)
}

/// Scores `scenes` with `backend`.
pub fn score_simulator(
    scenes: &[SceneRecord],
    backend: &dyn Backend,
    config: &SimulatorConfig,
    agent4rec_cases: &[Agent4RecCase],
) -> Result<SimulatorOutput, EvalError> {
    if config.repeats == 0 || config.batch_scenes == 0 {
        return Err(EvalError::Config(
            "repeats and batch_scenes must be at least 1".to_owned(),
        ));
    }
    let started = Instant::now();
    let mut prompt_tokens = 0u64;
    let mut missing = vec![false; scenes.len()];
    // Per scene, per rotation: the distribution (rotation 0 is the original order).
    let mut rotated: Vec<Vec<Vec<f64>>> = vec![Vec::new(); scenes.len()];
    let mut samples: Vec<Vec<Option<usize>>> = vec![Vec::new(); scenes.len()];
    let max_rotations = |scene: &SceneRecord| {
        if config.rotations {
            scene.options.len()
        } else {
            1
        }
    };
    match config.mode {
        Mode::Direct | Mode::Title => {
            let jobs: Vec<(usize, usize)> = scenes
                .iter()
                .enumerate()
                .flat_map(|(i, s)| (0..max_rotations(s)).map(move |r| (i, r)))
                .collect();
            let bar = progress_bar(jobs.len(), &format!("eval ({})", config.mode.name()));
            for batch in jobs.chunks(config.batch_scenes) {
                let shown = batch
                    .iter()
                    .map(|&(i, r)| rotate(&scenes[i], r))
                    .collect::<Result<Vec<_>, EvalError>>()?;
                // Per job: its distribution, whether a label's probability was missing, and
                // the prompt tokens read.
                let answers: Vec<(Vec<f64>, bool, usize)> = if config.mode == Mode::Direct {
                    let requests: Vec<ChoiceRequest> = shown.iter().map(direct_request).collect();
                    let answers = backend.score_choices(&requests)?;
                    check_shape(requests.len(), answers.len())?;
                    answers
                        .into_iter()
                        .map(|answer| {
                            let missing = answer.missing_labels.iter().any(|m| !m.is_empty());
                            let distribution = answer.distributions.into_iter().next().ok_or(
                                EvalError::BackendShape {
                                    expected: 1,
                                    got: 0,
                                },
                            )?;
                            Ok((distribution, missing, answer.prompt_tokens))
                        })
                        .collect::<Result<_, EvalError>>()?
                } else {
                    let requests = shown
                        .iter()
                        .map(title_request)
                        .collect::<Result<Vec<_>, _>>()?;
                    let answers = backend.score_continuations(&requests)?;
                    check_shape(requests.len(), answers.len())?;
                    answers
                        .into_iter()
                        .zip(&shown)
                        .map(|(answer, scene)| {
                            check_shape(scene.options.len(), answer.logprobs.len())?;
                            Ok((answer.distribution(), false, answer.prompt_tokens))
                        })
                        .collect::<Result<_, EvalError>>()?
                };
                for (&(i, _), (distribution, missing_label, tokens)) in batch.iter().zip(answers) {
                    prompt_tokens += tokens as u64;
                    missing[i] |= missing_label;
                    rotated[i].push(distribution);
                }
                bar.inc(batch.len() as u64);
            }
            bar.finish_and_clear();
            for (i, scene) in scenes.iter().enumerate() {
                samples[i] = draw_samples(&rotated[i][0], config.seed, &scene.id, config.repeats);
            }
        }
        Mode::Rationale => {
            let rotations = scenes.iter().map(max_rotations).max().unwrap_or(1);
            let generate = GenerateConfig {
                n: config.repeats,
                temperature: config.rationale_temperature,
                top_p: 0.95,
                max_tokens: config.rationale_tokens,
                seed: config.seed,
                batch_scenes: config.batch_scenes,
            };
            let score = ScoreConfig {
                seed: config.seed,
                batch_scenes: config.batch_scenes,
            };
            for r in 0..rotations {
                let members: Vec<usize> = (0..scenes.len())
                    .filter(|&i| r < max_rotations(&scenes[i]))
                    .collect();
                let shown = members
                    .iter()
                    .map(|&i| rotate(&scenes[i], r))
                    .collect::<Result<Vec<_>, _>>()?;
                let (rationales, summary) =
                    generate_rationales(&shown, backend, Role::Strong, &generate)?;
                tracing::info!("rotation {r}: {summary}");
                let (scores, summary) = score_rationales(&shown, &rationales, backend, &score)?;
                tracing::info!("rotation {r}: {summary}");
                prompt_tokens += summary.prompt_tokens;
                for (&i, scene) in members.iter().zip(&shown) {
                    let own: Vec<_> = scores.iter().filter(|s| s.scene_id == scene.id).collect();
                    if own.is_empty() {
                        return Err(EvalError::Config(format!(
                            "scene {}: no rationale of rotation {r} was scored",
                            scene.id
                        )));
                    }
                    let k = scene.options.len();
                    let mut mean = vec![0.0; k];
                    for s in &own {
                        missing[i] |= !s.missing_labels.is_empty();
                        for (m, p) in mean.iter_mut().zip(&s.distribution) {
                            *m += p / own.len() as f64;
                        }
                    }
                    if r == 0 {
                        samples[i] = own.iter().map(|s| s.behavior).collect();
                    }
                    rotated[i].push(mean);
                }
            }
        }
    }

    let agent4rec_p_yes = if config.agent4rec && !agent4rec_cases.is_empty() {
        let bar = progress_bar(agent4rec_cases.len(), "eval (agent4rec yes/no)");
        let mut all = Vec::with_capacity(agent4rec_cases.len());
        for batch in agent4rec_cases.chunks(config.batch_scenes) {
            let requests = batch
                .iter()
                .map(|case| yes_no_request(&scenes[case.scene], &case.slots))
                .collect::<Result<Vec<_>, _>>()?;
            let answers = backend.score_choices(&requests)?;
            check_shape(requests.len(), answers.len())?;
            for answer in answers {
                prompt_tokens += answer.prompt_tokens as u64;
                all.push(answer.distributions.iter().map(|d| d[0]).collect());
            }
            bar.inc(batch.len() as u64);
        }
        bar.finish_and_clear();
        all
    } else {
        Vec::new()
    };

    let predictions = scenes
        .iter()
        .zip(rotated)
        .zip(samples)
        .map(|((scene, mut distributions), samples)| {
            let distribution = distributions.first().cloned().unwrap_or_default();
            if distributions.len() < 2 {
                distributions.clear();
            }
            ScenePrediction {
                scene_id: scene.id.clone(),
                dataset: scene.dataset.clone(),
                answer: scene.answer,
                distribution,
                samples,
                rotations: distributions,
            }
        })
        .collect();
    Ok(SimulatorOutput {
        predictions,
        agent4rec_p_yes,
        scenes_with_missing_labels: missing.iter().filter(|&&m| m).count(),
        prompt_tokens,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// The system prompt of the yes/no questions.
pub const YES_NO_SYSTEM: &str = "You are simulating the user described below, choosing the way \
    they really would. You will be shown one item. Say whether you would choose it: answer only \
    with \"Answer: [Yes]\" or \"Answer: [No]\".";

/// The option texts of a scene (what follows `[L] ` on each option line of the direct prompt)
/// and the prompt text before the first option line.
pub fn option_texts(scene: &SceneRecord) -> Result<(String, Vec<String>), EvalError> {
    let user = scene
        .direct_messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .ok_or_else(|| {
            EvalError::Config(format!(
                "scene {}: field `direct_messages` has no user message",
                scene.id
            ))
        })?;
    let lines: Vec<&str> = user.content.split('\n').collect();
    let mut first_line = usize::MAX;
    let mut texts = Vec::with_capacity(scene.labels.len());
    for label in &scene.labels {
        let prefix = format!("[{label}] ");
        let (at, line) = lines
            .iter()
            .enumerate()
            .find(|(_, l)| l.starts_with(&prefix))
            .ok_or_else(|| {
                EvalError::Config(format!(
                    "scene {}: field `direct_messages`: no line starts with `{prefix}`",
                    scene.id
                ))
            })?;
        first_line = first_line.min(at);
        texts.push(line[prefix.len()..].to_owned());
    }
    Ok((lines[..first_line].join("\n").trim().to_owned(), texts))
}

/// One yes/no request per user: the scene's context as the user turn, then one continuation per
/// item (`Item: … \nAnswer: [`), so the engine reads the shared context once.
pub fn yes_no_request(scene: &SceneRecord, slots: &[usize]) -> Result<ChoiceRequest, EvalError> {
    let (context, texts) = option_texts(scene)?;
    let continuations = slots
        .iter()
        .map(|&s| format!("Item: {}\nAnswer: [", texts[s]))
        .collect();
    Ok(ChoiceRequest {
        prompt: Prompt::Chat {
            messages: vec![
                ChatMessage::new("system", YES_NO_SYSTEM),
                ChatMessage::new("user", context),
                ChatMessage::new("assistant", ""),
            ],
            continue_final: true,
        },
        continuations,
        labels: vec!["Yes".to_owned(), "No".to_owned()],
    })
}
