//! Placeholder until its issue lands.

/// Flags of this subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
