//! Offline top-k metrics against held-out real interactions, and rank correlations.
//!
//! Relevance is binary: an item is relevant to a user when the user interacted with it after
//! the cut (and not before it). Conventions (those of RecBole):
//! - `NDCG@k = DCG@k / IDCG@k`, `DCG@k = Σ_{i ≤ k, item i relevant} 1 / log2(i + 1)` with
//!   ranks `i` from 1, and `IDCG@k` the DCG of `min(k, |relevant|)` relevant items on top.
//! - `Recall@k = |top-k ∩ relevant| / |relevant|`.
//! - `MRR@k = 1 / rank` of the first relevant item within the top k, 0 when none.
//!
//! Each is averaged over users with at least one relevant item.

use std::collections::HashSet;

use crate::error::LoopError;

/// NDCG@k of one ranked list.
pub fn ndcg_at_k<T: Eq + std::hash::Hash>(ranked: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    if relevant.is_empty() || k == 0 {
        return 0.0;
    }
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, item)| relevant.contains(item))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let ideal: f64 = (0..k.min(relevant.len()))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    dcg / ideal
}

/// Recall@k of one ranked list.
pub fn recall_at_k<T: Eq + std::hash::Hash>(ranked: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    let hits = ranked
        .iter()
        .take(k)
        .filter(|item| relevant.contains(item))
        .count();
    hits as f64 / relevant.len() as f64
}

/// MRR@k (reciprocal rank of the first relevant item in the top k) of one ranked list.
pub fn mrr_at_k<T: Eq + std::hash::Hash>(ranked: &[T], relevant: &HashSet<T>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|item| relevant.contains(item))
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

/// Mean offline metrics of one recommender over users.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct OfflineMetrics {
    pub users: usize,
    pub ndcg_at_10: f64,
    pub recall_at_10: f64,
    pub mrr_at_5: f64,
    /// NDCG and Recall at the page size `k` of the run (equal to the @10 ones when k = 10).
    pub k: usize,
    pub ndcg_at_k: f64,
    pub recall_at_k: f64,
}

/// Accumulates per-user metrics.
#[derive(Debug, Clone, Default)]
pub struct OfflineAccumulator {
    k: usize,
    sums: [f64; 5],
    users: usize,
}

impl OfflineAccumulator {
    pub fn new(k: usize) -> Self {
        OfflineAccumulator {
            k,
            ..Self::default()
        }
    }

    /// Adds one user; users without relevant items are not counted.
    pub fn add<T: Eq + std::hash::Hash>(&mut self, ranked: &[T], relevant: &HashSet<T>) {
        if relevant.is_empty() {
            return;
        }
        self.users += 1;
        self.sums[0] += ndcg_at_k(ranked, relevant, 10);
        self.sums[1] += recall_at_k(ranked, relevant, 10);
        self.sums[2] += mrr_at_k(ranked, relevant, 5);
        self.sums[3] += ndcg_at_k(ranked, relevant, self.k);
        self.sums[4] += recall_at_k(ranked, relevant, self.k);
    }

    pub fn finish(&self) -> OfflineMetrics {
        let n = self.users.max(1) as f64;
        OfflineMetrics {
            users: self.users,
            ndcg_at_10: self.sums[0] / n,
            recall_at_10: self.sums[1] / n,
            mrr_at_5: self.sums[2] / n,
            k: self.k,
            ndcg_at_k: self.sums[3] / n,
            recall_at_k: self.sums[4] / n,
        }
    }
}

/// Ranks from 1 with ties given their average rank.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

fn check_pair(xs: &[f64], ys: &[f64]) -> Result<(), LoopError> {
    if xs.len() != ys.len() || xs.len() < 2 {
        return Err(LoopError::Config(format!(
            "a rank correlation needs two equally long series of at least 2 values (got {} and {})",
            xs.len(),
            ys.len()
        )));
    }
    if xs.iter().chain(ys).any(|v| !v.is_finite()) {
        return Err(LoopError::Config(
            "a rank correlation needs finite values".to_owned(),
        ));
    }
    Ok(())
}

/// Spearman's ρ: Pearson's correlation of the average ranks. `None` when one series is
/// constant (the correlation is undefined).
pub fn spearman(xs: &[f64], ys: &[f64]) -> Result<Option<f64>, LoopError> {
    check_pair(xs, ys)?;
    let (rx, ry) = (average_ranks(xs), average_ranks(ys));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return Ok(None);
    }
    Ok(Some(sxy / (sxx * syy).sqrt()))
}

/// Kendall's τ-b (ties in either series corrected for). `None` when one series is constant.
pub fn kendall_tau_b(xs: &[f64], ys: &[f64]) -> Result<Option<f64>, LoopError> {
    check_pair(xs, ys)?;
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..xs.len() {
        for j in i + 1..xs.len() {
            let dx = xs[i].total_cmp(&xs[j]) as i64;
            let dy = ys[i].total_cmp(&ys[j]) as i64;
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => ties_x += 1,
                (_, 0) => ties_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    // Pairs not tied in x (those tied in y only included), and not tied in y.
    let untied_x = concordant + discordant + ties_y;
    let untied_y = concordant + discordant + ties_x;
    if untied_x == 0 || untied_y == 0 {
        return Ok(None);
    }
    Ok(Some(
        (concordant - discordant) as f64 / ((untied_x as f64) * (untied_y as f64)).sqrt(),
    ))
}
