//! Training files → token sequences with the assistant part marked.
//!
//! Each example is rendered with the model's own chat template: the prompt (every message before
//! the trained reply, with the generation prompt opened) and the reply (the rest of the rendered
//! conversation, end-of-turn included) are tokenized separately, exactly as the engine reads a
//! prompt and then generates. The loss covers the reply tokens only.
//!
//! Sequences longer than the limit lose their oldest history first: history lines are the lines
//! of the last user message that start with `- ` (the layout of `prompts/*.j2`). Only when no
//! history is left is the prompt cut from its start. Both are counted, never silent.

use std::path::Path;

use mirrorsim_data::io::{Encoding, Lines};
use mirrorsim_llm::chat_template::ChatTemplate;
use mirrorsim_llm::tokenizer::ModelTokenizer;
use mirrorsim_llm::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::TrainError;

/// Prompt tokens followed by reply tokens; the loss is on `tokens[reply_start..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSequence {
    pub tokens: Vec<u32>,
    pub reply_start: usize,
}

impl TokenSequence {
    pub fn reply_len(&self) -> usize {
        self.tokens.len() - self.reply_start
    }
}

#[derive(Debug, Clone)]
pub struct SftExample {
    /// 1-based line in the source file.
    pub line: usize,
    pub sequence: TokenSequence,
}

#[derive(Debug, Clone)]
pub struct DpoExample {
    pub line: usize,
    pub chosen: TokenSequence,
    pub rejected: TokenSequence,
}

/// What the length limit did to a file's examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncationReport {
    pub sequences: usize,
    /// Sequences that lost history lines to fit.
    pub history_trimmed: usize,
    pub history_lines_removed: usize,
    /// Sequences still too long without history, cut from the start of the prompt (or, when
    /// the reply alone is too long, at the end of the reply).
    pub hard_truncated: usize,
}

/// Renders and tokenizes conversations for one model.
pub struct ChatEncoder<'a> {
    pub tokenizer: &'a ModelTokenizer,
    pub template: &'a ChatTemplate,
    pub max_len: usize,
}

impl ChatEncoder<'_> {
    /// Tokens of `prompt` + `reply` within `max_len`.
    pub fn encode(
        &self,
        prompt: &[ChatMessage],
        reply: &[ChatMessage],
        report: &mut TruncationReport,
    ) -> Result<TokenSequence, String> {
        report.sequences += 1;
        let history_lines = history_line_count(prompt);
        let sequence = self.encode_dropping(prompt, reply, 0)?;
        if sequence.tokens.len() <= self.max_len {
            return Ok(sequence);
        }
        // The fewest oldest history lines whose removal makes it fit (binary search: the
        // length only shrinks as lines go).
        let (mut low, mut high) = (1usize, history_lines);
        let mut best = None;
        while low <= high {
            let mid = (low + high) / 2;
            let candidate = self.encode_dropping(prompt, reply, mid)?;
            if candidate.tokens.len() <= self.max_len {
                best = Some((mid, candidate));
                high = mid - 1;
            } else {
                low = mid + 1;
            }
        }
        if let Some((dropped, sequence)) = best {
            report.history_trimmed += 1;
            report.history_lines_removed += dropped;
            return Ok(sequence);
        }
        let sequence = self.encode_dropping(prompt, reply, history_lines)?;
        if history_lines > 0 {
            report.history_trimmed += 1;
            report.history_lines_removed += history_lines;
        }
        report.hard_truncated += 1;
        Ok(hard_truncate(sequence, self.max_len))
    }

    fn encode_dropping(
        &self,
        prompt: &[ChatMessage],
        reply: &[ChatMessage],
        drop_history: usize,
    ) -> Result<TokenSequence, String> {
        let prompt = drop_oldest_history(prompt, drop_history);
        let prompt_text = self
            .template
            .render(&prompt, true, false)
            .map_err(|e| e.to_string())?;
        let mut conversation = prompt.clone();
        conversation.extend_from_slice(reply);
        let full_text = self
            .template
            .render(&conversation, false, false)
            .map_err(|e| e.to_string())?;
        let Some(reply_text) = full_text.strip_prefix(&prompt_text) else {
            return Err(
                "the chat template does not render the prompt as the start of the whole \
                 conversation, so the reply tokens cannot be told apart"
                    .to_string(),
            );
        };
        let mut tokens = self
            .tokenizer
            .encode(&prompt_text, false)
            .map_err(|e| e.to_string())?;
        let reply_start = tokens.len();
        tokens.extend(
            self.tokenizer
                .encode(reply_text, false)
                .map_err(|e| e.to_string())?,
        );
        if tokens.len() == reply_start {
            return Err("the reply renders to no tokens".to_string());
        }
        Ok(TokenSequence {
            tokens,
            reply_start,
        })
    }
}

