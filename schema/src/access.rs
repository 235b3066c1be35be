//! Who may read what: the query API's read-only ClickHouse role, and tenant row policies as
//! defence in depth behind the tenant predicate every query already binds; and the
//! automations' role, which writes their own tables only.
//!
//! The query API needs to read the tenant tables and nothing else, so it connects as a user
//! holding [`READER_ROLE`]: `SELECT` on the tables whose rows belong to a tenant (never the
//! bookkeeping tables), `readonly = 2` (reads only; per-query settings such as
//! `max_execution_time` still allowed). Each tenant table also gets a row policy for that role:
//! a row is visible only when its tenant equals the tenant the query API sends with the query
//! as the custom settings [`ACCOUNT_SETTING`] and [`WORKSPACE_SETTING`]. A query that lost its
//! `WHERE` on the tenant still returns one tenant's rows, and one sent without the settings
//! fails (`getSetting` of an unset setting is an error) instead of reading every tenant.
//!
//! A second policy, `USING 1` for every other user, keeps ingest and operators unaffected:
//! once a table has a row policy, ClickHouse hides its rows from users no policy names.
//!
//! Custom settings need the server's `custom_settings_prefixes` to include `SQL_` (ClickHouse
//! Cloud's fixed prefix; `deploy/compose/clickhouse-config.xml` sets it). On a cluster, the
//! shards see the reader's settings and user only with an inter-server `<secret>` in
//! `remote_servers`; the policies are on the Distributed and the local tables alike.
//!
//! The automations (their API in the query API, their evaluator wherever it runs) connect as a
//! user holding [`AUTOMATIONS_ROLE`]: `SELECT` and `INSERT` on their own tables
//! ([`AUTOMATIONS_TABLES`]) and `SELECT` on what the evaluator reads ([`AUTOMATIONS_READS`]:
//! the flow-run rollup for metric triggers; event triggers read Kafka), nothing else;
//! no DDL, no `ALTER`, no other table. The evaluator works on every tenant's automations, so
//! the role is not the reader's: the tenant policies do not apply to it, the `USING 1` one does.
//! The events it emits go through Kafka and are stored by ingest, like any producer's.
//!
//! The local engine (chDB behind the bridge) has one user and no access control, so these
//! statements are checked by having the engine parse them (`tests/tests/migrations.rs`), like
//! the cluster DDL, and applied by `flowhouse migrate --reader-user` on a real server.

use sha2::{Digest, Sha256};

use crate::ddl::{self, SchemaConfig, Topology};

/// The role of the query API's ClickHouse user.
pub const READER_ROLE: &str = "flowhouse_reader";
/// The custom setting carrying the account of the tenant a query is for.
pub const ACCOUNT_SETTING: &str = "SQL_flowhouse_account_id";
/// The custom setting carrying the workspace of the tenant a query is for.
pub const WORKSPACE_SETTING: &str = "SQL_flowhouse_workspace_id";
/// The row policy that limits the reader to the tenant of its settings.
pub const TENANT_POLICY: &str = "flowhouse_tenant";
/// The row policy that leaves every other user's reads as they were.
pub const OTHERS_POLICY: &str = "flowhouse_unrestricted";
/// The role of the automations' ClickHouse user.
pub const AUTOMATIONS_ROLE: &str = "flowhouse_automations";
/// The automations' own tables (migrations 4 and 5): read and written by [`AUTOMATIONS_ROLE`].
pub const AUTOMATIONS_TABLES: &[&str] = &[
    "automations",
    "automation_state",
    "automation_deliveries",
    "automation_leases",
    "automation_stream_checkpoints",
];
/// What the evaluator reads besides its own tables: the flow-run rollup (metric triggers; event
/// triggers read the events from Kafka). `tests/tests/access.rs` runs every kind of trigger in
/// a database holding only these tables and [`AUTOMATIONS_TABLES`].
pub const AUTOMATIONS_READS: &[&str] = &["flow_runs"];
/// What earlier versions let the role read and it no longer needs (event triggers read the
/// stored events before they read Kafka): revoked, so an upgraded deployment ends with the same
/// rights as a new one.
const AUTOMATIONS_NO_LONGER_READ: &[&str] = &["events"];

/// A user to create (or update) with one of these roles.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// SHA-256 of the password, hex: the password itself never appears in a statement.
    pub password_sha256: String,
}

impl User {
    pub fn new(name: &str, password: &str) -> Self {
        Self {
            name: name.to_string(),
            password_sha256: hex::encode(Sha256::digest(password.as_bytes())),
        }
    }
}

