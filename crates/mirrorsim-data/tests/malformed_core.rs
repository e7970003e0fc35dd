//! The `recbole` and `movielens` readers on the hand-written fixtures in tests/fixtures, and on
//! malformed variants of them: every failure names the file, the line and (for row errors) the
//! field; `skip_bad_rows` counts skipped rows per reason and keeps the good rows.

use std::io::Write;
use std::path::{Path, PathBuf};

use mirrorsim_data::{read_source, Catalog, DataError, ReadOptions, ReadReport, SourceSpec};

fn stored_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The hand-written ML-100K / ML-1M layout fixtures are stored under neutral names (so that no
/// file in the repository looks like the non-redistributable datasets) and laid out under their
/// real folder and file names in a temp dir shared by this test binary.
const RENAMED_LAYOUTS: &[(&str, &str)] = &[
    ("movielens/ml-100k", "movielens/layout-100k"),
    ("movielens/ml-1m", "movielens/layout-1m"),
];

fn fixture(name: &str) -> PathBuf {
    static LAID_OUT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    if !RENAMED_LAYOUTS.iter().any(|(real, _)| *real == name) {
        return stored_fixture(name);
    }
    let root = LAID_OUT.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        for (real, stored) in RENAMED_LAYOUTS {
            let folder = tmp.path().join(real);
            std::fs::create_dir_all(&folder).unwrap();
            for entry in std::fs::read_dir(stored_fixture(stored)).unwrap() {
                let entry = entry.unwrap();
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let real_name = file_name.strip_suffix(".fixture").unwrap_or(&file_name);
                std::fs::copy(entry.path(), folder.join(real_name)).unwrap();
            }
        }
        tmp
    });
    root.path().join(name)
}

fn read(
    format: &str,
    path: &Path,
    skip_bad_rows: bool,
) -> Result<(Catalog, ReadReport), DataError> {
    let spec: SourceSpec = format!("{format}:{}", path.display()).parse()?;
    read_source(&spec, &ReadOptions { skip_bad_rows })
}

