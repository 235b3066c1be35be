//! The mirror's position per stream, kept in ClickHouse (`mirror_checkpoints`, beside the ingest
//! manifest) so that a restarted mirror, or one started on another host, resumes where the last
//! one stopped. One row per (mirror, stream); the latest write wins (ReplacingMergeTree on
//! `updated_at`), read with `FINAL`.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use flowhouse_schema::Stream;
use flowhouse_service::admin::Readiness;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::deliver::Progress;
use crate::item::Position;

pub const TABLE: &str = "mirror_checkpoints";

#[derive(Clone)]
pub struct Store {
    client: Client,
    mirror: String,
}

#[derive(Row, Serialize, Deserialize)]
struct CheckpointRow {
    mirror: String,
    stream: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    occurred: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    updated_at: DateTime<Utc>,
}

#[derive(Row, Deserialize)]
struct Stored {
    #[serde(with = "clickhouse::serde::chrono::datetime64::micros")]
    occurred: DateTime<Utc>,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
}

impl Store {
    pub fn new(client: Client, mirror: String) -> Self {
        Self { client, mirror }
    }

    pub async fn load(&self, stream: Stream) -> anyhow::Result<Option<Position>> {
        let rows: Vec<Stored> = self
            .client
            .query(&format!(
                "SELECT occurred, id FROM {TABLE} FINAL WHERE mirror = ? AND stream = ?"
            ))
            .bind(&self.mirror)
            .bind(stream.plural())
            .fetch_all()
            .await
            .with_context(|| format!("cannot read the {} checkpoint", stream.plural()))?;
        Ok(rows.into_iter().next().map(|row| Position {
            at: row.occurred,
            id: row.id,
        }))
    }

    pub async fn save(&self, stream: Stream, position: &Position) -> anyhow::Result<()> {
        let mut insert = self.client.insert::<CheckpointRow>(TABLE).await?;
        insert
            .write(&CheckpointRow {
                mirror: self.mirror.clone(),
                stream: stream.plural().into(),
                occurred: position.at,
                id: position.id,
                updated_at: Utc::now(),
            })
            .await?;
        insert
            .end()
            .await
            .with_context(|| format!("cannot write the {} checkpoint", stream.plural()))
    }
}

/// The stored checkpoint, retried until ClickHouse answers (`None` only on shutdown).
pub async fn load_with_retry(
    store: &Store,
    stream: Stream,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> Option<Option<Position>> {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        match store.load(stream).await {
            Ok(position) => {
                readiness.ready("checkpoints");
                match &position {
                    Some(p) => tracing::info!(
                        stream = stream.plural(),
                        at = %p.at,
                        id = %p.id,
                        "resuming from the checkpoint"
                    ),
                    None => tracing::info!(stream = stream.plural(), "no checkpoint yet"),
                }
                return Some(position);
            }
            Err(error) => {
                let reason = format!("{error:#} (is the schema migrated? `flowhouse migrate`)");
                tracing::warn!(stream = stream.plural(), "{reason}");
                readiness.not_ready("checkpoints", reason);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Writes the stream's delivered position every `interval` while it moves, until `shutdown`.
pub async fn save_periodically(
    store: Store,
    stream: Stream,
    mut progress: watch::Receiver<Progress>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut saved: Option<Position> = progress.borrow().position.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let current = progress.borrow_and_update().position.clone();
        let Some(position) = current else {
            continue;
        };
        if saved.as_ref() == Some(&position) {
            continue;
        }
        match store.save(stream, &position).await {
            Ok(()) => {
                metrics::gauge!("flowhouse_mirror_checkpoint_timestamp_seconds", "stream" => stream.plural())
                    .set(position.at.timestamp_micros() as f64 / 1e6);
                saved = Some(position);
            }
            // The next tick tries again; a restart meanwhile re-reads a little more.
            Err(error) => tracing::warn!(stream = stream.plural(), "{error:#}"),
        }
    }
}
