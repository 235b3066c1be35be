//! Migration 5's definition: where each partition of the events topic stands for the
//! automations' event triggers (issue 16). The argument is in `automations/src/stream/mod.rs`.

use super::Table;

/// One row per checkpoint of one partition of the events topic, as read by the evaluator that
/// holds its lease: the offset it resumes from and the event triggers' windows at that offset
/// (JSON). The latest `version` wins (ReplacingMergeTree, read with FINAL). Like the leases, one
/// full copy on every node; rows expire a week after their last write (a partition idle that
/// long restarts with empty windows, which hold at most a day of events).
pub(crate) const AUTOMATION_STREAM_CHECKPOINTS: Table = Table {
    name: "automation_stream_checkpoints",
    columns: "
    topic String,
    partition UInt32,
    version UInt64,
    next_offset Int64,
    windows String,
    owner String,
    updated DateTime64(6, 'UTC') DEFAULT now64(6)
",
    engine: "ReplacingMergeTree",
    engine_args: "version",
    partition_by: None,
    order_by: "topic, partition",
    ttl: Some("toDateTime(updated) + toIntervalDay(7)"),
    settings: "",
    shard_key: "",
    everywhere: true,
    revision: 5,
};
