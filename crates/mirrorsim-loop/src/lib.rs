//! mirrorsim-loop: put a recommender in the loop with a user simulator.
//!
//! - [`recs`]: read a recommender's ranked lists (CSV or RecBole top-k lines).
//! - [`split`]: the temporal cut at a timestamp quantile and each user's held-out items.
//! - [`recommend`]: built-in top-k recommenders (popularity, item-kNN, EASE) fitted before the cut.
//! - [`paging`]: Agent4Rec-style pages with a "none of these" option, simulated metrics.
//! - [`metrics`]: NDCG, Recall, MRR against held-out data; Spearman and Kendall rank agreement.
//! - [`augment`]: the simulator's choices as extra training interactions (RecBole `.inter`).
//! - [`output`]: atomic JSON, JSONL and CSV writers.

pub mod augment;
pub mod error;
pub mod metrics;
pub mod output;
pub mod paging;
pub mod recommend;
pub mod recs;
pub mod split;

pub use error::LoopError;
