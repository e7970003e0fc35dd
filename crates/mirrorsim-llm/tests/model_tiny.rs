//! A tiny randomly initialised Llama/Qwen2 model: safetensors round trip, the differentiable path
//! against the fused one, gradients to every weight, and the KV cache against full forwards.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use mirrorsim_llm::model::llama::{causal_mask, left_padding_mask};
use mirrorsim_llm::model::{KvCache, Llama, LlamaConfig, Positions};

fn tiny_config(model_type: &str, tied: bool) -> LlamaConfig {
    LlamaConfig {
        model_type: model_type.to_string(),
        vocab_size: 101,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
        rope_scaling: None,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn random_weights(config: &LlamaConfig, with_qkv_bias: bool, seed: u64) -> HashMap<String, Tensor> {
    use rand::{Rng, SeedableRng};
    let device = Device::Cpu;
    let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed));
    let h = config.hidden_size;
    let hd = config.head_dim();
    let q = config.num_attention_heads * hd;
    let kv = config.num_kv_heads() * hd;
    let i = config.intermediate_size;
    // Box-Muller normal samples from a seeded RNG (candle's CPU RNG cannot be seeded).
    let randn = |shape: &[usize], std: f64| {
        let count: usize = shape.iter().product();
        let mut rng = rng.borrow_mut();
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(1e-12);
                let u2: f64 = rng.random::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
            })
            .collect();
        Tensor::from_vec(values, shape, &device).unwrap()
    };
    let norm =
        |n: usize| (Tensor::ones(n, DType::F32, &device).unwrap() + randn(&[n], 0.1)).unwrap();
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        randn(&[config.vocab_size, h], 0.5),
    );
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, out, inp) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", i, h),
            ("mlp.up_proj", i, h),
            ("mlp.down_proj", h, i),
        ] {
            w.insert(format!("{p}.{name}.weight"), randn(&[out, inp], 0.15));
            if with_qkv_bias
                && ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"].contains(&name)
            {
                w.insert(format!("{p}.{name}.bias"), randn(&[out], 0.1));
            }
        }
        w.insert(format!("{p}.input_layernorm.weight"), norm(h));
        w.insert(format!("{p}.post_attention_layernorm.weight"), norm(h));
    }
    w.insert("model.norm.weight".to_string(), norm(h));
    if !config.tie_word_embeddings {
        w.insert(
            "lm_head.weight".to_string(),
            randn(&[config.vocab_size, h], 0.5),
        );
    }
    w
}

fn variants() -> Vec<(&'static str, Llama)> {
    let llama = tiny_config("llama", false);
    let qwen = tiny_config("qwen2", true);
    vec![
        (
            "llama untied",
            Llama::from_weights(
                llama.clone(),
                random_weights(&llama, false, 1),
                &Device::Cpu,
                "tiny",
            )
            .unwrap(),
        ),
        (
            "qwen2 tied with q/k/v bias",
            Llama::from_weights(
                qwen.clone(),
                random_weights(&qwen, true, 2),
                &Device::Cpu,
                "tiny",
            )
            .unwrap(),
        ),
    ]
}

