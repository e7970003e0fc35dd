//! `steam` reader: the Steam datasets of Kang & McAuley (UCSD). PATH is a folder holding
//! `australian_user_reviews.json` and/or `steam_reviews.json`, and optionally
//! `steam_games.json` (each may be gzipped). Every line is one Python dict literal (single
//! quotes, `True`/`False`/`None`), not JSON.
//!
//! Each review is one interaction at its posting date (midnight UTC): in
//! `australian_user_reviews` a user's `reviews` list holds `item_id`, `posted`
//! (`Posted November 5, 2011.`), `recommend` (rating 1 = recommended, 0 = not) and `review`;
//! in `steam_reviews` each line is one review with `user_id` (or `username`), `product_id`,
//! `date` (`2017-12-17`) and `text`. Reviews posted in the crawl year are written without a
//! year (`Posted July 15.`); they cannot be placed in time and are left out, counted in the
//! read report.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::fields::{self, Record};
use super::pyliteral;
use crate::catalog::{Catalog, CatalogBuilder, Interaction};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::Encoding;

const USER_REVIEWS: &str = "australian_user_reviews.json";
const REVIEWS: &str = "steam_reviews.json";
const GAMES: &str = "steam_games.json";
const TAGS_KEPT: usize = 8;

pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let user_reviews = fields::find_in(dir, &[USER_REVIEWS]);
    let reviews = fields::find_in(dir, &[REVIEWS]);
    if user_reviews.is_none() && reviews.is_none() {
        return Err(DataError::Invalid {
            path: dir.to_owned(),
            message: format!(
                "no {USER_REVIEWS} or {REVIEWS} found (optionally gzipped); the steam format reads reviews from them"
            ),
        });
    }
    let mut builder = CatalogBuilder::new(super::dataset_name(path));
    if let Some(games) = fields::find_in(dir, &[GAMES]) {
        let mut without_id = 0;
        fields::for_each_line(&games, Encoding::Utf8, options, report, |line, text| {
            let object = parse_dict(&games, line, text)?;
            let row = Record::new(&games, line, &object);
            if row.get("id").is_none() {
                without_id += 1;
                return Ok(());
            }
            read_game(&row, &mut builder)
        })?;
        if without_id > 0 {
            report
                .skipped
                .insert(format!("{GAMES}: id: missing (game left out)"), without_id);
        }
    }
    if let Some(file) = user_reviews {
        let mut yearless = 0;
        fields::for_each_line(&file, Encoding::Utf8, options, report, |line, text| {
            let object = parse_dict(&file, line, text)?;
            let row = Record::new(&file, line, &object);
            yearless += read_user_reviews(&row, &mut builder)?;
            Ok(())
        })?;
        if yearless > 0 {
            report.skipped.insert(
                format!("{USER_REVIEWS}: posted: date without a year (review left out)"),
                yearless,
            );
        }
    }
    if let Some(file) = reviews {
        fields::for_each_line(&file, Encoding::Utf8, options, report, |line, text| {
            let object = parse_dict(&file, line, text)?;
            read_review(&Record::new(&file, line, &object), &mut builder)
        })?;
    }
    Ok(builder.finish())
}

fn parse_dict(path: &Path, line: u64, text: &str) -> Result<Map<String, Value>, DataError> {
    match pyliteral::parse(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DataError::malformed(
            path,
            line,
            "record",
            "expected a Python dict on this line",
        )),
        Err(e) => Err(DataError::malformed(
            path,
            line,
            "record",
            format!(
                "not a Python dict literal ({})",
                e.split(" at column ").next().unwrap_or(&e)
            ),
        )),
    }
}

