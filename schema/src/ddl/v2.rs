//! Migration 2's definitions (revision 2): log lines get a stable identity and are stored once,
//! log volume counts distinct lines, and a flow run's heartbeats are not states.
//!
//! - `logs`: an `id` column (Prefect's log id when the line carries one, else [`LOG_ID_SQL`] of
//!   its content, which `LogRow::new` computes identically at ingest), ReplacingMergeTree on
//!   `(tenant, timestamp, id)`: a replayed line is stored once after merges and read once with
//!   `FINAL`.
//! - `log_counts_hourly`: the set of distinct log ids per hour, level and flow run
//!   (`uniqExact`), instead of a sum of inserted rows: a line inserted twice is counted once.
//! - `flow_runs`, `flow_run_states_hourly`: rebuilt from events that are states. Prefect 3 emits
//!   `prefect.flow-run.heartbeat` events for a running flow run (every
//!   `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds) and `prefect.flow-run.pull-step.executed` when a
//!   worker prepares one; they carry no state, and Prefect counts the run under its current state
//!   (RUNNING). Counting them made a heartbeating run's latest "state" `heartbeat` (type
//!   `HEARTBEAT`). `flow_runs` also keeps the type of the latest state (`last_state_type`).

use super::v1::{STATES_HOURLY_COLUMNS, STATES_HOURLY_ORDER};
use super::{Table, View};

/// The id of a log line that arrived without one: a version-8 UUID made of the first 16 bytes
/// of the SHA-256 of its tenant, flow run, task run, timestamp (µs), level, name and message.
/// `received` is not part of it, so the same line sent twice has one id.
/// [`crate::rows::log_content_id`] computes the same in Rust (tested to agree).
const LOG_ID_SQL: &str = "toUUID(UUIDNumToString(toFixedString(concat(
        substring($sha, 1, 6),
        char(bitOr(bitAnd(reinterpretAsUInt8(substring($sha, 7, 1)), 15), 128)),
        substring($sha, 8, 1),
        char(bitOr(bitAnd(reinterpretAsUInt8(substring($sha, 9, 1)), 63), 128)),
        substring($sha, 10, 7)), 16)))";

/// The hash [`LOG_ID_SQL`] takes its bytes from (its `$sha`).
const LOG_CONTENT_SQL: &str = "SHA256(concat(
        toString(account_id), '\\n', toString(workspace_id), '\\n',
        ifNull(toString(flow_run_id), ''), '\\n', ifNull(toString(task_run_id), ''), '\\n',
        toString(toUnixTimestamp64Micro(timestamp)), '\\n', toString(level), '\\n',
        name, '\\n', message))";

/// [`LOG_ID_SQL`] as one expression over a `logs` row.
pub fn log_id_sql() -> String {
    LOG_ID_SQL.replace("$sha", LOG_CONTENT_SQL)
}

/// The column list of `logs` in revision 2, in the order the copy writes it.
pub(crate) const LOG_COLUMNS: &str = "account_id, workspace_id, timestamp, id, received, level, \
                                      name, message, flow_run_id, task_run_id, worker_id";

pub(crate) const LOGS: Table = Table {
    name: "logs",
    columns: "
    account_id UUID,
    workspace_id UUID,
    timestamp DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    id UUID DEFAULT $log_id,
    received DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    level UInt8,
    name LowCardinality(String),
    message String CODEC(ZSTD(3)),
    flow_run_id Nullable(UUID),
    task_run_id Nullable(UUID),
    worker_id Nullable(UUID),
    INDEX idx_flow_run_id flow_run_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_message_tokens message TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1
",
    // `id` defaults to the content hash, for a writer that does not send one (an ingest of an
    // earlier version during a rolling upgrade). Replacing on (tenant, timestamp, id): a replayed line (the mirror's backfill, a client
    // retry) is stored once after merges, and reads use FINAL.
    engine: "ReplacingMergeTree",
    engine_args: "",
    partition_by: Some("toDate(timestamp)"),
    order_by: "account_id, workspace_id, timestamp, id",
    ttl: Some("toDateTime(timestamp) + toIntervalDay($retention)"),
    settings: "ttl_only_drop_parts = 1",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 2,
};

pub(crate) const LOG_COUNTS_HOURLY: Table = Table {
    name: "log_counts_hourly",
    columns: "
    account_id UUID,
    workspace_id UUID,
    hour DateTime('UTC'),
    level UInt8,
    flow_run_id UUID,
    log_ids AggregateFunction(uniqExact, UUID)
",
    engine: "AggregatingMergeTree",
    engine_args: "",
    partition_by: Some("toYYYYMM(hour)"),
    order_by: "account_id, workspace_id, hour, level, flow_run_id",
    ttl: Some("hour + toIntervalDay($retention)"),
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 2,
};

