//! Checks a request against the catalog and the limits and turns it into the core's
//! [`SlateRequest`]. Every refusal names the field at fault.

use std::collections::HashMap;

use mirrorsim_data::scenes::slate::{
    SlateCatalog, SlateHistoryEntry, SlateItem, SlateUser, NONE_OF_THESE_ID,
};
use mirrorsim_data::scenes::MAX_OPTIONS;
use mirrorsim_eval::simulate::Mode;
use mirrorsim_eval::slate::SlateRequest;

use super::api::{InlineHistoryEntry, InlineItem, InlineUser, SimulateMode, SimulateRequest};
use super::error::ApiError;

/// The id an inline user without one is answered under.
pub const INLINE_USER_ID: &str = "inline";

/// What a single request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most items in a slate, not counting the "none of these" option.
    pub max_slate_items: usize,
    pub max_samples: usize,
    pub max_history: usize,
    /// Most characters of inline text (ids, titles, details, attributes, reviews) in one
    /// request: it bounds the prompt, which the model's context must hold.
    pub max_inline_chars: usize,
}

impl From<SimulateMode> for Mode {
    fn from(mode: SimulateMode) -> Self {
        match mode {
            SimulateMode::Direct => Mode::Direct,
            SimulateMode::Rationale => Mode::Rationale,
        }
    }
}

/// The core request for `request`, or the first thing wrong with it.
pub fn slate_request(
    catalog: &SlateCatalog,
    request: &SimulateRequest,
    limits: &RequestLimits,
) -> Result<SlateRequest, ApiError> {
    if request.n == 0 || request.n > limits.max_samples {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n is {}; it must be between 1 and {} (the server's --max-samples)",
                request.n, limits.max_samples
            ),
        ));
    }
    let inline_chars = inline_text_chars(request);
    if inline_chars > limits.max_inline_chars {
        let field = if request.user.is_some() {
            "user"
        } else {
            "items"
        };
        return Err(ApiError::invalid(
            field,
            format!(
                "the inline user and items hold {inline_chars} characters of text; at most {} \
                 are accepted (the server's --max-inline-chars), as the prompt must fit the \
                 model's context; shorten the details, reviews or history",
                limits.max_inline_chars
            ),
        ));
    }
    let items = slate_items(catalog, request, limits)?;
    let user = user(catalog, request, limits)?;
    Ok(SlateRequest {
        user,
        items,
        none_option: request.none_option,
        mode: request.mode.into(),
        samples: request.n,
        seed: request.seed,
    })
}

/// Characters of text given inline rather than by catalog id.
fn inline_text_chars(request: &SimulateRequest) -> usize {
    fn item_chars(item: &InlineItem) -> usize {
        item.id.chars().count()
            + item.title.chars().count()
            + item.details.chars().count()
            + item.stats.as_ref().map_or(0, |s| s.chars().count())
    }
    let items: usize = request.items.iter().flatten().map(item_chars).sum();
    let user = request.user.as_ref().map_or(0, |user| {
        let attributes: usize = user
            .attributes
            .iter()
            .map(|(name, value)| name.chars().count() + value.chars().count())
            .sum();
        let history: usize = user
            .history
            .iter()
            .map(|entry| {
                entry.item.as_ref().map_or(0, item_chars)
                    + entry.review.as_ref().map_or(0, |r| r.chars().count())
            })
            .sum();
        user.id.as_ref().map_or(0, |id| id.chars().count()) + attributes + history
    });
    items + user
}

fn user(
    catalog: &SlateCatalog,
    request: &SimulateRequest,
    limits: &RequestLimits,
) -> Result<SlateUser, ApiError> {
    match (&request.user_id, &request.user) {
        (Some(id), None) => catalog.user(id, request.at).ok_or_else(|| {
            ApiError::not_found(
                "user_id",
                format!("user_id {id:?} is not a user of the served catalog"),
            )
        }),
        (None, Some(inline)) => {
            if request.at.is_some() {
                return Err(ApiError::invalid(
                    "at",
                    "`at` selects a catalog user's history; an inline user's history is given \
                     as it is",
                ));
            }
            inline_user(catalog, inline, limits)
        }
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "user",
            "give either `user_id` (a user of the catalog) or `user` (an inline profile and \
             history), not both",
        )),
        (None, None) => Err(ApiError::invalid(
            "user_id",
            "no user: give `user_id` (a user of the catalog) or `user` (an inline profile and \
             history)",
        )),
    }
}

