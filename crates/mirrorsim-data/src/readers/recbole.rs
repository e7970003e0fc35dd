//! `recbole` reader: RecBole atomic files.
//!
//! `PATH` is a folder holding `<name>.inter` (required) and optionally `<name>.item` and
//! `<name>.user`, each possibly gzipped (`.gz`). `<name>` is the folder's name; when no such
//! file exists and the folder holds exactly one `*.inter[.gz]`, that one is used. `PATH` may
//! also be the `.inter` file itself. Files are tab-separated UTF-8 with one header row of
//! `name:type` columns (`token`, `token_seq`, `float`, `float_seq`); CRLF line ends are fine.
//!
//! Column mapping:
//! - `.inter`: `user_id`, `item_id`, `timestamp` (required), `rating` (optional; an empty value
//!   is no rating), and a review column (`review`, `review_text`, `text`, `comment`,
//!   `content`) as review text. Other columns are type-checked and ignored.
//! - `.item`: a title column (`movie_title`, `title`, …) → title; a year column
//!   (`release_year`, `year`) → release time (Jan 1st, UTC) and attribute `year` (a value with
//!   no digit, such as ML-100K's `unkonwn`, is treated as missing); a genre column (`genre`,
//!   `genres`, `class`, `categories`) → attribute `genres`, joined with ", "; every other column
//!   → an attribute under its own name.
//! - `.user`: every column but the id → an attribute under its own name. When the file has both
//!   `age` and `occupation` columns and every value of both is a code of the ML-1M scheme
//!   (ages 1/18/25/35/45/50/56, occupations 0–20), both are decoded to words — this is how the
//!   RecBole copy of ML-1M stores them. ML-100K's `.user` (real ages, occupation words) does not
//!   fit the scheme and is kept as written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::catalog::{year_start_unix, Catalog, CatalogBuilder, Interaction, UserIdx};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::{find_maybe_gz, Encoding, Lines};
use crate::readers::dataset_name;
use crate::readers::movielens::{ml1m_age_label, ml1m_occupation_label};

/// The value types a RecBole header may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Token,
    TokenSeq,
    Float,
    FloatSeq,
}

impl FieldType {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "token" => Some(FieldType::Token),
            "token_seq" => Some(FieldType::TokenSeq),
            "float" => Some(FieldType::Float),
            "float_seq" => Some(FieldType::FloatSeq),
            _ => None,
        }
    }
}

/// One `name:type` column of a header row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub field_type: FieldType,
}

const USER_ID_COLUMNS: &[&str] = &["user_id", "uid", "userid", "user"];
const ITEM_ID_COLUMNS: &[&str] = &[
    "item_id",
    "iid",
    "itemid",
    "item",
    "movie_id",
    "business_id",
];
const RATING_COLUMNS: &[&str] = &["rating", "score", "stars"];
const TIMESTAMP_COLUMNS: &[&str] = &["timestamp", "time", "ts", "date"];
const REVIEW_COLUMNS: &[&str] = &["review", "review_text", "text", "comment", "content"];
const TITLE_COLUMNS: &[&str] = &[
    "movie_title",
    "title",
    "item_title",
    "book_title",
    "name",
    "item_name",
];
const YEAR_COLUMNS: &[&str] = &["release_year", "year"];
const GENRE_COLUMNS: &[&str] = &["genre", "genres", "class", "categories", "category"];

/// Reads a RecBole atomic-file dataset (see the module docs for the layout).
pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    let files = locate(path)?;
    let mut builder = CatalogBuilder::new(files.name.clone());
    if let Some(item_path) = &files.item {
        read_items(item_path, &mut builder, options, report)?;
    }
    if let Some(user_path) = &files.user {
        read_users(user_path, &mut builder, options, report)?;
    }
    read_interactions(&files.inter, &mut builder, options, report)?;
    Ok(builder.finish())
}

struct AtomicFiles {
    name: String,
    inter: PathBuf,
    item: Option<PathBuf>,
    user: Option<PathBuf>,
}

