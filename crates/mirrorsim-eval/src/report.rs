//! A self-contained HTML report: tables and inline SVG plots, no JavaScript, no external files.
//!
//! Every number in the tables is printed with 4 decimals in a cell tagged
//! `data-run`, `data-predictor` and `data-metric`, so the page can be checked against
//! `metrics.json` by machine.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::error::EvalError;
use crate::evaluate::{MetricsFile, PredictorKind, PredictorMetrics};

/// One training loss curve (`train/<name>/loss.jsonl`).
#[derive(Debug, Clone, PartialEq)]
pub struct LossCurve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One run shown in the report.
#[derive(Debug, Clone)]
pub struct ReportRun {
    pub label: String,
    pub metrics: MetricsFile,
    pub loss_curves: Vec<LossCurve>,
}

#[derive(Deserialize)]
struct LossLine {
    step: f64,
    loss: f64,
}

/// Reads `dir/train/*/loss.jsonl` (each line a JSON object with at least `step` and `loss`),
/// sorted by name; none when the folder does not exist.
pub fn read_loss_curves(dir: &Path) -> Result<Vec<LossCurve>, EvalError> {
    let train = dir.join("train");
    if !train.is_dir() {
        return Ok(Vec::new());
    }
    let mut curves = Vec::new();
    let entries = std::fs::read_dir(&train).map_err(|e| EvalError::io(&train, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EvalError::io(&train, e))?;
        let path = entry.path().join("loss.jsonl");
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let mut points = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: LossLine =
                serde_json::from_str(line).map_err(|e| EvalError::Malformed {
                    path: path.clone(),
                    line: n as u64 + 1,
                    field: "step/loss".to_owned(),
                    message: e.to_string(),
                })?;
            points.push((parsed.step, parsed.loss));
        }
        curves.push(LossCurve {
            name: entry.file_name().to_string_lossy().into_owned(),
            points,
        });
    }
    curves.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(curves)
}

/// Escapes text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// Muted colours for the baselines, so simulators stand out.
const BASELINE_COLORS: [&str; 4] = ["#b0b0b0", "#8a8a5c", "#7f9fb3", "#b39b7f"];

struct Row<'a> {
    run: &'a str,
    predictor: &'a PredictorMetrics,
    color: &'static str,
}

fn rows(runs: &[ReportRun]) -> Vec<Row<'_>> {
    let (mut simulators, mut baselines) = (0, 0);
    let mut out = Vec::new();
    for run in runs {
        for p in &run.metrics.predictors {
            let color = match p.kind {
                PredictorKind::Simulator => {
                    simulators += 1;
                    COLORS[(simulators - 1) % COLORS.len()]
                }
                PredictorKind::Baseline => {
                    baselines += 1;
                    BASELINE_COLORS[(baselines - 1) % BASELINE_COLORS.len()]
                }
            };
            out.push(Row {
                run: &run.label,
                predictor: p,
                color,
            });
        }
    }
    out
}

fn label(row: &Row<'_>, several_runs: bool) -> String {
    if several_runs {
        format!("{} / {}", row.run, row.predictor.name)
    } else {
        row.predictor.name.clone()
    }
}

fn cell(out: &mut String, row: &Row<'_>, metric: &str, value: Option<f64>) {
    match value {
        Some(v) => {
            let _ = write!(
                out,
                "<td data-run=\"{}\" data-predictor=\"{}\" data-metric=\"{}\">{v:.4}</td>",
                escape(row.run),
                escape(&row.predictor.name),
                escape(metric)
            );
        }
        None => out.push_str("<td>–</td>"),
    }
}