/// A copy of fixture folder `name` (kept under the same folder name) in a temp dir, with
/// `replacements` (file name → content; `None` removes the file) applied.
fn variant(name: &str, replacements: &[(&str, Option<&[u8]>)]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixture(name);
    let folder = tmp.path().join(source.file_name().unwrap());
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    for (file, content) in replacements {
        let path = folder.join(file);
        match content {
            Some(bytes) => std::fs::write(&path, bytes).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    (tmp, folder)
}

/// A fixture file as text: UTF-8, or ISO-8859-1 where it is not valid UTF-8.
fn fixture_text(name: &str, file: &str) -> String {
    let bytes = std::fs::read(fixture(name).join(file)).unwrap();
    String::from_utf8(bytes.clone())
        .unwrap_or_else(|_| bytes.iter().map(|&b| char::from(b)).collect())
}

/// `text` with its 1-based line `line_no` replaced by `new_line` (line ends kept as LF).
fn replace_line(text: &str, line_no: usize, new_line: &str) -> Vec<u8> {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[line_no - 1] = new_line;
    (lines.join("\n") + "\n").into_bytes()
}

/// Asserts a `Malformed` error at `file:line` in `field`, and that its message says so.
fn assert_malformed(err: &DataError, file: &str, line: u64, field: &str) {
    match err {
        DataError::Malformed {
            path,
            line: got_line,
            field: got_field,
            ..
        } => {
            assert_eq!(path.file_name().unwrap(), file, "{err}");
            assert_eq!(*got_line, line, "{err}");
            assert_eq!(got_field, field, "{err}");
        }
        other => panic!("expected a malformed-row error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&format!("{file}:{line}:")), "{message}");
    assert!(message.contains(&format!("`{field}`")), "{message}");
}

fn assert_encoding(err: &DataError, file: &str, line: u64) {
    match err {
        DataError::Encoding {
            path,
            line: got_line,
            ..
        } => {
            assert_eq!(path.file_name().unwrap(), file, "{err}");
            assert_eq!(*got_line, line, "{err}");
        }
        other => panic!("expected an encoding error, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&format!("{file}:{line}:")),
        "{err}"
    );
}

// ---------------------------------------------------------------- the good fixtures

#[test]
fn recbole_fixture_reads_with_mixed_line_ends() {
    let (catalog, report) = read("recbole", &fixture("recbole/tiny"), false).unwrap();
    assert_eq!(report.total_skipped(), 0);
    assert_eq!(catalog.name, "tiny");
    assert_eq!(
        (
            catalog.users.len(),
            catalog.items.len(),
            catalog.interactions.len()
        ),
        (3, 4, 5)
    );
    let first = &catalog.interactions[0];
    assert_eq!(catalog.user(first.user).id, "u1");
    assert_eq!(catalog.item(first.item).id, "i1");
    assert_eq!((first.timestamp, first.rating), (1000, Some(5.0)));
    assert_eq!(first.review.as_deref(), Some("loved the soundtrack"));
    assert_eq!(catalog.interactions[1].review, None);
    assert_eq!(catalog.interactions[3].rating, Some(2.5));
    assert_eq!(catalog.interactions[4].timestamp, 1400);

    let alpha = catalog.item(catalog.item_idx("i1").unwrap());
    assert_eq!(alpha.title, "Alpha Movie");
    assert_eq!(alpha.attributes["genres"], "Action, Comedy");
    assert_eq!(alpha.attributes["year"], "1995");
    assert_eq!(alpha.attributes["rank"], "1.5");
    assert_eq!(alpha.release_time, Some(788_918_400));
    let beta = catalog.item(catalog.item_idx("i2").unwrap());
    assert_eq!(beta.release_time, None);
    assert!(!beta.attributes.contains_key("year"));
    let gamma = catalog.item(catalog.item_idx("i3").unwrap());
    assert_eq!(gamma.attributes["genres"], "Sci-Fi, Film-Noir");
    assert!(!gamma.attributes.contains_key("rank"));
    assert_eq!(
        catalog.item(catalog.item_idx("i4").unwrap()).title,
        "Délta Movie"
    );

    // Both `age` and `occupation` fit the ML-1M code scheme: decoded (CRLF file).
    let u1 = catalog.user(catalog.user_idx("u1").unwrap());
    assert_eq!(u1.attributes["age"], "under 18");
    assert_eq!(u1.attributes["occupation"], "K-12 student");
    assert_eq!(u1.attributes["zip_code"], "48067");
    let u3 = catalog.user(catalog.user_idx("u3").unwrap());
    assert_eq!(u3.attributes["age"], "25-34");
    assert_eq!(u3.attributes["occupation"], "programmer");
}

#[test]
fn recbole_keeps_values_that_do_not_fit_the_ml1m_code_scheme() {
    let user = "user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\n\
                u1\t1\tF\t10\t48067\nu2\t24\tM\t16\t70072\nu3\t25\tM\t12\t55117\n";
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.user", Some(user.as_bytes()))]);
    let (catalog, _) = read("recbole", &path, false).unwrap();
    let u1 = catalog.user(catalog.user_idx("u1").unwrap());
    assert_eq!(u1.attributes["age"], "1");
    assert_eq!(u1.attributes["occupation"], "10");
}

#[test]
fn recbole_reads_gzipped_files_and_the_inter_file_path() {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(fixture_text("recbole/tiny", "tiny.inter").as_bytes())
        .unwrap();
    let gz = gz.finish().unwrap();
    let (_tmp, path) = variant(
        "recbole/tiny",
        &[("tiny.inter", None), ("tiny.inter.gz", Some(&gz))],
    );
    let (catalog, _) = read("recbole", &path, false).unwrap();
    assert_eq!(catalog.interactions.len(), 5);
    let (catalog, _) = read("recbole", &path.join("tiny.inter.gz"), false).unwrap();
    assert_eq!(catalog.name, "tiny");
    assert_eq!(catalog.items.len(), 4);
}

#[test]
fn movielens_100k_fixture_reads() {
    let (catalog, _) = read("movielens", &fixture("movielens/ml-100k"), false).unwrap();
    assert_eq!(catalog.name, "ml-100k");
    assert_eq!(
        (
            catalog.users.len(),
            catalog.items.len(),
            catalog.interactions.len()
        ),
        (3, 4, 5)
    );
    let toy = catalog.item(catalog.item_idx("1").unwrap());
    assert_eq!(toy.title, "Toy Story (1995)");
    assert_eq!(toy.attributes["genres"], "Animation, Children's, Comedy");
    assert_eq!(toy.attributes["year"], "1995");
    assert_eq!(toy.release_time, Some(788_918_400));
    // ISO-8859-1 decoded.
    assert_eq!(catalog.item(1).title, "Misérables, Les (1995)");
    assert_eq!(catalog.item(1).attributes["genres"], "Drama, War");
    // The `unknown` item: no date, no genre but `unknown`.
    let unknown = catalog.item(catalog.item_idx("3").unwrap());
    assert_eq!(unknown.release_time, None);
    assert!(!unknown.attributes.contains_key("genres"));
    // No release date: the year comes from the title.
    assert_eq!(catalog.item(3).release_time, Some(788_918_400));
    let user = catalog.user(catalog.user_idx("2").unwrap());
    assert_eq!(user.attributes["age"], "53");
    assert_eq!(user.attributes["occupation"], "other");
    assert_eq!(catalog.interactions[0].timestamp, 874_965_758);
}

#[test]
fn movielens_1m_fixture_reads_and_decodes_codes() {
    let (catalog, _) = read("movielens", &fixture("movielens/ml-1m"), false).unwrap();
    assert_eq!(
        (
            catalog.users.len(),
            catalog.items.len(),
            catalog.interactions.len()
        ),
        (3, 4, 5)
    );
    let user = catalog.user(catalog.user_idx("1").unwrap());
    assert_eq!(user.attributes["age"], "under 18");
    assert_eq!(user.attributes["occupation"], "K-12 student");
    assert_eq!(user.attributes["gender"], "F");
    let user = catalog.user(catalog.user_idx("3").unwrap());
    assert_eq!(user.attributes["occupation"], "scientist");
    let peach = catalog.item(catalog.item_idx("661").unwrap());
    assert_eq!(peach.attributes["genres"], "Animation, Children's, Musical");
    assert_eq!(peach.release_time, Some(820_454_400));
    assert_eq!(
        catalog.item(catalog.item_idx("73").unwrap()).title,
        "Misérables, Les (1995)"
    );
}

#[test]
fn movielens_1m_layout_tolerates_crlf_and_gzip() {
    let ratings = fixture_text("movielens/ml-1m", "ratings.dat").replace('\n', "\r\n");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(ratings.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let (_tmp, path) = variant(
        "movielens/ml-1m",
        &[("ratings.dat", None), ("ratings.dat.gz", Some(&gz))],
    );
    let (catalog, _) = read("movielens", &path, false).unwrap();
    assert_eq!(catalog.interactions.len(), 5);
    assert_eq!(catalog.interactions[4].timestamp, 978_302_109);
}

#[test]
fn movielens_latest_fixture_reads_quoted_titles_and_tags() {
    let (catalog, _) = read("movielens", &fixture("movielens/ml-latest"), false).unwrap();
    assert_eq!(
        (
            catalog.users.len(),
            catalog.items.len(),
            catalog.interactions.len()
        ),
        (3, 4, 5)
    );
    assert_eq!(catalog.item(2).title, "Sleepers, The (1996)");
    assert_eq!(catalog.item(3).title, "Big \"Fish\" (2003)");
    assert!(!catalog.item(3).attributes.contains_key("genres"));
    // Tags: case-insensitive counts, most frequent first, first spelling kept.
    assert_eq!(catalog.item(0).attributes["tags"], "inspiring, teacher");
    assert_eq!(catalog.item(1).attributes["tags"], "Disney");
    // The tag of movie 999 (not in movies.csv) creates no item.
    assert_eq!(catalog.item_idx("999"), None);
    let half_star = catalog
        .interactions
        .iter()
        .find(|i| i.rating == Some(0.5))
        .unwrap();
    assert_eq!(catalog.item(half_star.item).id, "1061");
}

// ---------------------------------------------------------------- recbole: malformed input

#[test]
fn recbole_unknown_header_type() {
    let inter = replace_line(
        &fixture_text("recbole/tiny", "tiny.inter"),
        1,
        "user_id:token\titem_id:token\trating:int\ttimestamp:float\treview:token_seq",
    );
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(&inter))]);
    let err = read("recbole", &path, true).unwrap_err();
    assert_malformed(&err, "tiny.inter", 1, "rating");
    assert!(err.to_string().contains("unknown type `int`"), "{err}");
}

#[test]
fn recbole_header_column_without_type() {
    let item = replace_line(
        &fixture_text("recbole/tiny", "tiny.item"),
        1,
        "item_id:token\tmovie_title\trelease_year:token\tclass:token_seq\trank:float",
    );
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.item", Some(&item))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert_malformed(&err, "tiny.item", 1, "movie_title");
}

#[test]
fn recbole_missing_timestamp_column() {
    let inter = "user_id:token\titem_id:token\trating:float\nu1\ti1\t5\n";
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(inter.as_bytes()))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert_malformed(&err, "tiny.inter", 1, "timestamp");
}

#[test]
fn recbole_non_numeric_rating() {
    let inter = replace_line(
        &fixture_text("recbole/tiny", "tiny.inter"),
        3,
        "u1\ti2\tfive\t1100\t",
    );
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(&inter))]);
    assert_malformed(
        &read("recbole", &path, false).unwrap_err(),
        "tiny.inter",
        3,
        "rating",
    );
}