fn is_history_line(line: &str) -> bool {
    line.starts_with("- ")
}

fn last_user_index(messages: &[ChatMessage]) -> Option<usize> {
    messages.iter().rposition(|m| m.role == "user")
}

fn history_line_count(messages: &[ChatMessage]) -> usize {
    last_user_index(messages)
        .map(|i| {
            messages[i]
                .content
                .lines()
                .filter(|l| is_history_line(l))
                .count()
        })
        .unwrap_or(0)
}

/// `messages` with the first `count` history lines of the last user message removed.
fn drop_oldest_history(messages: &[ChatMessage], count: usize) -> Vec<ChatMessage> {
    let mut out = messages.to_vec();
    if count == 0 {
        return out;
    }
    if let Some(i) = last_user_index(messages) {
        let mut remaining = count;
        let kept: Vec<&str> = messages[i]
            .content
            .split('\n')
            .filter(|line| {
                if remaining > 0 && is_history_line(line) {
                    remaining -= 1;
                    false
                } else {
                    true
                }
            })
            .collect();
        out[i].content = kept.join("\n");
    }
    out
}

fn hard_truncate(sequence: TokenSequence, max_len: usize) -> TokenSequence {
    let prompt = &sequence.tokens[..sequence.reply_start];
    let reply = &sequence.tokens[sequence.reply_start..];
    // Keep at least one prompt token: the first reply token is predicted from it.
    let reply_keep = reply.len().min(max_len.saturating_sub(1).max(1));
    let prompt_keep = max_len.saturating_sub(reply_keep).max(1).min(prompt.len());
    let mut tokens = prompt[prompt.len() - prompt_keep..].to_vec();
    tokens.extend_from_slice(&reply[..reply_keep]);
    TokenSequence {
        tokens,
        reply_start: prompt_keep,
    }
}

/// Messages from a JSON value: a list of `{role, content}` objects, or a bare string taken as
/// one message from `default_role`.
fn messages_from(value: &Value, default_role: &str) -> Result<Vec<ChatMessage>, String> {
    match value {
        Value::String(text) => Ok(vec![ChatMessage::new(default_role, text.clone())]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let role = item.get("role").and_then(Value::as_str);
                let content = item.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(role), Some(content)) => Ok(ChatMessage::new(role, content)),
                    _ => Err(format!(
                        "message {i} needs string fields \"role\" and \"content\""
                    )),
                }
            })
            .collect(),
        _ => Err("expected a list of messages or a string".to_string()),
    }
}

/// Non-empty lines of a JSONL file as JSON objects, with their 1-based line numbers.
fn json_lines(path: &Path) -> Result<Vec<(usize, Value)>, TrainError> {
    let mut lines = Lines::open(path, Encoding::Utf8)?;
    let mut out = Vec::new();
    while let Some(line) = lines.next_line() {
        let (line_no, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&text).map_err(|e| TrainError::BadExample {
            path: path.to_path_buf(),
            line: line_no as usize,
            field: "(line)".to_string(),
            message: format!("not JSON: {e}"),
        })?;
        out.push((line_no as usize, value));
    }
    if out.is_empty() {
        return Err(TrainError::file(path, "holds no examples"));
    }
    Ok(out)
}

fn bad(path: &Path, line: usize, field: &str, message: impl Into<String>) -> TrainError {
    TrainError::BadExample {
        path: path.to_path_buf(),
        line,
        field: field.to_string(),
        message: message.into(),
    }
}

