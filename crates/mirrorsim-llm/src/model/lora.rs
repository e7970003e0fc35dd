//! LoRA adapters on the decoder's projections, stored in the PEFT layout.
//!
//! A projection `y = x Wᵀ + b` with an adapter becomes `y = x Wᵀ + b + s · drop(x) Aᵀ Bᵀ`, with
//! `A (r, in)`, `B (out, r)` and `s = α / r`. `A` starts Kaiming-uniform and `B` at zero (PEFT's
//! default), so a fresh adapter leaves the model unchanged. Files on disk are PEFT's:
//! `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, which PEFT and vLLM load.
//!
//! The frozen base weights take part in backprop only as a path for the input's gradient:
//! [`frozen_matmul_t`] wraps the product in a custom op whose backward computes `∂x` alone,
//! where candle's own matmul would also compute (and discard) a full weight gradient.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::amx::Bf16Weight;
use super::llama::{Linear, Llama};
use crate::backend::LlmError;

/// The seven projections of a decoder layer, by their HF module names.
pub const ALL_TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Rank, scale, dropout and placement of the adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: ALL_TARGET_MODULES.iter().map(|m| m.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("LoRA rank must be at least 1".to_string());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "LoRA dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if self.target_modules.is_empty() {
            return Err("LoRA needs at least one target module".to_string());
        }
        for module in &self.target_modules {
            if !ALL_TARGET_MODULES.contains(&module.as_str()) {
                return Err(format!(
                    "unknown LoRA target module {module:?}; choose from {}",
                    ALL_TARGET_MODULES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// A deterministic stream of dropout masks shared by every adapter of a model; reseeded by the
/// trainer before each forward so a resumed run draws the same masks.
#[derive(Debug, Clone)]
pub struct DropoutStream {
    state: Arc<Mutex<u64>>,
}

impl DropoutStream {
    pub fn new(seed: u64) -> Self {
        DropoutStream {
            state: Arc::new(Mutex::new(seed)),
        }
    }

    pub fn reseed(&self, seed: u64) {
        if let Ok(mut state) = self.state.lock() {
            *state = seed;
        }
    }

    /// A `(rows, cols)` mask of 0 and `1 / (1 − p)`.
    fn mask(&self, shape: &[usize], p: f32, device: &Device) -> candle_core::Result<Tensor> {
        let count: usize = shape.iter().product();
        let keep = 1.0 / (1.0 - p);
        let mut values = Vec::with_capacity(count);
        let mut state = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("dropout stream poisoned".to_string()))?;
        for _ in 0..count {
            let uniform = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
            values.push(if uniform < p { 0.0 } else { keep });
        }
        Tensor::from_vec(values, shape, device)
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One projection's adapter. `a` and `b` are trainable variables.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
    /// Set while training; `None` means no dropout (evaluation, inference).
    pub dropout_stream: Option<DropoutStream>,
}

impl LoraLayer {
    /// `s · drop(x) Aᵀ Bᵀ` for a flat `x (rows, in)`.
    pub fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match &self.dropout_stream {
            Some(stream) if self.dropout > 0.0 => {
                (x * stream.mask(x.dims(), self.dropout, x.device())?)?
            }
            _ => x.clone(),
        };
        x.matmul(&self.a.as_tensor().t()?)?
            .matmul(&self.b.as_tensor().t()?)?
            * self.scale
    }

    /// `s · B A`, the change the adapter makes to the weight `(out, in)`.
    pub fn weight_delta(&self) -> candle_core::Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale
    }
}

/// A frozen weight's bf16 AMX packs: `forward` multiplies `x · Wᵀ`, `backward` (the packed
/// transpose) gives the input's gradient `dy · W`.
#[derive(Debug, Clone, Copy)]
pub struct FrozenBf16<'a> {
    pub forward: &'a Arc<Bf16Weight>,
    pub backward: &'a Arc<Bf16Weight>,
}

/// `x (rows, in) · weightᵀ` where `weight (out, in)` is frozen: the backward pass computes only
/// the input's gradient, in bf16 on AMX when `packed` is given. Off the CPU, when `x` carries no
/// gradient or when the weight itself is being trained (a variable), this is a plain matmul
/// (the bf16 one where packed).
pub fn frozen_matmul_t(
    x: &Tensor,
    weight: &Tensor,
    packed: Option<FrozenBf16<'_>>,
) -> candle_core::Result<Tensor> {
    if weight.track_op() || !x.device().is_cpu() || weight.dtype() != DType::F32 {
        return x.matmul(&weight.t()?);
    }
    match packed {
        Some(packed) if !x.track_op() => packed.forward.matmul_t_tensor(&x.contiguous()?),
        Some(packed) => x.contiguous()?.apply_op1(FrozenMatmulT {
            weight: weight.clone(),
            packed: Some((Arc::clone(packed.forward), Arc::clone(packed.backward))),
        }),
        None if !x.track_op() => x.matmul(&weight.t()?),
        None => x.contiguous()?.apply_op1(FrozenMatmulT {
            weight: weight.clone(),
            packed: None,
        }),
    }
}

/// `x · Wᵀ + s · drop(x) · Aᵀ · Bᵀ` for a flat `x (rows, in)` as one op with its own backward,
/// on the CPU in f32 while training (`None` elsewhere: the caller composes it from candle's
/// ops). The composite graph (dropout, two matmuls, the scale, the sum) has six nodes, and for
/// each of them candle's backprop allocates a zeroed gradient and adds into it; this op's
/// backward computes `∂x`, `∂A` and `∂B` directly. The frozen product runs in bf16 on AMX when
/// `packed` is given, as in [`frozen_matmul_t`].
pub fn lora_linear(
    x: &Tensor,
    weight: &Tensor,
    packed: Option<FrozenBf16<'_>>,
    lora: &LoraLayer,
) -> candle_core::Result<Option<Tensor>> {
    let (a, b) = (lora.a.as_tensor(), lora.b.as_tensor());
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if weight.track_op() || !on_cpu_f32(x) || !on_cpu_f32(weight) || !on_cpu_f32(a) {
        return Ok(None);
    }
    let mask = match &lora.dropout_stream {
        Some(stream) if lora.dropout > 0.0 => {
            Some(stream.mask(x.dims(), lora.dropout, x.device())?)
        }
        _ => None,
    };
    let op = LoraLinear {
        weight: weight.clone(),
        packed: packed.map(|p| (Arc::clone(p.forward), Arc::clone(p.backward))),
        mask,
        scale: lora.scale,
    };
    Ok(Some(x.contiguous()?.apply_op3(a, b, op)?))
}

struct LoraLinear {
    weight: Tensor,
    packed: Option<(Arc<Bf16Weight>, Arc<Bf16Weight>)>,
    /// The dropout mask of `x` (0 or `1/(1 − p)`), drawn once for forward and backward.
    mask: Option<Tensor>,
    scale: f64,
}

impl LoraLinear {
    fn dropped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.mask {
            Some(mask) => x * mask,
            None => Ok(x.clone()),
        }
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, _) = x_layout.shape().dims2()?;
        let out = self.weight.dim(0)?;
        let x_data = super::ops::contiguous_f32(x_storage, x_layout, "lora-linear")?;
        let x = Tensor::from_slice(x_data, x_layout.shape(), &Device::Cpu)?;
        let a = super::ops::cpu_tensor(a_storage, a_layout)?;
        let b = super::ops::cpu_tensor(b_storage, b_layout)?;
        let mut y = match &self.packed {
            Some((forward, _)) => forward.matmul_t(x_data, rows),
            None => x.matmul(&self.weight.t()?)?.flatten_all()?.to_vec1()?,
        };
        let update: Vec<f32> = self
            .dropped(&x)?
            .matmul(&a.t()?)?
            .matmul(&b.t()?)?
            .flatten_all()?
            .to_vec1()?;
        let scale = self.scale as f32;
        for (y, u) in y.iter_mut().zip(&update) {
            *y += scale * u;
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b) = (x.detach(), a.detach(), b.detach());
        let dy = grad_res.detach().contiguous()?;
        let x_dropped = self.dropped(&x)?;
        // g = dy · B (rows, r): the gradient at the adapter's rank-r bottleneck, unscaled.
        let g = dy.matmul(&b)?;
        let through_adapter = self.dropped(&(g.matmul(&a)? * self.scale)?)?;
        let through_base = match &self.packed {
            Some((_, backward)) => backward.matmul_t_tensor(&dy)?,
            None => dy.matmul(&self.weight)?,
        };
        let dx = (through_base + through_adapter)?;
        let da = (g.t()?.matmul(&x_dropped)? * self.scale)?;
        let db = (dy.t()?.matmul(&x_dropped.matmul(&a.t()?)?)? * self.scale)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

struct FrozenMatmulT {
    weight: Tensor,
    packed: Option<(Arc<Bf16Weight>, Arc<Bf16Weight>)>,
}

impl CustomOp1 for FrozenMatmulT {
    fn name(&self) -> &'static str {
        "frozen-matmul-t"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let data = super::ops::contiguous_f32(storage, layout, "frozen-matmul-t")?;
        if let Some((forward, _)) = &self.packed {
            let (rows, _) = layout.shape().dims2()?;
            let values = forward.matmul_t(data, rows);
            return Ok((
                CpuStorage::F32(values),
                Shape::from((rows, forward.out_features())),
            ));
        }
        let x = Tensor::from_slice(data, layout.shape(), &Device::Cpu)?;
        let y = x.matmul(&self.weight.t()?)?;
        let shape = y.shape().clone();
        let (y_storage, y_layout) = y.storage_and_layout();
        let values = match &*y_storage {
            candle_core::Storage::Cpu(cpu) => {
                let Some((start, end)) = y_layout.contiguous_offsets() else {
                    candle_core::bail!("frozen-matmul-t produced a strided output");
                };
                cpu.as_slice::<f32>()?[start..end].to_vec()
            }
            _ => candle_core::bail!("frozen-matmul-t ran off the CPU"),
        };
        Ok((CpuStorage::F32(values), shape))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        match &self.packed {
            Some((_, backward)) => Ok(Some(backward.matmul_t_tensor(&grad_res.contiguous()?)?)),
            None => Ok(Some(grad_res.matmul(&self.weight)?)),
        }
    }
}

