//! The local engine: our decoder, the model's tokenizer and chat template, in-process.
//!
//! Generation prefills each distinct prompt once (one row), then decodes all samples of all
//! requests together: the prompt caches are stacked left-padded into one batch cache (each
//! prompt's cache repeated for its `n` samples), with a padding mask and per-row positions.
//! Finished rows are dropped from the batch as it shrinks.
//!
//! Choice scoring prefills the shared prefix (the rendered prompt up to the continuation) once,
//! then runs a batch of continuations on top of it (right-padded; a causal mask keeps padding
//! invisible to real tokens) without copying the prefix cache per row (see
//! [`Llama::forward_hidden_after_prefix`]) and reads the label logits at each continuation's
//! last token.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use crate::backend::{
    Backend, ChatMessage, ChoiceRequest, ChoiceScores, Completion, ContinuationRequest,
    ContinuationScores, FinishReason, GenerateRequest, LlmError, Prompt, SamplingParams,
    TokenLogprobs,
};
use crate::chat_template::ChatTemplate;
use crate::model::llama::{causal_mask, left_padding_mask};
use crate::model::{KvCache, Llama, Positions};
use crate::sampling::{find_stop, log_softmax, restricted_softmax, top_n, Sampler};
use crate::tokenizer::ModelTokenizer;

/// How the engine runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// CUDA device ordinal; `None` runs on the CPU. Needs the `cuda` feature.
    pub cuda_device: Option<usize>,
    /// Most sequences decoded together in one batch.
    pub max_decode_batch: usize,
    /// Most continuations run together on top of one shared prefix; 0 picks by device: 4 on the
    /// CPU, where larger batches make attention temporaries of tens of MB that are slower to
    /// allocate and stream than the gemm saves (measured in BENCHMARKS.md), 16 on CUDA, where
    /// fewer, larger launches win.
    pub max_score_batch: usize,
    /// A PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`),
    /// merged into the base weights at load.
    pub adapter: Option<std::path::PathBuf>,
    /// Precision of the dense layers' and attention's products on the CPU.
    pub matmul: MatmulPrecision,
}

/// How the dense layers (and, in inference, attention) multiply on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 weights and activations: the reference, on every CPU.
    #[default]
    F32,
    /// bf16 weights, activations, queries, keys, values and attention weights with f32
    /// accumulation and softmax on Intel AMX (Xeon 4th generation, Sapphire Rapids, and later):
    /// about twice the prefill speed, half the weight bytes per decode step; next-token
    /// log-probabilities move by up to about 0.06 and choice probabilities by a few thousandths
    /// (tests/engine_smollm2.rs). Refused where AMX (or AVX-512 BF16) is missing.
    Bf16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = LlmError;

    fn from_str(text: &str) -> Result<Self, LlmError> {
        match text.trim() {
            "f32" => Ok(MatmulPrecision::F32),
            "bf16" => Ok(MatmulPrecision::Bf16),
            other => Err(LlmError::BadRequest(format!(
                "matmul precision must be f32 or bf16, not {other:?}"
            ))),
        }
    }
}

/// The matmul precision named by `MIRRORSIM_MATMUL` (`f32` or `bf16`), f32 when unset: how the
/// benchmarks and the engine tests choose it (the CLI reads it through `--matmul`).
pub fn matmul_from_env() -> Result<MatmulPrecision, LlmError> {
    match std::env::var("MIRRORSIM_MATMUL") {
        Ok(text) => text.parse(),
        Err(_) => Ok(MatmulPrecision::F32),
    }
}

/// The CUDA device named by `MIRRORSIM_CUDA` (an ordinal), `None` when unset: how the
/// benchmarks and the engine tests are pointed at a GPU (the CLI reads it through `--cuda`).
pub fn cuda_device_from_env() -> Result<Option<usize>, LlmError> {
    match std::env::var("MIRRORSIM_CUDA") {
        Ok(ordinal) => ordinal.trim().parse().map(Some).map_err(|_| {
            LlmError::BadRequest(format!(
                "MIRRORSIM_CUDA must be a CUDA device ordinal such as 0, not {ordinal:?}"
            ))
        }),
        Err(_) => Ok(None),
    }
}

