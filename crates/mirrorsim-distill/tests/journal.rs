//! The run journal: repeated batches are answered without touching the model, answers survive
//! a reopen, and the journal itself shows that no request was sent twice.

mod common;

use std::sync::Arc;

use common::HashModel;
use mirrorsim_distill::journal::{Journal, JournaledBackend};
use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, ContinuationRequest, GenerateRequest, Prompt,
    SamplingParams,
};

fn generate_request(text: &str, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", text)],
            continue_final: false,
        },
        params: SamplingParams {
            seed,
            n: 3,
            ..SamplingParams::default()
        },
    }
}

fn choice_request(text: &str) -> ChoiceRequest {
    ChoiceRequest {
        prompt: Prompt::Chat {
            messages: vec![
                ChatMessage::new("user", text),
                ChatMessage::new("assistant", ""),
            ],
            continue_final: true,
        },
        continuations: vec![
            "Thought: a\nBehavior: [".into(),
            "Thought: b\nBehavior: [".into(),
        ],
        labels: vec!["A".into(), "B".into(), "C".into()],
    }
}

#[test]
fn repeated_batches_are_answered_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let model = HashModel::new("m");
    let batch: Vec<GenerateRequest> = (0..4)
        .map(|i| generate_request(&format!("scene {i}"), i))
        .collect();

    let first = {
        let journal = Journal::open(&path).unwrap();
        let backend = JournaledBackend::new(&model, &journal);
        let first = backend.generate(&batch).unwrap();
        assert_eq!((model.calls(), model.requests()), (1, 4));
        let again = backend.generate(&batch).unwrap();
        assert_eq!(again, first);
        assert_eq!(
            (model.calls(), model.requests()),
            (1, 4),
            "repeat reached the model"
        );
        let counts = backend.counts();
        assert_eq!((counts.hits, counts.misses), (4, 4));

        // A batch mixing old and new requests (one new one twice) sends only the new one, once.
        let mut mixed = batch[1..3].to_vec();
        mixed.push(generate_request("scene new", 9));
        mixed.push(generate_request("scene new", 9));
        let answers = backend.generate(&mixed).unwrap();
        assert_eq!((model.calls(), model.requests()), (2, 5));
        assert_eq!(answers[0], first[1]);
        assert_eq!(answers[3], answers[2]);
        first
    };

    // Reopened from disk: answered with no model call at all.
    let journal = Journal::open(&path).unwrap();
    let fresh_model = HashModel::new("m");
    let backend = JournaledBackend::new(&fresh_model, &journal);
    assert_eq!(backend.generate(&batch).unwrap(), first);
    assert_eq!(fresh_model.calls(), 0);

    let entries = journal.entries().unwrap();
    assert_eq!(entries.len(), 5);
    for entry in &entries {
        assert_eq!((entry.sent, entry.answered_count), (1, 1), "{entry:?}");
        assert!(entry.answered);
        assert_eq!(entry.kind, "generate");
        assert_eq!(entry.model_id, "hash-model:m");
        assert!(entry.prompt_tokens.unwrap() > 0);
        assert!(entry.completion_tokens.unwrap() > 0);
    }
}

#[test]
fn continuation_scores_are_journaled_under_their_own_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let model = HashModel::new("m");
    let request = |text: &str| ContinuationRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", text)],
            continue_final: false,
        },
        continuations: vec![
            "Behavior: Heat (1995)".into(),
            "Behavior: Fargo (1996)".into(),
        ],
    };
    let batch = vec![request("scene 0"), request("scene 1")];
    let first = {
        let journal = Journal::open(&path).unwrap();
        let backend = JournaledBackend::new(&model, &journal);
        let first = backend.score_continuations(&batch).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].logprobs.len(), 2);
        assert_eq!(backend.score_continuations(&batch).unwrap(), first);
        assert_eq!((model.calls(), model.requests()), (1, 2));
        first
    };
    let journal = Journal::open(&path).unwrap();
    let fresh_model = HashModel::new("m");
    let backend = JournaledBackend::new(&fresh_model, &journal);
    assert_eq!(backend.score_continuations(&batch).unwrap(), first);
    assert_eq!(fresh_model.calls(), 0);
    let entries = journal.entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .all(|e| e.kind == "continuation" && e.sent == 1));
}

