//! The HTTP backend against `serve-llm`'s server over the real SmolLM2-135M-Instruct engine, on a
//! loopback port: the same choice distributions and the same greedy text as the engine in-process.

use std::sync::Arc;

use mirrorsim_llm::default_model::default_model_path;
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::http::{HttpBackend, HttpConfig};
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, FinishReason, GenerateRequest, Prompt, SamplingParams,
};
use mirrorsim_serve::{serve_with, ServerOptions};

const SERVED_NAME: &str = "smollm2-135m-instruct";

fn scene_prompt() -> Prompt {
    Prompt::Chat {
        messages: vec![
            ChatMessage::new(
                "system",
                "You are a movie fan choosing what to watch next. Think briefly, then answer \
                 with the letter of one option.",
            ),
            ChatMessage::new(
                "user",
                "You recently loved Alien (1979) and The Terminator (1984).\nOptions:\n\
                 [A] Toy Story (1995)\n[B] Aliens (1986)\n[C] Sense and Sensibility (1995)\n\
                 [D] Heat (1995)\nWhich do you watch?",
            ),
            ChatMessage::new("assistant", "Thought: "),
        ],
        continue_final: true,
    }
}

#[test]
fn http_backend_over_serve_llm_matches_the_local_engine() {
    let model_path = default_model_path().expect("the default model (scripts/fetch-model.sh)");
    let engine = Arc::new(LocalEngine::load(&model_path, EngineOptions::default()).unwrap());
    let server = serve_with(
        "127.0.0.1:0".parse().unwrap(),
        Arc::clone(&engine) as Arc<dyn Backend>,
        ServerOptions::new(SERVED_NAME),
    )
    .unwrap();
    assert!(server.local_addr().ip().is_loopback());
    let http = HttpBackend::new(HttpConfig {
        api_key_env: String::new(),
        max_concurrency: 4,
        max_retries: 0,
        request_timeout_secs: 300.0,
        ..HttpConfig::new(server.base_url(), SERVED_NAME)
    })
    .unwrap();

    let labels: Vec<String> = ["A", "B", "C", "D"].map(String::from).to_vec();
    let choices = vec![ChoiceRequest {
        prompt: scene_prompt(),
        continuations: vec![
            "I loved the sci-fi horror of Alien, and its sequel continues the story.\n\
             Behavior: ["
                .to_string(),
            "I want something light and funny for the family tonight.\nBehavior: [".to_string(),
            "A tense crime thriller with great actors sounds right.\nBehavior: [".to_string(),
        ],
        labels: labels.clone(),
    }];
    let local = engine.score_choices(&choices).unwrap();
    let remote = http.score_choices(&choices).unwrap();
    assert_eq!(remote[0].distributions.len(), 3);
    let largest_gap = remote[0]
        .distributions
        .iter()
        .flatten()
        .zip(local[0].distributions.iter().flatten())
        .map(|(r, l)| (r - l).abs())
        .fold(0.0, f64::max);
    eprintln!("largest |HTTP - local| choice probability gap: {largest_gap:.3e}");
    for (continuation, (remote, local)) in remote[0]
        .distributions
        .iter()
        .zip(&local[0].distributions)
        .enumerate()
    {
        assert_eq!(remote.len(), labels.len(), "continuation {continuation}");
        for (label, (r, l)) in labels.iter().zip(remote.iter().zip(local)) {
            assert!(
                (r - l).abs() < 1e-3,
                "continuation {continuation}, label {label}: HTTP {r} vs local {l}\n\
                 HTTP {remote:?}\nlocal {local:?}"
            );
        }
        assert!((remote.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
    assert!(
        remote[0].missing_labels.iter().all(Vec::is_empty),
        "labels missing from the top 20: {:?}",
        remote[0].missing_labels
    );

    let greedy = vec![GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", "What is the capital of France?")],
            continue_final: false,
        },
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: 24,
            logprobs: Some(3),
            ..SamplingParams::default()
        },
    }];
    let local = engine.generate(&greedy).unwrap().remove(0).remove(0);
    let remote = http.generate(&greedy).unwrap().remove(0).remove(0);
    assert_eq!(remote.text, local.text);
    assert!(remote.text.contains("Paris"), "{}", remote.text);
    assert_eq!(remote.prompt_tokens, local.prompt_tokens);
    assert_eq!(remote.completion_tokens, local.completion_tokens);
    assert_eq!(remote.finish_reason, local.finish_reason);
    let (remote_logprobs, local_logprobs) = (remote.logprobs.unwrap(), local.logprobs.unwrap());
    let remote_ids: Vec<u32> = remote_logprobs.iter().map(|t| t.token_id).collect();
    let local_ids: Vec<u32> = local_logprobs.iter().map(|t| t.token_id).collect();
    assert_eq!(remote_ids, local_ids);
    for (r, l) in remote_logprobs.iter().zip(&local_logprobs) {
        assert!((r.logprob - l.logprob).abs() < 1e-9);
        assert_eq!(r.top.len(), 3);
    }
    assert!(matches!(
        remote.finish_reason,
        FinishReason::Stop | FinishReason::Length
    ));
    server.shutdown().unwrap();
}
