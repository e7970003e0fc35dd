//! Field parsing shared by the readers of downloaded datasets: dates in the layouts the
//! sources use, typed access to JSON record fields, CSV tables with named columns, and the
//! line loop that fails on, or counts and skips, a bad row.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::catalog::days_from_civil;
use crate::error::{DataError, ReadOptions, ReadReport};
use crate::io::{self, Encoding};

// ---------------------------------------------------------------------------------------------
// Dates

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

/// Unix seconds of a UTC civil date and time, or `None` when a part is out of range.
pub(crate) fn civil_to_unix(
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
) -> Option<i64> {
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(
        days_from_civil(year, month, day) * 86_400
            + i64::from(hour) * 3600
            + i64::from(minute) * 60
            + i64::from(second),
    )
}

/// Month number of an English month name, full or abbreviated to three letters.
pub(crate) fn month_from_name(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| *m == lower || (lower.len() == 3 && m.starts_with(&lower)))
        .map(|i| i as u32 + 1)
}

fn digits<T: std::str::FromStr>(s: &str, min: usize, max: usize) -> Option<T> {
    if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A `±HHMM` or `±HH:MM` UTC offset in seconds.
fn parse_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let rest = rest.replace(':', "");
    if rest.len() != 4 {
        return None;
    }
    let hours: i64 = digits(&rest[..2], 2, 2)?;
    let minutes: i64 = digits(&rest[2..], 2, 2)?;
    Some(sign * (hours * 3600 + minutes * 60))
}

/// ISO 8601: `YYYY-MM-DD`, optionally followed by `T` or a space, `HH:MM[:SS[.fff]]` and
/// `Z` or a `±HH:MM` offset. Without an offset the time is taken as UTC.
pub(crate) fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.find(['T', ' ']) {
        Some(at) => (&s[..at], Some(&s[at + 1..])),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let year: i32 = digits(parts.next()?, 4, 4)?;
    let month: u32 = digits(parts.next()?, 1, 2)?;
    let day: u32 = digits(parts.next()?, 1, 2)?;
    if parts.next().is_some() {
        return None;
    }
    let Some(time) = time else {
        return civil_to_unix(year, month, day, 0, 0, 0);
    };
    let (clock, offset) = if let Some(clock) = time.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(at) = time.rfind(['+', '-']) {
        (&time[..at], parse_offset(&time[at..])?)
    } else {
        (time, 0)
    };
    let clock = clock.split('.').next()?;
    let mut hms = clock.split(':');
    let hour: u32 = digits(hms.next()?, 1, 2)?;
    let minute: u32 = digits(hms.next()?, 2, 2)?;
    let second: u32 = match hms.next() {
        Some(sec) => digits(sec, 2, 2)?,
        None => 0,
    };
    if hms.next().is_some() {
        return None;
    }
    Some(civil_to_unix(year, month, day, hour, minute, second)? - offset)
}

/// A date written with a small strftime pattern: `%Y %m %d %H %M %S %%` and literal text.
/// Fields may be one or two digits wide (four for `%Y`); the result is UTC.
pub(crate) fn parse_pattern(s: &str, pattern: &str) -> Option<i64> {
    let (mut year, mut month, mut day, mut hour, mut minute, mut second) = (1970, 1, 1, 0, 0, 0);
    let mut rest = s.trim();
    let mut pat = pattern.chars();
    while let Some(c) = pat.next() {
        if c != '%' {
            rest = rest.strip_prefix(c)?;
            continue;
        }
        let spec = pat.next()?;
        if spec == '%' {
            rest = rest.strip_prefix('%')?;
            continue;
        }
        let max = if spec == 'Y' { 4 } else { 2 };
        let len = rest
            .bytes()
            .take(max)
            .take_while(u8::is_ascii_digit)
            .count();
        let value: u32 = digits(&rest[..len], 1, max)?;
        rest = &rest[len..];
        match spec {
            'Y' => year = value as i32,
            'm' => month = value,
            'd' => day = value,
            'H' => hour = value,
            'M' => minute = value,
            'S' => second = value,
            _ => return None,
        }
    }
    if !rest.is_empty() {
        return None;
    }
    civil_to_unix(year, month, day, hour, minute, second)
}

/// Whether `pattern` uses only the strftime fields [`parse_pattern`] understands.
pub(crate) fn pattern_is_supported(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    let mut has_field = false;
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('Y' | 'm' | 'd' | 'H' | 'M' | 'S') => has_field = true,
                Some('%') => {}
                _ => return false,
            }
        }
    }
    has_field
}

