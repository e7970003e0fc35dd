//! Summary figures of a [`Catalog`], as printed by `mirrorsim data stats`.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::catalog::Catalog;

/// Counts, time range, rating histogram and per-user activity of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetStats {
    pub dataset: String,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    pub users_with_interactions: usize,
    pub items_with_interactions: usize,
    /// Earliest and latest interaction time, Unix seconds (`None` without interactions).
    pub time_min: Option<i64>,
    pub time_max: Option<i64>,
    /// The same instants as ISO 8601 UTC (`2000-04-25T23:05:32Z`).
    pub time_min_iso: Option<String>,
    pub time_max_iso: Option<String>,
    /// Rating value → number of interactions, in rating order; `None` when no interaction
    /// has a rating.
    pub rating_histogram: Option<RatingHistogram>,
    /// Interactions with a rating, as a share of all interactions.
    pub share_with_rating: f64,
    /// Interactions per user, over the users that have at least one.
    pub interactions_per_user: Spread,
    pub share_with_review: f64,
    pub share_with_impressions: f64,
}

/// Minimum, median and maximum of a count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Spread {
    pub min: u64,
    pub median: f64,
    pub max: u64,
}

impl Spread {
    /// The spread of `values` (all zero when empty); the median of an even count is the mean
    /// of the two middle values.
    pub fn of(mut values: Vec<u64>) -> Self {
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_unstable();
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2] as f64
        } else {
            (values[n / 2 - 1] as f64 + values[n / 2] as f64) / 2.0
        };
        Spread {
            min: values[0],
            median,
            max: values[n - 1],
        }
    }
}

/// Counts per distinct rating value, sorted by value. Serialises as a JSON object whose keys
/// are the rating values (`{"1": 56174, "2": 107557, …}`), in numeric order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RatingHistogram(Vec<(f32, u64)>);

impl RatingHistogram {
    pub fn bins(&self) -> &[(f32, u64)] {
        &self.0
    }

    /// The number of interactions rated exactly `rating`.
    pub fn count(&self, rating: f32) -> u64 {
        self.0
            .iter()
            .find(|(value, _)| *value == rating)
            .map_or(0, |(_, count)| *count)
    }
}

impl Serialize for RatingHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (rating, count) in &self.0 {
            map.serialize_entry(&rating.to_string(), count)?;
        }
        map.end()
    }
}

impl DatasetStats {
    pub fn compute(catalog: &Catalog) -> Self {
        let interactions = &catalog.interactions;
        let mut per_user = vec![0u64; catalog.users.len()];
        let mut item_seen = vec![false; catalog.items.len()];
        let mut rating_counts: Vec<(f32, u64)> = Vec::new();
        let (mut with_rating, mut with_review, mut with_impressions) = (0usize, 0usize, 0usize);
        let mut time_range: Option<(i64, i64)> = None;
        for interaction in interactions {
            per_user[interaction.user as usize] += 1;
            item_seen[interaction.item as usize] = true;
            time_range = Some(match time_range {
                None => (interaction.timestamp, interaction.timestamp),
                Some((lo, hi)) => (lo.min(interaction.timestamp), hi.max(interaction.timestamp)),
            });
            if let Some(rating) = interaction.rating {
                with_rating += 1;
                // Few distinct values (5 or 10 for MovieLens): a linear scan beats hashing.
                match rating_counts.iter_mut().find(|(value, _)| *value == rating) {
                    Some((_, count)) => *count += 1,
                    None => rating_counts.push((rating, 1)),
                }
            }
            with_review += usize::from(interaction.review.is_some());
            with_impressions += usize::from(interaction.impressions.is_some());
        }
        rating_counts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let share = |count: usize| {
            if interactions.is_empty() {
                0.0
            } else {
                count as f64 / interactions.len() as f64
            }
        };
        let active: Vec<u64> = per_user.into_iter().filter(|&n| n > 0).collect();
        DatasetStats {
            dataset: catalog.name.clone(),
            users: catalog.users.len(),
            items: catalog.items.len(),
            interactions: interactions.len(),
            users_with_interactions: active.len(),
            items_with_interactions: item_seen.iter().filter(|&&seen| seen).count(),
            time_min: time_range.map(|r| r.0),
            time_max: time_range.map(|r| r.1),
            time_min_iso: time_range.map(|r| iso_utc(r.0)),
            time_max_iso: time_range.map(|r| iso_utc(r.1)),
            rating_histogram: (!rating_counts.is_empty()).then_some(RatingHistogram(rating_counts)),
            share_with_rating: share(with_rating),
            interactions_per_user: Spread::of(active),
            share_with_review: share(with_review),
            share_with_impressions: share(with_impressions),
        }
    }
}

/// Unix seconds as an ISO 8601 UTC timestamp, e.g. `2000-04-25T23:05:32Z`.
pub fn iso_utc(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm; the
/// inverse of [`crate::catalog::days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{days_from_civil, CatalogBuilder, Interaction};

    #[test]
    fn iso_dates_round_trip_with_days_from_civil() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(956_703_932), "2000-04-25T23:05:32Z");
        assert_eq!(iso_utc(-1), "1969-12-31T23:59:59Z");
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y as i32, m, d), days);
        }
    }

    #[test]
    fn spread_median_of_even_and_odd_counts() {
        assert_eq!(
            Spread::of(vec![5, 1, 3]),
            Spread {
                min: 1,
                median: 3.0,
                max: 5
            }
        );
        assert_eq!(Spread::of(vec![4, 1, 2, 10]).median, 3.0);
        assert_eq!(Spread::of(vec![]), Spread::default());
    }

    #[test]
    fn stats_of_a_small_catalog() {
        let mut b = CatalogBuilder::new("tiny");
        let (u1, u2, u3) = (b.user("a"), b.user("b"), b.user("idle"));
        let (i1, i2) = (b.item("x"), b.item("y"));
        b.item("never-rated");
        let rows = [
            (u1, i1, 30, Some(4.5), Some("great")),
            (u1, i2, 10, Some(1.0), None),
            (u2, i1, 20, None, None),
            (u1, i1, 40, Some(4.5), None),
        ];
        for (user, item, timestamp, rating, review) in rows {
            b.push_interaction(Interaction {
                user,
                item,
                timestamp,
                rating,
                review: review.map(Box::from),
                impressions: (user == u2).then(|| vec![i1, i2].into_boxed_slice()),
            });
        }
        let _ = u3;
        let stats = DatasetStats::compute(&b.finish());
        assert_eq!((stats.users, stats.items, stats.interactions), (3, 3, 4));
        assert_eq!(stats.users_with_interactions, 2);
        assert_eq!(stats.items_with_interactions, 2);
        assert_eq!((stats.time_min, stats.time_max), (Some(10), Some(40)));
        let histogram = stats.rating_histogram.clone().unwrap();
        assert_eq!(histogram.bins(), &[(1.0, 1), (4.5, 2)]);
        assert_eq!(histogram.count(4.5), 2);
        assert_eq!(stats.share_with_rating, 0.75);
        assert_eq!(stats.share_with_review, 0.25);
        assert_eq!(stats.share_with_impressions, 0.25);
        assert_eq!(
            stats.interactions_per_user,
            Spread {
                min: 1,
                median: 2.0,
                max: 3
            }
        );
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["rating_histogram"]["4.5"], 2);
        assert_eq!(
            serde_json::to_string(&histogram).unwrap(),
            r#"{"1":1,"4.5":2}"#
        );
    }
}
