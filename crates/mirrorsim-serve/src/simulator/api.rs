//! The JSON bodies of the simulator service. Their schemas in `/openapi.json` are derived from
//! these types, so the document cannot drift from what the handlers accept and answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How the simulator is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SimulateMode {
    /// One forward pass after `Behavior: [`; the distribution over the option letters. Fast.
    #[default]
    Direct,
    /// `n` first-person rationales are generated and each is scored; the distribution is their
    /// mean and each rationale's own seeded choice is a sample. Slow (text generation).
    Rationale,
}

/// An item described inline instead of by a catalog id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineItem {
    /// Your id for the item; echoed in the answer. Unique within a slate.
    #[schema(example = "sku-42")]
    pub id: String,
    #[schema(example = "The Matrix (1999)")]
    pub title: String,
    /// Free text shown beside the title, e.g. `genres: Action|Sci-Fi; year: 1999`.
    #[serde(default)]
    pub details: String,
    /// Shown after the details, e.g. `2,106 ratings, average 4.1/5`: what an adapter trained
    /// on `scenes --item-stats` scenes expects to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

/// One past interaction of an inline user, oldest first in `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineHistoryEntry {
    /// An item of the catalog (give this or `item`).
    #[serde(default)]
    pub item_id: Option<String>,
    /// An item described inline (give this or `item_id`).
    #[serde(default)]
    pub item: Option<InlineItem>,
    /// How long before the decision the interaction happened.
    #[serde(default)]
    pub seconds_ago: Option<i64>,
    /// The user's rating, on the catalog's scale (MovieLens: 0.5–5).
    #[serde(default)]
    pub rating: Option<f32>,
    #[serde(default)]
    pub review: Option<String>,
}

/// A user described inline: profile attributes and past interactions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InlineUser {
    /// Your id for the user; echoed in the answer (default `inline`).
    #[serde(default)]
    pub id: Option<String>,
    /// Profile attributes shown to the simulator, e.g. `{"age": "25-34", "gender": "F"}`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Past interactions, oldest first.
    #[serde(default)]
    pub history: Vec<InlineHistoryEntry>,
}

/// One simulated decision: a user facing a slate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateRequest {
    /// A user of the served catalog (give this or `user`).
    #[serde(default)]
    #[schema(example = "1")]
    pub user_id: Option<String>,
    /// A user described inline (give this or `user_id`).
    #[serde(default)]
    pub user: Option<InlineUser>,
    /// For `user_id`: the history shown holds only interactions strictly before this Unix time
    /// (default: the whole log).
    #[serde(default)]
    pub at: Option<i64>,
    /// The slate as catalog item ids, in display order (give this or `items`).
    #[serde(default)]
    #[schema(example = json!(["1", "260", "2571"]))]
    pub item_ids: Option<Vec<String>>,
    /// The slate as inline items, in display order (give this or `item_ids`).
    #[serde(default)]
    pub items: Option<Vec<InlineItem>>,
    /// Add a last option "none of these" (id `__none__`), as Agent4Rec's pages do.
    #[serde(default)]
    pub none_option: bool,
    #[serde(default)]
    pub mode: SimulateMode,
    /// How many choices to sample (rationale mode: how many rationales to write).
    #[serde(default = "default_samples")]
    #[schema(minimum = 1, example = 1)]
    pub n: usize,
    /// Seed of the sampled choices (and rationales): the same request and seed give the same
    /// answer.
    #[serde(default)]
    pub seed: u64,
}

fn default_samples() -> usize {
    1
}

/// Many decisions in one call; answered in the same order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulateBatchRequest {
    pub requests: Vec<SimulateRequest>,
}

/// One option of the slate with the probability that the user chooses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OptionProbability {
    /// The item's id (`__none__` for the "none of these" option).
    pub item_id: String,
    /// The letter the option had in the prompt.
    pub label: String,
    pub probability: f64,
    /// Hybrid simulators only: the LLM's own probability, before the prior.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_probability: Option<f64>,
}

/// One sampled choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SampledChoice {
    /// The chosen item; null when the model named no valid option (rationale mode only).
    pub item_id: Option<String>,
    pub label: Option<String>,
    /// Rationale mode: the first-person rationale this choice was sampled from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
}

/// The simulated user's answer to one slate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimulateResponse {
    /// The simulator's model id.
    pub model: String,
    pub user_id: String,
    pub mode: SimulateMode,
    pub seed: u64,
    /// Every option in slate order; the probabilities sum to 1.
    pub distribution: Vec<OptionProbability>,
    /// The first sampled choice (the same as `choices[0]`).
    pub choice: SampledChoice,
    /// All `n` sampled choices.
    pub choices: Vec<SampledChoice>,
    /// True when the model could not score some option letters (their mass counts as 0).
    pub missing_labels: bool,
    pub prompt_tokens: u64,
}

/// The answers of a batch, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimulateBatchResponse {
    pub results: Vec<SimulateResponse>,
}

/// The collaborative prior of a hybrid simulator: `p ∝ p_llm^a · softmax(score / T)^b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PriorInfo {
    /// `knn`, `ease` or `popularity`.
    pub kind: String,
    /// `a`.
    pub llm_weight: f64,
    /// `b`.
    pub prior_weight: f64,
    /// `T`.
    pub prior_temperature: f64,
    /// The `hybrid.json` the weights were read from.
    pub weights_file: String,
}

/// The served catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogInfo {
    pub name: String,
    pub users: usize,
    pub items: usize,
}

/// The limits requests are checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitsInfo {
    /// Most items in one slate (not counting the "none of these" option).
    pub max_slate_items: usize,
    /// Largest `n`.
    pub max_samples: usize,
    /// Most entries in an inline user's history.
    pub max_history: usize,
    /// Most characters of inline text (ids, titles, details, attributes, reviews) per request.
    pub max_inline_chars: usize,
    /// Most requests in one `/v1/simulate/batch` call.
    pub max_batch_requests: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered 504.
    pub request_timeout_s: f64,
    /// Milliseconds the server waits for other clients' requests to batch with.
    pub batch_window_ms: f64,
}

/// What `GET /v1/model` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// The model id (the model file, plus the adapter when one is merged).
    pub model: String,
    /// The LoRA adapter directory merged into the model, if any.
    pub adapter: Option<String>,
    /// The hybrid's prior; null for the plain LLM simulator.
    pub prior: Option<PriorInfo>,
    /// The collaborative prior whose pick is written into every prompt (`serve --hint-prior`),
    /// e.g. "ease"; null when prompts carry no hint.
    pub hint_prior: Option<String>,
    /// The mirrorsim version serving.
    pub version: String,
    pub catalog: CatalogInfo,
    pub limits: LimitsInfo,
}

/// What `GET /healthz` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// What is wrong and how to fix it.
    pub message: String,
    /// `invalid_request`, `not_found`, `payload_too_large`, `overloaded`, `timeout`,
    /// `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, e.g. `requests[2].item_ids[1]`.
    pub field: Option<String>,
    /// The HTTP status, repeated.
    pub status: u16,
}
