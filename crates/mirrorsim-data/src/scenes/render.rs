//! Prompt rendering: the rationale prompt and the direct (behaviour-only) prompt of each scene,
//! from minijinja templates.
//!
//! The templates live in `prompts/` at the repository root and are embedded in the binary; a
//! folder given as `prompts_dir` replaces any of them by a file of the same name. `scene.j2`
//! renders the scene itself (profile, history, options) once; the `*_user.j2` templates receive
//! it as `scene`, and the `*_system.j2` templates depend only on the option letters, so they
//! are rendered once per number of options. The answer is never part of any template context.

use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Item, ItemIdx};
use crate::error::DataError;
use crate::scenes::negatives::{Scene, UserIndex};
use crate::scenes::split::{history_before, TimeSplit};
use crate::scenes::{HistoryEntry, SceneConfig, SceneRecord, MAX_OPTIONS, POSITIVE_SOURCE};

/// The template files, by name; each may be overridden in a prompts folder.
pub const TEMPLATE_NAMES: [&str; 7] = [
    "scene.j2",
    "rationale_system.j2",
    "rationale_user.j2",
    "direct_system.j2",
    "direct_user.j2",
    "rating_system.j2",
    "rating_user.j2",
];

const EMBEDDED: [&str; 7] = [
    include_str!("../../../../prompts/scene.j2"),
    include_str!("../../../../prompts/rationale_system.j2"),
    include_str!("../../../../prompts/rationale_user.j2"),
    include_str!("../../../../prompts/direct_system.j2"),
    include_str!("../../../../prompts/direct_user.j2"),
    include_str!("../../../../prompts/rating_system.j2"),
    include_str!("../../../../prompts/rating_user.j2"),
];

/// Reviews longer than this many characters are cut (with "…") in prompts.
const MAX_REVIEW_CHARS: usize = 400;

/// One chat message in the OpenAI layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: String) -> Self {
        ChatMessage {
            role: role.to_owned(),
            content,
        }
    }
}

/// The compiled prompt templates.
#[derive(Debug)]
pub struct PromptSet {
    env: Environment<'static>,
    /// Where each template came from (a file path, or "embedded"), for error messages.
    origins: Vec<String>,
}

impl PromptSet {
    /// The templates compiled into the binary.
    pub fn embedded() -> Result<Self, DataError> {
        Self::load(None)
    }

    /// The embedded templates, each replaced by `dir/<name>` where that file exists.
    pub fn load(dir: Option<&Path>) -> Result<Self, DataError> {
        if let Some(dir) = dir {
            if !dir.is_dir() {
                return Err(DataError::Invalid {
                    path: dir.to_owned(),
                    message: format!(
                        "is not a prompts folder; it should hold any of {}",
                        TEMPLATE_NAMES.join(", ")
                    ),
                });
            }
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let mut origins = Vec::with_capacity(TEMPLATE_NAMES.len());
        for (name, embedded) in TEMPLATE_NAMES.iter().zip(EMBEDDED) {
            let file = dir.map(|d| d.join(name)).filter(|p| p.is_file());
            let (source, origin) = match &file {
                Some(path) => (
                    std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?,
                    path.display().to_string(),
                ),
                None => (embedded.to_owned(), format!("prompts/{name} (embedded)")),
            };
            env.add_template_owned(name.to_string(), source)
                .map_err(|e| template_error(&origin, &e))?;
            origins.push(origin);
        }
        Ok(PromptSet { env, origins })
    }

    pub(crate) fn render<S: Serialize>(
        &self,
        which: usize,
        context: S,
    ) -> Result<String, DataError> {
        let name = TEMPLATE_NAMES[which];
        self.env
            .get_template(name)
            .and_then(|t| t.render(context))
            .map(|s| s.trim().to_owned())
            .map_err(|e| template_error(&self.origins[which], &e))
    }
}

fn template_error(origin: &str, err: &minijinja::Error) -> DataError {
    let mut message = format!("template error: {err}");
    if let Some(line) = err.line() {
        message.push_str(&format!(" (line {line})"));
    }
    DataError::Invalid {
        path: origin.into(),
        message,
    }
}

#[derive(Serialize)]
pub(crate) struct Attribute<'a> {
    pub(crate) name: &'a str,
    pub(crate) value: &'a str,
}

