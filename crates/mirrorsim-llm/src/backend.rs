//! The one interface every stage uses to talk to a model, local or remote.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot load model {path}: {message}")]
    Load { path: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("model computation failed: {0}")]
    Compute(String),
    #[error("HTTP backend {url}: {message}")]
    Http { url: String, message: String },
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// One chat message in the OpenAI layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prompt {
    /// Chat messages rendered with the model's own chat template. When the last message is
    /// from the assistant and `continue_final` is set, the model continues that message
    /// (no end-of-turn after it); otherwise a generation prompt for a new assistant turn is added.
    Chat {
        messages: Vec<ChatMessage>,
        continue_final: bool,
    },
    /// Raw text, tokenized as is (BOS added where the model expects one).
    Text { text: String },
}

/// Sampling parameters; `n` samples per prompt share the prompt's KV cache on the local engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub seed: u64,
    pub n: usize,
    /// Return this many top log-probabilities per generated token (OpenAI `top_logprobs`);
    /// `None` returns none.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            stop: Vec::new(),
            seed: 0,
            n: 1,
            logprobs: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One sampled continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Generated text, cut before the stop string that ended it (if any).
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Per generated token, when `SamplingParams::logprobs` asked for them.
    pub logprobs: Option<Vec<TokenLogprobs>>,
}

/// The log-probability of one generated token and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    pub token: String,
    pub token_id: u32,
    /// Natural log.
    pub logprob: f64,
    /// Most likely tokens at this position, best first: (token text, token id, logprob).
    pub top: Vec<(String, u32, f64)>,
}

/// Score option labels after several continuations of one shared prompt.
///
/// For each continuation `c`, the model reads `prompt` followed by `c` (appended to the final
/// assistant message for chat prompts) and returns the next-token distribution restricted to
/// the first token of each label and renormalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChoiceRequest {
    pub prompt: Prompt,
    pub continuations: Vec<String>,
    /// Option labels, e.g. ["A", "B", "C"].
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceScores {
    /// One distribution over `labels` per continuation; each sums to 1.
    pub distributions: Vec<Vec<f64>>,
    /// Per continuation, the labels that had no probability the backend could report (an HTTP
    /// server whose top logprobs did not include them). Their mass is 0 in `distributions`;
    /// callers decide whether that is acceptable, it is never hidden.
    pub missing_labels: Vec<Vec<String>>,
    /// Prompt tokens read (counting the shared prefix once).
    pub prompt_tokens: usize,
}

/// Score whole continuations of one shared prompt by their likelihood.
///
/// For chat prompts each continuation is a complete assistant message after `prompt`'s
/// messages (its end-of-turn included, so a continuation that is a prefix of another is not
/// favoured); for text prompts it is appended to the text. Options named by their own text
/// rather than by a letter are scored this way (cloze-style), which needs no binding of
/// letters to options.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContinuationRequest {
    pub prompt: Prompt,
    pub continuations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContinuationScores {
    /// Per continuation, the natural-log probability of its tokens given the prompt (the sum
    /// over its tokens).
    pub logprobs: Vec<f64>,
    /// Per continuation, how many tokens that sum covers.
    pub tokens: Vec<usize>,
    /// Prompt tokens read (counting the shared prefix once).
    pub prompt_tokens: usize,
}

impl ContinuationScores {
    /// The continuations' likelihoods renormalised into one distribution (a softmax of
    /// `logprobs`).
    pub fn distribution(&self) -> Vec<f64> {
        let top = self
            .logprobs
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        if !top.is_finite() {
            return vec![1.0 / self.logprobs.len().max(1) as f64; self.logprobs.len()];
        }
        let weights: Vec<f64> = self.logprobs.iter().map(|l| (l - top).exp()).collect();
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| w / total).collect()
    }
}

/// A model a stage can use: the local engine or an OpenAI-compatible server.
pub trait Backend: Send + Sync {
    /// A stable identity of the model and its weights (e.g. file name + sha256 prefix, or
    /// URL + served model name); the run journal keys requests by it.
    fn model_id(&self) -> String;

    /// Generates `params.n` completions for each request; requests are batched where possible.
    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError>;

    /// Scores option labels after each continuation of each request.
    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError>;

    /// Scores whole continuations by their log-likelihood. Backends that cannot report the
    /// probability of given text (an OpenAI-compatible chat endpoint) refuse.
    fn score_continuations(
        &self,
        requests: &[ContinuationRequest],
    ) -> Result<Vec<ContinuationScores>, LlmError> {
        let _ = requests;
        Err(LlmError::BadRequest(format!(
            "backend {} cannot score whole continuations (needed by the title mode); use a local \
             model (a GGUF file or a Hugging Face directory)",
            self.model_id()
        )))
    }
}
