//! `flowhouse migrate` against the real engine:
//! - the cluster rendering (`flowhouse migrate --print --cluster NAME`) cannot run here (no
//!   Keeper, no `remote_servers`), so every statement is parsed by the engine with
//!   `formatQuery` and checked for what a cluster needs: `ON CLUSTER`, Replicated engines with
//!   one Keeper path each, a Distributed table in front of every sharded one, views between
//!   local tables;
//! - two `flowhouse migrate` started together on a fresh database both succeed and leave each
//!   migration recorded once.
//!
//! `deploy/compose` runs a single node and references no rendered cluster SQL file, so there is
//! no checked-in rendering to compare with.

use std::collections::BTreeSet;
use std::process::Output;

use clickhouse::Row;
use flowhouse_schema::ddl::{SchemaConfig, Topology};
use flowhouse_schema::migrate::{full_schema, migrations};
use flowhouse_tests::{Stack, flowhouse_binary, unique_name};
use serde::Deserialize;

const CLUSTER: &str = "flowhouse_cluster";
const DATABASE: &str = "flowhouse";
/// Tables with one full copy on every node instead of shards (`Table::everywhere` in ddl.rs).
const EVERYWHERE: &[&str] = &["schema_migrations", "ingest_batches"];

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
    let mut views = 0;
    for statement in &statements {
        let formatted = format_query(&client, statement).await;
        assert_eq!(
            format_query(&client, &formatted).await,
            formatted,
            "the engine's text of a statement must parse back to itself"
        );
        assert!(
            formatted.contains(&on_cluster),
            "missing `{on_cluster}`:\n{formatted}"
        );
        if formatted.starts_with("CREATE DATABASE") {
            continue;
        }
        if formatted.starts_with("CREATE MATERIALIZED VIEW") {
            views += 1;
            // Each shard aggregates its own tenants: local table to local table.
            let target = formatted
                .split_once(" TO ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .expect("a TO table");
            assert!(
                target.ends_with("_local"),
                "view writes {target}:\n{formatted}"
            );
            assert!(
                formatted.contains(&format!("FROM {DATABASE}.events_local"))
                    || formatted.contains(&format!("FROM {DATABASE}.logs_local")),
                "view does not read a local raw table:\n{formatted}"
            );
            continue;
        }
        let name = formatted
            .strip_prefix(&format!("CREATE TABLE IF NOT EXISTS {DATABASE}."))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected statement:\n{formatted}"))
            .to_string();
        if formatted.contains("ENGINE = Distributed(") {
            let local = format!("{name}_local");
            assert!(
                formatted.contains(&format!(
                    "Distributed('{CLUSTER}', '{DATABASE}', '{local}', cityHash64(workspace_id))"
                )),
                "{name} must spread rows over {local} by tenant:\n{formatted}"
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
        if !everywhere {
            assert!(
                name.ends_with("_local"),
                "sharded table {name} is not _local"
            );
            sharded_locals.insert(name);
        }
    }
    assert_eq!(
        distributed, sharded_locals,
        "every sharded local table, and only those, has a Distributed table in front"
    );
    assert_eq!(keeper_paths.len(), sharded_locals.len() + EVERYWHERE.len());
    assert_eq!(views, 4, "the four rollup views");

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

    // Every table and view of the schema exists, whichever process created it.
    let created: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = {db:String}")
        .param("db", &database)
        .fetch_one()
        .await
        .expect("count tables");
    let statements = full_schema(&config(Topology::SingleNode)).len() as u64 - 1;
    assert_eq!(created, statements, "tables and views in {database}");

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
