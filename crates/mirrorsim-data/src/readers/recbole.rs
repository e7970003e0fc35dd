//! `recbole` reader (being written).

use std::path::Path;

use crate::catalog::Catalog;
use crate::error::{DataError, ReadOptions, ReadReport};

pub fn read(
    path: &Path,
    _options: &ReadOptions,
    _report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    Err(DataError::Invalid {
        path: path.to_owned(),
        message: "the recbole reader is not written yet".into(),
    })
}