/// MIND's `11/15/2019 10:22:32 AM` (month/day/year, 12-hour clock), taken as UTC.
pub(crate) fn parse_us_datetime(s: &str) -> Option<i64> {
    let mut parts = s.split_whitespace();
    let (date, clock, meridiem) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let mut mdy = date.split('/');
    let month: u32 = digits(mdy.next()?, 1, 2)?;
    let day: u32 = digits(mdy.next()?, 1, 2)?;
    let year: i32 = digits(mdy.next()?, 4, 4)?;
    let mut hms = clock.split(':');
    let hour12: u32 = digits(hms.next()?, 1, 2)?;
    let minute: u32 = digits(hms.next()?, 2, 2)?;
    let second: u32 = digits(hms.next()?, 2, 2)?;
    if mdy.next().is_some() || hms.next().is_some() || !(1..=12).contains(&hour12) {
        return None;
    }
    let hour = match meridiem {
        "AM" | "am" => hour12 % 12,
        "PM" | "pm" => hour12 % 12 + 12,
        _ => return None,
    };
    civil_to_unix(year, month, day, hour, minute, second)
}

/// Goodreads' `Thu Dec 29 12:46:54 -0800 2016` (weekday, month, day, time, offset, year).
pub(crate) fn parse_weekday_datetime(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_weekday, month, day, clock, offset, year] = parts.as_slice() else {
        return None;
    };
    let month = month_from_name(month)?;
    let day: u32 = digits(day, 1, 2)?;
    let year: i32 = digits(year, 4, 4)?;
    let mut hms = clock.split(':');
    let hour: u32 = digits(hms.next()?, 2, 2)?;
    let minute: u32 = digits(hms.next()?, 2, 2)?;
    let second: u32 = digits(hms.next()?, 2, 2)?;
    Some(civil_to_unix(year, month, day, hour, minute, second)? - parse_offset(offset)?)
}

/// `November 5, 2011` or `Nov 5 2011` as (year, month, day); the year is `None` when the text
/// leaves it out (`July 15`). `None` when the text is not such a date at all.
pub(crate) fn parse_month_day_year(s: &str) -> Option<(Option<i32>, u32, u32)> {
    let cleaned = s.trim().trim_end_matches('.').replace(',', " ");
    let parts: Vec<&str> = cleaned.split_whitespace().collect();
    let (month, day, year) = match parts.as_slice() {
        [month, day] => (*month, *day, None),
        [month, day, year] => (*month, *day, Some(digits::<i32>(year, 4, 4)?)),
        _ => return None,
    };
    let month = month_from_name(month)?;
    let day: u32 = digits(day, 1, 2)?;
    if day == 0 || day > days_in_month(year.unwrap_or(2000), month) {
        return None;
    }
    Some((year, month, day))
}

// ---------------------------------------------------------------------------------------------
// JSON records

/// Parses one JSON-lines row into its object.
pub(crate) fn parse_json_object(
    path: &Path,
    line: u64,
    text: &str,
) -> Result<Map<String, Value>, DataError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DataError::malformed(
            path,
            line,
            "record",
            "expected a JSON object on this line",
        )),
        Err(e) => Err(DataError::malformed(
            path,
            line,
            "record",
            format!("not valid JSON ({})", json_error_kind(&e)),
        )),
    }
}

/// serde_json's reason without its "at line 1 column 17", so that skipped rows group by reason.
fn json_error_kind(err: &serde_json::Error) -> String {
    let text = err.to_string();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

/// One object-shaped row (a JSON line or a parsed Python dict) with typed, error-naming access.
pub(crate) struct Record<'a> {
    pub path: &'a Path,
    pub line: u64,
    pub fields: &'a Map<String, Value>,
}

impl<'a> Record<'a> {
    pub fn new(path: &'a Path, line: u64, fields: &'a Map<String, Value>) -> Self {
        Record { path, line, fields }
    }

