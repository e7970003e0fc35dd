//! `movielens` reader: the GroupLens MovieLens layouts as downloaded, detected from the files
//! in the folder `PATH` (each file may also be gzipped):
//!
//! - **ML-100K** (`u.data`): `u.data` tab-separated `user item rating timestamp`; `u.item`
//!   `|`-separated ISO-8859-1 `id|title|release date|video release date|IMDb URL|19 genre flags`
//!   (genre names from `u.genre` when present); `u.user` `id|age|gender|occupation|zip code`.
//! - **ML-1M / ML-10M** (`ratings.dat`): `::`-separated ISO-8859-1 `ratings.dat`
//!   (`UserID::MovieID::Rating::Timestamp`), `movies.dat` (`MovieID::Title::Genres`, genres `|`),
//!   `users.dat` (`UserID::Gender::Age::Occupation::Zip-code`, age and occupation codes decoded
//!   to words) and ML-10M's `tags.dat` (`UserID::MovieID::Tag::Timestamp`).
//! - **ml-latest / ml-latest-small** (`ratings.csv`): UTF-8 CSV with a header row —
//!   `ratings.csv` (`userId,movieId,rating,timestamp`), `movies.csv` (`movieId,title,genres`,
//!   titles quoted where they hold commas, genres `|`) and `tags.csv`
//!   (`userId,movieId,tag,timestamp`).
//!
//! Titles are kept as written (with the "(year)" suffix); the year becomes the attribute `year`
//! and the release time (Jan 1st UTC, or ML-100K's exact release date). Genres become the
//! attribute `genres` joined with ", " (`(no genres listed)` and ML-100K's `unknown` flag are
//! left out). Tags become the item attribute `tags`: its 10 most frequent distinct tags
//! (case-insensitive), most frequent first, joined with ", ".

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::catalog::{days_from_civil, year_start_unix, Catalog, CatalogBuilder, Interaction};
use crate::catalog::{ItemIdx, UserIdx};
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::{find_maybe_gz, open, Encoding, Lines};
use crate::readers::dataset_name;
use crate::readers::recbole::parse_timestamp;

/// The words of an ML-1M age-bucket code (1, 18, 25, 35, 45, 50, 56).
pub fn ml1m_age_label(code: u32) -> Option<&'static str> {
    Some(match code {
        1 => "under 18",
        18 => "18-24",
        25 => "25-34",
        35 => "35-44",
        45 => "45-49",
        50 => "50-55",
        56 => "56+",
        _ => return None,
    })
}

/// The words of an ML-1M occupation code (0–20).
pub fn ml1m_occupation_label(code: u32) -> Option<&'static str> {
    const OCCUPATIONS: [&str; 21] = [
        "other",
        "academic/educator",
        "artist",
        "clerical/admin",
        "college/grad student",
        "customer service",
        "doctor/health care",
        "executive/managerial",
        "farmer",
        "homemaker",
        "K-12 student",
        "lawyer",
        "programmer",
        "retired",
        "sales/marketing",
        "scientist",
        "self-employed",
        "technician/engineer",
        "tradesman/craftsman",
        "unemployed",
        "writer",
    ];
    OCCUPATIONS.get(code as usize).copied()
}

/// ML-100K's genre flags, in column order (used when `u.genre` is absent).
const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// How many distinct tags the `tags` attribute keeps per item.
const MAX_TAGS_PER_ITEM: usize = 10;

/// The MovieLens layout found in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Ml100k,
    Ml1m,
    Latest,
}

/// Which layout `folder` holds, judged by its ratings file.
pub fn detect_layout(folder: &Path) -> Result<Layout, DataError> {
    if !folder.is_dir() {
        return Err(DataError::Invalid {
            path: folder.to_owned(),
            message: "a movielens source is the folder holding u.data, ratings.dat or ratings.csv"
                .into(),
        });
    }
    if find_maybe_gz(&folder.join("u.data")).is_some() {
        Ok(Layout::Ml100k)
    } else if find_maybe_gz(&folder.join("ratings.dat")).is_some() {
        Ok(Layout::Ml1m)
    } else if find_maybe_gz(&folder.join("ratings.csv")).is_some() {
        Ok(Layout::Latest)
    } else {
        Err(DataError::Invalid {
            path: folder.to_owned(),
            message: "no MovieLens ratings file here: expected u.data (ML-100K), ratings.dat \
                      (ML-1M/10M) or ratings.csv (ml-latest)"
                .into(),
        })
    }
}

