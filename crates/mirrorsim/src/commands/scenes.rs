//! `mirrorsim scenes`: build leakage-free listwise choice scenes from a dataset.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use mirrorsim_data::scenes::{
    build_scenes, write_scenes, NegativeMix, OptionRange, SceneConfig, ScenePaths, SceneSummary,
    StageTimings,
};
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use serde::Serialize;

#[derive(Debug, Args)]
#[command(
    long_about = "Build leakage-free listwise choice scenes from a dataset.\n\n\
    Writes OUT/scenes.train.jsonl, OUT/scenes.eval.jsonl and OUT/scenes.summary.json. \
    A global time cutoff splits the decisions: the latest EVAL_FRACTION of interactions are \
    eligible as eval decisions, everything strictly earlier as train decisions, and every \
    history holds only interactions strictly before its own decision. Each scene shows the \
    real choice among negatives from the --negatives mix, in a slot drawn uniformly over all \
    slots; the same --seed gives the same files byte for byte."
)]
pub struct ScenesArgs {
    /// The dataset as FORMAT:PATH, e.g. recbole:../shared/data/ml-1m
    #[arg(long)]
    source: String,
    /// Folder for the scene files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Seed of every random choice (scene sampling, options, slots).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// At most this many train scenes, sampled from the eligible decisions [default: all].
    #[arg(long, value_name = "N")]
    max_train: Option<usize>,
    /// At most this many eval scenes, sampled from the eligible decisions [default: all].
    #[arg(long, value_name = "N")]
    max_eval: Option<usize>,
    /// Number of options of every eval scene.
    #[arg(long, value_name = "K", default_value_t = 5)]
    eval_options: usize,
    /// Number of options of train scenes, uniform in MIN..MAX (inclusive).
    #[arg(long, value_name = "MIN..MAX", default_value = "2..12")]
    train_options: OptionRange,
    /// Weights of the negative sources: random, popularity, collaborative, content,
    /// impressions (sources left out get 0; impressions is ignored where none are logged).
    #[arg(
        long,
        value_name = "SOURCE=W,...",
        default_value = "random=1,popularity=1,collaborative=1,content=1,impressions=1"
    )]
    negatives: NegativeMix,
    /// How many of the latest earlier interactions the prompt shows.
    #[arg(long, value_name = "N", default_value_t = 10)]
    history: usize,
    /// Decisions with fewer strictly earlier interactions are not used.
    #[arg(long, value_name = "N", default_value_t = 3)]
    min_history: usize,
    /// Share of the latest interactions eligible as eval decisions.
    #[arg(long, value_name = "F", default_value_t = 0.1)]
    eval_fraction: f64,
    /// Folder of prompt templates replacing the embedded ones (scene.j2,
    /// rationale_system.j2, rationale_user.j2, direct_system.j2, direct_user.j2).
    #[arg(long, value_name = "DIR")]
    prompts: Option<PathBuf>,
    /// Describe each option by how often it was chosen before the decision and its mean
    /// rating ("1,234 ratings, average 4.1/5"), counted strictly before the decision
    /// and never after the cutoff: the popularity a real catalogue shows beside an item.
    #[arg(long)]
    item_stats: bool,
    /// With --item-stats, also each option's rank by its count among the options listed
    /// ("(2nd most rated of these)"; equal counts share a rank): the comparison made for a
    /// small model that does not learn to compare the numbers itself (FIDELITY.md).
    #[arg(long, requires = "item_stats")]
    item_stats_rank: bool,
    /// Count and skip malformed rows (reported per reason) instead of failing on the first.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Print the summary and timings as JSON.
    #[arg(long)]
    json: bool,
}

impl ScenesArgs {
    fn config(&self) -> SceneConfig {
        SceneConfig {
            eval_fraction: self.eval_fraction,
            min_history: self.min_history,
            history_len: self.history,
            train_options: self.train_options,
            eval_options: self.eval_options,
            negatives: self.negatives.clone(),
            max_train_scenes: self.max_train,
            max_eval_scenes: self.max_eval,
            seed: self.seed,
            prompts_dir: self.prompts.clone(),
            item_stats: self.item_stats,
            item_stats_rank: self.item_stats_rank,
            ..SceneConfig::default()
        }
    }
}

/// Wall time per stage, in seconds.
#[derive(Debug, Serialize)]
struct Timings {
    load_s: f64,
    #[serde(flatten)]
    build: StageTimings,
    writing_s: f64,
    total_s: f64,
}

#[derive(Debug, Serialize)]
struct ScenesOutput<'a> {
    source: String,
    files: &'a ScenePaths,
    scenes: usize,
    /// Scenes per second of building (split, models, sampling, rendering) and writing,
    /// loading excluded.
    scenes_per_second: f64,
    timings: &'a Timings,
    skipped_rows: &'a std::collections::BTreeMap<String, u64>,
    summary: &'a SceneSummary,
}

