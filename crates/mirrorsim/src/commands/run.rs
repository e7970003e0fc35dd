//! `mirrorsim run PIPELINE.toml`: scenes → rationales (strong, weak) → predictor scores →
//! distillation → prior hints → LoRA training (SFT, DPO) → evaluation with a report, into one
//! run directory. Every stage but scenes runs only when its section is present. Each stage
//! stores a fingerprint (sha256 of its config and of its input files) in `stages.json` and is
//! skipped while it matches and its outputs exist; every LLM call goes through the run journal,
//! so even a rerun stage repeats no request.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use mirrorsim_data::scenes::{build_scenes, write_scenes, SceneConfig, SceneRecord};
use mirrorsim_data::{read_source, Catalog, ReadOptions, SourceSpec};
use mirrorsim_distill::records::{read_jsonl, write_jsonl};
use mirrorsim_distill::stages::{
    read_rationales, read_scenes, BackendMeter, DistillPaths, MeteredBackend,
};
use mirrorsim_distill::{
    distill, generate_rationales, score_rationales, write_distill, DistillConfig, GenerateConfig,
    Journal, JournaledBackend, RationaleRecord, Role, ScoreConfig, ScoreRecord,
};
use mirrorsim_eval::agent4rec::select_cases;
use mirrorsim_eval::evaluate::{
    coverage_notes, resolve_cutoff, score_baselines, simulator_predictor_metrics,
};
use mirrorsim_eval::report::read_loss_curves;
use mirrorsim_eval::simulate::score_simulator;
use mirrorsim_eval::{
    BaselineConfig, BaselineKind, FittedBaselines, MetricsFile, Mode, PredictionLine,
    SimulatorConfig,
};
use mirrorsim_llm::engine::{EngineOptions, LocalEngine};
use mirrorsim_llm::http::{HttpBackend, HttpConfig};
use mirrorsim_llm::model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use mirrorsim_llm::model::LoraConfig;
use mirrorsim_llm::Backend;
use mirrorsim_train::optim::AdamWConfig;
use mirrorsim_train::runs::{run_dpo, run_sft, RunPaths};
use mirrorsim_train::session::TrainConfig;

use crate::commands::eval::{print_metrics, write_eval_folder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::hint::{hint_folder, print_hint_summary, HintJob};
use super::shard::{merge_shard_files, Shard};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (see configs/demo.toml).
    pipeline: PathBuf,
    /// Run only this shard of the LLM stages (scenes partitioned by a hash of their id), e.g. 0/4.
    #[arg(long, conflicts_with = "merge_shards")]
    shard: Option<Shard>,
    /// Merge the shard outputs 0..N into the unsharded files, then distill, train and evaluate.
    #[arg(long, value_name = "N")]
    merge_shards: Option<usize>,
    /// Stages to run (default: all), comma-separated:
    /// scenes,rationales,score,distill,hint,train,eval.
    #[arg(long, value_delimiter = ',')]
    stages: Option<Vec<StageName>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StageName {
    Scenes,
    Rationales,
    Score,
    Distill,
    Hint,
    Train,
    Eval,
}

/// The pipeline file. Relative paths are relative to the file's folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipeline {
    run_dir: PathBuf,
    source: SourceSection,
    #[serde(default)]
    scenes: SceneConfig,
    models: BTreeMap<String, ModelEntry>,
    /// `[rationales]` and `[score]`: the LLM stages and distillation run only when both are
    /// present.
    rationales: Option<RationalesSection>,
    score: Option<ScoreSection>,
    #[serde(default)]
    distill: DistillConfig,
    /// `[hint]`: write collaborative priors' picks into the prompts (`mirrorsim hint`); the
    /// eval stage then scores the hinted eval scenes.
    hint: Option<HintSection>,
    /// `[train.sft]` / `[train.dpo]`: each stage runs only when its section is present.
    train: Option<TrainSection>,
    /// `[eval]`: runs only when present.
    eval: Option<EvalSection>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainSection {
    /// The local [models.*] entry fine-tuned (default: the score stage's predictor).
    model: Option<String>,
    sft: Option<TrainStageSection>,
    dpo: Option<TrainStageSection>,
}

/// Which file SFT trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SftData {
    /// `distill/sft.jsonl`: rationale then behaviour.
    Sft,
    /// `distill/direct.jsonl`: the behaviour only.
    Direct,
    /// `hint/sft.jsonl`: the hinted train scenes, behaviour only (needs `[hint]`).
    Hint,
}

/// `[hint]`: the options of `mirrorsim hint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HintSection {
    /// One or more of knn, ease, popularity, sequential; each pick gets its own note.
    priors: Vec<BaselineKind>,
    /// Train scenes decided in this last share of the pre-cutoff period are hinted (by priors
    /// fitted before the earliest of them); the others are dropped.
    #[serde(default = "default_train_fraction")]
    train_fraction: f64,
    /// `hint/sft.jsonl` holds the first this many hinted train scenes (default: all of them).
    sft_examples: Option<usize>,
    /// The priors' settings, as `[eval.baseline]`.
    #[serde(default)]
    baseline: BaselineConfig,
}

fn default_train_fraction() -> f64 {
    0.1
}

/// The knobs of one training stage; absent ones keep `TrainConfig`'s defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainStageSection {
    /// SFT only: `sft` (default) or `direct`. DPO always trains on `distill/dpo.jsonl`.
    data: Option<SftData>,
    epochs: Option<usize>,
    max_steps: Option<usize>,
    lr: Option<f64>,
    weight_decay: Option<f64>,
    rank: Option<usize>,
    alpha: Option<f64>,
    lora_dropout: Option<f32>,
    target_modules: Option<Vec<String>>,
    micro_batch: Option<usize>,
    grad_accum: Option<usize>,
    warmup_ratio: Option<f64>,
    max_grad_norm: Option<f64>,
    max_len: Option<usize>,
    eval_fraction: Option<f64>,
    eval_every: Option<usize>,
    save_every: Option<usize>,
    keep_checkpoints: Option<usize>,
    seed: Option<u64>,
    /// DPO only.
    beta: Option<f64>,
}

impl TrainStageSection {
    fn config(&self) -> TrainConfig {
        let d = TrainConfig::default();
        TrainConfig {
            lora: LoraConfig {
                rank: self.rank.unwrap_or(d.lora.rank),
                alpha: self.alpha.unwrap_or(d.lora.alpha),
                dropout: self.lora_dropout.unwrap_or(d.lora.dropout),
                target_modules: self
                    .target_modules
                    .clone()
                    .unwrap_or_else(|| d.lora.target_modules.clone()),
            },
            optimizer: AdamWConfig {
                learning_rate: self.lr.unwrap_or(d.optimizer.learning_rate),
                weight_decay: self.weight_decay.unwrap_or(d.optimizer.weight_decay),
                ..d.optimizer.clone()
            },
            epochs: self.epochs.unwrap_or(d.epochs),
            max_steps: self.max_steps.or(d.max_steps),
            micro_batch: self.micro_batch.unwrap_or(d.micro_batch),
            grad_accum: self.grad_accum.unwrap_or(d.grad_accum),
            warmup_ratio: self.warmup_ratio.unwrap_or(d.warmup_ratio),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            max_len: self.max_len.unwrap_or(d.max_len),
            eval_fraction: self.eval_fraction.unwrap_or(d.eval_fraction),
            eval_every: self.eval_every.unwrap_or(d.eval_every),
            save_every: self.save_every.unwrap_or(d.save_every),
            keep_checkpoints: self.keep_checkpoints.unwrap_or(d.keep_checkpoints),
            seed: self.seed.unwrap_or(d.seed),
            beta: self.beta.unwrap_or(d.beta),
        }
    }
}

/// A simulator the eval stage scores: the base model or it plus a trained adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SimulatorName {
    Base,
    Sft,
    Dpo,
}