/// The whole page.
pub fn render_report(title: &str, runs: &[ReportRun]) -> String {
    let several = runs.len() > 1;
    let rows = rows(runs);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f3f3f3}} td:first-child,th:first-child{{text-align:left}}\
         .note{{color:#555;font-size:90%}} svg{{background:#fff;border:1px solid #eee}}\
         </style></head><body>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
    for run in runs {
        let m = &run.metrics;
        let _ = writeln!(
            html,
            "<p class=\"note\"><b>{}</b>: {} scenes from <code>{}</code>; simulator {} ({} mode, \
             {} repeats, seed {}); baselines fitted on interactions before {} ({}).</p>",
            escape(&run.label),
            m.scenes,
            escape(&m.scenes_file),
            escape(m.model.as_deref().unwrap_or("none")),
            escape(m.mode.as_deref().unwrap_or("–")),
            m.repeats,
            m.seed,
            m.cutoff_timestamp
                .map_or("no cutoff".to_owned(), |c| format!("Unix time {c}")),
            escape(&m.cutoff_source)
        );
        for note in &m.notes {
            let _ = writeln!(html, "<p class=\"note\">Note: {}</p>", escape(note));
        }
    }

    html.push_str("<h2>Choice accuracy</h2>\n");
    html.push_str(&accuracy_chart(&rows, several));
    html.push_str(
        "<p class=\"note\">Bars: argmax accuracy (ties split); whiskers: Wilson 95% interval; \
         dashed line: chance (mean 1/k). Muted bars are classical baselines.</p>\n",
    );
    html.push_str(
        "<table><tr><th>predictor</th><th>scenes</th><th>accuracy</th><th>95% low</th>\
         <th>95% high</th><th>sampled acc.</th><th>chance</th><th>NLL (nats)</th><th>NLL (bits)</th>\
         <th>Brier</th><th>ECE</th><th>rotation-avg acc.</th><th>debiased acc.</th></tr>\n",
    );
    for row in &rows {
        let m = &row.predictor.metrics;
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td>",
            escape(&label(row, several)),
            m.scenes
        );
        cell(&mut html, row, "accuracy", Some(m.accuracy));
        cell(&mut html, row, "ci_low", Some(m.ci_low));
        cell(&mut html, row, "ci_high", Some(m.ci_high));
        cell(&mut html, row, "sampled_accuracy", m.sampled_accuracy);
        cell(&mut html, row, "chance_accuracy", Some(m.chance_accuracy));
        cell(&mut html, row, "nll_nats", Some(m.nll_nats));
        cell(&mut html, row, "nll_bits", Some(m.nll_bits));
        cell(&mut html, row, "brier", Some(m.brier));
        cell(&mut html, row, "ece", Some(m.ece));
        let bias = m.position_bias.as_ref();
        cell(
            &mut html,
            row,
            "permutation_accuracy",
            bias.map(|b| b.permutation_accuracy),
        );
        cell(
            &mut html,
            row,
            "debiased_accuracy",
            bias.map(|b| b.debiased_accuracy),
        );
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");

    if runs.iter().any(|r| !r.metrics.ratings.is_empty()) {
        html.push_str(
            "<h2>Rating prediction</h2>\n<table><tr><th>predictor</th><th>ratings</th>\
             <th>MAE</th><th>RMSE</th><th>mean predicted</th><th>mean real</th></tr>\n",
        );
        for run in runs {
            for r in &run.metrics.ratings {
                let name = if several {
                    format!("{} · {}", run.label, r.predictor)
                } else {
                    r.predictor.clone()
                };
                let _ = writeln!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.3}</td>\
                     <td>{:.3}</td></tr>",
                    escape(&name),
                    r.cases,
                    r.mae,
                    r.rmse,
                    r.mean_predicted,
                    r.mean_real
                );
            }
        }
        html.push_str("</table>\n");
    }

    html.push_str("<h2>Calibration</h2>\n");
    html.push_str(&reliability_chart(&rows, several));
    html.push_str(
        "<p class=\"note\">Reliability diagram: per confidence bin (15 equal-width bins of the \
         top probability), mean confidence against accuracy; the diagonal is perfect calibration.\
         </p>\n",
    );
    for row in &rows {
        let _ = writeln!(
            html,
            "<details><summary>Reliability table: {}</summary><table><tr><th>bin</th>\
             <th>scenes</th><th>mean confidence</th><th>accuracy</th></tr>",
            escape(&label(row, several))
        );
        for (b, bin) in row.predictor.metrics.reliability.iter().enumerate() {
            let _ = write!(
                html,
                "<tr><td>[{:.3}, {:.3})</td><td>{}</td>",
                bin.lower, bin.upper, bin.count
            );
            cell(
                &mut html,
                row,
                &format!("bin{b}_confidence"),
                bin.mean_confidence,
            );
            cell(&mut html, row, &format!("bin{b}_accuracy"), bin.accuracy);
            html.push_str("</tr>\n");
        }
        html.push_str("</table></details>\n");
    }

    html.push_str("<h2>Accuracy by answer slot</h2>\n");
    html.push_str(&slot_chart(&rows, several));
    html.push_str(
        "<table><tr><th>predictor</th><th>slot</th><th>scenes</th><th>accuracy</th></tr>\n",
    );
    for row in &rows {
        for (slot, group) in &row.predictor.metrics.by_answer_slot {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td>",
                escape(&label(row, several)),
                slot_label(*slot),
                group.scenes
            );
            cell(
                &mut html,
                row,
                &format!("slot{slot}_accuracy"),
                Some(group.accuracy),
            );
            html.push_str("</tr>\n");
        }
    }
    html.push_str("</table>\n");

    html.push_str(
        "<h2>Position bias</h2>\n<p class=\"note\">Share of argmax choices per shown slot, over \
         all cyclic rotations of each scene's options (unbiased: 1/k each).</p>\n\
         <table><tr><th>predictor</th><th>options</th><th>choice rate per slot</th></tr>\n",
    );
    for row in &rows {
        if let Some(bias) = &row.predictor.metrics.position_bias {
            for (k, rates) in &bias.slot_choice_rate {
                let rates: Vec<String> = rates
                    .iter()
                    .enumerate()
                    .map(|(s, r)| format!("{}: {r:.4}", slot_label(s)))
                    .collect();
                let _ = writeln!(
                    html,
                    "<tr><td>{}</td><td>{k}</td><td>{}</td></tr>",
                    escape(&label(row, several)),
                    rates.join(", ")
                );
            }
        }
    }
    html.push_str("</table>\n");

    html.push_str(
        "<h2>Agent4Rec protocol</h2>\n<p class=\"note\">Per user one real choice and m items \
         not chosen, yes/no per item.</p>\n<table><tr><th>predictor</th><th>1:m</th>\
         <th>users</th><th>precision</th><th>recall</th><th>accuracy</th><th>F1</th></tr>\n",
    );
    for row in &rows {
        for (m, b) in &row.predictor.agent4rec {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>1:{m}</td><td>{}</td>",
                escape(&label(row, several)),
                b.users
            );
            cell(
                &mut html,
                row,
                &format!("agent4rec_1_{m}_precision"),
                Some(b.precision),
            );
            cell(
                &mut html,
                row,
                &format!("agent4rec_1_{m}_recall"),
                Some(b.recall),
            );
            cell(
                &mut html,
                row,
                &format!("agent4rec_1_{m}_accuracy"),
                Some(b.accuracy),
            );
            cell(&mut html, row, &format!("agent4rec_1_{m}_f1"), Some(b.f1));
            html.push_str("</tr>\n");
        }
    }
    html.push_str("</table>\n");

    html.push_str(
        "<h2>Breakdowns</h2>\n<table><tr><th>predictor</th><th>group</th><th>scenes</th>\
         <th>accuracy</th><th>NLL (bits)</th></tr>\n",
    );
    for row in &rows {
        let m = &row.predictor.metrics;
        let groups = m
            .by_dataset
            .iter()
            .map(|(d, g)| (format!("dataset {d}"), format!("dataset_{d}"), g))
            .chain(
                m.by_options
                    .iter()
                    .map(|(k, g)| (format!("{k} options"), format!("options{k}"), g)),
            );
        for (name, key, group) in groups {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td>",
                escape(&label(row, several)),
                escape(&name),
                group.scenes
            );
            cell(
                &mut html,
                row,
                &format!("{key}_accuracy"),
                Some(group.accuracy),
            );
            cell(
                &mut html,
                row,
                &format!("{key}_nll_bits"),
                Some(group.nll_bits),
            );
            html.push_str("</tr>\n");
        }
    }
    html.push_str("</table>\n");

    let curves: Vec<(String, &LossCurve)> = runs
        .iter()
        .flat_map(|run| {
            run.loss_curves.iter().map(move |c| {
                let name = if several {
                    format!("{} / {}", run.label, c.name)
                } else {
                    c.name.clone()
                };
                (name, c)
            })
        })
        .collect();
    if !curves.is_empty() {
        html.push_str("<h2>Training loss</h2>\n");
        html.push_str(&loss_chart(&curves));
    }
    html.push_str("</body></html>\n");
    html
}

