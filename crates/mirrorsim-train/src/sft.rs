//! Supervised fine-tuning: the mean negative log-likelihood of the reply tokens, averaged over
//! every reply token of the optimizer step (so gradient accumulation gives the same gradient as
//! one big batch).

use mirrorsim_llm::model::Llama;

use crate::data::SftExample;
use crate::session::{reply_logprobs, scalar, Objective, StepStats};
use crate::TrainError;

pub struct SftObjective;

impl Objective for SftObjective {
    type Example = SftExample;

    fn tokens(&self, example: &SftExample) -> usize {
        example.sequence.tokens.len()
    }

    fn micro_batch_loss(
        &self,
        model: &Llama,
        micro: &[(usize, &SftExample)],
        step: &[(usize, &SftExample)],
    ) -> Result<(candle_core::Tensor, StepStats), TrainError> {
        let step_tokens: usize = step.iter().map(|(_, e)| reply_tokens(e)).sum();
        let sequences: Vec<_> = micro.iter().map(|(_, e)| &e.sequence).collect();
        let (sums, _) = reply_logprobs(model, &sequences, true)?;
        let loss = (sums.sum_all()? * (-1.0 / step_tokens.max(1) as f64))?;
        let value = scalar(&loss)?;
        Ok((
            loss,
            StepStats {
                loss: value,
                extra: Vec::new(),
            },
        ))
    }

    fn evaluate(
        &self,
        model: &Llama,
        examples: &[(usize, &SftExample)],
    ) -> Result<Vec<(&'static str, f64)>, TrainError> {
        let mut total = 0f64;
        let mut tokens = 0usize;
        for (_, example) in examples {
            let (sums, counts) = reply_logprobs(model, &[&example.sequence], false)?;
            total -= scalar(&sums)?;
            tokens += counts.iter().sum::<usize>();
        }
        Ok(vec![("eval_loss", total / tokens.max(1) as f64)])
    }
}

fn reply_tokens(example: &SftExample) -> usize {
    example
        .sequence
        .reply_len()
        .min(example.sequence.tokens.len() - 1)
}
