//! The local engine on the real SmolLM2-135M-Instruct (found or fetched by
//! `default_model::default_model_path`). With `MIRRORSIM_CUDA=N` (and `--features cuda`) the same
//! checks run on CUDA device N.

use std::sync::OnceLock;

use mirrorsim_llm::engine::{EngineOptions, LocalEngine, MatmulPrecision};
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, ContinuationRequest, FinishReason, GenerateRequest,
    Prompt, SamplingParams,
};

fn engine() -> &'static LocalEngine {
    static ENGINE: OnceLock<LocalEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = mirrorsim_llm::default_model::default_model_path().expect("default model");
        let cuda_device =
            mirrorsim_llm::engine::cuda_device_from_env().expect("MIRRORSIM_CUDA is an ordinal");
        let options = EngineOptions {
            cuda_device,
            ..EngineOptions::default()
        };
        LocalEngine::load(&path, options).expect("load SmolLM2")
    })
}

fn chat(user: &str) -> Prompt {
    Prompt::Chat {
        messages: vec![ChatMessage::new("user", user)],
        continue_final: false,
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn capital_of_france_greedy_answers_paris() {
    let out = engine()
        .generate(&[GenerateRequest {
            prompt: chat("What is the capital of France?"),
            params: greedy(24),
        }])
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 1);
    let text = &out[0][0].text;
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert!(out[0][0].completion_tokens > 0 && out[0][0].completion_tokens <= 24);
}

#[test]
fn model_id_is_file_name_and_hash_prefix() {
    let id = engine().model_id();
    let (name, hash) = id.split_once('@').unwrap();
    assert_eq!(name, "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(hash.len(), 16);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(engine().model_id(), id);
}

#[test]
fn labels_a_to_l_are_single_distinct_tokens() {
    let labels: Vec<String> = ('A'..='L').map(|c| c.to_string()).collect();
    let ids = engine().label_token_ids("Behavior: [", &labels).unwrap();
    assert_eq!(ids.len(), 12);
    for (label, id) in labels.iter().zip(&ids) {
        assert_eq!(&engine().tokenizer().token_text(*id), label);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12);
}

fn scene_request() -> ChoiceRequest {
    let messages = vec![
        ChatMessage::new(
            "system",
            "You are a movie fan choosing what to watch next. Think, then answer with a letter.",
        ),
        ChatMessage::new(
            "user",
            "You recently watched Toy Story (5 stars) and Jumanji (3 stars).\nOptions:\n[A] Heat\n\
             [B] Babe\n[C] Casino\n[D] Sabrina\nWhich one do you pick?",
        ),
        ChatMessage::new("assistant", "Thought: "),
    ];
    ChoiceRequest {
        prompt: Prompt::Chat {
            messages,
            continue_final: true,
        },
        continuations: vec![
            "I loved Toy Story, so a family film about an animal sounds right.\nBehavior: [".into(),
            "Crime dramas excite me more than cartoons.\nBehavior: [".into(),
            "A romantic comedy would be a nice change.\nBehavior: [".into(),
            "\nBehavior: [".into(),
            "Heat has a great cast and I enjoy long thrillers with a tense plot, so I choose it \
             over the others.\nBehavior: ["
                .into(),
        ],
        labels: vec!["A".into(), "B".into(), "C".into(), "D".into()],
    }
}

#[test]
fn choice_distributions_sum_to_one_and_sharing_changes_nothing() {
    let request = scene_request();
    let shared = engine()
        .score_choices(std::slice::from_ref(&request))
        .unwrap();
    let unshared = engine()
        .score_choices_with(std::slice::from_ref(&request), false)
        .unwrap();
    assert_eq!(shared.len(), 1);
    let (shared, unshared) = (&shared[0], &unshared[0]);
    assert_eq!(shared.distributions.len(), 5);
    for (s, u) in shared.distributions.iter().zip(&unshared.distributions) {
        assert_eq!(s.len(), 4);
        let total: f64 = s.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "sum {total}");
        for (a, b) in s.iter().zip(u) {
            assert!((a - b).abs() < 1e-4, "shared {s:?} unshared {u:?}");
        }
    }
    assert!(shared.missing_labels.iter().all(Vec::is_empty));
    // The shared prefix is read once: fewer prompt tokens than reading every text whole.
    assert!(
        shared.prompt_tokens < unshared.prompt_tokens,
        "{} vs {}",
        shared.prompt_tokens,
        unshared.prompt_tokens
    );
    // The rationale matters: not all continuations give the same distribution.
    let first = &shared.distributions[0];
    assert!(shared
        .distributions
        .iter()
        .any(|d| d.iter().zip(first).any(|(a, b)| (a - b).abs() > 1e-3)));
}

#[test]
fn scoring_a_text_prompt_matches_full_logits() {
    let engine = engine();
    let request = ChoiceRequest {
        prompt: Prompt::Text {
            text: "Question: which is a fruit? [A] car [B] apple\nAnswer: [".into(),
        },
        continuations: vec![String::new(), "B] apple. Again: [".into()],
        labels: vec!["A".into(), "B".into()],
    };
    let scores = engine
        .score_choices(std::slice::from_ref(&request))
        .unwrap();
    let label_ids: Vec<u32> = request
        .labels
        .iter()
        .map(|label| engine.tokenizer().token_id(label).unwrap())
        .collect();
    let Prompt::Text { text } = &request.prompt else {
        unreachable!()
    };
    for (continuation, distribution) in request.continuations.iter().zip(&scores[0].distributions) {
        let tokens = engine
            .tokenizer()
            .encode(&format!("{text}{continuation}"), false)
            .unwrap();
        let logits = engine.logits(&tokens).unwrap();
        let last = logits.last().unwrap();
        let a = last[label_ids[0] as usize] as f64;
        let b = last[label_ids[1] as usize] as f64;
        let p_b = 1.0 / (1.0 + (a - b).exp());
        assert!(
            (distribution[1] - p_b).abs() < 1e-4,
            "{distribution:?} vs {p_b}"
        );
    }
}

/// The log-probability of `full`'s tokens after its common prefix with `prompt`, from one
/// unshared forward over the whole sequence.
fn reference_logprob(prompt: &[u32], full: &[u32]) -> (f64, usize) {
    let start = full.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    let logits = engine().logits(full).unwrap();
    let mut sum = 0.0;
    for t in start..full.len() {
        let row = &logits[t - 1];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = row
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        sum += row[full[t] as usize] as f64 - log_sum;
    }
    (sum, full.len() - start)
}

#[test]
fn continuation_scores_match_a_full_forward_and_prefer_the_right_answer() {
    let engine = engine();
    let messages = vec![ChatMessage::new("user", "What is the capital of France?")];
    let continuations = ["Paris", "Berlin", "The capital of France is Paris.", "Pa"];
    let request = ContinuationRequest {
        prompt: Prompt::Chat {
            messages: messages.clone(),
            continue_final: false,
        },
        continuations: continuations.iter().map(|c| c.to_string()).collect(),
    };
    let scores = engine
        .score_continuations(std::slice::from_ref(&request))
        .unwrap();
    let scores = &scores[0];
    let template = engine.chat_template().unwrap();
    let prompt = engine
        .tokenizer()
        .encode(&template.render(&messages, true, false).unwrap(), false)
        .unwrap();
    for (i, continuation) in continuations.iter().enumerate() {
        let mut with = messages.clone();
        with.push(ChatMessage::new("assistant", *continuation));
        let full = engine
            .tokenizer()
            .encode(&template.render(&with, false, false).unwrap(), false)
            .unwrap();
        let (expected, tokens) = reference_logprob(&prompt, &full);
        assert_eq!(scores.tokens[i], tokens, "{continuation}");
        assert!(
            (scores.logprobs[i] - expected).abs() < 2e-3,
            "{continuation}: {} vs {expected}",
            scores.logprobs[i]
        );
    }
    // The end of the turn is scored: "Pa" alone is a prefix of "Paris" yet less likely.
    assert!(scores.logprobs[0] > scores.logprobs[1], "{scores:?}");
    assert!(scores.logprobs[0] > scores.logprobs[3], "{scores:?}");
    let distribution = scores.distribution();
    assert!((distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    assert!(distribution[0] > distribution[1]);

    // A text prompt: the continuation is appended to the text.
    let text = ContinuationRequest {
        prompt: Prompt::Text {
            text: "The capital of France is".into(),
        },
        continuations: vec![" Paris".into(), " Berlin".into()],
    };
    let scores = engine.score_continuations(&[text]).unwrap();
    let prompt = engine
        .tokenizer()
        .encode("The capital of France is", false)
        .unwrap();
    for (i, continuation) in [" Paris", " Berlin"].iter().enumerate() {
        let full = engine
            .tokenizer()
            .encode(&format!("The capital of France is{continuation}"), false)
            .unwrap();
        let (expected, _) = reference_logprob(&prompt, &full);
        assert!((scores[0].logprobs[i] - expected).abs() < 2e-3);
    }
    assert!(scores[0].logprobs[0] > scores[0].logprobs[1]);

    // A continuation that adds nothing is refused, not scored as certain.
    let empty = ContinuationRequest {
        prompt: Prompt::Text {
            text: "The capital of France is".into(),
        },
        continuations: vec![String::new()],
    };
    assert!(engine.score_continuations(&[empty]).is_err());
}

#[test]
fn n_samples_are_reproducible_per_seed_and_differ_across_seeds() {
    let params = |seed| SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        max_tokens: 12,
        seed,
        n: 3,
        ..SamplingParams::default()
    };
    let request = |seed| GenerateRequest {
        prompt: chat("Write one sentence about a cat."),
        params: params(seed),
    };
    let texts = |out: Vec<Vec<mirrorsim_llm::Completion>>| -> Vec<String> {
        out.into_iter().flatten().map(|c| c.text).collect()
    };
    let first = texts(engine().generate(&[request(7)]).unwrap());
    let again = texts(engine().generate(&[request(7)]).unwrap());
    let other = texts(engine().generate(&[request(8)]).unwrap());
    assert_eq!(first.len(), 3);
    assert_eq!(first, again);
    assert_ne!(first, other);
    // The n samples of one request are not copies of each other.
    assert!(first[0] != first[1] || first[1] != first[2], "{first:?}");
}

#[test]
fn stop_strings_cut_the_text_before_the_stop() {
    let base = engine()
        .generate(&[GenerateRequest {
            prompt: chat("Count from 1 to 10, separated by commas."),
            params: greedy(40),
        }])
        .unwrap();
    let full = base[0][0].text.clone();
    // Stop at the second comma of the greedy answer.
    let second_comma = full.match_indices(',').nth(1).map(|(i, _)| i);
    let Some(cut) = second_comma else {
        panic!("greedy answer has fewer than two commas: {full:?}");
    };
    let stopped = engine()
        .generate(&[GenerateRequest {
            prompt: chat("Count from 1 to 10, separated by commas."),
            params: SamplingParams {
                stop: vec![
                    full[cut..cut + 1].to_string()
                        + &full[cut + 1..].chars().take(2).collect::<String>(),
                ],
                ..greedy(40)
            },
        }])
        .unwrap();
    let completion = &stopped[0][0];
    assert_eq!(completion.finish_reason, FinishReason::Stop);
    assert_eq!(completion.text, full[..cut]);
    assert!(completion.completion_tokens < base[0][0].completion_tokens);
}

#[test]
fn max_tokens_ends_with_length() {
    let out = engine()
        .generate(&[GenerateRequest {
            prompt: chat("Tell me a long story about dragons."),
            params: greedy(5),
        }])
        .unwrap();
    assert_eq!(out[0][0].completion_tokens, 5);
    assert_eq!(out[0][0].finish_reason, FinishReason::Length);
}

#[test]
fn batch_of_prompts_gives_the_same_greedy_outputs_as_one_at_a_time() {
    let prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "Explain in one sentence why the sky is blue, please, for a child of six years.",
    ];
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .map(|p| GenerateRequest {
            prompt: chat(p),
            params: greedy(20),
        })
        .collect();
    let together = engine().generate(&requests).unwrap();
    for (request, batched) in requests.iter().zip(&together) {
        let alone = engine().generate(std::slice::from_ref(request)).unwrap();
        assert_eq!(alone[0][0].text, batched[0].text);
        assert_eq!(alone[0][0].completion_tokens, batched[0].completion_tokens);
    }
}

#[test]
fn logprobs_report_the_chosen_token_and_the_best_alternatives() {
    let out = engine()
        .generate(&[GenerateRequest {
            prompt: chat("What is the capital of France?"),
            params: SamplingParams {
                logprobs: Some(5),
                ..greedy(6)
            },
        }])
        .unwrap();
    let completion = &out[0][0];
    let logprobs = completion.logprobs.as_ref().unwrap();
    assert_eq!(logprobs.len(), completion.completion_tokens);
    for entry in logprobs {
        assert_eq!(entry.top.len(), 5);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry.top[0].1, entry.token_id);
        assert!((entry.top[0].2 - entry.logprob).abs() < 1e-12);
        assert!(entry.top.windows(2).all(|w| w[0].2 >= w[1].2));
        assert!(entry.logprob <= 0.0);
    }
}

