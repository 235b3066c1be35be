//! The query API's read-only user, the tenant row policies and the automations' user
//! (`flowhouse_schema::access`).
//!
//! The local engine has one user and no access control, so, like the cluster DDL, the
//! statements are checked by having the engine parse them (`formatQuery`) and by comparing
//! what they cover with the tables of the printed schema as the engine reads them: every
//! table ordered by tenant gets SELECT and both policies, no other table is readable; the
//! automations write exactly their own tables and read the events and the flow-run rollup.
//! That the automations need nothing more is checked by running every kind of trigger, a
//! firing and the API's reads in a database that holds only the tables they are granted.

use std::collections::BTreeSet;
use std::process::Output;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flowhouse_automations::clock::ManualClock;
use flowhouse_automations::lease::{LeaseConfig, Leases};
use flowhouse_automations::model::{Automation, Limits, parse_core};
use flowhouse_automations::store::{Sort, Store};
use flowhouse_schema::Tenant;
use flowhouse_schema::access::{
    ACCOUNT_SETTING, AUTOMATIONS_READS, AUTOMATIONS_ROLE, AUTOMATIONS_TABLES, OTHERS_POLICY,
    READER_ROLE, TENANT_POLICY, WORKSPACE_SETTING,
};
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_tests::{Stack, flowhouse_binary, unique_name};
use serde_json::json;
use uuid::Uuid;

const PASSWORD: &str = "a reader's password";
const AUTOMATIONS_PASSWORD: &str = "the automations' password";

async fn flowhouse(stack: &Stack, database: &str, args: &[&str], password: bool) -> Output {
    let mut command = tokio::process::Command::new(flowhouse_binary());
    command
        .args(args)
        .env("CLICKHOUSE_URL", &stack.clickhouse.url)
        .env("CLICKHOUSE_USER", &stack.clickhouse.user)
        .env("CLICKHOUSE_PASSWORD", &stack.clickhouse.password)
        .env("CLICKHOUSE_DATABASE", database)
        .env("FLOWHOUSE_LOG_FORMAT", "text")
        .env_remove("FLOWHOUSE_READER_PASSWORD")
        .env_remove("FLOWHOUSE_AUTOMATIONS_PASSWORD");
    if password {
        command.env("FLOWHOUSE_READER_PASSWORD", PASSWORD);
        // Only with its user: a password alone is refused (`requires`).
        if args.contains(&"--automations-user") {
            command.env("FLOWHOUSE_AUTOMATIONS_PASSWORD", AUTOMATIONS_PASSWORD);
        }
    }
    command.output().await.expect("run flowhouse")
}

/// `statements` as the engine formats them, in one round trip (the bridge answers one query
/// at a time, and the printed schema has well over a hundred statements); when one does not
/// parse, they are asked one by one so that the failure names it.
async fn format_queries(client: &clickhouse::Client, statements: &[String]) -> Vec<String> {
    let all = client
        .query("SELECT arrayMap(q -> formatQuery(q), {qs:Array(String)})")
        .param("qs", statements)
        .fetch_one::<Vec<String>>()
        .await;
    if let Ok(formatted) = all {
        return formatted;
    }
    for sql in statements {
        if let Err(error) = client
            .query("SELECT formatQuery({q:String})")
            .param("q", sql)
            .fetch_one::<String>()
            .await
        {
            panic!("the engine cannot parse:\n{sql}\n\n{error}");
        }
    }
    unreachable!("every statement parses alone but not together: {all:?}")
}

/// The statements of `migrate --print` output, as the engine formats them.
async fn printed_statements(client: &clickhouse::Client, output: &Output) -> Vec<String> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!text.contains(PASSWORD), "the password is printed");
    assert!(
        !text.contains(AUTOMATIONS_PASSWORD),
        "the password is printed"
    );
    let printed: Vec<String> = text
        .split(";\n\n")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let statements = format_queries(client, &printed).await;
    assert_eq!(statements.len(), printed.len());
    let again = format_queries(client, &statements).await;
    for (formatted, reformatted) in statements.iter().zip(&again) {
        assert_eq!(
            reformatted, formatted,
            "the engine's text must parse back to itself"
        );
    }
    statements
}