#[test]
fn recbole_bad_timestamp() {
    let inter = replace_line(
        &fixture_text("recbole/tiny", "tiny.inter"),
        4,
        "u2\ti1\t4\tyesterday\tfine",
    );
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(&inter))]);
    assert_malformed(
        &read("recbole", &path, false).unwrap_err(),
        "tiny.inter",
        4,
        "timestamp",
    );
}

#[test]
fn recbole_wrong_field_counts() {
    let text = fixture_text("recbole/tiny", "tiny.inter");
    let too_few = replace_line(&text, 2, "u1\ti1\t5");
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(&too_few))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert_malformed(&err, "tiny.inter", 2, "timestamp");
    assert!(err
        .to_string()
        .contains("the row has 3 tab-separated fields, the header 5"));

    let too_many = replace_line(&text, 6, "u3\ti2\t1\t1400\ttoo long\textra");
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(&too_many))]);
    assert_malformed(
        &read("recbole", &path, false).unwrap_err(),
        "tiny.inter",
        6,
        "field 6",
    );

    let user =
        b"user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token\nu1\t1\tF\n";
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.user", Some(user))]);
    assert_malformed(
        &read("recbole", &path, false).unwrap_err(),
        "tiny.user",
        2,
        "occupation",
    );
}

#[test]
fn recbole_non_numeric_float_column_and_bad_year() {
    let text = fixture_text("recbole/tiny", "tiny.item");
    let item = replace_line(&text, 3, "i2\tBeta Movie\tunkonwn\tDrama\tsecond");
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.item", Some(&item))]);
    assert_malformed(
        &read("recbole", &path, false).unwrap_err(),
        "tiny.item",
        3,
        "rank",
    );

    let item = replace_line(&text, 2, "i1\tAlpha Movie\t19x5\tAction Comedy\t1.5");
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.item", Some(&item))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert_malformed(&err, "tiny.item", 2, "release_year");
}

