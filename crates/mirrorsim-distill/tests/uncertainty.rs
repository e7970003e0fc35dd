//! ΔEU, uncertainties and pair choice on a hand-computed example.

mod common;

use mirrorsim_distill::uncertainty::{
    analyse_scene, entropy_bits, logloss_bits, DropReason, RationaleRef, PROB_FLOOR,
};
use mirrorsim_distill::{distill, DistillConfig, RationaleRecord, Role, ScoreRecord, Selector};

const TOLERANCE: f64 = 1e-12;

fn score(role: Role, index: usize, distribution: &[f64], hit: bool) -> ScoreRecord {
    ScoreRecord {
        scene_id: "s".to_owned(),
        role,
        index,
        distribution: distribution.to_vec(),
        missing_labels: Vec::new(),
        entropy_bits: entropy_bits(distribution),
        logloss_bits: logloss_bits(distribution, 0),
        behavior: Some(if hit { 0 } else { 1 }),
        behavior_label: Some(if hit { "A" } else { "B" }.to_owned()),
        hit,
    }
}

/// Three options, answer A (slot 0); two rationales per source.
///   strong 0: p = [1, 0, 0]          H = 0               hit
///   strong 1: p = [1/2, 1/2, 0]      H = 1               miss
///   weak 0:   p = [1/2, 1/4, 1/4]    H = 1/2·1 + 2·1/4·2 = 1.5   hit
///   weak 1:   p = [1/4, 1/4, 1/2]    H = 1.5             miss
fn example() -> Vec<ScoreRecord> {
    vec![
        score(Role::Strong, 0, &[1.0, 0.0, 0.0], true),
        score(Role::Strong, 1, &[0.5, 0.5, 0.0], false),
        score(Role::Weak, 0, &[0.5, 0.25, 0.25], true),
        score(Role::Weak, 1, &[0.25, 0.25, 0.5], false),
    ]
}

#[test]
fn per_rationale_entropy_and_logloss() {
    assert!((entropy_bits(&[1.0, 0.0, 0.0]) - 0.0).abs() < TOLERANCE);
    assert!((entropy_bits(&[0.5, 0.5, 0.0]) - 1.0).abs() < TOLERANCE);
    assert!((entropy_bits(&[0.5, 0.25, 0.25]) - 1.5).abs() < TOLERANCE);
    // uniform over 4: log2 4 = 2
    assert!((entropy_bits(&[0.25; 4]) - 2.0).abs() < TOLERANCE);
    // −log2 1 = 0; −log2 1/2 = 1; −log2 1/4 = 2
    assert!((logloss_bits(&[1.0, 0.0], 0)).abs() < TOLERANCE);
    assert!((logloss_bits(&[0.5, 0.5], 1) - 1.0).abs() < TOLERANCE);
    assert!((logloss_bits(&[0.25, 0.25, 0.5], 0) - 2.0).abs() < TOLERANCE);
    // p = 0 is clamped at 1e-12: −log2 1e-12 = 12·log2 10 = 39.8631…
    let clamped = logloss_bits(&[0.0, 1.0], 0);
    assert!((clamped - (-PROB_FLOOR.log2())).abs() < TOLERANCE);
    assert!((clamped - 39.863_137_138_648_35).abs() < 1e-9);
}

#[test]
fn scene_uncertainties_delta_eu_and_pair() {
    let scores = example();
    let refs: Vec<&ScoreRecord> = scores.iter().collect();
    let scene = analyse_scene("s", 3, &refs).unwrap();

    // strong: mean p = [3/4, 1/4, 0]; total = −(3/4·log2 3/4 + 1/4·log2 1/4)
    //       = 0.75·0.415037… + 0.5 = 0.811278…; expected = (0 + 1)/2 = 0.5
    let strong_total = -(0.75f64 * 0.75f64.log2() + 0.25 * 0.25f64.log2());
    assert!((scene.strong.total - strong_total).abs() < TOLERANCE);
    assert!((scene.strong.total - 0.811_278_124_459_132_8).abs() < 1e-12);
    assert!((scene.strong.expected - 0.5).abs() < TOLERANCE);
    assert!((scene.strong.mutual - 0.311_278_124_459_132_8).abs() < 1e-12);
    // weak: mean p = [3/8, 1/4, 3/8]; total = 2·3/8·log2(8/3) + 1/4·2 = 1.561278…;
    //       expected = (1.5 + 1.5)/2 = 1.5; mutual = 0.061278…
    assert!((scene.weak.total - 1.561_278_124_459_132_8).abs() < 1e-12);
    assert!((scene.weak.expected - 1.5).abs() < TOLERANCE);
    assert!((scene.weak.mutual - 0.061_278_124_459_132_8).abs() < 1e-12);
    // ΔEU = expected_weak − expected_strong = 1.5 − 0.5 = 1.0
    assert!((scene.delta_eu - 1.0).abs() < TOLERANCE);
    assert_eq!((scene.strong.hits, scene.weak.hits), (1, 1));
    assert!((scene.hit_rate - 0.5).abs() < TOLERANCE);
    // chosen: the only strong hit; rejected: lowest-H miss = strong 1 (H 1) over weak 1 (H 1.5)
    assert_eq!(
        scene.chosen,
        RationaleRef {
            role: Role::Strong,
            index: 0
        }
    );
    assert_eq!(
        scene.rejected,
        RationaleRef {
            role: Role::Strong,
            index: 1
        }
    );
}

