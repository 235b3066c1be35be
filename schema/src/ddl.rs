//! Flowhouse's ClickHouse schema: one definition per table and view, rendered either for a single
//! node or for a cluster (Replicated* tables, Distributed tables sharded by tenant, `ON CLUSTER`).
//!
//! ## Layout
//! - `events`, `logs`: raw data. `ORDER BY` leads with the tenant, then time, so a tenant's week is
//!   one contiguous range of the primary index; then the event's or line's id, on which both
//!   collapse what was stored twice (ReplacingMergeTree, read with `FINAL`).
//! - `flow_runs`: one row per flow run (AggregatingMergeTree): names, flow / deployment / work
//!   pool, tags, expected start, first Running, last terminal state and its time.
//! - `flow_run_states_hourly`, `task_run_states_hourly`: per tenant, hour, state, flow, deployment
//!   and work pool, the exact set of runs that entered the state (`uniqExact`).
//! - `log_counts_hourly`: the distinct log lines (by id) per tenant, hour, level and flow run.
//! - `ingest_batches` (where each Kafka partition resumes), `mirror_checkpoints` (where each
//!   `flowhouse mirror` resumes), `schema_migrations`: bookkeeping.
//!
//! ## Revisions
//! Each migration that changes a table or a view defines it anew in its own module (`v1` is what
//! migration 1 created, frozen, `v2` what migration 2 rebuilt, ...); [`TABLES`] and [`VIEWS`] are
//! the latest definitions. A table's `revision` is the migration that defined it: from revision 2
//! on it is rendered with `COMMENT 'flowhouse revision N'` (how `migrate` tells a rebuilt table
//! from its predecessor) and, on a cluster, a Keeper path of its own.
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
    /// The migration that defined this table (see "Revisions" above).
    pub revision: u32,
}

/// A materialized view: `$source` (the raw table it reads) and `$db` are substituted, and
/// `$flow_run_events` / `$run_events` by `events` (a subquery over the run's state events, `$kind`
/// the run kind) followed by `events_filter`.
pub(crate) struct View {
    pub name: &'static str,
    pub target: &'static str,
    pub source: &'static str,
    pub events: &'static str,
    pub events_filter: &'static str,
    pub select: &'static str,
}

mod v1;
mod v2;
mod v3;
mod v4;
mod v5;

pub(crate) use v2::LOG_COLUMNS;
pub use v2::log_id_sql;

/// The latest definition of every table, in creation order.
pub(crate) const TABLES: &[&Table] = &[
    &SCHEMA_MIGRATIONS,
    &v1::INGEST_BATCHES,
    &v1::EVENTS,
    &v2::LOGS,
    &v2::FLOW_RUNS,
    &v2::FLOW_RUN_STATES_HOURLY,
    &v1::TASK_RUN_STATES_HOURLY,
    &v2::LOG_COUNTS_HOURLY,
    &v3::MIRROR_CHECKPOINTS,
    &v4::AUTOMATIONS,
    &v4::AUTOMATION_STATE,
    &v4::AUTOMATION_DELIVERIES,
    &v4::AUTOMATION_LEASES,
    &v5::AUTOMATION_STREAM_CHECKPOINTS,
];

/// The latest definition of every view.
pub(crate) const VIEWS: &[&View] = &[
    &v2::FLOW_RUNS_MV,
    &v2::FLOW_RUN_STATES_HOURLY_MV,
    &v1::TASK_RUN_STATES_HOURLY_MV,
    &v2::LOG_COUNTS_HOURLY_MV,
];

pub(crate) use v1::SCHEMA_MIGRATIONS;

/// What each migration creates or rebuilds, for `migrate`.
pub(crate) mod revisions {
    pub(crate) use super::v1::{TABLES as V1_TABLES, VIEWS as V1_VIEWS};
    pub(crate) use super::v2::{
        ADD_LAST_STATE_TYPE, FLOW_RUN_STATES_HOURLY, FLOW_RUN_STATES_HOURLY_MV, FLOW_RUNS,
        FLOW_RUNS_MV, LOG_COUNTS_HOURLY, LOG_COUNTS_HOURLY_MV, LOGS,
    };
    pub(crate) use super::v3::MIRROR_CHECKPOINTS;
    pub(crate) use super::v4::{
        AUTOMATION_DELIVERIES, AUTOMATION_LEASES, AUTOMATION_STATE, AUTOMATIONS,
    };
    pub(crate) use super::v5::AUTOMATION_STREAM_CHECKPOINTS;
}

