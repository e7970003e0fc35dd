//! `mirrorsim data …`: dataset inspection.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use clap::Subcommand;
use mirrorsim_data::stats::DatasetStats;
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Users, items, interactions, time range, rating histogram, interactions per user.
    Stats {
        /// The dataset as FORMAT:PATH, e.g. recbole:../shared/data/ml-1m
        source: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Count and skip malformed rows (reported per reason) instead of failing on the first.
        #[arg(long)]
        skip_bad_rows: bool,
    },
}

/// The JSON `data stats --json` prints.
#[derive(Debug, Serialize)]
struct StatsOutput<'a> {
    source: String,
    #[serde(flatten)]
    stats: &'a DatasetStats,
    /// Skipped rows per "file: reason" (empty unless `--skip-bad-rows`).
    skipped_rows: &'a BTreeMap<String, u64>,
    load_seconds: f64,
}

pub fn run(cmd: DataCommand) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Stats {
            source,
            json,
            skip_bad_rows,
        } => stats(&source, json, skip_bad_rows),
    }
}

fn stats(source: &str, json: bool, skip_bad_rows: bool) -> anyhow::Result<()> {
    print!("{}", stats_text(source, json, skip_bad_rows)?);
    Ok(())
}

/// What `data stats` prints: a table, or JSON with `--json`.
fn stats_text(source: &str, json: bool, skip_bad_rows: bool) -> anyhow::Result<String> {
    let spec: SourceSpec = source.parse()?;
    let started = std::time::Instant::now();
    let (catalog, report) = read_source(&spec, &ReadOptions { skip_bad_rows })
        .with_context(|| format!("cannot load the dataset {spec}"))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let stats = DatasetStats::compute(&catalog);
    let text = if json {
        let output = StatsOutput {
            source: spec.to_string(),
            stats: &stats,
            skipped_rows: &report.skipped,
            load_seconds,
        };
        serde_json::to_string_pretty(&output).context("cannot serialise the statistics")? + "\n"
    } else {
        render_table(&spec, &stats, &report.skipped, skip_bad_rows, load_seconds)
    };
    Ok(text)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let head = match digits.len() % 3 {
        0 => 3.min(digits.len()),
        rest => rest,
    };
    let mut out = digits[..head].to_owned();
    for group in digits.as_bytes()[head..].chunks(3) {
        out.push(',');
        out.extend(group.iter().map(|&b| char::from(b)));
    }
    out
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

fn render_table(
    spec: &SourceSpec,
    stats: &DatasetStats,
    skipped: &BTreeMap<String, u64>,
    skip_bad_rows: bool,
    load_seconds: f64,
) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("source".into(), spec.to_string()),
        ("dataset".into(), stats.dataset.clone()),
        ("users".into(), thousands(stats.users as u64)),
        (
            "  with interactions".into(),
            thousands(stats.users_with_interactions as u64),
        ),
        ("items".into(), thousands(stats.items as u64)),
        (
            "  with interactions".into(),
            thousands(stats.items_with_interactions as u64),
        ),
        ("interactions".into(), thousands(stats.interactions as u64)),
    ];
    if let (Some(min), Some(max), Some(min_iso), Some(max_iso)) = (
        stats.time_min,
        stats.time_max,
        &stats.time_min_iso,
        &stats.time_max_iso,
    ) {
        rows.push(("first interaction".into(), format!("{min_iso} ({min})")));
        rows.push(("last interaction".into(), format!("{max_iso} ({max})")));
    }
    let spread = &stats.interactions_per_user;
    rows.push((
        "interactions per user".into(),
        format!(
            "min {} · median {} · max {}",
            thousands(spread.min),
            spread.median,
            thousands(spread.max)
        ),
    ));
    rows.push(("with rating".into(), percent(stats.share_with_rating)));
    rows.push(("with review text".into(), percent(stats.share_with_review)));
    rows.push((
        "with impressions".into(),
        percent(stats.share_with_impressions),
    ));
    rows.push(("load time".into(), format!("{load_seconds:.2} s")));

    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in &rows {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    if let Some(histogram) = &stats.rating_histogram {
        let _ = writeln!(out, "\nrating histogram");
        let largest = histogram
            .bins()
            .iter()
            .map(|b| b.1)
            .max()
            .unwrap_or(1)
            .max(1);
        for (rating, count) in histogram.bins() {
            let bar = "#".repeat(((*count as f64 / largest as f64) * 40.0).round() as usize);
            let _ = writeln!(
                out,
                "  {:>5}  {:>12}  {bar}",
                rating.to_string(),
                thousands(*count)
            );
        }
    }
    if skip_bad_rows {
        let total: u64 = skipped.values().sum();
        let _ = writeln!(out, "\nskipped rows: {}", thousands(total));
        for (reason, count) in skipped {
            let _ = writeln!(out, "  {:>12}  {reason}", thousands(*count));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        format!(
            "{}/../mirrorsim-data/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn stats_json_and_table_of_a_fixture() {
        let source = format!("recbole:{}", fixture("recbole/tiny"));
        let json: serde_json::Value =
            serde_json::from_str(&stats_text(&source, true, false).unwrap()).unwrap();
        assert_eq!(json["dataset"], "tiny");
        assert_eq!(json["interactions"], 5);
        assert_eq!(json["users"], 3);
        assert_eq!(json["items"], 4);
        assert_eq!(json["items_with_interactions"], 3);
        assert_eq!(json["rating_histogram"]["2.5"], 1);
        assert_eq!(json["interactions_per_user"]["median"], 2.0);
        assert_eq!(json["share_with_review"], 0.6);
        assert_eq!(json["skipped_rows"], serde_json::json!({}));

        let table = stats_text(&source, false, true).unwrap();
        assert!(table.contains("interactions           5\n"), "{table}");
        assert!(table.contains("with review text       60.0 %"), "{table}");
        assert!(table.contains("skipped rows: 0"), "{table}");
    }

    #[test]
    fn stats_errors_carry_the_source() {
        let err = stats_text("recbole:/nonexistent/ml-1m", false, false).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with("cannot load the dataset recbole:/nonexistent/ml-1m: "),
            "{message}"
        );
        assert!(message.contains("does not exist"), "{message}");
        let err = stats_text("csv-ish:x", false, false).unwrap_err();
        assert!(format!("{err:#}").contains("unknown dataset format"));
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_000_209), "1,000,209");
    }
}
