//! `mirrorsim scenes` (being written).

use clap::Args;

#[derive(Debug, Args)]
pub struct ScenesArgs {}

pub fn run(_args: ScenesArgs) -> anyhow::Result<()> {
    anyhow::bail!("`scenes` is not written yet")
}
