//! The engine's raw insert rate for the same rows the run sent: the workload is generated again
//! (same seed, same messages), turned into `events`/`logs` rows, and inserted with the
//! `clickhouse` crate into scratch tables made `AS events` / `AS logs` (same columns, engine
//! and codecs; no materialized views hang off them). Only the inserts are timed; the tables
//! are dropped afterwards.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use flowhouse_schema::rows::{EventRow, LogRow};

use super::Rate;
use crate::workload::{Record, Workload, WorkloadConfig};

/// Rows per insert: about what the ingest service's batches hold.
const CHUNK: usize = 100_000;

/// Inserts the first `messages` messages of the workload; rows per second of insert time.
pub async fn raw_insert(
    client: &clickhouse::Client,
    config: WorkloadConfig,
    messages: u64,
) -> anyhow::Result<Rate> {
    // Names made here from a UUID's hex digits, never from input.
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let events_table = format!("loadtest_scratch_events_{suffix}");
    let logs_table = format!("loadtest_scratch_logs_{suffix}");
    for (table, like) in [(&events_table, "events"), (&logs_table, "logs")] {
        client
            .query(&format!("CREATE TABLE {table} AS {like}"))
            .execute()
            .await
            .with_context(|| format!("cannot create the scratch table {table}"))?;
    }
    let result = insert_all(client, config, messages, &events_table, &logs_table).await;
    for table in [&events_table, &logs_table] {
        let dropped = client
            .query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute()
            .await;
        if let Err(error) = dropped {
            tracing::warn!(%table, %error, "cannot drop a scratch table");
        }
    }
    result
}

async fn insert_all(
    client: &clickhouse::Client,
    config: WorkloadConfig,
    messages: u64,
    events_table: &str,
    logs_table: &str,
) -> anyhow::Result<Rate> {
    let mut workload = Some(Workload::new(config)?);
    let mut left = messages;
    let (mut rows, mut timed) = (0u64, Duration::ZERO);
    while left > 0 {
        let take = left.min(CHUNK as u64) as usize;
        let source = workload.take().context("the generator is gone")?;
        // Generating is not what is measured: it runs before the clock starts.
        let (source, events, logs) = tokio::task::spawn_blocking(move || {
            let mut source = source;
            let received = Utc::now();
            let (mut events, mut logs) = (Vec::new(), Vec::new());
            for message in source.by_ref().take(take) {
                match &message.record {
                    Record::Event(event) => {
                        events.push(EventRow::new(message.tenant, received, event));
                    }
                    Record::Log(log) => logs.push(LogRow::new(message.tenant, received, log)),
                }
            }
            (source, events, logs)
        })
        .await?;
        workload = Some(source);
        let generated = (events.len() + logs.len()) as u64;
        if generated == 0 {
            break;
        }
        left -= generated.min(left);
        let started = Instant::now();
        insert(client, events_table, &events).await?;
        insert(client, logs_table, &logs).await?;
        timed += started.elapsed();
        rows += generated;
    }
    Ok(Rate::new(rows, timed.as_secs_f64()))
}

async fn insert<T>(client: &clickhouse::Client, table: &str, rows: &[T]) -> anyhow::Result<()>
where
    T: clickhouse::RowOwned + clickhouse::RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    // As the ingest service inserts: synchronously, one block per call.
    let mut insert = client
        .insert::<T>(table)
        .await
        .with_context(|| format!("cannot insert into {table}"))?
        .with_setting("async_insert", "0");
    for row in rows {
        insert.write(row).await?;
    }
    insert
        .end()
        .await
        .with_context(|| format!("cannot insert into {table}"))
}
