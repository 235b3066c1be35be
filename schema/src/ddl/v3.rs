//! Migration 3's definitions: where `flowhouse mirror prefect` keeps its position.

use super::Table;

/// One row per (mirror, stream): the `occurred` (events) or `timestamp` (log lines) and id of the
/// last item the mirror got into Kafka, i.e. where it resumes (minus its safety margin). The
/// latest write wins (ReplacingMergeTree on `updated_at`, read with FINAL). Beside
/// `ingest_batches` and like it one full copy on every node: a mirror started on another host
/// resumes from it. Never expires.
pub(crate) const MIRROR_CHECKPOINTS: Table = Table {
    name: "mirror_checkpoints",
    columns: "
    mirror String,
    stream LowCardinality(String),
    occurred DateTime64(6, 'UTC'),
    id UUID,
    updated_at DateTime64(6, 'UTC') DEFAULT now64(6)
",
    engine: "ReplacingMergeTree",
    engine_args: "updated_at",
    partition_by: None,
    order_by: "mirror, stream",
    ttl: None,
    settings: "",
    shard_key: "",
    everywhere: true,
    revision: 3,
};