#[derive(Serialize)]
pub(crate) struct UserView<'a> {
    pub(crate) id: &'a str,
    pub(crate) attributes: Vec<Attribute<'a>>,
}

#[derive(Serialize)]
pub(crate) struct HistoryView<'a> {
    pub(crate) item_id: &'a str,
    pub(crate) when: String,
    pub(crate) title: &'a str,
    pub(crate) details: &'a str,
    pub(crate) rating: Option<String>,
    pub(crate) review: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct OptionView<'a> {
    pub(crate) item_id: &'a str,
    pub(crate) label: &'a str,
    pub(crate) title: &'a str,
    pub(crate) details: &'a str,
    /// With `item_stats`: how often the item was chosen before the decision and its mean
    /// rating ("1,234 ratings, average 4.1/5").
    pub(crate) stats: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct SceneView<'a> {
    pub(crate) dataset: &'a str,
    pub(crate) k: usize,
    pub(crate) labels: &'a [String],
    pub(crate) user: UserView<'a>,
    pub(crate) history: Vec<HistoryView<'a>>,
    pub(crate) options: Vec<OptionView<'a>>,
}

#[derive(Serialize)]
pub(crate) struct UserPromptView<'a> {
    pub(crate) dataset: &'a str,
    pub(crate) k: usize,
    pub(crate) labels: &'a [String],
    pub(crate) scene: &'a str,
}

#[derive(Serialize)]
pub(crate) struct SystemView<'a> {
    pub(crate) dataset: &'a str,
    pub(crate) k: usize,
    pub(crate) labels: &'a [String],
}

/// Renders sampled scenes into records; holds what is the same for many scenes.
pub struct SceneRenderer<'a> {
    catalog: &'a Catalog,
    prompts: &'a PromptSet,
    history_len: usize,
    /// "genres: Comedy; year: 1995" per item.
    item_details: Vec<String>,
    /// The highest rating in the data, shown as the scale ("4/5").
    rating_scale: Option<f32>,
    /// With `item_stats`: each item's earlier interactions, to describe options with.
    item_stats: Option<ItemStats>,
    /// With `item_stats_rank`: each option's rank by count among the scene's options.
    item_stats_rank: bool,
    /// Per number of options: the labels and the two system prompts.
    per_k: Vec<Option<(Vec<String>, String, String)>>,
}

impl<'a> SceneRenderer<'a> {
    pub fn new(
        catalog: &'a Catalog,
        prompts: &'a PromptSet,
        config: &SceneConfig,
    ) -> Result<Self, DataError> {
        let item_details = catalog.items.iter().map(item_details).collect();
        let rating_scale = rating_scale(catalog);
        let mut per_k = vec![None; MAX_OPTIONS + 1];
        let ks = (config.train_options.min..=config.train_options.max)
            .chain(std::iter::once(config.eval_options));
        for k in ks {
            if per_k[k].is_some() {
                continue;
            }
            let labels = labels(k);
            let view = SystemView {
                dataset: &catalog.name,
                k,
                labels: &labels,
            };
            let rationale = prompts.render(1, &view)?;
            let direct = prompts.render(3, &view)?;
            per_k[k] = Some((labels, rationale, direct));
        }
        let item_stats = config.item_stats.then(|| {
            let cutoff_position = TimeSplit::compute(catalog, config.eval_fraction).cutoff_position;
            ItemStats::build(catalog, cutoff_position)
        });
        Ok(SceneRenderer {
            catalog,
            prompts,
            history_len: config.history_len,
            item_details,
            rating_scale,
            item_stats,
            item_stats_rank: config.item_stats_rank,
            per_k,
        })
    }

