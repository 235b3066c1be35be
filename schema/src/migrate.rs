//! Versioned migrations, recorded in the database.
//!
//! Every statement is idempotent (`IF NOT EXISTS`), so running `migrate` again, or two processes
//! running it at once (two replicas of a service starting together), is safe: both apply the same
//! statements, a statement that loses a creation race to the other process is treated as done,
//! and both record the same version (`schema_migrations` is a ReplacingMergeTree on `version`).
//! A recorded migration whose definition has since changed is an error: schema changes are new
//! migrations, never edits.
//!
//! Retention is configuration, not schema: after the migrations, `migrate` sets the TTL of every
//! retained table to the configured number of days if it differs (without rewriting old parts).

use anyhow::{Context as _, bail};
use clickhouse::{Client, Row};
use flowhouse_service::clickhouse::ClickHouseArgs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access;
use crate::ddl::{self, SchemaConfig, Topology};

/// One schema version: everything its statements create.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    statements: fn(&SchemaConfig) -> Vec<String>,
}

impl Migration {
    /// The statements, rendered for `config`.
    pub fn statements(&self, config: &SchemaConfig) -> Vec<String> {
        (self.statements)(config)
    }

    /// Identifies the definition independently of configuration (database, cluster, retention),
    /// which is rendered the same way for every checksum.
    pub fn checksum(&self) -> String {
        let reference = SchemaConfig {
            database: "db".into(),
            topology: Topology::SingleNode,
            retention_days: 1,
        };
        let mut hasher = Sha256::new();
        for statement in self.statements(&reference) {
            hasher.update(statement.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..12])
    }
}

/// Every migration, in order.
pub fn migrations() -> &'static [Migration] {
    &[Migration {
        version: 1,
        name: "events, logs and their rollups",
        statements: |config| {
            let mut statements = Vec::new();
            for table in ddl::TABLES {
                statements.extend(config.create_table(table));
            }
            for view in ddl::VIEWS {
                statements.push(config.create_view(view));
            }
            statements
        },
    }]
}

/// Every statement that creates the schema from nothing, in order: what `migrate --print` shows.
pub fn full_schema(config: &SchemaConfig) -> Vec<String> {
    let mut statements = vec![config.create_database()];
    for migration in migrations() {
        statements.extend(migration.statements(config));
    }
    statements
}

#[derive(Row, Serialize, Deserialize)]
struct Applied {
    version: u32,
    name: String,
    checksum: String,
}

/// Brings the database to the latest version; returns the versions it applied now.
pub async fn apply(server: &Client, config: &SchemaConfig) -> anyhow::Result<Vec<u32>> {
    execute(server, &config.create_database()).await?;
    for statement in config.create_table(&ddl::SCHEMA_MIGRATIONS) {
        execute(server, &statement).await?;
    }
    let recorded: Vec<Applied> = server
        .query(&format!(
            "SELECT version, any(name) AS name, any(checksum) AS checksum FROM {}.schema_migrations \
             GROUP BY version ORDER BY version",
            config.database
        ))
        .fetch_all()
        .await
        .context("cannot read schema_migrations")?;

    let mut applied_now = Vec::new();
    for migration in migrations() {
        let checksum = migration.checksum();
        if let Some(done) = recorded.iter().find(|r| r.version == migration.version) {
            if done.checksum != checksum {
                bail!(
                    "migration {} ({}) was applied with definition {} but the code now defines \
                     {checksum}: change the schema with a new migration instead of editing one",
                    migration.version,
                    migration.name,
                    done.checksum
                );
            }
            continue;
        }
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applying migration"
        );
        for statement in migration.statements(config) {
            execute(server, &statement).await?;
        }
        let mut insert = server
            .clone()
            .with_database(&config.database)
            .insert::<Applied>("schema_migrations")
            .await?;
        insert
            .write(&Applied {
                version: migration.version,
                name: migration.name.into(),
                checksum,
            })
            .await?;
        insert.end().await.context("cannot record the migration")?;
        applied_now.push(migration.version);
    }
    reconcile_retention(server, config).await?;
    Ok(applied_now)
}

/// Runs one idempotent statement; losing a creation race to another `migrate` is success.
async fn execute(server: &Client, statement: &str) -> anyhow::Result<()> {
    match server.query(statement).execute().await {
        Ok(()) => Ok(()),
        // TABLE_ALREADY_EXISTS: another process created it between our check and our create.
        Err(error) if error.to_string().contains("Code: 57.") => Ok(()),
        Err(error) => Err(error).with_context(|| format!("statement failed:\n{statement}")),
    }
}

