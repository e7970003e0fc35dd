//! `mirrorsim hint`: put a collaborative prior's pick into the prompts of a scenes folder, so a
//! simulator can be trained and evaluated on the prompts `eval --prior-in-prompt` scores.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::io::write_atomic;
use mirrorsim_data::scenes::{read_jsonl, write_jsonl, SceneRecord, Split};
use mirrorsim_data::{read_source, Catalog, ReadOptions, SourceSpec};
use mirrorsim_distill::stages::behaviour_example;
use mirrorsim_eval::evaluate::summary_beside;
use mirrorsim_eval::hybrid::{hint_scenes, prior_hint, validation_split, HintCounts};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines};
use serde::Serialize;

#[derive(Debug, Args)]
#[command(
    long_about = "Put a collaborative prior's pick into the prompts of a scenes folder.\n\n\
    Reads DIR/scenes.train.jsonl, DIR/scenes.eval.jsonl and DIR/scenes.summary.json (what \
    `mirrorsim scenes --out DIR` wrote) and writes the same files to OUT, where the option the \
    prior scores strictly highest ends in a note (for EASE: \"what people with your taste chose \
    next\"); a scene whose top score is tied gets none. The note is the one \
    `eval --prior-in-prompt` adds, so a simulator trained on OUT/scenes.train.jsonl is \
    evaluated on the prompts it learned from.\n\n\
    No prior sees the choice it hints at. Eval scenes get the prior fitted on the interactions \
    before the cutoff (the baselines of `mirrorsim eval`). Train scenes are only those decided \
    in the last --train-fraction of the pre-cutoff period, and they get the prior fitted on the \
    interactions before the earliest of them. OUT/hint.json counts the hinted scenes and how \
    often the hint is on the real choice; --sft-examples N also writes OUT/sft.jsonl, the first \
    N hinted train scenes as behaviour-only SFT examples for `mirrorsim train sft`."
)]
pub struct HintArgs {
    /// A `mirrorsim scenes` output folder.
    #[arg(long, value_name = "DIR")]
    scenes: PathBuf,
    /// The dataset the scenes were built from, as FORMAT:PATH.
    #[arg(long)]
    catalog: String,
    /// The priors whose picks are written into the prompt: one or more of knn, ease,
    /// popularity and sequential, comma-separated. Each prior's pick gets its own note; an
    /// option two priors pick gets both, in this order.
    #[arg(long, default_value = "ease", value_name = "KIND[,KIND]")]
    prior: String,
    /// The sequential prior counts "b followed a" within this many steps.
    #[arg(long, default_value_t = 20)]
    sequential_window: usize,
    /// The sequential prior scores options against the user's last this many choices.
    #[arg(long, default_value_t = 20)]
    sequential_recent: usize,
    /// Keep the train scenes decided in this last share of the pre-cutoff period.
    #[arg(long, default_value_t = 0.1)]
    train_fraction: f64,
    /// EASE's L2 weight λ.
    #[arg(long, default_value_t = 500.0)]
    ease_lambda: f64,
    /// EASE uses at most this many items (the most interacted).
    #[arg(long, default_value_t = 4000)]
    ease_max_items: usize,
    /// Also write OUT/sft.jsonl: the first N hinted train scenes as behaviour-only SFT
    /// examples (the direct prompt, the real choice as `Behavior: [X]`), for `train sft`.
    #[arg(long, value_name = "N")]
    sft_examples: Option<usize>,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Print hint.json to stdout.
    #[arg(long)]
    json: bool,
}

