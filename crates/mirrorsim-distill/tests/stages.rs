//! The stages over a deterministic model stand-in: record contents, request layout, summaries.

mod common;

use std::collections::BTreeMap;

use common::HashModel;
use mirrorsim_distill::stages::{choice_request, rationale_request, BEHAVIOR_CUE};
use mirrorsim_distill::{
    distill, generate_rationales, score_rationales, DistillConfig, GenerateConfig, Role,
    ScoreConfig, Selector,
};
use mirrorsim_llm::Prompt;

#[test]
fn rationale_prompts_never_contain_the_answer_and_are_seeded_per_scene() {
    let scenes = common::scene_set(6);
    let config = GenerateConfig::default();
    for scene in &scenes {
        let request = rationale_request(scene, Role::Strong, &config);
        // Exactly the scene's rationale prompt: no answer slot, no extra message.
        match &request.prompt {
            Prompt::Chat { messages, .. } => {
                assert_eq!(messages.len(), scene.messages.len());
                for (sent, own) in messages.iter().zip(&scene.messages) {
                    assert_eq!((&sent.role, &sent.content), (&own.role, &own.content));
                }
            }
            other => panic!("unexpected prompt {other:?}"),
        }
        assert_eq!(request.params.n, 10);
        assert_eq!(request.params.max_tokens, 512);
        assert_eq!(
            (request.params.temperature, request.params.top_p),
            (1.0, 0.9)
        );
        assert!(matches!(
            request.prompt,
            Prompt::Chat {
                continue_final: false,
                ..
            }
        ));
    }
    let seeds: std::collections::HashSet<u64> = scenes
        .iter()
        .flat_map(|s| {
            [Role::Strong, Role::Weak].map(|r| rationale_request(s, r, &config).params.seed)
        })
        .collect();
    assert_eq!(seeds.len(), 12);
}

