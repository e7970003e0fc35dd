//! The README's demo command, end to end with the real default model on a reduced size:
//! embedded data → scenes → rationales → predictor scores → ΔEU distillation → direct eval.
//! A second run over the same run directory answers every LLM call from the journal.

use std::process::Command;

use serde_json::Value;

fn demo(out: &std::path::Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_mirrorsim"))
        .args([
            "demo",
            "--json",
            "--train-scenes",
            "20",
            "--eval-scenes",
            "4",
        ])
        .args([
            "--distill-scenes",
            "2",
            "--rationales",
            "2",
            "--rationale-tokens",
            "24",
        ])
        .arg("--out")
        .arg(out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run mirrorsim demo");
    assert!(
        output.status.success(),
        "demo failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the demo's --json summary")
}

#[test]
fn demo_runs_the_chain_and_resumes_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = demo(&out);
    assert_eq!(first["dataset"], "ml-latest-small");
    assert_eq!(first["train_scenes"], 20);
    assert_eq!(first["eval_scenes"], 4);
    assert_eq!(first["distilled_scenes"], 2);
    let accuracy = first["direct_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(first["direct_nll_bits"].as_f64().unwrap() > 0.0);
    assert!(first["journal_misses"].as_u64().unwrap() > 0);
    for file in [
        "scenes/scenes.train.jsonl",
        "scenes/scenes.eval.jsonl",
        "scenes/scenes.summary.json",
        "distill/rationales.strong.jsonl",
        "distill/rationales.weak.jsonl",
        "distill/scores.jsonl",
        "distill/sft.jsonl",
        "distill/dpo.jsonl",
        "distill/direct.jsonl",
        "distill/distill.summary.json",
        "journal.sqlite",
        "demo.summary.json",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    let rationales = std::fs::read_to_string(out.join("distill/rationales.strong.jsonl")).unwrap();
    assert_eq!(rationales.lines().count(), 2 * 2);

    let scores_before = std::fs::read(out.join("distill/scores.jsonl")).unwrap();
    let second = demo(&out);
    assert_eq!(first["direct_accuracy"], second["direct_accuracy"]);
    assert_eq!(first["direct_nll_bits"], second["direct_nll_bits"]);
    assert_eq!(first["example_rationale"], second["example_rationale"]);
    assert_eq!(
        second["journal_misses"], 0,
        "the rerun must not call the model"
    );
    assert_eq!(second["journal_hits"], first["journal_misses"]);
    assert_eq!(
        scores_before,
        std::fs::read(out.join("distill/scores.jsonl")).unwrap()
    );
}
