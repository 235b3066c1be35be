//! The engine's raw insert rate for the same rows the run sent: the workload is generated again
//! (same seed, same messages), turned into `events`/`logs` rows, and inserted with the
//! `clickhouse` crate into the real `events` and `logs` tables, so that their materialized
//! views run as they do for ingest. The rows go to tenants of their own (fresh ids for each
//! generated tenant; the same rows otherwise), which no dashboard and no verification reads;
//! they stay in the database. Only the inserts are timed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use flowhouse_schema::Tenant;
use flowhouse_schema::rows::{EventRow, LogRow};
use uuid::Uuid;

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
    let mut workload = Some(Workload::new(config)?);
    let mut scratch = ScratchTenants::default();
    let mut left = messages;
    let (mut rows, mut timed) = (0u64, Duration::ZERO);
    while left > 0 {
        let take = left.min(CHUNK as u64) as usize;
        let source = workload.take().context("the generator is gone")?;
        let mut tenants = std::mem::take(&mut scratch);
        // Generating is not what is measured: it runs before the clock starts.
        let (source, tenants, events, logs) = tokio::task::spawn_blocking(move || {
            let mut source = source;
            let received = Utc::now();
            let (mut events, mut logs) = (Vec::new(), Vec::new());
            for message in source.by_ref().take(take) {
                let tenant = tenants.of(message.tenant);
                match &message.record {
                    Record::Event(event) => events.push(EventRow::new(tenant, received, event)),
                    Record::Log(log) => logs.push(LogRow::new(tenant, received, log)),
                }
            }
            (source, tenants, events, logs)
        })
        .await?;
        workload = Some(source);
        scratch = tenants;
        let generated = (events.len() + logs.len()) as u64;
        if generated == 0 {
            break;
        }
        left -= generated.min(left);
        let started = Instant::now();
        insert(client, "events", &events).await?;
        insert(client, "logs", &logs).await?;
        timed += started.elapsed();
        rows += generated;
    }
    Ok(Rate::new(rows, timed.as_secs_f64()))
}

/// A fresh tenant for each generated one, so that the baseline's rows never mix with the run's.
#[derive(Default)]
struct ScratchTenants(HashMap<Tenant, Tenant>);

impl ScratchTenants {
    fn of(&mut self, tenant: Tenant) -> Tenant {
        *self.0.entry(tenant).or_insert_with(|| Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_gets_one_scratch_tenant_of_its_own() {
        let [a, b] = [0, 1].map(|_| Tenant {
            account_id: Uuid::new_v4(),
            workspace_id: Uuid::new_v4(),
        });
        let mut scratch = ScratchTenants::default();
        let (a1, b1, a2) = (scratch.of(a), scratch.of(b), scratch.of(a));
        assert_eq!(a1, a2);
        assert_ne!(a1, b1);
        assert!(![a, b].contains(&a1) && ![a, b].contains(&b1));
    }
}
