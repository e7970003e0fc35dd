//! The run journal: every LLM request and its response in one SQLite file, keyed by content.
//!
//! The key of a request is the sha256 of `{"model_id": …, "kind": …, "request": …}` serialised
//! with serde_json (struct fields in declaration order, so the text is canonical for a given
//! request). [`JournaledBackend`] answers requests found in the journal and sends only the
//! missing ones to the model; each answer is committed as soon as its backend call returns, so
//! a run killed with SIGKILL loses at most the batch that was in flight.
//!
//! Two counters per key make repeats visible from the journal itself: `sent` counts how often
//! the request was handed to the model, `answered` how often the model's answer was stored. A
//! stored answer is never asked for again, so `answered` stays 1; `sent` exceeds it only for
//! requests that were in flight when a run was killed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use mirrorsim_llm::{
    Backend, ChoiceRequest, ChoiceScores, Completion, ContinuationRequest, ContinuationScores,
    GenerateRequest, LlmError,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::DistillError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model_id TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    sent INTEGER NOT NULL DEFAULT 0,
    answered INTEGER NOT NULL DEFAULT 0,
    first_sent_at INTEGER,
    answered_at INTEGER
);
";

/// The kind of a journaled request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Generate,
    Choice,
    Continuation,
}

impl RequestKind {
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Generate => "generate",
            RequestKind::Choice => "choice",
            RequestKind::Continuation => "continuation",
        }
    }
}

/// One row of the journal, as the tests and reports read it.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    pub key: String,
    pub kind: String,
    pub model_id: String,
    pub answered: bool,
    pub sent: u64,
    pub answered_count: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// The SQLite journal of one run (WAL mode, `synchronous=NORMAL`).
pub struct Journal {
    path: PathBuf,
    connection: Mutex<Connection>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The content address of a request: sha256 hex of the canonical JSON of model, kind and request.
pub fn request_key<R: Serialize>(
    model_id: &str,
    kind: RequestKind,
    request: &R,
) -> Result<String, serde_json::Error> {
    #[derive(Serialize)]
    struct Keyed<'a, R> {
        model_id: &'a str,
        kind: &'static str,
        request: &'a R,
    }
    let canonical = serde_json::to_vec(&Keyed {
        model_id,
        kind: kind.name(),
        request,
    })?;
    let digest = Sha256::digest(&canonical);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

impl Journal {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self, DistillError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DistillError::Journal {
                path: path.to_owned(),
                message: format!("cannot create its folder: {e}"),
            })?;
        }
        let error = |e: rusqlite::Error| DistillError::Journal {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let connection = Connection::open(path).map_err(error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(error)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(error)?;
        connection.execute_batch(SCHEMA).map_err(error)?;
        Ok(Journal {
            path: path.to_owned(),
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: impl ToString) -> DistillError {
        DistillError::Journal {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, DistillError> {
        self.connection
            .lock()
            .map_err(|_| self.error("a thread panicked while writing the journal"))
    }

    /// The stored responses of those `keys` that have one.
    pub fn lookup<T: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<HashMap<String, T>, DistillError> {
        let connection = self.lock()?;
        let mut statement = connection
            .prepare_cached("SELECT response FROM requests WHERE key = ?1 AND response IS NOT NULL")
            .map_err(|e| self.error(e))?;
        let mut found = HashMap::new();
        for key in keys {
            let response: Option<String> = statement
                .query_row(params![key], |row| row.get(0))
                .optional()
                .map_err(|e| self.error(e))?;
            if let Some(text) = response {
                let value: T = serde_json::from_str(&text).map_err(|e| {
                    self.error(format!(
                        "stored response of request {key} is unreadable: {e}"
                    ))
                })?;
                found.insert(key.clone(), value);
            }
        }
        Ok(found)
    }

    /// Records that these requests are about to be sent to the model (one transaction).
    pub fn mark_sent(
        &self,
        model_id: &str,
        kind: RequestKind,
        requests: &[(String, String)],
    ) -> Result<(), DistillError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction().map_err(|e| self.error(e))?;
        {
            let mut statement = transaction
                .prepare_cached(
                    "INSERT INTO requests (key, kind, model_id, request, sent, first_sent_at)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5)
                     ON CONFLICT(key) DO UPDATE SET sent = sent + 1",
                )
                .map_err(|e| self.error(e))?;
            let now = unix_now();
            for (key, request) in requests {
                statement
                    .execute(params![key, kind.name(), model_id, request, now])
                    .map_err(|e| self.error(e))?;
            }
        }
        transaction.commit().map_err(|e| self.error(e))
    }

    /// Stores the model's answers (one transaction).
    pub fn store(&self, answers: &[(String, String, u64, u64)]) -> Result<(), DistillError> {
        let mut connection = self.lock()?;
        let transaction = connection.transaction().map_err(|e| self.error(e))?;
        {
            let mut statement = transaction
                .prepare_cached(
                    "UPDATE requests SET response = ?2, prompt_tokens = ?3, completion_tokens = ?4,
                     answered = answered + 1, answered_at = ?5 WHERE key = ?1",
                )
                .map_err(|e| self.error(e))?;
            let now = unix_now();
            for (key, response, prompt_tokens, completion_tokens) in answers {
                let changed = statement
                    .execute(params![
                        key,
                        response,
                        *prompt_tokens as i64,
                        *completion_tokens as i64,
                        now
                    ])
                    .map_err(|e| self.error(e))?;
                if changed != 1 {
                    return Err(self.error(format!(
                        "answer for request {key} arrived but the request was never recorded as sent"
                    )));
                }
            }
        }
        transaction.commit().map_err(|e| self.error(e))
    }

    /// Every row, ordered by key.
    pub fn entries(&self) -> Result<Vec<JournalEntry>, DistillError> {
        let connection = self.lock()?;
        let mut statement = connection
            .prepare(
                "SELECT key, kind, model_id, response IS NOT NULL, sent, answered,
                        prompt_tokens, completion_tokens
                 FROM requests ORDER BY key",
            )
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(JournalEntry {
                    key: row.get(0)?,
                    kind: row.get(1)?,
                    model_id: row.get(2)?,
                    answered: row.get(3)?,
                    sent: row.get::<_, i64>(4)? as u64,
                    answered_count: row.get::<_, i64>(5)? as u64,
                    prompt_tokens: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                    completion_tokens: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                })
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(e))
    }
}

/// Counters of one [`JournaledBackend`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalCounts {
    /// Requests answered from the journal.
    pub hits: u64,
    /// Requests sent to the model.
    pub misses: u64,
}

/// A [`Backend`] that answers from the journal where it can and records everything else.
pub struct JournaledBackend<'a> {
    inner: &'a dyn Backend,
    journal: &'a Journal,
    model_id: String,
    hits: AtomicU64,
    misses: AtomicU64,
}

