//! What SFT and DPO share: the config, the example order, the training loop with gradient
//! accumulation, the loss log, checkpoints and exact resume.
//!
//! The run directory holds `loss.jsonl` (one line per optimizer step, plus `eval_loss` on the
//! steps that evaluate), `checkpoints/step-N/` (PEFT adapter, `optimizer.safetensors`,
//! `trainer_state.json`), and at the end the adapter itself (`adapter_config.json`,
//! `adapter_model.safetensors`) and `train_summary.json`.
//!
//! Resuming reloads the latest checkpoint and replays nothing: the example order is a function
//! of (seed, epoch), dropout masks are reseeded per micro-batch from (seed, step, micro-batch),
//! and the optimizer moments are saved exactly, so a resumed run logs the same losses as an
//! uninterrupted one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use mirrorsim_llm::model::{DropoutStream, Llama, LoraConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::{TokenSequence, TruncationReport};
use crate::optim::{clip_grad_norm, scheduled_lr, AdamW, AdamWConfig};
use crate::TrainError;

/// Everything that shapes a training run. Two runs with the same config and data write the same
/// files (up to timings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub lora: LoraConfig,
    pub optimizer: AdamWConfig,
    pub epochs: usize,
    /// Stop after this many optimizer steps (default: all epochs).
    pub max_steps: Option<usize>,
    /// Sequences per forward pass (right-padded).
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub warmup_ratio: f64,
    /// Global gradient-norm limit (0 disables clipping).
    pub max_grad_norm: f64,
    /// Longest sequence in tokens; longer ones are shortened (see `data`).
    pub max_len: usize,
    /// Share of examples held out for the eval loss (at least one when there are two or more).
    pub eval_fraction: f64,
    /// Evaluate every this many optimizer steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every this many optimizer steps (0: only at the end).
    pub save_every: usize,
    /// Checkpoints kept on disk (the newest).
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// DPO's β.
    pub beta: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraConfig::default(),
            optimizer: AdamWConfig::default(),
            epochs: 1,
            max_steps: None,
            micro_batch: 1,
            grad_accum: 8,
            warmup_ratio: 0.05,
            max_grad_norm: 1.0,
            max_len: 1024,
            eval_fraction: 0.05,
            eval_every: 50,
            save_every: 50,
            keep_checkpoints: 2,
            seed: 0,
            beta: 0.1,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        self.lora.validate().map_err(TrainError::Config)?;
        let positive = [
            ("epochs", self.epochs),
            ("micro_batch", self.micro_batch),
            ("grad_accum", self.grad_accum),
            ("max_len", self.max_len),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(TrainError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.max_len < 2 {
            return Err(TrainError::Config("max_len must be at least 2".to_string()));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(TrainError::Config(format!(
                "eval_fraction must be in [0, 1), got {}",
                self.eval_fraction
            )));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(TrainError::Config(format!(
                "warmup_ratio must be in [0, 1], got {}",
                self.warmup_ratio
            )));
        }
        if self.optimizer.learning_rate <= 0.0 {
            return Err(TrainError::Config(
                "learning_rate must be positive".to_string(),
            ));
        }
        if self.beta <= 0.0 {
            return Err(TrainError::Config("beta must be positive".to_string()));
        }
        Ok(())
    }

    pub fn examples_per_step(&self) -> usize {
        self.micro_batch * self.grad_accum
    }
}

pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn mix(parts: &[u64]) -> u64 {
    let mut state = 0x5EED_u64;
    for part in parts {
        state ^= *part;
        splitmix64(&mut state);
    }
    splitmix64(&mut state)
}

