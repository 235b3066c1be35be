//! The automations' tables (migration 4): definitions, evaluation state, delivery log.
//!
//! Every query that reads or writes one tenant's rows binds the tenant as server-side
//! parameters (`{account_id:UUID}`, `{workspace_id:UUID}`); no SQL is built from user text.
//! The only cross-tenant read is [`Store::all_automations`], the evaluator's list of work,
//! which returns each row with its own tenant.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use flowhouse_schema::Tenant;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::Automation;

#[derive(Debug, Row, Serialize, Deserialize)]
struct AutomationRow {
    #[serde(with = "clickhouse::serde::uuid")]
    account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    workspace_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    name: String,
    enabled: u8,
    deleted: u8,
    body: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    created: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    updated: DateTime<Utc>,
}

/// One bucket's evaluation state (see `schema/src/ddl/v4.rs`).
#[derive(Clone, Debug, Row, Serialize, Deserialize, PartialEq)]
pub struct StateRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub workspace_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub automation_id: Uuid,
    pub bucket: String,
    pub version: u64,
    pub seq: u64,
    pub breached: u8,
    pub observed: u8,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    pub observed_since: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros::option")]
    pub last_fired: Option<DateTime<Utc>>,
    pub last_value: f64,
    pub pending: String,
}

/// One delivery attempt, or one emitted event.
#[derive(Clone, Debug, Row, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryRow {
    #[serde(with = "clickhouse::serde::uuid")]
    #[schema(value_type = String)]
    pub account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    #[schema(value_type = String)]
    pub workspace_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    #[schema(value_type = String)]
    pub automation_id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    #[schema(value_type = String)]
    pub at: DateTime<Utc>,
    pub idempotency_key: String,
    /// `triggered` or `resolved`.
    pub transition: String,
    /// `call-webhook`, `do-nothing` or `emit-event`.
    pub action: String,
    pub attempt: u32,
    /// `delivered`, `failed` (this attempt), `gave-up` (the last attempt failed).
    pub outcome: String,
    /// The receiver's HTTP status (0: none).
    pub status: u16,
    pub error: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    #[schema(value_type = String)]
    pub fired_at: DateTime<Utc>,
    pub bucket: String,
    pub value: f64,
}

/// What `GET /automations/{id}/deliveries` answers per row.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AutomationDelivery {
    pub at: DateTime<Utc>,
    pub idempotency_key: String,
    pub transition: String,
    pub action: String,
    pub attempt: u32,
    pub outcome: String,
    pub status: u16,
    pub error: String,
    pub fired_at: DateTime<Utc>,
    pub bucket: String,
    pub value: f64,
}

impl From<DeliveryRow> for AutomationDelivery {
    fn from(r: DeliveryRow) -> Self {
        Self {
            at: r.at,
            idempotency_key: r.idempotency_key,
            transition: r.transition,
            action: r.action,
            attempt: r.attempt,
            outcome: r.outcome,
            status: r.status,
            error: r.error,
            fired_at: r.fired_at,
            bucket: r.bucket,
            value: r.value,
        }
    }
}

const TENANT: &str = "account_id = {account_id:UUID} AND workspace_id = {workspace_id:UUID}";

/// The automations' tables, through a client with write rights on them.
#[derive(Clone)]
pub struct Store {
    client: Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    NameAsc,
    NameDesc,
    CreatedDesc,
    UpdatedDesc,
}

impl Sort {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "NAME_ASC" => Sort::NameAsc,
            "NAME_DESC" => Sort::NameDesc,
            "CREATED_DESC" => Sort::CreatedDesc,
            "UPDATED_DESC" => Sort::UpdatedDesc,
            _ => return None,
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Sort::NameAsc => "name ASC, id ASC",
            Sort::NameDesc => "name DESC, id ASC",
            Sort::CreatedDesc => "created DESC, id ASC",
            Sort::UpdatedDesc => "updated DESC, id ASC",
        }
    }
}

impl Store {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn tenant_query(&self, tenant: Tenant, sql: &str) -> clickhouse::query::Query {
        debug_assert!(sql.contains("{account_id:UUID}") && sql.contains("{workspace_id:UUID}"));
        self.client
            .query(sql)
            .param("account_id", tenant.account_id.to_string())
            .param("workspace_id", tenant.workspace_id.to_string())
    }

    /// Writes a version of an automation (a deletion when `deleted`).
    pub async fn put(
        &self,
        tenant: Tenant,
        automation: &Automation,
        deleted: bool,
    ) -> anyhow::Result<()> {
        let mut insert = self.client.insert::<AutomationRow>("automations").await?;
        insert
            .write(&AutomationRow {
                account_id: tenant.account_id,
                workspace_id: tenant.workspace_id,
                id: automation.id,
                name: automation.core.name.clone(),
                enabled: automation.core.enabled as u8,
                deleted: deleted as u8,
                body: serde_json::to_string(automation)?,
                created: automation.created,
                updated: automation.updated,
            })
            .await?;
        insert.end().await.context("cannot write the automation")
    }

