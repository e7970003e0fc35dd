//! Errors that name the file, line and field, and the `--skip-bad-rows` bookkeeping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: field `{field}`: {message} (use --skip-bad-rows to count and skip such rows)")]
    Malformed {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}:{line}: the file is not valid {expected}; {hint}")]
    Encoding {
        path: PathBuf,
        line: u64,
        expected: &'static str,
        hint: &'static str,
    },
    #[error("unknown dataset format `{format}`; known formats: {known}")]
    UnknownFormat { format: String, known: String },
    #[error("`{spec}` is not a dataset source; write it as FORMAT:PATH, e.g. recbole:data/ml-1m")]
    BadSpec { spec: String },
    #[error("{path} does not exist; check the path after the `FORMAT:` prefix")]
    MissingSource { path: PathBuf },
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} holds no interactions; a dataset needs at least one user–item interaction")]
    Empty { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

impl DataError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_owned(),
            }
        } else {
            DataError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }

    pub fn malformed(
        path: &Path,
        line: u64,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DataError::Malformed {
            path: path.to_owned(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }

    /// The short reason used as the key when a bad row is skipped instead of failing.
    pub fn skip_reason(&self) -> String {
        match self {
            DataError::Malformed { field, message, .. } => {
                // A message ending in "(got `VALUE`)" is keyed without the value, so that rows
                // with the same problem share one reason.
                let reason = message.split(" (got `").next().unwrap_or(message);
                format!("{field}: {reason}")
            }
            DataError::Encoding { expected, .. } => format!("not valid {expected}"),
            other => other.to_string(),
        }
    }
}

/// How readers treat their input.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Count and skip malformed rows instead of failing on the first one.
    pub skip_bad_rows: bool,
}

/// What a reader skipped (only with `skip_bad_rows`), keyed by file and reason.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReadReport {
    pub skipped: BTreeMap<String, u64>,
}

impl ReadReport {
    pub fn total_skipped(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Either records `err` as a skipped row (when skipping is on and the error is a
    /// row-level one) or hands it back to be returned.
    pub fn skip_or_fail(
        &mut self,
        options: &ReadOptions,
        file: &Path,
        err: DataError,
    ) -> Result<(), DataError> {
        let row_level = matches!(
            err,
            DataError::Malformed { .. } | DataError::Encoding { .. }
        );
        if options.skip_bad_rows && row_level {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            *self
                .skipped
                .entry(format!("{name}: {}", err.skip_reason()))
                .or_insert(0) += 1;
            Ok(())
        } else {
            Err(err)
        }
    }
}
