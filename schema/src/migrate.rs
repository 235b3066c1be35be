//! Versioned migrations, recorded in the database.
//!
//! A migration is a list of steps: idempotent statements (`IF NOT EXISTS`), and rebuilds of a
//! table under its own name for what ClickHouse cannot ALTER (see [`rebuild`]). Running
//! `migrate` again is safe; two processes running it at once take turns (see [`lock`]): the
//! second finds the migrations recorded and does nothing. A recorded migration whose definition
//! has since changed is an error: schema changes are new migrations, never edits.
//!
//! Retention is configuration, not schema: after the migrations, `migrate` sets the TTL of every
//! retained table to the configured number of days if it differs (without rewriting old parts).

pub mod lock;
pub mod rebuild;

use anyhow::{Context as _, bail};
use clickhouse::{Client, Row};
use flowhouse_service::clickhouse::ClickHouseArgs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access;
use crate::ddl::{self, SchemaConfig, Topology, revisions};
pub use rebuild::Rebuild;

/// One step of a migration.
#[derive(Clone, Debug)]
pub enum Step {
    /// An idempotent statement.
    Sql(String),
    /// A table rebuilt under its own name.
    Rebuild(Rebuild),
}

impl Step {
    pub fn statements(&self) -> Vec<String> {
        match self {
            Step::Sql(statement) => vec![statement.clone()],
            Step::Rebuild(rebuild) => rebuild.statements(),
        }
    }
}

/// One schema version: what its steps create or change.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    steps: fn(&SchemaConfig) -> Vec<Step>,
}

impl Migration {
    pub fn steps(&self, config: &SchemaConfig) -> Vec<Step> {
        (self.steps)(config)
    }

