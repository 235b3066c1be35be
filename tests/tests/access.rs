//! The query API's read-only user and the tenant row policies (`flowhouse_schema::access`).
//!
//! The local engine has one user and no access control, so, like the cluster DDL, the
//! statements are checked by having the engine parse them (`formatQuery`) and by comparing
//! what they cover with the tables of the printed schema as the engine reads them: every
//! table ordered by tenant gets SELECT and both policies, no other table is readable.

use std::collections::BTreeSet;
use std::process::Output;

use flowhouse_schema::access::{
    ACCOUNT_SETTING, OTHERS_POLICY, READER_ROLE, TENANT_POLICY, WORKSPACE_SETTING,
};
use flowhouse_tests::{Stack, flowhouse_binary, unique_name};

const PASSWORD: &str = "a reader's password";

async fn flowhouse(stack: &Stack, database: &str, args: &[&str], password: bool) -> Output {
    let mut command = tokio::process::Command::new(flowhouse_binary());
    command
        .args(args)
        .env("CLICKHOUSE_URL", &stack.clickhouse.url)
        .env("CLICKHOUSE_USER", &stack.clickhouse.user)
        .env("CLICKHOUSE_PASSWORD", &stack.clickhouse.password)
        .env("CLICKHOUSE_DATABASE", database)
        .env("FLOWHOUSE_LOG_FORMAT", "text")
        .env_remove("FLOWHOUSE_READER_PASSWORD");
    if password {
        command.env("FLOWHOUSE_READER_PASSWORD", PASSWORD);
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
    let mut args = vec!["migrate", "--print", "--reader-user", "flowhouse_query"];
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
        if statement.starts_with("GRANT") && statement.contains("SELECT") {
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
    let user: Vec<_> = statements
        .iter()
        .filter(|s| {
            (s.starts_with("CREATE USER") || s.starts_with("ALTER USER"))
                && s.contains("IDENTIFIED")
        })
        .collect();
    assert_eq!(user.len(), 2, "CREATE USER and ALTER USER: {user:?}");
    assert!(
        statements
            .iter()
            .any(|s| s.starts_with("ALTER USER")
                && s.ends_with(&format!("DEFAULT ROLE {READER_ROLE}"))),
        "the role is the user's default"
    );
    let on = on_cluster.as_deref().unwrap_or("");
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
