//! Errors of the distillation stages; each names the file, line and field it is about.

use std::path::PathBuf;

use mirrorsim_data::DataError;
use mirrorsim_llm::LlmError;

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error("{path}:{line}: field `{field}`: {message}")]
    Malformed {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },
    #[error("run journal {path}: {message}")]
    Journal { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("backend answered {got} results for {expected} requests")]
    BackendShape { expected: usize, got: usize },
}
