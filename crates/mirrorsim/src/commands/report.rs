//! `mirrorsim report`: several runs' metrics.json compared in one self-contained HTML page.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_eval::evaluate::read_metrics;
use mirrorsim_eval::report::{read_loss_curves, render_report, ReportRun};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run or eval folders, each holding metrics.json (directly or in eval/).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, default_value = "report.html")]
    out: PathBuf,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::with_capacity(args.runs.len());
    for dir in &args.runs {
        let (metrics_path, run_dir) = locate(dir)?;
        let metrics = read_metrics(&metrics_path)?;
        let mut loss_curves = read_loss_curves(&run_dir)?;
        if loss_curves.is_empty() {
            if let Some(eval_dir) = metrics_path.parent() {
                loss_curves = read_loss_curves(eval_dir)?;
            }
        }
        runs.push(ReportRun {
            label: run_label(dir),
            metrics,
            loss_curves,
        });
    }
    let html = render_report("mirrorsim evaluation — runs compared", &runs);
    mirrorsim_data::io::write_atomic(&args.out, |w| w.write_all(html.as_bytes()))
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("wrote {} ({} runs)", args.out.display(), runs.len());
    Ok(())
}

/// `DIR/metrics.json` (the run is DIR) or `DIR/eval/metrics.json` (the run is DIR).
fn locate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    for candidate in [
        dir.join("metrics.json"),
        dir.join("eval").join("metrics.json"),
    ] {
        if candidate.is_file() {
            return Ok((candidate, dir.to_owned()));
        }
    }
    bail!(
        "{} holds no metrics.json (nor eval/metrics.json); run `mirrorsim eval --out {}` first",
        dir.display(),
        dir.display()
    )
}

/// The folder's own name (`run-a`, not `/long/path/run-a`), for short chart labels.
fn run_label(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}
