//! Each downloaded-dataset reader on a small hand-written fixture in its format: exact counts,
//! decoded fields, and the same catalog from gzipped and plain files.

use std::io::Write;
use std::path::{Path, PathBuf};

use mirrorsim_data::{read_source, Catalog, Interaction, ReadOptions, ReadReport, SourceSpec};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(format: &str, path: &Path) -> (Catalog, ReadReport) {
    let spec: SourceSpec = format!("{format}:{}", path.display()).parse().unwrap();
    read_source(&spec, &ReadOptions::default())
        .unwrap_or_else(|e| panic!("reading {spec} failed: {e}"))
}

fn counts(catalog: &Catalog) -> (usize, usize, usize) {
    (
        catalog.users.len(),
        catalog.items.len(),
        catalog.interactions.len(),
    )
}

/// The interactions of `user` with `item`, in time order.
fn events<'c>(catalog: &'c Catalog, user: &str, item: &str) -> Vec<&'c Interaction> {
    let user = catalog.user_idx(user).expect("user in catalog");
    let item = catalog.item_idx(item).expect("item in catalog");
    catalog
        .interactions
        .iter()
        .filter(|i| i.user == user && i.item == item)
        .collect()
}

fn only<'c>(catalog: &'c Catalog, user: &str, item: &str) -> &'c Interaction {
    let found = events(catalog, user, item);
    assert_eq!(found.len(), 1, "{user} → {item}");
    found[0]
}

fn item_attr<'c>(catalog: &'c Catalog, item: &str, key: &str) -> Option<&'c str> {
    let idx = catalog.item_idx(item).expect("item in catalog");
    catalog.item(idx).attributes.get(key).map(String::as_str)
}

fn title<'c>(catalog: &'c Catalog, item: &str) -> &'c str {
    &catalog
        .item(catalog.item_idx(item).expect("item in catalog"))
        .title
}

fn release(catalog: &Catalog, item: &str) -> Option<i64> {
    catalog
        .item(catalog.item_idx(item).expect("item in catalog"))
        .release_time
}

fn impression_ids(catalog: &Catalog, interaction: &Interaction) -> Vec<String> {
    interaction
        .impressions
        .as_deref()
        .expect("impressions")
        .iter()
        .map(|&i| catalog.item(i).id.clone())
        .collect()
}

/// A copy of fixture folder `name` under a temp dir, with every file gzipped (`x` → `x.gz`).
fn gzipped_copy(name: &str, keep_plain: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(name);
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if keep_plain.contains(&file_name.as_str()) {
            std::fs::write(target.join(&file_name), bytes).unwrap();
            continue;
        }
        let out = std::fs::File::create(target.join(format!("{file_name}.gz"))).unwrap();
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap();
    }
    (dir, target)
}

fn assert_same_catalog(a: &Catalog, b: &Catalog) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.users, b.users);
    assert_eq!(a.items, b.items);
    assert_eq!(a.interactions, b.interactions);
}

#[test]
fn amazon2023_reads_reviews_and_meta_joined_by_parent_asin() {
    let (c, report) = read("amazon2023", &fixture("amazon2023"));
    assert_eq!(counts(&c), (3, 4, 6));
    assert_eq!(report.total_skipped(), 0);
    let first = only(&c, "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO");
    assert_eq!(first.timestamp, 1_588_687_728);
    assert_eq!(first.rating, Some(5.0));
    assert_eq!(
        first.review.as_deref(),
        Some("Such a lovely scent but not overpowering.\nThis spray is really nice. It smells really good.")
    );
    // The variant asin B081TJ8YS4 is reviewed under its parent.
    let variant = only(&c, "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B081TJ8YS3");
    assert_eq!(variant.timestamp, 1_588_615_855);
    assert_eq!(c.interactions[0], *variant);
    assert_eq!(
        only(&c, "AGXVBIUFLFGMVLATYXHJYL4A5Q7Q", "B00YQ6X8EO")
            .review
            .as_deref(),
        Some("It's okay.")
    );
    assert_eq!(
        only(&c, "AE74DYR3QUGVPZJ3P7RFWBGIX7XQ", "B081TJ8YS3")
            .review
            .as_deref(),
        Some("Love it")
    );
    assert_eq!(
        title(&c, "B00YQ6X8EO"),
        "Howard LC0008 Leather Conditioner, 8-Ounce (4-Pack)"
    );
    assert_eq!(item_attr(&c, "B00YQ6X8EO", "brand"), Some("Howard"));
    assert_eq!(
        item_attr(&c, "B00YQ6X8EO", "store"),
        Some("Howard Products")
    );
    assert_eq!(item_attr(&c, "B00YQ6X8EO", "price"), None);
    assert_eq!(release(&c, "B00YQ6X8EO"), Some(1_521_763_200)); // March 23, 2018
    assert_eq!(
        item_attr(&c, "B081TJ8YS3", "categories"),
        Some("Beauty & Personal Care, Skin Care")
    );
    assert_eq!(item_attr(&c, "B081TJ8YS3", "price"), Some("8.99"));
    assert_eq!(item_attr(&c, "B07XYZ0001", "price"), None);
    assert_eq!(release(&c, "B07XYZ0001"), Some(1_559_347_200)); // June 1, 2019
    assert_eq!(title(&c, "B097R46CSY"), "B097R46CSY");

    let (_tmp, gz) = gzipped_copy("amazon2023", &[]);
    assert_same_catalog(&c, &read("amazon2023", &gz).0);
    // A single review file finds its meta_ sibling.
    let (single, _) = read("amazon2023", &fixture("amazon2023/All_Beauty.jsonl"));
    assert_eq!(counts(&single), (3, 4, 6));
}

