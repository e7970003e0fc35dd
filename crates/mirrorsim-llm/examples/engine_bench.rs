//! Speed of the local engine on SmolLM2-135M-Instruct (or the model named as the first argument):
//! prefill of a ~600-token prompt, decode at batch 1 and 8, scoring one scene (a ~600-token
//! prompt, 10 continuations of ~150 tokens) with and without the shared prefix, and dense f32
//! against Q4_1 quantised matmul for one layer-sized weight.
//!
//! cargo run --release -p mirrorsim-llm --example engine_bench [-- MODEL]
//!
//! `ENGINE_BENCH_ONLY=prefill,decode,score,score_shared,matmul` runs only the named sections (for
//! profiling); `ENGINE_BENCH_SCORE_BATCH=N` sets the engine's `max_score_batch`;
//! `MIRRORSIM_MATMUL=bf16` multiplies the dense layers in bf16 on AMX.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, GenerateRequest, LlmError, Prompt, SamplingParams,
};

const MOVIES: [&str; 12] = [
    "Toy Story (1995), animation, rated 5 stars: a cowboy doll feels threatened by a new space toy.",
    "Heat (1995), crime thriller, rated 4 stars: a detective hunts a master thief across Los Angeles.",
    "Babe (1995), family comedy, rated 3 stars: a pig raised by sheepdogs learns to herd sheep.",
    "Casino (1995), crime drama, rated 4 stars: greed and betrayal in a Las Vegas casino empire.",
    "Sabrina (1995), romance, rated 2 stars: a chauffeur's daughter between two wealthy brothers.",
    "GoldenEye (1995), action, rated 3 stars: James Bond stops a stolen satellite weapon.",
    "Jumanji (1995), adventure, rated 4 stars: a magical board game unleashes jungle dangers.",
    "Apollo 13 (1995), drama, rated 5 stars: astronauts improvise to survive a crippled spacecraft.",
    "Braveheart (1995), war epic, rated 4 stars: a Scottish rebel leads an uprising against England.",
    "Clueless (1995), comedy, rated 3 stars: a Beverly Hills teenager plays matchmaker at school.",
    "Seven (1995), crime thriller, rated 5 stars: two detectives track a killer using the seven sins.",
    "Sense and Sensibility (1995), period drama, rated 4 stars: two sisters navigate love and money.",
];

fn scene_messages(
    engine: &LocalEngine,
    target_tokens: usize,
) -> Result<Vec<ChatMessage>, LlmError> {
    let mut history = String::from("Here is what I watched recently, oldest first:\n");
    let mut i = 0;
    loop {
        let messages = vec![
            ChatMessage::new("system", "You simulate a real movie viewer choosing what to watch next."),
            ChatMessage::new(
                "user",
                format!("{history}\nOptions:\n[A] Heat\n[B] Babe\n[C] Casino\n[D] Sabrina\nThink, then answer."),
            ),
            ChatMessage::new("assistant", "Thought:"),
        ];
        let tokens = engine
            .prompt_tokens(&Prompt::Chat {
                messages: messages.clone(),
                continue_final: true,
            })?
            .len();
        if tokens >= target_tokens {
            return Ok(messages);
        }
        history.push_str(&format!("- {}\n", MOVIES[i % MOVIES.len()]));
        i += 1;
    }
}

