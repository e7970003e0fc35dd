//! Prompts for a user facing an arbitrary slate: a recommender's page, a request to the
//! simulator service. Same templates as the scenes (so a fine-tuned simulator sees the prompt it
//! was trained on), but the user and the items may come from the catalog or be given inline, and
//! nothing is known about the real choice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::DataError;
use crate::scenes::negatives::UserIndex;
use crate::scenes::render::{
    annotate_messages, format_rating, item_details, labels, rating_scale, relative_time,
    shorten_review, with_rank, Attribute, ChatMessage, HistoryView, ItemStats, OptionView,
    PromptSet, SceneView, SystemView, UserPromptView, UserView,
};
use crate::scenes::split::history_before;
use crate::scenes::MAX_OPTIONS;

/// The item id of the "none of these" option appended to a page (Agent4Rec-style paging).
pub const NONE_OF_THESE_ID: &str = "__none__";
const NONE_OF_THESE_TITLE: &str = "None of these: I would not pick any of the items above";

/// An item as the prompt shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlateItem {
    pub id: String,
    pub title: String,
    /// "genres: Comedy; year: 1995"; may be empty.
    #[serde(default)]
    pub details: String,
    /// Shown after the details on an option line ("2,106 ratings, average 4.1/5"): a catalog
    /// item's rating count and mean when the catalog was set up [`SlateCatalog::with_item_stats`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<String>,
}

impl SlateItem {
    pub fn none_of_these() -> Self {
        SlateItem {
            id: NONE_OF_THESE_ID.to_owned(),
            title: NONE_OF_THESE_TITLE.to_owned(),
            details: String::new(),
            stats: None,
        }
    }
}

/// One earlier choice of the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlateHistoryEntry {
    pub item: SlateItem,
    /// How long before the slate; shown as "3 days before", or "earlier" when unknown.
    #[serde(default)]
    pub seconds_ago: Option<i64>,
    /// On the catalog's scale when the user comes from the catalog; shown as given otherwise.
    #[serde(default)]
    pub rating: Option<f32>,
    #[serde(default)]
    pub review: Option<String>,
}

/// The user facing the slate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlateUser {
    pub id: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The choices shown in the prompt, oldest first.
    #[serde(default)]
    pub history: Vec<SlateHistoryEntry>,
    /// Every item the user chose before the slate, oldest first, for collaborative priors; for
    /// a catalog user all of them (the prompt shows only the latest). Empty means: the items of
    /// `history`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_items: Vec<String>,
}

/// The rendered prompts of one slate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlatePrompt {
    /// The options in the order shown (with [`NONE_OF_THESE_ID`] last when asked).
    pub item_ids: Vec<String>,
    pub labels: Vec<String>,
    /// The rationale prompt (system + user).
    pub messages: Vec<ChatMessage>,
    /// The behaviour-only prompt (system + user).
    pub direct_messages: Vec<ChatMessage>,
}

impl SlatePrompt {
    /// The prompt with a note appended to some option lines of both prompts
    /// (`[B] Title (…) — note`), as [`crate::scenes::render::annotate_options`] does for scenes;
    /// `notes` has one entry per option.
    pub fn annotated(&self, notes: &[Option<String>]) -> Result<SlatePrompt, DataError> {
        let id = "(slate)";
        Ok(SlatePrompt {
            messages: annotate_messages(id, &self.labels, &self.messages, notes)?,
            direct_messages: annotate_messages(id, &self.labels, &self.direct_messages, notes)?,
            ..self.clone()
        })
    }
}

/// The rating-prediction prompt of one user and one chosen item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatingPrompt {
    /// The rating levels the answer may name, lowest first ("1" … "5").
    pub levels: Vec<String>,
    /// System + user.
    pub messages: Vec<ChatMessage>,
}

/// A catalog ready to answer slate prompts: its per-user index, item details and templates.
#[derive(Debug)]
pub struct SlateCatalog {
    catalog: Catalog,
    index: UserIndex,
    prompts: PromptSet,
    history_len: usize,
    item_details: Vec<String>,
    rating_scale: Option<f32>,
    /// Whole-number rating levels within the catalog's ratings (ceil(min) ..= floor(max)).
    rating_levels: Vec<String>,
    /// Per item, its rating count and mean as of the cutoff ([`Self::with_item_stats`]), and
    /// the count an option's rank among a slate's options is taken from.
    item_stats: Option<Vec<(String, u32)>>,
    /// Option lines also show that rank ([`Self::with_ranked_item_stats`]).
    item_stats_rank: bool,
}

