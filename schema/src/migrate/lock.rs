//! One `migrate` at a time applies migrations, so that two processes started together (two
//! replicas of `flowhouse serve`, a deploy job beside a service) never interleave the steps of a
//! rebuild.
//!
//! ClickHouse has no locks; creating a table does the job: `CREATE TABLE` without `IF NOT
//! EXISTS` succeeds for exactly one process (the others get TABLE_ALREADY_EXISTS). The holder
//! writes a heartbeat row every few seconds and drops the table when done. A holder that died
//! stops beating; after [`STALE`] without a beat (measured on the server's clock) a waiter drops
//! its table and takes the lock. Breaking a stale lock is not atomic (two waiters may both judge
//! it stale, and the slower one drop the faster one's fresh lock), but it takes a holder silent
//! for a minute to get there; a holder that finds its lock gone stops with an error rather than
//! continue unprotected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clickhouse::{Client, Row};
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ddl::{SchemaConfig, Topology};

const LOCK_TABLE: &str = "schema_migrations_lock";
const BEAT_EVERY: Duration = Duration::from_secs(5);
const STALE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);

/// Held while migrations are applied; [`MigrationLock::release`] gives it back.
pub struct MigrationLock {
    server: Client,
    config: SchemaConfig,
    stop: CancellationToken,
    beating: JoinHandle<anyhow::Result<()>>,
    /// Set when a heartbeat found the lock table gone (another process broke the lock).
    lost: Arc<AtomicBool>,
}

#[derive(Row, Deserialize)]
struct Holder {
    holder: String,
    beats: u64,
    /// Milliseconds since the last beat, or since the table was created when there is none.
    silent_ms: i64,
}

fn create_statement(config: &SchemaConfig) -> String {
    let db = &config.database;
    let engine = match &config.topology {
        Topology::SingleNode => "MergeTree".to_string(),
        Topology::Cluster(_) => {
            format!(
                "ReplicatedMergeTree('/clickhouse/tables/all/{db}/{LOCK_TABLE}', '{{replica}}')"
            )
        }
    };
    format!(
        "CREATE TABLE {db}.{LOCK_TABLE}{} (holder String, beat DateTime64(3, 'UTC'))\n\
         ENGINE = {engine} ORDER BY tuple()",
        config.on_cluster()
    )
}

fn drop_statement(config: &SchemaConfig) -> String {
    format!(
        "DROP TABLE IF EXISTS {}.{LOCK_TABLE}{} SYNC",
        config.database,
        config.on_cluster()
    )
}

async fn beat(server: &Client, config: &SchemaConfig, holder: &str) -> anyhow::Result<()> {
    server
        .query(&format!(
            "INSERT INTO {}.{LOCK_TABLE} SELECT {{holder:String}}, now64(3)",
            config.database
        ))
        .param("holder", holder)
        .execute()
        .await
        .context("cannot write the migration lock's heartbeat")
}

/// Waits for and takes the lock of `config.database`.
pub async fn acquire(server: &Client, config: &SchemaConfig) -> anyhow::Result<MigrationLock> {
    let holder = format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut last_report = Instant::now();
    loop {
        match server.query(&create_statement(config)).execute().await {
            Ok(()) => break,
            Err(error) if error.to_string().contains("Code: 57.") => {}
            Err(error) => return Err(error).context("cannot create the migration lock"),
        }
        let current = server
            .query(&format!(
                "SELECT any(holder) AS holder, count() AS beats,
                        toInt64(ifNull(if(beats = 0,
                           dateDiff('millisecond', (SELECT any(metadata_modification_time)
                                                   FROM system.tables
                                                   WHERE database = {{db:String}}
                                                     AND name = {{name:String}}), now64(3)),
                           dateDiff('millisecond', max(beat), now64(3))), 0)) AS silent_ms
                 FROM {}.{LOCK_TABLE}",
                config.database
            ))
            .param("db", &config.database)
            .param("name", LOCK_TABLE)
            .fetch_one::<Holder>()
            .await;
        match current {
            // Released between our attempt and this read: try again at once.
            Err(error) if error.to_string().contains("Code: 60.") => continue,
            Err(error) => return Err(error).context("cannot read the migration lock"),
            Ok(current) if current.silent_ms > STALE.as_millis() as i64 => {
                tracing::warn!(
                    holder = current.holder,
                    silent_s = current.silent_ms / 1000,
                    beats = current.beats,
                    "the migration lock's holder stopped beating; breaking the lock"
                );
                server
                    .query(&drop_statement(config))
                    .execute()
                    .await
                    .context("cannot break a stale migration lock")?;
            }
            Ok(current) => {
                if last_report.elapsed() > Duration::from_secs(30) {
                    tracing::info!(
                        holder = current.holder,
                        "waiting for another migrate to finish"
                    );
                    last_report = Instant::now();
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
    beat(server, config, &holder).await?;
    let stop = CancellationToken::new();
    let lost = Arc::new(AtomicBool::new(false));
    let beating = tokio::spawn({
        let (server, config, stop, lost) =
            (server.clone(), config.clone(), stop.clone(), lost.clone());
        async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(BEAT_EVERY) => {}
                }
                if let Err(error) = beat(&server, &config, &holder).await {
                    if format!("{error:#}").contains("Code: 60.") {
                        lost.store(true, Ordering::Relaxed);
                        bail!("the migration lock was broken by another process");
                    }
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "migration lock heartbeat failed"
                    );
                }
            }
        }
    });
    Ok(MigrationLock {
        server: server.clone(),
        config: config.clone(),
        stop,
        beating,
        lost,
    })
}

impl MigrationLock {
    /// Fails once the lock is known to be lost: the caller must not run another statement.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.lost.load(Ordering::Relaxed) {
            bail!(
                "the migration lock of {} was broken by another process (this one was silent \
                 for over {} s); stopping before the next statement",
                self.config.database,
                STALE.as_secs()
            );
        }
        Ok(())
    }

    /// Stops the heartbeat and drops the lock table.
    pub async fn release(self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.beating.await {
            Ok(result) => result?,
            Err(error) => bail!("the migration lock's heartbeat task failed: {error}"),
        }
        self.server
            .query(&drop_statement(&self.config))
            .execute()
            .await
            .context("cannot release the migration lock")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}