/// The row filter of the reader's policies.
pub fn tenant_filter() -> String {
    format!(
        "account_id = toUUID(getSetting('{ACCOUNT_SETTING}')) \
         AND workspace_id = toUUID(getSetting('{WORKSPACE_SETTING}'))"
    )
}

/// Names of the tables whose rows belong to a tenant: those ordered by tenant first.
pub fn tenant_tables() -> impl Iterator<Item = &'static str> {
    ddl::TABLES
        .iter()
        .filter(|table| table.order_by.starts_with("account_id, workspace_id"))
        .map(|table| table.name)
}

/// The statements that create the reader role, its grants and the row policies, then (when
/// `user` is given) the user holding that role. Idempotent: `flowhouse migrate` runs them on
/// every start, so tables added by later migrations are covered and a new password is applied.
pub fn reader_statements(config: &SchemaConfig, user: Option<&User>) -> Vec<String> {
    let db = &config.database;
    let on = config.on_cluster();
    let mut statements = vec![format!("CREATE ROLE IF NOT EXISTS {READER_ROLE}{on}")];
    for table in tenant_tables() {
        for name in physical_names(config, table) {
            statements.push(format!("GRANT{on} SELECT ON {db}.{name} TO {READER_ROLE}"));
            statements.push(format!(
                "CREATE ROW POLICY OR REPLACE {TENANT_POLICY}{on} ON {db}.{name} \
                 FOR SELECT USING {filter} AS PERMISSIVE TO {READER_ROLE}",
                filter = tenant_filter()
            ));
            statements.push(format!(
                "CREATE ROW POLICY OR REPLACE {OTHERS_POLICY}{on} ON {db}.{name} \
                 FOR SELECT USING 1 AS PERMISSIVE TO ALL EXCEPT {READER_ROLE}"
            ));
        }
    }
    if let Some(user) = user {
        statements.extend(user_statements(
            config,
            user,
            READER_ROLE,
            " SETTINGS readonly = 2",
        ));
    }
    statements
}

/// The statements that create the automations' role and its grants, then (when `user` is
/// given) the user holding it. Idempotent, like [`reader_statements`].
pub fn automations_statements(config: &SchemaConfig, user: Option<&User>) -> Vec<String> {
    let db = &config.database;
    let on = config.on_cluster();
    let mut statements = vec![format!("CREATE ROLE IF NOT EXISTS {AUTOMATIONS_ROLE}{on}")];
    for table in AUTOMATIONS_NO_LONGER_READ {
        for name in physical_names(config, table) {
            statements.push(format!(
                "REVOKE{on} SELECT ON {db}.{name} FROM {AUTOMATIONS_ROLE}"
            ));
        }
    }
    for (tables, rights) in [
        (AUTOMATIONS_TABLES, "SELECT, INSERT"),
        (AUTOMATIONS_READS, "SELECT"),
    ] {
        for table in tables {
            for name in physical_names(config, table) {
                statements.push(format!(
                    "GRANT{on} {rights} ON {db}.{name} TO {AUTOMATIONS_ROLE}"
                ));
            }
        }
    }
    if let Some(user) = user {
        // Not readonly: it inserts.
        statements.extend(user_statements(config, user, AUTOMATIONS_ROLE, ""));
    }
    statements
}

/// `user`, identified by its password's hash, holding `role` by default.
fn user_statements(config: &SchemaConfig, user: &User, role: &str, settings: &str) -> Vec<String> {
    let on = config.on_cluster();
    let name = &user.name;
    let identified = format!(
        "IDENTIFIED WITH sha256_hash BY '{}'{settings}",
        user.password_sha256
    );
    vec![
        format!("CREATE USER IF NOT EXISTS {name}{on} {identified}"),
        // Applied again when the user exists, so that rerunning migrate rotates the password.
        format!("ALTER USER {name}{on} {identified}"),
        format!("GRANT{on} {role} TO {name}"),
        format!("ALTER USER {name}{on} DEFAULT ROLE {role}"),
    ]
}

/// The tables a name stands for: itself on a node; the Distributed table and its local table
/// on a cluster (one table on every node for the bookkeeping ones).
fn physical_names(config: &SchemaConfig, name: &str) -> Vec<String> {
    let table = ddl::table_by_name(name);
    let mut names = vec![table.name.to_string()];
    if let Topology::Cluster(_) = config.topology {
        names.push(config.local_name(table));
        names.dedup();
    }
    names
}

