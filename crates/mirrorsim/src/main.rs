//! The `mirrorsim` command line: a thin layer over the library crates, one subcommand per stage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

#[derive(Debug, Parser)]
#[command(
    name = "mirrorsim",
    version,
    about = "Build preference-aligned LLM user simulators from recommender logs",
    long_about = "mirrorsim turns logged recommendations and choices into listwise choice scenes, \
                  distils LLM decision rationales, fine-tunes a small LLM on them and serves it as \
                  a user simulator."
)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace) or a tracing directive.
    #[arg(long, global = true, default_value = "info", env = "MIRRORSIM_LOG")]
    log: String,

    /// Run local models on this CUDA device (a build with `--features cuda`); CPU without it.
    #[arg(long, global = true, env = "MIRRORSIM_CUDA", value_name = "ORDINAL")]
    cuda: Option<usize>,

    /// Precision of local models' matrix products on the CPU: f32 (the reference) or bf16 on
    /// Intel AMX (Xeon 4th generation and later) for the dense layers and attention: faster
    /// prefill, scoring and batched decoding (BENCHMARKS.md); choice probabilities move by a few
    /// thousandths. In training, the frozen base weights' products run in bf16 and the adapters,
    /// attention and optimizer in f32.
    #[arg(long, global = true, env = "MIRRORSIM_MATMUL", default_value = "f32", value_parser = ["f32", "bf16"])]
    matmul: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect a dataset as downloaded.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Build leakage-free listwise choice scenes (train + eval) from a dataset.
    Scenes(commands::scenes::ScenesArgs),
    /// Put a collaborative prior's pick into the scenes' prompts (train on what
    /// `eval --prior-in-prompt` scores), leakage-free.
    Hint(commands::hint::HintArgs),
    /// Write N decision rationales per scene with a strong or weak model (journaled).
    Rationales(commands::distill::RationalesArgs),
    /// Score rationales with a predictor model: its distribution over the option letters.
    Score(commands::distill::ScoreArgs),
    /// Select scenes by the uncertainty gap ΔEU and write SFT / DPO / direct training sets.
    Distill(commands::distill::DistillArgs),
    /// Run a pipeline file: scenes → rationales → scores → distillation, resumable.
    Run(commands::run::RunArgs),
    /// Chat with a model once, for a quick manual check.
    Chat(commands::chat::ChatArgs),
    /// Serve the local engine as an OpenAI-compatible HTTP server.
    ServeLlm(commands::serve_llm::ServeLlmArgs),
    /// Serve a simulator over a catalog as an HTTP JSON service (/v1/simulate, OpenAPI).
    Serve(commands::serve::ServeArgs),
    /// Run the demo: the embedded ml-latest-small data and the default SmolLM2 model.
    Demo(commands::demo::DemoArgs),
    /// Fine-tune a local model with LoRA (SFT, then DPO) on the distilled sets.
    #[command(subcommand)]
    Train(commands::train::TrainCommand),
    /// Merge a LoRA adapter into its base model and write GGUF (f16, q8_0) or safetensors.
    Export(commands::export::ExportArgs),
    /// Evaluate a simulator and classical baselines against real held-out choices.
    Eval(commands::eval::EvalArgs),
    /// Compare several runs' metrics.json in one HTML report.
    Report(commands::report::ReportArgs),
    /// Show a recommender's ranked lists to the simulator page by page; simulated metrics
    /// beside offline ones.
    SimulateRecs(commands::simulate_recs::SimulateRecsArgs),
    /// Write the simulator's choices on recommended slates as extra training interactions
    /// (RecBole .inter) and measure what they do to item-kNN / EASE.
    Augment(commands::augment::AugmentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    if let Err(err) = commands::model_arg::select_device(cli.cuda, &cli.matmul) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Scenes(args) => commands::scenes::run(args),
        Command::Hint(args) => commands::hint::run(args),
        Command::Rationales(args) => commands::distill::run_rationales_cmd(args),
        Command::Score(args) => commands::distill::run_score_cmd(args),
        Command::Distill(args) => commands::distill::run_distill_cmd(args),
        Command::Run(args) => commands::run::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::ServeLlm(args) => commands::serve_llm::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Train(cmd) => commands::train::run(cmd),
        Command::Export(args) => commands::export::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Report(args) => commands::report::run(args),
        Command::SimulateRecs(args) => commands::simulate_recs::run(args),
        Command::Augment(args) => commands::augment::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
