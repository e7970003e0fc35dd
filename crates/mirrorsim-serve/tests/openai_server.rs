//! The OpenAI-compatible server and the HTTP backend, end to end over loopback:
//! HttpBackend → our server → a deterministic test backend, compared with that backend's own
//! answers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{ToyBackend, VOCAB};
use mirrorsim_llm::http::{HttpBackend, HttpConfig, UNKNOWN_TOKEN_ID};
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, Completion, GenerateRequest, LlmError, Prompt,
    SamplingParams,
};
use mirrorsim_serve::{serve, RunningServer};
use serde_json::{json, Value};

const MODEL: &str = "toy-model";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(backend: Arc<ToyBackend>) -> RunningServer {
    serve(loopback(), backend, MODEL).unwrap()
}

fn client(server: &RunningServer) -> HttpBackend {
    let config = HttpConfig {
        api_key_env: String::new(),
        max_retries: 0,
        request_timeout_secs: 60.0,
        ..HttpConfig::new(server.base_url(), MODEL)
    };
    HttpBackend::new(config).unwrap()
}

fn params(
    n: usize,
    temperature: f32,
    max_tokens: usize,
    logprobs: Option<usize>,
) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p: 1.0,
        top_k: 0,
        max_tokens,
        stop: Vec::new(),
        seed: 7,
        n,
        logprobs,
    }
}

fn chat(messages: &[(&str, &str)], continue_final: bool) -> Prompt {
    Prompt::Chat {
        messages: messages
            .iter()
            .map(|(role, content)| ChatMessage::new(*role, *content))
            .collect(),
        continue_final,
    }
}

/// The completions endpoint's top logprobs are an object keyed by token text: no ids.
fn without_top_ids(mut completion: Completion) -> Completion {
    if let Some(entries) = completion.logprobs.as_mut() {
        for entry in entries {
            for top in &mut entry.top {
                top.1 = UNKNOWN_TOKEN_ID;
            }
        }
    }
    completion
}

