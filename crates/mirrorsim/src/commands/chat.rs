//! `mirrorsim chat`: one chat turn with a model, for a quick manual check.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use mirrorsim_llm::engine::LocalEngine;
use mirrorsim_llm::{Backend, ChatMessage, GenerateRequest, Prompt, SamplingParams};

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// What to say to the model.
    pub prompt: String,
    /// A GGUF file or an HF model directory; default: SmolLM2-135M-Instruct ($MIRRORSIM_MODEL,
    /// else models/, else fetched with scripts/fetch-model.sh).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A system message to put before the prompt.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    if args.temperature < 0.0 || !args.temperature.is_finite() {
        anyhow::bail!(
            "--temperature must be a finite number >= 0, got {}",
            args.temperature
        );
    }
    if args.max_tokens == 0 {
        anyhow::bail!("--max-tokens must be at least 1");
    }
    let model_path = super::model_arg::local_model_path(args.model.as_deref())?;
    let load_started = Instant::now();
    let engine = LocalEngine::load(&model_path, super::model_arg::engine_options())
        .with_context(|| format!("loading {}", model_path.display()))?;
    let load_seconds = load_started.elapsed().as_secs_f64();

    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", args.prompt));
    let request = GenerateRequest {
        prompt: Prompt::Chat {
            messages,
            continue_final: false,
        },
        params: SamplingParams {
            temperature: args.temperature,
            max_tokens: args.max_tokens,
            seed: args.seed,
            ..SamplingParams::default()
        },
    };
    let generate_started = Instant::now();
    let completions = engine
        .generate(std::slice::from_ref(&request))
        .context("generating the reply")?;
    let generate_seconds = generate_started.elapsed().as_secs_f64();
    let completion = completions
        .first()
        .and_then(|samples| samples.first())
        .context("the engine returned no completion")?;

    println!("{}", completion.text);
    eprintln!(
        "[{}: loaded in {load_seconds:.2} s; {} prompt + {} generated tokens in \
         {generate_seconds:.2} s ({:.1} tokens/s); finish: {:?}]",
        model_path.display(),
        completion.prompt_tokens,
        completion.completion_tokens,
        completion.completion_tokens as f64 / generate_seconds.max(1e-9),
        completion.finish_reason,
    );
    Ok(())
}
