//! `dujiang profile`: a readable sweep of one chip × model × tp performance model.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Chip id from the catalogue (e.g. h20, ascend-910b).
    #[arg(long)]
    pub chip: String,
    /// Model id from the catalogue (e.g. llama-3-8b).
    #[arg(long)]
    pub model: String,
    /// Tensor-parallel degree.
    #[arg(long, default_value_t = 1)]
    pub tp: u32,
}

pub fn run(args: Args) -> Result<()> {
    anyhow::bail!(
        "profile for {} / {} tp{}: catalogue not loaded yet",
        args.chip,
        args.model,
        args.tp
    )
}
