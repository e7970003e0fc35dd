//! Negative sampling: fills each scene's exposure list with `k − 1` items the user did not
//! choose, drawn from a weighted mix of sources.
//!
//! Every negative passes the same filters: the user never interacted with it (at any time), it
//! was not released after the decision (where a release time is known), and it is not already
//! in the list. A source that cannot provide such an item hands over to the next source of
//! [`NegativeSource::ALL`]; the source that really provided the item is the one recorded.
//!
//! Popularity is weighted by interaction counts strictly before the decision without any
//! count table: interactions are sorted by time, so drawing a uniform position among the
//! `P` interactions with a strictly earlier timestamp and taking its item draws each item with
//! probability `count_before(item) / P` — exact, O(1) per draw, and blind to the future.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::catalog::{Catalog, ItemIdx, UserIdx};
use crate::scenes::collaborative::CollaborativeModel;
use crate::scenes::content::ContentIndex;
use crate::scenes::split::{history_before, SKIP_TOO_FEW_CANDIDATES};
use crate::scenes::{NegativeMix, NegativeSource, SceneConfig, Split};

/// Rejection-sampling attempts of the random and popularity sources before they give up.
const MAX_TRIES: usize = 64;

/// Per-user lookups shared by all scenes.
#[derive(Debug, Clone)]
pub struct UserIndex {
    /// Interaction positions per user, in time order.
    pub by_user: Vec<Vec<u32>>,
    /// Items each user ever interacted with, sorted and unique.
    pub touched: Vec<Vec<ItemIdx>>,
    /// Release time per item (`i64::MIN` where unknown), kept apart from the items for speed.
    pub release: Vec<i64>,
}

impl UserIndex {
    pub fn build(catalog: &Catalog) -> Self {
        let by_user = catalog.interactions_by_user();
        let touched = by_user
            .par_iter()
            .map(|positions| {
                let mut items: Vec<ItemIdx> = positions
                    .iter()
                    .map(|&p| catalog.interactions[p as usize].item)
                    .collect();
                items.sort_unstable();
                items.dedup();
                items
            })
            .collect();
        let release = catalog
            .items
            .iter()
            .map(|i| i.release_time.unwrap_or(i64::MIN))
            .collect();
        UserIndex {
            by_user,
            touched,
            release,
        }
    }

    pub fn has_touched(&self, user: UserIdx, item: ItemIdx) -> bool {
        self.touched[user as usize].binary_search(&item).is_ok()
    }
}

/// A sampled scene, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The decision: a position in `catalog.interactions`.
    pub position: u32,
    pub split: Split,
    pub options: Vec<ItemIdx>,
    /// Per option: `None` for the real item, else the source that provided it.
    pub sources: Vec<Option<NegativeSource>>,
    pub answer: usize,
    /// Per negative: the source first drawn for it (differs from `sources` on a fallback).
    pub requested: Vec<NegativeSource>,
}

/// The scenes of one split and what happened to the decisions tried.
#[derive(Debug, Clone, Default)]
pub struct SampledSplit {
    pub scenes: Vec<Scene>,
    /// Decisions tried but dropped, per reason.
    pub skipped: BTreeMap<String, usize>,
    /// Eligible decisions never tried because of the scene cap.
    pub not_sampled: usize,
}

/// Seeds a scene's RNG from the run seed and the decision, so that each scene is the same
/// whichever thread builds it and whichever other scenes are built.
pub fn scene_rng(seed: u64, user_id: &str, timestamp: i64, item_id: &str) -> StdRng {
    let mut h = mix64(seed ^ 0x7363_656e_6573_0001);
    h = mix64(h ^ fnv1a(user_id.as_bytes()));
    h = mix64(h ^ timestamp as u64);
    h = mix64(h ^ fnv1a(item_id.as_bytes()));
    StdRng::seed_from_u64(h)
}

