//! Support for the end-to-end tests: where the stack is, and small helpers.
//!
//! Every test reaches the stack only through the exported variables (`CLICKHOUSE_URL`,
//! `CLICKHOUSE_USER`, `CLICKHOUSE_PASSWORD`, `KAFKA_BROKERS`), so the same tests run unchanged
//! against a real ClickHouse server and a real Kafka cluster. `make test` starts the local stack
//! and exports them; tests that stop and start a component (fault tests) also need
//! `FLOWHOUSE_STACK_DIR`, which only the local stack exports.

use std::path::PathBuf;
use std::process::Command;

use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::kafka::KafkaArgs;

/// The running stack, as the environment describes it.
#[derive(Clone, Debug)]
pub struct Stack {
    pub clickhouse: ClickHouseArgs,
    pub kafka: KafkaArgs,
    pub stack_dir: Option<PathBuf>,
}

impl Stack {
    /// Reads the stack's variables; panics with the way to get them when they are missing.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!(
                    "{name} is not set. These tests run against a live stack: use `make test`, \
                     or `eval \"$(deploy/local/stack up)\"` first, or point the variables at a \
                     real ClickHouse and Kafka."
                )
            })
        };
        Self {
            clickhouse: ClickHouseArgs {
                url: var("CLICKHOUSE_URL"),
                user: var("CLICKHOUSE_USER"),
                password: std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default(),
                database: "default".into(),
            },
            kafka: KafkaArgs {
                brokers: var("KAFKA_BROKERS"),
                properties: Vec::new(),
                replication_factor: 1,
            },
            stack_dir: std::env::var_os("FLOWHOUSE_STACK_DIR").map(PathBuf::from),
        }
    }

    /// A client bound to `database`, configured exactly as the services configure theirs.
    pub fn clickhouse_client(&self, database: &str) -> clickhouse::Client {
        ClickHouseArgs {
            database: database.into(),
            ..self.clickhouse.clone()
        }
        .client()
    }

    /// Creates a fresh database for one test, so tests never see each other's rows.
    pub async fn fresh_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.clickhouse
            .server_client()
            .query(&format!("CREATE DATABASE {name}"))
            .execute()
            .await
            .expect("create a test database");
        name
    }

    /// Stops or starts one component of the local stack (`clickhouse` or `kafka`).
    /// Returns false, doing nothing, when the stack is not the local one.
    pub fn control(&self, action: &str, component: &str) -> bool {
        let Some(dir) = &self.stack_dir else {
            return false;
        };
        let script = workspace_root().join("deploy/local/stack");
        let status = Command::new(script)
            .args([action, component])
            .env("FLOWHOUSE_STACK_DIR", dir)
            .status()
            .expect("run deploy/local/stack");
        assert!(
            status.success(),
            "deploy/local/stack {action} {component} failed"
        );
        true
    }
}

/// A name no other test run uses: `prefix_` and 12 hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..12])
}

/// The repository root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
