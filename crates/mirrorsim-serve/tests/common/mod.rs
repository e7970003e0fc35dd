//! A small deterministic `Backend` for testing the server's and the HTTP client's plumbing.
//!
//! Its "model" is a fixed function of the rendered context: every letter A..L gets a logit in
//! [2, 5), 25 filler words one in [-4, -1), and "Y" and "Z" -30, so the top 20 always holds
//! A..L and never Y or Z. It implements the `Backend` contract (greedy and seeded sampling,
//! top-k/top-p, stop strings, logprobs, choice scores) so its answers can be compared with the
//! same answers fetched through HTTP.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use mirrorsim_llm::{
    Backend, ChatMessage, ChoiceRequest, ChoiceScores, Completion, FinishReason, GenerateRequest,
    LlmError, Prompt, TokenLogprobs,
};

pub const VOCAB: [&str; 39] = [
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", " the", " a", " movie", " I",
    " like", " it", ".", ",", " and", " not", " good", " very", " watch", " would", " pick",
    " because", " story", " fun", " slow", " great", "!", " so", " yes", " no", " maybe", "Y", "Z",
];

#[derive(Default)]
pub struct ToyBackend {
    /// Sleep inside every `generate` call (to make batching observable).
    pub delay: Duration,
    pub generate_calls: AtomicUsize,
    pub batch_sizes: Mutex<Vec<usize>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl ToyBackend {
    pub fn with_delay(delay: Duration) -> Self {
        ToyBackend {
            delay,
            ..ToyBackend::default()
        }
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn render(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Text { text } => text.clone(),
        Prompt::Chat {
            messages,
            continue_final,
        } => {
            let continues = *continue_final
                && messages
                    .last()
                    .is_some_and(|message| message.role == "assistant");
            let mut text = String::new();
            for (index, message) in messages.iter().enumerate() {
                text.push_str(&format!("<{}>{}", message.role, message.content));
                if !(continues && index + 1 == messages.len()) {
                    text.push_str("</>");
                }
            }
            if !continues {
                text.push_str("<assistant>");
            }
            text
        }
    }
}

/// Natural-log probabilities of every vocabulary entry after `context`.
pub fn logprobs_after(context: &str) -> Vec<f64> {
    let hash = fnv1a(context);
    let logits: Vec<f64> = (0..VOCAB.len())
        .map(|id| {
            let u = unit(hash ^ (id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            match id {
                0..=11 => 2.0 + 3.0 * u,
                37 | 38 => -30.0,
                _ => -4.0 + 3.0 * u,
            }
        })
        .collect();
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

fn ranked(logprobs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]));
    order
}

fn sample(logprobs: &[f64], temperature: f32, top_k: usize, top_p: f32, random: f64) -> usize {
    let order = ranked(logprobs);
    if temperature == 0.0 {
        return order[0];
    }
    let keep = if top_k > 0 {
        top_k.min(order.len())
    } else {
        order.len()
    };
    let mut weights: Vec<(usize, f64)> = order[..keep]
        .iter()
        .map(|&id| (id, (logprobs[id] / temperature as f64).exp()))
        .collect();
    let total: f64 = weights.iter().map(|w| w.1).sum();
    let mut cumulative = 0.0;
    let mut cut = weights.len();
    for (index, weight) in weights.iter().enumerate() {
        cumulative += weight.1 / total;
        if cumulative >= top_p as f64 {
            cut = index + 1;
            break;
        }
    }
    weights.truncate(cut);
    let total: f64 = weights.iter().map(|w| w.1).sum();
    let mut target = random * total;
    for (id, weight) in &weights {
        if target < *weight {
            return *id;
        }
        target -= weight;
    }
    weights[weights.len() - 1].0
}

fn generate_one(request: &GenerateRequest) -> Result<Vec<Completion>, LlmError> {
    let params = &request.params;
    let context = render(&request.prompt);
    if context.contains("FAIL") {
        return Err(LlmError::BadRequest("the prompt asks to fail".to_string()));
    }
    let prompt_tokens = context.chars().count();
    let mut completions = Vec::with_capacity(params.n);
    for sample_index in 0..params.n {
        let mut text = String::new();
        let mut entries = Vec::new();
        let mut finish = FinishReason::Length;
        let mut completion_tokens = 0;
        for step in 0..params.max_tokens {
            completion_tokens += 1;
            let logprobs = logprobs_after(&format!("{context}{text}"));
            let random =
                unit(params.seed ^ mix(sample_index as u64 + 1) ^ mix((step as u64) << 32));
            let id = sample(
                &logprobs,
                params.temperature,
                params.top_k,
                params.top_p,
                random,
            );
            if let Some(top) = params.logprobs {
                entries.push(TokenLogprobs {
                    token: VOCAB[id].to_string(),
                    token_id: id as u32,
                    logprob: logprobs[id],
                    top: ranked(&logprobs)
                        .into_iter()
                        .take(top)
                        .map(|top_id| (VOCAB[top_id].to_string(), top_id as u32, logprobs[top_id]))
                        .collect(),
                });
            }
            text.push_str(VOCAB[id]);
            if let Some(cut) = params
                .stop
                .iter()
                .filter_map(|stop| text.find(stop.as_str()))
                .min()
            {
                text.truncate(cut);
                finish = FinishReason::Stop;
                break;
            }
        }
        completions.push(Completion {
            text,
            prompt_tokens,
            completion_tokens,
            finish_reason: finish,
            logprobs: params.logprobs.map(|_| entries),
        });
    }
    Ok(completions)
}

/// The continuation appended to the final assistant message (or a new one), continued.
pub fn continued(prompt: &Prompt, continuation: &str) -> Prompt {
    match prompt {
        Prompt::Chat { messages, .. } => {
            let mut messages = messages.clone();
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => last.content.push_str(continuation),
                _ => messages.push(ChatMessage::new("assistant", continuation)),
            }
            Prompt::Chat {
                messages,
                continue_final: true,
            }
        }
        Prompt::Text { text } => Prompt::Text {
            text: format!("{text}{continuation}"),
        },
    }
}

impl Backend for ToyBackend {
    fn model_id(&self) -> String {
        "toy".to_string()
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.generate_calls.fetch_add(1, Ordering::SeqCst);
        self.batch_sizes.lock().unwrap().push(requests.len());
        std::thread::sleep(self.delay);
        let result = requests.iter().map(generate_one).collect();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        requests
            .iter()
            .map(|request| {
                let ids: Vec<usize> = request
                    .labels
                    .iter()
                    .map(|label| {
                        VOCAB
                            .iter()
                            .position(|token| token == label)
                            .ok_or_else(|| {
                                LlmError::BadRequest(format!("label {label:?} is not a token"))
                            })
                    })
                    .collect::<Result<_, _>>()?;
                let mut prompt_tokens = 0;
                let distributions = request
                    .continuations
                    .iter()
                    .map(|continuation| {
                        let context = render(&continued(&request.prompt, continuation));
                        prompt_tokens += context.chars().count();
                        let logprobs = logprobs_after(&context);
                        let weights: Vec<f64> = ids.iter().map(|&id| logprobs[id].exp()).collect();
                        let total: f64 = weights.iter().sum();
                        weights.iter().map(|weight| weight / total).collect()
                    })
                    .collect();
                Ok(ChoiceScores {
                    distributions,
                    missing_labels: vec![Vec::new(); request.continuations.len()],
                    prompt_tokens,
                })
            })
            .collect()
    }
}
