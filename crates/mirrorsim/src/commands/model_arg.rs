//! The model a stage talks to: a local GGUF file / HF directory, or an OpenAI-compatible server.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use clap::Args;
use mirrorsim_llm::engine::{EngineOptions, LocalEngine, MatmulPrecision};
use mirrorsim_llm::http::{HttpBackend, HttpConfig};
use mirrorsim_llm::Backend;

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Local model: a GGUF file or an HF model directory (default: SmolLM2-135M-Instruct).
    #[arg(long, conflicts_with = "endpoint")]
    pub model: Option<PathBuf>,
    /// Use an OpenAI-compatible server instead (vLLM, SGLang, llama.cpp, Ollama, OpenAI),
    /// e.g. http://127.0.0.1:8000/v1. The API key is read from $OPENAI_API_KEY.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The served model name sent to --endpoint.
    #[arg(long, requires = "endpoint")]
    pub served_model: Option<String>,
    /// Most requests in flight against --endpoint.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Box<dyn Backend>> {
        if let Some(url) = &self.endpoint {
            let config = HttpConfig {
                max_concurrency: self.concurrency,
                ..HttpConfig::new(url.clone(), self.served_model.clone().unwrap_or_default())
            };
            let backend = HttpBackend::new(config)
                .with_context(|| format!("configuring the HTTP backend {url}"))?;
            return Ok(Box::new(backend));
        }
        Ok(Box::new(load_local(self.model.as_deref(), None)?))
    }
}

static CUDA_DEVICE: OnceLock<Option<usize>> = OnceLock::new();
static MATMUL: OnceLock<MatmulPrecision> = OnceLock::new();

/// Chooses, once per process, where every local model of this run lives (the CUDA device
/// `ordinal`, or the CPU for `None`) and how its dense layers multiply on the CPU (`matmul`:
/// `f32` or `bf16`). Refuses a device when this binary was built without CUDA, and bf16 on CUDA.
pub fn select_device(ordinal: Option<usize>, matmul: &str) -> anyhow::Result<()> {
    if ordinal.is_some() && !cfg!(feature = "cuda") {
        anyhow::bail!(
            "--cuda needs a build with CUDA: cargo build --release -p mirrorsim --features cuda \
             (with nvcc on PATH)"
        );
    }
    let matmul: MatmulPrecision = matmul.parse()?;
    if ordinal.is_some() && matmul == MatmulPrecision::Bf16 {
        anyhow::bail!("--matmul bf16 is the CPU's AMX path; drop it with --cuda");
    }
    MATMUL
        .set(matmul)
        .map_err(|_| anyhow::anyhow!("the matmul precision was already chosen"))?;
    CUDA_DEVICE
        .set(ordinal)
        .map_err(|_| anyhow::anyhow!("the compute device was already chosen"))
}

/// The CUDA device chosen with `--cuda`, if any.
pub fn cuda_device() -> Option<usize> {
    CUDA_DEVICE.get().copied().flatten()
}

/// The matmul precision chosen with `--matmul`.
pub fn matmul() -> MatmulPrecision {
    MATMUL.get().copied().unwrap_or_default()
}

/// Engine options for a local model on the chosen device, at the chosen matmul precision.
pub fn engine_options() -> EngineOptions {
    EngineOptions {
        cuda_device: cuda_device(),
        matmul: matmul(),
        ..EngineOptions::default()
    }
}

/// The path of a local model argument: a GGUF file or HF model directory as given, or the
/// default SmolLM2-135M-Instruct (found or fetched) for `None` and `default`.
pub fn local_model_path(model: Option<&Path>) -> anyhow::Result<std::path::PathBuf> {
    match model {
        Some(path) if path != Path::new("default") => Ok(path.to_owned()),
        _ => {
            mirrorsim_llm::default_model::default_model_path().context("finding the default model")
        }
    }
}

/// A local model (a GGUF file or HF model directory; `None` or `default` for the default
/// SmolLM2-135M-Instruct), with a PEFT LoRA adapter on top when given.
pub fn load_local(model: Option<&Path>, adapter: Option<&Path>) -> anyhow::Result<LocalEngine> {
    let path = local_model_path(model)?;
    tracing::info!("loading {}", path.display());
    let options = EngineOptions {
        adapter: adapter.map(Path::to_owned),
        ..engine_options()
    };
    LocalEngine::load(&path, options).with_context(|| match adapter {
        Some(adapter) => format!(
            "loading the model {} with the adapter {}",
            path.display(),
            adapter.display()
        ),
        None => format!("loading the model {}", path.display()),
    })
}
