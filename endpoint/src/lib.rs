//! Placeholder until its issue lands.

use std::net::SocketAddr;
use std::path::PathBuf;

use flowhouse_service::kafka::KafkaArgs;

/// Flags of `flowhouse endpoint`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where the API (and /healthz, /readyz, /metrics) is served.
    #[arg(
        long,
        env = "FLOWHOUSE_ENDPOINT_LISTEN",
        default_value = "127.0.0.1:4200"
    )]
    pub listen: SocketAddr,
    /// The tenant API keys file.
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
