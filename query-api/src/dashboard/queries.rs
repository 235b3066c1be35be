//! The SQL of the dashboard metrics, served from the rollups (docs/metrics.md is binding).
//!
//! - Flow-run metrics read `flow_runs` (one row per run per insert block, merged here with
//!   `argMaxIfMerge` and the SimpleAggregateFunction's own functions), which keeps the exact
//!   times the definitions need (end, start, expected start, late), so any window is exact.
//! - Task-run and log metrics read the hourly rollups for the whole hours of the window and the
//!   raw tables for the partial hours at its two ends (at most two hours of raw rows), merged
//!   in one query: `uniqExactMerge` over rollup states and `uniqExactState` over raw rows gives
//!   the exact number of distinct task runs across both.
//! - A tag filter on task runs cannot be answered from `task_run_states_hourly` (it has no
//!   tags), so that case reads raw events; see [`task_runs_raw`].
//!
//! Every value from the request is bound with [`Sql::bind`]; column names come from enums.

use clickhouse::Row;
use serde::Deserialize;

use super::RunFilters;
use crate::db::{Db, Sql, TENANT};
use crate::error::ApiError;
use crate::window::{Axis, Bucket, Window};
use flowhouse_schema::Tenant;

pub const TERMINAL: &str = "('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED')";
pub const FAILURE: &str = "('FAILED', 'CRASHED')";

pub fn is_failure(state_type: &str) -> bool {
    matches!(state_type, "FAILED" | "CRASHED")
}

/// The columns [`runs`] can produce, with the function that merges each across the rollup's
/// rows of a run (one row per insert block until background merges fold them).
const RUN_COLUMNS: &[(&str, &str)] = &[
    ("run_name", "max(flow_run_name)"),
    ("flow", "max(flow_id)"),
    ("flow_label", "max(flow_name)"),
    ("deployment", "max(deployment_id)"),
    ("deployment_label", "max(deployment_name)"),
    ("work_pool", "max(work_pool_id)"),
    ("work_pool_label", "max(work_pool_name)"),
    ("run_tags", "groupUniqArrayArray(tags)"),
    ("expected", "min(expected_start)"),
    ("started", "min(start_time)"),
    ("ended", "max(end_time)"),
    ("late", "min(late_at)"),
    ("seen_first", "min(first_seen)"),
    ("seen_last", "max(last_seen)"),
    ("final_name", "argMaxIfMerge(final_state)"),
    ("final_type", "argMaxIfMerge(final_state_type)"),
    ("last_name", "argMaxMerge(last_state)"),
    ("last_type", "argMaxMerge(last_state_type)"),
];

/// One merged row per flow run from the `flow_runs` rollup, with `columns` (names of
/// [`RUN_COLUMNS`]) and `filters` applied ("runs that have it on any of their events": the
/// rollup keeps the flow / deployment / work pool of any event, and the union of tags). Only
/// the columns asked for are merged: merging states and tag arrays of every run is most of the
/// cost of a metric. (Pre-selecting the runs active in the window with an `IN` subquery on
/// `last_seen` was measured: building and probing that set costs more than merging the few
/// columns of every run of the tenant, so the window is applied after the merge.)
pub fn runs(sql: &mut Sql, filters: &RunFilters, columns: &[&str]) -> String {
    let mut having = Vec::new();
    let mut wanted: Vec<&str> = columns.to_vec();
    for (values, column) in [
        (&filters.flow, "flow"),
        (&filters.deployment, "deployment"),
        (&filters.work_pool, "work_pool"),
    ] {
        if !values.is_empty() {
            let p = sql.bind_strings(values);
            having.push(format!("has({p}, {column})"));
            wanted.push(column);
        }
    }
    if !filters.tag.is_empty() {
        let p = sql.bind_strings(&filters.tag);
        having.push(format!("hasAny(run_tags, {p})"));
        wanted.push("run_tags");
    }
    debug_assert!(
        wanted
            .iter()
            .all(|w| RUN_COLUMNS.iter().any(|(name, _)| name == w)),
        "unknown run column in {wanted:?}"
    );
    let mut select = vec!["flow_run_id".to_string()];
    select.extend(
        RUN_COLUMNS
            .iter()
            .filter(|(name, _)| wanted.contains(name))
            .map(|(name, merge)| format!("{merge} AS {name}")),
    );
    let having = if having.is_empty() {
        String::new()
    } else {
        format!(" HAVING {}", having.join(" AND "))
    };
    format!(
        "SELECT {select}
        FROM flow_runs
        WHERE {TENANT}
        GROUP BY flow_run_id{having}",
        select = select.join(", ")
    )
}

