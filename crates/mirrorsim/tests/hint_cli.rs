//! `mirrorsim hint` on the embedded ml-latest-small: the popularity prior's pick is recounted by
//! brute force from ratings.csv with only the interactions its cutoff allows, so a hint that
//! saw the hinted choice (or any later interaction) fails the test.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const NOTE: &str = " — popular with many people";

fn mirrorsim(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(args)
        .args(paths)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mirrorsim")
}

fn succeed(args: &[&str], paths: &[&Path]) -> Output {
    let output = mirrorsim(args, paths);
    assert!(
        output.status.success(),
        "mirrorsim {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn read_scenes(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (user, movie, timestamp) of every rating in the embedded ml-latest-small.
fn ratings() -> Vec<(String, String, i64)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small/ratings.csv");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f[0].to_owned(), f[1].to_owned(), f[3].parse().unwrap())
        })
        .collect()
}

/// Distinct users per movie among the ratings strictly before `before`.
fn popularity(ratings: &[(String, String, i64)], before: i64) -> HashMap<&str, usize> {
    let pairs: HashSet<(&str, &str)> = ratings
        .iter()
        .filter(|r| r.2 < before)
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    let mut counts = HashMap::new();
    for (_, movie) in pairs {
        *counts.entry(movie).or_insert(0) += 1;
    }
    counts
}

fn user_text(scene: &Value) -> String {
    scene["direct_messages"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|m| m["role"] == "user")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Checks every hinted scene against its plain twin and the brute-force popularity before
/// `prior_cutoff`; returns (hinted, hint on the real choice).
fn check_split(
    plain: &[Value],
    hinted: &[Value],
    ratings: &[(String, String, i64)],
    prior_cutoff: i64,
) -> (usize, usize) {
    let counts = popularity(ratings, prior_cutoff);
    let by_id: HashMap<&str, &Value> = plain
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s))
        .collect();
    let (mut with_hint, mut on_answer) = (0, 0);
    for scene in hinted {
        let twin = by_id[scene["id"].as_str().unwrap()];
        let options: Vec<&str> = scene["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        let users: Vec<usize> = options
            .iter()
            .map(|o| counts.get(o).copied().unwrap_or(0))
            .collect();
        let top = *users.iter().max().unwrap();
        let winners: Vec<usize> = (0..users.len()).filter(|&i| users[i] == top).collect();
        let (hinted_text, plain_text) = (user_text(scene), user_text(twin));
        assert_eq!(
            hinted_text.matches(NOTE).count(),
            usize::from(winners.len() == 1),
            "{}",
            scene["id"]
        );
        if let [winner] = winners[..] {
            with_hint += 1;
            on_answer += usize::from(winner == scene["answer"].as_u64().unwrap() as usize);
            let label = scene["labels"][winner].as_str().unwrap();
            let noted = hinted_text.lines().find(|l| l.ends_with(NOTE)).unwrap();
            assert!(noted.starts_with(&format!("[{label}] ")), "{noted}");
            assert_eq!(hinted_text.replacen(NOTE, "", 1), plain_text);
        } else {
            assert_eq!(hinted_text, plain_text);
        }
        // Nothing else changes.
        let mut a = scene.clone();
        let mut b = twin.clone();
        for v in [&mut a, &mut b] {
            v.as_object_mut().unwrap().remove("messages");
            v.as_object_mut().unwrap().remove("direct_messages");
        }
        assert_eq!(a, b);
    }
    (with_hint, on_answer)
}

