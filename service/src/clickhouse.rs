//! How services reach ClickHouse: one set of flags, one client configuration.

use std::time::Duration;

use clickhouse::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Connection flags for ClickHouse; each can also come from the environment.
#[derive(clap::Args, Clone, Debug)]
pub struct ClickHouseArgs {
    /// ClickHouse HTTP interface.
    #[arg(
        long = "clickhouse-url",
        env = "CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub url: String,
    /// ClickHouse user.
    #[arg(
        long = "clickhouse-user",
        env = "CLICKHOUSE_USER",
        default_value = "default"
    )]
    pub user: String,
    /// ClickHouse password.
    #[arg(
        long = "clickhouse-password",
        env = "CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub password: String,
    /// Database holding Flowhouse's tables.
    #[arg(
        long = "clickhouse-database",
        env = "CLICKHOUSE_DATABASE",
        default_value = "flowhouse"
    )]
    pub database: String,
}

impl ClickHouseArgs {
    /// A client bound to the Flowhouse database. Compression stays at the crate's default (LZ4):
    /// the same configuration runs against the local bridge and a real server.
    pub fn client(&self) -> Client {
        self.server_client().with_database(&self.database)
    }

    /// A client with no database selected, for statements that create it.
    ///
    /// The HTTP client is the crate's default (keep-alive probes, short idle pool) plus
    /// TCP_NODELAY: without it, the end of every insert body waits for the server's delayed ACK
    /// (about 35 ms an insert, measured by `cargo bench -p flowhouse-ingest --bench cpu`).
    pub fn server_client(&self) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .build(connector);
        Client::with_http_client(http)
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
    }
}
