//! The GGUF-built tokenizer of SmolLM2-135M-Instruct against token ids recorded with llama.cpp
//! and HF transformers (tests/fixtures/smollm2_reference.json, produced as its README says).

use std::fs::File;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use mirrorsim_llm::default_model::default_model_path;
use mirrorsim_llm::tokenizer::ModelTokenizer;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn smollm2_tokenizer() -> ModelTokenizer {
    let path = default_model_path().unwrap();
    let content = Content::read(&mut File::open(&path).unwrap()).unwrap();
    ModelTokenizer::from_gguf(&content).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|id| u32::try_from(id.as_u64().unwrap()).unwrap())
        .collect()
}

#[test]
fn token_ids_equal_llama_cpp_and_transformers_for_every_reference_text() {
    let tokenizer = smollm2_tokenizer();
    let reference = fixture();
    let texts = reference["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 8);
    for entry in texts {
        let text = entry["text"].as_str().unwrap();
        let ours = tokenizer.encode(text, false).unwrap();
        assert_eq!(
            ours,
            ids(&entry["llama_cpp_ids"]),
            "llama.cpp ids differ for {text:?}"
        );
        assert_eq!(
            ours,
            ids(&entry["hf_ids"]),
            "transformers ids differ for {text:?}"
        );
    }
}

#[test]
fn decode_inverts_encode_for_every_reference_text() {
    let tokenizer = smollm2_tokenizer();
    for entry in fixture()["texts"].as_array().unwrap() {
        let text = entry["text"].as_str().unwrap();
        let ids = tokenizer.encode(text, false).unwrap();
        assert_eq!(tokenizer.decode(&ids).unwrap(), text);
    }
}

#[test]
fn special_tokens_and_vocabulary_facts_match_the_gguf_metadata() {
    let tokenizer = smollm2_tokenizer();
    assert_eq!(tokenizer.vocab_size(), 49152);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert!(!tokenizer.add_bos_token());
    // <|im_end|> is the metadata EOS; <|endoftext|> ends generation too, as in llama.cpp.
    assert_eq!(tokenizer.eos_token_ids(), &[2, 0]);
    assert_eq!(tokenizer.token_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.token_id("<|im_end|>"), Some(2));
    assert_eq!(tokenizer.token_text(2), "<|im_end|>");
    assert_eq!(tokenizer.encode("hello", true).unwrap()[0], 1);

    let paris = tokenizer.encode(" Paris", false).unwrap();
    assert_eq!(paris.len(), 1);
    assert_eq!(tokenizer.token_id(" Paris"), Some(paris[0]));
    assert_eq!(tokenizer.token_text(paris[0]), " Paris");
    for label in ["A", "B", "C", "L"] {
        let id = tokenizer.token_id(label).unwrap();
        assert_eq!(tokenizer.encode(label, false).unwrap(), vec![id]);
        assert_eq!(tokenizer.token_text(id), label);
    }
    assert_eq!(tokenizer.token_id("no such single token here"), None);
    assert!(tokenizer.decode(&[49152]).is_err());
}

#[test]
fn clones_share_one_tokenizer_across_threads() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<ModelTokenizer>();
    let tokenizer = smollm2_tokenizer();
    let expected = tokenizer.encode("shared across threads", false).unwrap();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let tokenizer = tokenizer.clone();
            std::thread::spawn(move || tokenizer.encode("shared across threads", false).unwrap())
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), expected);
    }
}
