//! Exact stratified allocation: total = min(K, candidates), no stratum starved, capacity caps,
//! proportionality.

use mirrorsim_distill::select::{allocate, stratified_top_k};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn worked_example_with_a_starved_stratum() {
    // sizes 50, 30, 15, 5 (N = 100), K = 10: quotas 5, 3, 1.5, 0.5 → floors 5, 3, 1, 0 (9);
    // the one seat left goes to the larger remainder, a tie of 0.5 and 0.5 → the earlier
    // stratum: 5, 3, 2, 0. The last stratum is starved, so it takes one seat from the stratum
    // most above its quota (2 − 1.5 = 0.5): 5, 3, 1, 1.
    assert_eq!(allocate(&[50, 30, 15, 5], 10), vec![5, 3, 1, 1]);
    // sizes 7, 2, 1 (N = 10), K = 6: quotas 4.2, 1.2, 0.6 → floors 4, 1, 0; remainder seat to
    // 0.6 → 4, 1, 1.
    assert_eq!(allocate(&[7, 2, 1], 6), vec![4, 1, 1]);
    // Exactly proportional: sizes 40, 40, 20, K = 10 → 4, 4, 2.
    assert_eq!(allocate(&[40, 40, 20], 10), vec![4, 4, 2]);
}

#[test]
fn budget_larger_than_candidates_keeps_everything_and_caps_hold() {
    assert_eq!(allocate(&[3, 2, 0, 1], 100), vec![3, 2, 0, 1]);
    assert_eq!(allocate(&[3, 2], 5), vec![3, 2]);
    assert_eq!(allocate(&[3, 2], 0), vec![0, 0]);
    assert_eq!(allocate(&[], 4), Vec::<usize>::new());
}

#[test]
fn fewer_seats_than_strata_go_to_the_largest_quotas() {
    // sizes 5, 3, 1, 1, K = 2: quotas 1, 0.6, 0.2, 0.2 → floors 1, 0, 0, 0; seat to 0.6.
    assert_eq!(allocate(&[5, 3, 1, 1], 2), vec![1, 1, 0, 0]);
}

#[test]
fn invariants_hold_on_random_cases() {
    let mut rng = StdRng::seed_from_u64(42);
    for case in 0..5_000 {
        let strata = rng.random_range(1..8);
        let sizes: Vec<usize> = (0..strata)
            .map(|_| {
                if rng.random_bool(0.15) {
                    0
                } else {
                    rng.random_range(1..60)
                }
            })
            .collect();
        let total: usize = sizes.iter().sum();
        let budget = rng.random_range(0..total + 10);
        let allocation = allocate(&sizes, budget);
        let given: usize = allocation.iter().sum();
        assert_eq!(
            given,
            budget.min(total),
            "case {case}: {sizes:?} K={budget}"
        );
        for (i, (&a, &s)) in allocation.iter().zip(&sizes).enumerate() {
            assert!(a <= s, "case {case}: stratum {i} over capacity");
        }
        let non_empty = sizes.iter().filter(|&&s| s > 0).count();
        if budget >= non_empty {
            for (i, (&a, &s)) in allocation.iter().zip(&sizes).enumerate() {
                assert!(
                    s == 0 || a >= 1,
                    "case {case}: stratum {i} starved: {sizes:?} K={budget} → {allocation:?}"
                );
            }
        }
        // Proportionality: without starvation fixes Hamilton stays within one seat of the
        // quota; each fix moves one seat, so the distance stays below 1 + number of strata.
        if total > 0 {
            let k = budget.min(total) as f64;
            for (&a, &s) in allocation.iter().zip(&sizes) {
                let quota = k * s as f64 / total as f64;
                assert!((a as f64 - quota).abs() < 1.0 + strata as f64);
            }
        }
    }
}

#[test]
fn hamilton_is_within_one_seat_when_no_stratum_is_starved() {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..2_000 {
        let sizes: Vec<usize> = (0..rng.random_range(1..6))
            .map(|_| rng.random_range(20..200))
            .collect();
        let total: usize = sizes.iter().sum();
        let budget = rng.random_range(sizes.len() * 20..=total);
        let allocation = allocate(&sizes, budget);
        for (&a, &s) in allocation.iter().zip(&sizes) {
            let quota = budget as f64 * s as f64 / total as f64;
            assert!(
                (a as f64 - quota).abs() < 1.0,
                "{sizes:?} K={budget} → {allocation:?}"
            );
        }
    }
}

#[test]
fn top_k_keeps_the_best_ranked_of_each_stratum() {
    // Ranked order (best first) of 7 candidates over two strata.
    let strata: Vec<(String, usize)> = vec![
        ("ml-1m".into(), 5),
        ("ml-1m".into(), 5),
        ("ml-1m".into(), 3),
        ("ml-1m".into(), 5),
        ("ml-1m".into(), 3),
        ("ml-1m".into(), 5),
        ("ml-1m".into(), 5),
    ];
    let ranked = vec![6, 5, 4, 3, 2, 1, 0];
    // sizes: (ml-1m,3) = 2, (ml-1m,5) = 5; K = 3 → quotas 0.857, 2.143 → 0, 2 + seat to 0.857
    // → 1, 2.
    let selection = stratified_top_k(&ranked, &strata, 3);
    assert_eq!(selection.kept, vec![6, 5, 4]);
    assert_eq!(selection.strata[&("ml-1m".to_string(), 3)], (2, 1));
    assert_eq!(selection.strata[&("ml-1m".to_string(), 5)], (5, 2));
}