fn ids(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

const TOKENS: [u32; 12] = [5, 17, 99, 3, 42, 42, 7, 0, 100, 64, 8, 31];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mirrorsim-tiny-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn tiny_model_round_trips_through_safetensors() {
    for (label, model) in variants() {
        let dir = temp_dir(&label.replace([' ', '/'], "_"));
        model.save_hf_dir(&dir).unwrap();
        let loaded = Llama::load_hf_dir(&dir, &Device::Cpu).unwrap();
        assert_eq!(loaded.config.vocab_size, model.config.vocab_size);
        assert_eq!(loaded.tied_embeddings, model.tied_embeddings, "{label}");
        assert_eq!(
            loaded.named_weights().len(),
            model.named_weights().len(),
            "{label}"
        );
        let before = model.forward(&ids(&TOKENS), false).unwrap();
        let after = loaded.forward(&ids(&TOKENS), false).unwrap();
        assert_eq!(max_abs_diff(&before, &after), 0.0, "{label}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn differentiable_path_matches_the_fused_path() {
    for (label, model) in variants() {
        let fused = model.forward(&ids(&TOKENS), false).unwrap();
        let plain = model.forward(&ids(&TOKENS), true).unwrap();
        assert_eq!(fused.dims(), &[1, TOKENS.len(), 101]);
        let diff = max_abs_diff(&fused, &plain);
        assert!(diff < 1e-4, "{label}: {diff}");
    }
}

#[test]
fn backprop_reaches_every_weight() {
    for (label, model) in variants() {
        let vars: Vec<(String, Var)> = model
            .named_weights()
            .into_iter()
            .map(|(name, t)| (name, Var::from_tensor(&t).unwrap()))
            .collect();
        let weights: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let trainable =
            Llama::from_weights(model.config.clone(), weights, &Device::Cpu, "vars").unwrap();
        let logits = trainable
            .forward(&ids(&TOKENS[..11]), true)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let targets = Tensor::new(&TOKENS[1..], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
            let magnitude: f32 = grad.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(magnitude > 0.0, "{label}: zero gradient for {name}");
        }
        // The fused path really has no gradient (why the differentiable path exists).
        let fused = trainable
            .forward(&ids(&TOKENS[..11]), false)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let grads = candle_nn::loss::cross_entropy(&fused, &targets)
            .unwrap()
            .backward()
            .unwrap();
        let norm_var = &vars
            .iter()
            .find(|(n, _)| n == "model.layers.0.input_layernorm.weight")
            .unwrap()
            .1;
        assert!(grads.get(norm_var.as_tensor()).is_none(), "{label}");
    }
}

#[test]
fn incremental_decoding_with_the_cache_matches_a_full_forward() {
    for (label, model) in variants() {
        let full = model
            .forward(&ids(&TOKENS), false)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = KvCache::new(&model, 1, 4).unwrap(); // grows as needed
        let prefill = 5;
        let mask = causal_mask(prefill, 0, &Device::Cpu).unwrap();
        let h = model
            .forward_hidden(
                &ids(&TOKENS[..prefill]),
                Positions::Uniform(0),
                Some(&mut cache),
                Some(&mask),
                false,
            )
            .unwrap();
        let mut rows = vec![model.logits(&h).unwrap().squeeze(0).unwrap()];
        for (pos, &t) in TOKENS.iter().enumerate().skip(prefill) {
            let h = model
                .forward_hidden(
                    &ids(&[t]),
                    Positions::Uniform(pos),
                    Some(&mut cache),
                    None,
                    false,
                )
                .unwrap();
            rows.push(model.logits(&h).unwrap().squeeze(0).unwrap());
        }
        assert_eq!(cache.len(), TOKENS.len());
        let incremental = Tensor::cat(&rows, 0).unwrap();
        let diff = max_abs_diff(&full, &incremental);
        assert!(diff < 1e-4, "{label}: {diff}");
    }
}

#[test]
fn left_padded_batch_decoding_matches_each_sequence_alone() {
    let (_, model) = variants().remove(0);
    let prompts: [&[u32]; 2] = [&TOKENS[..3], &TOKENS[..8]];
    let next = [77u32, 12u32];
    let mut caches = Vec::new();
    let mut expected = Vec::new();
    for (prompt, &token) in prompts.iter().zip(&next) {
        let mut cache = KvCache::new(&model, 1, 16).unwrap();
        let mask = causal_mask(prompt.len(), 0, &Device::Cpu).unwrap();
        model
            .forward_hidden(
                &ids(prompt),
                Positions::Uniform(0),
                Some(&mut cache),
                Some(&mask),
                false,
            )
            .unwrap();
        caches.push(cache);
        let mut whole = prompt.to_vec();
        whole.push(token);
        let logits = model
            .forward(&ids(&whole), false)
            .unwrap()
            .squeeze(0)
            .unwrap();
        expected.push(logits.get(whole.len() - 1).unwrap());
    }
    // Two samples of the short prompt, one of the long one.
    let (mut batch, pads) = KvCache::left_padded(&[(&caches[0], 2), (&caches[1], 1)], 10).unwrap();
    assert_eq!(pads, vec![5, 5, 0]);
    let tokens = Tensor::new(&[next[0], next[0], next[1]], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    let mask = left_padding_mask(&pads, batch.len() + 1, &Device::Cpu).unwrap();
    let starts = [3usize, 3, 8];
    let h = model
        .forward_hidden(
            &tokens,
            Positions::PerRow(&starts),
            Some(&mut batch),
            Some(&mask),
            false,
        )
        .unwrap();
    let logits = model.logits(&h.squeeze(1).unwrap()).unwrap();
    for (row, want) in [0usize, 0, 1].iter().enumerate() {
        let diff = max_abs_diff(&logits.get(row).unwrap(), &expected[*want]);
        assert!(diff < 1e-4, "row {row}: {diff}");
    }
    // Dropping a row keeps the others intact.
    let kept = batch.select_rows(&[2]).unwrap();
    assert_eq!(kept.batch(), 1);
    assert_eq!(kept.len(), batch.len());
}

#[test]
fn broadcast_prefix_batch_matches_full_sequences() {
    let (_, model) = variants().remove(1);
    let prefix = &TOKENS[..6];
    let suffixes: [&[u32]; 2] = [&[9, 10, 11], &[50]];
    let mut prefix_cache = KvCache::new(&model, 1, 6).unwrap();
    let mask = causal_mask(6, 0, &Device::Cpu).unwrap();
    model
        .forward_hidden(
            &ids(prefix),
            Positions::Uniform(0),
            Some(&mut prefix_cache),
            Some(&mask),
            false,
        )
        .unwrap();
    let mut batch = KvCache::broadcast_prefix(&prefix_cache, 2, 9).unwrap();
    // Right-padded: the second row's padding comes after its only real token.
    let tokens = Tensor::new(&[[9u32, 10, 11], [50, 0, 0]], &Device::Cpu).unwrap();
    let mask = causal_mask(3, 6, &Device::Cpu).unwrap();
    let h = model
        .forward_hidden(
            &tokens,
            Positions::Uniform(6),
            Some(&mut batch),
            Some(&mask),
            false,
        )
        .unwrap();
    for (row, suffix) in suffixes.iter().enumerate() {
        let mut whole = prefix.to_vec();
        whole.extend_from_slice(suffix);
        let full = model
            .forward(&ids(&whole), false)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let want = full.get(whole.len() - 1).unwrap();
        let got = model
            .logits(&h.get(row).unwrap().get(suffix.len() - 1).unwrap())
            .unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "row {row}: {diff}");
        let label_ids = [3u32, 40, 99];
        let picked = model
            .logits_for_tokens(
                &h.get(row)
                    .unwrap()
                    .get(suffix.len() - 1)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
                &label_ids,
            )
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let all = want.to_vec1::<f32>().unwrap();
        for (p, id) in picked.iter().zip(label_ids) {
            assert!((p - all[id as usize]).abs() < 1e-4);
        }
    }
}

#[test]
fn refuses_rope_scaling_and_missing_tensors() {
    let mut config = tiny_config("llama", true);
    config.rope_scaling = Some(serde_json::json!({"type": "linear", "factor": 4.0}));
    let err = Llama::from_weights(
        config.clone(),
        random_weights(&config, false, 3),
        &Device::Cpu,
        "x",
    )
    .unwrap_err();
    assert!(err.to_string().contains("rope_scaling"), "{err}");
    let config = tiny_config("llama", true);
    let mut weights = random_weights(&config, false, 3);
    weights.remove("model.layers.1.mlp.up_proj.weight");
    let err = Llama::from_weights(config, weights, &Device::Cpu, "x").unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}
