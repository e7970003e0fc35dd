//! `mirrorsim run PIPELINE.toml` end to end with the real default model on a tiny pipeline:
//! outputs, up-to-date skipping with no new journal rows, shards + merge equal to the unsharded
//! run, and config errors that name the bad key.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mirrorsim_distill::Journal;

fn embedded_dataset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small")
}

fn tiny_pipeline(dir: &Path, run_dir: &str) -> PathBuf {
    let text = format!(
        r#"run_dir = "{run_dir}"

[source]
spec = "movielens:{data}"

[scenes]
max_train_scenes = 6
max_eval_scenes = 2
history_len = 3
train_options = {{ min = 2, max = 3 }}
# With this seed the first two train scenes hash to shards 1 and 0 of 2: each shard gets one,
# and the merge has to restore the scene-file order.
seed = 4

[models.small]
path = "default"

[models.same-small]

[rationales]
strong_model = "small"
weak_model = "same-small"
n = 2
strong_temperature = 0.7
weak_temperature = 1.3
max_tokens = 16
seed = 3
max_scenes = 2

[score]
predictor_model = "small"
seed = 5

[distill]
top_k = 2
"#,
        data = embedded_dataset().display()
    );
    let path = dir.join(format!("{run_dir}.toml"));
    fs::write(&path, text).unwrap();
    path
}

fn mirrorsim(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "$ mirrorsim {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn run_ok(args: &[&str]) -> String {
    let output = mirrorsim(args);
    assert!(output.status.success(), "mirrorsim {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

fn journal_rows(path: &Path) -> usize {
    Journal::open(path).unwrap().entries().unwrap().len()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn scene_ids(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["scene_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Every line (or the whole file, for `.json`) parses to the same JSON, numbers within 1e-9.
fn assert_json_close(merged: &Path, whole: &Path) {
    let parse = |path: &Path| -> Vec<serde_json::Value> {
        let text = fs::read_to_string(path).unwrap();
        if path.extension().is_some_and(|e| e == "json") {
            vec![serde_json::from_str(&text).unwrap()]
        } else {
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    };
    let (a, b) = (parse(merged), parse(whole));
    assert_eq!(
        a.len(),
        b.len(),
        "{} vs {}",
        merged.display(),
        whole.display()
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            json_close(x, y),
            "{} differs from {}:\n{x}\n{y}",
            merged.display(),
            whole.display()
        );
    }
}

fn json_close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w)))
        }
        _ => a == b,
    }
}

const DISTILL_FILES: [&str; 5] = [
    "sft.jsonl",
    "dpo.jsonl",
    "direct.jsonl",
    "distill.scenes.jsonl",
    "distill.summary.json",
];