/// Tells glibc's malloc to keep freed memory (up to 32 MiB blocks from the heap, no trimming)
/// instead of returning it to the kernel. A forward pass allocates and frees the same
/// multi-megabyte activations in every layer; with glibc's defaults many of them were fresh
/// `mmap`s, and zero-filling their pages on first touch took about a fifth of scoring time
/// (`perf`: `clear_page_erms`, `exc_page_fault`). The cost is that the process keeps its peak
/// heap. Applied once per process; a no-op off glibc.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            extern "C" {
                fn mallopt(
                    param: std::os::raw::c_int,
                    value: std::os::raw::c_int,
                ) -> std::os::raw::c_int;
            }
            const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
            const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
            // SAFETY: mallopt only changes malloc's tuning parameters; both values are in the
            // documented ranges (the mmap threshold's maximum on 64-bit is 32 MiB).
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cuda_device: None,
            max_decode_batch: 16,
            max_score_batch: 0,
            adapter: None,
            matmul: MatmulPrecision::F32,
        }
    }
}

/// The in-process [`Backend`]. Holds no mutable state, so one engine serves many threads.
pub struct LocalEngine {
    model: Llama,
    tokenizer: ModelTokenizer,
    template: Option<ChatTemplate>,
    model_id: String,
    options: EngineOptions,
}

fn compute(e: candle_core::Error) -> LlmError {
    LlmError::Compute(e.to_string())
}

