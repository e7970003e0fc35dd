//! `mirrorsim serve-llm` (being written).

use clap::Args;

#[derive(Debug, Args)]
pub struct ServeLlmArgs {}

pub fn run(_args: ServeLlmArgs) -> anyhow::Result<()> {
    anyhow::bail!("`serve-llm` is not written yet")
}
