//! `flowhouse serve` as a process on a free port, with its own database, topics and keys: what
//! the tests of Prefect clients and of the OpenAPI contract run against.

use std::time::Duration;

use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use uuid::Uuid;

use crate::{ServiceProcess, Stack, free_port, unique_name};

/// `flowhouse serve` on a free port, with its own database, topics and keys.
pub struct Served {
    pub process: ServiceProcess,
    pub port: u16,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_port: u16,
    pub tenant: Tenant,
    /// `write` and `read` on `tenant`.
    pub key: String,
    /// A key of another tenant.
    pub other_key: String,
    /// The tenant `other_key` holds.
    pub other_tenant: Tenant,
    pub database: String,
    pub stack: Stack,
    _keys_dir: tempfile::TempDir,
}

impl Served {
    /// Starts it with `env` added to (and overriding) the service variables.
    pub async fn start(extra_env: &[(&'static str, String)]) -> Self {
        let stack = Stack::from_env();
        let database = unique_name("prefect_sdk");
        let topics = TopicArgs {
            events_topic: unique_name("events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 2,
        };
        let keys_dir = tempfile::tempdir().unwrap();
        let keys_file = keys_dir.path().join("keys.json");
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let key = flowhouse_keys::cli::create(
            &keys_file,
            tenant.account_id,
            vec![tenant.workspace_id],
            vec![Scope::Write, Scope::Read],
            Some("first tenant".into()),
        )
        .unwrap();
        let other_tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let other_key = flowhouse_keys::cli::create(
            &keys_file,
            other_tenant.account_id,
            vec![other_tenant.workspace_id],
            vec![Scope::Write, Scope::Read],
            Some("other tenant".into()),
        )
        .unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let mut env = stack.service_env(&database, &topics);
        env.extend([
            ("FLOWHOUSE_LISTEN", format!("127.0.0.1:{port}")),
            ("FLOWHOUSE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("FLOWHOUSE_KEYS_FILE", keys_file.display().to_string()),
            ("FLOWHOUSE_INGEST_GROUP", unique_name("ingest")),
            (
                "FLOWHOUSE_DEFAULT_TENANT",
                format!("{}/{}", tenant.account_id, tenant.workspace_id),
            ),
            ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "200ms".into()),
            ("FLOWHOUSE_QUERY_CACHE_FRESH", "1s".into()),
        ]);
        env.extend(extra_env.iter().cloned());
        let process = ServiceProcess::start(&["serve"], &env);
        let mut served = Self {
            process,
            port,
            admin_port,
            tenant,
            key,
            other_key,
            other_tenant,
            database,
            stack,
            _keys_dir: keys_dir,
        };
        let admin = served.admin_base();
        served
            .process
            .wait_ready(&admin, Duration::from_secs(120))
            .await;
        served
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The admin listener's base URL.
    pub fn admin_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The workspace base URL of `tenant`.
    pub fn url_of(&self, tenant: Tenant) -> String {
        format!(
            "{}/api/accounts/{}/workspaces/{}",
            self.base(),
            tenant.account_id,
            tenant.workspace_id
        )
    }

    pub fn workspace_url(&self) -> String {
        format!(
            "{}/api/accounts/{}/workspaces/{}",
            self.base(),
            self.tenant.account_id,
            self.tenant.workspace_id
        )
    }

    /// Drops its database (at the end of a passing test).
    pub async fn finish(self) {
        self.stack
            .clickhouse_client("default")
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await
            .unwrap();
    }
}
