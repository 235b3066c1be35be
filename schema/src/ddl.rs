//! Flowhouse's ClickHouse schema: one definition per table and view, rendered either for a single
//! node or for a cluster (Replicated* tables, Distributed tables sharded by tenant, `ON CLUSTER`).
//!
//! ## Layout
//! - `events`, `logs`: raw data. `ORDER BY` leads with the tenant, then time, so a tenant's week is
//!   one contiguous range of the primary index.
//! - `flow_runs`: one row per flow run (AggregatingMergeTree): names, flow / deployment / work
//!   pool, tags, expected start, first Running, last terminal state and its time.
//! - `flow_run_states_hourly`, `task_run_states_hourly`: per tenant, hour, state, flow, deployment
//!   and work pool, the exact set of runs that entered the state (`uniqExact`).
//! - `log_counts_hourly`: log lines per tenant, hour, level and flow run.
//! - `ingest_batches` (where each Kafka partition resumes), `schema_migrations`: bookkeeping.
//!
//! Every rollup is a materialized view over the raw tables, and every aggregate in them is
//! idempotent (min, max, argMax, set union) or deduplicated with its source block, so a replayed
//! insert or a client that sends the same event twice never changes a metric.
//!
//! ## Partitions
//! Raw tables are partitioned by day. At 200M events a day (~2,300/s), the ingest service's
//! batches (about one insert per second per Kafka partition) make a few thousand small parts a
//! day that background merges fold into ~10–20 parts per daily partition; with 30 days of
//! retention that is a few hundred active parts per table, well under ClickHouse's guidance of
//! keeping parts per table in the low thousands. Monthly partitions would make retention drop
//! a month at a time; hourly ones would multiply part counts by 24 for no pruning gain (queries
//! cover days to weeks). TTL deletes whole daily parts (`ttl_only_drop_parts`).
//!
//! ## Deduplication
//! Tables written by the ingest service keep the hashes of their last 10,000 inserted blocks
//! (`non_replicated_deduplication_window`, or `replicated_deduplication_window` on a cluster):
//! an insert repeated with the same `insert_deduplication_token` is dropped, in the materialized
//! views as well (`deduplicate_blocks_in_dependent_materialized_views`). See the ingest crate.

/// Where the schema lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    SingleNode,
    /// A ClickHouse cluster by name (`remote_servers`), with `{shard}` and `{replica}` macros.
    Cluster(String),
}

/// What the rendering depends on.
#[derive(Clone, Debug)]
pub struct SchemaConfig {
    pub database: String,
    pub topology: Topology,
    /// Days of raw data and rollups kept; older daily partitions are dropped.
    pub retention_days: u32,
}

pub(crate) const DEDUP_WINDOW: u32 = 10_000;

/// A table as a single definition.
pub(crate) struct Table {
    pub name: &'static str,
    pub columns: &'static str,
    /// Engine family without the `Replicated` prefix, e.g. `AggregatingMergeTree`.
    pub engine: &'static str,
    /// Engine arguments after the replication path and replica, e.g. a version column.
    pub engine_args: &'static str,
    pub partition_by: Option<&'static str>,
    pub order_by: &'static str,
    /// TTL expression; `$retention` is replaced by the retention in days.
    pub ttl: Option<&'static str>,
    pub settings: &'static str,
    /// How the Distributed table spreads rows; always by tenant, so one tenant is one shard.
    pub shard_key: &'static str,
    /// Bookkeeping tables: one full copy on every node instead of shards.
    pub everywhere: bool,
}

/// A materialized view: `$source` (the raw table it reads) and `$db` are substituted.
pub(crate) struct View {
    pub name: &'static str,
    pub target: &'static str,
    pub source: &'static str,
    pub select: &'static str,
}

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
};

const STATES_HOURLY_COLUMNS: &str = "
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
const STATES_HOURLY_ORDER: &str =
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
};

/// One row per state-change event of a run, with what the rollups need pulled out of the labels.
/// `$kind` is `flow-run` or `task-run` (both prefixes are 17 characters long).
const RUN_STATE_EVENTS: &str = "
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

const STATES_HOURLY_SELECT: &str = "SELECT
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
    select: STATES_HOURLY_SELECT,
};

pub(crate) const TASK_RUN_STATES_HOURLY_MV: View = View {
    name: "task_run_states_hourly_mv",
    target: "task_run_states_hourly",
    source: "events",
    select: STATES_HOURLY_SELECT,
};

