//! `mirrorsim demo`: the chain that exists so far, small, on the embedded ml-latest-small and the
//! default model: scenes → strong and weak rationales → predictor scores → ΔEU distillation
//! (training sets) → the model's direct choice distribution on held-out eval scenes, scored
//! against the real choices. Every LLM call goes through the run journal.
//!
//! Only one model ships, so the demo's "strong" and "weak" sources are the same SmolLM2 sampled
//! at a low and a high temperature; real runs name different models (see `configs/`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::scenes::{build_scenes, write_scenes, SceneConfig, SceneRecord};
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_distill::records::write_jsonl;
use mirrorsim_distill::{
    distill, generate_rationales, score_rationales, write_distill, DistillConfig, GenerateConfig,
    Journal, JournaledBackend, Role, ScoreConfig,
};
use mirrorsim_llm::engine::LocalEngine;
use mirrorsim_llm::{Backend, ChatMessage, ChoiceRequest, Prompt};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run directory (default: runs/demo-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The demo dataset as FORMAT:PATH (default: the embedded data/ml-latest-small).
    #[arg(long)]
    source: Option<String>,
    /// Model: a GGUF file or an HF model directory (default: SmolLM2-135M-Instruct, fetched).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Train scenes to build.
    #[arg(long, default_value_t = 200)]
    train_scenes: usize,
    /// Eval scenes to build and score with the model.
    #[arg(long, default_value_t = 60)]
    eval_scenes: usize,
    /// Train scenes that go through rationales → scores → distillation.
    #[arg(long, default_value_t = 6)]
    distill_scenes: usize,
    /// Rationales per scene and source.
    #[arg(long, default_value_t = 2)]
    rationales: usize,
    /// Most tokens per rationale.
    #[arg(long, default_value_t = 160)]
    rationale_tokens: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct DemoSummary {
    run_dir: PathBuf,
    dataset: String,
    model: String,
    train_scenes: usize,
    eval_scenes: usize,
    /// Share of eval scenes where the model's most likely option is the real choice.
    direct_accuracy: f64,
    /// Mean negative log2-likelihood of the real choice (bits).
    direct_nll_bits: f64,
    /// What uniform guessing scores on the same scenes.
    chance_accuracy: f64,
    chance_nll_bits: f64,
    distilled_scenes: usize,
    distill_candidates: usize,
    distill_kept: usize,
    example_scene: String,
    example_rationale: String,
    /// LLM requests answered from the run journal / sent to the model in this run.
    journal_hits: u64,
    journal_misses: u64,
    seconds: DemoTimings,
}

#[derive(Debug, Default, Serialize)]
struct DemoTimings {
    scenes: f64,
    model_load: f64,
    rationales: f64,
    predictor_scores: f64,
    distill: f64,
    eval_scoring: f64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut timings = DemoTimings::default();
    let run_dir = args.out.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("runs/demo-{now}"))
    });
    let source: SourceSpec = match &args.source {
        Some(spec) => spec.parse()?,
        None => SourceSpec {
            format: "movielens".into(),
            path: embedded_dataset()?,
        },
    };

    let started = Instant::now();
    eprintln!("[1/4] reading {source} and building scenes");
    let (catalog, _) = read_source(&source, &ReadOptions::default())
        .with_context(|| format!("reading the demo dataset {source}"))?;
    let config = SceneConfig {
        max_train_scenes: Some(args.train_scenes),
        max_eval_scenes: Some(args.eval_scenes),
        seed: args.seed,
        ..SceneConfig::default()
    };
    let scenes = build_scenes(&catalog, &config)?;
    let paths = write_scenes(&run_dir.join("scenes"), &scenes)?;
    timings.scenes = started.elapsed().as_secs_f64();
    if scenes.eval.is_empty() {
        bail!("the demo dataset produced no eval scenes");
    }

    let started = Instant::now();
    let model_path = super::model_arg::local_model_path(args.model.as_deref())?;
    eprintln!("[2/4] loading {}", model_path.display());
    let engine = LocalEngine::load(&model_path, super::model_arg::engine_options())
        .with_context(|| format!("loading the model {}", model_path.display()))?;
    timings.model_load = started.elapsed().as_secs_f64();

    let journal = Journal::open(&run_dir.join("journal.sqlite"))?;
    let journaled = JournaledBackend::new(&engine, &journal);
    let distill_dir = run_dir.join("distill");
    let distill_scenes: Vec<SceneRecord> = scenes
        .train
        .iter()
        .take(args.distill_scenes)
        .cloned()
        .collect();
    eprintln!(
        "[3/4] rationales (strong: T=0.7, weak: T=1.3; {} per scene) → predictor scores → ΔEU on {} train scenes",
        args.rationales,
        distill_scenes.len()
    );
    let started = Instant::now();
    let mut rationales = Vec::new();
    for (role, temperature) in [(Role::Strong, 0.7), (Role::Weak, 1.3)] {
        let config = GenerateConfig {
            n: args.rationales,
            temperature,
            top_p: 0.9,
            max_tokens: args.rationale_tokens,
            seed: args.seed,
            ..GenerateConfig::default()
        };
        let (records, summary) = generate_rationales(&distill_scenes, &journaled, role, &config)?;
        eprintln!("  {summary}");
        write_jsonl(
            &distill_dir.join(format!("rationales.{}.jsonl", role.name())),
            &records,
        )?;
        rationales.extend(records);
    }
    timings.rationales = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let score_config = ScoreConfig {
        seed: args.seed,
        ..ScoreConfig::default()
    };
    let (scores, summary) =
        score_rationales(&distill_scenes, &rationales, &journaled, &score_config)?;
    eprintln!("  {summary}");
    write_jsonl(&distill_dir.join("scores.jsonl"), &scores)?;
    timings.predictor_scores = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let distilled = distill(
        &distill_scenes,
        &scores,
        &rationales,
        &DistillConfig {
            top_k: distill_scenes.len(),
            seed: args.seed,
            ..DistillConfig::default()
        },
    )?;
    write_distill(&distill_dir, &distilled)?;
    timings.distill = started.elapsed().as_secs_f64();
    let example = distill_scenes.first().unwrap_or(&scenes.eval[0]);
    let example_rationale = rationales
        .iter()
        .find(|r| r.scene_id == example.id)
        .map(|r| r.text.clone())
        .unwrap_or_default();

    eprintln!(
        "[4/4] scoring {} eval scenes (direct mode: the model's distribution after `Behavior: [`)",
        scenes.eval.len()
    );
    let started = Instant::now();
    let requests: Vec<ChoiceRequest> = scenes.eval.iter().map(direct_request).collect();
    let scores = journaled.score_choices(&requests)?;
    timings.eval_scoring = started.elapsed().as_secs_f64();

    let mut hits = 0usize;
    let mut nll = 0.0f64;
    let mut chance_nll = 0.0f64;
    let mut chance_acc = 0.0f64;
    for (scene, score) in scenes.eval.iter().zip(&scores) {
        let dist = &score.distributions[0];
        let best = argmax(dist);
        hits += usize::from(best == scene.answer);
        nll -= dist[scene.answer].max(1e-12).log2();
        let k = scene.options.len() as f64;
        chance_nll += k.log2();
        chance_acc += 1.0 / k;
    }
    let n = scenes.eval.len() as f64;
    let summary = DemoSummary {
        run_dir: run_dir.clone(),
        dataset: catalog.name.clone(),
        model: engine.model_id(),
        train_scenes: scenes.train.len(),
        eval_scenes: scenes.eval.len(),
        direct_accuracy: hits as f64 / n,
        direct_nll_bits: nll / n,
        chance_accuracy: chance_acc / n,
        chance_nll_bits: chance_nll / n,
        distilled_scenes: distill_scenes.len(),
        distill_candidates: distilled.summary.candidates,
        distill_kept: distilled.summary.kept,
        example_scene: example.id.clone(),
        example_rationale,
        journal_hits: journaled.counts().hits,
        journal_misses: journaled.counts().misses,
        seconds: timings,
    };
    let summary_path = run_dir.join("demo.summary.json");
    mirrorsim_data::io::write_atomic(&summary_path, |w| {
        serde_json::to_writer_pretty(&mut *w, &summary)?;
        w.write_all(b"\n")
    })?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!();
    println!(
        "mirrorsim demo — {} with {}",
        summary.dataset, summary.model
    );
    println!(
        "  scenes        {} train, {} eval  ({})",
        summary.train_scenes,
        summary.eval_scenes,
        paths.train.parent().unwrap_or(Path::new(".")).display()
    );
    println!(
        "  distillation  {} train scenes → {} with a chosen/rejected pair → {} kept ({})",
        summary.distilled_scenes,
        summary.distill_candidates,
        summary.distill_kept,
        distill_dir.display()
    );
    println!(
        "  example       scene {} — the model, not told the answer, wrote:",
        summary.example_scene
    );
    for line in summary.example_rationale.lines().take(8) {
        println!("                | {line}");
    }
    println!(
        "  direct choice accuracy {:.1}% (chance {:.1}%), NLL {:.2} bits (chance {:.2})",
        100.0 * summary.direct_accuracy,
        100.0 * summary.chance_accuracy,
        summary.direct_nll_bits,
        summary.chance_nll_bits
    );
    println!(
        "  time          scenes {:.1}s, model load {:.1}s, rationales {:.1}s, predictor {:.1}s, eval {:.1}s",
        summary.seconds.scenes,
        summary.seconds.model_load,
        summary.seconds.rationales,
        summary.seconds.predictor_scores,
        summary.seconds.eval_scoring
    );
    println!("  run directory {}", run_dir.display());
    Ok(())
}

fn chat(messages: &[mirrorsim_data::scenes::ChatMessage]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// Direct mode: the behaviour-only prompt, an assistant turn that starts `Behavior: [`.
fn direct_request(scene: &SceneRecord) -> ChoiceRequest {
    let mut messages = chat(&scene.direct_messages);
    messages.push(ChatMessage::new("assistant", ""));
    ChoiceRequest {
        prompt: Prompt::Chat {
            messages,
            continue_final: true,
        },
        continuations: vec!["Behavior: [".to_string()],
        labels: scene.labels.clone(),
    }
}

fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// The embedded demo dataset: `data/ml-latest-small` in the current folder, beside the binary's
/// checkout, or in the source tree it was built from.
fn embedded_dataset() -> anyhow::Result<PathBuf> {
    let relative = Path::new("data").join("ml-latest-small");
    let mut candidates = vec![relative.clone()];
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/mirrorsim → the checkout root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(&relative));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(&relative),
    );
    candidates
        .into_iter()
        .find(|p| p.join("ratings.csv").exists())
        .context(
            "the embedded demo dataset data/ml-latest-small was not found; run the demo from the \
             mirrorsim checkout or pass --source movielens:PATH",
        )
}
