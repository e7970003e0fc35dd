//! The routes of the simulator service and the OpenAPI document derived from them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mirrorsim_eval::slate::{SlateOutcome, SlateRequest, SlateSimulator};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use super::api::{
    ErrorResponse, Health, ModelInfo, OptionProbability, SampledChoice, SimulateBatchRequest,
    SimulateBatchResponse, SimulateRequest, SimulateResponse,
};
use super::batching::SimulationQueue;
use super::error::ApiError;
use super::validate::{slate_request, RequestLimits};

/// Every route the service answers, as `(method, path)`.
pub const ROUTES: [(&str, &str); 5] = [
    ("GET", "/healthz"),
    ("GET", "/v1/model"),
    ("POST", "/v1/simulate"),
    ("POST", "/v1/simulate/batch"),
    ("GET", "/openapi.json"),
];

pub(super) struct ServiceState {
    pub queue: SimulationQueue,
    pub info: ModelInfo,
    pub limits: RequestLimits,
    pub max_batch_requests: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub simulator: Arc<SlateSimulator<'static>>,
    pub openapi_json: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mirrorsim simulator",
        description = "A preference-aligned LLM user simulator: give it a user and a slate of \
                       items, get the probability that the user chooses each item, sampled \
                       choices and, in rationale mode, the simulated user's reasons."
    ),
    paths(healthz, model_info, simulate, simulate_batch, openapi_document)
)]
pub struct ApiDoc;

pub(super) fn router(state: Arc<ServiceState>) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model_info))
        .route("/v1/simulate", post(simulate))
        .route("/v1/simulate/batch", post(simulate_batch))
        .route("/openapi.json", get(openapi_document))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Liveness: answers as soon as the server listens.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// The simulator served: model, adapter, prior, catalog, limits and version.
#[utoipa::path(get, path = "/v1/model", responses((status = 200, body = ModelInfo)))]
async fn model_info(State(state): State<Arc<ServiceState>>) -> Json<ModelInfo> {
    Json(state.info.clone())
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service", content_type = "application/json"))
)]
async fn openapi_document(State(state): State<Arc<ServiceState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
        .into_response()
}

/// One user facing one slate: the choice distribution over the slate, `n` sampled choices and,
/// in rationale mode, their rationales. Requests from concurrent clients are batched together.
#[utoipa::path(
    post,
    path = "/v1/simulate",
    request_body = SimulateRequest,
    responses(
        (status = 200, body = SimulateResponse),
        (status = 400, description = "The body is not JSON of this shape", body = ErrorResponse),
        (status = 404, description = "An unknown user or item id", body = ErrorResponse),
        (status = 413, description = "The body is over the size limit", body = ErrorResponse),
        (status = 422, description = "An empty, oversized or duplicated slate, or `n` out of range", body = ErrorResponse),
        (status = 503, description = "Too many requests waiting", body = ErrorResponse),
        (status = 504, description = "Not finished within the request timeout", body = ErrorResponse),
    )
)]
async fn simulate(
    State(state): State<Arc<ServiceState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SimulateResponse>, ApiError> {
    let request: SimulateRequest = parse_body(&state, body)?;
    let slate = slate_request(state.simulator.catalog(), &request, &state.limits)?;
    let outcome = run_requests(&state, vec![slate.clone()])
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("the simulator answered no outcome"))?;
    Ok(Json(response(&state, &request, &slate, outcome)?))
}