/// Kaiming-uniform with a = √5 (PyTorch's `nn.Linear` default, which PEFT uses for `A`):
/// bound = 1/√in.
fn kaiming_uniform(
    rows: usize,
    cols: usize,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let bound = 1.0 / (cols as f64).sqrt();
    let mut state = seed;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let unit = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
            ((unit * 2.0 - 1.0) * bound) as f32
        })
        .collect();
    Tensor::from_vec(values, (rows, cols), device)
}

/// The PEFT key prefix of a projection, e.g. `base_model.model.model.layers.3.mlp.up_proj`.
pub fn peft_module_name(layer: usize, module: &str) -> String {
    let block = if matches!(module, "gate_proj" | "up_proj" | "down_proj") {
        "mlp"
    } else {
        "self_attn"
    };
    format!("base_model.model.model.layers.{layer}.{block}.{module}")
}

fn linear_mut<'a>(model: &'a mut Llama, layer: usize, module: &str) -> Option<&'a mut Linear> {
    let layer = model.layers.get_mut(layer)?;
    Some(match module {
        "q_proj" => &mut layer.self_attn.q_proj,
        "k_proj" => &mut layer.self_attn.k_proj,
        "v_proj" => &mut layer.self_attn.v_proj,
        "o_proj" => &mut layer.self_attn.o_proj,
        "gate_proj" => &mut layer.mlp.gate_proj,
        "up_proj" => &mut layer.mlp.up_proj,
        "down_proj" => &mut layer.mlp.down_proj,
        _ => return None,
    })
}