/// `OUT/hint.json`.
#[derive(Debug, Serialize)]
pub(crate) struct HintSummary {
    priors: Vec<BaselineKind>,
    hints: Vec<&'static str>,
    config: BaselineConfig,
    catalog: String,
    scenes: String,
    cutoff_timestamp: i64,
    train: Option<TrainHint>,
    eval: Option<SplitHint>,
    /// Behaviour-only SFT examples written to OUT/sft.jsonl (with --sft-examples).
    sft_examples: Option<usize>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct SplitHint {
    /// The prior saw only interactions strictly before this Unix time.
    prior_cutoff: i64,
    #[serde(flatten)]
    counts: HintCounts,
}

#[derive(Debug, Serialize)]
pub(crate) struct TrainHint {
    /// Train scenes in the input; only those decided at or after `boundary` are kept.
    scenes_in: usize,
    fraction: f64,
    boundary: i64,
    #[serde(flatten)]
    kept: SplitHint,
}

/// One hint job: a scenes folder in, the hinted folder out (`mirrorsim hint` and the `[hint]`
/// stage of `mirrorsim run`).
pub(crate) struct HintJob<'a> {
    pub scenes: &'a Path,
    /// The dataset the scenes were built from, read once by the caller.
    pub catalog: &'a Catalog,
    /// How the catalog was named (FORMAT:PATH), recorded in hint.json.
    pub catalog_spec: String,
    pub priors: &'a [BaselineKind],
    pub config: BaselineConfig,
    pub train_fraction: f64,
    /// Write OUT/sft.jsonl with the first this many hinted train scenes.
    pub sft_examples: Option<usize>,
    pub out: &'a Path,
}

