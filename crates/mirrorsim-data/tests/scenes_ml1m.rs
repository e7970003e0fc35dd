//! Scene invariants on real data: ML-1M (and ML-100K for release times), read from
//! ../shared/data. Every invariant is checked against the catalog independently of the builder.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use mirrorsim_data::scenes::{build_scenes, write_scenes, SceneConfig, SceneRecord, SceneSet};
use mirrorsim_data::{read_source, Catalog, SourceSpec};

fn data_dir(name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "!!! SKIPPED: {} is absent; real-data scene tests need ../shared/data !!!",
            dir.display()
        );
        None
    }
}

fn load(name: &str) -> Option<Catalog> {
    let dir = data_dir(name)?;
    let spec: SourceSpec = format!("recbole:{}", dir.display()).parse().unwrap();
    Some(read_source(&spec, &Default::default()).unwrap().0)
}

fn ml1m() -> Option<&'static Catalog> {
    static CATALOG: OnceLock<Option<Catalog>> = OnceLock::new();
    CATALOG.get_or_init(|| load("ml-1m")).as_ref()
}

const TRAIN: usize = 6_000;
const EVAL: usize = 6_000;

fn config(seed: u64, train: usize, eval: usize) -> SceneConfig {
    SceneConfig {
        seed,
        max_train_scenes: Some(train),
        max_eval_scenes: Some(eval),
        ..SceneConfig::default()
    }
}

/// The default-config scene set shared by the tests of this file.
fn ml1m_scenes() -> Option<(&'static Catalog, &'static SceneSet)> {
    static SCENES: OnceLock<Option<SceneSet>> = OnceLock::new();
    let catalog = ml1m()?;
    let set = SCENES
        .get_or_init(|| Some(build_scenes(catalog, &config(1, TRAIN, EVAL)).unwrap()))
        .as_ref()?;
    Some((catalog, set))
}

/// Checks every per-scene invariant against the catalog.
fn check_scene_invariants(catalog: &Catalog, scenes: &[SceneRecord], history_len: usize) {
    let by_user = catalog.interactions_by_user();
    let touched: Vec<HashSet<u32>> = by_user
        .iter()
        .map(|ps| {
            ps.iter()
                .map(|&p| catalog.interactions[p as usize].item)
                .collect()
        })
        .collect();
    for s in scenes {
        let user = catalog.user_idx(&s.user_id).unwrap();
        let chosen = catalog.item_idx(&s.item_id).unwrap();
        // The decision is a logged interaction.
        assert!(by_user[user as usize].iter().any(|&p| {
            let i = &catalog.interactions[p as usize];
            i.item == chosen && i.timestamp == s.timestamp
        }));
        // History: exactly the last `history_len` interactions with a strictly earlier timestamp.
        let earlier: Vec<&mirrorsim_data::Interaction> = by_user[user as usize]
            .iter()
            .map(|&p| &catalog.interactions[p as usize])
            .filter(|i| i.timestamp < s.timestamp)
            .collect();
        assert!(earlier.len() >= 3, "{}: too little history", s.id);
        let want: Vec<(String, i64)> = earlier[earlier.len().saturating_sub(history_len)..]
            .iter()
            .map(|i| (catalog.item(i.item).id.clone(), i.timestamp))
            .collect();
        let got: Vec<(String, i64)> = s
            .history
            .iter()
            .map(|h| (h.item_id.clone(), h.timestamp))
            .collect();
        assert_eq!(got, want, "{}: history", s.id);
        assert!(s.history.iter().all(|h| h.timestamp < s.timestamp));
        // Options: the answer slot holds the real item, labels match, no duplicates.
        let k = s.options.len();
        assert_eq!(s.options[s.answer], s.item_id, "{}", s.id);
        assert_eq!(s.labels.len(), k);
        assert_eq!(s.exposure_sources.len(), k);
        assert_eq!(
            s.labels,
            (0..k)
                .map(|i| char::from(b'A' + i as u8).to_string())
                .collect::<Vec<_>>()
        );
        let unique: HashSet<&String> = s.options.iter().collect();
        assert_eq!(unique.len(), k, "{}: duplicate options", s.id);
        for (slot, (id, source)) in s.options.iter().zip(&s.exposure_sources).enumerate() {
            if slot == s.answer {
                assert_eq!(source, "positive");
                continue;
            }
            assert!(
                [
                    "random",
                    "popularity",
                    "collaborative",
                    "content",
                    "impressions"
                ]
                .contains(&source.as_str()),
                "{}: source {source}",
                s.id
            );
            let item = catalog.item_idx(id).unwrap();
            assert!(
                !touched[user as usize].contains(&item),
                "{}: negative {id} was touched by the user",
                s.id
            );
            if let Some(release) = catalog.item(item).release_time {
                assert!(release <= s.timestamp, "{}: {id} released later", s.id);
            }
        }
        // Prompts: system + user, every option shown with its label, the answer never given.
        for messages in [&s.messages, &s.direct_messages] {
            assert_eq!(messages.len(), 2);
            assert_eq!(messages[0].role, "system");
            assert_eq!(messages[1].role, "user");
            for (label, id) in s.labels.iter().zip(&s.options) {
                let title = &catalog.item(catalog.item_idx(id).unwrap()).title;
                assert!(
                    messages[1].content.contains(&format!("[{label}] {title}")),
                    "{}: option [{label}] {title} missing",
                    s.id
                );
            }
            for label in &s.labels {
                let leak = format!("Behavior: [{label}]");
                assert!(!messages[0].content.contains(&leak));
                assert!(!messages[1].content.contains(&leak));
            }
        }
        assert!(s.messages[0].content.contains("Evaluation Style"));
        let before_lines = s.messages[1].content.matches(" before: ").count();
        assert_eq!(before_lines, s.history.len(), "{}: history lines", s.id);
    }
}

