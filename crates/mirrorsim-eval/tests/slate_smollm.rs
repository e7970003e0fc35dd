//! The slate simulator with the real default model (SmolLM2-135M) on ml-latest-small: a slate
//! made of an eval scene's user and options gets the scene's exact prompt and the eval's
//! distribution, with or without a collaborative prior's hint in both; rationale mode is
//! reproducible from its seed.

use std::path::Path;
use std::sync::Arc;

use mirrorsim_data::scenes::slate::{SlateCatalog, NONE_OF_THESE_ID};
use mirrorsim_data::scenes::{build_scenes, NegativeMix, OptionRange, PromptSet, SceneConfig};
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_eval::hybrid::hint_scenes;
use mirrorsim_eval::simulate::score_simulator;
use mirrorsim_eval::slate::{RationaleSettings, SlateHint, SlateRequest, SlateSimulator};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines, Mode, SimulatorConfig};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};

#[test]
fn slates_from_eval_scenes_match_the_eval_and_rationales_replay() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small");
    let spec: SourceSpec = format!("movielens:{}", data.display()).parse().unwrap();
    let (catalog, _) = read_source(&spec, &ReadOptions::default()).unwrap();
    let mut negatives = NegativeMix::none();
    negatives.random = 1.0;
    let config = SceneConfig {
        train_options: OptionRange { min: 4, max: 4 },
        eval_options: 4,
        history_len: 5,
        max_train_scenes: Some(0),
        max_eval_scenes: Some(3),
        negatives,
        ..SceneConfig::default()
    };
    let set = build_scenes(&catalog, &config).unwrap();
    let cutoff = set.summary.cutoff_timestamp;
    let scenes = set.eval;
    assert_eq!(scenes.len(), 3);

    let model_path = mirrorsim_llm::default_model::default_model_path().unwrap();
    let engine = Arc::new(LocalEngine::load(&model_path, EngineOptions::default()).unwrap());
    let slates = SlateCatalog::new(catalog, PromptSet::embedded().unwrap(), 5).unwrap();
    let simulator =
        SlateSimulator::new(&slates, engine.clone()).with_rationale_settings(RationaleSettings {
            max_tokens: 24,
            ..RationaleSettings::default()
        });

    let requests: Vec<SlateRequest> = scenes
        .iter()
        .map(|scene| SlateRequest {
            user: slates.user(&scene.user_id, Some(scene.timestamp)).unwrap(),
            items: scene
                .options
                .iter()
                .map(|id| slates.item(id).unwrap())
                .collect(),
            none_option: false,
            mode: Mode::Direct,
            samples: 3,
            seed: 11,
        })
        .collect();
    for (scene, request) in scenes.iter().zip(&requests) {
        let prompt = slates.render(&request.user, &request.items, false).unwrap();
        assert_eq!(prompt.direct_messages, scene.direct_messages);
        assert_eq!(prompt.messages, scene.messages);
    }
    let outcomes = simulator.simulate(&requests).unwrap();
    let unrotated = SimulatorConfig {
        rotations: false,
        agent4rec: false,
        ..SimulatorConfig::default()
    };
    let eval = score_simulator(&scenes, engine.as_ref(), &unrotated, &[]).unwrap();
    for (outcome, prediction) in outcomes.iter().zip(&eval.predictions) {
        assert_eq!(outcome.distribution.len(), 4);
        assert!((outcome.distribution.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        for (a, b) in outcome.distribution.iter().zip(&prediction.distribution) {
            assert!(
                (a - b).abs() < 1e-5,
                "{:?} vs {:?}",
                outcome.distribution,
                prediction.distribution
            );
        }
        assert_eq!(outcome.samples.len(), 3);
    }

    // With hints, a slate gets the prompt `mirrorsim hint` writes into the scene of the same
    // decision and the eval's distribution on that hinted scene. Item-kNN's pick depends on the
    // user's history and the sequential prior's on its order, so both must use the same one.
    let priors = [BaselineKind::Knn, BaselineKind::Sequential];
    let fit_priors =
        || FittedBaselines::fit(slates.catalog(), cutoff, &BaselineConfig::default(), false);
    let (hinted, counts) = hint_scenes(&fit_priors().unwrap(), &priors, &scenes).unwrap();
    assert!(
        counts.by_prior.iter().all(|p| p.hinted > 0),
        "every prior hints somewhere: {counts:?}"
    );
    let hinting = SlateSimulator::new(&slates, engine.clone()).with_hint(SlateHint {
        kinds: priors.to_vec(),
        baselines: fit_priors().unwrap(),
    });
    for (scene, request) in hinted.iter().zip(&requests) {
        let prompt = hinting.prompt(request).unwrap();
        assert_eq!(prompt.direct_messages, scene.direct_messages);
        assert_eq!(prompt.messages, scene.messages);
    }
    let hinted_eval = score_simulator(&hinted, engine.as_ref(), &unrotated, &[]).unwrap();
    for (outcome, prediction) in hinting
        .simulate(&requests)
        .unwrap()
        .iter()
        .zip(&hinted_eval.predictions)
    {
        for (a, b) in outcome.distribution.iter().zip(&prediction.distribution) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    // "None of these" adds a fifth option with its own probability.
    let mut with_none = requests[0].clone();
    with_none.none_option = true;
    let out = simulator.simulate(&[with_none]).unwrap();
    assert_eq!(out[0].item_ids.len(), 5);
    assert_eq!(out[0].item_ids[4], NONE_OF_THESE_ID);
    assert!(out[0].distribution[4] > 0.0);
    assert!((out[0].distribution.iter().sum::<f64>() - 1.0).abs() < 1e-6);

    // Rationale mode: two rationales, the same again from the same seed.
    let mut rationale = requests[1].clone();
    rationale.mode = Mode::Rationale;
    rationale.samples = 2;
    let first = simulator
        .simulate(std::slice::from_ref(&rationale))
        .unwrap();
    let again = simulator
        .simulate(std::slice::from_ref(&rationale))
        .unwrap();
    assert_eq!(first[0].rationales.len(), 2);
    assert_eq!(first[0].samples.len(), 2);
    assert!(first[0].rationales.iter().all(|r| !r.is_empty()));
    assert!((first[0].distribution.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    assert_eq!(first[0].rationales, again[0].rationales);
    assert_eq!(first[0].samples, again[0].samples);
}