fn locate(path: &Path) -> Result<AtomicFiles, DataError> {
    let (folder, stem) = if path.is_file() {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = file_name
            .strip_suffix(".gz")
            .unwrap_or(&file_name)
            .strip_suffix(".inter")
            .ok_or_else(|| DataError::Invalid {
                path: path.to_owned(),
                message:
                    "a recbole source is a folder with <name>.inter, or the .inter file itself"
                        .into(),
            })?
            .to_owned();
        let folder = path.parent().map(Path::to_owned).unwrap_or_default();
        (folder, stem)
    } else {
        let folder_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = if find_maybe_gz(&path.join(format!("{folder_name}.inter"))).is_some() {
            folder_name
        } else {
            single_inter_stem(path)?
        };
        (path.to_owned(), stem)
    };
    let inter_path = folder.join(format!("{stem}.inter"));
    let inter = find_maybe_gz(&inter_path).ok_or(DataError::Missing { path: inter_path })?;
    let name = if path.is_file() {
        stem.clone()
    } else {
        dataset_name(path)
    };
    Ok(AtomicFiles {
        name,
        inter,
        item: find_maybe_gz(&folder.join(format!("{stem}.item"))),
        user: find_maybe_gz(&folder.join(format!("{stem}.user"))),
    })
}

/// The `<name>` of the only `<name>.inter[.gz]` in `folder`.
fn single_inter_stem(folder: &Path) -> Result<String, DataError> {
    let entries = std::fs::read_dir(folder).map_err(|e| DataError::io(folder, e))?;
    let mut stems: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".gz").unwrap_or(&name);
            name.strip_suffix(".inter").map(str::to_owned)
        })
        .collect();
    stems.sort();
    stems.dedup();
    match stems.len() {
        1 => Ok(stems.remove(0)),
        0 => {
            let folder_name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(DataError::Missing {
                path: folder.join(format!("{folder_name}.inter")),
            })
        }
        _ => Err(DataError::Invalid {
            path: folder.to_owned(),
            message: format!(
                "the folder holds several .inter files ({}); name the one to read, e.g. recbole:{}",
                stems.join(", "),
                folder.join(format!("{}.inter", stems[0])).display()
            ),
        }),
    }
}

/// Parses a header row of `name:type` columns.
pub fn parse_header(path: &Path, line_no: u64, line: &str) -> Result<Vec<Column>, DataError> {
    let mut columns = Vec::new();
    for raw in line.split('\t') {
        let raw = raw.trim();
        let (name, type_name) = raw.split_once(':').ok_or_else(|| {
            DataError::malformed(
                path,
                line_no,
                raw,
                "a RecBole header column is written `name:type` (e.g. `user_id:token`)",
            )
        })?;
        let field_type = FieldType::parse(type_name).ok_or_else(|| {
            DataError::malformed(
                path,
                line_no,
                name,
                format!(
                    "unknown type `{type_name}`; expected token, token_seq, float or float_seq"
                ),
            )
        })?;
        if name.is_empty() {
            return Err(DataError::malformed(
                path,
                line_no,
                raw,
                "the column has no name",
            ));
        }
        if columns.iter().any(|c: &Column| c.name == name) {
            return Err(DataError::malformed(
                path,
                line_no,
                name,
                "the column appears twice in the header",
            ));
        }
        columns.push(Column {
            name: name.to_owned(),
            field_type,
        });
    }
    Ok(columns)
}

fn find_column(columns: &[Column], candidates: &[&str]) -> Option<usize> {
    candidates
        .iter()
        .find_map(|wanted| columns.iter().position(|c| c.name == *wanted))
}