impl SlateCatalog {
    /// `history_len`: how many of a catalog user's latest interactions the prompt shows.
    pub fn new(
        catalog: Catalog,
        prompts: PromptSet,
        history_len: usize,
    ) -> Result<Self, DataError> {
        if history_len == 0 {
            return Err(DataError::Config(
                "history length must be at least 1".to_owned(),
            ));
        }
        let index = UserIndex::build(&catalog);
        let item_details = catalog.items.iter().map(item_details).collect();
        let rating_scale = rating_scale(&catalog);
        let lowest = catalog
            .interactions
            .iter()
            .filter_map(|i| i.rating)
            .fold(f32::INFINITY, f32::min);
        let rating_levels = match rating_scale {
            Some(highest) if lowest.is_finite() => (lowest.ceil().max(0.0) as u32
                ..=highest.floor().max(0.0) as u32)
                .map(|r| r.to_string())
                .collect(),
            _ => Vec::new(),
        };
        Ok(SlateCatalog {
            catalog,
            index,
            prompts,
            history_len,
            item_details,
            rating_scale,
            rating_levels,
            item_stats: None,
            item_stats_rank: false,
        })
    }

    /// Option lines show each catalog item's rating count and mean over the interactions
    /// before `cutoff` (all of them when `None`), as the scenes of `scenes --item-stats` show
    /// them for eval decisions: an adapter trained on such scenes then sees the prompts it was
    /// trained on.
    pub fn with_item_stats(mut self, cutoff: Option<i64>) -> Self {
        let catalog = &self.catalog;
        let cutoff_position = match cutoff {
            Some(cutoff) => catalog
                .interactions
                .partition_point(|i| i.timestamp < cutoff),
            None => catalog.interactions.len(),
        };
        let stats = ItemStats::build(catalog, cutoff_position);
        self.item_stats = Some(
            (0..catalog.items.len())
                .map(|item| {
                    let record = stats.at_cutoff(item as u32);
                    (
                        record.describe(self.rating_scale),
                        record.shown_count(self.rating_scale),
                    )
                })
                .collect(),
        );
        self
    }

    /// [`Self::with_item_stats`], and catalog options also show their rank by that count among
    /// the slate's catalog options, as the scenes of `scenes --item-stats-rank` do.
    pub fn with_ranked_item_stats(self, cutoff: Option<i64>) -> Self {
        let mut ranked = self.with_item_stats(cutoff);
        ranked.item_stats_rank = true;
        ranked
    }