pub fn run(args: ScenesArgs) -> anyhow::Result<()> {
    let config = args.config();
    config.validate()?;
    let spec: SourceSpec = args.source.parse()?;
    let started = Instant::now();
    tracing::info!("loading {spec}");
    let (catalog, report) = read_source(
        &spec,
        &ReadOptions {
            skip_bad_rows: args.skip_bad_rows,
        },
    )
    .with_context(|| format!("cannot load the dataset {spec}"))?;
    let load_s = started.elapsed().as_secs_f64();
    tracing::info!(
        "loaded {} users, {} items, {} interactions in {load_s:.2} s",
        catalog.users.len(),
        catalog.items.len(),
        catalog.interactions.len()
    );

    let build_started = Instant::now();
    let set = build_scenes(&catalog, &config)
        .with_context(|| format!("cannot build scenes from {spec}"))?;
    tracing::info!(
        "built {} train + {} eval scenes in {:.2} s",
        set.train.len(),
        set.eval.len(),
        build_started.elapsed().as_secs_f64()
    );
    let write_started = Instant::now();
    let paths = write_scenes(&args.out, &set)?;
    let writing_s = write_started.elapsed().as_secs_f64();
    let timings = Timings {
        load_s,
        build: set.timings.clone(),
        writing_s,
        total_s: started.elapsed().as_secs_f64(),
    };
    let scenes = set.train.len() + set.eval.len();
    let output = ScenesOutput {
        source: spec.to_string(),
        files: &paths,
        scenes,
        scenes_per_second: scenes as f64 / build_started.elapsed().as_secs_f64().max(1e-9),
        timings: &timings,
        skipped_rows: &report.skipped,
        summary: &set.summary,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print!("{}", human_report(&output));
    }
    Ok(())
}

fn human_report(o: &ScenesOutput<'_>) -> String {
    let s = o.summary;
    let t = o.timings;
    let mut text = String::new();
    let _ = writeln!(text, "source      {}", o.source);
    let _ = writeln!(
        text,
        "cutoff      {}",
        s.cutoff_timestamp
            .map_or("none (no eval share)".to_owned(), |c| format!(
                "{c} (Unix seconds); {} interactions before it",
                s.interactions_before_cutoff
            ))
    );
    for (name, split, path) in [
        ("train", &s.train, &o.files.train),
        ("eval", &s.eval, &o.files.eval),
    ] {
        let skipped: Vec<String> = split
            .skipped
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        let _ = writeln!(
            text,
            "{name:<11} {} scenes → {} ({} decisions, {} eligible, {} not sampled; skipped: {})",
            split.scenes,
            path.display(),
            split.decisions,
            split.eligible,
            split.not_sampled,
            if skipped.is_empty() {
                "none".to_owned()
            } else {
                skipped.join(", ")
            }
        );
    }
    let shares: Vec<String> = s
        .negative_sources
        .share
        .iter()
        .filter(|(_, &v)| v > 0.0)
        .map(|(k, v)| format!("{k} {:.1}%", v * 100.0))
        .collect();
    let _ = writeln!(text, "negatives   {}", shares.join(", "));
    if !s.negative_sources.fallbacks.is_empty() {
        let fallbacks: Vec<String> = s
            .negative_sources
            .fallbacks
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(text, "fallbacks   {}", fallbacks.join(", "));
    }
    for disabled in &s.disabled_sources {
        let _ = writeln!(text, "disabled    {disabled}");
    }
    let _ = writeln!(
        text,
        "time        load {:.2} s, split {:.2} s, SVD {:.2} s, TF-IDF {:.2} s, sampling {:.2} s, \
         rendering {:.2} s, writing {:.2} s; {:.0} scenes/s",
        t.load_s,
        t.build.split_s,
        t.build.svd_s,
        t.build.tfidf_s,
        t.build.sampling_s,
        t.build.rendering_s,
        t.writing_s,
        o.scenes_per_second
    );
    let _ = writeln!(text, "summary     {}", o.files.summary.display());
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ScenesArgs,
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let cli = Cli::try_parse_from(["x", "--source", "recbole:d", "--out", "o"]).unwrap();
        assert_eq!(cli.args.config(), SceneConfig::default());
    }

    #[test]
    fn flags_fill_the_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--source",
            "recbole:d",
            "--out",
            "o",
            "--seed",
            "9",
            "--max-train",
            "100",
            "--max-eval",
            "10",
            "--train-options",
            "3..=6",
            "--eval-options",
            "4",
            "--negatives",
            "random=2,content=1",
            "--history",
            "5",
            "--min-history",
            "2",
            "--eval-fraction",
            "0.2",
            "--prompts",
            "p",
        ])
        .unwrap();
        let c = cli.args.config();
        assert_eq!(c.seed, 9);
        assert_eq!(
            (c.max_train_scenes, c.max_eval_scenes),
            (Some(100), Some(10))
        );
        assert_eq!((c.train_options.min, c.train_options.max), (3, 6));
        assert_eq!(c.eval_options, 4);
        assert_eq!((c.negatives.random, c.negatives.content), (2.0, 1.0));
        assert_eq!(c.negatives.popularity, 0.0);
        assert_eq!((c.history_len, c.min_history), (5, 2));
        assert_eq!(c.eval_fraction, 0.2);
        assert_eq!(c.prompts_dir, Some(PathBuf::from("p")));
        assert!(Cli::try_parse_from([
            "x",
            "--source",
            "recbole:d",
            "--out",
            "o",
            "--negatives",
            "bogus=1"
        ])
        .is_err());
    }
}
