//! The OpenAI-compatible routes.
//!
//! Follows OpenAI's request and response shapes, with vLLM's extensions `top_k`,
//! `continue_final_message` and `add_generation_prompt`. Two additions a client may ignore: chat
//! logprob entries carry the token's `id` (as llama.cpp's server does), and completions logprobs
//! carry `token_ids`. Unknown request fields are ignored, as vLLM does; parameters this server
//! cannot honour (streaming, echo, penalties, logit bias, `allowed_token_ids`) are refused with
//! 400 rather than silently dropped.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mirrorsim_llm::{
    Backend, ChatMessage, Completion, FinishReason, GenerateRequest, LlmError, Prompt,
    SamplingParams, TokenLogprobs,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::batcher::{Batcher, BatcherError};

/// How the server presents and bounds the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// The name clients pass as `model`; other names get 404.
    pub model_name: String,
    /// Most requests one batched `generate` call holds.
    pub max_batch_requests: usize,
    /// `max_tokens` of a chat completion that does not set it.
    pub default_chat_max_tokens: usize,
    /// `max_tokens` of a completion that does not set it (OpenAI's default is 16).
    pub default_completion_max_tokens: usize,
    /// Largest `top_logprobs` (chat) or `logprobs` (completions) accepted.
    pub max_logprobs: usize,
    /// Largest `n` accepted.
    pub max_n: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
}

impl ServerOptions {
    pub fn new(model_name: impl Into<String>) -> Self {
        ServerOptions {
            model_name: model_name.into(),
            max_batch_requests: 8,
            default_chat_max_tokens: 512,
            default_completion_max_tokens: 16,
            max_logprobs: 20,
            max_n: 64,
            max_body_bytes: 32 * 1024 * 1024,
        }
    }
}

struct AppState {
    options: ServerOptions,
    batcher: Batcher,
    created: u64,
    next_id: AtomicU64,
    seeds: RandomState,
}

/// The routes over `backend`.
///
/// # Panics
/// Outside a tokio runtime: it starts the model worker on the current one.
pub fn router(backend: Arc<dyn Backend>, options: ServerOptions) -> Router {
    let body_limit = options.max_body_bytes;
    let state = Arc::new(AppState {
        batcher: Batcher::start(backend, options.max_batch_requests),
        options,
        created: unix_seconds(),
        next_id: AtomicU64::new(0),
        seeds: RandomState::new(),
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// An error answered in OpenAI's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    param: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param: Some(param),
            message: message.into(),
        }
    }

    fn bad_body(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param: None,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status.as_u16(),
            }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<LlmError> for ApiError {
    fn from(err: LlmError) -> Self {
        match err {
            LlmError::BadRequest(message) => ApiError::bad_body(message),
            other => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                param: None,
                message: other.to_string(),
            },
        }
    }
}

impl From<BatcherError> for ApiError {
    fn from(err: BatcherError) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            param: None,
            message: err.to_string(),
        }
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        param: None,
        message: "no such route; this server offers GET /health, GET /v1/models, \
                  POST /v1/chat/completions and POST /v1/completions"
            .to_string(),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_name,
            "object": "model",
            "created": state.created,
            "owned_by": "mirrorsim",
        }]
    }))
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Fields both endpoints share.
#[derive(Debug, Deserialize)]
struct CommonFields {
    model: Option<String>,
    n: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    stop: Option<Value>,
    seed: Option<i64>,
    stream: Option<bool>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logit_bias: Option<Map<String, Value>>,
    allowed_token_ids: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(flatten)]
    common: CommonFields,
    messages: Vec<InMessage>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    continue_final_message: Option<bool>,
    add_generation_prompt: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct TextRequest {
    #[serde(flatten)]
    common: CommonFields,
    prompt: Value,
    logprobs: Option<usize>,
    echo: Option<bool>,
    best_of: Option<usize>,
    suffix: Option<String>,
}

fn parse_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        kind: "invalid_request_error",
        param: None,
        message: rejection.body_text(),
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad_body(format!("invalid request body: {err}")))
}