/// A seeded Fisher–Yates permutation of `0..n`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// Splits `n` examples into (train, eval) indices with a seeded shuffle.
pub fn train_eval_split(n: usize, eval_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let order = shuffled(n, mix(&[seed, 0xE7A1]));
    let mut eval_count = (n as f64 * eval_fraction).round() as usize;
    if eval_fraction > 0.0 && n >= 2 {
        eval_count = eval_count.max(1);
    }
    eval_count = eval_count.min(n.saturating_sub(1));
    let mut eval: Vec<usize> = order[..eval_count].to_vec();
    let mut train: Vec<usize> = order[eval_count..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    (train, eval)
}

/// Sum of the log-probabilities of each sequence's reply tokens, `(batch,)`, and the number of
/// reply tokens per sequence. Sequences are right-padded: a causal mask keeps padding invisible
/// to the real tokens before it, so no padding mask is needed.
pub fn reply_logprobs(
    model: &Llama,
    batch: &[&TokenSequence],
    differentiable: bool,
) -> Result<(Tensor, Vec<usize>), TrainError> {
    let device = model.device().clone();
    let width = batch.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
    if width < 2 {
        return Err(TrainError::Config(
            "a training sequence needs at least two tokens".to_string(),
        ));
    }
    let mut ids = vec![0u32; batch.len() * width];
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mut owners = Vec::new();
    let mut counts = Vec::with_capacity(batch.len());
    for (b, sequence) in batch.iter().enumerate() {
        ids[b * width..b * width + sequence.tokens.len()].copy_from_slice(&sequence.tokens);
        let first = sequence.reply_start.max(1);
        for t in first..sequence.tokens.len() {
            rows.push((b * width + t - 1) as u32);
            targets.push(sequence.tokens[t]);
            owners.push(b);
        }
        counts.push(sequence.tokens.len() - first);
    }
    let ids = Tensor::from_vec(ids, (batch.len(), width), &device)?;
    let hidden = model.forward_hidden_causal(&ids, differentiable)?;
    let hidden_size = model.config.hidden_size;
    let picked_rows = Tensor::from_vec(rows, targets.len(), &device)?;
    let selected = hidden
        .reshape((batch.len() * width, hidden_size))?
        .index_select(&picked_rows, 0)?;
    let target_count = targets.len();
    let picked = model.target_log_probs(&selected, &targets)?.unsqueeze(1)?;
    let mut segments = vec![0f32; batch.len() * target_count];
    for (i, &owner) in owners.iter().enumerate() {
        segments[owner * target_count + i] = 1.0;
    }
    let segments = Tensor::from_vec(segments, (batch.len(), target_count), &device)?;
    let sums = segments.matmul(&picked)?.squeeze(1)?;
    Ok((sums, counts))
}

/// One optimizer step's numbers for the loss log.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    /// The step's loss (already normalised the way the gradient is).
    pub loss: f64,
    /// Extra named figures (DPO: rewards, margin, accuracy), already averaged over the step.
    pub extra: Vec<(&'static str, f64)>,
}

/// The part that differs between SFT and DPO.
pub trait Objective {
    type Example;

    /// Tokens the forward passes read for `example` (for tokens/s).
    fn tokens(&self, example: &Self::Example) -> usize;

    /// A differentiable loss for one micro-batch, scaled so that summing the micro-batches of
    /// a step gives the step's loss, and its contribution to the step's stats. `step` holds
    /// every example of the optimizer step (for normalisation).
    fn micro_batch_loss(
        &self,
        model: &Llama,
        micro: &[(usize, &Self::Example)],
        step: &[(usize, &Self::Example)],
    ) -> Result<(Tensor, StepStats), TrainError>;

    /// The held-out figures (no dropout, no gradient), `eval_loss` first.
    fn evaluate(
        &self,
        model: &Llama,
        examples: &[(usize, &Self::Example)],
    ) -> Result<Vec<(&'static str, f64)>, TrainError>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    kind: String,
    step: usize,
    total_steps: usize,
    config: TrainConfig,
    data_fingerprint: String,
}

/// How the run went, written as `train_summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub kind: String,
    pub model_id: String,
    pub train_examples: usize,
    pub eval_examples: usize,
    pub truncation: TruncationReport,
    pub steps: usize,
    pub resumed_from_step: Option<usize>,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub final_eval: Vec<(String, f64)>,
    pub tokens_processed: usize,
    pub wall_seconds: f64,
    pub tokens_per_second: f64,
    pub config: TrainConfig,
}

/// Inputs of one training run.
pub struct RunSpec<'a> {
    pub kind: &'static str,
    pub out_dir: &'a Path,
    pub config: &'a TrainConfig,
    pub model_id: String,
    /// Identifies the training data (file digest); a resume refuses different data.
    pub data_fingerprint: String,
    pub truncation: TruncationReport,
    pub resume: bool,
    pub progress: bool,
}

fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

fn latest_checkpoint(out: &Path) -> Result<Option<(usize, PathBuf)>, TrainError> {
    let dir = out.join("checkpoints");
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut best = None;
    for entry in std::fs::read_dir(&dir).map_err(|e| TrainError::file(&dir, e))? {
        let entry = entry.map_err(|e| TrainError::file(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if entry.path().join("trainer_state.json").is_file()
                && best.as_ref().is_none_or(|(b, _)| step > *b)
            {
                best = Some((step, entry.path()));
            }
        }
    }
    Ok(best)
}

fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::file(path, e))?;
    mirrorsim_data::io::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
    Ok(())
}

fn save_checkpoint(
    spec: &RunSpec<'_>,
    model: &Llama,
    optimizer: &AdamW,
    step: usize,
    total_steps: usize,
) -> Result<(), TrainError> {
    let final_dir = checkpoint_dir(spec.out_dir, step);
    let tmp = spec
        .out_dir
        .join("checkpoints")
        .join(format!(".step-{step:06}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::file(&tmp, e))?;
    }
    model.save_peft_adapter(&tmp, &spec.config.lora, Some(spec.model_id.clone()))?;
    let state = optimizer.state_tensors();
    let optimizer_path = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&state, &optimizer_path)
        .map_err(|e| TrainError::file(&optimizer_path, e))?;
    write_json_atomic(
        &tmp.join("trainer_state.json"),
        &TrainerState {
            kind: spec.kind.to_string(),
            step,
            total_steps,
            config: spec.config.clone(),
            data_fingerprint: spec.data_fingerprint.clone(),
        },
    )?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| TrainError::file(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::file(&final_dir, e))?;
    prune_checkpoints(spec.out_dir, spec.config.keep_checkpoints.max(1))
}

fn prune_checkpoints(out: &Path, keep: usize) -> Result<(), TrainError> {
    let dir = out.join("checkpoints");
    let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(&dir)
        .map_err(|e| TrainError::file(&dir, e))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            Some((step, entry.path()))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for (_, path) in steps.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).map_err(|e| TrainError::file(&path, e))?;
    }
    Ok(())
}

/// Loss log lines up to and including `step` (what a resumed run keeps).
fn truncate_log(path: &Path, step: usize) -> Result<(), TrainError> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(Value::as_u64))
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    mirrorsim_data::io::write_atomic(path, |w| w.write_all(body.as_bytes()))?;
    Ok(())
}

