//! `mirrorsim eval`: score a simulator and classical baselines on eval scenes against the real
//! choices; writes `metrics.json`, `predictions.jsonl` and `report.html`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::scenes::read_jsonl;
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_distill::{Journal, JournaledBackend};
use mirrorsim_eval::agent4rec::select_cases;
use mirrorsim_eval::evaluate::{
    coverage_notes, resolve_cutoff, sampled_prediction, score_baselines,
    simulator_predictor_metrics, summary_beside, write_outputs, PredictorKind, PredictorMetrics,
};
use mirrorsim_eval::hybrid::{
    fit_hybrid, hinted_scenes, hybrid_predictions, read_hybrid_file, validation_cases,
    validation_split, write_hybrid_file, FitBounds, HybridFile, PromptHintFit, ValidationSplit,
};
use mirrorsim_eval::metrics::choice_metrics;
use mirrorsim_eval::rating::{
    expected_rating, rating_cases, rating_metrics, rating_requests, rating_slates, RatingBaselines,
};
use mirrorsim_eval::report::{read_loss_curves, render_report, LossCurve, ReportRun};

use mirrorsim_eval::simulate::score_simulator;
use mirrorsim_eval::{
    BaselineConfig, BaselineKind, FittedBaselines, MetricsFile, Mode, PredictionLine,
    SimulatorConfig,
};
use mirrorsim_llm::http::{HttpBackend, HttpConfig};
use mirrorsim_llm::Backend;

use super::model_arg::load_local;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Eval scenes (JSONL), e.g. RUN/scenes/scenes.eval.jsonl.
    #[arg(long)]
    scenes: PathBuf,
    /// The simulator: a GGUF file or HF model directory, `default` for SmolLM2-135M-Instruct,
    /// or `none` for baselines only.
    #[arg(
        long,
        required_unless_present = "endpoint",
        conflicts_with = "endpoint"
    )]
    model: Option<String>,
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) applied
    /// on top of --model.
    #[arg(long, value_name = "DIR", conflicts_with = "endpoint")]
    adapter: Option<PathBuf>,
    /// The simulator behind an OpenAI-compatible server instead (vLLM, SGLang, llama.cpp,
    /// `mirrorsim serve-llm`), e.g. http://127.0.0.1:8000/v1; the API key is read from
    /// $OPENAI_API_KEY. Label probabilities come from the server's top logprobs.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The served model name sent to --endpoint.
    #[arg(long, requires = "endpoint")]
    served_model: Option<String>,
    /// Most requests in flight against --endpoint.
    #[arg(long, default_value_t = 8, requires = "endpoint")]
    concurrency: usize,
    /// direct: one forward after `Behavior: [`; rationale: R generated rationales, each scored;
    /// title: each option's own text as the reply, scored by its likelihood (local models).
    #[arg(long, default_value = "direct")]
    mode: String,
    /// Direct, title: samples per scene for sampled accuracy; rationale: rationales per scene.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Evaluate only the first N scenes.
    #[arg(long, value_name = "N")]
    max_scenes: Option<usize>,
    /// Baselines to compare with (comma-separated; `none` for none).
    #[arg(long, default_value = "random,popularity,knn,ease,sequential")]
    baselines: String,
    /// The dataset the scenes were built from, as FORMAT:PATH (needed by every baseline
    /// except random).
    #[arg(long)]
    catalog: Option<String>,
    /// Baselines see only interactions strictly before this Unix time [default: the
    /// `cutoff_timestamp` of scenes.summary.json beside the scenes].
    #[arg(long)]
    cutoff: Option<i64>,
    /// Softmax temperature of the baselines' scores.
    #[arg(long, default_value_t = 1.0)]
    baseline_temperature: f64,
    /// EASE's L2 weight λ.
    #[arg(long, default_value_t = 500.0)]
    ease_lambda: f64,
    /// EASE uses only items with at least this many pre-cutoff interactions.
    #[arg(long, default_value_t = 1)]
    ease_min_interactions: usize,
    /// EASE uses at most this many items (the most interacted).
    #[arg(long, default_value_t = 4000)]
    ease_max_items: usize,
    /// Do not re-score the scenes under cyclic rotations of their options (k times cheaper).
    #[arg(long)]
    no_rotations: bool,
    /// Do not ask the Agent4Rec yes/no questions.
    #[arg(long)]
    no_agent4rec: bool,
    /// Rationale mode: sampling temperature and most tokens per rationale.
    #[arg(long, default_value_t = 1.0)]
    rationale_temperature: f32,
    #[arg(long, default_value_t = 256)]
    rationale_tokens: usize,
    /// Seed of every sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (metrics.json, predictions.jsonl, report.html, journal.sqlite).
    #[arg(long)]
    out: PathBuf,
    /// Print metrics.json to stdout.
    #[arg(long)]
    json: bool,
    /// Also evaluate the hybrid simulator `p_llm^a · p_prior^b` with this collaborative prior
    /// (knn, ease, popularity or sequential). Its weights come from --validation-scenes, else from
    /// OUT/hybrid.json, which is also used without this flag when present.
    #[arg(long, value_name = "KIND")]
    prior: Option<String>,
    /// Train scenes (JSONL) to fit the hybrid on: those decided in the last
    /// --validation-fraction of the pre-cutoff period (never eval scenes). The fit is written
    /// to OUT/hybrid.json.
    #[arg(long, value_name = "FILE")]
    validation_scenes: Option<PathBuf>,
    /// Share of the pre-cutoff period, counted back from the cutoff, that validation scenes
    /// are taken from.
    #[arg(long, default_value_t = 0.1)]
    validation_fraction: f64,
    /// Use at most this many validation scenes (the first in the file).
    #[arg(long, default_value_t = 200)]
    max_validation_scenes: usize,
    /// Also try the prior in the prompt: the option the prior ranks first is marked (e.g.
    /// "similar to what you chose before") and the LLM scores the marked scenes. Compared with
    /// the hybrid on the validation scenes (hybrid.json says which wins) and reported on eval.
    #[arg(long, requires = "validation_scenes")]
    prior_in_prompt: bool,
    /// Also predict how the user rates the item they chose (where the catalog has ratings):
    /// the simulator's expected rating after `Rating: [` and bias baselines fitted before the
    /// cutoff, scored by MAE and RMSE.
    #[arg(long, requires = "catalog")]
    ratings: bool,
}

