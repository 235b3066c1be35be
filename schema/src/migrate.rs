//! `flowhouse migrate`: brings the ClickHouse schema to the current version.

use anyhow::Context as _;
use flowhouse_service::clickhouse::ClickHouseArgs;

/// Flags of `flowhouse migrate`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let server = args.clickhouse.server_client();
    let database = &args.clickhouse.database;
    server
        .query("CREATE DATABASE IF NOT EXISTS ?")
        .bind(clickhouse::sql::Identifier(database))
        .execute()
        .await
        .with_context(|| {
            format!(
                "cannot create database {database} on {}",
                args.clickhouse.url
            )
        })?;
    let version: String = server.query("SELECT version()").fetch_one().await?;
    tracing::info!(%database, clickhouse = %version, "schema is up to date");
    println!("database {database} ready on ClickHouse {version}");
    Ok(())
}
