//! The simulator facing arbitrary slates: what the simulator service and the
//! recommender-in-the-loop commands call.
//!
//! Direct mode asks for the behaviour letter right after `Behavior: [` (the eval's direct mode);
//! rationale mode samples `samples` rationales, scores the letter after each, averages the
//! distributions and draws each sample from its own rationale's distribution. With a prior the
//! distribution becomes the fitted hybrid `p_llm^a · p_prior^b` (see [`crate::hybrid`]); the
//! "none of these" option has no collaborative score, so it keeps the LLM's probability and the
//! hybrid shares the rest among the items. With a hint ([`SlateHint`]) the prior's pick is written
//! into the prompt instead, as `mirrorsim hint` writes it into scenes.
//!
//! Every random draw is seeded from the request's seed alone (never its place in a batch), so a
//! request gives the same answer alone or batched with others.

use std::sync::Arc;

use mirrorsim_data::scenes::slate::{
    SlateCatalog, SlateItem, SlatePrompt, SlateUser, NONE_OF_THESE_ID,
};
use mirrorsim_data::ItemIdx;
use mirrorsim_distill::stages::{cut_rationale, BEHAVIOR_CUE};
use mirrorsim_distill::uncertainty::{derive_seed, sample_slot};
use mirrorsim_llm::{Backend, ChatMessage, ChoiceRequest, GenerateRequest, Prompt, SamplingParams};
use serde::{Deserialize, Serialize};

use crate::baselines::{BaselineKind, FittedBaselines};
use crate::error::EvalError;
use crate::hybrid::HybridWeights;
use crate::simulate::{check_shape, direct_choice_request, to_llm_messages, Mode};

/// One user facing one slate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlateRequest {
    pub user: SlateUser,
    pub items: Vec<SlateItem>,
    /// Append "none of these" as the last option.
    pub none_option: bool,
    pub mode: Mode,
    /// Draws from the distribution (direct) or rationales written (rationale); at least 1.
    pub samples: usize,
    pub seed: u64,
}

/// Rationale-mode generation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RationaleSettings {
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

impl Default for RationaleSettings {
    fn default() -> Self {
        RationaleSettings {
            temperature: 1.0,
            top_p: 0.95,
            max_tokens: 256,
        }
    }
}

/// What the simulator answered for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlateOutcome {
    /// The options in the order shown ([`NONE_OF_THESE_ID`] last when asked).
    pub item_ids: Vec<String>,
    pub labels: Vec<String>,
    /// One probability per option; sums to 1.
    pub distribution: Vec<f64>,
    /// The LLM's own distribution, before any prior (equal to `distribution` without one).
    pub llm_distribution: Vec<f64>,
    /// Seeded draws (option indices); `None` where a rationale's distribution had no mass.
    pub samples: Vec<Option<usize>>,
    /// Rationale mode: one text per sample; empty in direct mode.
    pub rationales: Vec<String>,
    /// Rationale mode: the letter each rationale stated after `Behavior:`, if any.
    pub stated: Vec<Option<String>>,
    /// Some label had no probability the backend could report (HTTP backends' top logprobs).
    pub missing_labels: bool,
    pub prompt_tokens: u64,
}

/// A collaborative prior and the hybrid weights fitted for it.
pub struct SlatePrior<'c> {
    pub kind: BaselineKind,
    pub weights: HybridWeights,
    pub baselines: FittedBaselines<'c>,
}

/// Collaborative priors whose picks are written into the prompt, as `mirrorsim hint` writes
/// them into scenes: for an adapter trained on hinted scenes.
pub struct SlateHint<'c> {
    /// One or more priors, in the order their notes are joined.
    pub kinds: Vec<BaselineKind>,
    pub baselines: FittedBaselines<'c>,
}

/// What a collaborative prior scores for one slate.
struct PriorInputs {
    options: Vec<Option<ItemIdx>>,
    /// Distinct, sorted.
    history: Vec<ItemIdx>,
    /// Time order, oldest first.
    recent: Vec<ItemIdx>,
}

impl PriorInputs {
    fn scores(
        &self,
        baselines: &FittedBaselines<'_>,
        kind: BaselineKind,
    ) -> Result<Vec<f64>, EvalError> {
        baselines.scores_of(kind, &self.options, &self.history, &self.recent)
    }
}

