//! # Exactly once, from Kafka to ClickHouse
//!
//! A crash anywhere makes the next owner of a partition consume some messages again, so nothing
//! is lost; the work is making those replays never *duplicate* rows. ClickHouse drops an insert
//! whose `insert_deduplication_token` it has seen among a table's last blocks
//! (`non_replicated_deduplication_window` / `replicated_deduplication_window`, 10,000 blocks
//! here), together with the rows that insert would have sent into the materialized views
//! (`deduplicate_blocks_in_dependent_materialized_views = 1`). That only helps if a replayed
//! batch is *the same batch*: same messages, same token. Batches close on age, so a replay would
//! cut different boundaries by timing. Hence:
//!
//! 1. A batch holds messages of one Kafka partition only: rebalances move whole partitions, so
//!    whoever replays a batch owns all of it. One batch per partition is in flight at a time.
//! 2. Before inserting a batch, its offset range `[first, last]` is recorded in the
//!    `ingest_batches` table (the "manifest"; one row per partition, the latest range wins).
//!    The batch's token is `group:topic:partition:first-last`.
//! 3. Insert; then the offset `last + 1` is *stored*, and committed to Kafka every few seconds.
//! 4. When a consumer is assigned a partition (start, restart, rebalance), it reads the latest
//!    recorded range from the manifest and starts exactly at its `first` offset, whatever the
//!    broker's committed offset says: the first batch is cut at exactly that range and inserted
//!    under its original token. Whether the crashed insert happened or not, the re-insert is
//!    either dropped as a duplicate or is the first copy. Every earlier range was acknowledged
//!    before the latest one was recorded (point 1), so nothing before `first` is missing.
//!
//! What each crash point leaves behind:
//! - before recording: the previous range is the latest; it is replayed and dropped as a
//!   duplicate, and the messages after it are batched afresh.
//! - recorded, not inserted: the replay re-forms the range and inserts it once.
//! - inserted, not committed: the replay re-forms the range; ClickHouse drops the copy.
//!
//! Kafka commits are therefore advisory (they feed lag monitoring). The manifest lives in
//! ClickHouse because it must be written in the same system as the rows, and because
//! Kafka-compatible brokers differ in how reliably they keep commits: tansu's memory engine,
//! used in development, resumed groups past their committed offsets. For the same reason the
//! consumer does not trust where the broker starts it: each assigned partition is moved to its
//! start at once, and until its first message is the expected offset, earlier ones are skipped
//! and later ones trigger another seek back; a message at or below the last offset taken is a
//! redelivery and is dropped (counted in `flowhouse_ingest_messages_redelivered_total`). That
//! rule is the start gate, a pure state machine (`consumer/gate.rs`); `consumer/replay_model.rs`
//! drives it, the real batcher and the real token through random interleavings of crashes,
//! rebalances, redeliveries, late, stale and failed seeks, against a manifest and a table that
//! behave as ClickHouse's do, and checks that every offset is stored exactly once. A seek still
//! running from an earlier assignment in the same process can only move a partition back, never
//! past its start (starts only move forward: the manifest's latest range and the broker's
//! earliest offset only grow), so it causes redeliveries, which are dropped.
//!
//! A revocation waits for the revoked partitions' in-flight flushes to stop at a safe point
//! before the group hands them over, so two owners never insert different cuts of one range.
//!
//! A dead-lettered message is part of its batch's range; its delivery to the dead-letter topic
//! is awaited before the range is recorded, so a replay may deliver it again (the dead-letter
//! headers carry the source topic, partition and offset, which identify such duplicates).
//!
//! On SIGTERM, complete batches are inserted and their offsets committed; a recorded range that
//! has not been fully consumed yet is left for the next start (inserting part of it under its
//! token would make ClickHouse drop the rest later).
//!
//! The window matters: a replay must come within 10,000 inserts into the table of the original,
//! which at the default batch sizes is hours of traffic, while a replay covers at most one batch
//! per partition.
//!
//! Why not Kafka transactions: ClickHouse is not a Kafka transaction participant. Why not
//! commit metadata: not every Kafka-compatible broker keeps it, and ClickHouse must be up for
//! inserts anyway.

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