    pub fn malformed(&self, field: &str, message: impl Into<String>) -> DataError {
        DataError::malformed(self.path, self.line, field, message)
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    /// A required id: a non-empty string or an integer.
    pub fn id(&self, field: &str) -> Result<String, DataError> {
        match self.get(field) {
            None => Err(self.malformed(field, "missing")),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Some(Value::String(_)) => Err(self.malformed(field, "empty")),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            Some(_) => Err(self.malformed(field, "expected a string or integer id")),
        }
    }

    /// An optional text: strings and numbers as written; absent, null and "" give `None`.
    pub fn opt_text(&self, field: &str) -> Option<String> {
        match self.get(field)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// A required string field (may be empty).
    pub fn string(&self, field: &str) -> Result<&'a str, DataError> {
        match self.get(field) {
            None => Err(self.malformed(field, "missing")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.malformed(field, "expected a string")),
        }
    }

    /// An optional number: a JSON number or a numeric string; absent, null and "" give `None`.
    pub fn opt_number(&self, field: &str) -> Result<Option<f64>, DataError> {
        let value = match self.get(field) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.malformed(field, "not a number")),
        }
    }

    pub fn number(&self, field: &str) -> Result<f64, DataError> {
        self.opt_number(field)?
            .ok_or_else(|| self.malformed(field, "missing"))
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, DataError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.malformed(field, "expected true or false")),
        }
    }

    /// A list of texts joined with ", " (a lone string is kept as is); `None` when empty.
    pub fn joined_list(&self, field: &str) -> Option<String> {
        join_texts(self.get(field)?)
    }
}

/// Strings and numbers of a JSON value, flattened one level and joined with ", ".
pub(crate) fn join_texts(value: &Value) -> Option<String> {
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    let joined = match value {
        Value::Array(values) => values
            .iter()
            .filter_map(|v| match v {
                Value::Array(inner) => {
                    let parts: Vec<String> = inner.iter().filter_map(text).collect();
                    (!parts.is_empty()).then(|| parts.join(" > "))
                }
                other => text(other),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => text(other)?,
    };
    (!joined.is_empty()).then_some(joined)
}

// ---------------------------------------------------------------------------------------------
// Row loops

/// Calls `row` with (line number, text) for every non-blank line of `path`. A row error (or a
/// line that is not valid in `encoding`) fails the read, or is counted and skipped when
/// `options.skip_bad_rows` is on. `row` must change nothing before it has validated its row.
pub(crate) fn for_each_line(
    path: &Path,
    encoding: Encoding,
    options: &ReadOptions,
    report: &mut ReadReport,
    mut row: impl FnMut(u64, &str) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut lines = io::Lines::open(path, encoding)?;
    while let Some(next) = lines.next_line() {
        let result = next.and_then(|(line, text)| {
            if text.trim().is_empty() {
                Ok(())
            } else {
                row(line, &text)
            }
        });
        if let Err(err) = result {
            report.skip_or_fail(options, path, err)?;
        }
    }
    Ok(())
}

/// A CSV (or TSV) file with a header row, read by column name.
pub(crate) struct CsvTable {
    path: PathBuf,
    reader: csv::Reader<Box<dyn BufRead + Send>>,
    columns: HashMap<String, usize>,
}

impl CsvTable {
    /// Opens `path` (gzipped when it ends in `.gz`) and reads its header. `quoting` is off for
    /// TSV files, whose fields are never quoted but may hold stray quote characters.
    pub fn open(path: &Path, delimiter: u8, quoting: bool) -> Result<Self, DataError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .quoting(quoting)
            .has_headers(true)
            .from_reader(io::open(path)?);
        let headers = reader.headers().map_err(|e| csv_error(path, e))?.clone();
        if headers.iter().all(|h| h.trim().is_empty()) {
            return Err(DataError::Invalid {
                path: path.to_owned(),
                message: "the file is empty; a header row naming its columns is expected".into(),
            });
        }
        let columns = headers
            .iter()
            .enumerate()
            .map(|(i, name)| (name.trim().trim_start_matches('\u{feff}').to_owned(), i))
            .collect();
        Ok(CsvTable {
            path: path.to_owned(),
            reader,
            columns,
        })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    /// The position of a column the reader cannot do without.
    pub fn require(&self, name: &str) -> Result<usize, DataError> {
        self.column(name).ok_or_else(|| {
            let mut known: Vec<&str> = self.columns.keys().map(String::as_str).collect();
            known.sort_unstable();
            DataError::Invalid {
                path: self.path.clone(),
                message: format!(
                    "the header has no column `{name}` (columns: {})",
                    known.join(", ")
                ),
            }
        })
    }

    /// Calls `row` with (line number, record) for every data row; errors as in [`for_each_line`].
    pub fn for_each(
        mut self,
        options: &ReadOptions,
        report: &mut ReadReport,
        mut row: impl FnMut(u64, &csv::StringRecord) -> Result<(), DataError>,
    ) -> Result<(), DataError> {
        let mut record = csv::StringRecord::new();
        loop {
            let result = match self.reader.read_record(&mut record) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    row(line, &record)
                }
                Err(e) => Err(csv_error(&self.path, e)),
            };
            if let Err(err) = result {
                report.skip_or_fail(options, &self.path, err)?;
            }
        }
    }
}