    /// Per option, its counts before `timestamp` as the prompt shows them (with its rank among
    /// `options` when configured); all `None` without `item_stats`.
    fn option_stats(&self, options: &[ItemIdx], timestamp: i64) -> Vec<Option<String>> {
        let Some(stats) = &self.item_stats else {
            return vec![None; options.len()];
        };
        let records: Vec<ItemRecord> = options
            .iter()
            .map(|&i| stats.before(self.catalog, i, timestamp))
            .collect();
        let counts: Vec<u32> = records
            .iter()
            .map(|r| r.shown_count(self.rating_scale))
            .collect();
        records
            .iter()
            .zip(&counts)
            .map(|(record, &count)| {
                let text = record.describe(self.rating_scale);
                Some(if self.item_stats_rank {
                    with_rank(&text, count, &counts, self.rating_scale.is_some())
                } else {
                    text
                })
            })
            .collect()
    }

    /// The full record of a sampled scene.
    pub fn render(&self, scene: &Scene, index: &UserIndex) -> Result<SceneRecord, DataError> {
        let catalog = self.catalog;
        let decision = &catalog.interactions[scene.position as usize];
        let user = catalog.user(decision.user);
        let k = scene.options.len();
        let Some((labels, rationale_system, direct_system)) =
            self.per_k.get(k).and_then(|x| x.as_ref())
        else {
            return Err(DataError::Config(format!(
                "a scene has {k} options, outside the configured option counts"
            )));
        };
        let earlier = history_before(
            catalog,
            &index.by_user[decision.user as usize],
            decision.timestamp,
        );
        let shown = &earlier[earlier.len().saturating_sub(self.history_len)..];

        let history_views = shown
            .iter()
            .map(|&p| {
                let h = &catalog.interactions[p as usize];
                let item = catalog.item(h.item);
                HistoryView {
                    item_id: &item.id,
                    when: relative_time(decision.timestamp - h.timestamp),
                    title: &item.title,
                    details: &self.item_details[h.item as usize],
                    rating: h.rating.map(|r| self.format_rating(r)),
                    review: h.review.as_deref().map(shorten_review),
                }
            })
            .collect();
        let option_stats = self.option_stats(&scene.options, decision.timestamp);
        let option_views = scene
            .options
            .iter()
            .zip(labels)
            .zip(option_stats)
            .map(|((&i, label), stats)| {
                let item = catalog.item(i);
                OptionView {
                    item_id: &item.id,
                    label,
                    title: &item.title,
                    details: &self.item_details[i as usize],
                    stats,
                }
            })
            .collect();
        let view = SceneView {
            dataset: &catalog.name,
            k,
            labels,
            user: UserView {
                id: &user.id,
                attributes: user
                    .attributes
                    .iter()
                    .map(|(name, value)| Attribute { name, value })
                    .collect(),
            },
            history: history_views,
            options: option_views,
        };
        let scene_text = self.prompts.render(0, &view)?;
        let user_view = UserPromptView {
            dataset: &catalog.name,
            k,
            labels,
            scene: &scene_text,
        };
        let rationale_user = self.prompts.render(2, &user_view)?;
        let direct_user = self.prompts.render(4, &user_view)?;

        Ok(SceneRecord {
            id: format!("{}-{}-{}", catalog.name, scene.split.name(), scene.position),
            dataset: catalog.name.clone(),
            split: scene.split,
            user_id: user.id.clone(),
            item_id: catalog.item(decision.item).id.clone(),
            timestamp: decision.timestamp,
            options: scene
                .options
                .iter()
                .map(|&i| catalog.item(i).id.clone())
                .collect(),
            answer: scene.answer,
            labels: labels.clone(),
            exposure_sources: scene
                .sources
                .iter()
                .map(|s| s.map_or(POSITIVE_SOURCE, |s| s.name()).to_owned())
                .collect(),
            history: shown
                .iter()
                .map(|&p| {
                    let h = &catalog.interactions[p as usize];
                    HistoryEntry {
                        item_id: catalog.item(h.item).id.clone(),
                        timestamp: h.timestamp,
                        rating: h.rating,
                    }
                })
                .collect(),
            messages: vec![
                ChatMessage::new("system", rationale_system.clone()),
                ChatMessage::new("user", rationale_user),
            ],
            direct_messages: vec![
                ChatMessage::new("system", direct_system.clone()),
                ChatMessage::new("user", direct_user),
            ],
        })
    }

