//! Readers of a recommender's ranked lists, with errors that name file, line and field.
//!
//! Two forms are read, told apart by the first line:
//!
//! - **CSV** with the header `user,item,rank` or `user,item,rank,score` (RFC 4180 quoting, so
//!   ids may hold commas); one row per recommended item; `rank` is a positive integer (1 = top),
//!   unique per user; `score` is an optional finite number (may be empty). Rows of one user may
//!   be anywhere in the file; a list is ordered by rank.
//! - **RecBole top-k**: RecBole writes no file itself (`recbole.utils.case_study.full_sort_topk`
//!   returns tensors, mapped to tokens with `dataset.id2token`); this is the atomic-file layout a
//!   user writes from them: UTF-8, tab-separated, an optional header whose fields carry RecBole
//!   types (`user_id:token<TAB>item_id_list:token_seq`), then one line per user
//!   `USER<TAB>ITEM ITEM …` — the list in rank order, space-separated as RecBole's `token_seq`
//!   fields are. Two variants are accepted for ids that hold spaces or for tab-only exports:
//!   a line with more than two tab-separated fields takes one item per field; a line without
//!   a tab is split on whitespace (`USER ITEM ITEM …`). CRLF line ends are accepted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mirrorsim_data::Catalog;
use serde::Serialize;

use crate::error::LoopError;

/// The layout a recommendations file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecsFormat {
    Csv,
    Recbole,
}

/// One recommended item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedItem {
    pub item_id: String,
    /// 1 = the top of the list.
    pub rank: u32,
    pub score: Option<f64>,
    /// The line of the file it was read from.
    pub line: u64,
}

/// One user's ranked list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserList {
    pub user_id: String,
    /// The first line the user appears on.
    pub line: u64,
    /// In rank order.
    pub items: Vec<RankedItem>,
}

/// The lists of one recommender.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendations {
    /// The recommender's name: the file name up to its first dot.
    pub name: String,
    pub path: PathBuf,
    pub format: RecsFormat,
    /// In order of the users' first appearance in the file.
    pub lists: Vec<UserList>,
}

impl Recommendations {
    /// Fails on the first user or item the catalog does not know, naming its line.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), LoopError> {
        let (user_field, item_field) = match self.format {
            RecsFormat::Csv => ("user", "item"),
            RecsFormat::Recbole => ("user_id", "item_id_list"),
        };
        for list in &self.lists {
            if catalog.user_idx(&list.user_id).is_none() {
                return Err(LoopError::malformed(
                    &self.path,
                    list.line,
                    user_field,
                    format!(
                        "user `{}` is not in the catalog `{}`",
                        list.user_id, catalog.name
                    ),
                ));
            }
            for item in &list.items {
                if catalog.item_idx(&item.item_id).is_none() {
                    return Err(LoopError::malformed(
                        &self.path,
                        item.line,
                        item_field,
                        format!(
                            "item `{}` is not in the catalog `{}`",
                            item.item_id, catalog.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The list of a user, if the file has one.
    pub fn list(&self, user_id: &str) -> Option<&UserList> {
        self.lists.iter().find(|l| l.user_id == user_id)
    }
}

/// The recommender name of a file: its file name up to the first dot.
pub fn recommender_name(path: &Path) -> String {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    file_name
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&file_name)
        .to_owned()
}

/// Reads a recommendations file (either form, see the module documentation).
pub fn read_recs(path: &Path) -> Result<Recommendations, LoopError> {
    let bytes = std::fs::read(path).map_err(|e| LoopError::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        LoopError::malformed(path, line, "encoding", "the file is not valid UTF-8")
    })?;
    parse_recs(path, &text)
}

/// Parses the text of a recommendations file read from `path` (used in messages).
pub fn parse_recs(path: &Path, text: &str) -> Result<Recommendations, LoopError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let lists = if is_csv_header(first) {
        parse_csv(path, text)?
    } else if first.is_empty() {
        return Err(LoopError::malformed(
            path,
            1,
            "header",
            "the file is empty; expected the CSV header `user,item,rank[,score]` or RecBole \
             top-k lines `USER<TAB>ITEM ITEM …`",
        ));
    } else {
        parse_recbole(path, text)?
    };
    let format = if is_csv_header(first) {
        RecsFormat::Csv
    } else {
        RecsFormat::Recbole
    };
    if lists.is_empty() {
        return Err(LoopError::malformed(
            path,
            1,
            "header",
            "the file holds a header but no recommendations",
        ));
    }
    Ok(Recommendations {
        name: recommender_name(path),
        path: path.to_owned(),
        format,
        lists,
    })
}

fn is_csv_header(line: &str) -> bool {
    let fields: Vec<String> = line
        .split(',')
        .map(|f| f.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    fields.len() >= 3 && fields[0] == "user" && fields[1] == "item" && fields[2] == "rank"
}

/// Groups (user, line, item) rows into lists, checking uniqueness of ranks and items.
struct ListBuilder<'p> {
    path: &'p Path,
    lists: Vec<UserList>,
    by_user: HashMap<String, usize>,
    item_fields: (&'static str, &'static str),
}

impl<'p> ListBuilder<'p> {
    fn new(path: &'p Path, item_field: &'static str, rank_field: &'static str) -> Self {
        ListBuilder {
            path,
            lists: Vec::new(),
            by_user: HashMap::new(),
            item_fields: (item_field, rank_field),
        }
    }

    fn list_index(&mut self, user_id: &str, line: u64) -> usize {
        if let Some(&index) = self.by_user.get(user_id) {
            return index;
        }
        self.lists.push(UserList {
            user_id: user_id.to_owned(),
            line,
            items: Vec::new(),
        });
        self.by_user
            .insert(user_id.to_owned(), self.lists.len() - 1);
        self.lists.len() - 1
    }

    fn push(&mut self, list: usize, item: RankedItem) -> Result<(), LoopError> {
        let (item_field, rank_field) = self.item_fields;
        let user_list = &mut self.lists[list];
        if let Some(other) = user_list.items.iter().find(|i| i.item_id == item.item_id) {
            return Err(LoopError::malformed(
                self.path,
                item.line,
                item_field,
                format!(
                    "item `{}` is already recommended to user `{}` (line {})",
                    item.item_id, user_list.user_id, other.line
                ),
            ));
        }
        if let Some(other) = user_list.items.iter().find(|i| i.rank == item.rank) {
            return Err(LoopError::malformed(
                self.path,
                item.line,
                rank_field,
                format!(
                    "user `{}` already has an item at rank {} (line {})",
                    user_list.user_id, item.rank, other.line
                ),
            ));
        }
        user_list.items.push(item);
        Ok(())
    }

    fn finish(mut self) -> Vec<UserList> {
        for list in &mut self.lists {
            list.items.sort_by_key(|i| i.rank);
        }
        self.lists
    }
}

fn parse_csv(path: &Path, text: &str) -> Result<Vec<UserList>, LoopError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| LoopError::malformed(path, 1, "header", e.to_string()))?
        .clone();
    let names: Vec<String> = headers
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let has_score = match names.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["user", "item", "rank"] => false,
        ["user", "item", "rank", "score"] => true,
        _ => {
            return Err(LoopError::malformed(
                path,
                1,
                "header",
                format!(
                    "expected `user,item,rank` or `user,item,rank,score` (got `{}`)",
                    names.join(",")
                ),
            ))
        }
    };
    let columns = names.len();
    let mut builder = ListBuilder::new(path, "item", "rank");
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            LoopError::malformed(path, line, "row", e.to_string())
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            continue;
        }
        if record.len() != columns {
            return Err(LoopError::malformed(
                path,
                line,
                "row",
                format!(
                    "expected {columns} fields like the header, got {}",
                    record.len()
                ),
            ));
        }
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let user = field(0);
        if user.is_empty() {
            return Err(LoopError::malformed(path, line, "user", "empty user id"));
        }
        let item = field(1);
        if item.is_empty() {
            return Err(LoopError::malformed(path, line, "item", "empty item id"));
        }
        let rank = match field(2).parse::<u32>() {
            Ok(r) if r >= 1 => r,
            _ => {
                return Err(LoopError::malformed(
                    path,
                    line,
                    "rank",
                    format!("not a positive integer (got `{}`)", field(2)),
                ))
            }
        };
        let score = if has_score && !field(3).is_empty() {
            match field(3).parse::<f64>() {
                Ok(s) if s.is_finite() => Some(s),
                _ => {
                    return Err(LoopError::malformed(
                        path,
                        line,
                        "score",
                        format!("not a finite number (got `{}`)", field(3)),
                    ))
                }
            }
        } else {
            None
        };
        let list = builder.list_index(user, line);
        builder.push(
            list,
            RankedItem {
                item_id: item.to_owned(),
                rank,
                score,
                line,
            },
        )?;
    }
    Ok(builder.finish())
}