/// The collaborative prior of `--prior`.
pub(crate) fn parse_prior(name: &str) -> anyhow::Result<BaselineKind> {
    match BaselineKind::parse_list(name)?.as_slice() {
        [kind @ (BaselineKind::Knn
        | BaselineKind::Ease
        | BaselineKind::Popularity
        | BaselineKind::Sequential)] => Ok(*kind),
        _ => bail!("--prior takes one of knn, ease, popularity, sequential; got `{name}`"),
    }
}

/// The priors whose picks a hint writes into the prompt: one or more of knn, ease, popularity
/// and sequential, comma-separated, in the order their notes are joined.
pub(crate) fn parse_hint_priors(spec: &str) -> anyhow::Result<Vec<BaselineKind>> {
    let kinds = BaselineKind::parse_list(spec)?;
    if kinds.is_empty() || kinds.contains(&BaselineKind::Random) {
        bail!(
            "a hint takes one or more of knn, ease, popularity, sequential (comma-separated); \
             got `{spec}`"
        );
    }
    Ok(kinds)
}

/// Names priors as `parse_hint_priors` reads them.
pub(crate) fn prior_names(kinds: &[BaselineKind]) -> String {
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mode: Mode = args.mode.parse()?;
    let kinds = BaselineKind::parse_list(&args.baselines)?;
    let mut timings = BTreeMap::new();
    let mut scenes = read_jsonl(&args.scenes)
        .with_context(|| format!("reading scenes {}", args.scenes.display()))?;
    if let Some(n) = args.max_scenes {
        scenes.truncate(n);
    }
    if scenes.is_empty() {
        bail!("{} holds no scenes", args.scenes.display());
    }
    let cases = select_cases(&scenes);
    let mut notes = Vec::new();
    let mut predictors = Vec::new();
    let mut lines = Vec::new();
    let (mut model_id, mut mode_name) = (None, None);
    let (mut journal_hits, mut journal_misses) = (None, None);
    // LLM requests of the passes after the main one (prompt hints, ratings).
    let mut extra_requests = RequestCounts::default();

    let uses_llm = args.endpoint.is_some() || args.model.as_deref() != Some("none");
    let hybrid_path = args.out.join("hybrid.json");
    let requested_prior = args.prior.as_deref().map(parse_prior).transpose()?;
    let loaded_hybrid = if args.validation_scenes.is_none() && uses_llm && hybrid_path.is_file() {
        Some(read_hybrid_file(&hybrid_path)?)
    } else {
        None
    };
    if let (Some(prior), Some(file)) = (requested_prior, &loaded_hybrid) {
        if file.prior != prior {
            bail!(
                "{} was fitted with the prior {}, not {prior}; pass --validation-scenes to refit",
                hybrid_path.display(),
                file.prior
            );
        }
    }
    let hybrid_prior = requested_prior.or(loaded_hybrid.as_ref().map(|f| f.prior));
    if requested_prior.is_some() && loaded_hybrid.is_none() && args.validation_scenes.is_none() {
        bail!(
            "--prior needs --validation-scenes FILE to fit the hybrid (or a fitted {})",
            hybrid_path.display()
        );
    }
    if args.validation_scenes.is_some() && requested_prior.is_none() {
        bail!(
            "--validation-scenes fits the hybrid: pass --prior knn|ease|popularity|sequential too"
        );
    }
    if hybrid_prior.is_some() && !uses_llm {
        bail!("the hybrid simulator needs a --model");
    }
    let (cutoff, cutoff_source) = resolve_cutoff(&args.scenes, &scenes, args.cutoff)?;
    let catalog = if !kinds.is_empty() || hybrid_prior.is_some() || args.ratings {
        let spec: SourceSpec = args
            .catalog
            .as_deref()
            .context(
                "baselines and the hybrid's prior need the dataset: pass --catalog FORMAT:PATH \
                 (or --baselines none)",
            )?
            .parse()?;
        let started = Instant::now();
        let (catalog, _) = read_source(&spec, &ReadOptions::default())
            .with_context(|| format!("reading {spec}"))?;
        timings.insert("catalog_read".to_owned(), started.elapsed().as_secs_f64());
        Some(catalog)
    } else {
        None
    };
    let validation: Option<(PathBuf, ValidationSplit)> = match (&args.validation_scenes, &catalog) {
        (Some(path), Some(catalog)) => {
            let train = read_jsonl(path)
                .with_context(|| format!("reading validation scenes {}", path.display()))?;
            let eval_cutoff =
                cutoff.context("fitting the hybrid needs a cutoff (pass --cutoff)")?;
            let period_start = catalog
                .interactions
                .first()
                .map(|i| i.timestamp)
                .context("the catalog holds no interactions")?;
            let mut split =
                validation_split(&train, period_start, eval_cutoff, args.validation_fraction)
                    .with_context(|| format!("validation scenes {}", path.display()))?;
            split.scenes.truncate(args.max_validation_scenes);
            if split.scenes.is_empty() {
                bail!(
                    "{}: no scene is decided in the last {} of the pre-cutoff period",
                    path.display(),
                    args.validation_fraction
                );
            }
            eprintln!(
                "hybrid: {} validation scenes decided in [{}, {eval_cutoff})",
                split.scenes.len(),
                split.boundary
            );
            Some((path.clone(), split))
        }
        _ => None,
    };
    let mut llm_distributions: Vec<Vec<f64>> = Vec::new();
    let mut validation_llm: Vec<Vec<f64>> = Vec::new();
    let mut simulator_name = String::new();
    let mut loaded: Option<(Box<dyn Backend>, Journal)> = None;

    if !uses_llm && args.adapter.is_some() {
        bail!("--adapter needs a --model to apply it to");
    }
    if uses_llm {
        let started = Instant::now();
        let engine = load_simulator(&args)?;
        timings.insert("model_load".to_owned(), started.elapsed().as_secs_f64());
        let journal = Journal::open(&args.out.join("journal.sqlite"))?;
        let journaled = JournaledBackend::new(engine.as_ref(), &journal);
        let config = SimulatorConfig {
            mode,
            repeats: args.repeats,
            seed: args.seed,
            rotations: !args.no_rotations,
            agent4rec: !args.no_agent4rec,
            rationale_temperature: args.rationale_temperature,
            rationale_tokens: args.rationale_tokens,
            ..SimulatorConfig::default()
        };
        if let Some((_, split)) = &validation {
            let validation_config = SimulatorConfig {
                rotations: false,
                agent4rec: false,
                ..config.clone()
            };
            let output = score_simulator(&split.scenes, &journaled, &validation_config, &[])?;
            timings.insert("validation_scoring".to_owned(), output.wall_s);
            validation_llm = output
                .predictions
                .into_iter()
                .map(|p| p.distribution)
                .collect();
        }
        let output = score_simulator(&scenes, &journaled, &config, &cases)?;
        timings.insert("simulator_scoring".to_owned(), output.wall_s);
        let counts = journaled.counts();
        journal_hits = Some(counts.hits);
        journal_misses = Some(counts.misses);
        eprintln!(
            "simulator scored in {:.1} s ({} LLM requests answered from the journal, {} sent)",
            output.wall_s, counts.hits, counts.misses
        );
        if output.scenes_with_missing_labels > 0 {
            notes.push(format!(
                "{} scenes: the backend could not report the probability of some option labels \
                 (their mass counts as 0)",
                output.scenes_with_missing_labels
            ));
        }
        let name = format!("{} ({})", engine.model_id(), mode.name());
        predictors.push(simulator_predictor_metrics(
            &name, &scenes, &output, &cases,
        )?);
        llm_distributions = output
            .predictions
            .iter()
            .map(|p| p.distribution.clone())
            .collect();
        simulator_name = name.clone();
        lines.extend(
            output
                .predictions
                .into_iter()
                .map(|prediction| PredictionLine {
                    predictor: name.clone(),
                    prediction,
                }),
        );
        model_id = Some(engine.model_id());
        mode_name = Some(mode.name().to_owned());
        drop(journaled);
        loaded = Some((engine, journal));
    }
    let hint_config = SimulatorConfig {
        mode,
        repeats: args.repeats,
        seed: args.seed,
        rotations: false,
        agent4rec: false,
        rationale_temperature: args.rationale_temperature,
        rationale_tokens: args.rationale_tokens,
        ..SimulatorConfig::default()
    };

    let baseline_config = BaselineConfig {
        temperature: args.baseline_temperature,
        ease_lambda: args.ease_lambda,
        ease_min_interactions: args.ease_min_interactions,
        ease_max_items: args.ease_max_items,
        ..BaselineConfig::default()
    };
    let mut interactions_before_cutoff = None;
    let fitted = match &catalog {
        Some(catalog) => {
            let started = Instant::now();
            eprintln!("fitting baselines on interactions before {cutoff:?} ({cutoff_source})");
            let fitted = FittedBaselines::fit(
                catalog,
                cutoff,
                &baseline_config,
                kinds.contains(&BaselineKind::Ease) || hybrid_prior == Some(BaselineKind::Ease),
            )?;
            timings.insert("baselines_fit".to_owned(), started.elapsed().as_secs_f64());
            interactions_before_cutoff = Some(fitted.interactions_before_cutoff);
            Some(fitted)
        }
        None => None,
    };
    if let (false, Some(fitted)) = (kinds.is_empty(), &fitted) {
        let started = Instant::now();
        let baselines = score_baselines(fitted, &kinds, &scenes, &cases, args.repeats, args.seed)?;
        predictors.extend(baselines.predictors);
        lines.extend(baselines.lines);
        notes.extend(baselines.note);
        timings.insert(
            "baselines_score".to_owned(),
            started.elapsed().as_secs_f64(),
        );
    }
    if let (Some(prior), Some(fitted), Some(catalog)) = (hybrid_prior, &fitted, &catalog) {
        let started = Instant::now();
        let file = match (validation, loaded_hybrid) {
            (Some((path, split)), _) => {
                let eval_cutoff = cutoff.context("fitting the hybrid needs a cutoff")?;
                let prior_cutoff = split.prior_cutoff();
                eprintln!(
                    "hybrid: fitting the {prior} prior for validation on interactions before \
                     {prior_cutoff}"
                );
                let validation_fitted = FittedBaselines::fit(
                    catalog,
                    Some(prior_cutoff),
                    &baseline_config,
                    prior == BaselineKind::Ease,
                )?;
                let cases =
                    validation_cases(&validation_fitted, prior, &split.scenes, &validation_llm)?;
                let bounds = FitBounds::default();
                let fit = fit_hybrid(&cases, &bounds)?;
                let prompt_hint = match (&loaded, args.prior_in_prompt) {
                    (Some((engine, journal)), true) => {
                        let hinted = hinted_scenes(&validation_fitted, prior, &split.scenes)?;
                        let backend = JournaledBackend::new(engine.as_ref(), journal);
                        let output = score_simulator(&hinted, &backend, &hint_config, &[])?;
                        extra_requests.add(&backend);
                        timings.insert("validation_prompt_hint_scoring".to_owned(), output.wall_s);
                        let distributions: Vec<Vec<f64>> = output
                            .predictions
                            .into_iter()
                            .map(|p| p.distribution)
                            .collect();
                        let answers: Vec<usize> = split.scenes.iter().map(|s| s.answer).collect();
                        let compared =
                            PromptHintFit::compare(prior, &distributions, &answers, &fit)?;
                        eprintln!(
                            "prior in the prompt: validation NLL {:.4} nats vs the hybrid's {:.4}; {} wins",
                            compared.nll_nats_prompt_hint,
                            compared.nll_nats_hybrid,
                            compared.winner
                        );
                        Some(compared)
                    }
                    _ => None,
                };
                let file = HybridFile {
                    prior,
                    model: model_id.clone(),
                    weights: fit.weights,
                    fit,
                    validation_scenes_file: path.display().to_string(),
                    validation_boundary: split.boundary,
                    eval_cutoff,
                    validation_prior_cutoff: prior_cutoff,
                    bounds,
                    prompt_hint,
                };
                write_hybrid_file(&hybrid_path, &file)?;
                eprintln!("hybrid: wrote {}", hybrid_path.display());
                file
            }
            (None, Some(file)) => {
                if file.model != model_id {
                    bail!(
                        "{} was fitted for the model {:?}, not {:?}; pass --validation-scenes to \
                         refit",
                        hybrid_path.display(),
                        file.model,
                        model_id
                    );
                }
                file
            }
            (None, None) => bail!("the hybrid has neither validation scenes nor a hybrid.json"),
        };
        let weights = file.weights;
        let predictions = hybrid_predictions(
            fitted,
            prior,
            &weights,
            &scenes,
            &llm_distributions,
            args.repeats,
            args.seed,
        )?;
        let name = format!("hybrid({simulator_name} + {prior})");
        predictors.push(PredictorMetrics {
            name: name.clone(),
            kind: PredictorKind::Simulator,
            metrics: choice_metrics(&predictions).context("no scenes to evaluate")?,
            agent4rec: BTreeMap::new(),
        });
        lines.extend(predictions.into_iter().map(|prediction| PredictionLine {
            predictor: name.clone(),
            prediction,
        }));
        // The prior alone at the temperature fitted on validation, for a calibrated comparison.
        let prior_name = format!(
            "{prior} (T = {:.4} from validation)",
            weights.prior_temperature
        );
        let prior_predictions = scenes
            .iter()
            .map(|scene| {
                let distribution = weights.prior_distribution(&fitted.scores(prior, scene)?);
                Ok(sampled_prediction(
                    scene,
                    distribution,
                    args.seed,
                    args.repeats,
                ))
            })
            .collect::<Result<Vec<_>, mirrorsim_eval::EvalError>>()?;
        predictors.push(PredictorMetrics {
            name: prior_name.clone(),
            kind: PredictorKind::Baseline,
            metrics: choice_metrics(&prior_predictions).context("no scenes to evaluate")?,
            agent4rec: BTreeMap::new(),
        });
        lines.extend(
            prior_predictions
                .into_iter()
                .map(|prediction| PredictionLine {
                    predictor: prior_name.clone(),
                    prediction,
                }),
        );
        notes.push(format!(
            "hybrid: p ∝ p_llm^{:.4} · p_{prior}^{:.4} with p_{prior} = softmax(score / {:.4}), \
             fitted on {} validation scenes decided in [{}, {}) (their prior saw only \
             interactions before {}); validation NLL (nats): LLM {:.4}, prior {:.4}, hybrid {:.4}",
            weights.llm_weight,
            weights.prior_weight,
            weights.prior_temperature,
            file.fit.scenes,
            file.validation_boundary,
            file.eval_cutoff,
            file.validation_prior_cutoff,
            file.fit.nll_nats_llm,
            file.fit.nll_nats_prior,
            file.fit.nll_nats_hybrid
        ));
        if let Some(hint) = &file.prompt_hint {
            notes.push(format!(
                "prior in the prompt (\"{}\" on the option the {prior} prior ranks first): \
                 validation NLL {:.4} nats against the hybrid's {:.4}; the {} wins",
                hint.hint, hint.nll_nats_prompt_hint, hint.nll_nats_hybrid, hint.winner
            ));
        }
        timings.insert("hybrid".to_owned(), started.elapsed().as_secs_f64());
        if let (true, Some((engine, journal))) = (args.prior_in_prompt, &loaded) {
            let hinted = hinted_scenes(fitted, prior, &scenes)?;
            let backend = JournaledBackend::new(engine.as_ref(), journal);
            let output = score_simulator(&hinted, &backend, &hint_config, &[])?;
            extra_requests.add(&backend);
            timings.insert("prompt_hint_scoring".to_owned(), output.wall_s);
            let name = format!("{simulator_name} + {prior} hint in prompt");
            predictors.push(simulator_predictor_metrics(&name, &hinted, &output, &[])?);
            lines.extend(
                output
                    .predictions
                    .into_iter()
                    .map(|prediction| PredictionLine {
                        predictor: name.clone(),
                        prediction,
                    }),
            );
        }
    }
    let mut ratings = Vec::new();
    if let (true, Some(catalog)) = (args.ratings, &catalog) {
        let started = Instant::now();
        let cases = rating_cases(catalog, &scenes);
        if cases.is_empty() {
            bail!(
                "--ratings: none of the {} scenes' decisions carries a rating in {}",
                scenes.len(),
                catalog.name
            );
        }
        if let Some((engine, journal)) = &loaded {
            let history_len = scenes.iter().map(|s| s.history.len()).max().unwrap_or(0);
            let summary = summary_beside(&args.scenes)?;
            let scenes_config = summary.as_ref().map(|(summary, _)| &summary.config);
            let slates = rating_slates(catalog.clone(), history_len, scenes_config, cutoff)?;
            let requests = rating_requests(&slates, &cases)?;
            let backend = JournaledBackend::new(engine.as_ref(), journal);
            let mut predicted = Vec::with_capacity(cases.len());
            for batch in requests.chunks(8) {
                for (request, answer) in batch.iter().zip(backend.score_choices(batch)?) {
                    let distribution = answer
                        .distributions
                        .first()
                        .context("the backend answered a rating request with no distribution")?;
                    predicted.push(expected_rating(&request.labels, distribution)?);
                }
            }
            extra_requests.add(&backend);
            ratings.push(rating_metrics(
                &format!("{simulator_name} (expected rating)"),
                &cases,
                &predicted,
            )?);
        }
        let rating_baselines = RatingBaselines::fit(catalog, cutoff)?;
        for (name, predicted) in rating_baselines.predict(&cases) {
            ratings.push(rating_metrics(name, &cases, &predicted)?);
        }
        notes.push(format!(
            "rating prediction: {} of {} scenes' decisions carry a rating; baselines fitted on \
             ratings before the cutoff",
            cases.len(),
            scenes.len()
        ));
        timings.insert("ratings".to_owned(), started.elapsed().as_secs_f64());
    }
    notes.extend(coverage_notes(
        &scenes,
        !args.no_agent4rec,
        !ratings.is_empty(),
    ));

    let metrics = MetricsFile {
        scenes_file: args.scenes.display().to_string(),
        scenes: scenes.len(),
        model: model_id,
        mode: mode_name,
        repeats: args.repeats,
        seed: args.seed,
        cutoff_timestamp: cutoff,
        cutoff_source,
        interactions_before_cutoff,
        baseline_config: (!kinds.is_empty()).then_some(baseline_config),
        predictors,
        notes,
        timings,
        llm_requests_from_journal: journal_hits.map(|h| h + extra_requests.hits),
        llm_requests_sent: journal_misses.map(|m| m + extra_requests.misses),
        ratings,
    };
    let label = args.out.file_name().map_or_else(
        || args.out.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut curves = read_loss_curves(&args.out)?;
    if curves.is_empty() {
        if let Some(parent) = args.out.parent() {
            curves = read_loss_curves(parent)?;
        }
    }
    let written = write_eval_folder(
        &args.out,
        &metrics,
        &lines,
        "mirrorsim evaluation",
        label,
        curves,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&metrics)?);
        return Ok(());
    }
    print_metrics(&metrics, "");
    for r in &metrics.ratings {
        println!(
            "rating: {:<40} MAE {:.4}  RMSE {:.4}  ({} ratings, mean predicted {:.3}, real {:.3})",
            r.predictor, r.mae, r.rmse, r.cases, r.mean_predicted, r.mean_real
        );
    }
    println!("wrote {written}");
    Ok(())
}