/// Exact but for the logprobs, which JSON carries to within an ulp or two (serde_json's
/// default float parser is not exactly round-trip).
fn assert_same_completions(got: &[Completion], expected: &[Completion], request: usize) {
    assert_eq!(got.len(), expected.len(), "request {request}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
    for (choice, (got, expected)) in got.iter().zip(expected).enumerate() {
        let context = format!("request {request}, choice {choice}");
        assert_eq!(got.text, expected.text, "{context}");
        assert_eq!(got.prompt_tokens, expected.prompt_tokens, "{context}");
        assert_eq!(
            got.completion_tokens, expected.completion_tokens,
            "{context}"
        );
        assert_eq!(got.finish_reason, expected.finish_reason, "{context}");
        let (Some(got), Some(expected)) = (&got.logprobs, &expected.logprobs) else {
            assert_eq!(
                got.logprobs.is_some(),
                expected.logprobs.is_some(),
                "{context}"
            );
            continue;
        };
        assert_eq!(got.len(), expected.len(), "{context}");
        for (got, expected) in got.iter().zip(expected) {
            assert_eq!(got.token, expected.token, "{context}");
            assert_eq!(got.token_id, expected.token_id, "{context}");
            assert!(close(got.logprob, expected.logprob), "{context}");
            assert_eq!(got.top.len(), expected.top.len(), "{context}");
            for (got, expected) in got.top.iter().zip(&expected.top) {
                assert_eq!((&got.0, got.1), (&expected.0, expected.1), "{context}");
                assert!(close(got.2, expected.2), "{context}");
            }
        }
    }
}

#[test]
fn chat_and_text_generation_round_trip_through_the_server() {
    let toy = Arc::new(ToyBackend::default());
    let server = start(Arc::clone(&toy));
    let http = client(&server);
    assert_eq!(http.model_id(), format!("{}#{MODEL}", server.base_url()));

    let mut with_stop = params(1, 0.0, 12, Some(1));
    with_stop.stop = vec!["C".to_string(), "K".to_string()];
    let mut top_k_sampled = params(2, 1.3, 6, Some(3));
    top_k_sampled.top_k = 4;
    top_k_sampled.top_p = 0.9;
    let requests = vec![
        GenerateRequest {
            prompt: chat(&[("system", "be brief"), ("user", "pick one")], false),
            params: params(1, 0.0, 8, Some(5)),
        },
        GenerateRequest {
            prompt: chat(&[("user", "pick one"), ("assistant", "Behavior: [")], true),
            params: params(3, 0.8, 5, Some(2)),
        },
        GenerateRequest {
            prompt: chat(&[("user", "which?")], false),
            params: with_stop,
        },
        GenerateRequest {
            prompt: Prompt::Text {
                text: "Once upon a time".to_string(),
            },
            params: params(1, 0.0, 7, Some(3)),
        },
        GenerateRequest {
            prompt: Prompt::Text {
                text: "The answer is".to_string(),
            },
            params: top_k_sampled,
        },
    ];
    let expected = toy.generate(&requests).unwrap();
    let got = http.generate(&requests).unwrap();
    assert_eq!(got.len(), requests.len());
    for (index, (request, (got, expected))) in requests
        .iter()
        .zip(got.into_iter().zip(expected))
        .enumerate()
    {
        let text_prompt = matches!(request.prompt, Prompt::Text { .. });
        let expected: Vec<Completion> = if text_prompt {
            expected.into_iter().map(without_top_ids).collect()
        } else {
            expected
        };
        assert_same_completions(&got, &expected, index);
    }
    // The sampled chat request really sampled: its three choices are not all equal.
    let sampled = &toy.generate(&requests[1..2]).unwrap()[0];
    assert!(sampled.iter().any(|c| c.text != sampled[0].text));
    // The stop string cut the greedy text and finished with "stop".
    let stopped = &toy.generate(&requests[2..3]).unwrap()[0][0];
    assert_eq!(stopped.finish_reason, mirrorsim_llm::FinishReason::Stop);
    server.shutdown().unwrap();
}

#[test]
fn completion_token_counts_without_logprobs_add_up_to_the_usage() {
    let toy = Arc::new(ToyBackend::default());
    let server = start(Arc::clone(&toy));
    let http = client(&server);
    let mut sampled = params(4, 1.0, 9, None);
    sampled.stop = vec!["!".to_string()];
    let requests = vec![GenerateRequest {
        prompt: chat(&[("user", "go")], false),
        params: sampled,
    }];
    let expected = toy.generate(&requests).unwrap().remove(0);
    let got = http.generate(&requests).unwrap().remove(0);
    let texts = |completions: &[Completion]| -> Vec<String> {
        completions.iter().map(|c| c.text.clone()).collect()
    };
    assert_eq!(texts(&got), texts(&expected));
    let total = |completions: &[Completion]| -> usize {
        completions.iter().map(|c| c.completion_tokens).sum()
    };
    assert_eq!(total(&got), total(&expected));
    assert!(got.iter().all(|c| c.logprobs.is_none()));
}

#[test]
fn choice_scores_through_top_logprobs_equal_the_backends_own() {
    let toy = Arc::new(ToyBackend::default());
    let server = start(Arc::clone(&toy));
    let http = client(&server);
    let labels: Vec<String> = ["A", "B", "C", "D", "E"].map(String::from).to_vec();
    let requests = vec![
        ChoiceRequest {
            prompt: chat(&[("user", "scene one"), ("assistant", "Thought: ")], true),
            continuations: vec![
                "I like sci-fi. Behavior: [".to_string(),
                "Too slow for me. Behavior: [".to_string(),
                String::new(),
            ],
            labels: labels.clone(),
        },
        ChoiceRequest {
            prompt: chat(&[("user", "scene two")], false),
            continuations: vec!["Behavior: [".to_string()],
            labels: labels[..3].to_vec(),
        },
        ChoiceRequest {
            prompt: Prompt::Text {
                text: "Options [A] [B] [C] [D] [E]. Choice: [".to_string(),
            },
            continuations: vec!["".to_string(), "x".to_string()],
            labels: labels.clone(),
        },
    ];
    let expected = toy.score_choices(&requests).unwrap();
    let got = http.score_choices(&requests).unwrap();
    for (index, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got.distributions.len(), expected.distributions.len());
        for (g, e) in got.distributions.iter().zip(&expected.distributions) {
            assert_eq!(g.len(), e.len());
            for (g, e) in g.iter().zip(e) {
                assert!((g - e).abs() < 1e-9, "request {index}: {g} vs {e}");
            }
            assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert!(got.missing_labels.iter().all(Vec::is_empty));
        assert_eq!(got.missing_labels.len(), got.distributions.len());
        // The server reads each continuation's whole prompt; the toy counts the same.
        assert_eq!(got.prompt_tokens, expected.prompt_tokens, "request {index}");
    }
}

#[test]
fn a_label_missing_from_the_top_list_is_reported_and_none_at_all_is_an_error() {
    let toy = Arc::new(ToyBackend::default());
    let server = start(Arc::clone(&toy));
    let http = client(&server);
    let prompt = chat(&[("user", "pick"), ("assistant", "Behavior: [")], true);
    let request = ChoiceRequest {
        prompt: prompt.clone(),
        continuations: vec![String::new(), " again [".to_string()],
        labels: vec!["A".to_string(), "B".to_string(), "Z".to_string()],
    };
    let got = http.score_choices(std::slice::from_ref(&request)).unwrap();
    // The toy's own scores over A and B only (Z has logit -30 and is never in the top 20).
    let reference = toy
        .score_choices(&[ChoiceRequest {
            labels: vec!["A".to_string(), "B".to_string()],
            ..request.clone()
        }])
        .unwrap();
    for (distribution, expected) in got[0].distributions.iter().zip(&reference[0].distributions) {
        assert_eq!(distribution[2], 0.0);
        assert!((distribution[0] - expected[0]).abs() < 1e-9);
        assert!((distribution[1] - expected[1]).abs() < 1e-9);
    }
    assert_eq!(got[0].missing_labels, vec![vec!["Z".to_string()]; 2]);

    let hopeless = ChoiceRequest {
        prompt,
        continuations: vec![String::new()],
        labels: vec!["Y".to_string(), "Z".to_string()],
    };
    let ok = ChoiceRequest {
        continuations: vec![String::new()],
        ..request
    };
    match http.score_choices(&[ok, hopeless]) {
        Err(LlmError::Http { url, message }) => {
            assert_eq!(url, format!("{}/chat/completions", server.base_url()));
            assert!(
                message.contains("choice request 1, continuation 0"),
                "{message}"
            );
            assert!(message.contains("none of the labels"), "{message}");
        }
        other => panic!("expected an error naming the request, got {other:?}"),
    }
}

fn post(server: &RunningServer, path: &str, body: &str) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{}{path}", server.base_url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

#[test]
fn logprobs_come_back_in_openai_shapes() {
    let server = start(Arc::new(ToyBackend::default()));
    let (status, chat) = post(
        &server,
        "/chat/completions",
        &json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 3, "seed": 1
        })
        .to_string(),
    );
    assert_eq!(status, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], MODEL);
    assert!(chat["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &chat["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "length");
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(chat["usage"]["completion_tokens"], 4);
    let usage = &chat["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 4
    );
    let mut text = String::new();
    for entry in content {
        let token = entry["token"].as_str().unwrap();
        text.push_str(token);
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        let bytes: Vec<u8> = serde_json::from_value(entry["bytes"].clone()).unwrap();
        assert_eq!(bytes, token.as_bytes());
        assert_eq!(VOCAB[entry["id"].as_u64().unwrap() as usize], token);
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // greedy: the chosen token is the best of the top list
        assert_eq!(top[0]["token"], entry["token"]);
        let values: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(values.windows(2).all(|pair| pair[0] >= pair[1]));
    }
    assert_eq!(choice["message"]["content"], text);

    let (status, completion) = post(
        &server,
        "/completions",
        &json!({"prompt": "abc", "max_tokens": 3, "temperature": 0, "logprobs": 2, "n": 2})
            .to_string(),
    );
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["object"], "text_completion");
    let choices = completion["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[1]["index"], 1);
    let logprobs = &choices[0]["logprobs"];
    let tokens = logprobs["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 3);
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), 3);
    assert_eq!(logprobs["token_ids"].as_array().unwrap().len(), 3);
    let offsets: Vec<u64> = serde_json::from_value(logprobs["text_offset"].clone()).unwrap();
    assert_eq!(offsets[0], 3);
    for (position, top) in logprobs["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top.contains_key(tokens[position].as_str().unwrap()));
    }
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(choices[0]["text"], joined);
    assert_eq!(completion["usage"]["completion_tokens"], 6);
}