fn linear_ref<'a>(model: &'a Llama, layer: usize, module: &str) -> Option<&'a Linear> {
    let layer = model.layers.get(layer)?;
    Some(match module {
        "q_proj" => &layer.self_attn.q_proj,
        "k_proj" => &layer.self_attn.k_proj,
        "v_proj" => &layer.self_attn.v_proj,
        "o_proj" => &layer.self_attn.o_proj,
        "gate_proj" => &layer.mlp.gate_proj,
        "up_proj" => &layer.mlp.up_proj,
        "down_proj" => &layer.mlp.down_proj,
        _ => return None,
    })
}

/// The adapter's config as PEFT writes it (fields PEFT and vLLM read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftAdapterConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
    #[serde(default)]
    pub init_lora_weights: Option<serde_json::Value>,
}

impl PeftAdapterConfig {
    pub fn from_lora(config: &LoraConfig, base_model: Option<String>) -> Self {
        PeftAdapterConfig {
            peft_type: "LORA".to_string(),
            task_type: "CAUSAL_LM".to_string(),
            r: config.rank,
            lora_alpha: config.alpha,
            lora_dropout: config.dropout,
            target_modules: config.target_modules.clone(),
            bias: "none".to_string(),
            fan_in_fan_out: false,
            inference_mode: true,
            use_rslora: false,
            use_dora: false,
            base_model_name_or_path: base_model,
            modules_to_save: None,
            layers_to_transform: None,
            init_lora_weights: Some(serde_json::Value::Bool(true)),
        }
    }

