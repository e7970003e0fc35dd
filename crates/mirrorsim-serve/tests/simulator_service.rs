//! The simulator service end to end over loopback, with the real SmolLM2-135M-Instruct engine and
//! the ml-latest-small catalog committed in data/: round trips agree with the core called
//! directly, every validation error has its status and message, a batch equals its requests sent
//! singly (and concurrently, through the dynamic batcher), seeds reproduce, the OpenAPI document
//! lists every route, timeouts answer 504 and shutdown finishes the requests in flight.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mirrorsim_data::scenes::slate::SlateCatalog;
use mirrorsim_data::scenes::PromptSet;
use mirrorsim_data::{read_source, ReadOptions, SourceSpec};
use mirrorsim_eval::hybrid::HybridWeights;
use mirrorsim_eval::simulate::Mode;
use mirrorsim_eval::slate::{SlatePrior, SlateRequest, SlateSimulator};
use mirrorsim_eval::{BaselineConfig, BaselineKind, FittedBaselines};
use mirrorsim_llm::default_model::default_model_path;
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::Backend;
use mirrorsim_serve::simulator::api::PriorInfo;
use mirrorsim_serve::simulator::{
    spawn, RunningSimulator, ServiceDescription, SimulatorOptions, SimulatorService, ROUTES,
};
use serde_json::{json, Value};

const TOLERANCE: f64 = 1e-6;
/// Short histories keep the prompts, and the tests on a shared 2-core machine, short.
const HISTORY_LEN: usize = 3;
/// Catalog items of ml-latest-small: Toy Story, Jumanji, Star Wars, The Matrix, Forrest Gump.
const SLATE: [&str; 5] = ["1", "2", "260", "2571", "356"];

struct Fixture {
    simulator: Arc<SlateSimulator<'static>>,
    backend: Arc<dyn Backend>,
    model_id: String,
    server: RunningSimulator,
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn demo_catalog_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/ml-latest-small")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let spec = SourceSpec {
            format: "movielens".to_owned(),
            path: demo_catalog_path(),
        };
        let (catalog, _) = read_source(&spec, &ReadOptions::default()).unwrap();
        let catalog: &'static SlateCatalog = Box::leak(Box::new(
            SlateCatalog::new(catalog, PromptSet::embedded().unwrap(), HISTORY_LEN).unwrap(),
        ));
        let model_path = default_model_path().expect("the default model (scripts/fetch-model.sh)");
        let engine = LocalEngine::load(&model_path, EngineOptions::default()).unwrap();
        let model_id = engine.model_id();
        let backend: Arc<dyn Backend> = Arc::new(engine);
        let simulator = Arc::new(SlateSimulator::new(catalog, Arc::clone(&backend)));
        let server = spawn(loopback(), service(&simulator, patient())).unwrap();
        assert!(server.local_addr().ip().is_loopback());
        Fixture {
            simulator,
            backend,
            model_id,
            server,
        }
    })
}

/// The default options with a timeout long enough for every test running at once on a loaded
/// machine.
fn patient() -> SimulatorOptions {
    SimulatorOptions {
        request_timeout: Duration::from_secs(900),
        ..SimulatorOptions::default()
    }
}

