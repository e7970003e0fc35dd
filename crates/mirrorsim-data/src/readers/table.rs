//! `table` reader: any CSV, TSV or JSON-lines files (optionally gzipped), mapped to the catalog
//! by a TOML file — PATH is that mapping file. See docs/datasets.md for its keys; in short:
//!
//! ```toml
//! name = "shop"                       # optional; default: the mapping file's stem
//! [interactions]
//! path = "events.csv"                 # relative to the mapping file
//! user = "uid"
//! item = "iid"
//! timestamp = "ts"
//! timestamp_format = "unix"           # unix | unix_ms | iso8601 | year | a %Y%m%d%H%M%S pattern
//! rating = "stars"                    # optional
//! review = "text"                     # optional
//! impressions = "shown"               # optional: a list (JSON) or separator-joined ids
//! impressions_separator = " "         # optional, default one space
//! [items]                             # optional
//! path = "items.jsonl"
//! id = "iid"
//! title = "name"                      # optional
//! release_time = "released"           # optional
//! release_time_format = "year"        # optional, default unix
//! attributes = ["genre", "brand"]
//! [users]                             # optional
//! path = "users.tsv"
//! id = "uid"
//! attributes = ["age"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::fields::{self, Record};
use crate::catalog::{year_start_unix, Catalog, CatalogBuilder, Interaction, ItemIdx};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::Encoding;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapping {
    name: Option<String>,
    interactions: InteractionsMapping,
    items: Option<ItemsMapping>,
    users: Option<UsersMapping>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InteractionsMapping {
    path: PathBuf,
    user: String,
    item: String,
    timestamp: String,
    #[serde(default = "unix")]
    timestamp_format: String,
    rating: Option<String>,
    review: Option<String>,
    impressions: Option<String>,
    #[serde(default = "space")]
    impressions_separator: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsMapping {
    path: PathBuf,
    id: String,
    title: Option<String>,
    release_time: Option<String>,
    #[serde(default = "unix")]
    release_time_format: String,
    #[serde(default)]
    attributes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersMapping {
    path: PathBuf,
    id: String,
    #[serde(default)]
    attributes: Vec<String>,
}

fn unix() -> String {
    "unix".to_owned()
}

fn space() -> String {
    " ".to_owned()
}

/// How a time column is written.
#[derive(Debug, Clone, PartialEq)]
enum TimeFormat {
    Unix,
    UnixMillis,
    Iso8601,
    Year,
    Pattern(String),
}

impl TimeFormat {
    fn parse(text: &str, key: &str, mapping: &Path) -> Result<Self, DataError> {
        Ok(match text {
            "unix" => TimeFormat::Unix,
            "unix_ms" => TimeFormat::UnixMillis,
            "iso8601" => TimeFormat::Iso8601,
            "year" => TimeFormat::Year,
            pattern if fields::pattern_is_supported(pattern) => {
                TimeFormat::Pattern(pattern.to_owned())
            }
            other => {
                return Err(DataError::Invalid {
                    path: mapping.to_owned(),
                    message: format!(
                        "{key} `{other}` is not supported; use unix, unix_ms, iso8601, year, \
                         or a pattern made of %Y %m %d %H %M %S and literal text"
                    ),
                })
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            TimeFormat::Unix => "Unix seconds".into(),
            TimeFormat::UnixMillis => "Unix milliseconds".into(),
            TimeFormat::Iso8601 => "an ISO 8601 date or time".into(),
            TimeFormat::Year => "a year".into(),
            TimeFormat::Pattern(p) => format!("a time written as `{p}`"),
        }
    }

    fn to_unix(&self, row: &Record, column: &str) -> Result<i64, DataError> {
        let value = row.get(column);
        let text = match value {
            None => return Err(row.malformed(column, "missing")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(row.malformed(column, "empty"))
            }
            Some(Value::String(s)) => s.trim().to_owned(),
            Some(other) => other.to_string(),
        };
        let parsed = match self {
            TimeFormat::Unix => text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| v.floor() as i64),
            TimeFormat::UnixMillis => text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| (v / 1000.0).floor() as i64),
            TimeFormat::Iso8601 => fields::parse_iso8601(&text),
            TimeFormat::Year => text
                .parse::<i32>()
                .ok()
                .filter(|y| (1..=9999).contains(y))
                .map(year_start_unix),
            TimeFormat::Pattern(pattern) => fields::parse_pattern(&text, pattern),
        };
        parsed.ok_or_else(|| row.malformed(column, format!("not {}", self.describe())))
    }
}

pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    let mapping = load_mapping(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let name = mapping
        .name
        .clone()
        .unwrap_or_else(|| super::dataset_name(path));
    let mut builder = CatalogBuilder::new(name);

    if let Some(items) = &mapping.items {
        let release_format =
            TimeFormat::parse(&items.release_time_format, "release_time_format", path)?;
        let file = table_file(base, &items.path, path)?;
        let mut required = vec![items.id.as_str()];
        required.extend(items.title.as_deref());
        required.extend(items.release_time.as_deref());
        required.extend(items.attributes.iter().map(String::as_str));
        for_each_record(&file, &required, options, report, |row| {
            let id = row.id(&items.id)?;
            let title = items.title.as_deref().and_then(|c| row.opt_text(c));
            let release_time = match items.release_time.as_deref() {
                Some(column) if row.opt_text(column).is_some() => {
                    Some(release_format.to_unix(row, column)?)
                }
                _ => None,
            };
            let attributes = attributes_of(row, &items.attributes);
            builder.add_item(&id, title, attributes, release_time);
            Ok(())
        })?;
    }
    if let Some(users) = &mapping.users {
        let file = table_file(base, &users.path, path)?;
        let mut required = vec![users.id.as_str()];
        required.extend(users.attributes.iter().map(String::as_str));
        for_each_record(&file, &required, options, report, |row| {
            let id = row.id(&users.id)?;
            let attributes = attributes_of(row, &users.attributes);
            builder.add_user(&id, attributes);
            Ok(())
        })?;
    }

    let events = &mapping.interactions;
    let time_format = TimeFormat::parse(&events.timestamp_format, "timestamp_format", path)?;
    let file = table_file(base, &events.path, path)?;
    let mut required = vec![
        events.user.as_str(),
        events.item.as_str(),
        events.timestamp.as_str(),
    ];
    required.extend(events.rating.as_deref());
    required.extend(events.review.as_deref());
    required.extend(events.impressions.as_deref());
    for_each_record(&file, &required, options, report, |row| {
        let user = row.id(&events.user)?;
        let item = row.id(&events.item)?;
        let timestamp = time_format.to_unix(row, &events.timestamp)?;
        let rating = match events.rating.as_deref() {
            Some(column) => row.opt_number(column)?.map(|r| r as f32),
            None => None,
        };
        let review = events.review.as_deref().and_then(|c| row.opt_text(c));
        let shown = match events.impressions.as_deref() {
            Some(column) => impression_ids(row, column, &events.impressions_separator)?,
            None => None,
        };
        let user = builder.user(&user);
        let item = builder.item(&item);
        let impressions = shown.map(|ids| {
            ids.iter()
                .map(|id| builder.item(id))
                .collect::<Vec<ItemIdx>>()
                .into_boxed_slice()
        });
        builder.push_interaction(Interaction {
            user,
            item,
            timestamp,
            rating,
            review: review.map(String::into_boxed_str),
            impressions,
        });
        Ok(())
    })?;
    Ok(builder.finish())
}

fn load_mapping(path: &Path) -> Result<Mapping, DataError> {
    if path.is_dir() {
        return Err(DataError::Invalid {
            path: path.to_owned(),
            message: "the table format expects a TOML mapping file, not a folder".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            DataError::Invalid {
                path: path.to_owned(),
                message: "the mapping file is not valid UTF-8".into(),
            }
        } else {
            DataError::io(path, e)
        }
    })?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().to_owned();
        DataError::Invalid {
            path: path.to_owned(),
            message: match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            },
        }
    })
}