    fn to_lora(&self, path: &Path) -> Result<LoraConfig, LlmError> {
        let unsupported = |what: &str| LlmError::Load {
            path: path.display().to_string(),
            message: format!("{what} adapters are not supported"),
        };
        if self.peft_type != "LORA" {
            return Err(unsupported(&format!("peft_type {:?}", self.peft_type)));
        }
        if self.use_rslora {
            return Err(unsupported("rsLoRA"));
        }
        if self.use_dora {
            return Err(unsupported("DoRA"));
        }
        if self.fan_in_fan_out {
            return Err(unsupported("fan_in_fan_out"));
        }
        if self.layers_to_transform.is_some() {
            return Err(unsupported("layers_to_transform"));
        }
        let config = LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
        };
        config.validate().map_err(|message| LlmError::Load {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }
}

impl Llama {
    /// Adds fresh adapters (A random from `seed`, B zero) to the configured projections of every
    /// layer, replacing any there.
    pub fn attach_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<(), LlmError> {
        config.validate().map_err(LlmError::BadRequest)?;
        let device = self.device().clone();
        let compute = |e: candle_core::Error| LlmError::Compute(e.to_string());
        let mut module_seed = seed;
        for layer in 0..self.layers.len() {
            for module in &config.target_modules {
                module_seed = splitmix64(&mut module_seed);
                let linear = linear_mut(self, layer, module).ok_or_else(|| {
                    LlmError::BadRequest(format!("no projection {module} in layer {layer}"))
                })?;
                let (out, inp) = linear.weight.dims2().map_err(compute)?;
                let a = kaiming_uniform(config.rank, inp, module_seed, &device).map_err(compute)?;
                let b = Tensor::zeros((out, config.rank), DType::F32, &device).map_err(compute)?;
                linear.lora = Some(LoraLayer {
                    a: Var::from_tensor(&a).map_err(compute)?,
                    b: Var::from_tensor(&b).map_err(compute)?,
                    scale: config.scale(),
                    dropout: config.dropout,
                    dropout_stream: None,
                });
            }
        }
        Ok(())
    }

    /// Every adapter tensor under its PEFT key, in a fixed order (layer, module, A before B).
    pub fn lora_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for layer in 0..self.layers.len() {
            for module in ALL_TARGET_MODULES {
                if let Some(lora) = linear_ref(self, layer, module).and_then(|l| l.lora.as_ref()) {
                    let prefix = peft_module_name(layer, module);
                    out.push((format!("{prefix}.lora_A.weight"), lora.a.clone()));
                    out.push((format!("{prefix}.lora_B.weight"), lora.b.clone()));
                }
            }
        }
        out
    }

