//! # Exactly once, from Kafka to ClickHouse
//!
//! Offsets are committed only after ClickHouse acknowledged every row before them, so a crash
//! anywhere replays messages: never loses them. The work is making replays never *duplicate*
//! rows. ClickHouse drops an insert whose `insert_deduplication_token` it has seen among a
//! table's last blocks (`non_replicated_deduplication_window` / `replicated_deduplication_window`,
//! 10,000 blocks here), including the rows that insert would have sent into materialized views
//! (`deduplicate_blocks_in_dependent_materialized_views = 1`). That only helps if a replayed batch
//! is *the same batch*: same messages, same token. Batches close on age, so the boundaries of a
//! replay would differ by timing. Hence:
//!
//! 1. A batch holds messages of one Kafka partition only: rebalances move whole partitions, so
//!    whoever replays a batch owns all of it.
//! 2. Before inserting a batch, its offset range `[first, last]` is recorded in the
//!    `ingest_batches` table (the "manifest"). Its token is `group:topic:partition:first-last`.
//! 3. Insert, then commit `last + 1`. One batch per partition is in flight at a time, so commits
//!    stay in order.
//! 4. When a consumer starts on a partition (after a crash, a restart or a rebalance), it reads
//!    the ranges recorded at or after its starting offset and cuts its first batches at exactly
//!    those boundaries, reusing their tokens. Whether the crashed insert had happened or not, the
//!    re-insert is either dropped as a duplicate or is the first copy.
//!
//! What each crash point leaves behind:
//! - before recording: nothing recorded, nothing inserted; the replay batches freely.
//! - recorded, not inserted: the replay re-forms the range and inserts it once.
//! - inserted, not committed: the replay re-forms the range; ClickHouse drops the copy.
//! - committed: the next start is after the range.
//!
//! A dead-lettered message is part of its batch's range; its delivery to the dead-letter topic
//! is awaited before the commit, so it can be delivered again on replay (the dead-letter headers
//! carry the source topic, partition and offset, which identify duplicates there).
//!
//! On SIGTERM, complete batches are inserted and committed; a recorded range that has not been
//! fully consumed yet is left for the next start (inserting part of it under its token would make
//! ClickHouse drop the rest later).
//!
//! Why not Kafka transactions: ClickHouse is not a Kafka transaction participant. Why not
//! commit-with-metadata: not every Kafka-compatible broker keeps commit metadata; ClickHouse,
//! which must be up for inserts anyway, holds the manifest.

/// The deduplication token of one batch: stable for the same range of the same partition.
pub fn batch_token(group: &str, topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{group}:{topic}:{partition}:{first}-{last}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_name_group_topic_partition_and_range() {
        assert_eq!(
            super::batch_token("g", "flowhouse.events", 3, 100, 199),
            "g:flowhouse.events:3:100-199"
        );
        assert_ne!(
            super::batch_token("g", "t", 3, 100, 199),
            super::batch_token("g", "t", 4, 100, 199)
        );
    }
}
