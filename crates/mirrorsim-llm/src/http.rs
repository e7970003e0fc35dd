//! A [`Backend`] for any OpenAI-compatible server: vLLM, SGLang, llama.cpp server, Ollama, OpenAI.
//!
//! * `generate` sends `/chat/completions` for [`Prompt::Chat`] and `/completions` for
//!   [`Prompt::Text`], one HTTP request per [`GenerateRequest`] (its `n` samples in that request).
//! * `score_choices` sends one request per continuation with `max_tokens: 1`, `temperature: 0`
//!   and `top_logprobs`, reads the labels' log-probabilities from the top list of the one generated
//!   token and renormalises them. A label absent from the top list is reported in
//!   [`ChoiceScores::missing_labels`] with mass 0; if no label is present the call fails.
//! * Requests of one call run concurrently on an internal tokio runtime (the trait stays
//!   synchronous), bounded by a semaphore shared by every call on this backend.
//! * 429, 408 and 5xx answers, timeouts and dropped connections are retried with jittered
//!   exponential backoff, honouring `Retry-After`; other 4xx answers fail at once.
//!
//! Token ids: OpenAI's response shapes carry token texts, not ids. Ids are read where a server
//! adds them (llama.cpp's and mirrorsim's `id` field in chat logprobs, mirrorsim's `token_ids` in
//! completions logprobs, vLLM's `token_id:N` token strings); otherwise they are [`UNKNOWN_TOKEN_ID`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::backend::{
    Backend, ChatMessage, ChoiceRequest, ChoiceScores, Completion, FinishReason, GenerateRequest,
    LlmError, Prompt, SamplingParams, TokenLogprobs,
};

/// Token id reported when the server did not say which token it generated.
pub const UNKNOWN_TOKEN_ID: u32 = u32::MAX;

/// Which endpoints the server offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointMode {
    /// Chat prompts go to `/chat/completions`, text prompts to `/completions`.
    #[default]
    Auto,
    /// Only `/chat/completions` (e.g. OpenAI's chat models): text prompts are refused.
    Chat,
    /// Only `/completions`: chat prompts are refused.
    Completions,
}

/// Configuration of an [`HttpBackend`]. The API key is never stored here: it is read from the
/// environment variable named by `api_key_env`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Base URL up to and including the API version, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The served model name sent as `model`.
    pub model: String,
    /// Environment variable holding the bearer token; unset or empty sends no token.
    pub api_key_env: String,
    /// Most requests in flight at once, over all calls on this backend.
    pub max_concurrency: usize,
    /// Retries after the first attempt of a request.
    pub max_retries: u32,
    /// Whole-request timeout in seconds (connect, send, wait, read).
    pub request_timeout_secs: f64,
    /// First backoff delay in seconds; it doubles per retry, with jitter in [50 %, 100 %].
    pub initial_backoff_secs: f64,
    /// Largest backoff delay in seconds.
    pub max_backoff_secs: f64,
    /// Largest wait a server's `Retry-After` may impose, in seconds.
    pub max_retry_after_secs: f64,
    pub endpoint: EndpointMode,
    /// Send vLLM's extensions: `continue_final_message` + `add_generation_prompt: false` when a
    /// chat prompt continues its final assistant message, and `allowed_token_ids` when scoring
    /// with `label_token_ids`. Without them, a trailing assistant message is sent as is (llama.cpp
    /// server and Ollama treat it as a prefill to continue). OpenAI rejects these fields.
    pub vllm_extras: bool,
    /// `top_logprobs` asked for when scoring choices (OpenAI and vLLM allow at most 20 by default).
    pub choice_top_logprobs: usize,
    /// Token id of each option label in the served model's vocabulary. When set (and
    /// `vllm_extras` is on), scoring requests restrict generation to these ids with
    /// `allowed_token_ids`, and labels are matched by id where the server reports ids.
    pub label_token_ids: BTreeMap<String, u32>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            base_url: "http://127.0.0.1:8000/v1".to_string(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".to_string(),
            max_concurrency: 8,
            max_retries: 5,
            request_timeout_secs: 600.0,
            initial_backoff_secs: 0.5,
            max_backoff_secs: 30.0,
            max_retry_after_secs: 300.0,
            endpoint: EndpointMode::Auto,
            vllm_extras: true,
            choice_top_logprobs: 20,
            label_token_ids: BTreeMap::new(),
        }
    }
}

