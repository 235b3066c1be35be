//! `flowhouse migrate` against the real engine:
//! - the cluster rendering (`flowhouse migrate --print --cluster NAME`) cannot run here (no
//!   Keeper, no `remote_servers`), so every statement is parsed by the engine with
//!   `formatQuery` and checked for what a cluster needs: `ON CLUSTER`, Replicated engines with
//!   one Keeper path each, a Distributed table in front of every sharded one, views between
//!   local tables;
//! - two `flowhouse migrate` started together on a fresh database both succeed and leave each
//!   migration recorded once;
//! - a database at every earlier version, holding events and log lines, upgrades to the latest:
//!   every event kept, each log line stored once under the id today's ingest gives it (the SQL
//!   of the upgrade and the Rust of ingest agree), the rollups rebuilt (a heartbeat is no
//!   state, a replayed line counts once) and fed by the new definitions afterwards, the shape of
//!   a fresh database; also after an upgrade that crashed halfway.
//!
//! `deploy/compose` runs a single node and references no rendered cluster SQL file, so there is
//! no checked-in rendering to compare with.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use flowhouse_schema::Tenant;
use flowhouse_schema::ddl::{SchemaConfig, Topology, schema_objects};
use flowhouse_schema::migrate::{Step, apply, apply_up_to, full_schema, migrations};
use flowhouse_schema::rows::{EventRow, LogRow, log_content_id};
use flowhouse_tests::{Stack, flowhouse_binary, unique_name};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const CLUSTER: &str = "flowhouse_cluster";
const DATABASE: &str = "flowhouse";
/// Tables with one full copy on every node instead of shards (`Table::everywhere` in ddl.rs).
const EVERYWHERE: &[&str] = &[
    "schema_migrations",
    "ingest_batches",
    "mirror_checkpoints",
    "automation_leases",
    "automation_stream_checkpoints",
];

fn config(topology: Topology) -> SchemaConfig {
    SchemaConfig {
        database: DATABASE.into(),
        topology,
        retention_days: 30,
    }
}

/// The engine's canonical text of `sql`; fails with the engine's error if it does not parse.
async fn format_query(client: &clickhouse::Client, sql: &str) -> String {
    client
        .query("SELECT formatQuery({q:String})")
        .param("q", sql)
        .fetch_one::<String>()
        .await
        .unwrap_or_else(|error| panic!("the engine cannot parse:\n{sql}\n\n{error}"))
}

/// `flowhouse <args>` with the stack's ClickHouse and `database`, to completion.
async fn flowhouse(stack: &Stack, database: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(flowhouse_binary())
        .args(args)
        .env("CLICKHOUSE_URL", &stack.clickhouse.url)
        .env("CLICKHOUSE_USER", &stack.clickhouse.user)
        .env("CLICKHOUSE_PASSWORD", &stack.clickhouse.password)
        .env("CLICKHOUSE_DATABASE", database)
        .env("FLOWHOUSE_LOG_FORMAT", "text")
        .output()
        .await
        .expect("run flowhouse")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The first argument of a Replicated engine: the table's path in Keeper.
fn keeper_path(formatted: &str) -> &str {
    let args = formatted
        .split_once("MergeTree('")
        .unwrap_or_else(|| panic!("a Replicated*MergeTree engine with a path in:\n{formatted}"))
        .1;
    &args[..args.find('\'').expect("closing quote")]
}

/// `Distributed('cluster', 'db', 'local', key)`: the local table it reads.
fn distributed_local(formatted: &str) -> Option<&str> {
    let args = formatted.split_once("Distributed(")?.1;
    args.split('\'').nth(5)
}

/// The `db.name` right after `words` (e.g. `CREATE TABLE IF NOT EXISTS`) in a statement.
fn name_after<'a>(formatted: &'a str, words: &str) -> Option<&'a str> {
    formatted
        .strip_prefix(words)?
        .split_whitespace()
        .next()?
        .strip_prefix(&format!("{DATABASE}."))
}

/// The tables a query reads (`FROM db.name`).
fn read_tables(formatted: &str) -> Vec<&str> {
    formatted
        .split(&format!("FROM {DATABASE}."))
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
        })
        .collect()
}

