//! `mirrorsim hint`: put a collaborative prior's pick into the prompts of a scenes folder, so a
//! simulator can be trained and evaluated on the prompts `eval --prior-in-prompt` scores.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::io::write_atomic;
use mirrorsim_data::scenes::{read_jsonl, write_jsonl, SceneRecord, Split};
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
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
    often the hint is on the real choice."
)]
pub struct HintArgs {
    /// A `mirrorsim scenes` output folder.
    #[arg(long, value_name = "DIR")]
    scenes: PathBuf,
    /// The dataset the scenes were built from, as FORMAT:PATH.
    #[arg(long)]
    catalog: String,
    /// The prior whose pick is written into the prompt: knn, ease or popularity.
    #[arg(long, default_value = "ease", value_parser = super::eval::parse_prior)]
    prior: BaselineKind,
    /// Keep the train scenes decided in this last share of the pre-cutoff period.
    #[arg(long, default_value_t = 0.1)]
    train_fraction: f64,
    /// EASE's L2 weight λ.
    #[arg(long, default_value_t = 500.0)]
    ease_lambda: f64,
    /// EASE uses at most this many items (the most interacted).
    #[arg(long, default_value_t = 4000)]
    ease_max_items: usize,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Print hint.json to stdout.
    #[arg(long)]
    json: bool,
}

/// `OUT/hint.json`.
#[derive(Debug, Serialize)]
struct HintSummary {
    prior: BaselineKind,
    hint: &'static str,
    catalog: String,
    scenes: String,
    cutoff_timestamp: i64,
    train: Option<TrainHint>,
    eval: Option<SplitHint>,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct SplitHint {
    /// The prior saw only interactions strictly before this Unix time.
    prior_cutoff: i64,
    #[serde(flatten)]
    counts: HintCounts,
}

#[derive(Debug, Serialize)]
struct TrainHint {
    /// Train scenes in the input; only those decided at or after `boundary` are kept.
    scenes_in: usize,
    fraction: f64,
    boundary: i64,
    #[serde(flatten)]
    kept: SplitHint,
}

pub fn run(args: HintArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let train_path = args.scenes.join("scenes.train.jsonl");
    let eval_path = args.scenes.join("scenes.eval.jsonl");
    let summary_path = args.scenes.join("scenes.summary.json");
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
            args.scenes.display()
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

    let spec: SourceSpec = args.catalog.parse()?;
    let (catalog, _) =
        read_source(&spec, &ReadOptions::default()).with_context(|| format!("reading {spec}"))?;
    let config = BaselineConfig {
        ease_lambda: args.ease_lambda,
        ease_max_items: args.ease_max_items,
        ..BaselineConfig::default()
    };
    let with_ease = args.prior == BaselineKind::Ease;
    let fit = |before: i64| {
        eprintln!(
            "hint: fitting the {} prior on the interactions before {before}",
            args.prior
        );
        FittedBaselines::fit(&catalog, Some(before), &config, with_ease)
    };

    let mut train_out = None;
    if let Some(train) = &train {
        let period_start = catalog
            .interactions
            .first()
            .map(|i| i.timestamp)
            .context("the catalog holds no interactions")?;
        let split = validation_split(train, period_start, cutoff, args.train_fraction)
            .with_context(|| format!("train scenes {}", train_path.display()))?;
        if split.scenes.is_empty() {
            bail!(
                "{}: none of its {} scenes is decided in the last {} of the pre-cutoff period; \
                 build more train scenes or raise --train-fraction",
                train_path.display(),
                train.len(),
                args.train_fraction
            );
        }
        let prior_cutoff = split.prior_cutoff();
        let (hinted, counts) = hint_scenes(&fit(prior_cutoff)?, args.prior, &split.scenes)?;
        train_out = Some((
            hinted,
            TrainHint {
                scenes_in: train.len(),
                fraction: args.train_fraction,
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
        let (hinted, counts) = hint_scenes(&fit(cutoff)?, args.prior, eval)?;
        eval_out = Some((
            hinted,
            SplitHint {
                prior_cutoff: cutoff,
                counts,
            },
        ));
    }
    // Nothing is written until both splits are hinted: a failure leaves no partial folder.
    // `mirrorsim eval` reads the cutoff from the summary beside the scenes.
    let summary = mirrorsim_data::io::read_all(&summary_path)?;
    if let Some((hinted, _)) = &train_out {
        write_jsonl(&args.out.join("scenes.train.jsonl"), hinted)?;
    }
    if let Some((hinted, _)) = &eval_out {
        write_jsonl(&args.out.join("scenes.eval.jsonl"), hinted)?;
    }
    write_atomic(&args.out.join("scenes.summary.json"), |w| {
        w.write_all(&summary)
    })?;

    let report = HintSummary {
        prior: args.prior,
        hint: prior_hint(args.prior),
        catalog: args.catalog.clone(),
        scenes: args.scenes.display().to_string(),
        cutoff_timestamp: cutoff,
        train: train_out.map(|(_, counts)| counts),
        eval: eval_out.map(|(_, counts)| counts),
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&report)?;
    write_atomic(&args.out.join("hint.json"), |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")
    })?;
    if args.json {
        println!("{text}");
    } else {
        let line = |name: &str, s: &SplitHint| {
            let c = &s.counts;
            println!(
                "{name}: {} scenes, {} hinted, the hint on the real choice in {} ({:.3}); prior \
                 fitted before {}",
                c.scenes,
                c.hinted,
                c.hint_on_answer,
                c.hint_on_answer as f64 / c.scenes.max(1) as f64,
                s.prior_cutoff
            );
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
        println!("wrote {}", args.out.display());
    }
    Ok(())
}