/// A data file named in the mapping, relative to the mapping file's folder.
fn table_file(base: &Path, relative: &Path, mapping: &Path) -> Result<PathBuf, DataError> {
    let file = base.join(relative);
    if !file.exists() {
        return Err(DataError::Invalid {
            path: mapping.to_owned(),
            message: format!(
                "the data file {} does not exist (paths are relative to the mapping file)",
                file.display()
            ),
        });
    }
    Ok(file)
}

fn attributes_of(row: &Record, columns: &[String]) -> BTreeMap<String, String> {
    columns
        .iter()
        .filter_map(|c| Some((c.clone(), row.joined_list(c)?)))
        .collect()
}

fn impression_ids(
    row: &Record,
    column: &str,
    separator: &str,
) -> Result<Option<Vec<String>>, DataError> {
    let ids: Vec<String> = match row.get(column) {
        None => return Ok(None),
        Some(Value::Array(values)) => {
            let mut ids = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    Value::String(s) if !s.trim().is_empty() => ids.push(s.trim().to_owned()),
                    Value::Number(n) => ids.push(n.to_string()),
                    _ => {
                        return Err(row.malformed(column, "holds something that is not an item id"))
                    }
                }
            }
            ids
        }
        Some(Value::String(s)) => s
            .split(separator)
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(_) => return Err(row.malformed(column, "expected a list of item ids")),
    };
    Ok((!ids.is_empty()).then_some(ids))
}

/// Calls `row` for every record of a CSV, TSV or JSON-lines file. CSV/TSV headers must name
/// every column in `required`; JSON lines may leave optional fields out.
fn for_each_record(
    file: &Path,
    required: &[&str],
    options: &ReadOptions,
    report: &mut ReadReport,
    mut row: impl FnMut(&Record) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let name = fields::plain_name(file);
    let delimited = if name.ends_with(".csv") {
        Some((b',', true))
    } else if name.ends_with(".tsv") {
        Some((b'\t', false))
    } else if name.ends_with(".jsonl") || name.ends_with(".json") {
        None
    } else {
        return Err(DataError::Invalid {
            path: file.to_owned(),
            message: "the table format reads .csv, .tsv and .jsonl files (optionally .gz)".into(),
        });
    };
    match delimited {
        Some((delimiter, quoting)) => {
            let table = fields::CsvTable::open(file, delimiter, quoting)?;
            let mut columns: Vec<(String, usize)> = Vec::new();
            for column in required {
                columns.push(((*column).to_owned(), table.require(column)?));
            }
            columns.sort();
            columns.dedup();
            table.for_each(options, report, |line, record| {
                let object: Map<String, Value> = columns
                    .iter()
                    .map(|(name, col)| {
                        (
                            name.clone(),
                            Value::String(fields::cell(record, *col).to_owned()),
                        )
                    })
                    .collect();
                row(&Record::new(file, line, &object))
            })
        }
        None => fields::for_each_line(file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(file, line, text)?;
            row(&Record::new(file, line, &object))
        }),
    }
}
