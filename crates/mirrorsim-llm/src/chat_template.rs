//! The model's own chat template (GGUF `tokenizer.chat_template` or `tokenizer_config.json`),
//! rendered with minijinja the way HF transformers renders it with Jinja2: `trim_blocks`,
//! `lstrip_blocks`, Python string methods (pycompat), `raise_exception` and `strftime_now`.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde_json::Value as Json;

use crate::backend::{ChatMessage, LlmError};

const TEMPLATE_NAME: &str = "chat_template";
/// Appended to the final assistant message when continuing it, to find where its content ends
/// in the rendered text (templates may transform content, e.g. trim it).
const CONTINUE_MARKER: &str = "\u{1}mirrorsim-continue-final\u{1}";

/// A compiled chat template. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    environment: Arc<Environment<'static>>,
}

fn template_error(context: &str, error: impl std::fmt::Display) -> LlmError {
    LlmError::Template(format!("{context}: {error}"))
}

fn raise_exception(message: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Python's `datetime.now().strftime(format)` (UTC) for the directives chat templates use.
fn strftime_now(format: String) -> Result<String, JinjaError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let second_of_day = seconds.rem_euclid(86_400);
    let month_name = MONTH_NAMES[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('H') => out.push_str(&format!("{:02}", second_of_day / 3600)),
            Some('M') => out.push_str(&format!("{:02}", second_of_day / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", second_of_day % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: directive %{} is not supported",
                        other.unwrap_or(' ')
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn token_text_from_config(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::String(text) => Some(text.clone()),
        Json::Object(map) => map
            .get("content")
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    }
}

fn gguf_token_text(content: &Content, id_key: &str) -> Option<String> {
    let id = match content.metadata.get(id_key)? {
        GgufValue::U32(id) => *id as usize,
        GgufValue::I32(id) => usize::try_from(*id).ok()?,
        GgufValue::U64(id) => usize::try_from(*id).ok()?,
        _ => return None,
    };
    match content.metadata.get("tokenizer.ggml.tokens")? {
        GgufValue::Array(tokens) => match tokens.get(id)? {
            GgufValue::String(text) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl ChatTemplate {
    /// Compiles `source`. Fails on a syntax error.
    pub fn new(
        source: String,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, LlmError> {
        let mut environment = Environment::new();
        minijinja_contrib::add_to_environment(&mut environment);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment.add_function("raise_exception", raise_exception);
        environment.add_function("strftime_now", strftime_now);
        environment
            .add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|error| template_error("compiling the chat template", error))?;
        Ok(ChatTemplate {
            source,
            bos_token,
            eos_token,
            environment: Arc::new(environment),
        })
    }

    /// The template in GGUF metadata `tokenizer.chat_template`, if the file has one.
    pub fn from_gguf(content: &Content) -> Result<Option<Self>, LlmError> {
        let source = match content.metadata.get("tokenizer.chat_template") {
            None => return Ok(None),
            Some(GgufValue::String(source)) => source.clone(),
            Some(other) => {
                return Err(LlmError::Template(format!(
                    "GGUF metadata tokenizer.chat_template: expected a string, found {:?}",
                    other.value_type()
                )))
            }
        };
        let bos = gguf_token_text(content, "tokenizer.ggml.bos_token_id");
        let eos = gguf_token_text(content, "tokenizer.ggml.eos_token_id");
        Self::new(source, bos, eos).map(Some)
    }

    /// The template in an HF `tokenizer_config.json` (`chat_template` as a string, or the
    /// entry named "default" of a list), or in a `chat_template.jinja` beside it.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>, LlmError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| template_error(&shown, error))?;
        let config: Json =
            serde_json::from_slice(&bytes).map_err(|error| template_error(&shown, error))?;
        let source =
            match config.get("chat_template") {
                Some(Json::String(source)) => Some(source.clone()),
                Some(Json::Array(entries)) => {
                    let default = entries
                        .iter()
                        .find(|entry| entry.get("name").and_then(Json::as_str) == Some("default"));
                    match default
                        .and_then(|entry| entry.get("template"))
                        .and_then(Json::as_str)
                    {
                        Some(source) => Some(source.to_string()),
                        None => {
                            return Err(LlmError::Template(format!(
                                "{shown}: field chat_template is a list without an entry named \
                             \"default\""
                            )))
                        }
                    }
                }
                Some(_) => {
                    return Err(LlmError::Template(format!(
                        "{shown}: field chat_template is neither a string nor a list"
                    )))
                }
                None => {
                    let beside = path.with_file_name("chat_template.jinja");
                    if beside.exists() {
                        Some(std::fs::read_to_string(&beside).map_err(|error| {
                            template_error(&beside.display().to_string(), error)
                        })?)
                    } else {
                        None
                    }
                }
            };
        let Some(source) = source else {
            return Ok(None);
        };
        let bos = token_text_from_config(config.get("bos_token"));
        let eos = token_text_from_config(config.get("eos_token"));
        Self::new(source, bos, eos).map(Some)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`. With `add_generation_prompt`, the opening of a new assistant turn
    /// follows. With `continue_final`, the last message must be from the assistant and the
    /// output stops right after its content (no end-of-turn), like HF's
    /// `continue_final_message`; `add_generation_prompt` is then ignored.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        continue_final: bool,
    ) -> Result<String, LlmError> {
        if !continue_final {
            return self.render_raw(messages, add_generation_prompt);
        }
        let Some(last) = messages.last() else {
            return Err(LlmError::Template(
                "continue_final needs at least one message".to_string(),
            ));
        };
        if last.role != "assistant" {
            return Err(LlmError::Template(format!(
                "continue_final needs the last message to be from the assistant, but it is from \
                 \"{}\"",
                last.role
            )));
        }
        let mut marked = messages.to_vec();
        if let Some(final_message) = marked.last_mut() {
            final_message.content.push_str(CONTINUE_MARKER);
        }
        let rendered = self.render_raw(&marked, false)?;
        if let Some(position) = rendered.rfind(CONTINUE_MARKER) {
            return Ok(rendered[..position].to_string());
        }
        // The template rewrote the content so the marker did not survive; fall back to HF's
        // rule: cut after the last occurrence of the stripped content.
        let rendered = self.render_raw(messages, false)?;
        let stripped = last.content.trim();
        match rendered.rfind(stripped) {
            Some(position) if !stripped.is_empty() => {
                Ok(rendered[..position + stripped.len()].to_string())
            }
            _ => Err(LlmError::Template(
                "continue_final: the final assistant message does not appear in the rendered \
                 chat"
                    .to_string(),
            )),
        }
    }

    fn render_raw(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, LlmError> {
        let template = self
            .environment
            .get_template(TEMPLATE_NAME)
            .map_err(|error| template_error("chat template", error))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone().unwrap_or_default(),
                eos_token => self.eos_token.clone().unwrap_or_default(),
            })
            .map_err(|error| template_error("rendering the chat template", error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }

    #[test]
    fn raise_exception_surfaces_the_message() {
        let template = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
                .to_string(),
            None,
            None,
        )
        .unwrap();
        let error = template
            .render(&[ChatMessage::new("assistant", "hi")], false, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("first must be user"), "{error}");
    }

    #[test]
    fn python_string_methods_work() {
        let template = ChatTemplate::new(
            "{{ messages[0].content.strip().upper() }}|{{ messages[0].content.startswith(' a') }}"
                .to_string(),
            None,
            None,
        )
        .unwrap();
        let rendered = template
            .render(&[ChatMessage::new("user", " abc ")], false, false)
            .unwrap();
        assert_eq!(rendered, "ABC|True");
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let text = strftime_now("%d %b %Y".to_string()).unwrap();
        assert_eq!(text.len(), 11, "{text}");
        assert!(strftime_now("%Q".to_string()).is_err());
    }
}