/// SplitMix64's finaliser.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Everything a scene needs to draw its negatives.
pub struct SceneSampler<'a> {
    pub catalog: &'a Catalog,
    pub index: &'a UserIndex,
    pub collaborative: Option<&'a CollaborativeModel>,
    pub content: Option<&'a ContentIndex>,
    /// The effective weights (impressions zeroed when the data has none).
    pub weights: &'a NegativeMix,
    pub config: &'a SceneConfig,
}

/// One decision's negative-drawing state: the filters and the lazily built candidate pools.
pub struct DecisionDraw<'s, 'a> {
    sampler: &'s SceneSampler<'a>,
    user: UserIdx,
    timestamp: i64,
    positive: ItemIdx,
    position: usize,
    /// Number of interactions with a timestamp strictly before the decision.
    earlier_interactions: usize,
    chosen: Vec<ItemIdx>,
    collaborative_pool: Option<Vec<ItemIdx>>,
    content_pool: Option<Vec<ItemIdx>>,
    impressions_pool: Option<Vec<ItemIdx>>,
}

impl<'a> SceneSampler<'a> {
    /// Builds up to `max` scenes from `eligible` (ascending positions). With a cap below the
    /// number of eligible decisions, a seeded shuffle picks which are tried; a decision that
    /// fails is replaced by the next one of the shuffle, so the cap is met whenever enough
    /// decisions can be built. Scenes come back in time order.
    pub fn sample_split(&self, split: Split, eligible: &[u32], max: Option<usize>) -> SampledSplit {
        let want = max.unwrap_or(eligible.len()).min(eligible.len());
        let mut order = eligible.to_vec();
        if want < eligible.len() {
            let tag = match split {
                Split::Train => 0x7472_6169_6e00,
                Split::Eval => 0x6576_616c_0000,
            };
            let mut rng = StdRng::seed_from_u64(mix64(self.config.seed ^ tag));
            order.shuffle(&mut rng);
        }
        let mut result = SampledSplit::default();
        let mut next = 0;
        while result.scenes.len() < want && next < order.len() {
            let take = (want - result.scenes.len()).min(order.len() - next);
            let batch = &order[next..next + take];
            next += take;
            let built: Vec<Option<Scene>> = batch
                .par_iter()
                .map(|&position| self.build_scene(position, split))
                .collect();
            for scene in built {
                match scene {
                    Some(scene) => result.scenes.push(scene),
                    None => {
                        *result
                            .skipped
                            .entry(SKIP_TOO_FEW_CANDIDATES.to_owned())
                            .or_insert(0) += 1
                    }
                }
            }
        }
        result.not_sampled = order.len() - next;
        result.scenes.sort_unstable_by_key(|s| s.position);
        result
    }

    /// One scene for the decision at `position`, or `None` when even the random source cannot
    /// fill the exposure list.
    pub fn build_scene(&self, position: u32, split: Split) -> Option<Scene> {
        let interaction = &self.catalog.interactions[position as usize];
        let mut rng = scene_rng(
            self.config.seed,
            &self.catalog.user(interaction.user).id,
            interaction.timestamp,
            &self.catalog.item(interaction.item).id,
        );
        let k = match split {
            Split::Train => {
                rng.random_range(self.config.train_options.min..=self.config.train_options.max)
            }
            Split::Eval => self.config.eval_options,
        };
        let mut draw = self.decision(position as usize);
        let mut negatives = Vec::with_capacity(k - 1);
        let mut requested = Vec::with_capacity(k - 1);
        for _ in 1..k {
            let wanted = self.pick_source(&mut rng);
            let (item, source) = draw.draw_with_fallback(wanted, &mut rng)?;
            negatives.push((item, source));
            requested.push(wanted);
        }
        // Sources fill the list in draw order; shuffling hides that order from the slots.
        let mut paired: Vec<(ItemIdx, NegativeSource, NegativeSource)> = negatives
            .into_iter()
            .zip(requested)
            .map(|((item, source), wanted)| (item, source, wanted))
            .collect();
        paired.shuffle(&mut rng);
        let answer = rng.random_range(0..k);
        let mut options = Vec::with_capacity(k);
        let mut sources = Vec::with_capacity(k);
        let mut requested = Vec::with_capacity(k - 1);
        for (item, source, wanted) in paired {
            options.push(item);
            sources.push(Some(source));
            requested.push(wanted);
        }
        options.insert(answer, interaction.item);
        sources.insert(answer, None);
        Some(Scene {
            position,
            split,
            options,
            sources,
            answer,
            requested,
        })
    }