fn load_error(path: &Path, message: impl Into<String>) -> LlmError {
    LlmError::Load {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// File name + the first 16 hex digits of the sha256 of `files` read in order.
fn fingerprint(name: &str, files: &[std::path::PathBuf]) -> Result<String, LlmError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    for file in files {
        let mut reader = std::fs::File::open(file).map_err(|e| load_error(file, e.to_string()))?;
        loop {
            let read = reader
                .read(&mut buffer)
                .map_err(|e| load_error(file, e.to_string()))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{name}@{hex}"))
}

/// One sequence being decoded.
struct Row {
    request: usize,
    sample: usize,
    prompt_len: usize,
    sampler: Sampler,
    generated: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
    finished: Option<Completion>,
}

impl LocalEngine {
    /// Loads a `.gguf` file or an HF model directory (config.json, *.safetensors,
    /// tokenizer.json, tokenizer_config.json).
    pub fn load(path: &Path, options: EngineOptions) -> Result<LocalEngine, LlmError> {
        keep_freed_memory();
        let device = match options.cuda_device {
            None => Device::Cpu,
            Some(ordinal) => Device::new_cuda(ordinal)
                .map_err(|e| load_error(path, format!("CUDA device {ordinal}: {e}")))?,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let (model, tokenizer, template, files) = if path.is_dir() {
            let model = Llama::load_hf_dir(path, &device)?;
            let tokenizer = ModelTokenizer::from_file(&path.join("tokenizer.json"))?;
            let template =
                ChatTemplate::from_tokenizer_config(&path.join("tokenizer_config.json"))?;
            let files = crate::model::llama::weight_files(path)?;
            (model, tokenizer, template, files)
        } else if path.is_file() {
            let content = crate::gguf::read_content(path)?;
            let model = crate::gguf::load_llama(path, &content, &device)?;
            let tokenizer = ModelTokenizer::from_gguf(&content)?;
            let template = ChatTemplate::from_gguf(&content)?;
            (model, tokenizer, template, vec![path.to_path_buf()])
        } else {
            return Err(load_error(
                path,
                "not found (expected a .gguf file or an HF model directory)",
            ));
        };
        if tokenizer.vocab_size() > model.config.vocab_size {
            return Err(load_error(
                path,
                format!(
                    "tokenizer has {} tokens but the model's output layer only {}",
                    tokenizer.vocab_size(),
                    model.config.vocab_size
                ),
            ));
        }
        let (model, model_id) = match &options.adapter {
            None => (model, fingerprint(&name, &files)?),
            Some(adapter) => {
                let mut model = model;
                model.load_peft_adapter(adapter)?;
                model.merge_lora()?;
                let adapter_files = [
                    adapter.join(crate::model::lora::ADAPTER_CONFIG_FILE),
                    adapter.join(crate::model::lora::ADAPTER_WEIGHTS_FILE),
                ];
                let adapter_name = adapter
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| adapter.display().to_string());
                let id = format!(
                    "{}+lora:{}",
                    fingerprint(&name, &files)?,
                    fingerprint(&adapter_name, &adapter_files)?
                );
                (model, id)
            }
        };
        let mut model = model;
        let mut model_id = model_id;
        if options.matmul == MatmulPrecision::Bf16 {
            let amx = crate::model::amx::amx().map_err(|message| load_error(path, message))?;
            model.pack_bf16(amx, false)?;
            // bf16 answers differ from f32 ones: journals and reports must not mix them.
            model_id.push_str("+bf16");
        }
        Ok(LocalEngine {
            model,
            tokenizer,
            template,
            model_id,
            options,
        })
    }

    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The model, tokenizer, chat template and model id, for code that changes the weights
    /// (the trainer).
    pub fn into_parts(self) -> (Llama, ModelTokenizer, Option<ChatTemplate>, String) {
        (self.model, self.tokenizer, self.template, self.model_id)
    }

    pub fn tokenizer(&self) -> &ModelTokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    fn template(&self) -> Result<&ChatTemplate, LlmError> {
        self.template.as_ref().ok_or_else(|| {
            LlmError::Template("the model has no chat template; use a text prompt".to_string())
        })
    }

    /// The token ids the model reads for `prompt`.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, LlmError> {
        match prompt {
            Prompt::Chat {
                messages,
                continue_final,
            } => {
                let text = self
                    .template()?
                    .render(messages, !continue_final, *continue_final)?;
                self.tokenizer.encode(&text, false)
            }
            Prompt::Text { text } => self.tokenizer.encode(text, self.tokenizer.add_bos_token()),
        }
    }

    /// Full-vocabulary logits after each prefix of `tokens`, for checks against references.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, LlmError> {
        let ids = Tensor::new(tokens, self.model.device())
            .and_then(|t| t.unsqueeze(0))
            .map_err(compute)?;
        let logits = self.model.forward(&ids, false).map_err(compute)?;
        logits.squeeze(0).and_then(|l| l.to_vec2()).map_err(compute)
    }

    /// Prefills one prompt; returns its cache and the logits after its last token.
    fn prefill(
        &self,
        tokens: &[u32],
        extra_capacity: usize,
    ) -> Result<(KvCache, Vec<f32>), LlmError> {
        if tokens.is_empty() {
            return Err(LlmError::BadRequest("the prompt has no tokens".to_string()));
        }
        let device = self.model.device();
        let run = || -> candle_core::Result<(KvCache, Vec<f32>)> {
            let mut cache = KvCache::new(&self.model, 1, tokens.len() + extra_capacity)?;
            let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
            let mask = if tokens.len() > 1 {
                Some(causal_mask(tokens.len(), 0, device)?)
            } else {
                None
            };
            let hidden = self.model.forward_hidden(
                &ids,
                Positions::Uniform(0),
                Some(&mut cache),
                mask.as_ref(),
                false,
            )?;
            let last = hidden.narrow(1, tokens.len() - 1, 1)?.squeeze(1)?;
            let logits = self
                .model
                .logits_inference(&last)?
                .squeeze(0)?
                .to_vec1::<f32>()?;
            Ok((cache, logits))
        };
        run().map_err(compute)
    }

    fn check_params(params: &SamplingParams) -> Result<(), LlmError> {
        if params.n == 0 {
            return Err(LlmError::BadRequest("n must be at least 1".to_string()));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(LlmError::BadRequest(format!(
                "top_p must be in (0, 1], got {}",
                params.top_p
            )));
        }
        if params.temperature.is_nan() || params.temperature < 0.0 {
            return Err(LlmError::BadRequest(format!(
                "temperature must be >= 0, got {}",
                params.temperature
            )));
        }
        Ok(())
    }

    /// Takes the token sampled for `row` from `logits`; returns true when the row is finished.
    fn advance_row(
        &self,
        row: &mut Row,
        logits: &[f32],
        params: &SamplingParams,
    ) -> Result<bool, LlmError> {
        let token = row.sampler.sample(logits);
        let is_eos = self.tokenizer.eos_token_ids().contains(&token);
        if let Some(top) = params.logprobs {
            let log_probs = log_softmax(logits);
            row.logprobs.push(TokenLogprobs {
                token: self.tokenizer.token_text(token),
                token_id: token,
                logprob: log_probs[token as usize],
                top: top_n(&log_probs, top)
                    .into_iter()
                    .map(|(id, lp)| (self.tokenizer.token_text(id), id, lp))
                    .collect(),
            });
        }
        if is_eos {
            self.finish(row, FinishReason::Stop, None, params)?;
            return Ok(true);
        }
        row.generated.push(token);
        if !params.stop.is_empty() {
            let text = self.tokenizer.decode(&row.generated)?;
            if let Some(cut) = find_stop(&text, &params.stop) {
                self.finish(
                    row,
                    FinishReason::Stop,
                    Some(text[..cut].to_string()),
                    params,
                )?;
                return Ok(true);
            }
        }
        if row.generated.len() >= params.max_tokens {
            self.finish(row, FinishReason::Length, None, params)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn finish(
        &self,
        row: &mut Row,
        reason: FinishReason,
        text: Option<String>,
        params: &SamplingParams,
    ) -> Result<(), LlmError> {
        let text = match text {
            Some(text) => text,
            None => self.tokenizer.decode(&row.generated)?,
        };
        row.finished = Some(Completion {
            text,
            prompt_tokens: row.prompt_len,
            completion_tokens: row.generated.len(),
            finish_reason: reason,
            logprobs: params.logprobs.map(|_| std::mem::take(&mut row.logprobs)),
        });
        Ok(())
    }

    /// Decodes a group of rows together until all are finished. `first_logits[r]` are the
    /// logits after row `r`'s prompt; `caches[r]` the index of its prompt cache in `prompt_caches`.
    fn decode_rows(
        &self,
        rows: &mut [Row],
        first_logits: &[&[f32]],
        caches: &[usize],
        prompt_caches: &[KvCache],
        params: &[&SamplingParams],
    ) -> Result<(), LlmError> {
        let mut active: Vec<usize> = Vec::new();
        for (r, row) in rows.iter_mut().enumerate() {
            if !self.advance_row(row, first_logits[r], params[r])? {
                active.push(r);
            }
        }
        if active.is_empty() {
            return Ok(());
        }
        // Consecutive rows of one prompt share its cache, stacked once per row.
        let mut parts: Vec<(&KvCache, usize)> = Vec::new();
        let mut last_cache = usize::MAX;
        for &r in &active {
            if caches[r] == last_cache {
                if let Some(part) = parts.last_mut() {
                    part.1 += 1;
                }
            } else {
                parts.push((&prompt_caches[caches[r]], 1));
                last_cache = caches[r];
            }
        }
        let most_new = active
            .iter()
            .map(|&r| params[r].max_tokens)
            .max()
            .unwrap_or(0);
        let longest = parts.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        let (mut cache, mut pads) =
            KvCache::left_padded(&parts, longest + most_new).map_err(compute)?;
        let device = self.model.device().clone();
        while !active.is_empty() {
            let tokens: Vec<u32> = active
                .iter()
                .map(|&r| rows[r].generated.last().copied().unwrap_or(0))
                .collect();
            let starts: Vec<usize> = active
                .iter()
                .map(|&r| rows[r].prompt_len + rows[r].generated.len() - 1)
                .collect();
            let mut step = || -> candle_core::Result<Vec<Vec<f32>>> {
                let ids = Tensor::new(tokens.as_slice(), &device)?.unsqueeze(1)?;
                let mask = if pads.iter().any(|&p| p > 0) {
                    Some(left_padding_mask(&pads, cache.len() + 1, &device)?)
                } else {
                    None
                };
                let hidden = self.model.forward_hidden(
                    &ids,
                    Positions::PerRow(&starts),
                    Some(&mut cache),
                    mask.as_ref(),
                    false,
                )?;
                self.model
                    .logits_inference(&hidden.squeeze(1)?)?
                    .to_vec2::<f32>()
            };
            let logits = step().map_err(compute)?;
            let mut keep = Vec::with_capacity(active.len());
            for (slot, &r) in active.iter().enumerate() {
                if rows[r].finished.is_some() {
                    continue;
                }
                if !self.advance_row(&mut rows[r], &logits[slot], params[r])? {
                    keep.push(slot);
                }
            }
            if keep.is_empty() {
                break;
            }
            // Finished rows stay in the batch (decoding an ignored token) until dropping them
            // pays for copying the cache.
            if keep.len() * 4 <= active.len() * 3 {
                cache = cache.select_rows(&keep).map_err(compute)?;
                pads = keep.iter().map(|&slot| pads[slot]).collect();
                active = keep.iter().map(|&slot| active[slot]).collect();
            }
        }
        Ok(())
    }

    /// Scores with or without sharing the prompt prefix across continuations (the shared path
    /// is what [`Backend::score_choices`] uses; the other exists to check and measure it).
    pub fn score_choices_with(
        &self,
        requests: &[ChoiceRequest],
        share_prefix: bool,
    ) -> Result<Vec<ChoiceScores>, LlmError> {
        requests
            .iter()
            .map(|request| self.score_one(request, share_prefix))
            .collect()
    }

    /// The id of each label as the single token that follows `context` (e.g. `Behavior: [`
    /// then `A`). Tokenizers differ at this boundary: SmolLM2 reads `[A` as `[`, `A`, Qwen2
    /// as one token `[A`, yet both read ` [A` as ` [`, `A`, so the context matters.
    pub fn label_token_ids(&self, context: &str, labels: &[String]) -> Result<Vec<u32>, LlmError> {
        let context_ids = self.tokenizer.encode(context, false)?;
        labels
            .iter()
            .map(|label| {
                let ids = self.tokenizer.encode(&format!("{context}{label}"), false)?;
                if ids.len() == context_ids.len() + 1 && ids.starts_with(&context_ids) {
                    Ok(ids[context_ids.len()])
                } else {
                    Err(LlmError::BadRequest(format!(
                        "label {label:?} is not one token after the prompt's end {:?} for this \
                         tokenizer (with the label it ends in tokens {:?}); end the prompt so \
                         that each label starts a new token, e.g. with \" [\"",
                        Self::tail_of(context),
                        &ids[ids.len().saturating_sub(4)..]
                    )))
                }
            })
            .collect()
    }

    /// The last word of `text`: from its last whitespace before the final non-blank
    /// character on (` [` in `…Behavior: [`). Pre-tokenizers split there, so the label's
    /// token after the text is normally the one after this tail.
    fn tail_of(text: &str) -> &str {
        let last_word = text.trim_end().len();
        let start = text[..last_word].rfind(char::is_whitespace).unwrap_or(0);
        &text[start..]
    }

    /// The full text the model reads for each continuation.
    fn choice_texts(&self, request: &ChoiceRequest) -> Result<Vec<String>, LlmError> {
        match &request.prompt {
            Prompt::Text { text } => Ok(request
                .continuations
                .iter()
                .map(|c| format!("{text}{c}"))
                .collect()),
            Prompt::Chat {
                messages,
                continue_final,
            } => {
                let template = self.template()?;
                request
                    .continuations
                    .iter()
                    .map(|c| {
                        let mut with: Vec<ChatMessage> = messages.clone();
                        match (continue_final, with.last_mut()) {
                            (true, Some(last)) => last.content.push_str(c),
                            _ => with.push(ChatMessage::new("assistant", c.clone())),
                        }
                        template.render(&with, false, true)
                    })
                    .collect()
            }
        }
    }

    /// Scores one request. Each continuation's full text is tokenized whole, so the tokens at
    /// the prompt/continuation boundary are exactly what the model would read unshared; the
    /// shared prefix is the longest token prefix common to all of them (normally the rendered
    /// prompt up to the continuation), leaving at least one token per continuation.
    fn score_one(
        &self,
        request: &ChoiceRequest,
        share_prefix: bool,
    ) -> Result<ChoiceScores, LlmError> {
        if request.labels.is_empty() {
            return Err(LlmError::BadRequest("no labels to score".to_string()));
        }
        let add_bos =
            matches!(request.prompt, Prompt::Text { .. }) && self.tokenizer.add_bos_token();
        let texts = self.choice_texts(request)?;
        let full: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, add_bos))
            .collect::<Result<_, _>>()?;
        // Continuations normally end alike ("…Behavior: ["), so label ids are resolved once
        // per distinct tail; where a text's tokens do not end with its tail's (the context
        // changed the split), the whole text is the context.
        let mut ids_after_tail: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut label_ids: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
        for (text, tokens) in texts.iter().zip(&full) {
            let tail = Self::tail_of(text);
            if let Some(ids) = ids_after_tail.get(tail) {
                label_ids.push(ids.clone());
                continue;
            }
            let tail_ids = self.tokenizer.encode(tail, false)?;
            if !tail_ids.is_empty() && tokens.ends_with(&tail_ids) {
                let ids = self.label_token_ids(tail, &request.labels)?;
                ids_after_tail.insert(tail, ids.clone());
                label_ids.push(ids);
            } else {
                label_ids.push(self.label_token_ids(text, &request.labels)?);
            }
        }
        if full.iter().any(Vec::is_empty) {
            return Err(LlmError::BadRequest(
                "a prompt with its continuation has no tokens".to_string(),
            ));
        }
        let count = full.len();
        let mut order: Vec<usize> = (0..count).collect();
        order.sort_by_key(|&i| full[i].len());
        let mut label_logits: Vec<Vec<f32>> = vec![Vec::new(); count];
        let shared_len = if share_prefix && count > 0 {
            let shortest = full[order[0]].len();
            let mut common = shortest - 1;
            for sequence in &full[1..] {
                common = full[0]
                    .iter()
                    .zip(sequence)
                    .take(common)
                    .take_while(|(a, b)| a == b)
                    .count();
            }
            common
        } else {
            0
        };
        let batch = match self.options.max_score_batch {
            0 if self.model.device().is_cpu() => 4,
            0 => 16,
            n => n,
        };
        let mut prompt_tokens = 0usize;
        if shared_len > 0 {
            let prefix = &full[0][..shared_len];
            let (prefix_cache, _) = self.prefill(prefix, 0)?;
            prompt_tokens += shared_len;
            for chunk in order.chunks(batch) {
                let suffixes: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|&i| full[i][shared_len..].to_vec())
                    .collect();
                prompt_tokens += suffixes.iter().map(Vec::len).sum::<usize>();
                let ids: Vec<&[u32]> = chunk.iter().map(|&i| label_ids[i].as_slice()).collect();
                let logits = self.last_label_logits(&suffixes, Some(&prefix_cache), &ids)?;
                for (&i, l) in chunk.iter().zip(logits) {
                    label_logits[i] = l;
                }
            }
        } else {
            for chunk in order.chunks(batch) {
                let sequences: Vec<Vec<u32>> = chunk.iter().map(|&i| full[i].clone()).collect();
                prompt_tokens += sequences.iter().map(Vec::len).sum::<usize>();
                let ids: Vec<&[u32]> = chunk.iter().map(|&i| label_ids[i].as_slice()).collect();
                let logits = self.last_label_logits(&sequences, None, &ids)?;
                for (&i, l) in chunk.iter().zip(logits) {
                    label_logits[i] = l;
                }
            }
        }
        let all_labels: Vec<usize> = (0..request.labels.len()).collect();
        Ok(ChoiceScores {
            distributions: label_logits
                .iter()
                .map(|l| restricted_softmax(l, &all_labels))
                .collect(),
            missing_labels: vec![Vec::new(); count],
            prompt_tokens,
        })
    }

    /// The prompt's own text and, per continuation, the full text the model reads (see
    /// [`ContinuationRequest`]).
    fn continuation_texts(
        &self,
        request: &ContinuationRequest,
    ) -> Result<(String, Vec<String>), LlmError> {
        match &request.prompt {
            Prompt::Text { text } => Ok((
                text.clone(),
                request
                    .continuations
                    .iter()
                    .map(|c| format!("{text}{c}"))
                    .collect(),
            )),
            Prompt::Chat {
                messages,
                continue_final,
            } => {
                let template = self.template()?;
                let extends_last =
                    *continue_final && messages.last().is_some_and(|m| m.role == "assistant");
                let prompt = if extends_last {
                    template.render(messages, false, true)?
                } else {
                    template.render(messages, true, false)?
                };
                let texts = request
                    .continuations
                    .iter()
                    .map(|c| {
                        let mut with: Vec<ChatMessage> = messages.clone();
                        match with.last_mut() {
                            Some(last) if extends_last => last.content.push_str(c),
                            _ => with.push(ChatMessage::new("assistant", c.clone())),
                        }
                        template.render(&with, false, false)
                    })
                    .collect::<Result<_, _>>()?;
                Ok((prompt, texts))
            }
        }
    }

    /// Scores one continuation request: each full text is tokenized whole; the scored tokens
    /// of a continuation are those after its longest token prefix in common with the prompt
    /// alone (so a merge at the boundary is scored as the model reads it). The prefix all
    /// continuations share is read once.
    pub fn score_continuation_request(
        &self,
        request: &ContinuationRequest,
    ) -> Result<ContinuationScores, LlmError> {
        if request.continuations.is_empty() {
            return Err(LlmError::BadRequest(
                "no continuations to score".to_string(),
            ));
        }
        let add_bos =
            matches!(request.prompt, Prompt::Text { .. }) && self.tokenizer.add_bos_token();
        let (prompt_text, texts) = self.continuation_texts(request)?;
        let prompt_ids = self.tokenizer.encode(&prompt_text, add_bos)?;
        let full: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenizer.encode(t, add_bos))
            .collect::<Result<_, _>>()?;
        let mut starts = Vec::with_capacity(full.len());
        for (i, tokens) in full.iter().enumerate() {
            let start = tokens
                .iter()
                .zip(&prompt_ids)
                .take_while(|(a, b)| a == b)
                .count();
            if start == 0 {
                return Err(LlmError::BadRequest(
                    "the prompt has no tokens to condition on".to_string(),
                ));
            }
            if start >= tokens.len() {
                return Err(LlmError::BadRequest(format!(
                    "continuation {i} ({:?}) adds no tokens to the prompt",
                    request.continuations[i]
                )));
            }
            starts.push(start);
        }
        let shared_len = starts.iter().copied().min().unwrap_or(1);
        let (prefix_cache, prefix_logits) = self.prefill(&full[0][..shared_len], 0)?;
        let prefix_log_probs = log_softmax(&prefix_logits);
        let mut logprobs = vec![0.0f64; full.len()];
        let mut prompt_tokens = shared_len;
        let mut order: Vec<usize> = (0..full.len()).collect();
        order.sort_by_key(|&i| full[i].len());
        let batch = match self.options.max_score_batch {
            0 if self.model.device().is_cpu() => 4,
            0 => 16,
            n => n,
        };
        for chunk in order.chunks(batch) {
            let suffixes: Vec<&[u32]> = chunk.iter().map(|&i| &full[i][shared_len..]).collect();
            prompt_tokens += suffixes.iter().map(|s| s.len()).sum::<usize>();
            let longest = suffixes.iter().map(|s| s.len()).max().unwrap_or(0);
            let run = || -> candle_core::Result<Vec<f64>> {
                let mut ids = Vec::with_capacity(chunk.len() * longest);
                for s in &suffixes {
                    ids.extend_from_slice(s);
                    ids.extend(std::iter::repeat_n(0u32, longest - s.len()));
                }
                let ids = Tensor::from_vec(ids, (chunk.len(), longest), self.model.device())?;
                let hidden = self
                    .model
                    .forward_hidden_after_prefix(&ids, &prefix_cache)?;
                let mut sums = Vec::with_capacity(chunk.len());
                for (row, &i) in chunk.iter().enumerate() {
                    let tokens = &full[i];
                    let mut sum = 0.0f64;
                    let mut first = starts[i];
                    if first == shared_len {
                        sum += prefix_log_probs[tokens[shared_len] as usize];
                        first += 1;
                    }
                    // Token t is predicted by the suffix's hidden state at t - 1 - shared_len.
                    if first < tokens.len() {
                        let rows = hidden.get(row)?.narrow(
                            0,
                            first - 1 - shared_len,
                            tokens.len() - first,
                        )?;
                        let logits = self.model.logits_inference(&rows)?.to_vec2::<f32>()?;
                        for (t, row_logits) in (first..tokens.len()).zip(&logits) {
                            sum += log_softmax(row_logits)[tokens[t] as usize];
                        }
                    }
                    sums.push(sum);
                }
                Ok(sums)
            };
            for (&i, sum) in chunk.iter().zip(run().map_err(compute)?) {
                logprobs[i] = sum;
            }
        }
        Ok(ContinuationScores {
            logprobs,
            tokens: full
                .iter()
                .zip(&starts)
                .map(|(f, &start)| f.len() - start)
                .collect(),
            prompt_tokens,
        })
    }

    /// Runs `sequences` (right-padded into one batch) after `prefix` (if any) and returns, per
    /// sequence, the logits of its `label_ids` after its last token.
    fn last_label_logits(
        &self,
        sequences: &[Vec<u32>],
        prefix: Option<&KvCache>,
        label_ids: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, LlmError> {
        let device = self.model.device();
        let batch = sequences.len();
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let mut ids = Vec::with_capacity(batch * longest);
            for s in sequences {
                ids.extend_from_slice(s);
                ids.extend(std::iter::repeat_n(0u32, longest - s.len()));
            }
            let ids = Tensor::from_vec(ids, (batch, longest), device)?;
            let hidden = match prefix {
                Some(prefix) => self.model.forward_hidden_after_prefix(&ids, prefix)?,
                None => {
                    let mask = if longest > 1 {
                        Some(causal_mask(longest, 0, device)?)
                    } else {
                        None
                    };
                    self.model.forward_hidden(
                        &ids,
                        Positions::Uniform(0),
                        None,
                        mask.as_ref(),
                        false,
                    )?
                }
            };
            let lasts = sequences
                .iter()
                .enumerate()
                .map(|(row, s)| hidden.get(row)?.narrow(0, s.len() - 1, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let lasts = Tensor::cat(&lasts, 0)?;
            let mut union: Vec<u32> = label_ids
                .iter()
                .flat_map(|ids| ids.iter().copied())
                .collect();
            union.sort_unstable();
            union.dedup();
            let logits = self
                .model
                .logits_for_tokens(&lasts, &union)?
                .to_vec2::<f32>()?;
            Ok(logits
                .iter()
                .zip(label_ids)
                .map(|(row, ids)| {
                    ids.iter()
                        .map(|id| {
                            union
                                .binary_search(id)
                                .map_or(f32::NEG_INFINITY, |k| row[k])
                        })
                        .collect()
                })
                .collect())
        };
        run().map_err(compute)
    }
}

impl Backend for LocalEngine {
    fn model_id(&self) -> String {
        self.model_id.clone()
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Vec<Completion>>, LlmError> {
        for request in requests {
            Self::check_params(&request.params)?;
        }
        let prompts: Vec<Vec<u32>> = requests
            .iter()
            .map(|r| self.prompt_tokens(&r.prompt))
            .collect::<Result<_, _>>()?;
        // Identical prompts are prefilled once.
        let mut cache_of_prompt: HashMap<&[u32], usize> = HashMap::new();
        let mut prompt_caches = Vec::new();
        let mut prompt_logits = Vec::new();
        let mut cache_index = Vec::with_capacity(requests.len());
        for tokens in &prompts {
            let index = match cache_of_prompt.get(tokens.as_slice()) {
                Some(&index) => index,
                None => {
                    let (cache, logits) = self.prefill(tokens, 0)?;
                    prompt_caches.push(cache);
                    prompt_logits.push(logits);
                    cache_of_prompt.insert(tokens.as_slice(), prompt_caches.len() - 1);
                    prompt_caches.len() - 1
                }
            };
            cache_index.push(index);
        }
        let mut rows: Vec<Row> = Vec::new();
        for (r, request) in requests.iter().enumerate() {
            for sample in 0..request.params.n {
                rows.push(Row {
                    request: r,
                    sample,
                    prompt_len: prompts[r].len(),
                    sampler: Sampler::new(&request.params, sample as u64),
                    generated: Vec::new(),
                    logprobs: Vec::new(),
                    finished: None,
                });
            }
        }
        let batch = self.options.max_decode_batch.max(1);
        for chunk in rows.chunks_mut(batch) {
            let first: Vec<&[f32]> = chunk
                .iter()
                .map(|row| prompt_logits[cache_index[row.request]].as_slice())
                .collect();
            let caches: Vec<usize> = chunk.iter().map(|row| cache_index[row.request]).collect();
            let params: Vec<&SamplingParams> = chunk
                .iter()
                .map(|row| &requests[row.request].params)
                .collect();
            self.decode_rows(chunk, &first, &caches, &prompt_caches, &params)?;
        }
        let mut out: Vec<Vec<Completion>> = requests
            .iter()
            .map(|r| Vec::with_capacity(r.params.n))
            .collect();
        for row in rows {
            let completion = row.finished.ok_or_else(|| {
                LlmError::Compute(format!(
                    "sample {} of request {} did not finish",
                    row.sample, row.request
                ))
            })?;
            out[row.request].push(completion);
        }
        Ok(out)
    }

    fn score_choices(&self, requests: &[ChoiceRequest]) -> Result<Vec<ChoiceScores>, LlmError> {
        self.score_choices_with(requests, true)
    }

    fn score_continuations(
        &self,
        requests: &[ContinuationRequest],
    ) -> Result<Vec<ContinuationScores>, LlmError> {
        requests
            .iter()
            .map(|request| self.score_continuation_request(request))
            .collect()
    }
}
