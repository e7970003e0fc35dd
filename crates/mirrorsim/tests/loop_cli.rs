//! `mirrorsim simulate-recs` and `mirrorsim augment` end to end with the real default model
//! (SmolLM2-135M) on the embedded ml-latest-small, tiny sizes: built-in recommenders' pages,
//! the hybrid simulator from a hybrid.json, the RecBole files of an augmentation.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(args: &[&str], out: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(args)
        .args(["--catalog", "movielens:../../data/ml-latest-small"])
        .args([
            "--page-size",
            "3",
            "--pages",
            "2",
            "--history-len",
            "3",
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mirrorsim");
    assert!(
        output.status.success(),
        "mirrorsim {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("--json prints the metrics file")
}

#[test]
fn simulate_recs_and_augment_with_the_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    let metrics = run(
        &[
            "simulate-recs",
            "--builtin",
            "popularity,knn",
            "--users",
            "2",
        ],
        &plain,
    );
    let recommenders = metrics["recommenders"].as_array().unwrap();
    let names: Vec<&str> = recommenders
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["popularity", "knn"]);
    for r in recommenders {
        let simulated = &r["simulated"];
        assert_eq!(simulated["users"], 2);
        let rate = simulated["acceptance_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rate));
        let pages = simulated["mean_pages_viewed"].as_f64().unwrap();
        assert!((1.0..=2.0).contains(&pages));
        let ndcg = r["offline_all_users"]["ndcg_at_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ndcg));
    }
    assert!(plain.join("choices.jsonl").is_file());
    assert!(plain.join("recs").join("knn.csv").is_file());

    // The hybrid: weights from a hybrid.json (as `mirrorsim eval --prior` writes it).
    let hybrid = dir.path().join("hybrid.json");
    std::fs::write(
        &hybrid,
        r#"{"prior": "knn", "model": null,
            "weights": {"llm_weight": 1.0, "prior_weight": 1.0, "prior_temperature": 0.1},
            "fit": {"weights": {"llm_weight": 1.0, "prior_weight": 1.0, "prior_temperature": 0.1},
                    "scenes": 1, "nll_nats_llm": 1.0, "nll_nats_prior": 1.0, "nll_nats_hybrid": 1.0},
            "validation_scenes_file": "v.jsonl", "validation_boundary": 0, "eval_cutoff": 1,
            "validation_prior_cutoff": 0,
            "bounds": {"max_weight": 5.0, "min_temperature": 0.001, "max_temperature": 1000.0}}"#,
    )
    .unwrap();
    let with_prior = run(
        &[
            "simulate-recs",
            "--builtin",
            "knn",
            "--users",
            "2",
            "--prior",
            "knn",
            "--hybrid",
            hybrid.to_str().unwrap(),
        ],
        &dir.path().join("hybrid"),
    );
    assert!(
        with_prior["simulator"].as_str().unwrap().contains("knn"),
        "{}",
        with_prior["simulator"]
    );

    let augmented = dir.path().join("augment");
    let metrics = run(
        &[
            "augment",
            "--recommender",
            "popularity",
            "--evaluate",
            "knn",
            "--users",
            "2",
        ],
        &augmented,
    );
    assert_eq!(metrics["users_simulated"], 2);
    let real = metrics["recbole_real"].as_str().unwrap();
    let aug = metrics["recbole_augmented"].as_str().unwrap();
    let count_rows = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("user_id:token\titem_id:token\trating:float\ttimestamp:float")
        );
        lines.count()
    };
    let added = metrics["simulated_interactions"].as_u64().unwrap() as usize;
    assert!(added <= 2);
    assert_eq!(count_rows(aug), count_rows(real) + added);
    assert!(!metrics["evaluations"].as_array().unwrap().is_empty());
}
