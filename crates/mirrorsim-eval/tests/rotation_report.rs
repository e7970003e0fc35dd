//! Option rotations re-render the real prompts correctly, and the HTML report prints exactly
//! the numbers of metrics.json. Scenes come from the embedded ml-latest-small.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mirrorsim_data::scenes::render::reorder_options;
use mirrorsim_data::scenes::{build_scenes, NegativeMix, SceneConfig, SceneRecord};
use mirrorsim_data::{read_source, Catalog, ReadOptions, SourceSpec};
use mirrorsim_eval::agent4rec::select_cases;
use mirrorsim_eval::evaluate::{
    baseline_metrics, baseline_predictions, read_metrics, write_outputs, PredictionLine,
};
use mirrorsim_eval::report::{read_loss_curves, render_report, ReportRun};
use mirrorsim_eval::simulate::{option_texts, rotate, yes_no_request};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines, MetricsFile};

fn small_scenes() -> (Catalog, Vec<SceneRecord>, Option<i64>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small");
    let spec = SourceSpec {
        format: "movielens".to_owned(),
        path,
    };
    let (catalog, _) = read_source(&spec, &ReadOptions::default()).unwrap();
    let config = SceneConfig {
        max_train_scenes: Some(0),
        max_eval_scenes: Some(40),
        negatives: "random=1,popularity=1".parse::<NegativeMix>().unwrap(),
        seed: 3,
        ..SceneConfig::default()
    };
    let set = build_scenes(&catalog, &config).unwrap();
    assert_eq!(set.eval.len(), 40);
    let cutoff = set.summary.cutoff_timestamp;
    (catalog, set.eval, cutoff)
}

fn user_text(scene: &SceneRecord, direct: bool) -> &str {
    let messages = if direct {
        &scene.direct_messages
    } else {
        &scene.messages
    };
    &messages.iter().find(|m| m.role == "user").unwrap().content
}

#[test]
fn rotations_move_options_and_keep_everything_else() {
    let (_, scenes, _) = small_scenes();
    for scene in &scenes {
        let k = scene.options.len();
        let (_, bodies) = option_texts(scene).unwrap();
        assert_eq!(bodies.len(), k);
        for r in 0..k {
            let rotated = rotate(scene, r).unwrap();
            assert_eq!(rotated.id, scene.id);
            for j in 0..k {
                let from = (j + r) % k;
                assert_eq!(rotated.options[j], scene.options[from]);
                assert_eq!(rotated.exposure_sources[j], scene.exposure_sources[from]);
            }
            assert_eq!(rotated.options[rotated.answer], scene.item_id);
            assert_eq!(rotated.exposure_sources[rotated.answer], "positive");
            let (_, rotated_bodies) = option_texts(&rotated).unwrap();
            for (j, body) in rotated_bodies.iter().enumerate() {
                assert_eq!(body, &bodies[(j + r) % k]);
            }
            for direct in [true, false] {
                let before: Vec<&str> = user_text(scene, direct).lines().collect();
                let after: Vec<&str> = user_text(&rotated, direct).lines().collect();
                assert_eq!(before.len(), after.len());
                let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let moved = if r == 0 { 0 } else { k };
                assert!(changed <= moved, "only option lines may change");
                for (b, a) in before.iter().zip(&after) {
                    if b != a {
                        assert_eq!(b[..4], a[..4], "labels stay in place");
                    }
                }
            }
            assert_eq!(
                rotated.messages[0], scene.messages[0],
                "system prompt unchanged"
            );
            // Rotating back gives the scene again.
            let back = rotate(&rotated, (k - r) % k).unwrap();
            assert_eq!(&back, scene);
        }
        let request = yes_no_request(scene, &[scene.answer, (scene.answer + 1) % k]).unwrap();
        assert_eq!(request.continuations.len(), 2);
        assert!(request.continuations[0].contains(&bodies[scene.answer]));
        assert_eq!(request.labels, vec!["Yes", "No"]);
    }
    let scene = &scenes[0];
    assert!(reorder_options(scene, &[0, 0, 1, 2, 3]).is_err());
    assert!(reorder_options(scene, &[0, 1, 2]).is_err());
    let mut broken = scene.clone();
    broken.direct_messages[1].content = "no options here".to_owned();
    let err = reorder_options(&broken, &[1, 2, 3, 4, 0])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&scene.id) && err.contains("[A] "), "{err}");
}

