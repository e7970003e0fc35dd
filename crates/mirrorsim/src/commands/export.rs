//! `mirrorsim export`: a base model plus a LoRA adapter, merged, as GGUF (llama.cpp, Ollama,
//! our engine) or as an HF directory (safetensors).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::gguf_export::{write_gguf, GgufWeightType};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Gguf,
    Hf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WeightTypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Base model: a GGUF file (needed for --format gguf: its tokenizer and metadata are
    /// copied) or an HF model directory (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT adapter directory to merge in.
    #[arg(long)]
    adapter: PathBuf,
    /// Merge the adapter into the base weights (the only export there is; required so the
    /// command says what it does).
    #[arg(long)]
    merge: bool,
    #[arg(long, value_enum, default_value = "gguf")]
    format: ExportFormat,
    /// Weight type of the GGUF matrices.
    #[arg(long = "type", value_enum, default_value = "f16")]
    weight_type: WeightTypeArg,
    /// Output: a .gguf file, or a directory for --format hf.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if !args.merge {
        bail!(
            "export writes a merged model; pass --merge (the adapter alone is already PEFT files)"
        );
    }
    let model_path = super::model_arg::local_model_path(args.model.as_deref())?;
    let engine = LocalEngine::load(
        &model_path,
        EngineOptions {
            adapter: Some(args.adapter.clone()),
            ..EngineOptions::default()
        },
    )
    .with_context(|| {
        format!(
            "loading {} with the adapter {}",
            model_path.display(),
            args.adapter.display()
        )
    })?;
    let (model, _, _, model_id) = engine.into_parts();
    match args.format {
        ExportFormat::Gguf => {
            if !model_path.is_file() {
                bail!(
                    "--format gguf needs a GGUF base model (its tokenizer and metadata are copied); \
                     {} is a directory: use --format hf",
                    model_path.display()
                );
            }
            let source = mirrorsim_llm::gguf::read_content(&model_path)?;
            let weight_type = match args.weight_type {
                WeightTypeArg::F32 => GgufWeightType::F32,
                WeightTypeArg::F16 => GgufWeightType::F16,
                WeightTypeArg::Q8_0 => GgufWeightType::Q8_0,
            };
            write_gguf(&model, &source, &args.out, weight_type)
                .with_context(|| format!("writing {}", args.out.display()))?;
        }
        ExportFormat::Hf => {
            model
                .save_hf_dir(&args.out)
                .with_context(|| format!("writing {}", args.out.display()))?;
            if model_path.is_dir() {
                for file in ["tokenizer.json", "tokenizer_config.json"] {
                    let from = model_path.join(file);
                    if from.is_file() {
                        std::fs::copy(&from, args.out.join(file))
                            .with_context(|| format!("copying {}", from.display()))?;
                    }
                }
            }
        }
    }
    println!("merged {model_id} → {}", args.out.display());
    Ok(())
}
