//! Atomic writers of the loop's output files.

use std::path::Path;

use mirrorsim_data::io::write_atomic;
use serde::Serialize;

use crate::error::LoopError;

/// Writes a pretty JSON file atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LoopError> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    Ok(())
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<(), LoopError> {
    write_atomic(path, |w| {
        for record in records {
            serde_json::to_writer(&mut *w, record).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes ranked lists as the CSV `user,item,rank,score` that `--recs` reads back (score
/// left empty), atomically.
pub fn write_recs_csv(path: &Path, lists: &[(String, Vec<String>)]) -> Result<(), LoopError> {
    write_atomic(path, |w| {
        let mut writer = csv::Writer::from_writer(w);
        writer.write_record(["user", "item", "rank", "score"])?;
        for (user, items) in lists {
            for (rank, item) in items.iter().enumerate() {
                writer.write_record([user.as_str(), item.as_str(), &(rank + 1).to_string(), ""])?;
            }
        }
        writer.flush()
    })?;
    Ok(())
}