async fn reconcile_retention(server: &Client, config: &SchemaConfig) -> anyhow::Result<()> {
    for table in ddl::retained_tables() {
        let Some(ttl) = config.ttl_of(table) else {
            continue;
        };
        let local = config.local_name(table);
        let engine_full: String = server
            .query("SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {name:String}")
            .param("db", &config.database)
            .param("name", &local)
            .fetch_one()
            .await
            .with_context(|| format!("cannot read the definition of {local}"))?;
        let wanted_days = format!("toIntervalDay({})", config.retention_days);
        if engine_full.contains(&wanted_days) {
            continue;
        }
        let on_cluster = match &config.topology {
            Topology::SingleNode => String::new(),
            Topology::Cluster(name) => format!(" ON CLUSTER '{name}'"),
        };
        tracing::info!(table = %local, days = config.retention_days, "changing retention");
        server
            .query(&format!(
                "ALTER TABLE {}.{local}{on_cluster} MODIFY TTL {ttl}",
                config.database
            ))
            // Old parts are dropped as they age out; rewriting them now would cost a full pass.
            .with_setting("materialize_ttl_after_modify", "0")
            .execute()
            .await
            .with_context(|| format!("cannot change the retention of {local}"))?;
    }
    Ok(())
}

/// Flags of `flowhouse migrate`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Days of events, logs and rollups to keep.
    #[arg(long, env = "FLOWHOUSE_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,
    /// Render for this ClickHouse cluster (Replicated tables, Distributed tables sharded by
    /// tenant, ON CLUSTER) instead of a single node.
    #[arg(long, env = "FLOWHOUSE_CLICKHOUSE_CLUSTER")]
    pub cluster: Option<String>,
    /// Print the statements that create the schema instead of applying them.
    #[arg(long)]
    pub print: bool,
    /// Also create (or update) this read-only ClickHouse user for the query API, with the
    /// tenant row policies (see `flowhouse_schema::access`). Needs a server with access
    /// management; the local engine has none.
    #[arg(long, env = "FLOWHOUSE_READER_USER")]
    pub reader_user: Option<String>,
    /// The password of --reader-user (rerunning migrate with a new one changes it).
    #[arg(
        long,
        env = "FLOWHOUSE_READER_PASSWORD",
        hide_env_values = true,
        requires = "reader_user"
    )]
    pub reader_password: Option<String>,
}

impl Args {
    pub fn schema_config(&self) -> SchemaConfig {
        SchemaConfig {
            database: self.clickhouse.database.clone(),
            topology: self
                .cluster
                .clone()
                .map_or(Topology::SingleNode, Topology::Cluster),
            retention_days: self.retention_days,
        }
    }
}

/// The reader user of the flags: `None` without --reader-user; `Some(None)` with a user but no
/// password (enough to print the role and policies).
fn reader_user(args: &Args) -> anyhow::Result<Option<Option<access::ReaderUser>>> {
    let Some(name) = &args.reader_user else {
        return Ok(None);
    };
    if !access::is_plain_user_name(name) {
        bail!(
            "--reader-user {name:?}: use letters, digits and underscores (at most 64, not \
             starting with a digit)"
        );
    }
    Ok(Some(
        args.reader_password
            .as_deref()
            .map(|password| access::ReaderUser::new(name, password)),
    ))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.schema_config();
    if args.retention_days == 0 {
        bail!("--retention-days must be at least 1");
    }
    let reader = reader_user(&args)?;
    if args.print {
        for statement in full_schema(&config) {
            println!("{statement};\n");
        }
        if let Some(reader) = &reader {
            for statement in access::reader_statements(&config, reader.as_ref()) {
                println!("{statement};\n");
            }
        }
        return Ok(());
    }
    if let Some(None) = &reader {
        bail!("--reader-user needs --reader-password (or FLOWHOUSE_READER_PASSWORD)");
    }
    let server = args.clickhouse.server_client();
    let applied = apply(&server, &config).await.with_context(|| {
        format!(
            "cannot migrate {} on {}",
            config.database, args.clickhouse.url
        )
    })?;
    if let Some(Some(user)) = &reader {
        for statement in access::reader_statements(&config, Some(user)) {
            server.query(&statement).execute().await.with_context(|| {
                format!(
                    "cannot set up the reader user {} (the ClickHouse user of migrate needs \
                     access management: CREATE ROLE, CREATE USER, CREATE ROW POLICY, GRANT)",
                    user.name
                )
            })?;
        }
        println!(
            "reader user {} holds {} (SELECT on the tenant tables, tenant row policies)",
            user.name,
            access::READER_ROLE
        );
    }
    let latest = migrations().last().map_or(0, |m| m.version);
    if applied.is_empty() {
        println!(
            "database {} is at version {latest}; nothing to apply",
            config.database
        );
    } else {
        println!(
            "database {}: applied {applied:?}, now at version {latest}",
            config.database
        );
    }
    Ok(())
}
