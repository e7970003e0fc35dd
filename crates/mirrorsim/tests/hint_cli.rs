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
            "--sft-examples",
            "5",
            "--json",
            "--scenes",
        ],
        &[&scenes, Path::new("--out"), &out],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hint.json")).unwrap()).unwrap();
    assert_eq!(report, on_disk);
    assert_eq!(report["priors"], serde_json::json!(["popularity"]));
    assert_eq!(
        report["hints"],
        serde_json::json!(["popular with many people"])
    );

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
    assert_eq!(t["by_prior"][0]["prior"], "popularity");
    assert_eq!(t["by_prior"][0]["hinted"], t["hinted"]);
    assert_eq!(t["by_prior"][0]["hint_on_answer"], t["hint_on_answer"]);
    assert!(hinted > 0 && on_answer > 0);
    // sft.jsonl: the first 5 hinted train scenes, their direct prompt and the real choice.
    let sft: Vec<Value> = std::fs::read_to_string(out.join("sft.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sft.len(), 5);
    assert_eq!(report["sft_examples"], 5);
    for (example, scene) in sft.iter().zip(&train) {
        let mut expected = scene["direct_messages"].as_array().unwrap().clone();
        let label = scene["labels"][scene["answer"].as_u64().unwrap() as usize]
            .as_str()
            .unwrap();
        expected.push(serde_json::json!({
            "role": "assistant",
            "content": format!("Behavior: [{label}]")
        }));
        assert_eq!(example["messages"], Value::Array(expected));
    }

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
        stderr.contains("a hint takes one or more of knn, ease, popularity, sequential"),
        "{stderr}"
    );
}

/// `scenes --max-train 0` leaves an empty train file: only the eval scenes are hinted. Two
/// priors: each pick carries its own note, an option both pick carries both, and hint.json
/// counts each prior's hints as the scenes show them.
#[test]
fn hint_of_an_eval_only_folder_writes_only_eval_scenes() {
    const EASE: &str = "what people with your taste chose next";
    const SEQUENTIAL: &str = "what people often picked right after your latest picks";
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
            "60",
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
            "ease,sequential",
            // EASE on the 300 most interacted items: its dense inverse is slow in a test build.
            "--ease-max-items",
            "300",
            "--json",
            "--scenes",
        ],
        &[&scenes, Path::new("--out"), &out],
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["priors"], serde_json::json!(["ease", "sequential"]));
    assert_eq!(report["hints"], serde_json::json!([EASE, SEQUENTIAL]));
    assert_eq!(report["config"]["sequential_window"], 20);
    assert!(report["train"].is_null());
    assert!(!out.join("scenes.train.jsonl").exists());
    let plain = read_scenes(&scenes.join("scenes.eval.jsonl"));
    let eval = read_scenes(&out.join("scenes.eval.jsonl"));
    assert_eq!(eval.len(), 60);

    // Per prior (hinted, on the answer), and scenes with any hint, some hint on the answer,
    // both hints on one option: recounted from the prompts.
    let mut per_prior = [(0, 0); 2];
    let (mut any, mut some_on_answer, mut agree) = (0, 0, 0);
    for (scene, twin) in eval.iter().zip(&plain) {
        let text = user_text(scene);
        let mut unnoted = text.clone();
        let mut slots = [None; 2];
        for (line_no, line) in text.lines().filter(|l| l.starts_with('[')).enumerate() {
            for (p, note) in [EASE, SEQUENTIAL].iter().enumerate() {
                if line.contains(note) {
                    assert!(slots[p].is_none(), "one note per prior: {text}");
                    slots[p] = Some(line_no);
                }
            }
        }
        for suffix in [
            format!(" — {EASE}; {SEQUENTIAL}"),
            format!(" — {EASE}"),
            format!(" — {SEQUENTIAL}"),
        ] {
            unnoted = unnoted.replace(&suffix, "");
        }
        assert_eq!(unnoted, user_text(twin), "only the notes change");
        let answer = scene["answer"].as_u64().unwrap() as usize;
        for (p, slot) in slots.iter().enumerate() {
            if let Some(slot) = slot {
                per_prior[p].0 += 1;
                per_prior[p].1 += usize::from(*slot == answer);
            }
        }
        any += usize::from(slots.iter().any(Option::is_some));
        some_on_answer += usize::from(slots.contains(&Some(answer)));
        if slots[0].is_some() && slots[0] == slots[1] {
            agree += 1;
            assert!(text.contains(&format!(" — {EASE}; {SEQUENTIAL}")), "{text}");
        }
    }
    let e = &report["eval"];
    assert_eq!(e["scenes"], 60);
    assert_eq!(
        (
            e["hinted"].clone(),
            e["hint_on_answer"].clone(),
            e["hints_agree"].clone()
        ),
        (any.into(), some_on_answer.into(), agree.into())
    );
    for (p, (hinted, on_answer)) in per_prior.into_iter().enumerate() {
        let counts = &e["by_prior"][p];
        assert_eq!(
            (counts["hinted"].clone(), counts["hint_on_answer"].clone()),
            (hinted.into(), on_answer.into())
        );
        assert!(hinted > 0, "prior {p} hints somewhere");
    }
    assert!(
        agree > 0 && agree < 60,
        "the priors agree sometimes, not always: {agree}"
    );

    // No train scenes, no SFT file: refused before anything is written.
    let refused = dir.path().join("refused");
    let output = mirrorsim(
        &[
            "hint",
            "--catalog",
            "movielens:../../data/ml-latest-small",
            "--prior",
            "popularity",
            "--sft-examples",
            "3",
            "--scenes",
        ],
        &[&scenes, Path::new("--out"), &refused],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("need train scenes"), "{stderr}");
    assert!(!refused.exists());
}