#[test]
fn run_skips_unchanged_stages_and_shards_merge_to_the_unsharded_result() {
    let dir = tempfile::tempdir().unwrap();
    let whole = tiny_pipeline(dir.path(), "whole");
    let whole_toml = whole.to_str().unwrap();
    let run = dir.path().join("whole");

    let first = run_ok(&["run", whole_toml]);
    assert!(!first.contains("up to date"), "{first}");
    assert!(run.join("pipeline.resolved.json").exists());
    assert!(run.join("stages.json").exists());
    assert_eq!(lines(&run.join("scenes/scenes.train.jsonl")).len(), 6);
    assert_eq!(lines(&run.join("scenes/scenes.eval.jsonl")).len(), 2);
    let train_ids: Vec<String> = lines(&run.join("scenes/scenes.train.jsonl"))
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // 2 scenes × n = 2 per role, 8 scores, and only the first 2 scenes.
    for file in ["rationales.strong.jsonl", "rationales.weak.jsonl"] {
        let ids = scene_ids(&run.join(file));
        assert_eq!(ids.len(), 4, "{file}");
        assert!(ids.iter().all(|id| train_ids[..2].contains(id)), "{file}");
    }
    assert_eq!(lines(&run.join("scores.jsonl")).len(), 8);
    for file in DISTILL_FILES {
        assert!(run.join("distill").join(file).exists(), "{file}");
    }
    let journal = run.join("journal.sqlite");
    let rows_after_first = journal_rows(&journal);
    // One generation request per scene and role, one choice request per scene.
    assert_eq!(rows_after_first, 6);
    let scores_first = fs::read(run.join("scores.jsonl")).unwrap();

    let second = run_ok(&["run", whole_toml]);
    for stage in [
        "scenes",
        "rationales.strong",
        "rationales.weak",
        "scores",
        "distill",
    ] {
        assert!(
            second.contains(&format!("{stage}: up to date")),
            "{stage} not skipped:\n{second}"
        );
    }
    assert_eq!(journal_rows(&journal), rows_after_first);
    assert_eq!(fs::read(run.join("scores.jsonl")).unwrap(), scores_first);

    // The same pipeline in two shards and a merge, in a fresh run directory.
    let sharded = tiny_pipeline(dir.path(), "sharded");
    let sharded_toml = sharded.to_str().unwrap();
    let shard_run = dir.path().join("sharded");
    let merge_too_early = mirrorsim(&["run", sharded_toml, "--merge-shards", "2"]);
    assert!(!merge_too_early.status.success());
    let out = run_ok(&["run", sharded_toml, "--shard", "0/2"]);
    assert!(out.contains("distill: waits for the merge"), "{out}");
    let missing = mirrorsim(&["run", sharded_toml, "--merge-shards", "2"]);
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(message.contains("shard 1 of 2 is missing"), "{message}");
    run_ok(&["run", sharded_toml, "--shard", "1/2"]);
    assert!(shard_run.join("journal.shard-0-of-2.sqlite").exists());
    assert!(shard_run.join("journal.shard-1-of-2.sqlite").exists());
    assert!(!shard_run.join("journal.sqlite").exists());
    let mut shard_scenes: Vec<String> = Vec::new();
    for index in 0..2 {
        let mut ids =
            scene_ids(&shard_run.join(format!("rationales.strong.shard-{index}-of-2.jsonl")));
        ids.dedup();
        assert_eq!(ids.len(), 1, "shard {index} holds {ids:?}");
        shard_scenes.extend(ids);
    }
    assert_eq!(shard_scenes, [train_ids[1].clone(), train_ids[0].clone()]);

    let merged = run_ok(&["run", sharded_toml, "--merge-shards", "2"]);
    assert!(merged.contains("distill: "), "{merged}");
    for file in ["rationales.strong.jsonl", "rationales.weak.jsonl"] {
        assert_eq!(
            fs::read(shard_run.join(file)).unwrap(),
            fs::read(run.join(file)).unwrap(),
            "{file} differs between the merged and the unsharded run"
        );
    }
    // The predictor's float sums may differ in the last bits between batch compositions.
    assert_json_close(&shard_run.join("scores.jsonl"), &run.join("scores.jsonl"));
    for file in DISTILL_FILES {
        assert_json_close(
            &shard_run.join("distill").join(file),
            &run.join("distill").join(file),
        );
    }
    // After the merge, a plain run finds every stage up to date.
    let after_merge = run_ok(&["run", sharded_toml]);
    assert_eq!(
        after_merge.matches(": up to date").count(),
        5,
        "{after_merge}"
    );
}