fn inline_user(
    catalog: &SlateCatalog,
    inline: &InlineUser,
    limits: &RequestLimits,
) -> Result<SlateUser, ApiError> {
    if inline.history.len() > limits.max_history {
        return Err(ApiError::invalid(
            "user.history",
            format!(
                "the history has {} entries; at most {} are accepted (the server's \
                 --max-history); send the most recent ones",
                inline.history.len(),
                limits.max_history
            ),
        ));
    }
    let id = match &inline.id {
        Some(id) if id.trim().is_empty() => {
            return Err(ApiError::invalid("user.id", "user.id is empty"))
        }
        Some(id) => id.clone(),
        None => INLINE_USER_ID.to_owned(),
    };
    let history = inline
        .history
        .iter()
        .enumerate()
        .map(|(i, entry)| history_entry(catalog, entry, &format!("user.history[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SlateUser {
        id,
        attributes: inline.attributes.clone(),
        history,
        // A hybrid's prior then reads the catalog items of the history.
        earlier_items: Vec::new(),
    })
}

fn history_entry(
    catalog: &SlateCatalog,
    entry: &InlineHistoryEntry,
    field: &str,
) -> Result<SlateHistoryEntry, ApiError> {
    let item = match (&entry.item_id, &entry.item) {
        (Some(id), None) => catalog_item(catalog, id, &format!("{field}.item_id"))?,
        (None, Some(item)) => inline_item(item, &format!("{field}.item"))?,
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                field,
                "give either `item_id` or `item`, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                field,
                "no item: give `item_id` (an item of the catalog) or `item` (an inline item)",
            ))
        }
    };
    if let Some(rating) = entry.rating {
        if !rating.is_finite() {
            return Err(ApiError::invalid(
                format!("{field}.rating"),
                "the rating is not a finite number",
            ));
        }
    }
    Ok(SlateHistoryEntry {
        item,
        seconds_ago: entry.seconds_ago,
        rating: entry.rating,
        review: entry.review.clone(),
    })
}

fn catalog_item(catalog: &SlateCatalog, id: &str, field: &str) -> Result<SlateItem, ApiError> {
    catalog.item(id).ok_or_else(|| {
        ApiError::not_found(
            field,
            format!("item id {id:?} is not an item of the served catalog"),
        )
    })
}

fn inline_item(item: &InlineItem, field: &str) -> Result<SlateItem, ApiError> {
    if item.id.trim().is_empty() {
        return Err(ApiError::invalid(
            format!("{field}.id"),
            "the item id is empty",
        ));
    }
    if item.title.trim().is_empty() {
        return Err(ApiError::invalid(
            format!("{field}.title"),
            format!("item {:?} has an empty title", item.id),
        ));
    }
    Ok(SlateItem {
        id: item.id.clone(),
        title: item.title.clone(),
        details: item.details.clone(),
        stats: item.stats.clone(),
    })
}

/// The most items a slate may hold: the server's limit, within the option letters A–Z.
pub fn max_slate_items(limits: &RequestLimits, none_option: bool) -> usize {
    limits
        .max_slate_items
        .min(MAX_OPTIONS - usize::from(none_option))
}

fn slate_items(
    catalog: &SlateCatalog,
    request: &SimulateRequest,
    limits: &RequestLimits,
) -> Result<Vec<SlateItem>, ApiError> {
    let (field, ids): (&str, Vec<&str>) = match (&request.item_ids, &request.items) {
        (Some(ids), None) => ("item_ids", ids.iter().map(String::as_str).collect()),
        (None, Some(items)) => ("items", items.iter().map(|i| i.id.as_str()).collect()),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "items",
                "give the slate either as `item_ids` (catalog items) or as `items` (inline \
                 items), not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "item_ids",
                "no slate: give `item_ids` (catalog items) or `items` (inline items)",
            ))
        }
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(
            field,
            "the slate is empty; give at least one item",
        ));
    }
    let max_items = max_slate_items(limits, request.none_option);
    if ids.len() > max_items {
        return Err(ApiError::invalid(
            field,
            format!(
                "the slate has {} items; at most {max_items} are accepted{}",
                ids.len(),
                if request.none_option {
                    " with `none_option` (it takes one option letter)"
                } else {
                    ""
                }
            ),
        ));
    }
    let mut first_position: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (position, &id) in ids.iter().enumerate() {
        if id == NONE_OF_THESE_ID {
            return Err(ApiError::invalid(
                format!("{field}[{position}]"),
                format!(
                    "{NONE_OF_THESE_ID:?} is reserved for the \"none of these\" option; set \
                     `none_option` instead"
                ),
            ));
        }
        if let Some(first) = first_position.insert(id, position) {
            return Err(ApiError::invalid(
                format!("{field}[{position}]"),
                format!(
                    "item {id:?} appears twice in the slate (positions {first} and {position})"
                ),
            ));
        }
    }
    match &request.items {
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| inline_item(item, &format!("items[{i}]")))
            .collect(),
        None => ids
            .iter()
            .enumerate()
            .map(|(i, id)| catalog_item(catalog, id, &format!("item_ids[{i}]")))
            .collect(),
    }
}