pub(crate) const LOG_COUNTS_HOURLY_MV: View = View {
    name: "log_counts_hourly_mv",
    target: "log_counts_hourly",
    source: "logs",
    events: "",
    events_filter: "",
    select: "SELECT
    account_id,
    workspace_id,
    toStartOfHour(timestamp) AS hour,
    level,
    ifNull(flow_run_id, toUUID('00000000-0000-0000-0000-000000000000')) AS flow_run_id,
    uniqExactState(id) AS log_ids
FROM $source
GROUP BY account_id, workspace_id, hour, level, flow_run_id",
};

/// Only a flow run's states: events with a state type, or, from producers that leave the label
/// out, a capitalized state name (Prefect's state names are capitalized; its other flow-run
/// events, `heartbeat` and `pull-step.executed`, are not, and carry no state type).
pub(crate) const STATES_ONLY: &str =
    "\n      AND (resource['prefect.state-type'] != '' OR match(substring(event, 18), '^[A-Z]'))";

/// `flow_runs` of revision 2: also the type of the run's latest state, which Prefect's history
/// reports (a `Submitting` run is PENDING), where revision 1 kept only its name.
pub(crate) const FLOW_RUNS_COLUMNS: &str = "
    account_id UUID,
    workspace_id UUID,
    flow_run_id String,
    flow_run_name SimpleAggregateFunction(max, String),
    flow_id SimpleAggregateFunction(max, String),
    flow_name SimpleAggregateFunction(max, String),
    deployment_id SimpleAggregateFunction(max, String),
    deployment_name SimpleAggregateFunction(max, String),
    work_pool_id SimpleAggregateFunction(max, String),
    work_pool_name SimpleAggregateFunction(max, String),
    tags SimpleAggregateFunction(groupUniqArrayArray, Array(String)),
    expected_start SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC'))),
    first_seen SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    late_at SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC'))),
    start_time SimpleAggregateFunction(min, Nullable(DateTime64(6, 'UTC'))),
    end_time SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC'))),
    final_state AggregateFunction(argMaxIf, String, DateTime64(6, 'UTC'), UInt8),
    final_state_type AggregateFunction(argMaxIf, String, DateTime64(6, 'UTC'), UInt8),
    last_state AggregateFunction(argMax, String, DateTime64(6, 'UTC')),
    last_state_type AggregateFunction(argMax, String, DateTime64(6, 'UTC'))
";

/// The column added to revision 1's `flow_runs` while its view is switched to revision 2.
pub(crate) const ADD_LAST_STATE_TYPE: &str = "ALTER TABLE $table$on_cluster ADD COLUMN IF NOT \
    EXISTS last_state_type AggregateFunction(argMax, String, DateTime64(6, 'UTC'))";

pub(crate) const FLOW_RUNS: Table = Table {
    columns: FLOW_RUNS_COLUMNS,
    revision: 2,
    ..super::v1::FLOW_RUNS
};

pub(crate) const FLOW_RUNS_MV: View = View {
    name: "flow_runs_mv",
    target: "flow_runs",
    source: "events",
    events: super::v1::RUN_STATE_EVENTS,
    events_filter: STATES_ONLY,
    select: "SELECT
    account_id,
    workspace_id,
    run_id AS flow_run_id,
    max(run_name) AS flow_run_name,
    max(flow_id) AS flow_id,
    max(flow['prefect.resource.name']) AS flow_name,
    max(deployment_id) AS deployment_id,
    max(deployment['prefect.resource.name']) AS deployment_name,
    max(work_pool_id) AS work_pool_id,
    max(work_pool['prefect.resource.name']) AS work_pool_name,
    groupUniqArrayArray(tags) AS tags,
    min(expected) AS expected_start,
    min(occurred) AS first_seen,
    max(occurred) AS last_seen,
    min(if(state_name = 'Late', occurred, NULL)) AS late_at,
    min(if(state_type = 'RUNNING', occurred, NULL)) AS start_time,
    max(if(terminal = 1, occurred, NULL)) AS end_time,
    argMaxIfState(state_name, occurred, terminal) AS final_state,
    argMaxIfState(state_type, occurred, terminal) AS final_state_type,
    argMaxState(state_name, occurred) AS last_state,
    argMaxState(state_type, occurred) AS last_state_type
FROM ($flow_run_events)
GROUP BY account_id, workspace_id, flow_run_id",
};

pub(crate) const FLOW_RUN_STATES_HOURLY: Table = Table {
    name: "flow_run_states_hourly",
    columns: STATES_HOURLY_COLUMNS,
    order_by: STATES_HOURLY_ORDER,
    revision: 2,
    ..super::v1::FLOW_RUN_STATES_HOURLY
};

pub(crate) const FLOW_RUN_STATES_HOURLY_MV: View = View {
    events_filter: STATES_ONLY,
    ..super::v1::FLOW_RUN_STATES_HOURLY_MV
};