fn require_column(
    path: &Path,
    columns: &[Column],
    candidates: &[&str],
) -> Result<usize, DataError> {
    find_column(columns, candidates).ok_or_else(|| {
        DataError::malformed(
            path,
            1,
            candidates[0],
            format!(
                "the header has no `{}` column (found: {})",
                candidates[0],
                columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// Opens a file and reads its header row; `None` when the file is empty.
fn open_with_header(path: &Path) -> Result<(Lines, Vec<Column>), DataError> {
    let mut lines = Lines::open(path, Encoding::Utf8)?;
    loop {
        match lines.next_line_ref() {
            None => {
                return Err(DataError::malformed(
                    path,
                    1,
                    "header",
                    "the file is empty; expected a header row of `name:type` columns",
                ))
            }
            Some(Err(err)) => return Err(read_error(&lines, err)),
            Some(Ok((_, line))) if line.trim().is_empty() => continue,
            Some(Ok((line_no, line))) => {
                let columns = parse_header(path, line_no, line)?;
                return Ok((lines, columns));
            }
        }
    }
}

/// Turns an I/O failure in the middle of a file (e.g. a truncated gzip stream) into an error
/// that names the line; encoding errors pass through (they are row-level).
fn read_error(lines: &Lines, err: DataError) -> DataError {
    match err {
        DataError::Io { path, source } => DataError::Invalid {
            path,
            message: format!(
                "reading failed after line {}: {source} (is the file truncated?)",
                lines.line_no()
            ),
        },
        other => other,
    }
}

/// Checks that a value matches its declared type.
fn check_type(path: &Path, line_no: u64, column: &Column, value: &str) -> Result<(), DataError> {
    let bad = |what: &str| {
        DataError::malformed(
            path,
            line_no,
            &column.name,
            format!("not {what} (got `{value}`)"),
        )
    };
    match column.field_type {
        FieldType::Token | FieldType::TokenSeq => Ok(()),
        FieldType::Float => {
            if value.is_empty() || value.trim().parse::<f64>().is_ok() {
                Ok(())
            } else {
                Err(bad("a number, as the column is declared float"))
            }
        }
        FieldType::FloatSeq => {
            if value.split_whitespace().all(|v| v.parse::<f64>().is_ok()) {
                Ok(())
            } else {
                Err(bad("a space-separated list of numbers (float_seq)"))
            }
        }
    }
}

fn field_count_error(path: &Path, line_no: u64, columns: &[Column], found: usize) -> DataError {
    let field = if found < columns.len() {
        columns[found].name.clone()
    } else {
        format!("field {}", columns.len() + 1)
    };
    DataError::malformed(
        path,
        line_no,
        field,
        format!(
            "the row has {found} tab-separated fields, the header {}",
            columns.len()
        ),
    )
}

/// Splits a row into exactly `columns.len()` fields and checks their types.
fn split_row<'a>(
    path: &Path,
    line_no: u64,
    columns: &[Column],
    line: &'a str,
) -> Result<Vec<&'a str>, DataError> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != columns.len() {
        return Err(field_count_error(path, line_no, columns, fields.len()));
    }
    for (column, value) in columns.iter().zip(&fields) {
        check_type(path, line_no, column, value)?;
    }
    Ok(fields)
}

fn read_items(
    path: &Path,
    builder: &mut CatalogBuilder,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<(), DataError> {
    let (mut lines, columns) = open_with_header(path)?;
    let id_col = require_column(path, &columns, ITEM_ID_COLUMNS)?;
    let title_col = find_column(&columns, TITLE_COLUMNS).or_else(|| {
        columns
            .iter()
            .position(|c| c.name.contains("title") && c.field_type != FieldType::Float)
    });
    let year_col = find_column(&columns, YEAR_COLUMNS);
    let genre_col = find_column(&columns, GENRE_COLUMNS);
    while let Some(next) = lines.next_line_ref() {
        let (line_no, line) = match next {
            Ok(ok) => ok,
            Err(err) => {
                let err = read_error(&lines, err);
                report.skip_or_fail(options, path, err)?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let row = split_row(path, line_no, &columns, line).and_then(|fields| {
            let id = fields[id_col].trim();
            if id.is_empty() {
                return Err(DataError::malformed(
                    path,
                    line_no,
                    &columns[id_col].name,
                    "the item id is empty",
                ));
            }
            let year = match year_col {
                Some(col) => parse_year(path, line_no, &columns[col].name, fields[col])?,
                None => None,
            };
            Ok((fields, id, year))
        });
        let (fields, id, year) = match row {
            Ok(row) => row,
            Err(err) => {
                report.skip_or_fail(options, path, err)?;
                continue;
            }
        };
        let mut attributes = BTreeMap::new();
        for (col, (column, value)) in columns.iter().zip(&fields).enumerate() {
            let value = value.trim();
            if col == id_col || Some(col) == title_col || value.is_empty() {
                continue;
            }
            if Some(col) == year_col {
                if let Some(year) = year {
                    attributes.insert("year".to_owned(), year.to_string());
                }
            } else if Some(col) == genre_col {
                attributes.insert("genres".to_owned(), join_list(value));
            } else {
                attributes.insert(column.name.clone(), value.to_owned());
            }
        }
        let title = title_col
            .map(|col| fields[col].trim())
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        builder.add_item(id, title, attributes, year.map(year_start_unix));
    }
    Ok(())
}

/// A year value: `None` when empty or a placeholder without digits (ML-100K's `unkonwn`).
fn parse_year(
    path: &Path,
    line_no: u64,
    field: &str,
    value: &str,
) -> Result<Option<i32>, DataError> {
    let value = value.trim();
    if !value.bytes().any(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match value.parse::<f64>() {
        Ok(y) if y.fract() == 0.0 && (1000.0..=9999.0).contains(&y) => Ok(Some(y as i32)),
        _ => Err(DataError::malformed(
            path,
            line_no,
            field,
            format!("not a four-digit year (got `{value}`)"),
        )),
    }
}

/// A multi-valued attribute joined with ", ": split on `|` or `,` when present, else on spaces
/// (RecBole writes genres as a space-separated token sequence).
pub(crate) fn join_list(value: &str) -> String {
    let parts: Vec<&str> = if value.contains('|') {
        value.split('|').collect()
    } else if value.contains(',') {
        value.split(',').collect()
    } else {
        value.split_whitespace().collect()
    };
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_users(
    path: &Path,
    builder: &mut CatalogBuilder,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<(), DataError> {
    let (mut lines, columns) = open_with_header(path)?;
    let id_col = require_column(path, &columns, USER_ID_COLUMNS)?;
    let mut users: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    while let Some(next) = lines.next_line_ref() {
        let (line_no, line) = match next {
            Ok(ok) => ok,
            Err(err) => {
                let err = read_error(&lines, err);
                report.skip_or_fail(options, path, err)?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let fields = match split_row(path, line_no, &columns, line).and_then(|fields| {
            if fields[id_col].trim().is_empty() {
                Err(DataError::malformed(
                    path,
                    line_no,
                    &columns[id_col].name,
                    "the user id is empty",
                ))
            } else {
                Ok(fields)
            }
        }) {
            Ok(fields) => fields,
            Err(err) => {
                report.skip_or_fail(options, path, err)?;
                continue;
            }
        };
        let attributes = columns
            .iter()
            .zip(&fields)
            .enumerate()
            .filter(|(col, (_, value))| *col != id_col && !value.trim().is_empty())
            .map(|(_, (column, value))| (column.name.clone(), value.trim().to_owned()))
            .collect();
        users.push((fields[id_col].trim().to_owned(), attributes));
    }
    if uses_ml1m_codes(&users) {
        for (_, attributes) in &mut users {
            decode_ml1m_codes(attributes);
        }
    }
    for (id, attributes) in users {
        builder.add_user(&id, attributes);
    }
    Ok(())
}

fn code_of(value: &str) -> Option<u32> {
    let number: f64 = value.parse().ok()?;
    (number.fract() == 0.0 && (0.0..=100.0).contains(&number)).then_some(number as u32)
}

/// True when both `age` and `occupation` exist and every value is an ML-1M code.
fn uses_ml1m_codes(users: &[(String, BTreeMap<String, String>)]) -> bool {
    let mut seen_age = false;
    let mut seen_occupation = false;
    for (_, attributes) in users {
        if let Some(age) = attributes.get("age") {
            seen_age = true;
            if code_of(age).and_then(ml1m_age_label).is_none() {
                return false;
            }
        }
        if let Some(occupation) = attributes.get("occupation") {
            seen_occupation = true;
            if code_of(occupation)
                .and_then(ml1m_occupation_label)
                .is_none()
            {
                return false;
            }
        }
    }
    seen_age && seen_occupation
}

fn decode_ml1m_codes(attributes: &mut BTreeMap<String, String>) {
    if let Some(age) = attributes.get_mut("age") {
        if let Some(label) = code_of(age).and_then(ml1m_age_label) {
            *age = label.to_owned();
        }
    }
    if let Some(occupation) = attributes.get_mut("occupation") {
        if let Some(label) = code_of(occupation).and_then(ml1m_occupation_label) {
            *occupation = label.to_owned();
        }
    }
}

/// What an `.inter` column is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InterRole {
    User,
    Item,
    Rating,
    Timestamp,
    Review,
    Other,
}

fn read_interactions(
    path: &Path,
    builder: &mut CatalogBuilder,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<(), DataError> {
    let (mut lines, columns) = open_with_header(path)?;
    let user_col = require_column(path, &columns, USER_ID_COLUMNS)?;
    let item_col = require_column(path, &columns, ITEM_ID_COLUMNS)?;
    let timestamp_col = require_column(path, &columns, TIMESTAMP_COLUMNS)?;
    let rating_col = find_column(&columns, RATING_COLUMNS);
    // Only a column named as a review: a guessed `token_seq` column could be an id list.
    let review_col = find_column(&columns, REVIEW_COLUMNS);
    let roles: Vec<InterRole> = (0..columns.len())
        .map(|col| {
            if col == user_col {
                InterRole::User
            } else if col == item_col {
                InterRole::Item
            } else if col == timestamp_col {
                InterRole::Timestamp
            } else if Some(col) == rating_col {
                InterRole::Rating
            } else if Some(col) == review_col {
                InterRole::Review
            } else {
                InterRole::Other
            }
        })
        .collect();

    // Rows of one user usually come together: remember the last one to skip a hash lookup.
    let mut last_user: (String, UserIdx) = (String::new(), 0);
    while let Some(next) = lines.next_line_ref() {
        let (line_no, line) = match next {
            Ok(ok) => ok,
            Err(err) => {
                let err = read_error(&lines, err);
                report.skip_or_fail(options, path, err)?;
                continue;
            }
        };
        if line.is_empty() {
            continue;
        }
        let row = parse_inter_row(path, line_no, &columns, &roles, line);
        let row = match row {
            Ok(row) => row,
            Err(err) => {
                report.skip_or_fail(options, path, err)?;
                continue;
            }
        };
        let user = if !last_user.0.is_empty() && last_user.0 == row.user {
            last_user.1
        } else {
            let idx = builder.user(row.user);
            last_user.0.clear();
            last_user.0.push_str(row.user);
            last_user.1 = idx;
            idx
        };
        let item = builder.item(row.item);
        builder.push_interaction(Interaction {
            user,
            item,
            timestamp: row.timestamp,
            rating: row.rating,
            review: row.review.map(Box::from),
            impressions: None,
        });
    }
    Ok(())
}

struct InterRow<'a> {
    user: &'a str,
    item: &'a str,
    timestamp: i64,
    rating: Option<f32>,
    review: Option<&'a str>,
}

fn parse_inter_row<'a>(
    path: &Path,
    line_no: u64,
    columns: &[Column],
    roles: &[InterRole],
    line: &'a str,
) -> Result<InterRow<'a>, DataError> {
    let mut row = InterRow {
        user: "",
        item: "",
        timestamp: 0,
        rating: None,
        review: None,
    };
    let mut count = 0;
    for (col, value) in line.split('\t').enumerate() {
        count += 1;
        let Some(role) = roles.get(col) else {
            continue;
        };
        let column = &columns[col];
        match role {
            InterRole::User | InterRole::Item => {
                let value = value.trim();
                if value.is_empty() {
                    return Err(DataError::malformed(
                        path,
                        line_no,
                        &column.name,
                        "the id is empty",
                    ));
                }
                if *role == InterRole::User {
                    row.user = value;
                } else {
                    row.item = value;
                }
            }
            InterRole::Timestamp => {
                row.timestamp = parse_timestamp(value).ok_or_else(|| {
                    DataError::malformed(
                        path,
                        line_no,
                        &column.name,
                        format!("not a Unix timestamp in seconds (got `{value}`)"),
                    )
                })?;
            }
            InterRole::Rating => {
                let value = value.trim();
                if !value.is_empty() {
                    match value.parse::<f32>() {
                        Ok(r) if r.is_finite() => row.rating = Some(r),
                        _ => {
                            return Err(DataError::malformed(
                                path,
                                line_no,
                                &column.name,
                                format!("not a number (got `{value}`)"),
                            ))
                        }
                    }
                }
            }
            InterRole::Review => {
                check_type(path, line_no, column, value)?;
                if !value.trim().is_empty() {
                    row.review = Some(value.trim());
                }
            }
            InterRole::Other => check_type(path, line_no, column, value)?,
        }
    }
    if count != columns.len() {
        return Err(field_count_error(path, line_no, columns, count));
    }
    Ok(row)
}

/// Unix seconds from an integer or a float value (RecBole declares timestamps `float`).
pub(crate) fn parse_timestamp(value: &str) -> Option<i64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<i64>() {
        return Some(seconds);
    }
    let seconds: f64 = value.parse().ok()?;
    (seconds.is_finite() && seconds.abs() < 1e15).then(|| seconds.floor() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_types_parse_and_unknown_types_fail() {
        let p = Path::new("x.inter");
        let cols =
            parse_header(p, 1, "user_id:token\titem_id:token\tr:float\tv:float_seq").unwrap();
        assert_eq!(cols.len(), 4);
        assert_eq!(cols[3].field_type, FieldType::FloatSeq);
        let err = parse_header(p, 1, "user_id:token\titem_id:int").unwrap_err();
        assert!(matches!(err, DataError::Malformed { ref field, .. } if field == "item_id"));
    }

    #[test]
    fn lists_join_with_commas_and_timestamps_accept_floats() {
        assert_eq!(
            join_list("Animation Children's Comedy"),
            "Animation, Children's, Comedy"
        );
        assert_eq!(join_list("Sci-Fi|Film-Noir"), "Sci-Fi, Film-Noir");
        assert_eq!(parse_timestamp("978300760"), Some(978_300_760));
        assert_eq!(parse_timestamp("978300760.0"), Some(978_300_760));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