/// Many decisions in one call, answered in order; they are batched with each other and with
/// other clients' requests. A request that fails validation fails the whole call, naming it.
#[utoipa::path(
    post,
    path = "/v1/simulate/batch",
    request_body = SimulateBatchRequest,
    responses(
        (status = 200, body = SimulateBatchResponse),
        (status = 400, description = "The body is not JSON of this shape", body = ErrorResponse),
        (status = 404, description = "An unknown user or item id", body = ErrorResponse),
        (status = 413, description = "The body is over the size limit", body = ErrorResponse),
        (status = 422, description = "No requests, too many, or one is invalid", body = ErrorResponse),
        (status = 503, description = "Too many requests waiting", body = ErrorResponse),
        (status = 504, description = "Not finished within the request timeout", body = ErrorResponse),
    )
)]
async fn simulate_batch(
    State(state): State<Arc<ServiceState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SimulateBatchResponse>, ApiError> {
    let batch: SimulateBatchRequest = parse_body(&state, body)?;
    if batch.requests.is_empty() {
        return Err(ApiError::invalid("requests", "the batch holds no requests"));
    }
    if batch.requests.len() > state.max_batch_requests {
        return Err(ApiError::invalid(
            "requests",
            format!(
                "the batch holds {} requests; at most {} are accepted in one call (the server's \
                 --max-batch-requests); split it",
                batch.requests.len(),
                state.max_batch_requests
            ),
        ));
    }
    let slates = batch
        .requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            slate_request(state.simulator.catalog(), request, &state.limits)
                .map_err(|err| err.within(&format!("requests[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes = run_requests(&state, slates.clone()).await?;
    let results = batch
        .requests
        .iter()
        .zip(&slates)
        .zip(outcomes)
        .map(|((request, slate), outcome)| response(&state, request, slate, outcome))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(SimulateBatchResponse { results }))
}

async fn not_found() -> ApiError {
    let routes: Vec<String> = ROUTES
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "not_found",
        field: None,
        message: format!("no such route; this service offers {}", routes.join(", ")),
    }
}

fn parse_body<T: DeserializeOwned>(
    state: &ServiceState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(state.max_body_bytes)
        } else {
            ApiError {
                status: rejection.status(),
                kind: "invalid_request",
                field: None,
                message: rejection.body_text(),
            }
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON body: {err}")))
}

async fn run_requests(
    state: &ServiceState,
    requests: Vec<SlateRequest>,
) -> Result<Vec<SlateOutcome>, ApiError> {
    let expected = requests.len();
    let outcomes = tokio::time::timeout(state.request_timeout, state.queue.simulate(requests))
        .await
        .map_err(|_| {
            ApiError::timeout(format!(
                "the simulation did not finish within {:.1} s (the server's \
                 --request-timeout-s); send fewer or smaller requests, or use direct mode",
                state.request_timeout.as_secs_f64()
            ))
        })??;
    if outcomes.len() != expected {
        return Err(ApiError::internal(format!(
            "the simulator answered {} outcomes for {expected} requests",
            outcomes.len()
        )));
    }
    Ok(outcomes)
}

fn response(
    state: &ServiceState,
    request: &SimulateRequest,
    slate: &SlateRequest,
    outcome: SlateOutcome,
) -> Result<SimulateResponse, ApiError> {
    let options = outcome.item_ids.len();
    if outcome.labels.len() != options || outcome.distribution.len() != options {
        return Err(ApiError::internal(format!(
            "the simulator answered {options} options, {} labels and {} probabilities",
            outcome.labels.len(),
            outcome.distribution.len()
        )));
    }
    let hybrid = state.simulator.prior().is_some() && outcome.llm_distribution.len() == options;
    let distribution = outcome
        .item_ids
        .iter()
        .zip(&outcome.labels)
        .zip(&outcome.distribution)
        .enumerate()
        .map(
            |(slot, ((item_id, label), &probability))| OptionProbability {
                item_id: item_id.clone(),
                label: label.clone(),
                probability,
                llm_probability: hybrid.then(|| outcome.llm_distribution[slot]),
            },
        )
        .collect();
    let choices = outcome
        .samples
        .iter()
        .enumerate()
        .map(|(i, sample)| {
            let option = sample.filter(|&slot| slot < options);
            SampledChoice {
                item_id: option.map(|slot| outcome.item_ids[slot].clone()),
                label: option.map(|slot| outcome.labels[slot].clone()),
                rationale: outcome.rationales.get(i).cloned(),
            }
        })
        .collect::<Vec<_>>();
    let choice = choices
        .first()
        .cloned()
        .ok_or_else(|| ApiError::internal("the simulator drew no sample"))?;
    Ok(SimulateResponse {
        model: state.info.model.clone(),
        user_id: slate.user.id.clone(),
        mode: request.mode,
        seed: request.seed,
        distribution,
        choice,
        choices,
        missing_labels: outcome.missing_labels,
        prompt_tokens: outcome.prompt_tokens,
    })
}
