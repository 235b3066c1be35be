//! The `ingest_batches` table: for each partition, the latest batch range, recorded before its
//! insert. It is where a partition resumes and how a replay re-forms the same batch (see
//! [`crate::exactly_once`]).

use std::collections::HashMap;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::batch::Range;

#[derive(Row, Serialize, Deserialize)]
struct Recorded {
    consumer_group: String,
    topic: String,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
    rows: u64,
}

#[derive(Row, Deserialize)]
struct Latest {
    partition: i32,
    latest_first: i64,
    latest_last: i64,
}

/// Reads and writes the manifest of one consumer group.
#[derive(Clone)]
pub struct Manifest {
    client: Client,
    group: String,
}

impl Manifest {
    pub fn new(client: Client, group: String) -> Self {
        Self { client, group }
    }

    /// The latest recorded range of every partition of `topic` that has one.
    pub async fn latest(&self, topic: &str) -> clickhouse::error::Result<HashMap<i32, Range>> {
        let rows: Vec<Latest> = self
            .client
            .query(
                "SELECT partition, argMax(first_offset, last_offset) AS latest_first, \
                        max(last_offset) AS latest_last \
                 FROM ingest_batches \
                 WHERE consumer_group = {group:String} AND topic = {topic:String} \
                 GROUP BY partition",
            )
            .param("group", &self.group)
            .param("topic", topic)
            .fetch_all()
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let range = Range {
                    first: row.latest_first,
                    last: row.latest_last,
                };
                (row.partition, range)
            })
            .collect())
    }

    /// Records a range about to be inserted; it becomes the partition's latest.
    pub async fn record(
        &self,
        topic: &str,
        partition: i32,
        range: Range,
        rows: usize,
    ) -> clickhouse::error::Result<()> {
        let result = async {
            let mut insert = self.client.insert::<Recorded>("ingest_batches").await?;
            insert
                .write(&Recorded {
                    consumer_group: self.group.clone(),
                    topic: topic.to_string(),
                    partition,
                    first_offset: range.first,
                    last_offset: range.last,
                    rows: rows as u64,
                })
                .await?;
            insert.end().await
        }
        .await;
        crate::sink::forget_schema_on_permanent(&self.client, result).await
    }
}