fn continuation(
    engine: &LocalEngine,
    seed: usize,
    target_tokens: usize,
) -> Result<String, LlmError> {
    let mut text = String::new();
    let mut i = seed;
    while engine.tokenizer().encode(&text, false)?.len() < target_tokens {
        text.push_str(&format!(
            " I remember {} so I weigh how it compares.",
            MOVIES[i % MOVIES.len()].split(':').next().unwrap_or("")
        ));
        i += 7;
    }
    text.push_str("\nBehavior: [");
    Ok(text)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(p) => PathBuf::from(p),
        None => mirrorsim_llm::default_model::default_model_path()?,
    };
    let started = Instant::now();
    let mut options = EngineOptions {
        matmul: mirrorsim_llm::engine::matmul_from_env()?,
        ..EngineOptions::default()
    };
    if let Some(batch) = std::env::var("ENGINE_BENCH_SCORE_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        options.max_score_batch = batch;
    }
    let engine = LocalEngine::load(&path, options)?;
    println!(
        "model {} loaded in {:.2} s",
        engine.model_id(),
        started.elapsed().as_secs_f64()
    );
    println!("threads (rayon) {}", rayon::current_num_threads());
    let only = std::env::var("ENGINE_BENCH_ONLY").ok();
    let wanted = |section: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|s| s.trim() == section))
    };

    // Prefill: one ~600-token prompt, one generated token.
    let messages = scene_messages(&engine, 600)?;
    let prompt = Prompt::Chat {
        messages: messages.clone(),
        continue_final: true,
    };
    let prompt_len = engine.prompt_tokens(&prompt)?.len();
    let one = |prompt: Prompt, max_tokens: usize| GenerateRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..SamplingParams::default()
        },
    };
    if wanted("prefill") {
        engine.generate(&[one(prompt.clone(), 1)])?; // warm-up
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            engine.generate(&[one(prompt.clone(), 1)])?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "prefill: {prompt_len} tokens in {best:.3} s = {:.0} tokens/s",
            prompt_len as f64 / best
        );
    }

    // Decode: time for 65 tokens minus time for 1 token (the prefill), sampled so EOS is rare.
    let story = |seed: u64, max_tokens: usize| GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new(
                "user",
                format!("Write a long, detailed story about a dragon called number {seed}."),
            )],
            continue_final: false,
        },
        params: SamplingParams {
            temperature: 0.8,
            seed,
            max_tokens,
            ..SamplingParams::default()
        },
    };
    let decode_batches: &[usize] = if wanted("decode") { &[1, 8] } else { &[] };
    for &batch in decode_batches {
        let short: Vec<GenerateRequest> = (0..batch as u64).map(|s| story(s, 1)).collect();
        let long: Vec<GenerateRequest> = (0..batch as u64).map(|s| story(s, 65)).collect();
        let t = Instant::now();
        engine.generate(&short)?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = engine.generate(&long)?;
        let total = t.elapsed().as_secs_f64();
        let tokens: usize = out
            .iter()
            .flatten()
            .map(|c| c.completion_tokens.saturating_sub(1))
            .sum();
        println!(
            "decode batch {batch}: {tokens} tokens in {:.3} s = {:.1} tokens/s",
            total - prefill,
            tokens as f64 / (total - prefill)
        );
    }

    // Scoring one scene: ~600-token prompt, 10 continuations of ~150 tokens.
    let continuations: Vec<String> = (0..10)
        .map(|i| continuation(&engine, i, 150))
        .collect::<Result<_, _>>()?;
    let request = ChoiceRequest {
        prompt,
        continuations,
        labels: ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect(),
    };
    let share_modes: &[bool] = if wanted("score") {
        &[true, false]
    } else if wanted("score_shared") {
        &[true]
    } else {
        &[]
    };
    for &share in share_modes {
        let t = Instant::now();
        let scores = engine.score_choices_with(std::slice::from_ref(&request), share)?;
        println!(
            "score one scene (shared prefix: {share}): {:.3} s, {} prompt tokens read",
            t.elapsed().as_secs_f64(),
            scores[0].prompt_tokens
        );
    }

    if !wanted("matmul") {
        return Ok(());
    }
    // Dense f32 against Q4_1 quantised matmul for an MLP-sized weight (1536 x 576).
    let device = Device::Cpu;
    let weight = Tensor::randn(0f32, 0.05, (1536, 576), &device)?;
    let quantised = QMatMul::from_qtensor(QTensor::quantize(&weight, GgmlDType::Q4_1)?)?;
    for rows in [1usize, 8, 600] {
        let x = Tensor::randn(0f32, 1.0, (rows, 576), &device)?;
        let reps = if rows == 600 { 5 } else { 200 };
        let t = Instant::now();
        for _ in 0..reps {
            x.matmul(&weight.t()?)?;
        }
        let dense = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            quantised.forward(&x)?;
        }
        let quant = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "matmul {rows}x576 by 576x1536: f32 {:.3} ms, Q4_1 {:.3} ms",
            dense * 1e3,
            quant * 1e3
        );
    }
    Ok(())
}
