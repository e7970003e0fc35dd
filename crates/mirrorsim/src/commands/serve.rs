//! `mirrorsim serve`: a simulator (model + optional adapter + optional hybrid prior) over a
//! catalog as an HTTP JSON service.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::scenes::slate::SlateCatalog;
use mirrorsim_data::scenes::PromptSet;
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_eval::hybrid::read_hybrid_file;
use mirrorsim_eval::slate::{SlateHint, SlatePrior, SlateSimulator};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines};
use mirrorsim_llm::Backend;
use mirrorsim_serve::simulator::api::PriorInfo;
use mirrorsim_serve::simulator::{ServiceDescription, SimulatorOptions, SimulatorService};

use super::eval::{parse_hint_priors, parse_prior, prior_names};
use super::model_arg::load_local;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A GGUF file or an HF model directory; default: SmolLM2-135M-Instruct ($MIRRORSIM_MODEL,
    /// else models/, else fetched with scripts/fetch-model.sh).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) merged
    /// into --model at load.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// The catalog users and items are looked up in, as FORMAT:PATH (e.g.
    /// movielens:data/ml-latest-small).
    #[arg(long, value_name = "FORMAT:PATH")]
    pub catalog: String,
    /// Make the simulator a hybrid `p_llm^a · p_prior^b` with this collaborative prior (knn,
    /// ease, popularity or sequential), fitted on the whole catalog; the weights come from --hybrid.
    #[arg(long, value_name = "KIND")]
    pub prior: Option<String>,
    /// Write these collaborative priors' picks (one or more of knn, ease, popularity,
    /// sequential, comma-separated), fitted on the whole log, into every slate's prompt, as
    /// `mirrorsim hint --prior` writes them into scenes: for an adapter trained on hinted scenes.
    #[arg(long, value_name = "KIND[,KIND]")]
    pub hint_prior: Option<String>,
    /// The hybrid.json `mirrorsim eval --prior KIND --validation-scenes …` wrote, or the folder
    /// holding it (DIR/hybrid.json, else DIR/eval/hybrid.json: a run directory works).
    #[arg(long, value_name = "FILE|DIR", requires = "prior")]
    pub hybrid: Option<PathBuf>,
    /// Prompt templates folder replacing any of the embedded prompts/*.j2.
    #[arg(long, value_name = "DIR")]
    pub prompts: Option<PathBuf>,
    /// Interactions of a catalog user shown as history (the most recent).
    #[arg(long, default_value_t = 10)]
    pub history_len: usize,
    /// Catalog items on option lines show their rating count and mean over the whole
    /// catalog, as the scenes of `scenes --item-stats` do (for an adapter trained on them).
    #[arg(long)]
    pub item_stats: bool,
    /// With --item-stats, also each option's rank by its count among the slate's catalog
    /// options, as the scenes of `scenes --item-stats-rank` show it.
    #[arg(long, requires = "item_stats")]
    pub item_stats_rank: bool,
    /// Address to listen on; use 0.0.0.0 to accept connections from other machines.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Milliseconds to wait for other clients' requests to batch with.
    #[arg(long, default_value_t = 5.0)]
    pub batch_window_ms: f64,
    /// Most requests the engine scores in one batch.
    #[arg(long, default_value_t = 32)]
    pub max_engine_batch: usize,
    /// Most calls waiting for the engine; more are answered 503.
    #[arg(long, default_value_t = 256)]
    pub max_queued: usize,
    /// Most requests in one /v1/simulate/batch call.
    #[arg(long, default_value_t = 64)]
    pub max_batch_requests: usize,
    /// Largest `n` (samples; rationales in rationale mode) a request may ask for.
    #[arg(long, default_value_t = 32)]
    pub max_samples: usize,
    /// Most entries in an inline user's history.
    #[arg(long, default_value_t = 100)]
    pub max_history: usize,
    /// Most characters of inline text (titles, details, attributes, reviews) in one request:
    /// it bounds the prompt, which the model's context must hold.
    #[arg(long, default_value_t = 20_000)]
    pub max_inline_chars: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered 504.
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout_s: f64,
}

/// How to make a hybrid.json, for error messages.
fn how_to_fit(prior: BaselineKind) -> String {
    format!(
        "fit one with `mirrorsim eval --scenes RUN/scenes/scenes.eval.jsonl --model M \
         --catalog FORMAT:PATH --prior {prior} --validation-scenes \
         RUN/scenes/scenes.train.jsonl --out DIR` (it writes DIR/hybrid.json) and pass \
         --hybrid DIR/hybrid.json"
    )
}