/// Checks the shared fields; returns sampling parameters with `max_tokens` defaulted.
fn sampling_params(
    state: &AppState,
    common: &CommonFields,
    default_max_tokens: usize,
    logprobs: Option<usize>,
) -> Result<SamplingParams, ApiError> {
    let options = &state.options;
    if let Some(model) = &common.model {
        if model != &options.model_name {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                param: Some("model"),
                message: format!(
                    "the model `{model}` does not exist; this server serves `{}`",
                    options.model_name
                ),
            });
        }
    }
    if common.stream == Some(true) {
        return Err(ApiError::invalid(
            "stream",
            "streaming is not supported by this server",
        ));
    }
    for (param, value) in [
        ("presence_penalty", common.presence_penalty),
        ("frequency_penalty", common.frequency_penalty),
    ] {
        if value.is_some_and(|penalty| penalty != 0.0) {
            return Err(ApiError::invalid(
                param,
                format!("{param} is not supported by this server (only 0)"),
            ));
        }
    }
    if common
        .logit_bias
        .as_ref()
        .is_some_and(|bias| !bias.is_empty())
    {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported by this server",
        ));
    }
    if common
        .allowed_token_ids
        .as_ref()
        .is_some_and(|ids| !ids.is_null())
    {
        return Err(ApiError::invalid(
            "allowed_token_ids",
            "allowed_token_ids is not supported by this server; ask for top_logprobs instead",
        ));
    }
    let n = common.n.unwrap_or(1);
    if n == 0 || n > options.max_n {
        return Err(ApiError::invalid(
            "n",
            format!("n must be between 1 and {}, got {n}", options.max_n),
        ));
    }
    let temperature = common.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be a finite number >= 0, got {temperature}"),
        ));
    }
    let top_p = common.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match common.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1, 0 (no cut) or positive, got {k}"),
            ))
        }
    };
    let max_tokens = common
        .max_completion_tokens
        .or(common.max_tokens)
        .unwrap_or(default_max_tokens);
    if max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let stop = match &common.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(stop)) => vec![stop.clone()],
        Some(Value::Array(stops)) => stops
            .iter()
            .map(|stop| match stop {
                Value::String(stop) => Ok(stop.clone()),
                other => Err(ApiError::invalid(
                    "stop",
                    format!("stop must be a string or a list of strings, found {other}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(
                "stop",
                format!("stop must be a string or a list of strings, found {other}"),
            ))
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    if let Some(count) = logprobs {
        if count > options.max_logprobs {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!(
                    "at most {} top logprobs per token, asked for {count}",
                    options.max_logprobs
                ),
            ));
        }
    }
    // Without a seed every request samples afresh, as OpenAI does.
    let seed = match common.seed {
        Some(seed) => seed as u64,
        None => {
            let mut hasher = state.seeds.build_hasher();
            hasher.write_u64(state.next_id.fetch_add(1, Ordering::Relaxed));
            hasher.finish()
        }
    };
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k,
        max_tokens,
        stop,
        seed,
        n,
        logprobs,
    })
}

fn message_text(index: usize, content: Option<&Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(piece))) => text.push_str(piece),
                    _ => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!(
                                "messages[{index}].content: only text parts \
                                 ({{\"type\": \"text\", \"text\": ...}}) are supported, found {part}"
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(other) => Err(ApiError::invalid(
            "messages",
            format!("messages[{index}].content must be a string or a list of parts, found {other}"),
        )),
    }
}

fn chat_prompt(request: &ChatRequest) -> Result<Prompt, ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(index, message)| {
            if message.role.is_empty() {
                return Err(ApiError::invalid(
                    "messages",
                    format!("messages[{index}].role is empty"),
                ));
            }
            Ok(ChatMessage::new(
                message.role.clone(),
                message_text(index, message.content.as_ref())?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let continue_final = request.continue_final_message.unwrap_or(false);
    let add_generation_prompt = request.add_generation_prompt.unwrap_or(!continue_final);
    match (continue_final, add_generation_prompt) {
        (true, true) => Err(ApiError::invalid(
            "continue_final_message",
            "continue_final_message and add_generation_prompt cannot both be true",
        )),
        (true, false) if messages.last().is_some_and(|last| last.role != "assistant") => {
            Err(ApiError::invalid(
                "continue_final_message",
                "continue_final_message needs the last message to be the assistant's",
            ))
        }
        (false, false) => Err(ApiError::invalid(
            "add_generation_prompt",
            "add_generation_prompt = false is only supported with continue_final_message = true",
        )),
        _ => Ok(Prompt::Chat {
            messages,
            continue_final,
        }),
    }
}

fn text_prompts(prompt: &Value) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a string or a non-empty list of strings (token id prompts are not \
             supported)",
        )
    };
    match prompt {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_string).ok_or_else(invalid))
            .collect(),
        _ => Err(invalid()),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// JSON has no infinities; vLLM reports -9999 for impossible tokens, and so do we.
fn finite_logprob(logprob: f64) -> f64 {
    if logprob.is_finite() {
        logprob
    } else {
        -9999.0
    }
}

fn finish_reason_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn chat_logprobs(logprobs: &[TokenLogprobs]) -> Value {
    let content: Vec<Value> = logprobs
        .iter()
        .map(|entry| {
            let top: Vec<Value> = entry
                .top
                .iter()
                .map(|(token, id, logprob)| {
                    json!({
                        "token": token,
                        "logprob": finite_logprob(*logprob),
                        "bytes": token.as_bytes(),
                        "id": id,
                    })
                })
                .collect();
            json!({
                "token": entry.token,
                "logprob": finite_logprob(entry.logprob),
                "bytes": entry.token.as_bytes(),
                "id": entry.token_id,
                "top_logprobs": top,
            })
        })
        .collect();
    json!({ "content": content })
}

