//! The HTTP backend against a raw TCP peer: dropped connections are retried, a refused
//! connection fails with the URL named, and malformed answers are reported, not retried.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use mirrorsim_llm::http::{HttpBackend, HttpConfig};
use mirrorsim_llm::{Backend, GenerateRequest, LlmError, Prompt, SamplingParams};

/// Reads one HTTP request (head and Content-Length body) from `stream`.
fn read_request(stream: &mut TcpStream) -> String {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = value.trim().parse().unwrap();
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).unwrap();
}

/// A peer that handles one connection per entry of `script`, in order.
fn scripted_peer(script: Vec<fn(&mut TcpStream)>) -> (SocketAddr, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for step in script {
            let (mut stream, _) = listener.accept().unwrap();
            step(&mut stream);
            served += 1;
        }
        served
    });
    (addr, handle)
}

fn text_request() -> Vec<GenerateRequest> {
    vec![GenerateRequest {
        prompt: Prompt::Text {
            text: "Once".to_string(),
        },
        params: SamplingParams {
            max_tokens: 3,
            ..SamplingParams::default()
        },
    }]
}

fn backend(addr: SocketAddr) -> HttpBackend {
    HttpBackend::new(HttpConfig {
        api_key_env: String::new(),
        max_retries: 3,
        initial_backoff_secs: 0.01,
        max_backoff_secs: 0.02,
        request_timeout_secs: 10.0,
        ..HttpConfig::new(format!("http://{addr}/v1/"), "peer-model")
    })
    .unwrap()
}

const GOOD: &str = r#"{"choices":[{"index":0,"text":" upon a","finish_reason":"length",
"logprobs":null}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}"#;

#[test]
fn a_dropped_connection_is_retried() {
    let (addr, peer) = scripted_peer(vec![
        |stream| {
            read_request(stream);
            // Hang up without a word.
        },
        |stream| {
            let request = read_request(stream);
            assert!(
                request.starts_with("POST /v1/completions HTTP/1.1"),
                "{request}"
            );
            assert!(request.contains(r#""model":"peer-model""#), "{request}");
            assert!(!request.to_ascii_lowercase().contains("authorization"));
            respond(stream, "200 OK", GOOD);
        },
    ]);
    let http = backend(addr);
    assert_eq!(http.model_id(), format!("http://{addr}/v1#peer-model"));
    let completions = http.generate(&text_request()).unwrap();
    assert_eq!(completions[0][0].text, " upon a");
    assert_eq!(completions[0][0].completion_tokens, 3);
    assert_eq!(http.stats().retries, 1);
    assert_eq!(peer.join().unwrap(), 2);
}

#[test]
fn a_truncated_body_is_retried_and_invalid_json_is_not() {
    let (addr, peer) = scripted_peer(vec![
        |stream| {
            read_request(stream);
            // Promise 500 bytes, send 10, hang up.
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n";
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(br#"{"choices""#).unwrap();
        },
        |stream| {
            read_request(stream);
            respond(stream, "200 OK", "<html>not json</html>");
        },
    ]);
    let http = backend(addr);
    match http.generate(&text_request()) {
        Err(LlmError::Http { url, message }) => {
            assert_eq!(url, format!("http://{addr}/v1/completions"));
            assert!(message.contains("not valid JSON"), "{message}");
            assert!(message.contains("<html>not json</html>"), "{message}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert_eq!(http.stats().attempts, 2);
    assert_eq!(peer.join().unwrap(), 2);
}

#[test]
fn a_refused_connection_fails_after_the_retries_naming_the_url() {
    // Bind and drop to find a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let http = backend(addr);
    let started = std::time::Instant::now();
    match http.generate(&text_request()) {
        Err(LlmError::Http { url, message }) => {
            assert_eq!(url, format!("http://{addr}/v1/completions"));
            assert!(message.contains("cannot connect"), "{message}");
            assert!(message.contains("gave up after 4 attempts"), "{message}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn invalid_configurations_are_refused() {
    let bad = [
        HttpConfig::new("localhost:8000/v1", "m"),
        HttpConfig::new("http://127.0.0.1:8000/v1", " "),
        HttpConfig {
            max_concurrency: 0,
            ..HttpConfig::new("http://127.0.0.1:8000/v1", "m")
        },
        HttpConfig {
            request_timeout_secs: f64::NAN,
            ..HttpConfig::new("http://127.0.0.1:8000/v1", "m")
        },
    ];
    for config in bad {
        assert!(HttpBackend::new(config.clone()).is_err(), "{config:?}");
    }
    let toml_like: HttpConfig = serde_json::from_str(
        r#"{"base_url": "http://10.0.0.5:8000/v1", "model": "Qwen/Qwen2.5-7B-Instruct",
            "max_concurrency": 64, "endpoint": "chat"}"#,
    )
    .unwrap();
    assert_eq!(toml_like.api_key_env, "OPENAI_API_KEY");
    assert_eq!(toml_like.choice_top_logprobs, 20);
    assert!(serde_json::from_str::<HttpConfig>(r#"{"api_key": "sk-1"}"#).is_err());
}

#[test]
fn endpoint_modes_refuse_prompts_the_server_cannot_take() {
    use mirrorsim_llm::http::EndpointMode;
    use mirrorsim_llm::ChatMessage;
    // Nothing listens here: a refusal must come before any request is sent.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let chat_only = HttpBackend::new(HttpConfig {
        endpoint: EndpointMode::Chat,
        max_retries: 0,
        ..HttpConfig::new(format!("http://{addr}/v1"), "m")
    })
    .unwrap();
    match chat_only.generate(&text_request()) {
        Err(LlmError::BadRequest(message)) => {
            assert!(message.contains("endpoint mode `chat`"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let completions_only = HttpBackend::new(HttpConfig {
        endpoint: EndpointMode::Completions,
        max_retries: 0,
        ..HttpConfig::new(format!("http://{addr}/v1"), "m")
    })
    .unwrap();
    let chat = vec![GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", "hi")],
            continue_final: false,
        },
        params: SamplingParams::default(),
    }];
    assert!(matches!(
        completions_only.generate(&chat),
        Err(LlmError::BadRequest(_))
    ));
    assert_eq!(completions_only.stats().attempts, 0);
    assert_eq!(chat_only.stats().attempts, 0);
}
