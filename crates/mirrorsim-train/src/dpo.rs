//! Direct preference optimisation (sigmoid loss): for a pair, with policy π and reference r,
//! `loss = −log σ(β·[(log π(chosen) − log r(chosen)) − (log π(rejected) − log r(rejected))])`,
//! log-probabilities summed over the reply tokens. The reference is the starting policy (base
//! plus the SFT adapter when one is given): its log-probabilities are computed once, before the
//! first step, and stored in the run directory so a resumed run uses the same ones.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use mirrorsim_llm::model::Llama;
use serde::{Deserialize, Serialize};

use crate::data::DpoExample;
use crate::session::{reply_logprobs, scalar, Objective, StepStats};
use crate::TrainError;

/// Reference log-probabilities (chosen, rejected) by example index.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLogprobs {
    pub by_example: HashMap<usize, (f64, f64)>,
}

impl ReferenceLogprobs {
    /// Computes them for `examples` with the model as it is now (no dropout, no gradient).
    pub fn compute(
        model: &Llama,
        examples: &[(usize, &DpoExample)],
        progress: bool,
    ) -> Result<Self, TrainError> {
        let bar = if progress {
            indicatif::ProgressBar::new(examples.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_message("reference log-probabilities");
        let mut by_example = HashMap::new();
        for (index, example) in examples {
            let (sums, _) = reply_logprobs(model, &[&example.chosen, &example.rejected], false)?;
            let values = sums.to_vec1::<f32>()?;
            by_example.insert(*index, (values[0] as f64, values[1] as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(ReferenceLogprobs { by_example })
    }

    /// Writes them with the fingerprint of the data they were computed for.
    pub fn save(&self, path: &Path, data_fingerprint: &str) -> Result<(), TrainError> {
        let mut entries: Vec<(&usize, &(f64, f64))> = self.by_example.iter().collect();
        entries.sort_by_key(|(index, _)| **index);
        let value = serde_json::json!({
            "data_fingerprint": data_fingerprint,
            "entries": entries,
        });
        let text = serde_json::to_string(&value).map_err(|e| TrainError::file(path, e))?;
        mirrorsim_data::io::write_atomic(path, |w| w.write_all(text.as_bytes()))?;
        Ok(())
    }

    /// Reads them back; `None` when they were computed for other data.
    pub fn load(path: &Path, data_fingerprint: &str) -> Result<Option<Self>, TrainError> {
        #[derive(Deserialize)]
        struct Stored {
            data_fingerprint: String,
            entries: Vec<(usize, (f64, f64))>,
        }
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
        let stored: Stored = serde_json::from_str(&text).map_err(|e| TrainError::file(path, e))?;
        if stored.data_fingerprint != data_fingerprint {
            return Ok(None);
        }
        Ok(Some(ReferenceLogprobs {
            by_example: stored.entries.into_iter().collect(),
        }))
    }

    fn get(&self, index: usize) -> Result<(f64, f64), TrainError> {
        self.by_example.get(&index).copied().ok_or_else(|| {
            TrainError::Config(format!(
                "no reference log-probabilities for example {index}"
            ))
        })
    }
}

pub struct DpoObjective {
    pub beta: f64,
    pub reference: ReferenceLogprobs,
}

/// Per pair: (loss, chosen reward, rejected reward) from policy and reference log-probs.
fn pair_terms(
    beta: f64,
    policy: &Tensor,
    reference: &[(f64, f64)],
) -> Result<(Tensor, Tensor), TrainError> {
    let pairs = reference.len();
    let policy = policy.reshape((pairs, 2))?;
    let device = policy.device().clone();
    let reference: Vec<f32> = reference
        .iter()
        .flat_map(|(c, r)| [*c as f32, *r as f32])
        .collect();
    let reference = Tensor::from_vec(reference, (pairs, 2), &device)?;
    let rewards = ((policy - reference)? * beta)?;
    let chosen = rewards.narrow(1, 0, 1)?.squeeze(1)?;
    let rejected = rewards.narrow(1, 1, 1)?.squeeze(1)?;
    let margin = (chosen - rejected)?;
    // −log σ(m) = log(1 + e^{−|m|}) − min(m, 0), stable for large |m|.
    let loss = ((margin.abs()?.neg()?.exp()? + 1.0)?.log()? - margin.minimum(0f32)?)?;
    Ok((loss, rewards))
}

impl Objective for DpoObjective {
    type Example = DpoExample;

    fn tokens(&self, example: &DpoExample) -> usize {
        example.chosen.tokens.len() + example.rejected.tokens.len()
    }

    fn micro_batch_loss(
        &self,
        model: &Llama,
        micro: &[(usize, &DpoExample)],
        step: &[(usize, &DpoExample)],
    ) -> Result<(Tensor, StepStats), TrainError> {
        let mut sequences = Vec::with_capacity(micro.len() * 2);
        let mut reference = Vec::with_capacity(micro.len());
        for (index, example) in micro {
            sequences.push(&example.chosen);
            sequences.push(&example.rejected);
            reference.push(self.reference.get(*index)?);
        }
        let (policy, _) = reply_logprobs(model, &sequences, true)?;
        let (losses, rewards) = pair_terms(self.beta, &policy, &reference)?;
        let share = 1.0 / step.len().max(1) as f64;
        let loss = (losses.sum_all()? * share)?;
        let rewards = rewards.detach().to_vec2::<f32>()?;
        let chosen: f64 = rewards.iter().map(|r| r[0] as f64).sum();
        let rejected: f64 = rewards.iter().map(|r| r[1] as f64).sum();
        let correct = rewards.iter().filter(|r| r[0] > r[1]).count() as f64;
        Ok((
            loss.clone(),
            StepStats {
                loss: scalar(&loss)?,
                extra: vec![
                    ("reward_chosen", chosen * share),
                    ("reward_rejected", rejected * share),
                    ("reward_margin", (chosen - rejected) * share),
                    ("reward_accuracy", correct * share),
                ],
            },
        ))
    }

    fn evaluate(
        &self,
        model: &Llama,
        examples: &[(usize, &DpoExample)],
    ) -> Result<Vec<(&'static str, f64)>, TrainError> {
        let (mut loss, mut margin, mut correct) = (0f64, 0f64, 0f64);
        for (index, example) in examples {
            let (policy, _) = reply_logprobs(model, &[&example.chosen, &example.rejected], false)?;
            let (losses, rewards) = pair_terms(self.beta, &policy, &[self.reference.get(*index)?])?;
            loss += scalar(&losses)?;
            let rewards = rewards.to_vec2::<f32>()?;
            margin += (rewards[0][0] - rewards[0][1]) as f64;
            if rewards[0][0] > rewards[0][1] {
                correct += 1.0;
            }
        }
        let n = examples.len().max(1) as f64;
        Ok(vec![
            ("eval_loss", loss / n),
            ("eval_reward_margin", margin / n),
            ("eval_reward_accuracy", correct / n),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pair_loss_matches_the_formula() -> Result<(), TrainError> {
        let policy = Tensor::new(&[-10f32, -12.0, -5.0, -4.0], &Device::Cpu)?;
        let reference = [(-11.0, -11.0), (-5.0, -5.0)];
        let (loss, rewards) = pair_terms(0.5, &policy, &reference)?;
        let loss = loss.to_vec1::<f32>()?;
        // Pair 1: margin = 0.5·(1 − (−1)) = 1; pair 2: 0.5·(0 − 1) = −0.5.
        let expected = |m: f64| -(1.0 / (1.0 + (-m).exp())).ln();
        assert!((loss[0] as f64 - expected(1.0)).abs() < 1e-5);
        assert!((loss[1] as f64 - expected(-0.5)).abs() < 1e-5);
        assert_eq!(
            rewards.to_vec2::<f32>()?,
            vec![vec![0.5, -0.5], vec![0.0, 0.5]]
        );
        // Large margins stay finite.
        let policy = Tensor::new(&[0f32, -400.0], &Device::Cpu)?;
        let (loss, _) = pair_terms(1.0, &policy, &[(0.0, 0.0)])?;
        assert!(loss.to_vec1::<f32>()?[0].abs() < 1e-6);
        let policy = Tensor::new(&[-400f32, 0.0], &Device::Cpu)?;
        let (loss, _) = pair_terms(1.0, &policy, &[(0.0, 0.0)])?;
        assert!((loss.to_vec1::<f32>()?[0] - 400.0).abs() < 1e-3);
        Ok(())
    }
}
