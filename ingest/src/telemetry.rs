//! The ingest service's metrics (Prometheus names, on `/metrics`).

pub const CONSUMED: &str = "flowhouse_ingest_messages_consumed_total";
pub const INSERTED_ROWS: &str = "flowhouse_ingest_rows_inserted_total";
pub const DEAD_LETTERS: &str = "flowhouse_ingest_dead_letters_total";
pub const BATCH_ROWS: &str = "flowhouse_ingest_batch_rows";
pub const BATCH_BYTES: &str = "flowhouse_ingest_batch_bytes";
pub const INSERT_SECONDS: &str = "flowhouse_ingest_insert_seconds";
pub const RETRIES: &str = "flowhouse_ingest_retries_total";
pub const CONSUMER_LAG: &str = "flowhouse_ingest_consumer_lag";
pub const BUFFERED_BYTES: &str = "flowhouse_ingest_buffered_bytes";
pub const PAUSED: &str = "flowhouse_ingest_paused";
pub const COMMITTED_OFFSET: &str = "flowhouse_ingest_committed_offset";
pub const REDELIVERED: &str = "flowhouse_ingest_messages_redelivered_total";
pub const PERMANENT_ERRORS: &str = "flowhouse_ingest_insert_permanent_errors_total";
pub const STALLED_PARTITIONS: &str = "flowhouse_ingest_stalled_partitions";
pub const UNOWNED_PARTITIONS: &str = "flowhouse_ingest_unowned_partitions";
pub const REJOINS: &str = "flowhouse_ingest_group_rejoins_total";

/// Registers descriptions, so that `/metrics` explains each series.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CONSUMED, "Kafka messages consumed, by topic.");
    describe_counter!(INSERTED_ROWS, "Rows acknowledged by ClickHouse, by table.");
    describe_counter!(
        DEAD_LETTERS,
        "Messages sent to the dead-letter topic, by topic and kind."
    );
    describe_histogram!(BATCH_ROWS, "Rows per inserted batch.");
    describe_histogram!(BATCH_BYTES, "Approximate bytes per inserted batch.");
    describe_histogram!(
        INSERT_SECONDS,
        metrics::Unit::Seconds,
        "Time to insert one batch, retries included."
    );
    describe_counter!(RETRIES, "Failed attempts that were retried, by step.");
    describe_gauge!(
        CONSUMER_LAG,
        "Messages not yet committed (stored in ClickHouse), by topic and partition."
    );
    describe_gauge!(
        BUFFERED_BYTES,
        "Bytes of rows held in memory, waiting or being inserted."
    );
    describe_gauge!(
        PAUSED,
        "1 while consumption is paused because buffers are full."
    );
    describe_gauge!(
        COMMITTED_OFFSET,
        "Last committed offset, by topic and partition."
    );
    describe_counter!(
        PERMANENT_ERRORS,
        "ClickHouse errors no retry fixes (schema, access), by step and error; the partition \
         waits and retries slowly."
    );
    describe_gauge!(
        STALLED_PARTITIONS,
        "Partitions waiting on a permanent ClickHouse error (see /readyz for the remedy)."
    );
    describe_gauge!(
        UNOWNED_PARTITIONS,
        "Partitions with messages waiting that no member of the group has consumed for a while \
         (a crashed member the broker has not replaced); ingest rejoins the group meanwhile."
    );
    describe_counter!(
        REJOINS,
        "Times this process left and joined its group again to get unowned partitions consumed."
    );
    describe_counter!(
        REDELIVERED,
        "Messages the client delivered again (offset not above the last taken); dropped."
    );
}
