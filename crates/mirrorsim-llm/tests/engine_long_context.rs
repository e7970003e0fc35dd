//! Our engine against HF transformers at a realistic context length: the benchmark scene
//! (a 581-token prompt, 10 rationale continuations of ~150 tokens) scored with the shared-prefix
//! path must give transformers' label distributions (recorded without cache reuse, f32; see
//! fixtures/make_long_scoring_reference.py) within 1e-3 per probability.

use std::path::PathBuf;

use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::{Backend, ChoiceRequest, Prompt};
use serde_json::Value;

const TOLERANCE: f64 = 1e-3;

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn shared_prefix_scoring_matches_transformers_at_600_tokens_of_context() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let prompts = read_json(root.join("../../bench/llm/prompts.json"));
    let reference = read_json(root.join("tests/fixtures/long_scoring_reference.json"));
    let scene = &prompts["scene"];

    let model = mirrorsim_llm::default_model::default_model_path().expect("the default model");
    let engine = LocalEngine::load(&model, EngineOptions::default()).expect("load the model");
    let labels = strings(&scene["labels"]);
    assert_eq!(labels, strings(&reference["labels"]));
    let request = ChoiceRequest {
        prompt: Prompt::Text {
            text: scene["prompt_text"]
                .as_str()
                .expect("prompt text")
                .to_string(),
        },
        continuations: strings(&scene["continuations"]),
        labels,
    };
    let scores = engine.score_choices(&[request]).expect("scoring");
    let ours = &scores[0].distributions;
    let theirs = reference["distributions"]
        .as_array()
        .expect("distributions");
    assert_eq!(ours.len(), theirs.len());
    let mut worst = 0.0f64;
    for (a, b) in ours.iter().zip(theirs) {
        let b: Vec<f64> = b
            .as_array()
            .expect("a distribution")
            .iter()
            .map(|v| v.as_f64().expect("a number"))
            .collect();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("largest difference from transformers: {worst:.2e}");
    assert!(
        worst <= TOLERANCE,
        "distributions differ from transformers by {worst:.2e} (> {TOLERANCE})"
    );
    assert!(scores[0].missing_labels.iter().all(|m| m.is_empty()));
}