fn service(
    simulator: &Arc<SlateSimulator<'static>>,
    options: SimulatorOptions,
) -> SimulatorService {
    SimulatorService {
        simulator: Arc::clone(simulator),
        description: ServiceDescription::default(),
        options,
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

fn post_bytes(base: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let response = client()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{path} answered {status} with non-JSON {text:?}: {err}"));
    (status, value)
}

fn post(path: &str, body: &Value) -> (u16, Value) {
    post_bytes(
        &fixture().server.base_url(),
        path,
        serde_json::to_vec(body).unwrap(),
    )
}

fn get(path: &str) -> (u16, Value) {
    let response = client()
        .get(format!("{}{path}", fixture().server.base_url()))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

fn request(user: &str, slate: &[&str], n: usize, seed: u64) -> Value {
    json!({"user_id": user, "item_ids": slate, "n": n, "seed": seed})
}

/// The core request the service should build for `request(user, slate, n, seed)`.
fn core_request(user: &str, slate: &[&str], n: usize, seed: u64) -> SlateRequest {
    let catalog = fixture().simulator.catalog();
    SlateRequest {
        user: catalog.user(user, None).unwrap(),
        items: slate.iter().map(|id| catalog.item(id).unwrap()).collect(),
        none_option: false,
        mode: Mode::Direct,
        samples: n,
        seed,
    }
}

fn probabilities(response: &Value) -> Vec<f64> {
    response["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|option| option["probability"].as_f64().unwrap())
        .collect()
}

fn chosen_ids(response: &Value) -> Vec<Value> {
    response["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|choice| choice["item_id"].clone())
        .collect()
}

fn assert_close(got: &[f64], expected: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= TOLERANCE,
            "{what}: option {i}: {g} vs {e} (more than {TOLERANCE} apart)"
        );
    }
}

#[test]
fn a_round_trip_sums_to_one_and_matches_the_core_called_directly() {
    let (status, answer) = post("/v1/simulate", &request("1", &SLATE, 4, 11));
    assert_eq!(status, 200, "{answer}");
    let distribution = probabilities(&answer);
    let total: f64 = distribution.iter().sum();
    assert!((total - 1.0).abs() <= TOLERANCE, "sums to {total}");
    let ids: Vec<&str> = answer["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, SLATE);
    let labels: Vec<&str> = answer["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["A", "B", "C", "D", "E"]);
    assert_eq!(answer["user_id"], "1");
    assert_eq!(answer["model"], fixture().model_id.as_str());
    assert_eq!(answer["mode"], "direct");
    assert_eq!(answer["choices"].as_array().unwrap().len(), 4);
    assert_eq!(answer["choice"], answer["choices"][0]);
    assert!(answer["prompt_tokens"].as_u64().unwrap() > 0);

    let direct = fixture()
        .simulator
        .simulate(&[core_request("1", &SLATE, 4, 11)])
        .unwrap();
    assert_close(&distribution, &direct[0].distribution, "HTTP vs core");
    let core_choices: Vec<Value> = direct[0]
        .samples
        .iter()
        .map(|s| s.map_or(Value::Null, |slot| json!(SLATE[slot])))
        .collect();
    assert_eq!(chosen_ids(&answer), core_choices);
}

#[test]
fn inline_users_and_items_round_trip_with_the_none_option() {
    let body = json!({
        "user": {
            "id": "visitor-7",
            "attributes": {"age": "25-34"},
            "history": [
                {"item_id": "260", "rating": 5.0, "seconds_ago": 86400},
                {"item": {"id": "x1", "title": "Alien (1979)", "details": "genres: Horror|Sci-Fi"}, "rating": 4.5}
            ]
        },
        "items": [
            {"id": "sku-1", "title": "Aliens (1986)", "details": "genres: Action|Sci-Fi"},
            {"id": "sku-2", "title": "Sense and Sensibility (1995)"},
            {"id": "sku-3", "title": "Heat (1995)", "details": "genres: Crime|Thriller"}
        ],
        "none_option": true,
        "n": 3,
        "seed": 5
    });
    let (status, answer) = post("/v1/simulate", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user_id"], "visitor-7");
    let ids: Vec<&str> = answer["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sku-1", "sku-2", "sku-3", "__none__"]);
    let total: f64 = probabilities(&answer).iter().sum();
    assert!((total - 1.0).abs() <= TOLERANCE, "sums to {total}");
    for choice in chosen_ids(&answer) {
        assert!(ids.contains(&choice.as_str().unwrap()), "{choice}");
    }
}

#[test]
fn the_same_seed_gives_the_same_sample() {
    let first = post("/v1/simulate", &request("42", &SLATE, 32, 2024));
    let second = post("/v1/simulate", &request("42", &SLATE, 32, 2024));
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(first, second);
    let (status, other) = post("/v1/simulate", &request("42", &SLATE, 32, 2025));
    assert_eq!(status, 200, "{other}");
    assert_close(
        &probabilities(&other),
        &probabilities(&first.1),
        "the seed does not change the distribution",
    );
    // 32 draws per seed: with no option above 0.8, two seeds drawing the same 32 choices has
    // a chance below 0.8^32 < 1e-3.
    let max = probabilities(&other).into_iter().fold(0.0, f64::max);
    if max < 0.8 {
        assert_ne!(chosen_ids(&other), chosen_ids(&first.1));
    }
}

#[test]
fn a_batch_equals_the_same_requests_sent_singly() {
    let requests = [
        request("1", &SLATE, 3, 1),
        request("7", &["318", "593", "2959"], 2, 9),
        json!({"user_id": "15", "item_ids": ["1", "2"], "none_option": true, "n": 5, "seed": 3}),
    ];
    let (status, batch) = post("/v1/simulate/batch", &json!({ "requests": requests }));
    assert_eq!(status, 200, "{batch}");
    let results = batch["results"].as_array().unwrap();
    assert_eq!(results.len(), requests.len());
    for (i, (request, batched)) in requests.iter().zip(results).enumerate() {
        let (status, single) = post("/v1/simulate", request);
        assert_eq!(status, 200, "{single}");
        assert_close(
            &probabilities(batched),
            &probabilities(&single),
            &format!("request {i}: batch vs single"),
        );
        assert_eq!(chosen_ids(batched), chosen_ids(&single), "request {i}");
        assert_eq!(batched["user_id"], single["user_id"]);
    }
}

#[test]
fn concurrent_clients_batched_together_get_their_own_answers() {
    let users = ["3", "5", "8", "13"];
    let singles: Vec<Value> = users
        .iter()
        .map(|user| {
            let (status, answer) = post("/v1/simulate", &request(user, &SLATE, 2, 4));
            assert_eq!(status, 200, "{answer}");
            answer
        })
        .collect();
    let concurrent: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .iter()
            .map(|user| scope.spawn(move || post("/v1/simulate", &request(user, &SLATE, 2, 4))))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                let (status, answer) = handle.join().unwrap();
                assert_eq!(status, 200, "{answer}");
                answer
            })
            .collect()
    });
    for ((user, single), together) in users.iter().zip(&singles).zip(&concurrent) {
        assert_eq!(together["user_id"], *user);
        assert_close(
            &probabilities(together),
            &probabilities(single),
            &format!("user {user}: concurrent vs alone"),
        );
        assert_eq!(chosen_ids(together), chosen_ids(single), "user {user}");
    }
}

/// Posts `body` and checks the status, the error type, the field at fault and a piece of the
/// message.
fn assert_refused(path: &str, body: Vec<u8>, status: u16, field: Option<&str>, message: &str) {
    let (got, answer) = post_bytes(&fixture().server.base_url(), path, body);
    assert_eq!(got, status, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["status"], status, "{answer}");
    let text = error["message"].as_str().unwrap();
    assert!(
        text.contains(message),
        "{path}: expected {message:?} in {text:?}"
    );
    match field {
        Some(field) => assert_eq!(error["field"], field, "{answer}"),
        None => assert!(error["field"].is_null(), "{answer}"),
    }
}

fn bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

#[test]
fn every_validation_error_has_its_status_and_message() {
    let simulate = "/v1/simulate";
    // Malformed bodies: 400.
    assert_refused(
        simulate,
        b"{\"user_id\": \"1\",".to_vec(),
        400,
        None,
        "invalid JSON body",
    );
    assert_refused(simulate, b"".to_vec(), 400, None, "invalid JSON body");
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "item_ids": ["1"], "n": "five"})),
        400,
        None,
        "invalid type",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "slate": ["1"]})),
        400,
        None,
        "unknown field `slate`",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "item_ids": ["1"], "mode": "verbose"})),
        400,
        None,
        "unknown variant `verbose`",
    );
    // Unknown ids: 404.
    assert_refused(
        simulate,
        bytes(request("no-such-user", &SLATE, 1, 0)),
        404,
        Some("user_id"),
        "user_id \"no-such-user\" is not a user of the served catalog",
    );
    assert_refused(
        simulate,
        bytes(request("1", &["1", "999999999"], 1, 0)),
        404,
        Some("item_ids[1]"),
        "item id \"999999999\" is not an item of the served catalog",
    );
    assert_refused(
        simulate,
        bytes(json!({"user": {"history": [{"item_id": "nope"}]}, "item_ids": ["1"]})),
        404,
        Some("user.history[0].item_id"),
        "item id \"nope\"",
    );
    // Semantically wrong requests: 422.
    assert_refused(
        simulate,
        bytes(request("1", &[], 1, 0)),
        422,
        Some("item_ids"),
        "the slate is empty",
    );
    let many: Vec<String> = (1..=27).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_refused(
        simulate,
        bytes(request("1", &many, 1, 0)),
        422,
        Some("item_ids"),
        "the slate has 27 items; at most 26 are accepted",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "item_ids": &many[..26], "none_option": true})),
        422,
        Some("item_ids"),
        "at most 25 are accepted with `none_option`",
    );
    assert_refused(
        simulate,
        bytes(request("1", &["1", "2", "1"], 1, 0)),
        422,
        Some("item_ids[2]"),
        "item \"1\" appears twice in the slate (positions 0 and 2)",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "items": [
            {"id": "a", "title": "A"}, {"id": "a", "title": "B"}
        ]})),
        422,
        Some("items[1]"),
        "appears twice",
    );
    assert_refused(
        simulate,
        bytes(request("1", &["1", "__none__"], 1, 0)),
        422,
        Some("item_ids[1]"),
        "reserved for the \"none of these\" option",
    );
    assert_refused(
        simulate,
        bytes(request("1", &SLATE, 0, 0)),
        422,
        Some("n"),
        "n is 0; it must be between 1 and 32",
    );
    assert_refused(
        simulate,
        bytes(request("1", &SLATE, 33, 0)),
        422,
        Some("n"),
        "n is 33; it must be between 1 and 32",
    );
    assert_refused(
        simulate,
        bytes(json!({"item_ids": ["1"]})),
        422,
        Some("user_id"),
        "no user",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "user": {}, "item_ids": ["1"]})),
        422,
        Some("user"),
        "not both",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1"})),
        422,
        Some("item_ids"),
        "no slate",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "item_ids": ["1"], "items": [{"id": "1", "title": "x"}]})),
        422,
        Some("items"),
        "not both",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "items": [{"id": "a", "title": " "}]})),
        422,
        Some("items[0].title"),
        "empty title",
    );
    let long_history: Vec<Value> = (0..101).map(|_| json!({"item_id": "1"})).collect();
    assert_refused(
        simulate,
        bytes(json!({"user": {"history": long_history}, "item_ids": ["1"]})),
        422,
        Some("user.history"),
        "the history has 101 entries; at most 100",
    );
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "items": [
            {"id": "a", "title": "A", "details": "d".repeat(19_998)},
            {"id": "b", "title": "B"}
        ]})),
        422,
        Some("items"),
        "the inline user and items hold 20002 characters of text; at most 20000",
    );
    assert_refused(
        simulate,
        bytes(
            json!({"user": {"history": [{"item_id": "1", "review": "r".repeat(20_001)}]},
                     "item_ids": ["1"]}),
        ),
        422,
        Some("user"),
        "--max-inline-chars",
    );
    // Over the body limit (1 MiB): 413.
    let padding = "x".repeat(2 * 1024 * 1024);
    assert_refused(
        simulate,
        bytes(json!({"user_id": "1", "item_ids": ["1"], "padding": padding})),
        413,
        None,
        "larger than the limit of 1048576 bytes",
    );
    // Batches.
    let batch = "/v1/simulate/batch";
    assert_refused(
        batch,
        bytes(json!({"requests": []})),
        422,
        Some("requests"),
        "the batch holds no requests",
    );
    let too_many: Vec<Value> = (0..65).map(|_| request("1", &SLATE, 1, 0)).collect();
    assert_refused(
        batch,
        bytes(json!({ "requests": too_many })),
        422,
        Some("requests"),
        "the batch holds 65 requests; at most 64",
    );
    assert_refused(
        batch,
        bytes(json!({"requests": [request("1", &SLATE, 1, 0), request("1", &["zzz"], 1, 0)]})),
        404,
        Some("requests[1].item_ids[0]"),
        "requests[1]: item id \"zzz\"",
    );
    assert_refused(
        batch,
        bytes(json!([request("1", &SLATE, 1, 0)])),
        400,
        None,
        "invalid JSON body",
    );
    // Unknown routes: 404 naming the routes there are.
    assert_refused(
        "/v1/simulate/nope",
        bytes(json!({})),
        404,
        None,
        "POST /v1/simulate/batch",
    );
    // The service is still healthy after all of it.
    assert_eq!(get("/healthz"), (200, json!({"status": "ok"})));
}

