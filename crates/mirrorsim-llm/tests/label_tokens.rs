//! Option labels are scored as the token that follows the prompt's actual end. A Qwen2-style
//! pre-tokenizer reads `[A` as one word (one optional non-letter before letters) but ` [A` as
//! ` [` then `A`; a tiny byte-level BPE with that regex and the merges `Ġ[` and `[A` checks
//! both cases on a random tiny model loaded as an HF directory.

use std::path::PathBuf;

use candle_core::Device;
use mirrorsim_llm::backend::{Backend, ChoiceRequest, LlmError, Prompt};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::model::{Llama, LlamaConfig};
use serde_json::json;

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others are
/// shifted past 255.
fn byte_level_char(byte: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).unwrap_or('?')
}

fn write_model_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrorsim-label-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut vocab = serde_json::Map::new();
    for byte in 0..=255u8 {
        vocab.insert(byte_level_char(byte).to_string(), json!(byte));
    }
    for (id, piece) in ["Ġ[", "[A", "[B"].iter().enumerate() {
        vocab.insert(piece.to_string(), json!(256 + id));
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": ["Ġ [", "[ A", "[ B"]}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
    let config = LlamaConfig {
        model_type: "qwen2".to_string(),
        vocab_size: 259,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        rope_scaling: None,
        bos_token_id: None,
        eos_token_id: None,
    };
    Llama::random(config, true, 7, &Device::Cpu)
        .unwrap()
        .save_hf_dir(&dir)
        .unwrap();
    dir
}

fn request(text: &str, continuations: &[&str]) -> ChoiceRequest {
    ChoiceRequest {
        prompt: Prompt::Text { text: text.into() },
        continuations: continuations.iter().map(|c| c.to_string()).collect(),
        labels: vec!["A".into(), "B".into()],
    }
}

#[test]
fn labels_are_the_tokens_after_the_prompts_end_even_where_bracket_and_letter_merge() {
    let dir = write_model_dir();
    let engine = LocalEngine::load(&dir, EngineOptions::default()).unwrap();
    let tokenizer = engine.tokenizer();
    // The tokenizer behaves as Qwen2's does at this boundary.
    assert_eq!(tokenizer.encode("[A", false).unwrap(), vec![257]);
    assert!(tokenizer
        .encode("Pick: [A", false)
        .unwrap()
        .ends_with(&[256, u32::from(b'A')]));
    let (a, b) = (u32::from(b'A'), u32::from(b'B'));
    assert_eq!(
        engine
            .label_token_ids("Pick: [", &["A".into(), "B".into()])
            .unwrap(),
        vec![a, b]
    );

    // Both continuations end in " [": each is scored on the ids of "A" and "B", shared prefix
    // or not, and agrees with a full forward's logits.
    let scene = request("Fruit? [A] car [B] apple\nPick: [", &["", "B]. Again: ["]);
    for share_prefix in [true, false] {
        let scores = engine
            .score_choices_with(std::slice::from_ref(&scene), share_prefix)
            .unwrap();
        for (continuation, distribution) in scene.continuations.iter().zip(&scores[0].distributions)
        {
            let tokens = tokenizer
                .encode(
                    &format!("Fruit? [A] car [B] apple\nPick: [{continuation}"),
                    false,
                )
                .unwrap();
            let logits = engine.logits(&tokens).unwrap();
            let last = logits.last().unwrap();
            let (la, lb) = (f64::from(last[a as usize]), f64::from(last[b as usize]));
            let p_b = 1.0 / (1.0 + (la - lb).exp());
            assert!(
                (distribution[1] - p_b).abs() < 1e-4,
                "{distribution:?} vs {p_b}"
            );
            assert!((distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }

    // Ending on a bare "[" after a line break, the label would merge with it: a clear error
    // naming the prompt's end, not a score on the wrong token.
    let merged = request("Fruit? [A] car [B] apple\nPick:\n[", &[""]);
    match engine.score_choices(std::slice::from_ref(&merged)) {
        Err(LlmError::BadRequest(message)) => {
            assert!(
                message.contains("label \"A\" is not one token after"),
                "{message}"
            );
            assert!(message.contains(r#""\n[""#), "{message}");
        }
        other => panic!("expected a bad request, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}
