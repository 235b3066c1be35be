//! When has ingestion recovered from a fault? Two moments, seen from outside: the broker says
//! where each partition ends and what the group committed, ClickHouse what the manifest
//! (`ingest_batches`) recorded.
//!
//! - Resumed ([`stalled`] is empty): every partition with messages waiting has made progress
//!   since the component was back: its owner recorded a new batch range or committed a new
//!   offset. The same progress marker the ingest watchdog uses to tell a live owner from a
//!   dead one.
//! - Caught up ([`behind`] is empty): every partition has been consumed up to where it ended
//!   when the component was back: the lag the fault built up is gone (new messages keep coming
//!   during a run, so "lag zero" is measured against that moment's end of each log).
//!
//! Rows merely becoming visible somewhere would not do: with two instances, the survivor keeps
//! inserting its own partitions while the killed one's sit unowned.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clickhouse::Row;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

/// `(topic, partition)`.
pub type Partition = (String, i32);

/// How long one call to the broker may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One partition as the broker and the manifest see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The log's earliest offset and its end.
    pub low: i64,
    pub high: i64,
    /// The group's committed offset.
    pub committed: Option<i64>,
    /// The last offset of the partition's latest range in the manifest.
    pub recorded: Option<i64>,
}

impl Position {
    /// Whether messages wait that the group has not stored yet (as far as its commits say).
    fn waiting(&self) -> bool {
        self.high > self.committed.unwrap_or(0).max(self.low)
    }

    fn marker(&self) -> (Option<i64>, Option<i64>) {
        (self.committed, self.recorded)
    }

    /// The offset up to which the group has taken the partition: its commit, or the end of its
    /// latest recorded range (recorded before the insert, which follows at once).
    fn consumed(&self) -> i64 {
        let recorded = self.recorded.map_or(0, |last| last + 1);
        self.committed.unwrap_or(0).max(recorded).max(self.low)
    }
}

pub type Positions = BTreeMap<Partition, Position>;

/// The partitions that have messages waiting and have not moved since `baseline`: empty once
/// ingestion has recovered. A partition that has nothing waiting counts as recovered: there is
/// nothing for it to do.
pub fn stalled(baseline: &Positions, now: &Positions) -> Vec<Partition> {
    now.iter()
        .filter(|(partition, position)| {
            let before = baseline.get(*partition).copied().unwrap_or_default();
            position.waiting() && position.marker() == before.marker()
        })
        .map(|(partition, _)| partition.clone())
        .collect()
}

/// The partitions not yet consumed up to where they ended in `target`: empty once the lag
/// `target` saw is gone.
pub fn behind(target: &Positions, now: &Positions) -> Vec<Partition> {
    target
        .iter()
        .filter(|(partition, end)| {
            let consumed = now.get(*partition).map_or(0, Position::consumed);
            consumed < end.high
        })
        .map(|(partition, _)| partition.clone())
        .collect()
}

#[derive(Row, Deserialize)]
struct Recorded {
    topic: String,
    partition: i32,
    last: i64,
}

/// Reads positions: the broker through a client of the ingest group that never joins it (it
/// only asks for the committed offsets), ClickHouse through the run's client.
#[derive(Clone)]
pub struct Probe {
    consumer: Arc<BaseConsumer>,
    clickhouse: clickhouse::Client,
    group: String,
    topics: Vec<String>,
}

impl Probe {
    pub fn new(
        kafka: &flowhouse_service::kafka::KafkaArgs,
        clickhouse: clickhouse::Client,
        group: &str,
        topics: Vec<String>,
    ) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = kafka
            .config()?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the chaos probe's Kafka client")?;
        Ok(Self {
            consumer: Arc::new(consumer),
            clickhouse,
            group: group.to_string(),
            topics,
        })
    }

    /// Every partition of the topics, now. Fails while the broker or ClickHouse is away.
    pub async fn positions(&self) -> anyhow::Result<Positions> {
        let (consumer, topics) = (self.consumer.clone(), self.topics.clone());
        let mut positions = tokio::task::spawn_blocking(move || broker(&consumer, &topics))
            .await
            .context("the broker probe panicked")??;
        let recorded: Vec<Recorded> = self
            .clickhouse
            .query(
                "SELECT topic, partition, max(last_offset) AS last FROM ingest_batches \
                 WHERE consumer_group = {group:String} AND topic IN {topics:Array(String)} \
                 GROUP BY topic, partition",
            )
            .param("group", &self.group)
            .param("topics", &self.topics)
            .fetch_all()
            .await
            .context("cannot read the manifest")?;
        for row in recorded {
            if let Some(position) = positions.get_mut(&(row.topic, row.partition)) {
                position.recorded = Some(row.last);
            }
        }
        Ok(positions)
    }
}