/// Journal hits and misses summed over several journaled passes.
#[derive(Debug, Default)]
struct RequestCounts {
    hits: u64,
    misses: u64,
}

impl RequestCounts {
    fn add(&mut self, backend: &JournaledBackend<'_>) {
        let counts = backend.counts();
        self.hits += counts.hits;
        self.misses += counts.misses;
    }
}

/// The simulator of --model (with --adapter) or --endpoint.
fn load_simulator(args: &EvalArgs) -> anyhow::Result<Box<dyn Backend>> {
    if let Some(url) = &args.endpoint {
        let config = HttpConfig {
            max_concurrency: args.concurrency,
            ..HttpConfig::new(url.clone(), args.served_model.clone().unwrap_or_default())
        };
        let backend = HttpBackend::new(config)
            .with_context(|| format!("configuring the HTTP backend {url}"))?;
        return Ok(Box::new(backend));
    }
    let model = args.model.as_deref().map(Path::new);
    Ok(Box::new(load_local(model, args.adapter.as_deref())?))
}

/// `DIR/metrics.json`, `DIR/predictions.jsonl` and `DIR/report.html` (loss curves beside the
/// metrics when given), each written atomically; returns the three paths for a message.
pub(crate) fn write_eval_folder(
    dir: &Path,
    metrics: &MetricsFile,
    lines: &[PredictionLine],
    title: &str,
    label: String,
    loss_curves: Vec<LossCurve>,
) -> anyhow::Result<String> {
    let paths = write_outputs(dir, metrics, lines)?;
    let report_path = dir.join("report.html");
    let run = ReportRun {
        label,
        metrics: metrics.clone(),
        loss_curves,
    };
    let html = render_report(title, &[run]);
    mirrorsim_data::io::write_atomic(&report_path, |w| w.write_all(html.as_bytes()))
        .with_context(|| format!("writing {}", report_path.display()))?;
    Ok(format!(
        "{}, {} and {}",
        paths.metrics.display(),
        paths.predictions.display(),
        report_path.display()
    ))
}

/// One line per predictor: accuracy with its interval, NLL and ECE.
pub(crate) fn print_metrics(metrics: &MetricsFile, indent: &str) {
    println!(
        "{indent}{:<44} {:>9} {:>17} {:>9} {:>7}",
        "predictor", "accuracy", "95% CI", "NLL bits", "ECE"
    );
    for p in &metrics.predictors {
        let m = &p.metrics;
        println!(
            "{indent}{:<44} {:>9.4} [{:.4}, {:.4}] {:>9.4} {:>7.4}",
            p.name, m.accuracy, m.ci_low, m.ci_high, m.nll_bits, m.ece
        );
    }
}