#[test]
fn the_model_route_describes_the_simulator() {
    let (status, info) = get("/v1/model");
    assert_eq!(status, 200);
    assert_eq!(info["model"], fixture().model_id.as_str());
    assert!(info["adapter"].is_null());
    assert!(info["prior"].is_null());
    assert!(info["hint_prior"].is_null());
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let catalog = fixture().simulator.catalog().catalog();
    assert_eq!(info["catalog"]["name"], catalog.name.as_str());
    assert_eq!(info["catalog"]["users"], catalog.users.len());
    assert_eq!(info["catalog"]["items"], catalog.items.len());
    // The committed ml-latest-small is the 2016 snapshot: 671 users, 9,125 movies.
    assert_eq!((catalog.users.len(), catalog.items.len()), (671, 9125));
    assert_eq!(info["limits"]["max_slate_items"], 26);
    assert_eq!(info["limits"]["max_samples"], 32);
    assert_eq!(info["limits"]["batch_window_ms"], 5.0);
}

#[test]
fn the_openapi_document_lists_every_route() {
    let (status, document) = get("/openapi.json");
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(documented, served);
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for schema in [
        "SimulateRequest",
        "SimulateResponse",
        "SimulateBatchRequest",
        "SimulateBatchResponse",
        "InlineUser",
        "InlineItem",
        "ModelInfo",
        "ErrorResponse",
    ] {
        assert!(schemas.contains_key(schema), "no schema {schema}");
    }
    let request_fields = schemas["SimulateRequest"]["properties"]
        .as_object()
        .unwrap();
    for field in [
        "user_id",
        "user",
        "item_ids",
        "items",
        "mode",
        "n",
        "seed",
        "none_option",
    ] {
        assert!(
            request_fields.contains_key(field),
            "SimulateRequest lacks {field}"
        );
    }
    // Every documented GET route answers; no route in ROUTES falls through to the 404.
    for (method, path) in ROUTES {
        if method == "GET" {
            assert_eq!(get(path).0, 200, "GET {path}");
        } else {
            let (status, _) = post(path, &json!({}));
            assert_ne!(status, 404, "POST {path} is not routed");
        }
    }
}