fn in_window(sql: &mut Sql, column: &str, window: &Window) -> String {
    let since = sql.bind_micros(window.since);
    let until = sql.bind_micros(window.until);
    format!("{column} >= {since} AND {column} < {until}")
}

fn bucket_of(sql: &mut Sql, micros_expr: &str, axis: &Axis) -> String {
    axis.key_sql(sql, micros_expr)
}

#[derive(Debug, Row, Deserialize)]
pub struct StateCountRow {
    pub bucket: i64,
    pub state_name: String,
    pub state_type: String,
    pub runs: u64,
}

/// Flow runs whose end time is in the window, by bucket of end time and final state.
pub async fn flow_runs_by_state(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    axis: &Axis,
    filters: &RunFilters,
) -> Result<Vec<StateCountRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let runs = runs(&mut sql, filters, &["ended", "final_name", "final_type"]);
    let b = bucket_of(
        &mut sql,
        "toUnixTimestamp64Micro(assumeNotNull(ended))",
        axis,
    );
    let w = in_window(&mut sql, "ended", window);
    sql.push(&format!(
        "SELECT {b} AS bucket, final_name AS state_name, final_type AS state_type,
                count() AS runs
         FROM ({runs}) WHERE {w}
         GROUP BY bucket, state_name, state_type"
    ));
    db.fetch("flow_runs_by_state", &sql).await
}

#[derive(Debug, Row, Deserialize)]
pub struct BucketCountRow {
    pub bucket: i64,
    pub runs: u64,
}

/// Runs whose first `Late` event is in the window, by bucket.
pub async fn late_runs(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    axis: &Axis,
    filters: &RunFilters,
) -> Result<Vec<BucketCountRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let runs = runs(&mut sql, filters, &["late"]);
    let b = bucket_of(
        &mut sql,
        "toUnixTimestamp64Micro(assumeNotNull(late))",
        axis,
    );
    let w = in_window(&mut sql, "late", window);
    sql.push(&format!(
        "SELECT {b} AS bucket, count() AS runs FROM ({runs}) WHERE {w} GROUP BY bucket"
    ));
    db.fetch("late_runs", &sql).await
}

#[derive(Debug, Row, Deserialize)]
pub struct LatenessRow {
    pub runs: u64,
    pub lateness_micros: i64,
}

/// Runs whose start time is in the window and that have an expected start: how many, and the
/// sum of `max(0, start − expected)` in microseconds (integers: the mean is taken once, in Rust).
pub async fn lateness(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    filters: &RunFilters,
) -> Result<LatenessRow, ApiError> {
    let mut sql = Sql::new(tenant);
    let runs = runs(&mut sql, filters, &["started", "expected"]);
    let w = in_window(&mut sql, "started", window);
    sql.push(&format!(
        "SELECT count() AS runs,
                toInt64(sum(greatest(toInt64(0),
                    toUnixTimestamp64Micro(assumeNotNull(started))
                    - toUnixTimestamp64Micro(assumeNotNull(expected))))) AS lateness_micros
         FROM ({runs}) WHERE {w} AND expected IS NOT NULL"
    ));
    let rows: Vec<LatenessRow> = db.fetch("lateness", &sql).await?;
    Ok(rows.into_iter().next().unwrap_or(LatenessRow {
        runs: 0,
        lateness_micros: 0,
    }))
}

#[derive(Debug, Row, Deserialize)]
pub struct DurationRow {
    pub flow: String,
    pub name: String,
    pub runs: u64,
    pub p50: i64,
    pub p95: i64,
}

