//! The rows of the raw tables, as the ingest service writes them and the query API reads them.
//! Column names and order match [`crate::ddl`]; the conformance of the two is tested against
//! the engine.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::Tenant;
use crate::event::Event;
use crate::log::Log;

/// One row of `events`. `resource_id`, `related_ids` and `related_roles` are MATERIALIZED
/// columns computed by ClickHouse from `resource` and `related`, so they are not here.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct EventRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub workspace_id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    pub occurred: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::uuid")]
    pub id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    pub received: DateTime<Utc>,
    pub event: String,
    pub resource: Vec<(String, String)>,
    pub related: Vec<Vec<(String, String)>>,
    pub payload: String,
    #[serde(with = "clickhouse::serde::uuid::option")]
    pub follows: Option<Uuid>,
}

impl EventRow {
    pub fn new(tenant: Tenant, received: DateTime<Utc>, event: &Event<'_>) -> Self {
        let labels = |labels: &crate::text::Labels<'_>| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Self {
            account_id: tenant.account_id,
            workspace_id: tenant.workspace_id,
            occurred: event.occurred,
            id: event.id,
            received,
            event: event.event.to_string(),
            resource: labels(&event.resource),
            related: event.related.iter().map(labels).collect(),
            payload: event.payload.0.to_string(),
            follows: event.follows,
        }
    }

    /// Bytes this row holds in memory, for batch size limits.
    pub fn approximate_size(&self) -> usize {
        let labels =
            |l: &[(String, String)]| l.iter().map(|(k, v)| k.len() + v.len() + 16).sum::<usize>();
        128 + self.event.len()
            + self.payload.len()
            + labels(&self.resource)
            + self.related.iter().map(|r| labels(r) + 24).sum::<usize>()
    }
}

/// One row of `logs`.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct LogRow {
    #[serde(with = "clickhouse::serde::uuid")]
    pub account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    pub workspace_id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    pub timestamp: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    pub received: DateTime<Utc>,
    pub level: u8,
    pub name: String,
    pub message: String,
    #[serde(with = "clickhouse::serde::uuid::option")]
    pub flow_run_id: Option<Uuid>,
    #[serde(with = "clickhouse::serde::uuid::option")]
    pub task_run_id: Option<Uuid>,
    #[serde(with = "clickhouse::serde::uuid::option")]
    pub worker_id: Option<Uuid>,
}

impl LogRow {
    pub fn new(tenant: Tenant, received: DateTime<Utc>, log: &Log<'_>) -> Self {
        Self {
            account_id: tenant.account_id,
            workspace_id: tenant.workspace_id,
            timestamp: log.timestamp,
            received,
            // Validated to be within 10..=50.
            level: u8::try_from(log.level).unwrap_or(u8::MAX),
            name: log.name.to_string(),
            message: log.message.to_string(),
            flow_run_id: log.flow_run_id,
            task_run_id: log.task_run_id,
            worker_id: log.worker_id,
        }
    }

    pub fn approximate_size(&self) -> usize {
        112 + self.name.len() + self.message.len()
    }
}
