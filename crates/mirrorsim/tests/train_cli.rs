//! `mirrorsim train sft`, `train dpo --adapter` and `export --merge` with the real SmolLM2 model
//! on scenes built from the embedded ml-latest-small data (a few steps): the adapter is PEFT
//! files, the engine loads base + adapter, and the merged GGUF files give the same logits.

use std::path::Path;
use std::process::Command;

use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::Backend;
use serde_json::{json, Value};

fn mirrorsim(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mirrorsim");
    assert!(
        output.status.success(),
        "mirrorsim {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// SFT and DPO files from train scenes: the direct prompt, the real choice as the reply (the
/// DPO pair's rejected reply names the next option instead).
fn write_training_files(scenes: &Path, sft: &Path, dpo: &Path) -> usize {
    let text = std::fs::read_to_string(scenes).unwrap();
    let (mut sft_lines, mut dpo_lines) = (String::new(), String::new());
    for line in text.lines() {
        let scene: Value = serde_json::from_str(line).unwrap();
        let labels = scene["labels"].as_array().unwrap();
        let answer = scene["answer"].as_u64().unwrap() as usize;
        let chosen = format!("Behavior: [{}]", labels[answer].as_str().unwrap());
        let rejected = format!(
            "Behavior: [{}]",
            labels[(answer + 1) % labels.len()].as_str().unwrap()
        );
        let prompt = scene["direct_messages"].clone();
        let mut messages = prompt.as_array().unwrap().clone();
        messages.push(json!({"role": "assistant", "content": chosen}));
        sft_lines += &format!("{}\n", json!({ "messages": messages }));
        dpo_lines += &format!(
            "{}\n",
            json!({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            })
        );
    }
    std::fs::write(sft, sft_lines).unwrap();
    std::fs::write(dpo, dpo_lines).unwrap();
    text.lines().count()
}

fn last_logits(engine: &LocalEngine, tokens: &[u32]) -> Vec<f32> {
    engine.logits(tokens).unwrap().pop().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

#[test]
fn sft_then_dpo_then_merged_gguf_export() {
    let model = mirrorsim_llm::default_model::default_model_path().expect("the default model");
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    mirrorsim(&[
        "scenes",
        "--source",
        "movielens:../../data/ml-latest-small",
        "--out",
        &d("scenes"),
        "--max-train",
        "6",
        "--max-eval",
        "1",
        "--train-options",
        "3..4",
        "--history",
        "2",
    ]);
    let count = write_training_files(
        &dir.path().join("scenes/scenes.train.jsonl"),
        &dir.path().join("sft.jsonl"),
        &dir.path().join("dpo.jsonl"),
    );
    assert_eq!(count, 6);
    let common = [
        "--max-steps",
        "2",
        "--grad-accum",
        "2",
        "--max-len",
        "320",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--lr",
        "1e-3",
        "--eval-fraction",
        "0.2",
        "--json",
    ];
    // `default` names the default model, as it does for eval.
    let mut sft_args = vec!["train", "sft", "--model", "default", "--data"];
    let (sft_data, sft_out) = (d("sft.jsonl"), d("sft"));
    sft_args.extend([sft_data.as_str(), "--out", sft_out.as_str()]);
    sft_args.extend(common);
    let sft: Value = serde_json::from_str(&mirrorsim(&sft_args)).unwrap();
    assert_eq!(sft["kind"], "sft");
    assert_eq!(sft["steps"], 2);
    assert_eq!(sft["train_examples"], 5);
    assert_eq!(sft["eval_examples"], 1);
    assert!(sft["final_eval"][0][1].as_f64().unwrap().is_finite());
    let log = std::fs::read_to_string(dir.path().join("sft/loss.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    let peft: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("sft/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");
    assert_eq!(peft["r"], 4);

    // Without dropout the first step's policy is exactly the reference (with it, the masked
    // adapter gives other log-probabilities by design).
    let mut dpo_args = vec![
        "train",
        "dpo",
        "--lora-dropout",
        "0",
        "--adapter",
        sft_out.as_str(),
        "--data",
    ];
    let (dpo_data, dpo_out) = (d("dpo.jsonl"), d("dpo"));
    dpo_args.extend([dpo_data.as_str(), "--out", dpo_out.as_str()]);
    dpo_args.extend(common);
    let dpo: Value = serde_json::from_str(&mirrorsim(&dpo_args)).unwrap();
    assert_eq!(dpo["kind"], "dpo");
    assert_eq!(dpo["config"]["lora"]["rank"], 4);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("dpo/loss.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    // The reference is the starting policy: before the first update every reward is 0.
    assert!(first["reward_margin"].as_f64().unwrap().abs() < 1e-3);
    assert!((first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-3);

    let tuned = LocalEngine::load(
        &model,
        EngineOptions {
            adapter: Some(dir.path().join("dpo")),
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let base = LocalEngine::load(&model, EngineOptions::default()).unwrap();
    let tokens = tuned
        .tokenizer()
        .encode("Behavior: [A] is what I would pick", false)
        .unwrap();
    let tuned_logits = last_logits(&tuned, &tokens);
    assert!(max_abs_diff(&tuned_logits, &last_logits(&base, &tokens)) > 1e-3);
    assert_ne!(tuned.model_id(), base.model_id());

    for (kind, tolerance) in [("f32", 1e-3f32), ("f16", 0.25), ("q8_0", 1.0)] {
        let out = d(&format!("merged-{kind}.gguf"));
        mirrorsim(&[
            "export",
            "--merge",
            "--adapter",
            &dpo_out,
            "--type",
            kind,
            "--out",
            &out,
        ]);
        let merged = LocalEngine::load(Path::new(&out), EngineOptions::default()).unwrap();
        let logits = last_logits(&merged, &tokens);
        let diff = max_abs_diff(&logits, &tuned_logits);
        assert!(diff < tolerance, "{kind}: max |Δlogit| {diff}");
        assert_eq!(argmax(&logits), argmax(&tuned_logits), "{kind}");
    }
}

/// A build without the `cuda` feature refuses `--cuda` before any work and says how to build
/// one, instead of silently running on the CPU.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_flag_on_a_cpu_build_is_refused_with_the_build_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(["--cuda", "0", "chat", "--model", "no-such-model.gguf", "hi"])
        .output()
        .expect("run mirrorsim");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--features cuda"),
        "unexpected error: {stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .env("MIRRORSIM_CUDA", "0")
        .args(["chat", "--model", "no-such-model.gguf", "hi"])
        .output()
        .expect("run mirrorsim");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--features cuda"));
}

/// `--matmul bf16` runs the default model's dense layers in bf16 on AMX and still answers; on a
/// CPU without AMX it stops with an error naming AMX instead of quietly running f32. Unknown
/// precisions are refused by the argument parser.
#[test]
fn matmul_bf16_flag_answers_on_amx_and_is_refused_in_words_elsewhere() {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(["--matmul", "bf16", "chat", "What is the capital of France?"])
        .output()
        .expect("run mirrorsim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match mirrorsim_llm::model::amx::amx() {
        Ok(_) => {
            assert!(output.status.success(), "{stderr}");
            assert!(stdout.contains("Paris"), "answer: {stdout}");
        }
        Err(_) => {
            assert!(!output.status.success());
            assert!(stderr.contains("AMX"), "unexpected error: {stderr}");
        }
    }
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args(["--matmul", "int8", "chat", "hi"])
        .output()
        .expect("run mirrorsim");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("int8"));
}

/// A missing training file is named once, without the dataset-source hint about `FORMAT:`, for
/// SFT and DPO alike, and for a missing `--eval-data` too.
#[test]
fn missing_training_file_is_reported_once_in_plain_words() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let present = tmp.path().join("present.jsonl");
    std::fs::write(&present, "").expect("write a file");
    let missing = tmp.path().join("no-such-file.jsonl");
    let (present, missing) = (present.to_str().unwrap(), missing.to_str().unwrap());
    let out = tmp.path().join("run");
    let out = out.to_str().unwrap();
    for args in [
        vec!["train", "sft", "--data", missing],
        vec!["train", "dpo", "--data", missing],
        vec!["train", "sft", "--data", present, "--eval-data", missing],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
            .args(&args)
            .args(["--model", "default", "--out", out])
            .output()
            .expect("run mirrorsim");
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let sentence = format!("{missing} does not exist");
        assert_eq!(stderr.matches(&sentence).count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("FORMAT"), "{args:?}: {stderr}");
    }
    assert!(!Path::new(out).join("adapter_model.safetensors").exists());
}
