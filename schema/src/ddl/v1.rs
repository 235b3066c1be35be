//! The schema as migration 1 created it, frozen: migration 1's statements (and so its
//! checksum, recorded in every database it created) are rendered from these definitions. Later
//! migrations define their tables and views anew in their own modules; never edit this one.

use super::{Table, View};

pub(crate) const EVENTS: Table = Table {
    name: "events",
    columns: "
    account_id UUID,
    workspace_id UUID,
    occurred DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    id UUID,
    received DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    event LowCardinality(String),
    resource Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    related Array(Map(LowCardinality(String), String)) CODEC(ZSTD(1)),
    payload String CODEC(ZSTD(3)),
    follows Nullable(UUID),
    resource_id String MATERIALIZED resource['prefect.resource.id'] CODEC(ZSTD(1)),
    related_ids Array(String) MATERIALIZED arrayMap(r -> r['prefect.resource.id'], related) CODEC(ZSTD(1)),
    related_roles Array(LowCardinality(String)) MATERIALIZED arrayMap(r -> r['prefect.resource.role'], related),
    INDEX idx_event event TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_resource_id resource_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_related_ids related_ids TYPE bloom_filter(0.01) GRANULARITY 1
",
    // Replacing on (tenant, occurred, id): an event a client sent twice is stored once after
    // merges, and search reads with FINAL.
    engine: "ReplacingMergeTree",
    engine_args: "",
    partition_by: Some("toDate(occurred)"),
    order_by: "account_id, workspace_id, occurred, id",
    ttl: Some("toDateTime(occurred) + toIntervalDay($retention)"),
    settings: "ttl_only_drop_parts = 1",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 1,
};

pub(crate) const LOGS: Table = Table {
    name: "logs",
    columns: "
    account_id UUID,
    workspace_id UUID,
    timestamp DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
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
    engine: "MergeTree",
    engine_args: "",
    partition_by: Some("toDate(timestamp)"),
    order_by: "account_id, workspace_id, timestamp",
    ttl: Some("toDateTime(timestamp) + toIntervalDay($retention)"),
    settings: "ttl_only_drop_parts = 1",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 1,
};

pub(crate) const FLOW_RUNS: Table = Table {
    name: "flow_runs",
    columns: "
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
    last_state AggregateFunction(argMax, String, DateTime64(6, 'UTC'))
",
    engine: "AggregatingMergeTree",
    engine_args: "",
    partition_by: None,
    order_by: "account_id, workspace_id, flow_run_id",
    ttl: Some("toDateTime(last_seen) + toIntervalDay($retention)"),
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 1,
};

pub(crate) const STATES_HOURLY_COLUMNS: &str = "
    account_id UUID,
    workspace_id UUID,
    hour DateTime('UTC'),
    state_type LowCardinality(String),
    state_name LowCardinality(String),
    flow_id String,
    deployment_id String,
    work_pool_id String,
    runs AggregateFunction(uniqExact, String)
";
pub(crate) const STATES_HOURLY_ORDER: &str =
    "account_id, workspace_id, hour, state_type, state_name, flow_id, deployment_id, work_pool_id";

pub(crate) const FLOW_RUN_STATES_HOURLY: Table = Table {
    name: "flow_run_states_hourly",
    columns: STATES_HOURLY_COLUMNS,
    engine: "AggregatingMergeTree",
    engine_args: "",
    partition_by: Some("toYYYYMM(hour)"),
    order_by: STATES_HOURLY_ORDER,
    ttl: Some("hour + toIntervalDay($retention)"),
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 1,
};

pub(crate) const TASK_RUN_STATES_HOURLY: Table = Table {
    name: "task_run_states_hourly",
    ..FLOW_RUN_STATES_HOURLY
};

pub(crate) const LOG_COUNTS_HOURLY: Table = Table {
    name: "log_counts_hourly",
    columns: "
    account_id UUID,
    workspace_id UUID,
    hour DateTime('UTC'),
    level UInt8,
    flow_run_id UUID,
    logs SimpleAggregateFunction(sum, UInt64)
",
    engine: "AggregatingMergeTree",
    engine_args: "",
    partition_by: Some("toYYYYMM(hour)"),
    order_by: "account_id, workspace_id, hour, level, flow_run_id",
    ttl: Some("hour + toIntervalDay($retention)"),
    settings: "",
    shard_key: "cityHash64(workspace_id)",
    everywhere: false,
    revision: 1,
};

/// One row per (consumer group, topic, partition): the latest batch range the ingest service
/// recorded, i.e. where that partition resumes (see the ingest crate's `exactly_once`). Never
/// expires: losing it would mean re-reading the partition from its earliest offset.
pub(crate) const INGEST_BATCHES: Table = Table {
    name: "ingest_batches",
    columns: "
    consumer_group String,
    topic String,
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    rows UInt64,
    recorded_at DateTime64(3, 'UTC') DEFAULT now64(3)
",
    engine: "ReplacingMergeTree",
    // The highest range wins, whatever order records arrive in.
    engine_args: "last_offset",
    partition_by: None,
    order_by: "consumer_group, topic, partition",
    ttl: None,
    settings: "",
    shard_key: "",
    everywhere: true,
    revision: 1,
};

