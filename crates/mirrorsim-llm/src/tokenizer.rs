//! The model's own tokenizer, built from GGUF `tokenizer.ggml.*` metadata or read from an HF
//! `tokenizer.json`, on the `tokenizers` crate.
//!
//! GGUF files carry the vocabulary and merges but not the pre-tokenizer; `tokenizer.ggml.pre`
//! names it, and [`pre_tokenizer_for`] maps the names llama.cpp uses to the same splitting rules
//! the model's original `tokenizer.json` had.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Value as Json};

use crate::backend::LlmError;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Texts of tokens that end a turn in common chat formats. llama.cpp treats control tokens with
/// these texts as end-of-generation even when the metadata names only one EOS id.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
];

/// Qwen2's pre-tokenizer regex (single digits, case-insensitive contractions).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex (digits in groups of up to three).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a piece of text is spelled in the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceSpelling {
    /// GPT-2 byte-level: every byte maps to a printable character (space is `Ġ`).
    ByteLevel,
    /// SentencePiece: space is `▁`.
    Metaspace,
    /// Vocabulary entries are the text itself.
    Plain,
}

#[derive(Debug)]
struct Inner {
    tokenizer: tokenizers::Tokenizer,
    spelling: PieceSpelling,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    add_bos_token: bool,
    vocab_size: usize,
}

/// A model's tokenizer. Cheap to clone (shared), `Send + Sync`.
#[derive(Debug, Clone)]
pub struct ModelTokenizer {
    inner: Arc<Inner>,
}

fn gguf_key<'a>(content: &'a Content, key: &str) -> Option<&'a Value> {
    content.metadata.get(key)
}

fn gguf_integer(value: &Value, key: &str) -> Result<i64, LlmError> {
    let number = match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).map_err(|_| {
            LlmError::Tokenizer(format!("GGUF metadata {key}: {v} does not fit in i64"))
        })?,
        Value::I64(v) => *v,
        other => {
            return Err(LlmError::Tokenizer(format!(
                "GGUF metadata {key}: expected an integer, found {:?}",
                other.value_type()
            )))
        }
    };
    Ok(number)
}

fn gguf_token_id(content: &Content, key: &str) -> Result<Option<u32>, LlmError> {
    match gguf_key(content, key) {
        None => Ok(None),
        Some(value) => {
            let id = gguf_integer(value, key)?;
            u32::try_from(id).map(Some).map_err(|_| {
                LlmError::Tokenizer(format!("GGUF metadata {key}: {id} is not a token id"))
            })
        }
    }
}

fn gguf_string<'a>(content: &'a Content, key: &str) -> Result<Option<&'a str>, LlmError> {
    match gguf_key(content, key) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.as_str())),
        Some(other) => Err(LlmError::Tokenizer(format!(
            "GGUF metadata {key}: expected a string, found {:?}",
            other.value_type()
        ))),
    }
}

fn gguf_bool(content: &Content, key: &str) -> Result<Option<bool>, LlmError> {
    match gguf_key(content, key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(other) => Err(LlmError::Tokenizer(format!(
            "GGUF metadata {key}: expected a bool, found {:?}",
            other.value_type()
        ))),
    }
}

fn gguf_string_array(content: &Content, key: &str) -> Result<Vec<String>, LlmError> {
    let values = match gguf_key(content, key) {
        Some(Value::Array(values)) => values,
        Some(other) => {
            return Err(LlmError::Tokenizer(format!(
                "GGUF metadata {key}: expected an array, found {:?}",
                other.value_type()
            )))
        }
        None => {
            return Err(LlmError::Tokenizer(format!(
                "GGUF metadata {key} is missing"
            )))
        }
    };
    values
        .iter()
        .enumerate()
        .map(|(index, value)| match value {
            Value::String(text) => Ok(text.clone()),
            other => Err(LlmError::Tokenizer(format!(
                "GGUF metadata {key}[{index}]: expected a string, found {:?}",
                other.value_type()
            ))),
        })
        .collect()
}

fn gguf_integer_array(content: &Content, key: &str) -> Result<Option<Vec<i64>>, LlmError> {
    match gguf_key(content, key) {
        None => Ok(None),
        Some(Value::Array(values)) => values
            .iter()
            .enumerate()
            .map(|(index, value)| gguf_integer(value, &format!("{key}[{index}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(LlmError::Tokenizer(format!(
            "GGUF metadata {key}: expected an array, found {:?}",
            other.value_type()
        ))),
    }
}

