//! AdamW (decoupled weight decay, bias-corrected), the learning-rate schedule (linear warmup,
//! then cosine decay to zero, as HF's `get_cosine_schedule_with_warmup`) and global-norm
//! gradient clipping. The moments are plain tensors so a checkpoint can store them exactly.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            learning_rate: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`.
pub fn scheduled_lr(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let decay_steps = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / decay_steps as f64).min(1.0);
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `grads` in place so their global L2 norm is at most `max_norm` (when `max_norm > 0`);
/// returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> candle_core::Result<f64> {
    let mut squares = 0f64;
    for grad in grads.iter() {
        squares += grad
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = squares.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for grad in grads.iter_mut() {
            *grad = (&*grad * factor)?;
        }
    }
    Ok(norm)
}

pub struct AdamW {
    params: Vec<(String, Var)>,
    first_moment: Vec<Tensor>,
    second_moment: Vec<Tensor>,
    /// Updates done so far.
    pub steps: usize,
    pub config: AdamWConfig,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let first_moment = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<_, _>>()?;
        let second_moment = params
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<_, _>>()?;
        Ok(AdamW {
            params,
            first_moment,
            second_moment,
            steps: 0,
            config,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`; `grads` are in the order of [`AdamW::params`].
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> candle_core::Result<()> {
        if grads.len() != self.params.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            );
        }
        self.steps += 1;
        let c = &self.config;
        let correction1 = 1.0 - c.beta1.powi(self.steps as i32);
        let correction2 = 1.0 - c.beta2.powi(self.steps as i32);
        for (i, grad) in grads.iter().enumerate() {
            let m = ((&self.first_moment[i] * c.beta1)? + (grad * (1.0 - c.beta1))?)?;
            let v = ((&self.second_moment[i] * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let param = self.params[i].1.as_tensor();
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + c.eps)?)?;
            let decayed = (param * (1.0 - lr * c.weight_decay))?;
            self.params[i].1.set(&(decayed - (update * lr)?)?)?;
            self.first_moment[i] = m;
            self.second_moment[i] = v;
        }
        Ok(())
    }

    /// The moments under `{name}.exp_avg` / `{name}.exp_avg_sq`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("{name}.exp_avg"), self.first_moment[i].clone());
            out.insert(format!("{name}.exp_avg_sq"), self.second_moment[i].clone());
        }
        out
    }

    /// Restores moments written by [`AdamW::state_tensors`] after `steps` updates.
    pub fn load_state(
        &mut self,
        mut tensors: HashMap<String, Tensor>,
        steps: usize,
    ) -> Result<(), String> {
        let device = self.params.first().map(|(_, v)| v.device().clone());
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (suffix, slot) in [
                ("exp_avg", &mut self.first_moment[i]),
                ("exp_avg_sq", &mut self.second_moment[i]),
            ] {
                let key = format!("{name}.{suffix}");
                let tensor = tensors
                    .remove(&key)
                    .ok_or_else(|| format!("optimizer state {key} is missing"))?;
                if tensor.dims() != var.dims() {
                    return Err(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        tensor.dims(),
                        var.dims()
                    ));
                }
                *slot = match &device {
                    Some(device) => tensor.to_device(device).map_err(|e| e.to_string())?,
                    None => tensor,
                };
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_linearly_then_decays_to_zero() {
        assert!((scheduled_lr(1.0, 0, 4, 14) - 0.25).abs() < 1e-12);
        assert!((scheduled_lr(1.0, 3, 4, 14) - 1.0).abs() < 1e-12);
        assert!((scheduled_lr(1.0, 4, 4, 14) - 1.0).abs() < 1e-12);
        assert!((scheduled_lr(1.0, 9, 4, 14) - 0.5).abs() < 1e-12);
        assert!(scheduled_lr(1.0, 14, 4, 14).abs() < 1e-12);
        assert!((scheduled_lr(2.0, 0, 0, 10) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> candle_core::Result<()> {
        let mut grads = vec![
            Tensor::new(&[3f32, 0.0], &Device::Cpu)?,
            Tensor::new(&[4f32], &Device::Cpu)?,
        ];
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6);
        let a = grads[0].to_vec1::<f32>()?;
        let b = grads[1].to_vec1::<f32>()?;
        assert!((a[0] - 0.6).abs() < 1e-5 && (b[0] - 0.8).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr_against_its_gradient_sign(
    ) -> candle_core::Result<()> {
        let var = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("w".to_string(), var.clone())], AdamWConfig::default())?;
        let grad = Tensor::new(&[0.3f32, -4.0, 0.0], &Device::Cpu)?;
        opt.step(&[grad], 0.1)?;
        let after = var.as_tensor().to_vec1::<f32>()?;
        // Bias-corrected first step: m̂/√v̂ = g/|g| (0 where g = 0).
        assert!((after[0] - 0.9).abs() < 1e-5);
        assert!((after[1] - -1.9).abs() < 1e-5);
        assert!((after[2] - 0.5).abs() < 1e-6);
        Ok(())
    }
}
