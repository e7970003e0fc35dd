//! File-to-file entry points: load a model, read a training file, train, write the adapter.

use std::path::{Path, PathBuf};

use mirrorsim_data::DataError;
use mirrorsim_llm::chat_template::ChatTemplate;
use mirrorsim_llm::engine::{EngineOptions, LocalEngine, MatmulPrecision};
use mirrorsim_llm::model::Llama;
use mirrorsim_llm::tokenizer::ModelTokenizer;

use crate::data::{read_dpo, read_sft, ChatEncoder, TruncationReport};
use crate::dpo::{DpoObjective, ReferenceLogprobs};
use crate::session::{
    file_fingerprint, train, train_eval_split, RunSpec, TrainConfig, TrainSummary,
};
use crate::sft::SftObjective;
use crate::TrainError;

/// Where the data and the model come from, and where the run goes.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// A GGUF file or an HF model directory.
    pub model: PathBuf,
    pub data: PathBuf,
    /// Held-out examples; without it `eval_fraction` of `data` is held out.
    pub eval_data: Option<PathBuf>,
    pub out: PathBuf,
    /// CUDA device ordinal (needs the `cuda` feature); `None` trains on the CPU.
    pub cuda_device: Option<usize>,
    /// Precision of the frozen base weights' products on the CPU (bf16 needs Intel AMX); the
    /// adapters, attention and the optimizer stay f32.
    pub matmul: MatmulPrecision,
}

struct LoadedModel {
    model: Llama,
    tokenizer: ModelTokenizer,
    template: ChatTemplate,
    model_id: String,
}

fn load(paths: &RunPaths) -> Result<LoadedModel, TrainError> {
    // Checked before the model loads, so a mistyped path fails at once.
    for data in std::iter::once(&paths.data).chain(paths.eval_data.as_ref()) {
        if !data.is_file() {
            return Err(DataError::Missing { path: data.clone() }.into());
        }
    }
    let engine = LocalEngine::load(
        &paths.model,
        EngineOptions {
            cuda_device: paths.cuda_device,
            ..EngineOptions::default()
        },
    )?;
    let (mut model, tokenizer, template, model_id) = engine.into_parts();
    if paths.matmul == MatmulPrecision::Bf16 {
        let amx = mirrorsim_llm::model::amx::amx()
            .map_err(|message| TrainError::file(&paths.model, message))?;
        model.pack_bf16(amx, true)?;
    }
    let template = template.ok_or_else(|| {
        TrainError::file(
            &paths.model,
            "the model has no chat template, which training needs to render conversations",
        )
    })?;
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        model_id,
    })
}

fn fingerprint(paths: &RunPaths) -> Result<String, TrainError> {
    let mut print = file_fingerprint(&paths.data)?;
    if let Some(eval) = &paths.eval_data {
        print.push('+');
        print.push_str(&file_fingerprint(eval)?);
    }
    Ok(print)
}

/// Indices of (train, eval) examples: all of the first file and all of the eval file, or a
/// seeded split of the one file.
fn split(
    train_len: usize,
    eval_len: Option<usize>,
    config: &TrainConfig,
) -> (Vec<usize>, Vec<usize>) {
    match eval_len {
        Some(eval_len) => (
            (0..train_len).collect(),
            (train_len..train_len + eval_len).collect(),
        ),
        None => train_eval_split(train_len, config.eval_fraction, config.seed),
    }
}

