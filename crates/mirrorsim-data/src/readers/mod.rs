//! One reader per source format, selected by a `FORMAT:PATH` spec.

use std::path::{Path, PathBuf};

use crate::catalog::Catalog;
use crate::error::{DataError, ReadOptions, ReadReport};

pub mod amazon2023;
mod fields;
pub mod goodreads;
pub mod kuairec;
pub mod lastfm;
pub mod mind;
pub mod movielens;
mod pyliteral;
pub mod recbole;
pub mod steam;
pub mod table;

/// The formats `FORMAT:PATH` accepts, in the order `--help` lists them.
pub const FORMATS: &[&str] = &[
    "recbole",
    "movielens",
    "amazon2023",
    "mind",
    "steam",
    "goodreads",
    "kuairec",
    "lastfm",
    "table",
];

/// A parsed `FORMAT:PATH` dataset source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub format: String,
    pub path: PathBuf,
}

impl std::str::FromStr for SourceSpec {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (format, path) = spec.split_once(':').ok_or_else(|| DataError::BadSpec {
            spec: spec.to_owned(),
        })?;
        if path.is_empty() {
            return Err(DataError::BadSpec {
                spec: spec.to_owned(),
            });
        }
        if !FORMATS.contains(&format) {
            return Err(DataError::UnknownFormat {
                format: format.to_owned(),
                known: FORMATS.join(", "),
            });
        }
        Ok(SourceSpec {
            format: format.to_owned(),
            path: PathBuf::from(path),
        })
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.format, self.path.display())
    }
}

/// Reads a dataset given as `FORMAT:PATH` into a [`Catalog`].
pub fn read_source(
    spec: &SourceSpec,
    options: &ReadOptions,
) -> Result<(Catalog, ReadReport), DataError> {
    let path = spec.path.as_path();
    if !path.exists() {
        return Err(DataError::MissingSource {
            path: path.to_owned(),
        });
    }
    let mut report = ReadReport::default();
    let catalog = match spec.format.as_str() {
        "recbole" => recbole::read(path, options, &mut report)?,
        "movielens" => movielens::read(path, options, &mut report)?,
        "amazon2023" => amazon2023::read(path, options, &mut report)?,
        "mind" => mind::read(path, options, &mut report)?,
        "steam" => steam::read(path, options, &mut report)?,
        "goodreads" => goodreads::read(path, options, &mut report)?,
        "kuairec" => kuairec::read(path, options, &mut report)?,
        "lastfm" => lastfm::read(path, options, &mut report)?,
        "table" => table::read(path, options, &mut report)?,
        other => {
            return Err(DataError::UnknownFormat {
                format: other.to_owned(),
                known: FORMATS.join(", "),
            })
        }
    };
    if catalog.interactions.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok((catalog, report))
}

/// The dataset name recorded in scenes: the folder or file stem of `path`.
pub fn dataset_name(path: &Path) -> String {
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".to_owned());
    stem.split('.').next().unwrap_or(&stem).to_owned()
}
