//! SmolLM2's chat template (from the GGUF) against renderings recorded with HF transformers'
//! `apply_chat_template` (tests/fixtures/smollm2_reference.json, produced as its README says).

use std::fs::File;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use mirrorsim_llm::chat_template::ChatTemplate;
use mirrorsim_llm::default_model::default_model_path;
use mirrorsim_llm::tokenizer::ModelTokenizer;
use mirrorsim_llm::ChatMessage;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn smollm2() -> (ChatTemplate, ModelTokenizer) {
    let path = default_model_path().unwrap();
    let content = Content::read(&mut File::open(&path).unwrap()).unwrap();
    let template = ChatTemplate::from_gguf(&content)
        .unwrap()
        .expect("SmolLM2 ships a template");
    (template, ModelTokenizer::from_gguf(&content).unwrap())
}

fn messages(value: &Value) -> Vec<ChatMessage> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            ChatMessage::new(
                message["role"].as_str().unwrap(),
                message["content"].as_str().unwrap(),
            )
        })
        .collect()
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
fn every_reference_conversation_renders_the_same_text_and_token_ids() {
    let (template, tokenizer) = smollm2();
    let reference = fixture();
    let conversations = reference["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 4);
    for conversation in conversations {
        let name = conversation["name"].as_str().unwrap();
        let rendered = template
            .render(
                &messages(&conversation["messages"]),
                conversation["add_generation_prompt"].as_bool().unwrap(),
                conversation["continue_final"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(
            rendered,
            conversation["rendered"].as_str().unwrap(),
            "{name}"
        );
        let ours = tokenizer.encode(&rendered, false).unwrap();
        assert_eq!(
            ours,
            ids(&conversation["llama_cpp_ids"]),
            "{name}: llama.cpp ids"
        );
        assert_eq!(
            ours,
            ids(&conversation["hf_ids"]),
            "{name}: transformers ids"
        );
    }
}

#[test]
fn default_system_prompt_appears_only_without_a_system_message() {
    let (template, _) = smollm2();
    let default_system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    let user_only = template
        .render(&[ChatMessage::new("user", "Hi")], true, false)
        .unwrap();
    assert_eq!(
        user_only,
        format!("{default_system}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    );
    let with_system = template
        .render(
            &[
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi"),
            ],
            false,
            false,
        )
        .unwrap();
    assert_eq!(
        with_system,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn continue_final_stops_right_after_the_assistant_content() {
    let (template, _) = smollm2();
    let conversation = [
        ChatMessage::new("user", "Pick one."),
        ChatMessage::new("assistant", "Behavior: ["),
    ];
    let continued = template.render(&conversation, false, true).unwrap();
    assert!(
        continued.ends_with("<|im_start|>assistant\nBehavior: ["),
        "{continued:?}"
    );
    // The generation prompt flag cannot add a second assistant turn when continuing.
    assert_eq!(
        template.render(&conversation, true, true).unwrap(),
        continued
    );

    // Trailing whitespace of the continued message is kept exactly.
    let spaced = [
        ChatMessage::new("user", "Go."),
        ChatMessage::new("assistant", "Thought: "),
    ];
    assert!(template
        .render(&spaced, false, true)
        .unwrap()
        .ends_with("assistant\nThought: "));

    // An empty assistant message continues from the opening of its turn.
    let empty = [
        ChatMessage::new("user", "Go."),
        ChatMessage::new("assistant", ""),
    ];
    assert!(template
        .render(&empty, false, true)
        .unwrap()
        .ends_with("<|im_start|>assistant\n"));
}

#[test]
fn continue_final_refuses_a_conversation_not_ending_with_the_assistant() {
    let (template, _) = smollm2();
    let error = template
        .render(&[ChatMessage::new("user", "Hi")], false, true)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("assistant") && error.contains("\"user\""),
        "{error}"
    );
    assert!(template.render(&[], false, true).is_err());
}

#[test]
fn template_from_tokenizer_config_reads_string_and_named_list_forms() {
    let folder = std::env::temp_dir().join(format!("mirrorsim-template-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let config = folder.join("tokenizer_config.json");
    std::fs::write(
        &config,
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
            "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"}"#,
    )
    .unwrap();
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    assert_eq!(
        template
            .render(&[ChatMessage::new("user", "x")], false, false)
            .unwrap(),
        "<s>[user]x</s>"
    );

    std::fs::write(
        &config,
        r#"{"chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain {{ messages|length }}"}]}"#,
    )
    .unwrap();
    let template = ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .unwrap();
    assert_eq!(
        template
            .render(&[ChatMessage::new("user", "x")], false, false)
            .unwrap(),
        "plain 1"
    );

    std::fs::write(&config, r#"{"eos_token": "</s>"}"#).unwrap();
    assert!(ChatTemplate::from_tokenizer_config(&config)
        .unwrap()
        .is_none());
    std::fs::remove_dir_all(&folder).unwrap();
}
