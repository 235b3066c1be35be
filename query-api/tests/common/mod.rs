//! The query API in-process on a free port, against a fresh database on the live stack, with
//! generated data of known content.

#![allow(dead_code)]

pub mod raw;
pub mod truth;
pub mod workload;

use std::net::SocketAddr;
use std::sync::Arc;

use flowhouse_keys::{KeyRecord, KeySet, Keys, KeysFile, Scope, key_hash};
use flowhouse_query_api::live::Feed;
use flowhouse_query_api::{AppState, Settings};
use flowhouse_schema::Tenant;
use flowhouse_schema::ddl::{SchemaConfig, Topology};
use flowhouse_schema::rows::{EventRow, LogRow};
use flowhouse_service::admin::Readiness;
use flowhouse_tests::Stack;
use uuid::Uuid;
use workload::{DAY, Ev, HOUR, Lg};

pub struct TenantKeys {
    pub tenant: Tenant,
    /// `read` on this workspace.
    pub key: String,
}

pub struct Harness {
    pub stack: Stack,
    pub database: String,
    pub client: clickhouse::Client,
    pub tenants: Vec<TenantKeys>,
    /// A key with only the `write` scope on tenant 0.
    pub write_only_key: String,
    pub base_url: String,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin_url: String,
    pub state: AppState,
    pub http: reqwest::Client,
    pub events: Vec<Ev>,
    pub logs: Vec<Lg>,
    /// Start of the generated data (a day boundary, 6 days ago).
    pub base: i64,
}

/// Serves `app` on a free loopback port.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

fn record(key: &str, tenant: Tenant, scopes: Vec<Scope>) -> KeyRecord {
    KeyRecord {
        id: format!("k{}", &key_hash(key)[..12]),
        name: None,
        sha256: key_hash(key),
        account_id: tenant.account_id,
        workspaces: vec![tenant.workspace_id],
        scopes,
        created_at: chrono::Utc::now(),
        revoked_at: None,
    }
}

pub fn new_tenant() -> Tenant {
    Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: Uuid::new_v4(),
    }
}

impl Harness {
    /// A fresh database with the schema, `tenants` tenants with keys, and the API serving it.
    pub async fn start(prefix: &str, tenants: usize, settings: Settings) -> Self {
        Self::start_live(prefix, tenants, settings, None).await
    }

    /// [`Harness::start`] with, when given, a live feed for the subscriber websockets.
    pub async fn start_live(
        prefix: &str,
        tenants: usize,
        settings: Settings,
        feed: Option<Feed>,
    ) -> Self {
        // Two tenants share an account, so that workspace scoping is tested, not only accounts.
        let mut list: Vec<Tenant> = (0..tenants).map(|_| new_tenant()).collect();
        if tenants > 1 {
            list[1].account_id = list[0].account_id;
        }
        let tenant_keys: Vec<TenantKeys> = list
            .iter()
            .map(|&tenant| TenantKeys {
                tenant,
                key: format!("fh_test_{}", Uuid::new_v4().simple()),
            })
            .collect();
        let write_only_key = format!("fh_write_{}", Uuid::new_v4().simple());
        let mut keys: Vec<KeyRecord> = tenant_keys
            .iter()
            .map(|t| record(&t.key, t.tenant, vec![Scope::Read]))
            .collect();
        keys.push(record(&write_only_key, list[0], vec![Scope::Write]));
        let keys = Keys::fixed(KeySet::from_file(&KeysFile { version: 1, keys }));
        Self::serve(prefix, tenant_keys, write_only_key, keys, settings, feed).await
    }

    /// The API over `keys` (tenants' keys live there, not in the harness) and, when given, a
    /// live feed for the subscriber websockets.
    pub async fn start_with(
        prefix: &str,
        keys: Keys,
        settings: Settings,
        feed: Option<Feed>,
        tenants: &[Tenant],
    ) -> Self {
        let tenant_keys = tenants
            .iter()
            .map(|&tenant| TenantKeys {
                tenant,
                key: String::new(),
            })
            .collect();
        Self::serve(prefix, tenant_keys, String::new(), keys, settings, feed).await
    }

    async fn serve(
        prefix: &str,
        tenant_keys: Vec<TenantKeys>,
        write_only_key: String,
        keys: Keys,
        settings: Settings,
        feed: Option<Feed>,
    ) -> Self {
        let stack = Stack::from_env();
        let database = stack.fresh_database(prefix).await;
        let config = SchemaConfig {
            database: database.clone(),
            topology: Topology::SingleNode,
            retention_days: 30,
        };
        flowhouse_schema::migrate::apply(&stack.clickhouse.server_client(), &config)
            .await
            .expect("apply the schema");
        let client = stack.clickhouse_client(&database);
        let mut state = AppState::new(client.clone(), keys, "test-secret", settings);
        if let Some(feed) = feed {
            state = state.with_live(feed);
        }
        let readiness = Readiness::default();
        readiness.ready("test");
        // With the automations' routes, as `flowhouse query-api` serves them (the dashboard
        // lists a workspace's automations).
        let automations = Arc::new(flowhouse_automations::api::Api {
            store: flowhouse_automations::store::Store::new(client.clone()),
            limits: flowhouse_automations::model::Limits::default(),
        });
        let document = flowhouse_automations::api::merge_document(
            flowhouse_query_api::document(),
            &flowhouse_automations::api::document(),
        );
        let app = flowhouse_query_api::router_with(
            state.clone(),
            flowhouse_automations::api::routes(automations),
            document,
        );
        let addr = serve(app).await;
        let admin_addr = serve(flowhouse_service::admin::routes(readiness)).await;
        let now = chrono::Utc::now().timestamp_micros();
        Self {
            stack,
            database,
            client,
            tenants: tenant_keys,
            write_only_key,
            base_url: format!("http://{addr}"),
            admin_url: format!("http://{admin_addr}"),
            state,
            http: reqwest::Client::new(),
            events: Vec::new(),
            logs: Vec::new(),
            base: now.div_euclid(DAY) * DAY - 6 * DAY,
        }
    }

