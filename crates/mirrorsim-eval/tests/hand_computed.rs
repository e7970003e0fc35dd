//! Metrics, Agent4Rec and baselines against values computed by hand.

use std::collections::BTreeMap;

use mirrorsim_data::scenes::{SceneRecord, Split};
use mirrorsim_data::{CatalogBuilder, Interaction};
use mirrorsim_eval::agent4rec::{ranking_metrics, select_cases, simulator_metrics};
use mirrorsim_eval::metrics::{
    argmax_credit, binary_metrics, calibration, rotated_answer, rotation_order, wilson_interval,
    YesNoItem, ECE_BINS,
};
use mirrorsim_eval::{
    choice_metrics, BaselineConfig, BaselineKind, FittedBaselines, ScenePrediction,
};

fn prediction(id: &str, distribution: &[f64], answer: usize) -> ScenePrediction {
    ScenePrediction {
        scene_id: id.to_owned(),
        dataset: "d".to_owned(),
        answer,
        distribution: distribution.to_vec(),
        samples: Vec::new(),
        rotations: Vec::new(),
    }
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

#[test]
fn three_scenes_by_hand() {
    let predictions = vec![
        prediction("s1", &[0.7, 0.2, 0.1], 0),   // hit
        prediction("s2", &[0.5, 0.5], 1),        // tie: half a hit
        prediction("s3", &[0.08, 0.62, 0.3], 2), // miss
    ];
    let m = choice_metrics(&predictions).unwrap();
    assert_eq!(m.scenes, 3);
    assert!(close(m.accuracy, 0.5, 1e-12));
    let nll = (-(0.7f64).ln() + 2f64.ln() - (0.3f64).ln()) / 3.0;
    assert!(close(m.nll_nats, nll, 1e-12));
    assert!(close(m.nll_nats, 0.751_265, 1e-6));
    assert!(close(m.nll_bits, nll / std::f64::consts::LN_2, 1e-12));
    // (0.09 + 0.04 + 0.01) + (0.25 + 0.25) + (0.0064 + 0.3844 + 0.49), over 3
    assert!(close(m.brier, 1.5208 / 3.0, 1e-12));
    assert!(close(
        m.chance_accuracy,
        (1.0 / 3.0 + 0.5 + 1.0 / 3.0) / 3.0,
        1e-12
    ));
    // One scene per bin (10, 7, 9): |1 − 0.7| + |0.5 − 0.5| + |0 − 0.62|, over 3
    assert!(close(m.ece, 0.92 / 3.0, 1e-12));
    let filled: Vec<usize> = m
        .reliability
        .iter()
        .enumerate()
        .filter(|(_, b)| b.count > 0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(filled, vec![7, 9, 10]);
    assert_eq!(m.reliability.len(), ECE_BINS);
    assert_eq!(m.reliability[10].accuracy, Some(1.0));
    assert_eq!(m.reliability[7].accuracy, Some(0.5));
    assert_eq!(m.reliability[0].mean_confidence, None);
    // Wilson 95% of 0.5 over 3 trials
    assert!(close(m.ci_low, 0.125_33, 1e-4) && close(m.ci_high, 0.874_67, 1e-4));
    assert_eq!(m.by_options[&3].scenes, 2);
    assert!(close(m.by_options[&3].accuracy, 0.5, 1e-12));
    assert!(close(m.by_options[&2].accuracy, 0.5, 1e-12));
    assert!(close(m.by_answer_slot[&0].accuracy, 1.0, 1e-12));
    assert!(close(m.by_answer_slot[&2].accuracy, 0.0, 1e-12));
    // argmax shares of the 3-option scenes: s1 → A, s3 → B
    assert_eq!(m.slot_choice_rate[&3], vec![0.5, 0.5, 0.0]);
    assert_eq!(m.slot_choice_rate[&2], vec![0.5, 0.5]);
    assert_eq!(m.sampled_accuracy, None);
    assert!(m.position_bias.is_none());
}

#[test]
fn wilson_interval_matches_the_textbook_value() {
    let (low, high) = wilson_interval(0.8, 10);
    assert!(
        close(low, 0.4902, 1e-4) && close(high, 0.9433, 1e-4),
        "{low} {high}"
    );
    assert_eq!(wilson_interval(0.0, 0), (0.0, 1.0));
    let (low, high) = wilson_interval(1.0, 20);
    assert!(high == 1.0 && close(low, 0.8389, 1e-4), "{low}");
}

#[test]
fn calibration_edge_cases() {
    // All correct and fully confident: confidence 1 lands in the last bin; ECE, Brier, NLL 0.
    let sure: Vec<_> = (0..4)
        .map(|i| prediction(&format!("s{i}"), &[1.0, 0.0, 0.0], 0))
        .collect();
    let m = choice_metrics(&sure).unwrap();
    assert_eq!((m.accuracy, m.ece, m.brier), (1.0, 0.0, 0.0));
    assert!(m.nll_nats.abs() < 1e-12);
    assert_eq!(m.reliability[ECE_BINS - 1].count, 4);
    assert_eq!(
        m.reliability.iter().filter(|b| b.count == 0).count(),
        ECE_BINS - 1
    );
    // One bin holding everything: confidence 0.9, half right → ECE 0.4.
    let one_bin = vec![
        prediction("a", &[0.9, 0.1], 0),
        prediction("b", &[0.9, 0.1], 1),
    ];
    let (ece, bins) = calibration(&one_bin);
    assert!(close(ece, 0.4, 1e-12));
    assert_eq!(bins[13].count, 2);
    assert!(close(bins[13].mean_confidence.unwrap(), 0.9, 1e-12));
    let m = choice_metrics(&one_bin).unwrap();
    assert!(close(m.brier, (0.02 + 1.62) / 2.0, 1e-12));
    // A zero on the answer is floored, not infinite.
    let m = choice_metrics(&[prediction("z", &[1.0, 0.0], 1)]).unwrap();
    assert!(close(m.nll_nats, -(1e-12f64).ln(), 1e-9) && close(m.brier, 2.0, 1e-12));
    // Uniform: accuracy exactly 1/k wherever the answer is; all scenes in one bin.
    let uniform: Vec<_> = (0..4)
        .map(|i| prediction(&format!("u{i}"), &[0.25; 4], i))
        .collect();
    let m = choice_metrics(&uniform).unwrap();
    assert!(close(m.accuracy, 0.25, 1e-12) && close(m.ece, 0.0, 1e-12));
    assert!(choice_metrics(&[]).is_none());
}

#[test]
fn sampled_accuracy_averages_repeats() {
    let mut a = prediction("a", &[0.6, 0.4], 0);
    a.samples = vec![Some(0), Some(1), None, Some(0)];
    let mut b = prediction("b", &[0.6, 0.4], 1);
    b.samples = vec![Some(1), Some(1), Some(1), Some(1)];
    let m = choice_metrics(&[a, b]).unwrap();
    assert_eq!(m.sampled_accuracy, Some(0.75));
    assert_eq!(m.samples_per_scene, 4);
}

#[test]
fn rotation_bookkeeping() {
    assert_eq!(rotation_order(4, 0), vec![0, 1, 2, 3]);
    assert_eq!(rotation_order(4, 1), vec![1, 2, 3, 0]);
    for k in 2..7 {
        for answer in 0..k {
            for r in 0..k {
                let order = rotation_order(k, r);
                assert_eq!(order[rotated_answer(k, answer, r)], answer);
            }
        }
    }
    // Always picks slot A: right only when the answer is rotated into A (1 in 3 rotations).
    let mut slot_a = prediction("a", &[1.0, 0.0, 0.0], 1);
    slot_a.rotations = vec![vec![1.0, 0.0, 0.0]; 3];
    // Follows the item: the answer (original slot 1) wherever it is shown.
    let mut follows = prediction("f", &[0.1, 0.8, 0.1], 1);
    follows.rotations = (0..3)
        .map(|r| {
            let mut d = vec![0.1; 3];
            d[rotated_answer(3, 1, r)] = 0.8;
            d
        })
        .collect();
    let bias = choice_metrics(&[slot_a.clone()])
        .unwrap()
        .position_bias
        .unwrap();
    assert!(close(bias.permutation_accuracy, 1.0 / 3.0, 1e-12));
    assert_eq!(bias.slot_choice_rate[&3], vec![1.0, 0.0, 0.0]);
    // Averaged over rotations the always-A predictor is uniform: a three-way tie.
    assert!(close(bias.debiased_accuracy, 1.0 / 3.0, 1e-12));
    let m = choice_metrics(&[slot_a, follows]).unwrap();
    let bias = m.position_bias.unwrap();
    assert_eq!(bias.scenes, 2);
    assert!(close(
        bias.permutation_accuracy,
        (1.0 / 3.0 + 1.0) / 2.0,
        1e-12
    ));
    assert!(close(
        bias.debiased_accuracy,
        (1.0 / 3.0 + 1.0) / 2.0,
        1e-12
    ));
    // The follower's choices land in slots 1, 0, 2 for rotations 0, 1, 2.
    let rates = &bias.slot_choice_rate[&3];
    assert!(close(rates[0], 4.0 / 6.0, 1e-12) && close(rates[1], 1.0 / 6.0, 1e-12));
    assert!(close(argmax_credit(&[0.2, 0.4, 0.4], 1), 0.5, 1e-12));
}

fn scene(id: &str, user: &str, options: &[&str], answer: usize, timestamp: i64) -> SceneRecord {
    SceneRecord {
        id: id.to_owned(),
        dataset: "tiny".to_owned(),
        split: Split::Eval,
        user_id: user.to_owned(),
        item_id: options[answer].to_owned(),
        timestamp,
        options: options.iter().map(|s| s.to_string()).collect(),
        answer,
        labels: mirrorsim_data::scenes::render::labels(options.len()),
        exposure_sources: vec!["random".to_owned(); options.len()],
        history: Vec::new(),
        messages: Vec::new(),
        direct_messages: Vec::new(),
    }
}

#[test]
fn agent4rec_counts() {
    let scenes = vec![
        scene("s1", "u1", &["x", "y", "z", "w"], 2, 10),
        scene("s0", "u1", &["p", "q", "r", "s"], 0, 5), // u1's first scene
        scene("s2", "u2", &["a", "b", "c", "d"], 1, 7),
    ];
    let cases = select_cases(&scenes);
    assert_eq!(cases.len(), 2);
    assert_eq!(
        (cases[0].scene, cases[0].slots.clone()),
        (1, vec![0, 1, 2, 3])
    );
    assert_eq!(
        (cases[1].scene, cases[1].slots.clone()),
        (2, vec![1, 0, 2, 3])
    );
    // u1: yes to the positive and the first negative; u2: no to everything.
    let p_yes = vec![vec![0.9, 0.6, 0.2, 0.1], vec![0.4, 0.3, 0.2, 0.7]];
    let m = simulator_metrics(&scenes, &cases, &p_yes);
    assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    // 1:1 → u1 (P yes, N yes), u2 (P no, N no): TP 1, FP 1, FN 1, TN 1
    let one = &m[&1];
    assert_eq!(
        (
            one.true_positives,
            one.false_positives,
            one.false_negatives,
            one.true_negatives
        ),
        (1, 1, 1, 1)
    );
    assert!(close(one.precision, 0.5, 1e-12) && close(one.f1, 0.5, 1e-12));
    // 1:3 → u2's third negative (0.7) is a false positive too: TP 1, FP 2, FN 1, TN 4
    let three = &m[&3];
    assert_eq!(
        (
            three.true_positives,
            three.false_positives,
            three.false_negatives,
            three.true_negatives
        ),
        (1, 2, 1, 4)
    );
    assert!(close(three.precision, 1.0 / 3.0, 1e-12));
    assert!(close(three.recall, 0.5, 1e-12));
    assert!(close(three.accuracy, 5.0 / 8.0, 1e-12));
    assert!(close(three.f1, 0.4, 1e-12));
    // A ranking predictor says yes to its top item among the 1 + m.
    let distributions = vec![
        vec![0.1, 0.2, 0.3, 0.4],
        vec![0.4, 0.3, 0.2, 0.1],
        vec![0.1, 0.5, 0.2, 0.2],
    ];
    let r = ranking_metrics(&scenes, &cases, &distributions);
    // 1:2 → u1's scene s0 (distribution 1): its positive, 0.4, is the top of the three; u2's
    // positive, 0.5, too: 2 TP, 0 FP.
    assert_eq!((r[&2].true_positives, r[&2].false_positives), (2, 0));
    let none = binary_metrics(&[vec![YesNoItem {
        item_id: "a".into(),
        positive: true,
        says_yes: false,
        p_yes: None,
    }]]);
    assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
}

/// u1 {a, b}, u2 {a, b, c}, u3 {b, c} before the cutoff (t < 100); after it u1 takes c,
/// u2 takes d and u3 takes a.
fn tiny_catalog() -> mirrorsim_data::Catalog {
    let mut builder = CatalogBuilder::new("tiny");
    for item in ["a", "b", "c", "d"] {
        builder.add_item(item, None, BTreeMap::new(), None);
    }
    let events = [
        ("u1", "a", 1),
        ("u1", "b", 2),
        ("u2", "a", 3),
        ("u2", "b", 4),
        ("u2", "c", 5),
        ("u3", "b", 6),
        ("u3", "c", 7),
        ("u1", "c", 100),
        ("u2", "d", 120),
        ("u3", "a", 150),
    ];
    for (user, item, timestamp) in events {
        let user = builder.user(user);
        let item = builder.item(item);
        builder.push_interaction(Interaction {
            user,
            item,
            timestamp,
            rating: None,
            review: None,
            impressions: None,
        });
    }
    builder.finish()
}

#[test]
fn baselines_on_a_tiny_matrix() {
    let catalog = tiny_catalog();
    let config = BaselineConfig {
        ease_lambda: 1.0,
        ..BaselineConfig::default()
    };
    let fitted = FittedBaselines::fit(&catalog, Some(100), &config, true).unwrap();
    assert_eq!(fitted.interactions_before_cutoff, 7);
    let idx = |id: &str| catalog.item_idx(id).unwrap();
    let counts: Vec<u32> = ["a", "b", "c", "d"]
        .iter()
        .map(|i| fitted.popularity(idx(i)))
        .collect();
    assert_eq!(
        counts,
        vec![2, 3, 2, 0],
        "d was taken only after the cutoff"
    );
    let all = FittedBaselines::fit(&catalog, None, &config, false).unwrap();
    assert_eq!(all.popularity(idx("d")), 1);
    assert_eq!(all.popularity(idx("c")), 3);

    // Cosines of the binary matrix: |U_a ∩ U_b| = 2, |U_a| = 2, |U_b| = 3, …
    let six = 6f64.sqrt();
    assert!(close(fitted.cosine(idx("a"), idx("b")), 2.0 / six, 1e-12));
    assert!(close(fitted.cosine(idx("a"), idx("c")), 0.5, 1e-12));
    assert!(close(fitted.cosine(idx("b"), idx("c")), 2.0 / six, 1e-12));
    assert!(close(fitted.cosine(idx("a"), idx("a")), 1.0, 1e-12));
    assert_eq!(fitted.cosine(idx("a"), idx("d")), 0.0);

    // EASE, λ = 1: XᵀX + I = [[3,2,1],[2,4,2],[1,2,3]] (a, b, c); its inverse by cofactors
    // (det 16) is [[.5,−.25,0],[−.25,.5,−.25],[0,−.25,.5]], so B[i][j] = −P[i][j]/P[j][j].
    assert_eq!(fitted.ease_items(), 3);
    let expected = [
        ("a", "b", 0.5),
        ("b", "a", 0.5),
        ("a", "c", 0.0),
        ("c", "a", 0.0),
        ("b", "c", 0.5),
        ("c", "b", 0.5),
        ("a", "a", 0.0),
        ("a", "d", 0.0),
    ];
    for (from, to, weight) in expected {
        let got = fitted.ease_weight(idx(from), idx(to));
        assert!(close(got, weight, 1e-12), "B[{from}][{to}] = {got}");
    }

    // u1 decides at t = 100 between d and c; their history is {a, b}.
    let s = scene("s", "u1", &["d", "c"], 1, 100);
    let pop = fitted.distribution(BaselineKind::Popularity, &s).unwrap();
    assert!(close(pop[0], 0.25, 1e-12) && close(pop[1], 0.75, 1e-12));
    let knn = fitted.scores(BaselineKind::Knn, &s).unwrap();
    assert!(close(knn[0], 0.0, 1e-12));
    assert!(close(knn[1], (0.5 + 2.0 / six) / 2.0, 1e-12));
    let ease = fitted.scores(BaselineKind::Ease, &s).unwrap();
    assert!(close(ease[0], 0.0, 1e-12) && close(ease[1], 0.5, 1e-12));
    assert_eq!(
        fitted.distribution(BaselineKind::Random, &s).unwrap(),
        vec![0.5, 0.5]
    );
    // u3 at t = 150: history {b, c} only (a is the decision itself).
    let s3 = scene("s3", "u3", &["a", "d"], 0, 150);
    let knn = fitted.scores(BaselineKind::Knn, &s3).unwrap();
    assert!(close(knn[0], (2.0 / six + 0.5) / 2.0, 1e-12));

    let unknown = scene("x", "nobody", &["a", "b"], 0, 100);
    let err = fitted
        .scores(BaselineKind::Knn, &unknown)
        .unwrap_err()
        .to_string();
    assert!(err.contains("user_id") && err.contains("nobody"), "{err}");
    assert!(BaselineKind::parse_list("random,bogus").is_err());
    assert_eq!(
        BaselineKind::parse_list("knn, ease,knn").unwrap(),
        vec![BaselineKind::Knn, BaselineKind::Ease]
    );
}

#[test]
fn sequential_prior_on_a_tiny_log() {
    let catalog = tiny_catalog();
    let idx = |id: &str| catalog.item_idx(id).unwrap();
    let fit = |cutoff: Option<i64>, window: usize, recent: usize| {
        let config = BaselineConfig {
            sequential_window: window,
            sequential_recent: recent,
            ..BaselineConfig::default()
        };
        FittedBaselines::fit(&catalog, cutoff, &config, false).unwrap()
    };
    // Before t = 100 the sequences are u1: a b; u2: a b c; u3: b c. A pair `d` steps apart
    // weighs 1/d: F[a,b] = 1 + 1, F[a,c] = 1/2 (u2), F[b,c] = 1 + 1; nothing follows c.
    let fitted = fit(Some(100), 20, 20);
    let follows = |f: &FittedBaselines<'_>, a: &str, b: &str| f.follow_weight(idx(a), idx(b));
    assert!(close(follows(&fitted, "a", "b"), 2.0, 1e-12));
    assert!(close(follows(&fitted, "a", "c"), 0.5, 1e-12));
    assert!(close(follows(&fitted, "b", "c"), 2.0, 1e-12));
    assert_eq!(follows(&fitted, "b", "a"), 0.0, "order matters");
    assert_eq!(
        follows(&fitted, "c", "d"),
        0.0,
        "u2 took d after the cutoff"
    );

    // u1 decides at t = 100 between d and c after a then b: with row sums a 2.5, b 2,
    // c = ln(ε + F[b,c] / (1 · (1 + 2)) + F[a,c] / (2 · (1 + 2.5))) = ln(ε + 2/3 + 1/14).
    let eps = mirrorsim_eval::baselines::SEQUENTIAL_FLOOR;
    let s = scene("s", "u1", &["d", "c"], 1, 100);
    let scores = fitted.scores(BaselineKind::Sequential, &s).unwrap();
    assert_eq!(scores[0], eps.ln());
    let followed = 2.0 / 3.0 + 1.0 / 14.0;
    assert!(close(scores[1], (eps + followed).ln(), 1e-12), "{scores:?}");
    // At T = 1 the distribution is proportional to ε + the sum.
    let p = fitted.distribution(BaselineKind::Sequential, &s).unwrap();
    assert!(
        close(p[1], (eps + followed) / (2.0 * eps + followed), 1e-12),
        "{p:?}"
    );
    // Only the latest choice: 2/3.
    let latest = fit(Some(100), 20, 1)
        .scores(BaselineKind::Sequential, &s)
        .unwrap();
    assert!(
        close(latest[1], (eps + 2.0 / 3.0).ln(), 1e-12),
        "{latest:?}"
    );
    // A window of 1 drops a→c (two steps apart); a's row sum becomes 2.
    let adjacent = fit(Some(100), 1, 20);
    assert_eq!(follows(&adjacent, "a", "c"), 0.0);
    let adjacent = adjacent.scores(BaselineKind::Sequential, &s).unwrap();
    assert!(
        close(adjacent[1], (eps + 2.0 / 3.0).ln(), 1e-12),
        "{adjacent:?}"
    );
    // u3 at t = 150 after b then c: nothing followed either by a or d, a tie.
    let s3 = scene("s3", "u3", &["a", "d"], 0, 150);
    assert_eq!(
        fitted.scores(BaselineKind::Sequential, &s3).unwrap(),
        vec![eps.ln(); 2]
    );

    // Without a cutoff the later choices count too: u1 a b c adds 1/2 to F[a,c] and 1 to
    // F[b,c]; u2 … c d and u3 … c a give F[c,d] = F[c,a] = 1.
    let all = fit(None, 20, 20);
    assert!(close(follows(&all, "a", "c"), 1.0, 1e-12));
    assert!(close(follows(&all, "b", "c"), 3.0, 1e-12));
    assert!(close(follows(&all, "c", "d"), 1.0, 1e-12));
    assert!(close(follows(&all, "c", "a"), 1.0, 1e-12));

    let zero = BaselineConfig {
        sequential_window: 0,
        ..BaselineConfig::default()
    };
    let err = FittedBaselines::fit(&catalog, None, &zero, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("window"), "{err}");
    assert_eq!(
        BaselineKind::parse_list("sequential").unwrap(),
        vec![BaselineKind::Sequential]
    );
}
