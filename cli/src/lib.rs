//! `flowhouse`: one binary, one subcommand per service. Each subcommand's flags and behaviour live
//! in its crate; this crate only wires them (and exposes the command tree, so that tests can check
//! deployment files against the flags the services really read).

pub mod serve;

use clap::{Parser, Subcommand};
use flowhouse_service::telemetry::LogArgs;

#[derive(Parser, Debug)]
#[command(
    name = "flowhouse",
    version,
    about = "Event analytics for workflow orchestration, on ClickHouse"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run endpoint, query API and ingest in one process, every route on one port (single
    /// node; what a Prefect client's one PREFECT_API_URL points at).
    Serve(serve::Args),
    /// Create or upgrade the ClickHouse schema.
    Migrate(flowhouse_schema::migrate::Args),
    /// Consume events from Kafka into ClickHouse.
    Ingest(flowhouse_ingest::Args),
    /// Accept events over HTTP and websocket and produce them to Kafka.
    Endpoint(flowhouse_endpoint::Args),
    /// Serve tenant-scoped metrics and search over HTTP.
    QueryApi(flowhouse_query_api::Args),
    /// Manage tenant API keys.
    Keys(flowhouse_keys::cli::Args),
    /// Generate a workload, drive it through Flowhouse and report what was measured.
    #[cfg(feature = "loadtest")]
    Loadtest(flowhouse_loadtest::Args),
    /// Follow an orchestrator's server and produce what it sees to Kafka (`mirror prefect`).
    #[command(subcommand)]
    Mirror(flowhouse_mirror::Source),
}

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Migrate(args) => flowhouse_schema::migrate::run(args).await,
        Command::Ingest(args) => flowhouse_ingest::run(args).await,
        Command::Endpoint(args) => flowhouse_endpoint::run(args).await,
        Command::QueryApi(args) => flowhouse_query_api::run(args).await,
        Command::Keys(args) => flowhouse_keys::cli::run(args),
        #[cfg(feature = "loadtest")]
        Command::Loadtest(args) => flowhouse_loadtest::run(args).await,
        Command::Mirror(source) => flowhouse_mirror::run(source).await,
    }
}
