//! mirrorsim-data: read recommender logs as downloaded into one [`Catalog`], and turn the
//! catalog into leakage-free listwise choice scenes.
//!
//! Data flows one way: `readers` → [`Catalog`] → `scenes` → JSONL files.

pub mod catalog;
pub mod error;
pub mod io;
pub mod readers;
pub mod scenes;
pub mod stats;

pub use catalog::{Catalog, CatalogBuilder, Interaction, Item, ItemIdx, User, UserIdx};
pub use error::{DataError, ReadOptions, ReadReport};
pub use readers::{read_source, SourceSpec};
