//! Randomly initialised decoders, for tests and benchmarks that need a model without a download.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::config::LlamaConfig;
use super::llama::Llama;
use crate::backend::LlmError;

/// splitmix64 normal samples (Box–Muller), so the weights depend only on `seed`.
struct NormalStream(u64);

impl NormalStream {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn tensor(&mut self, shape: &[usize], mean: f64, std: f64) -> candle_core::Result<Tensor> {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let u1 = self.uniform().max(1e-12);
                let u2 = self.uniform();
                let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mean + normal * std) as f32
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }
}

impl Llama {
    /// A model with normal random weights (std 0.15 for projections, 0.5 for embeddings, norms
    /// around 1) and q/k/v biases when `qkv_bias`; the same `seed` gives the same weights.
    pub fn random(
        config: LlamaConfig,
        qkv_bias: bool,
        seed: u64,
        device: &Device,
    ) -> Result<Llama, LlmError> {
        let compute = |e: candle_core::Error| LlmError::Compute(e.to_string());
        let mut rng = NormalStream(seed);
        let h = config.hidden_size;
        let head_dim = config.head_dim();
        let q = config.num_attention_heads * head_dim;
        let kv = config.num_kv_heads() * head_dim;
        let inter = config.intermediate_size;
        let mut weights = HashMap::new();
        weights.insert(
            "model.embed_tokens.weight".to_string(),
            rng.tensor(&[config.vocab_size, h], 0.0, 0.5)
                .map_err(compute)?,
        );
        for layer in 0..config.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            for (name, out, inp) in [
                ("self_attn.q_proj", q, h),
                ("self_attn.k_proj", kv, h),
                ("self_attn.v_proj", kv, h),
                ("self_attn.o_proj", h, q),
                ("mlp.gate_proj", inter, h),
                ("mlp.up_proj", inter, h),
                ("mlp.down_proj", h, inter),
            ] {
                weights.insert(
                    format!("{p}.{name}.weight"),
                    rng.tensor(&[out, inp], 0.0, 0.15).map_err(compute)?,
                );
                if qkv_bias
                    && matches!(
                        name,
                        "self_attn.q_proj" | "self_attn.k_proj" | "self_attn.v_proj"
                    )
                {
                    weights.insert(
                        format!("{p}.{name}.bias"),
                        rng.tensor(&[out], 0.0, 0.1).map_err(compute)?,
                    );
                }
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                weights.insert(
                    format!("{p}.{norm}.weight"),
                    rng.tensor(&[h], 1.0, 0.1).map_err(compute)?,
                );
            }
        }
        weights.insert(
            "model.norm.weight".to_string(),
            rng.tensor(&[h], 1.0, 0.1).map_err(compute)?,
        );
        if !config.tie_word_embeddings {
            weights.insert(
                "lm_head.weight".to_string(),
                rng.tensor(&[config.vocab_size, h], 0.0, 0.15)
                    .map_err(compute)?,
            );
        }
        Llama::from_weights(config, weights, device, "random initialisation")
    }
}
