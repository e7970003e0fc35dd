//! The JSONL records the stages write and read, and the reader that names file, line and field.

use std::path::Path;

use mirrorsim_data::io::{write_atomic, Encoding, Lines};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DistillError;

pub use mirrorsim_data::scenes::SceneRecord;

/// Which model wrote a rationale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Strong,
    Weak,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Strong => "strong",
            Role::Weak => "weak",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = DistillError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "strong" => Ok(Role::Strong),
            "weak" => Ok(Role::Weak),
            other => Err(DistillError::Config(format!(
                "unknown rationale role `{other}`; use strong or weak"
            ))),
        }
    }
}

/// Which of the six named sections a rationale contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatCheck {
    pub stimulus: bool,
    pub stimulus_factors: bool,
    pub knowledge: bool,
    pub knowledge_factors: bool,
    pub evaluation: bool,
    pub evaluation_style: bool,
}

impl FormatCheck {
    pub fn sections_present(&self) -> usize {
        [
            self.stimulus,
            self.stimulus_factors,
            self.knowledge,
            self.knowledge_factors,
            self.evaluation,
            self.evaluation_style,
        ]
        .iter()
        .filter(|&&present| present)
        .count()
    }

    pub fn complete(&self) -> bool {
        self.sections_present() == 6
    }
}

/// One rationale as written to `rationales.{strong,weak}.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RationaleRecord {
    pub scene_id: String,
    pub role: Role,
    /// 0-based sample index within the scene and role.
    pub index: usize,
    /// The rationale, cut before the first `Behavior:` and trimmed at the end.
    pub text: String,
    /// The letter the generator itself wrote as `Behavior: [X]`, when it wrote a valid one.
    pub stated_behavior: Option<String>,
    /// Prompt tokens of the scene prompt (shared by the scene's samples).
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub format: FormatCheck,
}

/// The predictor's reading of one rationale, as written to `scores.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub scene_id: String,
    pub role: Role,
    pub index: usize,
    /// Distribution over the scene's labels (sums to 1 unless every label was missing).
    pub distribution: Vec<f64>,
    /// Labels the backend could not report a probability for (mass 0 in `distribution`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_labels: Vec<String>,
    pub entropy_bits: f64,
    /// −log2 p[answer], with p clamped below at [`crate::uncertainty::PROB_FLOOR`].
    pub logloss_bits: f64,
    /// The sampled behaviour (0-based option slot) and its label; `None` only when the
    /// distribution has no mass at all.
    pub behavior: Option<usize>,
    pub behavior_label: Option<String>,
    pub hit: bool,
}

/// The `"name":` key whose value holds byte `column` (1-based) of `line`, found by scanning
/// backwards from the error position: serde_json reports a position, not a field path.
fn field_at(line: &str, column: usize) -> Option<String> {
    let end = column.min(line.len());
    let prefix = line.get(..end)?;
    let mut search_end = prefix.len();
    while let Some(colon) = prefix[..search_end].rfind("\":") {
        let before = &prefix[..colon];
        if let Some(open) = before.rfind('"') {
            let name = &before[open + 1..];
            if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Some(name.to_owned());
            }
        }
        search_end = colon;
    }
    None
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Reads one JSON record per non-empty line; a bad line is an error naming the file, the line
/// and (as far as serde_json's message and position allow) the field.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path, what: &str) -> Result<Vec<T>, DistillError> {
    let mut lines = Lines::open(path, Encoding::Utf8)?;
    let mut records = Vec::new();
    while let Some(line) = lines.next_line_ref() {
        let (line_no, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(text) {
            Ok(record) => records.push(record),
            Err(error) => {
                let message = error.to_string();
                let field = missing_field(&message)
                    .or_else(|| field_at(text, error.column()))
                    .unwrap_or_else(|| what.to_owned());
                return Err(DistillError::Malformed {
                    path: path.to_owned(),
                    line: line_no,
                    field,
                    message: format!("not a valid {what} record: {message}"),
                });
            }
        }
    }
    Ok(records)
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<(), DistillError> {
    write_atomic(path, |w| {
        for record in records {
            serde_json::to_writer(&mut *w, record).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Writes pretty JSON followed by a newline, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DistillError> {
    write_atomic(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_found_before_the_error_position() {
        let line = r#"{"scene_id":"a","index":"x"}"#;
        assert_eq!(field_at(line, 27).as_deref(), Some("index"));
        assert_eq!(
            missing_field("missing field `answer` at line 1 column 3").as_deref(),
            Some("answer")
        );
    }
}