    fn format_rating(&self, rating: f32) -> String {
        format_rating(rating, self.rating_scale)
    }
}

/// Per item, its interactions before the cutoff in time order, with running rating totals, so
/// that an option can be described as of any decision time without looking past the cutoff.
pub(crate) struct ItemStats {
    /// Per item: (position in `catalog.interactions`, interactions so far, ratings so far,
    /// sum of those ratings), ascending by position.
    running: Vec<Vec<(u32, u32, u32, f64)>>,
    cutoff_position: usize,
}

/// An item's record before one decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ItemRecord {
    chosen: u32,
    rated: u32,
    rating_sum: f64,
}

impl ItemStats {
    pub(crate) fn build(catalog: &Catalog, cutoff_position: usize) -> Self {
        let mut running: Vec<Vec<(u32, u32, u32, f64)>> = vec![Vec::new(); catalog.items.len()];
        for (position, interaction) in catalog.interactions[..cutoff_position].iter().enumerate() {
            let entries = &mut running[interaction.item as usize];
            let (_, chosen, rated, sum) = entries.last().copied().unwrap_or((0, 0, 0, 0.0));
            let (rated, sum) = match interaction.rating {
                Some(r) => (rated + 1, sum + f64::from(r)),
                None => (rated, sum),
            };
            entries.push((position as u32, chosen + 1, rated, sum));
        }
        ItemStats {
            running,
            cutoff_position,
        }
    }

    /// The item's interactions strictly before `timestamp` and before the cutoff: an eval
    /// scene never sees the eval period, a train scene never sees its own decision or later.
    pub(crate) fn before(&self, catalog: &Catalog, item: ItemIdx, timestamp: i64) -> ItemRecord {
        let limit = catalog
            .interactions
            .partition_point(|i| i.timestamp < timestamp)
            .min(self.cutoff_position);
        let entries = &self.running[item as usize];
        Self::record(entries[..entries.partition_point(|e| (e.0 as usize) < limit)].last())
    }
}

impl ItemStats {
    /// The item's interactions before the cutoff, all of them.
    pub(crate) fn at_cutoff(&self, item: ItemIdx) -> ItemRecord {
        Self::record(self.running[item as usize].last())
    }

    fn record(entry: Option<&(u32, u32, u32, f64)>) -> ItemRecord {
        match entry {
            Some(&(_, chosen, rated, rating_sum)) => ItemRecord {
                chosen,
                rated,
                rating_sum,
            },
            None => ItemRecord {
                chosen: 0,
                rated: 0,
                rating_sum: 0.0,
            },
        }
    }
}

impl ItemRecord {
    /// The count [`Self::describe`] shows: ratings where the data has them, choices elsewhere.
    pub(crate) fn shown_count(&self, scale: Option<f32>) -> u32 {
        if scale.is_some() {
            self.rated
        } else {
            self.chosen
        }
    }

    /// Where the data has ratings (`scale` known): "1,234 ratings, average 4.1/5" or "no
    /// ratings yet"; elsewhere "chosen 12 times" or "not chosen yet".
    pub(crate) fn describe(&self, scale: Option<f32>) -> String {
        let Some(scale) = scale else {
            return match self.chosen {
                0 => "not chosen yet".to_owned(),
                1 => "chosen once".to_owned(),
                n => format!("chosen {} times", thousands(n)),
            };
        };
        if self.rated == 0 {
            return "no ratings yet".to_owned();
        }
        let ratings = if self.rated == 1 { "rating" } else { "ratings" };
        let mean = self.rating_sum / f64::from(self.rated);
        format!(
            "{} {ratings}, average {mean:.1}/{}",
            thousands(self.rated),
            format_rating(scale, None)
        )
    }
}