    /// Every statement, rendered for `config`.
    pub fn statements(&self, config: &SchemaConfig) -> Vec<String> {
        self.steps(config)
            .iter()
            .flat_map(Step::statements)
            .collect()
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
    &[
        Migration {
            version: 1,
            name: "events, logs and their rollups",
            steps: |config| {
                let mut steps = Vec::new();
                for table in revisions::V1_TABLES {
                    steps.extend(config.create_table(table).into_iter().map(Step::Sql));
                }
                for view in revisions::V1_VIEWS {
                    steps.push(Step::Sql(config.create_view(view)));
                }
                steps
            },
        },
        Migration {
            version: 2,
            name: "stable log ids, log volume by distinct line, heartbeats are not states",
            steps: |config| {
                let add_id = format!(
                    "ALTER TABLE $table$on_cluster ADD COLUMN IF NOT EXISTS id UUID DEFAULT {}",
                    ddl::log_id_sql()
                );
                vec![
                    Step::Rebuild(Rebuild::raw(
                        config,
                        &revisions::LOGS,
                        ddl::LOG_COLUMNS,
                        &[&add_id],
                    )),
                    Step::Rebuild(Rebuild::rollup(
                        config,
                        &revisions::LOG_COUNTS_HOURLY,
                        &revisions::LOG_COUNTS_HOURLY_MV,
                        &[
                            "ALTER TABLE $table$on_cluster ADD COLUMN IF NOT EXISTS log_ids \
                           AggregateFunction(uniqExact, UUID)",
                        ],
                        &["ALTER TABLE $table$on_cluster DROP COLUMN IF EXISTS logs"],
                    )),
                    Step::Rebuild(Rebuild::rollup(
                        config,
                        &revisions::FLOW_RUNS,
                        &revisions::FLOW_RUNS_MV,
                        &[revisions::ADD_LAST_STATE_TYPE],
                        &[],
                    )),
                    Step::Rebuild(Rebuild::rollup(
                        config,
                        &revisions::FLOW_RUN_STATES_HOURLY,
                        &revisions::FLOW_RUN_STATES_HOURLY_MV,
                        &[],
                        &[],
                    )),
                ]
            },
        },
        Migration {
            version: 3,
            name: "mirror checkpoints",
            steps: |config| {
                config
                    .create_table(&revisions::MIRROR_CHECKPOINTS)
                    .into_iter()
                    .map(Step::Sql)
                    .collect()
            },
        },
        Migration {
            version: 4,
            name: "automations: definitions, state, deliveries, leases",
            steps: |config| {
                [
                    &revisions::AUTOMATIONS,
                    &revisions::AUTOMATION_STATE,
                    &revisions::AUTOMATION_DELIVERIES,
                    &revisions::AUTOMATION_LEASES,
                ]
                .into_iter()
                .flat_map(|table| config.create_table(table))
                .map(Step::Sql)
                .collect()
            },
        },
        Migration {
            version: 5,
            name: "automations: event-stream checkpoints",
            steps: |config| {
                config
                    .create_table(&revisions::AUTOMATION_STREAM_CHECKPOINTS)
                    .into_iter()
                    .map(Step::Sql)
                    .collect()
            },
        },
    ]
}

/// The latest version.
pub fn latest_version() -> u32 {
    migrations().last().map_or(0, |m| m.version)
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

async fn recorded(server: &Client, config: &SchemaConfig) -> anyhow::Result<Vec<Applied>> {
    let recorded: Vec<Applied> = server
        .query(&format!(
            "SELECT version, any(name) AS name, any(checksum) AS checksum FROM {}.schema_migrations \
             GROUP BY version ORDER BY version",
            config.database
        ))
        .fetch_all()
        .await
        .context("cannot read schema_migrations")?;
    for done in &recorded {
        let Some(migration) = migrations().iter().find(|m| m.version == done.version) else {
            tracing::warn!(
                version = done.version,
                name = done.name,
                known = latest_version(),
                "the database has a migration newer than this build knows"
            );
            continue;
        };
        let checksum = migration.checksum();
        if done.checksum != checksum {
            bail!(
                "migration {} ({}) was applied with definition {} but the code now defines \
                 {checksum}: change the schema with a new migration instead of editing one",
                migration.version,
                migration.name,
                done.checksum
            );
        }
    }
    Ok(recorded)
}

/// Brings the database to the latest version; returns the versions it applied now.
pub async fn apply(server: &Client, config: &SchemaConfig) -> anyhow::Result<Vec<u32>> {
    apply_up_to(server, config, latest_version()).await
}

/// Brings the database to version `last` (an earlier one only for upgrade tests); returns the
/// versions it applied now.
pub async fn apply_up_to(
    server: &Client,
    config: &SchemaConfig,
    last: u32,
) -> anyhow::Result<Vec<u32>> {
    execute(server, &config.create_database()).await?;
    for statement in config.create_table(&ddl::SCHEMA_MIGRATIONS) {
        execute(server, &statement).await?;
    }
    let pending = |recorded: &[Applied]| -> Vec<&'static Migration> {
        migrations()
            .iter()
            .filter(|m| m.version <= last && !recorded.iter().any(|r| r.version == m.version))
            .collect()
    };
    let mut applied_now = Vec::new();
    if !pending(&recorded(server, config).await?).is_empty() {
        let lock = lock::acquire(server, config).await?;
        // Under the lock: another process may have applied them while we waited.
        let result = async {
            for migration in pending(&recorded(server, config).await?) {
                apply_one(server, config, migration, &lock).await?;
                applied_now.push(migration.version);
            }
            anyhow::Ok(())
        }
        .await;
        let released = lock.release().await;
        result?;
        released?;
    }
    reconcile_retention(server, config).await?;
    Ok(applied_now)
}

async fn apply_one(
    server: &Client,
    config: &SchemaConfig,
    migration: &Migration,
    lock: &lock::MigrationLock,
) -> anyhow::Result<()> {
    tracing::info!(
        version = migration.version,
        name = migration.name,
        "applying migration"
    );
    for step in migration.steps(config) {
        match step {
            Step::Sql(statement) => {
                lock.check()?;
                execute(server, &statement).await?;
            }
            Step::Rebuild(rebuild) => {
                let done = comment_of(server, config, &rebuild.table).await? == rebuild.marker;
                let phases = if done {
                    vec![&rebuild.cleanup]
                } else {
                    tracing::info!(table = rebuild.table, "rebuilding");
                    vec![
                        &rebuild.prepare,
                        &rebuild.build,
                        &rebuild.fill,
                        &rebuild.switch,
                        &rebuild.cleanup,
                    ]
                };
                for statement in phases.into_iter().flatten() {
                    lock.check()?;
                    execute(server, statement).await?;
                }
            }
        }
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
            checksum: migration.checksum(),
        })
        .await?;
    insert.end().await.context("cannot record the migration")
}

