pub mod chat;
pub mod data;
pub mod demo;
pub mod scenes;
pub mod serve_llm;
