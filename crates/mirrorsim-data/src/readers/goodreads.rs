//! `goodreads` reader: the UCSD Book Graph. PATH is a folder holding any of
//! `goodreads_interactions_<genre>.json.gz` (or `goodreads_interactions_dedup.json.gz`),
//! `goodreads_reviews_<genre>.json.gz`, `goodreads_books_<genre>.json.gz` (or
//! `goodreads_books.json.gz`), and optionally `goodreads_book_authors.json.gz` and
//! `goodreads_book_genres_initial.json.gz`; each file may also be uncompressed.
//!
//! Every shelving of a book is one interaction at its `date_added`, with its rating (0 means
//! "not rated" and becomes none). A review joins its shelving by `review_id` and adds its text;
//! a review with no shelving in the interaction files becomes an interaction itself.
//! Genre names hold commas ("history, historical fiction, biography"), so the `genres`
//! attribute joins them with "; ", most voted first.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::Value;

use super::fields::{self, Record};
use crate::catalog::{Catalog, CatalogBuilder, Interaction};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::Encoding;

/// Shelves that say nothing about a book's content, left out of its `shelves` attribute.
const GENERIC_SHELVES: &[&str] = &["to-read", "currently-reading", "read", "favorites"];
const SHELVES_KEPT: usize = 5;

pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    if !path.is_dir() {
        return Err(DataError::Invalid {
            path: path.to_owned(),
            message:
                "the goodreads format expects the folder holding the goodreads_*.json.gz files"
                    .into(),
        });
    }
    let is_json = |n: &str| n.ends_with(".json") || n.ends_with(".jsonl");
    let interaction_files = fields::files_in(path, |n| {
        is_json(n) && n.starts_with("goodreads_interactions")
    })?;
    let review_files = fields::files_in(path, |n| {
        is_json(n) && n.starts_with("goodreads_reviews") && !n.contains("spoiler")
    })?;
    let book_files = fields::files_in(path, |n| is_json(n) && n.starts_with("goodreads_books"))?;
    if interaction_files.is_empty() && review_files.is_empty() {
        return Err(DataError::Invalid {
            path: path.to_owned(),
            message:
                "no goodreads_interactions_*.json(.gz) or goodreads_reviews_*.json(.gz) file found"
                    .into(),
        });
    }

    let mut authors: HashMap<String, String> = HashMap::new();
    if let Some(file) = fields::find_in(path, &["goodreads_book_authors.json"]) {
        fields::for_each_line(&file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(&file, line, text)?;
            let row = Record::new(&file, line, &object);
            let id = row.id("author_id")?;
            if let Some(name) = row.opt_text("name") {
                authors.insert(id, name);
            }
            Ok(())
        })?;
    }
    let mut genres: HashMap<String, String> = HashMap::new();
    if let Some(file) = fields::find_in(path, &["goodreads_book_genres_initial.json"]) {
        fields::for_each_line(&file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(&file, line, text)?;
            let row = Record::new(&file, line, &object);
            let id = row.id("book_id")?;
            if let Some(Value::Object(counts)) = row.get("genres") {
                let mut ranked: Vec<(&String, f64)> = counts
                    .iter()
                    .map(|(name, count)| (name, count.as_f64().unwrap_or(0.0)))
                    .collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
                let names: Vec<&str> = ranked.iter().map(|(name, _)| name.as_str()).collect();
                if !names.is_empty() {
                    genres.insert(id, names.join("; "));
                }
            }
            Ok(())
        })?;
    }

    let mut builder = CatalogBuilder::new(super::dataset_name(path));
    for file in &book_files {
        fields::for_each_line(file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(file, line, text)?;
            read_book(
                &Record::new(file, line, &object),
                &authors,
                &genres,
                &mut builder,
            )
        })?;
    }

    let mut interactions: Vec<Interaction> = Vec::new();
    // review_id → position in `interactions`; joins reviews and drops repeats across genre files.
    let mut by_review: HashMap<String, usize> = HashMap::new();
    for file in &interaction_files {
        fields::for_each_line(file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(file, line, text)?;
            let row = Record::new(file, line, &object);
            let shelving = parse_shelving(&row)?;
            if let Some(id) = &shelving.review_id {
                if by_review.contains_key(id) {
                    return Ok(());
                }
                by_review.insert(id.clone(), interactions.len());
            }
            interactions.push(shelving.into_interaction(&mut builder, None));
            Ok(())
        })?;
    }
    for file in &review_files {
        fields::for_each_line(file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(file, line, text)?;
            let row = Record::new(file, line, &object);
            let shelving = parse_shelving(&row)?;
            let review_text = row.opt_text("review_text").map(String::into_boxed_str);
            match shelving.review_id.as_ref().and_then(|id| by_review.get(id)) {
                Some(&pos) => {
                    let existing = &mut interactions[pos];
                    if existing.review.is_none() {
                        existing.review = review_text;
                    }
                    if existing.rating.is_none() {
                        existing.rating = shelving.rating;
                    }
                }
                None => {
                    if let Some(id) = &shelving.review_id {
                        by_review.insert(id.clone(), interactions.len());
                    }
                    interactions.push(shelving.into_interaction(&mut builder, review_text));
                }
            }
            Ok(())
        })?;
    }
    for interaction in interactions {
        builder.push_interaction(interaction);
    }
    Ok(builder.finish())
}

