//! Serialises model work and batches concurrent HTTP requests into one `Backend::generate` call.
//!
//! The model is blocking CPU work: one worker task takes the queued jobs (up to a request budget),
//! runs them in one `generate` call on tokio's blocking pool and answers each job. Only one batch
//! runs at a time, so concurrent HTTP requests never compete for the cores; the local engine
//! decodes a batch faster than the same requests one by one.

use std::sync::Arc;

use mirrorsim_llm::{Backend, Completion, GenerateRequest, LlmError};
use tokio::sync::{mpsc, oneshot};

pub type GenerateReply = Result<Vec<Vec<Completion>>, LlmError>;

struct Job {
    requests: Vec<GenerateRequest>,
    reply: oneshot::Sender<GenerateReply>,
}

/// The handle HTTP handlers submit work through.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

#[derive(Debug, thiserror::Error)]
pub enum BatcherError {
    #[error("the model worker has stopped")]
    Stopped,
    #[error("the model backend failed without an answer (it panicked)")]
    NoAnswer,
}

impl Batcher {
    /// Starts the worker on the current tokio runtime. `max_batch_requests` bounds how many
    /// requests one `generate` call may hold (a single job larger than that still runs whole).
    pub fn start(backend: Arc<dyn Backend>, max_batch_requests: usize) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_worker(backend, queue, max_batch_requests.max(1)));
        Batcher { jobs }
    }

    /// Queues `requests` and waits for their completions.
    pub async fn generate(
        &self,
        requests: Vec<GenerateRequest>,
    ) -> Result<GenerateReply, BatcherError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { requests, reply })
            .map_err(|_| BatcherError::Stopped)?;
        answer.await.map_err(|_| BatcherError::NoAnswer)
    }
}

async fn run_worker(
    backend: Arc<dyn Backend>,
    mut queue: mpsc::UnboundedReceiver<Job>,
    max_batch_requests: usize,
) {
    while let Some(first) = queue.recv().await {
        let mut request_count = first.requests.len();
        let mut batch = vec![first];
        while request_count < max_batch_requests {
            match queue.try_recv() {
                Ok(job) => {
                    request_count += job.requests.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        // Clients that hung up need no answer.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let backend = Arc::clone(&backend);
        // A panicking backend drops the reply senders; the handlers then answer 500.
        if let Err(err) = tokio::task::spawn_blocking(move || run_batch(&*backend, batch)).await {
            tracing::error!("model batch failed: {err}");
        }
    }
}

fn run_batch(backend: &dyn Backend, batch: Vec<Job>) {
    if batch.len() == 1 {
        for job in batch {
            let _ = job.reply.send(backend.generate(&job.requests));
        }
        return;
    }
    let all: Vec<GenerateRequest> = batch
        .iter()
        .flat_map(|job| job.requests.iter().cloned())
        .collect();
    match backend.generate(&all) {
        Ok(results) if results.len() == all.len() => {
            let mut results = results.into_iter();
            for job in batch {
                let answer = results.by_ref().take(job.requests.len()).collect();
                let _ = job.reply.send(Ok(answer));
            }
        }
        // One request's error (or a malformed answer) must not fail the others: run them alone.
        _ => {
            for job in batch {
                let _ = job.reply.send(backend.generate(&job.requests));
            }
        }
    }
}
