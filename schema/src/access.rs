//! Who may read what: the query API's read-only ClickHouse role, and tenant row policies as
//! defence in depth behind the tenant predicate every query already binds.
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

/// The user to create (or update) with the reader role.
#[derive(Clone, Debug)]
pub struct ReaderUser {
    pub name: String,
    /// SHA-256 of the password, hex: the password itself never appears in a statement.
    pub password_sha256: String,
}

impl ReaderUser {
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
pub fn reader_statements(config: &SchemaConfig, user: Option<&ReaderUser>) -> Vec<String> {
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
        let name = &user.name;
        let identified = format!(
            "IDENTIFIED WITH sha256_hash BY '{}' SETTINGS readonly = 2",
            user.password_sha256
        );
        statements.push(format!("CREATE USER IF NOT EXISTS {name}{on} {identified}"));
        // Applied again when the user exists, so that rerunning migrate rotates the password.
        statements.push(format!("ALTER USER {name}{on} {identified}"));
        statements.push(format!("GRANT{on} {READER_ROLE} TO {name}"));
        statements.push(format!("ALTER USER {name}{on} DEFAULT ROLE {READER_ROLE}"));
    }
    statements
}

/// The tables a name stands for: itself on a node; the Distributed table and its local table
/// on a cluster.
fn physical_names(config: &SchemaConfig, name: &str) -> Vec<String> {
    let table = ddl::table_by_name(name);
    match config.topology {
        Topology::SingleNode => vec![table.name.to_string()],
        Topology::Cluster(_) => vec![table.name.to_string(), config.local_name(table)],
    }
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
        let user = ReaderUser::new("flowhouse_query", "correct horse");
        let statements = reader_statements(&config(Topology::SingleNode), Some(&user));
        let text = statements.join("\n");
        assert!(!text.contains("correct horse"));
        // SHA-256 of "correct horse", computed independently (sha256sum).
        assert!(text.contains("4104d36f8da2c254349f85836793ebe029e0c957063a34c91c2e9203187b5631"));
        assert!(text.contains("SETTINGS readonly = 2"));
        assert!(text.contains(&format!("GRANT {READER_ROLE} TO flowhouse_query")));
    }

    #[test]
    fn user_names_that_would_need_quoting_are_refused() {
        assert!(is_plain_user_name("flowhouse_query"));
        for bad in ["", "a b", "x'; DROP", "1abc", "a-b", &"a".repeat(65)] {
            assert!(!is_plain_user_name(bad), "{bad:?}");
        }
    }
}