fn parse_recbole(path: &Path, text: &str) -> Result<Vec<UserList>, LoopError> {
    let mut builder = ListBuilder::new(path, "item_id_list", "item_id_list");
    let mut seen_users: HashMap<String, u64> = HashMap::new();
    let mut first_line = true;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index as u64 + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') {
            line.split('\t').collect()
        } else {
            line.split_whitespace().collect()
        };
        if std::mem::take(&mut first_line) && is_recbole_header(path, line_no, &fields)? {
            continue;
        }
        let user = fields[0].trim();
        if user.is_empty() {
            return Err(LoopError::malformed(
                path,
                line_no,
                "user_id",
                "empty user id",
            ));
        }
        if let Some(first) = seen_users.get(user) {
            return Err(LoopError::malformed(
                path,
                line_no,
                "user_id",
                format!("user `{user}` already has a list (line {first})"),
            ));
        }
        seen_users.insert(user.to_owned(), line_no);
        let items: Vec<&str> = if line.contains('\t') && fields.len() == 2 {
            fields[1].split(' ').filter(|s| !s.is_empty()).collect()
        } else {
            fields[1..]
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if items.is_empty() {
            return Err(LoopError::malformed(
                path,
                line_no,
                "item_id_list",
                format!("user `{user}` has an empty list"),
            ));
        }
        let list = builder.list_index(user, line_no);
        for (position, item) in items.into_iter().enumerate() {
            builder.push(
                list,
                RankedItem {
                    item_id: item.to_owned(),
                    rank: position as u32 + 1,
                    score: None,
                    line: line_no,
                },
            )?;
        }
    }
    Ok(builder.finish())
}

/// Whether a line is a RecBole header (`name:type` fields); fails on a header of another shape.
fn is_recbole_header(path: &Path, line_no: u64, fields: &[&str]) -> Result<bool, LoopError> {
    let typed: Vec<Option<(&str, &str)>> =
        fields.iter().map(|f| f.trim().split_once(':')).collect();
    let looks_like_header = typed.iter().all(|t| {
        t.is_some_and(|(_, ty)| matches!(ty, "token" | "token_seq" | "float" | "float_seq"))
    });
    if !looks_like_header {
        return Ok(false);
    }
    match typed[..] {
        [Some((_, "token")), Some((_, "token_seq"))] => Ok(true),
        _ => Err(LoopError::malformed(
            path,
            line_no,
            "header",
            format!(
                "a RecBole top-k header has two fields, `USER:token` and `ITEMS:token_seq` \
                 (got `{}`)",
                fields.join("\t")
            ),
        )),
    }
}