/// `(table, ORDER BY)` of every table `statements` leave behind: each CREATE TABLE not
/// followed by a DROP of the same table (a migration's rebuild creates `T__next`, exchanges it
/// with `T` and drops it, so it is scaffolding, not a table anyone reads).
fn tables(statements: &[String], database: &str) -> Vec<(String, String)> {
    let name_of = |rest: &str| {
        rest.split(|c: char| c.is_whitespace() || c == '(')
            .next()
            .unwrap()
            .to_string()
    };
    let dropped_after = |index: usize, name: &str| {
        statements[index + 1..].iter().any(|s| {
            s.strip_prefix(&format!("DROP TABLE IF EXISTS {database}."))
                .is_some_and(|rest| name_of(rest) == name)
        })
    };
    statements
        .iter()
        .enumerate()
        .filter_map(|(index, s)| {
            let rest = s.strip_prefix(&format!("CREATE TABLE IF NOT EXISTS {database}."))?;
            let name = name_of(rest);
            let order = rest
                .split_once("ORDER BY ")
                .map(|(_, o)| o.split(" SETTINGS").next().unwrap().to_string())
                .unwrap_or_default();
            (!dropped_after(index, &name)).then_some((name, order))
        })
        .collect()
}

async fn check(stack: &Stack, cluster: Option<&str>) {
    let client = stack.clickhouse.server_client();
    let database = "flowhouse";
    let mut args = vec![
        "migrate",
        "--print",
        "--reader-user",
        "flowhouse_query",
        "--automations-user",
        "flowhouse_automations",
    ];
    if let Some(cluster) = cluster {
        args.extend(["--cluster", cluster]);
    }
    let statements =
        printed_statements(&client, &flowhouse(stack, database, &args, true).await).await;
    let on_cluster = cluster.map(|c| format!(" ON CLUSTER {c}"));

    // What the engine reads from the schema's own CREATE TABLEs: the tables ordered by tenant
    // (a Distributed table stands for its local table, so it counts with it).
    let created = tables(&statements, database);
    let mut tenant_tables = BTreeSet::new();
    let mut other_tables = BTreeSet::new();
    for (name, order) in &created {
        let local_order = created
            .iter()
            .find(|(n, _)| n == &format!("{name}_local"))
            .map(|(_, o)| o.as_str());
        let order = local_order.unwrap_or(order);
        if order.starts_with("(account_id, workspace_id") {
            tenant_tables.insert(name.clone());
        } else {
            other_tables.insert(name.clone());
        }
    }
    assert!(
        tenant_tables.contains("events") && tenant_tables.contains("logs"),
        "{created:?}"
    );
    assert!(other_tables.contains("ingest_batches"));

    let mut granted = BTreeSet::new();
    let mut automations_grants = BTreeSet::new();
    let mut tenant_policies = BTreeSet::new();
    let mut other_policies = BTreeSet::new();
    for statement in statements.iter().filter(|s| {
        s.starts_with("GRANT")
            || s.starts_with("CREATE ROW POLICY")
            || s.contains("USER")
            || s.starts_with("CREATE ROLE")
    }) {
        if let Some(on) = &on_cluster {
            assert!(
                statement.contains(on.as_str()),
                "{on} missing:\n{statement}"
            );
        }
        let target = |s: &str| {
            s.split_once(&format!(" ON {database}."))
                .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        };
        if statement.starts_with("GRANT")
            && statement.contains(&format!(" ON {database}."))
            && statement.ends_with(&format!("TO {AUTOMATIONS_ROLE}"))
        {
            // "GRANT [ON CLUSTER c] SELECT, INSERT ON db.t TO role": the rights and the table,
            // the local table of a cluster standing for its Distributed one.
            let (head, _) = statement
                .split_once(&format!(" ON {database}."))
                .expect("a table");
            let rights = head
                .trim_start_matches("GRANT")
                .trim_start_matches(on_cluster.as_deref().unwrap_or(""))
                .trim()
                .to_string();
            let table = target(statement).expect("a table");
            let table = table.strip_suffix("_local").unwrap_or(&table).to_string();
            automations_grants.insert((table, rights));
        } else if statement.starts_with("GRANT") && statement.contains("SELECT") {
            assert!(
                statement.ends_with(&format!("TO {READER_ROLE}")),
                "{statement}"
            );
            granted.insert(target(statement).expect("a table"));
        } else if statement.contains(&format!("POLICY OR REPLACE {TENANT_POLICY}")) {
            for setting in [ACCOUNT_SETTING, WORKSPACE_SETTING] {
                assert!(
                    statement.contains(&format!("getSetting('{setting}')")),
                    "{setting} not read by:\n{statement}"
                );
            }
            assert!(
                statement.ends_with(&format!("TO {READER_ROLE}")),
                "{statement}"
            );
            tenant_policies.insert(target(statement).expect("a table"));
        } else if statement.contains(&format!("POLICY OR REPLACE {OTHERS_POLICY}")) {
            assert!(statement.contains("USING 1 "), "{statement}");
            assert!(
                statement.ends_with(&format!("TO ALL EXCEPT {READER_ROLE}")),
                "{statement}"
            );
            other_policies.insert(target(statement).expect("a table"));
        }
    }
    assert_eq!(
        granted, tenant_tables,
        "SELECT on exactly the tenant tables"
    );
    assert_eq!(tenant_policies, tenant_tables, "a tenant policy on each");
    assert_eq!(other_policies, tenant_tables, "and the one for other users");
    // The automations: their own tables, every one of them, read and written; the events and
    // the flow-run rollup read; nothing else.
    let own: BTreeSet<String> = created
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| name.starts_with("automation") && !name.ends_with("_local"))
        .collect();
    assert_eq!(
        own,
        AUTOMATIONS_TABLES.iter().map(|t| t.to_string()).collect(),
        "every automations table is the automations' own"
    );
    let mut expected: BTreeSet<(String, String)> = own
        .iter()
        .map(|t| (t.clone(), "SELECT, INSERT".to_string()))
        .collect();
    expected.extend(
        AUTOMATIONS_READS
            .iter()
            .map(|t| (t.to_string(), "SELECT".to_string())),
    );
    assert_eq!(automations_grants, expected);
    assert!(
        AUTOMATIONS_READS.iter().all(|t| tenant_tables.contains(*t)),
        "{AUTOMATIONS_READS:?} are tables of the schema"
    );
    let on = on_cluster.as_deref().unwrap_or("");
    assert!(
        statements.contains(&format!(
            "GRANT{on} {AUTOMATIONS_ROLE} TO flowhouse_automations"
        )),
        "the automations' user holds its role"
    );
    let identified = |name: &str| -> Vec<&String> {
        statements
            .iter()
            .filter(|s| {
                (s.starts_with("CREATE USER") || s.starts_with("ALTER USER"))
                    && s.contains("IDENTIFIED")
                    && s.contains(&format!(" {name}"))
            })
            .collect()
    };
    let automations_user = identified("flowhouse_automations");
    assert_eq!(automations_user.len(), 2, "{automations_user:?}");
    for statement in automations_user {
        assert!(statement.contains("sha256_hash"), "{statement}");
        assert!(!statement.contains("readonly"), "it inserts: {statement}");
    }
    let user = identified("flowhouse_query");
    assert_eq!(user.len(), 2, "CREATE USER and ALTER USER: {user:?}");
    assert!(
        statements
            .iter()
            .any(|s| s.starts_with("ALTER USER")
                && s.ends_with(&format!("DEFAULT ROLE {READER_ROLE}"))),
        "the role is the user's default"
    );
    assert!(
        statements.contains(&format!("GRANT{on} {READER_ROLE} TO flowhouse_query")),
        "the user holds the role"
    );
    for statement in user {
        assert!(statement.contains(" flowhouse_query"), "{statement}");
        assert!(statement.contains("readonly = 2"), "{statement}");
        assert!(statement.contains("sha256_hash"), "{statement}");
    }
}

