//! The query API's metrics (Prometheus names, on `/metrics`), named once here.

pub const CACHE_REQUESTS: &str = "flowhouse_query_cache_requests_total";
pub const CACHE_LOAD_SECONDS: &str = "flowhouse_query_cache_load_seconds";
pub const CACHE_REFRESH_FAILURES: &str = "flowhouse_query_cache_refresh_failures_total";
pub const CACHE_WAITING: &str = "flowhouse_query_cache_waiting";
pub const CACHE_BYTES: &str = "flowhouse_query_cache_bytes";
pub const CLICKHOUSE_QUERIES: &str = "flowhouse_query_clickhouse_queries_total";
pub const CLICKHOUSE_SECONDS: &str = "flowhouse_query_clickhouse_seconds";
pub const CLICKHOUSE_ERRORS: &str = "flowhouse_query_clickhouse_errors_total";
pub const LIVE_FEED_UP: &str = "flowhouse_query_live_feed_up";
pub const LIVE_FEED_ERRORS: &str = "flowhouse_query_live_feed_errors_total";
pub const LIVE_SUBSCRIBERS: &str = "flowhouse_query_live_subscribers";
pub const LIVE_LAGGED: &str = "flowhouse_query_live_lagged_total";

/// Registers descriptions, so that `/metrics` explains each series.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CACHE_REQUESTS,
        "Cacheable requests, by route and result (hit; stale: served while a background load \
         replaces it; miss; coalesced)."
    );
    describe_counter!(
        CACHE_REFRESH_FAILURES,
        "Background loads of stale answers that failed, by route (the stale answer expires)."
    );
    describe_histogram!(
        CACHE_LOAD_SECONDS,
        metrics::Unit::Seconds,
        "Time to compute an answer (a miss, or a background load of a stale one), by route."
    );
    describe_gauge!(
        CACHE_WAITING,
        "Requests waiting for an answer another request is computing."
    );
    describe_gauge!(CACHE_BYTES, "Bytes of answers held in the cache.");
    describe_counter!(CLICKHOUSE_QUERIES, "ClickHouse queries run, by kind.");
    describe_histogram!(
        CLICKHOUSE_SECONDS,
        metrics::Unit::Seconds,
        "Time of one ClickHouse query, by kind."
    );
    describe_counter!(
        CLICKHOUSE_ERRORS,
        "ClickHouse queries that failed, by kind."
    );
    describe_gauge!(
        LIVE_FEED_UP,
        "1 while the live feed of /events/out and /logs/out reads Kafka."
    );
    describe_counter!(LIVE_FEED_ERRORS, "Kafka errors of the live feed.");
    describe_gauge!(
        LIVE_SUBSCRIBERS,
        "Open /events/out and /logs/out subscribers."
    );
    describe_counter!(
        LIVE_LAGGED,
        "Subscribers disconnected for falling too far behind the live feed."
    );
}
