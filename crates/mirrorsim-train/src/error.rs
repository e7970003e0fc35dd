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
    #[error("{0}")]
    Data(#[from] DataError),
    #[error("{0}")]
    Llm(#[from] LlmError),
    #[error("model computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("cannot resume from {path}: {message}")]
    Resume { path: PathBuf, message: String },
}

impl TrainError {
    pub(crate) fn file(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        TrainError::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}
