//! The global time cutoff and the decisions eligible on each side of it.

use std::collections::BTreeMap;

use crate::catalog::Catalog;
use crate::scenes::SceneConfig;

/// Skip reason: fewer than `min_history` strictly earlier interactions of the same user.
pub const SKIP_SHORT_HISTORY: &str = "short_history";
/// Skip reason: the negative sources together could not fill the exposure list.
pub const SKIP_TOO_FEW_CANDIDATES: &str = "too_few_candidates";

/// The global cutoff. Interactions are time-sorted, so each side is a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSplit {
    /// Timestamp of the first interaction of the eval share; `None` when that share is empty
    /// (every decision is then a train decision).
    pub cutoff: Option<i64>,
    /// Number of interactions strictly before the cutoff: `interactions[..cutoff_position]`
    /// is all the data fitted models may see.
    pub cutoff_position: usize,
}

impl TimeSplit {
    /// The last `round(n × eval_fraction)` interactions are the eval share; the cutoff is the
    /// timestamp of its first interaction. Interactions before that one sharing its timestamp
    /// are eval decisions too (the split is by time, never inside one timestamp).
    pub fn compute(catalog: &Catalog, eval_fraction: f64) -> TimeSplit {
        let n = catalog.interactions.len();
        let eval_count = ((n as f64) * eval_fraction).round() as usize;
        if eval_count == 0 || n == 0 {
            return TimeSplit {
                cutoff: None,
                cutoff_position: n,
            };
        }
        let first_eval = n - eval_count.min(n);
        let cutoff = catalog.interactions[first_eval].timestamp;
        let cutoff_position = catalog
            .interactions
            .partition_point(|i| i.timestamp < cutoff);
        TimeSplit {
            cutoff: Some(cutoff),
            cutoff_position,
        }
    }

    /// Whether a decision at `timestamp` is an eval decision.
    pub fn is_eval(&self, timestamp: i64) -> bool {
        self.cutoff.is_some_and(|c| timestamp >= c)
    }
}

/// Decisions (positions into `catalog.interactions`, ascending) that may become scenes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decisions {
    pub train: Vec<u32>,
    pub eval: Vec<u32>,
    /// All decisions on each side of the cutoff, eligible or not.
    pub train_total: usize,
    pub eval_total: usize,
    pub train_skipped: BTreeMap<String, usize>,
    pub eval_skipped: BTreeMap<String, usize>,
}

/// Every interaction is a decision; it is eligible when its user has at least `min_history`
/// interactions with a strictly earlier timestamp.
pub fn eligible_decisions(
    catalog: &Catalog,
    by_user: &[Vec<u32>],
    time_split: &TimeSplit,
    config: &SceneConfig,
) -> Decisions {
    let interactions = &catalog.interactions;
    let mut decisions = Decisions::default();
    for positions in by_user {
        let mut earlier = 0usize;
        for &pos in positions {
            let timestamp = interactions[pos as usize].timestamp;
            while interactions[positions[earlier] as usize].timestamp < timestamp {
                earlier += 1;
            }
            let eval = time_split.is_eval(timestamp);
            let (eligible, total, skipped) = if eval {
                (
                    &mut decisions.eval,
                    &mut decisions.eval_total,
                    &mut decisions.eval_skipped,
                )
            } else {
                (
                    &mut decisions.train,
                    &mut decisions.train_total,
                    &mut decisions.train_skipped,
                )
            };
            *total += 1;
            if earlier >= config.min_history {
                eligible.push(pos);
            } else {
                *skipped.entry(SKIP_SHORT_HISTORY.to_owned()).or_insert(0) += 1;
            }
        }
    }
    decisions.train.sort_unstable();
    decisions.eval.sort_unstable();
    decisions
}

/// The positions in `by_user_positions` (one user's, time-ordered) strictly before `timestamp`.
pub fn history_before<'a>(
    catalog: &Catalog,
    by_user_positions: &'a [u32],
    timestamp: i64,
) -> &'a [u32] {
    let end = by_user_positions
        .partition_point(|&p| catalog.interactions[p as usize].timestamp < timestamp);
    &by_user_positions[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogBuilder, Interaction};

    fn catalog(rows: &[(&str, &str, i64)]) -> Catalog {
        let mut b = CatalogBuilder::new("t");
        for &(user, item, timestamp) in rows {
            let user = b.user(user);
            let item = b.item(item);
            b.push_interaction(Interaction {
                user,
                item,
                timestamp,
                rating: None,
                review: None,
                impressions: None,
            });
        }
        b.finish()
    }

    #[test]
    fn cutoff_is_the_first_timestamp_of_the_last_share_and_keeps_ties_together() {
        // 10 interactions; the last 2 (t = 90, 90) are the eval share, and the one at t = 90
        // before them joins eval because the split is by time.
        let rows: Vec<(String, String, i64)> = [10, 20, 30, 40, 50, 60, 70, 90, 90, 90]
            .iter()
            .enumerate()
            .map(|(i, &t)| (format!("u{}", i % 3), format!("i{i}"), t))
            .collect();
        let rows: Vec<(&str, &str, i64)> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), i.as_str(), *t))
            .collect();
        let c = catalog(&rows);
        let s = TimeSplit::compute(&c, 0.2);
        assert_eq!(s.cutoff, Some(90));
        assert_eq!(s.cutoff_position, 7);
        assert!(s.is_eval(90) && !s.is_eval(89));
        let none = TimeSplit::compute(&c, 0.0);
        assert_eq!(none.cutoff, None);
        assert_eq!(none.cutoff_position, 10);
        assert!(!none.is_eval(i64::MAX));
    }

    #[test]
    fn eligibility_counts_strictly_earlier_timestamps_only() {
        // u1: t=1, 2, 2, 3, 4: the decisions at t=2 have 1 earlier interaction, t=3 has 3.
        let c = catalog(&[
            ("u1", "a", 1),
            ("u1", "b", 2),
            ("u1", "c", 2),
            ("u1", "d", 3),
            ("u1", "e", 4),
            ("u2", "a", 5),
        ]);
        let by_user = c.interactions_by_user();
        let split = TimeSplit {
            cutoff: Some(4),
            cutoff_position: 4,
        };
        let config = SceneConfig {
            min_history: 3,
            ..SceneConfig::default()
        };
        let d = eligible_decisions(&c, &by_user, &split, &config);
        assert_eq!(d.train, vec![3]);
        assert_eq!(d.eval, vec![4]);
        assert_eq!(d.train_total, 4);
        assert_eq!(d.eval_total, 2);
        assert_eq!(d.train_skipped[SKIP_SHORT_HISTORY], 3);
        assert_eq!(d.eval_skipped[SKIP_SHORT_HISTORY], 1);
        let u1 = c.user_idx("u1").unwrap() as usize;
        assert_eq!(history_before(&c, &by_user[u1], 2), &[0]);
        assert_eq!(history_before(&c, &by_user[u1], 3), &[0, 1, 2]);
    }
}