/// The hybrid.json `--hybrid` names: the file itself, or DIR/hybrid.json, or
/// DIR/eval/hybrid.json.
fn hybrid_file(given: Option<&Path>, prior: BaselineKind) -> anyhow::Result<PathBuf> {
    let Some(given) = given else {
        bail!(
            "--prior {prior} needs the fitted hybrid weights (--hybrid FILE|DIR); {}",
            how_to_fit(prior)
        );
    };
    if given.is_file() {
        return Ok(given.to_owned());
    }
    if given.is_dir() {
        for candidate in [
            given.join("hybrid.json"),
            given.join("eval").join("hybrid.json"),
        ] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        bail!(
            "--hybrid {}: holds neither hybrid.json nor eval/hybrid.json; {}",
            given.display(),
            how_to_fit(prior)
        );
    }
    bail!(
        "--hybrid {}: no such file or folder; {}",
        given.display(),
        how_to_fit(prior)
    )
}

fn check_positive(value: f64, flag: &str) -> anyhow::Result<Duration> {
    if !(value.is_finite() && value >= 0.0) {
        bail!("{flag} must be a finite number of at least 0, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let batch_window = check_positive(args.batch_window_ms / 1000.0, "--batch-window-ms")?;
    let request_timeout = check_positive(args.request_timeout_s, "--request-timeout-s")?;
    if request_timeout.is_zero() {
        bail!("--request-timeout-s must be above 0");
    }
    for (value, flag) in [
        (args.max_engine_batch, "--max-engine-batch"),
        (args.max_queued, "--max-queued"),
        (args.max_batch_requests, "--max-batch-requests"),
        (args.max_samples, "--max-samples"),
        (args.max_body_bytes, "--max-body-bytes"),
        (args.max_inline_chars, "--max-inline-chars"),
        (args.history_len, "--history-len"),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    let prior = args.prior.as_deref().map(parse_prior).transpose()?;
    let hint_priors = args
        .hint_prior
        .as_deref()
        .map(parse_hint_priors)
        .transpose()?;
    // Fail on a missing weights file before the slow loads.
    let hybrid_path = prior
        .map(|prior| hybrid_file(args.hybrid.as_deref(), prior))
        .transpose()?;
    let hybrid = hybrid_path
        .as_deref()
        .map(|path| read_hybrid_file(path).with_context(|| format!("reading {}", path.display())))
        .transpose()?;
    if let (Some(prior), Some(file), Some(path)) = (prior, &hybrid, &hybrid_path) {
        if file.prior != prior {
            bail!(
                "{} was fitted with the prior {}, not {prior}; pass --prior {} or {}",
                path.display(),
                file.prior,
                file.prior,
                how_to_fit(prior)
            );
        }
    }

    let spec: SourceSpec = args.catalog.parse()?;
    let started = Instant::now();
    let (catalog, _) =
        read_source(&spec, &ReadOptions::default()).with_context(|| format!("reading {spec}"))?;
    tracing::info!(
        "read {spec}: {} users, {} items, {} interactions in {:.1} s",
        catalog.users.len(),
        catalog.items.len(),
        catalog.interactions.len(),
        started.elapsed().as_secs_f64()
    );
    let prompts = PromptSet::load(args.prompts.as_deref())?;
    // The service lives until the process ends; the simulator and its prior borrow the
    // catalog for that long.
    let slate_catalog = SlateCatalog::new(catalog, prompts, args.history_len)?;
    let slate_catalog = match (args.item_stats, args.item_stats_rank) {
        (true, true) => slate_catalog.with_ranked_item_stats(None),
        (true, false) => slate_catalog.with_item_stats(None),
        (false, _) => slate_catalog,
    };
    let slate_catalog: &'static SlateCatalog = Box::leak(Box::new(slate_catalog));

    let started = Instant::now();
    let engine = load_local(args.model.as_deref(), args.adapter.as_deref())?;
    tracing::info!(
        "loaded {} in {:.1} s",
        engine.model_id(),
        started.elapsed().as_secs_f64()
    );
    let model_id = engine.model_id();
    let backend: Arc<dyn Backend> = Arc::new(engine);
    let mut simulator = SlateSimulator::new(slate_catalog, backend);
    let mut prior_info = None;
    if let (Some(file), Some(path)) = (hybrid, hybrid_path) {
        if file.model.as_deref() != Some(model_id.as_str()) {
            bail!(
                "{} was fitted for the model {:?}, not {model_id:?}; {}",
                path.display(),
                file.model,
                how_to_fit(file.prior)
            );
        }
        let started = Instant::now();
        // The prior sees the whole log: when serving, every logged interaction is the past.
        let baselines = FittedBaselines::fit(
            slate_catalog.catalog(),
            None,
            &BaselineConfig::default(),
            file.prior == BaselineKind::Ease,
        )
        .with_context(|| format!("fitting the {} prior on {spec}", file.prior))?;
        let slate_prior = SlatePrior {
            kind: file.prior,
            weights: file.weights,
            baselines,
        };
        tracing::info!(
            "hybrid: {} prior fitted in {:.1} s; weights from {}",
            file.prior,
            started.elapsed().as_secs_f64(),
            path.display()
        );
        prior_info = Some(PriorInfo {
            kind: file.prior.name().to_owned(),
            llm_weight: file.weights.llm_weight,
            prior_weight: file.weights.prior_weight,
            prior_temperature: file.weights.prior_temperature,
            weights_file: path.display().to_string(),
        });
        simulator = simulator.with_prior(slate_prior);
    }

    if let Some(kinds) = hint_priors {
        let started = Instant::now();
        let names = prior_names(&kinds);
        // As the hybrid's prior: when serving, every logged interaction is the past.
        let baselines = FittedBaselines::fit(
            slate_catalog.catalog(),
            None,
            &BaselineConfig::default(),
            kinds.contains(&BaselineKind::Ease),
        )
        .with_context(|| format!("fitting the {names} prior on {spec}"))?;
        tracing::info!(
            "hint: {names} prior fitted in {:.1} s; its pick is written into every prompt",
            started.elapsed().as_secs_f64()
        );
        simulator = simulator.with_hint(SlateHint { kinds, baselines });
    }

    let service = SimulatorService {
        simulator: Arc::new(simulator),
        description: ServiceDescription {
            adapter: args.adapter.map(|a| a.display().to_string()),
            prior: prior_info,
        },
        options: SimulatorOptions {
            batch_window,
            max_engine_batch: args.max_engine_batch,
            max_queued: args.max_queued,
            max_batch_requests: args.max_batch_requests,
            max_slate_items: mirrorsim_data::scenes::MAX_OPTIONS,
            max_samples: args.max_samples,
            max_history: args.max_history,
            max_inline_chars: args.max_inline_chars,
            max_body_bytes: args.max_body_bytes,
            request_timeout,
        },
    };
    let addr = SocketAddr::new(args.host, args.port);
    mirrorsim_serve::simulator::serve_until_signal(addr, service, |bound| {
        tracing::info!("simulator {model_id} at http://{bound} (Ctrl-C stops)");
        // Tools waiting for the server read this line on stdout.
        println!("listening on http://{bound} model {model_id}");
    })
    .with_context(|| format!("serving on {addr}"))?;
    tracing::info!("server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prior_without_weights_fails_with_how_to_make_them() {
        let err = hybrid_file(None, BaselineKind::Knn)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--prior knn needs the fitted hybrid weights"),
            "{err}"
        );
        assert!(err.contains("mirrorsim eval"), "{err}");
        assert!(err.contains("--validation-scenes"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let err = hybrid_file(Some(dir.path()), BaselineKind::Ease)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("holds neither hybrid.json nor eval/hybrid.json"),
            "{err}"
        );
        assert!(err.contains("--prior ease"), "{err}");

        let missing = dir.path().join("nope.json");
        let err = hybrid_file(Some(&missing), BaselineKind::Popularity)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file or folder"), "{err}");
    }

    #[test]
    fn hybrid_weights_are_found_in_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("eval")).unwrap();
        let nested = dir.path().join("eval").join("hybrid.json");
        std::fs::write(&nested, "{}").unwrap();
        assert_eq!(
            hybrid_file(Some(dir.path()), BaselineKind::Knn).unwrap(),
            nested
        );
        let top = dir.path().join("hybrid.json");
        std::fs::write(&top, "{}").unwrap();
        assert_eq!(
            hybrid_file(Some(dir.path()), BaselineKind::Knn).unwrap(),
            top
        );
        assert_eq!(
            hybrid_file(Some(&nested), BaselineKind::Knn).unwrap(),
            nested
        );
    }

    #[test]
    fn only_collaborative_priors_are_accepted() {
        assert_eq!(parse_prior("knn").unwrap(), BaselineKind::Knn);
        assert_eq!(parse_prior("ease").unwrap(), BaselineKind::Ease);
        assert_eq!(parse_prior("popularity").unwrap(), BaselineKind::Popularity);
        assert!(parse_prior("random").is_err());
        assert!(parse_prior("knn,ease").is_err());
    }
}
