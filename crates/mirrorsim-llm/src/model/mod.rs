//! Our own decoder models (HF tensor names), on candle.
//!
//! One file per family; [`llama`] covers Llama and Qwen2 (SmolLM2 is Llama).

pub mod amx;
pub mod config;
pub mod head;
pub mod llama;
pub mod lora;
pub mod ops;
pub mod random;

pub use config::LlamaConfig;
pub use llama::{KvCache, Llama, Positions};
pub use lora::{DropoutStream, LoraConfig};
