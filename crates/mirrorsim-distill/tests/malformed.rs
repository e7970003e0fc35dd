//! Malformed scene, rationale and score files give an error naming file, line and field.

mod common;

use mirrorsim_distill::stages::{read_rationales, read_scenes};
use mirrorsim_distill::DistillError;

fn malformed(error: DistillError) -> (std::path::PathBuf, u64, String, String) {
    match error {
        DistillError::Malformed {
            path,
            line,
            field,
            message,
        } => (path, line, field, message),
        other => panic!("expected a malformed-record error, got {other}"),
    }
}

#[test]
fn a_scene_with_a_wrong_type_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenes.jsonl");
    let good = serde_json::to_string(&common::scene("s1", "ml-1m", 3, 0)).unwrap();
    let bad = good.replace("\"answer\":0", "\"answer\":\"zero\"");
    assert_ne!(good, bad);
    std::fs::write(&path, format!("{good}\n\n{bad}\n")).unwrap();
    let error = read_scenes(&path).unwrap_err();
    let text = error.to_string();
    let (file, line, field, message) = malformed(error);
    assert_eq!(file, path);
    assert_eq!(line, 3);
    assert_eq!(field, "answer");
    assert!(message.contains("invalid type"), "{message}");
    assert!(text.contains("scenes.jsonl:3"), "{text}");
}

#[test]
fn a_scene_missing_a_field_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenes.jsonl");
    let mut value = serde_json::to_value(common::scene("s1", "ml-1m", 3, 0)).unwrap();
    value.as_object_mut().unwrap().remove("labels");
    std::fs::write(&path, format!("{value}\n")).unwrap();
    let (_, line, field, _) = malformed(read_scenes(&path).unwrap_err());
    assert_eq!((line, field.as_str()), (1, "labels"));
}

#[test]
fn a_truncated_rationale_line_and_a_bad_role_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"scene_id":"s","role":"strong","index":0,"text":"Thought: x","stated_behavior":null,"prompt_tokens":1,"completion_tokens":1,"format":{"stimulus":true,"stimulus_factors":false,"knowledge":false,"knowledge_factors":false,"evaluation":false,"evaluation_style":false}}"#;
    let first = dir.path().join("rationales.strong.jsonl");
    let second = dir.path().join("rationales.weak.jsonl");
    std::fs::write(&first, format!("{good}\n")).unwrap();
    // A line cut short, as a killed writer without atomic output would leave it.
    std::fs::write(&second, format!("{good}\n{}\n", &good[..40])).unwrap();
    let (file, line, _, message) =
        malformed(read_rationales(&[first.clone(), second.clone()]).unwrap_err());
    assert_eq!((file, line), (second.clone(), 2));
    assert!(message.contains("EOF"), "{message}");

    let bad_role = good.replace("\"strong\"", "\"medium\"");
    std::fs::write(&second, format!("{bad_role}\n")).unwrap();
    let (_, line, field, message) = malformed(read_rationales(&[second]).unwrap_err());
    assert_eq!((line, field.as_str()), (1, "role"));
    assert!(message.contains("medium"), "{message}");
}

#[test]
fn a_missing_file_is_named() {
    let error = read_scenes(std::path::Path::new("/nonexistent/scenes.jsonl")).unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/scenes.jsonl"),
        "{error}"
    );
}
