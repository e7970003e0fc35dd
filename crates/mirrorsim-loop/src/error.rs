//! Errors of the recommender loop; each names the file, line and field it is about where there
//! is one.

use std::path::PathBuf;

use mirrorsim_data::DataError;
use mirrorsim_eval::EvalError;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Eval(#[from] EvalError),
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
}

impl LoopError {
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        LoopError::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }

    pub fn malformed(
        path: impl Into<PathBuf>,
        line: u64,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        LoopError::Malformed {
            path: path.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }
}