/// Per flow, nearest-rank p50 and p95 of `end − start` (µs) over runs that ended in the window
/// and have a start time: `sorted[ceil(p·n) − 1]`, with ceil(n/2) and ceil(95n/100) in integers
/// (ClickHouse arrays are 1-based, hence no `− 1`). At most `limit` flows, by id.
pub async fn durations(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    filters: &RunFilters,
    limit: u64,
) -> Result<Vec<DurationRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let runs = runs(
        &mut sql,
        filters,
        &["flow", "flow_label", "started", "ended"],
    );
    let w = in_window(&mut sql, "ended", window);
    let limit = sql.bind("UInt64", limit);
    sql.push(&format!(
        "SELECT flow, name, runs, sorted[intDiv(runs + 1, 2)] AS p50,
                sorted[intDiv(95 * runs + 99, 100)] AS p95
         FROM (
            SELECT flow, max(flow_label) AS name, count() AS runs,
                   arraySort(groupArray(toUnixTimestamp64Micro(assumeNotNull(ended))
                                        - toUnixTimestamp64Micro(assumeNotNull(started)))) AS sorted
            FROM ({runs})
            WHERE {w} AND started IS NOT NULL AND flow != ''
            GROUP BY flow)
         ORDER BY flow LIMIT {limit}"
    ));
    db.fetch("durations", &sql).await
}

/// What top-N failing ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    Flow,
    Deployment,
    WorkPool,
}

impl Group {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "flow" => Ok(Group::Flow),
            "deployment" => Ok(Group::Deployment),
            "work-pool" | "work_pool" => Ok(Group::WorkPool),
            other => Err(ApiError::bad_request(format!(
                "by must be `flow`, `deployment` or `work-pool`, not `{other}`"
            ))),
        }
    }

    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Group::Flow => ("flow", "flow_label"),
            Group::Deployment => ("deployment", "deployment_label"),
            Group::WorkPool => ("work_pool", "work_pool_label"),
        }
    }
}

#[derive(Debug, Row, Deserialize)]
pub struct FailingRow {
    pub id: String,
    pub name: String,
    /// The flow of a deployment (two flows may each have a deployment named `hourly`); empty
    /// for the other groups.
    pub flow_name: String,
    pub failures: u64,
}

/// Runs that ended in the window in a failure type, per group; most first, ties by id. Runs
/// without the group (no deployment, say) are not a group.
pub async fn top_failing(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    filters: &RunFilters,
    group: Group,
    limit: u64,
) -> Result<Vec<FailingRow>, ApiError> {
    let (id, name) = group.columns();
    let mut columns = vec![id, name, "ended", "final_type"];
    let flow_name = if group == Group::Deployment {
        columns.push("flow_label");
        "max(flow_label)"
    } else {
        "''"
    };
    let mut sql = Sql::new(tenant);
    let runs = runs(&mut sql, filters, &columns);
    let w = in_window(&mut sql, "ended", window);
    let limit = sql.bind("UInt64", limit);
    sql.push(&format!(
        "SELECT {id} AS id, max({name}) AS name, {flow_name} AS flow_name, count() AS failures
         FROM ({runs})
         WHERE {w} AND final_type IN {FAILURE} AND {id} != ''
         GROUP BY id ORDER BY failures DESC, id ASC LIMIT {limit}"
    ));
    db.fetch("top_failing", &sql).await
}

/// State-change events of task runs, with what the rollup derives from them (the same
/// expressions as the materialized view in schema/src/ddl.rs).
fn task_run_events(time_condition: &str) -> String {
    format!(
        "SELECT occurred,
            substring(resource_id, 18) AS run_id,
            if(resource['prefect.state-type'] != '', resource['prefect.state-type'],
               upper(substring(event, 18))) AS state_type,
            replaceOne(arrayFirst(r -> r['prefect.resource.role'] = 'flow', related)['prefect.resource.id'],
                       'prefect.flow.', '') AS flow_id,
            replaceOne(arrayFirst(r -> r['prefect.resource.role'] = 'deployment', related)['prefect.resource.id'],
                       'prefect.deployment.', '') AS deployment_id,
            replaceOne(arrayFirst(r -> r['prefect.resource.role'] = 'work-pool', related)['prefect.resource.id'],
                       'prefect.work-pool.', '') AS work_pool_id,
            arrayMap(r -> replaceOne(r['prefect.resource.id'], 'prefect.tag.', ''),
                     arrayFilter(r -> r['prefect.resource.role'] = 'tag', related)) AS tags
         FROM events
         WHERE {TENANT} AND {time_condition}
           AND startsWith(event, 'prefect.task-run.') AND startsWith(resource_id, 'prefect.task-run.')"
    )
}