#[tokio::test]
async fn the_reader_statements_parse_and_cover_exactly_the_tenant_tables() {
    let stack = Stack::from_env();
    check(&stack, None).await;
    check(&stack, Some("flowhouse_cluster")).await;
}

#[tokio::test]
async fn migrate_says_what_is_missing_when_it_cannot_create_the_reader() {
    let stack = Stack::from_env();
    let database = unique_name("access");
    let args = ["migrate", "--reader-user", "flowhouse_query"];

    let no_password = flowhouse(&stack, &database, &args, false).await;
    assert!(!no_password.status.success());
    let stderr = String::from_utf8_lossy(&no_password.stderr);
    assert!(stderr.contains("--reader-password"), "{stderr}");

    let bad_name = flowhouse(
        &stack,
        &database,
        &["migrate", "--reader-user", "x'y"],
        true,
    )
    .await;
    assert!(!bad_name.status.success());
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("letters, digits"));

    // The local engine's single user has no access management: the error says which rights
    // migrate's user needs, after the schema itself was applied.
    let denied = flowhouse(&stack, &database, &args, true).await;
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("access management"), "{stderr}");
    let tables: Vec<String> = stack
        .clickhouse
        .server_client()
        .query("SELECT name FROM system.tables WHERE database = {db:String}")
        .param("db", &database)
        .fetch_all()
        .await
        .unwrap();
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    stack
        .clickhouse
        .server_client()
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await
        .unwrap();
}