#[test]
fn mind_clicks_carry_impression_lists_and_history_precedes_them() {
    let (c, _) = read("mind", &fixture("mind"));
    assert_eq!(counts(&c), (3, 19, 10));
    let click = only(&c, "U13740", "N55689");
    assert_eq!(click.timestamp, 1_573_463_158); // 11/11/2019 9:05:58 AM
    assert_eq!(impression_ids(&c, click), ["N55689", "N35729"]);
    let second = events(&c, "U91836", "N52551");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].timestamp, 1_573_582_290); // 11/12/2019 6:11:30 PM
    let shown = impression_ids(&c, second[0]);
    assert_eq!(shown.len(), 9);
    assert_eq!(shown.last().map(String::as_str), Some("N25273"));
    // Two clicks in one impression: two interactions with the same list.
    let a = only(&c, "U73700", "N33632");
    let b = only(&c, "U73700", "N49685");
    assert_eq!((a.timestamp, b.timestamp), (1_573_714_908, 1_573_714_908));
    assert_eq!(a.impressions, b.impressions);
    // History: one second apart, in logged order, just before the first impression.
    let history: Vec<(i64, bool)> = ["N55189", "N42782", "N34694"]
        .iter()
        .map(|id| {
            let h = only(&c, "U13740", id);
            (h.timestamp, h.impressions.is_none())
        })
        .collect();
    assert_eq!(
        history,
        [
            (1_573_463_155, true),
            (1_573_463_156, true),
            (1_573_463_157, true)
        ]
    );
    assert_eq!(
        title(&c, "N52551"),
        "The Brands Queen Elizabeth, Prince Charles, and Prince Philip Swear By"
    );
    assert_eq!(item_attr(&c, "N52551", "category"), Some("lifestyle"));
    assert_eq!(
        item_attr(&c, "N52551", "subcategory"),
        Some("lifestyleroyals")
    );
    assert_eq!(
        title(&c, "N33632"),
        "\"Stocks close higher\" as markets rally"
    );
    assert_eq!(title(&c, "N49685"), "N49685");
    assert!(c.item_idx("N99999").is_some());

    let (_tmp, gz) = gzipped_copy("mind", &[]);
    assert_same_catalog(&c, &read("mind", &gz).0);
}

#[test]
fn steam_parses_python_dict_lines_from_both_review_files() {
    let (c, report) = read("steam", &fixture("steam"));
    assert_eq!(counts(&c), (5, 7, 6));
    assert_eq!(
        report
            .skipped
            .get("australian_user_reviews.json: posted: date without a year (review left out)"),
        Some(&1)
    );
    assert_eq!(
        report
            .skipped
            .get("steam_games.json: id: missing (game left out)"),
        Some(&1)
    );
    let kf = only(&c, "76561197970982479", "1250");
    assert_eq!(kf.timestamp, 1_320_451_200); // Posted November 5, 2011.
    assert_eq!(kf.rating, Some(1.0));
    assert!(kf
        .review
        .as_deref()
        .unwrap()
        .contains("does \"zombie\" hordes"));
    assert_eq!(
        only(&c, "76561197970982479", "43110").review.as_deref(),
        Some("Great atmosphere.\nThe gunplay can be a bit chunky at times.")
    );
    let barbie = only(&c, "js41637", "251610");
    assert_eq!(barbie.rating, Some(0.0));
    assert!(barbie
        .review
        .as_deref()
        .unwrap()
        .ends_with("by it's title."));
    assert!(
        c.item_idx("227300").is_none(),
        "the year-less review is left out"
    );
    assert!(c.user_idx("evcentric").is_some());
    let v2 = only(&c, "Chaos Syren", "725280");
    assert_eq!((v2.timestamp, v2.rating), (1_513_468_800, None));
    assert_eq!(
        only(&c, "76561198007483075", "328100").timestamp,
        1_501_632_000
    );
    assert_eq!(title(&c, "1250"), "Killing Floor");
    assert_eq!(
        item_attr(&c, "1250", "tags"),
        Some("FPS, Zombies, Co-op, Survival Horror, Action, Horror, Multiplayer, Shooter")
    );
    assert_eq!(
        item_attr(&c, "1250", "developer"),
        Some("Tripwire Interactive")
    );
    assert_eq!(release(&c, "1250"), Some(1_242_259_200)); // 2009-05-14
    assert_eq!(release(&c, "328100"), None); // "Soon.."
    assert_eq!(item_attr(&c, "328100", "price"), Some("Free to Play"));
    assert_eq!(title(&c, "251610"), "251610");

    let (_tmp, gz) = gzipped_copy("steam", &[]);
    assert_same_catalog(&c, &read("steam", &gz).0);
}