#[test]
fn ml1m_split_is_by_the_global_cutoff_and_counts_are_exact() {
    let Some((catalog, set)) = ml1m_scenes() else {
        return;
    };
    assert_eq!(catalog.interactions.len(), 1_000_209);
    let n = catalog.interactions.len();
    let cutoff = catalog.interactions[n - (n as f64 * 0.1).round() as usize].timestamp;
    assert_eq!(set.summary.cutoff_timestamp, Some(cutoff));
    assert_eq!(set.train.len(), TRAIN);
    assert_eq!(set.eval.len(), EVAL);
    assert_eq!(set.summary.train.scenes, TRAIN);
    assert_eq!(set.summary.eval.scenes, EVAL);
    assert!(set.train.iter().all(|s| s.timestamp < cutoff));
    assert!(set.eval.iter().all(|s| s.timestamp >= cutoff));
    let before = catalog
        .interactions
        .iter()
        .filter(|i| i.timestamp < cutoff)
        .count();
    assert_eq!(set.summary.interactions_before_cutoff, before);
    assert_eq!(set.summary.train.decisions + set.summary.eval.decisions, n);
    assert_eq!(set.summary.eval.decisions, n - before);
    for split in [&set.summary.train, &set.summary.eval] {
        let skipped_short = split.skipped.get("short_history").copied().unwrap_or(0);
        assert_eq!(split.eligible + skipped_short, split.decisions);
        let by_k: usize = split.by_k.values().sum();
        assert_eq!(by_k, split.scenes);
    }
    // Eval scenes all have 5 options; train ones 2..=12, every count present.
    assert!(set.eval.iter().all(|s| s.options.len() == 5));
    assert!(set
        .train
        .iter()
        .all(|s| (2..=12).contains(&s.options.len())));
    assert_eq!(set.summary.train.by_k.len(), 11);
    // Unique ids, scenes in time order.
    let ids: HashSet<&String> = set.train.iter().chain(&set.eval).map(|s| &s.id).collect();
    assert_eq!(ids.len(), TRAIN + EVAL);
    assert!(set
        .train
        .windows(2)
        .all(|w| w[0].timestamp <= w[1].timestamp));
}

#[test]
fn ml1m_scenes_hold_every_invariant() {
    let Some((catalog, set)) = ml1m_scenes() else {
        return;
    };
    check_scene_invariants(catalog, &set.train, 10);
    check_scene_invariants(catalog, &set.eval, 10);
}

