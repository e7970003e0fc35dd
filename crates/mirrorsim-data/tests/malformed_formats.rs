//! Bad input for the downloaded-dataset readers: every malformed row names its file, line and
//! field; `skip_bad_rows` counts skipped rows per reason and keeps the good ones; missing
//! files, unknown formats, bad encodings and empty datasets get one clear sentence.

use std::io::Write;
use std::path::{Path, PathBuf};

use mirrorsim_data::{read_source, Catalog, DataError, ReadOptions, ReadReport, SourceSpec};

/// A temp folder `ds` holding `files`; names ending in `.gz` are written gzipped.
fn dataset(files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ds");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in files {
        let path = dir.join(name);
        if name.ends_with(".gz") {
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&path).unwrap(),
                flate2::Compression::default(),
            );
            gz.write_all(bytes).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(&path, bytes).unwrap();
        }
    }
    (tmp, dir)
}

fn read(format: &str, path: &Path, skip: bool) -> Result<(Catalog, ReadReport), DataError> {
    let spec: SourceSpec = format!("{format}:{}", path.display()).parse()?;
    read_source(
        &spec,
        &ReadOptions {
            skip_bad_rows: skip,
        },
    )
}

fn fail(format: &str, path: &Path) -> DataError {
    match read(format, path, false) {
        Ok((c, _)) => panic!(
            "{format}:{} read {} interactions",
            path.display(),
            c.interactions.len()
        ),
        Err(e) => e,
    }
}

/// Asserts `err` is a malformed-row error at `file`:`line` in `field`, and says so in words.
fn assert_malformed(err: &DataError, file: &str, line: u64, field: &str) {
    let text = err.to_string();
    match err {
        DataError::Malformed {
            path,
            line: l,
            field: f,
            ..
        } => {
            assert_eq!(path.file_name().unwrap().to_string_lossy(), file, "{text}");
            assert_eq!((*l, f.as_str()), (line, field), "{text}");
        }
        other => panic!("expected a malformed-row error, got: {other}"),
    }
    assert!(
        text.contains(&format!("{file}:{line}: field `{field}`")),
        "{text}"
    );
}

const REVIEW_OK: &str = r#"{"rating": 4.0, "title": "Fine", "text": "ok", "asin": "A1", "parent_asin": "P1", "user_id": "U1", "timestamp": 1588687728923}"#;

fn review(user: &str, timestamp: &str, rating: &str) -> String {
    format!(
        r#"{{"rating": {rating}, "title": "t", "text": "x", "asin": "A2", "parent_asin": "P2", "user_id": "{user}", "timestamp": {timestamp}}}"#
    )
}

#[test]
fn amazon2023_bad_rows_name_file_line_and_field() {
    let bad_json = format!("{REVIEW_OK}\n{{\"rating\": 4.0, \"user_id\": \n");
    let (_t, dir) = dataset(&[("Beauty.jsonl", bad_json.as_bytes())]);
    assert_malformed(&fail("amazon2023", &dir), "Beauty.jsonl", 2, "record");

    let bad_time = review("U2", "\"yesterday\"", "3.0");
    let (_t, dir) = dataset(&[("Beauty.jsonl.gz", bad_time.as_bytes())]);
    assert_malformed(&fail("amazon2023", &dir), "Beauty.jsonl.gz", 1, "timestamp");

    let bad_rating = format!(
        "{REVIEW_OK}\n{REVIEW_OK}\n{}\n",
        review("U2", "1588687728923", "7")
    );
    let (_t, dir) = dataset(&[("Beauty.jsonl", bad_rating.as_bytes())]);
    assert_malformed(&fail("amazon2023", &dir), "Beauty.jsonl", 3, "rating");

    let meta = r#"{"title": "No id", "main_category": "All Beauty"}"#;
    let (_t, dir) = dataset(&[
        ("Beauty.jsonl", REVIEW_OK.as_bytes()),
        ("meta_Beauty.jsonl", meta.as_bytes()),
    ]);
    assert_malformed(
        &fail("amazon2023", &dir),
        "meta_Beauty.jsonl",
        1,
        "parent_asin",
    );
}

