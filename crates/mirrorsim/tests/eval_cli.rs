//! `mirrorsim eval` end to end with the real default model (SmolLM2-135M) on 10 eval scenes of
//! the embedded ml-latest-small in direct mode, beside all five baselines; a second run is
//! answered entirely from the journal and gives the same metrics; option rotations on 3 scenes
//! reuse the journaled unrotated scores; `mirrorsim report` compares two runs. Rotations are
//! kept to 3 scenes because each costs k more forwards on a 2-core machine.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn mirrorsim(args: &[&str], extra: &[&Path]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(args)
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mirrorsim");
    assert!(
        output.status.success(),
        "mirrorsim {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn eval(scenes: &Path, model: &Path, out: &Path, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(["eval", "--mode", "direct", "--repeats", "3", "--json"])
        .args(["--catalog", "movielens:../../data/ml-latest-small"])
        // EASE on the 300 most interacted items: its dense inverse is slow in a test build.
        .args(["--ease-max-items", "300"])
        .args(extra)
        .arg("--scenes")
        .arg(scenes)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mirrorsim eval");
    assert!(
        output.status.success(),
        "eval failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("eval --json prints metrics.json")
}

/// `mirrorsim scenes` on the embedded ml-latest-small into `out`, with `args`.
fn make_scenes(out: &Path, args: &[&str]) {
    let mut all = vec!["scenes", "--source", "movielens:../../data/ml-latest-small"];
    all.extend_from_slice(args);
    all.push("--out");
    mirrorsim(&all, &[out]);
}

#[test]
fn eval_scores_the_real_model_beside_baselines_and_resumes() {
    let model = mirrorsim_llm::default_model::default_model_path().expect("the default model");
    let dir = tempfile::tempdir().unwrap();
    let scenes_dir = dir.path().join("scenes");
    make_scenes(
        &scenes_dir,
        &[
            "--max-train",
            "0",
            "--max-eval",
            "12",
            "--negatives",
            "random=1,popularity=1",
            "--seed",
            "5",
        ],
    );
    let scenes = scenes_dir.join("scenes.eval.jsonl");
    let out = dir.path().join("run").join("eval");
    // 10 scenes without rotations: 10 direct requests and 10 Agent4Rec requests.
    let ten = ["--max-scenes", "10", "--no-rotations"];
    let first = eval(&scenes, &model, &out, &ten);

    assert_eq!(first["scenes"], 10);
    assert_eq!(first["mode"], "direct");
    assert!(first["cutoff_source"]
        .as_str()
        .unwrap()
        .ends_with("scenes.summary.json"));
    let predictors = first["predictors"].as_array().unwrap();
    let names: Vec<&str> = predictors
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 6);
    assert!(names[0].ends_with("(direct)") && names[0].contains("SmolLM2"));
    assert_eq!(
        &names[1..],
        ["random", "popularity", "knn", "ease", "sequential"]
    );
    let simulator = &predictors[0]["metrics"];
    assert_eq!(simulator["scenes"], 10);
    let accuracy = simulator["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(simulator["nll_bits"].as_f64().unwrap() > 0.0);
    assert_eq!(simulator["samples_per_scene"], 3);
    assert!(simulator["position_bias"].is_null());
    let agent4rec = predictors[0]["agent4rec"].as_object().unwrap();
    assert_eq!(
        agent4rec.keys().collect::<Vec<_>>(),
        ["1", "2", "3"],
        "1:9 needs 10 options"
    );
    let users = agent4rec["1"]["users"].as_u64().unwrap();
    assert!((1..=10).contains(&users));
    assert_eq!(agent4rec["3"]["items"].as_u64().unwrap(), 4 * users);
    assert!((predictors[1]["metrics"]["accuracy"].as_f64().unwrap() - 0.2).abs() < 1e-12);
    assert_eq!(first["llm_requests_sent"].as_u64().unwrap(), 10 + users);
    assert_eq!(first["llm_requests_from_journal"], 0);

    // predictions.jsonl: 10 scenes × 6 predictors.
    let predictions = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    let lines: Vec<Value> = predictions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 60);
    for line in &lines[..10] {
        let distribution = line["distribution"].as_array().unwrap();
        assert_eq!(distribution.len(), 5);
        let sum: f64 = distribution.iter().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert_eq!(line["samples"].as_array().unwrap().len(), 3);
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("SmolLM2") && html.contains("<svg") && !html.contains("<script"));

    // Again: every LLM request comes from the journal, and the metrics are the same.
    let again = eval(&scenes, &model, &out, &ten);
    assert_eq!(again["llm_requests_sent"], 0);
    assert_eq!(
        again["llm_requests_from_journal"],
        first["llm_requests_sent"]
    );
    assert_eq!(again["predictors"], first["predictors"]);

    // Position bias on 3 scenes: rotation 0 comes from the journal, rotations 1–4 are new.
    let rotated = eval(
        &scenes,
        &model,
        &out,
        &["--max-scenes", "3", "--no-agent4rec"],
    );
    assert_eq!(rotated["llm_requests_sent"], 12);
    assert_eq!(rotated["llm_requests_from_journal"], 3);
    let simulator = &rotated["predictors"][0]["metrics"];
    assert_eq!(simulator["position_bias"]["scenes"], 3);
    let rates = simulator["position_bias"]["slot_choice_rate"]["5"]
        .as_array()
        .unwrap();
    let total: f64 = rates.iter().map(|r| r.as_f64().unwrap()).sum();
    assert!(
        (total - 1.0).abs() < 1e-9,
        "slot choice rates sum to {total}"
    );
    let first_line: Value = serde_json::from_str(
        std::fs::read_to_string(out.join("predictions.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first_line["rotations"].as_array().unwrap().len(), 5);
    assert_eq!(first_line["rotations"][0], first_line["distribution"]);
    assert_eq!(first_line["distribution"], lines[0]["distribution"]);

    // Baselines only, then both runs in one page.
    let baselines_only = dir.path().join("baselines");
    let output = mirrorsim(
        &[
            "eval",
            "--model",
            "none",
            "--catalog",
            "movielens:../../data/ml-latest-small",
            "--max-scenes",
            "10",
            "--ease-max-items",
            "300",
            "--scenes",
        ],
        &[&scenes, Path::new("--out"), &baselines_only],
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("popularity"));
    let page = dir.path().join("compare.html");
    mirrorsim(
        &["report"],
        &[
            &dir.path().join("run"),
            &baselines_only,
            Path::new("--out"),
            &page,
        ],
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // One accuracy cell per predictor: the run's simulator and five baselines, and the
    // baselines-only run's five.
    assert_eq!(html.matches("data-metric=\"accuracy\"").count(), 11);
}

/// `--prior knn --prior-in-prompt`: the hybrid is fitted on validation scenes from the end of the
/// pre-cutoff period, the prompt variant is compared with it there (hybrid.json names the
/// winner), and both are reported on the eval scenes.
#[test]
fn eval_fits_the_hybrid_and_compares_the_prior_in_the_prompt() {
    let model = mirrorsim_llm::default_model::default_model_path().expect("the default model");
    let dir = tempfile::tempdir().unwrap();
    let scenes_dir = dir.path().join("scenes");
    make_scenes(
        &scenes_dir,
        &[
            "--max-train",
            "600",
            "--max-eval",
            "6",
            "--eval-options",
            "4",
            "--train-options",
            "4..4",
            "--negatives",
            "random=1",
            "--seed",
            "3",
        ],
    );
    let out = dir.path().join("eval");
    let validation = scenes_dir.join("scenes.train.jsonl");
    let metrics = eval(
        &scenes_dir.join("scenes.eval.jsonl"),
        &model,
        &out,
        &[
            "--no-rotations",
            "--no-agent4rec",
            "--baselines",
            "knn",
            "--prior",
            "knn",
            "--prior-in-prompt",
            "--max-validation-scenes",
            "8",
            "--validation-scenes",
            validation.to_str().unwrap(),
        ],
    );
    let names: Vec<&str> = metrics["predictors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(names[2].starts_with("hybrid(") && names[2].ends_with(" + knn)"));
    assert!(names[3].starts_with("knn (T = "));
    assert!(names[4].ends_with(" + knn hint in prompt"), "{names:?}");
    assert_eq!(metrics["predictors"][4]["metrics"]["scenes"], 6);

    let hybrid: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("hybrid.json")).unwrap()).unwrap();
    assert_eq!(hybrid["fit"]["scenes"], 8);
    let hint = &hybrid["prompt_hint"];
    assert_eq!(hint["hint"], "similar to what you chose before");
    let (prompt, mixed) = (
        hint["nll_nats_prompt_hint"].as_f64().unwrap(),
        hint["nll_nats_hybrid"].as_f64().unwrap(),
    );
    assert_eq!(hybrid["fit"]["nll_nats_hybrid"].as_f64().unwrap(), mixed);
    assert_eq!(
        hint["winner"],
        if prompt < mixed { "prompt" } else { "hybrid" }
    );
    // Eval and validation scenes plain and hinted; a scene whose top prior score is tied keeps
    // its plain prompt and comes from the journal.
    let sent = metrics["llm_requests_sent"].as_u64().unwrap();
    assert!((6 + 8..=2 * (6 + 8)).contains(&sent), "{sent} requests");
    let notes = metrics["notes"].as_array().unwrap();
    assert!(notes
        .iter()
        .any(|n| n.as_str().unwrap().starts_with("prior in the prompt")));
}

/// `--endpoint`: the simulator behind an OpenAI-compatible server (the mirrorsim server library
/// serving the default model on a free loopback port) gives the local engine's distributions
/// within 1e-3 (the server reports top logprobs rounded through JSON and its own batching).
#[test]
fn eval_against_an_endpoint_matches_the_local_engine() {
    let model = mirrorsim_llm::default_model::default_model_path().expect("the default model");
    let dir = tempfile::tempdir().unwrap();
    let scenes_dir = dir.path().join("scenes");
    make_scenes(
        &scenes_dir,
        &[
            "--max-train",
            "0",
            "--max-eval",
            "4",
            "--eval-options",
            "4",
            "--negatives",
            "random=1",
            "--seed",
            "8",
        ],
    );
    let scenes = scenes_dir.join("scenes.eval.jsonl");
    let common = ["--no-rotations", "--no-agent4rec", "--baselines", "none"];
    let mut with_ratings = common.to_vec();
    with_ratings.push("--ratings");
    let local = eval(&scenes, &model, &dir.path().join("local"), &with_ratings);
    // Rating prediction: the simulator's expected rating and four bias baselines, on the 4
    // decisions (every ml-latest-small interaction has a rating).
    let ratings = local["ratings"].as_array().unwrap();
    assert_eq!(ratings.len(), 5);
    assert!(ratings[0]["predictor"]
        .as_str()
        .unwrap()
        .ends_with("(expected rating)"));
    for r in ratings {
        assert_eq!(r["cases"], 4);
        let (mae, rmse) = (r["mae"].as_f64().unwrap(), r["rmse"].as_f64().unwrap());
        assert!((0.0..=4.5).contains(&mae) && mae <= rmse + 1e-12, "{r}");
        let predicted = r["mean_predicted"].as_f64().unwrap();
        assert!((1.0..=5.0).contains(&predicted), "{r}");
    }
    assert_eq!(local["llm_requests_sent"], 4 + 4);
    let html = std::fs::read_to_string(dir.path().join("local").join("report.html")).unwrap();
    assert!(html.contains("<h2>Rating prediction</h2>") && html.contains("user + item biases"));

    let engine =
        mirrorsim_llm::engine::LocalEngine::load(&model, Default::default()).expect("the engine");
    let server = mirrorsim_serve::serve(
        "127.0.0.1:0".parse().unwrap(),
        std::sync::Arc::new(engine),
        "smollm2",
    )
    .unwrap();
    let remote_out = dir.path().join("remote");
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(["eval", "--mode", "direct", "--repeats", "3", "--json"])
        .args(common)
        .args([
            "--endpoint",
            &server.base_url(),
            "--served-model",
            "smollm2",
        ])
        .arg("--scenes")
        .arg(&scenes)
        .arg("--out")
        .arg(&remote_out)
        .output()
        .expect("run mirrorsim eval");
    assert!(
        output.status.success(),
        "eval --endpoint failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let remote: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(remote["scenes"], 4);
    assert_eq!(remote["llm_requests_sent"], 4);
    assert!(remote["model"].as_str().unwrap().contains("smollm2"));
    let distributions = |dir: &Path| -> Vec<Vec<f64>> {
        std::fs::read_to_string(dir.join("predictions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|v| {
                v["distribution"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_f64().unwrap())
                    .collect()
            })
            .collect()
    };
    let (ours, theirs) = (
        distributions(&dir.path().join("local")),
        distributions(&remote_out),
    );
    assert_eq!(ours.len(), 4);
    for (a, b) in ours.iter().zip(&theirs) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
        }
    }
    assert_eq!(local["scenes"], remote["scenes"]);
    server.shutdown().unwrap();
}