/// The text of column `index` of `record` (empty when the row is short).
pub(crate) fn cell(record: &csv::StringRecord, index: usize) -> &str {
    record.get(index).map_or("", str::trim)
}

fn csv_error(path: &Path, err: csv::Error) -> DataError {
    let line = err.position().map_or(0, |p| p.line());
    match err.into_kind() {
        csv::ErrorKind::Io(source) => DataError::io(path, source),
        csv::ErrorKind::Utf8 { pos, .. } => DataError::Encoding {
            path: path.to_owned(),
            line: pos.map_or(line, |p| p.line()),
            expected: "UTF-8",
            hint: "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        },
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => DataError::malformed(
            path,
            pos.map_or(line, |p| p.line()),
            "columns",
            format!("expected {expected_len} columns as in the header, found {len}"),
        ),
        other => DataError::Invalid {
            path: path.to_owned(),
            message: format!("cannot read CSV: {other:?}"),
        },
    }
}

/// The first of `names` found in `dir` as is or with `.gz` appended.
pub(crate) fn find_in(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .find_map(|name| io::find_maybe_gz(&dir.join(name)))
}

/// Like [`find_in`], but a missing file is an error naming the folder and the expected files.
pub(crate) fn require_in(dir: &Path, names: &[&str], format: &str) -> Result<PathBuf, DataError> {
    find_in(dir, names).ok_or_else(|| DataError::Invalid {
        path: dir.to_owned(),
        message: format!(
            "no {} found (optionally gzipped); the {format} format expects it in this folder",
            names.join(" or ")
        ),
    })
}

/// The file name of `path` without `.gz`.
pub(crate) fn plain_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".gz").map(str::to_owned).unwrap_or(name)
}

/// Files directly in `dir` whose plain name passes `keep`, sorted by name.
pub(crate) fn files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        if path.is_file() && keep(&plain_name(&path)) {
            files.push(path);
        }
    }
    files.sort();
    // Keep one of `x` and `x.gz` when both are present, preferring the plain file.
    files.dedup_by(|later, earlier| plain_name(later) == plain_name(earlier));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_source_layouts_decode_to_unix_seconds() {
        assert_eq!(parse_iso8601("2019-11-15"), Some(1_573_776_000));
        assert_eq!(parse_iso8601("2019-11-15T10:22:32Z"), Some(1_573_813_352));
        assert_eq!(
            parse_iso8601("2019-11-15 10:22:32.250"),
            Some(1_573_813_352)
        );
        assert_eq!(
            parse_iso8601("2019-11-15T11:22:32+01:00"),
            Some(1_573_813_352)
        );
        assert_eq!(parse_iso8601("2019-02-30"), None);
        assert_eq!(
            parse_us_datetime("11/15/2019 10:22:32 AM"),
            Some(1_573_813_352)
        );
        assert_eq!(
            parse_us_datetime("11/15/2019 12:00:00 AM"),
            Some(1_573_776_000)
        );
        assert_eq!(
            parse_us_datetime("11/15/2019 1:00:00 PM"),
            Some(1_573_822_800)
        );
        assert_eq!(
            parse_weekday_datetime("Thu Dec 29 12:46:54 -0800 2016"),
            Some(1_483_044_414)
        );
        assert_eq!(
            parse_pattern("15.11.2019 10:22", "%d.%m.%Y %H:%M"),
            Some(1_573_813_320)
        );
        assert_eq!(parse_pattern("2019-11-15x", "%Y-%m-%d"), None);
        assert!(pattern_is_supported("%Y-%m-%d"));
        assert!(!pattern_is_supported("%b %d"));
        assert_eq!(
            parse_month_day_year("November 5, 2011"),
            Some((Some(2011), 11, 5))
        );
        assert_eq!(parse_month_day_year("July 15"), Some((None, 7, 15)));
        assert_eq!(parse_month_day_year("Smarch 15"), None);
    }
}
