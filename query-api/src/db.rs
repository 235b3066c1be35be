//! Every ClickHouse query of the query API goes through here.
//!
//! - [`Sql`] is the only way to build a query. It starts with the tenant bound as server-side
//!   parameters (`{account_id:UUID}`, `{workspace_id:UUID}`) and every value a caller sent is
//!   added with [`Sql::bind`], which returns a `{pN:Type}` placeholder: no request text is ever
//!   part of the SQL, so quotes, backslashes or `{x:String}` in a filter are plain data.
//! - [`Db`] runs it: one slot of a semaphore per query (a bound on what a burst of requests
//!   can ask of ClickHouse), `max_execution_time` on each query, and a counter per query kind
//!   on `/metrics` (which is also how tests observe single-flight loading), and, when the
//!   tenant row policies are in place, the tenant as the settings they read.

use std::sync::Arc;
use std::time::Duration;

use clickhouse::{Client, RowOwned, RowRead};
use flowhouse_schema::{Tenant, access};
use serde_json::Value;
use tokio::sync::Semaphore;

use flowhouse_service::fairness::PerKeyLimit;

use crate::error::ApiError;
use crate::telemetry;

/// The placeholders every query must contain: the tenant comes from the checked path, never
/// from anywhere else, and is never optional.
pub const TENANT: &str = "account_id = {account_id:UUID} AND workspace_id = {workspace_id:UUID}";

/// A query under construction: SQL text written by this crate, plus bound parameters.
#[derive(Clone, Debug)]
pub struct Sql {
    tenant: Tenant,
    text: String,
    params: Vec<(String, Value)>,
}

impl Sql {
    pub fn new(tenant: Tenant) -> Self {
        Self {
            tenant,
            text: String::new(),
            params: vec![
                (
                    "account_id".into(),
                    Value::String(tenant.account_id.to_string()),
                ),
                (
                    "workspace_id".into(),
                    Value::String(tenant.workspace_id.to_string()),
                ),
            ],
        }
    }

    /// Binds `value` as a parameter of ClickHouse type `ty` and returns its placeholder.
    /// `ty` is always a literal of this crate.
    pub fn bind(&mut self, ty: &'static str, value: impl Into<Value>) -> String {
        let name = format!("p{}", self.params.len());
        let placeholder = format!("{{{name}:{ty}}}");
        self.params.push((name, value.into()));
        placeholder
    }

    pub fn bind_strings<S: AsRef<str>>(&mut self, values: &[S]) -> String {
        let values = values
            .iter()
            .map(|v| Value::String(v.as_ref().to_string()))
            .collect::<Vec<_>>();
        self.bind("Array(String)", Value::Array(values))
    }

    pub fn bind_i64(&mut self, value: i64) -> String {
        self.bind("Int64", value)
    }

    /// A timestamp in microseconds since the epoch, as the `DateTime64(6, 'UTC')` it compares to.
    pub fn bind_micros(&mut self, micros: i64) -> String {
        let p = self.bind("Int64", micros);
        format!("fromUnixTimestamp64Micro({p}, 'UTC')")
    }

    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The bound parameters, `(name, value)`: what a request contributed to the query.
    pub fn params(&self) -> &[(String, Value)] {
        &self.params
    }
}

/// Limits applied to every query.
#[derive(Clone, Debug)]
pub struct DbLimits {
    /// ClickHouse's `max_execution_time`, seconds.
    pub max_execution_secs: u64,
    /// How long a request waits for a free ClickHouse slot before it gets a 503.
    pub queue_timeout: Duration,
    /// ClickHouse queries one tenant may run at once.
    pub max_concurrent_per_tenant: usize,
    /// Send the tenant as the settings the tenant row policies read ([`tenant_settings`]).
    pub tenant_settings: bool,
}

