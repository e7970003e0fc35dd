//! Hyper-parameters of a Llama/Qwen2-family decoder, read from an HF `config.json` or from GGUF
//! metadata.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::LlmError;

/// The subset of an HF `config.json` our decoder needs. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama` or `qwen2` (others of the family are read as llama).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Kept only to refuse scalings we do not implement (see [`LlamaConfig::validate`]).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_model_type() -> String {
    "llama".to_string()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    4096
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self, LlmError> {
        let load_error = |message: String| LlmError::Load {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| load_error(e.to_string()))?;
        let config: LlamaConfig = serde_json::from_str(&text)
            .map_err(|e| load_error(format!("line {} column {}: {e}", e.line(), e.column())))?;
        config.validate().map_err(load_error)?;
        Ok(config)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks the shape constraints the decoder relies on. RoPE scaling is not implemented:
    /// configs that ask for a non-trivial one (factor ≠ 1) are refused rather than run wrongly.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return Err(
                "num_attention_heads, hidden_size and num_hidden_layers must be > 0".into(),
            );
        }
        let kv_heads = self.num_kv_heads();
        if kv_heads == 0 || !self.num_attention_heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv_heads}",
                self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if let Some(scaling) = &self.rope_scaling {
            if !scaling.is_null() {
                let factor = scaling.get("factor").and_then(|f| f.as_f64());
                if factor != Some(1.0) {
                    return Err(format!(
                        "rope_scaling {scaling} is not supported (only none or factor 1.0)"
                    ));
                }
            }
        }
        Ok(())
    }
}