    fn pick_source(&self, rng: &mut StdRng) -> NegativeSource {
        let total: f64 = NegativeSource::ALL
            .iter()
            .map(|&s| self.weights.weight(s))
            .sum();
        let mut x = rng.random::<f64>() * total;
        let mut last = NegativeSource::Random;
        for source in NegativeSource::ALL {
            let w = self.weights.weight(source);
            if w <= 0.0 {
                continue;
            }
            last = source;
            if x < w {
                return source;
            }
            x -= w;
        }
        last
    }

    /// The drawing state for the decision at `position`.
    pub fn decision(&self, position: usize) -> DecisionDraw<'_, 'a> {
        let interaction = &self.catalog.interactions[position];
        let timestamp = interaction.timestamp;
        DecisionDraw {
            sampler: self,
            user: interaction.user,
            timestamp,
            positive: interaction.item,
            position,
            earlier_interactions: self
                .catalog
                .interactions
                .partition_point(|i| i.timestamp < timestamp),
            chosen: Vec::new(),
            collaborative_pool: None,
            content_pool: None,
            impressions_pool: None,
        }
    }
}

impl DecisionDraw<'_, '_> {
    /// Whether `item` passes the filters that do not change during a scene: not the real item,
    /// never touched by the user, not released after the decision.
    fn admissible(&self, item: ItemIdx) -> bool {
        item != self.positive
            && self.sampler.index.release[item as usize] <= self.timestamp
            && !self.sampler.index.has_touched(self.user, item)
    }

    fn valid(&self, item: ItemIdx) -> bool {
        self.admissible(item) && !self.chosen.contains(&item)
    }

    /// Draws one negative from `wanted`, else from the sources after it in the fallback chain.
    /// Returns the item and the source that provided it.
    pub fn draw_with_fallback(
        &mut self,
        wanted: NegativeSource,
        rng: &mut StdRng,
    ) -> Option<(ItemIdx, NegativeSource)> {
        let start = NegativeSource::ALL.iter().position(|&s| s == wanted)?;
        for &source in &NegativeSource::ALL[start..] {
            if let Some(item) = self.draw(source, rng) {
                self.chosen.push(item);
                return Some((item, source));
            }
        }
        None
    }

    /// Draws one valid item from `source` alone (not yet added to the list).
    pub fn draw(&mut self, source: NegativeSource, rng: &mut StdRng) -> Option<ItemIdx> {
        match source {
            NegativeSource::Random => self.draw_random(rng),
            NegativeSource::Popularity => self.draw_popular(rng),
            NegativeSource::Collaborative => {
                if self.collaborative_pool.is_none() {
                    self.collaborative_pool = Some(self.build_collaborative_pool());
                }
                self.draw_from_pool(self.collaborative_pool.as_deref().unwrap_or(&[]), rng)
            }
            NegativeSource::Content => {
                if self.content_pool.is_none() {
                    self.content_pool = Some(self.build_content_pool());
                }
                self.draw_from_pool(self.content_pool.as_deref().unwrap_or(&[]), rng)
            }
            NegativeSource::Impressions => {
                if self.impressions_pool.is_none() {
                    self.impressions_pool = Some(self.build_impressions_pool());
                }
                self.draw_from_pool(self.impressions_pool.as_deref().unwrap_or(&[]), rng)
            }
        }
    }

    /// Uniform over the items the user never touched (and that pass the filters): rejection
    /// sampling, then an exhaustive scan when the user touched nearly everything.
    fn draw_random(&self, rng: &mut StdRng) -> Option<ItemIdx> {
        let n = self.sampler.catalog.items.len();
        if n == 0 {
            return None;
        }
        for _ in 0..MAX_TRIES {
            let item = rng.random_range(0..n) as ItemIdx;
            if self.valid(item) {
                return Some(item);
            }
        }
        let candidates: Vec<ItemIdx> = (0..n as ItemIdx).filter(|&i| self.valid(i)).collect();
        if candidates.is_empty() {
            None
        } else {
            Some(candidates[rng.random_range(0..candidates.len())])
        }
    }

