//! Logits of a model plus a PEFT adapter (merged at load) for a text, as JSON on stdout, so
//! `bench/train/check_peft.py` can compare them with PEFT's own loading of the same adapter.
//!
//! cargo run --release -p mirrorsim-train --example adapter_logits -- MODEL ADAPTER_DIR TEXT

use mirrorsim_llm::engine::{EngineOptions, LocalEngine};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, adapter, text] = args.as_slice() else {
        return Err("usage: adapter_logits MODEL ADAPTER_DIR TEXT".into());
    };
    let engine = LocalEngine::load(
        model.as_ref(),
        EngineOptions {
            adapter: Some(adapter.into()),
            ..EngineOptions::default()
        },
    )?;
    let tokens = engine.tokenizer().encode(text, false)?;
    let logits = engine.logits(&tokens)?;
    println!(
        "{}",
        serde_json::json!({ "tokens": tokens, "logits": logits })
    );
    Ok(())
}