#[test]
fn unknown_keys_and_unknown_models_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = fs::read_to_string(tiny_pipeline(dir.path(), "run")).unwrap();

    let bad_key = dir.path().join("bad-key.toml");
    fs::write(&bad_key, good.replace("max_tokens = 16", "max_tokenz = 16")).unwrap();
    let output = mirrorsim(&["run", bad_key.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(message.contains("max_tokenz"), "{message}");
    assert!(message.contains("bad-key.toml"), "{message}");

    let bad_model = dir.path().join("bad-model.toml");
    fs::write(
        &bad_model,
        good.replace(
            r#"predictor_model = "small""#,
            r#"predictor_model = "large""#,
        ),
    )
    .unwrap();
    let output = mirrorsim(&["run", bad_model.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        message.contains(r#"predictor_model = "large""#),
        "{message}"
    );
    assert!(
        !dir.path().join("run").exists(),
        "nothing runs on a bad config"
    );
}

/// A pipeline from raw data to a report: tiny LLM stages, one SFT step and one DPO step on
/// rank-4 adapters, and an eval of the base model and both adapters beside two baselines.
fn train_eval_pipeline(dir: &Path) -> PathBuf {
    let text = format!(
        r#"run_dir = "full"

[source]
spec = "movielens:{data}"

[scenes]
max_train_scenes = 8
max_eval_scenes = 3
history_len = 3
# Two options per train scene: a short rationale then often both hits and misses, which
# distillation needs to keep a scene.
train_options = {{ min = 2, max = 2 }}
seed = 4

[models.small]
path = "default"

# One scene and four rationales per source: with these seeds the predictor follows all strong
# rationales to the real choice and misses after one weak one, so distillation keeps the scene
# (an SFT example and a DPO pair).
[rationales]
strong_model = "small"
weak_model = "small"
n = 4
strong_temperature = 0.7
weak_temperature = 1.3
max_tokens = 8
seed = 3
max_scenes = 1

[score]
predictor_model = "small"
seed = 5

[distill]
top_k = 1

[train.sft]
data = "direct"
max_steps = 1
grad_accum = 1
max_len = 256
rank = 4
alpha = 8.0
eval_fraction = 0.0
save_every = 0

[train.dpo]
max_steps = 1
grad_accum = 1
max_len = 256
eval_fraction = 0.0
save_every = 0
beta = 0.1

[eval]
max_scenes = 3
repeats = 2
baselines = ["random", "popularity"]
# Rotations and the Agent4Rec questions multiply the requests; the eval CLI's tests cover them.
rotations = false
agent4rec = false
"#,
        data = embedded_dataset().display()
    );
    let path = dir.join("full.toml");
    fs::write(&path, text).unwrap();
    path
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn run_trains_adapters_and_evaluates_them_beside_the_base_model_and_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = train_eval_pipeline(dir.path());
    let toml = pipeline.to_str().unwrap();
    let run = dir.path().join("full");

    let first = run_ok(&["run", toml]);
    assert!(!first.contains("up to date"), "{first}");
    for stage in ["sft", "dpo"] {
        let out = run.join("train").join(stage);
        assert!(out.join("adapter_model.safetensors").is_file(), "{stage}");
        assert!(out.join("adapter_config.json").is_file(), "{stage}");
        let summary = read_json(&out.join("train_summary.json"));
        assert_eq!(summary["kind"], stage);
        assert_eq!(summary["steps"], 1, "{stage}");
        assert!(!lines(&out.join("loss.jsonl")).is_empty(), "{stage}");
    }
    // DPO started from the SFT adapter, so it kept its rank.
    let dpo_config = read_json(&run.join("train/dpo/train_summary.json"));
    assert_eq!(dpo_config["config"]["lora"]["rank"], 4);

    let metrics = read_json(&run.join("eval/metrics.json"));
    assert_eq!(metrics["scenes"], 3);
    let names: Vec<&str> = metrics["predictors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "base (direct)",
            "sft (direct)",
            "dpo (direct)",
            "random",
            "popularity"
        ]
    );
    let model = metrics["model"].as_str().unwrap();
    assert_eq!(model.matches("+lora:").count(), 2, "{model}");
    // Three simulators × 3 scenes, plus the two baselines' 3 scenes each.
    assert_eq!(lines(&run.join("eval/predictions.jsonl")).len(), 15);
    let report = fs::read_to_string(run.join("eval/report.html")).unwrap();
    for name in [
        "base (direct)",
        "sft (direct)",
        "dpo (direct)",
        "popularity",
    ] {
        assert!(report.contains(name), "the report lacks {name}");
    }

    let second = run_ok(&["run", toml]);
    for stage in [
        "scenes",
        "rationales.strong",
        "rationales.weak",
        "scores",
        "distill",
        "train.sft",
        "train.dpo",
        "eval",
    ] {
        assert!(
            second.contains(&format!("{stage}: up to date")),
            "{stage} not skipped:\n{second}"
        );
    }
    assert_eq!(second.matches(": up to date").count(), 8, "{second}");

    // A training stage killed after its checkpoint (recorded as started, not done) resumes
    // from it instead of starting over; the eval that follows is still up to date.
    let stages_path = run.join("stages.json");
    let mut stages = read_json(&stages_path);
    let fingerprints = stages["fingerprints"].as_object_mut().unwrap();
    let dpo_fingerprint = fingerprints.remove("train.dpo").unwrap();
    fingerprints.insert("train.dpo.started".to_owned(), dpo_fingerprint);
    fs::write(&stages_path, serde_json::to_string(&stages).unwrap()).unwrap();
    let adapter_before = fs::read(run.join("train/dpo/adapter_model.safetensors")).unwrap();
    let resumed = run_ok(&["run", toml]);
    assert!(resumed.contains("train.dpo: resuming"), "{resumed}");
    assert!(resumed.contains("(resumed at step 1)"), "{resumed}");
    assert_eq!(
        fs::read(run.join("train/dpo/adapter_model.safetensors")).unwrap(),
        adapter_before
    );
    assert!(resumed.contains("eval: up to date"), "{resumed}");

    // A changed DPO config retrains DPO from the start (not from the stale checkpoint) and
    // leaves SFT alone.
    fs::write(
        &pipeline,
        fs::read_to_string(&pipeline)
            .unwrap()
            .replacen("beta = 0.1", "beta = 0.2", 1),
    )
    .unwrap();
    let changed = run_ok(&["run", toml, "--stages", "train"]);
    assert!(changed.contains("train.sft: up to date"), "{changed}");
    assert!(!changed.contains("train.dpo: up to date"), "{changed}");
    assert!(!changed.contains("resum"), "{changed}");
    assert!(!changed.contains("eval:"), "{changed}");
    let dpo_summary = read_json(&run.join("train/dpo/train_summary.json"));
    assert_eq!(dpo_summary["config"]["beta"], 0.2);
    assert_eq!(dpo_summary["resumed_from_step"], serde_json::Value::Null);
}

/// Scenes → hint → SFT on the hinted train scenes → eval on the hinted eval scenes: no
/// `[rationales]` or `[score]`, so no rationale is generated.
fn hinted_pipeline(dir: &Path, sft_examples: usize) -> PathBuf {
    let text = format!(
        r#"run_dir = "hinted"

[source]
spec = "movielens:{data}"

[scenes]
max_train_scenes = 400
max_eval_scenes = 3
eval_options = 4
train_options = {{ min = 3, max = 4 }}
history_len = 3
seed = 2

[models.small]
path = "default"

[hint]
priors = ["popularity", "sequential"]
train_fraction = 0.3
sft_examples = {sft_examples}

[train]
model = "small"

[train.sft]
data = "hint"
max_steps = 1
grad_accum = 1
max_len = 256
rank = 4
alpha = 8.0
eval_fraction = 0.0
save_every = 0

[eval]
max_scenes = 3
repeats = 2
baselines = ["popularity", "sequential"]
rotations = false
agent4rec = false
"#,
        data = embedded_dataset().display()
    );
    let path = dir.join("hinted.toml");
    fs::write(&path, text).unwrap();
    path
}

/// The `distribution` of each prediction line of `predictor` (of every line with `None`).
fn distributions(path: &Path, predictor: Option<&str>) -> Vec<Vec<f64>> {
    lines(path)
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| predictor.is_none_or(|name| v["predictor"] == name))
        .map(|v| {
            v["distribution"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn run_hints_the_scenes_trains_on_them_and_evaluates_the_hinted_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = hinted_pipeline(dir.path(), 4);
    let toml = pipeline.to_str().unwrap();
    let run = dir.path().join("hinted");

    let first = run_ok(&["run", toml]);
    assert!(
        first.contains("hint: the popularity,sequential prior's picks"),
        "{first}"
    );
    assert!(!first.contains("up to date"), "{first}");
    for absent in ["rationales.strong.jsonl", "scores.jsonl", "distill"] {
        assert!(!run.join(absent).exists(), "{absent}");
    }

    // The stage writes what `mirrorsim hint` writes for the same scenes and options.
    let cli = dir.path().join("cli");
    let data = format!("movielens:{}", embedded_dataset().display());
    run_ok(&[
        "hint",
        "--catalog",
        &data,
        "--prior",
        "popularity,sequential",
        "--train-fraction",
        "0.3",
        "--sft-examples",
        "4",
        "--scenes",
        run.join("scenes").to_str().unwrap(),
        "--out",
        cli.to_str().unwrap(),
    ]);
    for file in [
        "scenes.train.jsonl",
        "scenes.eval.jsonl",
        "scenes.summary.json",
        "sft.jsonl",
    ] {
        assert_eq!(
            fs::read(run.join("hint").join(file)).unwrap(),
            fs::read(cli.join(file)).unwrap(),
            "{file}"
        );
    }
    let mut from_run = read_json(&run.join("hint/hint.json"));
    let mut from_cli = read_json(&cli.join("hint.json"));
    for report in [&mut from_run, &mut from_cli] {
        let fields = report.as_object_mut().unwrap();
        fields.remove("scenes");
        fields.remove("seconds");
    }
    assert_eq!(from_run, from_cli);
    assert_eq!(from_run["sft_examples"], 4);
    assert!(from_run["eval"]["hinted"].as_u64().unwrap() > 0);

    let summary = read_json(&run.join("train/sft/train_summary.json"));
    assert_eq!(summary["train_examples"], 4);
    assert_eq!(summary["steps"], 1);

    let metrics = read_json(&run.join("eval/metrics.json"));
    assert!(
        metrics["scenes_file"]
            .as_str()
            .unwrap()
            .ends_with("hint/scenes.eval.jsonl"),
        "{}",
        metrics["scenes_file"]
    );
    let names: Vec<&str> = metrics["predictors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["base (direct)", "sft (direct)", "popularity", "sequential"]
    );
    assert!(
        metrics["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("popularity,sequential prior")),
        "{}",
        metrics["notes"]
    );

    // The base model was scored on the hinted prompts: `eval` on the hinted file gives its
    // distributions, and on the plain file other ones.
    let predictions = run.join("eval/predictions.jsonl");
    let in_run = distributions(&predictions, Some("base (direct)"));
    assert_eq!(in_run.len(), 3);
    for (folder, same) in [("hint", true), ("scenes", false)] {
        let out = dir.path().join(format!("eval-{folder}"));
        run_ok(&[
            "eval",
            "--scenes",
            run.join(folder).join("scenes.eval.jsonl").to_str().unwrap(),
            "--model",
            "default",
            "--mode",
            "direct",
            "--repeats",
            "2",
            "--no-rotations",
            "--no-agent4rec",
            "--baselines",
            "none",
            "--out",
            out.to_str().unwrap(),
        ]);
        let alone = distributions(&out.join("predictions.jsonl"), None);
        let close = in_run
            .iter()
            .zip(&alone)
            .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6));
        assert_eq!(close, same, "{folder}: {in_run:?} vs {alone:?}");
    }

    let second = run_ok(&["run", toml]);
    for stage in ["scenes", "hint", "train.sft", "eval"] {
        assert!(
            second.contains(&format!("{stage}: up to date")),
            "{stage} not skipped:\n{second}"
        );
    }
    assert_eq!(second.matches(": up to date").count(), 4, "{second}");

    // Fewer SFT examples: the hint stage reruns, and so does the training on its file.
    hinted_pipeline(dir.path(), 3);
    let changed = run_ok(&["run", toml, "--stages", "hint,train"]);
    assert!(!changed.contains("hint: up to date"), "{changed}");
    assert!(!changed.contains("train.sft: up to date"), "{changed}");
    assert_eq!(lines(&run.join("hint/sft.jsonl")).len(), 3);
    let summary = read_json(&run.join("train/sft/train_summary.json"));
    assert_eq!(summary["train_examples"], 3);
}