#[test]
fn ml1m_all_negative_sources_deliver_and_fallbacks_are_recorded() {
    let Some((_, set)) = ml1m_scenes() else {
        return;
    };
    let sources = &set.summary.negative_sources;
    for source in ["random", "popularity", "collaborative", "content"] {
        let n = sources.delivered.get(source).copied().unwrap_or(0);
        assert!(n > 1_000, "{source} delivered only {n}: {sources:?}");
    }
    assert!(!sources.delivered.contains_key("impressions"));
    assert!(set.summary.disabled_sources[0].starts_with("impressions"));
    // Per-scene sources agree with the summary.
    let mut counted: BTreeMap<String, usize> = BTreeMap::new();
    for s in set.train.iter().chain(&set.eval) {
        for source in &s.exposure_sources {
            if source != "positive" {
                *counted.entry(source.clone()).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(&counted, &sources.delivered);
    let requested: usize = sources.requested.values().sum();
    let delivered: usize = sources.delivered.values().sum();
    assert_eq!(requested, delivered);
    let fallbacks: usize = sources.fallbacks.values().sum();
    let changed: usize = sources
        .requested
        .iter()
        .map(|(k, &v)| v.saturating_sub(sources.delivered.get(k).copied().unwrap_or(0)))
        .sum();
    assert!(fallbacks >= changed);
    let share: f64 = sources.share.values().sum();
    assert!((share - 1.0).abs() < 1e-9);
}

/// Upper tail of the chi-square distribution: Q(dof/2, x/2), the regularized upper incomplete
/// gamma function (series for x < a + 1, continued fraction otherwise).
fn chi_square_p_value(statistic: f64, dof: f64) -> f64 {
    let (a, x) = (dof / 2.0, statistic / 2.0);
    if x <= 0.0 {
        return 1.0;
    }
    let ln_gamma_a = ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - ln_gamma_a).exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (-x + a * x.ln() - ln_gamma_a).exp() * h
    }
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9).
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + 7.5;
    let series: f64 = C[0] + (1..9).map(|i| C[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

#[test]
fn chi_square_tail_matches_tables() {
    // Critical values at p = 0.01 (df 4: 13.277; df 10: 23.209) and p = 0.5 (df 2: 1.386).
    assert!((chi_square_p_value(13.277, 4.0) - 0.01).abs() < 1e-4);
    assert!((chi_square_p_value(23.209, 10.0) - 0.01).abs() < 1e-4);
    assert!((chi_square_p_value(1.386_294, 2.0) - 0.5).abs() < 1e-5);
}

/// Chi-square statistic and degrees of freedom of answer slots against uniform, per k.
fn slot_chi_square(scenes: &[SceneRecord]) -> (f64, f64) {
    let mut per_k: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for s in scenes {
        let k = s.options.len();
        per_k.entry(k).or_insert_with(|| vec![0; k])[s.answer] += 1;
    }
    let (mut statistic, mut dof) = (0.0, 0.0);
    for counts in per_k.values() {
        let total: usize = counts.iter().sum();
        let expected = total as f64 / counts.len() as f64;
        statistic += counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum::<f64>();
        dof += (counts.len() - 1) as f64;
    }
    (statistic, dof)
}

#[test]
fn ml1m_answer_slot_is_uniform_over_all_slots() {
    let Some((_, set)) = ml1m_scenes() else {
        return;
    };
    for (name, scenes) in [("eval", &set.eval), ("train", &set.train)] {
        assert!(scenes.len() >= 5_000);
        let (statistic, dof) = slot_chi_square(scenes);
        let p = chi_square_p_value(statistic, dof);
        assert!(
            p > 0.01,
            "{name}: chi-square {statistic:.2} on {dof} dof, p = {p:.4}"
        );
        // The last slot is used as often as any other (the reference never used it).
        let last = scenes
            .iter()
            .filter(|s| s.answer == s.options.len() - 1)
            .count();
        assert!(last > 0, "{name}: the answer never sits in the last slot");
    }
    let eval_slots = &set.summary.eval.answer_slots[&5];
    assert_eq!(eval_slots.iter().sum::<usize>(), EVAL);
    assert!(eval_slots.iter().all(|&n| n > EVAL / 5 - 200));
}

#[test]
fn ml1m_scenes_are_deterministic_by_seed() {
    let Some(catalog) = ml1m() else {
        return;
    };
    let write = |seed: u64| {
        let set = build_scenes(catalog, &config(seed, 1_500, 300)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_scenes(dir.path(), &set).unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        (
            read("scenes.train.jsonl"),
            read("scenes.eval.jsonl"),
            read("scenes.summary.json"),
        )
    };
    let a = write(5);
    let b = write(5);
    assert!(
        a.0 == b.0 && a.1 == b.1 && a.2 == b.2,
        "same seed, different bytes"
    );
    assert_eq!(a.0.iter().filter(|&&c| c == b'\n').count(), 1_500);
    assert_eq!(a.1.iter().filter(|&&c| c == b'\n').count(), 300);
    let c = write(6);
    assert_ne!(a.0, c.0);
    assert_ne!(a.1, c.1);
}

#[test]
fn ml1m_scene_cap_takes_all_eligible_decisions_when_unset() {
    let Some(catalog) = ml1m() else {
        return;
    };
    // All eval decisions (about 100,000), only random negatives to keep it quick.
    let config = SceneConfig {
        max_train_scenes: Some(10),
        max_eval_scenes: None,
        negatives: "random=1".parse().unwrap(),
        ..SceneConfig::default()
    };
    let set = build_scenes(catalog, &config).unwrap();
    assert_eq!(set.train.len(), 10);
    assert_eq!(set.eval.len(), set.summary.eval.eligible);
    assert_eq!(set.summary.eval.not_sampled, 0);
    assert!(set.summary.eval.eligible > 90_000);
}

#[test]
fn ml100k_never_offers_an_item_released_after_the_decision() {
    let Some(catalog) = load("ml-100k") else {
        return;
    };
    let set = build_scenes(&catalog, &config(3, 3_000, 1_000)).unwrap();
    // The filter matters here: some items are released after some decisions.
    let first_decision = catalog.interactions[0].timestamp;
    assert!(catalog
        .items
        .iter()
        .any(|i| i.release_time.is_some_and(|r| r > first_decision)));
    assert_eq!(set.train.len(), 3_000);
    assert_eq!(set.eval.len(), 1_000);
    check_scene_invariants(&catalog, &set.train, 10);
    check_scene_invariants(&catalog, &set.eval, 10);
}

/// `item_stats`: the same scenes as without it, and every option line ends with the option's
/// rating count and mean over the interactions strictly before the decision and before the
/// cutoff, recounted here by brute force. With `item_stats_rank` the line goes on with the
/// option's rank by that count among the scene's options, equal counts sharing a rank.
#[test]
fn ml1m_item_stats_count_only_what_was_visible_at_the_decision() {
    let Some(catalog) = ml1m() else {
        return;
    };
    let plain = build_scenes(catalog, &config(3, 100, 100)).unwrap();
    let with_stats = build_scenes(
        catalog,
        &SceneConfig {
            item_stats: true,
            ..config(3, 100, 100)
        },
    )
    .unwrap();
    let ranked = build_scenes(
        catalog,
        &SceneConfig {
            item_stats: true,
            item_stats_rank: true,
            ..config(3, 100, 100)
        },
    )
    .unwrap();
    let cutoff = with_stats.summary.cutoff_timestamp.unwrap();
    let mut never_rated = 0;
    let mut shared_ranks = 0;
    for ((a, b), r) in plain
        .train
        .iter()
        .chain(&plain.eval)
        .zip(with_stats.train.iter().chain(&with_stats.eval))
        .zip(ranked.train.iter().chain(&ranked.eval))
    {
        assert_eq!((&a.id, &a.options, a.answer), (&b.id, &b.options, b.answer));
        assert_eq!((&a.id, &a.options, a.answer), (&r.id, &r.options, r.answer));
        let visible_until = b.timestamp.min(cutoff);
        let prompt = &b.direct_messages[1].content;
        let ranked_prompt = &r.direct_messages[1].content;
        let counts: Vec<usize> = b
            .options
            .iter()
            .map(|item_id| {
                let item = catalog.item_idx(item_id).unwrap();
                catalog
                    .interactions
                    .iter()
                    .filter(|i| i.item == item && i.timestamp < visible_until)
                    .count()
            })
            .collect();
        let mut ranks: Vec<usize> = counts
            .iter()
            .map(|c| 1 + counts.iter().filter(|o| *o > c).count())
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        if ranks.len() < counts.len() {
            shared_ranks += 1;
        }
        for ((label, item_id), count) in b.labels.iter().zip(&b.options).zip(&counts) {
            let item = catalog.item_idx(item_id).unwrap();
            let ratings: Vec<f32> = catalog
                .interactions
                .iter()
                .filter(|i| i.item == item && i.timestamp < visible_until)
                .map(|i| i.rating.unwrap())
                .collect();
            let expected = match ratings.len() {
                0 => {
                    never_rated += 1;
                    "no ratings yet".to_owned()
                }
                n => format!(
                    "{} rating{}, average {:.1}/5",
                    n.to_string()
                        .as_bytes()
                        .rchunks(3)
                        .rev()
                        .map(|c| std::str::from_utf8(c).unwrap())
                        .collect::<Vec<_>>()
                        .join(","),
                    if n == 1 { "" } else { "s" },
                    ratings.iter().map(|&r| f64::from(r)).sum::<f64>() / n as f64
                ),
            };
            let line = prompt
                .lines()
                .find(|l| l.starts_with(&format!("[{label}] ")))
                .unwrap();
            assert!(
                line.ends_with(&format!(" — {expected}")),
                "scene {}: `{line}` should end with `{expected}`",
                b.id
            );
            let rank = 1 + counts.iter().filter(|&other| other > count).count();
            let phrase = match rank {
                1 => "most rated of these".to_owned(),
                2 => "2nd most rated of these".to_owned(),
                3 => "3rd most rated of these".to_owned(),
                n => format!("{n}th most rated of these"),
            };
            let ranked_line = ranked_prompt
                .lines()
                .find(|l| l.starts_with(&format!("[{label}] ")))
                .unwrap();
            assert_eq!(ranked_line, format!("{line} ({phrase})"), "scene {}", r.id);
        }
    }
    // Early train decisions meet items nobody had rated yet; the check saw both kinds, and
    // scenes whose counts tie.
    assert!(never_rated > 0);
    assert!(shared_ranks > 0);
}