/// An option's stats followed by its rank by `count` among the options' `counts`, equal
/// counts sharing a rank: "… average 4.1/5 (2nd most rated of these)".
pub(crate) fn with_rank(stats: &str, count: u32, counts: &[u32], rated: bool) -> String {
    let rank = 1 + counts.iter().filter(|&&other| other > count).count();
    format!("{stats} ({})", rank_phrase(rank, rated))
}

/// "most rated of these", "2nd most rated of these", ...; "chosen" where the data has no
/// ratings, as [`ItemRecord::describe`] counts choices there.
fn rank_phrase(rank: usize, rated: bool) -> String {
    let verb = if rated { "rated" } else { "chosen" };
    if rank == 1 {
        return format!("most {verb} of these");
    }
    let suffix = match (rank % 10, rank % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{rank}{suffix} most {verb} of these")
}

/// 1234567 → "1,234,567".
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "4/5" when the scale is known, else "4".
pub(crate) fn format_rating(rating: f32, scale: Option<f32>) -> String {
    let number = |x: f32| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x}")
        }
    };
    match scale {
        Some(scale) => format!("{}/{}", number(rating), number(scale)),
        None => number(rating),
    }
}

/// The highest rating in the data, shown as the scale of every rating.
pub(crate) fn rating_scale(catalog: &Catalog) -> Option<f32> {
    catalog
        .interactions
        .iter()
        .filter_map(|i| i.rating)
        .fold(None, |max: Option<f32>, r| {
            Some(max.map_or(r, |m| m.max(r)))
        })
}

/// The scene with its options shown in a new order: slot `j` shows the option that was in slot
/// `order[j]`. Options, answer slot and exposure sources are permuted, and both prompts are
/// re-rendered by moving the option lines of `scene.j2` (`[L] title (details)`, one per option,
/// each starting a line) to their new slots under the unchanged labels. Fails when `order` is
/// not a permutation of the slots or a prompt does not hold exactly one line per label.
pub fn reorder_options(record: &SceneRecord, order: &[usize]) -> Result<SceneRecord, DataError> {
    let k = record.options.len();
    let mut seen = vec![false; k];
    if order.len() != k
        || record.exposure_sources.len() != k
        || record.labels.len() != k
        || order
            .iter()
            .any(|&slot| slot >= k || std::mem::replace(&mut seen[slot], true))
    {
        return Err(DataError::Config(format!(
            "scene {}: {order:?} is not an order of its {k} options (with one label and one \
             exposure source each)",
            record.id
        )));
    }
    let reorder_text = |text: &str| -> Result<String, DataError> {
        let (mut lines, line_of_slot) = option_lines(&record.id, &record.labels, text)?;
        let bodies: Vec<String> = line_of_slot
            .iter()
            .zip(&record.labels)
            .map(|(&i, label)| lines[i][label.len() + 3..].to_owned())
            .collect();
        for (slot, &line) in line_of_slot.iter().enumerate() {
            lines[line] = format!("[{}] {}", record.labels[slot], bodies[order[slot]]);
        }
        Ok(lines.join("\n"))
    };
    let reorder_messages = |messages: &[ChatMessage]| -> Result<Vec<ChatMessage>, DataError> {
        messages
            .iter()
            .map(|m| {
                Ok(ChatMessage {
                    role: m.role.clone(),
                    content: if m.role == "user" {
                        reorder_text(&m.content)?
                    } else {
                        m.content.clone()
                    },
                })
            })
            .collect()
    };
    let answer = order
        .iter()
        .position(|&slot| slot == record.answer)
        .ok_or_else(|| {
            DataError::Config(format!(
                "scene {}: answer slot {} is outside its {k} options",
                record.id, record.answer
            ))
        })?;
    Ok(SceneRecord {
        options: order.iter().map(|&s| record.options[s].clone()).collect(),
        exposure_sources: order
            .iter()
            .map(|&s| record.exposure_sources[s].clone())
            .collect(),
        answer,
        messages: reorder_messages(&record.messages)?,
        direct_messages: reorder_messages(&record.direct_messages)?,
        ..record.clone()
    })
}

