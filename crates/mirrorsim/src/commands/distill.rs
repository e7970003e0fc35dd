//! `mirrorsim rationales`, `mirrorsim score` and `mirrorsim distill`: the distillation stages.
//! Every LLM request goes through the run journal, so a rerun (or a run killed and started
//! again) answers from it and repeats no call.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use mirrorsim_distill::journal::{Journal, JournaledBackend};
use mirrorsim_distill::records::Role;
use mirrorsim_distill::select::Selector;
use mirrorsim_distill::stages::{
    run_distill, run_rationales, run_score, BackendMeter, DistillConfig, GenerateConfig,
    MeteredBackend, ScoreConfig, StageSummary,
};

use super::model_arg::ModelArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Strong,
    Weak,
}

#[derive(Debug, Args)]
pub struct RationalesArgs {
    /// Scenes JSONL (from `mirrorsim scenes`).
    #[arg(long)]
    scenes: PathBuf,
    /// Output JSONL (default: rationales.<role>.jsonl beside the scenes).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Rationales per scene.
    #[arg(long, default_value_t = 10)]
    n: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The run journal (default: journal.sqlite beside the output).
    #[arg(long)]
    journal: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[arg(long)]
    scenes: PathBuf,
    /// Rationale JSONL files (strong and weak).
    #[arg(long, num_args = 1.., required = true)]
    rationales: Vec<PathBuf>,
    /// Output JSONL (default: scores.jsonl beside the scenes).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seeds the sampled behaviours.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    journal: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SelectorArg {
    DeltaEu,
    Random,
    HitRateHigh,
    HitRateLow,
    TotalGap,
}

#[derive(Debug, Args)]
pub struct DistillArgs {
    #[arg(long)]
    scenes: PathBuf,
    #[arg(long)]
    scores: PathBuf,
    #[arg(long, num_args = 1.., required = true)]
    rationales: Vec<PathBuf>,
    /// Output folder for sft.jsonl, dpo.jsonl, direct.jsonl and distill.summary.json.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "delta-eu")]
    selector: SelectorArg,
    /// Scenes to keep (stratified by dataset and number of options).
    #[arg(long, default_value_t = 10_000)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

fn beside(file: &Path, name: &str) -> PathBuf {
    file.parent().unwrap_or(Path::new(".")).join(name)
}

fn open_journal(explicit: &Option<PathBuf>, out: &Path) -> anyhow::Result<Journal> {
    let path = explicit
        .clone()
        .unwrap_or_else(|| beside(out, "journal.sqlite"));
    Journal::open(&path).with_context(|| format!("opening the run journal {}", path.display()))
}

/// The stage's closing line (tokens in/out, wall time), the journal's share, where the time went
/// (inside the model versus the stage's own work: reading, journal, prompts, writing), and the
/// output path. `total_s` runs from opening the journal to the written output; loading the
/// model is reported on its own.
fn report(
    summary: &StageSummary,
    journaled: &JournaledBackend,
    meter: &BackendMeter,
    load_s: f64,
    total_s: f64,
    out: &Path,
) {
    let counts = journaled.counts();
    eprintln!("{summary}");
    eprintln!(
        "journal: {} answered from the journal, {} sent to the model",
        counts.hits, counts.misses
    );
    let outside_s = (total_s - meter.busy_s).max(0.0);
    eprintln!(
        "time: {total_s:.3} s total, {:.3} s in the model ({} calls), {outside_s:.3} s outside it \
         ({:.2} %); model loaded in {load_s:.1} s",
        meter.busy_s,
        meter.calls,
        100.0 * outside_s / total_s.max(1e-9)
    );
    println!("{}", out.display());
}

pub fn run_rationales_cmd(args: RationalesArgs) -> anyhow::Result<()> {
    let role = match args.role {
        RoleArg::Strong => Role::Strong,
        RoleArg::Weak => Role::Weak,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| beside(&args.scenes, &format!("rationales.{}.jsonl", role.name())));
    let load_started = Instant::now();
    let backend = args.model.load()?;
    let load_s = load_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let journal = open_journal(&args.journal, &out)?;
    let metered = MeteredBackend::new(backend.as_ref());
    let journaled = JournaledBackend::new(&metered, &journal);
    let config = GenerateConfig {
        n: args.n,
        temperature: args.temperature,
        top_p: args.top_p,
        max_tokens: args.max_tokens,
        seed: args.seed,
        ..GenerateConfig::default()
    };
    let summary = run_rationales(&args.scenes, &out, &journaled, role, &config)?;
    let total_s = started.elapsed().as_secs_f64();
    report(
        &summary,
        &journaled,
        &metered.meter(),
        load_s,
        total_s,
        &out,
    );
    Ok(())
}

pub fn run_score_cmd(args: ScoreArgs) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| beside(&args.scenes, "scores.jsonl"));
    let load_started = Instant::now();
    let backend = args.model.load()?;
    let load_s = load_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let journal = open_journal(&args.journal, &out)?;
    let metered = MeteredBackend::new(backend.as_ref());
    let journaled = JournaledBackend::new(&metered, &journal);
    let config = ScoreConfig {
        seed: args.seed,
        ..ScoreConfig::default()
    };
    let summary = run_score(&args.scenes, &args.rationales, &out, &journaled, &config)?;
    let total_s = started.elapsed().as_secs_f64();
    report(
        &summary,
        &journaled,
        &metered.meter(),
        load_s,
        total_s,
        &out,
    );
    Ok(())
}

pub fn run_distill_cmd(args: DistillArgs) -> anyhow::Result<()> {
    let selector = match args.selector {
        SelectorArg::DeltaEu => Selector::DeltaEu,
        SelectorArg::Random => Selector::Random,
        SelectorArg::HitRateHigh => Selector::HitRateHigh,
        SelectorArg::HitRateLow => Selector::HitRateLow,
        SelectorArg::TotalGap => Selector::TotalGap,
    };
    let config = DistillConfig {
        selector,
        top_k: args.top_k,
        seed: args.seed,
    };
    let (paths, summary) = run_distill(
        &args.scenes,
        &args.scores,
        &args.rationales,
        &args.out,
        &config,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "{} scenes: {} candidates (denoised, with a pair), {} kept by {} (top-K {})",
        summary.scenes,
        summary.candidates,
        summary.kept,
        summary.selector.name(),
        summary.top_k
    );
    for (reason, count) in &summary.dropped {
        println!("  dropped {count:>6}  {reason}");
    }
    for path in [&paths.sft, &paths.dpo, &paths.direct, &paths.summary] {
        println!("  wrote {}", path.display());
    }
    Ok(())
}