#[test]
fn goodreads_joins_reviews_to_shelvings_and_drops_repeats_across_genres() {
    let (c, _) = read("goodreads", &fixture("goodreads"));
    assert_eq!(counts(&c), (3, 5, 7));
    let iliad = only(&c, "8842281e1d1347389f2ab93d60773d4d", "1384");
    assert_eq!(iliad.timestamp, 1_483_044_414); // Thu Dec 29 12:46:54 -0800 2016
    assert_eq!(iliad.rating, Some(5.0));
    assert_eq!(iliad.review.as_deref(), Some("A timeless epic."));
    assert_eq!(
        only(&c, "8842281e1d1347389f2ab93d60773d4d", "30119").rating,
        None,
        "rating 0 means not rated"
    );
    assert_eq!(
        only(&c, "72fb0d0087d28c832f15776b0d936598", "402128").timestamp,
        1_488_679_811
    );
    let from_review = only(&c, "ab2923b738ea3082f5f3efcbbfacb218", "402128");
    assert_eq!(from_review.timestamp, 1_505_037_600);
    assert_eq!(from_review.rating, Some(4.0));
    assert_eq!(from_review.review.as_deref(), Some("Whitman at his best."));
    assert_eq!(title(&c, "1384"), "The Iliad");
    assert_eq!(
        item_attr(&c, "1384", "authors"),
        Some("Homer, Robert Fagles")
    );
    assert_eq!(
        item_attr(&c, "1384", "shelves"),
        Some("classics, poetry, mythology")
    );
    assert_eq!(
        item_attr(&c, "1384", "genres"),
        Some("poetry; fiction; history, historical fiction, biography")
    );
    assert_eq!(release(&c, "1384"), Some(912_297_600)); // 1998-11-29
    assert_eq!(release(&c, "402128"), Some(1_104_537_600)); // 2005
    assert_eq!(release(&c, "30119"), None);
    assert_eq!(title(&c, "18352"), "18352");
    assert_eq!(title(&c, "6689"), "The Waste Land");

    let (_tmp, gz) = gzipped_copy("goodreads", &[]);
    assert_same_catalog(&c, &read("goodreads", &gz).0);
}

#[test]
fn kuairec_reads_plays_with_watch_ratio_and_list_literal_metadata() {
    let (c, _) = read("kuairec", &fixture("kuairec"));
    assert_eq!(counts(&c), (4, 5, 6));
    let play = only(&c, "14", "148");
    assert_eq!(play.timestamp, 1_593_898_068);
    assert!((play.rating.unwrap() - 0.722_103_2).abs() < 1e-6);
    // Without `timestamp`, `time` and then `date` are read as Beijing time.
    assert_eq!(only(&c, "19", "148").timestamp, 1_594_000_800);
    assert_eq!(only(&c, "19", "5262").timestamp, 1_594_051_200);
    assert_eq!(only(&c, "21", "183").rating, Some(1.0));
    assert_eq!(title(&c, "148"), "精彩足球集锦");
    assert_eq!(title(&c, "183"), "猫咪日常");
    assert_eq!(title(&c, "3649"), "Morning routine, part 2");
    assert_eq!(title(&c, "5262"), "5262");
    assert_eq!(item_attr(&c, "148", "category"), Some("体育 / 足球"));
    assert_eq!(item_attr(&c, "148", "topic_tags"), Some("足球, 体育"));
    assert_eq!(item_attr(&c, "183", "topic_tags"), None);
    assert_eq!(item_attr(&c, "183", "category_ids"), Some("27, 9"));
    assert_eq!(item_attr(&c, "5262", "category_ids"), None);
    assert_eq!(release(&c, "148"), Some(1_585_497_600)); // 2020-03-30 UTC+8
    assert_eq!(release(&c, "183"), Some(1_590_940_800));
    let user = c.user(c.user_idx("14").unwrap());
    assert_eq!(user.attributes["user_active_degree"], "high_active");
    assert_eq!(user.attributes["follow_user_num_range"], "(0,10]");
    assert!(!user.attributes.contains_key("onehot_feat0"));
    assert!(c.user_idx("25").is_some());

    let (_tmp, gz) = gzipped_copy("kuairec", &[]);
    assert_same_catalog(&c, &read("kuairec", &gz).0);
    let (matrix, _) = read("kuairec", &fixture("kuairec/small_matrix.csv"));
    assert_same_catalog(&read("kuairec", &fixture("kuairec")).0, &{
        let mut m = matrix;
        m.name = c.name.clone();
        m
    });
}

