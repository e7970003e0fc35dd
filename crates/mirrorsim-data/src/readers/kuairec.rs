//! `kuairec` reader: KuaiRec 2.0 (Kuaishou short videos). PATH is its `data` folder — the
//! interactions come from `big_matrix.csv`, or `small_matrix.csv` when there is no big one —
//! or one of the two matrix files itself; metadata is read from the same folder:
//! `kuairec_caption_category.csv` (titles, categories, topic tags), `item_categories.csv`
//! (feature ids), `item_daily_features.csv` (upload dates) and `user_features.csv`.
//!
//! Each matrix row (a play of `video_id` by `user_id`) is one interaction at `timestamp`
//! (falling back to `time`, then `date`); its rating is `watch_ratio`, the played share of the
//! video (above 1 when it was replayed). `time`, `date` and `upload_dt` are Beijing local
//! time (UTC+8, as `timestamp` shows) and are converted to UTC.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::fields::{self, cell, CsvTable};
use super::pyliteral;
use crate::catalog::{Catalog, CatalogBuilder, Interaction};
use crate::error::{DataError, ReadOptions, ReadReport};

/// Beijing time (UTC+8), in which KuaiRec writes its dates and clock times.
const LOCAL_OFFSET: i64 = 8 * 3600;

const USER_ATTRIBUTES: &[&str] = &[
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
];
const CATEGORY_LEVELS: &[&str] = &[
    "first_level_category_name",
    "second_level_category_name",
    "third_level_category_name",
];

pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    let (dir, matrix) = locate(path)?;
    let mut builder = CatalogBuilder::new(super::dataset_name(path));

    if let Some(file) = fields::find_in(&dir, &["kuairec_caption_category.csv"]) {
        read_captions(&file, options, report, &mut builder)?;
    }
    if let Some(file) = fields::find_in(&dir, &["item_categories.csv"]) {
        let table = CsvTable::open(&file, b',', true)?;
        let (id_col, feat_col) = (table.require("video_id")?, table.require("feat")?);
        table.for_each(options, report, |line, record| {
            let id = required(&file, line, record, id_col, "video_id")?;
            let feat = list_literal(&file, line, cell(record, feat_col), "feat")?;
            let mut attributes = BTreeMap::new();
            if let Some(feat) = feat {
                attributes.insert("category_ids".to_owned(), feat);
            }
            builder.add_item(id, None, attributes, None);
            Ok(())
        })?;
    }
    if let Some(file) = fields::find_in(&dir, &["item_daily_features.csv"]) {
        read_upload_dates(&file, options, report, &mut builder)?;
    }
    if let Some(file) = fields::find_in(&dir, &["user_features.csv"]) {
        let table = CsvTable::open(&file, b',', true)?;
        let id_col = table.require("user_id")?;
        let columns: Vec<(&str, usize)> = USER_ATTRIBUTES
            .iter()
            .filter_map(|name| Some((*name, table.column(name)?)))
            .collect();
        table.for_each(options, report, |line, record| {
            let id = required(&file, line, record, id_col, "user_id")?;
            let attributes = columns
                .iter()
                .filter(|(_, col)| !cell(record, *col).is_empty())
                .map(|(name, col)| ((*name).to_owned(), cell(record, *col).to_owned()))
                .collect();
            builder.add_user(id, attributes);
            Ok(())
        })?;
    }

    let table = CsvTable::open(&matrix, b',', true)?;
    let user_col = table.require("user_id")?;
    let item_col = table.require("video_id")?;
    let ratio_col = table.column("watch_ratio");
    let time_cols = (
        table.column("timestamp"),
        table.column("time"),
        table.column("date"),
    );
    if time_cols == (None, None, None) {
        return Err(DataError::Invalid {
            path: matrix,
            message: "the header has none of the time columns `timestamp`, `time`, `date`".into(),
        });
    }
    table.for_each(options, report, |line, record| {
        let user = required(&matrix, line, record, user_col, "user_id")?;
        let item = required(&matrix, line, record, item_col, "video_id")?;
        let timestamp = play_time(&matrix, line, record, time_cols)?;
        let rating = match ratio_col.map(|col| cell(record, col)) {
            None | Some("") => None,
            Some(text) => match text.parse::<f32>() {
                Ok(ratio) if ratio.is_finite() && ratio >= 0.0 => Some(ratio),
                _ => {
                    return Err(DataError::malformed(
                        &matrix,
                        line,
                        "watch_ratio",
                        "not a non-negative number",
                    ))
                }
            },
        };
        let user = builder.user(user);
        let item = builder.item(item);
        builder.push_interaction(Interaction {
            user,
            item,
            timestamp,
            rating,
            review: None,
            impressions: None,
        });
        Ok(())
    })?;
    Ok(builder.finish())
}

/// The folder of the metadata files and the matrix file to read.
fn locate(path: &Path) -> Result<(PathBuf, PathBuf), DataError> {
    if path.is_dir() {
        let matrix = fields::require_in(path, &["big_matrix.csv", "small_matrix.csv"], "kuairec")?;
        return Ok((path.to_owned(), matrix));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    Ok((dir, path.to_owned()))
}

fn required<'r>(
    path: &Path,
    line: u64,
    record: &'r csv::StringRecord,
    col: usize,
    field: &str,
) -> Result<&'r str, DataError> {
    let value = cell(record, col);
    if value.is_empty() {
        return Err(DataError::malformed(path, line, field, "empty"));
    }
    Ok(value)
}