/// Ends and committed offsets of every partition of `topics` (blocking calls).
fn broker(consumer: &BaseConsumer, topics: &[String]) -> anyhow::Result<Positions> {
    let mut positions = Positions::new();
    let mut list = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), CALL_TIMEOUT)
            .with_context(|| format!("no metadata for {topic}"))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), CALL_TIMEOUT)
                .with_context(|| format!("no watermarks for {topic}/{}", partition.id()))?;
            positions.insert(
                (topic.clone(), partition.id()),
                Position {
                    low,
                    high,
                    ..Position::default()
                },
            );
            list.add_partition(topic, partition.id());
        }
    }
    let committed = consumer
        .committed_offsets(list, CALL_TIMEOUT)
        .context("no committed offsets")?;
    for element in committed.elements() {
        if let (Offset::Offset(offset), Some(position)) = (
            element.offset(),
            positions.get_mut(&(element.topic().to_string(), element.partition())),
        ) {
            position.committed = Some(offset);
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(high: i64, committed: Option<i64>, recorded: Option<i64>) -> Position {
        Position {
            low: 0,
            high,
            committed,
            recorded,
        }
    }

    fn positions(list: &[(i32, Position)]) -> Positions {
        list.iter()
            .map(|(p, position)| (("t".to_string(), *p), *position))
            .collect()
    }

    #[test]
    fn a_waiting_partition_that_has_not_moved_is_stalled() {
        let before = positions(&[(0, at(100, Some(50), Some(60)))]);
        let now = positions(&[(0, at(120, Some(50), Some(60)))]);
        assert_eq!(stalled(&before, &now), vec![("t".to_string(), 0)]);
    }

    #[test]
    fn a_new_range_or_a_new_commit_is_progress() {
        let before = positions(&[
            (0, at(100, Some(50), Some(60))),
            (1, at(100, Some(50), Some(60))),
        ]);
        let now = positions(&[
            (0, at(120, Some(50), Some(80))),
            (1, at(120, Some(61), Some(60))),
        ]);
        assert!(stalled(&before, &now).is_empty());
    }

    #[test]
    fn nothing_waiting_is_nothing_to_recover() {
        let before = positions(&[(0, at(100, Some(100), Some(99)))]);
        assert!(stalled(&before, &before).is_empty());
        // A log truncated past the last commit has nothing waiting before its start.
        let truncated = positions(&[(
            0,
            Position {
                low: 100,
                ..at(100, Some(40), None)
            },
        )]);
        assert!(stalled(&truncated, &truncated).is_empty());
    }

    #[test]
    fn caught_up_once_consumed_to_the_end_the_target_saw() {
        let target = positions(&[(0, at(100, Some(50), None)), (1, at(10, Some(10), None))]);
        // New messages past the target's end do not count.
        let now = positions(&[
            (0, at(130, Some(80), Some(90))),
            (1, at(20, Some(10), None)),
        ]);
        assert_eq!(behind(&target, &now), vec![("t".to_string(), 0)]);
        let now = positions(&[
            (0, at(130, Some(80), Some(99))),
            (1, at(20, Some(10), None)),
        ]);
        assert!(behind(&target, &now).is_empty());
        let committed = positions(&[(0, at(130, Some(100), None)), (1, at(20, Some(12), None))]);
        assert!(behind(&target, &committed).is_empty());
        // A partition the probe could not see is behind.
        assert_eq!(behind(&target, &Positions::new()).len(), 2);
    }

    #[test]
    fn a_partition_never_consumed_is_stalled_until_someone_records_it() {
        let before = Positions::new();
        let now = positions(&[(0, at(10, None, None))]);
        assert_eq!(stalled(&before, &now).len(), 1);
        let later = positions(&[(0, at(10, None, Some(9)))]);
        assert!(stalled(&before, &later).is_empty());
    }
}
