//! Tenant API keys. Placeholder until its issue lands.

pub mod cli {
    /// Flags of `flowhouse keys`.
    #[derive(clap::Args, Clone, Debug)]
    pub struct Args {}

    pub fn run(_args: Args) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}