#[derive(Debug, Row, Deserialize)]
pub struct TaskStateRow {
    /// 1 for the per-type totals over the whole window, 0 for per-bucket rows.
    pub total_row: u8,
    pub bucket: i64,
    pub state_type: String,
    pub runs: u64,
}

/// The time condition selecting the raw rows that stand in for the rollup: the partial hours
/// at both ends of the window (or the whole window when it holds no whole hour), and the whole
/// hours that two buckets share (`split`, hour numbers; see [`Axis::split_hours`]).
fn raw_edges(sql: &mut Sql, column: &str, window: &Window, split: &[i64]) -> String {
    let edges = match window.whole_hours() {
        Some((from, to)) => {
            let head = in_window(
                sql,
                column,
                &Window {
                    since: window.since,
                    until: from,
                },
            );
            let tail = in_window(
                sql,
                column,
                &Window {
                    since: to,
                    until: window.until,
                },
            );
            format!("(({head}) OR ({tail}))")
        }
        None => in_window(sql, column, window),
    };
    if split.is_empty() {
        return edges;
    }
    let hours = sql.bind("Array(Int64)", split.to_vec());
    let hour = sql.bind_i64(Bucket::Hour.micros());
    format!("({edges} OR has({hours}, intDiv(toUnixTimestamp64Micro({column}), {hour})))")
}

/// The one shape of the rollup-backed counts: the hourly rollup for the window's whole hours
/// and the raw table for its partial hours at both ends, as parts of a `UNION ALL`. `rollup`
/// gets the condition on `hour` and the bucket expression of an hour; `raw` the condition on
/// `raw_time` (the raw table's time column) and its bucket expression.
fn rollup_and_edges(
    sql: &mut Sql,
    window: &Window,
    axis: &Axis,
    raw_time: &str,
    rollup: impl FnOnce(&mut Sql, &str, &str) -> String,
    raw: impl FnOnce(&mut Sql, &str, &str) -> String,
) -> String {
    let mut parts = Vec::new();
    let mut split = Vec::new();
    if let Some((from, to)) = window.whole_hours() {
        split = axis.split_hours(from, to);
        let mut hours = in_window(
            sql,
            "hour",
            &Window {
                since: from,
                until: to,
            },
        );
        if !split.is_empty() {
            let p = sql.bind("Array(Int64)", split.clone());
            hours.push_str(&format!(
                " AND NOT has({p}, intDiv(toInt64(toUnixTimestamp(hour)), 3600))"
            ));
        }
        let b = bucket_of(sql, "toInt64(toUnixTimestamp(hour)) * 1000000", axis);
        parts.push(rollup(sql, &hours, &b));
    }
    let edges = raw_edges(sql, raw_time, window, &split);
    let b = bucket_of(sql, &format!("toUnixTimestamp64Micro({raw_time})"), axis);
    parts.push(raw(sql, &edges, &b));
    parts.join(" UNION ALL ")
}

fn column_filters(sql: &mut Sql, filters: &RunFilters) -> String {
    let mut conditions = String::new();
    for (values, column) in [
        (&filters.flow, "flow_id"),
        (&filters.deployment, "deployment_id"),
        (&filters.work_pool, "work_pool_id"),
    ] {
        if !values.is_empty() {
            let p = sql.bind_strings(values);
            conditions.push_str(&format!(" AND has({p}, {column})"));
        }
    }
    conditions
}

/// Task runs that entered a terminal state type in the window: distinct runs per type, per
/// bucket and over the whole window.
pub async fn task_runs(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    axis: &Axis,
    filters: &RunFilters,
) -> Result<Vec<TaskStateRow>, ApiError> {
    if !filters.tag.is_empty() {
        return task_runs_raw(db, tenant, window, axis, filters).await;
    }
    let mut sql = Sql::new(tenant);
    let parts = rollup_and_edges(
        &mut sql,
        window,
        axis,
        "occurred",
        |sql, hours, b| {
            let filters = column_filters(sql, filters);
            format!(
                "SELECT {b} AS bucket, state_type, runs FROM task_run_states_hourly
                 WHERE {TENANT} AND {hours} AND state_type IN {TERMINAL}{filters}"
            )
        },
        |sql, edges, b| {
            let filters = column_filters(sql, filters);
            format!(
                "SELECT {b} AS bucket, state_type, uniqExactState(run_id) AS runs
                 FROM ({events}) WHERE state_type IN {TERMINAL}{filters}
                 GROUP BY bucket, state_type",
                events = task_run_events(edges)
            )
        },
    );
    sql.push(&format!(
        "SELECT toUInt8(grouping(bucket)) AS total_row, bucket, state_type,
                toUInt64(uniqExactMerge(runs)) AS runs
         FROM ({parts})
         GROUP BY GROUPING SETS ((bucket, state_type), (state_type))"
    ));
    db.fetch("task_runs", &sql).await
}