#[test]
fn recbole_empty_user_id() {
    let inter = replace_line(
        &fixture_text("recbole/tiny", "tiny.inter"),
        5,
        " \ti3\t2.5\t1300\t",
    );
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(&inter))]);
    assert_malformed(
        &read("recbole", &path, false).unwrap_err(),
        "tiny.inter",
        5,
        "user_id",
    );
}

#[test]
fn recbole_invalid_utf8_names_the_line() {
    let mut item = fixture_text("recbole/tiny", "tiny.item").into_bytes();
    // Re-encode "Délta" as ISO-8859-1: a lone 0xE9 byte is not UTF-8.
    let pos = item.windows(2).position(|w| w == "é".as_bytes()).unwrap();
    item.splice(pos..pos + 2, [0xE9]);
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.item", Some(&item))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert_encoding(&err, "tiny.item", 5);
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");

    let (catalog, report) = read("recbole", &path, true).unwrap();
    assert_eq!(report.skipped["tiny.item: not valid UTF-8"], 1);
    assert_eq!(catalog.item_idx("i4"), None);
    assert_eq!(catalog.items.len(), 3);
}

#[test]
fn recbole_missing_inter_file() {
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", None)]);
    let err = read("recbole", &path, true).unwrap_err();
    match &err {
        DataError::Missing { path: missing } => {
            assert_eq!(missing.file_name().unwrap(), "tiny.inter")
        }
        other => panic!("expected a missing-file error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("tiny.inter does not exist"),
        "{err}"
    );
}

#[test]
fn recbole_several_inter_files_without_a_match_are_ambiguous() {
    let inter = fixture_text("recbole/tiny", "tiny.inter");
    let (_tmp, path) = variant(
        "recbole/tiny",
        &[
            ("tiny.inter", None),
            ("a.inter", Some(inter.as_bytes())),
            ("b.inter", Some(inter.as_bytes())),
        ],
    );
    let err = read("recbole", &path, false).unwrap_err();
    assert!(matches!(err, DataError::Invalid { .. }), "{err:?}");
    assert!(
        err.to_string().contains("several .inter files (a, b)"),
        "{err}"
    );
}

#[test]
fn recbole_empty_file_and_header_only_file() {
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(b""))]);
    let err = read("recbole", &path, true).unwrap_err();
    assert_malformed(&err, "tiny.inter", 1, "header");
    assert!(err.to_string().contains("the file is empty"), "{err}");

    let header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n";
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(header.as_bytes()))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
    assert!(err.to_string().contains("holds no interactions"), "{err}");
}