#[tokio::test]
async fn the_cluster_schema_parses_in_the_engine_with_its_cluster_clauses() {
    let stack = Stack::from_env();
    let client = stack.clickhouse.server_client();
    let statements = full_schema(&config(Topology::Cluster(CLUSTER.into())));

    // What operators run on a cluster is what `migrate --print --cluster` prints.
    let printed = flowhouse(
        &stack,
        DATABASE,
        &["migrate", "--print", "--cluster", CLUSTER],
    )
    .await;
    assert!(printed.status.success(), "{}", describe(&printed));
    let expected: String = statements.iter().map(|s| format!("{s};\n\n")).collect();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), expected);

    let on_cluster = format!("ON CLUSTER {CLUSTER}");
    let mut keeper_paths = BTreeSet::new();
    let mut sharded_locals = BTreeSet::new();
    let mut distributed = BTreeSet::new();
    let mut everywhere_tables = BTreeSet::new();
    let (mut views, mut inserts, mut exchanges) = (0, 0, 0);
    for statement in &statements {
        let formatted = format_query(&client, statement).await;
        assert_eq!(
            format_query(&client, &formatted).await,
            formatted,
            "the engine's text of a statement must parse back to itself"
        );
        if formatted.starts_with("INSERT INTO") {
            // A rebuild's fill: through the Distributed tables, which spread rows by tenant
            // exactly as the source is spread, synchronously.
            inserts += 1;
            let target = name_after(&formatted, "INSERT INTO").expect("a target");
            assert!(
                !target.contains("_local"),
                "fill writes {target}:\n{formatted}"
            );
            assert!(
                formatted.contains("distributed_foreground_insert = 1"),
                "{formatted}"
            );
            for table in read_tables(&formatted) {
                assert!(
                    !table.contains("_local"),
                    "fill reads {table}:\n{formatted}"
                );
            }
            continue;
        }
        assert!(
            formatted.contains(&on_cluster),
            "missing `{on_cluster}`:\n{formatted}"
        );
        if formatted.starts_with("CREATE DATABASE")
            || formatted.starts_with("DROP")
            || (formatted.starts_with("ALTER TABLE") && !formatted.contains("MODIFY QUERY"))
        {
            continue;
        }
        if formatted.starts_with("EXCHANGE TABLES") {
            exchanges += 1;
            assert!(
                formatted.matches("_local").count() == 2,
                "a rebuild swaps local tables:\n{formatted}"
            );
            continue;
        }
        if formatted.starts_with("CREATE MATERIALIZED VIEW") || formatted.contains("MODIFY QUERY") {
            // Each shard aggregates (or copies) its own tenants: local table to local table.
            if formatted.starts_with("CREATE") {
                views += 1;
                let target = formatted
                    .split_once(" TO ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .expect("a TO table");
                assert!(
                    target.contains("_local"),
                    "view writes {target}:\n{formatted}"
                );
            }
            let read = read_tables(&formatted);
            assert!(
                read.iter()
                    .any(|t| *t == "events_local" || *t == "logs_local"),
                "view does not read a local raw table:\n{formatted}"
            );
            continue;
        }
        let name = name_after(&formatted, "CREATE TABLE IF NOT EXISTS")
            .unwrap_or_else(|| panic!("unexpected statement:\n{formatted}"))
            .to_string();
        if formatted.contains("ENGINE = Distributed(") {
            let local = distributed_local(&formatted)
                .expect("a local table")
                .to_string();
            assert!(
                formatted.contains(&format!(
                    "Distributed('{CLUSTER}', '{DATABASE}', '{local}', cityHash64(workspace_id))"
                )),
                "{name} must spread rows over {local} by tenant:\n{formatted}"
            );
            assert_eq!(
                local.replace("_local", ""),
                name,
                "a Distributed table is named as its local table without _local"
            );
            distributed.insert(local);
            continue;
        }
        assert!(
            formatted.contains("ENGINE = Replicated") && formatted.contains("'{replica}'"),
            "{name} is not replicated:\n{formatted}"
        );
        let path = keeper_path(&formatted).to_string();
        let everywhere = EVERYWHERE.contains(&name.as_str());
        assert_eq!(
            path.contains("{shard}"),
            !everywhere,
            "{name}: sharded tables keep one Keeper path per shard, tables on every node one \
             path in all: {path}"
        );
        assert!(
            keeper_paths.insert(path.clone()),
            "two tables share the Keeper path {path}"
        );
        if everywhere {
            everywhere_tables.insert(name);
        } else {
            assert!(
                name.contains("_local"),
                "sharded table {name} is not _local"
            );
            sharded_locals.insert(name);
        }
    }
    assert_eq!(
        distributed, sharded_locals,
        "every sharded local table, and only those, has a Distributed table in front"
    );
    assert_eq!(
        everywhere_tables,
        EVERYWHERE
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(keeper_paths.len(), sharded_locals.len() + EVERYWHERE.len());
    let rebuilds: usize = migrations()
        .iter()
        .flat_map(|m| m.steps(&config(Topology::Cluster(CLUSTER.into()))))
        .filter(|step| matches!(step, Step::Rebuild(_)))
        .count();
    assert_eq!(
        views,
        4 + rebuilds,
        "the four rollup views and one feed per rebuild"
    );
    assert_eq!((inserts, exchanges), (rebuilds, rebuilds));

    // The single-node rendering says nothing of a cluster.
    for statement in full_schema(&config(Topology::SingleNode)) {
        for word in ["ON CLUSTER", "Replicated", "Distributed", "_local"] {
            assert!(!statement.contains(word), "{word} in:\n{statement}");
        }
    }
}

#[derive(Row, Deserialize)]
struct Recorded {
    version: u32,
    checksum: String,
    rows: u64,
}

#[tokio::test]
async fn two_migrates_at_once_on_a_fresh_database_both_succeed_and_record_each_migration_once() {
    let stack = Stack::from_env();
    let database = unique_name("migrate_race");
    let (first, second) = tokio::join!(
        flowhouse(&stack, &database, &["migrate"]),
        flowhouse(&stack, &database, &["migrate"]),
    );
    let mut applied = 0;
    for output in [&first, &second] {
        assert!(output.status.success(), "{}", describe(output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.contains("applied [") {
            applied += 1;
        } else {
            assert!(stdout.contains("nothing to apply"), "{}", describe(output));
        }
    }
    assert!(applied >= 1, "neither process applied the migrations");

    let client = stack.clickhouse_client(&database);
    // FINAL: two processes that both applied may both have inserted the record; the table
    // replaces on `version`, which is how `migrate` reads it.
    let recorded: Vec<Recorded> = client
        .query(
            "SELECT version, any(checksum) AS checksum, count() AS rows \
             FROM schema_migrations FINAL GROUP BY version ORDER BY version",
        )
        .fetch_all()
        .await
        .expect("read schema_migrations");
    let expected: Vec<(u32, String, u64)> = migrations()
        .iter()
        .map(|m| (m.version, m.checksum(), 1))
        .collect();
    let actual: Vec<(u32, String, u64)> = recorded
        .into_iter()
        .map(|r| (r.version, r.checksum, r.rows))
        .collect();
    assert_eq!(actual, expected);

    // Every table and view of the schema exists, whichever process created it, and nothing
    // else (no half-built rebuild, no lock left behind).
    assert_eq!(
        objects(&client, &database).await,
        schema_objects(&config(Topology::SingleNode)),
        "tables and views in {database}"
    );

    // And a later run finds nothing to do.
    let again = flowhouse(&stack, &database, &["migrate"]).await;
    assert!(again.status.success(), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to apply"),
        "{}",
        describe(&again)
    );
    eprintln!("{applied} of 2 concurrent runs applied the migrations");
    client
        .query(&format!("DROP DATABASE {database}"))
        .execute()
        .await
        .expect("drop the test database");
}

/// The tables and views of `database`, sorted.
async fn objects(client: &clickhouse::Client, database: &str) -> Vec<String> {
    client
        .query("SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name")
        .param("db", database)
        .fetch_all()
        .await
        .expect("list tables")
}

/// A log line as every version's `logs` accepts it: without an id (revision 2 computes it).
#[derive(Row, Serialize, Clone)]
struct OldLog {
    #[serde(with = "clickhouse::serde::uuid")]
    account_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    workspace_id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    timestamp: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    received: DateTime<Utc>,
    level: u8,
    name: String,
    message: String,
    #[serde(with = "clickhouse::serde::uuid::option")]
    flow_run_id: Option<Uuid>,
    #[serde(with = "clickhouse::serde::uuid::option")]
    task_run_id: Option<Uuid>,
    #[serde(with = "clickhouse::serde::uuid::option")]
    worker_id: Option<Uuid>,
}

impl OldLog {
    /// The id the current ingest gives this line.
    fn content_id(&self) -> Uuid {
        self.as_row().id
    }

    fn as_row(&self) -> LogRow {
        let mut row = LogRow {
            account_id: self.account_id,
            workspace_id: self.workspace_id,
            timestamp: self.timestamp,
            id: Uuid::nil(),
            received: self.received,
            level: self.level,
            name: self.name.clone(),
            message: self.message.clone(),
            flow_run_id: self.flow_run_id,
            task_run_id: self.task_run_id,
            worker_id: self.worker_id,
        };
        row.id = log_content_id(&row);
        row
    }
}

/// Events and log lines of one tenant, as stored before an upgrade, from what a real Prefect
/// 3.8.8 emits: flow runs whose latest event is a heartbeat (one still running, one heartbeating
/// once more after it completed), a worker's `pull-step.executed` and a `Submitting` state (type
/// PENDING), a run that failed, a task run, and log lines one of which was stored twice (a
/// replay, received later).
struct Fixture {
    tenant: Tenant,
    t0: DateTime<Utc>,
    events: Vec<EventRow>,
    logs: Vec<OldLog>,
    runs: [Uuid; 3],
}

fn run_event(
    tenant: Tenant,
    kind: &str,
    run: Uuid,
    state: &str,
    state_type: Option<&str>,
    at: DateTime<Utc>,
) -> EventRow {
    let mut resource = vec![
        (
            "prefect.resource.id".to_string(),
            format!("prefect.{kind}.{run}"),
        ),
        ("prefect.resource.name".to_string(), format!("run-{run}")),
    ];
    if let Some(state_type) = state_type {
        resource.push(("prefect.state-type".into(), state_type.into()));
        resource.push(("prefect.state-name".into(), state.into()));
    }
    let payload = match state_type {
        Some("SCHEDULED") => serde_json::json!({"validated_state": {"type": "SCHEDULED",
            "state_details": {"scheduled_time": at.to_rfc3339()}}}),
        _ => serde_json::json!({}),
    };
    EventRow {
        account_id: tenant.account_id,
        workspace_id: tenant.workspace_id,
        occurred: at,
        id: Uuid::new_v4(),
        received: at,
        event: format!("prefect.{kind}.{state}"),
        resource,
        related: vec![vec![
            ("prefect.resource.id".into(), "prefect.flow.f1".into()),
            ("prefect.resource.role".into(), "flow".into()),
        ]],
        payload: payload.to_string(),
        follows: None,
    }
}

impl Fixture {
    fn new() -> Self {
        let tenant = Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        };
        let hour = Utc::now().timestamp() / 3600 * 3600 - 3 * 3600;
        let t0 = DateTime::from_timestamp(hour, 0).unwrap();
        let s = |n: i64| t0 + chrono::Duration::seconds(n);
        let [running, completed, failed] = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        let task = Uuid::new_v4();
        let flow = |run, state, ty, at| run_event(tenant, "flow-run", run, state, ty, at);
        let events = vec![
            flow(running, "Pending", Some("PENDING"), s(0)),
            flow(running, "Running", Some("RUNNING"), s(1)),
            flow(running, "heartbeat", None, s(30)),
            flow(completed, "Scheduled", Some("SCHEDULED"), s(0)),
            flow(completed, "pull-step.executed", None, s(5)),
            flow(completed, "Submitting", Some("PENDING"), s(5)),
            flow(completed, "Pending", Some("PENDING"), s(6)),
            flow(completed, "Running", Some("RUNNING"), s(7)),
            flow(completed, "heartbeat", None, s(8)),
            flow(completed, "Completed", Some("COMPLETED"), s(9)),
            flow(completed, "heartbeat", None, s(10)),
            flow(failed, "Running", Some("RUNNING"), s(2)),
            flow(failed, "Failed", Some("FAILED"), s(3)),
            run_event(tenant, "task-run", task, "Running", Some("RUNNING"), s(2)),
            run_event(
                tenant,
                "task-run",
                task,
                "Completed",
                Some("COMPLETED"),
                s(4),
            ),
        ];
        let log = |level: u8, message: &str, run: Option<Uuid>, at: DateTime<Utc>| OldLog {
            account_id: tenant.account_id,
            workspace_id: tenant.workspace_id,
            timestamp: at,
            received: at + chrono::Duration::seconds(1),
            level,
            name: "prefect.flow_runs".into(),
            message: message.into(),
            flow_run_id: run,
            task_run_id: None,
            worker_id: None,
        };
        let first = log(20, "Beginning flow run", Some(running), s(0));
        let mut replay = first.clone();
        replay.received = s(3600);
        let logs = vec![
            first,
            log(30, "Task run failed, retrying", Some(running), s(1)),
            log(20, "Worker started", None, s(2)),
            replay,
        ];
        Self {
            tenant,
            t0,
            events,
            logs,
            runs: [running, completed, failed],
        }
    }

    async fn store(&self, client: &clickhouse::Client) {
        let mut insert = client.insert::<EventRow>("events").await.unwrap();
        for event in &self.events {
            insert.write(event).await.unwrap();
        }
        insert.end().await.unwrap();
        // One insert per line: a replay arrives in another block.
        for line in &self.logs {
            let mut insert = client.insert::<OldLog>("logs").await.unwrap();
            insert.write(line).await.unwrap();
            insert.end().await.unwrap();
        }
    }
}

#[derive(Row, Deserialize, Debug, PartialEq)]
struct RunState {
    run: String,
    last: String,
    last_type: String,
    final_name: String,
}

#[derive(Row, Deserialize, Debug, PartialEq, PartialOrd, Ord, Eq)]
struct StoredLog {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    message: String,
}

/// What the upgraded database answers, read the way the query API reads it.
#[derive(Debug, PartialEq)]
struct Answers {
    event_ids: Vec<String>,
    logs: Vec<StoredLog>,
    log_levels: Vec<(u8, u64)>,
    runs: Vec<RunState>,
    flow_states: Vec<(String, u64)>,
    task_states: Vec<(String, u64)>,
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

async fn answers(client: &clickhouse::Client, tenant: Tenant) -> Answers {
    let q = |sql: &str| {
        client
            .query(sql)
            .param("a", tenant.account_id)
            .param("w", tenant.workspace_id)
    };
    let tenant_is = "account_id = {a:UUID} AND workspace_id = {w:UUID}";
    Answers {
        event_ids: sorted(
            q(&format!(
                "SELECT toString(id) FROM events FINAL WHERE {tenant_is}"
            ))
            .fetch_all()
            .await
            .unwrap(),
        ),
        logs: sorted(
            q(&format!(
                "SELECT id, message FROM logs FINAL WHERE {tenant_is}"
            ))
            .fetch_all()
            .await
            .unwrap(),
        ),
        log_levels: q(&format!(
            "SELECT level, toUInt64(uniqExactMerge(log_ids)) FROM log_counts_hourly
             WHERE {tenant_is} GROUP BY level ORDER BY level"
        ))
        .fetch_all()
        .await
        .unwrap(),
        runs: q(&format!(
            "SELECT flow_run_id AS run, argMaxMerge(last_state) AS last,
                    argMaxMerge(last_state_type) AS last_type,
                    argMaxIfMerge(final_state) AS final_name
             FROM flow_runs WHERE {tenant_is} GROUP BY flow_run_id ORDER BY flow_run_id"
        ))
        .fetch_all()
        .await
        .unwrap(),
        flow_states: q(&format!(
            "SELECT state_name, toUInt64(uniqExactMerge(runs)) FROM flow_run_states_hourly
             WHERE {tenant_is} GROUP BY state_name ORDER BY state_name"
        ))
        .fetch_all()
        .await
        .unwrap(),
        task_states: q(&format!(
            "SELECT state_name, toUInt64(uniqExactMerge(runs)) FROM task_run_states_hourly
             WHERE {tenant_is} GROUP BY state_name ORDER BY state_name"
        ))
        .fetch_all()
        .await
        .unwrap(),
    }
}

/// What the fixture must answer after the upgrade: every event kept; each log line once, under
/// the id ingest gives it; log volume by distinct line; runs under their latest *state*.
fn expected(fixture: &Fixture, extra_logs: &[(Uuid, &str, u8)]) -> Answers {
    let event_ids = sorted(fixture.events.iter().map(|e| e.id.to_string()).collect());
    let mut logs: Vec<StoredLog> = fixture.logs[..3]
        .iter()
        .map(|l| StoredLog {
            id: l.content_id(),
            message: l.message.clone(),
        })
        .chain(extra_logs.iter().map(|(id, message, _)| StoredLog {
            id: *id,
            message: message.to_string(),
        }))
        .collect();
    logs.sort();
    let info = 2 + extra_logs
        .iter()
        .filter(|(_, _, level)| *level == 20)
        .count() as u64;
    let [running, completed, failed] = fixture.runs;
    let mut runs = vec![
        (running, "Running", "RUNNING", ""),
        (completed, "Completed", "COMPLETED", "Completed"),
        (failed, "Failed", "FAILED", "Failed"),
    ]
    .into_iter()
    .map(|(run, last, last_type, final_name)| RunState {
        run: run.to_string(),
        last: last.into(),
        last_type: last_type.into(),
        final_name: final_name.into(),
    })
    .collect::<Vec<_>>();
    runs.sort_by(|a, b| a.run.cmp(&b.run));
    let flow_states = [
        ("Completed", 1),
        ("Failed", 1),
        ("Pending", 2),
        ("Running", 3),
        ("Scheduled", 1),
        ("Submitting", 1),
    ]
    .map(|(s, n)| (s.to_string(), n))
    .to_vec();
    Answers {
        event_ids,
        logs,
        log_levels: vec![(20, info), (30, 1)],
        runs,
        flow_states,
        task_states: vec![("Completed".into(), 1), ("Running".into(), 1)],
    }
}

/// Columns (name, type, default) and engine of every table: the shape a database ended in.
async fn shape(client: &clickhouse::Client, database: &str) -> Vec<String> {
    client
        .query(
            "SELECT concat(t.name, ' ', t.engine, ' ', t.sorting_key, ' ', t.partition_key, ' ',
                           t.comment, ' ', arrayStringConcat(arraySort(groupArray(
                               concat(c.name, ':', c.type, ':', c.default_expression))), ','))
             FROM system.tables AS t LEFT JOIN system.columns AS c
               ON c.database = t.database AND c.table = t.name
             WHERE t.database = {db:String}
             GROUP BY t.name, t.engine, t.sorting_key, t.partition_key, t.comment
             ORDER BY t.name",
        )
        .param("db", database)
        .fetch_all()
        .await
        .expect("read the shape")
}

/// Runs the phases of the `index`-th rebuild of migration 2 named in `phases`, as a `migrate`
/// that crashed right after them would have.
async fn run_partially(
    client: &clickhouse::Client,
    config: &SchemaConfig,
    index: usize,
    phases: &[&str],
) {
    let steps = migrations()[1].steps(config);
    let Step::Rebuild(rebuild) = &steps[index] else {
        panic!("step {index} of migration 2 is not a rebuild");
    };
    for phase in phases {
        let statements = match *phase {
            "prepare" => &rebuild.prepare,
            "build" => &rebuild.build,
            "fill" => &rebuild.fill,
            "switch" => &rebuild.switch,
            other => panic!("no phase {other}"),
        };
        for statement in statements {
            client.query(statement).execute().await.expect(statement);
        }
    }
}

#[tokio::test]
async fn every_earlier_version_upgrades_with_its_data_kept_and_its_rollups_rebuilt() {
    let stack = Stack::from_env();
    let server = stack.clickhouse.server_client();
    let latest = migrations().len() as u32;
    let fresh = unique_name("migrate_fresh");
    let fresh_config = SchemaConfig {
        database: fresh.clone(),
        ..config(Topology::SingleNode)
    };
    apply(&server, &fresh_config)
        .await
        .expect("migrate a fresh database");
    let fresh_shape = shape(&server, &fresh).await;

    // From each earlier version; from version 1 also an upgrade that crashed halfway before
    // (in the middle of one rebuild, and between the switch and the cleanup of another).
    let mut cases: Vec<(u32, bool)> = (1..latest).map(|v| (v, false)).collect();
    cases.push((1, true));
    for (from, interrupted) in cases {
        let started = Instant::now();
        let database = unique_name(&format!("migrate_from_v{from}"));
        let config = SchemaConfig {
            database: database.clone(),
            ..config(Topology::SingleNode)
        };
        apply_up_to(&server, &config, from)
            .await
            .expect("migrate to the old version");
        let client = stack.clickhouse_client(&database);
        let fixture = Fixture::new();
        fixture.store(&client).await;

        if from == 1 {
            // What version 1 answered: the bugs migration 2 fixes.
            let [running, ..] = fixture.runs;
            let last: String = client
                .query("SELECT argMaxMerge(last_state) FROM flow_runs WHERE flow_run_id = ?")
                .bind(running.to_string())
                .fetch_one()
                .await
                .unwrap();
            assert_eq!(last, "heartbeat", "version 1 takes a heartbeat for a state");
            let lines: u64 = client
                .query("SELECT sum(logs) FROM log_counts_hourly WHERE workspace_id = ?")
                .bind(fixture.tenant.workspace_id)
                .fetch_one()
                .await
                .unwrap();
            assert_eq!(lines, 4, "version 1 counts the replayed line twice");
        }
        if interrupted {
            run_partially(&server, &config, 0, &["prepare", "build", "fill"]).await;
            run_partially(&server, &config, 2, &["prepare", "build", "fill", "switch"]).await;
        }

        let applied = apply(&server, &config).await.expect("upgrade");
        // A new client: the crate caches each table's columns, and `logs` has new ones.
        let client = stack.clickhouse_client(&database);
        assert_eq!(applied, ((from + 1)..=latest).collect::<Vec<_>>());
        let mut answered = answers(&client, fixture.tenant).await;
        assert_eq!(answered, expected(&fixture, &[]), "from version {from}");

        // The rebuilt tables are live: new data flows through the rebuilt views.
        let [running, _, failed] = fixture.runs;
        let later = fixture.t0 + chrono::Duration::seconds(60);
        let mut insert = client.insert::<EventRow>("events").await.unwrap();
        for event in [
            run_event(fixture.tenant, "flow-run", failed, "heartbeat", None, later),
            run_event(
                fixture.tenant,
                "flow-run",
                running,
                "heartbeat",
                None,
                later,
            ),
        ] {
            insert.write(&event).await.unwrap();
        }
        insert.end().await.unwrap();
        // The first line once more, through today's ingest (same content: same id), and a line
        // with Prefect's id, twice.
        let prefect_id = Uuid::new_v4();
        let mut with_id = fixture.logs[2].as_row();
        with_id.id = prefect_id;
        with_id.message = "from Prefect".into();
        for row in [fixture.logs[0].as_row(), with_id.clone(), with_id] {
            let mut insert = client.insert::<LogRow>("logs").await.unwrap();
            insert.write(&row).await.unwrap();
            insert.end().await.unwrap();
        }
        answered = answers(&client, fixture.tenant).await;
        let mut want = expected(&fixture, &[(prefect_id, "from Prefect", 20)]);
        answered.event_ids.clear();
        want.event_ids.clear();
        assert_eq!(answered, want, "after the upgrade from version {from}");

        assert_eq!(
            shape(&server, &database).await,
            fresh_shape,
            "the upgraded database has the shape of a fresh one"
        );
        assert_eq!(objects(&client, &database).await, schema_objects(&config));
        assert!(apply(&server, &config).await.unwrap().is_empty());
        eprintln!(
            "upgrade from version {from}{}: {:.1} s",
            if interrupted {
                " (after a crashed run)"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
        server
            .query(&format!("DROP DATABASE {database}"))
            .execute()
            .await
            .unwrap();
    }
    server
        .query(&format!("DROP DATABASE {fresh}"))
        .execute()
        .await
        .unwrap();
}