/// The LLM simulator (optionally a hybrid) over a catalog.
pub struct SlateSimulator<'c> {
    catalog: &'c SlateCatalog,
    backend: Arc<dyn Backend>,
    prior: Option<SlatePrior<'c>>,
    hint: Option<SlateHint<'c>>,
    rationale: RationaleSettings,
}

impl<'c> SlateSimulator<'c> {
    pub fn new(catalog: &'c SlateCatalog, backend: Arc<dyn Backend>) -> Self {
        SlateSimulator {
            catalog,
            backend,
            prior: None,
            hint: None,
            rationale: RationaleSettings::default(),
        }
    }

    /// Each slate's item that `hint`'s prior scores strictly highest gets the prior's note
    /// ([`crate::hybrid::prior_hint`]) on its line; a tie gets none.
    pub fn with_hint(mut self, hint: SlateHint<'c>) -> Self {
        self.hint = Some(hint);
        self
    }

    pub fn hint(&self) -> Option<&SlateHint<'c>> {
        self.hint.as_ref()
    }

    pub fn with_prior(mut self, prior: SlatePrior<'c>) -> Self {
        self.prior = Some(prior);
        self
    }

    pub fn with_rationale_settings(mut self, settings: RationaleSettings) -> Self {
        self.rationale = settings;
        self
    }

    pub fn catalog(&self) -> &'c SlateCatalog {
        self.catalog
    }

    pub fn prior(&self) -> Option<&SlatePrior<'c>> {
        self.prior.as_ref()
    }

    pub fn model_id(&self) -> String {
        self.backend.model_id()
    }

    /// Answers every request; direct-mode requests go to the backend as one batch, and
    /// rationale-mode ones as one generation batch and one scoring batch.
    pub fn simulate(&self, requests: &[SlateRequest]) -> Result<Vec<SlateOutcome>, EvalError> {
        let prompts = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.samples == 0 {
                    return Err(EvalError::Config(format!(
                        "request {i}: samples must be at least 1"
                    )));
                }
                if r.mode == Mode::Title {
                    return Err(EvalError::Config(format!(
                        "request {i}: slates are answered in direct or rationale mode; title \
                         mode is for `mirrorsim eval` on scenes"
                    )));
                }
                self.prompt(r)
            })
            .collect::<Result<Vec<_>, EvalError>>()?;
        let mut outcomes: Vec<Option<SlateOutcome>> = vec![None; requests.len()];

        let direct: Vec<usize> = (0..requests.len())
            .filter(|&i| requests[i].mode == Mode::Direct)
            .collect();
        if !direct.is_empty() {
            let choice_requests: Vec<ChoiceRequest> = direct
                .iter()
                .map(|&i| direct_request(&prompts[i]))
                .collect();
            let answers = self.backend.score_choices(&choice_requests)?;
            check_shape(direct.len(), answers.len())?;
            for (&i, answer) in direct.iter().zip(answers) {
                let llm =
                    answer
                        .distributions
                        .into_iter()
                        .next()
                        .ok_or(EvalError::BackendShape {
                            expected: 1,
                            got: 0,
                        })?;
                let distribution = self.apply_prior(&requests[i], &prompts[i], &llm)?;
                let samples = (0..requests[i].samples)
                    .map(|s| sample_slot(&distribution, sample_seed(requests[i].seed, s)))
                    .collect();
                outcomes[i] = Some(SlateOutcome {
                    item_ids: prompts[i].item_ids.clone(),
                    labels: prompts[i].labels.clone(),
                    distribution,
                    llm_distribution: llm,
                    samples,
                    rationales: Vec::new(),
                    stated: Vec::new(),
                    missing_labels: answer.missing_labels.iter().any(|m| !m.is_empty()),
                    prompt_tokens: answer.prompt_tokens as u64,
                });
            }
        }

        let rationale: Vec<usize> = (0..requests.len())
            .filter(|&i| requests[i].mode == Mode::Rationale)
            .collect();
        if !rationale.is_empty() {
            let generate: Vec<GenerateRequest> = rationale
                .iter()
                .map(|&i| self.rationale_request(&requests[i], &prompts[i]))
                .collect();
            let completions = self.backend.generate(&generate)?;
            check_shape(rationale.len(), completions.len())?;
            let cut: Vec<Vec<(String, Option<String>)>> = rationale
                .iter()
                .zip(&completions)
                .map(|(&i, texts)| {
                    texts
                        .iter()
                        .map(|c| cut_rationale(&c.text, &prompts[i].labels))
                        .collect()
                })
                .collect();
            let choice_requests: Vec<ChoiceRequest> = rationale
                .iter()
                .zip(&cut)
                .map(|(&i, texts)| behaviour_request(&prompts[i], texts))
                .collect();
            let answers = self.backend.score_choices(&choice_requests)?;
            check_shape(rationale.len(), answers.len())?;
            for (((&i, texts), answer), completions) in
                rationale.iter().zip(cut).zip(answers).zip(&completions)
            {
                check_shape(texts.len(), answer.distributions.len())?;
                let k = prompts[i].item_ids.len();
                let mut llm = vec![0.0; k];
                let mut samples = Vec::with_capacity(texts.len());
                for (s, d) in answer.distributions.iter().enumerate() {
                    for (m, p) in llm.iter_mut().zip(d) {
                        *m += p / texts.len() as f64;
                    }
                    samples.push(sample_slot(d, sample_seed(requests[i].seed, s)));
                }
                let distribution = self.apply_prior(&requests[i], &prompts[i], &llm)?;
                let generation_prompt = completions.first().map_or(0, |c| c.prompt_tokens as u64);
                let (rationales, stated) = texts.into_iter().unzip();
                outcomes[i] = Some(SlateOutcome {
                    item_ids: prompts[i].item_ids.clone(),
                    labels: prompts[i].labels.clone(),
                    distribution,
                    llm_distribution: llm,
                    samples,
                    rationales,
                    stated,
                    missing_labels: answer.missing_labels.iter().any(|m| !m.is_empty()),
                    prompt_tokens: generation_prompt + answer.prompt_tokens as u64,
                });
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.ok_or(EvalError::BackendShape {
                    expected: requests.len(),
                    got: 0,
                })
            })
            .collect()
    }

    fn rationale_request(&self, request: &SlateRequest, prompt: &SlatePrompt) -> GenerateRequest {
        GenerateRequest {
            prompt: Prompt::Chat {
                messages: to_llm_messages(&prompt.messages),
                continue_final: false,
            },
            params: SamplingParams {
                temperature: self.rationale.temperature,
                top_p: self.rationale.top_p,
                top_k: 0,
                max_tokens: self.rationale.max_tokens,
                stop: Vec::new(),
                seed: derive_seed(&[b"slate-rationale", &request.seed.to_le_bytes()]),
                n: request.samples,
                logprobs: None,
            },
        }
    }

    /// The prompts the model is asked: the slate rendered, with the hint when one is set.
    pub fn prompt(&self, request: &SlateRequest) -> Result<SlatePrompt, EvalError> {
        let prompt = self
            .catalog
            .render(&request.user, &request.items, request.none_option)?;
        let Some(hint) = &self.hint else {
            return Ok(prompt);
        };
        // The user's history is resolved once for all the priors.
        let inputs = self.prior_inputs(request, &prompt);
        let scores = hint
            .kinds
            .iter()
            .map(|&kind| inputs.scores(&hint.baselines, kind))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut notes, _) = crate::hybrid::hint_notes(&hint.kinds, &scores);
        // "None of these" has no collaborative score and never carries the hint.
        notes.resize(prompt.item_ids.len(), None);
        Ok(prompt.annotated(&notes)?)
    }

    /// What a prior scores: the slate's items as catalog indices (`None` outside the catalog,
    /// and no "none of these"), the user's distinct earlier catalog items (sorted) and their
    /// earlier catalog items in time order.
    fn prior_inputs(&self, request: &SlateRequest, prompt: &SlatePrompt) -> PriorInputs {
        let catalog = self.catalog.catalog();
        let options: Vec<Option<ItemIdx>> = prompt.item_ids[..request.items.len()]
            .iter()
            .map(|id| catalog.item_idx(id))
            .collect();
        let recent: Vec<ItemIdx> = if request.user.earlier_items.is_empty() {
            request
                .user
                .history
                .iter()
                .filter_map(|h| catalog.item_idx(&h.item.id))
                .collect()
        } else {
            request
                .user
                .earlier_items
                .iter()
                .filter_map(|id| catalog.item_idx(id))
                .collect()
        };
        let mut history = recent.clone();
        history.sort_unstable();
        history.dedup();
        PriorInputs {
            options,
            history,
            recent,
        }
    }

    /// The hybrid's distribution over the options when a prior is set, else `llm` itself.
    fn apply_prior(
        &self,
        request: &SlateRequest,
        prompt: &SlatePrompt,
        llm: &[f64],
    ) -> Result<Vec<f64>, EvalError> {
        let Some(prior) = &self.prior else {
            return Ok(llm.to_vec());
        };
        let items = request.items.len();
        let scores = self
            .prior_inputs(request, prompt)
            .scores(&prior.baselines, prior.kind)?;
        let none_mass = if prompt.item_ids.len() > items {
            llm[items]
        } else {
            0.0
        };
        let item_mass: f64 = llm[..items].iter().sum();
        let conditional: Vec<f64> = if item_mass > 0.0 {
            llm[..items].iter().map(|p| p / item_mass).collect()
        } else {
            vec![1.0 / items as f64; items]
        };
        let mut distribution: Vec<f64> = prior
            .weights
            .distribution(&conditional, &scores)?
            .into_iter()
            .map(|p| p * (1.0 - none_mass))
            .collect();
        if prompt.item_ids.len() > items {
            distribution.push(none_mass);
        }
        Ok(distribution)
    }
}