/// Reads a MovieLens folder in any of its original layouts (see the module docs).
pub fn read(
    path: &Path,
    options: &ReadOptions,
    report: &mut ReadReport,
) -> Result<Catalog, DataError> {
    let layout = detect_layout(path)?;
    let mut reader = Reader {
        builder: CatalogBuilder::new(dataset_name(path)),
        options,
        report,
    };
    match layout {
        Layout::Ml100k => reader.read_ml100k(path)?,
        Layout::Ml1m => reader.read_ml1m(path)?,
        Layout::Latest => reader.read_latest(path)?,
    }
    Ok(reader.builder.finish())
}

struct Reader<'a> {
    builder: CatalogBuilder,
    options: &'a ReadOptions,
    report: &'a mut ReadReport,
}

/// One parsed rating row, borrowing the ids from the line.
struct RatingRow<'a> {
    user: &'a str,
    item: &'a str,
    rating: f32,
    timestamp: i64,
}

impl Reader<'_> {
    fn read_ml100k(&mut self, folder: &Path) -> Result<(), DataError> {
        let genres = match find_maybe_gz(&folder.join("u.genre")) {
            Some(path) => self.read_ml100k_genres(&path)?,
            None => ML100K_GENRES.iter().map(|g| (*g).to_owned()).collect(),
        };
        if let Some(path) = find_maybe_gz(&folder.join("u.item")) {
            self.read_ml100k_items(&path, &genres)?;
        }
        if let Some(path) = find_maybe_gz(&folder.join("u.user")) {
            self.read_delimited(&path, "|", &USER_100K_FIELDS, |builder, line_no, f| {
                let mut attributes = BTreeMap::new();
                let age = f[1].trim();
                if !age.is_empty() && age.parse::<u32>().is_err() {
                    return Err(DataError::malformed(
                        &path,
                        line_no,
                        "age",
                        format!("not a whole number of years (got `{age}`)"),
                    ));
                }
                for (key, value) in ["age", "gender", "occupation", "zip_code"]
                    .iter()
                    .zip(&f[1..])
                {
                    insert_nonempty(&mut attributes, key, value);
                }
                builder.add_user(f[0].trim(), attributes);
                Ok(())
            })?;
        }
        let ratings = require_file(folder, "u.data")?;
        self.read_ratings(&ratings, "\t", &RATING_100K_FIELDS)
    }

    fn read_ml100k_genres(&mut self, path: &Path) -> Result<Vec<String>, DataError> {
        let mut genres: Vec<(u32, String)> = Vec::new();
        self.read_delimited(path, "|", &["genre", "genre id"], |_, line_no, f| {
            let id = f[1].trim().parse::<u32>().map_err(|_| {
                DataError::malformed(
                    path,
                    line_no,
                    "genre id",
                    format!("not a number (got `{}`)", f[1]),
                )
            })?;
            genres.push((id, f[0].trim().to_owned()));
            Ok(())
        })?;
        genres.sort();
        Ok(genres.into_iter().map(|(_, name)| name).collect())
    }

    fn read_ml100k_items(&mut self, path: &Path, genres: &[String]) -> Result<(), DataError> {
        let mut names: Vec<String> = ITEM_100K_FIELDS.iter().map(|s| (*s).to_owned()).collect();
        names.extend(genres.iter().map(|g| format!("genre flag `{g}`")));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut lines = Lines::open(path, Encoding::Latin1)?;
        while let Some(next) = lines.next_line_ref() {
            let result = next.and_then(|(line_no, line)| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                let f = split_exact(path, line_no, line, "|", &names)?;
                let mut attributes = BTreeMap::new();
                let flagged: Vec<&str> = genres
                    .iter()
                    .zip(&f[ITEM_100K_FIELDS.len()..])
                    .filter_map(|(genre, flag)| match flag.trim() {
                        "1" => Some(Ok(genre.as_str())),
                        "0" => None,
                        other => Some(Err(DataError::malformed(
                            path,
                            line_no,
                            format!("genre flag `{genre}`"),
                            format!("not 0 or 1 (got `{other}`)"),
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
                let flagged: Vec<&str> = flagged.into_iter().filter(|g| *g != "unknown").collect();
                if !flagged.is_empty() {
                    attributes.insert("genres".to_owned(), flagged.join(", "));
                }
                let title = f[1].trim();
                let release_time = match parse_dd_mon_yyyy(f[2].trim()) {
                    Some(date) => Some(date),
                    None if f[2].trim().is_empty() => title_year(title).map(year_start_unix),
                    None => {
                        return Err(DataError::malformed(
                            path,
                            line_no,
                            "release date",
                            format!("not a date like 01-Jan-1995 (got `{}`)", f[2].trim()),
                        ))
                    }
                };
                let year = match f[2].trim() {
                    "" => title_year(title),
                    date => date.rsplit('-').next().and_then(|y| y.parse().ok()),
                };
                if let Some(year) = year {
                    attributes.insert("year".to_owned(), year.to_string());
                }
                let title = (!title.is_empty()).then(|| title.to_owned());
                Ok(Some((
                    f[0].trim().to_owned(),
                    title,
                    attributes,
                    release_time,
                )))
            });
            match result {
                Ok(Some((id, title, attributes, release_time))) => {
                    if id.is_empty() {
                        let err = DataError::malformed(
                            path,
                            lines.line_no(),
                            "movie id",
                            "the id is empty",
                        );
                        self.report.skip_or_fail(self.options, path, err)?;
                        continue;
                    }
                    self.builder.add_item(&id, title, attributes, release_time);
                }
                Ok(None) => {}
                Err(err) => {
                    let err = read_error(lines.line_no(), err);
                    self.report.skip_or_fail(self.options, path, err)?;
                }
            }
        }
        Ok(())
    }

    fn read_ml1m(&mut self, folder: &Path) -> Result<(), DataError> {
        if let Some(path) = find_maybe_gz(&folder.join("movies.dat")) {
            self.read_delimited(&path, "::", &MOVIE_DAT_FIELDS, |builder, _, f| {
                add_movie(builder, f[0], f[1], f[2]);
                Ok(())
            })?;
        }
        if let Some(path) = find_maybe_gz(&folder.join("users.dat")) {
            self.read_delimited(&path, "::", &USER_DAT_FIELDS, |builder, line_no, f| {
                let code = |field: &str, value: &str| {
                    value.trim().parse::<u32>().map_err(|_| {
                        DataError::malformed(
                            &path,
                            line_no,
                            field,
                            format!("not a code (got `{value}`)"),
                        )
                    })
                };
                let age = ml1m_age_label(code("Age", f[2])?).ok_or_else(|| {
                    DataError::malformed(
                        &path,
                        line_no,
                        "Age",
                        format!(
                            "not an ML-1M age code: 1, 18, 25, 35, 45, 50 or 56 (got `{}`)",
                            f[2]
                        ),
                    )
                })?;
                let occupation =
                    ml1m_occupation_label(code("Occupation", f[3])?).ok_or_else(|| {
                        DataError::malformed(
                            &path,
                            line_no,
                            "Occupation",
                            format!("not an ML-1M occupation code 0-20 (got `{}`)", f[3]),
                        )
                    })?;
                let mut attributes = BTreeMap::new();
                insert_nonempty(&mut attributes, "gender", f[1]);
                insert_nonempty(&mut attributes, "age", age);
                insert_nonempty(&mut attributes, "occupation", occupation);
                insert_nonempty(&mut attributes, "zip_code", f[4]);
                builder.add_user(f[0].trim(), attributes);
                Ok(())
            })?;
        }
        let ratings = require_file(folder, "ratings.dat")?;
        self.read_ratings(&ratings, "::", &RATING_DAT_FIELDS)?;
        if let Some(path) = find_maybe_gz(&folder.join("tags.dat")) {
            let mut tags = TagCounter::default();
            self.read_delimited(&path, "::", &TAG_DAT_FIELDS, |builder, _, f| {
                tags.add(builder, f[1], f[2]);
                Ok(())
            })?;
            tags.attach(&mut self.builder);
        }
        Ok(())
    }

    /// Reads a `sep`-separated file with exactly `names.len()` fields per row, handing each
    /// row to `row`; bad rows fail or are skipped per the options.
    fn read_delimited<F>(
        &mut self,
        path: &Path,
        sep: &str,
        names: &[&str],
        mut row: F,
    ) -> Result<(), DataError>
    where
        F: FnMut(&mut CatalogBuilder, u64, &[&str]) -> Result<(), DataError>,
    {
        let mut lines = Lines::open(path, Encoding::Latin1)?;
        while let Some(next) = lines.next_line_ref() {
            let result = next.and_then(|(line_no, line)| {
                if line.trim().is_empty() {
                    return Ok(());
                }
                let fields = split_exact(path, line_no, line, sep, names)?;
                if fields[0].trim().is_empty() {
                    return Err(DataError::malformed(
                        path,
                        line_no,
                        names[0],
                        "the id is empty",
                    ));
                }
                row(&mut self.builder, line_no, &fields)
            });
            if let Err(err) = result {
                let err = read_error(lines.line_no(), err);
                self.report.skip_or_fail(self.options, path, err)?;
            }
        }
        Ok(())
    }

    /// Reads `user sep item sep rating sep timestamp` rows without allocating per row.
    fn read_ratings(&mut self, path: &Path, sep: &str, names: &[&str; 4]) -> Result<(), DataError> {
        let mut lines = Lines::open(path, Encoding::Latin1)?;
        let mut last_user = LastUser::default();
        while let Some(next) = lines.next_line_ref() {
            let result = next.and_then(|(line_no, line)| {
                if line.is_empty() {
                    return Ok(None);
                }
                let mut fields = [""; 4];
                let mut count = 0;
                for part in line.split(sep) {
                    if count < 4 {
                        fields[count] = part;
                    }
                    count += 1;
                }
                if count != 4 {
                    return Err(field_count_error(path, line_no, names, count, sep));
                }
                parse_rating_row(path, line_no, names, fields).map(Some)
            });
            match result {
                Ok(Some(row)) => {
                    let user = last_user.intern(&mut self.builder, row.user);
                    let item = self.builder.item(row.item);
                    self.builder
                        .push_interaction(rating_interaction(user, item, &row));
                }
                Ok(None) => {}
                Err(err) => {
                    let err = read_error(lines.line_no(), err);
                    self.report.skip_or_fail(self.options, path, err)?;
                }
            }
        }
        Ok(())
    }

    fn read_latest(&mut self, folder: &Path) -> Result<(), DataError> {
        if let Some(path) = find_maybe_gz(&folder.join("movies.csv")) {
            self.read_csv(&path, &["movieId", "title", "genres"], |builder, _, f| {
                add_movie(builder, f[0], f[1], f[2]);
                Ok(())
            })?;
        }
        let ratings = require_file(folder, "ratings.csv")?;
        let names = ["userId", "movieId", "rating", "timestamp"];
        let mut last_user = LastUser::default();
        self.read_csv(&ratings, &names, |builder, line_no, f| {
            let row = parse_rating_row(&ratings, line_no, &names, [f[0], f[1], f[2], f[3]])?;
            let user = last_user.intern(builder, row.user);
            let item = builder.item(row.item);
            builder.push_interaction(rating_interaction(user, item, &row));
            Ok(())
        })?;
        if let Some(path) = find_maybe_gz(&folder.join("tags.csv")) {
            let mut tags = TagCounter::default();
            self.read_csv(
                &path,
                &["userId", "movieId", "tag", "timestamp"],
                |builder, _, f| {
                    tags.add(builder, f[1], f[2]);
                    Ok(())
                },
            )?;
            tags.attach(&mut self.builder);
        }
        Ok(())
    }

    /// Reads a CSV file with a header row, handing the named columns of each row (in the
    /// order of `names`) to `row`.
    fn read_csv<F>(&mut self, path: &Path, names: &[&str], mut row: F) -> Result<(), DataError>
    where
        F: FnMut(&mut CatalogBuilder, u64, &[&str]) -> Result<(), DataError>,
    {
        debug_assert!(names.len() <= MAX_CSV_COLUMNS);
        let mut csv_reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .from_reader(open(path)?);
        let header = csv_reader
            .headers()
            .map_err(|e| csv_error(path, 1, e))?
            .clone();
        if header.is_empty() || (header.len() == 1 && header[0].trim().is_empty()) {
            return Err(DataError::malformed(
                path,
                1,
                "header",
                format!(
                    "the file is empty; expected a header row `{}`",
                    names.join(",")
                ),
            ));
        }
        let positions: Vec<usize> = names
            .iter()
            .map(|name| {
                header
                    .iter()
                    .position(|h| h.trim() == *name)
                    .ok_or_else(|| {
                        DataError::malformed(
                            path,
                            1,
                            *name,
                            format!(
                                "the header has no `{name}` column (found: {})",
                                header.iter().collect::<Vec<_>>().join(",")
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut record = csv::StringRecord::new();
        loop {
            let line_no = csv_reader.position().line();
            match csv_reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(err) => {
                    let line_no = err.position().map_or(line_no, |p| p.line());
                    let err = csv_error(path, line_no, err);
                    self.report.skip_or_fail(self.options, path, err)?;
                    continue;
                }
            }
            let line_no = record.position().map_or(line_no, |p| p.line());
            if record.len() == 1 && record[0].trim().is_empty() {
                continue;
            }
            let result = if record.len() != header.len() {
                let field = header
                    .get(record.len())
                    .map_or_else(|| format!("field {}", header.len() + 1), str::to_owned);
                Err(DataError::malformed(
                    path,
                    line_no,
                    field,
                    format!(
                        "the row has {} comma-separated fields, the header {}",
                        record.len(),
                        header.len()
                    ),
                ))
            } else if record[positions[0]].trim().is_empty() {
                Err(DataError::malformed(
                    path,
                    line_no,
                    names[0],
                    "the id is empty",
                ))
            } else {
                let mut fields = [""; MAX_CSV_COLUMNS];
                for (slot, &p) in fields.iter_mut().zip(&positions) {
                    *slot = &record[p];
                }
                row(&mut self.builder, line_no, &fields[..positions.len()])
            };
            if let Err(err) = result {
                self.report.skip_or_fail(self.options, path, err)?;
            }
        }
        Ok(())
    }
}

/// The most columns `read_csv` hands over per row.
const MAX_CSV_COLUMNS: usize = 4;

const RATING_100K_FIELDS: [&str; 4] = ["user id", "item id", "rating", "timestamp"];
const USER_100K_FIELDS: [&str; 5] = ["user id", "age", "gender", "occupation", "zip code"];
const ITEM_100K_FIELDS: [&str; 5] = [
    "movie id",
    "movie title",
    "release date",
    "video release date",
    "IMDb URL",
];
const RATING_DAT_FIELDS: [&str; 4] = ["UserID", "MovieID", "Rating", "Timestamp"];
const MOVIE_DAT_FIELDS: [&str; 3] = ["MovieID", "Title", "Genres"];
const USER_DAT_FIELDS: [&str; 5] = ["UserID", "Gender", "Age", "Occupation", "Zip-code"];
const TAG_DAT_FIELDS: [&str; 4] = ["UserID", "MovieID", "Tag", "Timestamp"];

fn require_file(folder: &Path, name: &str) -> Result<PathBuf, DataError> {
    let path = folder.join(name);
    find_maybe_gz(&path).ok_or(DataError::Missing { path })
}

/// Turns an I/O failure in the middle of a file (e.g. a truncated gzip stream) into an error
/// that names the line reached; other errors pass through.
fn read_error(line_no: u64, err: DataError) -> DataError {
    match err {
        DataError::Io { path, source } => DataError::Invalid {
            path,
            message: format!(
                "reading failed after line {line_no}: {source} (is the file truncated?)"
            ),
        },
        other => other,
    }
}

fn csv_error(path: &Path, line_no: u64, err: csv::Error) -> DataError {
    match err.kind() {
        csv::ErrorKind::Utf8 { .. } => DataError::Encoding {
            path: path.to_owned(),
            line: line_no,
            expected: "UTF-8",
            hint:
                "ml-latest CSV files are UTF-8; convert the file (e.g. `iconv -f latin1 -t utf-8`)",
        },
        csv::ErrorKind::Io(io) => DataError::Invalid {
            path: path.to_owned(),
            message: format!("reading failed at line {line_no}: {io} (is the file truncated?)"),
        },
        _ => DataError::malformed(path, line_no, "row", err.to_string()),
    }
}

fn field_count_error(
    path: &Path,
    line_no: u64,
    names: &[&str],
    found: usize,
    sep: &str,
) -> DataError {
    let field = names
        .get(found)
        .map_or_else(|| format!("field {}", names.len() + 1), |n| (*n).to_owned());
    DataError::malformed(
        path,
        line_no,
        field,
        format!(
            "the row has {found} `{}`-separated fields, expected {}",
            sep.escape_default(),
            names.len()
        ),
    )
}

/// Splits `line` on `sep` into exactly `names.len()` fields.
fn split_exact<'a>(
    path: &Path,
    line_no: u64,
    line: &'a str,
    sep: &str,
    names: &[&str],
) -> Result<Vec<&'a str>, DataError> {
    let fields: Vec<&str> = line.split(sep).collect();
    if fields.len() != names.len() {
        return Err(field_count_error(path, line_no, names, fields.len(), sep));
    }
    Ok(fields)
}

fn parse_rating_row<'a>(
    path: &Path,
    line_no: u64,
    names: &[&str],
    fields: [&'a str; 4],
) -> Result<RatingRow<'a>, DataError> {
    let user = fields[0].trim();
    let item = fields[1].trim();
    for (name, id) in names.iter().zip([user, item]) {
        if id.is_empty() {
            return Err(DataError::malformed(
                path,
                line_no,
                *name,
                "the id is empty",
            ));
        }
    }
    let rating = match fields[2].trim().parse::<f32>() {
        Ok(r) if r.is_finite() => r,
        _ => {
            return Err(DataError::malformed(
                path,
                line_no,
                names[2],
                format!("not a number (got `{}`)", fields[2]),
            ))
        }
    };
    let timestamp = parse_timestamp(fields[3]).ok_or_else(|| {
        DataError::malformed(
            path,
            line_no,
            names[3],
            format!("not a Unix timestamp in seconds (got `{}`)", fields[3]),
        )
    })?;
    Ok(RatingRow {
        user,
        item,
        rating,
        timestamp,
    })
}

fn rating_interaction(user: UserIdx, item: ItemIdx, row: &RatingRow) -> Interaction {
    Interaction {
        user,
        item,
        timestamp: row.timestamp,
        rating: Some(row.rating),
        review: None,
        impressions: None,
    }
}

/// Interns user ids, skipping the hash lookup while rows of one user follow each other.
#[derive(Default)]
struct LastUser {
    id: String,
    idx: UserIdx,
}

impl LastUser {
    fn intern(&mut self, builder: &mut CatalogBuilder, id: &str) -> UserIdx {
        if self.id.is_empty() || self.id != id {
            self.idx = builder.user(id);
            self.id.clear();
            self.id.push_str(id);
        }
        self.idx
    }
}

fn insert_nonempty(attributes: &mut BTreeMap<String, String>, key: &str, value: &str) {
    let value = value.trim();
    if !value.is_empty() {
        attributes.insert(key.to_owned(), value.to_owned());
    }
}

/// Adds a movie with `|`-separated genres and the year taken from its title.
fn add_movie(builder: &mut CatalogBuilder, id: &str, title: &str, genres: &str) {
    let title = title.trim();
    let mut attributes = BTreeMap::new();
    let genres: Vec<&str> = genres
        .split('|')
        .map(str::trim)
        .filter(|g| !g.is_empty() && *g != "(no genres listed)")
        .collect();
    if !genres.is_empty() {
        attributes.insert("genres".to_owned(), genres.join(", "));
    }
    let year = title_year(title);
    if let Some(year) = year {
        attributes.insert("year".to_owned(), year.to_string());
    }
    let title = (!title.is_empty()).then(|| title.to_owned());
    builder.add_item(id.trim(), title, attributes, year.map(year_start_unix));
}

/// The year of a MovieLens title ending in "(1995)" (a trailing range "(2007-)" gives 2007).
pub fn title_year(title: &str) -> Option<i32> {
    let inner = title.trim_end().strip_suffix(')')?;
    let open = inner.rfind('(')?;
    let digits = inner[open + 1..].trim().trim_end_matches('-');
    let digits = digits.split(['-', '–']).next()?;
    if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Unix seconds of an ML-100K release date such as `01-Jan-1995`.
fn parse_dd_mon_yyyy(date: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut parts = date.split('-');
    let day: u32 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?.to_ascii_lowercase();
    let year: i32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=31).contains(&day) {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month_name)? as u32 + 1;
    Some(days_from_civil(year, month, day) * 86_400)
}

/// Tag applications per item, condensed into the `tags` attribute.
#[derive(Default)]
struct TagCounter {
    /// item → lowercased tag → (count, first spelling, first appearance).
    per_item: HashMap<ItemIdx, HashMap<String, (u64, String, u64)>>,
    seen: u64,
}

impl TagCounter {
    /// Counts a tag for a known item; tags of items missing from the movie list are dropped.
    fn add(&mut self, builder: &mut CatalogBuilder, item_id: &str, tag: &str) {
        let (tag, item_id) = (tag.trim(), item_id.trim());
        if tag.is_empty() || !builder.has_item(item_id) {
            return;
        }
        let item = builder.item(item_id);
        self.seen += 1;
        let entry = self
            .per_item
            .entry(item)
            .or_default()
            .entry(tag.to_lowercase())
            .or_insert_with(|| (0, tag.to_owned(), self.seen));
        entry.0 += 1;
    }

    fn attach(self, builder: &mut CatalogBuilder) {
        for (item, tags) in self.per_item {
            let mut tags: Vec<(u64, String, u64)> = tags.into_values().collect();
            tags.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
            let joined = tags
                .into_iter()
                .take(MAX_TAGS_PER_ITEM)
                .map(|(_, tag, _)| tag)
                .collect::<Vec<_>>()
                .join(", ");
            builder
                .item_mut(item)
                .attributes
                .insert("tags".to_owned(), joined);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_come_from_title_suffixes() {
        assert_eq!(title_year("Toy Story (1995)"), Some(1995));
        assert_eq!(
            title_year("City of Lost Children, The (Cité des enfants perdus, La) (1995) "),
            Some(1995)
        );
        assert_eq!(title_year("Fawlty Towers (1975-1979)"), Some(1975));
        assert_eq!(title_year("Babylon 5"), None);
        assert_eq!(title_year("Movie (a.k.a. Film)"), None);
    }

    #[test]
    fn ml100k_release_dates_parse() {
        assert_eq!(parse_dd_mon_yyyy("01-Jan-1995"), Some(788_918_400));
        assert_eq!(parse_dd_mon_yyyy("02-Jan-1970"), Some(86_400));
        assert_eq!(parse_dd_mon_yyyy("1995"), None);
        assert_eq!(parse_dd_mon_yyyy("01-Foo-1995"), None);
    }

    #[test]
    fn ml1m_codes_decode() {
        assert_eq!(ml1m_age_label(1), Some("under 18"));
        assert_eq!(ml1m_age_label(24), None);
        assert_eq!(ml1m_occupation_label(12), Some("programmer"));
        assert_eq!(ml1m_occupation_label(21), None);
    }
}