#[test]
fn amazon2023_skip_mode_counts_reasons_and_keeps_good_rows() {
    let lines = [
        REVIEW_OK.to_owned(),
        "{\"broken\": ".to_owned(),
        review("U2", "\"soon\"", "3.0"),
        review("U3", "1588687728923", "5.0"),
        review("U4", "\"later\"", "3.0"),
        "[1, 2]".to_owned(),
    ];
    let (_t, dir) = dataset(&[("Beauty.jsonl", lines.join("\n").as_bytes())]);
    let (c, report) = read("amazon2023", &dir, true).unwrap();
    assert_eq!(c.interactions.len(), 2);
    assert_eq!(c.users.len(), 2);
    assert_eq!(report.total_skipped(), 4);
    assert_eq!(report.skipped["Beauty.jsonl: timestamp: not a number"], 2);
    assert_eq!(
        report.skipped["Beauty.jsonl: record: not valid JSON (EOF while parsing a value)"],
        1
    );
    assert_eq!(
        report.skipped["Beauty.jsonl: record: expected a JSON object on this line"],
        1
    );
}

const BEHAVIOR_OK: &str = "1\tU1\t11/11/2019 9:05:58 AM\tN1 N2\tN3-1 N4-0";

#[test]
fn mind_bad_rows_name_file_line_and_field() {
    let bad_time = format!("{BEHAVIOR_OK}\n2\tU2\t2019-11-11 09:05:58\t\tN3-1\n");
    let (_t, dir) = dataset(&[("behaviors.tsv", bad_time.as_bytes())]);
    assert_malformed(&fail("mind", &dir), "behaviors.tsv", 2, "time");

    let bad_label = "1\tU1\t11/11/2019 9:05:58 AM\t\tN3-1 N4-2\n";
    let (_t, dir) = dataset(&[("behaviors.tsv", bad_label.as_bytes())]);
    assert_malformed(&fail("mind", &dir), "behaviors.tsv", 1, "impressions");

    let short = format!("{BEHAVIOR_OK}\n{BEHAVIOR_OK}\n3\tU3\t11/11/2019 9:05:58 AM\tN3-1\n");
    let (_t, dir) = dataset(&[("behaviors.tsv", short.as_bytes())]);
    assert_malformed(&fail("mind", &dir), "behaviors.tsv", 3, "columns");

    let untitled = "N3\tnews\tnewsus\t\tabstract\turl\t[]\t[]\n";
    let (_t, dir) = dataset(&[
        ("behaviors.tsv", BEHAVIOR_OK.as_bytes()),
        ("news.tsv", untitled.as_bytes()),
    ]);
    assert_malformed(&fail("mind", &dir), "news.tsv", 1, "title");
}

#[test]
fn mind_invalid_utf8_is_an_encoding_error_with_line() {
    let news =
        b"N3\tnews\tnewsus\tFine title\t\t\t[]\t[]\nN4\tnews\tnewsus\tCaf\xe9 opens\t\t\t[]\t[]\n";
    let (_t, dir) = dataset(&[
        ("behaviors.tsv", BEHAVIOR_OK.as_bytes()),
        ("news.tsv", news),
    ]);
    let err = fail("mind", &dir);
    assert!(
        matches!(&err, DataError::Encoding { line: 2, path, .. } if path.ends_with("news.tsv")),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("news.tsv:2: the file is not valid UTF-8"));
    let (c, report) = read("mind", &dir, true).unwrap();
    assert_eq!(report.skipped["news.tsv: not valid UTF-8"], 1);
    assert_eq!(c.item(c.item_idx("N3").unwrap()).title, "Fine title");
    assert_eq!(c.item(c.item_idx("N4").unwrap()).title, "N4");
}