fn to_llm(error: DistillError) -> LlmError {
    match error {
        DistillError::Llm(inner) => inner,
        other => LlmError::Compute(other.to_string()),
    }
}

impl<'a> JournaledBackend<'a> {
    pub fn new(inner: &'a dyn Backend, journal: &'a Journal) -> Self {
        JournaledBackend {
            model_id: inner.model_id(),
            inner,
            journal,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn counts(&self) -> JournalCounts {
        JournalCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    pub fn journal(&self) -> &Journal {
        self.journal
    }

    /// The shared path of both request kinds: look up, send the missing ones (each distinct
    /// request once), store their answers, and return all answers in request order.
    fn run<R, A>(
        &self,
        kind: RequestKind,
        requests: &[R],
        send: impl FnOnce(&[R]) -> Result<Vec<A>, LlmError>,
        tokens: impl Fn(&A) -> (u64, u64),
    ) -> Result<Vec<A>, DistillError>
    where
        R: Serialize + Clone,
        A: Serialize + DeserializeOwned + Clone,
    {
        let keys = requests
            .iter()
            .map(|r| request_key(&self.model_id, kind, r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DistillError::Config(format!("cannot serialise a request: {e}")))?;
        let mut answers: HashMap<String, A> = self.journal.lookup(&keys)?;

        let mut missing_keys = Vec::new();
        let mut missing_requests = Vec::new();
        for (key, request) in keys.iter().zip(requests) {
            if !answers.contains_key(key) && !missing_keys.contains(key) {
                missing_keys.push(key.clone());
                missing_requests.push(request.clone());
            }
        }
        let hits = keys.len() - keys.iter().filter(|k| missing_keys.contains(k)).count();
        self.hits.fetch_add(hits as u64, Ordering::Relaxed);

        if !missing_requests.is_empty() {
            let texts = missing_requests
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DistillError::Config(format!("cannot serialise a request: {e}")))?;
            let sent: Vec<(String, String)> = missing_keys.iter().cloned().zip(texts).collect();
            self.journal.mark_sent(&self.model_id, kind, &sent)?;
            self.misses
                .fetch_add(missing_requests.len() as u64, Ordering::Relaxed);
            let fresh = send(&missing_requests)?;
            if fresh.len() != missing_requests.len() {
                return Err(DistillError::BackendShape {
                    expected: missing_requests.len(),
                    got: fresh.len(),
                });
            }
            let mut rows = Vec::with_capacity(fresh.len());
            for (key, answer) in missing_keys.iter().zip(&fresh) {
                let text = serde_json::to_string(answer).map_err(|e| {
                    DistillError::Config(format!("cannot serialise an answer: {e}"))
                })?;
                let (prompt_tokens, completion_tokens) = tokens(answer);
                rows.push((key.clone(), text, prompt_tokens, completion_tokens));
            }
            self.journal.store(&rows)?;
            // Use the answers as read back from their stored text, not the fresh values:
            // serde_json's float parsing is not guaranteed to round-trip to the last bit, and a
            // resumed run (answered from the journal) must see exactly the same numbers.
            for (key, text, _, _) in rows {
                let stored: A = serde_json::from_str(&text).map_err(|e| {
                    self.journal.error(format!(
                        "stored response of request {key} is unreadable: {e}"
                    ))
                })?;
                answers.insert(key, stored);
            }
        }
        keys.iter()
            .map(|key| {
                answers
                    .get(key)
                    .cloned()
                    .ok_or_else(|| DistillError::Journal {
                        path: self.journal.path.clone(),
                        message: format!("request {key} has no answer"),
                    })
            })
            .collect()
    }
}

impl Backend for JournaledBackend<'_> {
    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        self.run(
            RequestKind::Generate,
            requests,
            |missing| self.inner.generate(missing),
            |completions: &Vec<Completion>| {
                let prompt = completions.first().map_or(0, |c| c.prompt_tokens as u64);
                let completion = completions.iter().map(|c| c.completion_tokens as u64).sum();
                (prompt, completion)
            },
        )
        .map_err(to_llm)
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        self.run(
            RequestKind::Choice,
            requests,
            |missing| self.inner.score_choices(missing),
            |scores: &ChoiceScores| (scores.prompt_tokens as u64, 0),
        )
        .map_err(to_llm)
    }

    fn score_continuations(
        &self,
        requests: &[ContinuationRequest],
    ) -> Result<Vec<ContinuationScores>, LlmError> {
        self.run(
            RequestKind::Continuation,
            requests,
            |missing| self.inner.score_continuations(missing),
            |scores: &ContinuationScores| (scores.prompt_tokens as u64, 0),
        )
        .map_err(to_llm)
    }
}