    fn decode(rows: Vec<AutomationRow>) -> Vec<(Tenant, Automation)> {
        rows.into_iter()
            .filter_map(|row| {
                let tenant = Tenant {
                    account_id: row.account_id,
                    workspace_id: row.workspace_id,
                };
                match serde_json::from_str::<Automation>(&row.body) {
                    Ok(a) => Some((tenant, a)),
                    Err(error) => {
                        tracing::error!(id = %row.id, %error, "stored automation unreadable");
                        None
                    }
                }
            })
            .collect()
    }

    pub async fn get(&self, tenant: Tenant, id: Uuid) -> anyhow::Result<Option<Automation>> {
        let rows: Vec<AutomationRow> = self
            .tenant_query(
                tenant,
                &format!(
                    "SELECT ?fields FROM automations FINAL
                     WHERE {TENANT} AND id = {{id:UUID}} AND deleted = 0"
                ),
            )
            .param("id", id.to_string())
            .fetch_all()
            .await
            .context("cannot read the automation")?;
        Ok(Self::decode(rows).into_iter().next().map(|(_, a)| a))
    }

    pub async fn list(
        &self,
        tenant: Tenant,
        sort: Sort,
        offset: u64,
        limit: u64,
    ) -> anyhow::Result<Vec<Automation>> {
        let rows: Vec<AutomationRow> = self
            .tenant_query(
                tenant,
                &format!(
                    "SELECT ?fields FROM automations FINAL WHERE {TENANT} AND deleted = 0
                     ORDER BY {} LIMIT {{limit:UInt64}} OFFSET {{offset:UInt64}}",
                    sort.sql()
                ),
            )
            .param("limit", limit)
            .param("offset", offset)
            .fetch_all()
            .await
            .context("cannot list automations")?;
        Ok(Self::decode(rows).into_iter().map(|(_, a)| a).collect())
    }

    pub async fn count(&self, tenant: Tenant) -> anyhow::Result<u64> {
        let n: Vec<u64> = self
            .tenant_query(
                tenant,
                &format!("SELECT count() FROM automations FINAL WHERE {TENANT} AND deleted = 0"),
            )
            .fetch_all()
            .await
            .context("cannot count automations")?;
        Ok(n.first().copied().unwrap_or(0))
    }

    /// Every live automation of every tenant, enabled or not: the evaluator's work.
    pub async fn all_automations(&self) -> anyhow::Result<Vec<(Tenant, Automation)>> {
        let rows: Vec<AutomationRow> = self
            .client
            .query("SELECT ?fields FROM automations FINAL WHERE deleted = 0 ORDER BY id")
            .fetch_all()
            .await
            .context("cannot list automations")?;
        Ok(Self::decode(rows))
    }

    /// The state of every bucket of one automation.
    pub async fn states(&self, tenant: Tenant, automation: Uuid) -> anyhow::Result<Vec<StateRow>> {
        self.tenant_query(
            tenant,
            &format!(
                "SELECT ?fields FROM automation_state FINAL
                 WHERE {TENANT} AND automation_id = {{automation:UUID}} ORDER BY bucket"
            ),
        )
        .param("automation", automation.to_string())
        .fetch_all()
        .await
        .context("cannot read the automation's state")
    }

    pub async fn write_state(&self, row: &StateRow) -> anyhow::Result<()> {
        let mut insert = self.client.insert::<StateRow>("automation_state").await?;
        insert.write(row).await?;
        insert
            .end()
            .await
            .context("cannot write the automation's state")
    }

    pub async fn log_delivery(&self, row: &DeliveryRow) -> anyhow::Result<()> {
        let mut insert = self
            .client
            .insert::<DeliveryRow>("automation_deliveries")
            .await?;
        insert.write(row).await?;
        insert.end().await.context("cannot write the delivery log")
    }

    /// The latest deliveries of one automation, newest first.
    pub async fn deliveries(
        &self,
        tenant: Tenant,
        automation: Uuid,
        limit: u64,
    ) -> anyhow::Result<Vec<DeliveryRow>> {
        self.tenant_query(
            tenant,
            &format!(
                "SELECT ?fields FROM automation_deliveries
                 WHERE {TENANT} AND automation_id = {{automation:UUID}}
                 ORDER BY at DESC LIMIT {{limit:UInt64}}"
            ),
        )
        .param("automation", automation.to_string())
        .param("limit", limit)
        .fetch_all()
        .await
        .context("cannot read the delivery log")
    }

    /// When each of a tenant's automations last fired (its last decided transition).
    pub async fn last_fired(
        &self,
        tenant: Tenant,
    ) -> anyhow::Result<Vec<(Uuid, DateTime<Utc>, String)>> {
        #[derive(Row, Deserialize)]
        struct Last {
            #[serde(with = "clickhouse::serde::uuid")]
            automation_id: Uuid,
            #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
            fired: DateTime<Utc>,
            transition: String,
        }
        let rows: Vec<Last> = self
            .tenant_query(
                tenant,
                &format!(
                    "SELECT automation_id, max(fired_at) AS fired,
                            argMax(toString(transition), fired_at) AS transition
                     FROM automation_deliveries WHERE {TENANT} GROUP BY automation_id"
                ),
            )
            .fetch_all()
            .await
            .context("cannot read the delivery log")?;
        Ok(rows
            .into_iter()
            .map(|r| (r.automation_id, r.fired, r.transition))
            .collect())
    }
}
