//! `flowhouse serve` and the mirrors, as processes, and what the test asks Flowhouse's API.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowhouse_keys::Scope;
use flowhouse_schema::Tenant;
use flowhouse_schema::contract::TopicArgs;
use flowhouse_tests::{ServiceProcess, Stack, free_port, unique_name};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::prefect::Prefect;
use crate::rfc3339;

/// `flowhouse serve` with its own database, topics and keys, and a key per tenant.
pub struct Flowhouse {
    pub process: ServiceProcess,
    pub port: u16,
    /// `/healthz`, `/readyz` and `/metrics`, apart from the API.
    pub admin_port: u16,
    pub database: String,
    pub topics: TopicArgs,
    pub stack: Stack,
    pub tenants: Vec<(Tenant, String)>,
    pub http: reqwest::Client,
    pub _keys: tempfile::TempDir,
}

impl Flowhouse {
    pub fn start(tenants: usize) -> Self {
        let stack = Stack::from_env();
        let database = unique_name("prefect_mirror");
        let topics = TopicArgs {
            events_topic: unique_name("events"),
            logs_topic: unique_name("logs"),
            dlq_topic: unique_name("dlq"),
            topic_partitions: 2,
        };
        let keys = tempfile::tempdir().unwrap();
        let keys_file = keys.path().join("keys.json");
        let tenants: Vec<(Tenant, String)> = (0..tenants)
            .map(|_| {
                let tenant = Tenant {
                    account_id: Uuid::new_v4(),
                    workspace_id: Uuid::new_v4(),
                };
                let key = flowhouse_keys::cli::create(
                    &keys_file,
                    tenant.account_id,
                    vec![tenant.workspace_id],
                    vec![Scope::Read],
                    Some("prefect mirror test".into()),
                )
                .unwrap();
                (tenant, key)
            })
            .collect();
        let (port, admin_port) = (free_port(), free_port());
        let mut env = stack.service_env(&database, &topics);
        env.extend([
            ("FLOWHOUSE_LISTEN", format!("127.0.0.1:{port}")),
            ("FLOWHOUSE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("FLOWHOUSE_KEYS_FILE", keys_file.display().to_string()),
            ("FLOWHOUSE_INGEST_GROUP", unique_name("ingest")),
            ("FLOWHOUSE_INGEST_BATCH_MAX_AGE", "200ms".into()),
            ("FLOWHOUSE_QUERY_CACHE_FRESH", "1s".into()),
        ]);
        Self {
            process: ServiceProcess::start(&["serve"], &env),
            port,
            admin_port,
            database,
            topics,
            stack,
            tenants,
            http: reqwest::Client::new(),
            _keys: keys,
        }
    }

    pub async fn wait_ready(&mut self) {
        let admin = format!("http://127.0.0.1:{}", self.admin_port);
        self.process
            .wait_ready(&admin, Duration::from_secs(180))
            .await;
    }

    pub fn base(&self, tenant: usize) -> String {
        let (t, _) = &self.tenants[tenant];
        format!(
            "http://127.0.0.1:{}/api/accounts/{}/workspaces/{}",
            self.port, t.account_id, t.workspace_id
        )
    }

    /// The answer, or the error Flowhouse gave (a 5xx from a busy shared ClickHouse is retried
    /// by the caller; a 4xx fails the test).
    pub async fn send(
        &self,
        tenant: usize,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let response = request.bearer_auth(&self.tenants[tenant].1).send().await?;
        let status = response.status();
        let text = response.text().await?;
        assert!(!status.is_client_error(), "Flowhouse: {status}: {text}");
        anyhow::ensure!(status.is_success(), "Flowhouse answered {status}: {text}");
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn post(&self, tenant: usize, path: &str, body: Value) -> anyhow::Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.base(tenant)))
            .json(&body);
        self.send(tenant, request).await
    }

    pub async fn metric(
        &self,
        tenant: usize,
        name: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let request = self
            .http
            .get(format!("{}/metrics/{name}", self.base(tenant)))
            .query(query);
        self.send(tenant, request).await
    }

    pub async fn event_ids(
        &self,
        tenant: usize,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> anyhow::Result<BTreeSet<String>> {
        let filter = json!({"occurred": {"since": rfc3339(since), "until": rfc3339(until)},
                            "order": "ASC"});
        let mut page = self
            .post(
                tenant,
                "/events/filter",
                json!({"filter": filter, "limit": 200}),
            )
            .await?;
        let mut ids = BTreeSet::new();
        loop {
            for event in page["events"].as_array().unwrap() {
                ids.insert(event["id"].as_str().unwrap().to_string());
            }
            let Some(next) = page["next_page"].as_str() else {
                return Ok(ids);
            };
            let request = self.http.get(next);
            page = self.send(tenant, request).await?;
        }
    }

    pub async fn logs(&self, tenant: usize) -> anyhow::Result<Vec<Value>> {
        let mut items: Vec<Value> = Vec::new();
        loop {
            let page = self
                .post(
                    tenant,
                    "/logs/filter",
                    json!({"limit": 200, "offset": items.len()}),
                )
                .await?;
            let page = page.as_array().unwrap().clone();
            let full = page.len() == 200;
            items.extend(page);
            if !full {
                return Ok(items);
            }
        }
    }
}

/// A mirror of the Prefect server into one tenant, as a process.
pub fn mirror(
    prefect: &Prefect,
    flowhouse: &Flowhouse,
    tenant: usize,
    admin: u16,
) -> ServiceProcess {
    let (tenant, _) = flowhouse.tenants[tenant];
    let mut env = flowhouse
        .stack
        .service_env(&flowhouse.database, &flowhouse.topics);
    env.extend([
        ("PREFECT_API_URL", prefect.api()),
        ("FLOWHOUSE_MIRROR_ACCOUNT", tenant.account_id.to_string()),
        (
            "FLOWHOUSE_MIRROR_WORKSPACE",
            tenant.workspace_id.to_string(),
        ),
        (
            "FLOWHOUSE_MIRROR_ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        ),
        ("FLOWHOUSE_MIRROR_INITIAL_BACKFILL", "1h".into()),
        ("FLOWHOUSE_MIRROR_RESYNC_INTERVAL", "3s".into()),
        ("FLOWHOUSE_MIRROR_CHECKPOINT_INTERVAL", "1s".into()),
        ("FLOWHOUSE_MIRROR_RECONNECT_MAX", "2s".into()),
    ]);
    ServiceProcess::start(&["mirror", "prefect"], &env)
}