#[test]
fn mind_skip_mode_counts_reasons_and_keeps_good_rows() {
    let text = [
        BEHAVIOR_OK,
        "2\tU2\tyesterday\t\tN3-1",
        "3\tU3\tlast week\t\tN3-1",
        "4\tU4\t11/12/2019 1:00:00 PM\t\tN3-1 N5-x",
        "5\tU5\t11/12/2019 1:00:00 PM\t\tN5-1",
    ]
    .join("\n");
    let (_t, dir) = dataset(&[("behaviors.tsv", text.as_bytes())]);
    let (c, report) = read("mind", &dir, true).unwrap();
    // U1: one click + two history items; U5: one click.
    assert_eq!(c.interactions.len(), 4);
    assert_eq!(c.users.len(), 2);
    assert_eq!(
        report.skipped["behaviors.tsv: time: not a time like `11/15/2019 10:22:32 AM`"],
        2
    );
    assert_eq!(
        report.skipped
            ["behaviors.tsv: impressions: an entry is not a news id followed by -1 (clicked) or -0"],
        1
    );
}

const STEAM_OK: &str = "{'user_id': 'u1', 'reviews': [{'posted': 'Posted November 5, 2011.', 'item_id': '1250', 'recommend': True, 'review': 'Good'}]}";

#[test]
fn steam_bad_rows_name_file_line_and_field() {
    let unterminated =
        format!("{STEAM_OK}\n{{'user_id': 'u2', 'reviews': [{{'review': 'oops}}]}}\n");
    let (_t, dir) = dataset(&[("australian_user_reviews.json", unterminated.as_bytes())]);
    let err = fail("steam", &dir);
    assert_malformed(&err, "australian_user_reviews.json", 2, "record");
    assert!(err.to_string().contains("string is never closed"), "{err}");

    let bad_date = "{'user_id': 'u2', 'reviews': [{'posted': 'Posted Smarch 3, 2011.', 'item_id': '1', 'recommend': True, 'review': ''}]}";
    let (_t, dir) = dataset(&[("australian_user_reviews.json.gz", bad_date.as_bytes())]);
    assert_malformed(
        &fail("steam", &dir),
        "australian_user_reviews.json.gz",
        1,
        "reviews[0].posted",
    );

    let no_item = "{'user_id': 'u2', 'reviews': [{'posted': 'Posted May 1, 2012.', 'item_id': '7', 'recommend': True, 'review': ''}, {'posted': 'Posted May 2, 2012.', 'recommend': False, 'review': ''}]}";
    let (_t, dir) = dataset(&[("australian_user_reviews.json", no_item.as_bytes())]);
    assert_malformed(
        &fail("steam", &dir),
        "australian_user_reviews.json",
        1,
        "reviews[1].item_id",
    );

    let v2 = "{'username': 'a', 'product_id': '1', 'date': '2017-12-17', 'text': ''}\n{'username': 'b', 'product_id': '2', 'date': 'December 2017', 'text': ''}\n";
    let (_t, dir) = dataset(&[("steam_reviews.json", v2.as_bytes())]);
    assert_malformed(&fail("steam", &dir), "steam_reviews.json", 2, "date");
}

#[test]
fn steam_skip_mode_leaves_out_a_whole_bad_line() {
    let text = [
        STEAM_OK,
        "{'user_id': 'u2', 'reviews': [{'posted': 'Posted May 1, 2012.', 'item_id': '7', 'recommend': True, 'review': ''}, {'posted': 'Posted Smarch 2, 2012.', 'item_id': '8', 'recommend': True, 'review': ''}]}",
        "not a dict",
    ]
    .join("\n");
    let (_t, dir) = dataset(&[("australian_user_reviews.json", text.as_bytes())]);
    let (c, report) = read("steam", &dir, true).unwrap();
    assert_eq!(c.interactions.len(), 1);
    assert!(c.user_idx("u2").is_none() && c.item_idx("7").is_none());
    assert_eq!(report.total_skipped(), 2);
    assert_eq!(
        report.skipped["australian_user_reviews.json: reviews[1].posted: not a date like `Posted November 5, 2011.`"],
        1
    );
}

fn shelving(user: &str, date: &str, rating: &str) -> String {
    format!(
        r#"{{"user_id": "{user}", "book_id": "1384", "review_id": "r-{user}", "is_read": true, "rating": {rating}, "date_added": "{date}"}}"#
    )
}

