//! Test support: scene records and a deterministic stand-in for a language MODEL (only the
//! model is replaced; journal, stages and files are the real ones).
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mirrorsim_data::scenes::{ChatMessage as SceneMessage, SceneRecord, Split};
use mirrorsim_llm::{
    Backend, ChoiceRequest, ChoiceScores, Completion, ContinuationRequest, ContinuationScores,
    FinishReason, GenerateRequest, LlmError,
};
use sha2::{Digest, Sha256};

pub fn hash64(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().unwrap())
}

/// A scene with `k` options whose answer sits in slot `answer`.
pub fn scene(id: &str, dataset: &str, k: usize, answer: usize) -> SceneRecord {
    let labels: Vec<String> = (0..k)
        .map(|i| ((b'A' + i as u8) as char).to_string())
        .collect();
    let options: Vec<String> = (0..k).map(|i| format!("{id}-item{i}")).collect();
    let listing: String = labels
        .iter()
        .zip(&options)
        .map(|(l, o)| format!("[{l}] {o}\n"))
        .collect();
    SceneRecord {
        id: id.to_owned(),
        dataset: dataset.to_owned(),
        split: Split::Train,
        user_id: format!("u-{id}"),
        item_id: options[answer].clone(),
        timestamp: 1_000,
        options: options.clone(),
        answer,
        labels: labels.clone(),
        exposure_sources: (0..k)
            .map(|i| if i == answer { "positive" } else { "random" }.to_owned())
            .collect(),
        history: Vec::new(),
        messages: vec![
            SceneMessage::new("system", "Play the user.".to_owned()),
            SceneMessage::new("user", format!("Scene {id}. Options:\n{listing}")),
        ],
        direct_messages: vec![
            SceneMessage::new("system", "Answer with the letter.".to_owned()),
            SceneMessage::new("user", format!("Scene {id}. Options:\n{listing}")),
        ],
    }
}

/// A deterministic model: its answers are a hash of its name and the request. Counts the
/// backend calls and the requests it receives; can be slowed down per request.
pub struct HashModel {
    pub name: String,
    pub delay: Duration,
    pub calls: AtomicUsize,
    pub requests: AtomicUsize,
    pub seen: Mutex<Vec<String>>,
}