#[test]
fn the_stages_produce_consistent_records() {
    let scenes = common::scene_set(20);
    let config = GenerateConfig {
        n: 5,
        batch_scenes: 8,
        ..GenerateConfig::default()
    };
    let strong_model = HashModel::new("strong");
    let weak_model = HashModel::new("weak");
    let (strong, summary) =
        generate_rationales(&scenes, &strong_model, Role::Strong, &config).unwrap();
    // 20 scenes in batches of 8: 3 backend calls, 20 requests.
    assert_eq!((strong_model.calls(), strong_model.requests()), (3, 20));
    assert_eq!(strong.len(), 100);
    assert_eq!(summary.records, 100);
    assert_eq!(
        summary.completion_tokens,
        strong
            .iter()
            .map(|r| r.completion_tokens as u64)
            .sum::<u64>()
    );
    for record in &strong {
        assert!(!record.text.contains("Behavior"), "{}", record.text);
        assert!(record.text.starts_with("Thought:"));
        // The stand-in writes a letter except when its hash is divisible by 5.
        if let Some(letter) = &record.stated_behavior {
            assert!(["A", "B", "C"].contains(&letter.as_str()));
        }
    }
    assert!(strong.iter().any(|r| r.stated_behavior.is_none()));
    assert!(strong.iter().any(|r| r.format.complete()));
    assert!(strong.iter().any(|r| !r.format.complete()));
    let (weak, _) = generate_rationales(&scenes, &weak_model, Role::Weak, &config).unwrap();

    // One choice request per scene holding all 10 rationales, strong first.
    let mut all = strong.clone();
    all.extend(weak.iter().cloned());
    let first_scene: Vec<&_> = all.iter().filter(|r| r.scene_id == scenes[0].id).collect();
    let request = choice_request(&scenes[0], &first_scene);
    assert_eq!(request.continuations.len(), 10);
    assert!(request
        .continuations
        .iter()
        .all(|c| c.ends_with(BEHAVIOR_CUE)));
    match &request.prompt {
        Prompt::Chat {
            messages,
            continue_final,
        } => {
            assert!(continue_final);
            assert_eq!(messages.last().unwrap().role, "assistant");
            assert_eq!(messages.last().unwrap().content, "");
        }
        other => panic!("unexpected prompt {other:?}"),
    }

    let predictor = HashModel::new("predictor");
    let (scores, summary) =
        score_rationales(&scenes, &all, &predictor, &ScoreConfig::default()).unwrap();
    assert_eq!((predictor.calls(), predictor.requests()), (3, 20));
    assert_eq!(scores.len(), 200);
    assert_eq!(summary.scenes, 20);
    for score in &scores {
        let scene = scenes.iter().find(|s| s.id == score.scene_id).unwrap();
        assert_eq!(score.distribution.len(), scene.options.len());
        assert!((score.distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(score.hit, score.behavior == Some(scene.answer));
        let expected = -score.distribution[scene.answer].max(1e-12).log2();
        assert!((score.logloss_bits - expected).abs() < 1e-12);
    }
    // Behaviours are sampled, not argmax: some sampled slot is not the most likely one.
    assert!(scores.iter().any(|s| {
        let argmax = (0..s.distribution.len())
            .max_by(|&a, &b| s.distribution[a].total_cmp(&s.distribution[b]))
            .unwrap();
        s.behavior != Some(argmax)
    }));
    // Same seed, same behaviours; another seed, other behaviours somewhere.
    let (again, _) = score_rationales(&scenes, &all, &predictor, &ScoreConfig::default()).unwrap();
    assert_eq!(again, scores);
    let (reseeded, _) = score_rationales(
        &scenes,
        &all,
        &predictor,
        &ScoreConfig {
            seed: 99,
            batch_scenes: 8,
        },
    )
    .unwrap();
    assert_ne!(reseeded, scores);

    let output = distill(
        &scenes,
        &scores,
        &all,
        &DistillConfig {
            selector: Selector::DeltaEu,
            top_k: 6,
            seed: 0,
        },
    )
    .unwrap();
    let summary = &output.summary;
    let dropped: usize = summary.dropped.values().sum();
    assert_eq!(summary.candidates + dropped, 20);
    assert_eq!(summary.kept, summary.candidates.min(6));
    assert_eq!(output.sft.len(), summary.kept);
    assert_eq!(output.dpo.len(), summary.kept);
    assert_eq!(output.direct.len(), summary.kept);
    assert_eq!(
        summary.strata.iter().map(|s| s.kept).sum::<usize>(),
        summary.kept
    );
    assert_eq!(
        summary.strata.iter().map(|s| s.candidates).sum::<usize>(),
        summary.candidates
    );
    // Within each stratum the kept scenes are those of highest ΔEU.
    let mut by_stratum: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
    for candidate in &output.candidates {
        let scene = scenes
            .iter()
            .find(|s| s.id == candidate.uncertainty.scene_id)
            .unwrap();
        by_stratum
            .entry(format!("{}/{}", scene.dataset, scene.options.len()))
            .or_default()
            .push((candidate.uncertainty.delta_eu, candidate.kept));
    }
    for members in by_stratum.values() {
        let lowest_kept = members
            .iter()
            .filter(|m| m.1)
            .map(|m| m.0)
            .fold(f64::INFINITY, f64::min);
        let highest_left = members
            .iter()
            .filter(|m| !m.1)
            .map(|m| m.0)
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(lowest_kept >= highest_left);
    }
    for pair in &output.dpo {
        assert_eq!(pair.chosen.len(), 1);
        assert_eq!(pair.rejected.len(), 1);
        assert_ne!(pair.chosen[0].content, pair.rejected[0].content);
    }
}

#[test]
fn every_selector_keeps_an_exact_budget() {
    let scenes = common::scene_set(30);
    let config = GenerateConfig {
        n: 4,
        ..GenerateConfig::default()
    };
    let (mut all, _) =
        generate_rationales(&scenes, &HashModel::new("s"), Role::Strong, &config).unwrap();
    all.extend(
        generate_rationales(&scenes, &HashModel::new("w"), Role::Weak, &config)
            .unwrap()
            .0,
    );
    let (scores, _) =
        score_rationales(&scenes, &all, &HashModel::new("p"), &ScoreConfig::default()).unwrap();
    let mut kept_sets = Vec::new();
    for selector in Selector::ALL {
        let output = distill(
            &scenes,
            &scores,
            &all,
            &DistillConfig {
                selector,
                top_k: 5,
                seed: 1,
            },
        )
        .unwrap();
        assert!(output.summary.candidates >= 5, "{:?}", output.summary);
        assert_eq!(output.summary.kept, 5);
        let non_empty = output.summary.strata.len();
        if 5 >= non_empty {
            assert!(output.summary.strata.iter().all(|s| s.kept >= 1));
        }
        let mut kept: Vec<String> = output
            .candidates
            .iter()
            .filter(|c| c.kept)
            .map(|c| c.uncertainty.scene_id.clone())
            .collect();
        kept.sort();
        kept_sets.push(kept);
    }
    // hit-rate-high and hit-rate-low never agree on a non-trivial candidate set.
    assert_ne!(kept_sets[2], kept_sets[3]);
}
