use std::path::PathBuf;

use mirrorsim_data::DataError;
use mirrorsim_llm::LlmError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}:{line}: field `{field}`: {message}")]
    BadExample {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    // Not a `#[from]`: that would also make the candle error this one's source, and the CLI,
    // which prints the whole chain, would show its message twice.
    #[error("model computation failed: {0}")]
    Compute(candle_core::Error),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("cannot resume from {path}: {message}")]
    Resume { path: PathBuf, message: String },
}

impl From<candle_core::Error> for TrainError {
    fn from(error: candle_core::Error) -> Self {
        TrainError::Compute(error)
    }
}

impl TrainError {
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        TrainError::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}
