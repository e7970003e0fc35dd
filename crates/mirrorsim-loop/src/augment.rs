//! Augmentation: the simulator's accepted choices become extra training interactions, dated
//! one second before the cut so that they belong to the training period.

use std::collections::HashSet;
use std::path::Path;

use mirrorsim_data::io::write_atomic;
use mirrorsim_data::{Catalog, Interaction, ItemIdx, UserIdx};
use mirrorsim_distill::uncertainty::derive_seed;
use mirrorsim_eval::{BaselineKind, FittedBaselines};

use crate::error::LoopError;
use crate::metrics::{OfflineAccumulator, OfflineMetrics};
use crate::recommend::top_k_lists;

/// One extra interaction: a user and an item.
pub type ExtraInteraction = (UserIdx, ItemIdx);

/// `n` users drawn without replacement from `candidates`, deterministically from `seed` (the
/// same seed and candidates give the same users), returned in index order.
pub fn sample_users(
    catalog: &Catalog,
    candidates: &[UserIdx],
    n: usize,
    seed: u64,
) -> Vec<UserIdx> {
    let mut keyed: Vec<(u64, UserIdx)> = candidates
        .iter()
        .map(|&u| {
            let id = &catalog.user(u).id;
            (
                derive_seed(&[b"loop-users", &seed.to_le_bytes(), id.as_bytes()]),
                u,
            )
        })
        .collect();
    keyed.sort_unstable();
    let mut chosen: Vec<UserIdx> = keyed.into_iter().take(n).map(|(_, u)| u).collect();
    chosen.sort_unstable();
    chosen
}

/// The catalog with `extra` added as interactions at `timestamp` (without rating), re-sorted.
pub fn augmented_catalog(catalog: &Catalog, extra: &[ExtraInteraction], timestamp: i64) -> Catalog {
    let mut augmented = catalog.clone();
    augmented
        .interactions
        .extend(extra.iter().map(|&(user, item)| Interaction {
            user,
            item,
            timestamp,
            rating: None,
            review: None,
            impressions: None,
        }));
    augmented
        .interactions
        .sort_by_key(|i| (i.timestamp, i.user, i.item));
    augmented
}

/// Per-user sorted distinct training items with `extra` merged in.
pub fn augmented_histories(
    train_items: &[Vec<ItemIdx>],
    extra: &[ExtraInteraction],
) -> Vec<Vec<ItemIdx>> {
    let mut histories = train_items.to_vec();
    for &(user, item) in extra {
        histories[user as usize].push(item);
    }
    for items in &mut histories {
        items.sort_unstable();
        items.dedup();
    }
    histories
}

/// Writes RecBole's `.inter` atomic file: the header
/// `user_id:token  item_id:token  rating:float  timestamp:float` (tab-separated), the catalog's
/// interactions `[..before]` (rating 1 where the source has none), then `extra` with
/// `extra_rating` at `extra_timestamp`.
pub fn write_recbole_inter(
    path: &Path,
    catalog: &Catalog,
    before: usize,
    extra: &[ExtraInteraction],
    extra_rating: f32,
    extra_timestamp: i64,
) -> Result<(), LoopError> {
    let bad = |id: &str| id.contains(['\t', '\n', '\r']);
    if let Some(user) = catalog.users.iter().find(|u| bad(&u.id)) {
        return Err(LoopError::Config(format!(
            "user id {:?} holds a tab or line break; it cannot be written to a RecBole atomic file",
            user.id
        )));
    }
    if let Some(item) = catalog.items.iter().find(|i| bad(&i.id)) {
        return Err(LoopError::Config(format!(
            "item id {:?} holds a tab or line break; it cannot be written to a RecBole atomic file",
            item.id
        )));
    }
    write_atomic(path, |w| {
        writeln!(
            w,
            "user_id:token\titem_id:token\trating:float\ttimestamp:float"
        )?;
        for interaction in &catalog.interactions[..before] {
            writeln!(
                w,
                "{}\t{}\t{}\t{}",
                catalog.user(interaction.user).id,
                catalog.item(interaction.item).id,
                interaction.rating.unwrap_or(1.0),
                interaction.timestamp
            )?;
        }
        for &(user, item) in extra {
            writeln!(
                w,
                "{}\t{}\t{}\t{}",
                catalog.user(user).id,
                catalog.item(item).id,
                extra_rating,
                extra_timestamp
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Offline metrics of one fitted recommender for `users`, ranking with `histories` (which
/// are also left out of the lists) against `held_out`.
pub fn offline_metrics(
    fitted: &FittedBaselines<'_>,
    kind: BaselineKind,
    catalog: &Catalog,
    histories: &[Vec<ItemIdx>],
    held_out: &[HashSet<ItemIdx>],
    users: &[UserIdx],
    k: usize,
) -> Result<OfflineMetrics, LoopError> {
    let depth = k.max(10);
    let lists = top_k_lists(fitted, kind, catalog.items.len(), histories, users, depth)?;
    let mut accumulator = OfflineAccumulator::new(k);
    for (&user, list) in users.iter().zip(&lists) {
        accumulator.add(list, &held_out[user as usize]);
    }
    Ok(accumulator.finish())
}

/// Control augmentations with the same number of extra items per user as `picks`:
/// `random` draws them uniformly (seeded) from the items that user was shown, `top` takes the
/// user's highest-ranked items.
pub fn control_picks(
    picks: &[ExtraInteraction],
    shown: &dyn Fn(UserIdx) -> Vec<ItemIdx>,
    catalog: &Catalog,
    seed: u64,
) -> (Vec<ExtraInteraction>, Vec<ExtraInteraction>) {
    let mut users: Vec<UserIdx> = picks.iter().map(|p| p.0).collect();
    users.sort_unstable();
    users.dedup();
    let (mut random, mut top) = (Vec::new(), Vec::new());
    for user in users {
        let count = picks.iter().filter(|p| p.0 == user).count();
        let items = shown(user);
        top.extend(items.iter().take(count).map(|&i| (user, i)));
        let mut keyed: Vec<(u64, ItemIdx)> = items
            .iter()
            .map(|&i| {
                (
                    derive_seed(&[
                        b"loop-control",
                        &seed.to_le_bytes(),
                        catalog.user(user).id.as_bytes(),
                        catalog.item(i).id.as_bytes(),
                    ]),
                    i,
                )
            })
            .collect();
        keyed.sort_unstable();
        random.extend(keyed.into_iter().take(count).map(|(_, i)| (user, i)));
    }
    (random, top)
}