impl SimulatorName {
    fn label(self) -> &'static str {
        match self {
            SimulatorName::Base => "base",
            SimulatorName::Sft => "sft",
            SimulatorName::Dpo => "dpo",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalSection {
    /// The local [models.*] entry evaluated (default: `[train] model`, else the predictor).
    model: Option<String>,
    /// Default: the base model and every adapter a `[train.*]` section trains.
    simulators: Option<Vec<SimulatorName>>,
    #[serde(default = "default_eval_mode")]
    mode: Mode,
    #[serde(default = "default_eval_repeats")]
    repeats: usize,
    /// Only the first this many eval scenes.
    max_scenes: Option<usize>,
    /// Among random, popularity, knn, ease, sequential; `[]` for none.
    #[serde(default = "default_baselines")]
    baselines: Vec<String>,
    #[serde(default)]
    baseline: BaselineConfig,
    /// Re-score every scene under the cyclic rotations of its options.
    #[serde(default = "default_true")]
    rotations: bool,
    /// Ask the Agent4Rec yes/no questions.
    #[serde(default = "default_true")]
    agent4rec: bool,
    #[serde(default = "default_rationale_temperature")]
    rationale_temperature: f32,
    #[serde(default = "default_rationale_tokens")]
    rationale_tokens: usize,
    #[serde(default)]
    seed: u64,
}

fn default_eval_mode() -> Mode {
    SimulatorConfig::default().mode
}
fn default_eval_repeats() -> usize {
    SimulatorConfig::default().repeats
}
fn default_baselines() -> Vec<String> {
    BaselineKind::ALL
        .iter()
        .map(|k| k.name().to_owned())
        .collect()
}
fn default_true() -> bool {
    true
}
fn default_rationale_temperature() -> f32 {
    SimulatorConfig::default().rationale_temperature
}
fn default_rationale_tokens() -> usize {
    SimulatorConfig::default().rationale_tokens
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSection {
    /// FORMAT:PATH, e.g. movielens:../data/ml-latest-small.
    spec: String,
    #[serde(default)]
    skip_bad_rows: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    /// A GGUF file or an HF model directory; "default" or absent: the default SmolLM2.
    path: Option<PathBuf>,
    /// An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (API key from $OPENAI_API_KEY).
    endpoint: Option<String>,
    served_model: Option<String>,
    max_concurrency: Option<usize>,
    /// Dollars per million prompt / completion tokens, for the cost line of HTTP stages.
    price_per_million_input: Option<f64>,
    price_per_million_output: Option<f64>,
}

/// What identifies a model's answers (not its concurrency or price).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
enum ModelIdentity {
    Local(PathBuf),
    Http {
        endpoint: String,
        served_model: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SceneSplit {
    Train,
    Eval,
}

fn default_split() -> SceneSplit {
    SceneSplit::Train
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RationalesSection {
    strong_model: String,
    weak_model: String,
    #[serde(default = "default_n")]
    n: usize,
    #[serde(default = "default_temperature")]
    temperature: f32,
    strong_temperature: Option<f32>,
    weak_temperature: Option<f32>,
    #[serde(default = "default_top_p")]
    top_p: f32,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default)]
    seed: u64,
    /// Which scene file the LLM stages read.
    #[serde(default = "default_split")]
    scenes: SceneSplit,
    /// Only the first this many scenes of that file.
    max_scenes: Option<usize>,
}

fn default_n() -> usize {
    GenerateConfig::default().n
}
fn default_temperature() -> f32 {
    GenerateConfig::default().temperature
}
fn default_top_p() -> f32 {
    GenerateConfig::default().top_p
}
fn default_max_tokens() -> usize {
    GenerateConfig::default().max_tokens
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreSection {
    predictor_model: String,
    #[serde(default)]
    seed: u64,
}

impl Pipeline {
    fn load(path: &Path) -> anyhow::Result<Pipeline> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the pipeline file {}", path.display()))?;
        let mut pipeline: Pipeline = toml::from_str(&text)
            .with_context(|| format!("in the pipeline file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        pipeline.resolve_paths(base)?;
        pipeline.check_model_names(path)?;
        Ok(pipeline)
    }

    fn resolve_paths(&mut self, base: &Path) -> anyhow::Result<()> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        self.run_dir = resolve(&self.run_dir);
        let mut spec: SourceSpec = self
            .source
            .spec
            .parse()
            .with_context(|| format!("[source] spec = {:?}", self.source.spec))?;
        spec.path = resolve(&spec.path);
        self.source.spec = spec.to_string();
        if let Some(dir) = &self.scenes.prompts_dir {
            self.scenes.prompts_dir = Some(resolve(dir));
        }
        for entry in self.models.values_mut() {
            if let Some(path) = &entry.path {
                if path != Path::new("default") {
                    entry.path = Some(resolve(path));
                }
            }
        }
        Ok(())
    }

    fn check_model_names(&self, file: &Path) -> anyhow::Result<()> {
        let mut named = Vec::new();
        match (&self.rationales, &self.score) {
            (Some(rationales), Some(score)) => named.extend([
                ("[rationales] strong_model", &rationales.strong_model),
                ("[rationales] weak_model", &rationales.weak_model),
                ("[score] predictor_model", &score.predictor_model),
            ]),
            (None, None) => {}
            (Some(_), None) => bail!(
                "{}: [rationales] without [score]: the rationales are only used once the \
                 predictor has scored them; add [score] (or drop [rationales])",
                file.display()
            ),
            (None, Some(_)) => bail!(
                "{}: [score] without [rationales]: there is nothing to score; add [rationales] \
                 (or drop [score])",
                file.display()
            ),
        }
        for (field, name) in named {
            if !self.models.contains_key(name) {
                bail!(
                    "{}: {field} = {name:?} names no [models.{name}] entry (entries: {})",
                    file.display(),
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        self.check_train_and_eval(file)?;
        for (name, entry) in &self.models {
            if entry.endpoint.is_some() && entry.path.is_some() {
                bail!(
                    "{}: [models.{name}] has both path and endpoint; give one",
                    file.display()
                );
            }
            if entry.endpoint.is_some() && entry.served_model.is_none() {
                bail!(
                    "{}: [models.{name}] has an endpoint but no served_model",
                    file.display()
                );
            }
        }
        Ok(())
    }

    fn check_train_and_eval(&self, file: &Path) -> anyhow::Result<()> {
        let file = file.display();
        let local = |field: &str, name: &str| -> anyhow::Result<()> {
            match self.models.get(name) {
                None => bail!(
                    "{file}: {field} = {name:?} names no [models.{name}] entry (entries: {})",
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                Some(entry) if entry.endpoint.is_some() => bail!(
                    "{file}: {field} = {name:?} is an HTTP model; training and evaluation need \
                     a local one (a path)"
                ),
                Some(_) => Ok(()),
            }
        };
        if let Some(hint) = &self.hint {
            let names: Vec<&str> = hint.priors.iter().map(|k| k.name()).collect();
            super::eval::parse_hint_priors(&names.join(","))
                .map_err(|e| anyhow::anyhow!("{file}: [hint] priors: {e}"))?;
            if !(hint.train_fraction > 0.0 && hint.train_fraction <= 1.0) {
                bail!(
                    "{file}: [hint] train_fraction must be in (0, 1], got {}",
                    hint.train_fraction
                );
            }
        }
        if let Some(train) = &self.train {
            let Some(model) = self.train_model() else {
                bail!(
                    "{file}: [train] needs `model = \"…\"` naming a [models.*] entry (without \
                     [score] there is no predictor to default to)"
                );
            };
            local("[train] model", model)?;
            let sft_data = train.sft.as_ref().map(|s| s.data.unwrap_or(SftData::Sft));
            if sft_data == Some(SftData::Hint) && self.hint.is_none() {
                bail!("{file}: [train.sft] data = \"hint\" needs a [hint] section");
            }
            let needs_distill =
                matches!(sft_data, Some(SftData::Sft | SftData::Direct)) || train.dpo.is_some();
            if needs_distill && self.rationales.is_none() {
                bail!(
                    "{file}: [train.sft] data = \"sft\" or \"direct\" and [train.dpo] train on \
                     the distilled files, which need [rationales] and [score]; without them \
                     train SFT on data = \"hint\""
                );
            }
            if train.sft.as_ref().is_some_and(|s| s.beta.is_some()) {
                bail!("{file}: [train.sft] beta: β is a DPO setting; put it in [train.dpo]");
            }
            if train.dpo.as_ref().is_some_and(|s| s.data.is_some()) {
                bail!("{file}: [train.dpo] data: DPO always trains on distill/dpo.jsonl");
            }
            for (section, stage) in [("[train.sft]", &train.sft), ("[train.dpo]", &train.dpo)] {
                if let Some(stage) = stage {
                    stage
                        .config()
                        .validate()
                        .map_err(|e| anyhow::anyhow!("{file}: {section}: {e}"))?;
                }
            }
        }
        if let Some(eval) = &self.eval {
            let wants_model = eval.simulators.as_ref().is_none_or(|list| !list.is_empty());
            match self.eval_model() {
                Some(model) => local("[eval] model", model)?,
                None if wants_model => bail!(
                    "{file}: [eval] needs `model = \"…\"` naming a [models.*] entry (or \
                     `simulators = []` for the baselines only)"
                ),
                None => {}
            }
            BaselineKind::parse_list(&eval.baselines.join(","))
                .map_err(|e| anyhow::anyhow!("{file}: [eval] baselines: {e}"))?;
            if eval.repeats == 0 {
                bail!("{file}: [eval] repeats must be at least 1");
            }
            for name in eval.simulators.iter().flatten() {
                if *name != SimulatorName::Base && !self.trains(*name) {
                    bail!(
                        "{file}: [eval] simulators names {:?} but there is no [train.{}] section",
                        name.label(),
                        name.label()
                    );
                }
            }
        }
        Ok(())
    }

    /// `[train] model`, else the predictor.
    fn train_model(&self) -> Option<&str> {
        self.train
            .as_ref()
            .and_then(|t| t.model.as_deref())
            .or_else(|| self.score.as_ref().map(|s| s.predictor_model.as_str()))
    }

    /// `[eval] model`, else the trained model, else the predictor.
    fn eval_model(&self) -> Option<&str> {
        self.eval
            .as_ref()
            .and_then(|e| e.model.as_deref())
            .or_else(|| self.train_model())
    }

    /// SFT trains on `hint/sft.jsonl`.
    fn trains_on_hints(&self) -> bool {
        self.train
            .as_ref()
            .and_then(|t| t.sft.as_ref())
            .is_some_and(|s| s.data == Some(SftData::Hint))
    }

    /// The folder the eval stage reads its scenes from: the hinted ones with `[hint]`.
    fn eval_scenes_dir(&self) -> PathBuf {
        let folder = if self.hint.is_some() {
            "hint"
        } else {
            "scenes"
        };
        self.run_dir.join(folder)
    }

    fn trains(&self, stage: SimulatorName) -> bool {
        let Some(train) = &self.train else {
            return false;
        };
        match stage {
            SimulatorName::Base => false,
            SimulatorName::Sft => train.sft.is_some(),
            SimulatorName::Dpo => train.dpo.is_some(),
        }
    }

    /// The simulators the eval stage scores, in report order.
    fn eval_simulators(&self) -> Vec<SimulatorName> {
        match self.eval.as_ref().and_then(|e| e.simulators.clone()) {
            Some(list) => list,
            None => [SimulatorName::Base, SimulatorName::Sft, SimulatorName::Dpo]
                .into_iter()
                .filter(|&s| s == SimulatorName::Base || self.trains(s))
                .collect(),
        }
    }

    fn train_dir(&self, stage: SimulatorName) -> PathBuf {
        self.run_dir.join("train").join(stage.label())
    }

    fn scenes_file(&self, rationales: &RationalesSection) -> PathBuf {
        let name = match rationales.scenes {
            SceneSplit::Train => "scenes.train.jsonl",
            SceneSplit::Eval => "scenes.eval.jsonl",
        };
        self.run_dir.join("scenes").join(name)
    }

    /// The `[source]` dataset, read as `[source] skip_bad_rows` says.
    fn read_catalog(&self, spec: &SourceSpec) -> anyhow::Result<Catalog> {
        let options = ReadOptions {
            skip_bad_rows: self.source.skip_bad_rows,
        };
        let (catalog, _) =
            read_source(spec, &options).with_context(|| format!("reading {spec}"))?;
        Ok(catalog)
    }

    /// The rationale and score sections, when the pipeline distills.
    fn distillation(&self) -> Option<(&RationalesSection, &ScoreSection)> {
        self.rationales.as_ref().zip(self.score.as_ref())
    }
}

impl RationalesSection {
    fn generate_config(&self, role: Role) -> GenerateConfig {
        let temperature = match role {
            Role::Strong => self.strong_temperature,
            Role::Weak => self.weak_temperature,
        }
        .unwrap_or(self.temperature);
        GenerateConfig {
            n: self.n,
            temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            seed: self.seed,
            ..GenerateConfig::default()
        }
    }

    fn model_of(&self, role: Role) -> &str {
        match role {
            Role::Strong => &self.strong_model,
            Role::Weak => &self.weak_model,
        }
    }

    /// What picks the scenes the LLM stages read.
    fn selection(&self) -> (&SceneSplit, Option<usize>) {
        (&self.scenes, self.max_scenes)
    }
}

impl ModelEntry {
    fn identity(&self) -> anyhow::Result<ModelIdentity> {
        if let Some(endpoint) = &self.endpoint {
            return Ok(ModelIdentity::Http {
                endpoint: endpoint.clone(),
                served_model: self.served_model.clone().unwrap_or_default(),
            });
        }
        let path = super::model_arg::local_model_path(self.path.as_deref())?;
        Ok(ModelIdentity::Local(path))
    }
}

/// Models loaded on first use, each distinct one once.
#[derive(Default)]
struct Models {
    loaded: HashMap<ModelIdentity, Box<dyn Backend>>,
}

impl Models {
    fn get(&mut self, name: &str, entry: &ModelEntry) -> anyhow::Result<&dyn Backend> {
        let identity = entry.identity()?;
        if !self.loaded.contains_key(&identity) {
            let backend: Box<dyn Backend> = match &identity {
                ModelIdentity::Http {
                    endpoint,
                    served_model,
                } => {
                    let defaults = HttpConfig::new(endpoint.clone(), served_model.clone());
                    let config = HttpConfig {
                        max_concurrency: entry.max_concurrency.unwrap_or(defaults.max_concurrency),
                        ..defaults
                    };
                    Box::new(HttpBackend::new(config).with_context(|| {
                        format!("configuring model {name}: the HTTP backend {endpoint}")
                    })?)
                }
                ModelIdentity::Local(path) => {
                    eprintln!("loading model {name} from {}", path.display());
                    Box::new(
                        LocalEngine::load(path, super::model_arg::engine_options()).with_context(
                            || format!("loading model {name} from {}", path.display()),
                        )?,
                    )
                }
            };
            self.loaded.insert(identity.clone(), backend);
        }
        self.loaded
            .get(&identity)
            .map(|b| b.as_ref())
            .context("a loaded model went missing")
    }
}

/// Per-stage fingerprints, `stages.json` (one file per shard so machines never share it).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StageRecord {
    fingerprints: BTreeMap<String, String>,
}

struct Runner<'a> {
    pipeline: &'a Pipeline,
    selected: Option<Vec<StageName>>,
    record_path: PathBuf,
    record: StageRecord,
    models: Models,
    journal: Option<Journal>,
    journal_path: PathBuf,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// sha256 over the names and contents of `path` (a file, or every file below a folder).
fn hash_inputs(paths: &[PathBuf]) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for path in paths {
        let mut files = Vec::new();
        collect_files(path, &mut files)?;
        files.sort();
        for file in files {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            hasher.update(file.to_string_lossy().as_bytes());
            hasher.update(Sha256::digest(&bytes));
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("input {} does not exist", path.display()))?;
    if meta.is_dir() {
        for entry in
            std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?
        {
            collect_files(&entry?.path(), out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

impl<'a> Runner<'a> {
    fn wants(&self, stage: StageName) -> bool {
        self.selected.as_ref().is_none_or(|s| s.contains(&stage))
    }

    fn hint_train_and_eval(&mut self) -> anyhow::Result<()> {
        if self.wants(StageName::Hint) {
            self.hint_stage()?;
        }
        if self.wants(StageName::Train) {
            self.train_stage(SimulatorName::Sft)?;
            self.train_stage(SimulatorName::Dpo)?;
        }
        if self.wants(StageName::Eval) {
            self.eval_stage()?;
        }
        Ok(())
    }

    fn fingerprint<C: Serialize>(&self, config: &C, inputs: &[PathBuf]) -> anyhow::Result<String> {
        let config_hash = sha256_hex(&serde_json::to_vec(config)?);
        Ok(sha256_hex(
            format!("{config_hash}\n{}", hash_inputs(inputs)?).as_bytes(),
        ))
    }

    fn up_to_date(&self, key: &str, fingerprint: &str, outputs: &[PathBuf]) -> bool {
        self.record.fingerprints.get(key).map(String::as_str) == Some(fingerprint)
            && outputs.iter().all(|p| p.exists())
    }

    fn mark_done(&mut self, key: &str, fingerprint: String) -> anyhow::Result<()> {
        self.record.fingerprints.insert(key.to_owned(), fingerprint);
        mirrorsim_data::io::write_atomic(&self.record_path, |w| {
            serde_json::to_writer_pretty(&mut *w, &self.record)?;
            w.write_all(b"\n")
        })
        .with_context(|| format!("writing {}", self.record_path.display()))?;
        Ok(())
    }

    fn journal(&mut self) -> anyhow::Result<&Journal> {
        if self.journal.is_none() {
            let journal = Journal::open(&self.journal_path).with_context(|| {
                format!("opening the run journal {}", self.journal_path.display())
            })?;
            self.journal = Some(journal);
        }
        self.journal.as_ref().context("the journal went missing")
    }

    fn scenes_stage(&mut self) -> anyhow::Result<()> {
        let p = self.pipeline;
        let spec: SourceSpec = p.source.spec.parse()?;
        let dir = p.run_dir.join("scenes");
        let outputs = [
            dir.join("scenes.train.jsonl"),
            dir.join("scenes.eval.jsonl"),
            dir.join("scenes.summary.json"),
        ];
        let mut inputs = vec![spec.path.clone()];
        inputs.extend(p.scenes.prompts_dir.clone());
        let fingerprint = self.fingerprint(&(&p.source, &p.scenes), &inputs)?;
        if self.up_to_date("scenes", &fingerprint, &outputs) {
            println!("scenes: up to date");
            return Ok(());
        }
        let catalog = p.read_catalog(&spec)?;
        let set = build_scenes(&catalog, &p.scenes)?;
        write_scenes(&dir, &set)?;
        println!(
            "scenes: {} train, {} eval → {}",
            set.train.len(),
            set.eval.len(),
            dir.display()
        );
        self.mark_done("scenes", fingerprint)
    }

    /// The scenes the LLM stages work on: the configured file, its first `max_scenes`.
    fn stage_scenes(&self, rationales: &RationalesSection) -> anyhow::Result<Vec<SceneRecord>> {
        let path = self.pipeline.scenes_file(rationales);
        let mut scenes = read_scenes(&path)
            .with_context(|| format!("reading {} (run the scenes stage first)", path.display()))?;
        if let Some(max) = rationales.max_scenes {
            scenes.truncate(max);
        }
        Ok(scenes)
    }

    /// The cost line of a stage run against an HTTP model with prices: the tokens of the
    /// requests actually sent (answers from the journal cost nothing). Scoring asks the server
    /// for one generated token per continuation (`max_tokens: 1`), which it bills as output.
    fn print_cost(&self, model_name: &str, meter: &BackendMeter) {
        let Some(entry) = self.pipeline.models.get(model_name) else {
            return;
        };
        if entry.endpoint.is_none() {
            return;
        }
        let input = entry.price_per_million_input.unwrap_or(0.0);
        let output = entry.price_per_million_output.unwrap_or(0.0);
        let billed = BilledTokens::of(meter);
        let cost = billed.input as f64 / 1e6 * input + billed.output as f64 / 1e6 * output;
        println!(
            "  cost ({model_name}): {} tokens in × ${input}/M + {} out × ${output}/M = ${cost:.6} \
             ({} HTTP requests sent)",
            billed.input, billed.output, billed.http_requests
        );
    }

    fn model_fingerprint(&self, name: &str) -> anyhow::Result<ModelIdentity> {
        self.pipeline
            .models
            .get(name)
            .with_context(|| format!("no [models.{name}] entry"))?
            .identity()
    }

    fn rationales_stage(&mut self, role: Role, shard: Option<Shard>) -> anyhow::Result<()> {
        let p = self.pipeline;
        let Some((section, _)) = p.distillation() else {
            return Ok(());
        };
        let file = format!("rationales.{}.jsonl", role.name());
        let (key, out) = output_names(&p.run_dir, &file, shard);
        let config = section.generate_config(role);
        let model_name = section.model_of(role).to_owned();
        let identity = self.model_fingerprint(&model_name)?;
        let fingerprint = self.fingerprint(
            &(
                &config,
                &identity,
                section.selection(),
                shard.map(|s| s.to_string()),
            ),
            &[p.scenes_file(section)],
        )?;
        if self.up_to_date(&key, &fingerprint, std::slice::from_ref(&out)) {
            println!("{key}: up to date");
            return Ok(());
        }
        let scenes = in_shard(self.stage_scenes(section)?, shard);
        let entry = p.models.get(&model_name).context("model entry missing")?;
        self.journal()?;
        let backend = self.models.get(&model_name, entry)?;
        let journal = self.journal.as_ref().context("the journal went missing")?;
        let metered = MeteredBackend::new(backend);
        let journaled = JournaledBackend::new(&metered, journal);
        let (records, summary) = generate_rationales(&scenes, &journaled, role, &config)?;
        write_jsonl(&out, &records)?;
        let counts = journaled.counts();
        println!(
            "{key}: {summary} ({} from the journal, {} sent to {model_name}) → {}",
            counts.hits,
            counts.misses,
            out.display()
        );
        let meter = metered.meter();
        self.print_cost(&model_name, &meter);
        self.mark_done(&key, fingerprint)
    }

    fn score_stage(&mut self, shard: Option<Shard>) -> anyhow::Result<()> {
        let p = self.pipeline;
        let Some((section, score)) = p.distillation() else {
            return Ok(());
        };
        let (key, out) = output_names(&p.run_dir, "scores.jsonl", shard);
        let rationale_files: Vec<PathBuf> = [Role::Strong, Role::Weak]
            .iter()
            .map(|role| {
                output_names(
                    &p.run_dir,
                    &format!("rationales.{}.jsonl", role.name()),
                    shard,
                )
                .1
            })
            .collect();
        let config = ScoreConfig {
            seed: score.seed,
            ..ScoreConfig::default()
        };
        let model_name = score.predictor_model.clone();
        let identity = self.model_fingerprint(&model_name)?;
        let mut inputs = vec![p.scenes_file(section)];
        inputs.extend(rationale_files.iter().cloned());
        let fingerprint = self.fingerprint(
            &(
                &config,
                &identity,
                section.selection(),
                shard.map(|s| s.to_string()),
            ),
            &inputs,
        )?;
        if self.up_to_date(&key, &fingerprint, std::slice::from_ref(&out)) {
            println!("{key}: up to date");
            return Ok(());
        }
        let scenes = in_shard(self.stage_scenes(section)?, shard);
        let rationales = read_rationales(&rationale_files)?;
        let entry = p.models.get(&model_name).context("model entry missing")?;
        self.journal()?;
        let backend = self.models.get(&model_name, entry)?;
        let journal = self.journal.as_ref().context("the journal went missing")?;
        let metered = MeteredBackend::new(backend);
        let journaled = JournaledBackend::new(&metered, journal);
        let (records, summary) = score_rationales(&scenes, &rationales, &journaled, &config)?;
        write_jsonl(&out, &records)?;
        let counts = journaled.counts();
        println!(
            "{key}: {summary} ({} from the journal, {} sent to {model_name}) → {}",
            counts.hits,
            counts.misses,
            out.display()
        );
        let meter = metered.meter();
        self.print_cost(&model_name, &meter);
        self.mark_done(&key, fingerprint)
    }

    fn distill_stage(&mut self) -> anyhow::Result<()> {
        let p = self.pipeline;
        let Some((section, _)) = p.distillation() else {
            return Ok(());
        };
        let dir = p.run_dir.join("distill");
        let paths = DistillPaths::in_dir(&dir);
        let outputs = [
            paths.sft.clone(),
            paths.dpo.clone(),
            paths.direct.clone(),
            paths.candidates.clone(),
            paths.summary.clone(),
        ];
        let rationale_files = vec![
            p.run_dir.join("rationales.strong.jsonl"),
            p.run_dir.join("rationales.weak.jsonl"),
        ];
        let scores_path = p.run_dir.join("scores.jsonl");
        let mut inputs = vec![p.scenes_file(section), scores_path.clone()];
        inputs.extend(rationale_files.iter().cloned());
        let fingerprint = self.fingerprint(&(&p.distill, section.selection()), &inputs)?;
        if self.up_to_date("distill", &fingerprint, &outputs) {
            println!("distill: up to date");
            return Ok(());
        }
        let scenes = self.stage_scenes(section)?;
        let scores: Vec<ScoreRecord> = read_jsonl(&scores_path, "score")?;
        let rationales: Vec<RationaleRecord> = read_rationales(&rationale_files)?;
        let output = distill(&scenes, &scores, &rationales, &p.distill)?;
        write_distill(&dir, &output)?;
        let s = &output.summary;
        println!(
            "distill: {} scenes → {} candidates → {} kept by {} (top-K {}) → {}",
            s.scenes,
            s.candidates,
            s.kept,
            s.selector.name(),
            s.top_k,
            dir.display()
        );
        self.mark_done("distill", fingerprint)
    }

    /// Concatenates the shard outputs of the three LLM stages, then records them under the
    /// unsharded fingerprints so a later plain run finds them up to date.
    fn merge(&mut self, count: usize) -> anyhow::Result<()> {
        if count == 0 {
            bail!("--merge-shards needs at least 1 shard");
        }
        let p = self.pipeline;
        let Some((section, score)) = p.distillation() else {
            bail!(
                "--merge-shards merges the LLM stages' shard files, and this pipeline has no \
                 [rationales] and [score]"
            );
        };
        let scenes = self.stage_scenes(section)?;
        self.adopt_shard_scenes_fingerprint(count)?;
        for role in [Role::Strong, Role::Weak] {
            let file = format!("rationales.{}.jsonl", role.name());
            let out = merge_shard_files::<RationaleRecord>(
                &p.run_dir,
                &file,
                count,
                &scenes,
                "rationale",
            )?;
            println!("merged {count} shards → {}", out.display());
        }
        let out =
            merge_shard_files::<ScoreRecord>(&p.run_dir, "scores.jsonl", count, &scenes, "score")?;
        println!("merged {count} shards → {}", out.display());

        let selection = section.selection();
        let no_shard: Option<String> = None;
        for role in [Role::Strong, Role::Weak] {
            let identity = self.model_fingerprint(section.model_of(role))?;
            let fingerprint = self.fingerprint(
                &(
                    &section.generate_config(role),
                    &identity,
                    selection,
                    &no_shard,
                ),
                &[p.scenes_file(section)],
            )?;
            self.mark_done(&format!("rationales.{}", role.name()), fingerprint)?;
        }
        let identity = self.model_fingerprint(&score.predictor_model)?;
        let config = ScoreConfig {
            seed: score.seed,
            ..ScoreConfig::default()
        };
        let fingerprint = self.fingerprint(
            &(&config, &identity, selection, &no_shard),
            &[
                p.scenes_file(section),
                p.run_dir.join("rationales.strong.jsonl"),
                p.run_dir.join("rationales.weak.jsonl"),
            ],
        )?;
        self.mark_done("scores", fingerprint)
    }
}

impl Runner<'_> {
    /// `RUN/hint/`: the scenes with the `[hint]` priors' picks in their prompts and
    /// `hint.json`, as `mirrorsim hint` writes them, and with `[train.sft] data = "hint"` the
    /// behaviour-only SFT examples `sft.jsonl`.
    fn hint_stage(&mut self) -> anyhow::Result<()> {
        let p = self.pipeline;
        let Some(section) = &p.hint else {
            return Ok(());
        };
        let scenes_dir = p.run_dir.join("scenes");
        let dir = p.run_dir.join("hint");
        let sft_examples = p
            .trains_on_hints()
            .then(|| section.sft_examples.unwrap_or(usize::MAX));
        let spec: SourceSpec = p.source.spec.parse()?;
        let mut outputs = vec![dir.join("hint.json"), dir.join("scenes.summary.json")];
        outputs.extend(sft_examples.map(|_| dir.join("sft.jsonl")));
        let fingerprint = self.fingerprint(
            &(section, sft_examples, &p.source),
            &[scenes_dir.clone(), spec.path.clone()],
        )?;
        if self.up_to_date("hint", &fingerprint, &outputs) {
            println!("hint: up to date");
            return Ok(());
        }
        let catalog = p.read_catalog(&spec)?;
        let report = hint_folder(&HintJob {
            scenes: &scenes_dir,
            catalog: &catalog,
            catalog_spec: p.source.spec.clone(),
            priors: &section.priors,
            config: section.baseline.clone(),
            train_fraction: section.train_fraction,
            sft_examples,
            out: &dir,
        })
        .context("the hint stage")?;
        println!(
            "hint: the {} prior's picks in the prompts ({:.1} s) → {}",
            super::eval::prior_names(&section.priors),
            report.seconds,
            dir.display()
        );
        print_hint_summary(&report);
        self.mark_done("hint", fingerprint)
    }

    /// LoRA training of `stage` (SFT or DPO) into `RUN/train/<stage>`. A stage killed midway
    /// goes on from its latest checkpoint when its fingerprint is unchanged; with a changed one
    /// its folder is cleared and it trains from the start.
    fn train_stage(&mut self, stage: SimulatorName) -> anyhow::Result<()> {
        let p = self.pipeline;
        let Some(train) = &p.train else {
            return Ok(());
        };
        let (section, is_dpo) = match stage {
            SimulatorName::Base => return Ok(()),
            SimulatorName::Sft => (train.sft.as_ref(), false),
            SimulatorName::Dpo => (train.dpo.as_ref(), true),
        };
        let Some(section) = section else {
            return Ok(());
        };
        let key = format!("train.{}", stage.label());
        let out = p.train_dir(stage);
        let distill = DistillPaths::in_dir(&p.run_dir.join("distill"));
        let data = match (is_dpo, section.data.unwrap_or(SftData::Sft)) {
            (true, _) => distill.dpo,
            (false, SftData::Sft) => distill.sft,
            (false, SftData::Direct) => distill.direct,
            (false, SftData::Hint) => p.run_dir.join("hint").join("sft.jsonl"),
        };
        let start_adapter =
            (is_dpo && train.sft.is_some()).then(|| p.train_dir(SimulatorName::Sft));
        let config = section.config();
        let model_name = p.train_model().context("[train] names no model")?;
        let identity = self.model_fingerprint(model_name)?;
        let ModelIdentity::Local(model_path) = identity.clone() else {
            bail!("[train] model = {model_name:?} is not a local model");
        };
        let mut inputs = vec![data.clone()];
        if let Some(dir) = &start_adapter {
            inputs.push(dir.join(ADAPTER_CONFIG_FILE));
            inputs.push(dir.join(ADAPTER_WEIGHTS_FILE));
        }
        let fingerprint =
            self.fingerprint(&(&config, &identity, &data, &start_adapter), &inputs)?;
        let outputs = [
            out.join(ADAPTER_CONFIG_FILE),
            out.join(ADAPTER_WEIGHTS_FILE),
            out.join("train_summary.json"),
            out.join("loss.jsonl"),
        ];
        if self.up_to_date(&key, &fingerprint, &outputs) {
            println!("{key}: up to date");
            return Ok(());
        }
        let started_key = format!("{key}.started");
        let resume = self.record.fingerprints.get(&started_key) == Some(&fingerprint)
            && out.join("checkpoints").is_dir();
        if !resume && out.exists() {
            std::fs::remove_dir_all(&out)
                .with_context(|| format!("clearing the stale training folder {}", out.display()))?;
        }
        self.record.fingerprints.remove(&key);
        self.mark_done(&started_key, fingerprint.clone())?;
        if resume {
            println!("{key}: resuming from the checkpoints in {}", out.display());
        }
        let paths = RunPaths {
            model: model_path,
            data: data.clone(),
            eval_data: None,
            out: out.clone(),
            cuda_device: super::model_arg::cuda_device(),
            matmul: super::model_arg::matmul(),
        };
        let summary = if is_dpo {
            run_dpo(&paths, start_adapter.as_deref(), &config, resume, true)
        } else {
            run_sft(&paths, &config, resume, true)
        }
        .with_context(|| format!("{key}: training on {}", data.display()))?;
        let loss = match (summary.first_loss, summary.last_loss) {
            (Some(first), Some(last)) => format!("loss {first:.4} → {last:.4}"),
            _ => "no step run".to_owned(),
        };
        println!(
            "{key}: {} steps on {} examples ({} held out), {loss}, {:.1} s{} → {}",
            summary.steps,
            summary.train_examples,
            summary.eval_examples,
            summary.wall_seconds,
            summary
                .resumed_from_step
                .map(|s| format!(" (resumed at step {s})"))
                .unwrap_or_default(),
            out.display()
        );
        self.record.fingerprints.remove(&started_key);
        self.mark_done(&key, fingerprint)
    }

    /// Scores the base model and the trained adapters on the eval scenes beside the classical
    /// baselines; writes `RUN/eval/{metrics.json, predictions.jsonl, report.html}`.
    fn eval_stage(&mut self) -> anyhow::Result<()> {
        let p = self.pipeline;
        let Some(section) = &p.eval else {
            return Ok(());
        };
        let dir = p.run_dir.join("eval");
        let scenes_dir = p.eval_scenes_dir();
        let scenes_path = scenes_dir.join("scenes.eval.jsonl");
        let simulators = p.eval_simulators();
        let kinds = BaselineKind::parse_list(&section.baselines.join(","))?;
        let model_name = p.eval_model().map(str::to_owned);
        let identity = model_name
            .as_deref()
            .map(|name| self.model_fingerprint(name))
            .transpose()?;
        let spec: SourceSpec = p.source.spec.parse()?;
        let mut inputs = vec![scenes_path.clone(), scenes_dir.join("scenes.summary.json")];
        for &simulator in &simulators {
            if simulator != SimulatorName::Base {
                let adapter = p.train_dir(simulator);
                if !adapter.join(ADAPTER_WEIGHTS_FILE).is_file() {
                    bail!(
                        "eval: the {} simulator needs the adapter in {} (run the train stage \
                         first)",
                        simulator.label(),
                        adapter.display()
                    );
                }
                inputs.push(adapter.join(ADAPTER_CONFIG_FILE));
                inputs.push(adapter.join(ADAPTER_WEIGHTS_FILE));
                inputs.push(adapter.join("loss.jsonl"));
            }
        }
        if !kinds.is_empty() {
            inputs.push(spec.path.clone());
        }
        let fingerprint =
            self.fingerprint(&(section, &identity, &simulators, &p.source), &inputs)?;
        let outputs = [
            dir.join("metrics.json"),
            dir.join("predictions.jsonl"),
            dir.join("report.html"),
        ];
        if self.up_to_date("eval", &fingerprint, &outputs) {
            println!("eval: up to date");
            return Ok(());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut scenes = mirrorsim_data::scenes::read_jsonl(&scenes_path)
            .with_context(|| format!("reading eval scenes {}", scenes_path.display()))?;
        if let Some(max) = section.max_scenes {
            scenes.truncate(max);
        }
        if scenes.is_empty() {
            bail!("{} holds no eval scenes", scenes_path.display());
        }
        let cases = select_cases(&scenes);
        let config = SimulatorConfig {
            mode: section.mode,
            repeats: section.repeats,
            seed: section.seed,
            rotations: section.rotations,
            agent4rec: section.agent4rec,
            rationale_temperature: section.rationale_temperature,
            rationale_tokens: section.rationale_tokens,
            ..SimulatorConfig::default()
        };
        let simulator_model = match (&model_name, &identity) {
            (Some(name), Some(ModelIdentity::Local(path))) => {
                let entry = p
                    .models
                    .get(name)
                    .with_context(|| format!("no [models.{name}] entry"))?;
                Some((name.as_str(), entry, path))
            }
            (Some(name), _) => bail!("[eval] model = {name:?} is not a local model"),
            (None, _) => None,
        };
        let mut timings = BTreeMap::new();
        let mut notes = Vec::new();
        let mut predictors = Vec::new();
        let mut lines = Vec::new();
        let mut model_ids = Vec::new();
        let (mut hits, mut misses) = (0, 0);
        self.journal()?;
        for &simulator in &simulators {
            let Some((model_name, entry, model_path)) = simulator_model else {
                bail!(
                    "[eval] names no model for the {} simulator",
                    simulator.label()
                );
            };
            let name = format!("{} ({})", simulator.label(), section.mode.name());
            let started = Instant::now();
            let adapter_engine;
            let backend: &dyn Backend = match simulator {
                SimulatorName::Base => self.models.get(model_name, entry)?,
                SimulatorName::Sft | SimulatorName::Dpo => {
                    let adapter = p.train_dir(simulator);
                    eprintln!(
                        "loading model {model_name} with the adapter {}",
                        adapter.display()
                    );
                    let options = EngineOptions {
                        adapter: Some(adapter.clone()),
                        ..super::model_arg::engine_options()
                    };
                    adapter_engine = LocalEngine::load(model_path, options).with_context(|| {
                        format!(
                            "loading {} with the adapter {}",
                            model_path.display(),
                            adapter.display()
                        )
                    })?;
                    &adapter_engine
                }
            };
            timings.insert(
                format!("{name} model_load"),
                started.elapsed().as_secs_f64(),
            );
            let journal = self.journal.as_ref().context("the journal went missing")?;
            let journaled = JournaledBackend::new(backend, journal);
            let output = score_simulator(&scenes, &journaled, &config, &cases)
                .with_context(|| format!("eval: scoring the {name} simulator"))?;
            timings.insert(format!("{name} scoring"), output.wall_s);
            let counts = journaled.counts();
            hits += counts.hits;
            misses += counts.misses;
            if output.scenes_with_missing_labels > 0 {
                notes.push(format!(
                    "{name}: in {} scenes the backend could not report the probability of some \
                     option labels (their mass counts as 0)",
                    output.scenes_with_missing_labels
                ));
            }
            let model_id = backend.model_id();
            notes.push(format!("{name} is the model {model_id}"));
            model_ids.push(model_id);
            predictors.push(simulator_predictor_metrics(
                &name, &scenes, &output, &cases,
            )?);
            lines.extend(
                output
                    .predictions
                    .into_iter()
                    .map(|prediction| PredictionLine {
                        predictor: name.clone(),
                        prediction,
                    }),
            );
        }

        let (cutoff, cutoff_source) = resolve_cutoff(&scenes_path, &scenes, None)?;
        let mut interactions_before_cutoff = None;
        if !kinds.is_empty() {
            let started = Instant::now();
            let catalog = p.read_catalog(&spec)?;
            timings.insert("catalog_read".to_owned(), started.elapsed().as_secs_f64());
            let started = Instant::now();
            let fitted = FittedBaselines::fit(
                &catalog,
                cutoff,
                &section.baseline,
                kinds.contains(&BaselineKind::Ease),
            )?;
            timings.insert("baselines_fit".to_owned(), started.elapsed().as_secs_f64());
            interactions_before_cutoff = Some(fitted.interactions_before_cutoff);
            let started = Instant::now();
            let baselines = score_baselines(
                &fitted,
                &kinds,
                &scenes,
                &cases,
                section.repeats,
                section.seed,
            )?;
            predictors.extend(baselines.predictors);
            lines.extend(baselines.lines);
            notes.extend(baselines.note);
            timings.insert(
                "baselines_score".to_owned(),
                started.elapsed().as_secs_f64(),
            );
        }
        if let Some(hint) = &p.hint {
            notes.push(format!(
                "the eval prompts carry the picks of the {} prior (fitted before the cutoff), \
                 written by the hint stage into {}",
                super::eval::prior_names(&hint.priors),
                scenes_dir.display()
            ));
        }
        notes.extend(coverage_notes(&scenes, section.agent4rec, false));
        let metrics = MetricsFile {
            scenes_file: scenes_path.display().to_string(),
            scenes: scenes.len(),
            model: (!model_ids.is_empty()).then(|| model_ids.join(", ")),
            mode: (!simulators.is_empty()).then(|| section.mode.name().to_owned()),
            repeats: section.repeats,
            seed: section.seed,
            cutoff_timestamp: cutoff,
            cutoff_source,
            interactions_before_cutoff,
            baseline_config: (!kinds.is_empty()).then(|| section.baseline.clone()),
            predictors,
            notes,
            timings,
            llm_requests_from_journal: Some(hits),
            llm_requests_sent: Some(misses),
            ratings: Vec::new(),
        };
        let label = p.run_dir.file_name().map_or_else(
            || p.run_dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let curves = read_loss_curves(&p.run_dir)?;
        let written = write_eval_folder(&dir, &metrics, &lines, "mirrorsim run", label, curves)?;
        println!(
            "eval: {} scenes ({hits} LLM requests from the journal, {misses} sent) → {}",
            metrics.scenes,
            dir.display()
        );
        print_metrics(&metrics, "  ");
        println!("  wrote {written}");
        self.mark_done("eval", fingerprint)
    }

    /// The shards built the scenes (each the same, from the same config); when all of them
    /// recorded the same scenes fingerprint, the merged run takes it over.
    fn adopt_shard_scenes_fingerprint(&mut self, count: usize) -> anyhow::Result<()> {
        let mut agreed: Option<String> = None;
        for index in 0..count {
            let shard = Shard { index, count };
            let path = self.pipeline.run_dir.join(format!("stages.{shard}.json"));
            let Some(record) = read_stage_record(&path)? else {
                return Ok(());
            };
            let Some(fingerprint) = record.fingerprints.get("scenes") else {
                return Ok(());
            };
            match &agreed {
                Some(seen) if seen != fingerprint => return Ok(()),
                _ => agreed = Some(fingerprint.clone()),
            }
        }
        match agreed {
            Some(fingerprint) => self.mark_done("scenes", fingerprint),
            None => Ok(()),
        }
    }
}

/// Tokens an OpenAI-compatible server bills for the requests a [`MeteredBackend`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BilledTokens {
    input: u64,
    output: u64,
    http_requests: u64,
}

impl BilledTokens {
    fn of(meter: &BackendMeter) -> Self {
        BilledTokens {
            input: meter.prompt_tokens,
            // The HTTP backend scores each continuation in its own request, with one generated
            // token; a generate request carries all its samples.
            output: meter.completion_tokens + meter.continuations,
            http_requests: meter.generate_requests + meter.continuations,
        }
    }
}

fn read_stage_record(path: &Path) -> anyhow::Result<Option<StageRecord>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let record =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(record))
}

/// The stage key and output path: `scores` / `RUN/scores.jsonl`, or with a shard
/// `scores.shard-0-of-2` / `RUN/scores.shard-0-of-2.jsonl`.
fn output_names(run_dir: &Path, unsharded: &str, shard: Option<Shard>) -> (String, PathBuf) {
    let file = match shard {
        Some(shard) => shard.file_name(unsharded),
        None => unsharded.to_owned(),
    };
    let key = file.strip_suffix(".jsonl").unwrap_or(&file).to_owned();
    (key, run_dir.join(file))
}

fn in_shard(scenes: Vec<SceneRecord>, shard: Option<Shard>) -> Vec<SceneRecord> {
    match shard {
        Some(shard) => scenes
            .into_iter()
            .filter(|s| shard.contains(&s.id))
            .collect(),
        None => scenes,
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    std::fs::create_dir_all(&pipeline.run_dir)
        .with_context(|| format!("creating {}", pipeline.run_dir.display()))?;
    let resolved = pipeline.run_dir.join("pipeline.resolved.json");
    mirrorsim_data::io::write_atomic(&resolved, |w| {
        serde_json::to_writer_pretty(&mut *w, &pipeline)?;
        w.write_all(b"\n")
    })
    .with_context(|| format!("writing {}", resolved.display()))?;

    let suffix = args.shard.map(|s| format!(".{s}")).unwrap_or_default();
    let record_path = pipeline.run_dir.join(format!("stages{suffix}.json"));
    let record = read_stage_record(&record_path)?.unwrap_or_default();
    let mut runner = Runner {
        pipeline: &pipeline,
        selected: args.stages.clone(),
        record_path,
        record,
        models: Models::default(),
        journal: None,
        journal_path: pipeline.run_dir.join(format!("journal{suffix}.sqlite")),
    };

    if let Some(count) = args.merge_shards {
        runner.merge(count)?;
        runner.distill_stage()?;
        runner.hint_train_and_eval()?;
        println!("run directory {}", pipeline.run_dir.display());
        return Ok(());
    }
    if runner.wants(StageName::Scenes) {
        runner.scenes_stage()?;
    }
    if runner.wants(StageName::Rationales) {
        runner.rationales_stage(Role::Strong, args.shard)?;
        runner.rationales_stage(Role::Weak, args.shard)?;
    }
    if runner.wants(StageName::Score) {
        runner.score_stage(args.shard)?;
    }
    if runner.wants(StageName::Distill) {
        if let Some(shard) = args.shard {
            println!(
                "distill: waits for the merge (run with --merge-shards {})",
                shard.count
            );
        } else {
            runner.distill_stage()?;
        }
    }
    if args.shard.is_none() {
        runner.hint_train_and_eval()?;
    } else if pipeline.train.is_some() || pipeline.eval.is_some() {
        println!("train, eval: wait for the merge");
    }
    println!("run directory {}", pipeline.run_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_config(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs")
            .join(name)
    }

    #[test]
    fn shipped_configs_parse_and_resolve_paths_against_their_folder() {
        let demo = Pipeline::load(&shipped_config("demo.toml")).unwrap();
        assert!(demo.run_dir.ends_with("configs/../runs/demo-pipeline"));
        let (demo_rationales, _) = demo.distillation().unwrap();
        assert_eq!(demo_rationales.max_scenes, Some(8));
        assert_eq!(
            demo_rationales.generate_config(Role::Strong).temperature,
            0.7
        );
        assert_eq!(demo_rationales.generate_config(Role::Weak).temperature, 1.3);
        let spec: SourceSpec = demo.source.spec.parse().unwrap();
        assert!(
            spec.path.join("ratings.csv").exists(),
            "{}",
            spec.path.display()
        );

        let ml1m = Pipeline::load(&shipped_config("movielens-1m.toml")).unwrap();
        assert_eq!(ml1m.scenes.eval_options, 5);
        let (ml1m_rationales, ml1m_score) = ml1m.distillation().unwrap();
        assert_eq!(ml1m_rationales.n, 10);
        assert_eq!(ml1m.distill.top_k, 10_000);
        // A bounded candidate pool larger than the budget, not every eligible decision.
        assert_eq!(ml1m.scenes.max_train_scenes, Some(30_000));
        let spec: SourceSpec = ml1m.source.spec.parse().unwrap();
        assert!(
            spec.path.join("ml-1m.item").exists(),
            "{}",
            spec.path.display()
        );
        let strong = &ml1m.models[&ml1m_rationales.strong_model];
        assert!(strong
            .path
            .as_ref()
            .unwrap()
            .ends_with("models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"));
        assert_eq!(ml1m_rationales.weak_model, ml1m_score.predictor_model);

        for pipeline in [&demo, &ml1m] {
            let train = pipeline.train.as_ref().unwrap();
            assert_eq!(train.sft.as_ref().unwrap().data, Some(SftData::Sft));
            assert_eq!(
                pipeline.eval_simulators(),
                [SimulatorName::Base, SimulatorName::Sft, SimulatorName::Dpo]
            );
            assert_eq!(pipeline.eval_model(), Some("smollm2"));
            assert!(pipeline.hint.is_none());
            assert_eq!(pipeline.eval_scenes_dir(), pipeline.run_dir.join("scenes"));
            assert_eq!(
                pipeline.train_dir(SimulatorName::Dpo),
                pipeline.run_dir.join("train/dpo")
            );
        }
        assert_eq!(
            demo.train
                .as_ref()
                .unwrap()
                .sft
                .as_ref()
                .unwrap()
                .config()
                .max_steps,
            Some(4)
        );
        let ml1m_dpo = ml1m.train.as_ref().unwrap().dpo.as_ref().unwrap().config();
        assert_eq!(
            (ml1m_dpo.beta, ml1m_dpo.optimizer.learning_rate),
            (0.1, 2e-5)
        );
        assert_eq!(ml1m_dpo.lora, LoraConfig::default());
        assert!(ml1m.eval.as_ref().unwrap().max_scenes.unwrap() >= 500);

        // Scenes → hint → SFT on the hinted scenes → eval on the hinted eval scenes, with no
        // LLM stage before training.
        let hinted = Pipeline::load(&shipped_config("movielens-1m-hinted.toml")).unwrap();
        assert!(hinted.distillation().is_none());
        let hint = hinted.hint.as_ref().unwrap();
        assert_eq!(hint.priors, [BaselineKind::Ease, BaselineKind::Sequential]);
        assert_eq!(hint.sft_examples, Some(1000));
        assert!(hinted.trains_on_hints());
        assert_eq!(hinted.eval_scenes_dir(), hinted.run_dir.join("hint"));
        assert_eq!(
            hinted.eval_simulators(),
            [SimulatorName::Base, SimulatorName::Sft]
        );
        assert_eq!(hinted.scenes.max_eval_scenes, Some(500));
    }

    #[test]
    fn a_pipeline_without_llm_stages_is_checked() {
        let hinted = std::fs::read_to_string(shipped_config("movielens-1m-hinted.toml")).unwrap();
        let load = |text: String| -> anyhow::Result<Pipeline> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("edited.toml");
            std::fs::write(&path, text).unwrap();
            Pipeline::load(&path)
        };
        let cases: [(&str, &str, &str); 6] = [
            (
                "priors = [\"ease\", \"sequential\"]",
                "priors = [\"random\"]",
                "[hint] priors",
            ),
            (
                "priors = [\"ease\", \"sequential\"]",
                "priors = []",
                "[hint] priors",
            ),
            (
                "train_fraction = 0.1",
                "train_fraction = 0.0",
                "train_fraction must be in (0, 1]",
            ),
            (
                "data = \"hint\"",
                "data = \"direct\"",
                "need [rationales] and [score]",
            ),
            (
                "[train]\nmodel = \"smollm2\"",
                "[train]",
                "[train] needs `model",
            ),
            (
                "[models.smollm2]",
                "[score]\npredictor_model = \"smollm2\"\n\n[models.smollm2]",
                "[score] without [rationales]",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(hinted.contains(from), "{from}");
            let error = load(hinted.replacen(from, to, 1)).unwrap_err();
            let message = format!("{error:#}");
            assert!(message.contains(expected), "{expected}: {message}");
            assert!(message.contains("edited.toml"), "{message}");
        }
        // Without [hint], SFT cannot train on the hinted scenes.
        let start = hinted.find("# Each prior's pick").unwrap();
        let end = hinted.find("[train]\n").unwrap();
        let error = load(format!("{}{}", &hinted[..start], &hinted[end..])).unwrap_err();
        assert!(
            format!("{error:#}").contains("data = \"hint\" needs a [hint] section"),
            "{error:#}"
        );
        // The baselines alone need no model.
        let baselines_only = load(
            hinted[..hinted.find("[train]\n").unwrap()].to_owned()
                + "[eval]\nsimulators = []\nbaselines = [\"ease\"]\n",
        )
        .unwrap();
        assert_eq!(baselines_only.eval_model(), None);
        assert!(baselines_only.eval_simulators().is_empty());
        let error = load(
            hinted[..hinted.find("[train]\n").unwrap()].to_owned() + "[eval]\nbaselines = []\n",
        )
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("[eval] needs `model"),
            "{error:#}"
        );
    }

    /// The demo pipeline with `edit` applied to its text, loaded from a temporary folder.
    fn load_edited_demo(edit: impl Fn(String) -> String) -> anyhow::Result<Pipeline> {
        let text = std::fs::read_to_string(shipped_config("demo.toml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edited.toml");
        std::fs::write(&path, edit(text)).unwrap();
        Pipeline::load(&path)
    }

    #[test]
    fn train_and_eval_sections_are_optional_and_checked() {
        let without =
            load_edited_demo(|text| text[..text.find("[train]").unwrap()].to_owned()).unwrap();
        assert!(without.train.is_none() && without.eval.is_none());

        let only_sft = load_edited_demo(|text| {
            let start = text.find("# Starts from the SFT").unwrap();
            let end = text.find("# The base model").unwrap();
            format!("{}{}", &text[..start], &text[end..])
        })
        .unwrap();
        assert_eq!(
            only_sft.eval_simulators(),
            [SimulatorName::Base, SimulatorName::Sft]
        );

        let cases: [(&str, &str, &str); 4] = [
            (
                "data = \"sft\"",
                "data = \"sft\"\nbeta = 0.2",
                "[train.sft] beta",
            ),
            ("lr = 2e-5", "lr = 2e-5\ndata = \"sft\"", "[train.dpo] data"),
            (
                "max_steps = 4",
                "max_steps = 4\ngrad_accum = 0",
                "grad_accum",
            ),
            (
                "baselines = [\"random\", \"popularity\", \"knn\", \"ease\", \"sequential\"]",
                "baselines = [\"ease\", \"mf\"]",
                "unknown baseline `mf`",
            ),
        ];
        for (from, to, expected) in cases {
            let error = load_edited_demo(|text| text.replacen(from, to, 1)).unwrap_err();
            let message = format!("{error:#}");
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("edited.toml"), "{message}");
        }
        let error = load_edited_demo(|text| {
            let start = text.find("# Starts from the SFT").unwrap();
            let end = text.find("# The base model").unwrap();
            format!("{}{}", &text[..start], &text[end..]).replacen(
                "[eval]\n",
                "[eval]\nsimulators = [\"base\", \"dpo\"]\n",
                1,
            )
        })
        .unwrap_err();
        assert!(
            format!("{error:#}").contains("no [train.dpo] section"),
            "{error:#}"
        );
    }
}