/// The automations need nothing but what their role is granted: in a database holding only
/// those tables (the local engine has no access control, so every other table is dropped
/// instead), every kind of trigger is evaluated, one fires and is delivered, and the API's
/// reads answer. A query of any other table would fail with UNKNOWN_TABLE.
#[tokio::test]
async fn the_automations_run_on_the_tables_their_role_is_granted_alone() {
    let stack = Stack::from_env();
    let database = stack.migrated_database("automations_access").await;
    let server = stack.clickhouse.server_client();
    let granted: BTreeSet<&str> = AUTOMATIONS_TABLES
        .iter()
        .chain(AUTOMATIONS_READS)
        .copied()
        .collect();
    // Views first: the events' materialized views would fail inserts into dropped rollups.
    let tables: Vec<(String, String)> = server
        .query(
            "SELECT name, engine FROM system.tables WHERE database = {db:String}
             ORDER BY engine = 'MaterializedView' DESC",
        )
        .param("db", &database)
        .fetch_all()
        .await
        .unwrap();
    for (name, _) in tables.iter().filter(|(n, _)| !granted.contains(n.as_str())) {
        server
            .query(&format!("DROP TABLE {database}.{name}"))
            .execute()
            .await
            .unwrap();
    }
    let client = ClickHouseArgs {
        database: database.clone(),
        ..stack.clickhouse.clone()
    };
    let store = Store::new(client.client());
    let tenant = Tenant {
        account_id: Uuid::new_v4(),
        workspace_id: Uuid::new_v4(),
    };
    let now = Utc::now();
    let flow = json!({"prefect.resource.role": "flow", "prefect.resource.id": "prefect.flow.x"});
    let metric = |name: &str, operator: &str| {
        json!({"type": "metric", "match_related": flow, "metric": {"name": name,
            "operator": operator, "threshold": 1, "range": 300, "firing_for": 300}})
    };
    let triggers = [
        metric("successes", "<"),
        metric("duration", ">"),
        metric("lateness", ">"),
        json!({"type": "event", "expect": ["prefect.flow-run.Crashed"], "threshold": 1,
            "within": 600}),
        json!({"type": "event", "posture": "Proactive", "after": ["prefect.flow-run.Running"],
            "expect": ["prefect.flow-run.Completed"], "for_each": ["prefect.resource.id"],
            "threshold": 1, "within": 600}),
        json!({"type": "event", "posture": "Proactive", "expect": ["prefect.flow-run.Completed"],
            "threshold": 1, "within": 600}),
    ];
    let mut ids = Vec::new();
    for (i, trigger) in triggers.iter().enumerate() {
        let body = json!({"name": format!("trigger {i}"), "trigger": trigger,
            "actions": [{"type": "do-nothing"}]});
        let mut core = parse_core(body.to_string().as_bytes()).expect("a valid automation");
        core.validate(&Limits::default())
            .expect("a valid automation");
        let automation = Automation {
            id: Uuid::now_v7(),
            core,
            created: now,
            updated: now,
        };
        store.put(tenant, &automation, false).await.unwrap();
        ids.push(automation.id);
    }
    let raw = json!({"id": Uuid::new_v4(), "occurred": now.to_rfc3339(),
        "event": "prefect.flow-run.Crashed",
        "resource": {"prefect.resource.id": format!("prefect.flow-run.{}", Uuid::new_v4())}})
    .to_string();
    let topics = flowhouse_schema::contract::TopicArgs {
        events_topic: unique_name("access_events"),
        logs_topic: "unused".into(),
        dlq_topic: "unused".into(),
        topic_partitions: 1,
    };
    flowhouse_service::kafka::ensure_topics(&stack.kafka, &topics.specs()[..1])
        .await
        .unwrap();
    stack
        .produce(&topics.events_topic, &[(tenant, raw.into_bytes())])
        .await;

    let args = flowhouse_automations::Args {
        delay: Duration::ZERO,
        group: unique_name("access"),
        ..flowhouse_automations::Args::default()
    };
    let clock = ManualClock::new(now + chrono::TimeDelta::seconds(1));
    let stream =
        flowhouse_automations::event_stream(&args, &client, &stack.kafka, &topics).unwrap();
    let mut evaluator =
        flowhouse_automations::evaluator(&args, &client, None, Some(stream), Arc::new(clock));
    evaluator.leases = Leases::new(
        client.client(),
        format!("access/{}", Uuid::new_v4()),
        LeaseConfig {
            ttl: Duration::from_secs(30),
            settle: Duration::from_millis(100),
        },
    );
    // A round is short here; the default margin is one webhook's worst case.
    evaluator.config.margin = Duration::from_secs(1);
    evaluator
        .catch_up(Duration::from_secs(60))
        .await
        .expect("the event stream is read");
    let report = evaluator.tick().await.expect("a round");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.evaluated, triggers.len(), "{report:?}");
    // The crash fires the reactive trigger; no completion, the proactive one without `after`.
    assert_eq!(report.fired.len(), 2, "{report:?}");

    // The API's reads.
    assert_eq!(store.count(tenant).await.unwrap(), triggers.len() as u64);
    assert_eq!(
        store
            .list(tenant, Sort::NameAsc, 0, 100)
            .await
            .unwrap()
            .len(),
        triggers.len()
    );
    assert!(store.get(tenant, ids[3]).await.unwrap().is_some());
    let deliveries = store.deliveries(tenant, ids[3], 10).await.unwrap();
    assert!(
        deliveries
            .iter()
            .any(|d| d.action == "do-nothing" && d.outcome == "delivered"),
        "{deliveries:?}"
    );
    let fired: BTreeSet<Uuid> = store
        .last_fired(tenant)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(fired, BTreeSet::from([ids[3], ids[5]]));
    server
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await
        .unwrap();
}