pub(crate) const LOG_COUNTS_HOURLY_MV: View = View {
    name: "log_counts_hourly_mv",
    target: "log_counts_hourly",
    source: "logs",
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

impl SchemaConfig {
    pub(crate) fn on_cluster(&self) -> String {
        match &self.topology {
            Topology::SingleNode => String::new(),
            Topology::Cluster(name) => format!(" ON CLUSTER '{name}'"),
        }
    }

    fn substitute(&self, sql: &str) -> String {
        sql.replace("$db", &self.database)
            .replace("$retention", &self.retention_days.to_string())
    }

    /// The physical table a name refers to on one node: `name_local` on a cluster.
    pub(crate) fn local_name(&self, table: &Table) -> String {
        match (&self.topology, table.everywhere) {
            (Topology::Cluster(_), false) => format!("{}_local", table.name),
            _ => table.name.to_string(),
        }
    }

    pub(crate) fn create_database(&self) -> String {
        format!(
            "CREATE DATABASE IF NOT EXISTS {}{}",
            self.database,
            self.on_cluster()
        )
    }

    /// `CREATE TABLE` statements for one table: the table itself on a single node; the
    /// replicated local table and the Distributed table in front of it on a cluster.
    pub(crate) fn create_table(&self, table: &Table) -> Vec<String> {
        let db = &self.database;
        let local = self.local_name(table);
        let mut engine = table.engine.to_string();
        let mut args: Vec<String> = Vec::new();
        let dedup = match &self.topology {
            Topology::SingleNode => format!("non_replicated_deduplication_window = {DEDUP_WINDOW}"),
            Topology::Cluster(_) => {
                let shard = if table.everywhere { "all" } else { "{shard}" };
                engine = format!("Replicated{engine}");
                args.push(format!("'/clickhouse/tables/{shard}/{db}/{}'", table.name));
                args.push("'{replica}'".into());
                format!("replicated_deduplication_window = {DEDUP_WINDOW}")
            }
        };
        if !table.engine_args.is_empty() {
            args.push(table.engine_args.into());
        }
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {db}.{local}{} ({})\nENGINE = {engine}({})",
            self.on_cluster(),
            table.columns.trim_end(),
            args.join(", ")
        );
        if let Some(partition) = table.partition_by {
            sql += &format!("\nPARTITION BY {partition}");
        }
        sql += &format!("\nORDER BY ({})", table.order_by);
        if let Some(ttl) = table.ttl {
            sql += &format!("\nTTL {}", self.substitute(ttl));
        }
        let settings: Vec<&str> = [dedup.as_str(), table.settings]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        sql += &format!("\nSETTINGS {}", settings.join(", "));

        let mut statements = vec![sql];
        if let Topology::Cluster(cluster) = &self.topology
            && !table.everywhere
        {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{name}{on} AS {db}.{local}\n\
                 ENGINE = Distributed('{cluster}', '{db}', '{local}', {key})",
                name = table.name,
                on = self.on_cluster(),
                key = table.shard_key,
            ));
        }
        statements
    }

    /// A materialized view reading the node's local raw table and writing its local rollup, so
    /// that each shard aggregates its own tenants.
    pub(crate) fn create_view(&self, view: &View) -> String {
        let db = &self.database;
        let source_table = table_by_name(view.source);
        let target_table = table_by_name(view.target);
        let source = format!("{db}.{}", self.local_name(source_table));
        let kind = if view.target.starts_with("task_run") {
            "task-run"
        } else {
            "flow-run"
        };
        let run_events = RUN_STATE_EVENTS.replace("$kind", kind);
        let select = view
            .select
            .replace("$flow_run_events", &run_events)
            .replace("$run_events", &run_events)
            .replace("$source", &source);
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{}{} TO {db}.{}\nAS {}",
            view.name,
            self.on_cluster(),
            self.local_name(target_table),
            select
        )
    }

    /// The TTL expression a table should have, for reconciling retention.
    pub(crate) fn ttl_of(&self, table: &Table) -> Option<String> {
        table.ttl.map(|ttl| self.substitute(ttl))
    }
}

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

pub(crate) fn table_by_name(name: &str) -> &'static Table {
    TABLES
        .iter()
        .find(|table| table.name == name)
        .unwrap_or_else(|| panic!("no table named {name} in the schema"))
}

/// Tables whose TTL follows the configured retention.
pub(crate) fn retained_tables() -> impl Iterator<Item = &'static Table> {
    TABLES
        .iter()
        .copied()
        .filter(|table| table.ttl.is_some_and(|ttl| ttl.contains("$retention")))
}