#[test]
fn keys_depend_on_model_parameters_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.sqlite")).unwrap();
    let first_model = HashModel::new("first");
    let second_model = HashModel::new("second");
    let request = generate_request("same prompt", 1);
    let mut other_params = request.clone();
    other_params.params.temperature = 0.5;

    let first = JournaledBackend::new(&first_model, &journal);
    first.generate(std::slice::from_ref(&request)).unwrap();
    first.generate(std::slice::from_ref(&other_params)).unwrap();
    assert_eq!(first_model.requests(), 2);
    let second = JournaledBackend::new(&second_model, &journal);
    second.generate(std::slice::from_ref(&request)).unwrap();
    assert_eq!(second_model.requests(), 1);

    let scores = first.score_choices(&[choice_request("p")]).unwrap();
    let again = first.score_choices(&[choice_request("p")]).unwrap();
    assert_eq!(scores, again);
    assert_eq!(first_model.requests(), 3);
    let kinds: Vec<String> = journal
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "choice").count(), 1);
    assert_eq!(kinds.len(), 4);
}

/// A model that fails its first call, to check that a failed batch is retried later.
struct FailsOnce {
    inner: HashModel,
    failed: std::sync::atomic::AtomicBool,
}

impl Backend for FailsOnce {
    fn model_id(&self) -> String {
        self.inner.model_id()
    }
    fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Result<Vec<Vec<mirrorsim_llm::Completion>>, mirrorsim_llm::LlmError> {
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(mirrorsim_llm::LlmError::Compute("out of memory".into()));
        }
        self.inner.generate(requests)
    }
    fn score_choices(
        &self,
        requests: &[ChoiceRequest],
    ) -> Result<Vec<mirrorsim_llm::ChoiceScores>, mirrorsim_llm::LlmError> {
        self.inner.score_choices(requests)
    }
}

#[test]
fn a_failed_call_is_reported_and_retried_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("j.sqlite")).unwrap();
    let model = FailsOnce {
        inner: HashModel::new("m"),
        failed: Default::default(),
    };
    let backend = JournaledBackend::new(&model, &journal);
    let batch = vec![generate_request("x", 1)];
    let error = backend.generate(&batch).unwrap_err();
    assert!(error.to_string().contains("out of memory"), "{error}");
    let entries = journal.entries().unwrap();
    assert_eq!((entries[0].sent, entries[0].answered_count), (1, 0));
    backend.generate(&batch).unwrap();
    let entries = journal.entries().unwrap();
    assert_eq!((entries[0].sent, entries[0].answered_count), (2, 1));
}

#[test]
fn concurrent_threads_share_one_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&dir.path().join("j.sqlite")).unwrap());
    let model = Arc::new(HashModel::new("m"));
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let journal = Arc::clone(&journal);
            let model = Arc::clone(&model);
            scope.spawn(move || {
                let backend = JournaledBackend::new(model.as_ref(), journal.as_ref());
                for i in 0..10 {
                    let request = generate_request(&format!("t{thread} r{i}"), i);
                    let first = backend.generate(std::slice::from_ref(&request)).unwrap();
                    let again = backend.generate(std::slice::from_ref(&request)).unwrap();
                    assert_eq!(first, again);
                }
            });
        }
    });
    assert_eq!(model.requests(), 40);
    let entries = journal.entries().unwrap();
    assert_eq!(entries.len(), 40);
    assert!(entries.iter().all(|e| e.sent == 1 && e.answered_count == 1));
}