    /// Drops the test's database (called at the end of a passing test; a failing one keeps its
    /// data for a look).
    pub async fn finish(self) {
        self.client
            .query(&format!("DROP DATABASE IF EXISTS {}", self.database))
            .execute()
            .await
            .expect("drop the test database");
    }

    pub fn url(&self, tenant: Tenant, path: &str) -> String {
        format!(
            "{}/api/accounts/{}/workspaces/{}/{path}",
            self.base_url, tenant.account_id, tenant.workspace_id
        )
    }

    /// Generates `runs` flow runs per tenant over 5 days from `base`, inserts them (and resends
    /// some events with the same ids in a later insert), and keeps them for the expectations.
    pub async fn load(&mut self, seed: u64, runs: usize) {
        for (i, t) in self.tenants.iter().enumerate() {
            workload::tenant_workload(
                seed,
                i,
                t.tenant,
                self.base,
                5 * DAY,
                runs,
                |e| self.events.push(e),
                |l| self.logs.push(l),
            );
        }
        let rows: Vec<EventRow> = self.events.iter().map(Ev::row).collect();
        insert_events(&self.client, &rows).await;
        // Resend every 20th event, as a client retrying a batch would.
        let resent: Vec<EventRow> = rows.iter().step_by(20).cloned().collect();
        insert_events(&self.client, &resent).await;
        self.events
            .extend(self.events.iter().step_by(20).cloned().collect::<Vec<_>>());
        let logs: Vec<LogRow> = self.logs.iter().map(Lg::row).collect();
        insert_logs(&self.client, &logs).await;
    }

    /// Stores one event (Prefect's JSON) for `tenant`, as ingest would.
    pub async fn insert_raw_event(&self, tenant: Tenant, event: &serde_json::Value) {
        let raw = event.to_string();
        let parsed = flowhouse_schema::event::parse_event(
            raw.as_bytes(),
            &flowhouse_schema::event::Limits::default(),
            chrono::Utc::now(),
        )
        .expect("a valid event");
        let row = EventRow::new(tenant, chrono::Utc::now(), &parsed);
        insert_events(&self.client, &[row]).await;
    }

    /// Walks every page of `filter` (`limit` per page) and returns the events in order,
    /// checking `total` on every page.
    pub async fn walk(
        &self,
        key: &str,
        tenant: Tenant,
        filter: serde_json::Value,
        limit: u64,
    ) -> (u64, Vec<serde_json::Value>) {
        let mut page = self
            .post_json(
                key,
                &self.url(tenant, "events/filter"),
                &serde_json::json!({"filter": filter, "limit": limit}),
            )
            .await;
        let total = page["total"].as_u64().unwrap();
        let mut events: Vec<serde_json::Value> = page["events"].as_array().unwrap().clone();
        while let Some(next) = page["next_page"].as_str() {
            assert!(
                page["events"].as_array().unwrap().len() as u64 == limit,
                "only a full page has a next page"
            );
            let response = self.http.get(next).bearer_auth(key).send().await.unwrap();
            assert_eq!(response.status(), 200);
            page = response.json().await.unwrap();
            assert_eq!(page["total"].as_u64().unwrap(), total);
            events.extend(page["events"].as_array().unwrap().iter().cloned());
        }
        (total, events)
    }

    pub async fn get(&self, key: &str, url: &str, query: &[(String, String)]) -> reqwest::Response {
        self.http
            .get(url)
            .bearer_auth(key)
            .query(query)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(
        &self,
        key: &str,
        url: &str,
        query: &[(String, String)],
    ) -> serde_json::Value {
        let response = self.get(key, url, query).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "GET {url} {query:?}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn post(&self, key: &str, url: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(url)
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json(
        &self,
        key: &str,
        url: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let response = self.post(key, url, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 200, "POST {url} {body}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The value of a Prometheus counter or gauge on `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter(|line| {
                let rest = &line[name.len()..];
                rest.starts_with(' ') || rest.starts_with('{')
            })
            .filter(|line| {
                labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub async fn insert_events(client: &clickhouse::Client, rows: &[EventRow]) {
    let mut insert = client
        .insert::<EventRow>("events")
        .await
        .expect("insert events");
    for row in rows {
        insert.write(row).await.expect("write event");
    }
    insert.end().await.expect("finish inserting events");
}

pub async fn insert_logs(client: &clickhouse::Client, rows: &[LogRow]) {
    let mut insert = client.insert::<LogRow>("logs").await.expect("insert logs");
    for row in rows {
        insert.write(row).await.expect("write log");
    }
    insert.end().await.expect("finish inserting logs");
}

pub fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub const H: i64 = HOUR;