fn slot_label(slot: usize) -> String {
    char::from(b'A' + (slot % 26) as u8).to_string()
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 60.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 20.0;

fn y_of(value: f64, max: f64) -> f64 {
    TOP + (HEIGHT - TOP - BOTTOM) * (1.0 - value / max)
}

fn axes(svg: &mut String, max: f64, ticks: usize, y_title: &str) {
    for t in 0..=ticks {
        let v = max * t as f64 / ticks as f64;
        let y = y_of(v, max);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{v:.2}</text>",
            WIDTH - 10.0,
            LEFT - 5.0,
            y + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"14\" y=\"{:.1}\" font-size=\"12\" transform=\"rotate(-90 14 {:.1})\" \
         text-anchor=\"middle\">{}</text>",
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        escape(y_title)
    );
}

fn accuracy_chart(rows: &[Row<'_>], several: bool) -> String {
    let max = rows
        .iter()
        .map(|r| r.predictor.metrics.ci_high)
        .fold(0.2f64, f64::max)
        .min(1.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" \
         role=\"img\" aria-label=\"accuracy per predictor\">",
        HEIGHT + 60.0
    );
    axes(&mut svg, max, 5, "accuracy");
    let n = rows.len().max(1) as f64;
    let slot = (WIDTH - LEFT - 20.0) / n;
    for (i, row) in rows.iter().enumerate() {
        let m = &row.predictor.metrics;
        let x = LEFT + 10.0 + slot * i as f64;
        let w = (slot * 0.6).min(60.0);
        let y = y_of(m.accuracy, max);
        let base = y_of(0.0, max);
        let cx = x + w / 2.0;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\">\
             <title>{}: {:.4}</title></rect>\
             <line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#000\"/>\
             <line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#444\" \
             stroke-dasharray=\"4 3\"/>\
             <text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" \
             transform=\"rotate(-30 {cx:.1} {:.1})\">{}</text>",
            (base - y).max(0.0),
            row.color,
            escape(&label(row, several)),
            m.accuracy,
            y_of(m.ci_low, max),
            y_of(m.ci_high.min(max), max),
            cx - 5.0,
            cx + 5.0,
            y_of(m.ci_low, max),
            y_of(m.ci_low, max),
            cx - 5.0,
            cx + 5.0,
            y_of(m.ci_high.min(max), max),
            y_of(m.ci_high.min(max), max),
            x + w,
            y_of(m.chance_accuracy, max),
            y_of(m.chance_accuracy, max),
            base + 14.0,
            base + 14.0,
            escape(&label(row, several))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn reliability_chart(rows: &[Row<'_>], several: bool) -> String {
    let size = 320.0;
    let pad = 40.0;
    let map = |v: f64| pad + v * (size - 2.0 * pad);
    let flip = |v: f64| size - map(v);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{size}\" \
         role=\"img\" aria-label=\"reliability diagram\">\
         <line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" \
         stroke-dasharray=\"4 3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">confidence</text>\
         <text x=\"12\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 12 {:.1})\" \
         text-anchor=\"middle\">accuracy</text>",
        size + 260.0,
        map(0.0),
        flip(0.0),
        map(1.0),
        flip(1.0),
        size / 2.0,
        size - 8.0,
        size / 2.0,
        size / 2.0
    );
    for t in [0.0, 0.5, 1.0] {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{t}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{t}</text>",
            map(t),
            size - pad + 14.0,
            pad - 4.0,
            flip(t) + 3.0
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let points: Vec<String> = row
            .predictor
            .metrics
            .reliability
            .iter()
            .filter_map(|b| Some((b.mean_confidence?, b.accuracy?)))
            .map(|(c, a)| format!("{:.1},{:.1}", map(c), flip(a)))
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
            points.join(" "),
            row.color
        );
        for p in &points {
            if let Some((x, y)) = p.split_once(',') {
                let _ = write!(
                    svg,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.5\" fill=\"{}\"/>",
                    row.color
                );
            }
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{}\">{}</text>",
            size + 10.0,
            pad + 14.0 * i as f64,
            row.color,
            escape(&label(row, several))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn slot_chart(rows: &[Row<'_>], several: bool) -> String {
    let slots = rows
        .iter()
        .flat_map(|r| r.predictor.metrics.by_answer_slot.keys().copied())
        .max()
        .map_or(0, |s| s + 1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" \
         role=\"img\" aria-label=\"accuracy by answer slot\">",
        HEIGHT + 20.0 + 14.0 * (rows.len() / 4) as f64
    );
    axes(&mut svg, 1.0, 5, "accuracy");
    if slots == 0 || rows.is_empty() {
        svg.push_str("</svg>\n");
        return svg;
    }
    let group = (WIDTH - LEFT - 20.0) / slots as f64;
    let w = (group * 0.8 / rows.len() as f64).min(30.0);
    for slot in 0..slots {
        let x0 = LEFT + 10.0 + group * slot as f64;
        for (i, row) in rows.iter().enumerate() {
            if let Some(g) = row.predictor.metrics.by_answer_slot.get(&slot) {
                let x = x0 + w * i as f64;
                let y = y_of(g.accuracy, 1.0);
                let _ = write!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                     fill=\"{}\"><title>{} slot {}: {:.4}</title></rect>",
                    (w - 1.0).max(1.0),
                    y_of(0.0, 1.0) - y,
                    row.color,
                    escape(&label(row, several)),
                    slot_label(slot),
                    g.accuracy
                );
            }
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">[{}]</text>",
            x0 + w * rows.len() as f64 / 2.0,
            y_of(0.0, 1.0) + 16.0,
            slot_label(slot)
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{}\">■ {}</text>",
            LEFT + 10.0 + 150.0 * (i % 4) as f64,
            HEIGHT - 4.0 + 14.0 * (i / 4) as f64,
            row.color,
            escape(&label(row, several))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn loss_chart(curves: &[(String, &LossCurve)]) -> String {
    let points = curves.iter().flat_map(|(_, c)| c.points.iter());
    let (mut max_step, mut max_loss) = (1e-9f64, 1e-9f64);
    for &(s, l) in points {
        if s.is_finite() && l.is_finite() {
            max_step = max_step.max(s);
            max_loss = max_loss.max(l);
        }
    }
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         role=\"img\" aria-label=\"training loss\">"
    );
    axes(&mut svg, max_loss, 4, "loss");
    let x_of = |s: f64| LEFT + (WIDTH - LEFT - 200.0) * s / max_step;
    for (i, (name, curve)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = curve
            .points
            .iter()
            .filter(|(s, l)| s.is_finite() && l.is_finite())
            .map(|&(s, l)| format!("{:.1},{:.1}", x_of(s), y_of(l, max_loss)))
            .collect();
        let _ = write!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            pts.join(" "),
            WIDTH - 190.0,
            TOP + 14.0 * (i as f64 + 1.0),
            escape(name)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">step (max {max_step})</text>",
        (LEFT + WIDTH - 200.0) / 2.0,
        HEIGHT - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}
