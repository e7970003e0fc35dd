//! `mirrorsim train sft|dpo`: LoRA fine-tuning of a local model on the distilled sets.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use mirrorsim_llm::model::LoraConfig;
use mirrorsim_train::optim::AdamWConfig;
use mirrorsim_train::runs::{run_dpo, run_sft, RunPaths};
use mirrorsim_train::session::{TrainConfig, TrainSummary};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Supervised fine-tuning on an SFT file (`{"messages": [...]}` per line; the loss covers
    /// the last, assistant message only).
    Sft(SftArgs),
    /// Sigmoid DPO on a DPO file (`{"prompt", "chosen", "rejected"}` per line), starting from
    /// the model plus an optional SFT adapter (the reference is that starting policy).
    Dpo(DpoArgs),
}

#[derive(Debug, Args)]
pub struct CommonTrainArgs {
    /// Base model: a GGUF file or an HF model directory (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training file (JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Held-out file; without it --eval-fraction of --data is held out.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Run directory: loss.jsonl, checkpoints/, the PEFT adapter, train_summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Go on from the latest checkpoint in --out (same config and data required).
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f32,
    /// Projections that get adapters.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    target_modules: Vec<String>,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 8)]
    grad_accum: usize,
    #[arg(long, default_value_t = 0.05)]
    warmup_ratio: f64,
    /// Global gradient-norm clip (0 disables).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Longest sequence in tokens; longer ones lose their oldest history lines first.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    #[arg(long, default_value_t = 0.05)]
    eval_fraction: f64,
    /// Held-out evaluation every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Checkpoint every N optimizer steps (0: at the end only).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the training summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SftArgs {
    #[command(flatten)]
    common: CommonTrainArgs,
}

#[derive(Debug, Args)]
pub struct DpoArgs {
    #[command(flatten)]
    common: CommonTrainArgs,
    /// SFT adapter to start from (trained further; its rank, α and modules are kept).
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
}

impl CommonTrainArgs {
    fn config(&self, beta: f64) -> TrainConfig {
        TrainConfig {
            lora: LoraConfig {
                rank: self.rank,
                alpha: self.alpha,
                dropout: self.lora_dropout,
                target_modules: self.target_modules.clone(),
            },
            optimizer: AdamWConfig {
                learning_rate: self.lr,
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            epochs: self.epochs,
            max_steps: self.max_steps,
            micro_batch: self.micro_batch,
            grad_accum: self.grad_accum,
            warmup_ratio: self.warmup_ratio,
            max_grad_norm: self.max_grad_norm,
            max_len: self.max_len,
            eval_fraction: self.eval_fraction,
            eval_every: self.eval_every,
            save_every: self.save_every,
            keep_checkpoints: self.keep_checkpoints,
            seed: self.seed,
            beta,
        }
    }

    fn paths(&self) -> anyhow::Result<RunPaths> {
        let model = super::model_arg::local_model_path(self.model.as_deref())?;
        Ok(RunPaths {
            model,
            data: self.data.clone(),
            eval_data: self.eval_data.clone(),
            out: self.out.clone(),
            cuda_device: super::model_arg::cuda_device(),
            matmul: super::model_arg::matmul(),
        })
    }
}

pub fn run(command: TrainCommand) -> anyhow::Result<()> {
    let (summary, json, out) = match command {
        TrainCommand::Sft(args) => {
            let c = &args.common;
            let paths = c.paths()?;
            let summary = run_sft(&paths, &c.config(0.1), c.resume, !c.json)
                .with_context(|| format!("SFT on {}", c.data.display()))?;
            (summary, c.json, c.out.clone())
        }
        TrainCommand::Dpo(args) => {
            let c = &args.common;
            let paths = c.paths()?;
            let summary = run_dpo(
                &paths,
                args.adapter.as_deref(),
                &c.config(args.beta),
                c.resume,
                !c.json,
            )
            .with_context(|| format!("DPO on {}", c.data.display()))?;
            (summary, c.json, c.out.clone())
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, &out);
    }
    Ok(())
}

fn print_summary(summary: &TrainSummary, out: &std::path::Path) {
    let loss = match (summary.first_loss, summary.last_loss) {
        (Some(first), Some(last)) => format!("loss {first:.4} → {last:.4}"),
        _ => "no step run".to_string(),
    };
    let eval: Vec<String> = summary
        .final_eval
        .iter()
        .map(|(name, value)| format!("{name} {value:.4}"))
        .collect();
    println!(
        "{}: {} steps on {} examples ({} held out), {loss}{}",
        summary.kind,
        summary.steps,
        summary.train_examples,
        summary.eval_examples,
        if eval.is_empty() {
            String::new()
        } else {
            format!(", {}", eval.join(", "))
        }
    );
    let t = &summary.truncation;
    if t.history_trimmed > 0 || t.hard_truncated > 0 {
        println!(
            "  {} of {} sequences shortened: {} history lines removed, {} cut hard",
            t.history_trimmed.max(t.hard_truncated),
            t.sequences,
            t.history_lines_removed,
            t.hard_truncated
        );
    }
    println!(
        "  {} tokens in {:.1} s = {:.0} tokens/s{}",
        summary.tokens_processed,
        summary.wall_seconds,
        summary.tokens_per_second,
        summary
            .resumed_from_step
            .map(|s| format!(" (resumed at step {s})"))
            .unwrap_or_default()
    );
    println!("  adapter (PEFT) in {}", out.display());
}