fn text_logprobs(logprobs: &[TokenLogprobs], prompt_chars: usize) -> Value {
    let mut offset = prompt_chars;
    let mut text_offset = Vec::with_capacity(logprobs.len());
    for entry in logprobs {
        text_offset.push(offset);
        offset += entry.token.chars().count();
    }
    let top: Vec<Value> = logprobs
        .iter()
        .map(|entry| {
            // An object keeps one entry per token text: the likeliest (entries come best first).
            let mut by_text = Map::new();
            for (token, _, logprob) in &entry.top {
                by_text
                    .entry(token.clone())
                    .or_insert_with(|| json!(finite_logprob(*logprob)));
            }
            Value::Object(by_text)
        })
        .collect();
    json!({
        "tokens": logprobs.iter().map(|entry| entry.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": logprobs.iter().map(|entry| finite_logprob(entry.logprob)).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
        "token_ids": logprobs.iter().map(|entry| entry.token_id).collect::<Vec<_>>(),
    })
}

fn usage(per_prompt: &[Vec<Completion>]) -> Value {
    // Completions of one prompt read it once.
    let prompt_tokens: usize = per_prompt
        .iter()
        .map(|completions| completions.first().map_or(0, |first| first.prompt_tokens))
        .sum();
    let completion_tokens: usize = per_prompt
        .iter()
        .flatten()
        .map(|completion| completion.completion_tokens)
        .sum();
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

async fn run_generate(
    state: &AppState,
    requests: Vec<GenerateRequest>,
) -> Result<Vec<Vec<Completion>>, ApiError> {
    let expected: Vec<usize> = requests.iter().map(|request| request.params.n).collect();
    let results = state.batcher.generate(requests).await??;
    let shape_ok = results.len() == expected.len()
        && results
            .iter()
            .zip(&expected)
            .all(|(completions, n)| completions.len() == *n);
    if !shape_ok {
        return Err(LlmError::Compute(
            "the backend returned a different number of completions than asked for".to_string(),
        )
        .into());
    }
    Ok(results)
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: ChatRequest = parse_body(body)?;
    let logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None) | (false, Some(0)) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs = true",
            ))
        }
    };
    let params = sampling_params(
        &state,
        &request.common,
        state.options.default_chat_max_tokens,
        logprobs,
    )?;
    let prompt = chat_prompt(&request)?;
    let results = run_generate(&state, vec![GenerateRequest { prompt, params }]).await?;
    let choices: Vec<Value> = results
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, completion)| {
            json!({
                "index": index,
                "message": { "role": "assistant", "content": completion.text },
                "logprobs": completion.logprobs.as_deref().map(chat_logprobs),
                "finish_reason": finish_reason_name(completion.finish_reason),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": format!("chatcmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed)),
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": state.options.model_name,
        "choices": choices,
        "usage": usage(&results),
    })))
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request: TextRequest = parse_body(body)?;
    if request.echo == Some(true) {
        return Err(ApiError::invalid(
            "echo",
            "echo is not supported by this server",
        ));
    }
    if request
        .suffix
        .as_ref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(ApiError::invalid(
            "suffix",
            "suffix is not supported by this server",
        ));
    }
    if request
        .best_of
        .is_some_and(|best_of| best_of != request.common.n.unwrap_or(1))
    {
        return Err(ApiError::invalid(
            "best_of",
            "best_of other than n is not supported by this server",
        ));
    }
    let params = sampling_params(
        &state,
        &request.common,
        state.options.default_completion_max_tokens,
        request.logprobs,
    )?;
    let prompts = text_prompts(&request.prompt)?;
    let prompt_chars: Vec<usize> = prompts.iter().map(|text| text.chars().count()).collect();
    let requests = prompts
        .into_iter()
        .map(|text| GenerateRequest {
            prompt: Prompt::Text { text },
            params: params.clone(),
        })
        .collect();
    let results = run_generate(&state, requests).await?;
    let mut choices = Vec::new();
    for (completions, prompt_chars) in results.iter().zip(&prompt_chars) {
        for completion in completions {
            choices.push(json!({
                "index": choices.len(),
                "text": completion.text,
                "logprobs": completion
                    .logprobs
                    .as_deref()
                    .map(|logprobs| text_logprobs(logprobs, *prompt_chars)),
                "finish_reason": finish_reason_name(completion.finish_reason),
            }));
        }
    }
    Ok(Json(json!({
        "id": format!("cmpl-{}", state.next_id.fetch_add(1, Ordering::Relaxed)),
        "object": "text_completion",
        "created": unix_seconds(),
        "model": state.options.model_name,
        "choices": choices,
        "usage": usage(&results),
    })))
}
