//! `amazon2023` reader: Amazon Reviews 2023 (McAuley lab). PATH is a folder of
//! `<Category>.jsonl` review files and `meta_<Category>.jsonl` metadata files (either may be
//! gzipped), or one review file, whose `meta_` sibling is read when present.
//!
//! Each review is one interaction: `user_id` chose `parent_asin` (the item the metadata is keyed
//! by; variants share it) at `timestamp` (milliseconds), with its `rating` and its `title` and
//! `text` as the review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::fields::{self, Record};
use crate::catalog::{Catalog, CatalogBuilder, Interaction};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::Encoding;

pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    let (reviews, metas) = locate(path)?;
    let mut builder = CatalogBuilder::new(super::dataset_name(path));
    for meta in &metas {
        fields::for_each_line(meta, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(meta, line, text)?;
            read_meta(&Record::new(meta, line, &object), &mut builder)
        })?;
    }
    for file in &reviews {
        fields::for_each_line(file, Encoding::Utf8, options, report, |line, text| {
            let object = fields::parse_json_object(file, line, text)?;
            read_review(&Record::new(file, line, &object), &mut builder)
        })?;
    }
    Ok(builder.finish())
}

/// The review files and metadata files PATH stands for.
fn locate(path: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let is_jsonl = |name: &str| name.ends_with(".jsonl") || name.ends_with(".json");
    if path.is_dir() {
        let reviews = fields::files_in(path, |n| is_jsonl(n) && !n.starts_with("meta_"))?;
        let metas = fields::files_in(path, |n| is_jsonl(n) && n.starts_with("meta_"))?;
        if reviews.is_empty() {
            return Err(DataError::Invalid {
                path: path.to_owned(),
                message: "no review file found; the amazon2023 format expects <Category>.jsonl \
                          (optionally .gz) beside meta_<Category>.jsonl"
                    .into(),
            });
        }
        return Ok((reviews, metas));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = fields::plain_name(path);
    let metas = fields::find_in(dir, &[&format!("meta_{name}")])
        .into_iter()
        .collect();
    Ok((vec![path.to_owned()], metas))
}

fn read_review(row: &Record, builder: &mut CatalogBuilder) -> Result<(), DataError> {
    let user = row.id("user_id")?;
    let item = match row.get("parent_asin") {
        Some(_) => row.id("parent_asin")?,
        None => row.id("asin")?,
    };
    let millis = row.number("timestamp")?;
    if millis < 0.0 {
        return Err(row.malformed("timestamp", "negative time"));
    }
    let rating = row.opt_number("rating")?;
    if let Some(r) = rating {
        if !(0.0..=5.0).contains(&r) {
            return Err(row.malformed("rating", "outside 0–5"));
        }
    }
    let review = match (row.opt_text("title"), row.opt_text("text")) {
        (Some(title), Some(text)) => Some(format!("{title}\n{text}")),
        (title, text) => title.or(text),
    };
    let user = builder.user(&user);
    let item = builder.item(&item);
    builder.push_interaction(Interaction {
        user,
        item,
        timestamp: (millis / 1000.0).floor() as i64,
        rating: rating.map(|r| r as f32),
        review: review.map(String::into_boxed_str),
        impressions: None,
    });
    Ok(())
}

fn read_meta(row: &Record, builder: &mut CatalogBuilder) -> Result<(), DataError> {
    let id = row.id("parent_asin")?;
    let mut attributes = BTreeMap::new();
    for (name, value) in [
        ("main_category", row.opt_text("main_category")),
        ("categories", row.joined_list("categories")),
        ("store", row.opt_text("store")),
        ("price", row.opt_text("price").filter(|p| p != "None")),
    ] {
        if let Some(value) = value {
            attributes.insert(name.to_owned(), value);
        }
    }
    let details = row.get("details").and_then(|d| d.as_object());
    if let Some(brand) = details
        .and_then(|d| d.get("Brand"))
        .and_then(|b| b.as_str())
    {
        attributes.insert("brand".to_owned(), brand.trim().to_owned());
    }
    let release_time = details
        .and_then(|d| d.get("Date First Available"))
        .and_then(|d| d.as_str())
        .and_then(fields::parse_month_day_year)
        .and_then(|(year, month, day)| fields::civil_to_unix(year?, month, day, 0, 0, 0));
    builder.add_item(&id, row.opt_text("title"), attributes, release_time);
    Ok(())
}
