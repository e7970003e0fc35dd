//! `lastfm` reader: Last.fm HetRec 2011 (`hetrec2011-lastfm-2k`). PATH is the folder of its
//! tab-separated, ISO-8859-1 `.dat` files, each with a header line.
//!
//! Listening counts (`user_artists.dat`) carry no time, so the timed events are the tag
//! assignments: all tags one user gave one artist at one moment
//! (`user_taggedartists-timestamps.dat`, milliseconds; or, without it, the day/month/year of
//! `user_taggedartists.dat`) form one interaction, whose review lists the tags
//! (`tags: rock, 80s`). Users and artists of `user_artists.dat` are in the catalog even when
//! they never tagged; artists are titled by `artists.dat` and carry their most used tags.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::fields;
use crate::catalog::{Catalog, CatalogBuilder, Interaction, ItemIdx, UserIdx};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::Encoding;

const TAGS_KEPT: usize = 5;

pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    if !path.is_dir() {
        return Err(DataError::Invalid {
            path: path.to_owned(),
            message:
                "the lastfm format expects the hetrec2011-lastfm-2k folder holding the .dat files"
                    .into(),
        });
    }
    let timed = fields::find_in(path, &["user_taggedartists-timestamps.dat"]);
    let dated = fields::find_in(path, &["user_taggedartists.dat"]);
    let (tagging, with_millis) = match (timed, dated) {
        (Some(file), _) => (file, true),
        (None, Some(file)) => (file, false),
        (None, None) => {
            return Err(DataError::Invalid {
                path: path.to_owned(),
                message: "no user_taggedartists-timestamps.dat or user_taggedartists.dat found; \
                          the lastfm format takes its timed interactions from them"
                    .into(),
            })
        }
    };
    let mut builder = CatalogBuilder::new(super::dataset_name(path));

    let mut tag_names: Option<HashMap<String, String>> = None;
    if let Some(file) = fields::find_in(path, &["tags.dat"]) {
        let mut names = HashMap::new();
        for_each_row(&file, 2, options, report, |line, cols| {
            let id = non_empty(&file, line, cols[0], "tagID")?;
            names.insert(id.to_owned(), cols[1].trim().to_owned());
            Ok(())
        })?;
        tag_names = Some(names);
    }
    if let Some(file) = fields::find_in(path, &["artists.dat"]) {
        for_each_row(&file, 2, options, report, |line, cols| {
            let id = non_empty(&file, line, cols[0], "id")?;
            let name = non_empty(&file, line, cols[1], "name")?;
            builder.add_item(id, Some(name.to_owned()), BTreeMap::new(), None);
            Ok(())
        })?;
    }
    if let Some(file) = fields::find_in(path, &["user_artists.dat"]) {
        for_each_row(&file, 3, options, report, |line, cols| {
            let user = non_empty(&file, line, cols[0], "userID")?;
            let artist = non_empty(&file, line, cols[1], "artistID")?;
            let weight = cols[2].trim();
            if weight.parse::<u64>().is_err() {
                return Err(DataError::malformed(
                    &file,
                    line,
                    "weight",
                    "not a listening count",
                ));
            }
            builder.user(user);
            builder.item(artist);
            Ok(())
        })?;
    }

    // (user, artist, time) → tags in file order; the position keeps the output deterministic.
    let mut events: HashMap<(UserIdx, ItemIdx, i64), usize> = HashMap::new();
    let mut event_tags: Vec<((UserIdx, ItemIdx, i64), Vec<String>)> = Vec::new();
    let mut tag_counts: HashMap<ItemIdx, HashMap<String, u64>> = HashMap::new();
    let columns = if with_millis { 4 } else { 6 };
    for_each_row(&tagging, columns, options, report, |line, cols| {
        let user = non_empty(&tagging, line, cols[0], "userID")?;
        let artist = non_empty(&tagging, line, cols[1], "artistID")?;
        let tag_id = non_empty(&tagging, line, cols[2], "tagID")?;
        let tag = match &tag_names {
            Some(names) => names
                .get(tag_id)
                .cloned()
                .ok_or_else(|| DataError::malformed(&tagging, line, "tagID", "not in tags.dat"))?,
            None => format!("tag {tag_id}"),
        };
        let timestamp = if with_millis {
            let text = cols[3].trim();
            let millis: i64 = text.parse().map_err(|_| {
                DataError::malformed(&tagging, line, "timestamp", "not Unix milliseconds")
            })?;
            millis.div_euclid(1000)
        } else {
            let part = |pos: usize, name: &str| -> Result<u32, DataError> {
                let text = cols[pos].trim();
                text.parse()
                    .map_err(|_| DataError::malformed(&tagging, line, name, "not a number"))
            };
            let (day, month, year) = (part(3, "day")?, part(4, "month")?, part(5, "year")?);
            fields::civil_to_unix(year as i32, month, day, 0, 0, 0)
                .ok_or_else(|| DataError::malformed(&tagging, line, "day", "not a real date"))?
        };
        let key = (builder.user(user), builder.item(artist), timestamp);
        *tag_counts
            .entry(key.1)
            .or_default()
            .entry(tag.clone())
            .or_insert(0) += 1;
        match events.get(&key) {
            Some(&pos) => event_tags[pos].1.push(tag),
            None => {
                events.insert(key, event_tags.len());
                event_tags.push((key, vec![tag]));
            }
        }
        Ok(())
    })?;

    for ((user, item, timestamp), tags) in event_tags {
        builder.push_interaction(Interaction {
            user,
            item,
            timestamp,
            rating: None,
            review: Some(format!("tags: {}", tags.join(", ")).into_boxed_str()),
            impressions: None,
        });
    }
    let mut tagged: Vec<_> = tag_counts.into_iter().collect();
    tagged.sort_unstable_by_key(|(item, _)| *item);
    for (item, counts) in tagged {
        let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let top: Vec<String> = ranked.into_iter().take(TAGS_KEPT).map(|(t, _)| t).collect();
        builder
            .item_mut(item)
            .attributes
            .insert("tags".to_owned(), top.join(", "));
    }
    Ok(builder.finish())
}

fn non_empty<'t>(path: &Path, line: u64, text: &'t str, field: &str) -> Result<&'t str, DataError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DataError::malformed(path, line, field, "empty"));
    }
    Ok(text)
}

/// Calls `row` with the tab-separated columns of every data line (the header line is
/// skipped); a line with fewer than `columns` columns is malformed.
fn for_each_row(
    path: &Path,
    columns: usize,
    options: &ReadOptions,
    report: &mut ReadReport,
    mut row: impl FnMut(u64, &[&str]) -> Result<(), DataError>,
) -> Result<(), DataError> {
    fields::for_each_line(path, Encoding::Latin1, options, report, |line, text| {
        let cols: Vec<&str> = text.split('\t').collect();
        let is_header = line == 1
            && cols
                .first()
                .is_some_and(|c| c.trim().parse::<u64>().is_err());
        if is_header {
            return Ok(());
        }
        if cols.len() < columns {
            return Err(DataError::malformed(
                path,
                line,
                "columns",
                format!(
                    "expected {columns} tab-separated columns, found {}",
                    cols.len()
                ),
            ));
        }
        row(line, &cols)
    })
}
