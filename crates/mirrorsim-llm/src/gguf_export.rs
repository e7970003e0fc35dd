//! Writing a decoder back to GGUF (for llama.cpp, Ollama and our own engine), e.g. after merging
//! a LoRA adapter. The metadata (architecture, hyper-parameters, tokenizer, chat template) is
//! copied from the GGUF the model was loaded from; only `general.file_type` changes. Tensor
//! names and the Q/K row permutation of the `llama` architecture are llama.cpp's (the inverse of
//! what [`crate::gguf`] undoes at load). Norm weights stay f32, as llama.cpp writes them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use crate::backend::LlmError;
use crate::model::Llama;

/// The element type of the projection and embedding matrices in the written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufWeightType {
    F32,
    F16,
    Q8_0,
}

impl GgufWeightType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufWeightType::F32 => GgmlDType::F32,
            GgufWeightType::F16 => GgmlDType::F16,
            GgufWeightType::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            GgufWeightType::F32 => 0,
            GgufWeightType::F16 => 1,
            GgufWeightType::Q8_0 => 7,
        }
    }
}

impl std::str::FromStr for GgufWeightType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufWeightType::F32),
            "f16" => Ok(GgufWeightType::F16),
            "q8_0" => Ok(GgufWeightType::Q8_0),
            other => Err(format!(
                "unknown GGUF weight type {other:?}; use f32, f16 or q8_0"
            )),
        }
    }
}

/// The llama.cpp name of an HF tensor name (inverse of [`crate::gguf::hf_tensor_name`]).
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    let (stem, suffix) = hf_name.rsplit_once('.')?;
    let mapped = match stem {
        "model.embed_tokens" => "token_embd".to_string(),
        "model.norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let gguf_part = match part {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                _ => return None,
            };
            format!("blk.{layer}.{gguf_part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// llama.cpp's Q/K row permutation: rows `(n_head, 2, head_dim/2)` → `(n_head, head_dim/2, 2)`.
pub fn permute_qk(tensor: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let head_dim = rows / n_head;
    tensor
        .reshape((n_head, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Writes `model` (adapters merged beforehand) to `path` as GGUF with `source`'s metadata.
pub fn write_gguf(
    model: &Llama,
    source: &Content,
    path: &Path,
    weight_type: GgufWeightType,
) -> Result<(), LlmError> {
    let error = |message: String| LlmError::Load {
        path: path.display().to_string(),
        message,
    };
    if !model.lora_parameters().is_empty() {
        return Err(error(
            "merge the LoRA adapters before writing GGUF (Llama::merge_lora)".to_string(),
        ));
    }
    let architecture = source
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .ok_or_else(|| error("the source GGUF has no general.architecture".to_string()))?;
    let permuted = architecture == "llama";
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    for (hf_name, tensor) in model.named_weights() {
        let Some(name) = gguf_tensor_name(&hf_name) else {
            return Err(error(format!("no GGUF name for tensor {hf_name}")));
        };
        let tensor = if permuted && hf_name.contains(".self_attn.q_proj.") {
            permute_qk(&tensor, model.config.num_attention_heads)
        } else if permuted && hf_name.contains(".self_attn.k_proj.") {
            permute_qk(&tensor, model.config.num_kv_heads())
        } else {
            Ok(tensor)
        }
        .and_then(|t| t.to_device(&candle_core::Device::Cpu))
        .map_err(|e| error(format!("tensor {hf_name}: {e}")))?;
        let dtype = if tensor.rank() == 1 {
            GgmlDType::F32
        } else {
            weight_type.ggml()
        };
        let q = QTensor::quantize(&tensor, dtype)
            .map_err(|e| error(format!("tensor {hf_name} to {dtype:?}: {e}")))?;
        quantized.push((name, q));
    }
    quantized.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata: HashMap<String, Value> = source.metadata.clone();
    metadata.insert(
        "general.file_type".to_string(),
        Value::U32(weight_type.file_type()),
    );
    metadata.insert("general.quantization_version".to_string(), Value::U32(2));
    let mut keys: Vec<&String> = metadata.keys().collect();
    keys.sort();
    let metadata_refs: Vec<(&str, &Value)> =
        keys.iter().map(|k| (k.as_str(), &metadata[*k])).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| error(e.to_string()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model.gguf".to_string());
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| error(e.to_string()))?;
        let mut writer = std::io::BufWriter::new(file);
        candle_core::quantized::gguf_file::write(&mut writer, &metadata_refs, &tensor_refs)
            .map_err(|e| error(e.to_string()))?;
        use std::io::Write;
        writer.flush().map_err(|e| error(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| error(e.to_string()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_round_trip_through_llama_cpp_names() {
        for name in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.3.self_attn.k_proj.bias",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.7.post_attention_layernorm.weight",
        ] {
            let gguf = gguf_tensor_name(name).unwrap();
            assert_eq!(crate::gguf::hf_tensor_name(&gguf).as_deref(), Some(name));
        }
    }

    #[test]
    fn permute_is_undone_by_unpermute() -> candle_core::Result<()> {
        let t = Tensor::arange(0f32, 96.0, &Device::Cpu)?.reshape((24, 4))?;
        let back = crate::gguf::unpermute_qk(&permute_qk(&t, 3)?, 3)?;
        assert_eq!(back.to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        Ok(())
    }
}
