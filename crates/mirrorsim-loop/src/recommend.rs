//! The built-in top-k recommenders of the demo — popularity, item-kNN and EASE — as fitted by
//! `mirrorsim_eval::baselines` on interactions strictly before the cut, ranking every catalog
//! item for a user. Items in the user's training history are never recommended. Ties are broken
//! by pre-cut popularity (more first), then by catalog index, so lists are deterministic.

use mirrorsim_data::{Catalog, ItemIdx, UserIdx};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines};
use rayon::prelude::*;

use crate::error::LoopError;

/// The recommenders `--builtin` accepts.
pub const BUILTIN_KINDS: [BaselineKind; 3] = [
    BaselineKind::Popularity,
    BaselineKind::Knn,
    BaselineKind::Ease,
];

/// Parses `popularity,knn,ease` (a subset, in any order; duplicates dropped).
pub fn parse_builtin(spec: &str) -> Result<Vec<BaselineKind>, LoopError> {
    let kinds = BaselineKind::parse_list(spec)?;
    if let Some(kind) = kinds.iter().find(|k| !BUILTIN_KINDS.contains(k)) {
        return Err(LoopError::Config(format!(
            "`{kind}` is not a built-in recommender; use popularity, knn, ease"
        )));
    }
    if kinds.is_empty() {
        return Err(LoopError::Config(
            "--builtin names no recommender; use popularity, knn, ease".to_owned(),
        ));
    }
    Ok(kinds)
}

/// Fits the baselines on `catalog.interactions` strictly before `cutoff` (EASE only when
/// asked: its dense inverse is the costly part).
pub fn fit<'c>(
    catalog: &'c Catalog,
    cutoff: i64,
    config: &BaselineConfig,
    kinds: &[BaselineKind],
) -> Result<FittedBaselines<'c>, LoopError> {
    Ok(FittedBaselines::fit(
        catalog,
        Some(cutoff),
        config,
        kinds.contains(&BaselineKind::Ease),
    )?)
}

/// The top `k` items for a user whose distinct training items are `history` (sorted): those
/// items are left out, the rest ranked by the recommender's score.
pub fn top_k(
    fitted: &FittedBaselines<'_>,
    kind: BaselineKind,
    item_count: usize,
    history: &[ItemIdx],
    k: usize,
) -> Result<Vec<ItemIdx>, LoopError> {
    let options: Vec<Option<ItemIdx>> = (0..item_count as ItemIdx).map(Some).collect();
    // The built-in recommenders (BUILTIN_KINDS) read no order, so no recent choices.
    let scores = fitted.scores_of(kind, &options, history, &[])?;
    let mut candidates: Vec<ItemIdx> = (0..item_count as ItemIdx)
        .filter(|item| history.binary_search(item).is_err())
        .collect();
    let order = |a: &ItemIdx, b: &ItemIdx| {
        scores[*b as usize]
            .total_cmp(&scores[*a as usize])
            .then_with(|| fitted.popularity(*b).cmp(&fitted.popularity(*a)))
            .then_with(|| a.cmp(b))
    };
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k, order);
        candidates.truncate(k);
    }
    candidates.sort_by(order);
    Ok(candidates)
}

/// Top-`k` lists for many users at once (in parallel); `histories[u]` is user `u`'s sorted
/// distinct training items.
pub fn top_k_lists(
    fitted: &FittedBaselines<'_>,
    kind: BaselineKind,
    item_count: usize,
    histories: &[Vec<ItemIdx>],
    users: &[UserIdx],
    k: usize,
) -> Result<Vec<Vec<ItemIdx>>, LoopError> {
    users
        .par_iter()
        .map(|&u| top_k(fitted, kind, item_count, &histories[u as usize], k))
        .collect()
}