    /// Proportional to interactions strictly before the decision (see the module docs).
    fn draw_popular(&self, rng: &mut StdRng) -> Option<ItemIdx> {
        if self.earlier_interactions == 0 {
            return None;
        }
        for _ in 0..MAX_TRIES {
            let at = rng.random_range(0..self.earlier_interactions);
            let item = self.sampler.catalog.interactions[at].item;
            if self.valid(item) {
                return Some(item);
            }
        }
        None
    }

    fn draw_from_pool(&self, pool: &[ItemIdx], rng: &mut StdRng) -> Option<ItemIdx> {
        let remaining: Vec<ItemIdx> = pool
            .iter()
            .copied()
            .filter(|i| !self.chosen.contains(i))
            .collect();
        if remaining.is_empty() {
            None
        } else {
            Some(remaining[rng.random_range(0..remaining.len())])
        }
    }

    /// The `collaborative_pool` admissible items scoring highest for the user's history
    /// (all their interactions strictly before the decision).
    fn build_collaborative_pool(&self) -> Vec<ItemIdx> {
        let Some(model) = self.sampler.collaborative else {
            return Vec::new();
        };
        if model.dims == 0 {
            return Vec::new();
        }
        let catalog = self.sampler.catalog;
        let history = history_before(
            catalog,
            &self.sampler.index.by_user[self.user as usize],
            self.timestamp,
        );
        let h = model.fold_in(
            history
                .iter()
                .map(|&p| catalog.interactions[p as usize].item),
        );
        if h.iter().all(|&x| x == 0.0) {
            return Vec::new();
        }
        let scores = model.scores(&h);
        let mut ranked: Vec<(f32, ItemIdx)> = scores
            .iter()
            .enumerate()
            .filter(|&(_, &s)| s > 0.0)
            .map(|(i, &s)| (s, i as ItemIdx))
            .collect();
        let pool = self.sampler.config.collaborative_pool;
        let order =
            |a: &(f32, ItemIdx), b: &(f32, ItemIdx)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        // Only the best-scored items can make the pool: look at the top `pool + touched`
        // (at most that many are filtered out for being touched), widening only when
        // release times filter out more.
        let touched = self.sampler.index.touched[self.user as usize].len();
        let mut head = (pool + touched + 16).min(ranked.len());
        loop {
            if head < ranked.len() {
                ranked.select_nth_unstable_by(head, order);
            }
            let mut top = ranked[..head].to_vec();
            top.sort_unstable_by(order);
            let picked: Vec<ItemIdx> = top
                .into_iter()
                .map(|(_, i)| i)
                .filter(|&i| self.admissible(i))
                .take(pool)
                .collect();
            if picked.len() == pool || head == ranked.len() {
                return picked;
            }
            head = (head * 2).min(ranked.len());
        }
    }

    /// The first `content_pool` admissible neighbours of the real item.
    fn build_content_pool(&self) -> Vec<ItemIdx> {
        let Some(index) = self.sampler.content else {
            return Vec::new();
        };
        index
            .neighbours(self.positive)
            .iter()
            .copied()
            .filter(|&i| self.admissible(i))
            .take(self.sampler.config.content_pool)
            .collect()
    }

