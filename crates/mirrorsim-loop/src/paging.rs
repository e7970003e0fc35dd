//! Agent4Rec-style paging: each user sees a recommender's list a page of `k` items at a time,
//! with "none of these" as an extra option. The simulator picks one option; on "none" the
//! user moves to the next page, up to `P` pages; a session ends at its `max_picks`-th pick
//! (1 for `simulate-recs`: the first pick ends it) or when the pages run out.
//!
//! Pages are asked round by round (every open session's next page in one batch), so the
//! backend sees large batches; every draw is seeded from (seed, recommender, user, page) alone,
//! so the result does not depend on batching.

use std::collections::{BTreeMap, HashSet};

use mirrorsim_data::scenes::slate::{SlateCatalog, SlateItem, NONE_OF_THESE_ID};
use mirrorsim_distill::uncertainty::derive_seed;
use mirrorsim_eval::metrics::wilson_interval;
use mirrorsim_eval::slate::{SlateRequest, SlateSimulator};
use mirrorsim_eval::Mode;
use serde::{Deserialize, Serialize};

use crate::error::LoopError;

/// How sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PagingConfig {
    /// Items per page (`k`); the none option comes on top of them.
    pub page_size: usize,
    /// Pages a user looks at, at most (`P`).
    pub max_pages: usize,
    /// Picks that end a session.
    pub max_picks: usize,
    pub seed: u64,
}