/// The seed of draw `s` of a request seeded `seed`.
pub fn sample_seed(seed: u64, s: usize) -> u64 {
    derive_seed(&[
        b"slate-sample",
        &seed.to_le_bytes(),
        &(s as u64).to_le_bytes(),
    ])
}

fn direct_request(prompt: &SlatePrompt) -> ChoiceRequest {
    direct_choice_request(&prompt.direct_messages, &prompt.labels)
}

/// Rationale mode: the rationale prompt continued by each rationale and `\nBehavior: [`.
fn behaviour_request(prompt: &SlatePrompt, texts: &[(String, Option<String>)]) -> ChoiceRequest {
    let mut messages = to_llm_messages(&prompt.messages);
    messages.push(ChatMessage::new("assistant", ""));
    ChoiceRequest {
        prompt: Prompt::Chat {
            messages,
            continue_final: true,
        },
        continuations: texts
            .iter()
            .map(|(text, _)| format!("{text}{BEHAVIOR_CUE}"))
            .collect(),
        labels: prompt.labels.clone(),
    }
}

/// Whether an option id is the "none of these" option.
pub fn is_none_of_these(id: &str) -> bool {
    id == NONE_OF_THESE_ID
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mirrorsim_data::catalog::{CatalogBuilder, Interaction};
    use mirrorsim_data::scenes::PromptSet;
    use mirrorsim_llm::{ChoiceScores, Completion, LlmError};

    use super::*;
    use crate::baselines::BaselineConfig;

    /// Answers every choice request with the distribution `[1, 2, 3, …] / Σ` over its labels:
    /// a known LLM distribution to check the hybrid's arithmetic against.
    struct RampBackend;

    impl Backend for RampBackend {
        fn model_id(&self) -> String {
            "ramp".to_owned()
        }
        fn generate(&self, _: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
            Err(LlmError::Compute(
                "the ramp backend does not generate".to_owned(),
            ))
        }
        fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
            Ok(requests
                .iter()
                .map(|r| {
                    let k = r.labels.len();
                    let total = (k * (k + 1) / 2) as f64;
                    ChoiceScores {
                        distributions: vec![(1..=k).map(|j| j as f64 / total).collect()],
                        missing_labels: vec![Vec::new()],
                        prompt_tokens: 1,
                    }
                })
                .collect())
        }
    }

    fn catalog() -> mirrorsim_data::Catalog {
        let mut b = CatalogBuilder::new("tiny");
        for id in ["i1", "i2", "i3"] {
            b.add_item(id, Some(format!("Film {id}")), BTreeMap::new(), None);
        }
        // i1 is the most popular (3 users), then i2 (2), then i3 (1).
        let rows = [
            ("u1", "i1"),
            ("u2", "i1"),
            ("u3", "i1"),
            ("u1", "i2"),
            ("u2", "i2"),
            ("u3", "i3"),
        ];
        for (t, (user, item)) in rows.iter().enumerate() {
            let user = b.user(user);
            let item = b.item(item);
            b.push_interaction(Interaction {
                user,
                item,
                timestamp: t as i64,
                rating: None,
                review: None,
                impressions: None,
            });
        }
        b.finish()
    }

    fn request(slates: &SlateCatalog, none_option: bool, seed: u64) -> SlateRequest {
        SlateRequest {
            user: slates.user("u1", None).unwrap(),
            items: ["i1", "i2", "i3"]
                .iter()
                .map(|id| slates.item(id).unwrap())
                .collect(),
            none_option,
            mode: Mode::Direct,
            samples: 4,
            seed,
        }
    }

    fn assert_close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn without_a_prior_the_distribution_is_the_llms() {
        let slates = SlateCatalog::new(catalog(), PromptSet::embedded().unwrap(), 5).unwrap();
        let sim = SlateSimulator::new(&slates, Arc::new(RampBackend));
        let out = sim.simulate(&[request(&slates, true, 7)]).unwrap();
        assert_eq!(out[0].item_ids, vec!["i1", "i2", "i3", NONE_OF_THESE_ID]);
        assert_close(&out[0].distribution, &[0.1, 0.2, 0.3, 0.4]);
        assert_close(&out[0].llm_distribution, &out[0].distribution);
        assert_eq!(out[0].samples.len(), 4);
        assert!(out[0].rationales.is_empty());
    }

    #[test]
    fn hybrid_limits_and_the_none_option_keep_their_meaning() {
        let slates = SlateCatalog::new(catalog(), PromptSet::embedded().unwrap(), 5).unwrap();
        let fitted = || {
            FittedBaselines::fit(slates.catalog(), None, &BaselineConfig::default(), false).unwrap()
        };
        let popularity_prior = |a: f64, b: f64| SlatePrior {
            kind: BaselineKind::Popularity,
            weights: HybridWeights {
                llm_weight: a,
                prior_weight: b,
                prior_temperature: 0.5,
            },
            baselines: fitted(),
        };
        let prior_alone: Vec<f64> =
            crate::baselines::softmax(&[4f64.ln(), 3f64.ln(), 2f64.ln()], 0.5);

        // a = 0: the prior alone; b = 0: the LLM alone (given an item was picked).
        let sim = SlateSimulator::new(&slates, Arc::new(RampBackend))
            .with_prior(popularity_prior(0.0, 1.0));
        let out = sim.simulate(&[request(&slates, false, 1)]).unwrap();
        assert_close(&out[0].distribution, &prior_alone);
        assert_close(&out[0].llm_distribution, &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]);
        let sim = SlateSimulator::new(&slates, Arc::new(RampBackend))
            .with_prior(popularity_prior(1.0, 0.0));
        let out = sim.simulate(&[request(&slates, false, 1)]).unwrap();
        assert_close(&out[0].distribution, &[1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]);

        // With "none of these": its probability stays the LLM's 0.4, the items share 0.6.
        let sim = SlateSimulator::new(&slates, Arc::new(RampBackend))
            .with_prior(popularity_prior(0.0, 1.0));
        let out = sim.simulate(&[request(&slates, true, 1)]).unwrap();
        let expected: Vec<f64> = prior_alone
            .iter()
            .map(|p| p * 0.6)
            .chain(std::iter::once(0.4))
            .collect();
        assert_close(&out[0].distribution, &expected);
    }

    #[test]
    fn a_request_answers_the_same_alone_or_in_a_batch_and_seeds_decide_samples() {
        let slates = SlateCatalog::new(catalog(), PromptSet::embedded().unwrap(), 5).unwrap();
        let sim = SlateSimulator::new(&slates, Arc::new(RampBackend));
        let batch: Vec<SlateRequest> = (0..5).map(|s| request(&slates, true, s)).collect();
        let together = sim.simulate(&batch).unwrap();
        for (r, joint) in batch.iter().zip(&together) {
            let alone = sim.simulate(std::slice::from_ref(r)).unwrap();
            assert_eq!(&alone[0], joint);
        }
        let draws: Vec<_> = together.iter().map(|o| o.samples.clone()).collect();
        assert!(
            draws.windows(2).any(|w| w[0] != w[1]),
            "seeds must matter: {draws:?}"
        );

        let mut bad = request(&slates, false, 0);
        bad.samples = 0;
        let err = sim.simulate(&[bad]).unwrap_err();
        assert!(
            err.to_string().contains("samples must be at least 1"),
            "{err}"
        );

        let mut title = request(&slates, false, 0);
        title.mode = Mode::Title;
        let err = sim.simulate(&[title]).unwrap_err();
        assert!(err.to_string().contains("title mode is for"), "{err}");
    }
}
