//! `mind` reader: the Microsoft News Dataset (MINDsmall / MINDlarge), a folder holding
//! `behaviors.tsv` and `news.tsv` (tab-separated, no header, UTF-8; `.gz` accepted).
//!
//! Every clicked entry of an impression log line is one interaction at the impression time,
//! carrying the full impression list (clicked and not clicked) as its logged exposure. The
//! click history of a user has no times; it is placed just before the user's first impression,
//! one second apart in the logged order, without impression lists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::fields::{self, parse_us_datetime};
use crate::catalog::{Catalog, CatalogBuilder, Interaction, UserIdx};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::Encoding;

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
    let behaviors = fields::require_in(dir, &["behaviors.tsv"], "mind")?;
    let mut builder = CatalogBuilder::new(super::dataset_name(path));

    if let Some(news) = fields::find_in(dir, &["news.tsv"]) {
        read_news(&news, options, report, &mut builder)?;
    }

    // Per user: the time of the first impression and the history logged on that line.
    let mut first_seen: HashMap<UserIdx, (i64, Vec<String>)> = HashMap::new();
    fields::for_each_line(&behaviors, Encoding::Utf8, options, report, |line, text| {
        let row = parse_behavior(&behaviors, line, text)?;
        let user = builder.user(row.user);
        let shown: Box<[u32]> = row
            .impressions
            .iter()
            .map(|(id, _)| builder.item(id))
            .collect();
        for (&item, (_, clicked)) in shown.iter().zip(&row.impressions) {
            if *clicked {
                builder.push_interaction(Interaction {
                    user,
                    item,
                    timestamp: row.time,
                    rating: None,
                    review: None,
                    impressions: Some(shown.clone()),
                });
            }
        }
        let history = || row.history.iter().map(|s| (*s).to_owned()).collect();
        first_seen
            .entry(user)
            .and_modify(|(time, logged)| {
                if row.time < *time {
                    *time = row.time;
                    *logged = history();
                }
            })
            .or_insert_with(|| (row.time, history()));
        Ok(())
    })?;

    let mut users: Vec<_> = first_seen.into_iter().collect();
    users.sort_unstable_by_key(|(user, _)| *user);
    for (user, (first_time, history)) in users {
        let mut seen = HashSet::new();
        let history: Vec<String> = history
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect();
        let count = history.len() as i64;
        for (pos, id) in history.iter().enumerate() {
            let item = builder.item(id);
            builder.push_interaction(Interaction {
                user,
                item,
                timestamp: first_time - count + pos as i64,
                rating: None,
                review: None,
                impressions: None,
            });
        }
    }
    Ok(builder.finish())
}

struct BehaviorRow<'a> {
    user: &'a str,
    time: i64,
    history: Vec<&'a str>,
    /// (news id, clicked); test-split entries carry no label and count as not clicked.
    impressions: Vec<(&'a str, bool)>,
}

fn parse_behavior<'a>(path: &Path, line: u64, text: &'a str) -> Result<BehaviorRow<'a>, DataError> {
    let columns: Vec<&str> = text.split('\t').collect();
    if columns.len() != 5 {
        return Err(DataError::malformed(
            path,
            line,
            "columns",
            format!(
                "expected 5 tab-separated columns (impression id, user id, time, history, impressions), found {}",
                columns.len()
            ),
        ));
    }
    let user = columns[1].trim();
    if user.is_empty() {
        return Err(DataError::malformed(path, line, "user_id", "empty"));
    }
    let time = parse_us_datetime(columns[2].trim()).ok_or_else(|| {
        DataError::malformed(
            path,
            line,
            "time",
            "not a time like `11/15/2019 10:22:32 AM`",
        )
    })?;
    let history = columns[3].split_whitespace().collect();
    let mut impressions = Vec::new();
    for entry in columns[4].split_whitespace() {
        let (id, clicked) = match entry.rsplit_once('-') {
            Some((id, "1")) => (id, true),
            Some((id, "0")) => (id, false),
            None => (entry, false),
            Some(_) => {
                return Err(DataError::malformed(
                    path,
                    line,
                    "impressions",
                    "an entry is not a news id followed by -1 (clicked) or -0",
                ))
            }
        };
        if id.is_empty() {
            return Err(DataError::malformed(
                path,
                line,
                "impressions",
                "an entry has no news id",
            ));
        }
        impressions.push((id, clicked));
    }
    Ok(BehaviorRow {
        user,
        time,
        history,
        impressions,
    })
}

fn read_news(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
    builder: &mut CatalogBuilder,
) -> Result<(), DataError> {
    fields::for_each_line(path, Encoding::Utf8, options, report, |line, text| {
        let columns: Vec<&str> = text.split('\t').collect();
        if columns.len() < 4 {
            return Err(DataError::malformed(
                path,
                line,
                "columns",
                format!(
                    "expected at least 4 tab-separated columns (news id, category, subcategory, title), found {}",
                    columns.len()
                ),
            ));
        }
        let id = columns[0].trim();
        if id.is_empty() {
            return Err(DataError::malformed(path, line, "news_id", "empty"));
        }
        let title = columns[3].trim();
        if title.is_empty() {
            return Err(DataError::malformed(path, line, "title", "empty"));
        }
        let mut attributes = BTreeMap::new();
        for (name, value) in [("category", columns[1]), ("subcategory", columns[2])] {
            if !value.trim().is_empty() {
                attributes.insert(name.to_owned(), value.trim().to_owned());
            }
        }
        builder.add_item(id, Some(title.to_owned()), attributes, None);
        Ok(())
    })
}
