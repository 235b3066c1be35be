//! Where each partition of the events topic stands for the event triggers: table
//! `automation_stream_checkpoints` (migration 5), written by the partition's lease holder after
//! each round, read by whoever holds the lease next.

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::window::Windows;

#[derive(Debug, Row, Serialize, Deserialize)]
struct CheckpointRow {
    topic: String,
    partition: u32,
    version: u64,
    next_offset: i64,
    windows: String,
    owner: String,
}

/// A partition's position and the windows of its tenants' triggers at that position.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// The offset of the first message the windows have not seen.
    pub next_offset: i64,
    pub windows: Windows,
}

#[derive(Clone)]
pub struct Checkpoints {
    client: Client,
}

/// The version of a checkpoint: the lease term in the high half, so a later term's write wins
/// over anything an earlier (expired) holder still writes; a counter in the low half.
pub fn version(term: u64, seq: u64) -> u64 {
    (term << 32) | (seq & 0xffff_ffff)
}

impl Checkpoints {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub async fn load(&self, topic: &str, partition: i32) -> anyhow::Result<Option<Checkpoint>> {
        let row = self
            .client
            .query(
                "SELECT ?fields FROM automation_stream_checkpoints FINAL
                 WHERE topic = ? AND partition = ?",
            )
            .bind(topic)
            .bind(partition as u32)
            .fetch_optional::<CheckpointRow>()
            .await?;
        row.map(|row| {
            Ok(Checkpoint {
                next_offset: row.next_offset,
                windows: serde_json::from_str(&row.windows)?,
            })
        })
        .transpose()
    }

    pub async fn save(
        &self,
        topic: &str,
        partition: i32,
        version: u64,
        owner: &str,
        checkpoint: &Checkpoint,
    ) -> anyhow::Result<()> {
        let mut insert = self
            .client
            .insert::<CheckpointRow>("automation_stream_checkpoints")
            .await?;
        insert
            .write(&CheckpointRow {
                topic: topic.into(),
                partition: partition as u32,
                version,
                next_offset: checkpoint.next_offset,
                windows: serde_json::to_string(&checkpoint.windows)?,
                owner: owner.into(),
            })
            .await?;
        insert.end().await?;
        Ok(())
    }
}
