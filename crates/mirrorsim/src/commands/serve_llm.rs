//! `mirrorsim serve-llm`: the local engine as an OpenAI-compatible HTTP server.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use mirrorsim_llm::engine::LocalEngine;
use mirrorsim_llm::Backend;
use mirrorsim_serve::ServerOptions;

#[derive(Debug, Args)]
pub struct ServeLlmArgs {
    /// A GGUF file or an HF model directory; default: SmolLM2-135M-Instruct ($MIRRORSIM_MODEL,
    /// else models/, else fetched with scripts/fetch-model.sh).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on; use 0.0.0.0 to accept connections from other machines.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients send as `model`; default: the model's file or directory name.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most requests the engine runs together in one batch.
    #[arg(long, default_value_t = 8)]
    pub max_batch_requests: usize,
}

/// The name a model is served under when none is given: its file name without the extension,
/// or its directory name.
pub fn default_served_name(model_path: &Path) -> String {
    let name = if model_path.is_dir() {
        model_path.file_name()
    } else {
        model_path.file_stem()
    };
    name.map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "mirrorsim".to_string())
}

pub fn run(args: ServeLlmArgs) -> anyhow::Result<()> {
    if args.max_batch_requests == 0 {
        anyhow::bail!("--max-batch-requests must be at least 1");
    }
    let model_path = super::model_arg::local_model_path(args.model.as_deref())?;
    let served_name = match args.served_model_name {
        Some(name) if name.trim().is_empty() => anyhow::bail!("--served-model-name is empty"),
        Some(name) => name,
        None => default_served_name(&model_path),
    };
    let load_started = Instant::now();
    let engine = LocalEngine::load(&model_path, super::model_arg::engine_options())
        .with_context(|| format!("loading {}", model_path.display()))?;
    tracing::info!(
        "loaded {} ({}) in {:.1} s",
        model_path.display(),
        engine.model_id(),
        load_started.elapsed().as_secs_f64()
    );
    let backend: Arc<dyn Backend> = Arc::new(engine);
    let options = ServerOptions {
        max_batch_requests: args.max_batch_requests,
        ..ServerOptions::new(served_name.clone())
    };
    let addr = SocketAddr::new(args.host, args.port);
    mirrorsim_serve::serve_until_signal(addr, backend, options, |bound| {
        tracing::info!("serving `{served_name}` at http://{bound}/v1 (Ctrl-C stops)");
        // Tools waiting for the server read this line on stdout.
        println!("listening on http://{bound}/v1 model {served_name}");
    })
    .with_context(|| format!("serving on {addr}"))?;
    tracing::info!("server stopped");
    Ok(())
}
