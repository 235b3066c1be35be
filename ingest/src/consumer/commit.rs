//! Committing stored offsets to Kafka (advisory: see [`crate::exactly_once`]).

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Ingest, State};
use crate::telemetry;

/// How often stored offsets are committed to Kafka. Commits are advisory (the manifest is where
/// partitions resume), so they are batched like Kafka's auto-commit rather than sent per batch:
/// a commit shares the group coordinator connection with heartbeats, and a slow broker answering
/// one commit per batch starves the heartbeats until the member is thrown out of its group.
pub(super) const COMMIT_INTERVAL: Duration = Duration::from_secs(5);

impl Ingest {
    /// Commits the offsets stored since the last commit, one request for all partitions.
    pub(super) fn commit_stored(&self, state: &mut State, mode: CommitMode) {
        let mut offsets = TopicPartitionList::new();
        let mut committing = Vec::new();
        for ((table, partition), state) in &state.partitions {
            if let Some(next) = state.stored.filter(|&next| state.committed != Some(next)) {
                let topic = &self.topics[table];
                if offsets
                    .add_partition_offset(topic, *partition, Offset::Offset(next))
                    .is_ok()
                {
                    committing.push((*table, *partition, next));
                }
            }
        }
        if committing.is_empty() {
            return;
        }
        match self.consumer.commit(&offsets, mode) {
            Ok(()) => {
                for (table, partition, next) in committing {
                    metrics::gauge!(telemetry::COMMITTED_OFFSET, "topic" => self.topics[&table].to_string(), "partition" => partition.to_string())
                        .set(next as f64);
                    if let Some(state) = state.partitions.get_mut(&(table, partition)) {
                        state.committed = Some(next);
                    }
                }
            }
            // The rows are in ClickHouse and the manifest says where to resume: a lost commit
            // only makes the broker's view of the group's lag stale. Nothing to do but say so.
            Err(error) => tracing::warn!(%error, "commit failed; it is retried with the next one"),
        }
    }
}
