//! The scene builder end to end on small hand-made catalogs (no real data needed).

use std::collections::{BTreeMap, HashSet};

use mirrorsim_data::scenes::{
    build_scenes, read_jsonl, write_scenes, OptionRange, SceneConfig, SceneSummary,
};
use mirrorsim_data::{Catalog, CatalogBuilder, Interaction};

const GENRES: [&str; 4] = ["Comedy", "Drama", "Horror", "Western"];

/// 40 users × 12 interactions over 150 items; every 3rd interaction has a rating and a review,
/// every interaction logs an impression list of 6 items when `impressions` is set.
fn catalog(impressions: bool) -> Catalog {
    let mut b = CatalogBuilder::new("small");
    for i in 0..150 {
        let attrs = BTreeMap::from([("genres".to_owned(), GENRES[i % 4].to_owned())]);
        b.add_item(
            &format!("m{i}"),
            Some(format!("Film {i}")),
            attrs,
            Some(1_000),
        );
    }
    for u in 0..40 {
        let attrs = BTreeMap::from([("age".to_owned(), format!("{}", 20 + u))]);
        let user = b.add_user(&format!("u{u}"), attrs);
        for j in 0..12i64 {
            let item = b.item(&format!("m{}", (u * 13 + j as usize * 7) % 150));
            let shown = impressions.then(|| {
                (0..6)
                    .map(|s| b.item(&format!("m{}", (u * 5 + j as usize * 11 + s * 17) % 150)))
                    .collect::<Vec<_>>()
                    .into()
            });
            b.push_interaction(Interaction {
                user,
                item,
                timestamp: 10_000 + j * 86_400 + u as i64,
                rating: (j % 3 == 0).then_some(4.0),
                review: (j % 3 == 0).then(|| format!("review {u}-{j}").into()),
                impressions: shown,
            });
        }
    }
    b.finish()
}

#[test]
fn scenes_round_trip_through_the_written_files() {
    let c = catalog(false);
    let config = SceneConfig {
        seed: 4,
        max_train_scenes: Some(50),
        max_eval_scenes: Some(20),
        ..SceneConfig::default()
    };
    let set = build_scenes(&c, &config).unwrap();
    assert_eq!((set.train.len(), set.eval.len()), (50, 20));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let paths = write_scenes(&out, &set).unwrap();
    assert_eq!(read_jsonl(&paths.train).unwrap(), set.train);
    assert_eq!(read_jsonl(&paths.eval).unwrap(), set.eval);
    let summary: SceneSummary =
        serde_json::from_slice(&std::fs::read(&paths.summary).unwrap()).unwrap();
    assert_eq!(summary, set.summary);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "scenes.eval.jsonl",
            "scenes.summary.json",
            "scenes.train.jsonl"
        ]
    );
    // Ratings (with the data's scale) and reviews reach the prompt.
    let with_review = set
        .train
        .iter()
        .find(|s| s.history.iter().any(|h| h.rating.is_some()))
        .unwrap();
    let text = &with_review.messages[1].content;
    assert!(text.contains("you rated it 4/4"), "{text}");
    assert!(text.contains("your review: \"review "), "{text}");
    assert!(text.contains("- age: "), "{text}");
    // Record fields as the issue names them.
    let line = std::fs::read_to_string(&paths.train).unwrap();
    let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    for field in [
        "id",
        "dataset",
        "user_id",
        "item_id",
        "timestamp",
        "options",
        "answer",
        "labels",
        "exposure_sources",
        "messages",
        "direct_messages",
    ] {
        assert!(first.get(field).is_some(), "record lacks `{field}`");
    }
    assert_eq!(first["messages"][0]["role"], "system");
    assert_eq!(first["direct_messages"][1]["role"], "user");
}

#[test]
fn impressions_come_from_the_logged_list() {
    let c = catalog(true);
    let config = SceneConfig {
        negatives: "impressions=1".parse().unwrap(),
        eval_options: 3,
        train_options: OptionRange { min: 3, max: 3 },
        ..SceneConfig::default()
    };
    let set = build_scenes(&c, &config).unwrap();
    assert!(set.summary.disabled_sources.is_empty());
    let mut from_impressions = 0;
    for s in set.train.iter().chain(&set.eval) {
        let user = c.user_idx(&s.user_id).unwrap();
        let decision = c
            .interactions
            .iter()
            .find(|i| {
                i.user == user && i.timestamp == s.timestamp && c.item(i.item).id == s.item_id
            })
            .unwrap();
        let shown: HashSet<&str> = decision
            .impressions
            .as_deref()
            .unwrap()
            .iter()
            .map(|&i| c.item(i).id.as_str())
            .collect();
        for (id, source) in s.options.iter().zip(&s.exposure_sources) {
            if source == "impressions" {
                from_impressions += 1;
                assert!(
                    shown.contains(id.as_str()),
                    "{id} was not in the impressions"
                );
            }
        }
    }
    assert!(from_impressions > 500);
    // Where an impression list runs short, the fallback is in the summary, never silent.
    let sources = &set.summary.negative_sources;
    let delivered_elsewhere: usize = sources
        .delivered
        .iter()
        .filter(|(k, _)| k.as_str() != "impressions")
        .map(|(_, &v)| v)
        .sum();
    let fallbacks: usize = sources.fallbacks.values().sum();
    assert_eq!(delivered_elsewhere, fallbacks);
}

