//! Placeholder until its issue lands.

use std::net::SocketAddr;

use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;

/// Flags of `flowhouse ingest`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(
        long,
        env = "FLOWHOUSE_INGEST_ADMIN_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub admin_listen: SocketAddr,
}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