pub(crate) const SCHEMA_MIGRATIONS: Table = Table {
    name: "schema_migrations",
    columns: "
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
",
    engine: "ReplacingMergeTree",
    engine_args: "applied_at",
    partition_by: None,
    order_by: "version",
    ttl: None,
    settings: "",
    shard_key: "",
    everywhere: true,
    revision: 1,
};

/// One row per state-change event of a run, with what the rollups need pulled out of the labels.
/// `$kind` is `flow-run` or `task-run` (both prefixes are 17 characters long).
pub(crate) const RUN_STATE_EVENTS: &str = "
    SELECT
        account_id,
        workspace_id,
        occurred,
        substring(resource_id, 18) AS run_id,
        resource['prefect.resource.name'] AS run_name,
        substring(event, 18) AS state_name,
        if(resource['prefect.state-type'] != '', resource['prefect.state-type'], upper(state_name)) AS state_type,
        toUInt8(state_type IN ('COMPLETED', 'FAILED', 'CRASHED', 'CANCELLED')) AS terminal,
        arrayFirst(r -> r['prefect.resource.role'] = 'flow', related) AS flow,
        arrayFirst(r -> r['prefect.resource.role'] = 'deployment', related) AS deployment,
        arrayFirst(r -> r['prefect.resource.role'] = 'work-pool', related) AS work_pool,
        replaceOne(flow['prefect.resource.id'], 'prefect.flow.', '') AS flow_id,
        replaceOne(deployment['prefect.resource.id'], 'prefect.deployment.', '') AS deployment_id,
        replaceOne(work_pool['prefect.resource.id'], 'prefect.work-pool.', '') AS work_pool_id,
        arrayMap(r -> replaceOne(r['prefect.resource.id'], 'prefect.tag.', ''),
                 arrayFilter(r -> r['prefect.resource.role'] = 'tag', related)) AS tags,
        if(state_type = 'SCHEDULED',
           parseDateTime64BestEffortOrNull(
               JSONExtractString(payload, 'validated_state', 'state_details', 'scheduled_time'), 6, 'UTC'),
           NULL) AS expected
    FROM $source
    WHERE startsWith(event, 'prefect.$kind.') AND startsWith(resource_id, 'prefect.$kind.')";

pub(crate) const FLOW_RUNS_MV: View = View {
    name: "flow_runs_mv",
    target: "flow_runs",
    source: "events",
    events: RUN_STATE_EVENTS,
    events_filter: "",
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
    argMaxState(state_name, occurred) AS last_state
FROM ($flow_run_events)
GROUP BY account_id, workspace_id, flow_run_id",
};

pub(crate) const STATES_HOURLY_SELECT: &str = "SELECT
    account_id,
    workspace_id,
    toStartOfHour(occurred) AS hour,
    state_type,
    state_name,
    flow_id,
    deployment_id,
    work_pool_id,
    uniqExactState(run_id) AS runs
FROM ($run_events)
GROUP BY account_id, workspace_id, hour, state_type, state_name, flow_id, deployment_id, work_pool_id";

pub(crate) const FLOW_RUN_STATES_HOURLY_MV: View = View {
    name: "flow_run_states_hourly_mv",
    target: "flow_run_states_hourly",
    source: "events",
    events: RUN_STATE_EVENTS,
    events_filter: "",
    select: STATES_HOURLY_SELECT,
};

pub(crate) const TASK_RUN_STATES_HOURLY_MV: View = View {
    name: "task_run_states_hourly_mv",
    target: "task_run_states_hourly",
    source: "events",
    events: RUN_STATE_EVENTS,
    events_filter: "",
    select: STATES_HOURLY_SELECT,
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
    count() AS logs
FROM $source
GROUP BY account_id, workspace_id, hour, level, flow_run_id",
};

/// What migration 1 creates, in order.
pub(crate) const TABLES: &[&Table] = &[
    &SCHEMA_MIGRATIONS,
    &INGEST_BATCHES,
    &EVENTS,
    &LOGS,
    &FLOW_RUNS,
    &FLOW_RUN_STATES_HOURLY,
    &TASK_RUN_STATES_HOURLY,
    &LOG_COUNTS_HOURLY,
];

pub(crate) const VIEWS: &[&View] = &[
    &FLOW_RUNS_MV,
    &FLOW_RUN_STATES_HOURLY_MV,
    &TASK_RUN_STATES_HOURLY_MV,
    &LOG_COUNTS_HOURLY_MV,
];
