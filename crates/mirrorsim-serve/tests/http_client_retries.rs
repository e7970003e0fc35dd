//! The HTTP backend's retries, backoff and concurrency bound, against tiny axum servers that
//! misbehave on purpose.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use mirrorsim_llm::http::{HttpBackend, HttpConfig};
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, GenerateRequest, LlmError, Prompt, SamplingParams,
};
use serde_json::{json, Value};

/// Runs `router` on a loopback port on its own thread; the server lives until the test ends.
fn spawn_server(router: Router) -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    addr_rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

fn backend(addr: SocketAddr, configure: impl FnOnce(&mut HttpConfig)) -> HttpBackend {
    let mut config = HttpConfig {
        api_key_env: String::new(),
        initial_backoff_secs: 0.01,
        max_backoff_secs: 0.05,
        request_timeout_secs: 10.0,
        ..HttpConfig::new(format!("http://{addr}/v1"), "m")
    };
    configure(&mut config);
    HttpBackend::new(config).unwrap()
}

fn chat_reply(content: &str) -> Value {
    json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
}

fn text_reply(text: &str) -> Value {
    json!({
        "id": "x", "object": "text_completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": null}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    })
}

fn chat_request() -> Vec<GenerateRequest> {
    vec![GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", "hello")],
            continue_final: false,
        },
        params: SamplingParams::default(),
    }]
}

fn error_body(message: &str) -> Json<Value> {
    Json(json!({"error": {"message": message, "type": "x", "param": null, "code": null}}))
}

#[derive(Default)]
struct Calls {
    count: AtomicUsize,
}

#[test]
fn rate_limits_and_server_errors_are_retried_until_success() {
    let calls = Arc::new(Calls::default());
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(calls): State<Arc<Calls>>| async move {
                match calls.count.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "0")],
                        error_body("slow down"),
                    )
                        .into_response(),
                    2 => {
                        (StatusCode::SERVICE_UNAVAILABLE, error_body("warming up")).into_response()
                    }
                    _ => Json(chat_reply("done")).into_response(),
                }
            }),
        )
        .with_state(Arc::clone(&calls));
    let http = backend(spawn_server(router), |config| config.max_retries = 5);
    let completions = http.generate(&chat_request()).unwrap();
    assert_eq!(completions[0][0].text, "done");
    assert_eq!(completions[0][0].prompt_tokens, 5);
    assert_eq!(completions[0][0].completion_tokens, 2);
    assert_eq!(calls.count.load(Ordering::SeqCst), 4);
    let stats = http.stats();
    assert_eq!((stats.attempts, stats.retries), (4, 3));
}

#[test]
fn retry_after_is_honoured() {
    let calls = Arc::new(Calls::default());
    let router = Router::new()
        .route(
            "/v1/completions",
            post(|State(calls): State<Arc<Calls>>| async move {
                if calls.count.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "1")],
                        error_body("quota"),
                    )
                        .into_response()
                } else {
                    Json(text_reply("ok")).into_response()
                }
            }),
        )
        .with_state(Arc::clone(&calls));
    let http = backend(spawn_server(router), |config| {
        config.initial_backoff_secs = 0.0
    });
    let started = Instant::now();
    let completions = http
        .generate(&[GenerateRequest {
            prompt: Prompt::Text {
                text: "x".to_string(),
            },
            params: SamplingParams::default(),
        }])
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(completions[0][0].text, "ok");
    assert_eq!(calls.count.load(Ordering::SeqCst), 2);
    assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
}

#[test]
fn client_errors_are_not_retried_and_name_url_status_and_message() {
    let calls = Arc::new(Calls::default());
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(calls): State<Arc<Calls>>| async move {
                calls.count.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::BAD_REQUEST,
                    error_body("max_tokens is too large: 99999"),
                )
            }),
        )
        .with_state(Arc::clone(&calls));
    let addr = spawn_server(router);
    let http = backend(addr, |config| config.max_retries = 5);
    match http.generate(&chat_request()) {
        Err(LlmError::Http { url, message }) => {
            assert_eq!(url, format!("http://{addr}/v1/chat/completions"));
            assert!(message.contains("400 Bad Request"), "{message}");
            assert!(
                message.contains("max_tokens is too large: 99999"),
                "{message}"
            );
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert_eq!(calls.count.load(Ordering::SeqCst), 1);
    assert_eq!(http.stats().retries, 0);
}

#[test]
fn retries_stop_after_max_retries() {
    let calls = Arc::new(Calls::default());
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(calls): State<Arc<Calls>>| async move {
                calls.count.fetch_add(1, Ordering::SeqCst);
                (StatusCode::BAD_GATEWAY, "upstream down")
            }),
        )
        .with_state(Arc::clone(&calls));
    let http = backend(spawn_server(router), |config| config.max_retries = 2);
    let err = http.generate(&chat_request()).unwrap_err().to_string();
    assert!(err.contains("502 Bad Gateway: upstream down"), "{err}");
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    assert_eq!(calls.count.load(Ordering::SeqCst), 3);
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let calls = Arc::new(Calls::default());
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(|State(calls): State<Arc<Calls>>| async move {
                if calls.count.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Json(chat_reply("late but fine"))
            }),
        )
        .with_state(Arc::clone(&calls));
    let http = backend(spawn_server(router), |config| {
        config.request_timeout_secs = 0.5;
    });
    let completions = http.generate(&chat_request()).unwrap();
    assert_eq!(completions[0][0].text, "late but fine");
    assert_eq!(calls.count.load(Ordering::SeqCst), 2);
}