/// The lines of `text` and, per option slot, the index of its line (`[L] …`, exactly one each).
fn option_lines(
    id: &str,
    labels: &[String],
    text: &str,
) -> Result<(Vec<String>, Vec<usize>), DataError> {
    let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let mut line_of_slot = Vec::with_capacity(labels.len());
    for label in labels {
        let prefix = format!("[{label}] ");
        let found: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].starts_with(&prefix))
            .collect();
        if found.len() != 1 {
            return Err(DataError::Config(format!(
                "scene {id}: the prompt has {} lines starting `{prefix}`, expected exactly one",
                found.len()
            )));
        }
        line_of_slot.push(found[0]);
    }
    Ok((lines, line_of_slot))
}

/// `messages` with a note appended to some option lines of the user turns
/// (`[B] Title (…) — note`); `notes` has one entry per label. `id` names the prompt in errors.
pub(crate) fn annotate_messages(
    id: &str,
    labels: &[String],
    messages: &[ChatMessage],
    notes: &[Option<String>],
) -> Result<Vec<ChatMessage>, DataError> {
    if notes.len() != labels.len() {
        return Err(DataError::Config(format!(
            "scene {id}: {} notes for {} options",
            notes.len(),
            labels.len()
        )));
    }
    messages
        .iter()
        .map(|m| {
            if m.role != "user" {
                return Ok(m.clone());
            }
            let (mut lines, line_of_slot) = option_lines(id, labels, &m.content)?;
            for (&line, note) in line_of_slot.iter().zip(notes) {
                if let Some(note) = note {
                    lines[line].push_str(" — ");
                    lines[line].push_str(note);
                }
            }
            Ok(ChatMessage {
                role: m.role.clone(),
                content: lines.join("\n"),
            })
        })
        .collect()
}

/// The scene with a note appended to some option lines of both prompts (`[B] Title (…) — note`),
/// e.g. a collaborative model's hint; `notes` has one entry per option.
pub fn annotate_options(
    record: &SceneRecord,
    notes: &[Option<String>],
) -> Result<SceneRecord, DataError> {
    if notes.len() != record.options.len() {
        return Err(DataError::Config(format!(
            "scene {}: {} notes for {} options",
            record.id,
            notes.len(),
            record.options.len()
        )));
    }
    let annotate =
        |messages: &[ChatMessage]| annotate_messages(&record.id, &record.labels, messages, notes);
    Ok(SceneRecord {
        messages: annotate(&record.messages)?,
        direct_messages: annotate(&record.direct_messages)?,
        ..record.clone()
    })
}

/// `A`, `B`, … for `k` options.
pub fn labels(k: usize) -> Vec<String> {
    (b'A'..=b'Z')
        .take(k)
        .map(|c| char::from(c).to_string())
        .collect()
}

