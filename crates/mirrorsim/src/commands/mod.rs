pub mod chat;
pub mod data;
pub mod demo;
pub mod distill;
pub mod model_arg;
pub mod scenes;
pub mod serve_llm;