impl HttpConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        HttpConfig {
            base_url: base_url.into(),
            model: model.into(),
            ..HttpConfig::default()
        }
    }
}

/// Request counters of one backend, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// HTTP requests sent, retries included.
    pub attempts: u64,
    /// Attempts that were retries of a failed attempt.
    pub retries: u64,
}

/// An OpenAI-compatible server used as a [`Backend`].
pub struct HttpBackend {
    shared: Arc<Shared>,
    /// Always `Some` until drop, which shuts it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    config: HttpConfig,
    base_url: String,
    api_key: Option<String>,
    client: reqwest::Client,
    semaphore: Semaphore,
    attempts: AtomicU64,
    retries: AtomicU64,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("config", &self.shared.config)
            .field("api_key_set", &self.shared.api_key.is_some())
            .finish()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn seconds(name: &str, value: f64, allow_zero: bool) -> Result<Duration, LlmError> {
    let valid = value.is_finite() && (value > 0.0 || (allow_zero && value == 0.0));
    if !valid || value > 1e9 {
        return Err(LlmError::BadRequest(format!(
            "HTTP backend config field `{name}` must be a {} number of seconds, got {value}",
            if allow_zero {
                "non-negative"
            } else {
                "positive"
            }
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

impl HttpBackend {
    /// Checks the configuration, reads the API key from the environment and builds the client.
    pub fn new(config: HttpConfig) -> Result<HttpBackend, LlmError> {
        let base_url = config.base_url.trim_end_matches('/').to_string();
        let config_error = |message: String| LlmError::Http {
            url: base_url.clone(),
            message,
        };
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(config_error(
                "config field `base_url` must start with http:// or https://".to_string(),
            ));
        }
        if config.model.trim().is_empty() {
            return Err(config_error(
                "config field `model` (the served model name) is empty".to_string(),
            ));
        }
        if config.max_concurrency == 0 {
            return Err(config_error(
                "config field `max_concurrency` must be at least 1".to_string(),
            ));
        }
        if config.choice_top_logprobs == 0 {
            return Err(config_error(
                "config field `choice_top_logprobs` must be at least 1".to_string(),
            ));
        }
        let timeout = seconds("request_timeout_secs", config.request_timeout_secs, false)?;
        seconds("initial_backoff_secs", config.initial_backoff_secs, true)?;
        seconds("max_backoff_secs", config.max_backoff_secs, true)?;
        seconds("max_retry_after_secs", config.max_retry_after_secs, true)?;

        let api_key = if config.api_key_env.is_empty() {
            None
        } else {
            std::env::var(&config.api_key_env)
                .ok()
                .filter(|key| !key.trim().is_empty())
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|err| config_error(format!("cannot build the HTTP client: {err}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mirrorsim-http")
            .enable_all()
            .build()
            .map_err(|err| config_error(format!("cannot start the HTTP runtime: {err}")))?;
        let semaphore = Semaphore::new(config.max_concurrency);
        Ok(HttpBackend {
            shared: Arc::new(Shared {
                config,
                base_url,
                api_key,
                client,
                semaphore,
                attempts: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
            runtime: Some(runtime),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> HttpStats {
        HttpStats {
            attempts: self.shared.attempts.load(Ordering::Relaxed),
            retries: self.shared.retries.load(Ordering::Relaxed),
        }
    }

    /// Runs the futures concurrently on the internal runtime and returns their results in order;
    /// on the first error the others are aborted.
    fn run_all<T, F>(&self, futures: Vec<F>) -> Result<Vec<T>, LlmError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, LlmError>> + Send + 'static,
    {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(LlmError::Http {
                url: self.shared.base_url.clone(),
                message: "the HTTP runtime has been shut down".to_string(),
            });
        };
        let base_url = self.shared.base_url.clone();
        let all = async move {
            let mut handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
            let mut results = Vec::with_capacity(handles.len());
            for index in 0..handles.len() {
                let joined = (&mut handles[index]).await;
                let outcome = match joined {
                    Ok(outcome) => outcome,
                    Err(join_error) => Err(LlmError::Http {
                        url: base_url.clone(),
                        message: format!("request task failed: {join_error}"),
                    }),
                };
                match outcome {
                    Ok(value) => results.push(value),
                    Err(err) => {
                        for handle in &handles[index + 1..] {
                            handle.abort();
                        }
                        return Err(err);
                    }
                }
            }
            Ok(results)
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Called from async code: block_on would panic on this thread, so block another one.
            std::thread::scope(|scope| match scope.spawn(|| runtime.block_on(all)).join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            runtime.block_on(all)
        }
    }

    fn check_endpoint(&self, prompt: &Prompt) -> Result<(), LlmError> {
        let refused = match (self.shared.config.endpoint, prompt) {
            (EndpointMode::Chat, Prompt::Text { .. }) => Some(("chat", "text", "/completions")),
            (EndpointMode::Completions, Prompt::Chat { .. }) => {
                Some(("completions", "chat", "/chat/completions"))
            }
            _ => None,
        };
        match refused {
            Some((mode, kind, needed)) => Err(LlmError::BadRequest(format!(
                "HTTP backend {} is configured with endpoint mode `{mode}`; a {kind} prompt needs \
                 {needed}",
                self.shared.base_url
            ))),
            None => Ok(()),
        }
    }
}

/// The request body for one prompt, and which endpoint it goes to.
fn request_body(config: &HttpConfig, prompt: &Prompt, params: &SamplingParams) -> (String, Value) {
    let mut fields = serde_json::Map::new();
    fields.insert("model".into(), json!(config.model));
    fields.insert("n".into(), json!(params.n));
    fields.insert("temperature".into(), json!(params.temperature));
    fields.insert("top_p".into(), json!(params.top_p));
    fields.insert("max_tokens".into(), json!(params.max_tokens));
    // OpenAI and vLLM take a signed 64-bit seed.
    fields.insert("seed".into(), json!(params.seed & (i64::MAX as u64)));
    if !params.stop.is_empty() {
        fields.insert("stop".into(), json!(params.stop));
    }
    if params.top_k > 0 {
        // Not OpenAI's, but vLLM, SGLang, llama.cpp and Ollama accept it; dropping it silently
        // would change the sampling asked for.
        fields.insert("top_k".into(), json!(params.top_k));
    }
    match prompt {
        Prompt::Chat {
            messages,
            continue_final,
        } => {
            fields.insert("messages".into(), json!(messages));
            let continues = *continue_final
                && messages
                    .last()
                    .is_some_and(|message| message.role == "assistant");
            if continues && config.vllm_extras {
                fields.insert("continue_final_message".into(), json!(true));
                fields.insert("add_generation_prompt".into(), json!(false));
            }
            if let Some(top) = params.logprobs {
                fields.insert("logprobs".into(), json!(true));
                fields.insert("top_logprobs".into(), json!(top));
            }
            ("chat/completions".to_string(), Value::Object(fields))
        }
        Prompt::Text { text } => {
            fields.insert("prompt".into(), json!(text));
            if let Some(top) = params.logprobs {
                fields.insert("logprobs".into(), json!(top));
            }
            ("completions".to_string(), Value::Object(fields))
        }
    }
}

/// A failed attempt: whether it may be retried, and what to say.
struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    message: String,
}

impl Shared {
    fn url(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.base_url)
    }

    async fn post_json(self: Arc<Self>, url: String, body: Value) -> Result<Value, LlmError> {
        let config = &self.config;
        let mut attempt: u32 = 0;
        loop {
            let outcome = {
                let _permit = self
                    .semaphore
                    .acquire()
                    .await
                    .map_err(|err| LlmError::Http {
                        url: url.clone(),
                        message: format!("request queue closed: {err}"),
                    })?;
                self.attempts.fetch_add(1, Ordering::Relaxed);
                self.send_once(&url, &body).await
            };
            let failure = match outcome {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            if !failure.retryable {
                return Err(LlmError::Http {
                    url,
                    message: failure.message,
                });
            }
            if attempt >= config.max_retries {
                return Err(LlmError::Http {
                    url,
                    message: format!(
                        "{} (gave up after {} attempts)",
                        failure.message,
                        attempt + 1
                    ),
                });
            }
            let delay = match failure.retry_after {
                Some(wait) => wait.min(Duration::from_secs_f64(config.max_retry_after_secs)),
                None => backoff_delay(config, attempt),
            };
            tracing::warn!(
                "{url}: {}; retry {} of {} in {:.2} s",
                failure.message,
                attempt + 1,
                config.max_retries,
                delay.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send_once(&self, url: &str, body: &Value) -> Result<Value, Failure> {
        let mut request = self.client.post(url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|err| Failure {
            retryable: !err.is_builder(),
            retry_after: None,
            message: describe_transport_error(&err),
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = response.bytes().await.map_err(|err| Failure {
            retryable: true,
            retry_after: None,
            message: format!(
                "HTTP {status}: reading the response failed: {}",
                describe_transport_error(&err)
            ),
        })?;
        if !status.is_success() {
            return Err(Failure {
                retryable: status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error(),
                retry_after,
                message: format!("HTTP {status}: {}", server_error_message(&bytes)),
            });
        }
        serde_json::from_slice(&bytes).map_err(|err| Failure {
            retryable: false,
            retry_after: None,
            message: format!(
                "HTTP {status} but the body is not valid JSON ({err}); it starts with {:?}",
                snippet(&bytes)
            ),
        })
    }
}

fn describe_transport_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "connection dropped while reading the body"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

fn backoff_delay(config: &HttpConfig, attempt: u32) -> Duration {
    let exponential = config.initial_backoff_secs * 2f64.powi(attempt.min(60) as i32);
    let capped = exponential.min(config.max_backoff_secs);
    let jitter: f64 = rand::rng().random_range(0.5..=1.0);
    Duration::from_secs_f64(capped * jitter)
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The message of an error body: OpenAI's `{"error": {"message"}}`, `{"error": "..."}`,
/// FastAPI's `{"detail": ...}`, `{"message"}`, else the body text.
fn server_error_message(bytes: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        let candidates = [
            value.pointer("/error/message"),
            value.get("error"),
            value.get("detail"),
            value.get("message"),
        ];
        for candidate in candidates.into_iter().flatten() {
            match candidate {
                Value::String(text) => return text.clone(),
                Value::Null | Value::Object(_) => continue,
                other => return other.to_string(),
            }
        }
    }
    let text = snippet(bytes);
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (0.0..1e9)
            .contains(&seconds)
            .then(|| Duration::from_secs_f64(seconds));
    }
    let at = parse_http_date(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

/// Seconds since the Unix epoch of an IMF-fixdate.
fn parse_http_date(value: &str) -> Option<i64> {
    let (_weekday, rest) = value.split_once(", ")?;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|name| name == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut clock = time.split(':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

// ---------------------------------------------------------------------------------------------
// Response parsing.

#[derive(Debug, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: usize,
    #[serde(default)]
    completion_tokens: usize,
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    choices: Vec<ChatChoice>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct ChatChoice {
    #[serde(default)]
    index: usize,
    message: ChatChoiceMessage,
    finish_reason: Option<String>,
    logprobs: Option<ChatLogprobs>,
}

#[derive(Debug, Deserialize)]
struct ChatChoiceMessage {
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChatLogprobs {
    content: Option<Vec<ChatTokenLogprob>>,
}

#[derive(Debug, Deserialize)]
struct ChatTokenLogprob {
    token: String,
    logprob: Option<f64>,
    #[serde(default)]
    id: Option<u32>,
    #[serde(default)]
    top_logprobs: Option<Vec<ChatTopLogprob>>,
}

#[derive(Debug, Deserialize)]
struct ChatTopLogprob {
    token: String,
    logprob: Option<f64>,
    #[serde(default)]
    id: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct TextResponse {
    choices: Vec<TextChoice>,
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct TextChoice {
    #[serde(default)]
    index: usize,
    text: String,
    finish_reason: Option<String>,
    logprobs: Option<TextLogprobs>,
}

#[derive(Debug, Deserialize)]
struct TextLogprobs {
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    token_logprobs: Vec<Option<f64>>,
    #[serde(default)]
    top_logprobs: Vec<Option<OrderedLogprobs>>,
    /// mirrorsim's extension: the ids of `tokens`.
    #[serde(default)]
    token_ids: Option<Vec<u32>>,
}

/// A `{token: logprob}` object read in document order (serde_json's map would sort it).
#[derive(Debug)]
struct OrderedLogprobs(Vec<(String, f64)>);

impl<'de> Deserialize<'de> for OrderedLogprobs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedLogprobs;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object of token → logprob")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedLogprobs, A::Error> {
                let mut entries = Vec::new();
                while let Some((token, logprob)) = map.next_entry::<String, Option<f64>>()? {
                    entries.push((token, logprob.unwrap_or(f64::NEG_INFINITY)));
                }
                Ok(OrderedLogprobs(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn finish_reason(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// vLLM's `return_tokens_as_token_ids` writes tokens as `token_id:123`.
fn token_id_of(token: &str, explicit: Option<u32>) -> u32 {
    explicit
        .or_else(|| token.strip_prefix("token_id:")?.parse().ok())
        .unwrap_or(UNKNOWN_TOKEN_ID)
}

fn sorted_top(mut top: Vec<(String, u32, f64)>) -> Vec<(String, u32, f64)> {
    top.sort_by(|a, b| b.2.total_cmp(&a.2));
    top
}

/// Per-choice completion token counts. OpenAI's usage gives only the total over the `n`
/// choices (`None` when the server sent no usage). The total is authoritative: a single choice
/// gets it; several get their logprob counts when those add up to it, else shares of it in
/// proportion to their logprob counts (or text lengths), by largest remainder so that the counts
/// add up to the total. (Servers differ on whether an end-of-sequence token shows in logprobs.)
fn completion_token_counts(
    total: Option<usize>,
    texts: &[&str],
    counted: &[Option<usize>],
) -> Vec<usize> {
    let all_counted = counted.iter().all(Option::is_some);
    let counts: Vec<usize> = counted.iter().map(|count| count.unwrap_or(0)).collect();
    let Some(total) = total else {
        return counts;
    };
    if texts.len() == 1 {
        return vec![total];
    }
    if all_counted && counts.iter().sum::<usize>() == total {
        return counts;
    }
    let weights: Vec<f64> = if all_counted {
        counts.iter().map(|&count| count as f64).collect()
    } else {
        texts
            .iter()
            .map(|text| text.chars().count() as f64)
            .collect()
    };
    let weight_sum: f64 = weights.iter().sum();
    let weights = if weight_sum > 0.0 {
        weights
    } else {
        vec![1.0; texts.len()]
    };
    let weight_sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights
        .iter()
        .map(|weight| total as f64 * weight / weight_sum)
        .collect();
    let mut shares: Vec<usize> = exact.iter().map(|share| share.floor() as usize).collect();
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let assigned: usize = shares.iter().sum();
    for &index in order.iter().take(total.saturating_sub(assigned)) {
        shares[index] += 1;
    }
    shares
}

fn parse_generate_response(
    url: &str,
    chat: bool,
    expected: usize,
    body: Value,
) -> Result<Vec<Completion>, LlmError> {
    let shape_error = |message: String| LlmError::Http {
        url: url.to_string(),
        message,
    };
    struct Parsed {
        index: usize,
        text: String,
        finish: FinishReason,
        logprobs: Option<Vec<TokenLogprobs>>,
    }
    let (mut parsed, usage) = if chat {
        let response: ChatResponse = serde_json::from_value(body)
            .map_err(|err| shape_error(format!("unexpected chat completion response: {err}")))?;
        let parsed = response
            .choices
            .into_iter()
            .map(|choice| {
                let logprobs =
                    choice
                        .logprobs
                        .and_then(|logprobs| logprobs.content)
                        .map(|content| {
                            content
                                .into_iter()
                                .map(|entry| TokenLogprobs {
                                    token_id: token_id_of(&entry.token, entry.id),
                                    logprob: entry.logprob.unwrap_or(f64::NEG_INFINITY),
                                    top: sorted_top(
                                        entry
                                            .top_logprobs
                                            .unwrap_or_default()
                                            .into_iter()
                                            .map(|top| {
                                                let id = token_id_of(&top.token, top.id);
                                                let logprob =
                                                    top.logprob.unwrap_or(f64::NEG_INFINITY);
                                                (top.token, id, logprob)
                                            })
                                            .collect(),
                                    ),
                                    token: entry.token,
                                })
                                .collect::<Vec<_>>()
                        });
                Parsed {
                    index: choice.index,
                    text: choice.message.content.unwrap_or_default(),
                    finish: finish_reason(choice.finish_reason.as_deref()),
                    logprobs,
                }
            })
            .collect::<Vec<_>>();
        (parsed, response.usage)
    } else {
        let response: TextResponse = serde_json::from_value(body)
            .map_err(|err| shape_error(format!("unexpected completion response: {err}")))?;
        let mut parsed = Vec::with_capacity(response.choices.len());
        for choice in response.choices {
            let logprobs = match choice.logprobs {
                None => None,
                Some(logprobs) => {
                    let count = logprobs.tokens.len();
                    if logprobs.token_logprobs.len() != count
                        || logprobs
                            .token_ids
                            .as_ref()
                            .is_some_and(|ids| ids.len() != count)
                        || (!logprobs.top_logprobs.is_empty()
                            && logprobs.top_logprobs.len() != count)
                    {
                        return Err(shape_error(format!(
                            "choice {}: logprobs arrays of different lengths",
                            choice.index
                        )));
                    }
                    let mut tops = logprobs.top_logprobs.into_iter();
                    let entries = logprobs
                        .tokens
                        .into_iter()
                        .zip(logprobs.token_logprobs)
                        .enumerate()
                        .map(|(position, (token, logprob))| {
                            let explicit = logprobs
                                .token_ids
                                .as_ref()
                                .and_then(|ids| ids.get(position).copied());
                            let top = tops
                                .next()
                                .flatten()
                                .map(|top| {
                                    top.0
                                        .into_iter()
                                        .map(|(text, logprob)| {
                                            let id = token_id_of(&text, None);
                                            (text, id, logprob)
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            TokenLogprobs {
                                token_id: token_id_of(&token, explicit),
                                logprob: logprob.unwrap_or(f64::NEG_INFINITY),
                                top: sorted_top(top),
                                token,
                            }
                        })
                        .collect();
                    Some(entries)
                }
            };
            parsed.push(Parsed {
                index: choice.index,
                text: choice.text,
                finish: finish_reason(choice.finish_reason.as_deref()),
                logprobs,
            });
        }
        (parsed, response.usage)
    };
    parsed.sort_by_key(|choice| choice.index);
    if parsed.len() != expected {
        return Err(shape_error(format!(
            "asked for n = {expected} choices, the server returned {}",
            parsed.len()
        )));
    }
    let texts: Vec<&str> = parsed.iter().map(|choice| choice.text.as_str()).collect();
    let counted: Vec<Option<usize>> = parsed
        .iter()
        .map(|choice| choice.logprobs.as_ref().map(Vec::len))
        .collect();
    let counts = completion_token_counts(
        usage.as_ref().map(|usage| usage.completion_tokens),
        &texts,
        &counted,
    );
    let prompt_tokens = usage.map_or(0, |usage| usage.prompt_tokens);
    Ok(parsed
        .into_iter()
        .zip(counts)
        .map(|(choice, completion_tokens)| Completion {
            text: choice.text,
            prompt_tokens,
            completion_tokens,
            finish_reason: choice.finish,
            logprobs: choice.logprobs,
        })
        .collect())
}

/// The prompt a choice continuation is scored on: the continuation appended to the final
/// assistant message (a new assistant message when the last one is not the assistant's), and
/// that message continued.
fn choice_prompt(prompt: &Prompt, continuation: &str) -> Prompt {
    match prompt {
        Prompt::Chat { messages, .. } => {
            let mut messages = messages.clone();
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => last.content.push_str(continuation),
                _ => messages.push(ChatMessage::new("assistant", continuation)),
            }
            Prompt::Chat {
                messages,
                continue_final: true,
            }
        }
        Prompt::Text { text } => Prompt::Text {
            text: format!("{text}{continuation}"),
        },
    }
}

/// The labels' renormalised distribution from one position's top log-probabilities.
fn label_distribution(
    labels: &[String],
    label_ids: &BTreeMap<String, u32>,
    top: &[(String, u32, f64)],
) -> (Vec<f64>, Vec<String>) {
    let logprobs: Vec<Option<f64>> = labels
        .iter()
        .map(|label| {
            let wanted_id = label_ids.get(label).copied();
            // Entries are best first: the first match is the label's most likely token.
            top.iter()
                .find(|(text, id, _)| match wanted_id {
                    Some(wanted) if *id != UNKNOWN_TOKEN_ID => *id == wanted,
                    _ => text == label,
                })
                .map(|entry| entry.2)
                .filter(|logprob| logprob.is_finite())
        })
        .collect();
    let missing = labels
        .iter()
        .zip(&logprobs)
        .filter(|(_, logprob)| logprob.is_none())
        .map(|(label, _)| label.clone())
        .collect();
    let max = logprobs
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logprobs
        .iter()
        .map(|logprob| logprob.map_or(0.0, |lp| (lp - max).exp()))
        .collect();
    let sum: f64 = weights.iter().sum();
    let distribution = if sum > 0.0 {
        weights.iter().map(|weight| weight / sum).collect()
    } else {
        weights
    };
    (distribution, missing)
}

impl Backend for HttpBackend {
    fn model_id(&self) -> String {
        format!("{}#{}", self.shared.base_url, self.shared.config.model)
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        let mut futures = Vec::with_capacity(requests.len());
        for (index, request) in requests.iter().enumerate() {
            self.check_endpoint(&request.prompt)?;
            if request.params.n == 0 {
                return Err(LlmError::BadRequest(format!(
                    "generate request {index}: n must be at least 1"
                )));
            }
            let (endpoint, body) =
                request_body(&self.shared.config, &request.prompt, &request.params);
            let chat = matches!(request.prompt, Prompt::Chat { .. });
            let expected = request.params.n;
            let shared = Arc::clone(&self.shared);
            let url = shared.url(&endpoint);
            futures.push(async move {
                let response = shared.post_json(url.clone(), body).await?;
                parse_generate_response(&url, chat, expected, response).map_err(|err| match err {
                    LlmError::Http { url, message } => LlmError::Http {
                        url,
                        message: format!("generate request {index}: {message}"),
                    },
                    other => other,
                })
            });
        }
        self.run_all(futures)
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        let config = &self.shared.config;
        let top_logprobs = config.choice_top_logprobs;
        let mut futures = Vec::new();
        for (request_index, request) in requests.iter().enumerate() {
            self.check_endpoint(&request.prompt)?;
            if request.labels.is_empty() {
                return Err(LlmError::BadRequest(format!(
                    "choice request {request_index}: no labels"
                )));
            }
            let allowed_ids: Option<Vec<u32>> =
                if config.vllm_extras && !config.label_token_ids.is_empty() {
                    let mut ids = Vec::with_capacity(request.labels.len());
                    for label in &request.labels {
                        let id = config.label_token_ids.get(label).ok_or_else(|| {
                            LlmError::BadRequest(format!(
                                "choice request {request_index}: label {label:?} has no entry in \
                                 the HTTP backend's `label_token_ids`"
                            ))
                        })?;
                        ids.push(*id);
                    }
                    Some(ids)
                } else {
                    None
                };
            for (continuation_index, continuation) in request.continuations.iter().enumerate() {
                let prompt = choice_prompt(&request.prompt, continuation);
                let params = SamplingParams {
                    temperature: 0.0,
                    top_p: 1.0,
                    top_k: 0,
                    max_tokens: 1,
                    stop: Vec::new(),
                    seed: 0,
                    n: 1,
                    logprobs: Some(top_logprobs.max(request.labels.len())),
                };
                let (endpoint, mut body) = request_body(config, &prompt, &params);
                if let (Some(ids), Some(fields)) = (&allowed_ids, body.as_object_mut()) {
                    fields.insert("allowed_token_ids".into(), json!(ids));
                }
                let chat = matches!(prompt, Prompt::Chat { .. });
                let labels = request.labels.clone();
                let shared = Arc::clone(&self.shared);
                let url = shared.url(&endpoint);
                futures.push(async move {
                    let response = Arc::clone(&shared).post_json(url.clone(), body).await?;
                    let name = format!(
                        "choice request {request_index}, continuation {continuation_index}"
                    );
                    let completion = parse_generate_response(&url, chat, 1, response)
                        .map_err(|err| LlmError::Http {
                            url: url.clone(),
                            message: format!("{name}: {err}"),
                        })?
                        .pop();
                    let first_token = completion
                        .as_ref()
                        .and_then(|completion| completion.logprobs.as_ref())
                        .and_then(|logprobs| logprobs.first());
                    let Some(first_token) = first_token else {
                        return Err(LlmError::Http {
                            url,
                            message: format!(
                                "{name}: the response carries no logprobs for a generated token"
                            ),
                        });
                    };
                    let (distribution, missing) = label_distribution(
                        &labels,
                        &shared.config.label_token_ids,
                        &first_token.top,
                    );
                    if missing.len() == labels.len() {
                        let seen: Vec<&str> = first_token
                            .top
                            .iter()
                            .map(|(text, _, _)| text.as_str())
                            .collect();
                        return Err(LlmError::Http {
                            url,
                            message: format!(
                                "{name}: none of the labels {labels:?} is among the {} top tokens \
                                 the server returned: {seen:?}",
                                first_token.top.len()
                            ),
                        });
                    }
                    let prompt_tokens = completion.map_or(0, |completion| completion.prompt_tokens);
                    Ok((request_index, distribution, missing, prompt_tokens))
                });
            }
        }
        let scored = self.run_all(futures)?;
        let mut results: Vec<ChoiceScores> = requests
            .iter()
            .map(|request| ChoiceScores {
                distributions: Vec::with_capacity(request.continuations.len()),
                missing_labels: Vec::with_capacity(request.continuations.len()),
                prompt_tokens: 0,
            })
            .collect();
        // `run_all` keeps the order, so continuations arrive in order within each request.
        for (request_index, distribution, missing, prompt_tokens) in scored {
            let result = &mut results[request_index];
            result.distributions.push(distribution);
            result.missing_labels.push(missing);
            result.prompt_tokens += prompt_tokens;
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_matches_known_epoch_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 CET"), None);
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn shared_out_token_counts_add_up_to_the_total() {
        let counts =
            completion_token_counts(Some(10), &["aaa", "a", "aaaaaa"], &[None, None, None]);
        assert_eq!(counts, vec![3, 1, 6]);
        // Logprob counts that add up to the total are used as they are ...
        let counted = completion_token_counts(Some(11), &["x", "y"], &[Some(4), Some(7)]);
        assert_eq!(counted, vec![4, 7]);
        // ... else the total is shared out in their proportion.
        let scaled = completion_token_counts(Some(9), &["x", "y"], &[Some(4), Some(7)]);
        assert_eq!(scaled.iter().sum::<usize>(), 9);
        assert_eq!(scaled, vec![3, 6]);
        assert_eq!(
            completion_token_counts(Some(5), &["x"], &[Some(6)]),
            vec![5]
        );
        assert_eq!(
            completion_token_counts(None, &["x", "y"], &[Some(2), Some(3)]),
            vec![2, 3]
        );
    }

    #[test]
    fn backoff_grows_and_stays_within_jitter_bounds() {
        let config = HttpConfig {
            initial_backoff_secs: 0.1,
            max_backoff_secs: 1.0,
            ..HttpConfig::new("http://127.0.0.1:1/v1", "m")
        };
        for attempt in 0..8 {
            let nominal = (0.1 * 2f64.powi(attempt as i32)).min(1.0);
            let delay = backoff_delay(&config, attempt).as_secs_f64();
            assert!(
                delay >= nominal * 0.5 - 1e-9 && delay <= nominal + 1e-9,
                "{delay}"
            );
        }
    }

    #[test]
    fn label_distribution_renormalises_and_reports_missing_labels() {
        let top = vec![
            ("B".to_string(), UNKNOWN_TOKEN_ID, (0.5f64).ln()),
            ("x".to_string(), UNKNOWN_TOKEN_ID, (0.3f64).ln()),
            ("A".to_string(), UNKNOWN_TOKEN_ID, (0.1f64).ln()),
        ];
        let labels = vec!["A".to_string(), "B".to_string(), "C".to_string()];
        let (distribution, missing) = label_distribution(&labels, &BTreeMap::new(), &top);
        assert!((distribution[0] - 1.0 / 6.0).abs() < 1e-12);
        assert!((distribution[1] - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(distribution[2], 0.0);
        assert_eq!(missing, vec!["C".to_string()]);
    }
}