impl PagingConfig {
    pub fn validate(&self) -> Result<(), LoopError> {
        if self.page_size == 0 || self.page_size + 1 > mirrorsim_data::scenes::MAX_OPTIONS {
            return Err(LoopError::Config(format!(
                "the page size must be in 1..={} (the none option makes one more), got {}",
                mirrorsim_data::scenes::MAX_OPTIONS - 1,
                self.page_size
            )));
        }
        if self.max_pages == 0 || self.max_picks == 0 {
            return Err(LoopError::Config(
                "pages and picks per user must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

/// One user facing one recommender's ranked list.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub recommender: String,
    pub user_id: String,
    /// Ranked, best first.
    pub items: Vec<String>,
}

/// One page shown to the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest<'a> {
    pub recommender: &'a str,
    pub user_id: &'a str,
    /// 1-based.
    pub page: usize,
    pub items: &'a [String],
    pub seed: u64,
}

/// The simulator's answer to one page.
#[derive(Debug, Clone, PartialEq)]
pub struct PageAnswer {
    /// One probability per item, then the none option's.
    pub distribution: Vec<f64>,
    /// The picked item's position on the page; `None`: "none of these".
    pub pick: Option<usize>,
}

/// Whatever answers pages: the slate simulator in the product.
pub trait PageChooser {
    fn choose(&self, pages: &[PageRequest<'_>]) -> Result<Vec<PageAnswer>, LoopError>;
}

/// One line of `choices.jsonl`: one page and what the simulator did with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLine {
    pub recommender: String,
    pub user_id: String,
    /// 1-based.
    pub page: usize,
    /// The items shown, in order; their ranks are `(page − 1)·k + 1 …`.
    pub items: Vec<String>,
    /// `null`: "none of these".
    pub chosen_item: Option<String>,
    /// The chosen item's 1-based rank in the recommender's list.
    pub chosen_rank: Option<usize>,
    pub p_none: f64,
    /// One probability per item, then the none option's.
    pub distribution: Vec<f64>,
    pub seed: u64,
}

/// The seed of one page.
pub fn page_seed(seed: u64, recommender: &str, user_id: &str, page: usize) -> u64 {
    derive_seed(&[
        b"loop-page",
        &seed.to_le_bytes(),
        recommender.as_bytes(),
        user_id.as_bytes(),
        &(page as u64).to_le_bytes(),
    ])
}

/// Runs every session; the lines come in session order, pages in order within a session.
/// `batch_size` pages go to the chooser at once; `progress(done_pages)` is called after each
/// batch.
pub fn run_sessions(
    sessions: &[Session],
    config: &PagingConfig,
    chooser: &dyn PageChooser,
    batch_size: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<ChoiceLine>, LoopError> {
    config.validate()?;
    let k = config.page_size;
    let pages_of = |s: &Session| s.items.len().div_ceil(k).min(config.max_pages);
    let mut lines: Vec<Vec<ChoiceLine>> = vec![Vec::new(); sessions.len()];
    let mut picks = vec![0usize; sessions.len()];
    let mut open: Vec<usize> = (0..sessions.len())
        .filter(|&s| pages_of(&sessions[s]) > 0)
        .collect();
    let mut done = 0;
    let mut page = 1;
    while !open.is_empty() {
        for chunk in open.chunks(batch_size.max(1)) {
            let requests: Vec<PageRequest<'_>> = chunk
                .iter()
                .map(|&s| {
                    let session = &sessions[s];
                    let start = (page - 1) * k;
                    let end = (start + k).min(session.items.len());
                    PageRequest {
                        recommender: &session.recommender,
                        user_id: &session.user_id,
                        page,
                        items: &session.items[start..end],
                        seed: page_seed(config.seed, &session.recommender, &session.user_id, page),
                    }
                })
                .collect();
            let answers = chooser.choose(&requests)?;
            if answers.len() != requests.len() {
                return Err(LoopError::Config(format!(
                    "the simulator answered {} pages for {} asked",
                    answers.len(),
                    requests.len()
                )));
            }
            for ((&s, request), answer) in chunk.iter().zip(&requests).zip(answers) {
                if answer.distribution.len() != request.items.len() + 1
                    || answer.pick.is_some_and(|p| p >= request.items.len())
                {
                    return Err(LoopError::Config(format!(
                        "the simulator answered {} probabilities and pick {:?} for a page of {} \
                         items and the none option",
                        answer.distribution.len(),
                        answer.pick,
                        request.items.len()
                    )));
                }
                if answer.pick.is_some() {
                    picks[s] += 1;
                }
                lines[s].push(ChoiceLine {
                    recommender: request.recommender.to_owned(),
                    user_id: request.user_id.to_owned(),
                    page,
                    items: request.items.to_vec(),
                    chosen_item: answer.pick.map(|p| request.items[p].clone()),
                    chosen_rank: answer.pick.map(|p| (page - 1) * k + p + 1),
                    p_none: answer.distribution[request.items.len()],
                    distribution: answer.distribution,
                    seed: request.seed,
                });
            }
            done += requests.len();
            progress(done);
        }
        open.retain(|&s| picks[s] < config.max_picks && page < pages_of(&sessions[s]));
        page += 1;
    }
    Ok(lines.into_iter().flatten().collect())
}

/// The slate simulator answering pages: each user as of `at` (their history strictly before
/// it; all of it when `None`), one seeded draw per page.
pub struct SlateChooser<'s, 'c> {
    pub simulator: &'s SlateSimulator<'c>,
    pub at: Option<i64>,
    pub mode: Mode,
}

impl PageChooser for SlateChooser<'_, '_> {
    fn choose(&self, pages: &[PageRequest<'_>]) -> Result<Vec<PageAnswer>, LoopError> {
        let catalog: &SlateCatalog = self.simulator.catalog();
        let requests = pages
            .iter()
            .map(|page| {
                let user = catalog.user(page.user_id, self.at).ok_or_else(|| {
                    LoopError::Config(format!(
                        "recommender `{}`: user `{}` is not in the catalog",
                        page.recommender, page.user_id
                    ))
                })?;
                let items = page
                    .items
                    .iter()
                    .map(|id| {
                        catalog.item(id).ok_or_else(|| {
                            LoopError::Config(format!(
                                "recommender `{}`: item `{id}` is not in the catalog",
                                page.recommender
                            ))
                        })
                    })
                    .collect::<Result<Vec<SlateItem>, LoopError>>()?;
                Ok(SlateRequest {
                    user,
                    items,
                    none_option: true,
                    mode: self.mode,
                    samples: 1,
                    seed: page.seed,
                })
            })
            .collect::<Result<Vec<_>, LoopError>>()?;
        let outcomes = self.simulator.simulate(&requests)?;
        Ok(outcomes
            .into_iter()
            .zip(pages)
            .map(|(outcome, page)| {
                let pick = outcome
                    .samples
                    .first()
                    .copied()
                    .flatten()
                    .filter(|&i| i < page.items.len())
                    .filter(|&i| {
                        outcome
                            .item_ids
                            .get(i)
                            .is_some_and(|id| id != NONE_OF_THESE_ID)
                    });
                PageAnswer {
                    distribution: outcome.distribution,
                    pick,
                }
            })
            .collect())
    }
}

/// A recommender's simulated metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulatedMetrics {
    /// Users shown at least one page.
    pub users: usize,
    /// Users who picked an item within their pages.
    pub accepting_users: usize,
    pub acceptance_rate: f64,
    /// Wilson 95 % interval of the acceptance rate.
    pub acceptance_ci: (f64, f64),
    pub picks: usize,
    /// Mean 1-based rank in the list of the picked items (`null` without picks).
    pub mean_chosen_rank: Option<f64>,
    pub distinct_chosen_items: usize,
    /// Distinct chosen items over the catalog's items.
    pub coverage: f64,
    pub mean_pages_viewed: f64,
    /// Mean probability of "none of these" on first pages.
    pub mean_p_none_first_page: f64,
    /// Picks that the user really interacted with after the cut (with a cut only).
    pub picks_in_held_out: Option<usize>,
}

/// Says whether (user id, item id) is a real held-out interaction.
pub type HeldOutTest<'a> = &'a dyn Fn(&str, &str) -> bool;

/// Per recommender (in first-appearance order of `lines`): its simulated metrics, counting
/// picks that `held_out` says the user really interacted with after the cut.
pub fn simulated_metrics(
    lines: &[ChoiceLine],
    catalog_items: usize,
    held_out: Option<HeldOutTest<'_>>,
) -> Vec<(String, SimulatedMetrics)> {
    let mut order: Vec<String> = Vec::new();
    let mut per: BTreeMap<String, Vec<&ChoiceLine>> = BTreeMap::new();
    for line in lines {
        if !per.contains_key(&line.recommender) {
            order.push(line.recommender.clone());
        }
        per.entry(line.recommender.clone()).or_default().push(line);
    }
    order
        .into_iter()
        .map(|name| {
            let lines = &per[&name];
            let mut users: BTreeMap<&str, bool> = BTreeMap::new();
            for line in lines {
                *users.entry(line.user_id.as_str()).or_insert(false) |= line.chosen_item.is_some();
            }
            let picked: Vec<&&ChoiceLine> =
                lines.iter().filter(|l| l.chosen_item.is_some()).collect();
            let accepting = users.values().filter(|&&a| a).count();
            let rate = accepting as f64 / users.len().max(1) as f64;
            let distinct: HashSet<&str> = picked
                .iter()
                .filter_map(|l| l.chosen_item.as_deref())
                .collect();
            let first_pages: Vec<f64> = lines
                .iter()
                .filter(|l| l.page == 1)
                .map(|l| l.p_none)
                .collect();
            let metrics = SimulatedMetrics {
                users: users.len(),
                accepting_users: accepting,
                acceptance_rate: rate,
                acceptance_ci: wilson_interval(rate, users.len()),
                picks: picked.len(),
                mean_chosen_rank: (!picked.is_empty()).then(|| {
                    picked
                        .iter()
                        .filter_map(|l| l.chosen_rank)
                        .map(|r| r as f64)
                        .sum::<f64>()
                        / picked.len() as f64
                }),
                distinct_chosen_items: distinct.len(),
                coverage: distinct.len() as f64 / catalog_items.max(1) as f64,
                mean_pages_viewed: lines.len() as f64 / users.len().max(1) as f64,
                mean_p_none_first_page: first_pages.iter().sum::<f64>()
                    / first_pages.len().max(1) as f64,
                picks_in_held_out: held_out.map(|f| {
                    picked
                        .iter()
                        .filter(|l| {
                            l.chosen_item
                                .as_deref()
                                .is_some_and(|item| f(&l.user_id, item))
                        })
                        .count()
                }),
            };
            (name, metrics)
        })
        .collect()
}
