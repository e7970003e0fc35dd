//! End to end on two real scenes (ml-latest-small) with the real default model (SmolLM2-135M),
//! tiny n and max_tokens: rationales, scores, distill, all through the journal.

use std::path::Path;

use mirrorsim_data::scenes::{build_scenes, NegativeMix, OptionRange, SceneConfig};
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_distill::{
    distill, generate_rationales, score_rationales, DistillConfig, GenerateConfig, Journal,
    JournaledBackend, Role, ScoreConfig,
};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};

#[test]
fn two_real_scenes_with_the_default_model() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small");
    let spec: SourceSpec = format!("movielens:{}", data.display()).parse().unwrap();
    let (catalog, _) = read_source(&spec, &ReadOptions::default()).unwrap();
    let mut negatives = NegativeMix::none();
    negatives.random = 1.0;
    let config = SceneConfig {
        train_options: OptionRange { min: 3, max: 3 },
        history_len: 3,
        max_train_scenes: Some(2),
        max_eval_scenes: Some(0),
        negatives,
        ..SceneConfig::default()
    };
    let scenes = build_scenes(&catalog, &config).unwrap().train;
    assert_eq!(scenes.len(), 2);

    let model_path = mirrorsim_llm::default_model::default_model_path().unwrap();
    let engine = LocalEngine::load(&model_path, EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
    let backend = JournaledBackend::new(&engine, &journal);

    let generate = GenerateConfig {
        n: 2,
        max_tokens: 24,
        ..GenerateConfig::default()
    };
    let (mut rationales, summary) =
        generate_rationales(&scenes, &backend, Role::Strong, &generate).unwrap();
    println!("{summary}");
    assert_eq!(rationales.len(), 4);
    assert!(summary.prompt_tokens > 0 && summary.completion_tokens > 0);
    assert!(rationales.iter().all(|r| r.completion_tokens <= 24));
    let (weak, _) = generate_rationales(&scenes, &backend, Role::Weak, &generate).unwrap();
    rationales.extend(weak);

    let (scores, summary) =
        score_rationales(&scenes, &rationales, &backend, &ScoreConfig::default()).unwrap();
    println!("{summary}");
    assert_eq!(scores.len(), 8);
    for score in &scores {
        assert_eq!(score.distribution.len(), 3);
        assert!((score.distribution.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        assert!(score.entropy_bits >= 0.0 && score.entropy_bits <= 3f64.log2() + 1e-9);
        assert!(score.behavior.is_some());
    }
    let before = backend.counts();
    assert_eq!((before.hits, before.misses), (0, 6));

    // A rerun of every stage is answered from the journal and gives the same records.
    let (again, _) =
        score_rationales(&scenes, &rationales, &backend, &ScoreConfig::default()).unwrap();
    assert_eq!(again, scores);
    let (strong_again, _) =
        generate_rationales(&scenes, &backend, Role::Strong, &generate).unwrap();
    assert_eq!(strong_again[..], rationales[..4]);
    assert_eq!(backend.counts().misses, 6);

    let output = distill(&scenes, &scores, &rationales, &DistillConfig::default()).unwrap();
    let dropped: usize = output.summary.dropped.values().sum();
    assert_eq!(output.summary.candidates + dropped, 2);
    assert_eq!(output.sft.len(), output.summary.kept);
    println!(
        "distill summary: {}",
        serde_json::to_string(&output.summary).unwrap()
    );
}
