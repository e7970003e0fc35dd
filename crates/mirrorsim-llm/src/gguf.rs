//! GGUF loading: llama.cpp tensor names → HF names, dequantised to f32 at load.
//!
//! llama.cpp's `convert_hf_to_gguf.py` permutes the rows of `q_proj`/`k_proj` for the `llama`
//! architecture so that its interleaved RoPE sees the pairs it expects:
//! `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)`. Our decoder uses the HF convention
//! (rotate_half), so we apply the inverse permutation here. Qwen2 is converted without it.
//!
//! Weights are dequantised to f32 rather than kept quantised: candle's quantised matmul has no
//! SIMD kernels for SmolLM2's Q4_1 (DESIGN.md), and dense f32 gemm is the fast path on CPU.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::backend::LlmError;
use crate::model::{Llama, LlamaConfig};

fn load_error(path: &Path, message: impl Into<String>) -> LlmError {
    LlmError::Load {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Reads the GGUF header (metadata and tensor directory) of `path`.
pub fn read_content(path: &Path) -> Result<Content, LlmError> {
    let file = File::open(path).map_err(|e| load_error(path, e.to_string()))?;
    let mut reader = BufReader::new(file);
    Content::read(&mut reader).map_err(|e| load_error(path, format!("GGUF header: {e}")))
}

/// The HF name of a llama.cpp tensor name, e.g. `blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`. `None` for tensors the decoder does not use.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = match gguf_name.rsplit_once('.') {
        Some((stem, suffix @ ("weight" | "bias"))) => (stem, suffix),
        _ => return None,
    };
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf_part = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf_part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

fn metadata<'a>(content: &'a Content, key: &str, path: &Path) -> Result<&'a Value, LlmError> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| load_error(path, format!("GGUF metadata key {key} is missing")))
}

fn metadata_usize(content: &Content, key: &str, path: &Path) -> Result<usize, LlmError> {
    let value = metadata(content, key, path)?;
    value
        .to_u64()
        .map(|v| v as usize)
        .or_else(|_| value.to_u32().map(|v| v as usize))
        .or_else(|_| value.to_i32().map(|v| v.max(0) as usize))
        .map_err(|e| load_error(path, format!("GGUF metadata {key}: {e}")))
}

fn metadata_f64(content: &Content, key: &str, path: &Path) -> Result<Option<f64>, LlmError> {
    match content.metadata.get(key) {
        None => Ok(None),
        Some(value) => value
            .to_f32()
            .map(|v| Some(v as f64))
            .or_else(|_| value.to_f64().map(Some))
            .map_err(|e| load_error(path, format!("GGUF metadata {key}: {e}"))),
    }
}

/// The GGUF `general.architecture` (e.g. `llama`, `qwen2`).
pub fn architecture(content: &Content, path: &Path) -> Result<String, LlmError> {
    metadata(content, "general.architecture", path)?
        .to_string()
        .cloned()
        .map_err(|e| load_error(path, format!("GGUF metadata general.architecture: {e}")))
}

/// The decoder configuration from GGUF metadata.
pub fn config_from_metadata(content: &Content, path: &Path) -> Result<LlamaConfig, LlmError> {
    let arch = architecture(content, path)?;
    if arch != "llama" && arch != "qwen2" {
        return Err(load_error(
            path,
            format!("architecture {arch} is not supported (llama and qwen2 are)"),
        ));
    }
    let key = |name: &str| format!("{arch}.{name}");
    let embedding = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| load_error(path, "tensor token_embd.weight is missing"))?;
    let embed_dims = embedding.shape.dims();
    let vocab_size = embed_dims.first().copied().unwrap_or(0);
    let hidden_size = metadata_usize(content, &key("embedding_length"), path)?;
    let num_attention_heads = metadata_usize(content, &key("attention.head_count"), path)?;
    let num_key_value_heads = match content.metadata.get(&key("attention.head_count_kv")) {
        Some(_) => metadata_usize(content, &key("attention.head_count_kv"), path)?,
        None => num_attention_heads,
    };
    let head_dim = match content.metadata.get(&key("attention.key_length")) {
        Some(_) => metadata_usize(content, &key("attention.key_length"), path)?,
        None => hidden_size / num_attention_heads.max(1),
    };
    let config = LlamaConfig {
        model_type: arch.clone(),
        vocab_size,
        hidden_size,
        intermediate_size: metadata_usize(content, &key("feed_forward_length"), path)?,
        num_hidden_layers: metadata_usize(content, &key("block_count"), path)?,
        num_attention_heads,
        num_key_value_heads: Some(num_key_value_heads),
        head_dim: Some(head_dim),
        rms_norm_eps: metadata_f64(content, &key("attention.layer_norm_rms_epsilon"), path)?
            .unwrap_or(1e-6),
        rope_theta: metadata_f64(content, &key("rope.freq_base"), path)?.unwrap_or(10_000.0),
        max_position_embeddings: metadata_usize(content, &key("context_length"), path)
            .unwrap_or(4096),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        rope_scaling: None,
        bos_token_id: None,
        eos_token_id: None,
    };
    config.validate().map_err(|m| load_error(path, m))?;
    Ok(config)
}

/// Inverse of llama.cpp's Q/K row permutation: `(n_head·head_dim, …)` rows grouped per head as
/// `(head_dim/2, 2)` back to `(2, head_dim/2)`.
pub fn unpermute_qk(tensor: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    let head_dim = rows / n_head;
    tensor
        .reshape((n_head, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Loads the decoder from a GGUF file whose header is `content`, dequantising every tensor to f32.
pub fn load_llama(path: &Path, content: &Content, device: &Device) -> Result<Llama, LlmError> {
    let config = config_from_metadata(content, path)?;
    let permuted = architecture(content, path)? == "llama";
    let file = File::open(path).map_err(|e| load_error(path, e.to_string()))?;
    let mut reader = BufReader::new(file);
    let mut weights = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for gguf_name in names {
        let Some(hf_name) = hf_tensor_name(gguf_name) else {
            continue;
        };
        let tensor = content
            .tensor(&mut reader, gguf_name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(|e| load_error(path, format!("tensor {gguf_name}: {e}")))?;
        let tensor = if permuted && hf_name.contains(".self_attn.q_proj.") {
            unpermute_qk(&tensor, config.num_attention_heads)
        } else if permuted && hf_name.contains(".self_attn.k_proj.") {
            unpermute_qk(&tensor, config.num_kv_heads())
        } else {
            Ok(tensor)
        }
        .map_err(|e| load_error(path, format!("tensor {gguf_name}: {e}")))?;
        weights.insert(hf_name, tensor);
    }
    Llama::from_weights(config, weights, device, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_cpp_names_to_hf_names() {
        assert_eq!(
            hf_tensor_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_tensor_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_tensor_name("blk.1.ffn_norm.weight").as_deref(),
            Some("model.layers.1.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_tensor_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_tensor_name("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(
            hf_tensor_name("output_norm.weight").as_deref(),
            Some("model.norm.weight")
        );
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() -> candle_core::Result<()> {
        let (n_head, head_dim, cols) = (3usize, 8usize, 5usize);
        let rows = n_head * head_dim;
        let hf = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)?.reshape((rows, cols))?;
        // convert_hf_to_gguf: reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2).reshape(shape)
        let permuted = hf
            .reshape((n_head, 2, head_dim / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?;
        assert_ne!(permuted.to_vec2::<f32>()?, hf.to_vec2::<f32>()?);
        let restored = unpermute_qk(&permuted, n_head)?;
        assert_eq!(restored.to_vec2::<f32>()?, hf.to_vec2::<f32>()?);
        Ok(())
    }
}