/// The comment of a table ("" if it has none or does not exist).
async fn comment_of(server: &Client, config: &SchemaConfig, table: &str) -> anyhow::Result<String> {
    let comments: Vec<String> = server
        .query(
            "SELECT comment FROM system.tables WHERE database = {db:String} AND name = {name:String}",
        )
        .param("db", &config.database)
        .param("name", table)
        .fetch_all()
        .await
        .with_context(|| format!("cannot read the comment of {table}"))?;
    Ok(comments.into_iter().next().unwrap_or_default())
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
        tracing::info!(table = %local, days = config.retention_days, "changing retention");
        server
            .query(&format!(
                "ALTER TABLE {}.{local}{} MODIFY TTL {ttl}",
                config.database,
                config.on_cluster()
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
    /// Also create (or update) this ClickHouse user for the automations (their API and
    /// evaluator: `FLOWHOUSE_AUTOMATIONS_CLICKHOUSE_USER` of the services): SELECT and INSERT on
    /// their own tables, SELECT on the events and the flow-run rollup, nothing else (see
    /// `flowhouse_schema::access`). Needs a server with access management.
    #[arg(long, env = "FLOWHOUSE_AUTOMATIONS_USER")]
    pub automations_user: Option<String>,
    /// The password of --automations-user (rerunning migrate with a new one changes it).
    #[arg(
        long,
        env = "FLOWHOUSE_AUTOMATIONS_PASSWORD",
        hide_env_values = true,
        requires = "automations_user"
    )]
    pub automations_password: Option<String>,
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

/// A user of the flags (`--{flag}-user`, `--{flag}-password`): `None` without the user;
/// `Some(None)` with a user but no password (enough to print the role and its grants).
fn user_of(
    flag: &str,
    name: Option<&String>,
    password: Option<&String>,
) -> anyhow::Result<Option<Option<access::User>>> {
    let Some(name) = name else {
        return Ok(None);
    };
    if !access::is_plain_user_name(name) {
        bail!(
            "--{flag}-user {name:?}: use letters, digits and underscores (at most 64, not \
             starting with a digit)"
        );
    }
    Ok(Some(
        password.map(|password| access::User::new(name, password)),
    ))
}

/// A user migrate sets up: its flags' name, the user (`Some(None)`: no password), the
/// statements that create it and its role, and what it holds.
struct UserSetup {
    flag: &'static str,
    user: Option<Option<access::User>>,
    statements: fn(&SchemaConfig, Option<&access::User>) -> Vec<String>,
    holds: &'static str,
}

fn users(args: &Args) -> anyhow::Result<[UserSetup; 2]> {
    Ok([
        UserSetup {
            flag: "reader",
            user: user_of(
                "reader",
                args.reader_user.as_ref(),
                args.reader_password.as_ref(),
            )?,
            statements: access::reader_statements,
            holds: "SELECT on the tenant tables, tenant row policies",
        },
        UserSetup {
            flag: "automations",
            user: user_of(
                "automations",
                args.automations_user.as_ref(),
                args.automations_password.as_ref(),
            )?,
            statements: access::automations_statements,
            holds: "SELECT and INSERT on the automations' tables, SELECT on events and flow_runs",
        },
    ])
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.schema_config();
    if args.retention_days == 0 {
        bail!("--retention-days must be at least 1");
    }
    let users = users(&args)?;
    if args.print {
        for statement in full_schema(&config) {
            println!("{statement};\n");
        }
        for setup in &users {
            if let Some(user) = &setup.user {
                for statement in (setup.statements)(&config, user.as_ref()) {
                    println!("{statement};\n");
                }
            }
        }
        return Ok(());
    }
    for setup in &users {
        if let Some(None) = setup.user {
            bail!(
                "--{flag}-user needs --{flag}-password (or FLOWHOUSE_{}_PASSWORD)",
                setup.flag.to_uppercase(),
                flag = setup.flag
            );
        }
    }
    let server = args.clickhouse.server_client();
    let applied = apply(&server, &config).await.with_context(|| {
        format!(
            "cannot migrate {} on {}",
            config.database, args.clickhouse.url
        )
    })?;
    for setup in &users {
        let Some(Some(user)) = &setup.user else {
            continue;
        };
        for statement in (setup.statements)(&config, Some(user)) {
            server.query(&statement).execute().await.with_context(|| {
                format!(
                    "cannot set up the {} user {} (the ClickHouse user of migrate needs \
                     access management: CREATE ROLE, CREATE USER, CREATE ROW POLICY, GRANT)",
                    setup.flag, user.name
                )
            })?;
        }
        println!("{} user {} holds {}", setup.flag, user.name, setup.holds);
    }
    let latest = latest_version();
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
    fn migration_1_is_still_the_definition_every_existing_database_recorded() {
        // Recorded in every database migration 1 created; changing it would make every
        // existing database refuse to migrate.
        assert_eq!(migrations()[0].checksum(), "94500bf3e8c4b0c3dfabeed0");
    }

    #[test]
    fn versions_are_consecutive_and_names_unique() {
        for (i, migration) in migrations().iter().enumerate() {
            assert_eq!(migration.version as usize, i + 1);
        }
        let mut checksums: Vec<String> = migrations().iter().map(Migration::checksum).collect();
        checksums.dedup();
        assert_eq!(checksums.len(), migrations().len());
    }

    #[test]
    fn every_rebuilt_table_ends_in_its_latest_definition_and_cleans_up_after_itself() {
        for topology in [Topology::SingleNode, Topology::Cluster("c".into())] {
            let config = config(topology);
            for migration in migrations() {
                for step in migration.steps(&config) {
                    let Step::Rebuild(rebuild) = step else {
                        continue;
                    };
                    let latest = ddl::TABLES
                        .iter()
                        .find(|t| config.local_name(t) == rebuild.table)
                        .expect("a rebuilt table is in the schema");
                    assert_eq!(
                        ddl::revision_comment(latest).as_deref(),
                        Some(rebuild.marker.as_str()),
                        "{} is rebuilt into a revision that is not its latest",
                        rebuild.table
                    );
                    // What the build creates, the cleanup drops.
                    let created: Vec<String> = rebuild
                        .build
                        .iter()
                        .filter(|s| s.starts_with("CREATE"))
                        .filter_map(|s| {
                            s.split_whitespace()
                                .nth(if s.starts_with("CREATE MATERIALIZED") {
                                    6
                                } else {
                                    5
                                })
                        })
                        .map(str::to_string)
                        .collect();
                    assert!(!created.is_empty());
                    for name in created {
                        assert!(
                            rebuild
                                .cleanup
                                .iter()
                                .any(|s| s.starts_with("DROP") && s.contains(&format!("{name} "))),
                            "{name} is left behind by the rebuild of {}",
                            rebuild.table
                        );
                    }
                }
            }
        }
    }
}