#[test]
fn bad_requests_get_openai_errors_and_never_reach_the_model() {
    let toy = Arc::new(ToyBackend::default());
    let server = start(Arc::clone(&toy));
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("/chat/completions", "{not json".to_string(), 400, None),
        (
            "/chat/completions",
            json!({"messages": "hi"}).to_string(),
            400,
            None,
        ),
        (
            "/chat/completions",
            json!({"messages": []}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 0}).to_string(),
            400,
            Some("n"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}).to_string(),
            400,
            Some("top_p"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": -1}).to_string(),
            400,
            Some("temperature"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "stream": true}).to_string(),
            400,
            Some("stream"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}).to_string(),
            400,
            Some("top_logprobs"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true,
                   "top_logprobs": 99})
            .to_string(),
            400,
            Some("top_logprobs"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}],
                   "continue_final_message": true, "add_generation_prompt": false})
            .to_string(),
            400,
            Some("continue_final_message"),
        ),
        (
            "/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "allowed_token_ids": [1]})
                .to_string(),
            400,
            Some("allowed_token_ids"),
        ),
        (
            "/chat/completions",
            json!({"model": "other", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            404,
            Some("model"),
        ),
        (
            "/completions",
            json!({"prompt": [1, 2, 3]}).to_string(),
            400,
            Some("prompt"),
        ),
        (
            "/completions",
            json!({"prompt": "x", "echo": true}).to_string(),
            400,
            Some("echo"),
        ),
        (
            "/completions",
            json!({"prompt": "x", "max_tokens": 0}).to_string(),
            400,
            Some("max_tokens"),
        ),
        (
            "/completions",
            json!({"prompt": "x", "stop": [""]}).to_string(),
            400,
            Some("stop"),
        ),
        (
            "/completions",
            json!({"prompt": "x", "top_k": -5}).to_string(),
            400,
            Some("top_k"),
        ),
        (
            "/completions",
            json!({"prompt": "x", "seed": "seven"}).to_string(),
            400,
            None,
        ),
        ("/no/such/route", "{}".to_string(), 404, None),
    ];
    for (path, body, status, param) in &cases {
        let (got_status, error) = post(&server, path, body);
        assert_eq!(got_status, *status, "{path} {body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(error["error"]["type"].is_string());
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], *param, "{body}");
        }
    }
    assert_eq!(toy.generate_calls.load(Ordering::SeqCst), 0);

    // A backend error is a 400 when the backend calls the request bad.
    let (status, error) = post(
        &server,
        "/completions",
        &json!({"prompt": "please FAIL"}).to_string(),
    );
    assert_eq!(status, 400);
    assert_eq!(error["error"]["message"], "the prompt asks to fail");
}

