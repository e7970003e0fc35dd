//! The simulator service (`mirrorsim serve`): a user and a slate in, the simulated user's
//! choice distribution, sampled choices and rationales out, over HTTP JSON.
//!
//! Routes: `POST /v1/simulate`, `POST /v1/simulate/batch`, `GET /healthz`, `GET /v1/model`,
//! `GET /openapi.json` (derived from the handlers and types with utoipa). Requests are checked
//! against the catalog and the limits before they reach the model, and refused with a 4xx and a
//! JSON message naming the field at fault. Valid requests from all clients are batched over a
//! short window onto one [`SlateSimulator::simulate`] call (see [`batching`]).
//!
//! Start it with [`bind`] + [`BoundSimulator::run_until`] inside a tokio runtime, with
//! [`serve_until_signal`] (what the CLI runs) or with [`spawn`], which serves from a background
//! thread (bind port 0 in tests).

pub mod api;
pub mod batching;
pub mod error;
pub mod routes;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mirrorsim_eval::slate::SlateSimulator;
use utoipa::OpenApi;

use crate::ServeError;
use api::{CatalogInfo, LimitsInfo, ModelInfo, PriorInfo};
use batching::{BatchingOptions, SimulationQueue};
use routes::ServiceState;
use validate::RequestLimits;

pub use routes::{ApiDoc, ROUTES};

/// How the service batches and bounds requests.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatorOptions {
    /// How long the batcher waits for other clients' requests after the first of a batch.
    pub batch_window: Duration,
    /// Most requests in one call to the engine.
    pub max_engine_batch: usize,
    /// Most calls waiting for the engine; more are answered 503.
    pub max_queued: usize,
    /// Most requests in one `/v1/simulate/batch` call.
    pub max_batch_requests: usize,
    /// Most items in a slate (never more than the option letters allow).
    pub max_slate_items: usize,
    /// Largest `n`.
    pub max_samples: usize,
    /// Most entries in an inline user's history.
    pub max_history: usize,
    /// Most characters of inline text in one request (it bounds the prompt).
    pub max_inline_chars: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// A request not answered within this is answered 504.
    pub request_timeout: Duration,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            batch_window: Duration::from_millis(5),
            max_engine_batch: 32,
            max_queued: 256,
            max_batch_requests: 64,
            max_slate_items: mirrorsim_data::scenes::MAX_OPTIONS,
            max_samples: 32,
            max_history: 100,
            max_inline_chars: 20_000,
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// What `GET /v1/model` says beyond what the simulator knows itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceDescription {
    /// The LoRA adapter merged into the model, as given.
    pub adapter: Option<String>,
    /// The hybrid's prior, when one is applied.
    pub prior: Option<PriorInfo>,
}

/// The simulator and how to serve it. The simulator borrows its catalog for `'static`: a
/// service lives until the process ends, so the CLI leaks the catalog (`Box::leak`) once.
pub struct SimulatorService {
    pub simulator: Arc<SlateSimulator<'static>>,
    pub description: ServiceDescription,
    pub options: SimulatorOptions,
}

impl SimulatorService {
    fn limits(&self) -> RequestLimits {
        RequestLimits {
            max_slate_items: self.options.max_slate_items,
            max_samples: self.options.max_samples,
            max_history: self.options.max_history,
            max_inline_chars: self.options.max_inline_chars,
        }
    }

    /// What `GET /v1/model` answers.
    pub fn model_info(&self) -> ModelInfo {
        let catalog = self.simulator.catalog().catalog();
        let options = &self.options;
        ModelInfo {
            model: self.simulator.model_id(),
            adapter: self.description.adapter.clone(),
            prior: self.description.prior.clone(),
            hint_prior: self.simulator.hint().map(|h| {
                h.kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            catalog: CatalogInfo {
                name: catalog.name.clone(),
                users: catalog.users.len(),
                items: catalog.items.len(),
            },
            limits: LimitsInfo {
                max_slate_items: validate::max_slate_items(&self.limits(), false),
                max_samples: options.max_samples,
                max_history: options.max_history,
                max_inline_chars: options.max_inline_chars,
                max_batch_requests: options.max_batch_requests,
                max_body_bytes: options.max_body_bytes,
                request_timeout_s: options.request_timeout.as_secs_f64(),
                batch_window_ms: options.batch_window.as_secs_f64() * 1000.0,
            },
        }
    }
}

/// The OpenAPI document of the service, as JSON.
pub fn openapi_json() -> Result<String, ServeError> {
    ApiDoc::openapi()
        .to_pretty_json()
        .map_err(|err| ServeError::Runtime(std::io::Error::other(err)))
}

/// The routes over `service`.
///
/// # Panics
/// Outside a tokio runtime: it starts the batching worker on the current one.
pub fn router(service: SimulatorService) -> Result<axum::Router, ServeError> {
    let state = ServiceState {
        info: service.model_info(),
        limits: service.limits(),
        max_batch_requests: service.options.max_batch_requests.max(1),
        max_body_bytes: service.options.max_body_bytes,
        request_timeout: service.options.request_timeout,
        simulator: Arc::clone(&service.simulator),
        openapi_json: openapi_json()?,
        queue: SimulationQueue::start(
            Arc::clone(&service.simulator),
            BatchingOptions {
                window: service.options.batch_window,
                max_batch_requests: service.options.max_engine_batch,
                max_queued_jobs: service.options.max_queued,
            },
        ),
    };
    Ok(routes::router(Arc::new(state)))
}

/// A listening socket with the simulator's routes, not yet serving.
pub type BoundSimulator = crate::BoundServer;

/// Binds `addr` (port 0 picks a free port) and starts the batching worker. Call inside a tokio
/// runtime.
pub async fn bind(
    addr: SocketAddr,
    service: SimulatorService,
) -> Result<BoundSimulator, ServeError> {
    crate::BoundServer::bind(addr, router(service)?).await
}

/// Serves on the calling thread until SIGINT or SIGTERM (what `mirrorsim serve` runs);
/// `on_bound` is called with the bound address once the socket listens.
pub fn serve_until_signal(
    addr: SocketAddr,
    service: SimulatorService,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    crate::run_until_signal(
        addr,
        "mirrorsim-simulator",
        move || router(service),
        on_bound,
    )
}

/// A simulator service on its own thread and runtime; dropping it shuts it down gracefully.
/// Its base URL is the bare address, e.g. `http://127.0.0.1:8000`.
pub type RunningSimulator = crate::RunningServer;

/// Serves `service` on `addr` from a background thread; returns once the socket is bound.
pub fn spawn(addr: SocketAddr, service: SimulatorService) -> Result<RunningSimulator, ServeError> {
    crate::spawn_server(addr, "mirrorsim-simulator", "", move || router(service))
}