/// Adds the dated reviews of one `australian_user_reviews` line; returns how many were
/// left out for lack of a year. Nothing is added when any review is malformed.
fn read_user_reviews(row: &Record, builder: &mut CatalogBuilder) -> Result<u64, DataError> {
    let user = row.id("user_id")?;
    let reviews = match row.get("reviews") {
        Some(Value::Array(reviews)) => reviews,
        Some(_) => return Err(row.malformed("reviews", "expected a list")),
        None => return Err(row.malformed("reviews", "missing")),
    };
    let mut parsed = Vec::with_capacity(reviews.len());
    let mut yearless = 0;
    for (pos, review) in reviews.iter().enumerate() {
        let field = |name: &str| format!("reviews[{pos}].{name}");
        let Value::Object(review) = review else {
            return Err(row.malformed(&format!("reviews[{pos}]"), "expected a dict"));
        };
        let inner = Record::new(row.path, row.line, review);
        let item = inner
            .id("item_id")
            .map_err(|e| rename_field(e, &field("item_id")))?;
        let posted = inner
            .string("posted")
            .map_err(|e| rename_field(e, &field("posted")))?;
        let date = posted.trim().strip_prefix("Posted").unwrap_or(posted);
        let Some((year, month, day)) = fields::parse_month_day_year(date) else {
            return Err(row.malformed(
                &field("posted"),
                "not a date like `Posted November 5, 2011.`",
            ));
        };
        let Some(year) = year else {
            yearless += 1;
            continue;
        };
        let timestamp = fields::civil_to_unix(year, month, day, 0, 0, 0)
            .ok_or_else(|| row.malformed(&field("posted"), "not a real date"))?;
        let recommend = inner
            .opt_bool("recommend")
            .map_err(|e| rename_field(e, &field("recommend")))?;
        parsed.push((item, timestamp, recommend, inner.opt_text("review")));
    }
    let user = builder.user(&user);
    for (item, timestamp, recommend, review) in parsed {
        let item = builder.item(&item);
        builder.push_interaction(Interaction {
            user,
            item,
            timestamp,
            rating: recommend.map(|r| if r { 1.0 } else { 0.0 }),
            review: review.map(String::into_boxed_str),
            impressions: None,
        });
    }
    Ok(yearless)
}

fn rename_field(err: DataError, field: &str) -> DataError {
    match err {
        DataError::Malformed {
            path,
            line,
            message,
            ..
        } => DataError::Malformed {
            path,
            line,
            field: field.to_owned(),
            message,
        },
        other => other,
    }
}

fn read_review(row: &Record, builder: &mut CatalogBuilder) -> Result<(), DataError> {
    let user = match row.get("user_id") {
        Some(_) => row.id("user_id")?,
        None => row.id("username")?,
    };
    let item = row.id("product_id")?;
    let date = row.string("date")?;
    let timestamp = fields::parse_iso8601(date)
        .ok_or_else(|| row.malformed("date", "not a date like `2017-12-17`"))?;
    let user = builder.user(&user);
    let item = builder.item(&item);
    builder.push_interaction(Interaction {
        user,
        item,
        timestamp,
        rating: None,
        review: row.opt_text("text").map(String::into_boxed_str),
        impressions: None,
    });
    Ok(())
}

fn read_game(row: &Record, builder: &mut CatalogBuilder) -> Result<(), DataError> {
    let id = row.id("id")?;
    let title = row.opt_text("app_name").or_else(|| row.opt_text("title"));
    let mut attributes = BTreeMap::new();
    let tags = match row.get("tags") {
        Some(Value::Array(tags)) => fields::join_texts(&Value::Array(
            tags.iter().take(TAGS_KEPT).cloned().collect(),
        )),
        _ => None,
    };
    for (name, value) in [
        ("genres", row.joined_list("genres")),
        ("tags", tags),
        ("developer", row.opt_text("developer")),
        ("publisher", row.opt_text("publisher")),
        ("price", row.opt_text("price")),
    ] {
        if let Some(value) = value {
            attributes.insert(name.to_owned(), value);
        }
    }
    // Release dates are free text in places ("Soon..", "Jan 2018"); only full dates are used.
    let release_time = row
        .opt_text("release_date")
        .and_then(|d| fields::parse_iso8601(&d));
    builder.add_item(&id, title, attributes, release_time);
    Ok(())
}