/// Unix seconds of a play: `timestamp` (seconds, may be fractional), else `time`
/// (`2020-07-05 05:27:48.378`), else `date` (`20200705`). Empty and `NaN` cells are skipped.
fn play_time(
    path: &Path,
    line: u64,
    record: &csv::StringRecord,
    (timestamp, time, date): (Option<usize>, Option<usize>, Option<usize>),
) -> Result<i64, DataError> {
    let present = |col: Option<usize>| {
        col.map(|c| cell(record, c))
            .filter(|text| !text.is_empty() && !text.eq_ignore_ascii_case("nan"))
    };
    if let Some(text) = present(timestamp) {
        return match text.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() => Ok(seconds.floor() as i64),
            _ => Err(DataError::malformed(
                path,
                line,
                "timestamp",
                "not Unix seconds",
            )),
        };
    }
    if let Some(text) = present(time) {
        return fields::parse_iso8601(text)
            .map(|t| t - LOCAL_OFFSET)
            .ok_or_else(|| {
                DataError::malformed(
                    path,
                    line,
                    "time",
                    "not a time like `2020-07-05 05:27:48.378`",
                )
            });
    }
    if let Some(text) = present(date) {
        let text = text.split('.').next().unwrap_or(text);
        return fields::parse_pattern(text, "%Y%m%d")
            .map(|t| t - LOCAL_OFFSET)
            .ok_or_else(|| DataError::malformed(path, line, "date", "not a date like `20200705`"));
    }
    Err(DataError::malformed(
        path,
        line,
        "timestamp",
        "empty, and so are `time` and `date`",
    ))
}

/// A list-literal cell such as `[8, 27]` or `['dance', 'music']`, joined with ", ".
fn list_literal(
    path: &Path,
    line: u64,
    text: &str,
    field: &str,
) -> Result<Option<String>, DataError> {
    if text.is_empty() || text.eq_ignore_ascii_case("nan") {
        return Ok(None);
    }
    match pyliteral::parse(text) {
        Ok(value @ Value::Array(_)) => Ok(fields::join_texts(&value)),
        Ok(_) => Err(DataError::malformed(path, line, field, "not a list")),
        Err(e) => Err(DataError::malformed(
            path,
            line,
            field,
            format!(
                "not a list literal ({})",
                e.split(" at column ").next().unwrap_or(&e)
            ),
        )),
    }
}

fn read_captions(
    file: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
    builder: &mut CatalogBuilder,
) -> Result<(), DataError> {
    let table = CsvTable::open(file, b',', true)?;
    let id_col = table.require("video_id")?;
    let caption_col = table.column("caption");
    let cover_col = table.column("manual_cover_text");
    let tag_col = table.column("topic_tag");
    let level_cols: Vec<usize> = CATEGORY_LEVELS
        .iter()
        .filter_map(|name| table.column(name))
        .collect();
    let known =
        |text: &str| !text.is_empty() && text != "UNKNOWN" && !text.eq_ignore_ascii_case("nan");
    table.for_each(options, report, |line, record| {
        let id = required(file, line, record, id_col, "video_id")?;
        let tags = match tag_col {
            Some(col) => list_literal(file, line, cell(record, col), "topic_tag")?,
            None => None,
        };
        let title = [caption_col, cover_col]
            .into_iter()
            .flatten()
            .map(|col| cell(record, col))
            .find(|text| known(text))
            .map(str::to_owned);
        let category: Vec<&str> = level_cols
            .iter()
            .map(|&col| cell(record, col))
            .filter(|text| known(text))
            .collect();
        let mut attributes = BTreeMap::new();
        if !category.is_empty() {
            attributes.insert("category".to_owned(), category.join(" / "));
        }
        if let Some(tags) = tags {
            attributes.insert("topic_tags".to_owned(), tags);
        }
        builder.add_item(id, title, attributes, None);
        Ok(())
    })
}

/// Release times from `upload_dt` of the daily features (the earliest per video).
fn read_upload_dates(
    file: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
    builder: &mut CatalogBuilder,
) -> Result<(), DataError> {
    let table = CsvTable::open(file, b',', true)?;
    let id_col = table.require("video_id")?;
    let Some(upload_col) = table.column("upload_dt") else {
        return Ok(());
    };
    let mut uploads: HashMap<String, i64> = HashMap::new();
    table.for_each(options, report, |line, record| {
        let id = required(file, line, record, id_col, "video_id")?;
        let text = cell(record, upload_col);
        if text.is_empty() || text.eq_ignore_ascii_case("nan") {
            return Ok(());
        }
        let time = fields::parse_iso8601(text)
            .map(|t| t - LOCAL_OFFSET)
            .ok_or_else(|| {
                DataError::malformed(file, line, "upload_dt", "not a date like `2020-03-30`")
            })?;
        uploads
            .entry(id.to_owned())
            .and_modify(|t| *t = (*t).min(time))
            .or_insert(time);
        Ok(())
    })?;
    let mut uploads: Vec<_> = uploads.into_iter().collect();
    uploads.sort_unstable();
    for (id, time) in uploads {
        builder.add_item(&id, None, BTreeMap::new(), Some(time));
    }
    Ok(())
}