    /// Turns adapter dropout on (with a stream the caller reseeds) or off (`None`).
    pub fn set_lora_dropout(&mut self, stream: Option<DropoutStream>) {
        for layer in 0..self.layers.len() {
            for module in ALL_TARGET_MODULES {
                if let Some(lora) = linear_mut(self, layer, module).and_then(|l| l.lora.as_mut()) {
                    lora.dropout_stream = stream.clone();
                }
            }
        }
    }

    /// Sets the dropout probability of every adapter (e.g. a DPO run's own setting on an SFT
    /// adapter loaded from files, which carry the SFT run's).
    pub fn set_lora_dropout_rate(&mut self, p: f32) {
        for layer in 0..self.layers.len() {
            for module in ALL_TARGET_MODULES {
                if let Some(lora) = linear_mut(self, layer, module).and_then(|l| l.lora.as_mut()) {
                    lora.dropout = p;
                }
            }
        }
    }

    /// Folds every adapter into its base weight (`W += s·B·A`) and removes the adapters.
    pub fn merge_lora(&mut self) -> Result<(), LlmError> {
        let compute = |e: candle_core::Error| LlmError::Compute(e.to_string());
        for layer in 0..self.layers.len() {
            for module in ALL_TARGET_MODULES {
                let Some(linear) = linear_mut(self, layer, module) else {
                    continue;
                };
                if let Some(lora) = linear.lora.take() {
                    let delta = lora.weight_delta().map_err(compute)?;
                    linear.weight = (&linear.weight + delta).map_err(compute)?;
                    linear.bf16 = None;
                    linear.bf16_backward = None;
                }
            }
        }
        Ok(())
    }