    /// Each option's stats as its line shows them: with ranks, those of catalog items (the
    /// only ones with a count) gain their rank among the slate's catalog items.
    fn option_stats(&self, options: &[&SlateItem]) -> Vec<Option<String>> {
        let Some(stats) = self.item_stats.as_ref().filter(|_| self.item_stats_rank) else {
            return options.iter().map(|o| o.stats.clone()).collect();
        };
        let counts: Vec<Option<u32>> = options
            .iter()
            .map(|o| {
                o.stats.as_ref()?;
                let idx = self.catalog.item_idx(&o.id)?;
                Some(stats[idx as usize].1)
            })
            .collect();
        let ranked: Vec<u32> = counts.iter().flatten().copied().collect();
        options
            .iter()
            .zip(&counts)
            .map(|(o, count)| match (count, &o.stats) {
                (Some(count), Some(text)) => Some(with_rank(
                    text,
                    *count,
                    &ranked,
                    self.rating_scale.is_some(),
                )),
                _ => o.stats.clone(),
            })
            .collect()
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn history_len(&self) -> usize {
        self.history_len
    }

    /// A catalog item by id; `None` when unknown.
    pub fn item(&self, id: &str) -> Option<SlateItem> {
        let idx = self.catalog.item_idx(id)?;
        let item = self.catalog.item(idx);
        Some(SlateItem {
            id: item.id.clone(),
            title: item.title.clone(),
            details: self.item_details[idx as usize].clone(),
            stats: self
                .item_stats
                .as_ref()
                .map(|stats| stats[idx as usize].0.clone()),
        })
    }

    /// A catalog user with their last `history_len` interactions strictly before `at`; with
    /// `at = None`, all of them, timed as if the slate came one second after the last.
    /// `None` when the user id is unknown.
    pub fn user(&self, id: &str, at: Option<i64>) -> Option<SlateUser> {
        let user_idx = self.catalog.user_idx(id)?;
        let positions = &self.index.by_user[user_idx as usize];
        let earlier = match at {
            Some(at) => history_before(&self.catalog, positions, at),
            None => positions.as_slice(),
        };
        let now = at.unwrap_or_else(|| {
            earlier
                .last()
                .map_or(0, |&p| self.catalog.interactions[p as usize].timestamp + 1)
        });
        let shown = &earlier[earlier.len().saturating_sub(self.history_len)..];
        let user = self.catalog.user(user_idx);
        let earlier_items: Vec<String> = earlier
            .iter()
            .map(|&p| {
                let item = self.catalog.interactions[p as usize].item;
                self.catalog.item(item).id.clone()
            })
            .collect();
        Some(SlateUser {
            earlier_items,
            id: user.id.clone(),
            attributes: user.attributes.clone(),
            history: shown
                .iter()
                .map(|&p| {
                    let h = &self.catalog.interactions[p as usize];
                    let item = self.catalog.item(h.item);
                    SlateHistoryEntry {
                        item: SlateItem {
                            id: item.id.clone(),
                            title: item.title.clone(),
                            details: self.item_details[h.item as usize].clone(),
                            stats: None,
                        },
                        seconds_ago: Some(now - h.timestamp),
                        rating: h.rating,
                        review: h.review.as_deref().map(str::to_owned),
                    }
                })
                .collect(),
        })
    }

    /// The whole-number rating levels of the catalog (empty when it holds no ratings).
    pub fn rating_levels(&self) -> &[String] {
        &self.rating_levels
    }

    /// The prompt asking `user` to rate `item`, which they have just chosen: the scene template
    /// with the item as the only option, then the rating templates. Fails when the catalog has
    /// fewer than two whole-number rating levels.
    pub fn render_rating(
        &self,
        user: &SlateUser,
        item: &SlateItem,
    ) -> Result<RatingPrompt, DataError> {
        if self.rating_levels.len() < 2 {
            return Err(DataError::Config(format!(
                "the catalog `{}` has no rating scale of two or more whole-number levels",
                self.catalog.name
            )));
        }
        let labels = labels(1);
        let scene_text = self.scene_text(user, &[item], &labels)?;
        let dataset = self.catalog.name.as_str();
        let view = RatingView {
            dataset,
            levels: &self.rating_levels,
            scene: &scene_text,
        };
        Ok(RatingPrompt {
            levels: self.rating_levels.clone(),
            messages: vec![
                ChatMessage::new("system", self.prompts.render(5, &view)?),
                ChatMessage::new("user", self.prompts.render(6, &view)?),
            ],
        })
    }

    /// Renders both prompts for `user` facing `items` (plus "none of these" last when
    /// `none_option`). Fails on an empty slate, more than 26 options in all, or a repeated id.
    pub fn render(
        &self,
        user: &SlateUser,
        items: &[SlateItem],
        none_option: bool,
    ) -> Result<SlatePrompt, DataError> {
        let none = none_option.then(SlateItem::none_of_these);
        let options: Vec<&SlateItem> = items.iter().chain(none.as_ref()).collect();
        let k = options.len();
        if items.is_empty() {
            return Err(DataError::Config(
                "a slate needs at least one item".to_owned(),
            ));
        }
        if k > MAX_OPTIONS {
            return Err(DataError::Config(format!(
                "a slate holds at most {MAX_OPTIONS} options{}, got {k}",
                if none_option {
                    " including \"none of these\""
                } else {
                    ""
                }
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for option in &options {
            if !seen.insert(option.id.as_str()) {
                return Err(DataError::Config(format!(
                    "item `{}` appears twice in the slate",
                    option.id
                )));
            }
        }
        let labels = labels(k);
        let dataset = self.catalog.name.as_str();
        let system = SystemView {
            dataset,
            k,
            labels: &labels,
        };
        let rationale_system = self.prompts.render(1, &system)?;
        let direct_system = self.prompts.render(3, &system)?;
        let scene_text = self.scene_text(user, &options, &labels)?;
        let user_view = UserPromptView {
            dataset,
            k,
            labels: &labels,
            scene: &scene_text,
        };
        let rationale_user = self.prompts.render(2, &user_view)?;
        let direct_user = self.prompts.render(4, &user_view)?;
        Ok(SlatePrompt {
            item_ids: options.iter().map(|o| o.id.clone()).collect(),
            labels,
            messages: vec![
                ChatMessage::new("system", rationale_system),
                ChatMessage::new("user", rationale_user),
            ],
            direct_messages: vec![
                ChatMessage::new("system", direct_system),
                ChatMessage::new("user", direct_user),
            ],
        })
    }
}

impl SlateCatalog {
    /// `scene.j2` for `user` facing `options` under `labels`.
    fn scene_text(
        &self,
        user: &SlateUser,
        options: &[&SlateItem],
        labels: &[String],
    ) -> Result<String, DataError> {
        let from_catalog = self.catalog.user_idx(&user.id).is_some();
        let view = SceneView {
            dataset: self.catalog.name.as_str(),
            k: options.len(),
            labels,
            user: UserView {
                id: &user.id,
                attributes: user
                    .attributes
                    .iter()
                    .map(|(name, value)| Attribute { name, value })
                    .collect(),
            },
            history: user
                .history
                .iter()
                .map(|h| HistoryView {
                    item_id: &h.item.id,
                    when: h
                        .seconds_ago
                        .map_or_else(|| "earlier".to_owned(), relative_time),
                    title: &h.item.title,
                    details: &h.item.details,
                    rating: h.rating.map(|r| {
                        format_rating(
                            r,
                            if from_catalog {
                                self.rating_scale
                            } else {
                                None
                            },
                        )
                    }),
                    review: h.review.as_deref().map(shorten_review),
                })
                .collect(),
            options: options
                .iter()
                .zip(labels)
                .zip(self.option_stats(options))
                .map(|((o, label), stats)| OptionView {
                    item_id: &o.id,
                    label,
                    title: &o.title,
                    details: &o.details,
                    stats,
                })
                .collect(),
        };
        self.prompts.render(0, &view)
    }
}

#[derive(Serialize)]
struct RatingView<'a> {
    dataset: &'a str,
    levels: &'a [String],
    scene: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogBuilder, Interaction};
    use crate::scenes::negatives::Scene;
    use crate::scenes::render::{annotate_options, SceneRenderer};
    use crate::scenes::{SceneConfig, Split};

    fn catalog() -> Catalog {
        let mut b = CatalogBuilder::new("tiny");
        let mut attrs = BTreeMap::new();
        attrs.insert("age".to_owned(), "25-34".to_owned());
        b.add_user("u1", attrs);
        for (id, title) in [
            ("i1", "Alpha"),
            ("i2", "Beta"),
            ("i3", "Gamma"),
            ("i4", "Delta"),
        ] {
            let mut a = BTreeMap::new();
            a.insert("genres".to_owned(), "Drama".to_owned());
            b.add_item(id, Some(title.to_owned()), a, None);
        }
        for (item, t, r) in [("i1", 100, 4.0), ("i2", 200, 5.0), ("i3", 86_600, 3.0)] {
            let user = b.user("u1");
            let item = b.item(item);
            b.push_interaction(Interaction {
                user,
                item,
                timestamp: t,
                rating: Some(r),
                review: None,
                impressions: None,
            });
        }
        b.finish()
    }

    #[test]
    fn a_catalog_slate_renders_exactly_like_the_scene_of_the_same_decision() {
        let catalog = catalog();
        let config = SceneConfig {
            history_len: 2,
            eval_options: 3,
            ..SceneConfig::default()
        };
        let prompts = PromptSet::embedded().unwrap();
        let index = UserIndex::build(&catalog);
        let renderer = SceneRenderer::new(&catalog, &prompts, &config).unwrap();
        // The decision is the third interaction (i3 at t=86_600); options i4, i3, i1.
        let idx = |id: &str| catalog.item_idx(id).unwrap();
        let scene = Scene {
            position: 2,
            split: Split::Eval,
            options: vec![idx("i4"), idx("i3"), idx("i1")],
            sources: vec![None; 3],
            answer: 1,
            requested: Vec::new(),
        };
        let record = renderer.render(&scene, &index).unwrap();

        let slates = SlateCatalog::new(catalog.clone(), prompts, 2).unwrap();
        let user = slates.user("u1", Some(86_600)).unwrap();
        assert_eq!(user.history.len(), 2);
        assert_eq!(user.history[0].seconds_ago, Some(86_500));
        assert_eq!(user.earlier_items, vec!["i1", "i2"]);
        // The slate of the scene's options, in the scene's order.
        let slate_of = |slates: &SlateCatalog| {
            let items: Vec<SlateItem> = ["i4", "i3", "i1"]
                .iter()
                .map(|id| slates.item(id).unwrap())
                .collect();
            slates.render(&user, &items, false).unwrap()
        };
        let prompt = slate_of(&slates);
        assert_eq!(prompt.messages, record.messages);
        assert_eq!(prompt.direct_messages, record.direct_messages);
        assert_eq!(prompt.labels, record.labels);
        assert_eq!(prompt.item_ids, record.options);

        // With the options' rating counts: the slate, counted up to a cutoff at the decision,
        // shows what the scene shows for that decision (i1 rated once before it; i3 only at
        // the decision itself, which is not counted).
        let stats_config = SceneConfig {
            item_stats: true,
            ..config.clone()
        };
        let prompts = PromptSet::embedded().unwrap();
        let stats_renderer = SceneRenderer::new(&catalog, &prompts, &stats_config).unwrap();
        let stats_record = stats_renderer.render(&scene, &index).unwrap();
        let stats_slates = SlateCatalog::new(catalog.clone(), PromptSet::embedded().unwrap(), 2)
            .unwrap()
            .with_item_stats(Some(86_600));
        let stats_prompt = slate_of(&stats_slates);
        assert_eq!(stats_prompt.direct_messages, stats_record.direct_messages);
        let text = &stats_prompt.direct_messages[1].content;
        assert!(
            text.contains("[C] Alpha (genres: Drama) — 1 rating, average 4.0/5"),
            "{text}"
        );
        assert!(
            text.contains("[B] Gamma (genres: Drama) — no ratings yet"),
            "{text}"
        );

        // With ranks too: the slate still shows what the scene shows, and an item that is not
        // from the catalog keeps its own stats and takes no rank.
        let ranked_config = SceneConfig {
            item_stats_rank: true,
            ..stats_config.clone()
        };
        let ranked_renderer = SceneRenderer::new(&catalog, &prompts, &ranked_config).unwrap();
        let ranked_record = ranked_renderer.render(&scene, &index).unwrap();
        let ranked_slates = SlateCatalog::new(catalog.clone(), PromptSet::embedded().unwrap(), 2)
            .unwrap()
            .with_ranked_item_stats(Some(86_600));
        let ranked_prompt = slate_of(&ranked_slates);
        assert_eq!(ranked_prompt.direct_messages, ranked_record.direct_messages);
        let text = &ranked_prompt.direct_messages[1].content;
        assert!(
            text.contains(
                "[C] Alpha (genres: Drama) — 1 rating, average 4.0/5 (most rated of these)"
            ),
            "{text}"
        );
        assert!(
            text.contains("[B] Gamma (genres: Drama) — no ratings yet (2nd most rated of these)"),
            "{text}"
        );
        let mut items: Vec<SlateItem> = ["i4", "i1"]
            .iter()
            .map(|id| ranked_slates.item(id).unwrap())
            .collect();
        items.push(SlateItem {
            id: "outside".to_owned(),
            title: "Outside".to_owned(),
            details: String::new(),
            stats: Some("99 ratings, average 5.0/5".to_owned()),
        });
        let text = &ranked_slates
            .render(&user, &items, false)
            .unwrap()
            .direct_messages[1]
            .content;
        assert!(
            text.contains(
                "[B] Alpha (genres: Drama) — 1 rating, average 4.0/5 (most rated of these)"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "[C] Outside — 99 ratings, average 5.0/5"),
            "{text}"
        );

        let noted = annotate_options(&record, &[None, Some("a hint".to_owned()), None]).unwrap();
        for (before, after) in [
            (&record.messages[1].content, &noted.messages[1].content),
            (
                &record.direct_messages[1].content,
                &noted.direct_messages[1].content,
            ),
        ] {
            let changed: Vec<(&str, &str)> = before
                .lines()
                .zip(after.lines())
                .filter(|(b, a)| b != a)
                .collect();
            assert_eq!(
                changed,
                vec![(
                    "[B] Gamma (genres: Drama)",
                    "[B] Gamma (genres: Drama) — a hint"
                )]
            );
        }
        assert_eq!(noted.messages[0], record.messages[0]);
        assert!(annotate_options(&record, &[None]).is_err());
    }

    #[test]
    fn none_option_unknown_ids_and_limits() {
        let slates = SlateCatalog::new(catalog(), PromptSet::embedded().unwrap(), 5).unwrap();
        assert!(slates.user("nobody", None).is_none());
        assert!(slates.item("i99").is_none());
        let user = slates.user("u1", None).unwrap();
        assert_eq!(user.history.len(), 3);
        assert_eq!(user.history[2].seconds_ago, Some(1));
        let items = vec![slates.item("i4").unwrap(), slates.item("i1").unwrap()];
        let prompt = slates.render(&user, &items, true).unwrap();
        assert_eq!(prompt.item_ids, vec!["i4", "i1", NONE_OF_THESE_ID]);
        assert_eq!(prompt.labels, vec!["A", "B", "C"]);
        assert!(prompt.direct_messages[1]
            .content
            .contains("[C] None of these"));
        assert!(prompt.direct_messages[1]
            .content
            .contains("you rated it 5/5"));

        assert!(slates.render(&user, &[], true).is_err());
        let twice = vec![items[0].clone(), items[0].clone()];
        let err = slates.render(&user, &twice, false).unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
        let many: Vec<SlateItem> = (0..26)
            .map(|i| SlateItem {
                id: format!("x{i}"),
                title: format!("X {i}"),
                details: String::new(),
                stats: None,
            })
            .collect();
        assert!(slates.render(&user, &many, false).is_ok());
        let err = slates.render(&user, &many, true).unwrap_err();
        assert!(err.to_string().contains("at most 26"), "{err}");
    }

    #[test]
    fn the_rating_prompt_shows_history_the_item_and_the_levels() {
        let slates = SlateCatalog::new(catalog(), PromptSet::embedded().unwrap(), 5).unwrap();
        assert_eq!(slates.rating_levels(), ["3", "4", "5"]);
        let user = slates.user("u1", Some(86_600)).unwrap();
        let prompt = slates
            .render_rating(&user, &slates.item("i3").unwrap())
            .unwrap();
        assert_eq!(prompt.levels, ["3", "4", "5"]);
        let (system, text) = (&prompt.messages[0].content, &prompt.messages[1].content);
        assert!(
            system.contains("Rating: [N]") && system.contains("3, 4, 5"),
            "{system}"
        );
        assert!(text.contains("you rated it 5/5"), "{text}");
        assert!(text.contains("[A] Gamma (genres: Drama)"), "{text}");
        assert!(
            text.ends_with("Answer only with \"Rating: [N]\"."),
            "{text}"
        );

        let mut unrated = catalog();
        for i in &mut unrated.interactions {
            i.rating = None;
        }
        let slates = SlateCatalog::new(unrated, PromptSet::embedded().unwrap(), 5).unwrap();
        let user = slates.user("u1", None).unwrap();
        let err = slates
            .render_rating(&user, &slates.item("i3").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("no rating scale"), "{err}");
    }

    #[test]
    fn an_inline_user_shows_ratings_as_given_and_unknown_times_as_earlier() {
        let slates = SlateCatalog::new(catalog(), PromptSet::embedded().unwrap(), 5).unwrap();
        let user = SlateUser {
            id: "visitor".to_owned(),
            attributes: BTreeMap::new(),
            earlier_items: Vec::new(),
            history: vec![SlateHistoryEntry {
                item: SlateItem {
                    id: "ext-1".to_owned(),
                    title: "Some Film".to_owned(),
                    details: String::new(),
                    stats: None,
                },
                seconds_ago: None,
                rating: Some(9.0),
                review: None,
            }],
        };
        let items = vec![slates.item("i2").unwrap(), slates.item("i3").unwrap()];
        let prompt = slates.render(&user, &items, false).unwrap();
        let text = &prompt.direct_messages[1].content;
        assert!(
            text.contains("- earlier: Some Film — you rated it 9"),
            "{text}"
        );
        assert!(text.contains("nothing is known about you"), "{text}");
    }
}