#[test]
fn hint_marks_the_popularity_pick_fitted_before_each_split() {
    let dir = tempfile::tempdir().unwrap();
    let scenes = dir.path().join("scenes");
    succeed(
        &[
            "scenes",
            "--source",
            "movielens:../../data/ml-latest-small",
            "--max-train",
            "400",
            "--max-eval",
            "60",
            "--eval-options",
            "4",
            "--train-options",
            "3..6",
            "--negatives",
            "random=1,popularity=1",
            "--seed",
            "2",
            "--out",
        ],
        &[&scenes],
    );
    let out = dir.path().join("hinted");
    let output = succeed(
        &[
            "hint",
            "--catalog",
            "movielens:../../data/ml-latest-small",
            "--prior",
            "popularity",
            "--train-fraction",
            "0.3",
            "--json",
            "--scenes",
        ],
        &[&scenes, Path::new("--out"), &out],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hint.json")).unwrap()).unwrap();
    assert_eq!(report, on_disk);
    assert_eq!(report["hint"], "popular with many people");

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(scenes.join("scenes.summary.json")).unwrap())
            .unwrap();
    let cutoff = summary["cutoff_timestamp"].as_i64().unwrap();
    assert_eq!(report["cutoff_timestamp"].as_i64().unwrap(), cutoff);
    assert_eq!(
        std::fs::read(out.join("scenes.summary.json")).unwrap(),
        std::fs::read(scenes.join("scenes.summary.json")).unwrap()
    );
    let ratings = ratings();

    // Train: only the scenes in the last 30 % of the pre-cutoff period, hinted by the prior
    // fitted before the earliest of them.
    let plain_train = read_scenes(&scenes.join("scenes.train.jsonl"));
    let train = read_scenes(&out.join("scenes.train.jsonl"));
    let t = &report["train"];
    let boundary = t["boundary"].as_i64().unwrap();
    let start = ratings.iter().map(|r| r.2).min().unwrap();
    assert_eq!(
        boundary,
        cutoff - ((cutoff - start) as f64 * 0.3).ceil() as i64
    );
    let kept: Vec<&str> = plain_train
        .iter()
        .filter(|s| s["timestamp"].as_i64().unwrap() >= boundary)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let written: Vec<&str> = train.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(written, kept);
    assert!(
        !kept.is_empty() && kept.len() < plain_train.len(),
        "{} of {}",
        kept.len(),
        plain_train.len()
    );
    let earliest = train
        .iter()
        .map(|s| s["timestamp"].as_i64().unwrap())
        .min()
        .unwrap();
    assert_eq!(t["prior_cutoff"].as_i64().unwrap(), earliest);
    assert_eq!(t["scenes_in"].as_u64().unwrap() as usize, plain_train.len());
    assert_eq!(t["scenes"].as_u64().unwrap() as usize, train.len());
    let (hinted, on_answer) = check_split(&plain_train, &train, &ratings, earliest);
    assert_eq!(
        (
            t["hinted"].as_u64().unwrap() as usize,
            t["hint_on_answer"].as_u64().unwrap() as usize
        ),
        (hinted, on_answer)
    );
    assert!(hinted > 0 && on_answer > 0);

    // Eval: every scene, hinted by the prior fitted before the cutoff.
    let plain_eval = read_scenes(&scenes.join("scenes.eval.jsonl"));
    let eval = read_scenes(&out.join("scenes.eval.jsonl"));
    assert_eq!(eval.len(), plain_eval.len());
    let e = &report["eval"];
    assert_eq!(e["prior_cutoff"].as_i64().unwrap(), cutoff);
    let (hinted, on_answer) = check_split(&plain_eval, &eval, &ratings, cutoff);
    assert_eq!(
        (
            e["hinted"].as_u64().unwrap() as usize,
            e["hint_on_answer"].as_u64().unwrap() as usize
        ),
        (hinted, on_answer)
    );
    assert!(hinted > 0);
}

#[test]
fn hint_refuses_a_folder_without_scenes_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = mirrorsim(
        &[
            "hint",
            "--catalog",
            "movielens:../../data/ml-latest-small",
            "--scenes",
        ],
        &[dir.path(), Path::new("--out"), &out],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds no scenes in scenes.train.jsonl or scenes.eval.jsonl"),
        "{stderr}"
    );
    assert!(!out.exists());

    let output = mirrorsim(
        &[
            "hint",
            "--catalog",
            "movielens:../../data/ml-latest-small",
            "--prior",
            "random",
            "--scenes",
        ],
        &[dir.path(), Path::new("--out"), &out],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--prior takes one of knn, ease, popularity"),
        "{stderr}"
    );
}

/// `scenes --max-train 0` leaves an empty train file: only the eval scenes are hinted.
#[test]
fn hint_of_an_eval_only_folder_writes_only_eval_scenes() {
    let dir = tempfile::tempdir().unwrap();
    let scenes = dir.path().join("scenes");
    succeed(
        &[
            "scenes",
            "--source",
            "movielens:../../data/ml-latest-small",
            "--max-train",
            "0",
            "--max-eval",
            "20",
            "--out",
        ],
        &[&scenes],
    );
    let out = dir.path().join("hinted");
    let output = succeed(
        &[
            "hint",
            "--catalog",
            "movielens:../../data/ml-latest-small",
            // EASE on the 300 most interacted items: its dense inverse is slow in a test build.
            "--ease-max-items",
            "300",
            "--json",
            "--scenes",
        ],
        &[&scenes, Path::new("--out"), &out],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["prior"], "ease");
    assert_eq!(report["hint"], "what people with your taste chose next");
    assert!(report["train"].is_null());
    assert_eq!(report["eval"]["scenes"], 20);
    assert!(!out.join("scenes.train.jsonl").exists());
    assert_eq!(read_scenes(&out.join("scenes.eval.jsonl")).len(), 20);
}
