//! Each metric as a full scan of the raw `events` / `logs` tables (no rollup), straight from
//! docs/metrics.md: the independent SQL answer the tests compare with, and the "without
//! rollups" side of the benchmark. Parameters: `{a:UUID}`, `{w:UUID}` (tenant), `{since:Int64}`,
//! `{until:Int64}` (µs). Results as JSONEachRow.

#![allow(dead_code)]

use flowhouse_schema::Tenant;

/// One row per flow run, from every distinct state event of the tenant.
const RUNS: &str = "
SELECT run,
    any(flow_id) AS flow, any(flow_name) AS flow_name,
    any(deployment_id) AS deployment, any(work_pool_id) AS work_pool,
    argMaxIf(state_name, occurred, term) AS final_name,
    argMaxIf(state_type, occurred, term) AS final_type,
    countIf(term) > 0 AS ended,
    toUnixTimestamp64Micro(maxIf(occurred, term)) AS end_us,
    countIf(state_type = 'RUNNING') > 0 AS started,
    toUnixTimestamp64Micro(minIf(occurred, state_type = 'RUNNING')) AS start_us,
    countIf(state_name = 'Late') > 0 AS was_late,
    toUnixTimestamp64Micro(minIf(occurred, state_name = 'Late')) AS late_us,
    countIf(isNotNull(scheduled)) > 0 AS has_expected,
    toUnixTimestamp64Micro(minIf(assumeNotNull(scheduled), isNotNull(scheduled))) AS expected_us
FROM (
    SELECT occurred, substring(resource_id, 18) AS run, substring(event, 18) AS state_name,
        if(resource['prefect.state-type'] != '', resource['prefect.state-type'], upper(state_name)) AS state_type,
        state_type IN ('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED') AS term,
        replaceOne(arrayFirst(r -> r['prefect.resource.role'] = 'flow', related)['prefect.resource.id'], 'prefect.flow.', '') AS flow_id,
        arrayFirst(r -> r['prefect.resource.role'] = 'flow', related)['prefect.resource.name'] AS flow_name,
        replaceOne(arrayFirst(r -> r['prefect.resource.role'] = 'deployment', related)['prefect.resource.id'], 'prefect.deployment.', '') AS deployment_id,
        replaceOne(arrayFirst(r -> r['prefect.resource.role'] = 'work-pool', related)['prefect.resource.id'], 'prefect.work-pool.', '') AS work_pool_id,
        if(state_type = 'SCHEDULED', parseDateTime64BestEffortOrNull(
            JSONExtractString(payload, 'validated_state', 'state_details', 'scheduled_time'), 6, 'UTC'), NULL) AS scheduled
    FROM events FINAL
    WHERE account_id = {a:UUID} AND workspace_id = {w:UUID}
      AND startsWith(event, 'prefect.flow-run.') AND startsWith(resource_id, 'prefect.flow-run.'))
GROUP BY run";

const WINDOW_END: &str = "ended AND end_us >= {since:Int64} AND end_us < {until:Int64}";

pub fn flow_runs_by_state() -> String {
    format!(
        "SELECT final_type, final_name, count() AS n FROM ({RUNS}) WHERE {WINDOW_END}
         GROUP BY final_type, final_name ORDER BY final_type, final_name"
    )
}

pub fn late_runs() -> String {
    format!(
        "SELECT count() AS n FROM ({RUNS})
         WHERE was_late AND late_us >= {{since:Int64}} AND late_us < {{until:Int64}}"
    )
}

pub fn lateness() -> String {
    format!(
        "SELECT count() AS n, sum(greatest(0, start_us - expected_us)) AS sum_us FROM ({RUNS})
         WHERE started AND has_expected AND start_us >= {{since:Int64}} AND start_us < {{until:Int64}}"
    )
}

pub fn durations() -> String {
    format!(
        "SELECT flow, count() AS n,
            arraySort(groupArray(end_us - start_us)) AS d,
            d[toUInt64(ceil(0.5 * n))] AS p50, d[toUInt64(ceil(0.95 * n))] AS p95
         FROM ({RUNS}) WHERE {WINDOW_END} AND started AND flow != ''
         GROUP BY flow ORDER BY flow"
    )
}

pub fn top_failing_flows() -> String {
    format!(
        "SELECT flow AS id, count() AS n FROM ({RUNS})
         WHERE {WINDOW_END} AND final_type IN ('FAILED', 'CRASHED') AND flow != ''
         GROUP BY id ORDER BY n DESC, id ASC LIMIT 5"
    )
}

pub fn task_runs() -> String {
    "SELECT state_type, uniqExact(run) AS n FROM (
        SELECT substring(resource_id, 18) AS run,
            if(resource['prefect.state-type'] != '', resource['prefect.state-type'],
               upper(substring(event, 18))) AS state_type
        FROM events FINAL
        WHERE account_id = {a:UUID} AND workspace_id = {w:UUID}
          AND startsWith(event, 'prefect.task-run.') AND startsWith(resource_id, 'prefect.task-run.')
          AND toUnixTimestamp64Micro(occurred) >= {since:Int64}
          AND toUnixTimestamp64Micro(occurred) < {until:Int64})
     WHERE state_type IN ('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED')
     GROUP BY state_type ORDER BY state_type"
        .to_string()
}

pub fn log_levels() -> String {
    "SELECT level, count() AS n FROM logs FINAL
     WHERE account_id = {a:UUID} AND workspace_id = {w:UUID}
       AND toUnixTimestamp64Micro(timestamp) >= {since:Int64}
       AND toUnixTimestamp64Micro(timestamp) < {until:Int64}
     GROUP BY level ORDER BY level"
        .to_string()
}

/// Runs `sql` for a tenant and window; one JSON object per row.
pub async fn rows(
    client: &clickhouse::Client,
    sql: &str,
    tenant: Tenant,
    since: i64,
    until: i64,
) -> Vec<serde_json::Value> {
    let mut cursor = client
        .query(sql)
        .param("a", tenant.account_id.to_string())
        .param("w", tenant.workspace_id.to_string())
        .param("since", since)
        .param("until", until)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .expect("raw query");
    let bytes = cursor.collect().await.expect("raw query result");
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON row"))
        .collect()
}