impl HashModel {
    pub fn new(name: &str) -> Self {
        HashModel {
            name: name.to_owned(),
            delay: Duration::ZERO,
            calls: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn slow(name: &str, delay: Duration) -> Self {
        HashModel {
            delay,
            ..HashModel::new(name)
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn count(&self, requests: usize) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(requests, Ordering::SeqCst);
        std::thread::sleep(self.delay * requests as u32);
    }
}

const SECTIONS: [&str; 6] = [
    "Stimulus",
    "Stimulus Factors",
    "Knowledge",
    "Knowledge Factors",
    "Evaluation",
    "Evaluation Style",
];

impl Backend for HashModel {
    fn model_id(&self) -> String {
        format!("hash-model:{}", self.name)
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        self.count(requests.len());
        let mut out = Vec::new();
        for request in requests {
            let prompt = serde_json::to_string(request).unwrap();
            self.seen.lock().unwrap().push(prompt.clone());
            let completions = (0..request.params.n)
                .map(|i| {
                    let h = hash64(&[&self.name, &prompt, &i.to_string()]);
                    // Some samples leave out a section, some state no letter.
                    let sections: String = SECTIONS
                        .iter()
                        .enumerate()
                        .filter(|(s, _)| (h >> s) & 7 != 0)
                        .map(|(_, name)| format!("{name}: thought {}.\n", (h >> 8) % 97))
                        .collect();
                    let letter = ["A", "B", "C"][(h % 3) as usize];
                    let ending = if h.is_multiple_of(5) {
                        String::new()
                    } else {
                        format!("Behavior: [{letter}]")
                    };
                    let text = format!("Thought: {sections}{ending}");
                    Completion {
                        prompt_tokens: prompt.len() / 4,
                        completion_tokens: text.len() / 4,
                        text,
                        finish_reason: FinishReason::Stop,
                        logprobs: None,
                    }
                })
                .collect();
            out.push(completions);
        }
        Ok(out)
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        self.count(requests.len());
        let mut out = Vec::new();
        for request in requests {
            let prompt = serde_json::to_string(&request.prompt).unwrap();
            let distributions = request
                .continuations
                .iter()
                .map(|c| {
                    let weights: Vec<f64> = request
                        .labels
                        .iter()
                        .map(|l| {
                            let h = hash64(&[&self.name, &prompt, c, l]);
                            ((h % 16) as f64 + 1.0).powi(3)
                        })
                        .collect();
                    let sum: f64 = weights.iter().sum();
                    weights.iter().map(|w| w / sum).collect()
                })
                .collect();
            out.push(ChoiceScores {
                distributions,
                missing_labels: vec![Vec::new(); request.continuations.len()],
                prompt_tokens: prompt.len() / 4
                    + request
                        .continuations
                        .iter()
                        .map(|c| c.len() / 4)
                        .sum::<usize>(),
            });
        }
        Ok(out)
    }

    fn score_continuations(
        &self,
        requests: &[ContinuationRequest],
    ) -> Result<Vec<ContinuationScores>, LlmError> {
        self.count(requests.len());
        Ok(requests
            .iter()
            .map(|request| {
                let prompt = serde_json::to_string(&request.prompt).unwrap();
                ContinuationScores {
                    logprobs: request
                        .continuations
                        .iter()
                        .map(|c| -((hash64(&[&self.name, &prompt, c]) % 1000) as f64) / 100.0)
                        .collect(),
                    tokens: request.continuations.iter().map(|c| c.len() / 4).collect(),
                    prompt_tokens: prompt.len() / 4,
                }
            })
            .collect())
    }
}

/// Scenes over two datasets and option counts, answers spread over all slots.
pub fn scene_set(count: usize) -> Vec<SceneRecord> {
    (0..count)
        .map(|i| {
            let k = if i % 3 == 0 { 4 } else { 3 };
            let dataset = if i % 4 == 0 { "ml-100k" } else { "ml-1m" };
            scene(&format!("{dataset}-train-{i}"), dataset, k, i % k)
        })
        .collect()
}

pub fn write_scenes(path: &std::path::Path, scenes: &[SceneRecord]) {
    mirrorsim_data::scenes::write_jsonl(path, scenes).unwrap();
}

/// The pipeline a run executes: strong and weak rationales, scores, distill — every model call
/// through one journal in `dir`. Returns the journal counts (hits, misses) of all stages.
pub fn run_pipeline(dir: &std::path::Path, delay: Duration) -> (u64, u64) {
    use mirrorsim_distill::stages::{run_distill, run_rationales, run_score};
    use mirrorsim_distill::{
        DistillConfig, GenerateConfig, Journal, JournaledBackend, Role, ScoreConfig, Selector,
    };
    let journal = Journal::open(&dir.join("journal.sqlite")).unwrap();
    let strong = HashModel::slow("strong", delay);
    let weak = HashModel::slow("weak", delay);
    let predictor = HashModel::slow("predictor", delay);
    let scenes = dir.join("scenes.jsonl");
    let generate = GenerateConfig {
        n: 4,
        seed: 11,
        batch_scenes: 3,
        ..GenerateConfig::default()
    };
    let mut hits = 0;
    let mut misses = 0;
    for (model, role) in [(&strong, Role::Strong), (&weak, Role::Weak)] {
        let backend = JournaledBackend::new(model, &journal);
        run_rationales(
            &scenes,
            &dir.join(format!("rationales.{}.jsonl", role.name())),
            &backend,
            role,
            &generate,
        )
        .unwrap();
        hits += backend.counts().hits;
        misses += backend.counts().misses;
    }
    let rationale_files = vec![
        dir.join("rationales.strong.jsonl"),
        dir.join("rationales.weak.jsonl"),
    ];
    let backend = JournaledBackend::new(&predictor, &journal);
    run_score(
        &scenes,
        &rationale_files,
        &dir.join("scores.jsonl"),
        &backend,
        &ScoreConfig {
            seed: 5,
            batch_scenes: 3,
        },
    )
    .unwrap();
    hits += backend.counts().hits;
    misses += backend.counts().misses;
    run_distill(
        &scenes,
        &dir.join("scores.jsonl"),
        &rationale_files,
        dir,
        &DistillConfig {
            selector: Selector::DeltaEu,
            top_k: 7,
            seed: 3,
        },
    )
    .unwrap();
    (hits, misses)
}

/// The output files of a run, by name.
pub const OUTPUT_FILES: [&str; 9] = [
    "rationales.strong.jsonl",
    "rationales.weak.jsonl",
    "scores.jsonl",
    "sft.jsonl",
    "dpo.jsonl",
    "direct.jsonl",
    "distill.scenes.jsonl",
    "distill.summary.json",
    "scenes.jsonl",
];