/// The query's tenant as the custom settings of `flowhouse_schema::access`: with the row
/// policies in place, ClickHouse itself returns no other tenant's rows.
pub fn tenant_settings(tenant: &Tenant) -> [(&'static str, String); 2] {
    [
        (access::ACCOUNT_SETTING, tenant.account_id.to_string()),
        (access::WORKSPACE_SETTING, tenant.workspace_id.to_string()),
    ]
}

#[derive(Clone)]
pub struct Db {
    client: Client,
    slots: Arc<Semaphore>,
    /// Each tenant's share of the slots: a tenant that floods queues behind its own share
    /// (and gets 503s from it), never behind the others'.
    tenant_slots: Arc<PerKeyLimit<Tenant>>,
    limits: DbLimits,
}

impl Db {
    pub fn new(client: Client, max_concurrent: usize, limits: DbLimits) -> Self {
        Self {
            client,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            tenant_slots: Arc::new(PerKeyLimit::new(limits.max_concurrent_per_tenant)),
            limits,
        }
    }

    /// The semaphore that bounds concurrent ClickHouse queries. Tests hold its permits to make
    /// concurrent cache misses pile up deterministically.
    pub fn slots(&self) -> Arc<Semaphore> {
        self.slots.clone()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `sql` and returns every row. `kind` names the query on `/metrics`.
    pub async fn fetch<T>(&self, kind: &'static str, sql: &Sql) -> Result<Vec<T>, ApiError>
    where
        T: RowOwned + RowRead,
    {
        // Structural guarantee: a query that lost its tenant predicate never runs.
        if !sql.text.contains("{account_id:UUID}") || !sql.text.contains("{workspace_id:UUID}") {
            tracing::error!(kind, "query without the tenant predicate refused");
            return Err(ApiError::Internal);
        }
        // The tenant's share first, then a slot: waiting for its share, a tenant holds nothing
        // the others could use.
        let (_share, _slot) = tokio::time::timeout(self.limits.queue_timeout, async {
            let share = self.tenant_slots.acquire(&sql.tenant, 1).await;
            let slot = self.slots.clone().acquire_owned().await;
            (share, slot)
        })
        .await
        .map_err(|_| ApiError::Busy)?;
        let _slot = _slot.map_err(|_| ApiError::Internal)?;
        metrics::counter!(telemetry::CLICKHOUSE_QUERIES, "query" => kind).increment(1);
        tracing::debug!(kind, sql = %sql.text, "ClickHouse query");
        let started = std::time::Instant::now();
        let mut query = self
            .client
            .query(&sql.text)
            .with_setting(
                "max_execution_time",
                self.limits.max_execution_secs.to_string(),
            )
            // Duplicates of an event (same occurred and id) always share a daily partition.
            .with_setting("do_not_merge_across_partitions_select_final", "1");
        if self.limits.tenant_settings {
            for (name, value) in tenant_settings(&sql.tenant) {
                query = query.with_setting(name, value);
            }
        }
        for (name, value) in &sql.params {
            query = query.param(name, value);
        }
        let result = query.fetch_all::<T>().await;
        metrics::histogram!(telemetry::CLICKHOUSE_SECONDS, "query" => kind)
            .record(started.elapsed().as_secs_f64());
        result.map_err(|error| {
            let text = error.to_string();
            metrics::counter!(telemetry::CLICKHOUSE_ERRORS, "query" => kind).increment(1);
            if text.contains("Code: 159.") || text.contains("TIMEOUT_EXCEEDED") {
                tracing::warn!(kind, error = %text, "query stopped at max_execution_time");
                ApiError::Timeout(self.limits.max_execution_secs)
            } else {
                tracing::error!(kind, error = %text, sql = %sql.text, "ClickHouse query failed");
                ApiError::Upstream
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use flowhouse_schema::access;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn the_tenant_settings_are_the_ones_the_row_policies_read() {
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let filter = access::tenant_filter();
        let settings = tenant_settings(&tenant);
        for (name, _) in &settings {
            assert!(
                filter.contains(&format!("getSetting('{name}')")),
                "{name} in {filter}"
            );
        }
        // Each value is the UUID the policy compares its column with.
        assert_eq!(
            settings.map(|(_, value)| Uuid::parse_str(&value).unwrap()),
            [tenant.account_id, tenant.workspace_id]
        );
        assert!(filter.starts_with("account_id = toUUID(getSetting('"));
        assert!(filter.contains(" AND workspace_id = toUUID(getSetting('"));
    }
}