/// GPT-2's byte → printable character table (the inverse spelling of byte-level tokens).
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_unprintable = 256u32;
    for byte in 0..=255u8 {
        let printable = matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(byte)] = if printable {
            char::from(byte)
        } else {
            let mapped = char::from_u32(next_unprintable).unwrap_or('\u{FFFD}');
            next_unprintable += 1;
            mapped
        };
    }
    table
}

/// Turns a byte-level vocabulary entry back into its text, or `None` if it is not byte-level
/// spelled or its bytes are not complete UTF-8.
fn byte_level_to_text(piece: &str) -> Option<String> {
    let table = byte_to_char_table();
    let char_to_byte: HashMap<char, u8> = table
        .iter()
        .enumerate()
        .filter_map(|(byte, &ch)| u8::try_from(byte).ok().map(|byte| (ch, byte)))
        .collect();
    let bytes = piece
        .chars()
        .map(|ch| char_to_byte.get(&ch).copied())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn text_to_byte_level(text: &str) -> String {
    let table = byte_to_char_table();
    text.bytes().map(|byte| table[usize::from(byte)]).collect()
}

/// The `tokenizer.json` pre-tokenizer for a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer_for(pre: &str) -> Result<Json, LlmError> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split_then_bytes = |pattern: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    let pre_tokenizer = match pre {
        "default" | "gpt-2" | "gpt2" | "olmo" | "jais" | "phi-2" | "starcoder" => byte_level(true),
        "smollm" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" => {
            split_then_bytes(LLAMA3_SPLIT)
        }
        other => {
            return Err(LlmError::Tokenizer(format!(
                "GGUF tokenizer.ggml.pre = \"{other}\" is not supported yet (supported: default, \
                 gpt-2, smollm, qwen2, llama3/llama-bpe); load the model's HF directory with \
                 tokenizer.json instead"
            )))
        }
    };
    Ok(pre_tokenizer)
}

fn tokenizer_error(context: &str, error: impl std::fmt::Display) -> LlmError {
    LlmError::Tokenizer(format!("{context}: {error}"))
}