/// LoRA SFT of `paths.model` on the SFT file `paths.data`.
pub fn run_sft(
    paths: &RunPaths,
    config: &TrainConfig,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary, TrainError> {
    config.validate()?;
    let mut loaded = load(paths)?;
    let encoder = ChatEncoder {
        tokenizer: &loaded.tokenizer,
        template: &loaded.template,
        max_len: config.max_len,
    };
    let mut truncation = TruncationReport::default();
    let mut examples = read_sft(&paths.data, &encoder, &mut truncation)?;
    let train_len = examples.len();
    let eval_len = match &paths.eval_data {
        Some(eval) => {
            let extra = read_sft(eval, &encoder, &mut truncation)?;
            let len = extra.len();
            examples.extend(extra);
            Some(len)
        }
        None => None,
    };
    report_truncation(&truncation, config.max_len);
    let (train_idx, eval_idx) = split(train_len, eval_len, config);
    let train_set: Vec<_> = train_idx.iter().map(|&i| (i, &examples[i])).collect();
    let eval_set: Vec<_> = eval_idx.iter().map(|&i| (i, &examples[i])).collect();
    loaded.model.attach_lora(&config.lora, config.seed)?;
    let spec = RunSpec {
        kind: "sft",
        out_dir: &paths.out,
        config,
        model_id: loaded.model_id.clone(),
        data_fingerprint: fingerprint(paths)?,
        truncation,
        resume,
        progress,
    };
    train(
        &spec,
        &mut loaded.model,
        &SftObjective,
        &train_set,
        &eval_set,
    )
}

/// Sigmoid DPO of `paths.model` (plus the SFT adapter `adapter`, trained further) on the DPO file
/// `paths.data`. With an adapter, its rank, α and target modules replace `config.lora`'s.
pub fn run_dpo(
    paths: &RunPaths,
    adapter: Option<&Path>,
    config: &TrainConfig,
    resume: bool,
    progress: bool,
) -> Result<TrainSummary, TrainError> {
    let mut loaded = load(paths)?;
    let mut config = config.clone();
    match adapter {
        Some(dir) => {
            let loaded_config = loaded.model.load_peft_adapter(dir)?;
            config.lora.rank = loaded_config.rank;
            config.lora.alpha = loaded_config.alpha;
            config.lora.target_modules = loaded_config.target_modules;
            loaded.model.set_lora_dropout_rate(config.lora.dropout);
        }
        None => loaded.model.attach_lora(&config.lora, config.seed)?,
    }
    config.validate()?;
    let encoder = ChatEncoder {
        tokenizer: &loaded.tokenizer,
        template: &loaded.template,
        max_len: config.max_len,
    };
    let mut truncation = TruncationReport::default();
    let mut examples = read_dpo(&paths.data, &encoder, &mut truncation)?;
    let train_len = examples.len();
    let eval_len = match &paths.eval_data {
        Some(eval) => {
            let extra = read_dpo(eval, &encoder, &mut truncation)?;
            let len = extra.len();
            examples.extend(extra);
            Some(len)
        }
        None => None,
    };
    report_truncation(&truncation, config.max_len);
    let (train_idx, eval_idx) = split(train_len, eval_len, &config);
    let train_set: Vec<_> = train_idx.iter().map(|&i| (i, &examples[i])).collect();
    let eval_set: Vec<_> = eval_idx.iter().map(|&i| (i, &examples[i])).collect();
    let reference_path = paths.out.join("reference_logprobs.json");
    let data_fingerprint = fingerprint(paths)?;
    let stored = if resume && reference_path.is_file() {
        ReferenceLogprobs::load(&reference_path, &data_fingerprint)?
    } else {
        None
    };
    let reference = match stored {
        Some(reference) => reference,
        None => {
            let all: Vec<_> = train_set.iter().chain(&eval_set).copied().collect();
            let reference = ReferenceLogprobs::compute(&loaded.model, &all, progress)?;
            std::fs::create_dir_all(&paths.out).map_err(|e| TrainError::file(&paths.out, e))?;
            reference.save(&reference_path, &data_fingerprint)?;
            reference
        }
    };
    let objective = DpoObjective {
        beta: config.beta,
        reference,
    };
    let spec = RunSpec {
        kind: "dpo",
        out_dir: &paths.out,
        config: &config,
        model_id: loaded.model_id.clone(),
        data_fingerprint,
        truncation,
        resume,
        progress,
    };
    train(&spec, &mut loaded.model, &objective, &train_set, &eval_set)
}

fn report_truncation(report: &TruncationReport, max_len: usize) {
    if report.history_trimmed > 0 || report.hard_truncated > 0 {
        tracing::warn!(
            "of {} sequences, {} were longer than {max_len} tokens and lost {} history lines in \
             all; {} were still too long and were cut from the start of the prompt",
            report.sequences,
            report.history_trimmed,
            report.history_lines_removed,
            report.hard_truncated
        );
    }
}
