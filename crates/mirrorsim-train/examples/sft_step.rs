//! Time of one LoRA SFT step on SmolLM2-135M (or the model given) at sequence length 512:
//! forward, backward and optimizer separately, batch 1, LoRA r=16 α=32 on all seven projections,
//! loss on the second half of a fixed token sequence. The last line is JSON (median of the steps
//! after the first, peak RSS).
//!
//! cargo run --release -p mirrorsim-train --example sft_step [-- MODEL [SEQ_LEN [STEPS]]]
//!
//! MIRRORSIM_CUDA=N trains on CUDA device N (build with `--features cuda`); MIRRORSIM_MATMUL=bf16
//! multiplies the frozen base weights in bf16 on Intel AMX (the row is "mirrorsim bf16").

use std::time::Instant;

use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::model::LoraConfig;
use mirrorsim_train::data::TokenSequence;
use mirrorsim_train::optim::{AdamW, AdamWConfig};
use mirrorsim_train::session::reply_logprobs;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = match args.get(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => mirrorsim_llm::default_model::default_model_path()?,
    };
    let seq_len: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let cuda_device = mirrorsim_llm::engine::cuda_device_from_env()?;
    let options = EngineOptions {
        cuda_device,
        ..EngineOptions::default()
    };
    let engine = LocalEngine::load(&model_path, options)?;
    let (mut model, _, _, _) = engine.into_parts();
    let matmul = mirrorsim_llm::engine::matmul_from_env()?;
    if matmul == mirrorsim_llm::engine::MatmulPrecision::Bf16 {
        model.pack_bf16(mirrorsim_llm::model::amx::amx()?, true)?;
    }
    let device = model.device().clone();
    model.attach_lora(&LoraConfig::default(), 0)?;
    let tokens: Vec<u32> = (0..seq_len as u32)
        .map(|i| (i * 7919) % 49000 + 17)
        .collect();
    let sequence = TokenSequence {
        tokens,
        reply_start: seq_len / 2,
    };
    let mut optimizer = AdamW::new(model.lora_parameters(), AdamWConfig::default())?;
    let mut timed = Vec::new();
    for step in 0..steps {
        let started = Instant::now();
        let (sums, _) = reply_logprobs(&model, &[&sequence], true)?;
        let loss = sums.sum_all()?.neg()?;
        device.synchronize()?;
        let forward = started.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        device.synchronize()?;
        let backward = started.elapsed().as_secs_f64() - forward;
        let grads: Vec<_> = optimizer
            .params()
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned().ok_or("missing gradient"))
            .collect::<Result<_, _>>()?;
        optimizer.step(&grads, 1e-4)?;
        device.synchronize()?;
        let total = started.elapsed().as_secs_f64();
        println!(
            "step {step}: forward {forward:.2} s, backward {backward:.2} s, optimizer {:.2} s, total {total:.2} s = {:.0} tokens/s",
            total - forward - backward,
            seq_len as f64 / total
        );
        if step > 0 || steps == 1 {
            timed.push(total);
        }
    }
    timed.sort_by(f64::total_cmp);
    let median = timed[timed.len() / 2];
    let peak_rss_mib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN);
    println!(
        "{{\"engine\": \"{}\", \"device\": \"{}\", \"seq_len\": {seq_len}, \"step_s\": {median:.3}, \"tokens_per_s\": {:.1}, \"peak_rss_mib\": {peak_rss_mib:.0}}}",
        match matmul {
            mirrorsim_llm::engine::MatmulPrecision::F32 => "mirrorsim",
            mirrorsim_llm::engine::MatmulPrecision::Bf16 => "mirrorsim bf16",
        },
        cuda_device.map_or("cpu".to_string(), |n| format!("cuda:{n}")),
        seq_len as f64 / median
    );
    Ok(())
}