#[test]
fn a_request_over_the_timeout_is_answered_504() {
    let options = SimulatorOptions {
        request_timeout: Duration::from_millis(1),
        ..SimulatorOptions::default()
    };
    let server = spawn(loopback(), service(&fixture().simulator, options)).unwrap();
    let (status, answer) = post_bytes(
        &server.base_url(),
        "/v1/simulate",
        bytes(request("1", &SLATE, 1, 0)),
    );
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["type"], "timeout");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did not finish within"));
    server.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_the_requests_in_flight() {
    let server = spawn(loopback(), service(&fixture().simulator, patient())).unwrap();
    let base = server.base_url();
    let addr = server.local_addr();
    let in_flight = std::thread::spawn(move || {
        let body = json!({"requests": (0..2)
            .map(|i| request(&(i + 100).to_string(), &SLATE, 1, i))
            .collect::<Vec<_>>()});
        post_bytes(&base, "/v1/simulate/batch", bytes(body))
    });
    // Let the request reach the engine, then stop the server while it is being answered.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    server.shutdown().unwrap();
    let (status, answer) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server still accepts connections after shutdown"
    );
    assert_eq!(answer["results"].as_array().unwrap().len(), 2);
    eprintln!(
        "shutdown waited {:.2} s for the request in flight",
        started.elapsed().as_secs_f64()
    );
}