/// True when `name` can be used unquoted as a ClickHouse user name in these statements.
pub fn is_plain_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(topology: Topology) -> SchemaConfig {
        SchemaConfig {
            database: "fh".into(),
            topology,
            retention_days: 30,
        }
    }

    #[test]
    fn the_reader_reads_tenant_tables_only_and_each_has_both_policies() {
        let statements = reader_statements(&config(Topology::SingleNode), None);
        let tables: Vec<_> = tenant_tables().collect();
        assert!(tables.contains(&"events") && tables.contains(&"logs"));
        for bookkeeping in ["ingest_batches", "schema_migrations"] {
            assert!(!tables.contains(&bookkeeping));
            assert!(
                !statements
                    .iter()
                    .any(|s| s.contains(&format!("fh.{bookkeeping} "))),
                "{bookkeeping} must not be readable by the reader"
            );
        }
        for table in &tables {
            let on_table = |prefix: &str| {
                statements
                    .iter()
                    .filter(|s| s.starts_with(prefix) && s.contains(&format!(" ON fh.{table} ")))
                    .count()
            };
            assert_eq!(on_table("GRANT SELECT"), 1, "{table}");
            assert_eq!(
                on_table(&format!("CREATE ROW POLICY OR REPLACE {TENANT_POLICY}")),
                1,
                "{table}"
            );
            assert_eq!(
                on_table(&format!("CREATE ROW POLICY OR REPLACE {OTHERS_POLICY}")),
                1,
                "{table}"
            );
        }
        assert!(!statements.iter().any(|s| s.contains("USER")));
    }

    #[test]
    fn a_cluster_covers_the_distributed_and_the_local_tables() {
        let statements = reader_statements(&config(Topology::Cluster("c".into())), None);
        for statement in &statements {
            assert!(statement.contains(" ON CLUSTER 'c'"), "{statement}");
        }
        assert!(statements.iter().any(|s| s.contains("ON fh.events_local ")));
        assert!(statements.iter().any(|s| s.contains("ON fh.events ")));
    }

    #[test]
    fn the_password_appears_only_as_its_hash() {
        let user = User::new("flowhouse_query", "correct horse");
        let statements = reader_statements(&config(Topology::SingleNode), Some(&user));
        let text = statements.join("\n");
        assert!(!text.contains("correct horse"));
        // SHA-256 of "correct horse", computed independently (sha256sum).
        assert!(text.contains("4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631"));
        assert!(text.contains("SETTINGS readonly = 2"));
        assert!(text.contains(&format!("GRANT {READER_ROLE} TO flowhouse_query")));
    }

    #[test]
    fn the_automations_write_their_own_tables_and_read_flow_runs_only() {
        let user = User::new("flowhouse_automations", "pw");
        let statements = automations_statements(&config(Topology::SingleNode), Some(&user));
        let grants: Vec<&String> = statements
            .iter()
            .filter(|s| s.starts_with("GRANT") && s.contains(" ON "))
            .collect();
        let mut expected: Vec<String> = AUTOMATIONS_TABLES
            .iter()
            .map(|t| format!("GRANT SELECT, INSERT ON fh.{t} TO {AUTOMATIONS_ROLE}"))
            .collect();
        expected.push(format!(
            "GRANT SELECT ON fh.flow_runs TO {AUTOMATIONS_ROLE}"
        ));
        assert_eq!(grants, expected.iter().collect::<Vec<_>>());
        // What an earlier version granted is taken back on upgrade.
        assert!(statements.contains(&format!(
            "REVOKE SELECT ON fh.events FROM {AUTOMATIONS_ROLE}"
        )));
        let text = statements.join("\n");
        assert!(!text.contains("readonly"), "it inserts");
        assert!(text.contains(&format!(
            "GRANT {AUTOMATIONS_ROLE} TO flowhouse_automations"
        )));
        assert!(!text.contains(READER_ROLE));
        // On a cluster: the Distributed and the local tables; the leases' one table once.
        let cluster = automations_statements(&config(Topology::Cluster("c".into())), None);
        assert!(
            cluster
                .iter()
                .any(|s| s.contains("ON fh.automation_state_local "))
        );
        let leases = cluster
            .iter()
            .filter(|s| s.contains(" ON fh.automation_leases"))
            .count();
        assert_eq!(leases, 1, "{cluster:?}");
    }

    #[test]
    fn user_names_that_would_need_quoting_are_refused() {
        assert!(is_plain_user_name("flowhouse_query"));
        for bad in ["", "a b", "x'; DROP", "1abc", "a-b", &"a".repeat(65)] {
            assert!(!is_plain_user_name(bad), "{bad:?}");
        }
    }
}
