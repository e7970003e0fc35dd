//! mirrorsim-distill: rationales → predictor scores → ΔEU → chosen/rejected pairs → training
//! sets, with the run journal that makes every LLM stage resumable.
//!
//! Definitions follow DESIGN.md ("Definitions"); see [`uncertainty`] for the formulas.

pub mod error;
pub mod journal;
pub mod records;
pub mod select;
pub mod stages;
pub mod uncertainty;

pub use error::DistillError;
pub use journal::{Journal, JournalCounts, JournalEntry, JournaledBackend};
pub use records::{FormatCheck, RationaleRecord, Role, ScoreRecord};
pub use select::{allocate, rank, stratified_top_k, Selector};
pub use stages::{
    distill, generate_rationales, score_rationales, write_distill, DistillConfig, DistillOutput,
    DistillSummary, GenerateConfig, ScoreConfig, StageSummary,
};
pub use uncertainty::{analyse_scene, SceneUncertainty, SourceUncertainty};
