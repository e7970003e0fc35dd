//! The one catalog model every reader produces and every later stage consumes.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// Dense index of a user inside a [`Catalog`] (position in `Catalog::users`).
pub type UserIdx = u32;
/// Dense index of an item inside a [`Catalog`] (position in `Catalog::items`).
pub type ItemIdx = u32;

/// A user and the profile attributes the source gives (age, gender, occupation, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    /// The id as written in the source files.
    pub id: String,
    /// Profile attributes, already decoded to words (e.g. ML-1M occupation code 12 → "programmer").
    pub attributes: BTreeMap<String, String>,
}

/// An item: a title, free-form attributes (genres, brand, …) and an optional release time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    /// The id as written in the source files.
    pub id: String,
    /// Human-readable title; readers fall back to the id when the source has none.
    pub title: String,
    /// Attributes rendered in prompts and used by content negatives; multi-valued
    /// attributes are joined with ", " (e.g. genres = "Animation, Children's, Comedy").
    pub attributes: BTreeMap<String, String>,
    /// Release time in Unix seconds where known (a year becomes Jan 1 of that year, UTC).
    pub release_time: Option<i64>,
}

/// One logged interaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interaction {
    pub user: UserIdx,
    pub item: ItemIdx,
    /// Unix seconds (readers convert milliseconds and date strings).
    pub timestamp: i64,
    pub rating: Option<f32>,
    pub review: Option<Box<str>>,
    /// The logged impression list shown with this decision (e.g. MIND), as item indices.
    pub impressions: Option<Box<[ItemIdx]>>,
}

/// Users, items and interactions of one dataset. Interactions are sorted by
/// (timestamp, user, item) so that time splits are slices.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Short dataset name (e.g. "ml-1m"), recorded in every scene.
    pub name: String,
    pub users: Vec<User>,
    pub items: Vec<Item>,
    pub interactions: Vec<Interaction>,
    user_index: HashMap<String, UserIdx>,
    item_index: HashMap<String, ItemIdx>,
}

impl Catalog {
    pub fn user_idx(&self, id: &str) -> Option<UserIdx> {
        self.user_index.get(id).copied()
    }

    pub fn item_idx(&self, id: &str) -> Option<ItemIdx> {
        self.item_index.get(id).copied()
    }

    pub fn user(&self, idx: UserIdx) -> &User {
        &self.users[idx as usize]
    }

    pub fn item(&self, idx: ItemIdx) -> &Item {
        &self.items[idx as usize]
    }

    /// Interaction positions (into `interactions`) grouped per user, each list in time order.
    pub fn interactions_by_user(&self) -> Vec<Vec<u32>> {
        let mut by_user = vec![Vec::new(); self.users.len()];
        for (pos, interaction) in self.interactions.iter().enumerate() {
            by_user[interaction.user as usize].push(pos as u32);
        }
        by_user
    }
}

/// Builds a [`Catalog`], interning string ids into dense indices.
#[derive(Debug, Default)]
pub struct CatalogBuilder {
    catalog: Catalog,
}

impl CatalogBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        CatalogBuilder {
            catalog: Catalog {
                name: name.into(),
                ..Catalog::default()
            },
        }
    }

    /// Adds a user, or merges attributes into the user already known under `id`.
    pub fn add_user(&mut self, id: &str, attributes: BTreeMap<String, String>) -> UserIdx {
        let idx = self.user(id);
        self.catalog.users[idx as usize]
            .attributes
            .extend(attributes);
        idx
    }

    /// Adds an item, or fills in title/attributes/release time of one already referenced.
    pub fn add_item(
        &mut self,
        id: &str,
        title: Option<String>,
        attributes: BTreeMap<String, String>,
        release_time: Option<i64>,
    ) -> ItemIdx {
        let idx = self.item(id);
        let item = &mut self.catalog.items[idx as usize];
        if let Some(title) = title {
            item.title = title;
        }
        item.attributes.extend(attributes);
        if release_time.is_some() {
            item.release_time = release_time;
        }
        idx
    }

    /// The index of user `id`, creating a user without attributes if it is new.
    pub fn user(&mut self, id: &str) -> UserIdx {
        if let Some(&idx) = self.catalog.user_index.get(id) {
            return idx;
        }
        let idx = self.catalog.users.len() as UserIdx;
        self.catalog.users.push(User {
            id: id.to_owned(),
            attributes: BTreeMap::new(),
        });
        self.catalog.user_index.insert(id.to_owned(), idx);
        idx
    }

    /// The index of item `id`, creating an item titled by its id if it is new.
    pub fn item(&mut self, id: &str) -> ItemIdx {
        if let Some(&idx) = self.catalog.item_index.get(id) {
            return idx;
        }
        let idx = self.catalog.items.len() as ItemIdx;
        self.catalog.items.push(Item {
            id: id.to_owned(),
            title: id.to_owned(),
            attributes: BTreeMap::new(),
            release_time: None,
        });
        self.catalog.item_index.insert(id.to_owned(), idx);
        idx
    }

    pub fn push_interaction(&mut self, interaction: Interaction) {
        self.catalog.interactions.push(interaction);
    }

    pub fn has_user(&self, id: &str) -> bool {
        self.catalog.user_index.contains_key(id)
    }

    pub fn has_item(&self, id: &str) -> bool {
        self.catalog.item_index.contains_key(id)
    }

    pub fn item_mut(&mut self, idx: ItemIdx) -> &mut Item {
        &mut self.catalog.items[idx as usize]
    }

    pub fn user_mut(&mut self, idx: UserIdx) -> &mut User {
        &mut self.catalog.users[idx as usize]
    }

    pub fn interaction_count(&self) -> usize {
        self.catalog.interactions.len()
    }

    /// Sorts interactions by (timestamp, user, item) — a stable order that makes
    /// every later stage deterministic — and returns the catalog.
    pub fn finish(mut self) -> Catalog {
        self.catalog
            .interactions
            .sort_by_key(|i| (i.timestamp, i.user, i.item));
        self.catalog
    }
}

/// Jan 1st 00:00 UTC of `year`, in Unix seconds (proleptic Gregorian).
pub fn year_start_unix(year: i32) -> i64 {
    days_from_civil(year, 1, 1) * 86_400
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(year_start_unix(1995), 788_918_400);
        assert_eq!(year_start_unix(1969), -31_536_000);
    }

    #[test]
    fn builder_interns_ids_and_sorts_by_time() {
        let mut b = CatalogBuilder::new("t");
        let u = b.user("u1");
        let i1 = b.item("a");
        let i2 = b.item("b");
        assert_eq!(b.user("u1"), u);
        for (item, ts) in [(i2, 20), (i1, 10)] {
            b.push_interaction(Interaction {
                user: u,
                item,
                timestamp: ts,
                rating: None,
                review: None,
                impressions: None,
            });
        }
        let c = b.finish();
        assert_eq!(c.interactions[0].timestamp, 10);
        assert_eq!(c.item_idx("b"), Some(i2));
        assert_eq!(c.item(i1).title, "a");
        assert_eq!(c.interactions_by_user()[u as usize], vec![0, 1]);
    }
}
