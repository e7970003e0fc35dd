//! Exact counts on the real datasets in ../shared/data (ML-100K and ML-1M as RecBole atomic
//! files, ml-latest-small as the original CSVs, and the demo's embedded copy of the latter).
//! Where ../shared/data is absent the tests say so loudly and return.

use std::path::PathBuf;

use mirrorsim_data::stats::DatasetStats;
use mirrorsim_data::{read_source, Catalog, ReadOptions, SourceSpec};

fn shared_data(folder: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(folder);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "\n!!!!!!!!!! SKIPPED: {} is absent; real-data checks did not run !!!!!!!!!!\n",
            path.display()
        );
        None
    }
}

fn load(format: &str, path: &std::path::Path) -> Catalog {
    let spec: SourceSpec = format!("{format}:{}", path.display()).parse().unwrap();
    let (catalog, report) = read_source(&spec, &ReadOptions::default()).unwrap();
    assert_eq!(report.total_skipped(), 0);
    catalog
}

#[test]
fn ml_100k_recbole_counts() {
    let Some(path) = shared_data("ml-100k") else {
        return;
    };
    let catalog = load("recbole", &path);
    assert_eq!(catalog.name, "ml-100k");
    let stats = DatasetStats::compute(&catalog);
    assert_eq!(stats.interactions, 100_000);
    assert_eq!(stats.users, 943);
    assert_eq!(stats.items, 1_682);
    assert_eq!(stats.items_with_interactions, 1_682);
    assert_eq!(stats.time_min, Some(874_724_710));
    assert_eq!(stats.time_max, Some(893_286_638));
    let histogram = stats.rating_histogram.as_ref().unwrap();
    assert_eq!(
        histogram.bins(),
        &[
            (1.0, 6_110),
            (2.0, 11_370),
            (3.0, 27_145),
            (4.0, 34_174),
            (5.0, 21_201)
        ]
    );
    assert_eq!(stats.interactions_per_user.min, 20);

    // Item 1: title without the year, the year as release time and attribute, genres joined.
    let toy_story = catalog.item(catalog.item_idx("1").unwrap());
    assert_eq!(toy_story.title, "Toy Story");
    assert_eq!(
        toy_story.attributes["genres"],
        "Animation, Children's, Comedy"
    );
    assert_eq!(toy_story.attributes["year"], "1995");
    assert_eq!(toy_story.release_time, Some(788_918_400));
    // Item 267 has the placeholder `unkonwn` as its year: no release time, no failure.
    let unknown = catalog.item(catalog.item_idx("267").unwrap());
    assert_eq!(unknown.release_time, None);
    // ML-100K's users carry real ages and occupation words: kept as written.
    let user = catalog.user(catalog.user_idx("1").unwrap());
    assert_eq!(user.attributes["age"], "24");
    assert_eq!(user.attributes["occupation"], "technician");
    assert_eq!(user.attributes["gender"], "M");
    assert_eq!(user.attributes["zip_code"], "85711");
    // The first row of u.data.
    let first = catalog
        .interactions
        .iter()
        .find(|i| catalog.user(i.user).id == "196" && catalog.item(i.item).id == "242")
        .unwrap();
    assert_eq!((first.timestamp, first.rating), (881_250_949, Some(3.0)));
}