/// Every `data-metric` cell of the page, by (predictor, metric).
fn cells(html: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for piece in html.split("<td ").skip(1) {
        let attr = |name: &str| {
            let start = piece.find(&format!("{name}=\""))? + name.len() + 2;
            let end = piece[start..].find('"')? + start;
            Some(piece[start..end].to_owned())
        };
        let (Some(predictor), Some(metric)) = (attr("data-predictor"), attr("data-metric")) else {
            continue;
        };
        let value_start = piece.find('>').unwrap() + 1;
        let value_end = piece.find("</td>").unwrap();
        let value: f64 = piece[value_start..value_end].parse().unwrap();
        out.insert((predictor, metric), value);
    }
    out
}

#[test]
fn report_numbers_equal_metrics_json() {
    let (catalog, scenes, cutoff) = small_scenes();
    // EASE on the 300 most interacted items keeps this unoptimised test build quick.
    let config = BaselineConfig {
        ease_max_items: 300,
        ..BaselineConfig::default()
    };
    let fitted = FittedBaselines::fit(&catalog, cutoff, &config, true).unwrap();
    let cases = select_cases(&scenes);
    let mut predictors = Vec::new();
    let mut lines = Vec::new();
    for kind in BaselineKind::ALL {
        let predictions = baseline_predictions(&fitted, kind, &scenes, 4, 7).unwrap();
        predictors.push(baseline_metrics(kind, &scenes, &predictions, &cases).unwrap());
        lines.extend(predictions.into_iter().map(|prediction| PredictionLine {
            predictor: kind.name().to_owned(),
            prediction,
        }));
    }
    let metrics = MetricsFile {
        scenes_file: "in-memory".to_owned(),
        scenes: scenes.len(),
        model: None,
        mode: None,
        repeats: 4,
        seed: 7,
        cutoff_timestamp: cutoff,
        cutoff_source: "scene summary".to_owned(),
        interactions_before_cutoff: Some(fitted.interactions_before_cutoff),
        baseline_config: Some(config.clone()),
        predictors,
        notes: vec!["a <note> & more".to_owned()],
        timings: BTreeMap::new(),
        llm_requests_from_journal: None,
        llm_requests_sent: None,
        ratings: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = write_outputs(dir.path(), &metrics, &lines).unwrap();
    let read_back = read_metrics(&paths.metrics).unwrap();
    assert_eq!(read_back.predictors.len(), BaselineKind::ALL.len());
    let predictions_text = std::fs::read_to_string(&paths.predictions).unwrap();
    assert_eq!(
        predictions_text.lines().count(),
        BaselineKind::ALL.len() * scenes.len()
    );

    let train = dir.path().join("train").join("sft");
    std::fs::create_dir_all(&train).unwrap();
    std::fs::write(
        train.join("loss.jsonl"),
        "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"loss\": 1.5, \"lr\": 0.001}\n",
    )
    .unwrap();
    let curves = read_loss_curves(dir.path()).unwrap();
    assert_eq!(curves.len(), 1);
    assert_eq!(curves[0].points, vec![(1.0, 2.5), (2.0, 1.5)]);

    let html = render_report(
        "test",
        &[ReportRun {
            label: "run".to_owned(),
            metrics: read_back.clone(),
            loss_curves: curves,
        }],
    );
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(html.contains("a &lt;note&gt; &amp; more"));
    assert!(html.contains("aria-label=\"training loss\""));
    assert_eq!(html.matches("<svg").count(), 4);
    let cells = cells(&html);
    let mut checked = 0;
    for p in &read_back.predictors {
        let m = &p.metrics;
        let mut expect = vec![
            ("accuracy".to_owned(), m.accuracy),
            ("ci_low".to_owned(), m.ci_low),
            ("ci_high".to_owned(), m.ci_high),
            ("nll_nats".to_owned(), m.nll_nats),
            ("nll_bits".to_owned(), m.nll_bits),
            ("brier".to_owned(), m.brier),
            ("ece".to_owned(), m.ece),
            ("chance_accuracy".to_owned(), m.chance_accuracy),
            ("sampled_accuracy".to_owned(), m.sampled_accuracy.unwrap()),
        ];
        for (slot, group) in &m.by_answer_slot {
            expect.push((format!("slot{slot}_accuracy"), group.accuracy));
        }
        for (b, bin) in m.reliability.iter().enumerate() {
            if let Some(a) = bin.accuracy {
                expect.push((format!("bin{b}_accuracy"), a));
            }
        }
        for (ratio, b) in &p.agent4rec {
            expect.push((format!("agent4rec_1_{ratio}_f1"), b.f1));
            expect.push((format!("agent4rec_1_{ratio}_precision"), b.precision));
        }
        for (metric, value) in expect {
            let shown = cells
                .get(&(p.name.clone(), metric.clone()))
                .unwrap_or_else(|| panic!("{} {metric} missing from the page", p.name));
            assert!(
                (shown - value).abs() <= 5e-5,
                "{} {metric}: page {shown}, metrics.json {value}",
                p.name
            );
            checked += 1;
        }
    }
    assert!(checked > 60, "{checked}");
    screenshot(&html, dir.path());
    // Random is uniform: its accuracy is exactly 1/5 whatever the slots.
    let random = &read_back.predictors[0];
    assert_eq!(random.name, "random");
    assert!((random.metrics.accuracy - 0.2).abs() < 1e-12);
}

/// Renders the page (which holds no script, checked above) in headless Chromium and checks a non-blank 1200×1600 PNG
/// comes back. Skips loudly where Chromium is not installed.
fn screenshot(html: &str, dir: &std::path::Path) {
    let Some(chromium) = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        eprintln!("SKIPPED: the screenshot check needs Chromium (apt-get install chromium)");
        return;
    };
    let page = dir.join("report.html");
    std::fs::write(&page, html).unwrap();
    let png = dir.join("report.png");
    let output = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1200,1600",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 1600));
    // A blank page compresses to a few kilobytes; tables and plots do not.
    assert!(
        bytes.len() > 40_000,
        "screenshot of {} bytes looks blank",
        bytes.len()
    );
}

