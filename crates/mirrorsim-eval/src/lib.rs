//! mirrorsim-eval: judge a user simulator against real held-out choices, beside classical
//! baselines fitted on the same pre-cutoff data.
//!
//! - [`metrics`]: accuracy (argmax and sampled) with Wilson intervals, NLL, Brier, ECE with a
//!   reliability table, breakdowns, position bias from option rotations, Agent4Rec yes/no.
//! - [`baselines`]: random, popularity, item-kNN, EASE and sequential, each a distribution over
//!   options.
//! - [`simulate`]: scoring a simulator through any `Backend` (direct or rationale mode).
//! - [`slate`]: the simulator facing arbitrary slates (the service, recommender-in-the-loop).
//! - [`hybrid`]: the LLM's distribution times a collaborative prior, fitted on validation.
//! - [`rating`]: rating prediction MAE/RMSE of the simulator beside bias baselines.
//! - [`evaluate`]: `metrics.json` and `predictions.jsonl`.
//! - [`report`]: a self-contained HTML page with inline SVG plots.

pub mod agent4rec;
pub mod baselines;
pub mod error;
pub mod evaluate;
pub mod hybrid;
pub mod linalg;
pub mod metrics;
pub mod rating;
pub mod report;
pub mod simulate;
pub mod slate;

pub use baselines::{BaselineConfig, BaselineKind, FittedBaselines};
pub use error::EvalError;
pub use evaluate::{MetricsFile, PredictionLine, PredictorKind, PredictorMetrics};
pub use metrics::{choice_metrics, ChoiceMetrics, ScenePrediction};
pub use simulate::{Mode, SimulatorConfig};