    /// The admissible items of the impression list logged with the decision.
    fn build_impressions_pool(&self) -> Vec<ItemIdx> {
        let interaction = &self.sampler.catalog.interactions[self.position];
        let mut pool: Vec<ItemIdx> = interaction
            .impressions
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|&i| self.admissible(i))
            .collect();
        pool.sort_unstable();
        pool.dedup();
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogBuilder, Interaction};
    use crate::scenes::TimeSplit;

    struct Fixture {
        catalog: Catalog,
        index: UserIndex,
        config: SceneConfig,
    }

    impl Fixture {
        /// `rows`: (user, item, timestamp, impressions).
        fn new(rows: &[(&str, &str, i64, &[&str])], releases: &[(&str, i64)]) -> Self {
            let mut b = CatalogBuilder::new("t");
            for &(item, release) in releases {
                b.add_item(item, None, BTreeMap::new(), Some(release));
            }
            for &(user, item, timestamp, shown) in rows {
                let user = b.user(user);
                let item = b.item(item);
                let impressions = (!shown.is_empty())
                    .then(|| shown.iter().map(|s| b.item(s)).collect::<Vec<_>>().into());
                b.push_interaction(Interaction {
                    user,
                    item,
                    timestamp,
                    rating: None,
                    review: None,
                    impressions,
                });
            }
            let catalog = b.finish();
            let index = UserIndex::build(&catalog);
            Fixture {
                catalog,
                index,
                config: SceneConfig::default(),
            }
        }

        fn sampler<'a>(
            &'a self,
            weights: &'a NegativeMix,
            collaborative: Option<&'a CollaborativeModel>,
            content: Option<&'a ContentIndex>,
        ) -> SceneSampler<'a> {
            SceneSampler {
                catalog: &self.catalog,
                index: &self.index,
                collaborative,
                content,
                weights,
                config: &self.config,
            }
        }

        fn position(&self, user: &str, item: &str) -> usize {
            let (u, i) = (
                self.catalog.user_idx(user).unwrap(),
                self.catalog.item_idx(item).unwrap(),
            );
            self.catalog
                .interactions
                .iter()
                .position(|x| x.user == u && x.item == i)
                .unwrap()
        }

        fn id(&self, item: ItemIdx) -> &str {
            &self.catalog.item(item).id
        }
    }

    fn histogram(
        fixture: &Fixture,
        sampler: &SceneSampler<'_>,
        position: usize,
        source: NegativeSource,
        draws: usize,
    ) -> BTreeMap<String, usize> {
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = BTreeMap::new();
        for _ in 0..draws {
            let mut d = sampler.decision(position);
            if let Some(item) = d.draw(source, &mut rng) {
                *counts.entry(fixture.id(item).to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    #[test]
    fn random_is_uniform_over_untouched_released_items() {
        // u1 touched a, b and (later) zz; item `late` is released after the decision at t=20;
        // what is left: c, d, e.
        let f = Fixture::new(
            &[
                ("u1", "a", 10, &[]),
                ("u1", "b", 20, &[]),
                ("u2", "c", 5, &[]),
                ("u2", "d", 6, &[]),
                ("u2", "e", 7, &[]),
                ("u1", "zz", 30, &[]),
            ],
            &[("late", 25)],
        );
        let weights = NegativeMix::default();
        let s = f.sampler(&weights, None, None);
        let pos = f.position("u1", "b");
        let h = histogram(&f, &s, pos, NegativeSource::Random, 30_000);
        assert_eq!(h.keys().collect::<Vec<_>>(), vec!["c", "d", "e"]);
        for &n in h.values() {
            assert!((9_400..10_600).contains(&n), "{h:?}");
        }
    }

    #[test]
    fn popularity_follows_counts_strictly_before_the_decision() {
        // Before t=50: x ×3, y ×1 (by other users); at t=50 (same time as the decision) z ×5
        // must not count, nor w at t=60.
        let mut rows: Vec<(String, &str, i64)> = vec![
            ("o1".into(), "x", 1),
            ("o2".into(), "x", 2),
            ("o3".into(), "x", 3),
            ("o4".into(), "y", 4),
            ("me".into(), "mine", 5),
            ("me".into(), "pick", 50),
            ("o9".into(), "w", 60),
        ];
        for i in 0..5 {
            rows.push((format!("p{i}"), "z", 50));
        }
        let rows: Vec<(&str, &str, i64, &[&str])> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), *i, *t, &[][..]))
            .collect();
        let f = Fixture::new(&rows, &[]);
        let weights = NegativeMix::default();
        let s = f.sampler(&weights, None, None);
        let h = histogram(
            &f,
            &s,
            f.position("me", "pick"),
            NegativeSource::Popularity,
            20_000,
        );
        assert_eq!(h.keys().collect::<Vec<_>>(), vec!["x", "y"]);
        let share_x = h["x"] as f64 / 20_000.0;
        assert!((share_x - 0.75).abs() < 0.015, "{h:?}");
    }

    #[test]
    fn content_draws_from_the_nearest_untouched_neighbours() {
        let mut b = CatalogBuilder::new("t");
        let genres = |g: &str| BTreeMap::from([("genres".to_owned(), g.to_owned())]);
        b.add_item("pos", Some("Star Voyage".into()), genres("SciFi"), None);
        b.add_item("near", Some("Star Voyage II".into()), genres("SciFi"), None);
        b.add_item(
            "seen",
            Some("Star Voyage III".into()),
            genres("SciFi"),
            None,
        );
        b.add_item("mid", Some("Robots".into()), genres("SciFi"), None);
        b.add_item("far", Some("Paris".into()), genres("Romance"), None);
        for (item, t) in [("seen", 1), ("far", 2), ("pos", 3)] {
            let (user, item) = (b.user("u"), b.item(item));
            b.push_interaction(Interaction {
                user,
                item,
                timestamp: t,
                rating: None,
                review: None,
                impressions: None,
            });
        }
        let catalog = b.finish();
        let index = UserIndex::build(&catalog);
        let content = ContentIndex::build(&catalog, 10);
        let mut f = Fixture {
            catalog,
            index,
            config: SceneConfig::default(),
        };
        f.config.content_pool = 1;
        let weights = NegativeMix::default();
        let s = f.sampler(&weights, None, Some(&content));
        let h = histogram(&f, &s, 2, NegativeSource::Content, 200);
        assert_eq!(h, BTreeMap::from([("near".to_owned(), 200)]));
        // With the pool of one used up, content falls back to the next source.
        let mut d = s.decision(2);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            d.draw_with_fallback(NegativeSource::Content, &mut rng)
                .map(|x| x.1),
            Some(NegativeSource::Content)
        );
        let (item, source) = d
            .draw_with_fallback(NegativeSource::Content, &mut rng)
            .unwrap();
        assert_ne!(source, NegativeSource::Content);
        assert_ne!(f.id(item), "near");
    }

    #[test]
    fn impressions_use_the_logged_list_minus_touched_items() {
        let f = Fixture::new(
            &[
                ("u", "old", 1, &[]),
                ("u", "pos", 2, &["pos", "old", "shown1", "shown2", "shown1"]),
            ],
            &[],
        );
        let weights = NegativeMix::default();
        let s = f.sampler(&weights, None, None);
        let pos = f.position("u", "pos");
        let h = histogram(&f, &s, pos, NegativeSource::Impressions, 2_000);
        assert_eq!(h.keys().collect::<Vec<_>>(), vec!["shown1", "shown2"]);
        let mut d = s.decision(pos);
        let mut rng = StdRng::seed_from_u64(1);
        let mut got: Vec<&str> = (0..2)
            .map(|_| {
                f.id(d
                    .draw_with_fallback(NegativeSource::Impressions, &mut rng)
                    .unwrap()
                    .0)
            })
            .collect();
        got.sort();
        assert_eq!(got, vec!["shown1", "shown2"]);
        // The list is used up; the rest of the chain has nothing left either (4 items, all
        // touched or chosen), so the draw fails instead of repeating an item.
        assert_eq!(
            d.draw_with_fallback(NegativeSource::Impressions, &mut rng),
            None
        );
    }

    #[test]
    fn collaborative_draws_among_top_scored_untouched_items() {
        // Group a users take a0..a4, group b users b0..b4; the decider (group a) has seen
        // a0, a1 and chooses a2: collaborative negatives must be a3 or a4.
        let mut rows: Vec<(String, String, i64)> = Vec::new();
        let mut t = 0;
        for u in 0..12 {
            let group = if u < 6 { "a" } else { "b" };
            for i in 0..5 {
                t += 1;
                rows.push((format!("u{u}"), format!("{group}{i}"), t));
            }
        }
        for (i, item) in ["a0", "a1", "a2"].iter().enumerate() {
            rows.push(("me".into(), item.to_string(), 1000 + i as i64));
        }
        let rows: Vec<(&str, &str, i64, &[&str])> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), i.as_str(), *t, &[][..]))
            .collect();
        let mut f = Fixture::new(&rows, &[]);
        f.config.collaborative_pool = 2;
        let model = CollaborativeModel::fit(&f.catalog, 60, 2, 3, 9);
        let weights = NegativeMix::default();
        let s = f.sampler(&weights, Some(&model), None);
        let h = histogram(
            &f,
            &s,
            f.position("me", "a2"),
            NegativeSource::Collaborative,
            2_000,
        );
        assert_eq!(h.keys().collect::<Vec<_>>(), vec!["a3", "a4"]);
        assert!(h.values().all(|&n| n > 850), "{h:?}");
    }

    #[test]
    fn scenes_put_the_answer_in_every_slot_and_never_repeat_items() {
        let mut rows: Vec<(String, String, i64)> = Vec::new();
        for i in 0..40 {
            rows.push((format!("o{i}"), format!("i{i}"), i));
        }
        for i in 0..6 {
            rows.push(("me".into(), format!("m{i}"), 100 + i));
        }
        let rows: Vec<(&str, &str, i64, &[&str])> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), i.as_str(), *t, &[][..]))
            .collect();
        let mut f = Fixture::new(&rows, &[]);
        f.config.train_options = crate::scenes::OptionRange { min: 4, max: 4 };
        let weights: NegativeMix = "random=1,popularity=1".parse().unwrap();
        let pos = f.position("me", "m5") as u32;
        let mut slots = [0usize; 4];
        for seed in 0..400 {
            f.config.seed = seed;
            let s = f.sampler(&weights, None, None);
            let scene = s.build_scene(pos, Split::Train).unwrap();
            assert_eq!(scene.options.len(), 4);
            assert_eq!(
                scene.options[scene.answer],
                f.catalog.interactions[pos as usize].item
            );
            assert_eq!(scene.sources[scene.answer], None);
            let mut unique = scene.options.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 4);
            for (slot, &item) in scene.options.iter().enumerate() {
                if slot != scene.answer {
                    assert!(!f.id(item).starts_with('m'), "touched item offered");
                }
            }
            slots[scene.answer] += 1;
            // Same seed, same scene.
            assert_eq!(s.build_scene(pos, Split::Train), Some(scene));
        }
        assert!(slots.iter().all(|&n| n > 60), "{slots:?}");
    }

    #[test]
    fn capped_sampling_is_deterministic_and_exact() {
        let mut rows: Vec<(String, String, i64)> = Vec::new();
        for u in 0..30 {
            for i in 0..6 {
                rows.push((
                    format!("u{u}"),
                    format!("i{}", (u * 7 + i) % 50),
                    (u * 10 + i) as i64,
                ));
            }
        }
        let rows: Vec<(&str, &str, i64, &[&str])> = rows
            .iter()
            .map(|(u, i, t)| (u.as_str(), i.as_str(), *t, &[][..]))
            .collect();
        let f = Fixture::new(&rows, &[]);
        let split = TimeSplit::compute(&f.catalog, 0.0);
        let d = crate::scenes::split::eligible_decisions(
            &f.catalog,
            &f.index.by_user,
            &split,
            &f.config,
        );
        assert_eq!(d.train.len(), 30 * 3);
        let weights = NegativeMix::default();
        let s = f.sampler(&weights, None, None);
        let a = s.sample_split(Split::Train, &d.train, Some(17));
        let b = s.sample_split(Split::Train, &d.train, Some(17));
        assert_eq!(a.scenes.len(), 17);
        assert_eq!(a.not_sampled, 90 - 17);
        assert_eq!(a.scenes, b.scenes);
        assert!(a.scenes.windows(2).all(|w| w[0].position < w[1].position));
    }
}