#[test]
fn recbole_truncated_gzip() {
    let mut text = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    for row in 0..2_000 {
        text.push_str(&format!(
            "u{}\ti{}\t{}\t{}\n",
            row % 37,
            row % 101,
            row % 5 + 1,
            1000 + row
        ));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let truncated = &gz[..gz.len() / 2];
    let (_tmp, path) = variant(
        "recbole/tiny",
        &[("tiny.inter", None), ("tiny.inter.gz", Some(truncated))],
    );
    // Skipping bad rows does not hide a truncated file.
    let err = read("recbole", &path, true).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DataError::Invalid { .. }), "{err:?}");
    assert!(message.contains("tiny.inter.gz"), "{message}");
    assert!(message.contains("reading failed after line"), "{message}");
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn recbole_skip_bad_rows_counts_per_reason_and_keeps_good_rows() {
    let text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\treview:token_seq\n\
                u1\ti1\t5\t1000\tgood\n\
                u1\ti2\tfive\t1100\t\n\
                u2\ti1\t4\tnever\t\n\
                u2\ti3\t2.5\t1300\t\n\
                u3\ti2\t1\t1400\n\
                u3\ti3\tbad\t1500\t\n\
                u3\ti4\t\t1600\tno rating\n";
    let (_tmp, path) = variant("recbole/tiny", &[("tiny.inter", Some(text.as_bytes()))]);
    let err = read("recbole", &path, false).unwrap_err();
    assert_malformed(&err, "tiny.inter", 3, "rating");

    let (catalog, report) = read("recbole", &path, true).unwrap();
    assert_eq!(catalog.interactions.len(), 3);
    assert_eq!(report.total_skipped(), 4);
    // Two bad ratings share one reason: the offending value is not part of the key.
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
    assert_eq!(report.skipped["tiny.inter: rating: not a number"], 2);
    assert_eq!(
        report.skipped["tiny.inter: timestamp: not a Unix timestamp in seconds"],
        1
    );
    assert_eq!(
        report.skipped["tiny.inter: review: the row has 4 tab-separated fields, the header 5"],
        1
    );
    // An empty rating is no rating, not a bad row.
    let unrated = catalog.interactions.last().unwrap();
    assert_eq!((unrated.timestamp, unrated.rating), (1600, None));
    assert_eq!(unrated.review.as_deref(), Some("no rating"));
}

#[test]
fn unknown_format_and_bad_spec() {
    let err = "parquet:x".parse::<SourceSpec>().unwrap_err();
    assert!(
        err.to_string().contains("unknown dataset format `parquet`"),
        "{err}"
    );
    let err = "ml-1m".parse::<SourceSpec>().unwrap_err();
    assert!(err.to_string().contains("FORMAT:PATH"), "{err}");
    let err = read("recbole", Path::new("/nonexistent/ml-1m"), false).unwrap_err();
    assert!(matches!(err, DataError::MissingSource { .. }), "{err:?}");
}

// ---------------------------------------------------------------- movielens: malformed input

