//! mirrorsim-train: LoRA fine-tuning of mirrorsim's own decoder.
//!
//! - [`data`] reads SFT (`{"messages": [...]}`) and DPO (`{"prompt", "chosen", "rejected"}`)
//!   JSONL files, renders them with the model's chat template and marks the assistant tokens;
//! - [`optim`] is AdamW with warmup + cosine decay and global-norm clipping, its state saved
//!   with each checkpoint;
//! - [`sft`] and [`dpo`] are the two training loops; [`session`] holds what they share (run
//!   directory, loss log, checkpoints and exact resume).
//!
//! The base weights stay frozen; only the LoRA adapters (`mirrorsim_llm::model::lora`) train,
//! and the result is a PEFT adapter directory.

pub mod data;
pub mod dpo;
pub mod error;
pub mod optim;
pub mod runs;
pub mod session;
pub mod sft;

pub use error::TrainError;