#[test]
fn ml_1m_recbole_counts() {
    let Some(path) = shared_data("ml-1m") else {
        return;
    };
    let catalog = load("recbole", &path);
    assert_eq!(catalog.name, "ml-1m");
    let stats = DatasetStats::compute(&catalog);
    assert_eq!(stats.interactions, 1_000_209);
    assert_eq!(stats.users, 6_040);
    assert_eq!(stats.users_with_interactions, 6_040);
    assert_eq!(stats.items, 3_883);
    assert_eq!(stats.items_with_interactions, 3_706);
    assert_eq!(stats.time_min, Some(956_703_932));
    assert_eq!(stats.time_max, Some(1_046_454_590));
    assert_eq!(stats.time_min_iso.as_deref(), Some("2000-04-25T23:05:32Z"));
    assert_eq!(stats.time_max_iso.as_deref(), Some("2003-02-28T17:49:50Z"));
    let histogram = stats.rating_histogram.as_ref().unwrap();
    assert_eq!(
        histogram.bins(),
        &[
            (1.0, 56_174),
            (2.0, 107_557),
            (3.0, 261_197),
            (4.0, 348_971),
            (5.0, 226_310)
        ]
    );
    assert_eq!(stats.interactions_per_user.min, 20);
    assert_eq!(stats.interactions_per_user.max, 2_314);
    assert_eq!(stats.share_with_review, 0.0);
    assert_eq!(stats.share_with_impressions, 0.0);

    // Users 1m_1 (age code 1, occupation 10) and 1m_2 (56, 16): decoded to words.
    let user = catalog.user(catalog.user_idx("1m_1").unwrap());
    assert_eq!(user.attributes["age"], "under 18");
    assert_eq!(user.attributes["occupation"], "K-12 student");
    assert_eq!(user.attributes["gender"], "F");
    assert_eq!(user.attributes["zip_code"], "48067");
    let user = catalog.user(catalog.user_idx("1m_2").unwrap());
    assert_eq!(user.attributes["age"], "56+");
    assert_eq!(user.attributes["occupation"], "self-employed");
    // Age buckets as SOURCE.md counts them.
    let under_18 = catalog
        .users
        .iter()
        .filter(|u| u.attributes["age"] == "under 18")
        .count();
    let age_25_34 = catalog
        .users
        .iter()
        .filter(|u| u.attributes["age"] == "25-34")
        .count();
    assert_eq!((under_18, age_25_34), (222, 2_096));

    // Item ids are the titles with the year; non-ASCII titles survive.
    let toy_story = catalog.item(catalog.item_idx("Toy Story (1995)").unwrap());
    assert_eq!(toy_story.title, "Toy Story");
    assert_eq!(
        toy_story.attributes["genres"],
        "Animation, Children's, Comedy"
    );
    assert_eq!(toy_story.release_time, Some(788_918_400));
    assert!(catalog.item_idx("Misérables, Les (1995)").is_some());
    // The first data row of the file.
    let first = catalog
        .interactions
        .iter()
        .find(|i| {
            catalog.user(i.user).id == "1m_1"
                && catalog.item(i.item).id == "One Flew Over the Cuckoo's Nest (1975)"
        })
        .unwrap();
    assert_eq!((first.timestamp, first.rating), (978_300_760, Some(5.0)));
    // Interactions come sorted by time.
    assert!(catalog
        .interactions
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp));
}

fn check_ml_latest_small(catalog: &Catalog) {
    let stats = DatasetStats::compute(catalog);
    assert_eq!(stats.interactions, 100_004);
    assert_eq!(stats.users, 671);
    assert_eq!(stats.items, 9_125);
    assert_eq!(stats.items_with_interactions, 9_066);
    assert_eq!(stats.interactions_per_user.min, 20);
    let histogram = stats.rating_histogram.as_ref().unwrap();
    assert_eq!(histogram.bins().len(), 10);
    assert_eq!(histogram.bins()[0].0, 0.5);
    assert_eq!(histogram.bins().iter().map(|b| b.1).sum::<u64>(), 100_004);
    assert_eq!(
        stats.time_min_iso.as_deref().map(|s| &s[..10]),
        Some("1995-01-09")
    );
    assert_eq!(
        stats.time_max_iso.as_deref().map(|s| &s[..10]),
        Some("2016-10-16")
    );
    let toy_story = catalog.item(catalog.item_idx("1").unwrap());
    assert_eq!(toy_story.title, "Toy Story (1995)");
    assert_eq!(
        toy_story.attributes["genres"],
        "Adventure, Animation, Children, Comedy, Fantasy"
    );
    assert_eq!(toy_story.release_time, Some(788_918_400));
    // 1,296 tag applications land on items as the `tags` attribute.
    let tagged = catalog
        .items
        .iter()
        .filter(|i| i.attributes.contains_key("tags"))
        .count();
    assert!(tagged > 0);
    let first_rating = catalog
        .interactions
        .iter()
        .find(|i| catalog.user(i.user).id == "1" && catalog.item(i.item).id == "31")
        .unwrap();
    assert_eq!(
        (first_rating.timestamp, first_rating.rating),
        (1_260_759_144, Some(2.5))
    );
}

#[test]
fn ml_latest_small_movielens_counts() {
    let Some(path) = shared_data("ml-latest-small") else {
        return;
    };
    let catalog = load("movielens", &path);
    assert_eq!(catalog.name, "ml-latest-small");
    check_ml_latest_small(&catalog);
}

#[test]
fn embedded_demo_copy_matches() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small");
    let catalog = load("movielens", &path);
    check_ml_latest_small(&catalog);
}
