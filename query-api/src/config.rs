//! The flags of `flowhouse query-api`. Every flag can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use flowhouse_schema::contract::TopicArgs;
use flowhouse_service::clickhouse::ClickHouseArgs;
use flowhouse_service::http::PublicApiArgs;
use flowhouse_service::kafka::KafkaArgs;

use crate::window;

/// Flags of `flowhouse query-api`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    /// Where the API (and /healthz, /readyz, /metrics) is served.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_API_LISTEN",
        default_value = "127.0.0.1:4201"
    )]
    pub listen: SocketAddr,
    /// The tenant API keys file.
    #[arg(long, env = "FLOWHOUSE_KEYS_FILE", default_value = "keys.json")]
    pub keys_file: PathBuf,
    /// Secret that signs event page tokens. Set the same value on every replica; when empty, a
    /// random one is made per process (tokens then fail on another replica or after a restart).
    #[arg(
        long,
        env = "FLOWHOUSE_PAGE_TOKEN_SECRET",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub page_token_secret: String,
    #[command(flatten)]
    pub public: PublicApiArgs,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub limits: Settings,
}

/// The live feed of `/events/out` and `/logs/out`: events and log lines read from Kafka as they
/// are acknowledged there, fanned out to the subscribers of their tenant.
#[derive(clap::Args, Clone, Debug)]
pub struct LiveArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Serve live events and logs on `/events/out` and `/logs/out` (needs Kafka). Without it
    /// the sockets send their backfill and then close.
    #[arg(
        long,
        env = "FLOWHOUSE_LIVE_FEED",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub live_feed: bool,
    /// Messages waiting for one subscriber, at most; a subscriber further behind is
    /// disconnected (close 1013) rather than buffered without bound.
    #[arg(
        long,
        env = "FLOWHOUSE_LIVE_SUBSCRIBER_QUEUE",
        default_value_t = 10_000
    )]
    pub subscriber_queue: usize,
}

impl LiveArgs {
    pub fn new(kafka: KafkaArgs, topics: TopicArgs) -> Self {
        Self {
            kafka,
            topics,
            live_feed: true,
            subscriber_queue: 10_000,
        }
    }
}

/// Limits and cache tuning.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Longest window a dashboard metric may cover, in days (longer ones get a 422).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_WINDOW_DAYS", default_value_t = 31)]
    pub max_window_days: u32,
    /// How far back event and log searches may reach, in days (Prefect's event search defaults
    /// to 180 days back; an older `since` gets a 422 naming this limit, never a silent clamp).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_SEARCH_DAYS", default_value_t = 366)]
    pub max_search_days: u32,
    /// Largest page of `/events/filter` (Prefect's own is 50).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_PAGE_SIZE", default_value_t = 200)]
    pub max_page_size: u32,
    /// Most rows a list answer holds (durations per flow, counts by event or resource) and the
    /// deepest `/logs/filter` offset.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_MAX_RESULT_ROWS",
        default_value_t = 10_000
    )]
    pub max_result_rows: u64,
    /// ClickHouse `max_execution_time` of every query, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_TIMEOUT_SECS", default_value_t = 30)]
    pub query_timeout_secs: u64,
    /// ClickHouse queries running at once; further ones wait (then 503).
    #[arg(long, env = "FLOWHOUSE_QUERY_MAX_CONCURRENT", default_value_t = 16)]
    pub max_concurrent_queries: usize,
    /// How long a request waits for a ClickHouse slot before a 503, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_QUEUE_TIMEOUT_SECS", default_value_t = 10)]
    pub queue_timeout_secs: u64,
    /// Response cache size in bytes (0: no cache).
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub cache_bytes: u64,
    /// Freshness: the longest an answer covering the open bucket is served from cache, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_FRESH_SECS", default_value_t = 10)]
    pub cache_fresh_secs: u64,
    /// Life of an answer over closed, settled buckets only, seconds.
    #[arg(
        long,
        env = "FLOWHOUSE_QUERY_CACHE_SETTLED_SECS",
        default_value_t = 3600
    )]
    pub cache_settled_secs: u64,
    /// How long after a bucket closes it may still receive late events, seconds.
    #[arg(long, env = "FLOWHOUSE_QUERY_CACHE_SETTLE_SECS", default_value_t = 600)]
    pub cache_settle_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_window_days: 31,
            max_search_days: 366,
            max_page_size: 200,
            max_result_rows: 10_000,
            query_timeout_secs: 30,
            max_concurrent_queries: 16,
            queue_timeout_secs: 10,
            cache_bytes: 256 * 1024 * 1024,
            cache_fresh_secs: 10,
            cache_settled_secs: 3600,
            cache_settle_secs: 600,
        }
    }
}

impl Settings {
    pub fn max_window_micros(&self) -> i64 {
        i64::from(self.max_window_days) * 86_400 * window::MICROS_PER_SECOND
    }

    pub fn max_search_micros(&self) -> i64 {
        i64::from(self.max_search_days) * 86_400 * window::MICROS_PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_defaults_in_code_are_the_command_lines() {
        let parsed = Command::try_parse_from(["query-api"]).unwrap().args;
        let d = Settings::default();
        let p = &parsed.limits;
        assert_eq!(
            (
                d.max_window_days,
                d.max_search_days,
                d.max_page_size,
                d.max_result_rows
            ),
            (
                p.max_window_days,
                p.max_search_days,
                p.max_page_size,
                p.max_result_rows
            )
        );
        assert_eq!(
            (
                d.query_timeout_secs,
                d.max_concurrent_queries,
                d.queue_timeout_secs
            ),
            (
                p.query_timeout_secs,
                p.max_concurrent_queries,
                p.queue_timeout_secs
            )
        );
        assert_eq!(
            (
                d.cache_bytes,
                d.cache_fresh_secs,
                d.cache_settled_secs,
                d.cache_settle_secs
            ),
            (
                p.cache_bytes,
                p.cache_fresh_secs,
                p.cache_settled_secs,
                p.cache_settle_secs
            )
        );
        let live = LiveArgs::new(parsed.live.kafka.clone(), parsed.live.topics.clone());
        assert_eq!(live.live_feed, parsed.live.live_feed);
        assert_eq!(live.subscriber_queue, parsed.live.subscriber_queue);
        let off = Command::try_parse_from(["query-api", "--live-feed", "false"]).unwrap();
        assert!(!off.args.live.live_feed);
    }
}
