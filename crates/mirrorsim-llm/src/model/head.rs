//! The output layer in training: each reply position's log-probability of its target token.
//!
//! Composed from candle's ops (logits, log-softmax, gather), this step keeps vocabulary-sized
//! tensors alive for backprop: 50 MB each for 256 reply tokens of SmolLM2 (49,152 tokens), and
//! candle's backprop allocates and zero-fills as many again. Measured on the 2-core VM, those
//! tensors were 0.7 s of a 3.9 s LoRA step and 480 MiB of its peak memory. [`target_log_probs`]
//! instead works through the rows in blocks whose logits stay small, and since the log-
//! probability's gradient with respect to the hidden state is `W[target] − softmax · W`, it
//! computes that in the forward pass (when the input needs a gradient) and keeps only it.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::amx::Bf16Weight;
use super::lora::FrozenBf16;
use super::ops::{contiguous_f32, exp_polynomial_sum_in_place};

/// Logits per block at most (floats): 16 MiB, under glibc's 32 MiB mmap threshold, so blocks
/// reuse heap memory instead of faulting in fresh pages.
const BLOCK_FLOATS: usize = 4 << 20;

/// `log softmax(x · Wᵀ)[targetᵢ]` for each row `i` of `x (rows, hidden)`, shape `(rows,)`, where
/// `weight (vocab, hidden)` is the frozen output layer (bf16 on AMX when `packed`). `None` off
/// the CPU, outside f32 or with a trainable weight: the caller composes it from candle's ops.
pub fn target_log_probs(
    x: &Tensor,
    weight: &Tensor,
    packed: Option<FrozenBf16<'_>>,
    targets: &[u32],
) -> candle_core::Result<Option<Tensor>> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !cpu_f32(x) || !cpu_f32(weight) || weight.track_op() {
        return Ok(None);
    }
    let (rows, hidden) = x.dims2()?;
    let (vocab, weight_hidden) = weight.dims2()?;
    if targets.len() != rows || weight_hidden != hidden {
        candle_core::bail!(
            "target-log-probs: {rows} rows of {hidden} features, {} targets, weight \
             {vocab}×{weight_hidden}",
            targets.len()
        );
    }
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target-log-probs: target {bad} is outside the vocabulary of {vocab}");
    }
    let op = TargetLogProbs {
        weight: weight.contiguous()?,
        packed: packed.map(|p| (Arc::clone(p.forward), Arc::clone(p.backward))),
        targets: targets.to_vec(),
        with_grad: x.track_op(),
        saved_grad: Mutex::new(None),
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

struct TargetLogProbs {
    weight: Tensor,
    packed: Option<(Arc<Bf16Weight>, Arc<Bf16Weight>)>,
    targets: Vec<u32>,
    with_grad: bool,
    /// `∂ log pᵢ / ∂xᵢ = W[targetᵢ] − softmaxᵢ · W`, `(rows, hidden)`, from the forward.
    saved_grad: Mutex<Option<Tensor>>,
}

impl TargetLogProbs {
    /// `x (rows, hidden) · Wᵀ`, flat.
    fn logits(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        match &self.packed {
            Some((forward, _)) => Ok(forward.matmul_t(x, rows)),
            None => {
                let x = Tensor::from_slice(x, (rows, self.weight.dim(1)?), &Device::Cpu)?;
                x.matmul(&self.weight.t()?)?.flatten_all()?.to_vec1()
            }
        }
    }

    /// `p (rows, vocab) · W`, flat.
    fn probs_times_weight(&self, p: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        match &self.packed {
            Some((_, backward)) => Ok(backward.matmul_t(p, rows)),
            None => {
                let p = Tensor::from_slice(p, (rows, self.weight.dim(0)?), &Device::Cpu)?;
                p.matmul(&self.weight)?.flatten_all()?.to_vec1()
            }
        }
    }
}

impl CustomOp1 for TargetLogProbs {
    fn name(&self) -> &'static str {
        "target-log-probs"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "target-log-probs")?;
        let (rows, hidden) = layout.shape().dims2()?;
        let (vocab, _) = self.weight.dims2()?;
        let block = (BLOCK_FLOATS / vocab.max(1)).max(8);
        let mut log_probs = vec![0f32; rows];
        let mut grad = Vec::with_capacity(if self.with_grad { rows * hidden } else { 0 });
        let target_rows = if self.with_grad {
            let ids = Tensor::new(self.targets.as_slice(), &Device::Cpu)?;
            self.weight
                .index_select(&ids, 0)?
                .flatten_all()?
                .to_vec1::<f32>()?
        } else {
            Vec::new()
        };
        for start in (0..rows).step_by(block) {
            let count = block.min(rows - start);
            let mut logits = self.logits(&x[start * hidden..(start + count) * hidden], count)?;
            logits
                .par_chunks_mut(vocab)
                .zip(log_probs[start..start + count].par_iter_mut())
                .zip(&self.targets[start..start + count])
                .for_each(|((row, log_prob), &target)| {
                    let target_logit = row[target as usize];
                    let (max, sum) = exp_polynomial_sum_in_place(row);
                    *log_prob = target_logit - max - sum.ln();
                    if self.with_grad {
                        let inverse = 1.0 / sum;
                        row.iter_mut().for_each(|p| *p *= inverse);
                    }
                });
            if self.with_grad {
                let weighted = self.probs_times_weight(&logits, count)?;
                let targets = &target_rows[start * hidden..(start + count) * hidden];
                grad.extend(targets.iter().zip(&weighted).map(|(t, w)| t - w));
            }
        }
        if self.with_grad {
            let grad = Tensor::from_vec(grad, (rows, hidden), &Device::Cpu)?;
            *self
                .saved_grad
                .lock()
                .map_err(|_| candle_core::Error::Msg("target-log-probs: poisoned".into()))? =
                Some(grad);
        }
        Ok((CpuStorage::F32(log_probs), Shape::from(rows)))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let saved = self
            .saved_grad
            .lock()
            .map_err(|_| candle_core::Error::Msg("target-log-probs: poisoned".into()))?
            .take();
        let Some(grad) = saved else {
            candle_core::bail!(
                "target-log-probs: backward without a forward that kept its gradient"
            )
        };
        Ok(Some(grad.broadcast_mul(&grad_res.unsqueeze(1)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    /// The composite: logits, log-softmax, gather.
    fn composite(x: &Tensor, weight: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
        let logits = x.matmul(&weight.t()?)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let ids = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), x.device())?;
        log_probs.gather(&ids, 1)?.squeeze(1)
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
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn matches_the_composite_in_value_and_gradient_across_blocks() {
        let device = Device::Cpu;
        // 600 rows of a 9,000-token vocabulary: blocks of 466 rows, so the second is partial.
        let (rows, hidden, vocab) = (600, 24, 9_000);
        let weight = (Tensor::randn(0f32, 1.0, (vocab, hidden), &device).unwrap() * 0.3).unwrap();
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, hidden), &device).unwrap()).unwrap();
        let targets: Vec<u32> = (0..rows as u32)
            .map(|i| (i * 7_919) % vocab as u32)
            .collect();
        // Weights per row, so that the backward's broadcast is checked too.
        let upstream = Tensor::arange(1f32, rows as f32 + 1.0, &device)
            .unwrap()
            .affine(1.0 / rows as f64, 0.0)
            .unwrap();

        let ours = target_log_probs(x.as_tensor(), &weight, None, &targets)
            .unwrap()
            .expect("a CPU f32 input takes the op");
        let reference = composite(x.as_tensor(), &weight, &targets).unwrap();
        assert_eq!(ours.dims(), &[rows]);
        assert!(max_abs_diff(&ours, &reference) < 2e-5);

        let grad = |value: &Tensor| {
            (value * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .cloned()
                .unwrap()
        };
        let (ours_grad, reference_grad) = (grad(&ours), grad(&reference));
        let zero = reference_grad.zeros_like().unwrap();
        assert!(max_abs_diff(&reference_grad, &zero) > 1e-3);
        assert!(max_abs_diff(&ours_grad, &reference_grad) < 2e-5);
    }

    #[test]
    fn without_a_gradient_nothing_is_kept_and_bad_targets_are_refused() {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (50, 8), &device).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 8), &device).unwrap();
        let ours = target_log_probs(&x, &weight, None, &[0, 49, 7])
            .unwrap()
            .unwrap();
        let reference = composite(&x, &weight, &[0, 49, 7]).unwrap();
        assert!(max_abs_diff(&ours, &reference) < 1e-5);
        let message = target_log_probs(&x, &weight, None, &[0, 50, 7])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("target 50 is outside the vocabulary of 50"),
            "{message}"
        );
    }
}