fn reference() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids_of(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn messages_of(value: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn greedy_generation_matches_the_recorded_reference_token_for_token() {
    let reference = reference();
    let greedy_ref = &reference["greedy"];
    let prompt = Prompt::Chat {
        messages: messages_of(&greedy_ref["messages"]),
        continue_final: false,
    };
    assert_eq!(
        engine().prompt_tokens(&prompt).unwrap(),
        ids_of(&greedy_ref["prompt_ids"])
    );
    // llama.cpp and HF transformers agree on all 64 recorded tokens.
    let expected = ids_of(&greedy_ref["hf_f32_continuation_ids"]);
    assert_eq!(expected, ids_of(&greedy_ref["llama_cpp_continuation_ids"]));
    assert!(expected.len() >= 32);
    let out = engine()
        .generate(&[GenerateRequest {
            prompt,
            params: SamplingParams {
                logprobs: Some(1),
                ..greedy(expected.len())
            },
        }])
        .unwrap();
    let got: Vec<u32> = out[0][0]
        .logprobs
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| t.token_id)
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        out[0][0].text,
        greedy_ref["hf_f32_continuation_text"].as_str().unwrap()
    );
}

#[test]
fn next_token_logprobs_match_hf_transformers_f32() {
    let reference = reference();
    let next = &reference["next_token"];
    let prompt_ids = ids_of(&next["prompt_ids"]);
    let logits = engine().logits(&prompt_ids).unwrap();
    let log_probs = mirrorsim_llm::sampling::log_softmax(logits.last().unwrap());
    let ids = ids_of(&next["hf_f32_top10"]["ids"]);
    let expected: Vec<f64> = next["hf_f32_top10"]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let ours = mirrorsim_llm::sampling::top_n(&log_probs, 10);
    assert_eq!(ours.iter().map(|t| t.0).collect::<Vec<_>>(), ids);
    for (id, want) in ids.iter().zip(&expected) {
        let got = log_probs[*id as usize];
        assert!((got - want).abs() < 1e-3, "token {id}: {got} vs {want}");
    }
}

