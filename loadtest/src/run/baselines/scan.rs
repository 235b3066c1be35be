//! The dashboard questions answered the way a system without rollups would: by scanning the
//! raw `events` and `logs` of the tenant over the window (definitions of `docs/metrics.md`).
//! Every value is a bound parameter.

use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use flowhouse_schema::Tenant;

use crate::measure::Latencies;

/// Flow runs of the window by final state, from every state event of the tenant.
const FLOW_RUNS: &str = "
SELECT final_type, final_name, count() AS runs FROM (
    SELECT resource_id,
        argMaxIf(substring(event, 18), occurred, term) AS final_name,
        argMaxIf(state_type, occurred, term) AS final_type,
        maxIf(occurred, term) AS end_time, countIf(term) > 0 AS ended
    FROM (
        SELECT resource_id, event, occurred,
            if(resource['prefect.state-type'] != '', resource['prefect.state-type'],
               upper(substring(event, 18))) AS state_type,
            state_type IN ('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED') AS term
        FROM events FINAL
        WHERE account_id = {a:UUID} AND workspace_id = {w:UUID}
          AND startsWith(event, 'prefect.flow-run.'))
    GROUP BY resource_id)
WHERE ended AND end_time >= {since:DateTime64(6, 'UTC')} AND end_time < {until:DateTime64(6, 'UTC')}
GROUP BY final_type, final_name ORDER BY final_type, final_name";

/// Task runs that entered each terminal state type in the window.
const TASK_RUNS: &str = "
SELECT state_type, uniqExact(resource_id) AS runs FROM (
    SELECT resource_id,
        if(resource['prefect.state-type'] != '', resource['prefect.state-type'],
           upper(substring(event, 18))) AS state_type
    FROM events FINAL
    WHERE account_id = {a:UUID} AND workspace_id = {w:UUID}
      AND startsWith(event, 'prefect.task-run.')
      AND occurred >= {since:DateTime64(6, 'UTC')} AND occurred < {until:DateTime64(6, 'UTC')})
WHERE state_type IN ('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED')
GROUP BY state_type ORDER BY state_type";

/// Log lines of the window by level.
const LOGS: &str = "
SELECT level, count() AS lines FROM logs
WHERE account_id = {a:UUID} AND workspace_id = {w:UUID}
  AND timestamp >= {since:DateTime64(6, 'UTC')} AND timestamp < {until:DateTime64(6, 'UTC')}
GROUP BY level ORDER BY level";

/// The questions, named like the API routes that answer them.
pub const QUESTIONS: [(&str, &str); 3] = [
    ("GET /metrics/flow-runs", FLOW_RUNS),
    ("GET /metrics/task-runs", TASK_RUNS),
    ("GET /metrics/logs", LOGS),
];

/// The route name a raw-scan latency is recorded under.
pub fn route_name(route: &str) -> String {
    format!("raw scan: {route}")
}

/// Asks every question `repeat` times for each tenant; latencies by route.
pub async fn raw_scans(
    client: &clickhouse::Client,
    tenants: &[Tenant],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    repeat: usize,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    let format = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    for tenant in tenants {
        for (route, sql) in QUESTIONS {
            for _ in 0..repeat {
                let started = Instant::now();
                let mut cursor = client
                    .query(sql)
                    .param("a", tenant.account_id.to_string())
                    .param("w", tenant.workspace_id.to_string())
                    .param("since", format(since))
                    .param("until", format(until))
                    .fetch_bytes("JSONEachRow")
                    .context("cannot run a raw scan")?;
                cursor
                    .collect()
                    .await
                    .with_context(|| format!("the raw scan for {route} failed"))?;
                latencies.record(&route_name(route), started.elapsed());
            }
        }
    }
    Ok(latencies)
}