#[test]
fn goodreads_bad_rows_name_file_line_and_field() {
    let text = format!(
        "{}\n{}\n",
        shelving("a", "Thu Dec 29 12:46:54 -0800 2016", "5"),
        shelving("b", "yesterday", "4")
    );
    let (_t, dir) = dataset(&[("goodreads_interactions_poetry.json.gz", text.as_bytes())]);
    assert_malformed(
        &fail("goodreads", &dir),
        "goodreads_interactions_poetry.json.gz",
        2,
        "date_added",
    );

    let text = shelving("a", "Thu Dec 29 12:46:54 -0800 2016", "\"five\"");
    let (_t, dir) = dataset(&[("goodreads_interactions_poetry.json", text.as_bytes())]);
    assert_malformed(
        &fail("goodreads", &dir),
        "goodreads_interactions_poetry.json",
        1,
        "rating",
    );

    let book = r#"{"book_id": "1384", "title": "The Iliad", "publication_year": "MCMXCVIII"}"#;
    let (_t, dir) = dataset(&[
        (
            "goodreads_interactions_poetry.json",
            shelving("a", "Thu Dec 29 12:46:54 -0800 2016", "5").as_bytes(),
        ),
        ("goodreads_books_poetry.json", book.as_bytes()),
    ]);
    assert_malformed(
        &fail("goodreads", &dir),
        "goodreads_books_poetry.json",
        1,
        "publication_year",
    );
}

const MATRIX_HEADER: &str =
    "user_id,video_id,play_duration,video_duration,time,date,timestamp,watch_ratio";

#[test]
fn kuairec_bad_rows_name_file_line_and_field() {
    let text =
        format!("{MATRIX_HEADER}\n14,148,1,2,,,1593898068.3,0.5\n14,183,1,2,,,1593898080.0,abc\n");
    let (_t, dir) = dataset(&[("small_matrix.csv", text.as_bytes())]);
    assert_malformed(&fail("kuairec", &dir), "small_matrix.csv", 3, "watch_ratio");

    let text = format!("{MATRIX_HEADER}\n14,148,1,2,,,1593898068.3,0.5,extra\n");
    let (_t, dir) = dataset(&[("big_matrix.csv.gz", text.as_bytes())]);
    assert_malformed(&fail("kuairec", &dir), "big_matrix.csv.gz", 2, "columns");

    let text = format!("{MATRIX_HEADER}\n14,148,1,2,,,,0.5\n");
    let (_t, dir) = dataset(&[("small_matrix.csv", text.as_bytes())]);
    assert_malformed(&fail("kuairec", &dir), "small_matrix.csv", 2, "timestamp");

    let matrix = format!("{MATRIX_HEADER}\n14,148,1,2,,,1593898068.3,0.5\n");
    let (_t, dir) = dataset(&[
        ("small_matrix.csv", matrix.as_bytes()),
        (
            "item_categories.csv",
            b"video_id,feat\n148,[8]\n183,\"[8,\"\n",
        ),
    ]);
    assert_malformed(&fail("kuairec", &dir), "item_categories.csv", 3, "feat");
}

#[test]
fn kuairec_skip_mode_counts_reasons_and_keeps_good_rows() {
    let text = format!(
        "{MATRIX_HEADER}\n14,148,1,2,,,1593898068.3,0.5\n14,183,1,2,,,1593898080.0,-1\n\
         15,183,1,2,,,soon,0.5\n16,183,1,2,,,1593898090.0,1.5\n17,183\n"
    );
    let (_t, dir) = dataset(&[("small_matrix.csv", text.as_bytes())]);
    let (c, report) = read("kuairec", &dir, true).unwrap();
    assert_eq!(c.interactions.len(), 2);
    assert_eq!(
        report.skipped["small_matrix.csv: watch_ratio: not a non-negative number"],
        1
    );
    assert_eq!(
        report.skipped["small_matrix.csv: timestamp: not Unix seconds"],
        1
    );
    assert_eq!(
        report.skipped["small_matrix.csv: columns: expected 8 columns as in the header, found 2"],
        1
    );
}

const LASTFM_TAGS: &[u8] = b"tagID\ttagValue\n1\tmetal\n2\tgothic\n";