/// Runs training over `train` (and evaluates on `eval`), starting from the adapters already on
/// `model`, or from the latest checkpoint when `spec.resume`. Leaves the trained adapter on the
/// model and in `spec.out_dir`.
pub fn train<O: Objective>(
    spec: &RunSpec<'_>,
    model: &mut Llama,
    objective: &O,
    train: &[(usize, &O::Example)],
    eval: &[(usize, &O::Example)],
) -> Result<TrainSummary, TrainError> {
    let config = spec.config;
    config.validate()?;
    if train.is_empty() {
        return Err(TrainError::Config("no training examples".to_string()));
    }
    std::fs::create_dir_all(spec.out_dir).map_err(|e| TrainError::file(spec.out_dir, e))?;
    let per_step = config.examples_per_step();
    let stream_len = train.len() * config.epochs;
    let mut total_steps = stream_len.div_ceil(per_step);
    if let Some(max) = config.max_steps {
        total_steps = total_steps.min(max);
    }
    let warmup = (total_steps as f64 * config.warmup_ratio).ceil() as usize;
    let log_path = spec.out_dir.join("loss.jsonl");

    let mut start_step = 0;
    let mut resumed_from = None;
    match (spec.resume, latest_checkpoint(spec.out_dir)?) {
        (true, Some((step, dir))) => {
            let state_path = dir.join("trainer_state.json");
            let text = std::fs::read_to_string(&state_path)
                .map_err(|e| TrainError::file(&state_path, e))?;
            let state: TrainerState =
                serde_json::from_str(&text).map_err(|e| TrainError::file(&state_path, e))?;
            let refuse = |message: String| TrainError::Resume {
                path: dir.clone(),
                message,
            };
            if state.kind != spec.kind {
                return Err(refuse(format!(
                    "it is a {} run, not {}",
                    state.kind, spec.kind
                )));
            }
            if &state.config != config {
                return Err(refuse(
                    "the training config differs from the checkpoint's (see its trainer_state.json)"
                        .to_string(),
                ));
            }
            if state.data_fingerprint != spec.data_fingerprint {
                return Err(refuse(
                    "the training data differs from the checkpoint's".to_string(),
                ));
            }
            model.load_peft_adapter(&dir)?;
            model.set_lora_dropout_rate(config.lora.dropout);
            start_step = step;
            resumed_from = Some(step);
            truncate_log(&log_path, step)?;
        }
        (false, Some((step, dir))) => {
            return Err(TrainError::Resume {
                path: dir,
                message: format!(
                    "{} already holds checkpoints (latest: step {step}); pass --resume to go on \
                     or choose another --out",
                    spec.out_dir.display()
                ),
            });
        }
        (_, None) => {
            if log_path.exists() {
                std::fs::remove_file(&log_path).map_err(|e| TrainError::file(&log_path, e))?;
            }
        }
    }
    let mut optimizer = AdamW::new(model.lora_parameters(), config.optimizer.clone())?;
    if let Some(step) = resumed_from {
        let path = checkpoint_dir(spec.out_dir, step).join("optimizer.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| TrainError::file(&path, e))?;
        optimizer
            .load_state(tensors, step)
            .map_err(|message| TrainError::Resume {
                path: path.clone(),
                message,
            })?;
    }
    if optimizer.params().is_empty() {
        return Err(TrainError::Config(
            "the model has no LoRA adapters to train".to_string(),
        ));
    }
    let dropout = DropoutStream::new(config.seed);

    // The example stream: epoch e is a seeded permutation of the training set.
    let epoch_orders: Vec<Vec<usize>> = (0..config.epochs)
        .map(|epoch| shuffled(train.len(), mix(&[config.seed, epoch as u64])))
        .collect();
    let stream_item = |i: usize| &train[epoch_orders[i / train.len()][i % train.len()]];

    let bar = if spec.progress {
        indicatif::ProgressBar::new(total_steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed} elapsed, ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(spec.kind.to_string());
    bar.set_position(start_step as u64);

    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| TrainError::file(&log_path, e))?;
    let started = Instant::now();
    let mut tokens_processed = 0usize;
    let mut first_loss = None;
    let mut last_loss = None;
    let mut final_eval = Vec::new();
    for step in start_step..total_steps {
        let begin = step * per_step;
        let end = (begin + per_step).min(stream_len);
        let step_examples: Vec<(usize, &O::Example)> = (begin..end)
            .map(|i| (stream_item(i).0, stream_item(i).1))
            .collect();
        let mut grads: Option<Vec<Tensor>> = None;
        let mut stats = StepStats::default();
        let mut extra: HashMap<&'static str, f64> = HashMap::new();
        let mut extra_order: Vec<&'static str> = Vec::new();
        model.set_lora_dropout(Some(dropout.clone()));
        for (micro_index, micro) in step_examples.chunks(config.micro_batch).enumerate() {
            dropout.reseed(mix(&[config.seed, step as u64, micro_index as u64, 0xD80]));
            let (loss, micro_stats) = objective.micro_batch_loss(model, micro, &step_examples)?;
            let store = loss.backward()?;
            let micro_grads: Vec<Tensor> = optimizer
                .params()
                .iter()
                .map(|(_, var)| match store.get(var.as_tensor()) {
                    Some(grad) => Ok(grad.clone()),
                    None => var.as_tensor().zeros_like(),
                })
                .collect::<Result<_, _>>()?;
            grads = Some(match grads {
                None => micro_grads,
                Some(sum) => sum
                    .iter()
                    .zip(&micro_grads)
                    .map(|(a, b)| a + b)
                    .collect::<Result<_, _>>()?,
            });
            stats.loss += micro_stats.loss;
            for (name, value) in micro_stats.extra {
                if !extra.contains_key(name) {
                    extra_order.push(name);
                }
                *extra.entry(name).or_insert(0.0) += value;
            }
            tokens_processed += micro
                .iter()
                .map(|(_, e)| objective.tokens(e))
                .sum::<usize>();
        }
        model.set_lora_dropout(None);
        let mut grads = grads.unwrap_or_default();
        let grad_norm = clip_grad_norm(&mut grads, config.max_grad_norm)?;
        let lr = scheduled_lr(config.optimizer.learning_rate, step, warmup, total_steps);
        optimizer.step(&grads, lr)?;
        let done = step + 1;
        let elapsed = started.elapsed().as_secs_f64();
        let mut record = serde_json::Map::new();
        record.insert("step".into(), done.into());
        record.insert(
            "epoch".into(),
            serde_json::json!(end as f64 / train.len() as f64),
        );
        record.insert("loss".into(), serde_json::json!(stats.loss));
        for name in &extra_order {
            record.insert((*name).into(), serde_json::json!(extra[name]));
        }
        record.insert("lr".into(), serde_json::json!(lr));
        record.insert("grad_norm".into(), serde_json::json!(grad_norm));
        record.insert("tokens".into(), tokens_processed.into());
        record.insert("elapsed_s".into(), serde_json::json!(elapsed));
        let evaluate_now = !eval.is_empty()
            && ((config.eval_every > 0 && done % config.eval_every == 0) || done == total_steps);
        if evaluate_now {
            let figures = objective.evaluate(model, eval)?;
            for (name, value) in &figures {
                record.insert((*name).into(), serde_json::json!(value));
            }
            if done == total_steps {
                final_eval = figures.iter().map(|(n, v)| (n.to_string(), *v)).collect();
            }
        }
        let line = Value::Object(record).to_string();
        writeln!(log, "{line}").map_err(|e| TrainError::file(&log_path, e))?;
        log.flush().map_err(|e| TrainError::file(&log_path, e))?;
        first_loss.get_or_insert(stats.loss);
        last_loss = Some(stats.loss);
        tracing::debug!(step = done, loss = stats.loss, lr, grad_norm, "step");
        bar.set_message(format!(
            "loss {:.4}, {:.0} tok/s",
            stats.loss,
            tokens_processed as f64 / elapsed.max(1e-9)
        ));
        bar.inc(1);
        if (config.save_every > 0 && done % config.save_every == 0) || done == total_steps {
            save_checkpoint(spec, model, &optimizer, done, total_steps)?;
        }
    }
    bar.finish_and_clear();
    model.save_peft_adapter(spec.out_dir, &config.lora, Some(spec.model_id.clone()))?;
    let wall = started.elapsed().as_secs_f64();
    let summary = TrainSummary {
        kind: spec.kind.to_string(),
        model_id: spec.model_id.clone(),
        train_examples: train.len(),
        eval_examples: eval.len(),
        truncation: spec.truncation.clone(),
        steps: total_steps,
        resumed_from_step: resumed_from,
        first_loss,
        last_loss,
        final_eval,
        tokens_processed,
        wall_seconds: wall,
        tokens_per_second: tokens_processed as f64 / wall.max(1e-9),
        config: config.clone(),
    };
    write_json_atomic(&spec.out_dir.join("train_summary.json"), &summary)?;
    Ok(summary)
}

/// A content digest of a file (FNV-1a over its bytes), for resume checks.
pub fn file_fingerprint(path: &Path) -> Result<String, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::file(path, e))?;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in &bytes {
        hash ^= *byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{}:{hash:016x}", bytes.len()))
}

/// Scalar value of a one-element tensor as f64.
pub(crate) fn scalar(tensor: &Tensor) -> Result<f64, TrainError> {
    Ok(tensor.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (train, eval) = train_eval_split(20, 0.1, 7);
        assert_eq!(eval.len(), 2);
        assert_eq!(train.len(), 18);
        let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert_eq!(train_eval_split(20, 0.1, 7), (train, eval));
        assert_ne!(
            train_eval_split(20, 0.1, 8).1,
            train_eval_split(20, 0.1, 7).1
        );
        assert_eq!(train_eval_split(1, 0.5, 0).1.len(), 0);
        assert_eq!(train_eval_split(3, 0.01, 0).1.len(), 1);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut order = shuffled(50, 3);
        assert_ne!(order, (0..50).collect::<Vec<_>>());
        order.sort_unstable();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
    }
}
