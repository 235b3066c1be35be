//! How services reach ClickHouse: one set of flags, one client configuration.

use clickhouse::Client;

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
    pub fn server_client(&self) -> Client {
        Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
    }
}