#[test]
fn ties_go_to_the_lower_index_and_strong_before_weak() {
    let scores = [
        score(Role::Strong, 2, &[0.5, 0.5, 0.0], true),
        score(Role::Strong, 1, &[0.5, 0.0, 0.5], true),
        score(Role::Weak, 0, &[0.5, 0.5, 0.0], false),
        score(Role::Strong, 3, &[0.0, 0.5, 0.5], false),
    ];
    let refs: Vec<&ScoreRecord> = scores.iter().collect();
    let scene = analyse_scene("s", 3, &refs).unwrap();
    assert_eq!(
        scene.chosen,
        RationaleRef {
            role: Role::Strong,
            index: 1
        }
    );
    assert_eq!(
        scene.rejected,
        RationaleRef {
            role: Role::Strong,
            index: 3
        }
    );
}

#[test]
fn denoise_and_pairless_scenes_are_dropped_with_their_reason() {
    let no_hit = [
        score(Role::Strong, 0, &[0.2, 0.8, 0.0], false),
        score(Role::Weak, 0, &[0.2, 0.8, 0.0], false),
    ];
    let refs: Vec<&ScoreRecord> = no_hit.iter().collect();
    assert_eq!(analyse_scene("s", 3, &refs), Err(DropReason::NoHit));

    // Only weak rationales hit: no chosen.
    let weak_only = [
        score(Role::Strong, 0, &[0.2, 0.8, 0.0], false),
        score(Role::Weak, 0, &[0.8, 0.2, 0.0], true),
    ];
    let refs: Vec<&ScoreRecord> = weak_only.iter().collect();
    assert_eq!(analyse_scene("s", 3, &refs), Err(DropReason::NoPair));

    // Everything hits: no rejected.
    let all_hit = [
        score(Role::Strong, 0, &[0.9, 0.1, 0.0], true),
        score(Role::Weak, 0, &[0.8, 0.2, 0.0], true),
    ];
    let refs: Vec<&ScoreRecord> = all_hit.iter().collect();
    assert_eq!(analyse_scene("s", 3, &refs), Err(DropReason::NoPair));

    let strong_only = [score(Role::Strong, 0, &[0.9, 0.1, 0.0], true)];
    let refs: Vec<&ScoreRecord> = strong_only.iter().collect();
    assert_eq!(analyse_scene("s", 3, &refs), Err(DropReason::MissingScores));

    let short = [
        score(Role::Strong, 0, &[0.9, 0.1, 0.0], true),
        score(Role::Weak, 0, &[0.5, 0.0, 0.0], false),
    ];
    let refs: Vec<&ScoreRecord> = short.iter().collect();
    assert_eq!(
        analyse_scene("s", 3, &refs),
        Err(DropReason::IncompleteScores)
    );
}

fn rationale(role: Role, index: usize, text: &str) -> RationaleRecord {
    RationaleRecord {
        scene_id: "s".to_owned(),
        role,
        index,
        text: text.to_owned(),
        stated_behavior: None,
        prompt_tokens: 10,
        completion_tokens: 5,
        format: Default::default(),
    }
}

#[test]
fn distilled_files_hold_the_pair_in_the_chat_layouts() {
    let scene = common::scene("s", "ml-1m", 3, 0);
    let rationales = vec![
        rationale(Role::Strong, 0, "Thought: sure of A."),
        rationale(Role::Strong, 1, "Thought: torn."),
        rationale(Role::Weak, 0, "Thought: weak A."),
        rationale(Role::Weak, 1, "Thought: weak C."),
    ];
    let output = distill(
        std::slice::from_ref(&scene),
        &example(),
        &rationales,
        &DistillConfig {
            selector: Selector::DeltaEu,
            top_k: 5,
            seed: 0,
        },
    )
    .unwrap();
    assert_eq!(output.summary.candidates, 1);
    assert_eq!(output.summary.kept, 1);
    let sft = serde_json::to_value(&output.sft[0]).unwrap();
    let messages = sft["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], "Thought: sure of A.\nBehavior: [A]");
    let dpo = serde_json::to_value(&output.dpo[0]).unwrap();
    assert_eq!(
        dpo["prompt"],
        serde_json::to_value(&scene.messages).unwrap()
    );
    assert_eq!(
        dpo["chosen"],
        serde_json::json!([{"role": "assistant", "content": "Thought: sure of A.\nBehavior: [A]"}])
    );
    // The rejected rationale (strong 1) keeps the letter its sampled behaviour went to (B).
    assert_eq!(
        dpo["rejected"],
        serde_json::json!([{"role": "assistant", "content": "Thought: torn.\nBehavior: [B]"}])
    );
    let direct = serde_json::to_value(&output.direct[0]).unwrap();
    assert_eq!(direct["messages"][2]["content"], "Behavior: [A]");
    assert_eq!(
        direct["messages"][0],
        serde_json::to_value(&scene.direct_messages[0]).unwrap()
    );
    let quantiles = output.summary.delta_eu_kept.unwrap();
    assert!((quantiles.p50 - 1.0).abs() < TOLERANCE);
}
