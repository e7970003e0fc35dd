//! mirrorsim-llm: everything that talks to a language model.
//!
//! Every later stage uses the [`Backend`] interface; the local engine (own decoder on candle)
//! and the HTTP client (any OpenAI-compatible server) both implement it.

pub mod backend;
pub mod chat_template;
pub mod default_model;
pub mod engine;
pub mod gguf;
pub mod gguf_export;
pub mod http;
pub mod model;
pub mod sampling;
pub mod tokenizer;

pub use backend::{
    Backend, ChatMessage, ChoiceRequest, ChoiceScores, Completion, ContinuationRequest,
    ContinuationScores, FinishReason, GenerateRequest, LlmError, Prompt, SamplingParams,
    TokenLogprobs,
};
