//! `mirrorsim chat` (being written).

use clap::Args;

#[derive(Debug, Args)]
pub struct ChatArgs {}

pub fn run(_args: ChatArgs) -> anyhow::Result<()> {
    anyhow::bail!("`chat` is not written yet")
}