/// "genres: Comedy, Drama; year: 1995".
pub(crate) fn item_details(item: &Item) -> String {
    item.attributes
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn shorten_review(review: &str) -> String {
    let review = review.trim();
    match review.char_indices().nth(MAX_REVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", review[..cut].trim_end()),
        None => review.to_owned(),
    }
}

/// How long before the decision, in words: "5 minutes before", "3 days before".
pub fn relative_time(seconds: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    let (n, unit) = if seconds < MINUTE {
        (seconds.max(1), "second")
    } else if seconds < HOUR {
        (seconds / MINUTE, "minute")
    } else if seconds < DAY {
        (seconds / HOUR, "hour")
    } else if seconds < 60 * DAY {
        (seconds / DAY, "day")
    } else if seconds < 730 * DAY {
        (seconds / (30 * DAY), "month")
    } else {
        (seconds / (365 * DAY), "year")
    };
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{plural} before")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogBuilder, Interaction};
    use crate::scenes::Split;

    /// Three users, three items; with eval_fraction 0.375 the last three interactions (from
    /// t = 60) are the eval share, so the cutoff position is 5.
    fn stats_catalog() -> Catalog {
        let mut b = CatalogBuilder::new("tiny");
        for user in ["u1", "u2", "u3"] {
            b.add_user(user, Default::default());
        }
        for item in ["i1", "i2", "i3"] {
            b.add_item(item, Some(item.to_uppercase()), Default::default(), None);
        }
        for (user, item, timestamp, rating) in [
            ("u1", "i1", 10, 4.0),
            ("u2", "i1", 20, 5.0),
            ("u3", "i2", 30, 3.0),
            ("u1", "i2", 40, 2.0),
            ("u2", "i3", 50, 4.0),
            ("u3", "i1", 60, 1.0),
            ("u1", "i3", 60, 3.0),
            ("u2", "i2", 70, 5.0),
        ] {
            let (user, item) = (b.user(user), b.item(item));
            b.push_interaction(Interaction {
                user,
                item,
                timestamp,
                rating: Some(rating),
                review: None,
                impressions: None,
            });
        }
        b.finish()
    }

    #[test]
    fn item_stats_count_strictly_before_the_decision_and_never_past_the_cutoff() {
        let catalog = stats_catalog();
        let cutoff = TimeSplit::compute(&catalog, 0.375);
        assert_eq!((cutoff.cutoff, cutoff.cutoff_position), (Some(60), 5));
        let stats = ItemStats::build(&catalog, cutoff.cutoff_position);
        let idx = |id: &str| catalog.item_idx(id).unwrap();
        let describe =
            |item: &str, t: i64| stats.before(&catalog, idx(item), t).describe(Some(5.0));
        // The interaction at the decision's own timestamp is not counted.
        assert_eq!(describe("i1", 20), "1 rating, average 4.0/5");
        assert_eq!(describe("i1", 21), "2 ratings, average 4.5/5");
        assert_eq!(describe("i3", 50), "no ratings yet");
        // Eval decisions see the counts as of the cutoff: u3's rating of i1 at t = 60 and
        // u1's of i3 are in the eval share.
        assert_eq!(describe("i1", 1_000), "2 ratings, average 4.5/5");
        assert_eq!(describe("i3", 1_000), "1 rating, average 4.0/5");
        assert_eq!(describe("i2", 70), "2 ratings, average 2.5/5");

        let unrated = ItemRecord {
            chosen: 12,
            rated: 0,
            rating_sum: 0.0,
        };
        assert_eq!(unrated.describe(None), "chosen 12 times");
        let new = ItemRecord {
            chosen: 0,
            ..unrated
        };
        assert_eq!(new.describe(None), "not chosen yet");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn item_stats_appear_on_option_lines_only_when_asked_for() {
        let catalog = stats_catalog();
        let prompts = PromptSet::embedded().unwrap();
        let index = UserIndex::build(&catalog);
        let idx = |id: &str| catalog.item_idx(id).unwrap();
        // u2's eval decision for i2 at t = 70 (position 7), beside i1 and i3.
        let scene = Scene {
            position: 7,
            split: Split::Eval,
            options: vec![idx("i1"), idx("i2"), idx("i3")],
            sources: vec![None; 3],
            answer: 1,
            requested: Vec::new(),
        };
        let config = |item_stats| SceneConfig {
            eval_fraction: 0.375,
            eval_options: 3,
            item_stats,
            ..SceneConfig::default()
        };
        let render = |item_stats| {
            let renderer = SceneRenderer::new(&catalog, &prompts, &config(item_stats)).unwrap();
            renderer.render(&scene, &index).unwrap().direct_messages[1]
                .content
                .clone()
        };
        let with = render(true);
        for line in [
            "[A] I1 — 2 ratings, average 4.5/5",
            "[B] I2 — 2 ratings, average 2.5/5",
            "[C] I3 — 1 rating, average 4.0/5",
        ] {
            assert!(
                with.lines().any(|l| l == line),
                "no line `{line}` in\n{with}"
            );
        }
        let without = render(false);
        assert!(without.lines().any(|l| l == "[A] I1"), "{without}");
        assert!(!without.contains("average"));
    }

    #[test]
    fn ranks_read_as_english_ordinals() {
        let phrases: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23]
            .into_iter()
            .map(|rank| rank_phrase(rank, true))
            .collect();
        assert_eq!(
            phrases,
            [
                "most rated of these",
                "2nd most rated of these",
                "3rd most rated of these",
                "4th most rated of these",
                "11th most rated of these",
                "12th most rated of these",
                "13th most rated of these",
                "21st most rated of these",
                "22nd most rated of these",
                "23rd most rated of these",
            ]
        );
        assert_eq!(rank_phrase(2, false), "2nd most chosen of these");
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative_time(1), "1 second before");
        assert_eq!(relative_time(59), "59 seconds before");
        assert_eq!(relative_time(120), "2 minutes before");
        assert_eq!(relative_time(3 * 3600 + 5), "3 hours before");
        assert_eq!(relative_time(86_400), "1 day before");
        assert_eq!(relative_time(3 * 86_400), "3 days before");
        assert_eq!(relative_time(90 * 86_400), "3 months before");
        assert_eq!(relative_time(800 * 86_400), "2 years before");
    }

    #[test]
    fn labels_and_reviews() {
        assert_eq!(labels(3), vec!["A", "B", "C"]);
        assert_eq!(labels(26).last().map(String::as_str), Some("Z"));
        let long = "é".repeat(MAX_REVIEW_CHARS + 5);
        let short = shorten_review(&long);
        assert_eq!(short.chars().count(), MAX_REVIEW_CHARS + 1);
        assert!(short.ends_with('…'));
        assert_eq!(shorten_review(" fine "), "fine");
    }

    #[test]
    fn embedded_templates_compile_and_override_by_file() {
        let set = PromptSet::embedded().unwrap();
        let labels = labels(3);
        let view = SystemView {
            dataset: "d",
            k: 3,
            labels: &labels,
        };
        let system = set.render(1, &view).unwrap();
        for part in [
            "Thought:",
            "Stimulus:",
            "Stimulus Factors:",
            "Knowledge:",
            "Knowledge Factors:",
            "Evaluation:",
            "Evaluation Style:",
            "Behavior: [X]",
            "A, B, C",
        ] {
            assert!(
                system.contains(part),
                "rationale system prompt lacks {part}"
            );
        }
        let direct = set.render(3, &view).unwrap();
        assert!(direct.contains("Behavior: [X]") && !direct.contains("Thought"));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("direct_system.j2"), "Pick one of {{ k }}.").unwrap();
        let custom = PromptSet::load(Some(dir.path())).unwrap();
        assert_eq!(custom.render(3, &view).unwrap(), "Pick one of 3.");
        assert_eq!(custom.render(1, &view).unwrap(), system);

        std::fs::write(dir.path().join("scene.j2"), "{% for x in %}").unwrap();
        let err = PromptSet::load(Some(dir.path())).unwrap_err().to_string();
        assert!(
            err.contains("scene.j2") && err.contains("template error"),
            "{err}"
        );
        std::fs::write(dir.path().join("scene.j2"), "{{ no_such_variable }}").unwrap();
        let set = PromptSet::load(Some(dir.path())).unwrap();
        assert!(
            set.render(0, &view).is_err(),
            "undefined variables must fail"
        );
        assert!(PromptSet::load(Some(&dir.path().join("missing"))).is_err());
    }
}