#[test]
fn movielens_folder_without_ratings() {
    let (_tmp, path) = variant("movielens/ml-1m", &[("ratings.dat", None)]);
    let err = read("movielens", &path, false).unwrap_err();
    assert!(matches!(err, DataError::Invalid { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no MovieLens ratings file"),
        "{err}"
    );
}

#[test]
fn movielens_1m_wrong_field_count() {
    let ratings = replace_line(
        &fixture_text("movielens/ml-1m", "ratings.dat"),
        2,
        "1::661::3",
    );
    let (_tmp, path) = variant("movielens/ml-1m", &[("ratings.dat", Some(&ratings))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "ratings.dat", 2, "Timestamp");
}

#[test]
fn movielens_1m_unknown_occupation_code() {
    let users = replace_line(
        &fixture_text("movielens/ml-1m", "users.dat"),
        3,
        "3::M::25::25::55117",
    );
    let (_tmp, path) = variant("movielens/ml-1m", &[("users.dat", Some(&users))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "users.dat", 3, "Occupation");

    let (catalog, report) = read("movielens", &path, true).unwrap();
    assert_eq!(report.total_skipped(), 1);
    // The ratings still create user 3, without attributes.
    let user = catalog.user(catalog.user_idx("3").unwrap());
    assert!(user.attributes.is_empty());
}

#[test]
fn movielens_100k_bad_genre_flag_and_release_date() {
    let text = fixture_text("movielens/ml-100k", "u.item");
    let line = text
        .lines()
        .next()
        .unwrap()
        .replacen("|0|0|0|1|", "|0|0|2|1|", 1);
    let item = replace_line(&text, 1, &line);
    // The file is ISO-8859-1; `replace_line` works on the UTF-8 view, so re-encode.
    let item = latin1(&item);
    let (_tmp, path) = variant("movielens/ml-100k", &[("u.item", Some(&item))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "u.item", 1, "genre flag `Adventure`");

    let line = text
        .lines()
        .next()
        .unwrap()
        .replacen("01-Jan-1995", "1995/01/01", 1);
    let item = latin1(&replace_line(&text, 1, &line));
    let (_tmp, path) = variant("movielens/ml-100k", &[("u.item", Some(&item))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "u.item", 1, "release date");
}

fn latin1(utf8: &[u8]) -> Vec<u8> {
    std::str::from_utf8(utf8)
        .unwrap()
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap())
        .collect()
}

#[test]
fn movielens_100k_non_numeric_rating_skipped() {
    let data = replace_line(
        &fixture_text("movielens/ml-100k", "u.data"),
        4,
        "2\t3\tx\t888551010",
    );
    let (_tmp, path) = variant("movielens/ml-100k", &[("u.data", Some(&data))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "u.data", 4, "rating");
    let (catalog, report) = read("movielens", &path, true).unwrap();
    assert_eq!(catalog.interactions.len(), 4);
    assert_eq!(report.skipped["u.data: rating: not a number"], 1);
}

#[test]
fn movielens_latest_missing_column_and_bad_rows() {
    let text = fixture_text("movielens/ml-latest", "ratings.csv");
    let missing = replace_line(&text, 1, "userId,movieId,stars,timestamp");
    let (_tmp, path) = variant("movielens/ml-latest", &[("ratings.csv", Some(&missing))]);
    let err = read("movielens", &path, true).unwrap_err();
    assert_malformed(&err, "ratings.csv", 1, "rating");

    let short = replace_line(&text, 3, "1,1029,3.0");
    let (_tmp, path) = variant("movielens/ml-latest", &[("ratings.csv", Some(&short))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "ratings.csv", 3, "timestamp");

    let bad_time = replace_line(&text, 5, "2,1061,0.5,2016-10-16");
    let (_tmp, path) = variant("movielens/ml-latest", &[("ratings.csv", Some(&bad_time))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "ratings.csv", 5, "timestamp");
    let (catalog, report) = read("movielens", &path, true).unwrap();
    assert_eq!(catalog.interactions.len(), 4);
    assert_eq!(report.total_skipped(), 1);
}

#[test]
fn movielens_latest_invalid_utf8_and_quoted_newline_lines() {
    let mut movies = fixture_text("movielens/ml-latest", "movies.csv").into_bytes();
    movies.extend_from_slice(b"3000,\"Two\nLines (2001)\",Drama\n3001,Caf\xe9 (2002),Drama\n");
    let (_tmp, path) = variant("movielens/ml-latest", &[("movies.csv", Some(&movies))]);
    let err = read("movielens", &path, false).unwrap_err();
    // The quoted title spans lines 6-7, so the bad byte is on line 8.
    assert_encoding(&err, "movies.csv", 8);
    let (catalog, report) = read("movielens", &path, true).unwrap();
    assert_eq!(report.skipped["movies.csv: not valid UTF-8"], 1);
    assert_eq!(
        catalog.item(catalog.item_idx("3000").unwrap()).title,
        "Two\nLines (2001)"
    );
    assert_eq!(catalog.item_idx("3001"), None);
}

#[test]
fn movielens_empty_ratings_file() {
    let (_tmp, path) = variant("movielens/ml-latest", &[("ratings.csv", Some(b""))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert_malformed(&err, "ratings.csv", 1, "header");

    let (_tmp, path) = variant("movielens/ml-1m", &[("ratings.dat", Some(b"\n"))]);
    let err = read("movielens", &path, false).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
}