#[test]
fn lastfm_bad_rows_name_file_line_and_field() {
    let timed = b"userID\tartistID\ttagID\ttimestamp\n2\t1\t1\t1238536800000\n2\t1\t2\tsoon\n";
    let (_t, dir) = dataset(&[
        ("tags.dat", LASTFM_TAGS),
        ("user_taggedartists-timestamps.dat", timed),
    ]);
    assert_malformed(
        &fail("lastfm", &dir),
        "user_taggedartists-timestamps.dat",
        3,
        "timestamp",
    );

    let unknown_tag = b"userID\tartistID\ttagID\ttimestamp\n2\t1\t99\t1238536800000\n";
    let (_t, dir) = dataset(&[
        ("tags.dat", LASTFM_TAGS),
        ("user_taggedartists-timestamps.dat", unknown_tag),
    ]);
    assert_malformed(
        &fail("lastfm", &dir),
        "user_taggedartists-timestamps.dat",
        2,
        "tagID",
    );

    let plays = b"userID\tartistID\tweight\n2\t51\t13883\n2\t52\tmany\n";
    let timed = b"userID\tartistID\ttagID\ttimestamp\n2\t1\t1\t1238536800000\n";
    let (_t, dir) = dataset(&[
        ("user_artists.dat", plays),
        ("user_taggedartists-timestamps.dat", timed),
    ]);
    assert_malformed(&fail("lastfm", &dir), "user_artists.dat", 3, "weight");

    let dated = b"userID\tartistID\ttagID\tday\tmonth\tyear\n2\t1\t1\t31\t2\t2009\n";
    let (_t, dir) = dataset(&[("user_taggedartists.dat", dated)]);
    assert_malformed(&fail("lastfm", &dir), "user_taggedartists.dat", 2, "day");
}

#[test]
fn lastfm_skip_mode_counts_reasons_and_keeps_good_rows() {
    let timed =
        b"userID\tartistID\ttagID\ttimestamp\n2\t1\t1\t1238536800000\n2\t1\t9\t1238536800000\n\
                  3\t1\t8\t1238536800000\n3\t1\t2\n4\t2\t2\t1277935200000\n";
    let (_t, dir) = dataset(&[
        ("tags.dat", LASTFM_TAGS),
        ("user_taggedartists-timestamps.dat", timed),
    ]);
    let (c, report) = read("lastfm", &dir, true).unwrap();
    assert_eq!(c.interactions.len(), 2);
    assert_eq!(
        report.skipped["user_taggedartists-timestamps.dat: tagID: not in tags.dat"],
        2
    );
    assert_eq!(
        report.skipped
            ["user_taggedartists-timestamps.dat: columns: expected 4 tab-separated columns, found 3"],
        1
    );
}

const MAPPING: &str = r#"
[interactions]
path = "events.csv"
user = "uid"
item = "iid"
timestamp = "ts"
timestamp_format = "iso8601"
rating = "stars"
"#;

#[test]
fn table_bad_rows_name_file_line_and_field() {
    let events =
        b"uid,iid,ts,stars\nu1,i1,2021-03-04,4\nu1,i2,2021-03-05,5\nu2,i1,last tuesday,3\n";
    let (_t, dir) = dataset(&[("map.toml", MAPPING.as_bytes()), ("events.csv", events)]);
    assert_malformed(&fail("table", &dir.join("map.toml")), "events.csv", 4, "ts");

    let events = b"uid,iid,ts,stars\nu1,i1,2021-03-04,four\n";
    let (_t, dir) = dataset(&[("map.toml", MAPPING.as_bytes()), ("events.csv", events)]);
    assert_malformed(
        &fail("table", &dir.join("map.toml")),
        "events.csv",
        2,
        "stars",
    );

    let mapping = format!(
        "{MAPPING}\n[items]\npath = \"items.jsonl\"\nid = \"iid\"\nrelease_time = \"year\"\nrelease_time_format = \"year\"\n"
    );
    let items = b"{\"iid\": \"i1\", \"year\": 1999}\n{\"iid\": \"i2\", \"year\": \"19x9\"}\n";
    let (_t, dir) = dataset(&[
        ("map.toml", mapping.as_bytes()),
        ("events.csv", b"uid,iid,ts,stars\nu1,i1,2021-03-04,4\n"),
        ("items.jsonl", items),
    ]);
    assert_malformed(
        &fail("table", &dir.join("map.toml")),
        "items.jsonl",
        2,
        "year",
    );
}

