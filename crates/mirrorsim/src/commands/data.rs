//! `mirrorsim data …`: dataset inspection (being written).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Users, items, interactions, time range, rating histogram, interactions per user.
    Stats {
        /// The dataset as FORMAT:PATH, e.g. recbole:../shared/data/ml-1m
        source: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_cmd: DataCommand) -> anyhow::Result<()> {
    anyhow::bail!("`data stats` is not written yet")
}
