//! Errors of evaluation; each names the file, line and field it is about where there is one.

use std::path::PathBuf;

use mirrorsim_data::DataError;
use mirrorsim_distill::DistillError;
use mirrorsim_llm::LlmError;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Distill(#[from] DistillError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Malformed {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("backend answered {got} results for {expected} requests")]
    BackendShape { expected: usize, got: usize },
}

impl EvalError {
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        EvalError::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }
}