#[test]
fn models_health_and_shutdown() {
    let server = start(Arc::new(ToyBackend::default()));
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    let http = reqwest::blocking::Client::new();
    let health = http.get(format!("http://{addr}/health")).send().unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let models: Value = http
        .get(format!("{}/models", server.base_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], MODEL);
    server.shutdown().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}

#[test]
fn concurrent_requests_are_batched_one_model_call_at_a_time() {
    let toy = Arc::new(ToyBackend::with_delay(Duration::from_millis(300)));
    let server = start(Arc::clone(&toy));
    let base_url = server.base_url();
    let threads: Vec<_> = (0..6)
        .map(|index| {
            let base_url = base_url.clone();
            std::thread::spawn(move || {
                let prompt = if index == 3 {
                    "please FAIL".to_string()
                } else {
                    format!("p{index}")
                };
                let response = reqwest::blocking::Client::new()
                    .post(format!("{base_url}/completions"))
                    .json(&json!({"prompt": prompt, "max_tokens": 2, "temperature": 0}))
                    .send()
                    .unwrap();
                (
                    index,
                    response.status().as_u16(),
                    response.json::<Value>().unwrap(),
                )
            })
        })
        .collect();
    let answers: Vec<(usize, u16, Value)> = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .collect();
    // Read before the reference calls below add their own.
    let max_in_flight = toy.max_in_flight.load(Ordering::SeqCst);
    let sizes = toy.batch_sizes.lock().unwrap().clone();
    for (index, status, body) in answers {
        if index == 3 {
            assert_eq!(status, 400, "{body}");
        } else {
            assert_eq!(status, 200, "{body}");
            let expected = toy
                .generate(&[GenerateRequest {
                    prompt: Prompt::Text {
                        text: format!("p{index}"),
                    },
                    params: params(1, 0.0, 2, None),
                }])
                .unwrap();
            assert_eq!(body["choices"][0]["text"], expected[0][0].text);
        }
    }
    assert_eq!(max_in_flight, 1);
    // Every request reached the model at least once (a batch holding the failing one is rerun
    // request by request).
    assert!(sizes.iter().sum::<usize>() >= 6, "{sizes:?}");
    let server_calls = &sizes;
    assert!(
        server_calls.iter().any(|&size| size > 1),
        "no batch held more than one request: {server_calls:?}"
    );
}
