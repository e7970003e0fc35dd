//! Dynamic batching: requests from concurrent clients are collected over a short window and
//! scored by one [`SlateSimulator::simulate`] call on tokio's blocking pool.
//!
//! One worker task owns the simulator. It takes the first queued job, waits up to the window for
//! more (until the batch holds `max_batch_requests`), drops jobs whose client has gone (timed
//! out or hung up) and runs the rest as one batch. Only one batch runs at a time, so the
//! CPU-bound engine never competes with itself, and the engine scores a batch faster than the
//! same requests one by one.

use std::sync::Arc;
use std::time::Duration;

use mirrorsim_eval::slate::{SlateOutcome, SlateRequest, SlateSimulator};
use mirrorsim_eval::EvalError;
use mirrorsim_llm::LlmError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::error::ApiError;

type Reply = Result<Vec<SlateOutcome>, ApiError>;

struct Job {
    requests: Vec<SlateRequest>,
    reply: oneshot::Sender<Reply>,
}

/// How the worker forms batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchingOptions {
    /// How long the worker waits for more requests after the first one of a batch.
    pub window: Duration,
    /// Most requests in one `simulate` call (a single job larger than that still runs whole).
    pub max_batch_requests: usize,
    /// Most jobs waiting; more are refused with 503.
    pub max_queued_jobs: usize,
}

/// The handle handlers submit work through.
#[derive(Clone)]
pub struct SimulationQueue {
    jobs: mpsc::Sender<Job>,
    max_queued_jobs: usize,
}

impl SimulationQueue {
    /// Starts the worker on the current tokio runtime.
    pub fn start(
        simulator: Arc<SlateSimulator<'static>>,
        options: BatchingOptions,
    ) -> SimulationQueue {
        let max_queued_jobs = options.max_queued_jobs.max(1);
        let (jobs, queue) = mpsc::channel(max_queued_jobs);
        tokio::spawn(run_worker(simulator, queue, options));
        SimulationQueue {
            jobs,
            max_queued_jobs,
        }
    }

    /// Queues `requests` and waits for their outcomes, in order.
    pub async fn simulate(&self, requests: Vec<SlateRequest>) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(Job { requests, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => ApiError::overloaded(format!(
                    "the simulator is busy: {} requests are already waiting; retry later",
                    self.max_queued_jobs
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::overloaded("the simulator is shutting down")
                }
            })?;
        answer.await.map_err(|_| {
            ApiError::internal("the simulator failed without an answer (it panicked); see the log")
        })?
    }
}

async fn run_worker(
    simulator: Arc<SlateSimulator<'static>>,
    mut queue: mpsc::Receiver<Job>,
    options: BatchingOptions,
) {
    let max_batch_requests = options.max_batch_requests.max(1);
    while let Some(first) = queue.recv().await {
        let deadline = Instant::now() + options.window;
        let mut request_count = first.requests.len();
        let mut batch = vec![first];
        while request_count < max_batch_requests {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(job)) => {
                    request_count += job.requests.len();
                    batch.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // Clients that timed out or hung up need no answer.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let simulator = Arc::clone(&simulator);
        // A panicking simulator drops the reply senders; their handlers then answer 500.
        if let Err(err) = tokio::task::spawn_blocking(move || run_batch(&simulator, batch)).await {
            tracing::error!("simulation batch failed: {err}");
        }
    }
}

fn run_batch(simulator: &SlateSimulator<'_>, batch: Vec<Job>) {
    if batch.len() > 1 {
        let all: Vec<SlateRequest> = batch
            .iter()
            .flat_map(|job| job.requests.iter().cloned())
            .collect();
        tracing::debug!(
            "simulating {} requests from {} clients together",
            all.len(),
            batch.len()
        );
        if let Ok(outcomes) = simulator.simulate(&all) {
            if outcomes.len() == all.len() {
                let mut outcomes = outcomes.into_iter();
                for job in batch {
                    let answer = outcomes.by_ref().take(job.requests.len()).collect();
                    let _ = job.reply.send(Ok(answer));
                }
                return;
            }
        }
        // One request's failure must not fail the others: run each job alone.
    }
    for job in batch {
        let answer = simulator
            .simulate(&job.requests)
            .map_err(simulation_error)
            .and_then(|outcomes| {
                if outcomes.len() == job.requests.len() {
                    Ok(outcomes)
                } else {
                    Err(ApiError::internal(format!(
                        "the simulator answered {} outcomes for {} requests",
                        outcomes.len(),
                        job.requests.len()
                    )))
                }
            });
        let _ = job.reply.send(answer);
    }
}

/// Errors the request caused (a prompt the model cannot take, a slate the templates refuse)
/// are 422; the rest are the server's.
fn simulation_error(err: EvalError) -> ApiError {
    match &err {
        EvalError::Llm(LlmError::BadRequest(message)) => {
            ApiError::unprocessable(format!("the model cannot take this request: {message}"))
        }
        // The local engine reports a prompt over its position table as a computation error.
        EvalError::Llm(LlmError::Compute(message))
            if message.contains("beyond the model's context") =>
        {
            ApiError::unprocessable(format!(
                "the prompt is longer than the model's context ({message}); send a shorter \
                 history or fewer, shorter items"
            ))
        }
        EvalError::Data(data) => {
            ApiError::unprocessable(format!("the slate cannot be rendered: {data}"))
        }
        _ => ApiError::internal(format!("simulation failed: {err}")),
    }
}