/// Hints both splits of `job.scenes` and writes OUT/{scenes.train.jsonl, scenes.eval.jsonl,
/// scenes.summary.json, hint.json} and, with `sft_examples`, OUT/sft.jsonl. Nothing is
/// written until every output is computed, and each file is replaced atomically.
pub(crate) fn hint_folder(job: &HintJob) -> anyhow::Result<HintSummary> {
    let started = Instant::now();
    let priors = job.priors;
    let train_path = job.scenes.join("scenes.train.jsonl");
    let eval_path = job.scenes.join("scenes.eval.jsonl");
    let summary_path = job.scenes.join("scenes.summary.json");
    let read = |path: &Path, split: Split| -> anyhow::Result<Option<Vec<SceneRecord>>> {
        if !path.is_file() {
            return Ok(None);
        }
        let scenes = read_jsonl(path)?;
        if let Some(scene) = scenes.iter().find(|s| s.split != split) {
            bail!(
                "{}: scene {}: field `split` is {}, not {}",
                path.display(),
                scene.id,
                scene.split.name(),
                split.name()
            );
        }
        Ok(Some(scenes))
    };
    // An empty file (`scenes --max-train 0`) has nothing to hint.
    let train = read(&train_path, Split::Train)?.filter(|s| !s.is_empty());
    let eval = read(&eval_path, Split::Eval)?.filter(|s| !s.is_empty());
    if train.is_none() && eval.is_none() {
        bail!(
            "{} holds no scenes in scenes.train.jsonl or scenes.eval.jsonl: pass the folder \
             `mirrorsim scenes --out` wrote",
            job.scenes.display()
        );
    }
    let cutoff = summary_beside(&eval_path)?
        .and_then(|(summary, _)| summary.cutoff_timestamp)
        .with_context(|| {
            format!(
                "{} is missing or names no cutoff_timestamp; the priors are fitted before it",
                summary_path.display()
            )
        })?;

    let catalog = job.catalog;
    let config = &job.config;
    let with_ease = priors.contains(&BaselineKind::Ease);
    let fit = |before: i64| {
        eprintln!(
            "hint: fitting the {} prior on the interactions before {before}",
            super::eval::prior_names(priors)
        );
        FittedBaselines::fit(catalog, Some(before), config, with_ease)
    };

    let mut train_out = None;
    if let Some(train) = &train {
        let period_start = catalog
            .interactions
            .first()
            .map(|i| i.timestamp)
            .context("the catalog holds no interactions")?;
        let split = validation_split(train, period_start, cutoff, job.train_fraction)
            .with_context(|| format!("train scenes {}", train_path.display()))?;
        if split.scenes.is_empty() {
            bail!(
                "{}: none of its {} scenes is decided in the last {} of the pre-cutoff period; \
                 build more train scenes or raise the train fraction",
                train_path.display(),
                train.len(),
                job.train_fraction
            );
        }
        let prior_cutoff = split.prior_cutoff();
        let (hinted, counts) = hint_scenes(&fit(prior_cutoff)?, priors, &split.scenes)?;
        train_out = Some((
            hinted,
            TrainHint {
                scenes_in: train.len(),
                fraction: job.train_fraction,
                boundary: split.boundary,
                kept: SplitHint {
                    prior_cutoff,
                    counts,
                },
            },
        ));
    }
    let mut eval_out = None;
    if let Some(eval) = &eval {
        let (hinted, counts) = hint_scenes(&fit(cutoff)?, priors, eval)?;
        eval_out = Some((
            hinted,
            SplitHint {
                prior_cutoff: cutoff,
                counts,
            },
        ));
    }
    let sft = match (job.sft_examples, &train_out) {
        (None, _) => None,
        (Some(_), None) => bail!(
            "SFT examples (`hint --sft-examples`, `[hint] sft_examples`) need train scenes, and \
             {} has none",
            train_path.display()
        ),
        (Some(n), Some((hinted, _))) => Some(
            hinted
                .iter()
                .take(n)
                .map(behaviour_example)
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    // `mirrorsim eval` reads the cutoff from the summary beside the scenes.
    let summary = mirrorsim_data::io::read_all(&summary_path)?;
    if let Some((hinted, _)) = &train_out {
        write_jsonl(&job.out.join("scenes.train.jsonl"), hinted)?;
    }
    if let Some((hinted, _)) = &eval_out {
        write_jsonl(&job.out.join("scenes.eval.jsonl"), hinted)?;
    }
    write_atomic(&job.out.join("scenes.summary.json"), |w| {
        w.write_all(&summary)
    })?;
    if let Some(examples) = &sft {
        mirrorsim_distill::records::write_jsonl(&job.out.join("sft.jsonl"), examples)?;
    }

    let report = HintSummary {
        hints: priors.iter().map(|&p| prior_hint(p)).collect(),
        priors: priors.to_vec(),
        config: job.config.clone(),
        catalog: job.catalog_spec.clone(),
        scenes: job.scenes.display().to_string(),
        cutoff_timestamp: cutoff,
        train: train_out.map(|(_, counts)| counts),
        eval: eval_out.map(|(_, counts)| counts),
        sft_examples: sft.as_ref().map(Vec::len),
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&report)?;
    write_atomic(&job.out.join("hint.json"), |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })?;
    Ok(report)
}

pub fn run(args: HintArgs) -> anyhow::Result<()> {
    let priors = super::eval::parse_hint_priors(&args.prior)?;
    let spec: SourceSpec = args.catalog.parse()?;
    let (catalog, _) =
        read_source(&spec, &ReadOptions::default()).with_context(|| format!("reading {spec}"))?;
    let job = HintJob {
        scenes: &args.scenes,
        catalog: &catalog,
        catalog_spec: args.catalog.clone(),
        priors: &priors,
        config: BaselineConfig {
            ease_lambda: args.ease_lambda,
            ease_max_items: args.ease_max_items,
            sequential_window: args.sequential_window,
            sequential_recent: args.sequential_recent,
            ..BaselineConfig::default()
        },
        train_fraction: args.train_fraction,
        sft_examples: args.sft_examples,
        out: &args.out,
    };
    let report = hint_folder(&job)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_hint_summary(&report);
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The per-split lines `mirrorsim hint` prints.
pub(crate) fn print_hint_summary(report: &HintSummary) {
    let line = |name: &str, s: &SplitHint| {
        let c = &s.counts;
        let share = |n: usize| n as f64 / c.scenes.max(1) as f64;
        println!(
            "{name}: {} scenes, {} hinted; prior fitted before {}",
            c.scenes, c.hinted, s.prior_cutoff
        );
        for p in &c.by_prior {
            println!(
                "  {}: hints {} scenes, on the real choice in {} ({:.3})",
                p.prior,
                p.hinted,
                p.hint_on_answer,
                share(p.hint_on_answer)
            );
        }
        if c.by_prior.len() > 1 {
            println!(
                "  all hints on one option in {} ({:.3}); some hint on the real choice in {} \
                 ({:.3})",
                c.hints_agree,
                share(c.hints_agree),
                c.hint_on_answer,
                share(c.hint_on_answer)
            );
        }
    };
    if let Some(t) = &report.train {
        line("train", &t.kept);
        println!(
            "       (kept from {} train scenes: those decided at or after {})",
            t.scenes_in, t.boundary
        );
    }
    if let Some(e) = &report.eval {
        line("eval", e);
    }
    if let Some(n) = report.sft_examples {
        println!("sft.jsonl: {n} behaviour-only examples from the hinted train scenes");
    }
}
