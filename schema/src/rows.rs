//! The rows of the raw tables, as the ingest service writes them and the query API reads them.
//! Column names and order match [`crate::ddl`]; the conformance of the two is tested against
//! the engine.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
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
                .map(|(k, v)| (k.to_owned_string(), v.to_owned_string()))
                .collect()
        };
        Self {
            account_id: tenant.account_id,
            workspace_id: tenant.workspace_id,
            occurred: event.occurred,
            id: event.id,
            received,
            event: event.event.to_owned_string(),
            resource: labels(&event.resource),
            related: event.related.iter().map(labels).collect(),
            payload: event.payload.0.to_owned_string(),
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
    /// The line's identity: Prefect's log id when the line has one, else
    /// [`log_content_id`]. The `logs` table keeps one row per id.
    #[serde(with = "clickhouse::serde::uuid")]
    pub id: Uuid,
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
        let mut row = Self {
            account_id: tenant.account_id,
            workspace_id: tenant.workspace_id,
            timestamp: log.timestamp,
            id: Uuid::nil(),
            received,
            // Validated to be within 0..=255.
            level: u8::try_from(log.level).unwrap_or(u8::MAX),
            name: log.name.to_owned_string(),
            message: log.message.to_owned_string(),
            flow_run_id: log.flow_run_id,
            task_run_id: log.task_run_id,
            worker_id: log.worker_id,
        };
        row.id = log.id.unwrap_or_else(|| log_content_id(&row));
        row
    }

    pub fn approximate_size(&self) -> usize {
        112 + self.name.len() + self.message.len()
    }
}

/// The id of a log line that arrived without one: a version-8 UUID from the SHA-256 of its
/// tenant, flow run, task run, timestamp (µs), level, name and message; not `received`, so a line
/// sent twice has one id. The SQL of migration 2 (`ddl::log_id_sql`) computes the same for the
/// lines stored before it; `tests/tests/migrations.rs` checks that the two agree.
pub fn log_content_id(row: &LogRow) -> Uuid {
    let optional = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
    let content = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        row.account_id,
        row.workspace_id,
        optional(row.flow_run_id),
        optional(row.task_run_id),
        row.timestamp.timestamp_micros(),
        row.level,
        row.name,
        row.message
    );
    let digest = Sha256::digest(content.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::CowStr;

    fn log(id: Option<Uuid>) -> Log<'static> {
        Log {
            id,
            name: CowStr::from("prefect.flow_runs"),
            level: 20,
            message: CowStr::from("Finished in state Completed()"),
            timestamp: "2024-05-01T11:00:00.5Z".parse().unwrap(),
            flow_run_id: Some(Uuid::from_u128(7)),
            task_run_id: None,
            worker_id: None,
        }
    }

    #[test]
    fn a_line_keeps_its_own_id_else_gets_one_from_its_content_not_from_when_it_came() {
        let tenant = Tenant {
            account_id: Uuid::from_u128(1),
            workspace_id: Uuid::from_u128(2),
        };
        let prefect_id = Uuid::from_u128(99);
        assert_eq!(
            LogRow::new(tenant, Utc::now(), &log(Some(prefect_id))).id,
            prefect_id
        );

        let first = LogRow::new(tenant, "2024-05-01T11:00:01Z".parse().unwrap(), &log(None));
        let replay = LogRow::new(tenant, "2024-05-02T09:00:00Z".parse().unwrap(), &log(None));
        assert_eq!(first.id, replay.id);
        assert_eq!(first.id.get_version_num(), 8);

        let other_tenant = Tenant {
            workspace_id: Uuid::from_u128(3),
            ..tenant
        };
        assert_ne!(
            LogRow::new(other_tenant, Utc::now(), &log(None)).id,
            first.id
        );
        let mut other_level = log(None);
        other_level.level = 30;
        assert_ne!(LogRow::new(tenant, Utc::now(), &other_level).id, first.id);
    }
}