#[test]
fn lastfm_turns_timed_tag_assignments_into_interactions() {
    let (c, _) = read("lastfm", &fixture("lastfm"));
    assert_eq!(counts(&c), (4, 5, 5));
    let tagged = only(&c, "2", "1");
    assert_eq!(tagged.timestamp, 1_238_536_800);
    assert_eq!(tagged.review.as_deref(), Some("tags: japanese, gothic"));
    let twice = events(&c, "5", "3");
    let seen: Vec<(i64, Option<&str>)> = twice
        .iter()
        .map(|i| (i.timestamp, i.review.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (1_280_613_600, Some("tags: metal")),
            (1_283_292_000, Some("tags: música"))
        ]
    );
    assert_eq!(title(&c, "89"), "Mötley Crüe");
    assert_eq!(item_attr(&c, "1", "tags"), Some("gothic, japanese"));
    assert_eq!(item_attr(&c, "3", "tags"), Some("metal, música"));
    assert_eq!(title(&c, "51"), "51");
    assert!(c.user_idx("4").is_some());

    let (_tmp, gz) = gzipped_copy("lastfm", &[]);
    assert_same_catalog(&c, &read("lastfm", &gz).0);

    // Without the timestamps file the day/month/year file dates the events.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("lastfm");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(fixture("lastfm")).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("user_taggedartists-timestamps.dat") {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    let (dated, _) = read("lastfm", &copy);
    assert_eq!(counts(&dated), (4, 5, 5));
    assert_eq!(only(&dated, "2", "1").timestamp, 1_238_544_000); // 1/4/2009
}

#[test]
fn table_maps_csv_jsonl_and_tsv_columns_through_toml() {
    let (c, _) = read("table", &fixture("table/shop.toml"));
    assert_eq!(c.name, "shop");
    assert_eq!(counts(&c), (4, 5, 4));
    let first = only(&c, "u1", "i1");
    assert_eq!(first.timestamp, 1_614_852_000);
    assert_eq!(first.rating, Some(4.5));
    assert_eq!(first.review.as_deref(), Some("Great, would buy again"));
    assert_eq!(impression_ids(&c, first), ["i1", "i2", "i3"]);
    let bare = only(&c, "u1", "i2");
    assert_eq!(
        (
            bare.timestamp,
            bare.rating,
            bare.review.is_none(),
            bare.impressions.is_none()
        ),
        (1_614_933_000, None, true, true)
    );
    let offset = only(&c, "u2", "i3");
    assert_eq!(offset.timestamp, 1_615_024_800);
    assert_eq!(impression_ids(&c, offset), ["i3", "i4"]);
    assert_eq!(only(&c, "u3", "i4").timestamp, 1_615_075_200);
    assert_eq!(title(&c, "i1"), "Blue Kettle");
    assert_eq!(item_attr(&c, "i1", "genre"), Some("kitchen, tea"));
    assert_eq!(item_attr(&c, "i1", "brand"), Some("Acme"));
    assert_eq!(item_attr(&c, "i3", "brand"), None);
    assert_eq!(release(&c, "i1"), Some(1_546_300_800));
    assert_eq!(release(&c, "i2"), Some(1_577_836_800));
    assert_eq!(release(&c, "i3"), None);
    assert_eq!(title(&c, "i4"), "i4");
    let u1 = c.user(c.user_idx("u1").unwrap());
    assert_eq!(u1.attributes["age"], "34");
    assert_eq!(u1.attributes["country"], "FR");
    assert!(c.user(c.user_idx("u3").unwrap()).attributes.is_empty());

    let (_tmp, gz) = gzipped_copy("table", &["shop.toml"]);
    let mapping = std::fs::read_to_string(gz.join("shop.toml")).unwrap();
    let mapping = mapping
        .replace("\"events.csv\"", "\"events.csv.gz\"")
        .replace("\"items.jsonl\"", "\"items.jsonl.gz\"")
        .replace("\"users.tsv\"", "\"users.tsv.gz\"");
    std::fs::write(gz.join("shop.toml"), mapping).unwrap();
    assert_same_catalog(&c, &read("table", &gz.join("shop.toml")).0);
}