#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
}

#[test]
fn no_more_requests_in_flight_than_max_concurrency() {
    let in_flight = Arc::new(InFlight::default());
    let router = Router::new()
        .route(
            "/v1/completions",
            post(
                |State(in_flight): State<Arc<InFlight>>, Json(body): Json<Value>| async move {
                    let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
                    in_flight.max.fetch_max(now, Ordering::SeqCst);
                    in_flight.total.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    in_flight.now.fetch_sub(1, Ordering::SeqCst);
                    let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
                    Json(text_reply(&format!("echo {prompt}")))
                },
            ),
        )
        .with_state(Arc::clone(&in_flight));
    let http = backend(spawn_server(router), |config| config.max_concurrency = 3);
    let requests: Vec<GenerateRequest> = (0..12)
        .map(|index| GenerateRequest {
            prompt: Prompt::Text {
                text: format!("p{index}"),
            },
            params: SamplingParams::default(),
        })
        .collect();
    let started = Instant::now();
    let completions = http.generate(&requests).unwrap();
    let elapsed = started.elapsed();
    for (index, completions) in completions.iter().enumerate() {
        assert_eq!(completions[0].text, format!("echo p{index}"));
    }
    assert_eq!(in_flight.total.load(Ordering::SeqCst), 12);
    assert_eq!(in_flight.max.load(Ordering::SeqCst), 3);
    // 12 requests of 100 ms, 3 at a time: at least 4 rounds.
    assert!(elapsed >= Duration::from_millis(390), "{elapsed:?}");
}

/// Requests a test server saw: the Authorization header and the body.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

#[test]
fn choice_requests_carry_vllm_extras_and_the_api_key() {
    let seen: Seen = Arc::default();
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            post(
                |State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_string);
                    seen.lock().unwrap().push((auth, body));
                    let top = json!([
                        {"token": "B", "logprob": (0.6f64).ln(), "bytes": [66]},
                        {"token": "A", "logprob": (0.2f64).ln(), "bytes": [65]},
                    ]);
                    let response: Response = Json(json!({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "B"},
                            "finish_reason": "length",
                            "logprobs": {"content": [{"token": "B", "logprob": (0.6f64).ln(),
                                                      "top_logprobs": top}]}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 1}
                    }))
                    .into_response();
                    response
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let key_env = "MIRRORSIM_TEST_HTTP_KEY_7F3A";
    std::env::set_var(key_env, "sk-test-secret");
    let http = backend(spawn_server(router), |config| {
        config.api_key_env = key_env.to_string();
        config.label_token_ids = [("A".to_string(), 32), ("B".to_string(), 33)].into();
    });
    assert!(!format!("{http:?}").contains("sk-test-secret"));
    let scores = http
        .score_choices(&[ChoiceRequest {
            prompt: Prompt::Chat {
                messages: vec![
                    ChatMessage::new("user", "pick"),
                    ChatMessage::new("assistant", "Thought: "),
                ],
                continue_final: true,
            },
            continuations: vec!["fine. Behavior: [".to_string()],
            labels: vec!["A".to_string(), "B".to_string()],
        }])
        .unwrap();
    assert!((scores[0].distributions[0][0] - 0.25).abs() < 1e-12);
    assert!((scores[0].distributions[0][1] - 0.75).abs() < 1e-12);
    assert_eq!(scores[0].prompt_tokens, 11);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (auth, body) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test-secret"));
    assert_eq!(body["allowed_token_ids"], json!([32, 33]));
    assert_eq!(body["continue_final_message"], true);
    assert_eq!(body["add_generation_prompt"], false);
    assert_eq!(body["max_tokens"], 1);
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["logprobs"], true);
    assert_eq!(body["top_logprobs"], 20);
    assert_eq!(body["model"], "m");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["content"], "Thought: fine. Behavior: [");
}