    /// Writes the adapters as PEFT files into `dir` (atomically, file by file).
    pub fn save_peft_adapter(
        &self,
        dir: &Path,
        config: &LoraConfig,
        base_model: Option<String>,
    ) -> Result<(), LlmError> {
        let io_error = |path: &Path, e: &dyn std::fmt::Display| LlmError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let parameters = self.lora_parameters();
        if parameters.is_empty() {
            return Err(LlmError::BadRequest(
                "the model has no LoRA adapters to save".to_string(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        let peft = PeftAdapterConfig::from_lora(config, base_model);
        let text = serde_json::to_string_pretty(&peft).map_err(|e| io_error(dir, &e))?;
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let tmp = dir.join(format!(".{ADAPTER_CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| io_error(&tmp, &e))?;
        std::fs::rename(&tmp, &config_path).map_err(|e| io_error(&config_path, &e))?;
        let tensors: HashMap<String, Tensor> = parameters
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let tmp = dir.join(format!(".{ADAPTER_WEIGHTS_FILE}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp).map_err(|e| io_error(&tmp, &e))?;
        std::fs::rename(&tmp, &weights_path).map_err(|e| io_error(&weights_path, &e))?;
        Ok(())
    }

    /// Loads PEFT adapter files from `dir` onto the model (as trainable variables) and returns
    /// their config. Every target module of every layer must be present, with the right shapes.
    pub fn load_peft_adapter(&mut self, dir: &Path) -> Result<LoraConfig, LlmError> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let load_error = |path: &Path, message: String| LlmError::Load {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| load_error(&config_path, e.to_string()))?;
        let peft: PeftAdapterConfig = serde_json::from_str(&text)
            .map_err(|e| load_error(&config_path, format!("line {}: {e}", e.line())))?;
        let config = peft.to_lora(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let mut tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| load_error(&weights_path, e.to_string()))?;
        let device = self.device().clone();
        for layer in 0..self.layers.len() {
            for module in &config.target_modules {
                let prefix = peft_module_name(layer, module);
                let linear = linear_mut(self, layer, module).ok_or_else(|| {
                    load_error(
                        &weights_path,
                        format!("no projection {module} in layer {layer}"),
                    )
                })?;
                let (out, inp) = linear
                    .weight
                    .dims2()
                    .map_err(|e| load_error(&weights_path, e.to_string()))?;
                let mut take = |suffix: &str, shape: [usize; 2]| {
                    let name = format!("{prefix}.{suffix}.weight");
                    let tensor = tensors.remove(&name).ok_or_else(|| {
                        load_error(&weights_path, format!("tensor {name} is missing"))
                    })?;
                    if tensor.dims() != shape {
                        return Err(load_error(
                            &weights_path,
                            format!(
                                "tensor {name} has shape {:?}, expected {shape:?}",
                                tensor.dims()
                            ),
                        ));
                    }
                    tensor
                        .to_dtype(DType::F32)
                        .and_then(|t| t.to_device(&device))
                        .and_then(|t| Var::from_tensor(&t))
                        .map_err(|e| load_error(&weights_path, format!("tensor {name}: {e}")))
                };
                let a = take("lora_A", [config.rank, inp])?;
                let b = take("lora_B", [out, config.rank])?;
                linear.lora = Some(LoraLayer {
                    a,
                    b,
                    scale: config.scale(),
                    dropout: config.dropout,
                    dropout_stream: None,
                });
            }
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(load_error(
                &weights_path,
                format!("unexpected tensor {extra} (not a LoRA weight of this model)"),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(rows: usize, cols: usize, seed: usize) -> candle_core::Result<Tensor> {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu)
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// The fused LoRA op gives the composite graph's output and its gradients for `x`, `A` and
    /// `B` (dropout on, the same mask drawn), with f32 base products and, where the CPU has AMX,
    /// with the bf16 packs both paths share.
    #[test]
    fn fused_lora_linear_matches_the_composite_graph() -> candle_core::Result<()> {
        let (rows, inp, out, rank) = (37, 40, 48, 4);
        let x = Var::from_tensor(&filled(rows, inp, 1)?)?;
        let weight = filled(out, inp, 2)?;
        let probe = filled(rows, out, 3)?;
        let stream = DropoutStream::new(11);
        let lora = LoraLayer {
            a: Var::from_tensor(&filled(rank, inp, 4)?)?,
            b: Var::from_tensor(&filled(out, rank, 5)?)?,
            scale: 2.0,
            dropout: 0.3,
            dropout_stream: Some(stream.clone()),
        };
        let mut variants: Vec<Option<(Arc<Bf16Weight>, Arc<Bf16Weight>)>> = vec![None];
        if let Ok(amx) = super::super::amx::amx() {
            variants.push(Some((
                Arc::new(Bf16Weight::from_tensor(amx, &weight)?),
                Arc::new(Bf16Weight::from_tensor(amx, &weight.t()?.contiguous()?)?),
            )));
        }
        for packs in &variants {
            let packed = packs
                .as_ref()
                .map(|(forward, backward)| FrozenBf16 { forward, backward });
            stream.reseed(7);
            let fused = lora_linear(x.as_tensor(), &weight, packed, &lora)?
                .ok_or_else(|| candle_core::Error::Msg("fused op not taken".into()))?;
            stream.reseed(7);
            let composite =
                (frozen_matmul_t(x.as_tensor(), &weight, packed)? + lora.delta(x.as_tensor())?)?;
            assert!(largest_difference(&fused, &composite)? < 1e-4);
            let fused_grads = (fused * &probe)?.sum_all()?.backward()?;
            let composite_grads = (composite * &probe)?.sum_all()?.backward()?;
            for (name, var) in [("x", &x), ("A", &lora.a), ("B", &lora.b)] {
                let (Some(f), Some(c)) = (
                    fused_grads.get(var.as_tensor()),
                    composite_grads.get(var.as_tensor()),
                ) else {
                    panic!("no gradient for {name}");
                };
                let scale = c.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                let difference = largest_difference(f, c)?;
                assert!(
                    difference <= 1e-5 * scale.max(1.0),
                    "{name}: gradients differ by {difference} (largest {scale})"
                );
            }
        }
        Ok(())
    }
}