#[test]
fn a_source_that_cannot_deliver_falls_back_visibly() {
    // Titles share no word and items have no attributes: content has no neighbours at all.
    let mut b = CatalogBuilder::new("lonely");
    let words = [
        "apple", "brick", "cloud", "delta", "ember", "fjord", "grove", "haven", "ivory", "jolly",
        "kiosk", "lemon", "mango", "noble", "ocean", "piano",
    ];
    for (i, w) in words.iter().enumerate() {
        b.add_item(
            &format!("i{i}"),
            Some((*w).to_owned()),
            BTreeMap::new(),
            None,
        );
    }
    for u in 0..6 {
        let user = b.user(&format!("u{u}"));
        for j in 0..5 {
            let item = b.item(&format!("i{}", (u * 2 + j) % 16));
            b.push_interaction(Interaction {
                user,
                item,
                timestamp: (u * 10 + j) as i64,
                rating: None,
                review: None,
                impressions: None,
            });
        }
    }
    let c = b.finish();
    let config = SceneConfig {
        negatives: "content=1".parse().unwrap(),
        eval_fraction: 0.0,
        train_options: OptionRange { min: 4, max: 4 },
        ..SceneConfig::default()
    };
    let set = build_scenes(&c, &config).unwrap();
    assert_eq!(set.train.len(), 6 * 2);
    assert!(set.eval.is_empty());
    assert_eq!(set.summary.cutoff_timestamp, None);
    let sources = &set.summary.negative_sources;
    assert_eq!(
        sources.requested,
        BTreeMap::from([("content".to_owned(), 36)])
    );
    assert!(!sources.delivered.contains_key("content"));
    let fallbacks: usize = sources.fallbacks.values().sum();
    assert_eq!(fallbacks, 36);
    assert!(sources.fallbacks.keys().all(|k| k.starts_with("content->")));
    for s in &set.train {
        assert!(s.exposure_sources.iter().all(|x| x != "content"));
    }
}

#[test]
fn decisions_that_cannot_be_filled_are_counted_as_skipped() {
    // 5 items; the only user who can decide has touched 4 of them, so a 5-option list is
    // impossible while a 2-option one works.
    let mut b = CatalogBuilder::new("tiny");
    let user = b.user("u");
    for j in 0..4 {
        let item = b.item(&format!("i{j}"));
        b.push_interaction(Interaction {
            user,
            item,
            timestamp: j,
            rating: None,
            review: None,
            impressions: None,
        });
    }
    b.item("spare");
    let c = b.finish();
    let config = |k| SceneConfig {
        eval_fraction: 0.0,
        train_options: OptionRange { min: k, max: k },
        ..SceneConfig::default()
    };
    let set = build_scenes(&c, &config(5)).unwrap();
    assert!(set.train.is_empty());
    assert_eq!(set.summary.train.skipped["too_few_candidates"], 1);
    assert_eq!(set.summary.train.skipped["short_history"], 3);
    let set = build_scenes(&c, &config(2)).unwrap();
    assert_eq!(set.train.len(), 1);
    assert_eq!(set.train[0].options.len(), 2);
    assert!(set.train[0].options.contains(&"spare".to_owned()));
}

#[test]
fn prompt_templates_can_be_overridden_and_bad_ones_are_named() {
    let c = catalog(false);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("direct_user.j2"),
        "{{ scene }}\n\nPick one of {{ labels|join('/') }}.",
    )
    .unwrap();
    let config = SceneConfig {
        max_train_scenes: Some(5),
        max_eval_scenes: Some(5),
        prompts_dir: Some(dir.path().to_owned()),
        ..SceneConfig::default()
    };
    let set = build_scenes(&c, &config).unwrap();
    for s in &set.eval {
        assert!(s.direct_messages[1]
            .content
            .ends_with("Pick one of A/B/C/D/E."));
        assert!(s.messages[1].content.ends_with("\"Behavior: [X]\"."));
        // The scene block is shared by both prompts.
        let scene_block = s.direct_messages[1].content.split("\n\nPick one").next();
        assert!(s.messages[1].content.starts_with(scene_block.unwrap()));
    }
    std::fs::write(dir.path().join("scene.j2"), "{{ options[0].nope }}").unwrap();
    let err = build_scenes(&c, &config).unwrap_err().to_string();
    assert!(err.contains("scene.j2"), "{err}");
}