/// Scores each continuation by its text alone (its length in characters, scaled), so the
/// option's probability must follow the option wherever a rotation puts it.
struct TextLengthModel;

impl mirrorsim_llm::Backend for TextLengthModel {
    fn model_id(&self) -> String {
        "text-length".to_owned()
    }

    fn generate(
        &self,
        _: &[mirrorsim_llm::GenerateRequest],
    ) -> Result<Vec<Vec<mirrorsim_llm::Completion>>, mirrorsim_llm::LlmError> {
        unreachable!("title mode generates nothing")
    }

    fn score_choices(
        &self,
        _: &[mirrorsim_llm::ChoiceRequest],
    ) -> Result<Vec<mirrorsim_llm::ChoiceScores>, mirrorsim_llm::LlmError> {
        unreachable!("title mode scores no letters")
    }

    fn score_continuations(
        &self,
        requests: &[mirrorsim_llm::ContinuationRequest],
    ) -> Result<Vec<mirrorsim_llm::ContinuationScores>, mirrorsim_llm::LlmError> {
        Ok(requests
            .iter()
            .map(|r| mirrorsim_llm::ContinuationScores {
                logprobs: r
                    .continuations
                    .iter()
                    .map(|c| -(c.chars().count() as f64) / 20.0)
                    .collect(),
                tokens: r.continuations.iter().map(|c| c.len()).collect(),
                prompt_tokens: 1,
            })
            .collect())
    }
}

#[test]
fn title_mode_scores_each_options_listed_text_and_follows_it_under_rotation() {
    use mirrorsim_eval::simulate::{score_simulator, title_request, Mode, SimulatorConfig};

    let (_, scenes, _) = small_scenes();
    let scenes = &scenes[..8];
    let request = title_request(&scenes[0]).unwrap();
    let (_, bodies) = option_texts(&scenes[0]).unwrap();
    let expected: Vec<String> = bodies.iter().map(|b| format!("Behavior: {b}")).collect();
    assert_eq!(request.continuations, expected);
    match &request.prompt {
        mirrorsim_llm::Prompt::Chat {
            messages,
            continue_final,
        } => {
            assert!(!continue_final);
            assert_eq!(messages.len(), scenes[0].direct_messages.len());
        }
        other => panic!("expected a chat prompt, got {other:?}"),
    }

    let config = SimulatorConfig {
        mode: "title".parse::<Mode>().unwrap(),
        rotations: true,
        agent4rec: false,
        ..SimulatorConfig::default()
    };
    let output = score_simulator(scenes, &TextLengthModel, &config, &[]).unwrap();
    for (scene, prediction) in scenes.iter().zip(&output.predictions) {
        let (_, bodies) = option_texts(scene).unwrap();
        let weights: Vec<f64> = bodies
            .iter()
            .map(|b| (-((b.chars().count() + 10) as f64) / 20.0).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        for (p, w) in prediction.distribution.iter().zip(&weights) {
            assert!((p - w / total).abs() < 1e-12, "{scene:?}");
        }
        let k = scene.options.len();
        assert_eq!(prediction.rotations.len(), k);
        for (r, rotated) in prediction.rotations.iter().enumerate() {
            for (j, p) in rotated.iter().enumerate() {
                let from = (j + r) % k;
                assert!((p - prediction.distribution[from]).abs() < 1e-12);
            }
        }
        assert_eq!(prediction.samples.len(), config.repeats);
    }
}