#[test]
fn table_mapping_errors_are_one_sentence_naming_the_problem() {
    let events: &[u8] = b"uid,iid,ts,stars\nu1,i1,2021-03-04,4\n";
    let unknown_key = MAPPING.replace("rating = \"stars\"", "rating = \"stars\"\ncolour = \"red\"");
    let (_t, dir) = dataset(&[("map.toml", unknown_key.as_bytes()), ("events.csv", events)]);
    let err = fail("table", &dir.join("map.toml")).to_string();
    assert!(
        err.contains("map.toml: line 9: unknown field `colour`"),
        "{err}"
    );

    let no_column = MAPPING.replace("rating = \"stars\"", "rating = \"score\"");
    let (_t, dir) = dataset(&[("map.toml", no_column.as_bytes()), ("events.csv", events)]);
    let err = fail("table", &dir.join("map.toml")).to_string();
    assert!(
        err.contains("events.csv: the header has no column `score`"),
        "{err}"
    );

    let bad_format = MAPPING.replace("\"iso8601\"", "\"%b %d\"");
    let (_t, dir) = dataset(&[("map.toml", bad_format.as_bytes()), ("events.csv", events)]);
    let err = fail("table", &dir.join("map.toml")).to_string();
    assert!(
        err.contains("timestamp_format `%b %d` is not supported"),
        "{err}"
    );

    let (_t, dir) = dataset(&[("map.toml", MAPPING.as_bytes())]);
    let err = fail("table", &dir.join("map.toml")).to_string();
    assert!(err.contains("events.csv does not exist"), "{err}");
}

#[test]
fn table_skip_mode_counts_reasons_and_keeps_good_rows() {
    let events = b"uid,iid,ts,stars\nu1,i1,2021-03-04,4\n,i2,2021-03-05,5\nu2,i1,soon,3\nu3,i1,later,3\nu3,i2,2021-03-06,\n";
    let (_t, dir) = dataset(&[("map.toml", MAPPING.as_bytes()), ("events.csv", events)]);
    let (c, report) = read("table", &dir.join("map.toml"), true).unwrap();
    assert_eq!(c.interactions.len(), 2);
    assert_eq!(
        report.skipped["events.csv: ts: not an ISO 8601 date or time"],
        2
    );
    assert_eq!(report.skipped["events.csv: uid: empty"], 1);
}

#[test]
fn missing_files_unknown_formats_and_empty_datasets_get_one_sentence() {
    let err = fail("mind", Path::new("/nonexistent/MINDsmall_train"));
    assert_eq!(
        err.to_string(),
        "/nonexistent/MINDsmall_train does not exist; check the path after the `FORMAT:` prefix"
    );

    let (_t, dir) = dataset(&[("news.tsv", b"N1\tnews\tnewsus\tTitle\t\t\t[]\t[]\n")]);
    let err = fail("mind", &dir).to_string();
    assert!(err.ends_with("no behaviors.tsv found (optionally gzipped); the mind format expects it in this folder"), "{err}");

    let (_t, dir) = dataset(&[("readme.txt", b"nothing here")]);
    for format in ["amazon2023", "steam", "goodreads", "kuairec", "lastfm"] {
        let err = fail(format, &dir);
        assert!(matches!(err, DataError::Invalid { .. }), "{format}: {err}");
        assert!(
            err.to_string().starts_with(&dir.display().to_string()),
            "{format}: {err}"
        );
    }

    let err = "parquet:data/x".parse::<SourceSpec>().unwrap_err();
    assert!(err.to_string().starts_with(
        "unknown dataset format `parquet`; known formats: recbole, movielens, amazon2023"
    ));

    let (_t, dir) = dataset(&[("small_matrix.csv", b"")]);
    let err = fail("kuairec", &dir).to_string();
    assert!(
        err.ends_with(
            "small_matrix.csv: the file is empty; a header row naming its columns is expected"
        ),
        "{err}"
    );

    let (_t, dir) = dataset(&[("behaviors.tsv", b"")]);
    let err = fail("mind", &dir);
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
    assert!(err
        .to_string()
        .ends_with("holds no interactions; a dataset needs at least one user–item interaction"));
}