impl SchemaConfig {
    pub(crate) fn on_cluster(&self) -> String {
        match &self.topology {
            Topology::SingleNode => String::new(),
            Topology::Cluster(name) => format!(" ON CLUSTER '{name}'"),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
    }

    fn substitute(&self, sql: &str) -> String {
        sql.replace("$db", &self.database)
            .replace("$retention", &self.retention_days.to_string())
            .replace("$log_id", &log_id_sql())
    }

    /// The physical table a name refers to on one node: `name_local` on a cluster.
    pub(crate) fn local_name(&self, table: &Table) -> String {
        self.local_name_with(table, "")
    }

    /// [`Self::local_name`] with `suffix` (a table being rebuilt: `flow_runs__next`).
    pub(crate) fn local_name_with(&self, table: &Table, suffix: &str) -> String {
        match (&self.topology, table.everywhere) {
            (Topology::Cluster(_), false) => format!("{}_local{suffix}", table.name),
            _ => format!("{}{suffix}", table.name),
        }
    }

    /// The name queries and inserts use: the Distributed table on a cluster, else the table.
    pub(crate) fn query_name_with(&self, table: &Table, suffix: &str) -> String {
        format!("{}{suffix}", table.name)
    }

    /// Every name a table has on this topology: its local table, and the Distributed table in
    /// front of it on a cluster.
    pub(crate) fn names_with(&self, table: &Table, suffix: &str) -> Vec<String> {
        let local = self.local_name_with(table, suffix);
        let query = self.query_name_with(table, suffix);
        if local == query {
            vec![local]
        } else {
            vec![local, query]
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
        self.create_table_with(table, "")
    }

    /// [`Self::create_table`] under the names with `suffix`.
    pub(crate) fn create_table_with(&self, table: &Table, suffix: &str) -> Vec<String> {
        let db = &self.database;
        let local = self.local_name_with(table, suffix);
        let mut engine = table.engine.to_string();
        let mut args: Vec<String> = Vec::new();
        let dedup = match &self.topology {
            Topology::SingleNode => format!("non_replicated_deduplication_window = {DEDUP_WINDOW}"),
            Topology::Cluster(_) => {
                let shard = if table.everywhere { "all" } else { "{shard}" };
                engine = format!("Replicated{engine}");
                // Keeper keeps a table's path whatever it is renamed to: each revision has its
                // own, so a rebuilt table never meets its predecessor's replicas.
                let revision = match table.revision {
                    1 => String::new(),
                    n => format!("_r{n}"),
                };
                args.push(format!(
                    "'/clickhouse/tables/{shard}/{db}/{}{revision}'",
                    table.name
                ));
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
            self.substitute(table.columns.trim_end()),
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
        if let Some(comment) = revision_comment(table) {
            sql += &format!("\nCOMMENT '{comment}'");
        }

        let mut statements = vec![sql];
        if let Topology::Cluster(cluster) = &self.topology
            && !table.everywhere
        {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{name}{on} AS {db}.{local}\n\
                 ENGINE = Distributed('{cluster}', '{db}', '{local}', {key})",
                name = self.query_name_with(table, suffix),
                on = self.on_cluster(),
                key = table.shard_key,
            ));
        }
        statements
    }

    /// A materialized view reading the node's local raw table and writing its local rollup, so
    /// that each shard aggregates its own tenants.
    pub(crate) fn create_view(&self, view: &View) -> String {
        let target = self.local_name(table_by_name(view.target));
        self.create_view_into(view, view.name, &target)
    }

    /// `view`'s definition under the name `name`, writing into the local table `target`.
    pub(crate) fn create_view_into(&self, view: &View, name: &str, target: &str) -> String {
        let db = &self.database;
        let source = self.local_name(table_by_name(view.source));
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}{} TO {db}.{target}\nAS {}",
            self.on_cluster(),
            self.view_select(view, &source)
        )
    }

    /// Points the existing view `view.name` at `view`'s select (its target stays).
    pub(crate) fn modify_view_query(&self, view: &View) -> String {
        let db = &self.database;
        let source = self.local_name(table_by_name(view.source));
        format!(
            "ALTER TABLE {db}.{}{} MODIFY QUERY\n{}",
            view.name,
            self.on_cluster(),
            self.view_select(view, &source)
        )
    }

    /// The view's SELECT reading `source` (a table name in the database).
    pub(crate) fn view_select(&self, view: &View, source: &str) -> String {
        let kind = if view.target.starts_with("task_run") {
            "task-run"
        } else {
            "flow-run"
        };
        let run_events = format!(
            "{}{}",
            view.events.replace("$kind", kind),
            view.events_filter
        );
        view.select
            .replace("$flow_run_events", &run_events)
            .replace("$run_events", &run_events)
            .replace("$source", &format!("{}.{source}", self.database))
    }

    /// The TTL expression a table should have, for reconciling retention.
    pub(crate) fn ttl_of(&self, table: &Table) -> Option<String> {
        table.ttl.map(|ttl| self.substitute(ttl))
    }
}

/// The comment marking a table's revision (none for revision 1, whose tables have none).
pub(crate) fn revision_comment(table: &Table) -> Option<String> {
    (table.revision > 1).then(|| format!("flowhouse revision {}", table.revision))
}

/// The names of every table and view of the latest schema on one node (what a migrated
/// database holds, nothing more).
pub fn schema_objects(config: &SchemaConfig) -> Vec<String> {
    let mut names = Vec::new();
    for table in TABLES {
        names.extend(config.names_with(table, ""));
    }
    names.extend(VIEWS.iter().map(|view| view.name.to_string()));
    names.sort();
    names
}

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