impl ModelTokenizer {
    /// Builds the tokenizer from GGUF `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &Content) -> Result<Self, LlmError> {
        let model_type = gguf_string(content, "tokenizer.ggml.model")?.ok_or_else(|| {
            LlmError::Tokenizer("GGUF metadata tokenizer.ggml.model is missing".to_string())
        })?;
        match model_type {
            "gpt2" => Self::from_gguf_byte_level(content),
            other => Err(LlmError::Tokenizer(format!(
                "GGUF tokenizer.ggml.model = \"{other}\" is not supported yet (only \"gpt2\" \
                 byte-level BPE, as in SmolLM2, Qwen2 and Llama 3); load the model's HF directory \
                 with tokenizer.json instead"
            ))),
        }
    }

    fn from_gguf_byte_level(content: &Content) -> Result<Self, LlmError> {
        let tokens = gguf_string_array(content, "tokenizer.ggml.tokens")?;
        let merges = gguf_string_array(content, "tokenizer.ggml.merges")?;
        let token_types = gguf_integer_array(content, "tokenizer.ggml.token_type")?;
        if let Some(types) = &token_types {
            if types.len() != tokens.len() {
                return Err(LlmError::Tokenizer(format!(
                    "GGUF metadata tokenizer.ggml.token_type has {} entries but \
                     tokenizer.ggml.tokens has {}",
                    types.len(),
                    tokens.len()
                )));
            }
        }
        let pre = gguf_string(content, "tokenizer.ggml.pre")?.unwrap_or("default");
        let pre_tokenizer = pre_tokenizer_for(pre)?;

        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        for (id, token) in tokens.iter().enumerate() {
            // A duplicated entry keeps its first id, as llama.cpp's token → id map does.
            vocab.entry(token.clone()).or_insert_with(|| json!(id));
        }
        let merge_pairs = merges
            .iter()
            .enumerate()
            .map(|(index, merge)| match merge.split_once(' ') {
                Some((left, right)) if !right.contains(' ') => Ok(json!([left, right])),
                _ => Err(LlmError::Tokenizer(format!(
                    "GGUF metadata tokenizer.ggml.merges[{index}] = {merge:?} is not two \
                     space-separated pieces"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut added_tokens = Vec::new();
        let mut special_texts = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            let token_type = token_types.as_ref().map_or(1, |types| types[id]);
            if token_type != TOKEN_TYPE_CONTROL && token_type != TOKEN_TYPE_USER_DEFINED {
                continue;
            }
            // Added tokens match raw text; user-defined entries may be stored byte-level spelled.
            let text = if token_type == TOKEN_TYPE_USER_DEFINED {
                byte_level_to_text(token).unwrap_or_else(|| token.clone())
            } else {
                token.clone()
            };
            let special = token_type == TOKEN_TYPE_CONTROL;
            if special {
                special_texts.push((id, text.clone()));
            }
            added_tokens.push(json!({
                "id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            }));
        }

        let tokenizer_json = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merge_pairs,
            },
        });
        let tokenizer = tokenizers::Tokenizer::from_bytes(tokenizer_json.to_string().as_bytes())
            .map_err(|error| tokenizer_error("building the tokenizer from GGUF metadata", error))?;

        let vocab_size = tokens.len();
        let check_id = |key: &str, id: Option<u32>| -> Result<Option<u32>, LlmError> {
            match id {
                Some(id) if id as usize >= vocab_size => Err(LlmError::Tokenizer(format!(
                    "GGUF metadata {key} = {id} is outside the vocabulary of {vocab_size} tokens"
                ))),
                other => Ok(other),
            }
        };
        let bos_token_id = check_id(
            "tokenizer.ggml.bos_token_id",
            gguf_token_id(content, "tokenizer.ggml.bos_token_id")?,
        )?;
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = check_id(key, gguf_token_id(content, key)?)? {
                push_unique(&mut eos_token_ids, id);
            }
        }
        for (id, text) in &special_texts {
            if END_OF_TURN_TEXTS.contains(&text.as_str()) {
                push_unique(&mut eos_token_ids, *id as u32);
            }
        }
        let add_bos_token = gguf_bool(content, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);

        Ok(ModelTokenizer {
            inner: Arc::new(Inner {
                tokenizer,
                spelling: PieceSpelling::ByteLevel,
                eos_token_ids,
                bos_token_id,
                add_bos_token,
                vocab_size,
            }),
        })
    }

    /// Reads an HF `tokenizer.json`. BOS/EOS come from `tokenizer_config.json`,
    /// `generation_config.json` and `config.json` beside it, where present.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self, LlmError> {
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|error| tokenizer_error(&tokenizer_json.display().to_string(), error))?;
        let raw: Json = std::fs::read(tokenizer_json)
            .map_err(|error| tokenizer_error(&tokenizer_json.display().to_string(), error))
            .and_then(|bytes| {
                serde_json::from_slice(&bytes)
                    .map_err(|error| tokenizer_error(&tokenizer_json.display().to_string(), error))
            })?;
        let spelling = match raw.pointer("/decoder/type").and_then(Json::as_str) {
            Some("ByteLevel") => PieceSpelling::ByteLevel,
            Some("Metaspace") => PieceSpelling::Metaspace,
            Some("Sequence") => {
                let uses_metaspace = raw
                    .pointer("/decoder/decoders")
                    .and_then(Json::as_array)
                    .is_some_and(|decoders| {
                        decoders.iter().any(|decoder| {
                            decoder.get("type").and_then(Json::as_str) == Some("Metaspace")
                                || decoder.pointer("/pattern/String").and_then(Json::as_str)
                                    == Some("\u{2581}")
                        })
                    });
                if uses_metaspace {
                    PieceSpelling::Metaspace
                } else {
                    PieceSpelling::Plain
                }
            }
            _ => PieceSpelling::Plain,
        };

        let folder = tokenizer_json.parent().unwrap_or_else(|| Path::new("."));
        let read_json = |name: &str| -> Result<Option<Json>, LlmError> {
            let path = folder.join(name);
            if !path.exists() {
                return Ok(None);
            }
            let bytes = std::fs::read(&path)
                .map_err(|error| tokenizer_error(&path.display().to_string(), error))?;
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| tokenizer_error(&path.display().to_string(), error))
        };
        let tokenizer_config = read_json("tokenizer_config.json")?;
        let generation_config = read_json("generation_config.json")?;
        let model_config = read_json("config.json")?;

        let token_text_of = |value: &Json| -> Option<String> {
            match value {
                Json::String(text) => Some(text.clone()),
                Json::Object(map) => map
                    .get("content")
                    .and_then(Json::as_str)
                    .map(str::to_string),
                _ => None,
            }
        };
        let ids_of = |value: Option<&Json>| -> Vec<u32> {
            match value {
                Some(Json::Number(number)) => number
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .into_iter()
                    .collect(),
                Some(Json::Array(items)) => items
                    .iter()
                    .filter_map(|item| item.as_u64().and_then(|id| u32::try_from(id).ok()))
                    .collect(),
                _ => Vec::new(),
            }
        };

        let mut eos_token_ids = Vec::new();
        let mut bos_token_id = None;
        if let Some(config) = &tokenizer_config {
            if let Some(id) = config
                .get("eos_token")
                .and_then(token_text_of)
                .and_then(|text| tokenizer.token_to_id(&text))
            {
                push_unique(&mut eos_token_ids, id);
            }
            bos_token_id = config
                .get("bos_token")
                .and_then(token_text_of)
                .and_then(|text| tokenizer.token_to_id(&text));
        }
        for config in [&generation_config, &model_config].into_iter().flatten() {
            for id in ids_of(config.get("eos_token_id")) {
                push_unique(&mut eos_token_ids, id);
            }
            if bos_token_id.is_none() {
                bos_token_id = ids_of(config.get("bos_token_id")).first().copied();
            }
        }
        for added in tokenizer.get_added_tokens_decoder().values() {
            if added.special && END_OF_TURN_TEXTS.contains(&added.content.as_str()) {
                if let Some(id) = tokenizer.token_to_id(&added.content) {
                    push_unique(&mut eos_token_ids, id);
                }
            }
        }
        let add_bos_token = match tokenizer_config
            .as_ref()
            .and_then(|config| config.get("add_bos_token"))
            .and_then(Json::as_bool)
        {
            Some(flag) => flag,
            None => match bos_token_id {
                // The post-processor decides when the config does not say.
                Some(bos) => tokenizer
                    .encode("", true)
                    .map(|encoding| encoding.get_ids().first() == Some(&bos))
                    .unwrap_or(false),
                None => false,
            },
        };
        let vocab_size = tokenizer.get_vocab_size(true);
        Ok(ModelTokenizer {
            inner: Arc::new(Inner {
                tokenizer,
                spelling,
                eos_token_ids,
                bos_token_id,
                add_bos_token,
                vocab_size,
            }),
        })
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) become
    /// their single ids. With `add_bos`, the BOS id (if the model has one) comes first.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, LlmError> {
        let encoding = self
            .inner
            .tokenizer
            .encode_fast(text, false)
            .map_err(|error| tokenizer_error("encode", error))?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if add_bos {
            if let Some(bos) = self.inner.bos_token_id {
                out.push(bos);
            }
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// The text of `ids`, special tokens included. Bytes of an incomplete UTF-8 sequence at the
    /// end (or anywhere) come out as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.inner.vocab_size) {
            return Err(LlmError::Tokenizer(format!(
                "decode: token id {bad} is outside the vocabulary of {} tokens",
                self.inner.vocab_size
            )));
        }
        self.inner
            .tokenizer
            .decode(ids, false)
            .map_err(|error| tokenizer_error("decode", error))
    }

    /// The text one token stands for (lossy where it holds part of a UTF-8 character); empty
    /// for an id outside the vocabulary.
    pub fn token_text(&self, id: u32) -> String {
        if id as usize >= self.inner.vocab_size {
            return String::new();
        }
        self.inner
            .tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
    }

    /// The id of the single token whose text is exactly `text` (e.g. `"A"`, `" A"`,
    /// `"<|im_end|>"`), if there is one.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        let tokenizer = &self.inner.tokenizer;
        if let Some(id) = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .find(|(_, added)| added.content == text)
            .map(|(id, _)| *id)
        {
            return Some(id);
        }
        let piece = match self.inner.spelling {
            PieceSpelling::ByteLevel => text_to_byte_level(text),
            PieceSpelling::Metaspace => text.replace(' ', "\u{2581}"),
            PieceSpelling::Plain => text.to_string(),
        };
        tokenizer.token_to_id(&piece)
    }

    /// Ids that end generation: the model's EOS and end-of-turn tokens.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_token_ids
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_token_id
    }

    /// Whether the model expects BOS before a prompt (GGUF `tokenizer.ggml.add_bos_token`, HF
    /// `add_bos_token` or the post-processor).
    pub fn add_bos_token(&self) -> bool {
        self.inner.add_bos_token
    }

    /// Number of token ids (the size of the model's output layer for GGUF files).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }
}

fn push_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_spelling_round_trips_every_byte_sequence_that_is_utf8() {
        let text = "héllo wörld\n\t🙂 ";
        let spelled = text_to_byte_level(text);
        assert!(spelled.starts_with('h'));
        assert!(
            !spelled.contains(' '),
            "space must be spelled as a printable character"
        );
        assert_eq!(byte_level_to_text(&spelled).as_deref(), Some(text));
        assert_eq!(text_to_byte_level(" "), "\u{120}");
    }

    #[test]
    fn unknown_pre_tokenizer_name_is_a_clear_error() {
        let error = pre_tokenizer_for("made-up").unwrap_err().to_string();
        assert!(error.contains("made-up"), "{error}");
    }
}