fn knn_prior(weights: HybridWeights) -> SlatePrior<'static> {
    let catalog = fixture().simulator.catalog().catalog();
    SlatePrior {
        kind: BaselineKind::Knn,
        weights,
        baselines: FittedBaselines::fit(catalog, None, &BaselineConfig::default(), false).unwrap(),
    }
}

#[test]
fn a_hybrid_service_answers_the_hybrid_and_the_llm_beneath_it() {
    let weights = HybridWeights {
        llm_weight: 0.7,
        prior_weight: 1.3,
        prior_temperature: 0.5,
    };
    let catalog = fixture().simulator.catalog();
    let hybrid = Arc::new(
        SlateSimulator::new(catalog, Arc::clone(&fixture().backend)).with_prior(knn_prior(weights)),
    );
    let prior = PriorInfo {
        kind: "knn".to_owned(),
        llm_weight: weights.llm_weight,
        prior_weight: weights.prior_weight,
        prior_temperature: weights.prior_temperature,
        weights_file: "test".to_owned(),
    };
    let server = spawn(
        loopback(),
        SimulatorService {
            simulator: Arc::clone(&hybrid),
            description: ServiceDescription {
                adapter: None,
                prior: Some(prior.clone()),
            },
            options: patient(),
        },
    )
    .unwrap();
    let info: Value = client()
        .get(format!("{}/v1/model", server.base_url()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["prior"], serde_json::to_value(&prior).unwrap());

    let (status, answer) = post_bytes(
        &server.base_url(),
        "/v1/simulate",
        bytes(request("1", &SLATE, 3, 8)),
    );
    assert_eq!(status, 200, "{answer}");
    let direct = hybrid
        .simulate(&[core_request("1", &SLATE, 3, 8)])
        .unwrap()
        .remove(0);
    assert_close(
        &probabilities(&answer),
        &direct.distribution,
        "HTTP vs core hybrid",
    );
    let total: f64 = probabilities(&answer).iter().sum();
    assert!((total - 1.0).abs() <= TOLERANCE, "sums to {total}");
    let llm: Vec<f64> = answer["distribution"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["llm_probability"].as_f64().unwrap())
        .collect();
    assert_close(&llm, &direct.llm_distribution, "the LLM beneath the hybrid");
    assert!(
        llm.iter()
            .zip(&direct.distribution)
            .any(|(l, h)| (l - h).abs() > 1e-3),
        "the prior changed nothing: {llm:?}"
    );
    // The plain service answers no llm_probability.
    let (_, plain) = post("/v1/simulate", &request("1", &SLATE, 1, 8));
    assert!(
        plain["distribution"][0].get("llm_probability").is_none(),
        "{plain}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_full_queue_is_answered_503_and_the_queued_requests_still_finish() {
    let options = SimulatorOptions {
        max_queued: 1,
        max_engine_batch: 1,
        batch_window: Duration::ZERO,
        ..patient()
    };
    let server = spawn(loopback(), service(&fixture().simulator, options)).unwrap();
    let base = server.base_url();
    // Eight prompts keep the engine busy for seconds; the next call waits in the one-slot queue.
    let running = {
        let base = base.clone();
        std::thread::spawn(move || {
            let body = json!({"requests": (0..8)
                .map(|i| request(&(i + 200).to_string(), &SLATE, 1, i))
                .collect::<Vec<_>>()});
            post_bytes(&base, "/v1/simulate/batch", bytes(body))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let queued = {
        let base = base.clone();
        std::thread::spawn(move || {
            post_bytes(&base, "/v1/simulate", bytes(request("300", &SLATE, 1, 0)))
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (status, answer) = post_bytes(&base, "/v1/simulate", bytes(request("301", &SLATE, 1, 0)));
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["type"], "overloaded");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the simulator is busy"));
    let (status, answer) = running.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = queued.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    server.shutdown().unwrap();
}

#[test]
fn a_prompt_over_the_model_context_is_answered_422() {
    let options = SimulatorOptions {
        max_inline_chars: 1_000_000,
        ..patient()
    };
    let server = spawn(loopback(), service(&fixture().simulator, options)).unwrap();
    let details = "drama ".repeat(10_000);
    let body = json!({"user_id": "1", "items": [
        {"id": "long", "title": "A very long description", "details": details},
        {"id": "short", "title": "Heat (1995)"}
    ]});
    let started = Instant::now();
    let (status, answer) = post_bytes(&server.base_url(), "/v1/simulate", bytes(body));
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than the model's context"),
        "{answer}"
    );
    eprintln!(
        "refused an over-long prompt in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // The service still answers.
    let (status, answer) = post_bytes(
        &server.base_url(),
        "/v1/simulate",
        bytes(request("1", &["1", "2"], 1, 0)),
    );
    assert_eq!(status, 200, "{answer}");
    server.shutdown().unwrap();
}
