//! The temporal split of the loop: one global cut at a timestamp quantile. Recommenders are
//! fitted on interactions strictly before the cut; each user's held-out set is the items they
//! interacted with at or after it and never before it.

use std::collections::HashSet;

use mirrorsim_data::scenes::split::TimeSplit;
use mirrorsim_data::{Catalog, ItemIdx, UserIdx};
use serde::Serialize;

use crate::error::LoopError;

/// A global cut and what lies on each side of it.
#[derive(Debug, Clone)]
pub struct TemporalCut {
    /// The quantile of interaction timestamps the cut was placed at.
    pub quantile: f64,
    /// Interactions with `timestamp < cutoff` are training data.
    pub cutoff: i64,
    /// `catalog.interactions[..position]` are the training interactions.
    pub position: usize,
    /// Per user: distinct items before the cut, sorted.
    pub train_items: Vec<Vec<ItemIdx>>,
    /// Per user: distinct items at or after the cut that are not in `train_items`.
    pub held_out: Vec<HashSet<ItemIdx>>,
}

/// Sizes of a cut, for the output files.
#[derive(Debug, Clone, Serialize)]
pub struct CutSummary {
    pub quantile: f64,
    pub cutoff_timestamp: i64,
    pub interactions_before_cut: usize,
    pub interactions_after_cut: usize,
    /// Users with at least one training interaction and one held-out item.
    pub evaluable_users: usize,
}

impl TemporalCut {
    /// Cuts at the timestamp below which a share `quantile` of the interactions lies (never
    /// inside one timestamp: interactions sharing the cut's timestamp are all held out).
    pub fn at_quantile(catalog: &Catalog, quantile: f64) -> Result<Self, LoopError> {
        if !(quantile > 0.0 && quantile < 1.0) {
            return Err(LoopError::Config(format!(
                "the cut quantile must be in (0, 1), got {quantile}"
            )));
        }
        let split = TimeSplit::compute(catalog, 1.0 - quantile);
        let Some(cutoff) = split.cutoff else {
            return Err(LoopError::Config(format!(
                "catalog `{}`: a cut at quantile {quantile} leaves no held-out interactions",
                catalog.name
            )));
        };
        if split.cutoff_position == 0 {
            return Err(LoopError::Config(format!(
                "catalog `{}`: a cut at quantile {quantile} leaves no training interactions",
                catalog.name
            )));
        }
        Ok(Self::at_timestamp(catalog, cutoff, quantile))
    }

    /// Cuts at a given timestamp.
    pub fn at_timestamp(catalog: &Catalog, cutoff: i64, quantile: f64) -> Self {
        let position = catalog
            .interactions
            .partition_point(|i| i.timestamp < cutoff);
        let mut train_items = vec![Vec::new(); catalog.users.len()];
        for interaction in &catalog.interactions[..position] {
            train_items[interaction.user as usize].push(interaction.item);
        }
        for items in &mut train_items {
            items.sort_unstable();
            items.dedup();
        }
        let mut held_out = vec![HashSet::new(); catalog.users.len()];
        for interaction in &catalog.interactions[position..] {
            let user = interaction.user as usize;
            if train_items[user].binary_search(&interaction.item).is_err() {
                held_out[user].insert(interaction.item);
            }
        }
        TemporalCut {
            quantile,
            cutoff,
            position,
            train_items,
            held_out,
        }
    }

    /// Users with training interactions and held-out items, in index order.
    pub fn evaluable_users(&self) -> Vec<UserIdx> {
        (0..self.train_items.len())
            .filter(|&u| !self.train_items[u].is_empty() && !self.held_out[u].is_empty())
            .map(|u| u as UserIdx)
            .collect()
    }

    pub fn summary(&self, catalog: &Catalog) -> CutSummary {
        CutSummary {
            quantile: self.quantile,
            cutoff_timestamp: self.cutoff,
            interactions_before_cut: self.position,
            interactions_after_cut: catalog.interactions.len() - self.position,
            evaluable_users: self.evaluable_users().len(),
        }
    }
}