/// Task runs with a tag filter, from raw events: the rollup has no tags. "Runs that have it on
/// any of their events" is applied per run, over all of the run's events.
async fn task_runs_raw(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    axis: &Axis,
    filters: &RunFilters,
) -> Result<Vec<TaskStateRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let w = in_window(&mut sql, "occurred", window);
    let b = bucket_of(&mut sql, "toUnixTimestamp64Micro(occurred)", axis);
    let mut having = Vec::new();
    for (values, column) in [
        (&filters.flow, "flow_id"),
        (&filters.deployment, "deployment_id"),
        (&filters.work_pool, "work_pool_id"),
    ] {
        if !values.is_empty() {
            let p = sql.bind_strings(values);
            having.push(format!("countIf(has({p}, {column})) > 0"));
        }
    }
    let tags = sql.bind_strings(&filters.tag);
    having.push(format!("hasAny(groupUniqArrayArray(tags), {tags})"));
    let all_time = task_run_events("1");
    let in_window_events = task_run_events(&w);
    sql.push(&format!(
        "SELECT toUInt8(grouping(bucket)) AS total_row, {b} AS bucket, state_type,
                toUInt64(uniqExact(run_id)) AS runs
         FROM ({in_window_events})
         WHERE state_type IN {TERMINAL}
           AND run_id IN (SELECT run_id FROM ({all_time}) GROUP BY run_id HAVING {having})
         GROUP BY GROUPING SETS ((bucket, state_type), (state_type))",
        having = having.join(" AND ")
    ));
    db.fetch("task_runs_raw", &sql).await
}

#[derive(Debug, Row, Deserialize)]
pub struct LogCountRow {
    pub bucket: i64,
    pub level: u8,
    pub lines: u64,
}

/// Log lines whose timestamp is in the window, per bucket and level. With run filters, only
/// lines of the flow runs that match them (from the `flow_runs` rollup).
pub async fn log_counts(
    db: &Db,
    tenant: Tenant,
    window: &Window,
    axis: &Axis,
    filters: &RunFilters,
) -> Result<Vec<LogCountRow>, ApiError> {
    let mut sql = Sql::new(tenant);
    let run_condition = if filters.is_empty() {
        String::new()
    } else {
        let runs = runs(&mut sql, filters, &[]);
        format!(" AND toString(flow_run_id) IN (SELECT flow_run_id FROM ({runs}))")
    };
    let raw_run_condition = if filters.is_empty() {
        String::new()
    } else {
        format!(" AND isNotNull(flow_run_id){run_condition}")
    };
    // Distinct ids: a line stored twice and not merged yet counts once, in the rollup
    // (`uniqExact` states of the ids) as in the raw edges.
    let parts = rollup_and_edges(
        &mut sql,
        window,
        axis,
        "timestamp",
        |_, hours, b| {
            format!(
                "SELECT {b} AS bucket, level, uniqExactMerge(log_ids) AS lines FROM log_counts_hourly
                 WHERE {TENANT} AND {hours}{run_condition}
                 GROUP BY bucket, level"
            )
        },
        |_, edges, b| {
            format!(
                "SELECT {b} AS bucket, level, uniqExact(id) AS lines FROM logs
                 WHERE {TENANT} AND {edges}{raw_run_condition}
                 GROUP BY bucket, level"
            )
        },
    );
    sql.push(&format!(
        "SELECT bucket, level, toUInt64(sum(lines)) AS lines FROM ({parts})
         GROUP BY bucket, level"
    ));
    db.fetch("log_counts", &sql).await
}