/// The engine with its dense layers multiplied in bf16 on AMX, or why this CPU cannot have it.
fn bf16_engine() -> Result<&'static LocalEngine, String> {
    static ENGINE: OnceLock<Result<LocalEngine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let path = mirrorsim_llm::default_model::default_model_path().expect("default model");
            let options = EngineOptions {
                matmul: MatmulPrecision::Bf16,
                ..EngineOptions::default()
            };
            LocalEngine::load(&path, options).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// bf16 products on AMX: the same answers, choice distributions within 0.03 of the f32 engine's
/// (measured: at most 0.003 on this scene), shared-prefix scoring equal to unshared within 5e-3,
/// and HF transformers' f32 top 3 next tokens in the same order with the top 10's
/// log-probabilities within 0.15 (measured: 0.061). Its model id (which keys journals) ends in
/// `+bf16`. Where the CPU has no AMX, the load must refuse bf16 in words instead.
#[test]
fn bf16_amx_engine_stays_close_to_the_f32_engine() {
    let bf16 = match bf16_engine() {
        Ok(engine) => engine,
        Err(message) => {
            assert!(
                message.contains("AMX") && message.contains("f32"),
                "unhelpful refusal: {message}"
            );
            eprintln!("no AMX here; checked the refusal only: {message}");
            return;
        }
    };
    assert_eq!(bf16.model_id(), format!("{}+bf16", engine().model_id()));
    let out = bf16
        .generate(&[GenerateRequest {
            prompt: chat("What is the capital of France?"),
            params: greedy(24),
        }])
        .unwrap();
    assert!(
        out[0][0].text.contains("Paris"),
        "answer: {:?}",
        out[0][0].text
    );

    let request = scene_request();
    let f32_scores = engine()
        .score_choices(std::slice::from_ref(&request))
        .unwrap();
    let shared = bf16.score_choices(std::slice::from_ref(&request)).unwrap();
    let unshared = bf16
        .score_choices_with(std::slice::from_ref(&request), false)
        .unwrap();
    let mut worst_vs_f32 = 0f64;
    for ((s, u), r) in shared[0]
        .distributions
        .iter()
        .zip(&unshared[0].distributions)
        .zip(&f32_scores[0].distributions)
    {
        let total: f64 = s.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "sum {total}");
        for ((a, b), c) in s.iter().zip(u).zip(r) {
            assert!((a - b).abs() < 5e-3, "shared {s:?} unshared {u:?}");
            worst_vs_f32 = worst_vs_f32.max((a - c).abs());
        }
    }
    eprintln!("bf16 vs f32 choice probabilities: largest difference {worst_vs_f32:.4}");
    assert!(worst_vs_f32 < 0.03, "bf16 {shared:?} vs f32 {f32_scores:?}");

    let reference = reference();
    let next = &reference["next_token"];
    let logits = bf16.logits(&ids_of(&next["prompt_ids"])).unwrap();
    let log_probs = mirrorsim_llm::sampling::log_softmax(logits.last().unwrap());
    let ids = ids_of(&next["hf_f32_top10"]["ids"]);
    let expected = next["hf_f32_top10"]["logprobs"].as_array().unwrap();
    let ours = mirrorsim_llm::sampling::top_n(&log_probs, 10);
    assert_eq!(ours.iter().map(|t| t.0).collect::<Vec<_>>()[..3], ids[..3]);
    let mut worst_logprob = 0f64;
    for (id, want) in ids.iter().zip(expected) {
        worst_logprob = worst_logprob.max((log_probs[*id as usize] - want.as_f64().unwrap()).abs());
    }
    eprintln!("bf16 vs HF f32 next-token log-probabilities: largest difference {worst_logprob:.4}");
    assert!(worst_logprob < 0.15, "{worst_logprob}");
}
