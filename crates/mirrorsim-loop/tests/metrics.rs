//! Offline metrics and rank correlations against values computed by hand.

use std::collections::HashSet;

use mirrorsim_loop::metrics::{
    average_ranks, kendall_tau_b, mrr_at_k, ndcg_at_k, recall_at_k, spearman, OfflineAccumulator,
};

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} != {b}");
}

#[test]
fn ndcg_recall_mrr_match_hand_computation() {
    // Relevant {b, d, x}; list a b c d e: hits at ranks 2 and 4.
    let relevant: HashSet<&str> = ["b", "d", "x"].into_iter().collect();
    let ranked = ["a", "b", "c", "d", "e"];
    // DCG@5 = 1/log2(3) + 1/log2(5); IDCG@5 = 1 + 1/log2(3) + 1/log2(4) = 1 + 0.6309… + 0.5.
    let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
    let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
    close(ndcg_at_k(&ranked, &relevant, 5), dcg / idcg);
    close(ndcg_at_k(&ranked, &relevant, 5), 0.49818925746641285);
    // @3: one hit at rank 2, ideal of 3 relevant on top.
    close(ndcg_at_k(&ranked, &relevant, 3), (1.0 / 3f64.log2()) / idcg);
    close(recall_at_k(&ranked, &relevant, 5), 2.0 / 3.0);
    close(recall_at_k(&ranked, &relevant, 1), 0.0);
    close(mrr_at_k(&ranked, &relevant, 5), 0.5);
    close(mrr_at_k(&ranked, &relevant, 1), 0.0);
    // Perfect list.
    let perfect = ["x", "d", "b"];
    close(ndcg_at_k(&perfect, &relevant, 10), 1.0);
    close(recall_at_k(&perfect, &relevant, 10), 1.0);
    close(mrr_at_k(&perfect, &relevant, 5), 1.0);
    // Fewer relevant than k: IDCG counts only |relevant| items.
    let one: HashSet<&str> = ["c"].into_iter().collect();
    close(ndcg_at_k(&ranked, &one, 10), 0.5);
    close(mrr_at_k(&ranked, &one, 5), 1.0 / 3.0);
}

#[test]
fn accumulator_averages_over_users_with_relevant_items_only() {
    let mut acc = OfflineAccumulator::new(5);
    let r1: HashSet<u32> = [1].into_iter().collect();
    let r2: HashSet<u32> = [7].into_iter().collect();
    acc.add(&[1u32, 2, 3], &r1);
    acc.add(&[3u32, 2, 1], &r2);
    acc.add(&[3u32, 2, 1], &HashSet::new());
    let m = acc.finish();
    assert_eq!(m.users, 2);
    close(m.ndcg_at_10, 0.5);
    close(m.recall_at_10, 0.5);
    close(m.mrr_at_5, 0.5);
    close(m.ndcg_at_k, 0.5);
}

#[test]
fn spearman_and_kendall_match_hand_computation() {
    // Identical and reversed orders.
    close(
        spearman(&[0.1, 0.5, 0.3], &[1.0, 3.0, 2.0])
            .unwrap()
            .unwrap(),
        1.0,
    );
    close(
        kendall_tau_b(&[0.1, 0.5, 0.3], &[1.0, 3.0, 2.0])
            .unwrap()
            .unwrap(),
        1.0,
    );
    close(
        spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0])
            .unwrap()
            .unwrap(),
        -1.0,
    );
    // One swap among three: ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/24 = 0.5; τ = (2 − 1)/3.
    close(
        spearman(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0])
            .unwrap()
            .unwrap(),
        0.5,
    );
    close(
        kendall_tau_b(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0])
            .unwrap()
            .unwrap(),
        1.0 / 3.0,
    );
    // Four items: x = 1 2 3 4, y = 2 1 4 3: ρ = 1 − 6·4/60 = 0.6; C = 4, D = 2: τ = 2/6.
    let x = [1.0, 2.0, 3.0, 4.0];
    let y = [2.0, 1.0, 4.0, 3.0];
    close(spearman(&x, &y).unwrap().unwrap(), 0.6);
    close(kendall_tau_b(&x, &y).unwrap().unwrap(), 1.0 / 3.0);
    // Ties: x = 1 1 2, y = 1 2 3. Ranks x = 1.5 1.5 3: ρ = Pearson = 0.8660…;
    // τ-b: pairs (12) tied in x, (13) C, (23) C: (2 − 0)/√(2·3).
    let xt = [1.0, 1.0, 2.0];
    let yt = [1.0, 2.0, 3.0];
    assert_eq!(average_ranks(&xt), vec![1.5, 1.5, 3.0]);
    close(spearman(&xt, &yt).unwrap().unwrap(), 3f64.sqrt() / 2.0);
    close(kendall_tau_b(&xt, &yt).unwrap().unwrap(), 2.0 / 6f64.sqrt());
    // A constant series has no correlation.
    assert_eq!(spearman(&[1.0, 1.0, 1.0], &yt).unwrap(), None);
    assert_eq!(kendall_tau_b(&[1.0, 1.0, 1.0], &yt).unwrap(), None);
    assert!(spearman(&[1.0], &[1.0]).is_err());
    assert!(kendall_tau_b(&[1.0, 2.0], &[1.0]).is_err());
}