/// Reads an SFT file (`{"messages": [...]}` per line; the last message is the assistant reply
/// that is trained).
pub fn read_sft(
    path: &Path,
    encoder: &ChatEncoder<'_>,
    report: &mut TruncationReport,
) -> Result<Vec<SftExample>, TrainError> {
    let mut examples = Vec::new();
    for (line, value) in json_lines(path)? {
        let messages = value
            .get("messages")
            .ok_or_else(|| bad(path, line, "messages", "missing"))
            .and_then(|v| messages_from(v, "user").map_err(|m| bad(path, line, "messages", m)))?;
        let Some((reply, prompt)) = messages.split_last() else {
            return Err(bad(path, line, "messages", "is empty"));
        };
        if reply.role != "assistant" {
            return Err(bad(
                path,
                line,
                "messages",
                format!(
                    "the last message must be from the assistant (the trained reply), it is \
                     from {:?}",
                    reply.role
                ),
            ));
        }
        let sequence = encoder
            .encode(prompt, std::slice::from_ref(reply), report)
            .map_err(|m| bad(path, line, "messages", m))?;
        examples.push(SftExample { line, sequence });
    }
    Ok(examples)
}

/// Reads a DPO file (`{"prompt", "chosen", "rejected"}` per line, each a list of messages or a
/// string; TRL's conversational and standard layouts).
pub fn read_dpo(
    path: &Path,
    encoder: &ChatEncoder<'_>,
    report: &mut TruncationReport,
) -> Result<Vec<DpoExample>, TrainError> {
    let mut examples = Vec::new();
    for (line, value) in json_lines(path)? {
        let field = |name: &str, role: &str| {
            value
                .get(name)
                .ok_or_else(|| bad(path, line, name, "missing"))
                .and_then(|v| messages_from(v, role).map_err(|m| bad(path, line, name, m)))
        };
        let prompt = field("prompt", "user")?;
        let chosen = field("chosen", "assistant")?;
        let rejected = field("rejected", "assistant")?;
        for (name, reply) in [("chosen", &chosen), ("rejected", &rejected)] {
            if reply.is_empty() || reply.iter().any(|m| m.role != "assistant") {
                return Err(bad(
                    path,
                    line,
                    name,
                    "must be assistant messages (or a string)",
                ));
            }
        }
        let encode = |reply: &[ChatMessage], name: &str, report: &mut TruncationReport| {
            encoder
                .encode(&prompt, reply, report)
                .map_err(|m| bad(path, line, name, m))
        };
        let chosen = encode(&chosen, "chosen", report)?;
        let rejected = encode(&rejected, "rejected", report)?;
        examples.push(DpoExample {
            line,
            chosen,
            rejected,
        });
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "- not history, the system prompt"),
            ChatMessage::new("user", content),
        ]
    }

    #[test]
    fn history_lines_go_oldest_first_and_only_from_the_user_message() {
        let prompt = user("Before:\n- one\n- two\n- three\n\nNow:\n[A] x");
        assert_eq!(history_line_count(&prompt), 3);
        let trimmed = drop_oldest_history(&prompt, 2);
        assert_eq!(trimmed[1].content, "Before:\n- three\n\nNow:\n[A] x");
        assert_eq!(trimmed[0], prompt[0]);
        let all = drop_oldest_history(&prompt, 5);
        assert_eq!(all[1].content, "Before:\n\nNow:\n[A] x");
    }

    #[test]
    fn hard_truncation_keeps_the_reply_and_the_latest_prompt_tokens() {
        let sequence = TokenSequence {
            tokens: (0..10).collect(),
            reply_start: 7,
        };
        let cut = hard_truncate(sequence.clone(), 5);
        assert_eq!(cut.tokens, vec![5, 6, 7, 8, 9]);
        assert_eq!(cut.reply_start, 2);
        let cut = hard_truncate(sequence, 3);
        assert_eq!(cut.tokens, vec![6, 7, 8]);
        assert_eq!(cut.reply_start, 1);
    }

    #[test]
    fn messages_accept_lists_and_strings() {
        let list: Value = serde_json::json!([{"role": "assistant", "content": "hi"}]);
        assert_eq!(
            messages_from(&list, "user").unwrap(),
            vec![ChatMessage::new("assistant", "hi")]
        );
        let text = Value::String("hello".into());
        assert_eq!(
            messages_from(&text, "assistant").unwrap(),
            vec![ChatMessage::new("assistant", "hello")]
        );
        assert!(messages_from(&serde_json::json!([{"role": "user"}]), "user").is_err());
        assert!(messages_from(&serde_json::json!(3), "user").is_err());
    }
}
