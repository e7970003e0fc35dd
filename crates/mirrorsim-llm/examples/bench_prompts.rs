//! Our engine's side of bench/llm/run.sh: the same measurements as the Python peers, on the
//! prompts in bench/llm/prompts.json; prints one JSON object on stdout.
//!
//! cargo run --release -p mirrorsim-llm --example bench_prompts -- MODEL PROMPTS_JSON
//!
//! MIRRORSIM_CUDA=N runs on CUDA device N (build with `--features cuda`); MIRRORSIM_MATMUL=bf16
//! multiplies the dense layers in bf16 on AMX (the row is then named "mirrorsim bf16").

use std::path::PathBuf;
use std::time::Instant;

use mirrorsim_llm::engine::{EngineOptions, LocalEngine, MatmulPrecision};
use mirrorsim_llm::{Backend, ChoiceRequest, GenerateRequest, Prompt, SamplingParams};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error>;

fn best_of<T>(
    repeats: usize,
    mut run: impl FnMut() -> Result<T, BoxError>,
) -> Result<(f64, T), BoxError> {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..repeats {
        let started = Instant::now();
        let value = run()?;
        let seconds = started.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|(fastest, _)| seconds < *fastest) {
            best = Some((seconds, value));
        }
    }
    best.ok_or_else(|| "no repeat ran".into())
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn greedy(text: &str, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text {
            text: text.to_string(),
        },
        params: SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..SamplingParams::default()
        },
    }
}

/// Decode tokens/s: time of `new_tokens` steps minus time of 1 step (prefill + first token),
/// over the tokens generated after the first.
fn decode_rate(engine: &LocalEngine, texts: &[String], new_tokens: usize) -> Result<f64, BoxError> {
    let short: Vec<_> = texts.iter().map(|text| greedy(text, 1)).collect();
    let long: Vec<_> = texts.iter().map(|text| greedy(text, new_tokens)).collect();
    let (prefill_seconds, _) = best_of(2, || Ok(engine.generate(&short)?))?;
    let (total_seconds, completions) = best_of(1, || Ok(engine.generate(&long)?))?;
    let generated: usize = completions
        .iter()
        .flatten()
        .map(|completion| completion.completion_tokens.saturating_sub(1))
        .sum();
    Ok(generated as f64 / (total_seconds - prefill_seconds).max(1e-9))
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_prompts MODEL PROMPTS_JSON";
    let model = PathBuf::from(args.next().ok_or(usage)?);
    let prompts: Value =
        serde_json::from_str(&std::fs::read_to_string(args.next().ok_or(usage)?)?)?;
    let text = |value: &Value| {
        value
            .as_str()
            .map(str::to_string)
            .ok_or("prompts.json: expected a string")
    };

    let cuda_device = mirrorsim_llm::engine::cuda_device_from_env()?;
    let matmul = mirrorsim_llm::engine::matmul_from_env()?;
    let options = EngineOptions {
        cuda_device,
        matmul,
        ..EngineOptions::default()
    };
    let engine = LocalEngine::load(&model, options)?;
    let tokenizer = engine.tokenizer();
    let prefill_text = text(&prompts["prefill_text"])?;
    let prefill_tokens = tokenizer.encode(&prefill_text, false)?.len();
    engine.generate(&[greedy("warm-up", 1)])?;
    let (prefill_seconds, _) = best_of(3, || Ok(engine.generate(&[greedy(&prefill_text, 1)])?))?;

    let decode_texts = prompts["decode_texts"]
        .as_array()
        .ok_or("prompts.json: decode_texts")?
        .iter()
        .map(text)
        .collect::<Result<Vec<_>, _>>()?;
    let new_tokens = prompts["decode_new_tokens"]
        .as_u64()
        .ok_or("prompts.json: decode_new_tokens")? as usize;
    let decode_b1 = decode_rate(&engine, &decode_texts[..1], new_tokens)?;
    let decode_b8 = decode_rate(
        &engine,
        &decode_texts[..8.min(decode_texts.len())],
        new_tokens,
    )?;

    let scene = &prompts["scene"];
    let strings = |value: &Value| -> Result<Vec<String>, BoxError> {
        value
            .as_array()
            .ok_or("prompts.json: expected a list")?
            .iter()
            .map(|item| text(item).map_err(BoxError::from))
            .collect()
    };
    let request = ChoiceRequest {
        prompt: Prompt::Text {
            text: text(&scene["prompt_text"])?,
        },
        continuations: strings(&scene["continuations"])?,
        labels: strings(&scene["labels"])?,
    };
    let (score_seconds, scores) = best_of(2, || {
        Ok(engine.score_choices(std::slice::from_ref(&request))?)
    })?;
    let distribution_sums: Vec<f64> = scores[0]
        .distributions
        .iter()
        .map(|distribution| distribution.iter().sum())
        .collect();

    let result = json!({
        "engine": match matmul {
            MatmulPrecision::F32 => "mirrorsim",
            MatmulPrecision::Bf16 => "mirrorsim bf16",
        },
        "version": env!("CARGO_PKG_VERSION"),
        "threads": rayon::current_num_threads(),
        "device": cuda_device.map_or("cpu".to_string(), |n| format!("cuda:{n}")),
        "weights": "as loaded by LocalEngine",
        "prefill_tokens": prefill_tokens,
        "prefill_tok_s": prefill_tokens as f64 / prefill_seconds,
        "decode_b1_tok_s": decode_b1,
        "decode_b8_tok_s": decode_b8,
        "score_scene_s": score_seconds,
        "score_distribution_sums": distribution_sums,
        "peak_rss_mb": peak_rss_mb(),
    });
    println!("{result}");
    Ok(())
}