struct Shelving {
    user: String,
    book: String,
    review_id: Option<String>,
    timestamp: i64,
    rating: Option<f32>,
}

impl Shelving {
    fn into_interaction(
        self,
        builder: &mut CatalogBuilder,
        review: Option<Box<str>>,
    ) -> Interaction {
        Interaction {
            user: builder.user(&self.user),
            item: builder.item(&self.book),
            timestamp: self.timestamp,
            rating: self.rating,
            review,
            impressions: None,
        }
    }
}

fn parse_shelving(row: &Record) -> Result<Shelving, DataError> {
    let user = row.id("user_id")?;
    let book = row.id("book_id")?;
    let added = row.string("date_added")?;
    let timestamp = fields::parse_weekday_datetime(added).ok_or_else(|| {
        row.malformed(
            "date_added",
            "not a date like `Thu Dec 29 12:46:54 -0800 2016`",
        )
    })?;
    let rating = match row.opt_number("rating")? {
        Some(r) if !(0.0..=5.0).contains(&r) => return Err(row.malformed("rating", "outside 0–5")),
        Some(r) if r > 0.0 => Some(r as f32),
        _ => None,
    };
    Ok(Shelving {
        user,
        book,
        review_id: row.opt_text("review_id"),
        timestamp,
        rating,
    })
}

fn read_book(
    row: &Record,
    authors: &HashMap<String, String>,
    genres: &HashMap<String, String>,
    builder: &mut CatalogBuilder,
) -> Result<(), DataError> {
    let id = row.id("book_id")?;
    let title = row
        .opt_text("title")
        .or_else(|| row.opt_text("title_without_series"));
    let year = parse_part(row, "publication_year")?;
    let release_time = match year {
        Some(year) => {
            let month = parse_part(row, "publication_month")?.unwrap_or(1);
            let day = parse_part(row, "publication_day")?.unwrap_or(1);
            fields::civil_to_unix(year as i32, month, day, 0, 0, 0)
                .or_else(|| fields::civil_to_unix(year as i32, 1, 1, 0, 0, 0))
        }
        None => None,
    };
    let mut attributes = BTreeMap::new();
    let author_names: Vec<&str> = match row.get("authors") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|a| a.get("author_id"))
            .filter_map(|a| match a {
                Value::String(s) => authors.get(s.as_str()),
                Value::Number(n) => authors.get(&n.to_string()),
                _ => None,
            })
            .map(String::as_str)
            .collect(),
        _ => Vec::new(),
    };
    if !author_names.is_empty() {
        attributes.insert("authors".to_owned(), author_names.join(", "));
    }
    if let Some(Value::Array(shelves)) = row.get("popular_shelves") {
        let names: Vec<&str> = shelves
            .iter()
            .filter_map(|s| s.get("name").and_then(Value::as_str))
            .filter(|name| !GENERIC_SHELVES.contains(name))
            .take(SHELVES_KEPT)
            .collect();
        if !names.is_empty() {
            attributes.insert("shelves".to_owned(), names.join(", "));
        }
    }
    for field in ["publisher", "language_code", "format", "num_pages"] {
        if let Some(value) = row.opt_text(field) {
            attributes.insert(field.to_owned(), value);
        }
    }
    if let Some(year) = year {
        attributes.insert("year".to_owned(), year.to_string());
    }
    if let Some(names) = genres.get(&id) {
        attributes.insert("genres".to_owned(), names.clone());
    }
    builder.add_item(&id, title, attributes, release_time);
    Ok(())
}

/// A publication date part: a number or numeric string; "" means unknown.
fn parse_part(row: &Record, field: &str) -> Result<Option<u32>, DataError> {
    match row.opt_number(field)? {
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v < 10_000.0 => Ok(Some(v as u32)),
        Some(_) => Err(row.malformed(field, "not a date part")),
        None => Ok(None),
    }
}
